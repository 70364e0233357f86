// A disk the reference guest's storvsc found: what sd.c learns about a SCSI disk during
// its probe (size, block size, write protect, cache mode, FUA, discard) and the
// GuestBlockDevice the upper layers (FUSE, benchmarks, control ops) submit requests to.
import type { GuestBlockDevice, GuestBlockRequest } from './guest-block-device.js';
import type { ScsiTarget, StorvscController } from './storvsc-controller.js';
import type { SenseData } from './scsi-replies.js';

export class StorvscDisk implements GuestBlockDevice, ScsiTarget {
  name: string;
  sizeBytes = 0;
  blockBytes = 512;
  readOnly = false;
  writeCache = false;
  fua = false;
  discard = false;
  present = true;
  tagged = false;
  use16 = false;
  maxChunkBytes = 4096;
  maxUnmapBlocks = 0;
  /** INQUIRY vendor / product, for logs and reports. */
  vendor = '';
  product = '';
  /** VPD 0xB1 rotation rate 1: the queue is non-rotational. */
  nonRotational = false;
  readonly lastSense: SenseData = { key: 0, asc: 0, ascq: 0 };

  constructor(
    readonly controller: StorvscController,
    readonly channel: number,
    readonly target: number,
    readonly lun: number,
    name: string,
  ) {
    this.name = name;
  }

  /** How many channels the adapter spreads this disk's requests over. */
  get channels(): number {
    return this.controller.channelCount;
  }

  submit(request: GuestBlockRequest): void {
    this.controller.submitBlock(this, request);
  }
}
