// The host SynIC model (spec section 3): MSR semantics, message delivery only when
// SCONTROL, SIMP and the SINT all allow it, the slot layout with message_type stored last,
// the message_pending / EOM protocol, in-order exactly-once delivery under any interleaving
// of guest actions (model-based), the per-SINT queue bound, event flags set atomically with
// an interrupt only on a 0 -> 1 edge, polling SINTs that never interrupt, and reset.
import assert from 'node:assert/strict';
import { after, beforeEach, describe, test } from 'node:test';
import { Worker } from 'node:worker_threads';
import fc from 'fast-check';
import { GuestMemory } from '../src/memory/guest-memory.js';
import { PAGE_SIZE } from '../src/memory/page.js';
import {
  EVENT_FLAGS_AREA_SIZE,
  HVMSG_NONE,
  MESSAGE_HEADER_SIZE,
  MESSAGE_PAYLOAD_MAX,
  MESSAGE_SLOT_SIZE,
  SINT_COUNT,
  Synic,
  SynicMsr,
} from '../src/hyperv/synic.js';

const RAM_PAGES = 8;
const memory = GuestMemory.create(RAM_PAGES * PAGE_SIZE, 'synic-test');
after(() => memory.close());

const MASKED = 1n << 16n;
const AUTO_EOI = 1n << 17n;
const POLLING = 1n << 18n;
const PROXY = 1n << 20n;
const ENABLE = 1n;
const VMBUS_SINT = 2;
const VMBUS_VECTOR = 0xf3;

/** Guest page choices: each VP has its own message and event-flags page. */
const simpPfn = (vp: number) => 1 + vp * 2;
const siefpPfn = (vp: number) => 2 + vp * 2;

interface Rig {
  synic: Synic;
  injected: Array<[vp: number, vector: number]>;
  logs: string[];
}

function rig(options: { vpCount?: number; maxQueuedMessages?: number; onInject?: (vp: number, vector: number) => void } = {}): Rig {
  const injected: Array<[number, number]> = [];
  const logs: string[] = [];
  const synic = new Synic({
    memory,
    vpCount: options.vpCount ?? 2,
    maxQueuedMessages: options.maxQueuedMessages,
    log: (m) => logs.push(m),
    inject: (vp, vector) => {
      options.onInject?.(vp, vector);
      injected.push([vp, vector]);
    },
  });
  return { synic, injected, logs };
}

function w(synic: Synic, vp: number, msr: number, value: bigint): void {
  assert.equal(synic.writeMsr(vp, msr, value), true, `write msr ${msr.toString(16)} = ${value.toString(16)}`);
}

const simpValue = (pfn: number) => (BigInt(pfn) << 12n) | ENABLE;
const sintValue = (vector: number, extra = 0n) => BigInt(vector) | extra;

/** What Linux's hv_synic_enable_regs does, for one SINT. */
function enableAll(synic: Synic, vp: number, sint = VMBUS_SINT, vector = VMBUS_VECTOR): void {
  w(synic, vp, SynicMsr.Simp, simpValue(simpPfn(vp)));
  w(synic, vp, SynicMsr.Siefp, simpValue(siefpPfn(vp)));
  w(synic, vp, SynicMsr.Sint0 + sint, sintValue(vector));
  w(synic, vp, SynicMsr.SControl, 1n);
}

const slotGpa = (vp: number, sint: number) => simpPfn(vp) * PAGE_SIZE + sint * MESSAGE_SLOT_SIZE;
const slotType = (gpa: number) => Atomics.load(memory.words, gpa >>> 2) >>> 0;

function payloadOf(length: number, seed: number): Uint8Array {
  return Uint8Array.from({ length }, (_, i) => (seed * 13 + i * 7 + 1) & 0xff);
}

/**
 * The guest's side of a slot as Linux does it (vmbus_on_msg_dpc + vmbus_signal_eom): copy,
 * compare-exchange message_type to 0, then if message_pending is set write EOM.
 */
function guestConsume(synic: Synic, vp: number, sint: number, writeEom = true): Uint8Array | null {
  const gpa = slotGpa(vp, sint);
  const type = Atomics.load(memory.words, gpa >>> 2);
  if (type === HVMSG_NONE) return null;
  const copy = memory.bytes.slice(gpa, gpa + MESSAGE_SLOT_SIZE);
  assert.equal(Atomics.compareExchange(memory.words, gpa >>> 2, type, HVMSG_NONE), type);
  if (writeEom && (Atomics.load(memory.bytes, gpa + 5) & 1) !== 0) w(synic, vp, SynicMsr.Eom, 0n);
  return copy;
}

beforeEach(() => memory.bytes.fill(0));

