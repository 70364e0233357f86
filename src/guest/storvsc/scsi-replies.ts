// Decoders for what a disk answers to the scan and sd commands (SPC-4 / SBC-3 layouts, as
// Linux's scsi_scan.c, scsi.c and sd.c read them). The host is untrusted: every decoder
// reads only the first `n` bytes (what the host says it transferred, already bounded by
// the buffer), never throws, and reports a reply too short to mean anything as null.

// Sense keys and errno values are the target's and the OS's: one table each for both ends.
import { SenseKey } from '../../devices/scsi/scsi-opcodes.js';
import { Errno } from '../../sys/errors.js';
export { Errno, SenseKey };

export interface InquiryData {
  /** Peripheral qualifier (byte 0 bits 7..5): 0 connected, 1 not connected, 3 no device possible. */
  qualifier: number;
  /** Peripheral device type (byte 0 bits 4..0): 0 disk, 0x1F unknown / none. */
  deviceType: number;
  removable: boolean;
  /** Byte 2: 5 = SPC-3, 6 = SPC-4. */
  version: number;
  /** Bytes the full standard INQUIRY data has (additional length + 5). */
  fullLength: number;
  /** Byte 7 bit 1: the unit supports tagged command queueing. */
  cmdQue: boolean;
  vendor: string;
  product: string;
}

function ascii(b: Uint8Array, start: number, end: number, n: number): string {
  let s = '';
  for (let i = start; i < end && i < n; i++) {
    const c = b[i]!;
    s += c >= 0x20 && c < 0x7f ? String.fromCharCode(c) : ' ';
  }
  return s.trimEnd();
}

function be16(b: Uint8Array, o: number): number {
  return (b[o]! << 8) | b[o + 1]!;
}

function be32(b: Uint8Array, o: number): number {
  return ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;
}

/** A big-endian u64, or -1 when it is beyond 2^53 (no disk of ours is that large). */
function be64(b: Uint8Array, o: number): number {
  const hi = be32(b, o);
  if (hi >= 0x20_0000) return -1;
  return hi * 0x1_0000_0000 + be32(b, o + 4);
}

/**
 * Standard INQUIRY data. Fewer than 5 bytes is no answer at all (Linux would see an
 * all-zero buffer, the "phantom disk" of an empty reply; we refuse to invent one).
 */
export function parseInquiry(b: Uint8Array, n: number): InquiryData | null {
  n = Math.min(n, b.length);
  if (n < 5) return null;
  return {
    qualifier: b[0]! >>> 5,
    deviceType: b[0]! & 0x1f,
    removable: (b[1]! & 0x80) !== 0,
    version: b[2]!,
    fullLength: b[4]! + 5,
    cmdQue: n > 7 && (b[7]! & 0x02) !== 0,
    vendor: ascii(b, 8, 16, n),
    product: ascii(b, 16, 32, n),
  };
}

/**
 * The total length (header included) a VPD page reply announces, as scsi_vpd_inquiry
 * computes it; -1 when the reply is shorter than the 4-byte header or is another page
 * than the one asked for (byte 1 must equal the page code).
 */
export function vpdPageLength(b: Uint8Array, n: number, page: number): number {
  n = Math.min(n, b.length);
  if (n < 4 || b[1] !== page) return -1;
  return be16(b, 2) + 4;
}

/** The page codes VPD page 0 lists (bytes 4 .. 4 + page length, within what arrived). */
export function parseSupportedVpdPages(b: Uint8Array, n: number): number[] {
  const length = vpdPageLength(b, n, 0x00);
  if (length < 0) return [];
  const end = Math.min(length, n, b.length);
  const pages: number[] = [];
  for (let i = 4; i < end; i++) pages.push(b[i]!);
  return pages;
}

export interface BlockLimits {
  /** In blocks; 0 = no limit. */
  maxTransferBlocks: number;
  optimalTransferBlocks: number;
  maxUnmapLbaCount: number;
  maxUnmapDescriptors: number;
  unmapGranularity: number;
}

