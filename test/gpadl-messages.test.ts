import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import type { GpaRange } from '../src/memory/gpa-range.js';
import { pagesFor } from '../src/memory/page.js';
import {
  decodeMessage,
  encodeMessage,
  type GpadlBodyMessage,
  type GpadlHeaderMessage,
} from '../src/vmbus/channel-messages.js';
import {
  decodeGpaRanges,
  encodeGpadl,
  encodeGpaRanges,
  GpadlAssembler,
  MAX_BODY_PFNS,
  MAX_HEADER_PFNS,
  type GpadlAcceptResult,
} from '../src/vmbus/gpadl-messages.js';

const LIMITS = { maxRangeBufferLength: 0xffff };

// ---------------------------------------------------------------------------------------
// Helpers

function header(overrides: Partial<GpadlHeaderMessage> & { rangeData: Uint8Array }): GpadlHeaderMessage {
  return { kind: 'gpadl-header', childRelid: 7, gpadl: 0xe1e10, rangeBufferLength: overrides.rangeData.length, rangeCount: 1, ...overrides };
}

function body(pfnData: Uint8Array, gpadl = 0xe1e10): GpadlBodyMessage {
  return { kind: 'gpadl-body', messageNumber: 0, gpadl, pfnData };
}

/** Range stream bytes from {byteCount, byteOffset, pfns as bigint} without going through the encoder. */
function rawStream(ranges: { byteCount: number; byteOffset: number; pfns: bigint[] }[]): Uint8Array {
  const length = ranges.reduce((n, r) => n + 8 + 8 * r.pfns.length, 0);
  const bytes = new Uint8Array(length);
  const view = new DataView(bytes.buffer);
  let o = 0;
  for (const r of ranges) {
    view.setUint32(o, r.byteCount, true);
    view.setUint32(o + 4, r.byteOffset, true);
    o += 8;
    for (const pfn of r.pfns) {
      view.setBigUint64(o, pfn, true);
      o += 8;
    }
  }
  return bytes;
}

function decodedGpadl(messages: Uint8Array[]): { head: GpadlHeaderMessage; bodies: GpadlBodyMessage[] } {
  const decoded = messages.map((bytes) => {
    const r = decodeMessage(bytes);
    if (!r.ok) assert.fail(r.error);
    return r.message;
  });
  const [head, ...bodies] = decoded;
  assert.equal(head?.kind, 'gpadl-header');
  for (const b of bodies) assert.equal(b.kind, 'gpadl-body');
  return { head: head as GpadlHeaderMessage, bodies: bodies as GpadlBodyMessage[] };
}

/** Feeds everything and returns the ranges, checking 'incomplete' until the last message. */
function assemble(head: GpadlHeaderMessage, bodies: GpadlBodyMessage[]): GpaRange[] {
  const assembler = new GpadlAssembler(head, LIMITS);
  assert.equal(assembler.error, null);
  assert.equal(assembler.complete, bodies.length === 0);
  bodies.forEach((b, i) => {
    const result = assembler.accept(b);
    assert.equal(result, i === bodies.length - 1 ? 'complete' : 'incomplete');
  });
  assert.equal(assembler.complete, true);
  const r = assembler.ranges();
  if (!r.ok) assert.fail(r.error);
  return r.ranges;
}

function plain(ranges: readonly GpaRange[]): GpaRange[] {
  return ranges.map((r) => ({ byteCount: r.byteCount, byteOffset: r.byteOffset, pfns: [...r.pfns] }));
}

const pfn = fc.oneof(fc.integer({ min: 0, max: 0xfffff }), fc.integer({ min: 0, max: 2 ** 40 - 1 }));

/** A Linux-style buffer GPADL: one range, offset 0, whole pages. */
const linuxRange = fc
  .integer({ min: 1, max: 2000 })
  .chain((pages) => fc.array(pfn, { minLength: pages, maxLength: pages }))
  .map((pfns): GpaRange => ({ byteCount: pfns.length * 4096, byteOffset: 0, pfns }));

