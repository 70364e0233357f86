// CDB and parameter decoders of the SCSI target: block fields of every READ/WRITE/VERIFY/
// WRITE SAME/SYNCHRONIZE CACHE form round-trip from their encodings, 64-bit LBAs never wrap
// into range, reserved features are refused; UNMAP headers, MODE SENSE/SELECT, fixed sense
// and the guest-buffer copy helpers are checked on random input (never a throw, never a
// byte outside the buffer).
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import fc from 'fast-check';
import { GuestMemory } from '../src/memory/guest-memory.js';
import { IovecList } from '../src/sys/iovec.js';
import { allocationLength, BlockCdb, be64, cdbLengthOfGroup, decodeBlockCdb, parameterListLength, putBe64, unmapDescriptorCount } from '../src/devices/scsi/scsi-cdb.js';
import { copyFromDataBuffer, copyToDataBuffer } from '../src/devices/scsi/scsi-data-buffer.js';
import { buildModeSense, MAX_MODE_SENSE_BYTES, modeSelectChangesNothing } from '../src/devices/scsi/scsi-mode-pages.js';
import { sanitizeSerial, VpdPages } from '../src/devices/scsi/scsi-inquiry.js';
import { writeFixedSense } from '../src/devices/scsi/scsi-sense.js';

function cdbOf(bytes: number[]): Uint8Array {
  const cdb = new Uint8Array(16);
  cdb.set(bytes);
  return cdb;
}

function be(value: number | bigint, bytes: number): number[] {
  let v = BigInt(value);
  const out: number[] = [];
  for (let i = 0; i < bytes; i++) {
    out.unshift(Number(v & 0xffn));
    v >>= 8n;
  }
  return out;
}

/** Encodes a block command the way an initiator would, for each form. */
const forms: { name: string; op: number; lbaBytes: number; lenBytes: number; encode: (lba: bigint, len: number, flags: number) => number[] }[] = [
  { name: 'READ(10)', op: 0x28, lbaBytes: 4, lenBytes: 2, encode: (l, n, f) => [0x28, f, ...be(l, 4), 0, ...be(n, 2), 0] },
  { name: 'WRITE(10)', op: 0x2a, lbaBytes: 4, lenBytes: 2, encode: (l, n, f) => [0x2a, f, ...be(l, 4), 0, ...be(n, 2), 0] },
  { name: 'READ(12)', op: 0xa8, lbaBytes: 4, lenBytes: 4, encode: (l, n, f) => [0xa8, f, ...be(l, 4), ...be(n, 4), 0, 0] },
  { name: 'WRITE(12)', op: 0xaa, lbaBytes: 4, lenBytes: 4, encode: (l, n, f) => [0xaa, f, ...be(l, 4), ...be(n, 4), 0, 0] },
  { name: 'READ(16)', op: 0x88, lbaBytes: 8, lenBytes: 4, encode: (l, n, f) => [0x88, f, ...be(l, 8), ...be(n, 4), 0, 0] },
  { name: 'WRITE(16)', op: 0x8a, lbaBytes: 8, lenBytes: 4, encode: (l, n, f) => [0x8a, f, ...be(l, 8), ...be(n, 4), 0, 0] },
];

