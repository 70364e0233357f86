// Byte layouts of the structs the KVM ioctls take (x86-64, little-endian), encoded and
// decoded with DataViews. Encoders take an optional output buffer so the vCPU loop can
// reuse one per struct; padding and reserved fields are always written as zero, because
// KVM rejects several structs (kvm_irqfd, kvm_ioeventfd, kvm_enable_cap) whose pad is not.
// Offsets follow include/uapi/linux/kvm.h and arch/x86/include/uapi/asm/kvm.h.
import type { CpuidEntry, DescriptorTable, GeneralRegisters, Segment, SpecialRegisters } from '../x86/cpu-state.js';
import { GENERAL_REGISTER_NAMES } from '../x86/cpu-state.js';
import {
  CPUID2_HEADER_SIZE, CPUID_ENTRY2_SIZE, ENABLE_CAP_SIZE, FPU_SIZE, IOEVENTFD_SIZE, IRQ_LEVEL_SIZE,
  IRQ_ROUTING_ENTRY_SIZE, IRQ_ROUTING_HEADER_SIZE, IRQFD_SIZE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
  KVM_MSR_FILTER_MAX_BITMAP_SIZE, KVM_MSR_FILTER_MAX_RANGES, MSI_SIZE, MSR_ENTRY_SIZE, MSR_FILTER_RANGE_SIZE,
  MSR_FILTER_SIZE, MSRS_HEADER_SIZE, PIT_CONFIG_SIZE, REGS_SIZE, SEGMENT_SIZE, SREGS_SIZE,
  USERSPACE_MEMORY_REGION_SIZE,
} from './kvm-constants.js';

export class KvmStructError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KvmStructError';
  }
}

function dataView(buf: Uint8Array): DataView {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
}

function output(size: number, out: Uint8Array | undefined): Uint8Array {
  if (out === undefined) return new Uint8Array(size);
  if (out.byteLength < size) throw new KvmStructError(`buffer of ${out.byteLength} bytes is too small for a ${size}-byte struct`);
  out.fill(0, 0, size);
  return out;
}

function checkU32(what: string, value: number): number {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) throw new KvmStructError(`${what} must be a 32-bit unsigned integer, got ${value}`);
  return value;
}

function checkU64(what: string, value: bigint): bigint {
  if (value < 0n || value > 0xffffffffffffffffn) throw new KvmStructError(`${what} must be a 64-bit unsigned integer, got ${value}`);
  return value;
}

// ---------------------------------------------------------------- kvm_regs (144 bytes)

/** kvm_regs: 18 u64 in GENERAL_REGISTER_NAMES order (rax .. r15, rip, rflags). */
export function encodeRegs(regs: GeneralRegisters, out?: Uint8Array): Uint8Array {
  const buf = output(REGS_SIZE, out);
  const v = dataView(buf);
  for (let i = 0; i < GENERAL_REGISTER_NAMES.length; i++) {
    const name = GENERAL_REGISTER_NAMES[i]!;
    v.setBigUint64(i * 8, checkU64(name, regs[name]), true);
  }
  return buf;
}

export function decodeRegs(buf: Uint8Array, offset = 0): GeneralRegisters {
  const v = dataView(buf);
  const regs = {} as GeneralRegisters;
  for (let i = 0; i < GENERAL_REGISTER_NAMES.length; i++) regs[GENERAL_REGISTER_NAMES[i]!] = v.getBigUint64(offset + i * 8, true);
  return regs;
}

// ---------------------------------------------------------------- kvm_sregs (312 bytes)

const SEGMENT_ORDER = ['cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldt'] as const;
const SREGS_GDT = 192;
const SREGS_IDT = 208;
const SREGS_CONTROL = 224; // cr0, cr2, cr3, cr4, cr8, efer, apic_base: 7 u64
const SREGS_INTERRUPT_BITMAP = 280;
const CONTROL_ORDER = ['cr0', 'cr2', 'cr3', 'cr4', 'cr8', 'efer', 'apicBase'] as const;

