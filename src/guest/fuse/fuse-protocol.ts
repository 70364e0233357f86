// The FUSE kernel ABI (linux/include/uapi/linux/fuse.h), protocol 7.x: the request and
// reply headers, the op structs the disk-file server uses, INIT negotiation, and the
// constants beside them. Codecs work on a DataView at an offset (the view of guest RAM,
// where requests are read) and decode into caller-owned objects, so the data path
// allocates nothing. 64-bit fields come back as numbers when below 2^53 and as -1
// otherwise (no BigInt per request); the request id is kept as two 32-bit halves and
// echoed back untouched.

export const FUSE_KERNEL_VERSION = 7;
/**
 * The minor version this server speaks. 7.28 brought max_pages; the request and reply
 * layouts used here have been fixed since 7.23. The kernel uses min(its, ours).
 */
export const FUSE_SERVER_MINOR = 31;
/** The lowest minor we accept: 7.12 is where create_in, mknod_in and the 7.9 attr sizes all settle. */
export const FUSE_MIN_MINOR = 12;
export const FUSE_ROOT_ID = 1;
/** A read from /dev/fuse must offer at least this many bytes. */
export const FUSE_MIN_READ_BUFFER = 8192;

export const FuseOpcode = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  SETATTR: 4,
  READLINK: 5,
  SYMLINK: 6,
  MKNOD: 8,
  MKDIR: 9,
  UNLINK: 10,
  RMDIR: 11,
  RENAME: 12,
  LINK: 13,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  FSYNC: 20,
  SETXATTR: 21,
  GETXATTR: 22,
  LISTXATTR: 23,
  REMOVEXATTR: 24,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  FSYNCDIR: 30,
  ACCESS: 34,
  CREATE: 35,
  INTERRUPT: 36,
  DESTROY: 38,
  IOCTL: 39,
  BATCH_FORGET: 42,
  FALLOCATE: 43,
  READDIRPLUS: 44,
  RENAME2: 45,
  LSEEK: 46,
  TMPFILE: 51,
  STATX: 52,
} as const;

/** INIT flags (fuse_init_in/out.flags; bits 32..63 travel in flags2 with FUSE_INIT_EXT). */
export const InitFlag = {
  ASYNC_READ: 1 << 0,
  ATOMIC_O_TRUNC: 1 << 3,
  BIG_WRITES: 1 << 5,
  AUTO_INVAL_DATA: 1 << 12,
  DO_READDIRPLUS: 1 << 13,
  ASYNC_DIO: 1 << 15,
  WRITEBACK_CACHE: 1 << 16,
  PARALLEL_DIROPS: 1 << 18,
  ABORT_ERROR: 1 << 21,
  MAX_PAGES: 1 << 22,
  INIT_EXT: 1 << 30,
} as const;

/** fuse_open_out.open_flags. */
export const FopenFlag = {
  DIRECT_IO: 1 << 0,
  KEEP_CACHE: 1 << 1,
  NONSEEKABLE: 1 << 2,
  NOFLUSH: 1 << 5,
  PARALLEL_DIRECT_WRITES: 1 << 6,
} as const;

/** fuse_setattr_in.valid. */
export const SetattrValid = {
  MODE: 1 << 0,
  UID: 1 << 1,
  GID: 1 << 2,
  SIZE: 1 << 3,
  ATIME: 1 << 4,
  MTIME: 1 << 5,
  FH: 1 << 6,
  ATIME_NOW: 1 << 7,
  MTIME_NOW: 1 << 8,
  LOCKOWNER: 1 << 9,
  CTIME: 1 << 10,
  KILL_SUIDGID: 1 << 11,
} as const;

/** fallocate(2) modes that reach FUSE_FALLOCATE. */
export const FallocateMode = {
  KEEP_SIZE: 0x01,
  PUNCH_HOLE: 0x02,
  ZERO_RANGE: 0x10,
} as const;

export const FileType = {
  S_IFDIR: 0o040000,
  S_IFREG: 0o100000,
} as const;

/** d_type values in fuse_dirent.type. */
export const DirentType = {
  DT_DIR: 4,
  DT_REG: 8,
} as const;

