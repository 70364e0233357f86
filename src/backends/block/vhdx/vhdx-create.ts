// Creates a new VHDX file, laid out as qemu-img lays it out so both tools agree on it:
//   0       file identifier ("vhdxfile" + creator)
//   64 KiB  header 1, 128 KiB header 2, 192 KiB region table, 256 KiB its copy
//   1 MiB   log (1 MiB, empty)
//   2 MiB   BAT (rounded up to 1 MiB), then the metadata region (1 MiB)
//   then    payload blocks (fixed: all of them, in order; dynamic: allocated on write)
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import {
  BAT_REGION_GUID, batGeometry, batIndexOfBlock, encodeBatEntry, encodeHeader, encodeMetadataRegion, encodeRegionTable, FILE_SIGNATURE,
  GiB, HEADER1_OFFSET, HEADER2_OFFSET, HEADER_SECTION_BYTES, MAX_BLOCK_BYTES, MAX_DISK_BYTES, METADATA_REGION_GUID, MiB, MIN_BLOCK_BYTES,
  PAYLOAD_BLOCK_FULLY_PRESENT, REGION_TABLE1_OFFSET, REGION_TABLE2_OFFSET, TiB, viewOf, ZERO_GUID,
} from './vhdx-format.js';
import { writeAt } from './vhdx-sync-io.js';

export interface CreateVhdxOptions {
  sizeBytes: number;
  type: 'fixed' | 'dynamic';
  /** Payload block size: a power of two from 1 MiB to 256 MiB; default as qemu-img picks it from the size. */
  blockBytes?: number;
  logicalSectorBytes?: 512 | 4096;
}

const LOG_BYTES = 1 * MiB;
const METADATA_REGION_BYTES = 1 * MiB;

/** qemu-img's choice, so images made by either tool look alike. */
export function defaultBlockBytes(sizeBytes: number): number {
  if (sizeBytes > 32 * TiB) return 64 * MiB;
  if (sizeBytes > 100 * GiB) return 32 * MiB;
  if (sizeBytes > 1 * GiB) return 16 * MiB;
  return 8 * MiB;
}

/** Creates `path` (which must not exist yet). A failed create removes the partial file. */
export async function createVhdx(path: string, options: CreateVhdxOptions): Promise<void> {
  const logical = options.logicalSectorBytes ?? 512;
  const { sizeBytes, type } = options;
  if (logical !== 512 && logical !== 4096) throw new RangeError(`logical sector size must be 512 or 4096, got ${String(logical)}`);
  if (type !== 'fixed' && type !== 'dynamic') throw new RangeError(`VHDX type must be 'fixed' or 'dynamic', got ${String(type)}`);
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes > MAX_DISK_BYTES || sizeBytes % logical !== 0) {
    throw new RangeError(`VHDX size must be a positive multiple of ${logical} bytes up to 64 TiB, got ${sizeBytes}`);
  }
  const blockBytes = options.blockBytes ?? defaultBlockBytes(sizeBytes);
  if (!Number.isSafeInteger(blockBytes) || blockBytes < MIN_BLOCK_BYTES || blockBytes > MAX_BLOCK_BYTES || (blockBytes & (blockBytes - 1)) !== 0) {
    throw new RangeError(`VHDX block size must be a power of two from 1 MiB to 256 MiB, got ${blockBytes}`);
  }

  const geometry = batGeometry(sizeBytes, blockBytes, logical);
  const logOffset = HEADER_SECTION_BYTES;
  const batOffset = logOffset + LOG_BYTES;
  const batLength = Math.ceil((geometry.totalEntries * 8) / MiB) * MiB;
  const metadataOffset = batOffset + batLength;
  const dataOffset = metadataOffset + METADATA_REGION_BYTES;

  const fd = fs.openSync(path, 'wx', 0o644);
  try {
    const identifier = new Uint8Array(64 * 1024);
    for (let i = 0; i < 8; i++) identifier[i] = FILE_SIGNATURE.charCodeAt(i);
    const creator = 'enlighten';
    const idView = viewOf(identifier);
    for (let i = 0; i < creator.length; i++) idView.setUint16(8 + 2 * i, creator.charCodeAt(i), true);
    writeAt(fd, identifier, 0);

    const region = encodeRegionTable([
      { guid: BAT_REGION_GUID, fileOffset: batOffset, length: batLength, required: true },
      { guid: METADATA_REGION_GUID, fileOffset: metadataOffset, length: METADATA_REGION_BYTES, required: true },
    ]);
    writeAt(fd, region, REGION_TABLE1_OFFSET);
    writeAt(fd, region, REGION_TABLE2_OFFSET);

    writeAt(fd, encodeMetadataRegion({
      blockBytes, fixed: type === 'fixed', virtualDiskBytes: sizeBytes, page83Guid: randomUUID(), logicalSectorBytes: logical, physicalSectorBytes: logical,
    }, METADATA_REGION_BYTES), metadataOffset);

    if (type === 'fixed') {
      // Every payload block is present from the start, in order after the metadata.
      // Sector bitmap entries stay zero (NOT_PRESENT): only differencing disks use them.
      const bat = new Uint8Array(batLength);
      const view = viewOf(bat);
      for (let block = 0; block < geometry.payloadBlocks; block++) {
        const entry = encodeBatEntry(PAYLOAD_BLOCK_FULLY_PRESENT, dataOffset + block * blockBytes);
        const at = batIndexOfBlock(block, geometry.chunkRatio) * 8;
        view.setUint32(at, entry.low, true);
        view.setUint32(at + 4, entry.high, true);
      }
      writeAt(fd, bat, batOffset);
      // The blocks read as zeros; the file is sparse until written.
      fs.ftruncateSync(fd, dataOffset + geometry.payloadBlocks * blockBytes);
    } else {
      fs.ftruncateSync(fd, dataOffset);
    }

    // Headers last: until they are written the file is not a valid VHDX.
    const header = {
      sequenceNumber: 1n, fileWriteGuid: randomUUID(), dataWriteGuid: randomUUID(), logGuid: ZERO_GUID,
      logVersion: 0, version: 1, logLength: LOG_BYTES, logOffset,
    };
    fs.fdatasyncSync(fd);
    writeAt(fd, encodeHeader(header), HEADER1_OFFSET);
    writeAt(fd, encodeHeader({ ...header, sequenceNumber: 2n }), HEADER2_OFFSET);
    fs.fsyncSync(fd);
  } catch (error) {
    fs.closeSync(fd);
    fs.rmSync(path, { force: true });
    throw error;
  }
  fs.closeSync(fd);
}