/** VPD 0xB0 (Block Limits); fields past the reply read as 0 (sd does the same with its zeroed buffer). */
export function parseBlockLimits(b: Uint8Array, n: number): BlockLimits | null {
  const length = vpdPageLength(b, n, 0xb0);
  if (length < 0) return null;
  const end = Math.min(length, n, b.length);
  const field = (o: number) => (o + 4 <= end ? be32(b, o) : 0);
  return {
    maxTransferBlocks: field(8),
    optimalTransferBlocks: field(12),
    maxUnmapLbaCount: field(20),
    maxUnmapDescriptors: field(24),
    unmapGranularity: field(28),
  };
}

export interface Provisioning {
  /** UNMAP supported. */
  lbpu: boolean;
  /** WRITE SAME(16) with UNMAP supported. */
  lbpws: boolean;
  lbpws10: boolean;
}

/** VPD 0xB2 (Logical Block Provisioning). */
export function parseProvisioning(b: Uint8Array, n: number): Provisioning | null {
  const length = vpdPageLength(b, n, 0xb2);
  if (length < 0 || Math.min(length, n, b.length) < 6) return null;
  const bits = b[5]!;
  return { lbpu: (bits & 0x80) !== 0, lbpws: (bits & 0x40) !== 0, lbpws10: (bits & 0x20) !== 0 };
}

/** VPD 0xB1 (Block Device Characteristics): medium rotation rate, 1 = non-rotating; -1 if absent. */
export function parseRotationRate(b: Uint8Array, n: number): number {
  const length = vpdPageLength(b, n, 0xb1);
  if (length < 0 || Math.min(length, n, b.length) < 6) return -1;
  return be16(b, 4);
}

/** Highest LUN the storvsc host adapter takes (Linux's max_lun). */
export const STORVSC_MAX_LUN = 255;

/**
 * REPORT LUNS: the LUN numbers listed (scsilun_to_int of the first level), skipping ones
 * above STORVSC_MAX_LUN as Linux does ("LUN larger than allowed by the host adapter"),
 * and duplicates. `needed` is the allocation length the full list would take.
 */
export function parseReportLuns(b: Uint8Array, n: number): { luns: number[]; needed: number } | null {
  n = Math.min(n, b.length);
  if (n < 8) return null;
  const listBytes = be32(b, 0);
  const end = Math.min(8 + listBytes, n);
  const luns: number[] = [];
  for (let o = 8; o + 8 <= end; o += 8) {
    // scsilun_to_int: byte 1 | byte 0 << 8 (| deeper levels, which make it > max_lun anyway).
    let deeper = 0;
    for (let k = 2; k < 8; k++) deeper |= b[o + k]!;
    if (deeper !== 0) continue;
    const lun = (b[o]! << 8) | b[o + 1]!;
    if (lun > STORVSC_MAX_LUN || luns.includes(lun)) continue;
    luns.push(lun);
  }
  return { luns, needed: listBytes + 8 };
}

export interface Capacity {
  /** The last LBA; blocks = lastLba + 1. */
  lastLba: number;
  blockBytes: number;
  /** Logical block provisioning management enabled (RC16 byte 14 bit 7). */
  lbpme: boolean;
  /** Unmapped blocks read as zero (byte 14 bit 6). */
  lbprz: boolean;
}

/** READ CAPACITY(16) data (at least the 12 bytes of LBA and block size). */
export function parseReadCapacity16(b: Uint8Array, n: number): Capacity | null {
  n = Math.min(n, b.length);
  if (n < 12) return null;
  const lastLba = be64(b, 0);
  if (lastLba < 0) return null;
  return { lastLba, blockBytes: be32(b, 8), lbpme: n > 14 && (b[14]! & 0x80) !== 0, lbprz: n > 14 && (b[14]! & 0x40) !== 0 };
}