describe('block CDB decoding', () => {
  const out = new BlockCdb();

  test('READ/WRITE 10/12/16 round-trip LBA, length and FUA; protection bits are refused', () => {
    for (const form of forms) {
      fc.assert(
        fc.property(fc.bigInt({ min: 0n, max: (1n << BigInt(8 * form.lbaBytes)) - 1n }), fc.integer({ min: 0, max: 2 ** (8 * form.lenBytes) - 1 }), fc.integer({ min: 0, max: 255 }), (lba, len, flags) => {
          const ok = decodeBlockCdb(cdbOf(form.encode(lba, len, flags)), out);
          assert.equal(ok, (flags & 0xe0) === 0, form.name);
          if (!ok) return;
          if (lba < 2n ** 53n) assert.equal(out.lba, Number(lba));
          else assert.ok(out.lba >= 2 ** 53, 'a huge LBA never rounds into range');
          assert.equal(out.blocks, len);
          assert.equal(out.fua, (flags & 0x08) !== 0);
        }),
        { numRuns: 300 },
      );
    }
  });

  test('READ(6)/WRITE(6): 21-bit LBA, 0 blocks means 256', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffffff }), fc.integer({ min: 0, max: 255 }), fc.constantFrom(0x08, 0x0a), (raw, len, op) => {
        assert.ok(decodeBlockCdb(cdbOf([op, raw >>> 16, (raw >>> 8) & 0xff, raw & 0xff, len, 0]), out));
        assert.equal(out.lba, raw & 0x1fffff);
        assert.equal(out.blocks, len === 0 ? 256 : len);
        assert.equal(out.fua, false);
      }),
    );
  });

  test('WRITE SAME: UNMAP and NDOB bits, ANCHOR refused; VERIFY byte check; SYNCHRONIZE CACHE', () => {
    assert.ok(decodeBlockCdb(cdbOf([0x93, 0x09, ...be(77, 8), ...be(5, 4), 0, 0]), out));
    assert.deepEqual([out.lba, out.blocks, out.unmap, out.noDataOut], [77, 5, true, true]);
    assert.ok(decodeBlockCdb(cdbOf([0x41, 0x08, ...be(9, 4), 0, ...be(3, 2), 0]), out));
    assert.deepEqual([out.lba, out.blocks, out.unmap, out.noDataOut], [9, 3, true, false]);
    assert.equal(decodeBlockCdb(cdbOf([0x93, 0x10, ...be(0, 8), ...be(1, 4), 0, 0]), out), false);
    assert.ok(decodeBlockCdb(cdbOf([0x2f, 0x02, ...be(1, 4), 0, ...be(2, 2), 0]), out));
    assert.equal(out.byteCheck, 1);
    assert.ok(decodeBlockCdb(cdbOf([0x91, 0x02, ...be(2n ** 64n - 1n, 8), ...be(0, 4), 0, 0]), out));
    assert.ok(out.lba >= 2 ** 53);
    assert.equal(decodeBlockCdb(cdbOf([0x12, 0, 0, 0, 0, 0]), out), false, 'not a block command');
  });

  test('random CDBs: decode never throws and always yields non-negative integers or false', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 16, maxLength: 16 }), (cdb) => {
        if (decodeBlockCdb(cdb, out)) {
          assert.ok(Number.isInteger(out.lba) && out.lba >= 0);
          assert.ok(Number.isInteger(out.blocks) && out.blocks >= 0 && out.blocks <= 0xffffffff);
        }
        const a = allocationLength(cdb);
        assert.ok(a === -1 || (a >= 0 && a <= 0xffffffff));
        const p = parameterListLength(cdb);
        assert.ok(p === -1 || (p >= 0 && p <= 0xffff));
      }),
      { numRuns: 5000 },
    );
  });

  test('be64 and putBe64 agree below 2^53; CDB lengths by group', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), (n) => {
        const bytes = new Uint8Array(8);
        putBe64(bytes, 0, n);
        assert.equal(be64(bytes, 0), n);
        assert.deepEqual([...bytes], be(n, 8));
      }),
    );
    assert.deepEqual([0x00, 0x28, 0x5a, 0x7f, 0x88, 0xa0, 0xc0, 0xff].map(cdbLengthOfGroup), [6, 10, 10, 0, 16, 12, 0, 0]);
  });
});

