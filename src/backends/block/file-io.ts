// Asynchronous file I/O for disk backends (raw, VHDX): vectored reads and writes between
// guest RAM (iovecs) and an image file, data sync and hole punching. One completion sink
// per caller and a numeric token per operation, so completing allocates nothing.
import type { Poller } from '../../sys/epoll.js';
import { Errno } from '../../sys/errors.js';
import { fallocate, fdatasync, preadv, pwritev2 } from '../../sys/file.js';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, IoUring, RWF_DSYNC, type IoUringSink } from '../../sys/io-uring.js';
import type { IovecList } from '../../sys/iovec.js';
import { DeferredCompletions } from './deferred-completions.js';

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
  /**
   * Releases the engine. Drain first: operations the kernel already has are abandoned
   * (never completed); queued ones and any issued afterwards complete with -ECANCELED.
   */
  close(): void;
}

/** Completions of the synchronous engine and of cancelled operations: never from inside the call. */
const deliverFileIo = (sink: FileIoDone, token: number, result: number): void => sink.fileIoDone(token, result);

const PUNCH_MODE = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;

/**
 * Prepared operations handed to the kernel at once, before the turn ends. While
 * completions are being reaped, the requests they let the guest resubmit go to the disk
 * in fours instead of after the whole burst, so the disk is not left idle meanwhile.
 */
const SUBMIT_EARLY_AT = 4;

/** Blocking system calls, completed on a later microtask: the fallback when io_uring is unavailable, and a reference for tests. */
export class SyncFileIo implements FileIo {
  private readonly deferred = new DeferredCompletions<number, FileIoDone>(deliverFileIo);
  private closed = false;

  readv(fd: number, iov: IovecList, fileOffset: number, token: number, done: FileIoDone): void {
    this.deferred.push(token, done, this.closed ? -Errno.ECANCELED : preadv(fd, iov.address, iov.count, fileOffset));
  }

  writev(fd: number, iov: IovecList, fileOffset: number, token: number, done: FileIoDone, dsync = false): void {
    this.deferred.push(token, done, this.closed ? -Errno.ECANCELED : pwritev2(fd, iov.address, iov.count, fileOffset, dsync ? RWF_DSYNC : 0));
  }

  fdatasync(fd: number, token: number, done: FileIoDone): void {
    this.deferred.push(token, done, this.closed ? -Errno.ECANCELED : fdatasync(fd));
  }

  punchHole(fd: number, offset: number, length: number, token: number, done: FileIoDone): void {
    this.deferred.push(token, done, this.closed ? -Errno.ECANCELED : fallocate(fd, PUNCH_MODE, offset, length));
  }

  close(): void {
    this.closed = true;
  }
}

const enum OpKind {
  Readv,
  Writev,
  Fdatasync,
  PunchHole,
}

/** One operation's parameters, pooled; its index is the SQE's user_data. */
class UringOp {
  kind = OpKind.Readv;
  fd = -1;
  iov: IovecList | null = null;
  offset = 0;
  length = 0;
  dsync = false;
  token = 0;
  done: FileIoDone | null = null;
  /** Next in the waiting queue. */
  next: UringOp | null = null;
  constructor(readonly index: number) {}
}

/**
 * io_uring-backed FileIo. Operations are prepared straight into the SQ and submitted
 * once per turn of the event loop (a microtask) or every SUBMIT_EARLY_AT operations,
 * whichever comes first. In-flight operations are capped at the CQ size (completions
 * can never overflow); beyond that, or when the SQ is full, they wait in a FIFO.
 * One wake-up reaps at most a CQ's worth: operations served from the page cache complete
 * inside the submit, and an early submit inside the reap must not keep it going forever.
 */
export class UringFileIo implements FileIo, IoUringSink {
  readonly ring: IoUring;
  private readonly pollToken: number;
  private readonly ops: UringOp[] = [];
  private readonly free: number[] = [];
  private waitHead: UringOp | null = null;
  private waitTail: UringOp | null = null;
  private inFlight = 0;
  private readonly maxInFlight: number;
  private flushScheduled = false;
  /** Inside flush's own reaping: new work must wait for the next turn of the event loop. */
  private inFlush = false;
  private closed = false;
  private readonly deferred = new DeferredCompletions<number, FileIoDone>(deliverFileIo);
  private readonly flushBound = (): void => this.flush();
  private readonly completionsBound = (): void => this.onCompletions();

  constructor(private readonly poller: Poller, entries = 128) {
    this.ring = IoUring.create(entries);
    this.maxInFlight = this.ring.cqEntries;
    this.pollToken = poller.add(this.ring.completionFd.fd, () => this.onCompletions());
  }

  /** Operations handed to the kernel and not yet completed. */
  get inFlightCount(): number {
    return this.inFlight;
  }

  readv(fd: number, iov: IovecList, fileOffset: number, token: number, done: FileIoDone): void {
    this.issue(OpKind.Readv, fd, iov, fileOffset, 0, false, token, done);
  }

  writev(fd: number, iov: IovecList, fileOffset: number, token: number, done: FileIoDone, dsync = false): void {
    this.issue(OpKind.Writev, fd, iov, fileOffset, 0, dsync, token, done);
  }

  fdatasync(fd: number, token: number, done: FileIoDone): void {
    this.issue(OpKind.Fdatasync, fd, null, 0, 0, false, token, done);
  }

