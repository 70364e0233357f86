// Decoding of the command descriptor blocks the disk executes. Every field comes from the
// guest: lengths are checked against the opcode's group, reserved/unsupported bits are
// refused, and 64-bit LBAs are read so that anything above 2^53 stays above the capacity
// (it can never wrap into range).
import { ScsiOp } from './scsi-opcodes.js';

const TWO_32 = 2 ** 32;

export function be16(bytes: Uint8Array, offset: number): number {
  return (bytes[offset]! << 8) | bytes[offset + 1]!;
}

export function be24(bytes: Uint8Array, offset: number): number {
  return (bytes[offset]! << 16) | (bytes[offset + 1]! << 8) | bytes[offset + 2]!;
}

export function be32(bytes: Uint8Array, offset: number): number {
  return ((bytes[offset]! << 24) >>> 0) + ((bytes[offset + 1]! << 16) | (bytes[offset + 2]! << 8) | bytes[offset + 3]!);
}

/**
 * A big-endian u64 as a number. Exact below 2^53; above, rounding keeps the value >= 2^53,
 * which is beyond any capacity, so range checks stay correct.
 */
export function be64(bytes: Uint8Array, offset: number): number {
  return be32(bytes, offset) * TWO_32 + be32(bytes, offset + 4);
}

export function putBe16(bytes: Uint8Array, offset: number, value: number): void {
  bytes[offset] = (value >>> 8) & 0xff;
  bytes[offset + 1] = value & 0xff;
}

export function putBe32(bytes: Uint8Array, offset: number, value: number): void {
  bytes[offset] = (value >>> 24) & 0xff;
  bytes[offset + 1] = (value >>> 16) & 0xff;
  bytes[offset + 2] = (value >>> 8) & 0xff;
  bytes[offset + 3] = value & 0xff;
}

/** value: a non-negative safe integer. */
export function putBe64(bytes: Uint8Array, offset: number, value: number): void {
  putBe32(bytes, offset, Math.floor(value / TWO_32) >>> 0);
  putBe32(bytes, offset + 4, value % TWO_32 >>> 0);
}

/**
 * The CDB length an opcode's group defines (SPC-4 4.2.5.1): 6, 10, 12 or 16; 0 for the
 * reserved and vendor-specific groups, which this target does not implement.
 */
export function cdbLengthOfGroup(opcode: number): number {
  switch (opcode >>> 5) {
    case 0:
      return 6;
    case 1:
    case 2:
      return 10;
    case 4:
      return 16;
    case 5:
      return 12;
    default:
      return 0;
  }
}

/**
 * The ALLOCATION LENGTH of the data-in commands the target emulates (how many bytes the
 * initiator is ready to receive), or -1 for an opcode that has none.
 */
export function allocationLength(cdb: Uint8Array): number {
  switch (cdb[0]) {
    case ScsiOp.Inquiry:
      return be16(cdb, 3);
    case ScsiOp.RequestSense:
    case ScsiOp.ModeSense6:
      return cdb[4]!;
    case ScsiOp.ModeSense10:
      return be16(cdb, 7);
    case ScsiOp.ReadCapacity10:
      return 8;
    case ScsiOp.ServiceActionIn16:
      return be32(cdb, 10);
    case ScsiOp.ReportLuns:
      return be32(cdb, 6);
    default:
      return -1;
  }
}

/** The parameter list length of the data-out commands the target parses, or -1. */
export function parameterListLength(cdb: Uint8Array): number {
  switch (cdb[0]) {
    case ScsiOp.ModeSelect6:
      return cdb[4]!;
    case ScsiOp.ModeSelect10:
    case ScsiOp.Unmap:
      return be16(cdb, 7);
    default:
      return -1;
  }
}

/** The fields of a block-addressed command, decoded into a reused object. */
export class BlockCdb {
  lba = 0;
  /** Transfer length (READ/WRITE/VERIFY), number of blocks (WRITE SAME, SYNCHRONIZE CACHE). */
  blocks = 0;
  /** Force unit access (READ/WRITE 10/12/16). */
  fua = false;
  /** WRITE SAME: deallocate the blocks if they would read back as the data written. */
  unmap = false;
  /** WRITE SAME(16): no data-out buffer, the block is all zeros. */
  noDataOut = false;
  /** VERIFY: byte check mode (0 = medium verification only). */
  byteCheck = 0;

  reset(): void {
    this.lba = 0;
    this.blocks = 0;
    this.fua = false;
    this.unmap = false;
    this.noDataOut = false;
    this.byteCheck = 0;
  }
}

const FUA = 0x08;
/** RDPROTECT / WRPROTECT / VRPROTECT: protection information, which this target has none of. */
const PROTECT_MASK = 0xe0;
const WRITE_SAME_ANCHOR = 0x10;
const WRITE_SAME_UNMAP = 0x08;
const WRITE_SAME_NDOB = 0x01;