/** Any valid range: a partial first and last page. */
const anyRange = fc
  .record({ byteOffset: fc.integer({ min: 0, max: 4095 }), byteCount: fc.integer({ min: 1, max: 300 * 4096 }) })
  .chain(({ byteOffset, byteCount }) => {
    const n = pagesFor(byteOffset, byteCount);
    return fc.array(pfn, { minLength: n, maxLength: n }).map((pfns): GpaRange => ({ byteCount, byteOffset, pfns }));
  });

/** Up to 8190 PFNs fit in the u16 range_buflen; keep the total well under it. */
const rangeList = fc.array(anyRange, { minLength: 1, maxLength: 6 }).filter((rs) => rs.reduce((n, r) => n + 8 + 8 * r.pfns.length, 0) <= 0xffff);

// ---------------------------------------------------------------------------------------
// Encoding as Linux does it

test('Linux splits: 26 PFNs in the header, 28 per body, msgnumber 0', () => {
  assert.equal(MAX_HEADER_PFNS, 26);
  assert.equal(MAX_BODY_PFNS, 28);
  const cases: [number, number[]][] = [
    [1, [36]],
    [26, [236]],
    [27, [236, 24]],
    [54, [236, 240]],
    [55, [236, 240, 24]],
    [2000, [236, ...Array(70).fill(240), 16 + 8 * (2000 - 26 - 70 * 28)]],
  ];
  for (const [pages, sizes] of cases) {
    const pfns = Array.from({ length: pages }, (_, i) => 0x10000 + i);
    const messages = encodeGpadl(5, 0xe1e10, [{ byteCount: pages * 4096, byteOffset: 0, pfns }]);
    assert.deepEqual(messages.map((m) => m.length), sizes, `${pages} pages`);
    const { head, bodies } = decodedGpadl(messages);
    assert.equal(head.childRelid, 5);
    assert.equal(head.gpadl, 0xe1e10);
    assert.equal(head.rangeCount, 1);
    assert.equal(head.rangeBufferLength, 8 + 8 * pages);
    for (const b of bodies) {
      assert.equal(b.messageNumber, 0);
      assert.equal(b.gpadl, 0xe1e10);
    }
  }
});

test('header bytes for a 2-page ring GPADL', () => {
  const [only] = encodeGpadl(0x0e, 0xe1e10, [{ byteCount: 8192, byteOffset: 0, pfns: [0x12345, 0x1_0000_0001] }]);
  const expected = Uint8Array.from([
    8, 0, 0, 0, 0, 0, 0, 0, // GPADL_HEADER
    0x0e, 0, 0, 0, // child_relid
    0x10, 0x1e, 0x0e, 0, // gpadl
    24, 0, 1, 0, // range_buflen, rangecount
    0, 0x20, 0, 0, 0, 0, 0, 0, // byte_count 8192, byte_offset 0
    0x45, 0x23, 0x01, 0, 0, 0, 0, 0,
    1, 0, 0, 0, 1, 0, 0, 0,
  ]);
  assert.deepEqual(only, expected);
});

test('encodeGpadl refuses ranges Linux could never send', () => {
  const ok = { byteCount: 4096, byteOffset: 0, pfns: [1] };
  const bad: GpaRange[][] = [
    [],
    [{ byteCount: 0, byteOffset: 0, pfns: [] }],
    [{ byteCount: 4096, byteOffset: 0, pfns: [1, 2] }],
    [{ byteCount: 4096, byteOffset: 1, pfns: [1] }],
    [{ byteCount: 10, byteOffset: 4096, pfns: [1] }],
    [{ byteCount: 4096, byteOffset: 0, pfns: [-1] }],
    [{ byteCount: 4096, byteOffset: 0, pfns: [2 ** 53] }],
    [{ byteCount: 4096, byteOffset: 0, pfns: [1.5] }],
    [ok, { byteCount: 8191 * 4096, byteOffset: 0, pfns: Array(8191).fill(1) }], // over the u16 range_buflen
  ];
  for (const ranges of bad) assert.throws(() => encodeGpadl(1, 1, ranges), RangeError);
  assert.throws(() => encodeGpadl(-1, 1, [ok]), RangeError);
  // 8190 pages is the most one range can describe.
  const most = encodeGpadl(1, 1, [{ byteCount: 8190 * 4096, byteOffset: 0, pfns: Array(8190).fill(1) }]);
  assert.equal(decodedGpadl(most).head.rangeBufferLength, 0xfff8);
});

