// The Hyper-V synthetic MSR numbers and register layouts (TLFS; Linux
// arch/x86/include/asm/hyperv-tlfs.h). The SynIC's own MSRs live beside its model in
// synic.ts; this file names the rest of the range the partition answers.

/** Every synthetic MSR lies in this range; the partition makes all of it exit to userspace. */
export const SYNTHETIC_MSR_FIRST = 0x40000000;
export const SYNTHETIC_MSR_LAST = 0x400001ff;

export const HvMsr = {
  GuestOsId: 0x40000000,
  Hypercall: 0x40000001,
  VpIndex: 0x40000002,
  TimeRefCount: 0x40000020,
  ReferenceTsc: 0x40000021,
  TscFrequency: 0x40000022,
  ApicFrequency: 0x40000023,
  VpAssistPage: 0x40000073,
  CrashP0: 0x40000100,
  CrashP4: 0x40000104,
  CrashCtl: 0x40000105,
  TscInvariantControl: 0x40000118,
} as const;

export const CRASH_PARAMETER_COUNT = 5;

/**
 * HYPERCALL (0x40000001): bit 0 enable, bit 1 locked (immutable until reset), bits 2-11
 * reserved, bits 12-63 the GPFN of the page the host fills with its hypercall code.
 */
export const HypercallMsr = {
  Enable: 1n << 0n,
  Locked: 1n << 1n,
  /** Bits the register keeps; the reserved bits 2-11 read back as zero. */
  Writable: ~0xffcn & 0xffff_ffff_ffff_ffffn,
} as const;

/** REFERENCE_TSC (0x40000021): bit 0 enable, bits 1-11 reserved, bits 12-63 GPFN. */
export const ReferenceTscMsr = {
  Enable: 1n << 0n,
  Writable: ~0xffen & 0xffff_ffff_ffff_ffffn,
} as const;

/** VP_ASSIST_PAGE (0x40000073): bit 0 enable, bits 12-63 GPFN. Stored, never used by the host. */
export const VpAssistMsr = {
  Enable: 1n << 0n,
} as const;

/**
 * CRASH_CTL (0x40000105). Reads report what the host supports; a guest write with Notify
 * set says "P0-P4 now describe a crash". CrashMessage (P3 = GPA and P4 = length of a page
 * holding the kernel log tail) is deliberately not offered: reading guest-chosen pages at
 * panic time buys little over the register dump.
 */
export const CrashCtl = {
  Notify: 1n << 63n,
  CrashMessage: 1n << 62n,
} as const;

/** GPFN field (bits 12-63) of the page-address MSRs. */
export function msrPageNumber(value: bigint): bigint {
  return BigInt.asUintN(64, value) >> 12n;
}