function encodeSegment(v: DataView, at: number, s: Segment): void {
  v.setBigUint64(at, checkU64('segment base', s.base), true);
  v.setUint32(at + 8, checkU32('segment limit', s.limit), true);
  v.setUint16(at + 12, s.selector & 0xffff, true);
  v.setUint8(at + 14, s.type & 0xf);
  v.setUint8(at + 15, s.present ? 1 : 0);
  v.setUint8(at + 16, s.dpl & 3);
  v.setUint8(at + 17, s.db ? 1 : 0);
  v.setUint8(at + 18, s.s ? 1 : 0);
  v.setUint8(at + 19, s.l ? 1 : 0);
  v.setUint8(at + 20, s.g ? 1 : 0);
  v.setUint8(at + 21, s.avl ? 1 : 0);
  v.setUint8(at + 22, s.unusable ? 1 : 0);
  v.setUint8(at + 23, 0);
}

function decodeSegment(v: DataView, at: number): Segment {
  return {
    base: v.getBigUint64(at, true),
    limit: v.getUint32(at + 8, true),
    selector: v.getUint16(at + 12, true),
    type: v.getUint8(at + 14),
    present: v.getUint8(at + 15) !== 0,
    dpl: v.getUint8(at + 16),
    db: v.getUint8(at + 17) !== 0,
    s: v.getUint8(at + 18) !== 0,
    l: v.getUint8(at + 19) !== 0,
    g: v.getUint8(at + 20) !== 0,
    avl: v.getUint8(at + 21) !== 0,
    unusable: v.getUint8(at + 22) !== 0,
  };
}

function encodeDtable(v: DataView, at: number, t: DescriptorTable): void {
  v.setBigUint64(at, checkU64('descriptor table base', t.base), true);
  v.setUint16(at + 8, t.limit & 0xffff, true);
  // 3 u16 of padding stay zero
}

function decodeDtable(v: DataView, at: number): DescriptorTable {
  return { base: v.getBigUint64(at, true), limit: v.getUint16(at + 8, true) };
}

/**
 * kvm_sregs. interrupt_bitmap (a pending external interrupt to inject) is always zero:
 * enlighten injects interrupts through the in-kernel irqchip, never through SET_SREGS.
 */
export function encodeSregs(s: SpecialRegisters, out?: Uint8Array): Uint8Array {
  const buf = output(SREGS_SIZE, out);
  const v = dataView(buf);
  SEGMENT_ORDER.forEach((name, i) => encodeSegment(v, i * SEGMENT_SIZE, s[name]));
  encodeDtable(v, SREGS_GDT, s.gdt);
  encodeDtable(v, SREGS_IDT, s.idt);
  CONTROL_ORDER.forEach((name, i) => v.setBigUint64(SREGS_CONTROL + i * 8, checkU64(name, s[name]), true));
  for (let i = 0; i < 4; i++) v.setBigUint64(SREGS_INTERRUPT_BITMAP + i * 8, 0n, true);
  return buf;
}

export function decodeSregs(buf: Uint8Array, offset = 0): SpecialRegisters {
  const v = dataView(buf.subarray(offset, offset + SREGS_SIZE));
  const segments = Object.fromEntries(SEGMENT_ORDER.map((name, i) => [name, decodeSegment(v, i * SEGMENT_SIZE)]));
  const control = Object.fromEntries(CONTROL_ORDER.map((name, i) => [name, v.getBigUint64(SREGS_CONTROL + i * 8, true)]));
  return {
    ...(segments as Record<(typeof SEGMENT_ORDER)[number], Segment>),
    gdt: decodeDtable(v, SREGS_GDT),
    idt: decodeDtable(v, SREGS_IDT),
    ...(control as Record<(typeof CONTROL_ORDER)[number], bigint>),
  };
}

// ---------------------------------------------------------------- kvm_cpuid2 / kvm_cpuid_entry2

export function cpuid2Size(entryCount: number): number {
  return CPUID2_HEADER_SIZE + entryCount * CPUID_ENTRY2_SIZE;
}

/** kvm_cpuid2 with its entries (KVM_SET_CPUID2). */
export function encodeCpuid2(entries: readonly CpuidEntry[]): Uint8Array {
  const buf = new Uint8Array(cpuid2Size(entries.length));
  const v = dataView(buf);
  v.setUint32(0, entries.length, true);
  entries.forEach((e, i) => {
    const at = CPUID2_HEADER_SIZE + i * CPUID_ENTRY2_SIZE;
    v.setUint32(at, checkU32('cpuid function', e.function), true);
    v.setUint32(at + 4, checkU32('cpuid index', e.index), true);
    v.setUint32(at + 8, checkU32('cpuid flags', e.flags), true);
    v.setUint32(at + 12, checkU32('cpuid eax', e.eax), true);
    v.setUint32(at + 16, checkU32('cpuid ebx', e.ebx), true);
    v.setUint32(at + 20, checkU32('cpuid ecx', e.ecx), true);
    v.setUint32(at + 24, checkU32('cpuid edx', e.edx), true);
  });
  return buf;
}

