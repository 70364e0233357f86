// One SCSI command as the transport (StorVSP) hands it to a logical unit: the CDB, the
// initiator's buffer in guest RAM, and the result fields the unit fills before complete().
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { IovecList } from '../../sys/iovec.js';

export const DataDirection = {
  /** Initiator to device (WRITE). */
  ToDevice: 0,
  /** Device to initiator (READ). */
  FromDevice: 1,
  None: 2,
} as const;
export type DataDirection = (typeof DataDirection)[keyof typeof DataDirection];

/** SAM status byte values. */
export const ScsiStatus = {
  Good: 0x00,
  CheckCondition: 0x02,
  Busy: 0x08,
  TaskSetFull: 0x28,
} as const;

/** Pooled and reused by the transport; the unit must not keep it after complete(). */
export interface ScsiCommand {
  /** At least 16 bytes; the first cdbLength are valid. */
  readonly cdb: Uint8Array;
  cdbLength: number;
  dataDirection: DataDirection;
  /** The initiator's buffer (guest RAM, host addresses); byteLength = its size. */
  readonly data: IovecList;
  readonly memory: GuestMemory;

  // Results, set by the unit before complete():
  scsiStatus: number;
  /** Fixed-format sense (response code 0x70) when scsiStatus is CHECK CONDITION. */
  readonly sense: Uint8Array;
  senseLength: number;
  /** Bytes actually moved to or from the buffer. */
  bytesTransferred: number;

  /** Called exactly once by the unit, synchronously or later. */
  complete(): void;
}

/** A logical unit (a disk) behind a SCSI address. */
export interface ScsiLogicalUnit {
  execute(command: ScsiCommand): void;
}
