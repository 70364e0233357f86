// The on-disk structures of a VHDX file (MS-VHDX v1.0): the file identifier, the two
// headers, the region table, the metadata table and its items, and BAT entries. Pure
// codecs over byte buffers: nothing here touches a file, so every decoder can be fuzzed.
// Every value read from an image is untrusted (an image may come from anywhere): decoders
// check ranges before anything is sized or indexed from them, and throw VhdxFormatError.
import { readGuid, writeGuid } from '../../../vmbus/guid.js';

export class VhdxFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'VhdxFormatError';
  }
}

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const TiB = 1024 * GiB;

// ---- Layout of the 1 MiB header section ----
export const FILE_ID_OFFSET = 0;
export const HEADER1_OFFSET = 64 * KiB;
export const HEADER2_OFFSET = 128 * KiB;
export const REGION_TABLE1_OFFSET = 192 * KiB;
export const REGION_TABLE2_OFFSET = 256 * KiB;
export const HEADER_SECTION_BYTES = 1 * MiB;
/** The header checksum covers the first 4 KiB of its 64 KiB slot. */
export const HEADER_BYTES = 4 * KiB;
/** The region table checksum covers all 64 KiB. */
export const REGION_TABLE_BYTES = 64 * KiB;
export const METADATA_TABLE_BYTES = 64 * KiB;

export const FILE_SIGNATURE = 'vhdxfile';
const HEADER_SIGNATURE = 0x64616568; // "head"
const REGION_SIGNATURE = 0x69676572; // "regi"
const METADATA_SIGNATURE = 'metadata';

export const MAX_REGION_ENTRIES = 2047;
export const MAX_METADATA_ENTRIES = 2047;
export const MIN_BLOCK_BYTES = 1 * MiB;
export const MAX_BLOCK_BYTES = 256 * MiB;
export const MAX_DISK_BYTES = 64 * TiB;
/** Chunk ratio = 2^23 sectors * logical sector size / block size (spec 2.5). */
const SECTORS_PER_CHUNK = 2 ** 23;

// ---- Well-known GUIDs ----
export const ZERO_GUID = '00000000-0000-0000-0000-000000000000';
export const BAT_REGION_GUID = '2dc27766-f623-4200-9d64-115e9bfd4a08';
export const METADATA_REGION_GUID = '8b7ca206-4790-4b9a-b8fe-575f050f886e';
export const FILE_PARAMETERS_GUID = 'caa16737-fa36-4d43-b3b6-33f0aa44e76b';
export const VIRTUAL_DISK_SIZE_GUID = '2fa54224-cd1b-4876-b211-5dbed83bf4b8';
export const PAGE83_DATA_GUID = 'beca12ab-b2e6-4523-93ef-c309e000c746';
export const LOGICAL_SECTOR_SIZE_GUID = '8141bf1d-a96f-4709-ba47-f233a8faab5f';
export const PHYSICAL_SECTOR_SIZE_GUID = 'cda348c7-445d-4471-9cc9-e9885251c556';
export const PARENT_LOCATOR_GUID = 'a8d35f2d-b30b-454d-abf7-d3d84834ab0c';

// ---- Payload block states (low 3 bits of a BAT entry) ----
export const PAYLOAD_BLOCK_NOT_PRESENT = 0;
export const PAYLOAD_BLOCK_UNDEFINED = 1;
export const PAYLOAD_BLOCK_ZERO = 2;
export const PAYLOAD_BLOCK_UNMAPPED = 3;
/** Pre-1.0 drafts (and so older qemu) used 5 for UNMAPPED: read it as unmapped too. */
export const PAYLOAD_BLOCK_UNMAPPED_V095 = 5;
export const PAYLOAD_BLOCK_FULLY_PRESENT = 6;
export const PAYLOAD_BLOCK_PARTIALLY_PRESENT = 7;

/** True for the states whose blocks read as zeros on a disk without a parent. */
export function payloadReadsAsZero(state: number): boolean {
  return state === PAYLOAD_BLOCK_NOT_PRESENT || state === PAYLOAD_BLOCK_UNDEFINED || state === PAYLOAD_BLOCK_ZERO || state === PAYLOAD_BLOCK_UNMAPPED || state === PAYLOAD_BLOCK_UNMAPPED_V095;
}

