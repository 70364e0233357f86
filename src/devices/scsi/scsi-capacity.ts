// READ CAPACITY(10) and (16) answers (SBC-3 5.16, 5.17). Linux reads RC16 first (INQUIRY
// version >= SPC-3): the last LBA, the logical block size, the physical block exponent and
// the provisioning bits LBPME (discard is possible at all) and LBPRZ (unmapped reads zero).
import { putBe16, putBe32, putBe64 } from './scsi-cdb.js';

export const READ_CAPACITY10_BYTES = 8;
export const READ_CAPACITY16_BYTES = 32;

const LBPME = 0x80;
const LBPRZ = 0x40;

/** The capacity in logical blocks and the block shape, as READ CAPACITY reports them. */
export interface CapacityShape {
  readonly blocks: number;
  readonly logicalBlockBytes: number;
  /** log2(physical / logical), 0..15. */
  readonly physicalExponent: number;
  /** Thin provisioning: UNMAP works and unmapped blocks read as zeros. */
  readonly discard: boolean;
}

/** The LBA READ CAPACITY reports last: blocks - 1 (an empty disk still says 0). */
function lastLba(blocks: number): number {
  return blocks > 0 ? blocks - 1 : 0;
}

export function buildReadCapacity10(out: Uint8Array, shape: CapacityShape): number {
  const last = lastLba(shape.blocks);
  // 0xFFFFFFFF tells the initiator to use READ CAPACITY(16).
  putBe32(out, 0, last > 0xffffffff ? 0xffffffff : last);
  putBe32(out, 4, shape.logicalBlockBytes);
  return READ_CAPACITY10_BYTES;
}

export function buildReadCapacity16(out: Uint8Array, shape: CapacityShape): number {
  out.fill(0, 0, READ_CAPACITY16_BYTES);
  putBe64(out, 0, lastLba(shape.blocks));
  putBe32(out, 8, shape.logicalBlockBytes);
  // Byte 12: no protection. Byte 13 low nibble: logical blocks per physical block exponent.
  out[13] = shape.physicalExponent & 0x0f;
  // Bytes 14..15: LBPME, LBPRZ, lowest aligned LBA (0).
  putBe16(out, 14, shape.discard ? (LBPME | LBPRZ) << 8 : 0);
  return READ_CAPACITY16_BYTES;
}
