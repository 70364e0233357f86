// VHDX codecs without files: CRC-32C against published vectors; headers, region tables,
// metadata, BAT entries and log entries survive encode/decode; every decoder, fed random
// or corrupted bytes, either decodes or refuses with VhdxFormatError (never another throw,
// never a hang); the log's active sequence is found from the head's tail, across the end
// of the circular log, and damaged entries are left out.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  BAT_REGION_GUID, batEntryOffset, batGeometry, batIndexOfBlock, checksumWithZeroField, chooseHeader, crc32c, decodeDiskParameters, decodeHeader,
  decodeMetadataTable, decodeRegionTable, encodeBatEntry, encodeHeader, encodeMetadataRegion, encodeRegionTable, HEADER_BYTES, METADATA_REGION_GUID,
  MiB, REGION_TABLE_BYTES, sealChecksum, TiB, VhdxFormatError, ZERO_GUID, type VhdxHeader,
} from '../src/backends/block/vhdx/vhdx-format.js';
import { checkLogWrites, decodeLogEntry, encodeLogEntry, findActiveSequence, LOG_SECTOR_BYTES, LogOverlay, type LogWrite } from '../src/backends/block/vhdx/vhdx-log.js';

const guid = fc.uuid().map((u) => u.toLowerCase());
const RUNS = { numRuns: 200, seed: 424242 };

/** Runs `f`; anything thrown must be a VhdxFormatError. */
function decodesOrRefuses(f: () => unknown): void {
  try {
    f();
  } catch (error) {
    if (!(error instanceof VhdxFormatError)) throw error;
  }
}

describe('CRC-32C', () => {
  test('published check values', () => {
    assert.equal(crc32c(new TextEncoder().encode('123456789')), 0xe3069283);
    assert.equal(crc32c(new Uint8Array(32)), 0x8a9136aa); // RFC 3720 B.4
    assert.equal(crc32c(new Uint8Array(32).fill(0xff)), 0x62a8ab43);
    assert.equal(crc32c(new Uint8Array(0)), 0);
  });

  test('chaining equals one pass; the checksum field is taken as zero', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), fc.uint8Array({ maxLength: 300 }), (a, b) => {
      const whole = new Uint8Array(a.length + b.length);
      whole.set(a);
      whole.set(b, a.length);
      assert.equal(crc32c(b, crc32c(a)), crc32c(whole));
      if (whole.length >= 8) {
        const sealed = whole.slice();
        sealChecksum(sealed, 4);
        assert.equal(checksumWithZeroField(sealed, 4), new DataView(sealed.buffer).getUint32(4, true));
      }
    }), RUNS);
  });
});

const headerArb: fc.Arbitrary<VhdxHeader> = fc.record({
  sequenceNumber: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
  fileWriteGuid: guid,
  dataWriteGuid: guid,
  logGuid: guid,
  logVersion: fc.constant(0),
  version: fc.constant(1),
  logLength: fc.nat(4095).map((n) => n * MiB),
  logOffset: fc.nat(2 ** 20).map((n) => (n + 1) * MiB),
});

describe('headers', () => {
  test('encode/decode round trip', () => {
    fc.assert(fc.property(headerArb, (header) => assert.deepEqual(decodeHeader(encodeHeader(header)), { ...header })), RUNS);
  });

  test('any changed byte in the 4 KiB makes the header invalid', () => {
    fc.assert(fc.property(headerArb, fc.nat(HEADER_BYTES - 1), fc.integer({ min: 1, max: 255 }), (header, at, delta) => {
      const bytes = encodeHeader(header);
      bytes[at] = (bytes[at]! + delta) & 0xff;
      assert.equal(decodeHeader(bytes), undefined);
    }), RUNS);
  });

  test('random bytes never decode to a header (and never throw)', () => {
    fc.assert(fc.property(fc.uint8Array({ minLength: 0, maxLength: HEADER_BYTES }), (bytes) => assert.equal(decodeHeader(bytes), undefined)), RUNS);
  });

  test('the current header is the valid one with the higher sequence number', () => {
    fc.assert(fc.property(headerArb, headerArb, fc.boolean(), fc.boolean(), (a, b, aValid, bValid) => {
      const first = aValid ? a : undefined;
      const second = bValid ? b : undefined;
      if (!first && !second) return assert.throws(() => chooseHeader(first, second), VhdxFormatError);
      if (first && second && first.sequenceNumber === second.sequenceNumber) {
        if (JSON.stringify(first, (_k, v) => (typeof v === 'bigint' ? String(v) : v)) === JSON.stringify(second, (_k, v) => (typeof v === 'bigint' ? String(v) : v))) return;
        return assert.throws(() => chooseHeader(first, second), VhdxFormatError);
      }
      const chosen = chooseHeader(first, second);
      const expected = !second || (first && first.sequenceNumber > second.sequenceNumber) ? 0 : 1;
      assert.equal(chosen.index, expected);
    }), RUNS);
    const h = { sequenceNumber: 5n, fileWriteGuid: ZERO_GUID, dataWriteGuid: ZERO_GUID, logGuid: ZERO_GUID, logVersion: 0, version: 1, logLength: MiB, logOffset: MiB };
    assert.equal(chooseHeader(h, { ...h }).index, 0, 'identical headers with one sequence number are fine');
    assert.throws(() => chooseHeader(h, { ...h, logLength: 2 * MiB }), /same sequence number/);
  });
});