// ---- CRC-32C (Castagnoli), as every VHDX checksum uses ----
const CRC32C_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    table[i] = c >>> 0;
  }
  return table;
})();

/** Continues a CRC-32C over `bytes` (pass the previous result to chain; start with 0). */
export function crc32c(bytes: Uint8Array, previous = 0): number {
  let crc = ~previous >>> 0;
  for (let i = 0; i < bytes.length; i++) crc = CRC32C_TABLE[(crc ^ bytes[i]!) & 0xff]! ^ (crc >>> 8);
  return ~crc >>> 0;
}

/** CRC-32C of `bytes` with the 4-byte checksum field at `fieldOffset` taken as zero. */
export function checksumWithZeroField(bytes: Uint8Array, fieldOffset: number): number {
  let crc = crc32c(bytes.subarray(0, fieldOffset));
  crc = crc32c(ZERO4, crc);
  return crc32c(bytes.subarray(fieldOffset + 4), crc);
}
const ZERO4 = new Uint8Array(4);

/** Writes the checksum of `bytes` into its field at `fieldOffset`. */
export function sealChecksum(bytes: Uint8Array, fieldOffset: number): void {
  const view = viewOf(bytes);
  view.setUint32(fieldOffset, 0, true);
  view.setUint32(fieldOffset, crc32c(bytes), true);
}

export function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** A little-endian u64 as a Number; values above 2^53 are refused (no VHDX offset gets near). */
export function readU64(view: DataView, offset: number, what: string): number {
  const low = view.getUint32(offset, true);
  const high = view.getUint32(offset + 4, true);
  if (high >= 0x200000) throw new VhdxFormatError(`${what} (0x${high.toString(16)}${low.toString(16).padStart(8, '0')}) is out of range`);
  return high * 2 ** 32 + low;
}

export function writeU64(view: DataView, offset: number, value: number): void {
  view.setUint32(offset, value % 2 ** 32, true);
  view.setUint32(offset + 4, Math.floor(value / 2 ** 32), true);
}

// ---- File identifier ----
export function isVhdxSignature(bytes: Uint8Array): boolean {
  if (bytes.length < 8) return false;
  for (let i = 0; i < 8; i++) if (bytes[i] !== FILE_SIGNATURE.charCodeAt(i)) return false;
  return true;
}

// ---- Header (spec 2.2.2) ----
export interface VhdxHeader {
  sequenceNumber: bigint;
  fileWriteGuid: string;
  dataWriteGuid: string;
  logGuid: string;
  logVersion: number;
  version: number;
  logLength: number;
  logOffset: number;
}

/** Decodes one 4 KiB header; returns undefined when its signature, checksum or version is wrong. */
export function decodeHeader(bytes: Uint8Array): VhdxHeader | undefined {
  if (bytes.length < HEADER_BYTES) return undefined;
  const block = bytes.subarray(0, HEADER_BYTES);
  const view = viewOf(block);
  if (view.getUint32(0, true) !== HEADER_SIGNATURE) return undefined;
  if (view.getUint32(4, true) !== checksumWithZeroField(block, 4)) return undefined;
  const version = view.getUint16(66, true);
  if (version !== 1) return undefined;
  return {
    sequenceNumber: view.getBigUint64(8, true),
    fileWriteGuid: readGuid(view, 16),
    dataWriteGuid: readGuid(view, 32),
    logGuid: readGuid(view, 48),
    logVersion: view.getUint16(64, true),
    version,
    logLength: view.getUint32(68, true),
    // An offset beyond 2^53 cannot be valid: decode it as -1 so checkHeaderLog refuses it.
    logOffset: view.getUint32(76, true) >= 0x200000 ? -1 : view.getUint32(76, true) * 2 ** 32 + view.getUint32(72, true),
  };
}

