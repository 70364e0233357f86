// Opening a VHDX file: everything that happens before the first guest request. Reads and
// checks the headers, replays the log (or overlays it for a read-only open), reads the
// region table, the metadata and the BAT, and keeps the headers current as the spec asks
// (a new sequence number and FileWriteGuid on a read-write open, a new DataWriteGuid
// before the first change a reader could see). Metadata goes through synchronous fs
// calls on the fd (see vhdx-sync-io.ts); a read-only open writes nothing at all.
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import {
  batEntryOffset, batGeometry, batIndexOfBlock, checkHeaderLog, chooseHeader, decodeDiskParameters, decodeHeader, decodeMetadataTable,
  decodeRegionTable, encodeHeader, HEADER1_OFFSET, HEADER2_OFFSET, HEADER_BYTES, HEADER_SECTION_BYTES, isVhdxSignature, METADATA_TABLE_BYTES,
  MiB, PAYLOAD_BLOCK_FULLY_PRESENT, rangesOverlap, REGION_TABLE1_OFFSET, REGION_TABLE2_OFFSET, REGION_TABLE_BYTES, VhdxFormatError, ZERO_GUID,
  type BatGeometry, type DiskParameters, type RegionTable, type VhdxHeader,
} from './vhdx-format.js';
import { checkLogWrites, findActiveSequence, LogOverlay, MAX_LOG_BYTES } from './vhdx-log.js';
import { readAt, writeAt } from './vhdx-sync-io.js';

/** What the open found in the file: the parsed structures and the in-memory BAT. */
export interface VhdxImage {
  readonly fd: number;
  readonly readOnly: boolean;
  readonly parameters: DiskParameters;
  readonly regions: RegionTable;
  readonly geometry: BatGeometry;
  /** The BAT as on disk (little-endian u64 entries), kept in step with every BAT write. */
  readonly bat: Uint8Array;
  readonly batView: DataView;
  /** File size at open (after any log replay). */
  readonly fileBytes: number;
  /** Payload blocks whose BAT entry points outside the file: requests to them fail with EIO. */
  readonly badBlocks: Set<number>;
  /** How the log was handled at open. */
  readonly log: 'empty' | 'replayed' | 'overlaid';
  readonly headers: VhdxHeaderState;
}

/** Where each header slot stands, and the rules for rewriting them. */
export class VhdxHeaderState {
  private readonly sessionGuid = randomUUID();
  constructor(private readonly fd: number, private current: VhdxHeader, private currentIndex: 0 | 1) {}

  get header(): VhdxHeader {
    return this.current;
  }

  /**
   * Writes the inactive header with the next sequence number, then the other one, so
   * that both slots hold the new state (spec 2.2.2.1: a torn update leaves the old
   * header current). Each write is made durable before the next.
   */
  update(change: { newDataWriteGuid?: boolean; logGuid?: string }): void {
    const next: VhdxHeader = { ...this.current, fileWriteGuid: this.sessionGuid };
    if (change.newDataWriteGuid) next.dataWriteGuid = randomUUID();
    if (change.logGuid !== undefined) next.logGuid = change.logGuid;
    for (let i = 0; i < 2; i++) {
      const target: 0 | 1 = this.currentIndex === 0 ? 1 : 0;
      next.sequenceNumber = this.current.sequenceNumber + 1n;
      writeAt(this.fd, encodeHeader(next), target === 0 ? HEADER1_OFFSET : HEADER2_OFFSET);
      fs.fdatasyncSync(this.fd);
      this.current = { ...next };
      this.currentIndex = target;
    }
  }
}

