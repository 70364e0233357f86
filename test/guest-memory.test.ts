// Guest RAM: one memfd seen identically from two threads; every bounds check refuses
// anything outside RAM (negative, NaN, fractional, huge, one past the end); page mappings
// show exactly the listed guest pages in order and detach cleanly on release; scatter-gather
// ranges validate their shape and merge consecutive pages.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, describe, test } from 'node:test';
import { Worker } from 'node:worker_threads';
import fc from 'fast-check';
import { rangeProblem, rangeSegments, readRange, type GpaRange } from '../src/memory/gpa-range.js';
import { GuestMemory, GuestMemoryError, PageMapping } from '../src/memory/guest-memory.js';
import { PAGE_SIZE, pagesFor } from '../src/memory/page.js';

const PAGES = 16;
const SIZE = PAGES * PAGE_SIZE;
const memory = GuestMemory.create(SIZE, 'guest-memory-test');
after(() => memory.close());

/** Every page gets a recognisable, position-dependent pattern. */
function stampPages(): void {
  for (let pfn = 0; pfn < PAGES; pfn++) {
    for (let i = 0; i < PAGE_SIZE; i++) memory.bytes[pfn * PAGE_SIZE + i] = (pfn * 31 + i * 7 + (i >> 8)) & 0xff;
  }
}

function guestPage(pfn: number): Uint8Array {
  return memory.bytes.slice(pfn * PAGE_SIZE, (pfn + 1) * PAGE_SIZE);
}

/** Values a hostile guest may hand in as an address or a length. */
const hostileNumber = fc.oneof(
  fc.integer({ min: -2 * SIZE, max: 2 * SIZE }),
  fc.constantFrom(0, 1, -1, SIZE - 1, SIZE, SIZE + 1, SIZE - 4, SIZE - PAGE_SIZE, 2 ** 31, 2 ** 32, 2 ** 32 + 4, Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER + 1, -Number.MAX_SAFE_INTEGER, 2 ** 53 + 2),
  fc.constantFrom(NaN, Infinity, -Infinity, 0.5, 1.5, SIZE - 0.5, -0, 1e300),
  fc.double(),
);

function referenceContains(gpa: number, length: number): boolean {
  return Number.isInteger(gpa) && Number.isInteger(length) && gpa >= 0 && length >= 0 && gpa + length <= SIZE;
}

describe('GuestMemory across threads', () => {
  test('a worker that attaches sees the same bytes both ways', async () => {
    memory.bytes.fill(0);
    for (let i = 0; i < SIZE; i += 97) memory.bytes[i] = (i >> 3) & 0xff;
    const moduleUrl = new URL('../src/memory/guest-memory.js', import.meta.url).href;
    const code = `
      const { parentPort, workerData } = require('node:worker_threads');
      import(${JSON.stringify(moduleUrl)}).then(({ GuestMemory }) => {
        const m = GuestMemory.attach(workerData.handle);
        let mismatches = 0;
        for (let i = 0; i < m.size; i++) {
          const expected = i % 97 === 0 ? (i >> 3) & 0xff : 0;
          if (m.bytes[i] !== expected) mismatches++;
        }
        for (let i = 1; i < m.size; i += 211) m.bytes[i] = 0xc3;
        Atomics.store(m.words, 8, 0x12345678);
        m.close(); // not the owner: the fd stays open
        parentPort.postMessage({ mismatches, size: m.size, pageCount: m.pageCount });
      }, (e) => { throw e; });
    `;
    const worker = new Worker(code, { eval: true, workerData: { handle: memory.handle } });
    const result = await new Promise<{ mismatches: number; size: number; pageCount: number }>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    await worker.terminate();
    assert.deepEqual(result, { mismatches: 0, size: SIZE, pageCount: PAGES });
    for (let i = 1; i < SIZE; i += 211) assert.equal(memory.bytes[i], 0xc3, `byte ${i}`);
    assert.equal(Atomics.load(memory.words, 8), 0x12345678);
    assert.equal(memory.view.getUint32(32, true), 0x12345678);
    // The worker's close() did not close our memfd: a second attach still works.
    const again = GuestMemory.attach(memory.handle);
    assert.equal(again.bytes[1], 0xc3);
  });

  test('create refuses sizes that are not positive multiples of a page', () => {
    for (const size of [0, -PAGE_SIZE, PAGE_SIZE + 1, 100, NaN, 1.5 * PAGE_SIZE]) {
      assert.throws(() => GuestMemory.create(size, 'bad-size'), GuestMemoryError, String(size));
    }
    // A refused size leaves no memfd behind.
    const leaked = fs.readdirSync('/proc/self/fd').filter((fd) => {
      try {
        return fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith('/memfd:bad-size');
      } catch {
        return false;
      }
    });
    assert.deepEqual(leaked, []);
  });

  test('new RAM is zeroed', () => {
    const m = GuestMemory.create(2 * PAGE_SIZE, 'zeroed');
    try {
      assert.equal(m.pageCount, 2);
      assert.ok(m.bytes.every((b) => b === 0));
      assert.equal(m.words.length, (2 * PAGE_SIZE) / 4);
    } finally {
      m.close();
    }
  });
});