/** Encodes a header into a 4 KiB block (reserved bytes zero) with its checksum. */
export function encodeHeader(header: VhdxHeader): Uint8Array {
  const block = new Uint8Array(HEADER_BYTES);
  const view = viewOf(block);
  view.setUint32(0, HEADER_SIGNATURE, true);
  view.setBigUint64(8, header.sequenceNumber, true);
  writeGuid(view, 16, header.fileWriteGuid);
  writeGuid(view, 32, header.dataWriteGuid);
  writeGuid(view, 48, header.logGuid);
  view.setUint16(64, header.logVersion, true);
  view.setUint16(66, header.version, true);
  view.setUint32(68, header.logLength, true);
  writeU64(view, 72, header.logOffset);
  sealChecksum(block, 4);
  return block;
}

/** Which header is current: the valid one with the higher sequence number (spec 2.2.2.1). */
export function chooseHeader(first: VhdxHeader | undefined, second: VhdxHeader | undefined): { header: VhdxHeader; index: 0 | 1 } {
  if (first && !second) return { header: first, index: 0 };
  if (!first && second) return { header: second, index: 1 };
  if (!first || !second) throw new VhdxFormatError('neither VHDX header is valid (bad signature, checksum or version)');
  if (first.sequenceNumber > second.sequenceNumber) return { header: first, index: 0 };
  if (second.sequenceNumber > first.sequenceNumber) return { header: second, index: 1 };
  // Equal sequence numbers are only acceptable when the headers are identical (Disk2VHD
  // writes two identical headers); otherwise nobody can say which one is current.
  if (JSON.stringify(first, bigintJson) === JSON.stringify(second, bigintJson)) return { header: first, index: 0 };
  throw new VhdxFormatError('both VHDX headers are valid with the same sequence number but different contents');
}

function bigintJson(_key: string, value: unknown): unknown {
  return typeof value === 'bigint' ? value.toString() : value;
}

/** Checks the log location fields of the current header (spec 2.2.2). */
export function checkHeaderLog(header: VhdxHeader): void {
  if (header.logVersion !== 0) throw new VhdxFormatError(`unsupported VHDX log version ${header.logVersion}`);
  if (header.logLength % MiB !== 0) throw new VhdxFormatError(`VHDX log length ${header.logLength} is not a multiple of 1 MiB`);
  if (header.logOffset < 0) throw new VhdxFormatError('VHDX log offset is out of range');
  if (header.logLength > 0 && (header.logOffset < HEADER_SECTION_BYTES || header.logOffset % MiB !== 0 || !Number.isSafeInteger(header.logOffset))) {
    throw new VhdxFormatError(`VHDX log offset ${header.logOffset} is not a multiple of 1 MiB past the header section`);
  }
}

// ---- Region table (spec 2.2.3) ----
export interface RegionEntry {
  guid: string;
  fileOffset: number;
  length: number;
  required: boolean;
}

export interface RegionTable {
  bat: RegionEntry;
  metadata: RegionEntry;
}

/** Decodes and validates the 64 KiB region table: both known regions present, once, 1 MiB aligned, not overlapping. */
export function decodeRegionTable(bytes: Uint8Array): RegionTable {
  if (bytes.length < REGION_TABLE_BYTES) throw new VhdxFormatError('VHDX region table is truncated');
  const table = bytes.subarray(0, REGION_TABLE_BYTES);
  const view = viewOf(table);
  if (view.getUint32(0, true) !== REGION_SIGNATURE) throw new VhdxFormatError('VHDX region table signature is wrong');
  if (view.getUint32(4, true) !== checksumWithZeroField(table, 4)) throw new VhdxFormatError('VHDX region table checksum is wrong');
  const count = view.getUint32(8, true);
  if (count > MAX_REGION_ENTRIES) throw new VhdxFormatError(`VHDX region table has ${count} entries (at most ${MAX_REGION_ENTRIES})`);
  let bat: RegionEntry | undefined;
  let metadata: RegionEntry | undefined;
  const seen: RegionEntry[] = [];
  for (let i = 0; i < count; i++) {
    const at = 16 + i * 32;
    const entry: RegionEntry = {
      guid: readGuid(view, at),
      fileOffset: readU64(view, at + 16, 'region offset'),
      length: view.getUint32(at + 24, true),
      required: (view.getUint32(at + 28, true) & 1) !== 0,
    };
    if (entry.fileOffset % MiB !== 0 || entry.fileOffset < HEADER_SECTION_BYTES) {
      throw new VhdxFormatError(`VHDX region ${entry.guid} starts at ${entry.fileOffset}, not a multiple of 1 MiB past the header section`);
    }
    if (entry.length === 0 || entry.length % MiB !== 0) throw new VhdxFormatError(`VHDX region ${entry.guid} length ${entry.length} is not a positive multiple of 1 MiB`);
    for (const other of seen) {
      if (rangesOverlap(entry.fileOffset, entry.length, other.fileOffset, other.length)) throw new VhdxFormatError(`VHDX regions ${entry.guid} and ${other.guid} overlap`);
    }
    seen.push(entry);
    if (entry.guid === BAT_REGION_GUID) {
      if (bat) throw new VhdxFormatError('VHDX region table lists the BAT twice');
      bat = entry;
    } else if (entry.guid === METADATA_REGION_GUID) {
      if (metadata) throw new VhdxFormatError('VHDX region table lists the metadata region twice');
      metadata = entry;
    } else if (entry.required) {
      throw new VhdxFormatError(`VHDX region ${entry.guid} is required but unknown`);
    }
  }
  if (!bat) throw new VhdxFormatError('VHDX region table has no BAT region');
  if (!metadata) throw new VhdxFormatError('VHDX region table has no metadata region');
  return { bat, metadata };
}