/** An empty kvm_cpuid2 with room for `capacity` entries (KVM_GET_SUPPORTED_CPUID fills it). */
export function cpuid2Buffer(capacity: number): Uint8Array {
  const buf = new Uint8Array(cpuid2Size(capacity));
  dataView(buf).setUint32(0, capacity, true);
  return buf;
}

export function decodeCpuid2(buf: Uint8Array): CpuidEntry[] {
  const v = dataView(buf);
  const count = v.getUint32(0, true);
  if (cpuid2Size(count) > buf.byteLength) throw new KvmStructError(`kvm_cpuid2 claims ${count} entries but the buffer holds ${Math.floor((buf.byteLength - CPUID2_HEADER_SIZE) / CPUID_ENTRY2_SIZE)}`);
  const entries: CpuidEntry[] = [];
  for (let i = 0; i < count; i++) {
    const at = CPUID2_HEADER_SIZE + i * CPUID_ENTRY2_SIZE;
    entries.push({
      function: v.getUint32(at, true),
      index: v.getUint32(at + 4, true),
      flags: v.getUint32(at + 8, true),
      eax: v.getUint32(at + 12, true),
      ebx: v.getUint32(at + 16, true),
      ecx: v.getUint32(at + 20, true),
      edx: v.getUint32(at + 24, true),
    });
  }
  return entries;
}

// ---------------------------------------------------------------- kvm_msrs / kvm_msr_entry

export interface MsrEntry {
  index: number;
  value: bigint;
}

export function msrsSize(count: number): number {
  return MSRS_HEADER_SIZE + count * MSR_ENTRY_SIZE;
}

/** kvm_msrs with entries (KVM_SET_MSRS; for KVM_GET_MSRS the values are ignored). */
export function encodeMsrs(entries: readonly MsrEntry[]): Uint8Array {
  const buf = new Uint8Array(msrsSize(entries.length));
  const v = dataView(buf);
  v.setUint32(0, entries.length, true);
  entries.forEach((e, i) => {
    const at = MSRS_HEADER_SIZE + i * MSR_ENTRY_SIZE;
    v.setUint32(at, checkU32('msr index', e.index), true);
    v.setBigUint64(at + 8, checkU64('msr value', e.value), true);
  });
  return buf;
}

export function decodeMsrs(buf: Uint8Array): MsrEntry[] {
  const v = dataView(buf);
  const count = v.getUint32(0, true);
  if (msrsSize(count) > buf.byteLength) throw new KvmStructError(`kvm_msrs claims ${count} entries but the buffer is ${buf.byteLength} bytes`);
  const entries: MsrEntry[] = [];
  for (let i = 0; i < count; i++) {
    const at = MSRS_HEADER_SIZE + i * MSR_ENTRY_SIZE;
    entries.push({ index: v.getUint32(at, true), value: v.getBigUint64(at + 8, true) });
  }
  return entries;
}

// ---------------------------------------------------------------- kvm_userspace_memory_region

export interface UserspaceMemoryRegion {
  slot: number;
  flags: number;
  guestPhysAddr: bigint;
  memorySize: bigint;
  userspaceAddr: bigint;
}

export function encodeUserspaceMemoryRegion(r: UserspaceMemoryRegion, out?: Uint8Array): Uint8Array {
  const buf = output(USERSPACE_MEMORY_REGION_SIZE, out);
  const v = dataView(buf);
  v.setUint32(0, checkU32('slot', r.slot), true);
  v.setUint32(4, checkU32('flags', r.flags), true);
  v.setBigUint64(8, checkU64('guest_phys_addr', r.guestPhysAddr), true);
  v.setBigUint64(16, checkU64('memory_size', r.memorySize), true);
  v.setBigUint64(24, checkU64('userspace_addr', r.userspaceAddr), true);
  return buf;
}

// ---------------------------------------------------------------- kvm_ioeventfd

export interface IoeventfdStruct {
  datamatch: bigint;
  addr: bigint;
  len: number;
  fd: number;
  flags: number;
}

