// The typed KVM layer on this machine's real /dev/kvm: a VM with 2 MiB of RAM and one vCPU
// put in 64-bit mode by hand, running a few dozen bytes of machine code that exercise the
// exits enlighten builds on (port I/O, MSRs refused by the filter), sync regs, an
// ioeventfd that takes a write without an exit, HLT, and a kick from another thread.
// Skipped, loudly, where /dev/kvm cannot be opened.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import { Worker } from 'node:worker_threads';
import { detectKvmHardware, PVM_REASON, type KvmHardwarePaths } from '../src/kvm/hardware-check.js';
import * as K from '../src/kvm/kvm-constants.js';
import { encodeMsrFilter, MSR_FILTER_ARENA_SIZE } from '../src/kvm/kvm-structs.js';
import { KvmSystem } from '../src/kvm/kvm-system.js';
import { kickVcpu, KvmRunArea, KvmVcpu, KvmVcpuError } from '../src/kvm/kvm-vcpu.js';
import { defaultIrqchipRoutes, KvmVm, KvmVmError } from '../src/kvm/kvm-vm.js';
import { GuestMemory } from '../src/memory/guest-memory.js';
import { SysError } from '../src/sys/errors.js';
import { EventFd } from '../src/sys/eventfd.js';
import { ioctlBuffer } from '../src/sys/kvm-ioctl.js';
import { mapAnonymous, munmap, viewOf } from '../src/sys/memfd.js';
import { currentThreadId, installKickHandler } from '../src/sys/thread-signal.js';
import { TEST_REPORT_PORT } from '../src/x86/platform-ports.js';
import type { Segment } from '../src/x86/cpu-state.js';
import type { SpinWorkerData, SpinWorkerMessage } from './support/kvm-spin-worker.js';

const KVM_PATH = '/dev/kvm';
const RAM_SIZE = 2 * 1024 * 1024;

// Guest physical layout of the stub VMs.
const PML4_GPA = 0x1000;
const PDPT_GPA = 0x2000;
const PD_GPA = 0x3000;
const GDT_GPA = 0x4000;
const STACK_TOP = 0x8000;
const CODE_GPA = 0x10000;
const CODE_SELECTOR = 0x08;
const DATA_SELECTOR = 0x10;
/** The ioeventfd port of the stubs (next to the report port). */
const DOORBELL_PORT = TEST_REPORT_PORT + 4;

const CR0_PE = 1n << 0n;
const CR0_MP = 1n << 1n;
const CR0_ET = 1n << 4n;
const CR0_NE = 1n << 5n;
const CR0_WP = 1n << 16n;
const CR0_PG = 1n << 31n;
const CR4_PAE = 1n << 5n;
const EFER_LME = 1n << 8n;
const EFER_LMA = 1n << 10n;

function kvmUnavailable(): string | null {
  try {
    fs.accessSync(KVM_PATH, fs.constants.R_OK | fs.constants.W_OK);
    return null;
  } catch (e) {
    return `${KVM_PATH} cannot be opened read-write here (${(e as NodeJS.ErrnoException).code}): the KVM layer tests need it`;
  }
}

/** Skips the test with a printed reason when there is no KVM; returns true if skipped. */
function skipWithoutKvm(t: TestContext): boolean {
  const reason = kvmUnavailable();
  if (reason === null) return false;
  console.log(`# SKIP ${reason}`);
  t.skip(reason);
  return true;
}

interface StubVm {
  system: KvmSystem;
  vm: KvmVm;
  memory: GuestMemory;
  vcpuFd: number;
  vcpu: KvmVcpu;
  mmapSize: number;
  close(): void;
}

/**
 * A VM whose vCPU 0 starts in 64-bit mode at CODE_GPA with `code` there: identity-mapped
 * first 2 MiB (one 2 MiB page), a GDT with a 64-bit code and a flat data segment, the
 * CPUID KVM supports, FPU defaults and sync regs on.
 */