describe('SynIC MSRs', () => {
  test('reset values; SVERSION is 1 and read-only; EOM reads 0', () => {
    const { synic } = rig();
    for (const vp of [0, 1]) {
      assert.equal(synic.readMsr(vp, SynicMsr.SControl), 0n);
      assert.equal(synic.readMsr(vp, SynicMsr.SVersion), 1n);
      assert.equal(synic.readMsr(vp, SynicMsr.Simp), 0n);
      assert.equal(synic.readMsr(vp, SynicMsr.Siefp), 0n);
      assert.equal(synic.readMsr(vp, SynicMsr.Eom), 0n);
      for (let n = 0; n < SINT_COUNT; n++) assert.equal(synic.readMsr(vp, SynicMsr.Sint0 + n), MASKED);
    }
    assert.equal(synic.writeMsr(0, SynicMsr.SVersion, 2n), false);
    assert.equal(synic.writeMsr(0, SynicMsr.SVersion, 1n), false);
    assert.equal(synic.readMsr(0, SynicMsr.SVersion), 1n);
    w(synic, 0, SynicMsr.Eom, 0x1234n);
    assert.equal(synic.readMsr(0, SynicMsr.Eom), 0n);
  });

  test('isSynicMsr covers exactly 0x40000080-84 and 0x40000090-9f', () => {
    const { synic } = rig();
    for (let msr = 0x40000070; msr < 0x400000b0; msr++) {
      const expected = (msr >= 0x40000080 && msr <= 0x40000084) || (msr >= 0x40000090 && msr <= 0x4000009f);
      assert.equal(synic.isSynicMsr(msr), expected, msr.toString(16));
      if (!expected) {
        assert.equal(synic.readMsr(0, msr), undefined);
        assert.equal(synic.writeMsr(0, msr, 0n), false);
      }
    }
  });

  test('unknown VPs read undefined and refuse writes', () => {
    const { synic } = rig({ vpCount: 2 });
    assert.equal(synic.vpCount, 2);
    for (const vp of [2, -1, 1.5, NaN, 1e9]) {
      assert.equal(synic.readMsr(vp, SynicMsr.SControl), undefined);
      assert.equal(synic.writeMsr(vp, SynicMsr.SControl, 1n), false);
      assert.equal(synic.postMessage(vp, VMBUS_SINT, 1, new Uint8Array(4)), false);
      assert.equal(synic.signalEvent(vp, VMBUS_SINT, 1), false);
      assert.equal(synic.queuedMessages(vp, VMBUS_SINT), 0);
    }
  });

  test('SCONTROL, SIMP and SIEFP keep what the guest wrote (as 64-bit values)', () => {
    const { synic } = rig();
    fc.assert(
      fc.property(fc.constantFrom(SynicMsr.SControl, SynicMsr.Simp, SynicMsr.Siefp), fc.bigInt(-(1n << 64n), (1n << 64n) - 1n), (msr, value) => {
        w(synic, 0, msr, value);
        assert.equal(synic.readMsr(0, msr), BigInt.asUintN(64, value));
        assert.equal(synic.readMsr(1, msr), 0n, 'the other VP is untouched');
      }),
      { numRuns: 300 },
    );
  });

  test('SINT writes: reserved bits and unmasked vectors below 16 are refused; the old value stays', () => {
    const { synic } = rig();
    const structured = fc
      .record({
        vector: fc.integer({ min: 0, max: 255 }),
        masked: fc.boolean(),
        autoEoi: fc.boolean(),
        polling: fc.boolean(),
        proxy: fc.boolean(),
        reserved: fc.option(fc.constantFrom(...[...Array(8).keys()].map((i) => 8 + i), 19, ...[...Array(43).keys()].map((i) => 21 + i)), { nil: undefined }),
      })
      .map(({ vector, masked, autoEoi, polling, proxy, reserved }) => {
        let v = BigInt(vector);
        if (masked) v |= MASKED;
        if (autoEoi) v |= AUTO_EOI;
        if (polling) v |= POLLING;
        if (proxy) v |= PROXY;
        if (reserved !== undefined) v |= 1n << BigInt(reserved);
        return v;
      });
    fc.assert(
      fc.property(fc.integer({ min: 0, max: SINT_COUNT - 1 }), fc.oneof(structured, fc.bigInt(0n, (1n << 64n) - 1n), fc.bigInt(-(1n << 63n), -1n)), (n, raw) => {
        const msr = SynicMsr.Sint0 + n;
        const before = synic.readMsr(0, msr);
        const value = BigInt.asUintN(64, raw);
        const ok = (value & ~0x17_00ffn) === 0n && ((value & MASKED) !== 0n || (value & 0xffn) >= 16n);
        assert.equal(synic.writeMsr(0, msr, raw), ok, `SINT${n} = 0x${value.toString(16)}`);
        assert.equal(synic.readMsr(0, msr), ok ? value : before);
      }),
      { numRuns: 1000 },
    );
    // The edge cases by name.
    assert.equal(synic.writeMsr(0, SynicMsr.Sint0, 15n), false);
    assert.equal(synic.writeMsr(0, SynicMsr.Sint0, 16n), true);
    assert.equal(synic.writeMsr(0, SynicMsr.Sint0, MASKED | 0n), true);
    assert.equal(synic.writeMsr(0, SynicMsr.Sint0, 0x100n | 0x20n), false);
    assert.equal(synic.writeMsr(0, SynicMsr.Sint15, PROXY | AUTO_EOI | 0xf3n), true);
    assert.equal(synic.writeMsr(0, SynicMsr.Sint15, (1n << 19n) | 0xf3n), false);
    assert.equal(synic.writeMsr(0, SynicMsr.Sint15, (1n << 63n) | 0xf3n), false);
  });

  test('SIMP and SIEFP pages outside RAM are kept in the register but never written', () => {
    fc.assert(
      fc.property(
        fc.oneof(fc.integer({ min: RAM_PAGES, max: RAM_PAGES + 4 }), fc.constantFrom(2 ** 20, 2 ** 32, 2 ** 40, 2 ** 52 - 1)),
        fc.boolean(),
        (pfn, simpOutside) => {
          memory.bytes.fill(0x5a);
          const { synic, injected, logs } = rig();
          const outside = (BigInt(pfn) << 12n) | 0xfe0n | ENABLE;
          w(synic, 0, SynicMsr.Simp, simpOutside ? outside : simpValue(simpPfn(0)));
          w(synic, 0, SynicMsr.Siefp, simpOutside ? simpValue(siefpPfn(0)) : outside);
          assert.equal(synic.readMsr(0, simpOutside ? SynicMsr.Simp : SynicMsr.Siefp), outside);
          assert.ok(logs.some((m) => /outside guest RAM/.test(m)), 'the refusal is logged');
          // Make the slot free in case the SIMP page is inside RAM.
          Atomics.store(memory.words, slotGpa(0, VMBUS_SINT) >>> 2, 0);
          const snapshot = memory.bytes.slice();
          w(synic, 0, SynicMsr.Sint0 + VMBUS_SINT, sintValue(VMBUS_VECTOR));
          w(synic, 0, SynicMsr.SControl, 1n);
          synic.postMessage(0, VMBUS_SINT, 1, payloadOf(32, 1));
          const signalled = synic.signalEvent(0, VMBUS_SINT, 5);
          if (simpOutside) {
            assert.equal(synic.queuedMessages(0, VMBUS_SINT), 1, 'kept queued');
            assert.equal(signalled, true);
            // Only the in-RAM SIEFP page changed, by one bit.
            const changed = [...memory.bytes.keys()].filter((i) => memory.bytes[i] !== snapshot[i]);
            assert.deepEqual(changed, [siefpPfn(0) * PAGE_SIZE + VMBUS_SINT * EVENT_FLAGS_AREA_SIZE]);
            assert.equal(injected.length, 1);
          } else {
            assert.equal(signalled, false, 'no event page, no signal');
            const changed = [...memory.bytes.keys()].filter((i) => memory.bytes[i] !== snapshot[i]);
            assert.ok(changed.every((i) => i >= slotGpa(0, VMBUS_SINT) && i < slotGpa(0, VMBUS_SINT) + MESSAGE_SLOT_SIZE), 'only the message slot changed');
            assert.equal(injected.length, 1);
          }
        },
      ),
      { numRuns: 60 },
    );
  });
});

