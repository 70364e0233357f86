// The x86 register state enlighten sets on a virtual processor, independent of how the
// backend encodes it (kvm_regs / kvm_sregs on KVM). Boot code and tests produce these;
// the KVM layer encodes them.

/** One segment register as the hidden descriptor cache holds it (what kvm_segment carries). */
export interface Segment {
  base: bigint;
  limit: number;
  selector: number;
  /** Descriptor type (4 bits), S, DPL, P, AVL, L, D/B, G as separate fields. */
  type: number;
  present: boolean;
  dpl: number;
  db: boolean;
  s: boolean;
  l: boolean;
  g: boolean;
  avl: boolean;
  unusable: boolean;
}

export interface DescriptorTable {
  base: bigint;
  limit: number;
}

/** The control and segment state that puts a vCPU in 64-bit mode (or any other). */
export interface SpecialRegisters {
  cs: Segment;
  ds: Segment;
  es: Segment;
  fs: Segment;
  gs: Segment;
  ss: Segment;
  tr: Segment;
  ldt: Segment;
  gdt: DescriptorTable;
  idt: DescriptorTable;
  cr0: bigint;
  cr2: bigint;
  cr3: bigint;
  cr4: bigint;
  cr8: bigint;
  efer: bigint;
  apicBase: bigint;
}

export const GENERAL_REGISTER_NAMES = [
  'rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp',
  'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15',
  'rip', 'rflags',
] as const;
export type GeneralRegisterName = (typeof GENERAL_REGISTER_NAMES)[number];
/** In kvm_regs order: rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8..r15, rip, rflags. */
export type GeneralRegisters = Record<GeneralRegisterName, bigint>;

/** One CPUID leaf/subleaf answer (kvm_cpuid_entry2 without the padding). */
export interface CpuidEntry {
  function: number;
  index: number;
  /** KVM_CPUID_FLAG_SIGNIFCANT_INDEX (1) when `index` matters. */
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}
