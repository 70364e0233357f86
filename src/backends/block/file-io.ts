// Asynchronous file I/O for disk backends (raw, VHDX): vectored reads and writes between
// guest RAM (iovecs) and an image file, data sync and hole punching. One completion sink
// per caller and a numeric token per operation, so completing allocates nothing.
import type { IovecList } from '../../sys/iovec.js';

export interface FileIoDone {
  /** result: bytes moved (readv/writev) or 0 (fdatasync/punchHole) on success, or -errno. */
  fileIoDone(token: number, result: number): void;
}

export interface FileIo {
  /**
   * Reads iov.byteLength bytes at fileOffset. The iovec list must stay untouched until
   * done is called. A short result is not retried here: the caller decides.
   */
  readv(fd: number, iov: IovecList, fileOffset: number, token: number, done: FileIoDone): void;
  /** dsync: the data is durable when this completes (RWF_DSYNC, used for FUA). */
  writev(fd: number, iov: IovecList, fileOffset: number, token: number, done: FileIoDone, dsync?: boolean): void;
  fdatasync(fd: number, token: number, done: FileIoDone): void;
  /** fallocate(PUNCH_HOLE | KEEP_SIZE): the range reads as zeros afterwards; -EOPNOTSUPP if the filesystem cannot. */
  punchHole(fd: number, offset: number, length: number, token: number, done: FileIoDone): void;
  /** Releases the engine; operations still in flight are not completed. */
  close(): void;
}
