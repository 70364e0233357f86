// Packet descriptor codecs: GPA-direct and transfer-page headers round-trip, garbage
// decodes to an error code (never an exception), and the decoded ranges go through the
// ring unchanged.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import type { GpaRange } from '../src/memory/gpa-range.js';
import { PAGE_SIZE, pagesFor } from '../src/memory/page.js';
import {
  decodeErrorMessage,
  decodeGpaDirectHeader,
  decodeTransferPageHeader,
  DecodeError,
  encodeGpaDirectHeader,
  encodeTransferPageHeader,
  GpaDirectRanges,
  gpaDirectHeaderSize,
  PACKET_FLAG_COMPLETION_REQUESTED,
  PacketType,
  TransferPageHeader,
  transferPageHeaderSize,
} from '../src/vmbus/packet.js';
import { initRingHeader, ringMemoryFromBuffer } from '../src/vmbus/ring/ring-memory.js';
import { RingReader } from '../src/vmbus/ring/ring-reader.js';
import { RingWriter, WriteResult } from '../src/vmbus/ring/ring-writer.js';

const rangeArb: fc.Arbitrary<GpaRange> = fc
  .record({
    byteOffset: fc.integer({ min: 0, max: PAGE_SIZE - 1 }),
    byteCount: fc.oneof(fc.integer({ min: 0, max: 3 * PAGE_SIZE }), fc.constantFrom(0, 1, PAGE_SIZE, 4 * PAGE_SIZE)),
  })
  .chain(({ byteOffset, byteCount }) =>
    fc.record({
      byteOffset: fc.constant(byteOffset),
      byteCount: fc.constant(byteCount),
      pfns: fc.array(fc.oneof(fc.integer({ min: 0, max: 1 << 20 }), fc.constant(2 ** 52 - 1)), {
        minLength: pagesFor(byteOffset, byteCount),
        maxLength: pagesFor(byteOffset, byteCount),
      }),
    }),
  );

function plain(out: GpaDirectRanges): GpaRange[] {
  return out.ranges.slice(0, out.count).map((r) => ({ byteCount: r.byteCount, byteOffset: r.byteOffset, pfns: [...r.pfns] }));
}

describe('packet types', () => {
  test('numbering follows enum vmbus_packet_type', () => {
    assert.equal(PacketType.DataInband, 6);
    assert.equal(PacketType.DataUsingTransferPages, 7);
    assert.equal(PacketType.DataUsingGpaDirect, 9);
    assert.equal(PacketType.Completion, 11);
    assert.equal(PacketType.AdditionalData, 13);
    assert.deepEqual(Object.values(PacketType), Array.from({ length: 14 }, (_, i) => i));
    assert.equal(PACKET_FLAG_COMPLETION_REQUESTED, 1);
  });
});