// Struct sizes (bytes), as on the wire for minor >= 12.
export const IN_HEADER_BYTES = 40;
export const OUT_HEADER_BYTES = 16;
export const INIT_IN_MIN_BYTES = 16; // major, minor, max_readahead, flags (flags2 and later are optional)
export const INIT_OUT_BYTES = 64;
export const ATTR_BYTES = 88;
export const ENTRY_OUT_BYTES = 40 + ATTR_BYTES;
export const ATTR_OUT_BYTES = 16 + ATTR_BYTES;
export const GETATTR_IN_BYTES = 16;
export const SETATTR_IN_BYTES = 88;
export const OPEN_IN_BYTES = 8;
export const OPEN_OUT_BYTES = 16;
export const READ_IN_BYTES = 40;
export const WRITE_IN_BYTES = 40;
export const WRITE_OUT_BYTES = 8;
export const STATFS_OUT_BYTES = 80;
export const RELEASE_IN_BYTES = 24;
export const FLUSH_IN_BYTES = 24;
export const FSYNC_IN_BYTES = 16;
export const FORGET_IN_BYTES = 8;
export const BATCH_FORGET_IN_BYTES = 8;
export const FORGET_ONE_BYTES = 16;
export const ACCESS_IN_BYTES = 8;
export const INTERRUPT_IN_BYTES = 8;
export const FALLOCATE_IN_BYTES = 32;
export const DIRENT_HEADER_BYTES = 24;

const TWO_32 = 2 ** 32;
/** High words above this make a u64 exceed 2^53. */
const MAX_SAFE_HIGH = 0x1fffff;

/** A u64 as a number, or -1 when it does not fit in 2^53. */
export function readU64(view: DataView, offset: number): number {
  const high = view.getUint32(offset + 4, true);
  if (high > MAX_SAFE_HIGH) return -1;
  return high * TWO_32 + view.getUint32(offset, true);
}

/** Writes a non-negative safe integer as a little-endian u64. */
export function writeU64(view: DataView, offset: number, value: number): void {
  view.setUint32(offset, value % TWO_32, true);
  view.setUint32(offset + 4, Math.floor(value / TWO_32), true);
}

export interface FuseInHeader {
  /** The length the kernel claims for the whole request. */
  len: number;
  opcode: number;
  uniqueLow: number;
  uniqueHigh: number;
  /** -1 when above 2^53 (never one of ours). */
  nodeid: number;
  uid: number;
  gid: number;
  pid: number;
}

export function newInHeader(): FuseInHeader {
  return { len: 0, opcode: 0, uniqueLow: 0, uniqueHigh: 0, nodeid: 0, uid: 0, gid: 0, pid: 0 };
}

export const HeaderStatus = {
  Ok: 0,
  /** Fewer bytes than a header: not even the request id can be trusted. */
  Truncated: 1,
  /** The header's len disagrees with the bytes read: answer -EIO. */
  LengthMismatch: 2,
} as const;
export type HeaderStatus = (typeof HeaderStatus)[keyof typeof HeaderStatus];

/** Decodes the fuse_in_header of a request of `available` bytes at `offset`. */
export function decodeInHeader(view: DataView, offset: number, available: number, out: FuseInHeader): HeaderStatus {
  if (!(available >= IN_HEADER_BYTES)) return HeaderStatus.Truncated;
  out.len = view.getUint32(offset, true);
  out.opcode = view.getUint32(offset + 4, true);
  out.uniqueLow = view.getUint32(offset + 8, true);
  out.uniqueHigh = view.getUint32(offset + 12, true);
  out.nodeid = readU64(view, offset + 16);
  out.uid = view.getUint32(offset + 24, true);
  out.gid = view.getUint32(offset + 28, true);
  out.pid = view.getUint32(offset + 32, true);
  return out.len === available ? HeaderStatus.Ok : HeaderStatus.LengthMismatch;
}

export function encodeInHeader(view: DataView, offset: number, header: FuseInHeader): void {
  view.setUint32(offset, header.len, true);
  view.setUint32(offset + 4, header.opcode, true);
  view.setUint32(offset + 8, header.uniqueLow, true);
  view.setUint32(offset + 12, header.uniqueHigh, true);
  writeU64(view, offset + 16, header.nodeid);
  view.setUint32(offset + 24, header.uid, true);
  view.setUint32(offset + 28, header.gid, true);
  view.setUint32(offset + 32, header.pid, true);
  view.setUint32(offset + 36, 0, true);
}

