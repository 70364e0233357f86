// The CPUID a vCPU sees: KVM's supported table with every hypervisor leaf KVM put there
// replaced by the Hyper-V leaves (spec 1.2, 1.3, 1.5), plus the per-vCPU identity (APIC
// ids) and the bits Linux's Hyper-V code expects of the CPU.
import type { CpuidEntry } from '../x86/cpu-state.js';

const HYPERVISOR_RANGE_FIRST = 0x40000000;
const HYPERVISOR_RANGE_LAST = 0x4fffffff;
const KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1;

export const HvCpuidLeaf = {
  VendorAndMaxLeaf: 0x40000000,
  Interface: 0x40000001,
  BuildInfo: 0x40000002,
  Features: 0x40000003,
  Hints: 0x40000004,
  Limits: 0x40000005,
  HardwareFeatures: 0x40000006,
  NestedFeatures: 0x4000000a,
  /** Read by Linux during x2APIC setup whatever the max leaf says (spec 1.2). */
  VsmIdentity: 0x40000081,
  VsmFeatures: 0x40000082,
} as const;

/** "Microsoft Hv" in EBX, ECX, EDX. */
export const HV_VENDOR = { ebx: 0x7263694d, ecx: 0x666f736f, edx: 0x76482074 } as const;

/** 0x40000003.EAX: which synthetic MSRs exist. */
export const HvFeature = {
  TimeRefCount: 1 << 1,
  Synic: 1 << 2,
  Hypercall: 1 << 5,
  VpIndex: 1 << 6,
  ReferenceTsc: 1 << 9,
  AccessFrequencyMsrs: 1 << 11,
  TscInvariant: 1 << 15,
} as const;

/** 0x40000003.EBX: partition privileges. */
export const HvPrivilege = {
  PostMessages: 1 << 4,
  SignalEvents: 1 << 5,
} as const;

/** 0x40000003.EDX: miscellaneous features. */
export const HvMiscFeature = {
  FrequencyMsrsAvailable: 1 << 8,
  GuestCrashMsrs: 1 << 10,
} as const;

/** 0x40000004.EAX: recommendations. */
export const HvHint = {
  /** SINTs without auto-EOI; the guest EOIs the LAPIC itself (spec 3.2: must be set with a KVM LAPIC). */
  DeprecatingAutoEoi: 1 << 9,
} as const;

// TIME_REF_COUNT is advertised only together with REFERENCE_TSC: on 6.1 the MSR alone
// would become sched_clock, one exit per call (spec 1.3).
const FEATURES_EAX =
  HvFeature.TimeRefCount | HvFeature.ReferenceTsc | HvFeature.Synic | HvFeature.Hypercall | HvFeature.VpIndex |
  HvFeature.AccessFrequencyMsrs | HvFeature.TscInvariant;
// Nothing else in EBX: bit 1 makes boot issue HvGetPartitionId (a failure is a BUG()),
// bit 12 makes the guest a root partition, bit 22 an isolated one.
const PRIVILEGES_EBX = HvPrivilege.PostMessages | HvPrivilege.SignalEvents;
const MISC_EDX = HvMiscFeature.FrequencyMsrsAvailable | HvMiscFeature.GuestCrashMsrs;

/** Reported host version 10.0 build 1 ("Hyper-V: Host Build 10.0.1.0-0-0" in the guest log). */
const BUILD_NUMBER = 1;
const VERSION_MAJOR_MINOR = (10 << 16) | 0;

function leaf(fn: number, eax = 0, ebx = 0, ecx = 0, edx = 0): CpuidEntry {
  return { function: fn, index: 0, flags: 0, eax: eax >>> 0, ebx: ebx >>> 0, ecx: ecx >>> 0, edx: edx >>> 0 };
}

function checkVpCount(vpCount: number): void {
  if (!Number.isSafeInteger(vpCount) || vpCount < 1 || vpCount > 4096) {
    throw new RangeError(`vCPU count must be an integer in 1..4096, got ${vpCount}`);
  }
}

/** The Hyper-V hypervisor leaves, the same for every vCPU of a partition. */
export function hypervCpuidLeaves(o: { vpCount: number }): CpuidEntry[] {
  checkVpCount(o.vpCount);
  return [
    leaf(HvCpuidLeaf.VendorAndMaxLeaf, HvCpuidLeaf.NestedFeatures, HV_VENDOR.ebx, HV_VENDOR.ecx, HV_VENDOR.edx),
    // EAX stays 0, not "Hv#1": that signature would switch on KVM's in-kernel Hyper-V
    // emulation, which must stay off so every synthetic MSR reaches us (spec 1.1).
    leaf(HvCpuidLeaf.Interface),
    leaf(HvCpuidLeaf.BuildInfo, BUILD_NUMBER, VERSION_MAJOR_MINOR),
    leaf(HvCpuidLeaf.Features, FEATURES_EAX, PRIVILEGES_EBX, 0, MISC_EDX),
    // EBX: spin-wait retry count, "never notify" (x86 Linux ignores it).
    leaf(HvCpuidLeaf.Hints, HvHint.DeprecatingAutoEoi, 0xffffffff),
    leaf(HvCpuidLeaf.Limits, o.vpCount, o.vpCount),
    leaf(HvCpuidLeaf.HardwareFeatures),
    leaf(HvCpuidLeaf.NestedFeatures),
    // Explicit zeros: without them KVM would answer these out-of-range leaves with the
    // highest basic leaf's data on Intel; zero can never read as "VS#1".
    leaf(HvCpuidLeaf.VsmIdentity),
    leaf(HvCpuidLeaf.VsmFeatures),
  ];
}