/** Parses the image open on `fd`. Throws VhdxFormatError with a description of what is wrong. */
export function loadVhdxImage(fd: number, readOnly: boolean): VhdxImage {
  let fileBytes = fs.fstatSync(fd).size;
  if (fileBytes < HEADER_SECTION_BYTES) throw new VhdxFormatError(`the file is ${fileBytes} bytes, too small for a VHDX (at least 1 MiB)`);
  if (!isVhdxSignature(readAt(fd, 0, 8, 'file identifier'))) throw new VhdxFormatError('the file does not start with the VHDX signature "vhdxfile"');

  const chosen = chooseHeader(decodeHeader(readAt(fd, HEADER1_OFFSET, HEADER_BYTES, 'first header')), decodeHeader(readAt(fd, HEADER2_OFFSET, HEADER_BYTES, 'second header')));
  const headers = new VhdxHeaderState(fd, chosen.header, chosen.index);
  const header = chosen.header;
  checkHeaderLog(header);

  // ---- The log: replay it before reading anything it may have been updating ----
  let overlay: LogOverlay | undefined;
  let log: VhdxImage['log'] = 'empty';
  const logPresent = header.logGuid !== ZERO_GUID && header.logLength > 0;
  if (logPresent) {
    if (header.logLength > MAX_LOG_BYTES) throw new VhdxFormatError(`the VHDX log is ${header.logLength} bytes (at most ${MAX_LOG_BYTES} supported)`);
    if (header.logOffset + header.logLength > fileBytes) throw new VhdxFormatError('the VHDX file ends inside its log: it is truncated');
    const sequence = findActiveSequence(readAt(fd, header.logOffset, header.logLength, 'log'), header.logGuid);
    if (sequence) {
      checkLogWrites(sequence, fileBytes, header.logOffset, header.logLength);
      if (readOnly) {
        overlay = new LogOverlay(sequence.writes);
        log = 'overlaid';
      } else {
        replay(fd, sequence.writes, sequence.lastFileOffset);
        fileBytes = fs.fstatSync(fd).size;
        log = 'replayed';
      }
    }
  }
  const read = (offset: number, length: number, what: string): Uint8Array => {
    const bytes = readAt(fd, offset, length, what);
    overlay?.apply(offset, bytes);
    return bytes;
  };

  // ---- Region table (the copy at 256 KiB stands in if the first is damaged) ----
  let regions: RegionTable;
  try {
    regions = decodeRegionTable(read(REGION_TABLE1_OFFSET, REGION_TABLE_BYTES, 'region table'));
  } catch (first) {
    try {
      regions = decodeRegionTable(read(REGION_TABLE2_OFFSET, REGION_TABLE_BYTES, 'second region table'));
    } catch {
      throw first;
    }
  }
  for (const region of [regions.bat, regions.metadata]) {
    if (header.logLength > 0 && rangesOverlap(region.fileOffset, region.length, header.logOffset, header.logLength)) {
      throw new VhdxFormatError(`VHDX region ${region.guid} overlaps the log`);
    }
  }

  // ---- Metadata ----
  const metadataTable = read(regions.metadata.fileOffset, METADATA_TABLE_BYTES, 'metadata table');
  const items = decodeMetadataTable(metadataTable, regions.metadata.length);
  const parameters = decodeDiskParameters(items, (item) => read(regions.metadata.fileOffset + item.offset, item.length, `metadata item ${item.guid}`));
  if (parameters.hasParent) throw new VhdxFormatError('this VHDX is a differencing disk (it has a parent): differencing disks are not supported');

  // ---- BAT ----
  const geometry = batGeometry(parameters.virtualDiskBytes, parameters.blockBytes, parameters.logicalSectorBytes);
  const batBytes = geometry.totalEntries * 8;
  if (batBytes > regions.bat.length) throw new VhdxFormatError(`the VHDX BAT region (${regions.bat.length} bytes) is too small for ${geometry.totalEntries} entries`);
  if (regions.bat.fileOffset + batBytes > fileBytes) throw new VhdxFormatError('the VHDX file ends inside its BAT: it is truncated');
  const bat = read(regions.bat.fileOffset, batBytes, 'BAT');
  const batView = new DataView(bat.buffer, bat.byteOffset, bat.byteLength);
  const badBlocks = checkBat(batView, geometry, parameters, header, regions, fileBytes);

  if (overlay && !overlay.coveredBy([{ fileOffset: REGION_TABLE1_OFFSET, length: 2 * REGION_TABLE_BYTES }, regions.bat, regions.metadata])) {
    throw new VhdxFormatError('the VHDX log must be replayed and it changes more than metadata: open the image read-write once to replay it');
  }

  if (!readOnly) headers.update(log === 'replayed' ? { newDataWriteGuid: true, logGuid: ZERO_GUID } : logPresent ? { logGuid: ZERO_GUID } : {});
  return { fd, readOnly, parameters, regions, geometry, bat, batView, fileBytes, badBlocks, log, headers };
}

/**
 * A present block must lie past the header section and clear of the log, BAT and
 * metadata (else guest writes would overwrite the image's own structures: refuse the
 * image). One that lies past the end of the file only fails its own requests.
 */
function checkBat(view: DataView, geometry: BatGeometry, parameters: DiskParameters, header: VhdxHeader, regions: RegionTable, fileBytes: number): Set<number> {
  const bad = new Set<number>();
  const { blockBytes, chunkRatio, payloadBlocks } = geometry;
  for (let block = 0; block < payloadBlocks; block++) {
    const at = batIndexOfBlock(block, chunkRatio) * 8;
    const low = view.getUint32(at, true);
    if ((low & 7) !== PAYLOAD_BLOCK_FULLY_PRESENT) continue;
    const offset = batEntryOffset(low, view.getUint32(at + 4, true));
    const used = Math.min(blockBytes, parameters.virtualDiskBytes - block * blockBytes);
    if (offset < HEADER_SECTION_BYTES
      || (header.logLength > 0 && rangesOverlap(offset, used, header.logOffset, header.logLength))
      || rangesOverlap(offset, used, regions.bat.fileOffset, regions.bat.length)
      || rangesOverlap(offset, used, regions.metadata.fileOffset, regions.metadata.length)) {
      throw new VhdxFormatError(`VHDX BAT entry for block ${block} points at the image's own structures (offset ${offset})`);
    }
    if (offset + used > fileBytes) bad.add(block);
  }
  return bad;
}

/** Applies the log's writes in order, extends the file as the log says, and makes it durable. */
function replay(fd: number, writes: ReadonlyArray<{ fileOffset: number; length: number; data?: Uint8Array }>, lastFileOffset: number): void {
  const zeros = new Uint8Array(MiB);
  for (const write of writes) {
    if (write.data) {
      writeAt(fd, write.data, write.fileOffset);
      continue;
    }
    for (let done = 0; done < write.length; done += zeros.length) {
      writeAt(fd, zeros.subarray(0, Math.min(zeros.length, write.length - done)), write.fileOffset + done);
    }
  }
  if (fs.fstatSync(fd).size < lastFileOffset) fs.ftruncateSync(fd, Math.ceil(lastFileOffset / MiB) * MiB);
  fs.fsyncSync(fd);
}
