// io_uring: the kernel's asynchronous I/O queue pair, driven from JS without liburing.
// The submission ring, completion ring and SQE array are mmapped once; preparing an
// operation writes one 64-byte SQE in place and submitting is a single io_uring_enter,
// so a batch of guest I/O costs one system call. Completions are announced on an
// eventfd (IORING_REGISTER_EVENTFD) so a Poller can wake the JS thread for them.
// Layouts and constants follow include/uapi/linux/io_uring.h (x86-64).
import { EventFd } from './eventfd.js';
import { Errno, SysError } from './errors.js';
import type { IovecList } from './iovec.js';
import { errno, libc, raw, viewOf } from './libc.js';
import { mmap, munmap, MAP_SHARED, PROT_READ, PROT_WRITE } from './memfd.js';

const SYS_io_uring_setup = 425;
const SYS_io_uring_enter = 426;
const SYS_io_uring_register = 427;

// glibc's syscall() is variadic but reads its arguments as plain registers, so fixed
// prototypes per system call are safe on x86-64 (and skip koffi's variadic path).
const sys = {
  setup: libc.func('long syscall(long nr, unsigned int entries, _Inout_ uint8_t *params)'),
  enter: libc.func('long syscall(long nr, int fd, unsigned int to_submit, unsigned int min_complete, unsigned int flags, void *sig, size_t sigsz)'),
  registerEventFd: libc.func('long syscall(long nr, int fd, unsigned int opcode, _In_ int32_t *arg, unsigned int nr_args)'),
} as const;

export const IORING_OFF_SQ_RING = 0;
export const IORING_OFF_CQ_RING = 0x8000000;
export const IORING_OFF_SQES = 0x10000000;

export const IORING_FEAT_SINGLE_MMAP = 1 << 0;
export const IORING_FEAT_NODROP = 1 << 1;
export const IORING_SETUP_CLAMP = 1 << 4;
export const IORING_ENTER_GETEVENTS = 1 << 0;
export const IORING_REGISTER_EVENTFD = 4;
export const IORING_FSYNC_DATASYNC = 1 << 0;

export const IORING_OP_NOP = 0;
export const IORING_OP_READV = 1;
export const IORING_OP_WRITEV = 2;
export const IORING_OP_FSYNC = 3;
export const IORING_OP_FALLOCATE = 17;

/** preadv2/pwritev2 and SQE rw_flags: the write is durable on completion (O_DSYNC for one call). */
export const RWF_HIPRI = 0x1;
export const RWF_DSYNC = 0x2;
export const RWF_SYNC = 0x4;
export const FALLOC_FL_KEEP_SIZE = 0x1;
export const FALLOC_FL_PUNCH_HOLE = 0x2;
export const FALLOC_FL_ZERO_RANGE = 0x10;

/** The kernel refuses readv/writev with more segments than this (UIO_MAXIOV). */
export const UIO_MAXIOV = 1024;

const PARAMS_BYTES = 120;
const SQE_BYTES = 64;
const SQE_WORDS = SQE_BYTES / 4;
const CQE_BYTES = 16;
const MAP_POPULATE = 0x8000;
const TWO_32 = 2 ** 32;
const MAX_ENTRIES = 32768;

/** Receives completions from IoUring.reap; one object per user, so reaping allocates nothing. */
export interface IoUringSink {
  /** result: the CQE's res, bytes moved or 0 on success, -errno on failure. */
  ioDone(userData: number, result: number): void;
}

export class IoUring {
  readonly fd: number;
  /** Readable (non-zero) once CQEs were posted; the reaper drains it. */
  readonly completionFd: EventFd;
  readonly sqEntries: number;
  readonly cqEntries: number;

  // Ring words. Indices are into a Uint32Array over the ring mapping.
  private readonly sqWords: Uint32Array;
  private readonly cqWords: Uint32Array;
  private readonly cqInts: Int32Array;
  private readonly sqHead: number;
  private readonly sqTail: number;
  private readonly sqMask: number;
  private readonly cqHead: number;
  private readonly cqTail: number;
  private readonly cqMask: number;
  private readonly cqesWord: number;
  private readonly sqes: Uint32Array;

  /** Our copy of the SQ tail: entries prepared so far (published at submit). */
  private localTail: number;
  /** Prepared but not yet accepted by the kernel. */
  private unsubmitted = 0;
  private readonly mappings: Array<[bigint, number]> = [];
  private closed = false;

