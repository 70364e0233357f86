// The Hyper-V interface emulation (spec 1.4, 1.5, 4): the hypercall control word, the
// reference TSC page math against exact BigInt arithmetic, every synthetic MSR path
// (read-back, read-only #GP, unknown #GP, per-VP independence, SynIC delegation), the
// hypercall page written exactly at the guest's GPFN and only when the TLFS allows it,
// the crash callback, every hypercall status, and a property test that random control
// words, GPAs and input blocks never throw and only get documented statuses.
import assert from 'node:assert/strict';
import { after, beforeEach, describe, test } from 'node:test';
import fc from 'fast-check';
import { GuestMemory } from '../src/memory/guest-memory.js';
import { PAGE_SIZE } from '../src/memory/page.js';
import { Synic, SynicMsr } from '../src/hyperv/synic.js';
import { HvStatus } from '../src/hyperv/hv-status.js';
import { HypervEmulator } from '../src/hyperv/hv-emulator.js';
import { CrashCtl, HvMsr } from '../src/hyperv/hv-msrs.js';
import { FAST_SIGNAL_EVENT_CONTROL, decodeHypercallControl, encodeHypercallControl, hypercallResult, resultStatus } from '../src/hyperv/hypercall-control.js';
import { hypercallPageCode } from '../src/hyperv/hypercall-page.js';
import { nextReferenceTscSequence, referenceTimeFromTsc, referenceTscScale, writeReferenceTscPage } from '../src/hyperv/reference-tsc-page.js';
import type { GuestCrash } from '../src/hyperv/guest-crash.js';
import { describeGuestCrash } from '../src/hyperv/guest-crash.js';
import type { PostMessageHandler } from '../src/partition/partition.js';

const RAM_PAGES = 16;
const memory = GuestMemory.create(RAM_PAGES * PAGE_SIZE, 'hv-emulator-test');
after(() => memory.close());

const SENTINEL = 0xa5;
const TSC_HZ = 2_400_000_000;
const LINUX_OS_ID = 0x8100_0006_0100_0000n;
const POST = 0x5cn;
const SIGNAL_FAST = FAST_SIGNAL_EVENT_CONTROL;
const SIGNAL_SLOW = 0x5dn;

interface Posted {
  connectionId: number;
  messageType: number;
  payload: Uint8Array;
  vp: number;
}

interface Rig {
  hv: HypervEmulator;
  synic: Synic;
  posted: Posted[];
  signalled: number[];
  crashes: GuestCrash[];
  logs: string[];
  clock: { now: bigint; tsc: bigint };
}

function rig(o: { vpCount?: number; apicHz?: number; post?: PostMessageHandler | null; signal?: (id: number) => boolean; guestTsc?: boolean; onCrash?: (c: GuestCrash) => void } = {}): Rig {
  const vpCount = o.vpCount ?? 2;
  const posted: Posted[] = [];
  const signalled: number[] = [];
  const crashes: GuestCrash[] = [];
  const logs: string[] = [];
  const clock = { now: 123_456_789n, tsc: 0n };
  const synic = new Synic({ memory, vpCount, inject: () => {} });
  const defaultPost: PostMessageHandler = (connectionId, messageType, payload, vp) => {
    posted.push({ connectionId, messageType, payload, vp });
    return HvStatus.Success;
  };
  const hv = new HypervEmulator({
    memory,
    synic,
    vpCount,
    tscHz: TSC_HZ,
    apicHz: o.apicHz,
    referenceTime: () => clock.now,
    guestTsc: o.guestTsc ? () => clock.tsc : undefined,
    postMessage: o.post === undefined ? defaultPost : o.post,
    signalEvent: o.signal ?? ((id) => {
      signalled.push(id);
      return id === 7;
    }),
    onCrash: o.onCrash ?? ((c) => crashes.push(c)),
    log: (m) => logs.push(m),
  });
  return { hv, synic, posted, signalled, crashes, logs, clock };
}

beforeEach(() => memory.bytes.fill(SENTINEL));

/** Byte ranges of RAM that differ from the sentinel fill. */
function touchedRanges(): Array<[number, number]> {
  const ranges: Array<[number, number]> = [];
  const b = memory.bytes;
  let start = -1;
  for (let i = 0; i <= b.length; i++) {
    const touched = i < b.length && b[i] !== SENTINEL;
    if (touched && start < 0) start = i;
    if (!touched && start >= 0) {
      ranges.push([start, i]);
      start = -1;
    }
  }
  return ranges;
}

function codeAt(gpa: number): boolean {
  const code = hypercallPageCode();
  return Buffer.from(memory.bytes.subarray(gpa, gpa + code.length)).equals(Buffer.from(code));
}

function enableHypercall(r: Rig, pfn: number): void {
  assert.ok(r.hv.writeMsr(0, HvMsr.GuestOsId, LINUX_OS_ID));
  assert.ok(r.hv.writeMsr(0, HvMsr.Hypercall, (BigInt(pfn) << 12n) | 1n));
}

