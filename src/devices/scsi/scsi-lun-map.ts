// The logical units of one SCSI target, and what the target answers on their behalf:
// REPORT LUNS (sent to LUN 0, or any LUN, lists every unit present) and INQUIRY to a LUN
// with nothing behind it (peripheral qualifier 3: "no unit here", which is how Linux's
// scan learns there is no disk without inventing a phantom one). Everything else sent to an
// absent LUN is left to the transport, which reports SRB INVALID_LUN.
import { be32, putBe32 } from './scsi-cdb.js';
import type { ScsiCommand, ScsiLogicalUnit } from './scsi-command.js';
import { copyToDataBuffer } from './scsi-data-buffer.js';
import { buildStandardInquiry } from './scsi-inquiry.js';
import { Asc, Peripheral, ScsiOp, SenseKey } from './scsi-opcodes.js';
import { setCheckCondition, setGood } from './scsi-sense.js';

/** LUNs 0..255: what peripheral device addressing (SAM-5 4.7.7) can express in one level. */
export const MAX_TARGET_LUNS = 256;
const REPORT_LUNS_HEADER_BYTES = 8;
const LUN_ENTRY_BYTES = 8;
const REPORT_LUNS_CDB_BYTES = 12;
const INQUIRY_CDB_BYTES = 6;

/** SELECT REPORT (REPORT LUNS byte 2). */
const SelectReport = {
  /** Logical units with a device attached. */
  Attached: 0x00,
  /** Well-known logical units only: this target has none. */
  WellKnown: 0x01,
  All: 0x02,
} as const;

function isLun(lun: number): boolean {
  return Number.isInteger(lun) && lun >= 0 && lun < MAX_TARGET_LUNS;
}

export class ScsiTargetLuns {
  /** Indexed by LUN: one array read per command. */
  private readonly units: (ScsiLogicalUnit | undefined)[] = new Array<ScsiLogicalUnit | undefined>(MAX_TARGET_LUNS).fill(undefined);
  private count = 0;
  private readonly scratch = new Uint8Array(REPORT_LUNS_HEADER_BYTES + LUN_ENTRY_BYTES * MAX_TARGET_LUNS);
  private readonly absentInquiry = buildStandardInquiry(Peripheral.NoLogicalUnit);

  /** Units present. */
  get size(): number {
    return this.count;
  }

  /** Puts `unit` at `lun` (0..255), replacing what was there. */
  set(lun: number, unit: ScsiLogicalUnit): void {
    if (!isLun(lun)) throw new RangeError(`LUN ${lun} must be an integer 0..${MAX_TARGET_LUNS - 1}`);
    if (this.units[lun] === undefined) this.count++;
    this.units[lun] = unit;
  }

  /** Removes the unit at `lun`; false when there was none. */
  delete(lun: number): boolean {
    if (!isLun(lun) || this.units[lun] === undefined) return false;
    this.units[lun] = undefined;
    this.count--;
    return true;
  }

  /** The unit at `lun`, or undefined (also for any number that is not a LUN). */
  get(lun: number): ScsiLogicalUnit | undefined {
    return isLun(lun) ? this.units[lun] : undefined;
  }

  /**
   * Routes a command addressed to `lun`: REPORT LUNS is answered by the target whatever
   * the LUN, a present unit executes the command, an absent one gets answerAbsentLun.
   * Returns false when nobody answered: the command is not completed and the transport
   * reports INVALID_LUN.
   */
  execute(lun: number, command: ScsiCommand): boolean {
    if (command.cdbLength >= 1 && command.cdb[0] === ScsiOp.ReportLuns) {
      this.reportLuns(command);
      return true;
    }
    const unit = this.get(lun);
    if (unit !== undefined) {
      unit.execute(command);
      return true;
    }
    return this.answerAbsentLun(command);
  }

  /** REPORT LUNS (SPC-4 6.33): the present LUNs in peripheral addressing; completes the command. */
  reportLuns(command: ScsiCommand): void {
    const cdb = command.cdb;
    if (!(command.cdbLength >= REPORT_LUNS_CDB_BYTES && command.cdbLength <= cdb.length)) {
      setCheckCondition(command, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
      command.complete();
      return;
    }
    const select = cdb[2];
    if (select !== SelectReport.Attached && select !== SelectReport.All && select !== SelectReport.WellKnown) {
      setCheckCondition(command, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
      command.complete();
      return;
    }
    const out = this.scratch;
    let entries = 0;
    if (select !== SelectReport.WellKnown) {
      for (let lun = 0; lun < MAX_TARGET_LUNS; lun++) {
        if (this.units[lun] === undefined) continue;
        const at = REPORT_LUNS_HEADER_BYTES + entries * LUN_ENTRY_BYTES;
        out.fill(0, at, at + LUN_ENTRY_BYTES);
        // Peripheral device addressing: byte 0 = 0 (method 00b, bus 0), byte 1 = LUN.
        out[at + 1] = lun;
        entries++;
      }
    }
    putBe32(out, 0, entries * LUN_ENTRY_BYTES); // LUN LIST LENGTH
    putBe32(out, 4, 0);
    const total = REPORT_LUNS_HEADER_BYTES + entries * LUN_ENTRY_BYTES;
    this.send(command, out, Math.min(total, be32(cdb, 6)));
  }

  /**
   * The answer for a LUN with no unit: standard INQUIRY gets data whose byte 0 is 0x7F
   * (qualifier 3, type 0x1F) and GOOD, and the command is completed (true). Anything else,
   * VPD INQUIRY included, is not answered here (false, command not completed): the
   * transport reports SRB INVALID_LUN.
   */
  answerAbsentLun(command: ScsiCommand): boolean {
    const cdb = command.cdb;
    if (!(command.cdbLength >= INQUIRY_CDB_BYTES && command.cdbLength <= cdb.length)) return false;
    if (cdb[0] !== ScsiOp.Inquiry || cdb[1] !== 0 || cdb[2] !== 0) return false;
    const allocation = (cdb[3]! << 8) | cdb[4]!;
    this.send(command, this.absentInquiry, Math.min(this.absentInquiry.length, allocation));
    return true;
  }

  private send(command: ScsiCommand, answer: Uint8Array, length: number): void {
    const copied = copyToDataBuffer(command.memory, command.data, answer, length);
    if (copied < 0) setCheckCondition(command, SenseKey.HardwareError, Asc.InternalTargetFailure);
    else setGood(command, copied);
    command.complete();
  }
}