/** fuse_out_header: `error` is 0 or a negative errno. */
export function encodeOutHeader(view: DataView, offset: number, len: number, error: number, uniqueLow: number, uniqueHigh: number): void {
  view.setUint32(offset, len, true);
  view.setInt32(offset + 4, error, true);
  view.setUint32(offset + 8, uniqueLow, true);
  view.setUint32(offset + 12, uniqueHigh, true);
}

// ---- INIT ----

export interface InitIn {
  major: number;
  minor: number;
  maxReadahead: number;
  flags: number;
  /** Bits 32..63 of the flags, present when flags has INIT_EXT. */
  flags2: number;
}

export function decodeInitIn(view: DataView, offset: number, length: number, out: InitIn): boolean {
  if (length < INIT_IN_MIN_BYTES) return false;
  out.major = view.getUint32(offset, true);
  out.minor = view.getUint32(offset + 4, true);
  out.maxReadahead = view.getUint32(offset + 8, true);
  out.flags = view.getUint32(offset + 12, true);
  out.flags2 = length >= 20 && (out.flags & InitFlag.INIT_EXT) !== 0 ? view.getUint32(offset + 16, true) : 0;
  return true;
}

export interface InitOut {
  major: number;
  minor: number;
  maxReadahead: number;
  flags: number;
  maxBackground: number;
  congestionThreshold: number;
  maxWrite: number;
  timeGran: number;
  maxPages: number;
  flags2: number;
}

/** What the server wants from the connection. */
export interface InitWishes {
  /** Largest READ/WRITE payload the server's buffers take (a multiple of 4096). */
  maxIo: number;
  /** INIT flags the server would like; only those the kernel offers are granted. */
  flags: number;
  /** Requests the kernel may keep in the background queue (async reads, async direct I/O). */
  maxBackground: number;
}

export const InitVerdict = {
  Ok: 0,
  /** The kernel speaks a newer major: answer with ours only and it retries. */
  AnswerMajorOnly: 1,
  /** Too old to serve: answer -EPROTO. */
  Unsupported: 2,
} as const;
export type InitVerdict = (typeof InitVerdict)[keyof typeof InitVerdict];

/** Decides the INIT reply from the kernel's offer; pure, so it can be property-tested. */
export function negotiateInit(offer: InitIn, wishes: InitWishes, out: InitOut): InitVerdict {
  out.major = FUSE_KERNEL_VERSION;
  out.minor = FUSE_SERVER_MINOR;
  out.maxReadahead = 0;
  out.flags = 0;
  out.maxBackground = 0;
  out.congestionThreshold = 0;
  out.maxWrite = 0;
  out.timeGran = 0;
  out.maxPages = 0;
  out.flags2 = 0;
  if (offer.major > FUSE_KERNEL_VERSION) return InitVerdict.AnswerMajorOnly;
  if (offer.major < FUSE_KERNEL_VERSION || offer.minor < FUSE_MIN_MINOR) return InitVerdict.Unsupported;
  out.minor = Math.min(offer.minor, FUSE_SERVER_MINOR);
  // Flags the kernel did not offer are never claimed; INIT_EXT (and so flags2) is not used.
  out.flags = (wishes.flags & offer.flags & ~InitFlag.INIT_EXT) >>> 0;
  const maxPages = Math.max(1, Math.min(0xffff, Math.floor(wishes.maxIo / 4096)));
  const hasMaxPages = (out.flags & InitFlag.MAX_PAGES) !== 0;
  // Without MAX_PAGES the kernel caps a request at 32 pages whatever max_write says.
  out.maxWrite = hasMaxPages ? maxPages * 4096 : Math.min(maxPages, 32) * 4096;
  out.maxPages = hasMaxPages ? maxPages : 0;
  out.maxReadahead = Math.min(offer.maxReadahead, out.maxWrite);
  out.maxBackground = Math.max(1, Math.min(0xffff, wishes.maxBackground));
  out.congestionThreshold = Math.max(1, Math.floor((out.maxBackground * 3) / 4));
  out.timeGran = 1;
  return InitVerdict.Ok;
}