describe('SynIC message delivery', () => {
  test('nothing is delivered until SCONTROL.enable, SIMP.enable and the SINT all allow it', () => {
    const steps = {
      scontrol: (s: Synic) => w(s, 0, SynicMsr.SControl, 1n),
      simp: (s: Synic) => w(s, 0, SynicMsr.Simp, simpValue(simpPfn(0))),
      sint: (s: Synic) => w(s, 0, SynicMsr.Sint0 + VMBUS_SINT, sintValue(VMBUS_VECTOR)),
    };
    const names = Object.keys(steps) as Array<keyof typeof steps>;
    const orders = names.flatMap((a) => names.filter((b) => b !== a).map((b) => [a, b, names.find((c) => c !== a && c !== b)!]));
    assert.equal(orders.length, 6);
    for (const order of orders) {
      memory.bytes.fill(0);
      const { synic, injected } = rig();
      assert.equal(synic.postMessage(0, VMBUS_SINT, 1, payloadOf(20, 3)), true);
      for (const [i, step] of order.entries()) {
        // An EOM and a message to another SINT are no reason to deliver either.
        w(synic, 0, SynicMsr.Eom, 0n);
        assert.equal(slotType(slotGpa(0, VMBUS_SINT)), 0, `delivered early after ${order.slice(0, i).join(',')}`);
        assert.equal(injected.length, 0);
        assert.equal(synic.queuedMessages(0, VMBUS_SINT), 1);
        steps[step](synic);
      }
      assert.equal(slotType(slotGpa(0, VMBUS_SINT)), 1, `delivered after ${order.join(',')}`);
      assert.deepEqual(injected, [[0, VMBUS_VECTOR]]);
      assert.equal(synic.queuedMessages(0, VMBUS_SINT), 0);
    }
  });

  test('disabling any of the three holds back later messages until it is re-enabled', () => {
    const disable: Array<[string, (s: Synic) => void, (s: Synic) => void]> = [
      ['scontrol', (s) => w(s, 0, SynicMsr.SControl, 0n), (s) => w(s, 0, SynicMsr.SControl, 1n)],
      ['simp', (s) => w(s, 0, SynicMsr.Simp, 0n), (s) => w(s, 0, SynicMsr.Simp, simpValue(simpPfn(0)))],
      ['sint', (s) => w(s, 0, SynicMsr.Sint0 + VMBUS_SINT, MASKED | BigInt(VMBUS_VECTOR)), (s) => w(s, 0, SynicMsr.Sint0 + VMBUS_SINT, sintValue(VMBUS_VECTOR))],
    ];
    for (const [name, off, on] of disable) {
      memory.bytes.fill(0);
      const { synic, injected } = rig();
      enableAll(synic, 0);
      off(synic);
      synic.postMessage(0, VMBUS_SINT, 1, payloadOf(8, 1));
      assert.equal(slotType(slotGpa(0, VMBUS_SINT)), 0, name);
      assert.equal(injected.length, 0, name);
      on(synic);
      assert.equal(slotType(slotGpa(0, VMBUS_SINT)), 1, name);
      assert.deepEqual(injected, [[0, VMBUS_VECTOR]], name);
    }
  });

  test('slot layout: type at +0, size at +4, flags at +5, payload at +16, slot n at n*256', () => {
    const { synic, injected } = rig();
    w(synic, 0, SynicMsr.Simp, simpValue(simpPfn(0)));
    w(synic, 0, SynicMsr.SControl, 1n);
    const page = simpPfn(0) * PAGE_SIZE;
    // Stale guest bytes everywhere except the type words: the host must overwrite all of 4..255.
    memory.bytes.fill(0xee, page, page + PAGE_SIZE);
    for (let n = 0; n < SINT_COUNT; n++) memory.view.setUint32(page + n * MESSAGE_SLOT_SIZE, 0, true);
    const types = [1, 2, 0x80000010, 0xffffffff];
    for (let n = 0; n < SINT_COUNT; n++) {
      w(synic, 0, SynicMsr.Sint0 + n, sintValue(0x20 + n));
      const payload = payloadOf(n === 15 ? MESSAGE_PAYLOAD_MAX : n * 15, n);
      assert.equal(synic.postMessage(0, n, types[n % types.length]!, payload), true);
    }
    for (let n = 0; n < SINT_COUNT; n++) {
      const slot = page + n * MESSAGE_SLOT_SIZE;
      const length = n === 15 ? MESSAGE_PAYLOAD_MAX : n * 15;
      assert.equal(memory.view.getUint32(slot, true), types[n % types.length], `type of slot ${n}`);
      assert.equal(memory.bytes[slot + 4], length, 'payload_size');
      assert.equal(memory.bytes[slot + 5], 0, 'flags: nothing pending');
      assert.deepEqual([...memory.bytes.subarray(slot + 6, slot + MESSAGE_HEADER_SIZE)], new Array(10).fill(0), 'reserved and sender are zero');
      assert.deepEqual(memory.bytes.subarray(slot + MESSAGE_HEADER_SIZE, slot + MESSAGE_HEADER_SIZE + length), payloadOf(length, n));
      assert.ok(memory.bytes.subarray(slot + MESSAGE_HEADER_SIZE + length, slot + MESSAGE_SLOT_SIZE).every((b) => b === 0), 'stale bytes after the payload are cleared');
    }
    assert.deepEqual(injected, [...Array(SINT_COUNT).keys()].map((n) => [0, 0x20 + n]));
  });

  test('postMessage refuses oversized payloads, bad SINTs and VPs', () => {
    const { synic } = rig();
    assert.equal(synic.postMessage(0, VMBUS_SINT, 1, new Uint8Array(MESSAGE_PAYLOAD_MAX + 1)), false);
    assert.equal(synic.postMessage(0, -1, 1, new Uint8Array(1)), false);
    assert.equal(synic.postMessage(0, SINT_COUNT, 1, new Uint8Array(1)), false);
    assert.equal(synic.postMessage(2, VMBUS_SINT, 1, new Uint8Array(1)), false);
    assert.equal(synic.queuedMessages(0, VMBUS_SINT), 0);
    assert.equal(synic.postMessage(0, VMBUS_SINT, 1, new Uint8Array(MESSAGE_PAYLOAD_MAX)), true);
  });

  test('message_type is stored last, after every other byte of the slot', () => {
    const { synic } = rig();
    enableAll(synic, 0);
    const gpa = slotGpa(0, VMBUS_SINT);
    const typeIndex = gpa >>> 2;
    const original = Atomics.store;
    const seen: Array<{ typeBefore: number; body: Uint8Array }> = [];
    let plainWrites = 0;
    (Atomics as { store: typeof Atomics.store }).store = ((array: Int32Array, index: number, value: number) => {
      if (array.buffer === memory.words.buffer && index === typeIndex && value !== 0) {
        seen.push({ typeBefore: Atomics.load(array, index), body: memory.bytes.slice(gpa + 4, gpa + MESSAGE_SLOT_SIZE) });
      } else if (array.buffer === memory.words.buffer && index === typeIndex) {
        plainWrites++;
      }
      return original(array, index, value);
    }) as typeof Atomics.store;
    const posted: Uint8Array[] = [];
    try {
      for (let i = 0; i < 20; i++) {
        posted.push(payloadOf((i * 37) % 241, i));
        assert.equal(synic.postMessage(0, VMBUS_SINT, 1 + i, posted[posted.length - 1]!), true);
        if (i % 3 === 0) {
          posted.push(payloadOf(5, 100 + i));
          assert.equal(synic.postMessage(0, VMBUS_SINT, 100 + i, posted[posted.length - 1]!), true); // queued behind
        }
        while (guestConsume(synic, 0, VMBUS_SINT)) { /* drain */ }
      }
    } finally {
      (Atomics as { store: typeof Atomics.store }).store = original;
    }
    assert.equal(seen.length, 27);
    assert.equal(plainWrites, 0);
    seen.forEach(({ typeBefore, body }, i) => {
      assert.equal(typeBefore, 0, 'the slot was free when the type was stored');
      // At the moment of the store the rest of the slot already holds this message.
      const payload = posted[i]!;
      assert.equal(body[0], payload.length, `message ${i}: payload_size`);
      assert.deepEqual(body.subarray(12, 12 + payload.length), payload, `message ${i}: payload`);
      assert.ok(body.subarray(12 + payload.length).every((b) => b === 0));
    });
  });

  test('a busy slot sets message_pending; the next message waits for the slot to be freed and EOM', () => {
    const { synic, injected } = rig();
    enableAll(synic, 0);
    const gpa = slotGpa(0, VMBUS_SINT);
    synic.postMessage(0, VMBUS_SINT, 1, payloadOf(10, 1));
    assert.equal(memory.bytes[gpa + 5], 0, 'nothing behind the first message');
    synic.postMessage(0, VMBUS_SINT, 2, payloadOf(11, 2));
    synic.postMessage(0, VMBUS_SINT, 3, payloadOf(12, 3));
    assert.equal(memory.bytes[gpa + 5], 1, 'message_pending set on the busy slot');
    assert.equal(slotType(gpa), 1);
    assert.equal(synic.queuedMessages(0, VMBUS_SINT), 2);
    assert.equal(injected.length, 1);

    // EOM while the slot is still full: nothing moves.
    w(synic, 0, SynicMsr.Eom, 0n);
    assert.equal(slotType(gpa), 1);
    assert.equal(injected.length, 1);

    // The guest frees the slot but has not written EOM yet: nothing moves either.
    Atomics.store(memory.words, gpa >>> 2, 0);
    assert.equal(slotType(gpa), 0);
    assert.equal(synic.queuedMessages(0, VMBUS_SINT), 2);
    w(synic, 0, SynicMsr.Eom, 0n);
    assert.equal(slotType(gpa), 2);
    assert.equal(memory.bytes[gpa + 4], 11);
    assert.equal(memory.bytes[gpa + 5], 1, 'message 3 is queued behind message 2');
    assert.deepEqual(injected, [[0, VMBUS_VECTOR], [0, VMBUS_VECTOR]]);

    assert.ok(guestConsume(synic, 0, VMBUS_SINT));
    assert.equal(slotType(gpa), 3);
    assert.equal(memory.bytes[gpa + 5], 0, 'nothing behind the last message');
    assert.ok(guestConsume(synic, 0, VMBUS_SINT));
    assert.equal(slotType(gpa), 0);
    assert.equal(injected.length, 3);
    assert.equal(synic.queuedMessages(0, VMBUS_SINT), 0);
  });

  test('the re-read after setting message_pending closes the race with a guest freeing the slot', () => {
    const { synic, injected } = rig();
    enableAll(synic, 0);
    const gpa = slotGpa(0, VMBUS_SINT);
    synic.postMessage(0, VMBUS_SINT, 1, payloadOf(4, 1));
    // The guest frees the slot and samples message_pending = 0 just before the host sets it:
    // it will never write EOM, so the host must notice the free slot by itself.
    const original = Atomics.or;
    let raced = 0;
    (Atomics as { or: typeof Atomics.or }).or = ((array: Uint8Array, index: number, value: number) => {
      if (array.buffer === memory.bytes.buffer && index === gpa + 5 && raced === 0) {
        raced++;
        const type = Atomics.load(memory.words, gpa >>> 2);
        Atomics.compareExchange(memory.words, gpa >>> 2, type, 0);
        assert.equal(Atomics.load(memory.bytes, gpa + 5) & 1, 0, 'the guest sees no pending message');
      }
      return original(array, index, value);
    }) as typeof Atomics.or;
    try {
      synic.postMessage(0, VMBUS_SINT, 2, payloadOf(4, 2));
    } finally {
      (Atomics as { or: typeof Atomics.or }).or = original;
    }
    assert.equal(raced, 1);
    assert.equal(slotType(gpa), 2, 'delivered without an EOM');
    assert.equal(synic.queuedMessages(0, VMBUS_SINT), 0);
    assert.equal(injected.length, 2);
  });

  test('messages for one VP never land in another VP\'s page', () => {
    const { synic, injected } = rig();
    enableAll(synic, 0);
    enableAll(synic, 1);
    synic.postMessage(1, VMBUS_SINT, 7, payloadOf(3, 1));
    assert.equal(slotType(slotGpa(0, VMBUS_SINT)), 0);
    assert.equal(slotType(slotGpa(1, VMBUS_SINT)), 7);
    assert.deepEqual(injected, [[1, VMBUS_VECTOR]]);
  });

  test('a moved SIMP page: the old page is forgotten', () => {
    const { synic } = rig();
    enableAll(synic, 0);
    const newPfn = 6;
    w(synic, 0, SynicMsr.Simp, 0n); // Linux: enable = 0 and GPFN = 0
    synic.postMessage(0, VMBUS_SINT, 1, payloadOf(4, 1));
    assert.ok(memory.bytes.every((b) => b === 0), 'nothing written while SIMP is disabled');
    w(synic, 0, SynicMsr.Simp, simpValue(newPfn));
    assert.equal(slotType(newPfn * PAGE_SIZE + VMBUS_SINT * MESSAGE_SLOT_SIZE), 1);
    assert.equal(slotType(slotGpa(0, VMBUS_SINT)), 0);
  });

  test('the per-SINT queue is bounded: extra messages are dropped and logged', () => {
    const { synic, logs } = rig({ maxQueuedMessages: 3 });
    // Not ready: everything queues.
    for (let i = 0; i < 3; i++) assert.equal(synic.postMessage(0, VMBUS_SINT, 1, payloadOf(4, i)), true);
    assert.equal(synic.postMessage(0, VMBUS_SINT, 42, payloadOf(4, 9)), false);
    assert.equal(synic.queuedMessages(0, VMBUS_SINT), 3);
    assert.equal(logs.length, 1);
    assert.match(logs[0]!, /vp 0 sint 2: message queue full, dropping message type 42/);
    // Other SINTs and VPs have their own bound.
    assert.equal(synic.postMessage(0, 3, 1, payloadOf(4, 1)), true);
    assert.equal(synic.postMessage(1, VMBUS_SINT, 1, payloadOf(4, 1)), true);
    // Once one is delivered, one more fits: the message in the slot does not count.
    enableAll(synic, 0);
    assert.equal(synic.queuedMessages(0, VMBUS_SINT), 2);
    assert.equal(synic.postMessage(0, VMBUS_SINT, 1, payloadOf(4, 3)), true);
    assert.equal(synic.postMessage(0, VMBUS_SINT, 1, payloadOf(4, 4)), false);
    assert.equal(logs.length, 2);
    let delivered = 0;
    while (guestConsume(synic, 0, VMBUS_SINT)) delivered++;
    assert.equal(delivered, 4);
  });

  test('a polling-mode SINT gets its messages but never an interrupt', () => {
    const { synic, injected } = rig();
    enableAll(synic, 0);
    w(synic, 0, SynicMsr.Sint0 + VMBUS_SINT, sintValue(VMBUS_VECTOR, POLLING));
    for (let i = 0; i < 5; i++) synic.postMessage(0, VMBUS_SINT, 1 + i, payloadOf(4, i));
    let n = 0;
    while (guestConsume(synic, 0, VMBUS_SINT)) n++;
    assert.equal(n, 5);
    assert.equal(synic.signalEvent(0, VMBUS_SINT, 9), true);
    assert.deepEqual(injected, []);
    // Back to interrupts.
    w(synic, 0, SynicMsr.Sint0 + VMBUS_SINT, sintValue(VMBUS_VECTOR));
    synic.postMessage(0, VMBUS_SINT, 1, payloadOf(4, 1));
    assert.deepEqual(injected, [[0, VMBUS_VECTOR]]);
  });

  test('reset() forgets registers and queued messages', () => {
    const { synic, injected } = rig();
    enableAll(synic, 0);
    for (let i = 0; i < 4; i++) synic.postMessage(0, VMBUS_SINT, 1 + i, payloadOf(4, i));
    synic.postMessage(1, 4, 1, payloadOf(4, 1));
    assert.equal(synic.queuedMessages(0, VMBUS_SINT), 3);
    synic.reset();
    for (const vp of [0, 1]) {
      assert.equal(synic.readMsr(vp, SynicMsr.SControl), 0n);
      assert.equal(synic.readMsr(vp, SynicMsr.Simp), 0n);
      assert.equal(synic.readMsr(vp, SynicMsr.Siefp), 0n);
      for (let n = 0; n < SINT_COUNT; n++) {
        assert.equal(synic.readMsr(vp, SynicMsr.Sint0 + n), MASKED);
        assert.equal(synic.queuedMessages(vp, n), 0);
      }
    }
    assert.equal(synic.signalEvent(0, VMBUS_SINT, 1), false);
    // The guest (after its own reset) frees the slot and sets up again: only new messages arrive.
    memory.bytes.fill(0);
    injected.length = 0;
    enableAll(synic, 0);
    enableAll(synic, 1, 4, 0x44);
    assert.equal(slotType(slotGpa(0, VMBUS_SINT)), 0);
    assert.equal(slotType(slotGpa(1, 4)), 0);
    assert.deepEqual(injected, []);
    synic.postMessage(0, VMBUS_SINT, 9, payloadOf(4, 9));
    assert.equal(slotType(slotGpa(0, VMBUS_SINT)), 9);
  });
});

