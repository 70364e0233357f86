// A raw disk image: the file's bytes are the disk's bytes. Requests go to the kernel
// zero-copy (iovecs into guest RAM) through a FileIo engine, io_uring by default:
// FUA is a RWF_DSYNC write, flush is fdatasync, discard punches a hole. The image is
// opened with O_DIRECT where the filesystem allows it (no double caching of guest data
// in the host page cache); a request whose buffers or range are not aligned enough for
// O_DIRECT goes through a second, buffered fd of the same file, which the kernel keeps
// coherent with the direct one. The image is locked against a second read-write user.
import crypto from 'node:crypto';
import fs from 'node:fs';
import type { BlockBackend, BlockDone, BlockIo, DiskInfo } from './block-backend.js';
import { SyncFileIo, UringFileIo, type FileIo, type FileIoDone } from './file-io.js';
import { lockImage, type ImageLock } from './image-lock.js';
import { BlockCompletionQueue } from './memory-disk.js';
import type { Poller } from '../../sys/epoll.js';
import { Errno, SysError } from '../../sys/errors.js';
import { closeFile, fallocate, fdatasync, fstatFile, O_CREAT, O_DIRECT, O_EXCL, O_RDONLY, O_RDWR, openFile, preadAt, seekEnd, truncateFile, tryOpenFile } from '../../sys/file.js';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, UIO_MAXIOV } from '../../sys/io-uring.js';
import { IovecList } from '../../sys/iovec.js';
import { mapAnonymous, munmap } from '../../sys/memfd.js';
import { checkBlockIo } from './block-io-check.js';

export interface RawDiskOptions {
  readOnly?: boolean;
  /** Wakes the JS thread for io_uring completions (unused when fileIo is given). */
  poller: Poller;
  /** Default 512. The image size must be a multiple of it. */
  logicalBlockBytes?: 512 | 4096;
  /** Create a new sparse image of this size; fails if the file exists. */
  create?: { sizeBytes: number };
  /**
   * An engine to share with other disks (the disk does not close it). Default: an
   * io_uring engine of its own, or blocking calls where io_uring is unavailable.
   */
  fileIo?: FileIo;
  /** Try O_DIRECT (default true). */
  direct?: boolean;
}

/** The image cannot be used as asked; the message says why and what to do. */
export class RawDiskError extends Error {
  constructor(readonly path: string, message: string) {
    super(message);
    this.name = 'RawDiskError';
  }
}

const enum Kind {
  Read,
  Write,
  Flush,
  Discard,
  /** Discard emulated by writing zeros (no hole punching here). */
  ZeroFill,
}

/** Zeros written per step when discard is emulated. */
const ZERO_CHUNK = 1024 * 1024;
const PUNCH_MODE = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;

/** One request in flight; pooled, its index is the FileIo token. */
class RawRequest {
  kind = Kind.Read;
  io: BlockIo | null = null;
  done: BlockDone | null = null;
  /** Bytes moved so far (read/write/zero fill). */
  progress = 0;
  /** The remainder of a short transfer, or the zero-fill buffer: allocated on first need. */
  rest: IovecList | null = null;
  constructor(readonly index: number) {}
}

export class RawDisk implements BlockBackend, FileIoDone {
  readonly info: DiskInfo;
  readonly stats = { reads: 0, writes: 0, flushes: 0, discards: 0, errors: 0 };
  /** The alignment O_DIRECT needs here (offset, length and buffer address), or 0 when it is not used. */
  readonly directAlign: number;

  private readonly requests: RawRequest[] = [];
  private readonly free: number[] = [];
  private inFlight = 0;
  private readonly completions = new BlockCompletionQueue();
  private punchWorks = true;
  private zeroBuffer = 0n;
  private closing: Promise<void> | null = null;
  private onIdle: (() => void) | null = null;

  /** @internal Use openRawDisk. */
  constructor(
    readonly path: string,
    private readonly fd: number,
    private readonly directFd: number,
    directAlign: number,
    info: DiskInfo,
    private readonly lock: ImageLock,
    private readonly fileIo: FileIo,
    private readonly ownsFileIo: boolean,
  ) {
    this.directAlign = directFd >= 0 ? directAlign : 0;
    this.info = info;
  }

  /** Requests handed to the file engine and not yet completed. */
  get inFlightCount(): number {
    return this.inFlight;
  }

