// A register dump for fatal guest exits (triple fault, internal error): what a kernel
// developer needs first to see where the guest died.
import type { GeneralRegisters, Segment, SpecialRegisters } from '../../x86/cpu-state.js';

const hex = (v: bigint, width = 16) => v.toString(16).padStart(width, '0');

export function formatRegisterDump(r: GeneralRegisters, s: SpecialRegisters): string {
  const seg = (name: string, x: Segment) => `${name}=${hex(BigInt(x.selector), 4)} base=${hex(x.base)} limit=${hex(BigInt(x.limit >>> 0), 8)} type=${x.type} l=${+x.l} db=${+x.db} p=${+x.present}`;
  return [
    `RIP=${hex(r.rip)} RFLAGS=${hex(r.rflags)}`,
    `RAX=${hex(r.rax)} RBX=${hex(r.rbx)} RCX=${hex(r.rcx)} RDX=${hex(r.rdx)}`,
    `RSI=${hex(r.rsi)} RDI=${hex(r.rdi)} RSP=${hex(r.rsp)} RBP=${hex(r.rbp)}`,
    `R8 =${hex(r.r8)} R9 =${hex(r.r9)} R10=${hex(r.r10)} R11=${hex(r.r11)}`,
    `R12=${hex(r.r12)} R13=${hex(r.r13)} R14=${hex(r.r14)} R15=${hex(r.r15)}`,
    `CR0=${hex(s.cr0)} CR2=${hex(s.cr2)} CR3=${hex(s.cr3)} CR4=${hex(s.cr4)} EFER=${hex(s.efer)}`,
    seg('CS', s.cs), seg('SS', s.ss), seg('DS', s.ds), seg('TR', s.tr),
    `GDT=${hex(s.gdt.base)}/${s.gdt.limit} IDT=${hex(s.idt.base)}/${s.idt.limit}`,
  ].join('\n');
}
