// What a disk image is to the SCSI target: a byte-addressed store with asynchronous,
// zero-copy requests whose buffers are iovecs pointing into guest RAM. Raw files, VHDX,
// memory and fault-injecting disks all implement it.
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { IovecList } from '../../sys/iovec.js';

export interface DiskInfo {
  /** Capacity in bytes, a multiple of logicalBlockBytes. */
  readonly sizeBytes: number;
  /** 512 or 4096. */
  readonly logicalBlockBytes: number;
  /** A power-of-two multiple of logicalBlockBytes. */
  readonly physicalBlockBytes: number;
  readonly readOnly: boolean;
  /** The backend frees space on discard (UNMAP); discarded ranges then read as zeros. */
  readonly discard: boolean;
  /** Writes are cached until flush (so the guest should send SYNCHRONIZE CACHE / FUA). */
  readonly writeCache: boolean;
  /** A stable identity for VPD 0x80 / 0x83 (derived from the image). */
  readonly serial: string;
}

/**
 * One request, owned and pooled by the submitter and reused: the backend must not keep
 * it after calling done.blockDone.
 */
export interface BlockIo {
  /** Byte offset on the disk (a multiple of logicalBlockBytes). */
  offset: number;
  /** Bytes to move (read/write: equals iov.byteLength) or to discard. */
  length: number;
  /** Buffers in guest RAM, as host addresses of the guest mapping. */
  readonly iov: IovecList;
  /** The guest RAM the iovecs point into (for backends that copy in JS, e.g. memory disks). */
  readonly memory: GuestMemory;
  /** Force unit access: the write is durable when it completes. */
  fua: boolean;
  /** The submitter's own context; the backend never looks at it. */
  tag: unknown;
}

/** Completion sink: one object per submitter, so completing allocates nothing. */
export interface BlockDone {
  /** result: >= 0 on success (bytes moved for read/write, 0 otherwise), or -errno. */
  blockDone(io: BlockIo, result: number): void;
}

export interface BlockBackend {
  readonly info: DiskInfo;
  read(io: BlockIo, done: BlockDone): void;
  /** -EROFS on a read-only disk. */
  write(io: BlockIo, done: BlockDone): void;
  /** Everything completed before is durable when this completes. */
  flush(io: BlockIo, done: BlockDone): void;
  /** Deallocate [offset, offset+length); the range reads as zeros afterwards. */
  discard(io: BlockIo, done: BlockDone): void;
  /** Counters for inspect/tests. */
  readonly stats?: { reads: number; writes: number; flushes: number; discards: number; errors: number };
  /** Waits for in-flight requests, flushes, releases the image (and its lock). */
  close(): Promise<void>;
}