describe('hypercall control word', () => {
  test('fields and result layout', () => {
    assert.deepEqual(decodeHypercallControl(0x1005dn), { code: 0x5d, fast: true, variableHeaderQwords: 0, repCount: 0, repStart: 0, reservedBitsSet: false });
    const c = decodeHypercallControl((0x3n << 48n) | (0x12n << 32n) | (0x5n << 17n) | 0x0013n);
    assert.deepEqual(c, { code: 0x13, fast: false, variableHeaderQwords: 5, repCount: 0x12, repStart: 3, reservedBitsSet: false });
    for (const bit of [27n, 31n, 44n, 47n, 60n, 63n]) assert.equal(decodeHypercallControl(1n << bit).reservedBitsSet, true, `bit ${bit}`);
    assert.equal(hypercallResult(0x13, 5), 0x5_0000_0013n);
    assert.equal(resultStatus(0xffff_0000_0012n), 0x12);
  });

  test('property: encode/decode round trip', () => {
    fc.assert(
      fc.property(fc.record({ code: fc.nat(0xffff), fast: fc.boolean(), variableHeaderQwords: fc.nat(0x3ff), repCount: fc.nat(0xfff), repStart: fc.nat(0xfff) }), (f) => {
        assert.deepEqual(decodeHypercallControl(encodeHypercallControl(f)), { ...f, reservedBitsSet: false });
      }),
    );
    fc.assert(fc.property(fc.bigInt({ min: -(1n << 70n), max: 1n << 70n }), (v) => void decodeHypercallControl(v)));
  });
});

describe('reference TSC page', () => {
  const FREQUENCIES = [10_000_001, 25_000_000, 1_000_000_000, 1_000_000_007, 2_400_000_000, 2_999_999_999, 3_700_000_000, 5_000_000_000];

  test('scale = floor(2^64 * 10^7 / f)', () => {
    for (const f of FREQUENCIES) assert.equal(referenceTscScale(f), ((1n << 64n) * 10_000_000n) / BigInt(f));
    assert.equal(referenceTscScale(1e9), 184467440737095516n);
    for (const bad of [10_000_000, 0, -1, 1.5, Number.NaN]) assert.throws(() => referenceTscScale(bad), RangeError);
  });

  test('property: page time is within one tick below exact time, and monotonic', () => {
    fc.assert(
      fc.property(fc.constantFrom(...FREQUENCIES), fc.bigInt({ min: 0n, max: (1n << 62n) - 1n }), fc.bigInt({ min: 0n, max: 1n << 20n }), fc.bigInt({ min: -(1n << 40n), max: 1n << 40n }), (f, tsc, step, offset) => {
        const scale = referenceTscScale(f);
        const exact = (tsc * 10_000_000n) / BigInt(f);
        const got = referenceTimeFromTsc(tsc, scale, 0n);
        assert.ok(got <= exact && exact - got <= 1n, `f=${f} tsc=${tsc}: ${got} vs ${exact}`);
        assert.ok(referenceTimeFromTsc(tsc + step, scale, 0n) >= got);
        assert.equal(referenceTimeFromTsc(tsc, scale, offset), BigInt.asUintN(64, got + offset));
      }),
    );
    // One second of TSC is 10^7 reference ticks (less at most one).
    for (const f of FREQUENCIES) {
      const t = referenceTimeFromTsc(BigInt(f), referenceTscScale(f), 0n);
      assert.ok(t === 10_000_000n || t === 9_999_999n, `f=${f}: ${t}`);
    }
  });

  test('sequence is never 0 or 0xFFFFFFFF and always changes', () => {
    assert.equal(nextReferenceTscSequence(0), 1);
    assert.equal(nextReferenceTscSequence(5), 6);
    assert.equal(nextReferenceTscSequence(0xfffffffe), 1);
    assert.equal(nextReferenceTscSequence(0xffffffff), 1);
    fc.assert(fc.property(fc.nat(0xffffffff), (s) => {
      const n = nextReferenceTscSequence(s);
      assert.ok(n !== 0 && n !== 0xffffffff && n !== s);
    }));
  });

  test('layout: sequence at 0, reserved 4, scale at 8, offset at 16; nothing else written', () => {
    writeReferenceTscPage(memory, 3 * PAGE_SIZE, { sequence: 0x1234, scale: 0x1122334455667788n, offset: -5n });
    const g = 3 * PAGE_SIZE;
    assert.equal(memory.view.getUint32(g, true), 0x1234);
    assert.equal(memory.view.getUint32(g + 4, true), 0);
    assert.equal(memory.view.getBigUint64(g + 8, true), 0x1122334455667788n);
    assert.equal(memory.view.getBigInt64(g + 16, true), -5n);
    assert.deepEqual(touchedRanges(), [[g, g + 24]]);
    assert.throws(() => writeReferenceTscPage(memory, g, { sequence: 0, scale: 1n, offset: 0n }), RangeError);
    assert.throws(() => writeReferenceTscPage(memory, g + 8, { sequence: 1, scale: 1n, offset: 0n }), RangeError);
    assert.throws(() => writeReferenceTscPage(memory, RAM_PAGES * PAGE_SIZE, { sequence: 1, scale: 1n, offset: 0n }));
  });
});

