// An eventfd: the doorbell used for every signal in enlighten (guest to host, host to
// guest, worker wake-ups). Signals coalesce, which is exactly the semantics of an interrupt.
import { Errno, SysError } from './errors.js';
import { check, errno, raw } from './libc.js';

const EFD_NONBLOCK = 0o4000;
const EFD_CLOEXEC = 0o2000000;

export class EventFd {
  readonly fd: number;
  private readonly cell = [0n];
  private closed = false;

  private constructor(fd: number) {
    this.fd = fd;
  }

  static create(): EventFd {
    return new EventFd(check('eventfd', raw.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC) as number));
  }

  /** Wraps an eventfd created elsewhere in this process (another thread passes the number). */
  static fromFd(fd: number): EventFd {
    return new EventFd(fd);
  }

  signal(): void {
    this.cell[0] = 1n;
    const n = raw.write_u64(this.fd, this.cell, 8) as number;
    // EAGAIN means the counter is saturated: the reader is already due to wake.
    if (n === -1 && errno() !== Errno.EAGAIN) throw new SysError('write(eventfd)', errno());
  }

  /** Consumes pending signals; returns how many were pending (0 if none). */
  drain(): bigint {
    const n = raw.read_u64(this.fd, this.cell, 8) as number;
    if (n === -1) {
      const e = errno();
      if (e === Errno.EAGAIN) return 0n;
      throw new SysError('read(eventfd)', e);
    }
    // koffi writes the counter back as a number (a bigint only above 2^53): normalise.
    return BigInt(this.cell[0]!);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    check('close', raw.close(this.fd) as number);
  }
}
