// The reference guest's block device: what its storvsc driver offers upward for each
// disk it found (Linux's gendisk/blk-mq, reduced). Buffers are guest-physical and
// contiguous, so requests go to the host as GPA-direct page lists with no copy; the
// FUSE exposure and the storage benchmark sit on this interface.

export const BlockOp = {
  Read: 0,
  Write: 1,
  Flush: 2,
  Discard: 3,
} as const;
export type BlockOp = (typeof BlockOp)[keyof typeof BlockOp];

/** Pooled and reused by the caller; the device must not keep it after done(). */
export interface GuestBlockRequest {
  op: BlockOp;
  /** Byte offset on the disk (a multiple of blockBytes). */
  offset: number;
  /** Bytes (a multiple of blockBytes; 0 for flush). */
  length: number;
  /** Guest-physical address of a contiguous buffer of `length` bytes (read/write). */
  gpa: number;
  /** Force unit access (write). */
  fua: boolean;
  /** 0 on success, or -errno as Linux's block layer reports it: -EIO, -EROFS, -ENOSPC, -ETIMEDOUT, -ENODEV. */
  done(result: number): void;
}

export interface GuestBlockDevice {
  /** "lun<N>", the name used for FUSE files and events. */
  readonly name: string;
  readonly channel: number;
  readonly target: number;
  readonly lun: number;
  readonly sizeBytes: number;
  readonly blockBytes: number;
  readonly readOnly: boolean;
  readonly writeCache: boolean;
  readonly fua: boolean;
  readonly discard: boolean;
  /** False once the disk was removed (hot-remove, rescind, unload): requests fail with -ENODEV. */
  readonly present: boolean;
  /** Queues a request; done() is called exactly once, never synchronously from submit(). */
  submit(request: GuestBlockRequest): void;
}
