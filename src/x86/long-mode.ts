// The state that puts a vCPU straight into 64-bit mode, as the Linux 64-bit boot protocol
// (Documentation/arch/x86/boot.rst, "64-bit BOOT PROTOCOL") requires at its entry point:
// paging on with an identity map covering the kernel, boot_params and the command line; a
// GDT with flat 4 GiB segments at __BOOT_CS (0x10, execute/read) and __BOOT_DS (0x18,
// read/write); CS = __BOOT_CS and DS/ES/SS = __BOOT_DS; interrupts off. The in-guest test
// stubs start from the same state, so it lives here rather than in the kernel loader.
import type { GuestMemory } from '../memory/guest-memory.js';
import { PAGE_SIZE } from '../memory/page.js';
import type { DescriptorTable, Segment, SpecialRegisters } from './cpu-state.js';
import { LAPIC_BASE } from './platform-ports.js';

/** Selectors the 64-bit boot protocol names (__BOOT_CS, __BOOT_DS), and the TSS after them. */
export const BOOT_CS = 0x10;
export const BOOT_DS = 0x18;
export const BOOT_TSS = 0x20;
/** null, null, code, data, and the 16-byte system descriptor of the TSS. */
export const BOOT_GDT_SIZE = BOOT_TSS + 16;
export const BOOT_GDT_LIMIT = BOOT_GDT_SIZE - 1;

/** PML4 + PDPT + four page directories of 2 MiB pages: 4 GiB identity-mapped. */
export const IDENTITY_MAP_BYTES = 4 * 2 ** 30;
export const PAGE_TABLE_PAGES = 6;

const PTE_PRESENT = 1n << 0n;
const PTE_WRITABLE = 1n << 1n;
const PTE_PAGE_SIZE = 1n << 7n;
const LARGE_PAGE = 2 * 1024 * 1024;
const ENTRIES_PER_TABLE = 512;

export const CR0_PE = 1n << 0n;
export const CR0_MP = 1n << 1n;
export const CR0_ET = 1n << 4n;
export const CR0_NE = 1n << 5n;
export const CR0_WP = 1n << 16n;
export const CR0_AM = 1n << 18n;
export const CR0_PG = 1n << 31n;
export const CR4_PAE = 1n << 5n;
export const CR4_OSFXSR = 1n << 9n;
export const CR4_OSXMMEXCPT = 1n << 10n;
export const EFER_LME = 1n << 8n;
export const EFER_LMA = 1n << 10n;
export const APIC_BASE_BSP = 1n << 8n;
export const APIC_BASE_ENABLE = 1n << 11n;

/** Segment type values (the 4-bit type field). */
const TYPE_DATA_READ_WRITE_ACCESSED = 0x3;
const TYPE_CODE_EXECUTE_READ_ACCESSED = 0xb;
const TYPE_TSS_64_BUSY = 0xb;
const TYPE_LDT = 0x2;

/** 64-bit code: L=1 and D/B=0, as long mode requires of CS. */
export const CODE64_SEGMENT: Readonly<Segment> = flat(BOOT_CS, TYPE_CODE_EXECUTE_READ_ACCESSED, { l: true, db: false });
export const DATA_SEGMENT: Readonly<Segment> = flat(BOOT_DS, TYPE_DATA_READ_WRITE_ACCESSED, { l: false, db: true });
/**
 * A busy 64-bit TSS at base 0 with the minimal limit: KVM (VMX entry checks) refuses a vCPU
 * whose TR is unusable in long mode. Nothing runs at another privilege level or on an IST
 * stack before Linux loads its own TSS, so its contents never matter.
 */
export const BOOT_TSS_SEGMENT: Readonly<Segment> = {
  base: 0n, limit: 0x67, selector: BOOT_TSS, type: TYPE_TSS_64_BUSY,
  present: true, dpl: 0, db: false, s: false, l: false, g: false, avl: false, unusable: false,
};
export const UNUSABLE_LDT: Readonly<Segment> = {
  base: 0n, limit: 0, selector: 0, type: TYPE_LDT,
  present: false, dpl: 0, db: false, s: false, l: false, g: false, avl: false, unusable: true,
};

function flat(selector: number, type: number, o: { l: boolean; db: boolean }): Segment {
  return {
    base: 0n, limit: 0xffffffff, selector, type,
    present: true, dpl: 0, db: o.db, s: true, l: o.l, g: true, avl: false, unusable: false,
  };
}

