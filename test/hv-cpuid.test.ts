// The CPUID a vCPU gets (spec 1.1-1.3, 1.5): the exact Hyper-V words Linux's detector and
// platform code read, no KVM signature anywhere (KVM would win detection and VMBus would
// never load), per-vCPU APIC ids in leaves 1, 0xB and 0x1F, invariant TSC, the input table
// untouched, and the same invariants over random "supported" tables (property test).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { HV_VENDOR, buildGuestCpuid, hypervCpuidLeaves } from '../src/hyperv/hv-cpuid.js';
import type { CpuidEntry } from '../src/x86/cpu-state.js';

const KVM_SIG = { ebx: 0x4b4d564b, ecx: 0x564b4d56, edx: 0x0000004d }; // "KVMKVMKVM\0\0\0"

const e = (fn: number, eax = 0, ebx = 0, ecx = 0, edx = 0, index = 0, flags = 0): CpuidEntry => ({ function: fn, index, flags, eax, ebx, ecx, edx });

/** A table shaped like KVM_GET_SUPPORTED_CPUID's on an Intel host. */
function kvmLikeTable(): CpuidEntry[] {
  return [
    e(0, 0x1f, 0x756e6547, 0x6c65746e, 0x49656e69),
    e(1, 0x000906ea, 0x00000800 | 0x07000000 | 0x00100000, 0x7ffaf3bf & ~(1 << 31), 0xbfebfbff),
    e(0xb, 1, 2, 0x100, 0, 0, 1),
    e(0xb, 5, 12, 0x201, 0, 1, 1),
    e(0xb, 0, 0, 2, 0, 2, 1),
    e(0x1f, 1, 2, 0x100, 0, 0, 1),
    e(0x1f, 5, 12, 0x201, 0, 1, 1),
    e(0x40000000, 0x40000001, KVM_SIG.ebx, KVM_SIG.ecx, KVM_SIG.edx),
    e(0x40000001, 0x01007afb, 0, 0, 0),
    e(0x40000100, 0x40000101, KVM_SIG.ebx, KVM_SIG.ecx, KVM_SIG.edx),
    e(0x80000000, 0x80000008, 0, 0, 0),
    e(0x80000001, 0, 0, 0x121 | (1 << 2), 0x2c100800),
    e(0x80000007, 0, 0, 0, 0),
    e(0x80000008, 0x3027, 0, 0, 0),
  ];
}

const find = (t: CpuidEntry[], fn: number, index = 0) => t.filter((x) => x.function === fn && x.index === index);
const one = (t: CpuidEntry[], fn: number, index = 0) => {
  const m = find(t, fn, index);
  assert.equal(m.length, 1, `exactly one entry for leaf ${fn.toString(16)}.${index}`);
  return m[0]!;
};

function hasKvmSignature(t: CpuidEntry[]): boolean {
  return t.some((x) => x.ebx === KVM_SIG.ebx && x.ecx === KVM_SIG.ecx && x.edx === KVM_SIG.edx);
}

describe('hypervCpuidLeaves', () => {
  test('exact words (spec 1.5 with reference TSC, crash MSRs and nested leaf)', () => {
    const leaves = hypervCpuidLeaves({ vpCount: 3 });
    const words = (fn: number) => {
      const x = one(leaves, fn);
      return [x.eax, x.ebx, x.ecx, x.edx];
    };
    assert.deepEqual(words(0x40000000), [0x4000000a, 0x7263694d, 0x666f736f, 0x76482074]);
    assert.equal(Buffer.from(Uint32Array.from(words(0x40000000).slice(1)).buffer).toString('latin1'), 'Microsoft Hv');
    assert.deepEqual(words(0x40000001), [0, 0, 0, 0], 'no "Hv#1": KVM in-kernel Hyper-V emulation stays off');
    assert.deepEqual(words(0x40000002), [1, 0x000a0000, 0, 0]);
    // EAX bits 1, 2, 5, 6, 9, 11, 15; EBX bits 4, 5; EDX bits 8, 10.
    assert.deepEqual(words(0x40000003), [0x8a66, 0x30, 0, 0x500]);
    assert.deepEqual(words(0x40000004), [0x200, 0xffffffff, 0, 0]);
    assert.deepEqual(words(0x40000005), [3, 3, 0, 0]);
    assert.deepEqual(words(0x40000006), [0, 0, 0, 0]);
    assert.deepEqual(words(0x4000000a), [0, 0, 0, 0]);
    assert.deepEqual(words(0x40000081), [0, 0, 0, 0], 'never "VS#1"');
    assert.deepEqual(words(0x40000082), [0, 0, 0, 0]);
    for (const x of leaves) {
      assert.equal(x.index, 0);
      assert.equal(x.flags, 0);
    }
  });

  test('the dangerous bits are clear', () => {
    const f = one(hypervCpuidLeaves({ vpCount: 1 }), 0x40000003);
    for (const bit of [1, 12, 20, 22]) assert.equal((f.ebx >>> bit) & 1, 0, `EBX bit ${bit}`);
    const h = one(hypervCpuidLeaves({ vpCount: 1 }), 0x40000004);
    for (const bit of [2, 3, 10, 11, 12, 14]) assert.equal((h.eax >>> bit) & 1, 0, `hint bit ${bit}`);
    assert.equal((one(hypervCpuidLeaves({ vpCount: 1 }), 0x40000003).edx >>> 10) & 1, 1, 'crash MSRs advertised');
  });

  test('rejects a bad vCPU count', () => {
    assert.throws(() => hypervCpuidLeaves({ vpCount: 0 }), RangeError);
    assert.throws(() => hypervCpuidLeaves({ vpCount: 1.5 }), RangeError);
  });
});