function createStubVm(code: readonly number[], o: { irqchip: boolean }): StubVm {
  const system = KvmSystem.open(KVM_PATH);
  const vm = system.createVm();
  const memory = GuestMemory.create(RAM_SIZE);
  if (o.irqchip) vm.createIrqchip();
  vm.setUserMemoryRegion(0, 0, RAM_SIZE, memory.base);
  const v = memory.view;
  const PRESENT_WRITABLE = 0x3n;
  const PAGE_2M = 0x80n;
  v.setBigUint64(PML4_GPA, BigInt(PDPT_GPA) | PRESENT_WRITABLE, true);
  v.setBigUint64(PDPT_GPA, BigInt(PD_GPA) | PRESENT_WRITABLE, true);
  v.setBigUint64(PD_GPA, 0n | PAGE_2M | PRESENT_WRITABLE, true); // GPA 0..2 MiB at VA 0..2 MiB
  v.setBigUint64(GDT_GPA + CODE_SELECTOR, 0x00af9b000000ffffn, true); // 64-bit code: P, DPL 0, L, G, exec/read
  v.setBigUint64(GDT_GPA + DATA_SELECTOR, 0x00cf93000000ffffn, true); // flat data: P, DPL 0, D/B, G, read/write
  memory.bytes.set(code, CODE_GPA);

  const vcpuFd = vm.createVcpu(0);
  const mmapSize = system.vcpuMmapSize();
  const vcpu = KvmVcpu.fromFd(vcpuFd, mmapSize);
  vcpu.setCpuid(system.supportedCpuid());
  const sregs = vcpu.getSregs(); // keeps KVM's TR and LDT as reset left them
  const segment = (selector: number, type: number, long: boolean): Segment => ({
    base: 0n, limit: 0xffffffff, selector, type, present: true, dpl: 0, db: !long, s: true, l: long, g: true, avl: false, unusable: false,
  });
  sregs.cs = segment(CODE_SELECTOR, 0xb, true);
  sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = segment(DATA_SELECTOR, 0x3, false);
  sregs.gdt = { base: BigInt(GDT_GPA), limit: 3 * 8 - 1 };
  sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
  sregs.cr3 = BigInt(PML4_GPA);
  sregs.cr4 = CR4_PAE;
  sregs.efer = EFER_LME | EFER_LMA;
  vcpu.setSregs(sregs);
  const regs = vcpu.getRegs();
  for (const name of Object.keys(regs) as (keyof typeof regs)[]) regs[name] = 0n;
  regs.rip = BigInt(CODE_GPA);
  regs.rsp = BigInt(STACK_TOP);
  regs.rflags = 0x2n;
  vcpu.setRegs(regs);
  vcpu.setFpuDefaults();
  vcpu.enableSyncRegs();
  return {
    system, vm, memory, vcpuFd, vcpu, mmapSize,
    close() {
      vcpu.close();
      vm.close();
      system.close();
      memory.close();
    },
  };
}

// A guest that misbehaves would leave the test blocked in KVM_RUN forever. The watchdog,
// a thread of its own, signals the test's thread after `ms` (and then every 100 ms) until
// cancelled, so KVM_RUN returns KVM_EXIT_INTR and the test fails with a message instead.
function startWatchdog(ms: number): () => void {
  const cancel = new Int32Array(new SharedArrayBuffer(4));
  const signalModule = new URL('../src/sys/thread-signal.js', import.meta.url).href;
  const source = `
    const { workerData } = require('node:worker_threads');
    import(workerData.signalModule).then(({ signalThread, KICK_SIGNAL }) => {
      const cancel = new Int32Array(workerData.cancel);
      let wait = workerData.ms;
      while (Atomics.wait(cancel, 0, 0, wait) === 'timed-out') {
        signalThread(workerData.tid, KICK_SIGNAL);
        wait = 100;
      }
    });`;
  const worker = new Worker(source, { eval: true, workerData: { cancel: cancel.buffer, ms, tid: currentThreadId(), signalModule } });
  worker.unref();
  return () => {
    Atomics.store(cancel, 0, 1);
    Atomics.notify(cancel, 0);
  };
}

/** Runs to the next exit; an exit the test did not expect fails with its name. */
function expectExit(stub: StubVm, expected: number, what: string): void {
  const exit = stub.vcpu.run();
  if (exit !== expected) {
    const rip = stub.vcpu.getRegs().rip;
    assert.fail(`${what}: expected ${K.exitReasonName(expected)}, got ${K.exitReasonName(exit)} at rip 0x${rip.toString(16)}`);
  }
}