  read(io: BlockIo, done: BlockDone): void {
    this.stats.reads++;
    const error = this.check(io, true);
    if (error !== 0) return this.fail(io, done, error);
    if (io.length === 0) return this.completions.push(io, done, 0);
    this.transfer(this.take(Kind.Read, io, done));
  }

  write(io: BlockIo, done: BlockDone): void {
    this.stats.writes++;
    if (this.info.readOnly) return this.fail(io, done, -Errno.EROFS);
    const error = this.check(io, true);
    if (error !== 0) return this.fail(io, done, error);
    if (io.length === 0) return this.completions.push(io, done, 0);
    this.transfer(this.take(Kind.Write, io, done));
  }

  flush(io: BlockIo, done: BlockDone): void {
    this.stats.flushes++;
    if (this.closing) return this.fail(io, done, -Errno.ECANCELED);
    // Nothing of ours can be dirty on a read-only image.
    if (this.info.readOnly) return this.completions.push(io, done, 0);
    const r = this.take(Kind.Flush, io, done);
    this.fileIo.fdatasync(this.fd, r.index, this);
  }

  discard(io: BlockIo, done: BlockDone): void {
    this.stats.discards++;
    if (this.info.readOnly) return this.fail(io, done, -Errno.EROFS);
    const error = this.check(io, false);
    if (error !== 0) return this.fail(io, done, error);
    if (io.length === 0) return this.completions.push(io, done, 0);
    if (this.punchWorks) {
      const r = this.take(Kind.Discard, io, done);
      this.fileIo.punchHole(this.fd, io.offset, io.length, r.index, this);
    } else {
      this.zeroFill(this.take(Kind.ZeroFill, io, done));
    }
  }

  /** FileIoDone: one file operation finished. */
  fileIoDone(token: number, result: number): void {
    const r = this.requests[token];
    if (r === undefined || r.io === null) return;
    const io = r.io;
    switch (r.kind) {
      case Kind.Read:
      case Kind.Write:
        if (result < 0) return this.finish(r, result);
        r.progress += result;
        if (r.progress >= io.length) return this.finish(r, io.length);
        // Nothing moved: the file is shorter than the disk now (truncated behind our back).
        if (result === 0) return this.finish(r, -Errno.EIO);
        return this.transfer(r);
      case Kind.Flush:
        return this.finish(r, result);
      case Kind.Discard:
        if (result === -Errno.EOPNOTSUPP) {
          // The filesystem cannot punch holes: keep the promise that discarded blocks read as zeros.
          this.punchWorks = false;
          r.kind = Kind.ZeroFill;
          r.progress = 0;
          return this.zeroFill(r);
        }
        return this.finish(r, result);
      case Kind.ZeroFill:
        if (result <= 0) return this.finish(r, result < 0 ? result : -Errno.EIO);
        r.progress += result;
        if (r.progress >= io.length) return this.finish(r, 0);
        return this.zeroFill(r);
    }
  }

