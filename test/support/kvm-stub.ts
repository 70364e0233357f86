// In-guest stubs on the real KVM partition: a few instructions per test, assembled with
// test/support/x86-asm.ts, run in 64-bit mode on an identity map with a GDT and an IDT the
// test writes, reporting what they see through OUTs to TEST_REPORT_PORT.
import { Asm, type Reg32 } from './x86-asm.js';
import { KvmPartition } from '../../src/partition/kvm/kvm-partition.js';
import { Poller } from '../../src/sys/epoll.js';
import type { VcpuBootState } from '../../src/partition/kvm/vcpu-worker-data.js';
import { GDT_GPA, IDT_GPA, PAGE_TABLES_GPA } from '../../src/x86/guest-layout.js';
import { BOOT_CS, BOOT_GDT_LIMIT, longModeSpecialRegisters, writeBootGdt, writeIdentityPageTables } from '../../src/x86/long-mode.js';
import { GENERAL_REGISTER_NAMES, type GeneralRegisters } from '../../src/x86/cpu-state.js';
import { TEST_REPORT_PORT } from '../../src/x86/platform-ports.js';

/** Guest addresses the stubs use (RAM is 8 MiB). */
export const StubLayout = {
  handlers: 0x10000,
  code: [0x11000, 0x12000, 0x13000, 0x14000],
  hypercallPage: 0x20000,
  postInput: 0x30000,
  simp: [0x40000, 0x42000],
  siefp: [0x41000, 0x43000],
  tscPage: 0x50000,
  stackTop: [0x70000, 0x78000],
} as const;
export const STUB_RAM = 8 * 1024 * 1024;

/** Values the stubs report to mark where they are. */
export const Mark = {
  Ready: 0x5e70,
  Done: 0xd0ae,
  GeneralProtection: 0x0d0d,
  Unexpected: 0xbad0,
  Isr: 0x15a0,
} as const;

export const HV_VECTOR = 0xf3;

/** report(value): mov eax, value; mov edx, TEST_REPORT_PORT; out dx, eax. */
export function report(a: Asm, value: number): Asm {
  return a.movImm32('eax', value).movImm32('edx', TEST_REPORT_PORT).outDxEax();
}

/** report(register): mov eax, reg; mov edx, TEST_REPORT_PORT; out dx, eax. */
export function reportRegister(a: Asm, reg: Reg32): Asm {
  if (reg !== 'eax') a.movReg32('eax', reg);
  return a.movImm32('edx', TEST_REPORT_PORT).outDxEax();
}

/** wrmsr(msr, value): ecx = msr, edx:eax = value. */
export function wrmsr(a: Asm, msr: number, value: bigint): Asm {
  return a.movImm32('ecx', msr).movImm32('eax', Number(value & 0xffffffffn)).movImm32('edx', Number(value >> 32n)).wrmsr();
}

/** Calls the hypercall page: rcx = control, rdx = input, r8 = output; the status ends in eax. */
export function hypercall(a: Asm, control: number, input: number, output = 0): Asm {
  return a.movImm32('ecx', control).movImm32('edx', input).movImm32('r8d', output).movImm64('rax', BigInt(StubLayout.hypercallPage)).callReg('rax');
}

/** Sets the guest OS id and enables the hypercall page. */
export function enableHypercalls(a: Asm): Asm {
  wrmsr(a, 0x40000000, 0x8100_0006_0100_0000n);
  return wrmsr(a, 0x40000001, BigInt(StubLayout.hypercallPage) | 1n);
}

/** Software-enables the local APIC (spurious vector register, MMIO at 0xfee000f0). */
export function enableLocalApic(a: Asm): Asm {
  return a.movImm64('rbx', 0xfee00000n).movImm32('eax', 0x1ff).store32('rbx', 0xf0, 'eax');
}

/** Ends a stub: report Done, then halt forever with interrupts as they are. */
export function finish(a: Asm): Asm {
  report(a, Mark.Done);
  const again = `halt-${Math.random().toString(36).slice(2)}`;
  return a.label(again).hlt().jmp(again);
}

/**
 * Exception and interrupt handlers shared by all vCPUs: #GP reports Mark.GeneralProtection
 * and skips the 2-byte rdmsr/wrmsr that faulted; every vector without its own handler reports
 * Mark.Unexpected and halts. `extra` adds handlers (label per vector) before assembly.
 */
