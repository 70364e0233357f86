// The connection-id -> eventfd table the reference guest reads without asking the host:
// a model-based test against a Map with colliding ids, wraparound at the end of the table,
// tombstone reuse, a full table, and hostile ids that must never reach a stale entry.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { SIGNAL_TABLE_ENTRIES } from '../src/partition/process/shared-layout.js';
import { SignalTable } from '../src/partition/process/signal-table.js';

const N = SIGNAL_TABLE_ENTRIES;

/** Ids that share a home slot (and chains that wrap from the last slot to the first). */
const collidingIds = [
  1, 1 + N, 1 + 2 * N, 1 + 5 * N, 2, 2 + N,
  N - 1, 2 * N - 1, 3 * N - 1, 0, N, 7 * N,
  0xffffff, 0xffffff - N, 0x800000, 0x800000 + N,
];

/** Ids as they appear on the wire (bits 0-23) and some with the reserved bits set. */
const anyId = fc.oneof(
  { weight: 8, arbitrary: fc.constantFrom(...collidingIds) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffffff }) },
);

type Op =
  | { kind: 'set'; id: number; fd: number }
  | { kind: 'delete'; id: number }
  | { kind: 'lookup'; id: number };

const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('set' as const), id: anyId, fd: fc.integer({ min: 0, max: 0x7fffffff }) }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('delete' as const), id: anyId }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('lookup' as const), id: anyId }) },
);

/** Live (key, fd) pairs in the raw buffer. */
function liveEntries(table: SignalTable): Array<[key: number, fd: number]> {
  const words = new Int32Array(table.buffer);
  const out: Array<[number, number]> = [];
  for (let slot = 0; slot < N; slot++) {
    const k = words[slot * 2]!;
    if (k !== 0 && k !== -1) out.push([k, words[slot * 2 + 1]!]);
  }
  return out;
}