describe('GuestMemory bounds', () => {
  test('contains/check/slice agree with the reference and never reach outside RAM', () => {
    fc.assert(
      fc.property(hostileNumber, hostileNumber, (gpa, length) => {
        const ok = referenceContains(gpa, length);
        assert.equal(memory.contains(gpa, length), ok, `contains(${gpa}, ${length})`);
        if (ok) {
          memory.check(gpa, length);
          const s = memory.slice(gpa, length);
          assert.equal(s.buffer, memory.bytes.buffer);
          assert.equal(s.byteOffset, memory.bytes.byteOffset + gpa);
          assert.equal(s.length, length + 0); // + 0: -0 is a valid zero length
          assert.ok(gpa + s.length <= SIZE);
        } else {
          assert.throws(() => memory.check(gpa, length), GuestMemoryError);
          assert.throws(() => memory.slice(gpa, length), GuestMemoryError);
        }
      }),
      { numRuns: 2000 },
    );
  });

  test('edges: the last byte is in, one past it is out, an empty range at the end is in', () => {
    assert.equal(memory.contains(SIZE - 1, 1), true);
    assert.equal(memory.contains(SIZE, 0), true);
    assert.equal(memory.slice(SIZE, 0).length, 0);
    assert.equal(memory.contains(SIZE, 1), false);
    assert.equal(memory.contains(SIZE - 1, 2), false);
    assert.equal(memory.contains(0, SIZE), true);
    assert.equal(memory.contains(0, SIZE + 1), false);
    assert.equal(memory.contains(-1, 1), false);
    assert.equal(memory.contains(1, -1), false);
    assert.equal(memory.contains(Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER), false);
    assert.equal(memory.contains(2 ** 53, 0), false);
  });

  test('containsPage accepts exactly the integers 0..pageCount-1', () => {
    fc.assert(
      fc.property(hostileNumber, (pfn) => {
        assert.equal(memory.containsPage(pfn), Number.isInteger(pfn) && pfn >= 0 && pfn < PAGES);
      }),
      { numRuns: 1000 },
    );
  });

  test('wordIndex accepts exactly aligned words inside RAM', () => {
    fc.assert(
      fc.property(hostileNumber, (gpa) => {
        const ok = Number.isInteger(gpa) && gpa >= 0 && gpa % 4 === 0 && gpa + 4 <= SIZE;
        if (ok) assert.equal(memory.wordIndex(gpa), gpa / 4 + 0);
        else assert.throws(() => memory.wordIndex(gpa), GuestMemoryError, `wordIndex(${gpa})`);
      }),
      { numRuns: 1000 },
    );
  });
});

