// Files as disk images see them: open with O_DIRECT and friends, size, locks, and the
// vectored, positioned I/O calls. Set-up calls throw SysError; the data-path calls
// (preadv, pwritev, fdatasync, fallocate) return -errno instead, because a failed guest
// I/O is a result to report to the guest, not an exception.
import fs from 'node:fs';
import { SysError } from './errors.js';
import { check, errno, libc, raw } from './libc.js';

export const O_RDONLY = 0o0;
export const O_WRONLY = 0o1;
export const O_RDWR = 0o2;
export const O_CREAT = 0o100;
export const O_EXCL = 0o200;
export const O_TRUNC = 0o1000;
export const O_DSYNC = 0o10000;
export const O_DIRECT = 0o40000;
export const O_CLOEXEC = 0o2000000;

export const LOCK_SH = 1;
export const LOCK_EX = 2;
export const LOCK_NB = 4;
export const LOCK_UN = 8;

export const F_OFD_GETLK = 36;
export const F_OFD_SETLK = 37;
export const F_RDLCK = 0;
export const F_WRLCK = 1;
export const F_UNLCK = 2;

const SEEK_END = 2;

const fn = {
  open: libc.func('int open(const char *path, int flags, unsigned int mode)'),
  flock: libc.func('int flock(int fd, int operation)'),
  fcntlLock: libc.func('int fcntl(int fd, int cmd, _Inout_ uint8_t *lock)'),
  fallocate: libc.func('int fallocate(int fd, int mode, int64_t offset, int64_t length)'),
  fdatasync: libc.func('int fdatasync(int fd)'),
  fsync: libc.func('int fsync(int fd)'),
  preadv: libc.func('intptr_t preadv(int fd, void *iov, int iovcnt, int64_t offset)'),
  pwritev2: libc.func('intptr_t pwritev2(int fd, void *iov, int iovcnt, int64_t offset, int flags)'),
  pread: libc.func('intptr_t pread(int fd, void *buf, size_t count, int64_t offset)'),
  lseek: libc.func('int64_t lseek(int fd, int64_t offset, int whence)'),
} as const;

/** open(2); throws SysError naming the path. */
export function openFile(path: string, flags: number, mode = 0o644): number {
  const fd = fn.open(path, flags | O_CLOEXEC, mode) as number;
  if (fd === -1) throw new SysError(`open(${path})`, errno());
  return fd;
}

/** open(2) returning -errno instead of throwing (for probes that expect failure). */
export function tryOpenFile(path: string, flags: number, mode = 0o644): number {
  const fd = fn.open(path, flags | O_CLOEXEC, mode) as number;
  return fd === -1 ? -errno() : fd;
}

export function closeFile(fd: number): void {
  check('close', raw.close(fd) as number);
}

export function truncateFile(fd: number, length: number): void {
  check('ftruncate', raw.ftruncate(fd, length) as number);
}

export interface FileStat {
  dev: number;
  ino: number;
  size: number;
  /** 512-byte units actually allocated. */
  blocks: number;
  blksize: number;
  isFile: boolean;
  isBlockDevice: boolean;
}

export function fstatFile(fd: number): FileStat {
  const s = fs.fstatSync(fd);
  return { dev: s.dev, ino: s.ino, size: s.size, blocks: s.blocks, blksize: s.blksize, isFile: s.isFile(), isBlockDevice: s.isBlockDevice() };
}

/** Size of a file or block device (lseek to the end). */
export function seekEnd(fd: number): number {
  const r = Number(fn.lseek(fd, 0, SEEK_END));
  if (r < 0) throw new SysError('lseek', errno());
  return r;
}

/** flock(2); returns 0 or -errno (EWOULDBLOCK when LOCK_NB and held elsewhere). */
export function flock(fd: number, operation: number): number {
  return (fn.flock(fd, operation) as number) === -1 ? -errno() : 0;
}

/**
 * An open-file-description lock (F_OFD_SETLK) over [start, start+length), length 0
 * meaning to the end of the file. It belongs to the open file, not the process: a second
 * open in the same process conflicts, and closing another fd of the file keeps it.
 * Returns 0 or -errno (EAGAIN/EACCES: held elsewhere; EINVAL: no OFD locks here).
 */
export function ofdSetLock(fd: number, type: number, start = 0, length = 0): number {
  // struct flock (x86-64): short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid.
  const lock = new Uint8Array(32);
  const view = new DataView(lock.buffer);
  view.setInt16(0, type, true);
  view.setInt16(2, 0, true); // SEEK_SET
  view.setBigInt64(8, BigInt(start), true);
  view.setBigInt64(16, BigInt(length), true);
  return (fn.fcntlLock(fd, F_OFD_SETLK, lock) as number) === -1 ? -errno() : 0;
}

/** fallocate(2): 0 or -errno. */
export function fallocate(fd: number, mode: number, offset: number, length: number): number {
  return (fn.fallocate(fd, mode, offset, length) as number) === -1 ? -errno() : 0;
}

/** 0 or -errno. */
export function fdatasync(fd: number): number {
  return (fn.fdatasync(fd) as number) === -1 ? -errno() : 0;
}

/** 0 or -errno. */
export function fsync(fd: number): number {
  return (fn.fsync(fd) as number) === -1 ? -errno() : 0;
}

/** preadv(2) over a native iovec array at `iov`: bytes read or -errno. */
export function preadv(fd: number, iov: bigint, count: number, offset: number): number {
  const n = Number(fn.preadv(fd, iov, count, offset));
  return n === -1 ? -errno() : n;
}

/** pwritev2(2) with RWF_* flags: bytes written or -errno. */
export function pwritev2(fd: number, iov: bigint, count: number, offset: number, flags: number): number {
  const n = Number(fn.pwritev2(fd, iov, count, offset, flags));
  return n === -1 ? -errno() : n;
}

/** pread(2) into native memory: bytes read or -errno. */
export function preadAt(fd: number, address: bigint, length: number, offset: number): number {
  const n = Number(fn.pread(fd, address, length, offset));
  return n === -1 ? -errno() : n;
}