/** The 8-byte descriptor for a code or data segment, or the low half of a system one. */
export function encodeDescriptor(segment: Readonly<Segment>): bigint {
  const limit = segment.g ? segment.limit >>> 12 : segment.limit;
  const base = segment.base;
  return (
    BigInt(limit & 0xffff) |
    ((base & 0xffffffn) << 16n) |
    (BigInt(segment.type & 0xf) << 40n) |
    (segment.s ? 1n << 44n : 0n) |
    (BigInt(segment.dpl & 3) << 45n) |
    (segment.present ? 1n << 47n : 0n) |
    (BigInt((limit >>> 16) & 0xf) << 48n) |
    (segment.avl ? 1n << 52n : 0n) |
    (segment.l ? 1n << 53n : 0n) |
    (segment.db ? 1n << 54n : 0n) |
    (segment.g ? 1n << 55n : 0n) |
    (((base >> 24n) & 0xffn) << 56n)
  );
}

/** Writes PML4, PDPT and four PDs (6 pages from pml4Gpa) mapping [0, 4 GiB) onto itself with 2 MiB pages. */
export function writeIdentityPageTables(memory: GuestMemory, pml4Gpa: number): void {
  if (pml4Gpa % PAGE_SIZE !== 0) throw new RangeError(`page tables must be page-aligned, got 0x${pml4Gpa.toString(16)}`);
  const tables = memory.slice(pml4Gpa, PAGE_TABLE_PAGES * PAGE_SIZE);
  tables.fill(0);
  const view = new DataView(tables.buffer, tables.byteOffset, tables.byteLength);
  const pdptGpa = pml4Gpa + PAGE_SIZE;
  view.setBigUint64(0, BigInt(pdptGpa) | PTE_PRESENT | PTE_WRITABLE, true);
  for (let gib = 0; gib < 4; gib++) {
    const pdGpa = pml4Gpa + (2 + gib) * PAGE_SIZE;
    view.setBigUint64(PAGE_SIZE + gib * 8, BigInt(pdGpa) | PTE_PRESENT | PTE_WRITABLE, true);
    for (let i = 0; i < ENTRIES_PER_TABLE; i++) {
      const frame = BigInt((gib * ENTRIES_PER_TABLE + i) * LARGE_PAGE);
      view.setBigUint64((2 + gib) * PAGE_SIZE + i * 8, frame | PTE_PRESENT | PTE_WRITABLE | PTE_PAGE_SIZE, true);
    }
  }
}

/** Writes the boot GDT (BOOT_GDT_SIZE bytes) whose descriptors match longModeSpecialRegisters' segments. */
export function writeBootGdt(memory: GuestMemory, gdtGpa: number): void {
  const gdt = memory.slice(gdtGpa, BOOT_GDT_SIZE);
  gdt.fill(0);
  const view = new DataView(gdt.buffer, gdt.byteOffset, gdt.byteLength);
  view.setBigUint64(BOOT_CS, encodeDescriptor(CODE64_SEGMENT), true);
  view.setBigUint64(BOOT_DS, encodeDescriptor(DATA_SEGMENT), true);
  // A 64-bit system descriptor is 16 bytes; the upper 8 hold base[63:32] (zero).
  view.setBigUint64(BOOT_TSS, encodeDescriptor(BOOT_TSS_SEGMENT), true);
  view.setBigUint64(BOOT_TSS + 8, BOOT_TSS_SEGMENT.base >> 32n, true);
}

export interface LongModeOptions {
  pml4Gpa: number;
  gdtGpa: number;
  gdtLimit: number;
  /** An empty IDT by default: the boot runs with interrupts off. */
  idt?: DescriptorTable;
  /** Only the bootstrap processor starts this way; false for a stub running on an AP. */
  bsp?: boolean;
}

export function longModeSpecialRegisters(o: LongModeOptions): SpecialRegisters {
  const data = (): Segment => ({ ...DATA_SEGMENT });
  return {
    cs: { ...CODE64_SEGMENT },
    ds: data(),
    es: data(),
    fs: data(),
    gs: data(),
    ss: data(),
    tr: { ...BOOT_TSS_SEGMENT },
    ldt: { ...UNUSABLE_LDT },
    gdt: { base: BigInt(o.gdtGpa), limit: o.gdtLimit },
    idt: o.idt ? { ...o.idt } : { base: 0n, limit: 0 },
    cr0: CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG,
    cr2: 0n,
    cr3: BigInt(o.pml4Gpa),
    // OSFXSR/OSXMMEXCPT let SSE instructions run (compilers emit them freely); Linux sets its own CR4 soon after.
    cr4: CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT,
    cr8: 0n,
    // No SCE: nothing makes system calls before Linux programs its own EFER.
    efer: EFER_LME | EFER_LMA,
    apicBase: BigInt(LAPIC_BASE) | APIC_BASE_ENABLE | ((o.bsp ?? true) ? APIC_BASE_BSP : 0n),
  };
}
