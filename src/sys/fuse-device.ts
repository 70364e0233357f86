// /dev/fuse and the mount calls around it: what a FUSE server needs from libc and nothing
// more. The server reads kernel requests straight into guest pages and answers with
// writev from guest pages, so every buffer here is an address (a plain number), never a
// JS heap object. libfuse is not used: the protocol is spoken in TypeScript
// (src/guest/fuse/fuse-protocol.ts) and the only native calls are the ones below.
import fs from 'node:fs';
import { Errno, SysError } from './errors.js';
import type { IovecList } from './iovec.js';
import { errno, libc, raw } from './libc.js';

const O_RDWR = 2;
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
export const MS_NOSUID = 2;
export const MS_NODEV = 4;
const MNT_DETACH = 2;

// Buffers are uintptr_t, not pointers: koffi takes a plain number there, so the data path
// builds no BigInt per call.
const sys = {
  open: libc.func('int open(const char *path, int flags)'),
  read: libc.func('intptr_t read(int fd, uintptr_t buf, size_t count)'),
  write: libc.func('intptr_t write(int fd, uintptr_t buf, size_t count)'),
  writev: libc.func('intptr_t writev(int fd, uintptr_t iov, int iovcnt)'),
  mount: libc.func('int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const char *data)'),
  umount2: libc.func('int umount2(const char *target, int flags)'),
} as const;

/**
 * An open /dev/fuse: one FUSE connection once mounted. Non-blocking, so a read with no
 * request pending returns -EAGAIN instead of parking the thread; close-on-exec, so the
 * programs a test spawns (mkfs, fio) never hold the connection open.
 */
export class FuseDevice {
  readonly fd: number;
  private closed = false;

  private constructor(fd: number) {
    this.fd = fd;
  }

  static open(path = '/dev/fuse'): FuseDevice {
    const fd = sys.open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC) as number;
    if (fd === -1) throw new SysError(`open(${path})`, errno());
    return new FuseDevice(fd);
  }

  /**
   * Mounts this connection on `target` (fstype "fuse"). `options` are the FUSE mount
   * options after "fd=N," (rootmode, user_id, group_id, allow_other, ...).
   */
  mount(target: string, options: string, flags = MS_NOSUID | MS_NODEV, source = 'enlighten'): void {
    const data = `fd=${this.fd},${options}`;
    if ((sys.mount(source, target, 'fuse', flags, data) as number) === -1) throw new SysError(`mount(${target})`, errno());
  }

  /** Reads one request into [address, address+length); returns its length or -errno. */
  read(address: number, length: number): number {
    const n = sys.read(this.fd, address, length) as number;
    return n === -1 ? -errno() : n;
  }

  /** Writes one reply from [address, address+length); returns bytes written or -errno. */
  write(address: number, length: number): number {
    const n = sys.write(this.fd, address, length) as number;
    return n === -1 ? -errno() : n;
  }

  /** Writes one reply gathered from the iovecs in use; returns bytes written or -errno. */
  writev(iov: IovecList): number {
    const n = sys.writev(this.fd, iov.addressNumber, iov.count) as number;
    return n === -1 ? -errno() : n;
  }

  /** Closing the device aborts the connection: requests still pending fail with ENOTCONN. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if ((raw.close(this.fd) as number) === -1) throw new SysError('close(/dev/fuse)', errno());
  }
}

/** Lazily unmounts `target` (umount2 MNT_DETACH): it leaves the namespace now, even if busy. */
export function detachMount(target: string): void {
  if ((sys.umount2(target, MNT_DETACH) as number) === -1) throw new SysError(`umount2(${target})`, errno());
}

/** Like detachMount, but reports instead of throwing; EINVAL/ENOENT (nothing mounted) is false. */
export function tryDetachMount(target: string): boolean {
  if ((sys.umount2(target, MNT_DETACH) as number) === 0) return true;
  const e = errno();
  if (e === Errno.EINVAL || e === Errno.ENOENT) return false;
  throw new SysError(`umount2(${target})`, e);
}

export interface MountEntry {
  mountPoint: string;
  fsType: string;
  source: string;
}

/** This process's mounts, from /proc/self/mountinfo (escapes such as \040 decoded). */
export function listMounts(): MountEntry[] {
  const entries: MountEntry[] = [];
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const fields = line.split(' ');
    const dash = fields.indexOf('-');
    if (dash < 5 || fields.length < dash + 3) continue;
    entries.push({ mountPoint: unescapeMountField(fields[4]!), fsType: fields[dash + 1]!, source: unescapeMountField(fields[dash + 2]!) });
  }
  return entries;
}

/** Is a FUSE file system (fuse, fuse.*, fuseblk) mounted exactly at `mountPoint`? */
export function isFuseMountPoint(mountPoint: string): boolean {
  return listMounts().some((m) => m.mountPoint === mountPoint && m.fsType.startsWith('fuse'));
}

function unescapeMountField(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}