/**
 * Decodes READ/WRITE 6/10/12/16, VERIFY 10/12/16, WRITE SAME 10/16 and SYNCHRONIZE CACHE
 * 10/16. Returns false (INVALID FIELD IN CDB) when the opcode is not one of those or a
 * field asks for something this target does not support (protection information, an
 * anchored WRITE SAME). The caller checks ranges, lengths and the remaining flags.
 */
export function decodeBlockCdb(cdb: Uint8Array, out: BlockCdb): boolean {
  out.reset();
  const op = cdb[0]!;
  const flags = cdb[1]!;
  switch (op) {
    case ScsiOp.Read6:
    case ScsiOp.Write6:
      out.lba = be24(cdb, 1) & 0x1fffff;
      // A transfer length of 0 means 256 blocks in the 6-byte commands (SBC-3 5.15).
      out.blocks = cdb[4] === 0 ? 256 : cdb[4]!;
      return true;
    case ScsiOp.Read10:
    case ScsiOp.Write10:
      out.lba = be32(cdb, 2);
      out.blocks = be16(cdb, 7);
      out.fua = (flags & FUA) !== 0;
      return (flags & PROTECT_MASK) === 0;
    case ScsiOp.Read12:
    case ScsiOp.Write12:
      out.lba = be32(cdb, 2);
      out.blocks = be32(cdb, 6);
      out.fua = (flags & FUA) !== 0;
      return (flags & PROTECT_MASK) === 0;
    case ScsiOp.Read16:
    case ScsiOp.Write16:
      out.lba = be64(cdb, 2);
      out.blocks = be32(cdb, 10);
      out.fua = (flags & FUA) !== 0;
      return (flags & PROTECT_MASK) === 0;
    case ScsiOp.Verify10:
      out.lba = be32(cdb, 2);
      out.blocks = be16(cdb, 7);
      out.byteCheck = (flags >>> 1) & 0x03;
      return (flags & PROTECT_MASK) === 0;
    case ScsiOp.Verify12:
      out.lba = be32(cdb, 2);
      out.blocks = be32(cdb, 6);
      out.byteCheck = (flags >>> 1) & 0x03;
      return (flags & PROTECT_MASK) === 0;
    case ScsiOp.Verify16:
      out.lba = be64(cdb, 2);
      out.blocks = be32(cdb, 10);
      out.byteCheck = (flags >>> 1) & 0x03;
      return (flags & PROTECT_MASK) === 0;
    case ScsiOp.SynchronizeCache10:
      out.lba = be32(cdb, 2);
      out.blocks = be16(cdb, 7);
      return true;
    case ScsiOp.SynchronizeCache16:
      out.lba = be64(cdb, 2);
      out.blocks = be32(cdb, 10);
      return true;
    case ScsiOp.WriteSame10:
      out.lba = be32(cdb, 2);
      out.blocks = be16(cdb, 7);
      out.unmap = (flags & WRITE_SAME_UNMAP) !== 0;
      return (flags & (PROTECT_MASK | WRITE_SAME_ANCHOR)) === 0;
    case ScsiOp.WriteSame16:
      out.lba = be64(cdb, 2);
      out.blocks = be32(cdb, 10);
      out.unmap = (flags & WRITE_SAME_UNMAP) !== 0;
      out.noDataOut = (flags & WRITE_SAME_NDOB) !== 0;
      return (flags & (PROTECT_MASK | WRITE_SAME_ANCHOR)) === 0;
    default:
      return false;
  }
}

/** UNMAP parameter list (SBC-3 5.28.2): an 8-byte header, then 16-byte block descriptors. */
export const UNMAP_HEADER_BYTES = 8;
export const UNMAP_DESCRIPTOR_BYTES = 16;

/**
 * How many whole block descriptors an UNMAP parameter list of `length` bytes carries, per
 * its BLOCK DESCRIPTOR DATA LENGTH (a partial trailing descriptor is ignored, as SBC-3
 * says). -1 for a list shorter than its header or a descriptor length that runs past the
 * list (INVALID FIELD IN PARAMETER LIST).
 */
export function unmapDescriptorCount(list: Uint8Array, length: number): number {
  if (length < UNMAP_HEADER_BYTES) return -1;
  // UNMAP DATA LENGTH (bytes 0..1) is redundant with the parameter list length; the
  // descriptor length is what says how many descriptors to act on.
  const descriptorBytes = be16(list, 2);
  if (descriptorBytes > length - UNMAP_HEADER_BYTES) return -1;
  return Math.floor(descriptorBytes / UNMAP_DESCRIPTOR_BYTES);
}