describe('synthetic MSRs', () => {
  test('the synthetic range', () => {
    const { hv } = rig();
    assert.equal(hv.isSyntheticMsr(0x40000000), true);
    assert.equal(hv.isSyntheticMsr(0x400001ff), true);
    assert.equal(hv.isSyntheticMsr(0x3fffffff), false);
    assert.equal(hv.isSyntheticMsr(0x40000200), false);
    assert.equal(hv.readMsr(0, 0x10), undefined, 'a non-synthetic MSR is not ours');
    assert.equal(hv.writeMsr(0, 0x10, 0n), false);
  });

  test('unknown synthetic MSRs and bad VPs get #GP', () => {
    const { hv } = rig();
    for (const msr of [0x40000003, 0x40000010, 0x40000070, 0x40000072, 0x40000085, 0x4000008f, 0x400000b0, 0x400000f0, 0x40000106, 0x400000a0, 0x400001ff]) {
      assert.equal(hv.readMsr(0, msr), undefined, `read ${msr.toString(16)}`);
      assert.equal(hv.writeMsr(0, msr, 0n), false, `write ${msr.toString(16)}`);
    }
    for (const vp of [-1, 2, 1.5, Number.NaN]) {
      assert.equal(hv.readMsr(vp, HvMsr.VpIndex), undefined);
      assert.equal(hv.writeMsr(vp, HvMsr.GuestOsId, 1n), false);
    }
  });

  test('read-only MSRs: VP index per VP, frequencies, reference counter', () => {
    const r = rig({ vpCount: 3 });
    for (let vp = 0; vp < 3; vp++) assert.equal(r.hv.readMsr(vp, HvMsr.VpIndex), BigInt(vp));
    assert.equal(r.hv.readMsr(1, HvMsr.TscFrequency), BigInt(TSC_HZ));
    assert.equal(r.hv.readMsr(1, HvMsr.ApicFrequency), 1_000_000_000n, 'default APIC timer clock: 1 ns bus cycle');
    assert.equal(rig({ apicHz: 200_000_000 }).hv.readMsr(0, HvMsr.ApicFrequency), 200_000_000n);
    assert.equal(r.hv.readMsr(0, HvMsr.TimeRefCount), 123_456_789n);
    r.clock.now = 987n;
    assert.equal(r.hv.readMsr(2, HvMsr.TimeRefCount), 987n);
    for (const msr of [HvMsr.VpIndex, HvMsr.TscFrequency, HvMsr.ApicFrequency, HvMsr.TimeRefCount]) {
      assert.equal(r.hv.writeMsr(0, msr, 5n), false, `write ${msr.toString(16)} is #GP`);
    }
    assert.equal(r.hv.readMsr(1, HvMsr.VpIndex), 1n);
  });

  test('GUEST_OS_ID, VP_ASSIST (per VP), TSC_INVARIANT_CONTROL: stored and read back', () => {
    const { hv } = rig();
    assert.equal(hv.readMsr(0, HvMsr.GuestOsId), 0n);
    assert.ok(hv.writeMsr(1, HvMsr.GuestOsId, LINUX_OS_ID));
    assert.equal(hv.readMsr(0, HvMsr.GuestOsId), LINUX_OS_ID, 'partition-wide');
    assert.equal(hv.guestOsId, LINUX_OS_ID);
    assert.ok(hv.writeMsr(0, HvMsr.VpAssistPage, (9n << 12n) | 1n));
    assert.ok(hv.writeMsr(1, HvMsr.VpAssistPage, (10n << 12n) | 1n));
    assert.equal(hv.readMsr(0, HvMsr.VpAssistPage), (9n << 12n) | 1n);
    assert.equal(hv.readMsr(1, HvMsr.VpAssistPage), (10n << 12n) | 1n);
    assert.deepEqual(touchedRanges(), [], 'the VP-assist page is never written');
    assert.ok(hv.writeMsr(0, HvMsr.TscInvariantControl, 1n));
    assert.equal(hv.readMsr(1, HvMsr.TscInvariantControl), 1n);
    assert.ok(hv.writeMsr(0, HvMsr.GuestOsId, -1n));
    assert.equal(hv.readMsr(0, HvMsr.GuestOsId), 0xffff_ffff_ffff_ffffn, '64-bit wrap');
  });

  test('HYPERCALL: cannot be enabled while the guest OS id is 0', () => {
    const r = rig();
    assert.ok(r.hv.writeMsr(0, HvMsr.Hypercall, (5n << 12n) | 1n), 'no #GP');
    assert.equal(r.hv.readMsr(0, HvMsr.Hypercall), 0n, 'enable does not read back');
    assert.equal(r.hv.hypercallEnabled, false);
    assert.deepEqual(touchedRanges(), []);
    assert.ok(r.logs.some((l) => l.includes('guest OS id')));
  });

  test('HYPERCALL: enable writes the code exactly at the GPFN, reads back', () => {
    const r = rig();
    assert.equal(r.hv.readMsr(0, HvMsr.Hypercall), 0n);
    enableHypercall(r, 5);
    const gpa = 5 * PAGE_SIZE;
    assert.equal(r.hv.readMsr(1, HvMsr.Hypercall), (5n << 12n) | 1n, 'read-back (what hv_vmbus checks)');
    assert.equal(r.hv.hypercallPageGpa, gpa);
    assert.ok(codeAt(gpa));
    assert.deepEqual(touchedRanges(), [[gpa, gpa + hypercallPageCode().length]]);
  });

  test('HYPERCALL: rewritten only on enable or GPFN change; reserved bits read as 0', () => {
    const r = rig();
    enableHypercall(r, 5);
    memory.bytes.fill(SENTINEL);
    assert.ok(r.hv.writeMsr(0, HvMsr.Hypercall, (5n << 12n) | 1n | 0xff0n));
    assert.equal(r.hv.readMsr(0, HvMsr.Hypercall), (5n << 12n) | 1n, 'bits 2-11 reserved');
    assert.deepEqual(touchedRanges(), [], 'same page, still enabled: not rewritten');
    assert.ok(r.hv.writeMsr(0, HvMsr.Hypercall, (6n << 12n) | 1n));
    assert.ok(codeAt(6 * PAGE_SIZE));
    assert.deepEqual(touchedRanges(), [[6 * PAGE_SIZE, 6 * PAGE_SIZE + hypercallPageCode().length]]);
    memory.bytes.fill(SENTINEL);
    assert.ok(r.hv.writeMsr(0, HvMsr.Hypercall, 7n << 12n));
    assert.equal(r.hv.readMsr(0, HvMsr.Hypercall), 7n << 12n);
    assert.equal(r.hv.hypercallEnabled, false);
    assert.equal(r.hv.hypercallPageGpa, undefined);
    assert.deepEqual(touchedRanges(), [], 'disabled: nothing written');
    assert.ok(r.hv.writeMsr(0, HvMsr.Hypercall, (7n << 12n) | 1n));
    assert.ok(codeAt(7 * PAGE_SIZE), '0 -> 1 with the same GPFN writes again');
  });

  test('HYPERCALL: a GPFN outside RAM reads back but nothing is written', () => {
    const r = rig();
    const value = (BigInt(RAM_PAGES) << 12n) | 1n;
    r.hv.writeMsr(0, HvMsr.GuestOsId, LINUX_OS_ID);
    assert.ok(r.hv.writeMsr(0, HvMsr.Hypercall, value));
    assert.equal(r.hv.readMsr(0, HvMsr.Hypercall), value);
    assert.equal(r.hv.hypercallPageGpa, undefined);
    assert.deepEqual(touchedRanges(), []);
    assert.ok(r.logs.some((l) => l.includes('outside guest RAM')));
    assert.ok(r.hv.writeMsr(0, HvMsr.Hypercall, (0xfffff_ffff_ffffn << 12n) | 1n), 'a huge GPFN is no problem either');
    assert.deepEqual(touchedRanges(), []);
  });

  test('HYPERCALL: guest OS id 0 disables it; locked makes it immutable', () => {
    const r = rig();
    enableHypercall(r, 5);
    assert.ok(r.hv.writeMsr(0, HvMsr.GuestOsId, 0n));
    assert.equal(r.hv.readMsr(0, HvMsr.Hypercall), 5n << 12n, 'enable cleared, GPFN kept');
    r.hv.writeMsr(0, HvMsr.GuestOsId, LINUX_OS_ID);
    assert.ok(r.hv.writeMsr(0, HvMsr.Hypercall, (5n << 12n) | 3n));
    assert.equal(r.hv.readMsr(0, HvMsr.Hypercall), (5n << 12n) | 3n);
    assert.equal(r.hv.writeMsr(0, HvMsr.Hypercall, 0n), false, 'locked: #GP');
    assert.ok(r.hv.writeMsr(0, HvMsr.GuestOsId, 0n));
    assert.equal(r.hv.hypercallEnabled, true, 'a locked page stays enabled');
    r.hv.reset();
    assert.equal(r.hv.readMsr(0, HvMsr.Hypercall), 0n, 'reset unlocks');
  });

  test('REFERENCE_TSC: page written at the GPFN when enabled, new sequence on every write', () => {
    const r = rig();
    assert.equal(r.hv.readMsr(0, HvMsr.ReferenceTsc), 0n);
    assert.ok(r.hv.writeMsr(0, HvMsr.ReferenceTsc, 9n << 12n));
    assert.deepEqual(touchedRanges(), [], 'disabled: nothing written');
    assert.ok(r.hv.writeMsr(1, HvMsr.ReferenceTsc, (9n << 12n) | 1n | 0x10n));
    assert.equal(r.hv.readMsr(0, HvMsr.ReferenceTsc), (9n << 12n) | 1n, 'reserved bits 1-11 read as 0');
    const g = 9 * PAGE_SIZE;
    const seq1 = memory.view.getUint32(g, true);
    assert.notEqual(seq1, 0);
    assert.notEqual(seq1, 0xffffffff);
    assert.equal(memory.view.getBigUint64(g + 8, true), referenceTscScale(TSC_HZ));
    assert.equal(memory.view.getBigInt64(g + 16, true), 0n, 'no guest TSC source: offset 0');
    assert.deepEqual(touchedRanges(), [[g, g + 24]]);
    assert.ok(r.hv.writeMsr(0, HvMsr.ReferenceTsc, (9n << 12n) | 1n));
    const seq2 = memory.view.getUint32(g, true);
    assert.ok(seq2 !== seq1 && seq2 !== 0 && seq2 !== 0xffffffff);
    assert.ok(r.hv.writeMsr(0, HvMsr.ReferenceTsc, (BigInt(RAM_PAGES) << 12n) | 1n), 'outside RAM: stored');
    assert.ok(r.logs.some((l) => l.includes('reference TSC page')));
    assert.equal(r.hv.referenceTscEnabled, true);
  });

  test('REFERENCE_TSC: with the guest TSC known, page time equals TIME_REF_COUNT', () => {
    const r = rig({ guestTsc: true });
    r.clock.tsc = 7_000_000_000_000n;
    r.clock.now = 50_000_000n;
    assert.ok(r.hv.writeMsr(0, HvMsr.ReferenceTsc, (4n << 12n) | 1n));
    const g = 4 * PAGE_SIZE;
    const scale = memory.view.getBigUint64(g + 8, true);
    const offset = memory.view.getBigInt64(g + 16, true);
    assert.equal(referenceTimeFromTsc(r.clock.tsc, scale, offset), 50_000_000n);
    // One TSC second later, both clocks moved by 10^7 ticks (within rounding).
    const later = referenceTimeFromTsc(r.clock.tsc + BigInt(TSC_HZ), scale, offset);
    assert.ok(later - 50_000_000n >= 9_999_999n && later - 50_000_000n <= 10_000_001n);
  });

  test('crash MSRs: P0-P4 stored, CTL reports notify only, notify calls onCrash', () => {
    const r = rig();
    assert.equal(r.hv.readMsr(0, HvMsr.CrashCtl), CrashCtl.Notify, 'capabilities: notify, no crash message');
    const p = [0x1n, LINUX_OS_ID, 0xffffffff81000000n, 0x2an, 0xffffc90000003f00n];
    p.forEach((v, i) => assert.ok(r.hv.writeMsr(1, HvMsr.CrashP0 + i, v)));
    p.forEach((v, i) => assert.equal(r.hv.readMsr(0, HvMsr.CrashP0 + i), v));
    assert.ok(r.hv.writeMsr(0, HvMsr.CrashCtl, 0n));
    assert.equal(r.crashes.length, 0, 'no notify bit: no report');
    assert.ok(r.hv.writeMsr(1, HvMsr.CrashCtl, CrashCtl.Notify | CrashCtl.CrashMessage));
    assert.deepEqual(r.crashes, [{ p }], 'the message page is never read (capability not offered)');
    assert.equal(r.hv.readMsr(0, HvMsr.CrashCtl), CrashCtl.Notify, 'reads do not echo writes');
    assert.match(describeGuestCrash(r.crashes[0]!), /RIP 0xffffffff81000000/);
    const throwing = rig({ onCrash: () => { throw new Error('boom'); } });
    assert.ok(throwing.hv.writeMsr(0, HvMsr.CrashCtl, CrashCtl.Notify), 'a failing crash handler does not fault the guest');
    assert.ok(throwing.logs.some((l) => l.includes('boom')));
  });

  test('SynIC MSRs are delegated, per VP', () => {
    const r = rig();
    assert.equal(r.hv.readMsr(0, SynicMsr.SVersion), 1n);
    assert.equal(r.hv.writeMsr(0, SynicMsr.SVersion, 1n), false);
    assert.equal(r.hv.readMsr(1, SynicMsr.Sint0 + 2), 1n << 16n, 'SINTs reset masked');
    assert.ok(r.hv.writeMsr(0, SynicMsr.SControl, 1n));
    assert.ok(r.hv.writeMsr(0, SynicMsr.Simp, (3n << 12n) | 1n));
    assert.ok(r.hv.writeMsr(0, SynicMsr.Sint0 + 2, 0xf3n));
    assert.equal(r.hv.readMsr(0, SynicMsr.SControl), 1n);
    assert.equal(r.hv.readMsr(1, SynicMsr.SControl), 0n, 'VP 1 untouched');
    assert.equal(r.synic.readMsr(0, SynicMsr.Simp), (3n << 12n) | 1n, 'the shared SynIC model holds the state');
    assert.equal(r.hv.readMsr(0, SynicMsr.Sint0 + 2), 0xf3n);
    assert.equal(r.hv.writeMsr(0, SynicMsr.Sint0 + 2, 0x5n), false, 'unmasked vector < 16: #GP (SynIC rule)');
    assert.ok(r.hv.writeMsr(0, SynicMsr.Eom, 0n));
    assert.equal(r.hv.readMsr(0, SynicMsr.Eom), 0n);
  });

  test('reset restores power-on values', () => {
    const r = rig();
    enableHypercall(r, 5);
    r.hv.writeMsr(0, HvMsr.ReferenceTsc, (9n << 12n) | 1n);
    r.hv.writeMsr(1, HvMsr.VpAssistPage, 1n);
    r.hv.writeMsr(1, HvMsr.CrashP0 + 2, 9n);
    r.hv.reset();
    for (const msr of [HvMsr.GuestOsId, HvMsr.Hypercall, HvMsr.ReferenceTsc, HvMsr.VpAssistPage, HvMsr.TscInvariantControl, HvMsr.CrashP0 + 2]) {
      assert.equal(r.hv.readMsr(1, msr), 0n, msr.toString(16));
    }
  });
});

