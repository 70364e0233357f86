// The SCSI commands the reference guest's storvsc sends, built as Linux's SCSI midlayer
// (scsi_scan.c, scsi.c) and sd.c build them. Builders write into a caller-owned 16-byte
// CDB so the I/O path allocates nothing; each returns the CDB length.

// The numbers are the same the target answers to: one table for both ends.
import { ScsiOp, ServiceAction } from '../../devices/scsi/scsi-opcodes.js';
export { ScsiOp };

/** SERVICE ACTION IN(16) service action of READ CAPACITY(16). */
export const SAI_READ_CAPACITY_16 = ServiceAction.ReadCapacity16;
/** Byte 1 bit 3 of READ/WRITE(10/16): force unit access. */
export const CDB_FUA = 0x08;

function put16be(cdb: Uint8Array, o: number, v: number): void {
  cdb[o] = (v >>> 8) & 0xff;
  cdb[o + 1] = v & 0xff;
}

function put32be(cdb: Uint8Array, o: number, v: number): void {
  cdb[o] = (v >>> 24) & 0xff;
  cdb[o + 1] = (v >>> 16) & 0xff;
  cdb[o + 2] = (v >>> 8) & 0xff;
  cdb[o + 3] = v & 0xff;
}

/** Writes a non-negative safe integer as a big-endian u64. */
function put64be(cdb: Uint8Array, o: number, v: number): void {
  put32be(cdb, o, Math.floor(v / 0x1_0000_0000));
  put32be(cdb, o + 4, v >>> 0);
}

export function testUnitReady(cdb: Uint8Array): number {
  cdb.fill(0, 0, 6);
  return 6;
}

/** Standard INQUIRY (evpd false) or a VPD page (evpd true); allocation length <= 0xFFFF. */
export function inquiry(cdb: Uint8Array, allocation: number, vpdPage = -1): number {
  cdb.fill(0, 0, 6);
  cdb[0] = ScsiOp.Inquiry;
  if (vpdPage >= 0) {
    cdb[1] = 0x01;
    cdb[2] = vpdPage & 0xff;
  }
  put16be(cdb, 3, allocation);
  return 6;
}

export function reportLuns(cdb: Uint8Array, allocation: number): number {
  cdb.fill(0, 0, 12);
  cdb[0] = ScsiOp.ReportLuns;
  put32be(cdb, 6, allocation);
  return 12;
}

export function readCapacity10(cdb: Uint8Array): number {
  cdb.fill(0, 0, 10);
  cdb[0] = ScsiOp.ReadCapacity10;
  return 10;
}

/** READ CAPACITY(16), allocation 32 as sd's read_capacity_16 (RC16_LEN) asks. */
export function readCapacity16(cdb: Uint8Array, allocation = 32): number {
  cdb.fill(0, 0, 16);
  cdb[0] = ScsiOp.ServiceActionIn16;
  cdb[1] = SAI_READ_CAPACITY_16;
  put32be(cdb, 10, allocation);
  return 16;
}

/** MODE SENSE(6), page control "current", block descriptors allowed (sd's dbd = 0). */
export function modeSense6(cdb: Uint8Array, page: number, allocation: number): number {
  cdb.fill(0, 0, 6);
  cdb[0] = ScsiOp.ModeSense6;
  cdb[2] = page & 0x3f;
  cdb[4] = allocation & 0xff;
  return 6;
}

/** START STOP UNIT with START and IMMED, what sd_spinup_disk sends to a NOT READY disk. */
export function startUnit(cdb: Uint8Array): number {
  cdb.fill(0, 0, 6);
  cdb[0] = ScsiOp.StartStopUnit;
  cdb[1] = 0x01;
  cdb[4] = 0x01;
  return 6;
}

/**
 * READ or WRITE of `blocks` blocks at `lba`: the 10-byte form unless the disk needs the
 * 16-byte one (sd's use_16_for_rw: more than 2^32 blocks). blocks must fit the form
 * (the caller splits by max_transfer_bytes, far below 0xFFFF blocks).
 */
export function readWrite(cdb: Uint8Array, write: boolean, lba: number, blocks: number, fua: boolean, use16: boolean): number {
  if (use16) {
    cdb.fill(0, 0, 16);
    cdb[0] = write ? ScsiOp.Write16 : ScsiOp.Read16;
    cdb[1] = fua ? CDB_FUA : 0;
    put64be(cdb, 2, lba);
    put32be(cdb, 10, blocks);
    return 16;
  }
  cdb.fill(0, 0, 10);
  cdb[0] = write ? ScsiOp.Write10 : ScsiOp.Read10;
  cdb[1] = fua ? CDB_FUA : 0;
  put32be(cdb, 2, lba);
  put16be(cdb, 7, blocks);
  return 10;
}

/** SYNCHRONIZE CACHE(10) of the whole disk (LBA 0, 0 blocks), as sd_sync_cache sends. */
export function synchronizeCache10(cdb: Uint8Array): number {
  cdb.fill(0, 0, 10);
  cdb[0] = ScsiOp.SynchronizeCache10;
  return 10;
}

/** Bytes of an UNMAP parameter list with one block descriptor (sd_setup_unmap_cmnd). */
export const UNMAP_PARAMETER_BYTES = 24;

/** UNMAP whose parameter list (see unmapParameters) is UNMAP_PARAMETER_BYTES long. */
export function unmap(cdb: Uint8Array): number {
  cdb.fill(0, 0, 10);
  cdb[0] = ScsiOp.Unmap;
  put16be(cdb, 7, UNMAP_PARAMETER_BYTES);
  return 10;
}

/** The UNMAP parameter list: 8-byte header then one {u64 LBA, u32 count, 4 reserved} descriptor. */
export function unmapParameters(target: Uint8Array, offset: number, lba: number, blocks: number): void {
  target.fill(0, offset, offset + UNMAP_PARAMETER_BYTES);
  put16be(target, offset, UNMAP_PARAMETER_BYTES - 2);
  put16be(target, offset + 2, 16);
  put64be(target, offset + 8, lba);
  put32be(target, offset + 16, blocks);
}