export function encodeIoeventfd(e: IoeventfdStruct, out?: Uint8Array): Uint8Array {
  const buf = output(IOEVENTFD_SIZE, out);
  const v = dataView(buf);
  v.setBigUint64(0, checkU64('datamatch', e.datamatch), true);
  v.setBigUint64(8, checkU64('addr', e.addr), true);
  v.setUint32(16, checkU32('len', e.len), true);
  v.setInt32(20, e.fd, true);
  v.setUint32(24, checkU32('flags', e.flags), true);
  return buf;
}

// ---------------------------------------------------------------- kvm_irqfd

export function encodeIrqfd(e: { fd: number; gsi: number; flags: number; resampleFd?: number }, out?: Uint8Array): Uint8Array {
  const buf = output(IRQFD_SIZE, out);
  const v = dataView(buf);
  v.setUint32(0, checkU32('fd', e.fd), true);
  v.setUint32(4, checkU32('gsi', e.gsi), true);
  v.setUint32(8, checkU32('flags', e.flags), true);
  v.setUint32(12, checkU32('resamplefd', e.resampleFd ?? 0), true);
  return buf;
}

// ---------------------------------------------------------------- kvm_msi

export interface MsiMessage {
  addressLo: number;
  addressHi: number;
  data: number;
}

export function encodeMsi(m: MsiMessage, out?: Uint8Array): Uint8Array {
  const buf = output(MSI_SIZE, out);
  const v = dataView(buf);
  v.setUint32(0, checkU32('address_lo', m.addressLo), true);
  v.setUint32(4, checkU32('address_hi', m.addressHi), true);
  v.setUint32(8, checkU32('data', m.data), true);
  // flags (12) and devid (16) stay zero: no KVM_MSI_VALID_DEVID on x86.
  return buf;
}

// ---------------------------------------------------------------- kvm_irq_level

export function encodeIrqLevel(irq: number, level: boolean, out?: Uint8Array): Uint8Array {
  const buf = output(IRQ_LEVEL_SIZE, out);
  const v = dataView(buf);
  v.setUint32(0, checkU32('irq', irq), true);
  v.setUint32(4, level ? 1 : 0, true);
  return buf;
}

// ---------------------------------------------------------------- kvm_enable_cap

export function encodeEnableCap(cap: number, args: readonly bigint[] = [], flags = 0): Uint8Array {
  if (args.length > 4) throw new KvmStructError(`kvm_enable_cap takes at most 4 args, got ${args.length}`);
  const buf = new Uint8Array(ENABLE_CAP_SIZE);
  const v = dataView(buf);
  v.setUint32(0, checkU32('cap', cap), true);
  v.setUint32(4, checkU32('flags', flags), true);
  args.forEach((a, i) => v.setBigUint64(8 + i * 8, checkU64(`args[${i}]`, a), true));
  return buf;
}

// ---------------------------------------------------------------- kvm_pit_config

export function encodePitConfig(flags: number): Uint8Array {
  const buf = new Uint8Array(PIT_CONFIG_SIZE);
  dataView(buf).setUint32(0, checkU32('flags', flags), true);
  return buf;
}

// ---------------------------------------------------------------- kvm_fpu (416 bytes)

/** x87 control word after FNINIT: all exceptions masked, 64-bit precision, round to nearest. */
export const DEFAULT_FCW = 0x37f;
/** MXCSR at reset: all SSE exceptions masked, round to nearest. */
export const DEFAULT_MXCSR = 0x1f80;
const FPU_FCW = 128;
const FPU_MXCSR = 408;

/**
 * kvm_fpu in the state a CPU has after reset/FNINIT. A zero FCW would unmask every x87
 * exception, so the first floating-point instruction a guest runs would fault.
 */
export function encodeFpuDefaults(): Uint8Array {
  const buf = new Uint8Array(FPU_SIZE);
  const v = dataView(buf);
  v.setUint16(FPU_FCW, DEFAULT_FCW, true);
  v.setUint32(FPU_MXCSR, DEFAULT_MXCSR, true);
  return buf;
}

export function decodeFpuControl(buf: Uint8Array): { fcw: number; mxcsr: number } {
  const v = dataView(buf);
  return { fcw: v.getUint16(FPU_FCW, true), mxcsr: v.getUint32(FPU_MXCSR, true) };
}

// ---------------------------------------------------------------- kvm_msr_filter (392 bytes)

export interface MsrFilterRange {
  /** KVM_MSR_FILTER_READ and/or KVM_MSR_FILTER_WRITE: the accesses this range decides. */
  flags: number;
  base: number;
  nmsrs: number;
  /** One bit per MSR from `base`; 1 = allowed. */
  bitmap: Uint8Array;
}