describe('GPA-direct header', () => {
  test('round-trips any number of ranges with any number of PFNs, reusing the output', () => {
    const out = new GpaDirectRanges();
    fc.assert(
      fc.property(fc.array(rangeArb, { maxLength: 12 }), fc.integer({ min: 0, max: 3 }), (ranges, slack) => {
        const size = gpaDirectHeaderSize(ranges);
        assert.equal(size % 8, 0);
        const bytes = new Uint8Array(size + 8 * slack + 16);
        assert.equal(encodeGpaDirectHeader(ranges, bytes, 16), size);
        // Trailing bytes in the header (offset8 larger than needed) are ignored.
        assert.equal(decodeGpaDirectHeader(bytes, 16, size + 8 * slack, out), DecodeError.None);
        assert.deepEqual(plain(out), ranges.map((r) => ({ ...r, pfns: [...r.pfns] })));
        const rangeObjects = out.ranges.slice();
        decodeGpaDirectHeader(bytes, 16, size, out);
        for (let i = 0; i < out.count; i++) assert.equal(out.ranges[i], rangeObjects[i], 'range objects are reused');
      }),
      { numRuns: 500 },
    );
  });

  test('a header cut short is an error', () => {
    const out = new GpaDirectRanges();
    fc.assert(
      fc.property(fc.array(rangeArb, { minLength: 1, maxLength: 6 }), fc.nat(), (ranges, cut) => {
        const size = gpaDirectHeaderSize(ranges);
        const bytes = new Uint8Array(size);
        encodeGpaDirectHeader(ranges, bytes, 0);
        const length = cut % size; // strictly shorter
        const error = decodeGpaDirectHeader(bytes, 0, length, out);
        assert.notEqual(error, DecodeError.None);
        assert.equal(typeof decodeErrorMessage(error), 'string');
      }),
    );
  });

  test('garbage never throws; what decodes is consistent with the header length', () => {
    const out = new GpaDirectRanges();
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 300 }),
        fc.integer({ min: 0, max: 40 }),
        fc.option(fc.integer({ min: 0, max: 0xffff_ffff })),
        (bytes, offset, rangeCount) => {
          if (rangeCount !== null && bytes.length >= 8) new DataView(bytes.buffer).setUint32(4, rangeCount, true);
          const length = Math.max(0, bytes.length - offset);
          const error = decodeGpaDirectHeader(bytes, offset, length, out);
          if (error !== DecodeError.None) {
            assert.equal(out.count, 0, 'no ranges on error');
            return;
          }
          let used = 8;
          for (let i = 0; i < out.count; i++) {
            const r = out.ranges[i]!;
            assert.equal(r.pfns.length, pagesFor(r.byteOffset, r.byteCount));
            for (const pfn of r.pfns) assert.ok(Number.isSafeInteger(pfn) && pfn >= 0);
            used += 8 + 8 * r.pfns.length;
          }
          assert.ok(used <= length);
        },
      ),
      { numRuns: 2000 },
    );
    // Out-of-range offsets and lengths are errors, not exceptions.
    assert.equal(decodeGpaDirectHeader(new Uint8Array(16), 12, 8, out), DecodeError.Truncated);
    assert.equal(decodeGpaDirectHeader(new Uint8Array(16), -1, 8, out), DecodeError.Truncated);
  });

  test('specific garbage: huge range_count, a range whose pages overrun, a PFN beyond 2^52', () => {
    const out = new GpaDirectRanges();
    const b = new Uint8Array(64);
    const v = new DataView(b.buffer);
    v.setUint32(4, 0xffff_ffff, true);
    assert.equal(decodeGpaDirectHeader(b, 0, 64, out), DecodeError.TooManyRanges);
    v.setUint32(4, 1, true);
    v.setUint32(8, 0xffff_ffff, true); // byte_count: ~1M pages
    v.setUint32(12, 0xffff_ffff, true);
    assert.equal(decodeGpaDirectHeader(b, 0, 64, out), DecodeError.RangeOverrun);
    v.setUint32(8, 100, true);
    v.setUint32(12, 0, true);
    v.setUint32(16, 5, true);
    v.setUint32(20, 1 << 20, true);
    assert.equal(decodeGpaDirectHeader(b, 0, 24, out), DecodeError.PfnTooLarge);
    v.setUint32(20, (1 << 20) - 1, true);
    assert.equal(decodeGpaDirectHeader(b, 0, 24, out), DecodeError.None);
    assert.equal(out.ranges[0]!.pfns[0], 2 ** 52 - 2 ** 32 + 5);
  });

  test('the encoder refuses ranges whose page list does not match their extent', () => {
    const target = new Uint8Array(64);
    assert.throws(() => encodeGpaDirectHeader([{ byteCount: 5000, byteOffset: 0, pfns: [1] }], target, 0), RangeError);
    assert.throws(() => encodeGpaDirectHeader([{ byteCount: 1, byteOffset: 0, pfns: [-1] }], target, 0), RangeError);
    assert.throws(() => encodeGpaDirectHeader([{ byteCount: 1, byteOffset: 0, pfns: [1] }], target, 60), RangeError);
  });
});