export function encodeRegionTable(regions: readonly RegionEntry[]): Uint8Array {
  const table = new Uint8Array(REGION_TABLE_BYTES);
  const view = viewOf(table);
  view.setUint32(0, REGION_SIGNATURE, true);
  view.setUint32(8, regions.length, true);
  regions.forEach((entry, i) => {
    const at = 16 + i * 32;
    writeGuid(view, at, entry.guid);
    writeU64(view, at + 16, entry.fileOffset);
    view.setUint32(at + 24, entry.length, true);
    view.setUint32(at + 28, entry.required ? 1 : 0, true);
  });
  sealChecksum(table, 4);
  return table;
}

export function rangesOverlap(a: number, aLength: number, b: number, bLength: number): boolean {
  return a < b + bLength && b < a + aLength;
}

// ---- Metadata (spec 2.6) ----
export interface MetadataItemRef {
  guid: string;
  /** Offset from the start of the metadata region. */
  offset: number;
  length: number;
  isUser: boolean;
  isVirtualDisk: boolean;
  isRequired: boolean;
}

const METADATA_FLAG_USER = 1;
const METADATA_FLAG_VIRTUAL_DISK = 2;
const METADATA_FLAG_REQUIRED = 4;

/** Decodes the 64 KiB metadata table; item ranges are checked against the region length. */
export function decodeMetadataTable(bytes: Uint8Array, regionLength: number): MetadataItemRef[] {
  if (bytes.length < METADATA_TABLE_BYTES) throw new VhdxFormatError('VHDX metadata table is truncated');
  const view = viewOf(bytes);
  for (let i = 0; i < 8; i++) {
    if (bytes[i] !== METADATA_SIGNATURE.charCodeAt(i)) throw new VhdxFormatError('VHDX metadata table signature is wrong');
  }
  const count = view.getUint16(10, true);
  if (count > MAX_METADATA_ENTRIES) throw new VhdxFormatError(`VHDX metadata table has ${count} entries (at most ${MAX_METADATA_ENTRIES})`);
  const items: MetadataItemRef[] = [];
  for (let i = 0; i < count; i++) {
    const at = 32 + i * 32;
    const flags = view.getUint32(at + 24, true);
    const item: MetadataItemRef = {
      guid: readGuid(view, at),
      offset: view.getUint32(at + 16, true),
      length: view.getUint32(at + 20, true),
      isUser: (flags & METADATA_FLAG_USER) !== 0,
      isVirtualDisk: (flags & METADATA_FLAG_VIRTUAL_DISK) !== 0,
      isRequired: (flags & METADATA_FLAG_REQUIRED) !== 0,
    };
    if (item.length > MiB) throw new VhdxFormatError(`VHDX metadata item ${item.guid} is ${item.length} bytes (at most 1 MiB)`);
    if (item.length > 0 && (item.offset < METADATA_TABLE_BYTES || item.offset + item.length > regionLength)) {
      throw new VhdxFormatError(`VHDX metadata item ${item.guid} lies outside its region`);
    }
    if (!item.isUser && items.some((other) => !other.isUser && other.guid === item.guid)) throw new VhdxFormatError(`VHDX metadata item ${item.guid} appears twice`);
    items.push(item);
  }
  return items;
}

