// What one SCSI command addresses and what it comes back with: the target (path, target,
// LUN and the per-device limits the request engine obeys), the vmscsi data direction, and
// the result the midlayer (scan, sd setup) reads.
import { SrbStatus, VMSCSI_SENSE_BYTES } from '../../devices/storvsp/storvsp-protocol.js';
import { parseSense, type SenseData } from './scsi-replies.js';

/** vmscsi_request.data_in. */
export const DataIn = { Write: 0, Read: 1, None: 2 } as const;

/** What the midlayer learns from one SCSI command (the scan and sd setup use it). */
export class CommandResult {
  /** 0, or -errno when the command never got a SCSI answer (-ETIMEDOUT, -ENODEV, -EIO). */
  error = 0;
  srbStatus = 0;
  scsiStatus = 0;
  /** data_transfer_length of the reply (0 unless the SRB status is SUCCESS or DATA_OVERRUN). */
  transferred = 0;
  readonly sense = new Uint8Array(VMSCSI_SENSE_BYTES);
  /** Bytes of valid sense (only with CHECK CONDITION and autosense valid). */
  senseLength = 0;

  get good(): boolean {
    const srb = this.srbStatus & 0x3f;
    return this.error === 0 && (srb === SrbStatus.Success || srb === SrbStatus.DataOverrun) && this.scsiStatus === 0;
  }

  senseData(): SenseData | null {
    const s: SenseData = { key: 0, asc: 0, ascq: 0 };
    return this.senseLength > 0 && parseSense(this.sense, this.senseLength, s) ? s : null;
  }
}

/** The addressing and per-device state a request needs (StorvscDisk implements it). */
export interface ScsiTarget {
  readonly channel: number;
  readonly target: number;
  readonly lun: number;
  /** Tagged queueing (INQUIRY CmdQue): selects the SRB queue fields Linux sets. */
  tagged: boolean;
  present: boolean;
  sizeBytes: number;
  blockBytes: number;
  discard: boolean;
  /** Largest data chunk per command (max_transfer_bytes and VPD B0 limits). */
  maxChunkBytes: number;
  /** Largest UNMAP descriptor, in blocks. */
  maxUnmapBlocks: number;
  writeCache: boolean;
  fua: boolean;
  use16: boolean;
  /** The last sense seen on this device (CHECK CONDITION with autosense). */
  readonly lastSense: SenseData;
}
