// A tiny x86-64 assembler for the in-guest stubs of the KVM tests: enough instructions to
// write MSRs, poke I/O ports, call the hypercall page and spin on memory, with labels and
// forward references. Each encoder names its Intel SDM form; test/x86-asm.test.ts checks
// every one against objdump.
//
// Encoding notes (Intel SDM vol. 2, 2.1-2.2):
// - REX = 0100WRXB: W selects 64-bit operands, R extends ModRM.reg, B extends ModRM.rm
//   (or the register in the opcode's low bits).
// - ModRM = mod(2) reg(3) rm(3). mod 11 is register-direct. Memory operands here are
//   always [base + disp32] (mod 10), which sidesteps rbp/r13's "mod 00 means RIP/disp32"
//   case; rm 100 (rsp/r12) means "a SIB byte follows", so those bases need SIB 0x24
//   (scale 1, no index, base 100).

export const REGISTERS_64 = ['rax', 'rcx', 'rdx', 'rbx', 'rsp', 'rbp', 'rsi', 'rdi', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15'] as const;
export const REGISTERS_32 = ['eax', 'ecx', 'edx', 'ebx', 'esp', 'ebp', 'esi', 'edi', 'r8d', 'r9d', 'r10d', 'r11d', 'r12d', 'r13d', 'r14d', 'r15d'] as const;
export type Reg64 = (typeof REGISTERS_64)[number];
export type Reg32 = (typeof REGISTERS_32)[number];
export type Condition = 'e' | 'ne' | 'b' | 'ae' | 'z' | 'nz';

/** The low nibble of the Jcc rel32 opcode (0F 80+cc). */
const CONDITION_CODES: Record<Condition, number> = { b: 0x2, ae: 0x3, e: 0x4, z: 0x4, ne: 0x5, nz: 0x5 };

function number64(reg: Reg64): number {
  const n = REGISTERS_64.indexOf(reg);
  if (n < 0) throw new Error(`not a 64-bit register: ${String(reg)}`);
  return n;
}

function number32(reg: Reg32): number {
  const n = REGISTERS_32.indexOf(reg);
  if (n < 0) throw new Error(`not a 32-bit register: ${String(reg)}`);
  return n;
}

function isReg64(reg: Reg64 | Reg32): reg is Reg64 {
  return (REGISTERS_64 as readonly string[]).includes(reg);
}

function checkImm32(imm: number): number {
  if (!Number.isInteger(imm) || imm < -0x8000_0000 || imm > 0xffff_ffff) throw new RangeError(`not a 32-bit immediate: ${imm}`);
  return imm | 0;
}

function checkDisp32(disp: number): number {
  if (!Number.isInteger(disp) || disp < -0x8000_0000 || disp > 0x7fff_ffff) throw new RangeError(`not a signed 32-bit displacement: ${disp}`);
  return disp;
}

interface Fixup {
  /** Where the 4-byte field starts. */
  at: number;
  label: string;
  kind: 'rel32' | 'abs64';
  /** rel32 counts from the end of the instruction, which may extend past the field. */
  end: number;
}

export class Asm {
  readonly org: bigint;
  private code: number[] = [];
  private readonly labels = new Map<string, number>();
  private readonly fixups: Fixup[] = [];

  /** `org` is the guest address the first byte will be loaded at (for absolute label addresses). */
  constructor(org = 0n) {
    this.org = org;
  }

  /** Bytes emitted so far. */
  get size(): number {
    return this.code.length;
  }

  /** Defines `name` at the current position. */
  label(name: string): this {
    if (this.labels.has(name)) throw new Error(`label defined twice: ${name}`);
    this.labels.set(name, this.code.length);
    return this;
  }

  /** The guest address of a defined label. */
  address(name: string): bigint {
    const at = this.labels.get(name);
    if (at === undefined) throw new Error(`undefined label: ${name}`);
    return this.org + BigInt(at);
  }

  /** The program with every label reference resolved; throws on an undefined label. */
  bytes(): Uint8Array {
    const out = Uint8Array.from(this.code);
    const view = new DataView(out.buffer);
    for (const f of this.fixups) {
      const target = this.labels.get(f.label);
      if (target === undefined) throw new Error(`undefined label: ${f.label}`);
      if (f.kind === 'rel32') view.setInt32(f.at, target - f.end, true);
      else view.setBigUint64(f.at, this.org + BigInt(target), true);
    }
    return out;
  }

  /** Raw bytes: data, or an instruction this assembler lacks. */
  raw(bytes: ArrayLike<number>): this {
    for (let i = 0; i < bytes.length; i++) this.code.push(bytes[i]! & 0xff);
    return this;
  }

  /** A little-endian 32-bit value (data). */
  u32(value: number): this {
    return this.le(checkImm32(value), 4);
  }

  /** A little-endian 64-bit value (data). */
  u64(value: bigint): this {
    for (let i = 0n; i < 8n; i++) this.code.push(Number((value >> (8n * i)) & 0xffn));
    return this;
  }

  // --- moves ---

  /** MOV r32, imm32 — B8+rd id (writing a 32-bit register zero-extends into the 64-bit one). */
  movImm32(reg: Reg32, imm: number): this {
    const r = number32(reg);
    this.rex(false, 0, r);
    this.code.push(0xb8 + (r & 7));
    return this.le(checkImm32(imm), 4);
  }

  /** MOV r64, imm64 — REX.W + B8+rd io (movabs). */
  movImm64(reg: Reg64, imm: bigint): this {
    const r = number64(reg);
    this.rex(true, 0, r);
    this.code.push(0xb8 + (r & 7));
    return this.u64(BigInt.asUintN(64, imm));
  }

  /** MOV r64, imm64 — REX.W + B8+rd io, with the absolute guest address of a label. */
  movLabelAddress(reg: Reg64, label: string): this {
    const r = number64(reg);
    this.rex(true, 0, r);
    this.code.push(0xb8 + (r & 7));
    this.fixups.push({ at: this.code.length, label, kind: 'abs64', end: this.code.length + 8 });
    return this.u64(0n);
  }

  /** LEA r64, m — REX.W + 8D /r with [rip + rel32] (mod 00, rm 101): the label's address, position-independent. */
  leaRip(reg: Reg64, label: string): this {
    const r = number64(reg);
    this.rex(true, r, 0);
    this.code.push(0x8d, 0x05 | ((r & 7) << 3));
    this.fixups.push({ at: this.code.length, label, kind: 'rel32', end: this.code.length + 4 });
    return this.le(0, 4);
  }

  /** MOV r/m64, r64 — REX.W + 89 /r. */
  movReg(dst: Reg64, src: Reg64): this {
    return this.regReg(true, 0x89, number64(src), number64(dst));
  }

  /** MOV r/m32, r32 — 89 /r. */
  movReg32(dst: Reg32, src: Reg32): this {
    return this.regReg(false, 0x89, number32(src), number32(dst));
  }

  /** MOV r32, r/m32 — 8B /r, from [base + disp32]. */
  load32(dst: Reg32, base: Reg64, disp = 0): this {
    return this.memory(false, [0x8b], number32(dst), base, disp);
  }

  /** MOV r/m32, r32 — 89 /r, to [base + disp32]. */
  store32(base: Reg64, disp: number, src: Reg32): this {
    return this.memory(false, [0x89], number32(src), base, disp);
  }

  /** MOV r64, r/m64 — REX.W + 8B /r, from [base + disp32]. */
  load64(dst: Reg64, base: Reg64, disp = 0): this {
    return this.memory(true, [0x8b], number64(dst), base, disp);
  }

  /** MOV r/m64, r64 — REX.W + 89 /r, to [base + disp32]. */
  store64(base: Reg64, disp: number, src: Reg64): this {
    return this.memory(true, [0x89], number64(src), base, disp);
  }

  // --- arithmetic ---

  /** XOR r/m32, r32 — 31 /r (xor eax, eax clears all of rax). */
  xorReg32(dst: Reg32, src: Reg32): this {
    return this.regReg(false, 0x31, number32(src), number32(dst));
  }

  /** ADD r/m64, imm32 — REX.W + 81 /0 id (the immediate is sign-extended to 64 bits). */
  addImm32(reg: Reg64, imm: number): this {
    const r = number64(reg);
    this.rex(true, 0, r);
    this.code.push(0x81, modrm(3, 0, r));
    return this.le(checkImm32(imm), 4);
  }

  /** CMP r/m64, imm32 — REX.W + 81 /7 id (sign-extended), or CMP r/m32, imm32 — 81 /7 id. */
  cmpImm32(reg: Reg64 | Reg32, imm: number): this {
    const wide = isReg64(reg);
    const r = wide ? number64(reg) : number32(reg as Reg32);
    this.rex(wide, 0, r);
    this.code.push(0x81, modrm(3, 7, r));
    return this.le(checkImm32(imm), 4);
  }

  /** TEST r/m32, r32 — 85 /r. */
  testReg32(a: Reg32, b: Reg32): this {
    return this.regReg(false, 0x85, number32(b), number32(a));
  }

  /** LOCK OR r/m32, imm32 — F0 81 /1 id, on [base + disp32]: an atomic bit set, as the guest sets event flags. */
  lockOrMem32(base: Reg64, disp: number, imm: number): this {
    this.code.push(0xf0);
    this.memory(false, [0x81], 1, base, disp);
    return this.le(checkImm32(imm), 4);
  }

  /** XCHG r/m32, r32 — 87 /r, on [base + disp32] (locked implicitly with a memory operand). */
  xchgMem32(base: Reg64, disp: number, reg: Reg32): this {
    return this.memory(false, [0x87], number32(reg), base, disp);
  }

  // --- system ---

  /** WRMSR — 0F 30: MSR[ecx] = edx:eax. */
  wrmsr(): this {
    return this.raw([0x0f, 0x30]);
  }

  /** RDMSR — 0F 32: edx:eax = MSR[ecx]. */
  rdmsr(): this {
    return this.raw([0x0f, 0x32]);
  }

  /** RDTSC — 0F 31: edx:eax = TSC. */
  rdtsc(): this {
    return this.raw([0x0f, 0x31]);
  }

  /** CPUID — 0F A2: leaf eax, subleaf ecx. */
  cpuid(): this {
    return this.raw([0x0f, 0xa2]);
  }

  /** OUT DX, EAX — EF. */
  outDxEax(): this {
    return this.raw([0xef]);
  }

  /** OUT DX, AL — EE. */
  outDxAl(): this {
    return this.raw([0xee]);
  }

  /** OUT imm8, EAX — E7 ib (ports 0-255 only). */
  outImm8Eax(port: number): this {
    if (!Number.isInteger(port) || port < 0 || port > 0xff) throw new RangeError(`OUT imm8 takes ports 0-255, not ${port}`);
    return this.raw([0xe7, port]);
  }

  /** IN EAX, DX — ED. */
  inDxEax(): this {
    return this.raw([0xed]);
  }

  /** HLT — F4. */
  hlt(): this {
    return this.raw([0xf4]);
  }

  /** STI — FB. */
  sti(): this {
    return this.raw([0xfb]);
  }

  /** CLI — FA. */
  cli(): this {
    return this.raw([0xfa]);
  }

  /** PAUSE — F3 90. */
  pause(): this {
    return this.raw([0xf3, 0x90]);
  }

  /** NOP — 90. */
  nop(): this {
    return this.raw([0x90]);
  }

  /** RET — C3 (near return). */
  ret(): this {
    return this.raw([0xc3]);
  }

  /** IRETQ — REX.W + CF. */
  iretq(): this {
    return this.raw([0x48, 0xcf]);
  }

  // --- control flow ---

  /** CALL r/m64 — FF /2 (64-bit operand size is the default for near calls: no REX.W). */
  callReg(reg: Reg64): this {
    const r = number64(reg);
    this.rex(false, 0, r);
    this.code.push(0xff, modrm(3, 2, r));
    return this;
  }

  /** JMP rel32 — E9 cd. */
  jmp(label: string): this {
    this.code.push(0xe9);
    return this.rel32(label);
  }

  /** Jcc rel32 — 0F 80+cc cd. */
  jcc(condition: Condition, label: string): this {
    const cc = CONDITION_CODES[condition];
    if (cc === undefined) throw new Error(`unknown condition: ${String(condition)}`);
    this.code.push(0x0f, 0x80 + cc);
    return this.rel32(label);
  }

  // --- encoding helpers ---

  private rel32(label: string): this {
    this.fixups.push({ at: this.code.length, label, kind: 'rel32', end: this.code.length + 4 });
    return this.le(0, 4);
  }

  /** A REX prefix when one is needed: 64-bit operands or registers r8-r15. */
  private rex(wide: boolean, reg: number, rm: number): void {
    const value = 0x40 | (wide ? 8 : 0) | (reg >= 8 ? 4 : 0) | (rm >= 8 ? 1 : 0);
    if (value !== 0x40) this.code.push(value);
  }

  /** opcode with ModRM mod 11: `reg` in ModRM.reg, `rm` in ModRM.rm. */
  private regReg(wide: boolean, opcode: number, reg: number, rm: number): this {
    this.rex(wide, reg, rm);
    this.code.push(opcode, modrm(3, reg, rm));
    return this;
  }

  /** opcode with a [base + disp32] operand (mod 10); rsp/r12 as base need the SIB byte. */
  private memory(wide: boolean, opcode: number[], reg: number, base: Reg64, disp: number): this {
    const b = number64(base);
    checkDisp32(disp);
    this.rex(wide, reg, b);
    this.code.push(...opcode, modrm(2, reg, b));
    if ((b & 7) === 4) this.code.push(0x24);
    return this.le(disp, 4);
  }

  private le(value: number, size: number): this {
    for (let i = 0; i < size; i++) this.code.push((value >>> (8 * i)) & 0xff);
    return this;
  }
}

function modrm(mod: number, reg: number, rm: number): number {
  return (mod << 6) | ((reg & 7) << 3) | (rm & 7);
}
