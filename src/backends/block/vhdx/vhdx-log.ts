// The VHDX metadata log (MS-VHDX 2.3): a circular buffer of 4 KiB sectors holding
// entries (a header, descriptors, data sectors) that describe metadata writes not yet
// known to be on disk. Opening a file whose header names a log must replay the active
// sequence first. This file finds that sequence in the log's bytes (pure, fuzzable) and
// turns it into an ordered list of writes; the opener applies them to the file or, for
// a read-only open, overlays them on what it reads.
import { readGuid, writeGuid } from '../../../vmbus/guid.js';
import { checksumWithZeroField, MiB, rangesOverlap, readU64, REGION_TABLE1_OFFSET, sealChecksum, VhdxFormatError, viewOf, writeU64 } from './vhdx-format.js';

export const LOG_SECTOR_BYTES = 4096;
const ENTRY_SIGNATURE = 0x65676f6c; // "loge"
const DATA_DESCRIPTOR_SIGNATURE = 0x63736564; // "desc"
const ZERO_DESCRIPTOR_SIGNATURE = 0x6f72657a; // "zero"
const DATA_SECTOR_SIGNATURE = 0x61746164; // "data"
export const LOG_ENTRY_HEADER_BYTES = 64;
export const LOG_DESCRIPTOR_BYTES = 32;
/** A log is read whole into memory: refuse absurd ones rather than size an allocation from the image. */
export const MAX_LOG_BYTES = 256 * MiB;

/** One write the log asks for: 4 KiB of data, or zeros over `length` bytes. */
export interface LogWrite {
  fileOffset: number;
  length: number;
  /** Absent for a zero descriptor. */
  data?: Uint8Array;
}

export interface LogEntry {
  /** Byte position of the entry in the log. */
  position: number;
  length: number;
  tail: number;
  sequenceNumber: bigint;
  flushedFileOffset: number;
  lastFileOffset: number;
  writes: LogWrite[];
}

export interface LogSequence {
  entries: LogEntry[];
  writes: LogWrite[];
  /** The file must be at least this long after replay (the highest LastFileOffset). */
  lastFileOffset: number;
  /** The file was at least this long when the newest entry was written. */
  flushedFileOffset: number;
}

/**
 * Work allowed for one search. An honest log's entries do not overlap, so checksumming
 * every entry costs about the log's length; a hostile log could make every sector start
 * an entry as long as the log (quadratic work). Beyond the budget the log is refused.
 */
export interface ScanBudget {
  bytes: number;
  steps: number;
}

/** Number of 4 KiB sectors that hold the entry header and `descriptors` descriptors. */
export function descriptorSectors(descriptors: number): number {
  return Math.ceil((descriptors + 2) / (LOG_SECTOR_BYTES / LOG_DESCRIPTOR_BYTES));
}

/**
 * Decodes the entry starting at `position` of the circular log `log`; undefined when no
 * valid entry starts there (any check failing just means "not an entry": the scan
 * looks at every sector).
 */