describe('region table', () => {
  test('round trip of the two known regions', () => {
    fc.assert(fc.property(fc.nat(1000), fc.integer({ min: 1, max: 64 }), fc.integer({ min: 1, max: 64 }), (at, batMiB, metaMiB) => {
      const bat = { guid: BAT_REGION_GUID, fileOffset: (at + 1) * MiB, length: batMiB * MiB, required: true };
      const metadata = { guid: METADATA_REGION_GUID, fileOffset: (at + 1 + batMiB) * MiB, length: metaMiB * MiB, required: true };
      assert.deepEqual(decodeRegionTable(encodeRegionTable([metadata, bat])), { bat, metadata });
    }), RUNS);
  });

  test('overlapping, misaligned, duplicate, missing and unknown required regions are refused', () => {
    const bat = { guid: BAT_REGION_GUID, fileOffset: 2 * MiB, length: MiB, required: true };
    const metadata = { guid: METADATA_REGION_GUID, fileOffset: 3 * MiB, length: MiB, required: true };
    assert.throws(() => decodeRegionTable(encodeRegionTable([bat, { ...metadata, fileOffset: 2 * MiB }])), /overlap/);
    assert.throws(() => decodeRegionTable(encodeRegionTable([bat, { ...metadata, fileOffset: 3 * MiB + 4096 }])), /multiple of 1 MiB/);
    assert.throws(() => decodeRegionTable(encodeRegionTable([bat, { ...metadata, fileOffset: 0 }])), /header section/);
    assert.throws(() => decodeRegionTable(encodeRegionTable([bat, metadata, { ...bat, fileOffset: 9 * MiB }])), /twice/);
    assert.throws(() => decodeRegionTable(encodeRegionTable([bat])), /no metadata/);
    assert.throws(() => decodeRegionTable(encodeRegionTable([bat, metadata, { guid: ZERO_GUID, fileOffset: 9 * MiB, length: MiB, required: true }])), /required but unknown/);
    decodeRegionTable(encodeRegionTable([bat, metadata, { guid: ZERO_GUID, fileOffset: 9 * MiB, length: MiB, required: false }]));
  });

  test('random table contents (with a valid checksum) decode or are refused', () => {
    fc.assert(fc.property(fc.uint8Array({ minLength: 16 + 32 * 4, maxLength: 16 + 32 * 4 }), fc.nat(2100), (body, count) => {
      const table = new Uint8Array(REGION_TABLE_BYTES);
      table.set(body);
      const view = new DataView(table.buffer);
      view.setUint32(0, 0x69676572, true);
      view.setUint32(8, count, true);
      sealChecksum(table, 4);
      decodesOrRefuses(() => decodeRegionTable(table));
    }), RUNS);
  });
});