/** Writes an HvPostMessage input block. */
function postInput(gpa: number, f: { connectionId: number; messageType: number; payloadSize: number; payload?: Uint8Array }): void {
  memory.view.setUint32(gpa, f.connectionId, true);
  memory.view.setUint32(gpa + 4, 0, true);
  memory.view.setUint32(gpa + 8, f.messageType, true);
  memory.view.setUint32(gpa + 12, f.payloadSize, true);
  if (f.payload) memory.bytes.set(f.payload, gpa + 16);
}

const status = (result: bigint) => {
  assert.equal(result >> 16n, 0n, 'only the status bits are set (no reps completed)');
  return Number(result);
};

describe('HvPostMessage', () => {
  const GPA = 2 * PAGE_SIZE;

  test('delivers a copy of the payload with the connection id, type and VP', () => {
    const r = rig();
    const payload = Uint8Array.from({ length: 40 }, (_, i) => i + 1);
    postInput(GPA, { connectionId: 0xab000004, messageType: 1, payloadSize: 40, payload });
    assert.equal(status(r.hv.hypercall(1, POST, BigInt(GPA), 0n)), HvStatus.Success);
    assert.equal(r.posted.length, 1);
    const m = r.posted[0]!;
    assert.deepEqual({ c: m.connectionId, t: m.messageType, vp: m.vp }, { c: 4, t: 1, vp: 1 }, 'connection id = bits 0-23');
    assert.deepEqual([...m.payload], [...payload]);
    memory.bytes.fill(0, GPA + 16, GPA + 56);
    assert.deepEqual([...m.payload], [...payload], 'a copy: the guest rewriting its page changes nothing');
    postInput(GPA + 3840, { connectionId: 1, messageType: 1, payloadSize: 240 });
    assert.equal(status(r.hv.hypercall(0, POST, BigInt(GPA + 3840), 0n)), HvStatus.Success, 'the last 256 bytes of a page');
    postInput(GPA, { connectionId: 1, messageType: 0x7fffffff, payloadSize: 0 });
    assert.equal(status(r.hv.hypercall(0, POST, BigInt(GPA), 0n)), HvStatus.Success);
    assert.equal(r.posted[1]!.payload.length, 240);
    assert.equal(r.posted[2]!.payload.length, 0);
  });

  test('the handler status reaches the guest', () => {
    const r = rig({ post: () => HvStatus.InsufficientBuffers });
    postInput(GPA, { connectionId: 1, messageType: 1, payloadSize: 8 });
    assert.equal(status(r.hv.hypercall(0, POST, BigInt(GPA), 0n)), HvStatus.InsufficientBuffers);
  });

  test('every refusal has its status', () => {
    const r = rig();
    postInput(GPA, { connectionId: 1, messageType: 1, payloadSize: 8 });
    const call = (control: bigint, input: bigint) => status(r.hv.hypercall(0, control, input, 0n));
    assert.equal(call(POST | (1n << 16n), BigInt(GPA)), HvStatus.InvalidHypercallInput, 'fast');
    assert.equal(call(POST | (1n << 32n), BigInt(GPA)), HvStatus.InvalidHypercallInput, 'rep count');
    assert.equal(call(POST | (1n << 48n), BigInt(GPA)), HvStatus.InvalidHypercallInput, 'rep start');
    assert.equal(call(POST | (1n << 17n), BigInt(GPA)), HvStatus.InvalidHypercallInput, 'variable header');
    assert.equal(call(POST | (1n << 63n), BigInt(GPA)), HvStatus.InvalidHypercallInput, 'reserved bit');
    assert.equal(call(POST, BigInt(GPA + 4)), HvStatus.InvalidAlignment, 'not 8-byte aligned');
    assert.equal(call(POST, BigInt(GPA + 3848)), HvStatus.InvalidAlignment, 'crosses a page');
    assert.equal(call(POST, BigInt(RAM_PAGES * PAGE_SIZE)), HvStatus.InvalidParameter, 'outside RAM');
    assert.equal(call(POST, 0xffff_ffff_ffff_f000n), HvStatus.InvalidParameter, 'far outside RAM');
    for (const [messageType, payloadSize, why] of [[1, 241, 'payload > 240'], [1, 0xffffffff, 'huge payload'], [0, 8, 'type 0'], [0x80000001, 8, 'hypervisor type']] as const) {
      postInput(GPA, { connectionId: 1, messageType, payloadSize });
      assert.equal(call(POST, BigInt(GPA)), HvStatus.InvalidParameter, why);
    }
    assert.equal(r.posted.length, 0, 'nothing reached the handler');
  });

  test('no handler, a throwing handler, a handler returning garbage', () => {
    postInput(GPA, { connectionId: 1, messageType: 1, payloadSize: 8 });
    const none = rig({ post: null });
    assert.equal(status(none.hv.hypercall(0, POST, BigInt(GPA), 0n)), HvStatus.InvalidConnectionId);
    const later = rig({ post: null });
    later.hv.setPostMessageHandler(() => 0);
    assert.equal(status(later.hv.hypercall(0, POST, BigInt(GPA), 0n)), HvStatus.Success, 'installed later');
    later.hv.setPostMessageHandler(null);
    assert.equal(status(later.hv.hypercall(0, POST, BigInt(GPA), 0n)), HvStatus.InvalidConnectionId, 'removed again');
    const throwing = rig({ post: () => { throw new Error('server broke'); } });
    assert.equal(status(throwing.hv.hypercall(0, POST, BigInt(GPA), 0n)), HvStatus.InsufficientBuffers);
    assert.ok(throwing.logs.some((l) => l.includes('server broke')));
    const garbage = rig({ post: () => Number.NaN });
    assert.equal(status(garbage.hv.hypercall(0, POST, BigInt(GPA), 0n)), HvStatus.InsufficientBuffers);
  });
});