// ---------------------------------------------------------------------------------------
// Round trips

test('encode -> decode -> assemble -> ranges, one Linux-style range of 1..2000 pages', () => {
  fc.assert(
    fc.property(linuxRange, fc.integer({ min: 1, max: 2047 }), fc.integer({ min: 0, max: 0xffffffff }), (range, relid, id) => {
      const { head, bodies } = decodedGpadl(encodeGpadl(relid, id, [range]));
      assert.equal(head.childRelid, relid);
      assert.deepEqual(assemble(head, bodies), [plain([range])[0]]);
    }),
    { numRuns: 150 },
  );
});

test('encode -> assemble -> ranges, several ranges with partial pages', () => {
  fc.assert(
    fc.property(rangeList, (ranges) => {
      const { head, bodies } = decodedGpadl(encodeGpadl(3, 99, ranges));
      assert.equal(head.rangeCount, ranges.length);
      assert.deepEqual(assemble(head, bodies), plain(ranges));
    }),
    { numRuns: 150 },
  );
});

test('the assembler accepts any split of the stream into whole 8-byte units', () => {
  const splitCase = fc.oneof(linuxRange.map((r) => [r]), rangeList).chain((ranges) => {
    const stream = encodeGpaRanges(ranges);
    const units = stream.length / 8;
    return fc
      .tuple(fc.integer({ min: 0, max: Math.min(27, units) }), fc.array(fc.integer({ min: 1, max: 28 }), { minLength: 1, maxLength: 64 }))
      .map(([headerUnits, bodyUnits]) => ({ ranges, stream, headerUnits, bodyUnits }));
  });
  fc.assert(
    fc.property(splitCase, ({ ranges, stream, headerUnits, bodyUnits }) => {
      let offset = headerUnits * 8;
      const messages = [
        encodeMessage({ kind: 'gpadl-header', childRelid: 1, gpadl: 2, rangeBufferLength: stream.length, rangeCount: ranges.length, rangeData: stream.subarray(0, offset) }),
      ];
      for (let i = 0; offset < stream.length; i++) {
        const end = Math.min(stream.length, offset + 8 * bodyUnits[i % bodyUnits.length]!);
        messages.push(encodeMessage({ kind: 'gpadl-body', messageNumber: i, gpadl: 2, pfnData: stream.subarray(offset, end) }));
        offset = end;
      }
      const { head, bodies } = decodedGpadl(messages);
      assert.deepEqual(assemble(head, bodies), plain(ranges));
    }),
    { numRuns: 150 },
  );
});

test('PFNs at or above 2^40 become Number.MAX_SAFE_INTEGER; below stay exact', () => {
  const stream = rawStream([{ byteCount: 5 * 4096, byteOffset: 0, pfns: [2n ** 40n - 1n, 2n ** 40n, 2n ** 64n - 1n, 0n, 0xffffffffn] }]);
  const r = decodeGpaRanges(stream, 1);
  assert.ok(r.ok);
  if (r.ok) {
    assert.deepEqual(r.ranges[0]!.pfns, [2 ** 40 - 1, Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER, 0, 0xffffffff]);
    for (const p of r.ranges[0]!.pfns) assert.ok(Number.isSafeInteger(p));
  }
});

// ---------------------------------------------------------------------------------------
// Hostile guests

function assertError(result: GpadlAcceptResult | { ok: boolean }, pattern?: RegExp): void {
  if (typeof result === 'object' && 'error' in result) {
    if (pattern) assert.match(result.error, pattern);
    return;
  }
  assert.fail(`expected an error, got ${JSON.stringify(result)}`);
}