  /** Waits for requests in flight, flushes, closes the files and drops the lock. */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    if (this.inFlight > 0) await new Promise<void>((resolve) => (this.onIdle = resolve));
    // Completions queued without I/O run on microtasks, before this macrotask.
    while (this.completions.pending > 0) await new Promise<void>((resolve) => setImmediate(resolve));
    let error: Error | null = null;
    if (!this.info.readOnly) {
      const r = fdatasync(this.fd);
      if (r < 0) error = new SysError(`fdatasync(${this.path})`, -r);
    }
    if (this.ownsFileIo) this.fileIo.close();
    this.lock.release();
    if (this.directFd >= 0) closeFile(this.directFd);
    closeFile(this.fd);
    if (this.zeroBuffer !== 0n) munmap(this.zeroBuffer, ZERO_CHUNK);
    if (error) throw error;
  }

  private take(kind: Kind, io: BlockIo, done: BlockDone): RawRequest {
    const index = this.free.pop();
    let r: RawRequest;
    if (index !== undefined) r = this.requests[index]!;
    else {
      r = new RawRequest(this.requests.length);
      this.requests.push(r);
    }
    r.kind = kind;
    r.io = io;
    r.done = done;
    r.progress = 0;
    this.inFlight++;
    return r;
  }

  private finish(r: RawRequest, result: number): void {
    const io = r.io!;
    const done = r.done!;
    r.io = null;
    r.done = null;
    this.free.push(r.index);
    this.inFlight--;
    if (result < 0) this.stats.errors++;
    done.blockDone(io, result);
    if (this.inFlight === 0 && this.onIdle) {
      const resolve = this.onIdle;
      this.onIdle = null;
      resolve();
    }
  }

  private fail(io: BlockIo, done: BlockDone, error: number): void {
    this.stats.errors++;
    this.completions.push(io, done, error);
  }

  /**
   * Hands the not yet moved part of a read or write to the file engine: the whole request
   * at first; after a short transfer, or when it has more segments than one system call
   * takes (UIO_MAXIOV), the next run of at most that many segments.
   */
  private transfer(r: RawRequest): void {
    const io = r.io!;
    let iov = io.iov;
    if (r.progress > 0 || iov.count > UIO_MAXIOV) {
      r.rest ??= new IovecList(UIO_MAXIOV);
      const bytes = bytesInSegments(iov, r.progress, UIO_MAXIOV);
      if (!iov.sliceInto(r.rest, r.progress, bytes)) return this.finish(r, -Errno.EIO);
      iov = r.rest;
    }
    const offset = io.offset + r.progress;
    const fd = this.fdFor(iov, offset);
    if (r.kind === Kind.Read) this.fileIo.readv(fd, iov, offset, r.index, this);
    else this.fileIo.writev(fd, iov, offset, r.index, this, io.fua);
  }

  /** Writes the next chunk of zeros of an emulated discard. */
  private zeroFill(r: RawRequest): void {
    const io = r.io!;
    if (this.zeroBuffer === 0n) this.zeroBuffer = mapAnonymous(ZERO_CHUNK); // never written: reads as zeros
    r.rest ??= new IovecList(UIO_MAXIOV);
    r.rest.clear();
    r.rest.push(Number(this.zeroBuffer), Math.min(ZERO_CHUNK, io.length - r.progress));
    this.fileIo.writev(this.fd, r.rest, io.offset + r.progress, r.index, this);
  }

  /** 0 or -errno: whole blocks on the disk, buffers inside guest RAM. */
  private check(io: BlockIo, withData: boolean): number {
    if (this.closing) return -Errno.ECANCELED;
    return checkBlockIo(io, this.info, withData);
  }

  /** The direct fd when the range and every buffer meet O_DIRECT's alignment, else the buffered one. */
  private fdFor(iov: IovecList, offset: number): number {
    const align = this.directAlign;
    if (align === 0 || offset % align !== 0) return this.fd;
    for (let i = 0; i < iov.count; i++) {
      if (iov.addressAt(i) % align !== 0 || iov.lengthAt(i) % align !== 0) return this.fd;
    }
    return this.directFd;
  }
}