export function encodeInitOut(view: DataView, offset: number, init: InitOut): void {
  view.setUint32(offset, init.major, true);
  view.setUint32(offset + 4, init.minor, true);
  view.setUint32(offset + 8, init.maxReadahead, true);
  view.setUint32(offset + 12, init.flags, true);
  view.setUint16(offset + 16, init.maxBackground, true);
  view.setUint16(offset + 18, init.congestionThreshold, true);
  view.setUint32(offset + 20, init.maxWrite, true);
  view.setUint32(offset + 24, init.timeGran, true);
  view.setUint16(offset + 28, init.maxPages, true);
  view.setUint16(offset + 30, 0, true); // map_alignment
  view.setUint32(offset + 32, init.flags2, true);
  for (let i = 36; i < INIT_OUT_BYTES; i += 4) view.setUint32(offset + i, 0, true);
}

export function decodeInitOut(view: DataView, offset: number, out: InitOut): void {
  out.major = view.getUint32(offset, true);
  out.minor = view.getUint32(offset + 4, true);
  out.maxReadahead = view.getUint32(offset + 8, true);
  out.flags = view.getUint32(offset + 12, true);
  out.maxBackground = view.getUint16(offset + 16, true);
  out.congestionThreshold = view.getUint16(offset + 18, true);
  out.maxWrite = view.getUint32(offset + 20, true);
  out.timeGran = view.getUint32(offset + 24, true);
  out.maxPages = view.getUint16(offset + 28, true);
  out.flags2 = view.getUint32(offset + 32, true);
}

// ---- attributes, entries, open ----

export interface FuseAttr {
  ino: number;
  size: number;
  blocks: number;
  /** Seconds and nanoseconds, used for atime, mtime and ctime alike. */
  timeSeconds: number;
  timeNanoseconds: number;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  blksize: number;
}

export function newAttr(): FuseAttr {
  return { ino: 0, size: 0, blocks: 0, timeSeconds: 0, timeNanoseconds: 0, mode: 0, nlink: 0, uid: 0, gid: 0, blksize: 0 };
}

export function encodeAttr(view: DataView, offset: number, attr: FuseAttr): void {
  writeU64(view, offset, attr.ino);
  writeU64(view, offset + 8, attr.size);
  writeU64(view, offset + 16, attr.blocks);
  writeU64(view, offset + 24, attr.timeSeconds); // atime
  writeU64(view, offset + 32, attr.timeSeconds); // mtime
  writeU64(view, offset + 40, attr.timeSeconds); // ctime
  view.setUint32(offset + 48, attr.timeNanoseconds, true);
  view.setUint32(offset + 52, attr.timeNanoseconds, true);
  view.setUint32(offset + 56, attr.timeNanoseconds, true);
  view.setUint32(offset + 60, attr.mode, true);
  view.setUint32(offset + 64, attr.nlink, true);
  view.setUint32(offset + 68, attr.uid, true);
  view.setUint32(offset + 72, attr.gid, true);
  view.setUint32(offset + 76, 0, true); // rdev
  view.setUint32(offset + 80, attr.blksize, true);
  view.setUint32(offset + 84, 0, true); // flags
}

export function decodeAttr(view: DataView, offset: number, out: FuseAttr): void {
  out.ino = readU64(view, offset);
  out.size = readU64(view, offset + 8);
  out.blocks = readU64(view, offset + 16);
  out.timeSeconds = readU64(view, offset + 32);
  out.timeNanoseconds = view.getUint32(offset + 52, true);
  out.mode = view.getUint32(offset + 60, true);
  out.nlink = view.getUint32(offset + 64, true);
  out.uid = view.getUint32(offset + 68, true);
  out.gid = view.getUint32(offset + 72, true);
  out.blksize = view.getUint32(offset + 80, true);
}

/** Cache lifetimes the kernel may keep a name or attributes without asking again. */
export interface Validity {
  seconds: number;
  nanoseconds: number;
}