test('bad headers fail without reserving memory', () => {
  const oneRange = rawStream([{ byteCount: 4096, byteOffset: 0, pfns: [1n] }]);
  const cases: [GpadlHeaderMessage, RegExp][] = [
    [header({ rangeBufferLength: 0, rangeData: new Uint8Array(0) }), /range_buflen 0/],
    [header({ rangeBufferLength: 0xffff, rangeData: new Uint8Array(0) }), /over the limit|multiple of 8/],
    [header({ rangeBufferLength: 0xfff8, rangeData: new Uint8Array(0) }), /over the limit of 4096/],
    [header({ rangeBufferLength: 20, rangeData: new Uint8Array(0) }), /not a multiple of 8/],
    [header({ rangeCount: 0, rangeData: oneRange }), /rangecount 0/],
    [header({ rangeCount: 2, rangeData: oneRange }), /2 ranges cannot fit/],
    [header({ rangeCount: 0xffff, rangeBufferLength: 4096, rangeData: new Uint8Array(0) }), /65535 ranges cannot fit/],
  ];
  for (const [h, pattern] of cases) {
    const a = new GpadlAssembler(h, { maxRangeBufferLength: 4096 });
    assert.match(a.error ?? '', pattern);
    assert.equal(a.reservedBytes, 0);
    assert.equal(a.complete, false);
    assertError(a.accept(body(new Uint8Array(8))), pattern);
    const r = a.ranges();
    assert.equal(r.ok, false);
  }
  // The limit never exceeds what the u16 field can say.
  const a = new GpadlAssembler(header({ rangeBufferLength: 0xfff8, rangeData: new Uint8Array(0) }), { maxRangeBufferLength: 1e9 });
  assert.equal(a.error, null);
  assert.equal(a.reservedBytes, 0xfff8);
  for (const bogus of [NaN, -1, 0]) {
    const b = new GpadlAssembler(header({ rangeBufferLength: 16, rangeData: new Uint8Array(0) }), { maxRangeBufferLength: bogus });
    assert.match(b.error ?? '', /over the limit of 0/);
    assert.equal(b.reservedBytes, 0);
  }
});

test('lying rangecount, range_buflen and page counts are caught', () => {
  const two = rawStream([
    { byteCount: 4096, byteOffset: 0, pfns: [1n] },
    { byteCount: 100, byteOffset: 4000, pfns: [2n, 3n] },
  ]);
  const fails = (h: GpadlHeaderMessage, pattern: RegExp) => {
    const a = new GpadlAssembler(h, LIMITS);
    assert.match(a.error ?? '', pattern);
    assert.equal(a.complete, false);
  };
  fails(header({ rangeCount: 1, rangeData: two }), /bytes left over after 1 range/);
  fails(header({ rangeCount: 2, rangeData: rawStream([{ byteCount: 3 * 4096, byteOffset: 0, pfns: [1n, 2n, 3n] }]) }), /range 1 of 2: 0 bytes left/);
  // byte_count says 3 pages, only 2 PFNs follow.
  fails(header({ rangeData: rawStream([{ byteCount: 3 * 4096, byteOffset: 0, pfns: [1n, 2n] }]) }), /need 3 PFNs, only 2 remain/);
  // byte_count says 1 page, 2 PFNs follow.
  fails(header({ rangeData: rawStream([{ byteCount: 4096, byteOffset: 0, pfns: [1n, 2n] }]) }), /8 bytes left over/);
  fails(header({ rangeData: rawStream([{ byteCount: 16, byteOffset: 4096, pfns: [1n, 2n] }]) }), /byte offset 4096/);
  fails(header({ rangeData: rawStream([{ byteCount: 0, byteOffset: 0, pfns: [1n] }]) }), /empty/);
  // A byte_count of 4 GiB - 1 claims 2^20 pages: refused from the data size, nothing allocated.
  fails(header({ rangeData: rawStream([{ byteCount: 0xffffffff, byteOffset: 0xfff, pfns: [1n] }]) }), /need 1048577 PFNs, only 1 remain/);
  // The header carries more than range_buflen.
  fails(header({ rangeBufferLength: 16, rangeData: two }), /more than range_buflen 16/);
  // Ragged data.
  fails(header({ rangeBufferLength: 16, rangeData: new Uint8Array(12) }), /not a multiple of 8/);
});