describe('mapPages', () => {
  const pfnList = fc.array(fc.integer({ min: 0, max: PAGES - 1 }), { minLength: 1, maxLength: 12 });

  test('shows exactly the listed guest pages in order, and writes reach guest RAM', () => {
    fc.assert(
      fc.property(
        pfnList.chain((pfns) => fc.tuple(fc.constant(pfns), fc.option(fc.integer({ min: 0, max: pfns.length }), { nil: undefined }))),
        fc.array(fc.tuple(fc.nat(), fc.nat({ max: PAGE_SIZE - 1 }), fc.integer({ min: 0, max: 255 })), { maxLength: 8 }),
        ([pfns, repeatFrom], writes) => {
          stampPages();
          const order = repeatFrom === undefined ? pfns : [...pfns, ...pfns.slice(repeatFrom)];
          const mapping = memory.mapPages(pfns, repeatFrom);
          try {
            assert.equal(mapping.length, order.length * PAGE_SIZE);
            assert.equal(mapping.buffer.byteLength, mapping.length);
            const view = new Uint8Array(mapping.buffer);
            for (let i = 0; i < order.length; i++) {
              assert.deepEqual(view.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE), guestPage(order[i]!), `mapping page ${i} = guest page ${order[i]}`);
            }
            for (const [n, offset, value] of writes) {
              const i = n % order.length;
              view[i * PAGE_SIZE + offset] = value;
              assert.equal(memory.bytes[order[i]! * PAGE_SIZE + offset], value, 'write reached guest RAM');
              // Every alias of that guest page in the mapping sees it too.
              order.forEach((pfn, j) => {
                if (pfn === order[i]) assert.equal(view[j * PAGE_SIZE + offset], value);
              });
            }
            // And a write to guest RAM shows through the mapping.
            memory.bytes[order[0]! * PAGE_SIZE + 5] ^= 0xff;
            assert.equal(view[5], memory.bytes[order[0]! * PAGE_SIZE + 5]);
          } finally {
            mapping.release();
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  test('repeatFrom makes the tail readable across the end without a seam', () => {
    stampPages();
    const pfns = [9, 3, 4, 12];
    const mapping = memory.mapPages(pfns, 1);
    try {
      const view = new Uint8Array(mapping.buffer);
      assert.equal(mapping.length, 7 * PAGE_SIZE);
      // The data area (pages 1..3) followed by itself.
      const dataSize = 3 * PAGE_SIZE;
      for (let i = 0; i < dataSize; i += 13) {
        assert.equal(view[PAGE_SIZE + i], view[PAGE_SIZE + dataSize + i]);
      }
      view[PAGE_SIZE + dataSize + 10] = 0x42; // through the second copy
      assert.equal(memory.bytes[3 * PAGE_SIZE + 10], 0x42);
      assert.equal(view[PAGE_SIZE + 10], 0x42);
    } finally {
      mapping.release();
    }
  });

  test('release detaches: later writes do not reach guest RAM, views read zeroes, no crash', () => {
    stampPages();
    const pfns = [2, 3, 7];
    const mapping = memory.mapPages(pfns);
    const view = new Uint8Array(mapping.buffer);
    const before = memory.bytes.slice();
    mapping.release();
    mapping.release(); // idempotent
    assert.ok(view.every((b) => b === 0), 'a released view reads private zeroed memory');
    view.fill(0xee);
    assert.deepEqual(memory.bytes, before, 'guest RAM untouched after release');
    assert.equal(view[100], 0xee, 'the released view is ordinary memory now');
  });

  test('released ranges are reused for mappings of the same length', () => {
    const a = memory.mapPages([1, 2]);
    const addressA = a.address;
    a.release();
    const b = memory.mapPages([5, 0]);
    try {
      assert.equal(b.address, addressA, 'same-length mapping reuses the released range');
      stampPages();
      assert.deepEqual(new Uint8Array(b.buffer, 0, PAGE_SIZE), guestPage(5));
      assert.deepEqual(new Uint8Array(b.buffer, PAGE_SIZE, PAGE_SIZE), guestPage(0));
      // The stale view of `a` aliases the same addresses: it now shows b's pages, which is why
      // release() is only called once nothing uses the old view.
    } finally {
      b.release();
    }
    const c = memory.mapPages([1, 2, 3]);
    try {
      assert.notEqual(c.address, addressA, 'a different length does not take the 2-page range');
    } finally {
      c.release();
    }
  });

  test('many map/release cycles do not grow the address space used', () => {
    const seen = new Set<bigint>();
    for (let i = 0; i < 200; i++) {
      const m: PageMapping = memory.mapPages([i % PAGES, (i * 7) % PAGES, (i * 3) % PAGES]);
      seen.add(m.address);
      m.release();
    }
    assert.ok(seen.size <= 2, `used ${seen.size} distinct ranges`);
  });

  test('refuses PFNs outside RAM and empty lists without mapping anything', () => {
    fc.assert(
      fc.property(pfnList, fc.nat({ max: 11 }), hostileNumber.filter((x) => !(Number.isInteger(x) && x >= 0 && x < PAGES)), (pfns, at, bad) => {
        const list = [...pfns];
        list.splice(at % (list.length + 1), 0, bad);
        assert.throws(() => memory.mapPages(list), GuestMemoryError);
        assert.throws(() => memory.mapPages(list, 0), GuestMemoryError);
      }),
      { numRuns: 300 },
    );
    assert.throws(() => memory.mapPages([]), GuestMemoryError);
  });
});

describe('GPA ranges', () => {
  interface Case {
    range: GpaRange;
    valid: boolean;
  }

  /** Ranges of every shape: right and wrong page counts, offsets and PFNs. */
  const rangeCase: fc.Arbitrary<Case> = fc
    .record({
      byteOffset: fc.oneof({ weight: 6, arbitrary: fc.nat({ max: PAGE_SIZE - 1 }) }, { weight: 1, arbitrary: hostileNumber }),
      byteCount: fc.oneof({ weight: 6, arbitrary: fc.nat({ max: 5 * PAGE_SIZE }) }, { weight: 1, arbitrary: hostileNumber }),
      pageDelta: fc.oneof({ weight: 6, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: -2, max: 2 }) }),
      runs: fc.boolean(),
      seed: fc.array(fc.integer({ min: 0, max: PAGES - 1 }), { minLength: 8, maxLength: 8 }),
      badPfn: fc.option(fc.tuple(fc.nat(), hostileNumber.filter((x) => !(Number.isInteger(x) && x >= 0 && x < PAGES))), { nil: undefined }),
    })
    .map(({ byteOffset, byteCount, pageDelta, runs, seed, badPfn }) => {
      const shapeOk = Number.isSafeInteger(byteCount) && byteCount >= 0 && Number.isSafeInteger(byteOffset) && byteOffset >= 0 && byteOffset < PAGE_SIZE;
      const needed = shapeOk ? pagesFor(byteOffset, byteCount) : 3;
      // (A huge byte count needs more pages than any list could hold: give it a short one.)
      const count = needed > 64 ? 3 : Math.max(0, needed + pageDelta);
      // Either consecutive runs (to exercise merging) or scattered pages.
      const pfns = Array.from({ length: count }, (_, i) => (runs ? (seed[0]! + i) % PAGES : seed[i % seed.length]!));
      if (badPfn && pfns.length > 0) pfns[badPfn[0] % pfns.length] = badPfn[1];
      const valid = shapeOk && count === needed && pfns.every((p) => Number.isInteger(p) && p >= 0 && p < PAGES);
      return { range: { byteOffset, byteCount, pfns }, valid };
    });

  /** The bytes of a valid range, page by page. */
  function expectedBytes(range: GpaRange): Uint8Array {
    const out = new Uint8Array(range.byteCount);
    let done = 0;
    let offset = range.byteOffset;
    for (const pfn of range.pfns) {
      const n = Math.min(PAGE_SIZE - offset, range.byteCount - done);
      out.set(memory.bytes.subarray(pfn * PAGE_SIZE + offset, pfn * PAGE_SIZE + offset + n), done);
      done += n;
      offset = 0;
    }
    return out;
  }

  test('rangeProblem, rangeSegments and readRange agree with a page-by-page reference', () => {
    stampPages();
    fc.assert(
      fc.property(rangeCase, fc.nat({ max: 6 * PAGE_SIZE }), ({ range, valid }, targetLength) => {
        const problem = rangeProblem(memory, range);
        assert.equal(problem === null, valid, `rangeProblem: ${problem}`);
        if (!valid) {
          assert.equal(typeof problem, 'string');
          assert.throws(() => rangeSegments(memory, range), GuestMemoryError);
          assert.throws(() => readRange(memory, range, new Uint8Array(16)), GuestMemoryError);
          return;
        }
        const segments = rangeSegments(memory, range);
        let total = 0;
        segments.forEach((s, i) => {
          assert.ok(s.length > 0, 'no empty segments');
          assert.ok(memory.contains(s.gpa, s.length), 'segment inside RAM');
          if (i > 0) assert.notEqual(segments[i - 1]!.gpa + segments[i - 1]!.length, s.gpa, 'adjacent segments are merged');
          total += s.length;
        });
        assert.equal(total, range.byteCount + 0); // + 0: a byte count of -0 is a valid zero
        if (range.byteCount > 0) assert.equal(segments[0]!.gpa, range.pfns[0]! * PAGE_SIZE + range.byteOffset);
        // The segments cover the same bytes as the page-by-page reference.
        const expected = expectedBytes(range);
        const joined = new Uint8Array(range.byteCount);
        let at = 0;
        for (const s of segments) {
          joined.set(memory.bytes.subarray(s.gpa, s.gpa + s.length), at);
          at += s.length;
        }
        assert.deepEqual(joined, expected);
        // The number of segments is the number of breaks in consecutive PFNs among the pages used.
        const used = range.pfns.slice(0, range.byteCount === 0 ? 0 : pagesFor(range.byteOffset, range.byteCount));
        const breaks = used.filter((p, i) => i > 0 && p !== used[i - 1]! + 1).length;
        assert.equal(segments.length, used.length === 0 ? 0 : breaks + 1);

        const target = new Uint8Array(targetLength).fill(0xab);
        const n = readRange(memory, range, target);
        assert.equal(n, Math.min(targetLength, range.byteCount) + 0);
        assert.deepEqual(target.subarray(0, n), expected.subarray(0, n));
        assert.ok(target.subarray(n).every((b) => b === 0xab), 'nothing written past the range');
      }),
      { numRuns: 1500 },
    );
  });

  test('rangeSegments reuses the out array', () => {
    const out = [{ gpa: 1, length: 1 }, { gpa: 2, length: 2 }, { gpa: 3, length: 3 }];
    const result = rangeSegments(memory, { byteCount: PAGE_SIZE + 10, byteOffset: 20, pfns: [4, 5] }, out);
    assert.equal(result, out);
    assert.deepEqual(result, [{ gpa: 4 * PAGE_SIZE + 20, length: PAGE_SIZE + 10 }]);
  });

  test('specific shapes', () => {
    const p = (byteCount: number, byteOffset: number, pfns: number[]) => rangeProblem(memory, { byteCount, byteOffset, pfns });
    assert.equal(p(0, 0, []), null);
    assert.deepEqual(rangeSegments(memory, { byteCount: 0, byteOffset: 0, pfns: [] }), []);
    assert.equal(p(PAGE_SIZE, 0, [PAGES - 1]), null);
    assert.match(p(PAGE_SIZE, 1, [PAGES - 1])!, /needs 2 pages, got 1/);
    assert.match(p(1, PAGE_SIZE, [0])!, /bad byte offset/);
    assert.match(p(1, -1, [0])!, /bad byte offset/);
    assert.match(p(-1, 0, [])!, /bad byte count/);
    assert.match(p(NaN, 0, [])!, /bad byte count/);
    assert.match(p(1, 0, [PAGES])!, /outside guest RAM/);
    assert.match(p(1, 0, [-1])!, /outside guest RAM/);
    assert.match(p(1, 0, [0.5])!, /outside guest RAM/);
    assert.match(p(Number.MAX_SAFE_INTEGER, 0, [0])!, /needs/);
    // Two consecutive pages merge; a wrap back to page 0 does not.
    assert.deepEqual(rangeSegments(memory, { byteCount: 3 * PAGE_SIZE, byteOffset: 0, pfns: [PAGES - 2, PAGES - 1, 0] }), [
      { gpa: (PAGES - 2) * PAGE_SIZE, length: 2 * PAGE_SIZE },
      { gpa: 0, length: PAGE_SIZE },
    ]);
  });
});