describe('transfer-page header', () => {
  const tpRangeArb = fc.record({ byteCount: fc.integer({ min: 0, max: 0xffff_ffff }), byteOffset: fc.integer({ min: 0, max: 0xffff_ffff }) });

  test('round-trips', () => {
    const out = new TransferPageHeader();
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffff }), fc.boolean(), fc.array(tpRangeArb, { maxLength: 40 }), (id, owns, ranges) => {
        const size = transferPageHeaderSize(ranges.length);
        const bytes = new Uint8Array(size + 8);
        assert.equal(encodeTransferPageHeader(id, owns, ranges, bytes, 8), size);
        assert.equal(decodeTransferPageHeader(bytes, 8, size, out), DecodeError.None);
        assert.equal(out.pageSetId, id);
        assert.equal(out.senderOwnsSet, owns);
        assert.equal(out.count, ranges.length);
        assert.deepEqual(out.ranges.slice(0, out.count).map((r) => ({ ...r })), ranges.map((r) => ({ ...r })));
      }),
      { numRuns: 500 },
    );
  });

  test('garbage never throws; range_count is bounded by the header length', () => {
    const out = new TransferPageHeader();
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), fc.integer({ min: 0, max: 20 }), (bytes, offset) => {
        const length = Math.max(0, bytes.length - offset);
        const error = decodeTransferPageHeader(bytes, offset, length, out);
        if (error === DecodeError.None) assert.ok(8 + 8 * out.count <= length);
        else assert.equal(out.count, 0);
      }),
      { numRuns: 2000 },
    );
  });
});

describe('through the ring', () => {
  test('a GPA-direct packet written by the guest decodes on the host', () => {
    fc.assert(
      fc.property(fc.array(rangeArb, { minLength: 1, maxLength: 5 }), fc.uint8Array({ maxLength: 200 }), fc.integer({ min: 0, max: 1023 }), (ranges, payload, start) => {
        const ringBytes = 4 * PAGE_SIZE;
        const mem = ringMemoryFromBuffer(new SharedArrayBuffer(ringBytes), 0, ringBytes, false);
        initRingHeader(mem);
        Atomics.store(mem.header, 0, start * 8);
        Atomics.store(mem.header, 1, start * 8);
        const writer = new RingWriter(mem);
        const reader = new RingReader(mem);
        const header = new Uint8Array(gpaDirectHeaderSize(ranges));
        encodeGpaDirectHeader(ranges, header, 0);
        assert.notEqual(writer.tryWrite(PacketType.DataUsingGpaDirect, PACKET_FLAG_COMPLETION_REQUESTED, 42n, header, payload), WriteResult.FULL);
        const p = reader.peek()!;
        assert.equal(p.type, PacketType.DataUsingGpaDirect);
        const copy = new Uint8Array(p.headerLength);
        reader.copyHeader(copy);
        const out = new GpaDirectRanges();
        assert.equal(decodeGpaDirectHeader(copy, 0, copy.length, out), DecodeError.None);
        assert.deepEqual(plain(out), ranges.map((r) => ({ ...r, pfns: [...r.pfns] })));
      }),
      { numRuns: 200 },
    );
  });

  test('a transfer-page packet written by the host decodes on the guest, in place', () => {
    const ringBytes = 2 * PAGE_SIZE;
    const mem = ringMemoryFromBuffer(new SharedArrayBuffer(ringBytes), 0, ringBytes, false);
    initRingHeader(mem);
    const writer = new RingWriter(mem);
    const reader = new RingReader(mem);
    const ranges = [{ byteCount: 1514, byteOffset: 0 }, { byteCount: 60, byteOffset: 6144 }];
    const size = transferPageHeaderSize(ranges.length);
    const at = writer.reserve(PacketType.DataUsingTransferPages, PACKET_FLAG_COMPLETION_REQUESTED, 7n, size + 16, size);
    encodeTransferPageHeader(0xcafe, false, ranges, writer.target, at);
    writer.target.fill(0xab, at + size, at + size + 16);
    assert.equal(writer.commit(), WriteResult.WRITTEN_SIGNAL);
    const p = reader.peek()!;
    assert.equal(p.offset8, 2 + size / 8);
    const out = new TransferPageHeader();
    assert.equal(decodeTransferPageHeader(mem.data, p.headerOffset, p.headerLength, out), DecodeError.None);
    assert.equal(out.pageSetId, 0xcafe);
    assert.deepEqual(out.ranges.slice(0, out.count), ranges);
    assert.ok(mem.data.subarray(p.payloadOffset, p.payloadOffset + 16).every((b) => b === 0xab));
  });
});