describe('parameter lists and answers', () => {
  test('UNMAP descriptor count: whole descriptors within the list, -1 for a short header or an overlong length', () => {
    const list = new Uint8Array(8 + 16 * 4);
    list[3] = 32;
    assert.equal(unmapDescriptorCount(list, 8 + 32), 2);
    list[3] = 40; // two and a half
    assert.equal(unmapDescriptorCount(list, 8 + 48), 2);
    assert.equal(unmapDescriptorCount(list, 8 + 32), -1);
    assert.equal(unmapDescriptorCount(list, 7), -1);
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 72, maxLength: 72 }), fc.integer({ min: 0, max: 72 }), (bytes, length) => {
        const n = unmapDescriptorCount(bytes, length);
        assert.ok(n === -1 || (n >= 0 && 8 + 16 * n <= length));
      }),
    );
  });

  test('MODE SENSE never exceeds its maximum; MODE SELECT never throws and accepts only the unchanged page', () => {
    const out = new Uint8Array(MAX_MODE_SENSE_BYTES + 16).fill(0xee);
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 16, maxLength: 16 }), fc.boolean(), fc.boolean(), fc.boolean(), (cdb, tenByte, readOnly, writeCache) => {
        cdb[0] = tenByte ? 0x5a : 0x1a;
        const n = buildModeSense(out, cdb, { readOnly, writeCache });
        assert.ok(n === -1 || (n > 0 && n <= MAX_MODE_SENSE_BYTES));
        assert.ok(out.subarray(MAX_MODE_SENSE_BYTES).every((b) => b === 0xee));
      }),
    );
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 64 }), fc.boolean(), (list, tenByte) => {
        modeSelectChangesNothing(list, list.length, tenByte, { readOnly: false, writeCache: true });
      }),
    );
    // The current page (PS set, as MODE SENSE may report it) is accepted.
    const sensed = new Uint8Array(64);
    const length = buildModeSense(sensed, cdbOf([0x1a, 0, 0x08, 0, 255, 0]), { readOnly: false, writeCache: true });
    const list = sensed.slice(0, length);
    list[0] = 0;
    list[2] = 0;
    list[4] |= 0x80;
    assert.ok(modeSelectChangesNothing(list, length, false, { readOnly: false, writeCache: true }));
    assert.equal(modeSelectChangesNothing(list, length, false, { readOnly: false, writeCache: false }), false);
    assert.equal(modeSelectChangesNothing(list, length - 1, false, { readOnly: false, writeCache: true }), false);
  });

  test('fixed sense: 18 bytes, response code 0x70, key at 2, ASC/ASCQ at 12/13, truncated to the target', () => {
    const sense = new Uint8Array(20).fill(0xff);
    assert.equal(writeFixedSense(sense, 0x05, 0x2400), 18);
    assert.deepEqual([...sense.subarray(0, 18)], [0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0x00, 0, 0, 0, 0]);
    assert.equal(sense[18], 0xff);
    const short = new Uint8Array(8);
    assert.equal(writeFixedSense(short, 0x06, 0x2a09), 8);
    assert.equal(short[2], 0x06);
  });

  test('VPD serial keeps printable ASCII only and is bounded', () => {
    assert.equal(sanitizeSerial('ab c\u0000\u00ffd'), 'abcd');
    assert.equal(sanitizeSerial('x'.repeat(1000)).length, 128);
    const pages = new VpdPages({ serial: 'é'.repeat(10), discard: true, limits: { maxTransferBlocks: 1, optimalGranularityBlocks: 1, maxUnmapBlocks: 1, maxUnmapDescriptors: 1, unmapGranularityBlocks: 1, maxWriteSameBlocks: 1 } });
    assert.equal(pages.page(0x80)!.length, 4);
    assert.equal(pages.page(0x89), undefined);
  });
});

describe('guest buffer copies', () => {
  const memory = GuestMemory.create(64 * 1024, 'scsi-cdb-test');
  after(() => memory.close());
  const base = Number(memory.base);
  const iov = new IovecList(8);

  test('copy to and from scattered segments, cut to the buffer, the source and the length', () => {
    iov.clear();
    iov.push(base + 100, 3);
    iov.push(base + 4096, 5);
    memory.bytes.fill(0);
    const source = Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert.equal(copyToDataBuffer(memory, iov, source, 10), 8);
    assert.deepEqual([...memory.bytes.subarray(99, 104)], [0, 1, 2, 3, 0]);
    assert.deepEqual([...memory.bytes.subarray(4096, 4102)], [4, 5, 6, 7, 8, 0]);
    assert.equal(copyToDataBuffer(memory, iov, source, 4), 4);
    assert.equal(copyToDataBuffer(memory, iov, source.subarray(0, 2), 10), 2);
    assert.equal(copyToDataBuffer(memory, iov, source, -1), 0);
    assert.equal(copyToDataBuffer(memory, iov, source, NaN), 0);
    const target = new Uint8Array(10);
    assert.equal(copyFromDataBuffer(memory, iov, target, 10), 8);
    assert.deepEqual([...target], [1, 2, 3, 4, 5, 6, 7, 8, 0, 0]);
  });

  test('a segment outside guest RAM is refused (-1) and nothing past it is touched', () => {
    fc.assert(
      fc.property(fc.integer({ min: -70000, max: 140000 }), fc.integer({ min: 0, max: 70000 }), (gpa, length) => {
        iov.clear();
        iov.push(base + 10, 2);
        iov.push(base + gpa, length);
        memory.bytes.fill(0);
        const source = new Uint8Array(length + 2).fill(9);
        const n = copyToDataBuffer(memory, iov, source, length + 2);
        // An empty segment is never touched, wherever it points.
        if (length === 0 || (gpa >= 0 && gpa + length <= memory.size)) assert.equal(n, length + 2);
        else {
          assert.equal(n, -1);
          assert.equal(copyFromDataBuffer(memory, iov, new Uint8Array(length + 2), length + 2), -1);
          let written = 0;
          for (const b of memory.bytes) written += b === 9 ? 1 : 0;
          assert.ok(written <= 2);
        }
      }),
      { numRuns: 300 },
    );
  });
});