describe('metadata', () => {
  const paramsArb = fc.record({
    blockBytes: fc.integer({ min: 0, max: 8 }).map((s) => MiB << s),
    fixed: fc.boolean(),
    sectors: fc.integer({ min: 1, max: 2 ** 30 }),
    logicalSectorBytes: fc.constantFrom(512, 4096),
    physicalSectorBytes: fc.constantFrom(512, 4096),
    page83Guid: guid,
  });

  test('round trip of the five system items', () => {
    fc.assert(fc.property(paramsArb, (p) => {
      const virtualDiskBytes = Math.min(p.sectors * p.logicalSectorBytes, 64 * TiB);
      const region = encodeMetadataRegion({ ...p, virtualDiskBytes }, MiB);
      const items = decodeMetadataTable(region, MiB);
      const decoded = decodeDiskParameters(items, (item) => region.subarray(item.offset, item.offset + item.length));
      assert.deepEqual(decoded, {
        blockBytes: p.blockBytes, leaveBlocksAllocated: p.fixed, hasParent: false, virtualDiskBytes,
        logicalSectorBytes: p.logicalSectorBytes, physicalSectorBytes: p.physicalSectorBytes, page83Guid: p.page83Guid,
      });
    }), RUNS);
  });

  test('random table and item bytes decode or are refused', () => {
    fc.assert(fc.property(fc.array(fc.record({ at: fc.nat(MiB - 1), value: fc.integer({ min: 0, max: 255 }) }), { maxLength: 20 }), fc.boolean(), (edits, inTable) => {
      const region = encodeMetadataRegion({ blockBytes: MiB, fixed: false, virtualDiskBytes: 64 * MiB, page83Guid: ZERO_GUID, logicalSectorBytes: 512, physicalSectorBytes: 512 }, MiB);
      for (const e of edits) region[inTable ? e.at % (32 * 7) : 65536 + (e.at % 48)] = e.value;
      decodesOrRefuses(() => {
        const items = decodeMetadataTable(region, MiB);
        decodeDiskParameters(items, (item) => region.subarray(item.offset, item.offset + item.length));
      });
    }), { numRuns: 500, seed: 7 });
  });

  test('out-of-range values are refused with a reason', () => {
    const make = (blockBytes: number, virtualDiskBytes: number, logical: number) => {
      const region = encodeMetadataRegion({ blockBytes, fixed: false, virtualDiskBytes, page83Guid: ZERO_GUID, logicalSectorBytes: logical, physicalSectorBytes: 512 }, MiB);
      return () => decodeDiskParameters(decodeMetadataTable(region, MiB), (item) => region.subarray(item.offset, item.offset + item.length));
    };
    assert.throws(make(3 * MiB, MiB, 512), /power of two/);
    assert.throws(make(512 * MiB, MiB, 512), /power of two/);
    assert.throws(make(MiB, MiB + 1, 512), /multiple of 512/);
    assert.throws(make(MiB, 65 * TiB, 512), /64 TiB/);
    assert.throws(make(MiB, MiB, 1024), /logical sector size/);
    assert.throws(make(MiB, 0, 512), /virtual disk size/);
  });
});

describe('BAT', () => {
  test('geometry matches the spec formulas (and qemu-img for its default images)', () => {
    // qemu-img create -f vhdx x 48M: 8 MiB blocks, chunk ratio 512, 6 entries.
    assert.deepEqual(batGeometry(48 * MiB, 8 * MiB, 512), { blockBytes: 8 * MiB, chunkRatio: 512, payloadBlocks: 6, totalEntries: 6 });
    // 1 MiB blocks, 512-byte sectors: a sector bitmap entry after every 4096 payload entries.
    assert.deepEqual(batGeometry(8192 * MiB, MiB, 512), { blockBytes: MiB, chunkRatio: 4096, payloadBlocks: 8192, totalEntries: 8193 });
    assert.equal(batGeometry(8192 * MiB, MiB, 512, true).totalEntries, 2 * 4097);
  });

  test('payload entries skip the sector bitmap entries and stay inside the table', () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 8 }), fc.constantFrom(512, 4096), fc.integer({ min: 1, max: 20000 }), (shift, sector, blocks) => {
      const blockBytes = MiB << shift;
      const g = batGeometry(blocks * blockBytes, blockBytes, sector);
      assert.equal(g.payloadBlocks, blocks);
      const last = batIndexOfBlock(blocks - 1, g.chunkRatio);
      assert.equal(last, g.totalEntries - 1);
      for (const b of [0, g.chunkRatio - 1, g.chunkRatio, blocks - 1]) {
        if (b < 0 || b >= blocks) continue;
        assert.notEqual(batIndexOfBlock(b, g.chunkRatio) % (g.chunkRatio + 1), g.chunkRatio, 'never a sector bitmap slot');
      }
    }), RUNS);
  });

  test('entry encode/decode round trip (offset in MiB units above bit 20, state in the low bits)', () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 2 ** 33 - 1 }), fc.integer({ min: 0, max: 7 }), (mib, state) => {
      const { low, high } = encodeBatEntry(state, mib * MiB);
      assert.equal(low & 7, state);
      assert.equal((low >>> 3) & 0x1ffff, 0, 'reserved bits stay zero');
      assert.equal(batEntryOffset(low, high), mib * MiB);
    }), RUNS);
  });
});