/** The system metadata items this driver understands, decoded and checked. */
export interface DiskParameters {
  blockBytes: number;
  leaveBlocksAllocated: boolean;
  hasParent: boolean;
  virtualDiskBytes: number;
  logicalSectorBytes: 512 | 4096;
  physicalSectorBytes: 512 | 4096;
  page83Guid: string;
}

/**
 * Picks the known items out of the metadata table. `readItem` returns an item's bytes
 * (item.length of them, at most 1 MiB: the table decoder checked). Refuses unknown
 * required items, missing items and out-of-range values.
 */
export function decodeDiskParameters(items: readonly MetadataItemRef[], readItem: (item: MetadataItemRef) => Uint8Array): DiskParameters {
  const known = new Set([FILE_PARAMETERS_GUID, VIRTUAL_DISK_SIZE_GUID, PAGE83_DATA_GUID, LOGICAL_SECTOR_SIZE_GUID, PHYSICAL_SECTOR_SIZE_GUID, PARENT_LOCATOR_GUID]);
  for (const item of items) {
    if (item.isRequired && (item.isUser || !known.has(item.guid))) throw new VhdxFormatError(`VHDX metadata item ${item.guid} is required but unknown`);
  }
  const itemBytes = (guid: string, size: number, name: string): DataView => {
    const item = items.find((i) => !i.isUser && i.guid === guid);
    if (!item) throw new VhdxFormatError(`VHDX metadata has no ${name} item`);
    if (item.length < size) throw new VhdxFormatError(`VHDX ${name} item is ${item.length} bytes, expected ${size}`);
    const bytes = readItem(item);
    if (bytes.length < size) throw new VhdxFormatError(`VHDX ${name} item is truncated`);
    return new DataView(bytes.buffer, bytes.byteOffset, size);
  };
  const fileParameters = itemBytes(FILE_PARAMETERS_GUID, 8, 'file parameters');
  const blockBytes = fileParameters.getUint32(0, true);
  const flags = fileParameters.getUint32(4, true);
  const virtualDiskBytes = readU64(itemBytes(VIRTUAL_DISK_SIZE_GUID, 8, 'virtual disk size'), 0, 'virtual disk size');
  const page83Guid = readGuid(itemBytes(PAGE83_DATA_GUID, 16, 'page 83 data'), 0);
  const logical = itemBytes(LOGICAL_SECTOR_SIZE_GUID, 4, 'logical sector size').getUint32(0, true);
  const physical = itemBytes(PHYSICAL_SECTOR_SIZE_GUID, 4, 'physical sector size').getUint32(0, true);
  if (blockBytes < MIN_BLOCK_BYTES || blockBytes > MAX_BLOCK_BYTES || (blockBytes & (blockBytes - 1)) !== 0) {
    throw new VhdxFormatError(`VHDX block size ${blockBytes} is not a power of two between 1 MiB and 256 MiB`);
  }
  if (logical !== 512 && logical !== 4096) throw new VhdxFormatError(`VHDX logical sector size ${logical} is not 512 or 4096`);
  if (physical !== 512 && physical !== 4096) throw new VhdxFormatError(`VHDX physical sector size ${physical} is not 512 or 4096`);
  if (virtualDiskBytes === 0 || virtualDiskBytes > MAX_DISK_BYTES || virtualDiskBytes % logical !== 0) {
    throw new VhdxFormatError(`VHDX virtual disk size ${virtualDiskBytes} is not a multiple of ${logical} between 1 sector and 64 TiB`);
  }
  return {
    blockBytes,
    leaveBlocksAllocated: (flags & 1) !== 0,
    hasParent: (flags & 2) !== 0,
    virtualDiskBytes,
    logicalSectorBytes: logical,
    physicalSectorBytes: physical,
    page83Guid,
  };
}