  private constructor(fd: number, params: Buffer) {
    this.fd = fd;
    const u32 = (offset: number): number => params.readUInt32LE(offset);
    this.sqEntries = u32(0);
    this.cqEntries = u32(4);
    const features = u32(20);
    // struct io_sqring_offsets at 40, struct io_cqring_offsets at 80.
    const sqOff = { head: u32(40), tail: u32(44), ringMask: u32(48), array: u32(64) };
    const cqOff = { head: u32(80), tail: u32(84), ringMask: u32(88), cqes: u32(100) };
    const sqRingBytes = sqOff.array + this.sqEntries * 4;
    const cqRingBytes = cqOff.cqes + this.cqEntries * CQE_BYTES;

    try {
      let sqRing: bigint;
      let cqRing: bigint;
      if (features & IORING_FEAT_SINGLE_MMAP) {
        const bytes = Math.max(sqRingBytes, cqRingBytes);
        sqRing = this.map(bytes, IORING_OFF_SQ_RING);
        cqRing = sqRing;
        this.sqWords = new Uint32Array(viewOf(sqRing, bytes));
        this.cqWords = this.sqWords;
      } else {
        sqRing = this.map(sqRingBytes, IORING_OFF_SQ_RING);
        cqRing = this.map(cqRingBytes, IORING_OFF_CQ_RING);
        this.sqWords = new Uint32Array(viewOf(sqRing, sqRingBytes));
        this.cqWords = new Uint32Array(viewOf(cqRing, cqRingBytes));
      }
      this.cqInts = new Int32Array(this.cqWords.buffer);
      const sqesAddress = this.map(this.sqEntries * SQE_BYTES, IORING_OFF_SQES);
      this.sqes = new Uint32Array(viewOf(sqesAddress, this.sqEntries * SQE_BYTES));
    } catch (e) {
      this.unmapAll();
      raw.close(fd);
      throw e;
    }

    this.sqHead = sqOff.head / 4;
    this.sqTail = sqOff.tail / 4;
    this.sqMask = this.sqWords[sqOff.ringMask / 4]!;
    this.cqHead = cqOff.head / 4;
    this.cqTail = cqOff.tail / 4;
    this.cqMask = this.cqWords[cqOff.ringMask / 4]!;
    this.cqesWord = cqOff.cqes / 4;
    // SQE slot i is always published through array[i]: the indirection is set once, and
    // preparing writes the SQE at (tail & mask) directly (what liburing does).
    const arrayWord = sqOff.array / 4;
    for (let i = 0; i < this.sqEntries; i++) this.sqWords[arrayWord + i] = i;
    this.localTail = Atomics.load(this.sqWords, this.sqTail);

    try {
      this.completionFd = EventFd.create();
    } catch (e) {
      this.unmapAll();
      raw.close(fd);
      throw e;
    }
    const arg = [this.completionFd.fd];
    const r = Number(sys.registerEventFd(SYS_io_uring_register, fd, IORING_REGISTER_EVENTFD, arg, 1));
    if (r < 0) {
      const e = errno();
      this.completionFd.close();
      this.unmapAll();
      raw.close(fd);
      throw new SysError('io_uring_register(EVENTFD)', e);
    }
  }

  /** A ring with `entries` submission slots (rounded up to a power of two by the kernel). */
  static create(entries: number): IoUring {
    if (!Number.isInteger(entries) || entries < 1 || entries > MAX_ENTRIES) throw new RangeError(`io_uring entries ${entries} out of range 1..${MAX_ENTRIES}`);
    const params = Buffer.alloc(PARAMS_BYTES);
    params.writeUInt32LE(IORING_SETUP_CLAMP, 8);
    const fd = Number(sys.setup(SYS_io_uring_setup, entries, params));
    if (fd < 0) throw new SysError('io_uring_setup', errno());
    return new IoUring(fd, params);
  }

  private map(bytes: number, offset: number): bigint {
    const address = mmap(0n, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, this.fd, offset);
    this.mappings.push([address, bytes]);
    return address;
  }

  private unmapAll(): void {
    for (const [address, bytes] of this.mappings) munmap(address, bytes);
    this.mappings.length = 0;
  }

  /** Free submission slots right now (the kernel consumes SQEs during submit). */
  get sqSpace(): number {
    if (this.closed) return 0;
    return this.sqEntries - ((this.localTail - Atomics.load(this.sqWords, this.sqHead)) >>> 0);
  }

  /** Prepared operations that submit() has not handed to the kernel yet. */
  get pending(): number {
    return this.unsubmitted;
  }

  /** Claims the next SQE (fill() writes every word of it); returns its first word index, or -1 when the SQ is full. */
  private nextSqe(): number {
    if (this.closed) throw new Error('io_uring is closed');
    const head = Atomics.load(this.sqWords, this.sqHead);
    if (((this.localTail - head) >>> 0) >= this.sqEntries) return -1;
    const w = (this.localTail & this.sqMask) * SQE_WORDS;
    this.localTail = (this.localTail + 1) >>> 0;
    this.unsubmitted++;
    return w;
  }

  // SQE words: 0 opcode|flags|ioprio, 1 fd, 2-3 off, 4-5 addr, 6 len, 7 rw_flags,
  // 8-9 user_data, 10 buf_index|personality, 11 splice_fd_in, 12-15 addr3/pad.
  private fill(w: number, opcode: number, fd: number, offset: number, addrLo: number, addrHi: number, len: number, flags: number, userData: number): void {
    const s = this.sqes;
    s[w] = opcode;
    s[w + 1] = fd;
    s[w + 2] = offset % TWO_32;
    s[w + 3] = Math.floor(offset / TWO_32);
    s[w + 4] = addrLo;
    s[w + 5] = addrHi;
    s[w + 6] = len;
    s[w + 7] = flags;
    s[w + 8] = userData;
    // The rest is zero: user_data's high word, buf_index/personality, splice_fd_in, addr3.
    s[w + 9] = 0;
    s[w + 10] = 0;
    s[w + 11] = 0;
    s[w + 12] = 0;
    s[w + 13] = 0;
    s[w + 14] = 0;
    s[w + 15] = 0;
  }