  punchHole(fd: number, offset: number, length: number, token: number, done: FileIoDone): void {
    this.issue(OpKind.PunchHole, fd, null, offset, length, false, token, done);
  }

  private issue(kind: OpKind, fd: number, iov: IovecList | null, offset: number, length: number, dsync: boolean, token: number, done: FileIoDone): void {
    if (this.closed) {
      this.deferred.push(token, done, -Errno.ECANCELED);
      return;
    }
    const op = this.take();
    op.kind = kind;
    op.fd = fd;
    op.iov = iov;
    op.offset = offset;
    op.length = length;
    op.dsync = dsync;
    op.token = token;
    op.done = done;
    // Keep order: nothing overtakes operations already waiting.
    if (this.waitHead !== null || !this.start(op)) this.enqueue(op);
  }

  private take(): UringOp {
    const index = this.free.pop();
    if (index !== undefined) return this.ops[index]!;
    const op = new UringOp(this.ops.length);
    this.ops.push(op);
    return op;
  }

  private release(op: UringOp): void {
    op.iov = null;
    op.done = null;
    op.next = null;
    this.free.push(op.index);
  }

  private enqueue(op: UringOp): void {
    op.next = null;
    if (this.waitTail === null) this.waitHead = op;
    else this.waitTail.next = op;
    this.waitTail = op;
  }

  /** Prepares op in the SQ; false when the CQ budget or the SQ is exhausted. */
  private start(op: UringOp): boolean {
    if (this.inFlight >= this.maxInFlight) return false;
    if (!this.prep(op)) {
      // The SQ is full of prepared entries: hand them to the kernel now to make room.
      this.submitNow();
      if (!this.prep(op)) return false;
    }
    this.inFlight++;
    // Not inside flush's own reaping: there, new work waits for the next turn (see flush).
    if (!this.inFlush && this.ring.pending >= SUBMIT_EARLY_AT) this.submitNow();
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      // Work issued by completions that flush itself reaped goes out on the next turn:
      // a microtask would chain submit -> inline completion -> submit forever when every
      // read hits the page cache, starving timers and other I/O.
      if (this.inFlush) setImmediate(this.flushBound);
      else queueMicrotask(this.flushBound);
    }
    return true;
  }

  private prep(op: UringOp): boolean {
    const ring = this.ring;
    switch (op.kind) {
      case OpKind.Readv:
        return ring.prepReadv(op.fd, op.iov!, op.offset, op.index);
      case OpKind.Writev:
        return ring.prepWritev(op.fd, op.iov!, op.offset, op.index, op.dsync ? RWF_DSYNC : 0);
      case OpKind.Fdatasync:
        return ring.prepFsync(op.fd, op.index, true);
      case OpKind.PunchHole:
        return ring.prepFallocate(op.fd, PUNCH_MODE, op.offset, op.length, op.index);
    }
  }

  private submitNow(): void {
    try {
      this.ring.submit();
    } catch (e) {
      // Only a broken ring (EBADF, EFAULT) gets here; surface it rather than hang.
      this.fail(e);
    }
  }

  /** Submits what this turn prepared, then takes any completions that are already there. */
  flush(): void {
    this.flushScheduled = false;
    if (this.closed) return;
    this.submitNow();
    if (this.ring.pending > 0 && !this.flushScheduled) {
      // The kernel was short of resources (EAGAIN): try again on the next turn.
      this.flushScheduled = true;
      setImmediate(this.flushBound);
    }
    // Operations served from the page cache completed inside io_uring_enter: take them
    // now rather than after an epoll round trip.
    this.inFlush = true;
    try {
      if (this.ring.ready > 0) this.onCompletions();
      else this.startWaiting();
    } finally {
      this.inFlush = false;
    }
  }

  private onCompletions(): void {
    if (this.closed) return;
    this.ring.completionFd.drain();
    const limit = this.ring.cqEntries;
    // More left after a full CQ's worth: take them on the next turn, after timers and other fds.
    if (this.ring.reap(this, limit) === limit && this.ring.ready > 0) setImmediate(this.completionsBound);
    this.startWaiting();
  }

  /** IoUringSink: one CQE. */
  ioDone(userData: number, result: number): void {
    const op = this.ops[userData];
    if (op === undefined || op.done === null) return; // not ours: ignore rather than throw
    const done = op.done;
    const token = op.token;
    this.inFlight--;
    this.release(op);
    done.fileIoDone(token, result);
  }

  private startWaiting(): void {
    while (this.waitHead !== null) {
      const op = this.waitHead;
      if (!this.start(op)) return;
      this.waitHead = op.next;
      if (this.waitHead === null) this.waitTail = null;
      op.next = null;
    }
  }

  private fail(error: unknown): void {
    queueMicrotask(() => {
      throw error;
    });
  }

  /** Stops completing; operations in flight are abandoned (callers drain before closing). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.poller.remove(this.pollToken);
    } catch {
      // The poller was stopped first (its epoll is gone): nothing left to unregister.
    }
    this.ring.close();
    // Waiting operations were never started: tell their owners.
    for (let op = this.waitHead; op !== null; op = op.next) this.deferred.push(op.token, op.done!, -Errno.ECANCELED);
    this.waitHead = this.waitTail = null;
  }
}