/** READ CAPACITY(10) data; lastLba 0xFFFFFFFF means "use READ CAPACITY(16)". */
export function parseReadCapacity10(b: Uint8Array, n: number): Capacity | null {
  n = Math.min(n, b.length);
  if (n < 8) return null;
  return { lastLba: be32(b, 0), blockBytes: be32(b, 4), lbpme: false, lbprz: false };
}

/** Block sizes sd accepts (it refuses any other and leaves the disk at 0 bytes). */
export function isSupportedBlockSize(bytes: number): boolean {
  return bytes === 512 || bytes === 1024 || bytes === 2048 || bytes === 4096;
}

export interface ModeHeader {
  /** Bytes of mode data the whole reply has (mode data length + 1). */
  totalLength: number;
  /** Device-specific parameter: bit 7 WP, bit 4 DPOFUA for disks. */
  deviceSpecific: number;
  blockDescriptorLength: number;
}

export const MODE6_HEADER_BYTES = 4;
export const MODE_DSP_WP = 0x80;
export const MODE_DSP_DPOFUA = 0x10;

/** The MODE SENSE(6) header. */
export function parseModeSense6Header(b: Uint8Array, n: number): ModeHeader | null {
  n = Math.min(n, b.length);
  if (n < MODE6_HEADER_BYTES) return null;
  return { totalLength: b[0]! + 1, deviceSpecific: b[2]!, blockDescriptorLength: b[3]! };
}

/**
 * Where mode page `page` starts in a MODE SENSE(6) reply of n bytes (walking the pages
 * after the header and block descriptors, as sd_read_cache_type does), or -1 when it is
 * not there complete enough to read `need` bytes of it.
 */
export function findModePage(b: Uint8Array, n: number, page: number, need: number): number {
  const header = parseModeSense6Header(b, n);
  if (!header) return -1;
  const end = Math.min(n, b.length, header.totalLength);
  let o = MODE6_HEADER_BYTES + header.blockDescriptorLength;
  while (o + 2 <= end) {
    const code = b[o]! & 0x3f;
    const length = b[o + 1]! + 2;
    if (code === page) return o + need <= end ? o : -1;
    o += length;
  }
  return -1;
}

/** Caching mode page (0x08) byte 2. */
export const CACHING_WCE = 0x04;
export const CACHING_RCD = 0x01;

export interface SenseData {
  key: number;
  asc: number;
  ascq: number;
}


/** Fixed (0x70/0x71) or descriptor (0x72/0x73) sense data, as scsi_normalize_sense reads it. */
export function parseSense(b: Uint8Array, n: number, out: SenseData): boolean {
  n = Math.min(n, b.length);
  if (n < 1) return false;
  const code = b[0]! & 0x7f;
  if (code === 0x70 || code === 0x71) {
    if (n < 3) return false;
    out.key = b[2]! & 0x0f;
    out.asc = n > 12 ? b[12]! : 0;
    out.ascq = n > 13 ? b[13]! : 0;
    return true;
  }
  if (code === 0x72 || code === 0x73) {
    if (n < 2) return false;
    out.key = b[1]! & 0x0f;
    out.asc = n > 2 ? b[2]! : 0;
    out.ascq = n > 3 ? b[3]! : 0;
    return true;
  }
  return false;
}


/**
 * What a failed command with this sense becomes for the block layer: DATA PROTECT is a
 * write-protected disk (-EROFS) unless it is SPACE ALLOCATION FAILED (27/07, a thin disk
 * out of space: -ENOSPC); everything else is -EIO.
 */
export function senseToErrno(sense: SenseData): number {
  if (sense.key === SenseKey.DataProtect) return sense.asc === 0x27 && sense.ascq === 0x07 ? -Errno.ENOSPC : -Errno.EROFS;
  return -Errno.EIO;
}