/** Item payload sizes, in the order createVhdx lays them out after the 64 KiB table. */
export interface MetadataLayoutInput {
  blockBytes: number;
  fixed: boolean;
  virtualDiskBytes: number;
  page83Guid: string;
  logicalSectorBytes: number;
  physicalSectorBytes: number;
}

/** Encodes a complete metadata region (table plus the five required items). */
export function encodeMetadataRegion(input: MetadataLayoutInput, regionLength: number): Uint8Array {
  const region = new Uint8Array(regionLength);
  const view = viewOf(region);
  for (let i = 0; i < 8; i++) region[i] = METADATA_SIGNATURE.charCodeAt(i);
  const items: Array<{ guid: string; length: number; flags: number; write: (at: number) => void }> = [
    { guid: FILE_PARAMETERS_GUID, length: 8, flags: METADATA_FLAG_REQUIRED, write: (at) => { view.setUint32(at, input.blockBytes, true); view.setUint32(at + 4, input.fixed ? 1 : 0, true); } },
    { guid: VIRTUAL_DISK_SIZE_GUID, length: 8, flags: METADATA_FLAG_REQUIRED | METADATA_FLAG_VIRTUAL_DISK, write: (at) => writeU64(view, at, input.virtualDiskBytes) },
    { guid: PAGE83_DATA_GUID, length: 16, flags: METADATA_FLAG_REQUIRED | METADATA_FLAG_VIRTUAL_DISK, write: (at) => writeGuid(view, at, input.page83Guid) },
    { guid: LOGICAL_SECTOR_SIZE_GUID, length: 4, flags: METADATA_FLAG_REQUIRED | METADATA_FLAG_VIRTUAL_DISK, write: (at) => view.setUint32(at, input.logicalSectorBytes, true) },
    { guid: PHYSICAL_SECTOR_SIZE_GUID, length: 4, flags: METADATA_FLAG_REQUIRED | METADATA_FLAG_VIRTUAL_DISK, write: (at) => view.setUint32(at, input.physicalSectorBytes, true) },
  ];
  view.setUint16(10, items.length, true);
  let offset = METADATA_TABLE_BYTES;
  items.forEach((item, i) => {
    const at = 32 + i * 32;
    writeGuid(view, at, item.guid);
    view.setUint32(at + 16, offset, true);
    view.setUint32(at + 20, item.length, true);
    view.setUint32(at + 24, item.flags, true);
    item.write(offset);
    offset += item.length;
  });
  return region;
}

// ---- BAT geometry (spec 2.5) ----
export interface BatGeometry {
  blockBytes: number;
  /** Payload blocks per sector bitmap block. */
  chunkRatio: number;
  payloadBlocks: number;
  /** Payload plus interleaved sector bitmap entries. */
  totalEntries: number;
}

export function batGeometry(virtualDiskBytes: number, blockBytes: number, logicalSectorBytes: number, hasParent = false): BatGeometry {
  const chunkRatio = (SECTORS_PER_CHUNK * logicalSectorBytes) / blockBytes;
  const payloadBlocks = Math.ceil(virtualDiskBytes / blockBytes);
  const bitmapBlocks = Math.ceil(payloadBlocks / chunkRatio);
  // Without a parent the table ends after the last payload entry; a differencing disk
  // also has the sector bitmap entry of the last chunk.
  const totalEntries = hasParent ? bitmapBlocks * (chunkRatio + 1) : payloadBlocks + Math.floor((payloadBlocks - 1) / chunkRatio);
  return { blockBytes, chunkRatio, payloadBlocks, totalEntries };
}

/** The BAT index of payload block `block`: a sector bitmap entry follows every chunkRatio payload entries. */
export function batIndexOfBlock(block: number, chunkRatio: number): number {
  return block + Math.floor(block / chunkRatio);
}

/** Offsets in a BAT entry are in MiB units in bits 20..63. */
export function encodeBatEntry(state: number, fileOffset: number): { low: number; high: number } {
  const mib = fileOffset / MiB;
  return { low: (((mib % 4096) << 20) | (state & 7)) >>> 0, high: Math.floor(mib / 4096) };
}

/** The file offset in bytes of a BAT entry (may exceed 2^53 only for absurd images: callers range-check it). */
export function batEntryOffset(low: number, high: number): number {
  return ((low >>> 20) + high * 4096) * MiB;
}