describe('buildGuestCpuid', () => {
  test('drops every KVM hypervisor leaf and adds the Hyper-V ones', () => {
    const out = buildGuestCpuid(kvmLikeTable(), { vpIndex: 0, vpCount: 2 });
    assert.equal(hasKvmSignature(out), false);
    assert.equal(find(out, 0x40000100).length, 0);
    const hv = out.filter((x) => x.function >= 0x40000000 && x.function <= 0x4fffffff);
    assert.deepEqual(hv, hypervCpuidLeaves({ vpCount: 2 }));
    const base = one(out, 0x40000000);
    assert.deepEqual([base.ebx, base.ecx, base.edx], [HV_VENDOR.ebx, HV_VENDOR.ecx, HV_VENDOR.edx]);
  });

  test('leaf 1: hypervisor bit, APIC id, logical count, VMX off, other bits kept', () => {
    const input = kvmLikeTable();
    const inLeaf1 = one(input, 1);
    for (const [vpIndex, vpCount, logical] of [[0, 1, 1], [1, 2, 2], [2, 3, 4], [4, 5, 8]] as const) {
      const l1 = one(buildGuestCpuid(input, { vpIndex, vpCount }), 1);
      assert.equal(l1.ecx >>> 31, 1, 'hypervisor present');
      assert.equal(l1.ebx >>> 24, vpIndex, 'initial APIC id');
      assert.equal((l1.ebx >>> 16) & 0xff, logical, 'addressable logical processors');
      assert.equal(l1.ebx & 0xffff, inLeaf1.ebx & 0xffff, 'CLFLUSH size and brand kept');
      assert.equal((l1.ecx >>> 5) & 1, 0, 'VMX cleared');
      assert.equal((l1.edx >>> 28) & 1, vpCount > 1 ? 1 : 0, 'HTT iff more than one logical processor');
      assert.equal(l1.ecx & ~((1 << 31) | (1 << 5)), inLeaf1.ecx & ~((1 << 31) | (1 << 5)), 'other ECX features kept');
      assert.equal(l1.eax, inLeaf1.eax);
    }
  });

  test('leaves 0xB and 0x1F: flat topology, x2APIC id in every subleaf', () => {
    for (const vpCount of [1, 2, 3, 8]) {
      for (let vpIndex = 0; vpIndex < vpCount; vpIndex++) {
        const out = buildGuestCpuid(kvmLikeTable(), { vpIndex, vpCount });
        for (const fn of [0xb, 0x1f]) {
          const subs = out.filter((x) => x.function === fn).sort((a, b) => a.index - b.index);
          assert.deepEqual(subs.map((x) => x.index), [0, 1, 2]);
          for (const s of subs) {
            assert.equal(s.edx, vpIndex, 'x2APIC id');
            assert.equal(s.flags, 1, 'subleaf index significant');
            assert.equal(s.ecx & 0xff, s.index);
          }
          assert.deepEqual([subs[0]!.eax, subs[0]!.ebx, subs[0]!.ecx >>> 8], [0, 1, 1], 'SMT level: one thread');
          assert.equal(subs[1]!.ebx, vpCount, 'core level: vpCount processors');
          assert.equal(subs[1]!.ecx >>> 8, 2);
          assert.ok(1 << subs[1]!.eax >= vpCount, 'core shift covers every APIC id');
          assert.ok(subs[1]!.eax === 0 || 1 << (subs[1]!.eax - 1) < vpCount, 'core shift is the smallest that does');
          assert.equal(subs[2]!.ecx >>> 8, 0, 'end of levels');
        }
      }
    }
  });

  test('invariant TSC set; SVM cleared', () => {
    const out = buildGuestCpuid(kvmLikeTable(), { vpIndex: 0, vpCount: 1 });
    assert.equal((one(out, 0x80000007).edx >>> 8) & 1, 1);
    assert.equal((one(out, 0x80000001).ecx >>> 2) & 1, 0);
    assert.equal(one(out, 0x80000001).ecx, 0x121);
  });

  test('invariant TSC leaf added when KVM gave none, raising the extended max leaf', () => {
    const table = kvmLikeTable().filter((x) => x.function !== 0x80000007 && x.function !== 0x80000008);
    table.find((x) => x.function === 0x80000000)!.eax = 0x80000001;
    const out = buildGuestCpuid(table, { vpIndex: 0, vpCount: 1 });
    assert.equal(one(out, 0x80000007).edx, 1 << 8);
    assert.equal(one(out, 0x80000000).eax, 0x80000007);
  });

  test('per-vCPU tables differ only in APIC ids', () => {
    const a = buildGuestCpuid(kvmLikeTable(), { vpIndex: 0, vpCount: 4 });
    const b = buildGuestCpuid(kvmLikeTable(), { vpIndex: 3, vpCount: 4 });
    assert.equal(a.length, b.length);
    for (let i = 0; i < a.length; i++) {
      const x = a[i]!;
      const y = b[i]!;
      if (x.function === 1) assert.equal(y.ebx - x.ebx, 3 << 24);
      else if (x.function === 0xb || x.function === 0x1f) assert.deepEqual({ ...y, edx: 0 }, { ...x, edx: 0 });
      else assert.deepEqual(y, x);
    }
  });

  test('the input table is not mutated', () => {
    const input = kvmLikeTable();
    const copy = structuredClone(input);
    const out = buildGuestCpuid(input, { vpIndex: 1, vpCount: 2 });
    assert.deepEqual(input, copy);
    out[0]!.eax = 0xdead; // and the output shares no objects with it
    assert.deepEqual(input, copy);
  });

  test('rejects a vpIndex outside the partition', () => {
    assert.throws(() => buildGuestCpuid(kvmLikeTable(), { vpIndex: 2, vpCount: 2 }), RangeError);
    assert.throws(() => buildGuestCpuid(kvmLikeTable(), { vpIndex: -1, vpCount: 2 }), RangeError);
  });

  test('property: any supported table yields a Hyper-V table with the right identity', () => {
    const u32 = fc.nat({ max: 0xffffffff });
    const fnArb = fc.oneof(
      fc.integer({ min: 0, max: 0x20 }),
      fc.integer({ min: 0x40000000, max: 0x400001ff }),
      fc.integer({ min: 0x40000000, max: 0x4fffffff }),
      fc.integer({ min: 0x80000000, max: 0x80000020 }),
      u32,
    );
    const entryArb = fc.record({ function: fnArb, index: fc.integer({ min: 0, max: 4 }), flags: fc.integer({ min: 0, max: 7 }), eax: u32, ebx: u32, ecx: u32, edx: u32 }).map((r) => ({ ...r })); // plain prototype, as structuredClone gives
    const kvmSigArb = fc.integer({ min: 0, max: 0xff }).map((k) => e(0x40000000 + k * 0x100, 0x40000001 + k * 0x100, KVM_SIG.ebx, KVM_SIG.ecx, KVM_SIG.edx));
    const tableArb = fc.array(fc.oneof({ weight: 4, arbitrary: entryArb }, { weight: 1, arbitrary: kvmSigArb }), { maxLength: 40 });
    const vpArb = fc.integer({ min: 1, max: 64 }).chain((vpCount) => fc.record({ vpCount: fc.constant(vpCount), vpIndex: fc.integer({ min: 0, max: vpCount - 1 }) }));
    fc.assert(
      fc.property(tableArb, vpArb, (table, { vpCount, vpIndex }) => {
        const copy = structuredClone(table);
        const out = buildGuestCpuid(table, { vpIndex, vpCount });
        assert.deepEqual(table, copy, 'input unchanged');
        assert.equal(hasKvmSignature(out), false);
        const hv = out.filter((x) => x.function >= 0x40000000 && x.function <= 0x4fffffff);
        assert.deepEqual(hv, hypervCpuidLeaves({ vpCount }), 'only our hypervisor leaves');
        for (const x of out) {
          for (const r of [x.eax, x.ebx, x.ecx, x.edx]) assert.ok(Number.isInteger(r) && r >= 0 && r <= 0xffffffff, 'u32 registers');
        }
        for (const l1 of out.filter((x) => x.function === 1)) {
          assert.equal(l1.ecx >>> 31, 1);
          assert.equal(l1.ebx >>> 24, vpIndex & 0xff);
        }
        for (const t of out.filter((x) => x.function === 0xb || x.function === 0x1f)) assert.equal(t.edx, vpIndex);
        const inv = out.filter((x) => x.function === 0x80000007);
        assert.ok(inv.length >= 1 && inv.every((x) => ((x.edx >>> 8) & 1) === 1), 'invariant TSC');
        const keys = out.filter((x) => x.function === 0xb || x.function === 0x1f).map((x) => `${x.function}.${x.index}`);
        assert.equal(new Set(keys).size, keys.length, 'no duplicate topology subleaves');
      }),
      { numRuns: 300 },
    );
  });
});