const LEAF1_ECX_VMX = 1 << 5;
const LEAF1_ECX_HYPERVISOR = 1 << 31;
const LEAF1_EDX_HTT = 1 << 28;
const EXT_ECX_SVM = 1 << 2;
const EXT_EDX_INVARIANT_TSC = 1 << 8;
const TOPOLOGY_LEVEL_SMT = 1;
const TOPOLOGY_LEVEL_CORE = 2;

/**
 * One vCPU's CPUID table from KVM_GET_SUPPORTED_CPUID's. The input is not modified.
 * - Every leaf KVM supplied in 0x40000000-0x4FFFFFFF is dropped: a "KVMKVMKVM" signature
 *   anywhere would make Linux pick KVM over Hyper-V (spec 1.1).
 * - Leaf 1: hypervisor bit; initial APIC id = vpIndex; logical count for vpCount; VMX cleared.
 * - Leaves 0xB / 0x1F (when KVM supplied them): a flat topology, one thread per core and
 *   vpCount cores in one package, x2APIC id = vpIndex in every subleaf. KVM copies the
 *   host's shifts, which would pair unrelated vCPUs as SMT siblings.
 * - 0x80000007.EDX bit 8 (invariant TSC): Linux trusts the TSC on Hyper-V only with it.
 * - 0x80000001.ECX SVM cleared.
 * VMX and SVM go because nested virtualisation is not part of what this partition offers:
 * a guest hypervisor on a Hyper-V-looking host would go looking for enlightened VMCS and
 * the nested Hyper-V interface. The TSC-deadline timer and x2APIC stay: KVM's in-kernel
 * LAPIC implements both.
 */
export function buildGuestCpuid(supported: readonly CpuidEntry[], o: { vpIndex: number; vpCount: number }): CpuidEntry[] {
  checkVpCount(o.vpCount);
  if (!Number.isSafeInteger(o.vpIndex) || o.vpIndex < 0 || o.vpIndex >= o.vpCount) {
    throw new RangeError(`vCPU index ${o.vpIndex} is outside 0..${o.vpCount - 1}`);
  }
  const out: CpuidEntry[] = [];
  const topologyLeaves = new Set<number>();
  for (const e of supported) {
    if (e.function >= HYPERVISOR_RANGE_FIRST && e.function <= HYPERVISOR_RANGE_LAST) continue;
    if (e.function === 0xb || e.function === 0x1f) {
      topologyLeaves.add(e.function);
      continue;
    }
    out.push({ ...e });
  }

  for (const e of out) {
    if (e.function === 1) {
      // EBX: [31:24] initial APIC id, [23:16] addressable logical processors in the package
      // (a power of two covering vpCount; meaningful with HTT), [15:0] kept (CLFLUSH size, brand).
      const logical = Math.min(255, nextPowerOfTwo(o.vpCount));
      e.ebx = ((e.ebx & 0xffff) | (logical << 16) | ((o.vpIndex & 0xff) << 24)) >>> 0;
      e.ecx = ((e.ecx | LEAF1_ECX_HYPERVISOR) & ~LEAF1_ECX_VMX) >>> 0;
      e.edx = (o.vpCount > 1 ? e.edx | LEAF1_EDX_HTT : e.edx & ~LEAF1_EDX_HTT) >>> 0;
    } else if (e.function === 0x80000001) {
      e.ecx = (e.ecx & ~EXT_ECX_SVM) >>> 0;
    } else if (e.function === 0x80000007) {
      e.edx = (e.edx | EXT_EDX_INVARIANT_TSC) >>> 0;
    }
  }

  for (const fn of [...topologyLeaves].sort((a, b) => a - b)) out.push(...flatTopology(fn, o.vpIndex, o.vpCount));

  if (!out.some((e) => e.function === 0x80000007)) {
    out.push(leaf(0x80000007, 0, 0, 0, EXT_EDX_INVARIANT_TSC));
    const extMax = out.find((e) => e.function === 0x80000000);
    if (!extMax) out.push(leaf(0x80000000, 0x80000007));
    else if (extMax.eax >>> 0 < 0x80000007) extMax.eax = 0x80000007;
  }

  out.push(...hypervCpuidLeaves({ vpCount: o.vpCount }));
  return out;
}

/** Leaf 0xB / 0x1F subleaves: SMT level (1 thread), core level (vpCount), then the end marker. */
function flatTopology(fn: number, vpIndex: number, vpCount: number): CpuidEntry[] {
  // x2APIC id bits to shift away to reach the package id: enough to number vpCount cores.
  let coreShift = 0;
  while (1 << coreShift < vpCount) coreShift++;
  const sub = (index: number, eax: number, ebx: number, levelType: number): CpuidEntry => ({
    function: fn,
    index,
    flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
    eax,
    ebx,
    ecx: ((levelType << 8) | index) >>> 0,
    edx: vpIndex >>> 0,
  });
  return [sub(0, 0, 1, TOPOLOGY_LEVEL_SMT), sub(1, coreShift, vpCount, TOPOLOGY_LEVEL_CORE), sub(2, 0, 0, 0)];
}

function nextPowerOfTwo(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}
