// The per-command state of a disk command that goes to the backend: a BlockIo with its own
// iovec list, pooled so the data path allocates nothing. One request per in-flight command;
// multi-step commands (UNMAP with several descriptors, WRITE SAME split into chunks) reuse
// the same request for each backend call, one after the other.
import type { GuestMemory } from '../../memory/guest-memory.js';
import { IovecList } from '../../sys/iovec.js';
import type { BlockIo } from '../../backends/block/block-backend.js';
import type { ScsiCommand } from './scsi-command.js';

/** What the backend is asked to do for the command, step by step. */
export const RequestKind = {
  Read: 0,
  Write: 1,
  Flush: 2,
  /** One discard per UNMAP descriptor. */
  Unmap: 3,
  /** WRITE SAME: the one block written repeatedly, in chunks. */
  WriteSame: 4,
} as const;
export type RequestKind = (typeof RequestKind)[keyof typeof RequestKind];

export class DiskRequest implements BlockIo {
  offset = 0;
  length = 0;
  readonly iov: IovecList;
  memory!: GuestMemory;
  fua = false;
  tag: unknown = null;

  /** The command this request serves; null while free. */
  command: ScsiCommand | null = null;
  kind: RequestKind = RequestKind.Read;
  /** Set when the backend threw: never reused, a late completion is ignored. */
  abandoned = false;

  // Completion handshake: a backend may complete inside the submitting call. The result is
  // then parked here and the submit loop goes on, so a long chain of steps never recurses.
  submitting = false;
  completedDuringSubmit = false;
  parkedResult = 0;
  /** Submitted and waiting for blockDone; a second completion is ignored. */
  waiting = false;

  // UNMAP: the descriptors (byte ranges), validated before the first discard.
  readonly rangeOffsets: Float64Array;
  readonly rangeLengths: Float64Array;
  rangeCount = 0;
  rangeIndex = 0;

  // WRITE SAME: where the next chunk starts, what is left, blocks per chunk.
  nextOffset = 0;
  remainingBlocks = 0;
  chunkBlocks = 0;
  /** What to report as bytesTransferred on success. */
  successBytes = 0;

  constructor(
    readonly owner: object,
    iovCapacity: number,
    maxRanges: number,
  ) {
    this.iov = new IovecList(iovCapacity);
    this.rangeOffsets = new Float64Array(maxRanges);
    this.rangeLengths = new Float64Array(maxRanges);
  }
}

/**
 * A free list of requests, grown on demand up to `limit` (so an idle disk costs nothing
 * and a busy one stops allocating once it has seen its peak).
 */
export class DiskRequestPool {
  private readonly free: DiskRequest[] = [];
  private created = 0;
  private busy = 0;

  constructor(
    private readonly owner: object,
    readonly limit: number,
    private readonly iovCapacity: number,
    private readonly maxRanges: number,
  ) {}

  get inFlight(): number {
    return this.busy;
  }

  /** A free request bound to `command`, or null when `limit` are in flight. */
  acquire(command: ScsiCommand): DiskRequest | null {
    let request = this.free.pop();
    if (request === undefined) {
      if (this.created >= this.limit) return null;
      request = new DiskRequest(this.owner, this.iovCapacity, this.maxRanges);
      this.created++;
    }
    this.busy++;
    request.command = command;
    request.memory = command.memory;
    request.fua = false;
    request.offset = 0;
    request.length = 0;
    request.iov.clear();
    request.rangeCount = 0;
    request.rangeIndex = 0;
    request.successBytes = 0;
    request.submitting = false;
    request.completedDuringSubmit = false;
    request.waiting = false;
    return request;
  }

  /** Returns the request's command and frees the request (unless abandoned). */
  release(request: DiskRequest): ScsiCommand {
    const command = request.command!;
    request.command = null;
    request.waiting = false;
    if (!request.abandoned) {
      this.busy--;
      this.free.push(request);
    }
    return command;
  }

  /**
   * Takes a request whose backend call threw out of service for good: the backend may still
   * hold it, so it is never handed out again. A new one may be created in its place.
   */
  abandon(request: DiskRequest): void {
    if (request.abandoned) return;
    request.abandoned = true;
    this.busy--;
    this.created--;
  }
}
