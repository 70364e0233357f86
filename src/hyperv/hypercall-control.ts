// The hypercall control word the guest passes in RCX and the result it gets back in RAX
// (TLFS "hypercall inputs"; Linux include/asm-generic/hyperv-tlfs.h HV_HYPERCALL_*).

export const HypercallCode = {
  PostMessage: 0x005c,
  SignalEvent: 0x005d,
} as const;

const FAST_BIT = 1n << 16n;
/** Bits 27-31, 44-47 and 60-63. (Bit 31 is "nested" to a nested hypervisor; to us it is reserved.) */
const RESERVED_MASK = (0x1fn << 27n) | (0xfn << 44n) | (0xfn << 60n);

/** The control word of the fast HvSignalEvent, the one the hypercall page keeps in the kernel. */
export const FAST_SIGNAL_EVENT_CONTROL = BigInt(HypercallCode.SignalEvent) | FAST_BIT;

export interface HypercallControl {
  /** Call code, bits 0-15. */
  code: number;
  /** Bit 16: inputs are in registers, not in a guest page. */
  fast: boolean;
  /** Bits 17-26: size of the variable header, in 8-byte units. */
  variableHeaderQwords: number;
  /** Bits 32-43: number of repetitions of a rep hypercall (0 for a simple one). */
  repCount: number;
  /** Bits 48-59: first repetition to process (non-zero when a rep call is resumed). */
  repStart: number;
  /** Any of the reserved bits is set: the call must fail with INVALID_HYPERCALL_INPUT. */
  reservedBitsSet: boolean;
}

export function decodeHypercallControl(control: bigint): HypercallControl {
  const c = BigInt.asUintN(64, control);
  return {
    code: Number(c & 0xffffn),
    fast: (c & FAST_BIT) !== 0n,
    variableHeaderQwords: Number((c >> 17n) & 0x3ffn),
    repCount: Number((c >> 32n) & 0xfffn),
    repStart: Number((c >> 48n) & 0xfffn),
    reservedBitsSet: (c & RESERVED_MASK) !== 0n,
  };
}

/** Encodes a control word; the inverse of decodeHypercallControl for in-range fields. */
export function encodeHypercallControl(c: { code: number; fast?: boolean; variableHeaderQwords?: number; repCount?: number; repStart?: number }): bigint {
  return (
    BigInt(c.code & 0xffff) |
    (c.fast ? FAST_BIT : 0n) |
    (BigInt((c.variableHeaderQwords ?? 0) & 0x3ff) << 17n) |
    (BigInt((c.repCount ?? 0) & 0xfff) << 32n) |
    (BigInt((c.repStart ?? 0) & 0xfff) << 48n)
  );
}

/** RAX after a hypercall: status in bits 0-15, reps completed in bits 32-43, the rest zero. */
export function hypercallResult(status: number, repsCompleted = 0): bigint {
  return BigInt(status & 0xffff) | (BigInt(repsCompleted & 0xfff) << 32n);
}

/** The status half of a hypercall result. */
export function resultStatus(result: bigint): number {
  return Number(BigInt.asUintN(64, result) & 0xffffn);
}