describe('HvSignalEvent and other codes', () => {
  test('fast: connection id from the register', () => {
    const r = rig();
    assert.equal(status(r.hv.hypercall(0, SIGNAL_FAST, 7n, 0n)), HvStatus.Success);
    assert.equal(status(r.hv.hypercall(0, SIGNAL_FAST, 8n, 0n)), HvStatus.InvalidConnectionId);
    assert.equal(status(r.hv.hypercall(0, SIGNAL_FAST, 7n | (3n << 32n), 0n)), HvStatus.Success, 'flag number ignored');
    assert.equal(status(r.hv.hypercall(0, SIGNAL_FAST, 7n | (1n << 24n), 0n)), HvStatus.InvalidHypercallInput, 'reserved id bits');
    assert.equal(status(r.hv.hypercall(0, SIGNAL_FAST, 7n | (1n << 48n), 0n)), HvStatus.InvalidHypercallInput, 'reserved high bits');
    assert.equal(status(r.hv.hypercall(0, SIGNAL_FAST | (1n << 32n), 7n, 0n)), HvStatus.InvalidHypercallInput, 'rep count');
    assert.deepEqual(r.signalled, [7, 8, 7]);
    assert.equal(r.hv.unmatchedSignal(1, 7), HvStatus.Success, 'the SIGNAL_PORT exit path');
    assert.equal(r.hv.unmatchedSignal(1, 9), HvStatus.InvalidConnectionId);
    assert.equal(r.hv.unmatchedSignal(1, 0xff000007), HvStatus.InvalidHypercallInput);
  });

  test('slow: connection id from guest memory', () => {
    const r = rig();
    const gpa = 6 * PAGE_SIZE + 64;
    memory.view.setBigUint64(gpa, 7n, true);
    assert.equal(status(r.hv.hypercall(0, SIGNAL_SLOW, BigInt(gpa), 0n)), HvStatus.Success);
    memory.view.setBigUint64(gpa, 11n, true);
    assert.equal(status(r.hv.hypercall(0, SIGNAL_SLOW, BigInt(gpa), 0n)), HvStatus.InvalidConnectionId);
    assert.equal(status(r.hv.hypercall(0, SIGNAL_SLOW, BigInt(gpa + 2), 0n)), HvStatus.InvalidAlignment);
    assert.equal(status(r.hv.hypercall(0, SIGNAL_SLOW, BigInt(RAM_PAGES * PAGE_SIZE), 0n)), HvStatus.InvalidParameter);
    assert.deepEqual(r.signalled, [7, 11]);
    const throwing = rig({ signal: () => { throw new Error('table gone'); } });
    assert.equal(status(throwing.hv.hypercall(0, SIGNAL_FAST, 1n, 0n)), HvStatus.InsufficientBuffers);
    assert.ok(throwing.logs.some((l) => l.includes('table gone')));
  });

  test('every other code is INVALID_HYPERCALL_CODE; a bad VP is INVALID_PARAMETER', () => {
    const r = rig();
    for (const code of [0x0000n, 0x0002n, 0x0003n, 0x0046n, 0x005bn, 0x005en, 0x8001n, 0xffffn, 0x10046n]) {
      assert.equal(status(r.hv.hypercall(0, code, 0n, 0n)), HvStatus.InvalidHypercallCode, code.toString(16));
    }
    assert.equal(status(r.hv.hypercall(5, SIGNAL_FAST, 7n, 0n)), HvStatus.InvalidParameter);
  });

  test('property: random control words, GPAs and input blocks never throw and get documented statuses', () => {
    const documented = new Set<number>([
      HvStatus.Success, HvStatus.InvalidHypercallCode, HvStatus.InvalidHypercallInput, HvStatus.InvalidAlignment,
      HvStatus.InvalidParameter, HvStatus.InvalidConnectionId, HvStatus.InsufficientBuffers,
    ]);
    const r = rig();
    const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
    const interesting = fc.oneof(
      u64,
      fc.constantFrom(POST, SIGNAL_FAST, SIGNAL_SLOW, POST | (1n << 16n)),
      fc.tuple(fc.constantFrom(POST, SIGNAL_SLOW, SIGNAL_FAST), fc.nat(63)).map(([c, bit]) => c | (1n << BigInt(bit))),
    );
    const u32 = fc.nat({ max: 0xffffffff });
    // Input blocks that are often nearly valid, so the deeper checks run too.
    const blockArb = fc
      .record({
        connectionId: u32,
        messageType: fc.oneof(fc.constantFrom(0, 1, 2, 0x80000000, 0x80000010), u32),
        payloadSize: fc.oneof(fc.nat(240), fc.constantFrom(241, 255, 256), u32),
        rest: fc.uint8Array({ minLength: 240, maxLength: 240 }),
      })
      .map((b) => {
        const bytes = new Uint8Array(256);
        const v = new DataView(bytes.buffer);
        v.setUint32(0, b.connectionId, true);
        v.setUint32(8, b.messageType, true);
        v.setUint32(12, b.payloadSize, true);
        bytes.set(b.rest, 16);
        return bytes;
      });
    const gpa = fc.oneof(u64, fc.nat(RAM_PAGES * PAGE_SIZE + 512).map(BigInt), fc.nat(RAM_PAGES * 512).map((q) => BigInt(q * 8)));
    fc.assert(
      fc.property(interesting, gpa, u64, blockArb, fc.nat(RAM_PAGES * 512 - 32), fc.boolean(), fc.integer({ min: -1, max: 2 }), (control, gpaInput, output, block, at, inputIsBlock, vp) => {
        memory.bytes.set(block, at * 8);
        const input = inputIsBlock ? BigInt(at * 8) : gpaInput;
        const before = r.posted.length;
        const result = r.hv.hypercall(vp, control, input, output);
        assert.equal(result >> 16n, 0n);
        assert.ok(documented.has(Number(result)), `status ${result}`);
        for (const m of r.posted.slice(before)) {
          assert.ok(m.payload.length <= 240);
          assert.ok(m.connectionId >= 0 && m.connectionId <= 0xffffff);
          assert.ok(m.messageType !== 0 && m.messageType < 0x80000000);
        }
      }),
      { numRuns: 2000 },
    );
    assert.ok(r.posted.length > 0, 'some random posts were valid, so the handler path ran too');
  });

  test('property: random MSR traffic never throws', () => {
    const r = rig();
    fc.assert(
      fc.property(fc.integer({ min: 0x40000000 - 4, max: 0x40000204 }), fc.bigInt({ min: -(1n << 64n), max: (1n << 65n) }), fc.integer({ min: -1, max: 2 }), (msr, value, vp) => {
        const ok = r.hv.writeMsr(vp, msr, value);
        const read = r.hv.readMsr(vp, msr);
        assert.equal(typeof ok, 'boolean');
        if (read !== undefined) assert.ok(read >= 0n && read < 1n << 64n);
      }),
      { numRuns: 3000 },
    );
  });
});