describe('SynIC delivery model (fast-check)', () => {
  const VPS = 2;
  const SINTS = [2, 5] as const;
  const VECTORS: Record<number, number> = { 2: 0xf3, 5: 0x50 };
  const MAX_QUEUED = 4;

  type Action =
    | { kind: 'post'; vp: number; sint: number; length: number }
    | { kind: 'consume'; vp: number; sint: number; eom: boolean }
    | { kind: 'eom'; vp: number }
    | { kind: 'scontrol'; vp: number; on: boolean }
    | { kind: 'simp'; vp: number; on: boolean }
    | { kind: 'sint'; vp: number; sint: number; masked: boolean; polling: boolean };

  const vp = fc.integer({ min: 0, max: VPS - 1 });
  const sint = fc.constantFrom(...SINTS);
  const action: fc.Arbitrary<Action> = fc.oneof(
    { weight: 5, arbitrary: fc.record({ kind: fc.constant('post' as const), vp, sint, length: fc.integer({ min: 4, max: MESSAGE_PAYLOAD_MAX }) }) },
    { weight: 5, arbitrary: fc.record({ kind: fc.constant('consume' as const), vp, sint, eom: fc.oneof({ weight: 9, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('eom' as const), vp }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('scontrol' as const), vp, on: fc.boolean() }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('simp' as const), vp, on: fc.boolean() }) },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('sint' as const), vp, sint, masked: fc.boolean(), polling: fc.oneof({ weight: 4, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }) }) },
  );

  interface Expected {
    type: number;
    payload: Uint8Array;
  }

  test('every accepted message is delivered exactly once, in order, with interrupts only when allowed', () => {
    fc.assert(
      fc.property(fc.array(fc.boolean(), { minLength: 3, maxLength: 3 }), fc.array(action, { maxLength: 120, size: 'max' }), (startReady, actions) => {
        memory.bytes.fill(0);
        // Start from reset, or from a VP (or two) that Linux has already set up.
        const state = Array.from({ length: VPS }, (_, v) => ({
          scontrol: startReady[v]!,
          simp: startReady[v]!,
          sints: new Map<number, { masked: boolean; polling: boolean }>(SINTS.map((s) => [s, { masked: !(startReady[v]! && (s === VMBUS_SINT || startReady[2]!)), polling: false }])),
        }));
        const key = (v: number, s: number) => v * SINT_COUNT + s;
        const accepted = new Map<number, Expected[]>();
        const consumed = new Map<number, number>();
        const stalled = new Set<number>();
        const injectsThisAction = new Map<number, number>();
        for (let v = 0; v < VPS; v++) for (const s of SINTS) { accepted.set(key(v, s), []); consumed.set(key(v, s), 0); }
        const ready = (v: number, s: number) => state[v]!.scontrol && state[v]!.simp && !state[v]!.sints.get(s)!.masked;

        const { synic, logs } = rig({
          vpCount: VPS,
          maxQueuedMessages: MAX_QUEUED,
          onInject: (v, vector) => {
            const s = SINTS.find((x) => VECTORS[x] === vector);
            assert.ok(s !== undefined, `unexpected vector ${vector}`);
            assert.ok(ready(v, s), `interrupt on vp ${v} sint ${s} while not ready`);
            assert.equal(state[v]!.sints.get(s)!.polling, false, 'interrupt for a polling SINT');
            assert.equal(synic.readMsr(v, SynicMsr.Sint0 + s)! & MASKED, 0n, 'interrupt while masked');
            injectsThisAction.set(key(v, s), (injectsThisAction.get(key(v, s)) ?? 0) + 1);
          },
        });
        for (let v = 0; v < VPS; v++) {
          const st = state[v]!;
          w(synic, v, SynicMsr.Simp, (BigInt(simpPfn(v)) << 12n) | (st.simp ? ENABLE : 0n));
          for (const s of SINTS) w(synic, v, SynicMsr.Sint0 + s, (st.sints.get(s)!.masked ? MASKED : 0n) | BigInt(VECTORS[s]!));
          if (st.scontrol) w(synic, v, SynicMsr.SControl, 1n);
        }

        let seq = 0;
        const consumeOne = (v: number, s: number, eom: boolean): boolean => {
          const gpa = slotGpa(v, s);
          const type = slotType(gpa);
          if (type === HVMSG_NONE) return false;
          const k = key(v, s);
          const n = consumed.get(k)!;
          const expected = accepted.get(k)![n];
          assert.ok(expected, `vp ${v} sint ${s}: a message in the slot that was never accepted (or a duplicate)`);
          assert.equal(type, expected.type, `vp ${v} sint ${s}: message #${n} out of order`);
          assert.equal(memory.bytes[gpa + 4], expected.payload.length);
          assert.deepEqual(memory.bytes.subarray(gpa + MESSAGE_HEADER_SIZE, gpa + MESSAGE_HEADER_SIZE + expected.payload.length), expected.payload);
          consumed.set(k, n + 1);
          Atomics.compareExchange(memory.words, gpa >>> 2, type | 0, 0);
          const pending = (Atomics.load(memory.bytes, gpa + 5) & 1) !== 0;
          // Liveness: if the host holds more and could deliver, it must have asked for an EOM.
          if (ready(v, s) && synic.queuedMessages(v, s) > 0) assert.ok(pending, `vp ${v} sint ${s}: messages queued but message_pending clear`);
          if (pending) {
            if (eom) {
              w(synic, v, SynicMsr.Eom, 0n);
              for (const x of SINTS) stalled.delete(key(v, x));
            } else {
              stalled.add(k);
            }
          }
          return true;
        };

        const slotSeq = (v: number, s: number) => (slotType(slotGpa(v, s)) === 0 ? -1 : consumed.get(key(v, s))!);

        for (const a of actions) {
          const before = new Map<number, number>();
          for (let v = 0; v < VPS; v++) for (const s of SINTS) before.set(key(v, s), slotType(slotGpa(v, s)) === 0 ? -1 : slotSeq(v, s));
          injectsThisAction.clear();
          switch (a.kind) {
            case 'post': {
              const queued = synic.queuedMessages(a.vp, a.sint);
              const type = seq % 4 === 3 ? 0x80000000 + seq : 1 + seq;
              const payload = payloadOf(a.length, seq++);
              const ok = synic.postMessage(a.vp, a.sint, type, payload);
              assert.equal(ok, queued < MAX_QUEUED, `post with ${queued} queued`);
              if (ok) {
                accepted.get(key(a.vp, a.sint))!.push({ type: type >>> 0, payload });
                stalled.delete(key(a.vp, a.sint)); // an accepted post looks at the slot again
              } else {
                assert.match(logs[logs.length - 1]!, /queue full/);
              }
              break;
            }
            case 'consume':
              consumeOne(a.vp, a.sint, a.eom);
              break;
            case 'eom':
              w(synic, a.vp, SynicMsr.Eom, 0n);
              break;
            case 'scontrol':
              state[a.vp]!.scontrol = a.on;
              w(synic, a.vp, SynicMsr.SControl, a.on ? 1n : 0n);
              break;
            case 'simp':
              state[a.vp]!.simp = a.on;
              w(synic, a.vp, SynicMsr.Simp, (BigInt(simpPfn(a.vp)) << 12n) | (a.on ? ENABLE : 0n));
              break;
            case 'sint': {
              const st = state[a.vp]!.sints.get(a.sint)!;
              st.masked = a.masked;
              st.polling = a.polling;
              w(synic, a.vp, SynicMsr.Sint0 + a.sint, BigInt(VECTORS[a.sint]!) | (a.masked ? MASKED : 0n) | (a.polling ? POLLING : 0n));
              break;
            }
          }
          if (a.kind !== 'post' && a.kind !== 'consume') for (const s of SINTS) stalled.delete(key(a.vp, s));

          for (let v = 0; v < VPS; v++) {
            for (const s of SINTS) {
              const k = key(v, s);
              const inSlot = slotType(slotGpa(v, s)) === 0 ? 0 : 1;
              // Conservation: accepted = consumed + in the slot + queued in the host.
              assert.equal(accepted.get(k)!.length, consumed.get(k)! + inSlot + synic.queuedMessages(v, s), `vp ${v} sint ${s}: a message was lost or duplicated`);
              // A ready SINT with a free slot holds nothing back (unless the guest skipped a required EOM).
              if (ready(v, s) && inSlot === 0 && !stalled.has(k)) assert.equal(synic.queuedMessages(v, s), 0, `vp ${v} sint ${s}: ready and free but messages held back`);
              // A newly delivered message comes with an interrupt unless the SINT polls.
              const now = inSlot === 0 ? -1 : slotSeq(v, s);
              const delivered = now !== -1 && now !== before.get(k);
              if (delivered && !state[v]!.sints.get(s)!.polling) assert.ok((injectsThisAction.get(k) ?? 0) >= 1, `vp ${v} sint ${s}: delivered without an interrupt`);
            }
          }
        }

        // Everything enabled, a well-behaved guest drains the rest.
        for (let v = 0; v < VPS; v++) {
          state[v]!.scontrol = true;
          state[v]!.simp = true;
          w(synic, v, SynicMsr.SControl, 1n);
          w(synic, v, SynicMsr.Simp, simpValue(simpPfn(v)));
          for (const s of SINTS) {
            state[v]!.sints.set(s, { masked: false, polling: false });
            w(synic, v, SynicMsr.Sint0 + s, BigInt(VECTORS[s]!));
          }
        }
        for (let progress = true; progress;) {
          progress = false;
          for (let v = 0; v < VPS; v++) for (const s of SINTS) while (consumeOne(v, s, true)) progress = true;
        }
        for (let v = 0; v < VPS; v++) {
          for (const s of SINTS) {
            assert.equal(consumed.get(key(v, s)), accepted.get(key(v, s))!.length, `vp ${v} sint ${s}: not everything delivered`);
            assert.equal(synic.queuedMessages(v, s), 0);
          }
        }
      }),
      { numRuns: 300 },
    );
  });
});