test('too many bodies, foreign bodies, ragged or empty bodies are errors, and errors stick', () => {
  const stream = encodeGpaRanges([{ byteCount: 40 * 4096, byteOffset: 0, pfns: Array.from({ length: 40 }, (_, i) => i) }]);
  const start = () => new GpadlAssembler(header({ rangeBufferLength: stream.length, rangeData: stream.subarray(0, 216) }), LIMITS);

  const extra = start();
  assert.equal(extra.accept(body(stream.subarray(216))), 'complete');
  assertError(extra.accept(body(new Uint8Array(8))), /after all 328 bytes/);
  assert.equal(extra.complete, false, 'an error is final, even after completion');
  assertError(extra.ranges());

  const overflow = start();
  assertError(overflow.accept(body(new Uint8Array(stream.length - 216 + 8))), /more than range_buflen/);

  const foreign = start();
  assertError(foreign.accept(body(stream.subarray(216), 1234)), /GPADL 1234/);

  const ragged = start();
  assertError(ragged.accept(body(stream.subarray(216, 221))), /not a multiple of 8/);

  const empty = start();
  assertError(empty.accept(body(new Uint8Array(0))), /no PFNs/);
  const sticky = empty.accept(body(stream.subarray(216)));
  assertError(sticky, /no PFNs/);
  assert.equal(empty.reservedBytes, 0);
});

test('random hostile header/body sequences never throw and never reserve beyond the limit', () => {
  const limit = fc.integer({ min: 0, max: 0xffff });
  const hostileHeader = fc.record({
    kind: fc.constant('gpadl-header' as const),
    childRelid: fc.integer({ min: 0, max: 0xffffffff }),
    gpadl: fc.constantFrom(1, 2),
    rangeBufferLength: fc.oneof(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 64 }).map((n) => n * 8)),
    rangeCount: fc.oneof(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 4 })),
    rangeData: fc.oneof(fc.uint8Array({ maxLength: 220 }), fc.integer({ min: 0, max: 27 }).chain((n) => fc.uint8Array({ minLength: 8 * n, maxLength: 8 * n }))),
  });
  const hostileBody = fc.record({
    kind: fc.constant('gpadl-body' as const),
    messageNumber: fc.integer({ min: 0, max: 0xffffffff }),
    gpadl: fc.constantFrom(1, 1, 1, 2),
    pfnData: fc.oneof(fc.uint8Array({ maxLength: 224 }), fc.integer({ min: 0, max: 28 }).chain((n) => fc.uint8Array({ minLength: 8 * n, maxLength: 8 * n }))),
  });
  fc.assert(
    fc.property(limit, hostileHeader, fc.array(hostileBody, { maxLength: 40 }), (max, h, bodies) => {
      const a = new GpadlAssembler(h, { maxRangeBufferLength: max });
      assert.ok(a.reservedBytes <= max);
      for (const b of bodies) {
        const r = a.accept(b);
        assert.ok(r === 'incomplete' || r === 'complete' || (typeof r === 'object' && typeof r.error === 'string'));
        assert.ok(a.reservedBytes <= max);
      }
      const r = a.ranges();
      assert.equal(r.ok, a.complete);
      if (r.ok) {
        for (const range of r.ranges) {
          assert.equal(range.pfns.length, pagesFor(range.byteOffset, range.byteCount));
          assert.ok(range.byteOffset < 4096 && range.byteCount > 0);
          for (const p of range.pfns) assert.ok(Number.isSafeInteger(p) && p >= 0);
        }
      }
    }),
    { numRuns: 2000 },
  );
});

test('decodeGpaRanges never throws on garbage', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 512 }), fc.oneof(fc.integer({ min: -2, max: 8 }), fc.integer()), (bytes, count) => {
      const r = decodeGpaRanges(bytes, count);
      if (r.ok) {
        assert.equal(r.ranges.length, count);
        assert.equal(r.ranges.reduce((n, x) => n + 8 + 8 * x.pfns.length, 0), bytes.length);
      }
    }),
    { numRuns: 2000 },
  );
  assert.equal(decodeGpaRanges(new Uint8Array(16), NaN).ok, false);
});