  /** Vectored read into iov at fileOffset. False: the SQ is full (submit or reap first). */
  prepReadv(fd: number, iov: IovecList, fileOffset: number, userData: number): boolean {
    const w = this.nextSqe();
    if (w < 0) return false;
    const address = iov.addressNumber;
    this.fill(w, IORING_OP_READV, fd, fileOffset, address % TWO_32, Math.floor(address / TWO_32), iov.count, 0, userData);
    return true;
  }

  /** Vectored write; rwFlags e.g. RWF_DSYNC for a durable (FUA) write. */
  prepWritev(fd: number, iov: IovecList, fileOffset: number, userData: number, rwFlags = 0): boolean {
    const w = this.nextSqe();
    if (w < 0) return false;
    const address = iov.addressNumber;
    this.fill(w, IORING_OP_WRITEV, fd, fileOffset, address % TWO_32, Math.floor(address / TWO_32), iov.count, rwFlags, userData);
    return true;
  }

  prepFsync(fd: number, userData: number, datasync: boolean): boolean {
    const w = this.nextSqe();
    if (w < 0) return false;
    this.fill(w, IORING_OP_FSYNC, fd, 0, 0, 0, 0, datasync ? IORING_FSYNC_DATASYNC : 0, userData);
    return true;
  }

  /** fallocate(fd, mode, offset, length): the length travels in addr, the mode in len. */
  prepFallocate(fd: number, mode: number, offset: number, length: number, userData: number): boolean {
    const w = this.nextSqe();
    if (w < 0) return false;
    this.fill(w, IORING_OP_FALLOCATE, fd, offset, length % TWO_32, Math.floor(length / TWO_32), mode, 0, userData);
    return true;
  }

  /** A no-op; completes with result 0. */
  prepNop(userData: number): boolean {
    const w = this.nextSqe();
    if (w < 0) return false;
    this.fill(w, IORING_OP_NOP, -1, 0, 0, 0, 0, 0, userData);
    return true;
  }

  /**
   * Publishes the prepared SQEs and hands them to the kernel; returns how many it took.
   * EAGAIN/EBUSY/EINTR (out of resources or completions backing up) leave them queued
   * for the next call and return 0; any other failure throws.
   */
  submit(): number {
    if (this.closed || this.unsubmitted === 0) return 0;
    Atomics.store(this.sqWords, this.sqTail, this.localTail);
    const n = Number(sys.enter(SYS_io_uring_enter, this.fd, this.unsubmitted, 0, 0, null, 0));
    if (n < 0) {
      const e = errno();
      if (e === Errno.EAGAIN || e === Errno.EBUSY || e === Errno.EINTR) return 0;
      throw new SysError('io_uring_enter', e);
    }
    this.unsubmitted -= n;
    return n;
  }

  /** Waits until at least `minComplete` CQEs are ready (for blocking users and tests). */
  wait(minComplete: number): void {
    if (this.closed) return;
    Atomics.store(this.sqWords, this.sqTail, this.localTail);
    const n = Number(sys.enter(SYS_io_uring_enter, this.fd, this.unsubmitted, minComplete, IORING_ENTER_GETEVENTS, null, 0));
    if (n < 0) {
      const e = errno();
      if (e === Errno.EAGAIN || e === Errno.EBUSY || e === Errno.EINTR) return;
      throw new SysError('io_uring_enter', e);
    }
    this.unsubmitted -= n;
  }

  /** Completions waiting in the CQ. */
  get ready(): number {
    if (this.closed) return 0;
    return (Atomics.load(this.cqWords, this.cqTail) - Atomics.load(this.cqWords, this.cqHead)) >>> 0;
  }

  /**
   * Drains the CQ into sink.ioDone, at most `limit` entries; returns how many were
   * delivered. The head advances before each callback, so a callback may prepare, submit
   * and even reap again.
   */
  reap(sink: IoUringSink, limit = Infinity): number {
    if (this.closed) return 0;
    const words = this.cqWords;
    let n = 0;
    while (n < limit) {
      const head = Atomics.load(words, this.cqHead);
      if (head === Atomics.load(words, this.cqTail)) return n;
      const w = this.cqesWord + (head & this.cqMask) * (CQE_BYTES / 4);
      // user_data is a u64 of which we only ever set the low word; res is an s32.
      const userData = words[w]!;
      const result = this.cqInts[w + 2]!;
      Atomics.store(words, this.cqHead, (head + 1) >>> 0);
      n++;
      sink.ioDone(userData, result);
    }
    return n;
  }

  /** Unmaps the rings and closes the ring and its eventfd. In-flight operations are abandoned. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    // Closing the ring fd cancels what is in flight; the kernel keeps the pages until then.
    raw.close(this.fd);
    this.unmapAll();
    this.completionFd.close();
  }
}