describe('SynIC event flags', () => {
  const flagByte = (vp: number, sint: number, flag: number) => siefpPfn(vp) * PAGE_SIZE + sint * EVENT_FLAGS_AREA_SIZE + (flag >>> 3);

  test('signalEvent sets bit 512*8 + relid of the VP\'s SIEFP page for SINT 2, interrupting on 0 -> 1 only', () => {
    const { synic, injected } = rig();
    enableAll(synic, 0);
    enableAll(synic, 1);
    assert.equal(synic.signalEvent(0, VMBUS_SINT, 13), true);
    const byte = siefpPfn(0) * PAGE_SIZE + 512 + 1;
    assert.equal(memory.bytes[byte], 1 << 5);
    assert.deepEqual(injected, [[0, VMBUS_VECTOR]]);
    assert.equal(synic.signalEvent(0, VMBUS_SINT, 13), true);
    assert.deepEqual(injected, [[0, VMBUS_VECTOR]], 'bit already set: no second interrupt');
    assert.equal(synic.signalEvent(0, VMBUS_SINT, 12), true);
    assert.equal(memory.bytes[byte], (1 << 5) | (1 << 4));
    assert.equal(injected.length, 2);
    // The guest test-and-clears; the next signal interrupts again.
    Atomics.and(memory.bytes, byte, ~(1 << 5));
    synic.signalEvent(0, VMBUS_SINT, 13);
    assert.equal(injected.length, 3);
    // VP 1's page and interrupt.
    synic.signalEvent(1, VMBUS_SINT, 2047);
    assert.equal(memory.bytes[siefpPfn(1) * PAGE_SIZE + 512 + 255], 0x80);
    assert.deepEqual(injected[3], [1, VMBUS_VECTOR]);
  });

  test('random signals and guest clears: bits match a model set, interrupts exactly on 0 -> 1', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.oneof(
            fc.record({ clear: fc.constant(false), vp: fc.integer({ min: 0, max: 1 }), flag: fc.integer({ min: 0, max: 2047 }) }),
            fc.record({ clear: fc.constant(true), vp: fc.integer({ min: 0, max: 1 }), flag: fc.integer({ min: 0, max: 2047 }) }),
          ),
          { maxLength: 100 },
        ),
        (ops) => {
          memory.bytes.fill(0);
          const { synic, injected } = rig();
          enableAll(synic, 0);
          enableAll(synic, 1);
          const model = [new Set<number>(), new Set<number>()];
          for (const op of ops) {
            const set = model[op.vp]!;
            if (op.clear) {
              Atomics.and(memory.bytes, flagByte(op.vp, VMBUS_SINT, op.flag), ~(1 << (op.flag & 7)));
              set.delete(op.flag);
              continue;
            }
            const count = injected.length;
            assert.equal(synic.signalEvent(op.vp, VMBUS_SINT, op.flag), true);
            assert.equal(injected.length - count, set.has(op.flag) ? 0 : 1);
            if (injected.length > count) assert.deepEqual(injected[injected.length - 1], [op.vp, VMBUS_VECTOR]);
            set.add(op.flag);
          }
          for (let v = 0; v < 2; v++) {
            for (let i = 0; i < memory.size; i++) {
              const inArea = i >= siefpPfn(v) * PAGE_SIZE + 512 && i < siefpPfn(v) * PAGE_SIZE + 768;
              if (!inArea) continue;
              for (let bit = 0; bit < 8; bit++) {
                const flag = (i - siefpPfn(v) * PAGE_SIZE - 512) * 8 + bit;
                assert.equal((memory.bytes[i]! >> bit) & 1, model[v]!.has(flag) ? 1 : 0, `vp ${v} flag ${flag}`);
              }
            }
          }
          // Nothing outside the two SINT-2 areas was touched.
          const areas = [0, 1].map((v) => siefpPfn(v) * PAGE_SIZE + 512);
          for (let i = 0; i < memory.size; i++) {
            if (areas.some((a) => i >= a && i < a + EVENT_FLAGS_AREA_SIZE)) continue;
            if (memory.bytes[i] !== 0 && !(i >= simpPfn(0) * PAGE_SIZE && i < simpPfn(0) * PAGE_SIZE + PAGE_SIZE)) assert.fail(`stray write at ${i}`);
          }
        },
      ),
      { numRuns: 100 },
    );
  });

  test('signalEvent refuses when the SynIC, the SIEFP page or the arguments are not right', () => {
    const { synic, injected } = rig();
    assert.equal(synic.signalEvent(0, VMBUS_SINT, 1), false, 'nothing enabled');
    w(synic, 0, SynicMsr.Siefp, simpValue(siefpPfn(0)));
    w(synic, 0, SynicMsr.Sint0 + VMBUS_SINT, sintValue(VMBUS_VECTOR));
    assert.equal(synic.signalEvent(0, VMBUS_SINT, 1), false, 'SCONTROL disabled');
    w(synic, 0, SynicMsr.SControl, 1n);
    w(synic, 0, SynicMsr.Siefp, BigInt(siefpPfn(0)) << 12n);
    assert.equal(synic.signalEvent(0, VMBUS_SINT, 1), false, 'SIEFP disabled');
    w(synic, 0, SynicMsr.Siefp, simpValue(RAM_PAGES));
    assert.equal(synic.signalEvent(0, VMBUS_SINT, 1), false, 'SIEFP outside RAM');
    w(synic, 0, SynicMsr.Siefp, simpValue(siefpPfn(0)));
    for (const [s, flag] of [[-1, 1], [SINT_COUNT, 1], [VMBUS_SINT, -1], [VMBUS_SINT, EVENT_FLAGS_AREA_SIZE * 8]] as const) {
      assert.equal(synic.signalEvent(0, s, flag), false, `sint ${s} flag ${flag}`);
    }
    assert.ok(memory.bytes.every((b) => b === 0));
    assert.deepEqual(injected, []);
    assert.equal(synic.signalEvent(0, 15, 2047), true, 'the last bit of the last area');
    assert.equal(memory.bytes[siefpPfn(0) * PAGE_SIZE + PAGE_SIZE - 1], 0x80);
  });

  test('a masked SINT is never interrupted by an event', () => {
    const { synic, injected } = rig();
    enableAll(synic, 0);
    w(synic, 0, SynicMsr.Sint0 + VMBUS_SINT, MASKED | BigInt(VMBUS_VECTOR));
    for (let f = 0; f < 64; f++) synic.signalEvent(0, VMBUS_SINT, f);
    assert.deepEqual(injected, []);
  });

  test('bits are set atomically while the guest clears other bits of the same bytes', async () => {
    const { synic } = rig();
    enableAll(synic, 0);
    const area = siefpPfn(0) * PAGE_SIZE + VMBUS_SINT * EVENT_FLAGS_AREA_SIZE;
    const moduleUrl = new URL('../src/memory/guest-memory.js', import.meta.url).href;
    // The "guest" sets and clears the low nibble of each byte and checks its bits never vanish
    // under it; the host sets the high nibble through signalEvent meanwhile.
    const code = `
      const { parentPort, workerData } = require('node:worker_threads');
      import(${JSON.stringify(moduleUrl)}).then(({ GuestMemory }) => {
        const m = GuestMemory.attach(workerData.handle);
        const go = new Int32Array(workerData.go);
        Atomics.store(go, 0, 1);
        let lost = 0, rounds = 0;
        while (Atomics.load(go, 1) === 0) {
          for (let i = 0; i < 16; i++) {
            const b = workerData.area + i;
            Atomics.or(m.bytes, b, 0x0f);
            if ((Atomics.and(m.bytes, b, 0xf0) & 0x0f) !== 0x0f) lost++;
          }
          rounds++;
        }
        parentPort.postMessage({ lost, rounds });
      });
    `;
    const go = new SharedArrayBuffer(8);
    const flags = new Int32Array(go);
    const worker = new Worker(code, { eval: true, workerData: { handle: memory.handle, area, go } });
    const result = new Promise<{ lost: number; rounds: number }>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    const deadline = Date.now() + 5000;
    while (Atomics.load(flags, 0) === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 1));
    for (let round = 0; round < 2000; round++) {
      for (let i = 0; i < 16; i++) {
        for (let bit = 4; bit < 8; bit++) synic.signalEvent(0, VMBUS_SINT, i * 8 + bit);
        Atomics.and(memory.bytes, area + i, 0x0f); // consume the host bits again
      }
    }
    for (let i = 0; i < 16; i++) for (let bit = 4; bit < 8; bit++) synic.signalEvent(0, VMBUS_SINT, i * 8 + bit);
    Atomics.store(flags, 1, 1);
    const { lost } = await result;
    await worker.terminate();
    assert.equal(lost, 0, 'guest bits lost to a non-atomic host update');
    for (let i = 0; i < 16; i++) assert.equal(memory.bytes[area + i]! & 0xf0, 0xf0, 'host bits present');
  });
});