export function decodeLogEntry(log: Uint8Array, position: number, logGuid: string, budget?: ScanBudget): LogEntry | undefined {
  const size = log.length;
  if (position % LOG_SECTOR_BYTES !== 0 || position >= size) return undefined;
  const first = viewOf(log.subarray(position, position + LOG_SECTOR_BYTES));
  if (first.getUint32(0, true) !== ENTRY_SIGNATURE) return undefined;
  const length = first.getUint32(8, true);
  const tail = first.getUint32(12, true);
  const sequenceNumber = first.getBigUint64(16, true);
  const descriptorCount = first.getUint32(24, true);
  if (length < LOG_SECTOR_BYTES || length % LOG_SECTOR_BYTES !== 0 || length > size) return undefined;
  if (tail % LOG_SECTOR_BYTES !== 0 || tail >= size) return undefined;
  if (sequenceNumber === 0n) return undefined;
  if (readGuid(first, 32) !== logGuid) return undefined;
  const sectors = length / LOG_SECTOR_BYTES;
  const headerSectors = descriptorSectors(descriptorCount);
  if (headerSectors > sectors) return undefined;
  if (budget) {
    budget.bytes -= length;
    if (budget.bytes < 0) throw new VhdxFormatError('the VHDX log is too damaged to search (its entries overlap beyond reason)');
  }
  // Gather the entry (it may wrap past the end of the log) and check its checksum.
  const entry = new Uint8Array(length);
  for (let s = 0; s < sectors; s++) {
    const at = (position + s * LOG_SECTOR_BYTES) % size;
    entry.set(log.subarray(at, at + LOG_SECTOR_BYTES), s * LOG_SECTOR_BYTES);
  }
  const view = viewOf(entry);
  if (view.getUint32(4, true) !== checksumWithZeroField(entry, 4)) return undefined;
  let flushedFileOffset: number;
  let lastFileOffset: number;
  try {
    flushedFileOffset = readU64(view, 48, 'flushed file offset');
    lastFileOffset = readU64(view, 56, 'last file offset');
  } catch {
    return undefined;
  }
  const writes: LogWrite[] = [];
  let dataSector = headerSectors;
  for (let i = 0; i < descriptorCount; i++) {
    const at = LOG_ENTRY_HEADER_BYTES + i * LOG_DESCRIPTOR_BYTES;
    const signature = view.getUint32(at, true);
    if (view.getBigUint64(at + 24, true) !== sequenceNumber) return undefined;
    let fileOffset: number;
    try {
      fileOffset = readU64(view, at + 16, 'descriptor file offset');
    } catch {
      return undefined;
    }
    if (fileOffset % LOG_SECTOR_BYTES !== 0) return undefined;
    if (signature === ZERO_DESCRIPTOR_SIGNATURE) {
      let zeroLength: number;
      try {
        zeroLength = readU64(view, at + 8, 'zero length');
      } catch {
        return undefined;
      }
      if (zeroLength % LOG_SECTOR_BYTES !== 0) return undefined;
      writes.push({ fileOffset, length: zeroLength });
    } else if (signature === DATA_DESCRIPTOR_SIGNATURE) {
      if (dataSector >= sectors) return undefined;
      const sectorAt = dataSector * LOG_SECTOR_BYTES;
      dataSector++;
      if (view.getUint32(sectorAt, true) !== DATA_SECTOR_SIGNATURE) return undefined;
      const sectorSequence = (BigInt(view.getUint32(sectorAt + 4, true)) << 32n) | BigInt(view.getUint32(sectorAt + 4092, true));
      if (sectorSequence !== sequenceNumber) return undefined;
      // The sector's first 8 and last 4 bytes travel in the descriptor, so that the data
      // sector can carry its signature and sequence number in their place.
      const data = new Uint8Array(LOG_SECTOR_BYTES);
      data.set(entry.subarray(at + 8, at + 16), 0);
      data.set(entry.subarray(sectorAt + 8, sectorAt + 4092), 8);
      data.set(entry.subarray(at + 4, at + 8), 4092);
      writes.push({ fileOffset, length: LOG_SECTOR_BYTES, data });
    } else {
      return undefined;
    }
  }
  return { position, length, tail, sequenceNumber, flushedFileOffset, lastFileOffset, writes };
}

/**
 * Finds the active sequence (spec 2.3.3): the valid entry with the highest sequence
 * number whose Tail leads, entry by entry with consecutive sequence numbers, to it.
 * Undefined when the log holds no such sequence (nothing to replay).
 */
export function findActiveSequence(log: Uint8Array, logGuid: string): LogSequence | undefined {
  if (log.length === 0 || log.length % LOG_SECTOR_BYTES !== 0) return undefined;
  const budget: ScanBudget = { bytes: 8 * log.length, steps: 0 };
  const entries = new Map<number, LogEntry>();
  for (let position = 0; position < log.length; position += LOG_SECTOR_BYTES) {
    const entry = decodeLogEntry(log, position, logGuid, budget);
    if (entry) entries.set(position, entry);
  }
  budget.steps = 16 * entries.size + 1024;
  const heads = [...entries.values()].sort((a, b) => (a.sequenceNumber < b.sequenceNumber ? 1 : a.sequenceNumber > b.sequenceNumber ? -1 : 0));
  for (const head of heads) {
    const chain = walkFromTail(entries, head, log.length, budget);
    if (!chain) continue;
    const writes: LogWrite[] = [];
    let lastFileOffset = 0;
    for (const entry of chain) {
      writes.push(...entry.writes);
      lastFileOffset = Math.max(lastFileOffset, entry.lastFileOffset);
    }
    return { entries: chain, writes, lastFileOffset, flushedFileOffset: head.flushedFileOffset };
  }
  return undefined;
}

function walkFromTail(entries: Map<number, LogEntry>, head: LogEntry, logLength: number, budget: ScanBudget): LogEntry[] | undefined {
  const chain: LogEntry[] = [];
  let entry = entries.get(head.tail);
  while (entry && chain.length < entries.size) {
    if (--budget.steps < 0) throw new VhdxFormatError('the VHDX log is too damaged to search (too many broken sequences)');
    if (chain.length > 0 && entry.sequenceNumber !== chain[chain.length - 1]!.sequenceNumber + 1n) return undefined;
    chain.push(entry);
    if (entry === head) return chain;
    if (entry.sequenceNumber >= head.sequenceNumber) return undefined;
    entry = entries.get((entry.position + entry.length) % logLength);
  }
  return undefined;
}

/**
 * Checks that replaying `sequence` only writes where a log may write: past the headers,
 * outside the log itself, within the file as the log describes it. `fileBytes` is the
 * current file size.
 */
