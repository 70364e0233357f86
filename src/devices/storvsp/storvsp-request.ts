// One pooled request slot of a StorVSP channel: the SCSI command handed to a logical
// unit (CDB, guest buffer as iovecs, result fields) plus what the transport needs to
// answer it (the guest's transaction id and addressing) and the 64-byte COMPLETE_IO
// reply it is encoded into. Slots are created once and reused, so a request costs no
// allocation; `next` links a slot into its channel's free list or completion backlog.
import type { GuestMemory } from '../../memory/guest-memory.js';
import { IovecList } from '../../sys/iovec.js';
import { DataDirection, ScsiStatus, type ScsiCommand } from '../scsi/scsi-command.js';
import {
  NtStatus,
  SrbStatus,
  VMSCSI_CDB_BYTES,
  VMSCSI_REQUEST_SIZE,
  VMSCSI_SENSE_BYTES,
  VSTOR_PACKET_SIZE,
  VstorField,
  VstorOperation,
} from './storvsp-protocol.js';

/** Room for the unit's sense data; only the first 20 bytes (at most) reach the guest. */
const SENSE_CAPACITY = 32;

/** What a slot reports to when its command completes (its channel). */
export interface RequestOwner {
  requestDone(request: StorvspRequest): void;
}

/** Counts a disk's commands in flight so hot-remove can wait for them. */
export interface InflightTracker {
  requestDone(): void;
}

export class StorvspRequest implements ScsiCommand {
  // ---- ScsiCommand ----
  readonly cdb = new Uint8Array(VMSCSI_CDB_BYTES);
  cdbLength = 0;
  dataDirection: DataDirection = DataDirection.None;
  readonly data: IovecList;
  readonly memory: GuestMemory;
  scsiStatus = 0;
  readonly sense = new Uint8Array(SENSE_CAPACITY);
  senseLength = 0;
  bytesTransferred = 0;

  // ---- transport state ----
  /** The guest's trans_id, as two u32 halves (no BigInt on the data path). */
  transactionIdLow = 0;
  transactionIdHigh = 0;
  pathId = 0;
  targetId = 0;
  lun = 0;
  dataIn = 0;
  /** sense_info_length of the request: the most sense bytes the guest takes. */
  senseRoom = 0;
  /** data_transfer_length of the request. */
  requestedLength = 0;
  /** The channel's open generation when dispatched; a completion for an older one goes nowhere. */
  generation = 0;
  /** Handed to a unit and not yet completed. */
  inFlight = false;
  /** A unit threw while holding this slot: it is never reused (a late complete() must not hit a new request). */
  quarantined = false;
  tracker: InflightTracker | null = null;
  /** Free list / backlog link. */
  next: StorvspRequest | null = null;

  /**
   * How the reply is sent: a control reply is encoded into `reply` at once (it carries
   * payloads such as the channel properties); an SRB reply keeps only its result fields
   * and is encoded straight into the ring when it is written (no scratch copy).
   */
  replyKind: ReplyKind = ReplyKind.Control;
  replyType = 0;
  replyFlags = 0;
  readonly reply = new Uint8Array(VSTOR_PACKET_SIZE);
  private readonly replyView = new DataView(this.reply.buffer);
  // SRB reply fields.
  private replyStatus = 0;
  private replySrbStatus = 0;
  private replyScsiStatus = 0;
  private replyLength = 0;
  private replySenseBytes = 0;

  constructor(private readonly owner: RequestOwner, memory: GuestMemory, iovecCapacity: number) {
    this.memory = memory;
    this.data = new IovecList(iovecCapacity);
  }

  /** Called once by the unit when the command is done (the ScsiCommand contract). */
  complete(): void {
    this.owner.requestDone(this);
  }

  /** Clears the results before the command goes to a unit. */
  resetResults(): void {
    this.scsiStatus = ScsiStatus.Good;
    this.senseLength = 0;
    this.bytesTransferred = 0;
  }

  /** The transaction id to echo: a number when exact (every I/O id Linux uses), else a bigint. */
  transactionId(): number | bigint {
    const high = this.transactionIdHigh;
    if (high < 0x20_0000) return high * 0x1_0000_0000 + this.transactionIdLow;
    return (BigInt(high) << 32n) | BigInt(this.transactionIdLow);
  }