function expectReport(stub: StubVm, value: number, what: string): void {
  expectExit(stub, K.KVM_EXIT_IO, what);
  const run = stub.vcpu.runArea;
  assert.deepEqual(
    { direction: run.io.direction, size: run.io.size, port: run.io.port, count: run.io.count },
    { direction: K.KVM_EXIT_IO_OUT, size: 4, port: TEST_REPORT_PORT, count: 1 },
    what,
  );
  assert.equal(run.ioData().getUint32(0, true).toString(16), value.toString(16), what);
}

before(() => installKickHandler());

describe('KvmSystem', () => {
  test('opens /dev/kvm: API 12, the capabilities enlighten needs, CPUID with long mode', (t) => {
    if (skipWithoutKvm(t)) return;
    const system = KvmSystem.open(KVM_PATH);
    try {
      assert.equal(system.apiVersion(), 12);
      assert.equal(system.checkExtension(K.KVM_CAP_SYNC_REGS) & 7, 7, 'SYNC_REGS covers regs, sregs and events');
      for (const cap of [K.KVM_CAP_IRQCHIP, K.KVM_CAP_USER_MEMORY, K.KVM_CAP_IOEVENTFD, K.KVM_CAP_IRQFD, K.KVM_CAP_SIGNAL_MSI,
        K.KVM_CAP_IMMEDIATE_EXIT, K.KVM_CAP_X86_USER_SPACE_MSR, K.KVM_CAP_X86_MSR_FILTER, K.KVM_CAP_IRQ_ROUTING]) {
        assert.ok(system.checkExtension(cap) > 0, `capability ${cap}`);
      }
      assert.ok(system.vcpuMmapSize() >= 2352 + 4096, 'kvm_run plus the port I/O data page');
      const cpuid = system.supportedCpuid();
      const ext = cpuid.find((e) => e.function === 0x80000001);
      assert.ok(ext, 'leaf 0x80000001 is offered');
      assert.ok((ext.edx & (1 << 29)) !== 0, 'long mode (LM) is offered');
      assert.ok(cpuid.some((e) => e.function === 0), 'leaf 0 is offered');
    } finally {
      system.close();
    }
  });

  test('a path that cannot be opened throws a SysError naming it', () => {
    assert.throws(() => KvmSystem.open('/nonexistent/kvm'), (e: unknown) => {
      assert.ok(e instanceof SysError);
      assert.equal(e.call, 'open(/nonexistent/kvm)');
      assert.equal(e.code, 'ENOENT');
      return true;
    });
  });
});

describe('KvmVm', () => {
  test('irqchip, PIT, TSS and identity map, routing, irqfd, MSI, IRQ lines, vCPUs', (t) => {
    if (skipWithoutKvm(t)) return;
    const system = KvmSystem.open(KVM_PATH);
    const vm = system.createVm();
    const irq = EventFd.create();
    try {
      vm.setTssAddr(0xfffbd000);
      vm.setIdentityMapAddr(0xfffbc000);
      vm.createIrqchip();
      vm.createPit2();
      const vcpuFd = vm.createVcpu(0);
      assert.ok(vm.tscKhz(vcpuFd) > 0, 'the guest TSC has a frequency');
      vm.setGsiRouting([...defaultIrqchipRoutes(), { gsi: 24, msi: { addressLo: 0xfee00000, addressHi: 0, data: 0xf3 } }]);
      vm.addIrqfd(24, irq.fd);
      vm.removeIrqfd(24, irq.fd);
      const delivered = vm.signalMsi(0xfee00000, 0, 0xf3);
      assert.ok(Number.isInteger(delivered) && delivered >= 0, `KVM_SIGNAL_MSI answered ${delivered}`);
      vm.irqLine(4, true);
      vm.irqLine(4, false);
      assert.throws(() => vm.createVcpu(0), (e: unknown) => e instanceof SysError && e.call === 'ioctl(KVM_CREATE_VCPU)' && e.code === 'EEXIST');
      assert.throws(() => vm.setUserMemoryRegion(0, 0x800, 4096, 0n), KvmVmError);
      assert.throws(() => vm.addIoeventfd({ length: 4, fd: irq.fd }), KvmVmError);
      assert.throws(() => vm.setMsrFilter(new Array(9).fill({ base: 0, count: 8, allowRead: true, allowWrite: false })), KvmVmError, '18 KVM ranges');
    } finally {
      irq.close();
      vm.close();
      system.close();
    }
  });
});