describe('SignalTable', () => {
  test('lookup of absent ids returns -1', () => {
    const table = new SignalTable();
    for (const id of [...collidingIds, 12345, 0x7ffffffe]) assert.equal(table.lookup(id), -1);
    table.set(1, 10);
    for (const id of collidingIds) assert.equal(table.lookup(id), id === 1 ? 10 : -1);
  });

  test('behaves like a Map under random set/delete/lookup with colliding ids', () => {
    fc.assert(
      fc.property(fc.array(op, { maxLength: 300, size: 'max' }), (ops) => {
        const table = new SignalTable();
        const reader = new SignalTable(table.buffer); // the guest's view of the same memory
        const model = new Map<number, number>();
        for (const o of ops) {
          switch (o.kind) {
            case 'set':
              table.set(o.id, o.fd);
              model.set(o.id, o.fd);
              break;
            case 'delete':
              table.delete(o.id);
              model.delete(o.id);
              break;
            case 'lookup':
              assert.equal(reader.lookup(o.id), model.get(o.id) ?? -1, `lookup(${o.id})`);
              break;
          }
        }
        for (const id of new Set([...collidingIds, ...model.keys()])) {
          assert.equal(reader.lookup(id), model.get(id) ?? -1, `final lookup(${id})`);
        }
        // Exactly one live entry per mapped id: no duplicates left behind by an update.
        const live = liveEntries(table);
        assert.equal(live.length, model.size);
        assert.deepEqual(new Set(live.map(([k]) => k - 1)), new Set(model.keys()));
      }),
      { numRuns: 300 },
    );
  });

  test('a deleted slot becomes a tombstone that the next insert on the chain reuses', () => {
    const table = new SignalTable();
    const words = new Int32Array(table.buffer);
    const [a, b, c, d] = [5, 5 + N, 5 + 2 * N, 5 + 3 * N];
    table.set(a, 100);
    table.set(b, 101);
    table.set(c, 102);
    assert.deepEqual([words[10], words[12], words[14]], [a + 1, b + 1, c + 1]);
    table.delete(b);
    assert.equal(words[12], -1, 'tombstone');
    assert.equal(table.lookup(c), 102, 'lookups probe past the tombstone');
    assert.equal(table.lookup(b), -1);
    table.set(c, 200); // an update past the tombstone stays in place
    assert.equal(words[14], c + 1);
    assert.equal(words[15], 200);
    assert.equal(words[12], -1, 'the update did not take the tombstone');
    table.set(d, 103);
    assert.equal(words[12], d + 1, 'the new id took the tombstone');
    assert.equal(words[13], 103);
    assert.equal(table.lookup(d), 103);
    assert.equal(words[16], 0, 'nothing spilled further down the chain');
  });

  test('chains wrap from the last slot to the first', () => {
    const table = new SignalTable();
    const words = new Int32Array(table.buffer);
    const ids = [N - 1, 2 * N - 1, 3 * N - 1];
    ids.forEach((id, i) => table.set(id, 50 + i));
    assert.equal(words[(N - 1) * 2], ids[0]! + 1);
    assert.equal(words[0], ids[1]! + 1);
    assert.equal(words[2], ids[2]! + 1);
    ids.forEach((id, i) => assert.equal(table.lookup(id), 50 + i));
    table.delete(ids[1]!);
    assert.equal(table.lookup(ids[2]!), 52);
  });

  test('endless insert/delete churn never fills the table', () => {
    const table = new SignalTable();
    for (let i = 0; i < 3 * N; i++) {
      const id = 7 + (i % 64) * N; // all on one chain
      table.set(id, i);
      assert.equal(table.lookup(id), i);
      table.delete(id);
      assert.equal(table.lookup(id), -1);
    }
    assert.equal(liveEntries(table).length, 0);
  });

  test('a full table refuses a new id but still updates, finds and misses correctly', () => {
    const table = new SignalTable();
    for (let i = 0; i < N; i++) table.set(i * 3 + 1, i);
    assert.throws(() => table.set(0x00fffff0, 1), /signal table full/);
    assert.equal(table.lookup(0x00fffff0), -1, 'a miss in a table with no empty slot ends');
    table.set(1, 999);
    assert.equal(table.lookup(1), 999);
    assert.equal(table.lookup((N - 1) * 3 + 1), N - 1);
    // Full of tombstones: a miss still ends, and an insert reuses one.
    for (let i = 0; i < N; i++) table.delete(i * 3 + 1);
    assert.equal(table.lookup(4), -1);
    table.set(0x00fffff0, 7);
    assert.equal(table.lookup(0x00fffff0), 7);
  });

  test('ids outside the table\'s range never match a free or deleted entry', () => {
    // The guest controls the id of HvSignalEvent. Whatever it passes, a lookup must not
    // return the fd of a deleted connection (that fd may be closed and reused by now).
    const table = new SignalTable();
    const hostile = [-2, -1, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff, 2 ** 32, 2 ** 32 + 1, 1.5, NaN, Infinity, -Infinity];
    // Build chains through every home slot those ids use, then delete everything: only
    // tombstones (and empties) remain.
    const homes = new Set(hostile.map((id) => (id >>> 0) % N));
    for (const h of homes) {
      for (let k = 0; k < 4; k++) table.set(h + k * N, 40 + k);
    }
    for (const h of homes) {
      for (let k = 0; k < 4; k++) table.delete(h + k * N);
    }
    for (const id of hostile) assert.equal(table.lookup(id), -1, `lookup(${id})`);
    // Real ids are unaffected.
    table.set(3, 33);
    for (const id of hostile) assert.equal(table.lookup(id), -1, `lookup(${id})`);
    assert.equal(table.lookup(3), 33);
  });

  test('fuzzed ids: a lookup returns only what was set for exactly that id', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.integer({ min: 0, max: 0xffffff }), fc.integer({ min: 0, max: 1000 })), { maxLength: 40 }),
        fc.array(fc.oneof(fc.integer(), fc.integer({ min: 0, max: 2 ** 32 - 1 }), fc.double()), { maxLength: 40 }),
        (entries, probes) => {
          const table = new SignalTable();
          const model = new Map<number, number>();
          for (const [id, fd] of entries) {
            table.set(id, fd);
            model.set(id, fd);
          }
          for (const [id] of entries.slice(0, entries.length >> 1)) {
            table.delete(id);
            model.delete(id);
          }
          for (const id of probes) assert.equal(table.lookup(id), model.get(id) ?? -1, `lookup(${id})`);
        },
      ),
      { numRuns: 300 },
    );
  });

  test('set refuses ids the table cannot represent', () => {
    const table = new SignalTable();
    for (const id of [-1, -2, 0x7fffffff, 0xfffffffe, 0xffffffff, 2 ** 32, 1.5, NaN]) {
      assert.throws(() => table.set(id, 3), RangeError, `set(${id})`);
    }
    assert.equal(liveEntries(table).length, 0);
    table.delete(-2); // ignored
    table.set(0x7ffffffe, 4); // the largest id that fits
    assert.equal(table.lookup(0x7ffffffe), 4);
  });
});
