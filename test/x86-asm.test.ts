// The test assembler against GNU objdump: every encoder, over one program, must
// disassemble to exactly the instruction it claims to encode, at the offset it was
// emitted at; random register/displacement/immediate choices (fast-check) must too. The
// assembler builds the in-guest stubs of the KVM tests, so a wrong byte here would show
// up as a baffling guest fault there.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { Asm, REGISTERS_32, REGISTERS_64, type Reg32, type Reg64 } from './support/x86-asm.js';

const ORG = 0x100000n;

function objdumpAvailable(): boolean {
  try {
    execFileSync('objdump', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** objdump's Intel-syntax text for each instruction, by guest address. */
function disassemble(bytes: Uint8Array, org: bigint): Map<bigint, { hex: string; text: string }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'x86-asm-'));
  try {
    const file = path.join(dir, 'code.bin');
    fs.writeFileSync(file, bytes);
    const out = execFileSync(
      'objdump',
      ['-D', '-b', 'binary', '-mi386:x86-64', '-M', 'intel', `--adjust-vma=0x${org.toString(16)}`, '--insn-width=16', file],
      { encoding: 'utf8' },
    );
    const lines = new Map<bigint, { hex: string; text: string }>();
    for (const line of out.split('\n')) {
      const m = /^\s*([0-9a-f]+):\t([0-9a-f ]+?)\s*\t(.*)$/.exec(line);
      if (m) lines.set(BigInt(`0x${m[1]}`), { hex: m[2]!, text: m[3]!.replace(/\s+/g, ' ').trim() });
    }
    return lines;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Emits instructions and remembers what objdump must say about each. */
class Expectations {
  readonly asm = new Asm(ORG);
  readonly expected: Array<{ at: bigint; text: string; what: string }> = [];

  emit(text: string, what: string, encode: (a: Asm) => unknown): void {
    this.expected.push({ at: ORG + BigInt(this.asm.size), text, what });
    encode(this.asm);
  }

  check(): void {
    const bytes = this.asm.bytes();
    const got = disassemble(bytes, ORG);
    for (const e of this.expected) {
      const line = got.get(e.at);
      assert.ok(line, `${e.what}: objdump found no instruction at 0x${e.at.toString(16)}`);
      assert.equal(line.text, e.text, `${e.what} at 0x${e.at.toString(16)} (bytes ${line.hex})`);
    }
    // Nothing in between: the instruction boundaries are exactly where the encoders put them.
    assert.equal(got.size, this.expected.length, 'objdump saw exactly the emitted instructions');
  }
}

function hex(n: number | bigint): string {
  return `0x${n.toString(16)}`;
}

/** objdump's "[base+0x10]" / "[base-0x8]" / "[base+0x0]". */
function memoryOperand(base: Reg64, disp: number): string {
  return disp < 0 ? `[${base}-${hex(-disp)}]` : `[${base}+${hex(disp)}]`;
}

describe('x86-64 test assembler', { skip: objdumpAvailable() ? false : 'SKIPPED: objdump (binutils) is not installed, so the encoders cannot be checked' }, () => {
  test('every encoder disassembles to the instruction it names', () => {
    const p = new Expectations();
    p.asm.label('top');
    p.emit('mov eax,0x12345678', 'movImm32 eax', (a) => a.movImm32('eax', 0x12345678));
    p.emit('mov r9d,0xffffffff', 'movImm32 r9d', (a) => a.movImm32('r9d', 0xffffffff));
    p.emit('movabs rax,0x1122334455667788', 'movImm64 rax', (a) => a.movImm64('rax', 0x1122334455667788n));
    p.emit('movabs r15,0xfedcba9876543210', 'movImm64 r15', (a) => a.movImm64('r15', 0xfedcba9876543210n));
    p.emit('mov rbx,rsp', 'movReg rbx,rsp', (a) => a.movReg('rbx', 'rsp'));
    p.emit('mov r8,rdi', 'movReg r8,rdi', (a) => a.movReg('r8', 'rdi'));
    p.emit('mov rcx,r14', 'movReg rcx,r14', (a) => a.movReg('rcx', 'r14'));
    p.emit('mov edx,r10d', 'movReg32 edx,r10d', (a) => a.movReg32('edx', 'r10d'));
    p.emit('xor eax,eax', 'xorReg32 eax,eax', (a) => a.xorReg32('eax', 'eax'));
    p.emit('xor r11d,esi', 'xorReg32 r11d,esi', (a) => a.xorReg32('r11d', 'esi'));
    p.emit('add rsp,0x10', 'addImm32 rsp', (a) => a.addImm32('rsp', 0x10));
    p.emit('add r12,0xffffffffffffffff', 'addImm32 r12,-1', (a) => a.addImm32('r12', -1));
    p.emit('cmp rax,0x5', 'cmpImm32 rax', (a) => a.cmpImm32('rax', 5));
    p.emit('cmp r13d,0x40000001', 'cmpImm32 r13d', (a) => a.cmpImm32('r13d', 0x40000001));
    p.emit('test eax,ecx', 'testReg32 eax,ecx', (a) => a.testReg32('eax', 'ecx'));
    p.emit('test r8d,r8d', 'testReg32 r8d,r8d', (a) => a.testReg32('r8d', 'r8d'));
    // The four bases with special ModRM/SIB encodings, and plain ones.
    p.emit('mov eax,DWORD PTR [rsp+0x10]', 'load32 [rsp]', (a) => a.load32('eax', 'rsp', 0x10));
    p.emit('mov ecx,DWORD PTR [rbp+0x0]', 'load32 [rbp]', (a) => a.load32('ecx', 'rbp', 0));
    p.emit('mov r9d,DWORD PTR [r12-0x8]', 'load32 [r12]', (a) => a.load32('r9d', 'r12', -8));
    p.emit('mov edi,DWORD PTR [r13+0x7fffffff]', 'load32 [r13]', (a) => a.load32('edi', 'r13', 0x7fffffff));
    p.emit('mov DWORD PTR [rsp+0x4],ebx', 'store32 [rsp]', (a) => a.store32('rsp', 4, 'ebx'));
    p.emit('mov DWORD PTR [r13+0x100],r15d', 'store32 [r13]', (a) => a.store32('r13', 0x100, 'r15d'));
    p.emit('mov rdx,QWORD PTR [rbp-0x80000000]', 'load64 [rbp]', (a) => a.load64('rdx', 'rbp', -0x80000000));
    p.emit('mov r10,QWORD PTR [r12+0x20]', 'load64 [r12]', (a) => a.load64('r10', 'r12', 0x20));
    p.emit('mov rax,QWORD PTR [rsi+0x0]', 'load64 [rsi]', (a) => a.load64('rax', 'rsi'));
    p.emit('mov QWORD PTR [rsp+0x8],r11', 'store64 [rsp]', (a) => a.store64('rsp', 8, 'r11'));
    p.emit('mov QWORD PTR [r8+0xff0],rax', 'store64 [r8]', (a) => a.store64('r8', 0xff0, 'rax'));
    p.emit('lock or DWORD PTR [rax+0x8],0x1', 'lockOrMem32 [rax]', (a) => a.lockOrMem32('rax', 8, 1));
    p.emit('lock or DWORD PTR [r12+0x0],0x80000000', 'lockOrMem32 [r12]', (a) => a.lockOrMem32('r12', 0, 0x80000000));
    p.emit('xchg DWORD PTR [rbx+0x4],ecx', 'xchgMem32 [rbx]', (a) => a.xchgMem32('rbx', 4, 'ecx'));
    p.emit('xchg DWORD PTR [r13+0x0],r14d', 'xchgMem32 [r13]', (a) => a.xchgMem32('r13', 0, 'r14d'));
    p.emit('wrmsr', 'wrmsr', (a) => a.wrmsr());
    p.emit('rdmsr', 'rdmsr', (a) => a.rdmsr());
    p.emit('rdtsc', 'rdtsc', (a) => a.rdtsc());
    p.emit('cpuid', 'cpuid', (a) => a.cpuid());
    p.emit('out dx,eax', 'outDxEax', (a) => a.outDxEax());
    p.emit('out dx,al', 'outDxAl', (a) => a.outDxAl());
    p.emit('out 0x80,eax', 'outImm8Eax', (a) => a.outImm8Eax(0x80));
    p.emit('in eax,dx', 'inDxEax', (a) => a.inDxEax());
    p.emit('hlt', 'hlt', (a) => a.hlt());
    p.emit('sti', 'sti', (a) => a.sti());
    p.emit('cli', 'cli', (a) => a.cli());
    p.emit('pause', 'pause', (a) => a.pause());
    p.emit('nop', 'nop', (a) => a.nop());
    p.emit('call rax', 'callReg rax', (a) => a.callReg('rax'));
    p.emit('call r12', 'callReg r12', (a) => a.callReg('r12'));
    p.emit('iretq', 'iretq', (a) => a.iretq());
    // Branches: backward to 'top', forward to 'end' (resolved in bytes()).
    const jumps: Array<{ index: number; label: string }> = [];
    const branch = (text: string, label: string, encode: (a: Asm) => unknown): void => {
      jumps.push({ index: p.expected.length, label });
      p.emit(text, text, encode);
    };
    branch('jmp', 'top', (a) => a.jmp('top'));
    branch('jmp', 'end', (a) => a.jmp('end'));
    for (const cc of ['e', 'ne', 'b', 'ae', 'z', 'nz'] as const) {
      // objdump spells z as e, nz as ne.
      const mnemonic = { e: 'je', z: 'je', ne: 'jne', nz: 'jne', b: 'jb', ae: 'jae' }[cc];
      branch(mnemonic, cc === 'b' ? 'top' : 'end', (a) => a.jcc(cc, cc === 'b' ? 'top' : 'end'));
    }
    // Label operands are filled in below, once every label's address is known.
    const leaIndex = p.expected.length;
    p.emit('', 'leaRip', (a) => a.leaRip('rsi', 'data'));
    const movLabelIndex = p.expected.length;
    p.emit('', 'movLabelAddress', (a) => a.movLabelAddress('r9', 'data'));
    p.emit('ret', 'ret', (a) => a.ret());
    p.asm.label('end');
    p.emit('hlt', 'hlt at end', (a) => a.hlt());
    p.asm.label('data');

    for (const j of jumps) p.expected[j.index]!.text += ` ${hex(p.asm.address(j.label))}`;
    const lea = p.expected[leaIndex]!;
    const leaEnd = lea.at + 7n;
    lea.text = `lea rsi,[rip+${hex(p.asm.address('data') - leaEnd)}] # ${hex(p.asm.address('data'))}`;
    p.expected[movLabelIndex]!.text = `movabs r9,${hex(p.asm.address('data'))}`;
    p.check();
  });

  test('random registers, displacements and immediates encode as objdump reads them (property)', () => {
    const reg64 = fc.constantFrom(...REGISTERS_64);
    const reg32 = fc.constantFrom(...REGISTERS_32);
    const disp = fc.integer({ min: -0x80000000, max: 0x7fffffff });
    const imm = fc.integer({ min: 0, max: 0xffffffff });
    type Case = { text: string; encode: (a: Asm) => unknown };
    const sign64 = (v: number): string => hex(BigInt.asUintN(64, BigInt(v | 0)));
    const cases = fc.oneof(
      fc.tuple(reg32, reg64, disp).map(([d, b, x]): Case => ({ text: `mov ${d},DWORD PTR ${memoryOperand(b, x)}`, encode: (a) => a.load32(d, b, x) })),
      fc.tuple(reg64, disp, reg32).map(([b, x, s]): Case => ({ text: `mov DWORD PTR ${memoryOperand(b, x)},${s}`, encode: (a) => a.store32(b, x, s) })),
      fc.tuple(reg64, reg64, disp).map(([d, b, x]): Case => ({ text: `mov ${d},QWORD PTR ${memoryOperand(b, x)}`, encode: (a) => a.load64(d, b, x) })),
      fc.tuple(reg64, disp, reg64).map(([b, x, s]): Case => ({ text: `mov QWORD PTR ${memoryOperand(b, x)},${s}`, encode: (a) => a.store64(b, x, s) })),
      fc.tuple(reg64, reg64).map(([d, s]): Case => ({ text: `mov ${d},${s}`, encode: (a) => a.movReg(d, s) })),
      fc.tuple(reg32, reg32).map(([d, s]): Case => ({ text: `mov ${d},${s}`, encode: (a) => a.movReg32(d, s) })),
      fc.tuple(reg32, reg32).map(([d, s]): Case => ({ text: `xor ${d},${s}`, encode: (a) => a.xorReg32(d, s) })),
      fc.tuple(reg32, reg32).map(([d, s]): Case => ({ text: `test ${d},${s}`, encode: (a) => a.testReg32(d, s) })),
      fc.tuple(reg32, imm).map(([d, v]): Case => ({ text: `mov ${d},${hex(v)}`, encode: (a) => a.movImm32(d, v) })),
      fc.tuple(reg64, fc.bigInt({ min: 0n, max: (1n << 64n) - 1n })).map(([d, v]): Case => ({ text: `movabs ${d},${hex(v)}`, encode: (a) => a.movImm64(d, v) })),
      fc.tuple(reg64, imm).map(([d, v]): Case => ({ text: `add ${d},${sign64(v)}`, encode: (a) => a.addImm32(d, v) })),
      fc.tuple(reg64, imm).map(([d, v]): Case => ({ text: `cmp ${d},${sign64(v)}`, encode: (a) => a.cmpImm32(d, v) })),
      fc.tuple(reg32, imm).map(([d, v]): Case => ({ text: `cmp ${d},${hex(v)}`, encode: (a) => a.cmpImm32(d, v) })),
      fc.tuple(reg64, disp, imm).map(([b, x, v]): Case => ({ text: `lock or DWORD PTR ${memoryOperand(b, x)},${hex(v)}`, encode: (a) => a.lockOrMem32(b, x, v) })),
      fc.tuple(reg64, disp, reg32).map(([b, x, r]): Case => ({ text: `xchg DWORD PTR ${memoryOperand(b, x)},${r}`, encode: (a) => a.xchgMem32(b, x, r) })),
      reg64.map((r): Case => ({ text: `call ${r}`, encode: (a) => a.callReg(r) })),
    );
    // One objdump run for the whole sample: 1,000 instructions.
    const p = new Expectations();
    for (const c of fc.sample(cases, { numRuns: 1000, seed: 0x0b1d })) p.emit(c.text, c.text, c.encode);
    p.check();
  });

  test('labels: undefined and duplicate labels are errors, addresses count from org', () => {
    const a = new Asm(0x7000n);
    a.nop().label('here').jmp('nowhere');
    assert.equal(a.address('here'), 0x7001n);
    assert.throws(() => a.bytes(), /undefined label: nowhere/);
    assert.throws(() => a.label('here'), /label defined twice: here/);
    assert.throws(() => a.outImm8Eax(0x3f8), RangeError);
    assert.throws(() => a.movImm32('eax', 2 ** 32), RangeError);
    assert.throws(() => a.load32('eax', 'rax', 2 ** 31), RangeError);
    assert.throws(() => a.movReg('eax' as Reg64, 'rax'), /not a 64-bit register/);
    assert.throws(() => a.movReg32('rax' as Reg32, 'eax'), /not a 32-bit register/);
    // A rel32 counts from the end of the instruction: jmp to itself is E9 FB FF FF FF.
    const self = new Asm();
    self.label('self').jmp('self');
    assert.deepEqual([...self.bytes()], [0xe9, 0xfb, 0xff, 0xff, 0xff]);
  });
});