export function encodeEntryOut(view: DataView, offset: number, nodeid: number, entryValid: Validity, attrValid: Validity, attr: FuseAttr): void {
  writeU64(view, offset, nodeid);
  writeU64(view, offset + 8, 0); // generation: node ids are never reused
  writeU64(view, offset + 16, entryValid.seconds);
  writeU64(view, offset + 24, attrValid.seconds);
  view.setUint32(offset + 32, entryValid.nanoseconds, true);
  view.setUint32(offset + 36, attrValid.nanoseconds, true);
  encodeAttr(view, offset + 40, attr);
}

export function encodeAttrOut(view: DataView, offset: number, attrValid: Validity, attr: FuseAttr): void {
  writeU64(view, offset, attrValid.seconds);
  view.setUint32(offset + 8, attrValid.nanoseconds, true);
  view.setUint32(offset + 12, 0, true);
  encodeAttr(view, offset + 16, attr);
}

export function encodeOpenOut(view: DataView, offset: number, fh: number, openFlags: number): void {
  writeU64(view, offset, fh);
  view.setUint32(offset + 8, openFlags, true);
  view.setInt32(offset + 12, 0, true); // backing_id
}

export function encodeWriteOut(view: DataView, offset: number, size: number): void {
  view.setUint32(offset, size, true);
  view.setUint32(offset + 4, 0, true);
}

export interface Statfs {
  blocks: number;
  bsize: number;
  files: number;
  namelen: number;
}

/** fuse_kstatfs: nothing is free, a disk's blocks are all spoken for. */
export function encodeStatfsOut(view: DataView, offset: number, statfs: Statfs): void {
  writeU64(view, offset, statfs.blocks);
  writeU64(view, offset + 8, 0); // bfree
  writeU64(view, offset + 16, 0); // bavail
  writeU64(view, offset + 24, statfs.files);
  writeU64(view, offset + 32, 0); // ffree
  view.setUint32(offset + 40, statfs.bsize, true);
  view.setUint32(offset + 44, statfs.namelen, true);
  view.setUint32(offset + 48, statfs.bsize, true); // frsize
  for (let i = 52; i < STATFS_OUT_BYTES; i += 4) view.setUint32(offset + i, 0, true);
}

// ---- op structs in requests ----

/** fuse_read_in and fuse_write_in share a layout. */
export interface IoIn {
  fh: number;
  offset: number;
  size: number;
  flags: number;
}

export function newIoIn(): IoIn {
  return { fh: 0, offset: 0, size: 0, flags: 0 };
}

export function decodeIoIn(view: DataView, offset: number, length: number, out: IoIn): boolean {
  if (length < READ_IN_BYTES) return false;
  out.fh = readU64(view, offset);
  out.offset = readU64(view, offset + 8);
  out.size = view.getUint32(offset + 16, true);
  out.flags = view.getUint32(offset + 32, true);
  return true;
}

export function encodeIoIn(view: DataView, offset: number, io: IoIn): void {
  writeU64(view, offset, io.fh);
  writeU64(view, offset + 8, io.offset);
  view.setUint32(offset + 16, io.size, true);
  view.setUint32(offset + 20, 0, true);
  writeU64(view, offset + 24, 0);
  view.setUint32(offset + 32, io.flags, true);
  view.setUint32(offset + 36, 0, true);
}

export interface OpenIn {
  flags: number;
}

export function decodeOpenIn(view: DataView, offset: number, length: number, out: OpenIn): boolean {
  if (length < OPEN_IN_BYTES) return false;
  out.flags = view.getUint32(offset, true);
  return true;
}

export interface SetattrIn {
  valid: number;
  size: number;
}

export function decodeSetattrIn(view: DataView, offset: number, length: number, out: SetattrIn): boolean {
  if (length < SETATTR_IN_BYTES) return false;
  out.valid = view.getUint32(offset, true);
  out.size = readU64(view, offset + 16);
  return true;
}

export interface FallocateIn {
  fh: number;
  offset: number;
  length: number;
  mode: number;
}

export function decodeFallocateIn(view: DataView, offset: number, length: number, out: FallocateIn): boolean {
  if (length < FALLOCATE_IN_BYTES) return false;
  out.fh = readU64(view, offset);
  out.offset = readU64(view, offset + 8);
  out.length = readU64(view, offset + 16);
  out.mode = view.getUint32(offset + 24, true);
  return true;
}