export function checkLogWrites(sequence: LogSequence, fileBytes: number, logOffset: number, logLength: number): void {
  if (sequence.flushedFileOffset > fileBytes) {
    throw new VhdxFormatError(`the VHDX log was written when the file had ${sequence.flushedFileOffset} bytes, but it has ${fileBytes}: the file was truncated`);
  }
  const limit = Math.max(fileBytes, Math.ceil(sequence.lastFileOffset / MiB) * MiB);
  for (const write of sequence.writes) {
    if (write.fileOffset < REGION_TABLE1_OFFSET || write.fileOffset + write.length > limit) {
      throw new VhdxFormatError(`the VHDX log writes ${write.length} bytes at ${write.fileOffset}, outside the file's metadata`);
    }
    if (rangesOverlap(write.fileOffset, write.length, logOffset, logLength)) throw new VhdxFormatError(`the VHDX log writes into itself at ${write.fileOffset}`);
  }
}

/** The log's writes seen as an overlay on reads of the file, for a read-only open. */
export class LogOverlay {
  constructor(private readonly writes: readonly LogWrite[]) {}

  /** Patches `buffer`, which holds the file's bytes at `fileOffset`, with the log's writes (in log order). */
  apply(fileOffset: number, buffer: Uint8Array): void {
    for (const write of this.writes) {
      const start = Math.max(fileOffset, write.fileOffset);
      const end = Math.min(fileOffset + buffer.length, write.fileOffset + write.length);
      if (start >= end) continue;
      if (write.data) buffer.set(write.data.subarray(start - write.fileOffset, end - write.fileOffset), start - fileOffset);
      else buffer.fill(0, start - fileOffset, end - fileOffset);
    }
  }

  /** True when every write lies within one of `ranges` (the regions read through the overlay). */
  coveredBy(ranges: ReadonlyArray<{ fileOffset: number; length: number }>): boolean {
    return this.writes.every((w) => ranges.some((r) => w.fileOffset >= r.fileOffset && w.fileOffset + w.length <= r.fileOffset + r.length));
  }
}

export interface LogEntryInput {
  sequenceNumber: bigint;
  /** Log position of the first entry of the sequence this entry ends. */
  tail: number;
  logGuid: string;
  flushedFileOffset: number;
  lastFileOffset: number;
  /** Data writes are exactly one 4 KiB sector; zero writes any multiple of 4 KiB. */
  writes: readonly LogWrite[];
}

/**
 * Encodes one log entry (header, descriptors, data sectors) with its checksum: what a
 * writer puts in the log before it touches the metadata the entry describes.
 */
export function encodeLogEntry(input: LogEntryInput): Uint8Array {
  const count = input.writes.length;
  const headerSectors = descriptorSectors(count);
  const dataSectors = input.writes.filter((w) => w.data).length;
  const entry = new Uint8Array((headerSectors + dataSectors) * LOG_SECTOR_BYTES);
  const view = viewOf(entry);
  view.setUint32(0, ENTRY_SIGNATURE, true);
  view.setUint32(8, entry.length, true);
  view.setUint32(12, input.tail, true);
  view.setBigUint64(16, input.sequenceNumber, true);
  view.setUint32(24, count, true);
  writeGuid(view, 32, input.logGuid);
  writeU64(view, 48, input.flushedFileOffset);
  writeU64(view, 56, input.lastFileOffset);
  let sector = headerSectors;
  input.writes.forEach((write, i) => {
    const at = LOG_ENTRY_HEADER_BYTES + i * LOG_DESCRIPTOR_BYTES;
    writeU64(view, at + 16, write.fileOffset);
    view.setBigUint64(at + 24, input.sequenceNumber, true);
    if (!write.data) {
      view.setUint32(at, ZERO_DESCRIPTOR_SIGNATURE, true);
      writeU64(view, at + 8, write.length);
      return;
    }
    if (write.data.length !== LOG_SECTOR_BYTES) throw new RangeError('a log data write is exactly one 4 KiB sector');
    view.setUint32(at, DATA_DESCRIPTOR_SIGNATURE, true);
    entry.set(write.data.subarray(0, 8), at + 8);
    entry.set(write.data.subarray(4092, 4096), at + 4);
    const sectorAt = sector * LOG_SECTOR_BYTES;
    view.setUint32(sectorAt, DATA_SECTOR_SIGNATURE, true);
    view.setUint32(sectorAt + 4, Number(input.sequenceNumber >> 32n), true);
    entry.set(write.data.subarray(8, 4092), sectorAt + 8);
    view.setUint32(sectorAt + 4092, Number(input.sequenceNumber & 0xffffffffn), true);
    sector++;
  });
  sealChecksum(entry, 4);
  return entry;
}