/** Native memory the bitmaps live in while KVM reads them (the struct holds pointers). */
export interface BitmapArena {
  address: bigint;
  bytes: Uint8Array;
}

/** KVM reads BITS_TO_LONGS(nmsrs) longs per bitmap, so each is a whole number of u64. */
export function msrBitmapSize(nmsrs: number): number {
  return Math.ceil(nmsrs / 64) * 8;
}

/** The arena size that holds the largest filter KVM accepts. */
export const MSR_FILTER_ARENA_SIZE = KVM_MSR_FILTER_MAX_RANGES * KVM_MSR_FILTER_MAX_BITMAP_SIZE;

/**
 * kvm_msr_filter: the ranges' bitmaps are copied into `arena` (which the caller keeps
 * mapped until the ioctl returns) and the struct points at them there.
 */
export function encodeMsrFilter(flags: number, ranges: readonly MsrFilterRange[], arena: BitmapArena): Uint8Array {
  if (ranges.length > KVM_MSR_FILTER_MAX_RANGES) throw new KvmStructError(`an MSR filter holds at most ${KVM_MSR_FILTER_MAX_RANGES} ranges, got ${ranges.length}`);
  const buf = new Uint8Array(MSR_FILTER_SIZE);
  const v = dataView(buf);
  v.setUint32(0, checkU32('flags', flags), true);
  let arenaOffset = 0;
  ranges.forEach((r, i) => {
    checkU32('range base', r.base);
    if (!Number.isInteger(r.nmsrs) || r.nmsrs <= 0) throw new KvmStructError(`an MSR filter range needs at least one MSR, got ${r.nmsrs}`);
    const size = msrBitmapSize(r.nmsrs);
    if (size > KVM_MSR_FILTER_MAX_BITMAP_SIZE) throw new KvmStructError(`an MSR filter range covers at most ${KVM_MSR_FILTER_MAX_BITMAP_SIZE * 8} MSRs, got ${r.nmsrs}`);
    if (r.bitmap.byteLength < Math.ceil(r.nmsrs / 8)) throw new KvmStructError(`bitmap of ${r.bitmap.byteLength} bytes is too small for ${r.nmsrs} MSRs`);
    if (arenaOffset + size > arena.bytes.byteLength) throw new KvmStructError('MSR filter bitmaps do not fit the arena');
    const slot = arena.bytes.subarray(arenaOffset, arenaOffset + size);
    slot.fill(0);
    slot.set(r.bitmap.subarray(0, Math.min(size, r.bitmap.byteLength)));
    const at = 8 + i * MSR_FILTER_RANGE_SIZE;
    v.setUint32(at, checkU32('range flags', r.flags), true);
    v.setUint32(at + 4, r.nmsrs, true);
    v.setUint32(at + 8, r.base, true);
    v.setBigUint64(at + 16, arena.address + BigInt(arenaOffset), true);
    arenaOffset += size;
  });
  return buf;
}

// ---------------------------------------------------------------- kvm_irq_routing

export type GsiRoute =
  | { gsi: number; msi: MsiMessage }
  | { gsi: number; irqchip: { chip: number; pin: number } };

export function encodeIrqRouting(routes: readonly GsiRoute[]): Uint8Array {
  const buf = new Uint8Array(IRQ_ROUTING_HEADER_SIZE + routes.length * IRQ_ROUTING_ENTRY_SIZE);
  const v = dataView(buf);
  v.setUint32(0, routes.length, true);
  routes.forEach((r, i) => {
    const at = IRQ_ROUTING_HEADER_SIZE + i * IRQ_ROUTING_ENTRY_SIZE;
    v.setUint32(at, checkU32('gsi', r.gsi), true);
    if ('msi' in r) {
      v.setUint32(at + 4, KVM_IRQ_ROUTING_MSI, true);
      v.setUint32(at + 16, checkU32('address_lo', r.msi.addressLo), true);
      v.setUint32(at + 20, checkU32('address_hi', r.msi.addressHi), true);
      v.setUint32(at + 24, checkU32('data', r.msi.data), true);
    } else {
      v.setUint32(at + 4, KVM_IRQ_ROUTING_IRQCHIP, true);
      v.setUint32(at + 16, checkU32('irqchip', r.irqchip.chip), true);
      v.setUint32(at + 20, checkU32('pin', r.irqchip.pin), true);
    }
  });
  return buf;
}