/** The fh that starts fuse_release_in, fuse_flush_in and fuse_fsync_in; -1 if too short or too big. */
export function decodeLeadingFh(view: DataView, offset: number, length: number, minimum: number): number {
  if (length < minimum) return -1;
  return readU64(view, offset);
}

/** fuse_forget_in.nlookup, or -1. */
export function decodeForgetIn(view: DataView, offset: number, length: number): number {
  if (length < FORGET_IN_BYTES) return -1;
  return readU64(view, offset);
}

/**
 * Walks fuse_batch_forget_in: calls `each(nodeid, nlookup)` for the entries that lie
 * wholly inside `length`; returns how many it visited.
 */
export function forEachBatchForget(view: DataView, offset: number, length: number, each: (nodeid: number, nlookup: number) => void): number {
  if (length < BATCH_FORGET_IN_BYTES) return 0;
  const count = view.getUint32(offset, true);
  const fits = Math.floor((length - BATCH_FORGET_IN_BYTES) / FORGET_ONE_BYTES);
  const n = Math.min(count, fits);
  for (let i = 0; i < n; i++) {
    const at = offset + BATCH_FORGET_IN_BYTES + i * FORGET_ONE_BYTES;
    each(readU64(view, at), readU64(view, at + 8));
  }
  return n;
}

/** fuse_access_in.mask, or -1. */
export function decodeAccessIn(view: DataView, offset: number, length: number): number {
  if (length < ACCESS_IN_BYTES) return -1;
  return view.getUint32(offset, true);
}

/** Longest name a LOOKUP may carry (NAME_MAX). */
export const NAME_MAX = 255;

/**
 * The NUL-terminated name after a LOOKUP header, as latin1 (our names are ASCII), or
 * null when it is empty, unterminated or longer than NAME_MAX.
 */
export function decodeName(bytes: Uint8Array, offset: number, length: number): string | null {
  const limit = Math.min(length, NAME_MAX + 1);
  for (let i = 0; i < limit; i++) {
    if (bytes[offset + i] === 0) {
      if (i === 0) return null;
      return Buffer.from(bytes.buffer, bytes.byteOffset + offset, i).toString('latin1');
    }
  }
  return null;
}

// ---- directory entries ----

/** FUSE_DIRENT_ALIGN: records are padded to 8 bytes. */
export function direntBytes(nameLength: number): number {
  return (DIRENT_HEADER_BYTES + nameLength + 7) & ~7;
}

/**
 * Appends one fuse_dirent at `offset` if it fits in `capacity` bytes; returns its padded
 * size, or 0 when it does not fit. `nextOffset` is what the kernel passes back to
 * continue after this entry.
 */
export function encodeDirent(view: DataView, bytes: Uint8Array, offset: number, capacity: number, ino: number, nextOffset: number, type: number, name: string): number {
  const size = direntBytes(name.length);
  if (size > capacity) return 0;
  writeU64(view, offset, ino);
  writeU64(view, offset + 8, nextOffset);
  view.setUint32(offset + 16, name.length, true);
  view.setUint32(offset + 20, type, true);
  for (let i = 0; i < name.length; i++) bytes[offset + DIRENT_HEADER_BYTES + i] = name.charCodeAt(i) & 0xff;
  for (let i = DIRENT_HEADER_BYTES + name.length; i < size; i++) bytes[offset + i] = 0;
  return size;
}

export interface Dirent {
  ino: number;
  nextOffset: number;
  type: number;
  name: string;
}

/** Parses a READDIR reply body (for tests and tools); stops at the first malformed record. */
export function decodeDirents(view: DataView, bytes: Uint8Array, offset: number, length: number): Dirent[] {
  const out: Dirent[] = [];
  let at = 0;
  while (at + DIRENT_HEADER_BYTES <= length) {
    const nameLength = view.getUint32(offset + at + 16, true);
    const size = direntBytes(nameLength);
    if (nameLength === 0 || nameLength > NAME_MAX || at + size > length) break;
    out.push({
      ino: readU64(view, offset + at),
      nextOffset: readU64(view, offset + at + 8),
      type: view.getUint32(offset + at + 20, true),
      name: Buffer.from(bytes.buffer, bytes.byteOffset + offset + at + DIRENT_HEADER_BYTES, nameLength).toString('latin1'),
    });
    at += size;
  }
  return out;
}