describe('a 64-bit stub guest', () => {
  test('port I/O, MSR exits through the filter, sync regs, an ioeventfd that takes its write in the kernel', (t) => {
    if (skipWithoutKvm(t)) return;
    const stub = createStubVm([
      0x66, 0xba, 0x20, 0x06, //       mov dx, 0x620          (TEST_REPORT_PORT)
      0xb8, 0x78, 0x56, 0x34, 0x12, // mov eax, 0x12345678
      0xef, //                         out dx, eax            -> exit 1: port I/O
      0xb9, 0x00, 0x00, 0x00, 0x40, // mov ecx, 0x40000000   (HV_X64_MSR_GUEST_OS_ID)
      0xb8, 0xef, 0xbe, 0xad, 0xde, // mov eax, 0xdeadbeef
      0xba, 0x67, 0x45, 0x23, 0x01, // mov edx, 0x01234567
      0x0f, 0x30, //                   wrmsr                  -> exit 2: WRMSR, reason FILTER
      0xb9, 0x02, 0x00, 0x00, 0x40, // mov ecx, 0x40000002   (HV_X64_MSR_VP_INDEX)
      0x0f, 0x32, //                   rdmsr                  -> exit 3: RDMSR, reason FILTER; the host answers
      0x89, 0xd3, //                   mov ebx, edx
      0x66, 0xba, 0x20, 0x06, //       mov dx, 0x620
      0xef, //                         out dx, eax            -> exit 4: low half of the answer
      0x89, 0xd8, //                   mov eax, ebx
      0xef, //                         out dx, eax            -> exit 5: rbx, which the host rewrote through sync regs
      0x66, 0xba, 0x24, 0x06, //       mov dx, 0x624          (DOORBELL_PORT)
      0xb8, 0x07, 0x00, 0x00, 0x00, // mov eax, 7
      0xef, //                         out dx, eax            -> no exit: the ioeventfd (datamatch 7) takes it
      0xb8, 0x08, 0x00, 0x00, 0x00, // mov eax, 8
      0xef, //                         out dx, eax            -> exit 6: 8 does not match, so it comes to userspace
      0x66, 0xba, 0x20, 0x06, //       mov dx, 0x620
      0xb8, 0x0d, 0xd0, 0x00, 0x00, // mov eax, 0xd00d
      0xef, //                         out dx, eax            -> exit 7: the end marker
      0xf4, //                         hlt                    (with the in-kernel irqchip HLT never exits; not reached)
    ], { irqchip: true });
    const doorbell = EventFd.create();
    const stopWatchdog = startWatchdog(20_000);
    try {
      const { vm, vcpu } = stub;
      const run = vcpu.runArea;
      vm.enableUserSpaceMsr(K.KVM_MSR_EXIT_REASON_FILTER | K.KVM_MSR_EXIT_REASON_INVAL | K.KVM_MSR_EXIT_REASON_UNKNOWN);
      vm.setMsrFilter([{ base: 0x40000000, count: 0x200, allowRead: false, allowWrite: false }]);
      const doorbellSpec = { port: DOORBELL_PORT, length: 4 as const, datamatch: 7n, fd: doorbell.fd };
      vm.addIoeventfd(doorbellSpec);

      expectReport(stub, 0x12345678, 'exit 1');
      assert.equal(run.syncRegs[0], 0x12345678n, 'rax arrives with the exit (sync regs)');
      assert.equal(run.syncRegs[3], 0x620n, 'rdx too');
      const rip = run.syncRegs[16]!;
      assert.ok(rip === BigInt(CODE_GPA + 9) || rip === BigInt(CODE_GPA + 10), `rip 0x${rip.toString(16)} is at or after the OUT`);
      t.diagnostic(`rip at a port-I/O exit: ${rip === BigInt(CODE_GPA + 10) ? 'after' : 'at'} the OUT`);

      expectExit(stub, K.KVM_EXIT_X86_WRMSR, 'exit 2');
      assert.deepEqual(
        { reason: run.msr.reason, index: run.msr.index.toString(16), data: run.msr.data.toString(16) },
        { reason: K.KVM_MSR_EXIT_REASON_FILTER, index: '40000000', data: '1234567deadbeef' },
      );
      run.msr.error = 0;

      expectExit(stub, K.KVM_EXIT_X86_RDMSR, 'exit 3');
      assert.equal(run.msr.reason, K.KVM_MSR_EXIT_REASON_FILTER);
      assert.equal(run.msr.index, 0x40000002);
      run.msr.error = 0;
      run.msr.data = 0xaabbccdd11223344n;

      expectReport(stub, 0x11223344, 'exit 4: eax of the RDMSR answer');
      assert.equal(run.syncRegs[1], 0xaabbccddn, 'rbx holds edx of the answer');
      run.syncRegs[1] = 0x5a5a5a5an;
      run.markRegsDirty();
      expectReport(stub, 0x5a5a5a5a, 'exit 5: rbx as the host rewrote it');

      expectExit(stub, K.KVM_EXIT_IO, 'exit 6');
      assert.deepEqual({ port: run.io.port, value: run.ioData().getUint32(0, true) }, { port: DOORBELL_PORT, value: 8 });
      assert.equal(doorbell.drain(), 1n, 'the matching write signalled the eventfd once, without an exit');
      expectReport(stub, 0xd00d, 'exit 7: nothing exited between the two doorbell writes');

      vm.removeIoeventfd(doorbellSpec);
      assert.throws(() => vm.removeIoeventfd(doorbellSpec), (e: unknown) => e instanceof SysError && e.call === 'ioctl(KVM_IOEVENTFD)');
    } finally {
      stopWatchdog();
      doorbell.close();
      stub.close();
    }
  });

  test('HLT exits to userspace when there is no in-kernel irqchip', (t) => {
    if (skipWithoutKvm(t)) return;
    const stub = createStubVm([
      0xf4, // hlt
    ], { irqchip: false });
    const stopWatchdog = startWatchdog(20_000);
    try {
      expectExit(stub, K.KVM_EXIT_HLT, 'hlt');
      assert.equal(stub.vcpu.runArea.syncRegs[16], BigInt(CODE_GPA + 1), 'rip is past the HLT');
    } finally {
      stopWatchdog();
      stub.close();
    }
  });

  test('KVM copies the MSR filter bitmaps during the ioctl (they need not outlive it)', (t) => {
    if (skipWithoutKvm(t)) return;
    const stub = createStubVm([
      0xb9, 0x00, 0x00, 0x00, 0x40, // mov ecx, 0x40000000
      0x31, 0xc0, //                   xor eax, eax
      0x31, 0xd2, //                   xor edx, edx
      0x0f, 0x30, //                   wrmsr                  -> exit: WRMSR, reason FILTER
      0x66, 0xba, 0x20, 0x06, //       mov dx, 0x620
      0xef, //                         out dx, eax            -> exit: done
    ], { irqchip: true });
    const arenaAddress = mapAnonymous(MSR_FILTER_ARENA_SIZE);
    const arena = { address: arenaAddress, bytes: new Uint8Array(viewOf(arenaAddress, MSR_FILTER_ARENA_SIZE)) };
    const stopWatchdog = startWatchdog(20_000);
    try {
      stub.vm.enableUserSpaceMsr(K.KVM_MSR_EXIT_REASON_FILTER);
      const filter = encodeMsrFilter(K.KVM_MSR_FILTER_DEFAULT_ALLOW, [
        { flags: K.KVM_MSR_FILTER_READ | K.KVM_MSR_FILTER_WRITE, base: 0x40000000, nmsrs: 64, bitmap: new Uint8Array(8) },
      ], arena);
      ioctlBuffer(stub.vm.fd, K.KVM_X86_SET_MSR_FILTER, filter);
      arena.bytes.fill(0xff); // had KVM kept the pointer, every MSR would now be allowed
      expectExit(stub, K.KVM_EXIT_X86_WRMSR, 'the write is still refused');
      assert.equal(stub.vcpu.runArea.msr.index, 0x40000000);
      assert.equal(stub.vcpu.runArea.msr.reason, K.KVM_MSR_EXIT_REASON_FILTER);
    } finally {
      stopWatchdog();
      munmap(arenaAddress, MSR_FILTER_ARENA_SIZE);
      stub.close();
    }
  });

  test('an MSR exit answered with error raises #GP in the guest (no IDT here: triple fault)', (t) => {
    if (skipWithoutKvm(t)) return;
    const stub = createStubVm([
      0xb9, 0x00, 0x00, 0x00, 0x40, // mov ecx, 0x40000000
      0x0f, 0x30, //                   wrmsr                  -> exit: WRMSR; the host refuses it
      0x66, 0xba, 0x20, 0x06, //       mov dx, 0x620
      0xef, //                         out dx, eax            (not reached)
    ], { irqchip: true });
    const stopWatchdog = startWatchdog(20_000);
    try {
      stub.vm.enableUserSpaceMsr(K.KVM_MSR_EXIT_REASON_FILTER);
      stub.vm.setMsrFilter([{ base: 0x40000000, count: 1, allowRead: true, allowWrite: false }]);
      expectExit(stub, K.KVM_EXIT_X86_WRMSR, 'the write is refused by the filter');
      stub.vcpu.runArea.msr.error = 1;
      expectExit(stub, K.KVM_EXIT_SHUTDOWN, '#GP with no IDT');
      assert.equal(stub.vcpu.getRegs().rip, BigInt(CODE_GPA + 5), 'the WRMSR faulted: rip still points at it');
    } finally {
      stopWatchdog();
      stub.close();
    }
  });

  test('registers, MSRs and FPU state through the vCPU ioctls', (t) => {
    if (skipWithoutKvm(t)) return;
    const stub = createStubVm([0xf4], { irqchip: true });
    try {
      const { vcpu } = stub;
      const sregs = vcpu.getSregs();
      assert.equal(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
      assert.equal(sregs.cs.l, true);
      assert.equal(sregs.cr3, BigInt(PML4_GPA));
      assert.equal(vcpu.getRegs().rip, BigInt(CODE_GPA));
      const KERNEL_GS_BASE = 0xc0000102;
      vcpu.setMsrs([{ index: KERNEL_GS_BASE, value: 0xffff888000001234n }]);
      assert.deepEqual(vcpu.getMsrs([KERNEL_GS_BASE]), [0xffff888000001234n]);
      assert.throws(() => vcpu.getMsrs([KERNEL_GS_BASE, 0x12345678]), (e: unknown) => e instanceof KvmVcpuError && /0x12345678/.test(e.message));
      assert.equal(vcpu.getFpuControl().fcw, 0x37f, 'the x87 control word after setFpuDefaults');
      assert.equal(vcpu.getMpState(), K.KVM_MP_STATE_RUNNABLE);
      vcpu.setMpStateRunnable();
    } finally {
      stub.close();
    }
  });
});

describe('kick', () => {
  let system: KvmSystem | null = null;
  before(() => {
    if (kvmUnavailable() === null) system = KvmSystem.open(KVM_PATH);
  });
  after(() => system?.close());

  async function kickAfterRunning(t: TestContext, code: number[], irqchip: boolean): Promise<{ exit: number; immediateExit: number; rip: string }> {
    const stub = createStubVm(code, { irqchip });
    const kickArea = KvmRunArea.map(stub.vcpuFd, stub.mmapSize); // this thread's own mapping of the vCPU's run area
    const worker = new Worker(new URL('./support/kvm-spin-worker.js', import.meta.url), {
      workerData: { vcpuFd: stub.vcpuFd, mmapSize: stub.mmapSize } satisfies SpinWorkerData,
    });
    try {
      return await new Promise((resolve, reject) => {
        let tid = 0;
        const timeout = setTimeout(() => reject(new Error('the vCPU worker did not come back from KVM_RUN within 20 s')), 20_000);
        worker.on('error', reject);
        worker.on('message', (m: SpinWorkerMessage) => {
          if (m.type === 'started') tid = m.tid;
          else if (m.type === 'running') {
            assert.equal(m.value, 1);
            // Let it get back into KVM_RUN and spin; a kick that lands earlier is caught by immediate_exit.
            setTimeout(() => {
              t.diagnostic(`kicking thread ${tid}`);
              assert.equal(kickVcpu(kickArea, tid), true);
            }, 100);
          } else if (m.type === 'returned') {
            clearTimeout(timeout);
            resolve(m);
          } else {
            clearTimeout(timeout);
            reject(new Error(m.error));
          }
        });
      });
    } finally {
      // A worker still inside KVM_RUN would keep the process alive: kick until it is gone.
      const again = setInterval(() => {
        kickArea.immediateExit = 1;
      }, 50);
      await worker.terminate();
      clearInterval(again);
      kickArea.unmap();
      stub.close();
    }
  }

  const report1 = [
    0x66, 0xba, 0x20, 0x06, //       mov dx, 0x620
    0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax, 1
    0xef, //                         out dx, eax   -> "running"
  ];

  test('brings a vCPU spinning in the guest (jmp $) out of KVM_RUN in its worker', async (t) => {
    if (skipWithoutKvm(t)) return;
    const result = await kickAfterRunning(t, [...report1, 0xeb, 0xfe /* jmp $ */], false);
    assert.equal(result.exit, K.KVM_EXIT_INTR, `exit ${K.exitReasonName(result.exit)}`);
    assert.equal(result.immediateExit, 1, 'the kick left immediate_exit set for the loop to clear');
    assert.equal(result.rip, `0x${(CODE_GPA + report1.length).toString(16)}`, 'the guest was spinning on its jmp');
  });

  test('brings a vCPU halted in the kernel (HLT with the in-kernel irqchip) out of KVM_RUN', async (t) => {
    if (skipWithoutKvm(t)) return;
    const result = await kickAfterRunning(t, [...report1, 0xf4 /* hlt */], true);
    assert.equal(result.exit, K.KVM_EXIT_INTR, `exit ${K.exitReasonName(result.exit)}: HLT did not reach userspace, the kick ended KVM_RUN`);
    assert.equal(result.rip, `0x${(CODE_GPA + report1.length + 1).toString(16)}`, 'rip is past the HLT');
  });

  test('a thread that has gone is reported, not an error', (t) => {
    if (skipWithoutKvm(t)) return;
    const stub = createStubVm([0xf4], { irqchip: false });
    try {
      assert.equal(kickVcpu(stub.vcpu.runArea, 0x3fffffff), false);
      assert.equal(stub.vcpu.runArea.immediateExit, 1);
      assert.equal(stub.vcpu.run(), K.KVM_EXIT_INTR, 'immediate_exit alone ends the next KVM_RUN at once');
      stub.vcpu.runArea.immediateExit = 0;
      assert.equal(stub.vcpu.run(), K.KVM_EXIT_HLT);
    } finally {
      stub.close();
    }
  });
});

describe('detectKvmHardware', () => {
  const roots: string[] = [];
  after(() => {
    for (const root of roots) fs.rmSync(root, { recursive: true, force: true });
  });

  /** A fake host: a device node stand-in, loaded modules, and a cpuinfo flags line. */
  function fakeHost(o: { device?: boolean; modules?: string[]; flags?: string }): Required<KvmHardwarePaths> {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'enlighten-kvm-host-'));
    roots.push(root);
    fs.chmodSync(root, 0o755);
    const devicePath = path.join(root, 'kvm');
    if (o.device !== false) fs.writeFileSync(devicePath, '', { mode: 0o600 });
    const sysModuleDir = path.join(root, 'module');
    fs.mkdirSync(sysModuleDir);
    for (const m of o.modules ?? []) fs.mkdirSync(path.join(sysModuleDir, m));
    const cpuinfoPath = path.join(root, 'cpuinfo');
    fs.writeFileSync(cpuinfoPath, `processor\t: 0\nvendor_id\t: Test\nflags\t\t: ${o.flags ?? 'fpu sse2 lm'}\n\nprocessor\t: 1\nflags\t\t: fpu\n`);
    return { devicePath, sysModuleDir, cpuinfoPath };
  }

  test('no device node: none, with the alternative', () => {
    const host = fakeHost({ device: false, modules: ['kvm_intel'], flags: 'fpu vmx' });
    const result = detectKvmHardware(host);
    assert.equal(result.usable, false);
    assert.equal(result.kind, 'none');
    assert.equal(result.reason, `${host.devicePath} does not exist: KVM is not available on this host (no kvm module, or no VT-x/AMD-V); use --backend process`);
  });

  test('PVM: refused with its one-line explanation, whatever the CPU flags say', () => {
    for (const modules of [['kvm_pvm'], ['kvm_pvm', 'kvm_intel']]) {
      const result = detectKvmHardware(fakeHost({ modules, flags: 'fpu vmx' }));
      assert.deepEqual(result, { usable: false, kind: 'pvm', reason: PVM_REASON });
    }
    assert.match(PVM_REASON, /^\/dev\/kvm is PVM \(software-only KVM, no VT-x\/AMD-V\).*use --backend process$/);
    assert.ok(!PVM_REASON.includes('\n'));
  });

  test('VT-x and AMD-V, by vendor module and CPU flag, or by flag alone when KVM is built in', () => {
    const cases: [string[], string, string][] = [
      [['kvm', 'kvm_intel'], 'fpu vmx sse2', 'vmx'],
      [['kvm', 'kvm_amd'], 'fpu svm sse2', 'svm'],
      [['kvm'], 'fpu vmx', 'vmx'],
      [[], 'svm', 'svm'],
    ];
    for (const [modules, flags, kind] of cases) {
      const result = detectKvmHardware(fakeHost({ modules, flags }));
      assert.equal(result.kind, kind, `${modules.join(',')} / ${flags}`);
      assert.equal(result.usable, true);
    }
  });

  test('a vendor module without its CPU flag, or neither: none', () => {
    for (const [modules, flags] of [[['kvm_intel'], 'fpu sse2'], [['kvm_amd'], 'fpu vmx'], [[], 'fpu sse2']] as const) {
      const host = fakeHost({ modules: [...modules], flags });
      const result = detectKvmHardware(host);
      assert.deepEqual({ usable: result.usable, kind: result.kind }, { usable: false, kind: 'none' });
      assert.match(result.reason, /no hardware virtualization backs it.*use --backend process$/);
    }
  });

  test('a device the user may not open: refused with what to do', (t) => {
    const host = fakeHost({ modules: ['kvm_intel'], flags: 'fpu vmx' });
    const expected = `no permission to open ${host.devicePath} read-write (add the user to the group that owns it, usually 'kvm'); use --backend process`;
    if (process.getuid?.() !== 0) {
      fs.chmodSync(host.devicePath, 0o000);
      assert.deepEqual(detectKvmHardware(host), { usable: false, kind: 'vmx', reason: expected });
      return;
    }
    // root may open anything: ask as 'nobody' instead (the device stand-in is root's, mode 0600).
    const moduleUrl = new URL('../src/kvm/hardware-check.js', import.meta.url).href;
    const script = `import(${JSON.stringify(moduleUrl)}).then((m) => console.log(JSON.stringify(m.detectKvmHardware(${JSON.stringify(host)}))))`;
    const child = spawnSync(process.execPath, ['-e', script], { uid: 65534, gid: 65534, encoding: 'utf8', cwd: os.tmpdir() });
    if (child.error || child.status !== 0) {
      const reason = `cannot run a check as user nobody here: ${child.error?.message ?? child.stderr}`;
      console.log(`# SKIP ${reason}`);
      t.skip(reason);
      return;
    }
    assert.deepEqual(JSON.parse(child.stdout), { usable: false, kind: 'vmx', reason: expected });
  });

  test('this host, as its kernel modules describe it', (t) => {
    const result = detectKvmHardware();
    t.diagnostic(`this host: ${result.kind}, usable ${result.usable}: ${result.reason}`);
    if (fs.existsSync('/sys/module/kvm_pvm') && fs.existsSync('/dev/kvm')) {
      assert.deepEqual(result, { usable: false, kind: 'pvm', reason: PVM_REASON });
    } else {
      assert.notEqual(result.kind, 'pvm');
    }
  });
});