export function handlers(extra?: (a: Asm) => Map<number, string>): { code: Uint8Array; vectors: Map<number, bigint> } {
  const a = new Asm(BigInt(StubLayout.handlers));
  a.label('gp');
  report(a, Mark.GeneralProtection);
  // Stack: error code, RIP, CS, RFLAGS, RSP, SS. Skip the faulting instruction and drop the error code.
  a.load64('rax', 'rsp', 8).addImm32('rax', 2).store64('rsp', 8, 'rax').addImm32('rsp', 8).iretq();
  a.label('unexpected');
  report(a, Mark.Unexpected);
  a.label('stuck').hlt().jmp('stuck');
  const own = extra ? extra(a) : new Map<number, string>();
  const code = a.bytes();
  const vectors = new Map<number, bigint>();
  for (let v = 0; v < 256; v++) vectors.set(v, a.address(v === 13 ? 'gp' : own.get(v) ?? 'unexpected'));
  return { code, vectors };
}

export interface StubVm {
  partition: KvmPartition;
  poller: Poller;
  reports: number[][];
  start(): void;
  /** Resolves once vCPU `vp` has reported `count` values in all. */
  waitForReports(vp: number, count: number, timeoutMs?: number): Promise<number[]>;
  stop(): Promise<void>;
}

/** A partition with the stubs' memory laid out (page tables, GDT, IDT, handlers, code). */
export function createStubVm(o: { vpCount: number; programs: Asm[]; handlerCode: { code: Uint8Array; vectors: Map<number, bigint> } }): StubVm {
  const poller = new Poller((e) => { throw e; });
  const partition = new KvmPartition({ memoryBytes: STUB_RAM, vpCount: o.vpCount, poller });
  const memory = partition.memory;
  writeIdentityPageTables(memory, PAGE_TABLES_GPA);
  writeBootGdt(memory, GDT_GPA);
  for (const [vector, handler] of o.handlerCode.vectors) writeInterruptGate(memory.view, IDT_GPA + vector * 16, handler);
  memory.bytes.set(o.handlerCode.code, StubLayout.handlers);
  const reports: number[][] = Array.from({ length: o.vpCount }, () => []);
  const waiters: (() => void)[] = [];
  partition.on('test-report', ({ vp, value }) => {
    reports[vp]!.push(value >>> 0);
    for (const w of waiters.splice(0)) w();
  });
  const boots: VcpuBootState[] = o.programs.map((program, vp) => {
    memory.bytes.set(program.bytes(), Number(program.org));
    const regs = Object.fromEntries(GENERAL_REGISTER_NAMES.map((n) => [n, 0n])) as GeneralRegisters;
    regs.rip = program.org;
    regs.rsp = BigInt(StubLayout.stackTop[vp]!);
    regs.rflags = 2n;
    const sregs = longModeSpecialRegisters({ pml4Gpa: PAGE_TABLES_GPA, gdtGpa: GDT_GPA, gdtLimit: BOOT_GDT_LIMIT, idt: { base: BigInt(IDT_GPA), limit: 256 * 16 - 1 }, bsp: vp === 0 });
    return { regs, sregs };
  });
  let stopped = false;
  return {
    partition,
    poller,
    reports,
    start: () => partition.start(boots),
    waitForReports(vp, count, timeoutMs = 20_000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`vCPU ${vp} reported ${JSON.stringify(reports[vp]!.map(hex))}, waited for ${count} values`)), timeoutMs);
        const check = () => {
          if (reports[vp]!.length >= count) {
            clearTimeout(timer);
            resolve(reports[vp]!.slice());
          } else waiters.push(check);
        };
        partition.once('stopped', (s) => {
          clearTimeout(timer);
          reject(new Error(`the VM stopped (${s.reason}) after vCPU ${vp} reported ${JSON.stringify(reports[vp]!.map(hex))}: ${s.detail}`));
        });
        check();
      });
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await partition.stop();
      partition.close();
      await poller.stop();
    },
  };
}

export function hex(v: number): string {
  return `0x${(v >>> 0).toString(16)}`;
}

/** A 64-bit interrupt gate: present, DPL 0, type 0xE, selector BOOT_CS. */
function writeInterruptGate(view: DataView, at: number, handler: bigint): void {
  const offset = Number(handler);
  view.setUint16(at, offset & 0xffff, true);
  view.setUint16(at + 2, BOOT_CS, true);
  view.setUint8(at + 4, 0);
  view.setUint8(at + 5, 0x8e);
  view.setUint16(at + 6, (offset >>> 16) & 0xffff, true);
  view.setUint32(at + 8, 0, true);
  view.setUint32(at + 12, 0, true);
}