/** Opens (or creates) a raw image as a BlockBackend. Throws RawDiskError / ImageInUseError with a message for the user. */
export async function openRawDisk(path: string, options: RawDiskOptions): Promise<RawDisk> {
  const readOnly = options.readOnly ?? false;
  const logical = options.logicalBlockBytes ?? 512;
  if (logical !== 512 && logical !== 4096) throw new RawDiskError(path, `logical block size must be 512 or 4096, got ${String(logical)}`);
  const create = options.create;
  if (create) {
    if (readOnly) throw new RawDiskError(path, `cannot create disk image '${path}' read-only`);
    const size = create.sizeBytes;
    if (!Number.isSafeInteger(size) || size <= 0 || size % logical !== 0) {
      throw new RawDiskError(path, `disk size must be a positive multiple of ${logical} bytes, got ${String(size)}`);
    }
  }

  let fd = -1;
  let directFd = -1;
  let lock: ImageLock | null = null;
  let created = false;
  try {
    try {
      fd = openFile(path, create ? O_RDWR | O_CREAT | O_EXCL : readOnly ? O_RDONLY : O_RDWR);
    } catch (e) {
      throw openError(path, e, readOnly, create !== undefined);
    }
    created = create !== undefined;
    lock = lockImage(fd, path, readOnly ? 'shared' : 'exclusive');
    if (create) truncateFile(fd, create.sizeBytes); // sparse: no blocks until written

    const st = fstatFile(fd);
    if (!st.isFile && !st.isBlockDevice) throw new RawDiskError(path, `'${path}' is neither a regular file nor a block device`);
    const size = st.isFile ? st.size : seekEnd(fd);
    if (size === 0) throw new RawDiskError(path, `disk image '${path}' is empty; give it a size first (e.g. truncate -s 1G '${path}')`);
    if (size % logical !== 0) {
      throw new RawDiskError(path, `disk image '${path}' is ${size} bytes, not a multiple of the ${logical}-byte logical block size; resize it to a whole number of blocks (e.g. truncate -s ${Math.ceil(size / logical) * logical} '${path}')`);
    }

    let directAlign = 0;
    if (options.direct ?? true) {
      const opened = tryOpenFile(path, (readOnly ? O_RDONLY : O_RDWR) | O_DIRECT);
      if (opened >= 0) {
        directFd = opened;
        directAlign = probeDirectAlignment(directFd, size);
        if (directAlign === 0) {
          closeFile(directFd);
          directFd = -1;
        }
      }
    }

    // A hole punched past the end changes nothing (KEEP_SIZE) but tells whether holes work here.
    const discard = !readOnly && (st.isBlockDevice || fallocate(fd, PUNCH_MODE, size, logical) === 0);
    const physical = Math.max(logical, isPowerOfTwo(st.blksize) && st.blksize <= 65536 ? st.blksize : logical);
    const info: DiskInfo = {
      sizeBytes: size,
      logicalBlockBytes: logical,
      physicalBlockBytes: physical,
      readOnly,
      discard,
      writeCache: true,
      serial: serialOf(path),
    };

    let fileIo = options.fileIo;
    let owns = false;
    if (!fileIo) {
      owns = true;
      try {
        fileIo = new UringFileIo(options.poller);
      } catch {
        // io_uring disabled (sysctl, seccomp, old kernel): the same semantics, blocking.
        fileIo = new SyncFileIo();
      }
    }
    return new RawDisk(path, fd, directFd, directAlign, info, lock, fileIo, owns);
  } catch (e) {
    lock?.release();
    if (directFd >= 0) closeFile(directFd);
    if (fd >= 0) closeFile(fd);
    if (created) fs.rmSync(path, { force: true });
    throw e;
  }
}

/**
 * The alignment O_DIRECT needs on this file (512 or 4096), found by reading block 0 into
 * a buffer aligned to exactly that much; 0 when neither works.
 */
function probeDirectAlignment(fd: number, size: number): number {
  const buffer = mapAnonymous(8192);
  try {
    for (const align of [512, 4096]) {
      if (size < align) continue;
      // buffer + align is aligned to `align` but (for 512) not to a page.
      const r = preadAt(fd, buffer + BigInt(align === 512 ? 512 : 4096), align, 0);
      if (r >= 0) return align;
    }
    return 0;
  } finally {
    munmap(buffer, 8192);
  }
}

function openError(path: string, e: unknown, readOnly: boolean, create: boolean): Error {
  if (!(e instanceof SysError)) return e as Error;
  switch (e.errno) {
    case Errno.ENOENT:
      return new RawDiskError(path, `disk image '${path}' does not exist${create ? ' (its folder is missing)' : ''}`);
    case Errno.EEXIST:
      return new RawDiskError(path, `cannot create disk image '${path}': the file already exists (remove it or open it instead)`);
    case Errno.EACCES:
    case Errno.EPERM:
      return new RawDiskError(path, `no permission to open disk image '${path}'${readOnly ? '' : ' read-write (open it read-only or fix its permissions)'}`);
    case Errno.EROFS:
      return new RawDiskError(path, `disk image '${path}' is on a read-only filesystem: open it read-only`);
    case Errno.EISDIR:
      return new RawDiskError(path, `'${path}' is a directory, not a disk image`);
    default:
      return new RawDiskError(path, `cannot open disk image '${path}': ${e.message}`);
  }
}

/** A stable identity for VPD pages: the image's canonical path, hashed (same file, same serial, across runs). */
function serialOf(path: string): string {
  let canonical = path;
  try {
    canonical = fs.realpathSync(path);
  } catch {
    // keep the path as given
  }
  return crypto.createHash('sha256').update(canonical).digest('hex').slice(0, 20).toUpperCase();
}

/** Bytes covered by at most maxSegments segments of list, starting byteOffset bytes in. */
function bytesInSegments(list: IovecList, byteOffset: number, maxSegments: number): number {
  let skip = byteOffset;
  let bytes = 0;
  let taken = 0;
  for (let i = 0; i < list.count && taken < maxSegments; i++) {
    const length = list.lengthAt(i);
    if (skip >= length) {
      skip -= length;
      continue;
    }
    bytes += length - skip;
    skip = 0;
    taken++;
  }
  return bytes;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0;
}