describe('log', () => {
  const logGuid = '0f1e2d3c-4b5a-4697-8877-665544332211';
  const writeArb: fc.Arbitrary<LogWrite> = fc.oneof(
    fc.record({ sector: fc.integer({ min: 48, max: 4096 }), data: fc.uint8Array({ minLength: 4096, maxLength: 4096 }) }).map(({ sector, data }) => ({ fileOffset: sector * 4096, length: 4096, data })),
    fc.record({ sector: fc.integer({ min: 48, max: 4096 }), sectors: fc.integer({ min: 0, max: 16 }) }).map(({ sector, sectors }) => ({ fileOffset: sector * 4096, length: sectors * 4096 })),
  );

  test('an entry decodes to what was encoded, wherever it sits in the circular log', () => {
    fc.assert(fc.property(fc.array(writeArb, { maxLength: 140 }), fc.bigInt({ min: 1n, max: 2n ** 63n }), fc.nat(255), (writes, sequenceNumber, slot) => {
      const entry = encodeLogEntry({ sequenceNumber, tail: 0, logGuid, flushedFileOffset: 5 * MiB, lastFileOffset: 6 * MiB, writes });
      const log = new Uint8Array(MiB);
      const position = slot * 4096;
      for (let i = 0; i < entry.length; i += 4096) log.set(entry.subarray(i, i + 4096), (position + i) % log.length);
      const decoded = decodeLogEntry(log, position, logGuid);
      assert.ok(decoded, 'decodes');
      assert.equal(decoded.sequenceNumber, sequenceNumber);
      assert.equal(decoded.length, entry.length);
      assert.deepEqual(decoded.writes, writes.map((w) => (w.data ? { fileOffset: w.fileOffset, length: 4096, data: w.data } : { fileOffset: w.fileOffset, length: w.length })));
      assert.equal(decodeLogEntry(log, position, ZERO_GUID), undefined, 'another log GUID');
    }), { numRuns: 60, seed: 99 });
  });

  test('a changed byte anywhere in an entry makes it invalid', () => {
    fc.assert(fc.property(fc.array(writeArb, { minLength: 1, maxLength: 3 }), fc.nat(), fc.integer({ min: 1, max: 255 }), (writes, at, delta) => {
      const entry = encodeLogEntry({ sequenceNumber: 7n, tail: 0, logGuid, flushedFileOffset: 0, lastFileOffset: 0, writes });
      const log = new Uint8Array(MiB);
      log.set(entry);
      const i = at % entry.length;
      log[i] = (log[i]! + delta) & 0xff;
      assert.equal(decodeLogEntry(log, 0, logGuid), undefined);
    }), RUNS);
  });

  test('random log bytes never throw and rarely produce a sequence', () => {
    fc.assert(fc.property(fc.uint8Array({ minLength: 64, maxLength: 64 }), fc.nat(255), (head, slot) => {
      const log = new Uint8Array(MiB);
      log.set(head, slot * 4096);
      new DataView(log.buffer).setUint32(slot * 4096, 0x65676f6c, true); // "loge": reach the deeper checks
      assert.equal(findActiveSequence(log, logGuid), undefined);
    }), { numRuns: 100, seed: 3 });
  });

  /** Lays entries with consecutive sequence numbers from `start`, each entry's tail = `tail`. */
  function layEntries(log: Uint8Array, start: number, first: bigint, count: number, tail: number, tag: number): number {
    let position = start;
    for (let i = 0; i < count; i++) {
      const data = new Uint8Array(4096).fill(tag + i);
      const entry = encodeLogEntry({ sequenceNumber: first + BigInt(i), tail, logGuid, flushedFileOffset: 0, lastFileOffset: 0, writes: [{ fileOffset: (100 + i) * 4096, length: 4096, data }] });
      for (let s = 0; s < entry.length; s += 4096) log.set(entry.subarray(s, s + 4096), (position + s) % log.length);
      position = (position + entry.length) % log.length;
    }
    return position;
  }

  test('the active sequence runs from the head entry\'s tail to the head, across the end of the log', () => {
    const log = new Uint8Array(MiB);
    const start = MiB - 3 * 8192; // three 8 KiB entries before the end, two after it
    layEntries(log, start, 10n, 5, start, 1);
    const sequence = findActiveSequence(log, logGuid);
    assert.ok(sequence);
    assert.deepEqual(sequence.entries.map((e) => e.sequenceNumber), [10n, 11n, 12n, 13n, 14n]);
    assert.deepEqual(sequence.writes.map((w) => w.data![0]), [1, 2, 3, 4, 5]);
  });

  test('entries older than the tail are not replayed; a broken chain falls back to an older head', () => {
    const log = new Uint8Array(MiB);
    // Entries 20..23 at 0; the head (23) says the sequence starts at entry 22 (position 16 KiB).
    layEntries(log, 0, 20n, 2, 0, 1);
    layEntries(log, 16384, 22n, 2, 16384, 3);
    assert.deepEqual(findActiveSequence(log, logGuid)!.entries.map((e) => e.sequenceNumber), [22n, 23n]);
    // Entry 23 points its tail at a position with no entry: 22 (tail 16 KiB) is the best head left.
    const broken = new Uint8Array(MiB);
    layEntries(broken, 0, 20n, 2, 0, 1);
    layEntries(broken, 16384, 22n, 1, 16384, 3);
    layEntries(broken, 24576, 23n, 1, 40960, 4);
    assert.deepEqual(findActiveSequence(broken, logGuid)!.entries.map((e) => e.sequenceNumber), [22n]);
  });

  test('replay writes are confined to the file\'s metadata', () => {
    const seq = (writes: LogWrite[], flushed = 0, last = 0) => ({ entries: [], writes, lastFileOffset: last, flushedFileOffset: flushed });
    const file = 8 * MiB;
    checkLogWrites(seq([{ fileOffset: 2 * MiB, length: 4096 }]), file, MiB, MiB);
    assert.throws(() => checkLogWrites(seq([{ fileOffset: 64 * 1024, length: 4096 }]), file, MiB, MiB), /outside/);
    assert.throws(() => checkLogWrites(seq([{ fileOffset: MiB + 4096, length: 4096 }]), file, MiB, MiB), /into itself/);
    assert.throws(() => checkLogWrites(seq([{ fileOffset: 7 * MiB, length: 2 * MiB }]), file, MiB, MiB), /outside/);
    checkLogWrites(seq([{ fileOffset: 7 * MiB, length: 2 * MiB }], 0, 9 * MiB), file, MiB, MiB);
    assert.throws(() => checkLogWrites(seq([], 9 * MiB), file, MiB, MiB), /truncated/);
  });

  test('the read-only overlay patches reads exactly as applying the writes in order would', () => {
    const nearWrite: fc.Arbitrary<LogWrite> = fc.oneof(
      fc.record({ sector: fc.nat(150), fill: fc.integer({ min: 1, max: 255 }) }).map(({ sector, fill }) => ({ fileOffset: sector * 4096, length: 4096, data: new Uint8Array(4096).fill(fill) })),
      fc.record({ sector: fc.nat(150), sectors: fc.integer({ min: 0, max: 40 }) }).map(({ sector, sectors }) => ({ fileOffset: sector * 4096, length: sectors * 4096 })),
    );
    fc.assert(fc.property(fc.array(nearWrite, { maxLength: 8 }), fc.nat(4096 * 200), fc.integer({ min: 1, max: 65536 }), (writes, readAt, readLength) => {
      const file = new Uint8Array(4096 * 200).fill(0xee);
      for (const w of writes) {
        if (w.data) file.set(w.data, w.fileOffset);
        else file.fill(0, w.fileOffset, w.fileOffset + w.length);
      }
      const start = Math.min(readAt, file.length - 1);
      const length = Math.min(readLength, file.length - start);
      const buffer = new Uint8Array(length).fill(0xee);
      new LogOverlay(writes).apply(start, buffer);
      assert.deepEqual(buffer, file.subarray(start, start + length));
    }), RUNS);
  });

  test('a hostile log (every sector starts a log-long entry) is refused without quadratic work', () => {
    const log = new Uint8Array(16 * MiB);
    const header = encodeLogEntry({ sequenceNumber: 1n, tail: 0, logGuid, flushedFileOffset: 0, lastFileOffset: 0, writes: [] });
    new DataView(header.buffer).setUint32(8, log.length, true); // claims the whole log; the checksum no longer matches
    for (let at = 0; at < log.length; at += 4096) log.set(header, at);
    const started = Date.now();
    assert.throws(() => findActiveSequence(log, logGuid), /too damaged/);
    assert.ok(Date.now() - started < 5000, 'bounded work');
  });

  test('log sector size is 4 KiB', () => assert.equal(LOG_SECTOR_BYTES, 4096));
});