  /** A COMPLETE_IO reply to a control request (init, reset, sub-channels): status, payload zero (the caller may add one). */
  encodeControlReply(status: number): void {
    this.replyKind = ReplyKind.Control;
    const r = this.reply;
    r.fill(0);
    const v = this.replyView;
    v.setUint32(VstorField.Operation, VstorOperation.CompleteIo, true);
    v.setUint32(VstorField.Status, status >>> 0, true);
  }

  /**
   * A COMPLETE_IO reply to EXECUTE_SRB that the transport decided itself (bad request,
   * absent LUN, wrong state): no data moved, no sense.
   */
  setSrbError(status: number, srbStatus: number, scsiStatus: number): void {
    this.setSrbReply(status, srbStatus, scsiStatus, 0, 0);
  }

  /**
   * The reply to a command the unit finished, mapped as storvsc reads it (spec 1.5):
   * GOOD -> SUCCESS with the bytes moved; CHECK CONDITION -> ERROR with AUTOSENSE_VALID
   * and the sense (the guest copies sense only with that bit and status 0x02) and 0 bytes;
   * BUSY / TASK SET FULL -> srb BUSY, which makes the guest look at the SCSI status alone
   * and retry.
   */
  setScsiResult(): void {
    const status = this.scsiStatus & 0xff;
    if (status === ScsiStatus.Good) {
      const moved = Math.min(Math.max(0, Math.trunc(this.bytesTransferred) || 0), this.requestedLength);
      this.setSrbReply(NtStatus.Success, SrbStatus.Success, status, moved, 0);
      return;
    }
    if (status === ScsiStatus.CheckCondition) {
      const senseBytes = Math.min(Math.max(0, this.senseLength | 0), this.senseRoom, VMSCSI_SENSE_BYTES, SENSE_CAPACITY);
      const srb = senseBytes > 0 ? SrbStatus.Error | SrbStatus.AutosenseValid : SrbStatus.Error;
      this.setSrbReply(NtStatus.Success, srb, status, 0, senseBytes);
      return;
    }
    if (status === ScsiStatus.Busy || status === ScsiStatus.TaskSetFull) {
      this.setSrbReply(NtStatus.DeviceBusy, SrbStatus.Busy, status, 0, 0);
      return;
    }
    this.setSrbReply(NtStatus.IoDeviceError, SrbStatus.Error, status, 0, 0);
  }

  private setSrbReply(status: number, srbStatus: number, scsiStatus: number, moved: number, senseBytes: number): void {
    this.replyKind = ReplyKind.Srb;
    this.replyStatus = status;
    this.replySrbStatus = srbStatus;
    this.replyScsiStatus = scsiStatus;
    this.replyLength = moved;
    this.replySenseBytes = senseBytes;
  }

  /** Writes the whole 64-byte SRB reply at target[offset] (the ring, or `reply` for inspection). */
  encodeSrbReply(target: Uint8Array, offset: number): void {
    const o = offset;
    target.fill(0, o, o + VSTOR_PACKET_SIZE);
    put32(target, o + VstorField.Operation, VstorOperation.CompleteIo);
    put32(target, o + VstorField.Status, this.replyStatus);
    target[o + VstorField.SrbLength] = VMSCSI_REQUEST_SIZE;
    target[o + VstorField.SrbStatus] = this.replySrbStatus;
    target[o + VstorField.ScsiStatus] = this.replyScsiStatus;
    target[o + VstorField.PathId] = this.pathId;
    target[o + VstorField.TargetId] = this.targetId;
    target[o + VstorField.Lun] = this.lun;
    target[o + VstorField.CdbLength] = this.cdbLength;
    const senseBytes = this.replySenseBytes;
    target[o + VstorField.SenseInfoLength] = senseBytes;
    target[o + VstorField.DataIn] = this.dataIn;
    put32(target, o + VstorField.DataTransferLength, this.replyLength);
    const sense = this.sense;
    for (let i = 0; i < senseBytes; i++) target[o + VstorField.CdbOrSense + i] = sense[i]!;
  }
}

export const ReplyKind = {
  /** Encoded in `reply`. */
  Control: 0,
  /** Result fields only; encoded into the ring by encodeSrbReply. */
  Srb: 1,
} as const;
export type ReplyKind = (typeof ReplyKind)[keyof typeof ReplyKind];

function put32(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
  b[o + 2] = (v >>> 16) & 0xff;
  b[o + 3] = (v >>> 24) & 0xff;
}
