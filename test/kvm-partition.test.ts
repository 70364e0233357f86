// The KVM partition with in-guest stubs on this machine's real /dev/kvm: a handful of
// instructions per test exercise the Hyper-V interface exactly as Linux's hv_vmbus uses it
// (guest OS id, hypercall page, HvPostMessage, fast HvSignalEvent, SynIC message slots with
// pending/EOM, the reference TSC page) and the statuses a misbehaving guest gets.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { Asm } from './support/x86-asm.js';
import { createStubVm, enableHypercalls, enableLocalApic, finish, handlers, hex, hypercall, Mark, report, reportRegister, StubLayout, wrmsr, HV_VECTOR, type StubVm } from './support/kvm-stub.js';
import { referenceTimeFromTsc, referenceTscScale } from '../src/hyperv/reference-tsc-page.js';
import { EventFd } from '../src/sys/eventfd.js';
import { VmbusServer } from '../src/vmbus/server/vmbus-server.js';
import { encodeMessage } from '../src/vmbus/channel-messages.js';
import { hypercallPageCode } from '../src/hyperv/hypercall-page.js';
import { HvStatus } from '../src/hyperv/hv-status.js';
import { ExitCounter } from '../src/partition/kvm/vcpu-exit-stats.js';

const kvmMissing = fs.existsSync('/dev/kvm') ? false : 'NEEDS /dev/kvm: these stub tests run on real KVM (PVM is fine)';

async function withVm(vm: StubVm, body: () => Promise<void>): Promise<void> {
  try {
    vm.start();
    await body();
  } finally {
    await vm.stop();
  }
}

test('(a)+(f) guest OS id, hypercall MSR and page, hypercall statuses, #GP for synthetic MSRs we do not offer', { skip: kvmMissing, timeout: 60_000 }, async () => {
  const a = new Asm(BigInt(StubLayout.code[0]));
  // The hypercall MSR reads 0 before the guest enables it, then reads back what it wrote.
  a.movImm32('ecx', 0x40000001).rdmsr();
  reportRegister(a, 'eax');
  enableHypercalls(a);
  a.movImm32('ecx', 0x40000001).rdmsr();
  reportRegister(a, 'eax');
  // An unknown hypercall code.
  hypercall(a, 0x99, 0);
  reportRegister(a, 'eax');
  // HvPostMessage: a misaligned input block, then one whose payload size is 241.
  hypercall(a, 0x5c, StubLayout.postInput + 4);
  reportRegister(a, 'eax');
  hypercall(a, 0x5c, StubLayout.postInput);
  reportRegister(a, 'eax');
  // HvPostMessage as a fast call is not allowed.
  hypercall(a, 0x1005c, 0);
  reportRegister(a, 'eax');
  // VP index.
  a.movImm32('ecx', 0x40000002).rdmsr();
  reportRegister(a, 'eax');
  // VP_RUNTIME is not offered: #GP. VP_INDEX is read-only: #GP.
  a.movImm32('ecx', 0x40000010).rdmsr();
  report(a, 0xaf7e);
  wrmsr(a, 0x40000002, 5n);
  report(a, 0xaf7f);
  finish(a);
  const vm = createStubVm({ vpCount: 1, programs: [a], handlerCode: handlers() });
  const input = vm.partition.memory.view;
  input.setUint32(StubLayout.postInput, 1, true); // connection id
  input.setUint32(StubLayout.postInput + 8, 1, true); // message type
  input.setUint32(StubLayout.postInput + 12, 241, true); // payload size: one too many
  await withVm(vm, async () => {
    const seen = await vm.waitForReports(0, 12);
    assert.deepEqual(seen.map(hex), [
      0, 0x20001, HvStatus.InvalidHypercallCode, HvStatus.InvalidAlignment, HvStatus.InvalidParameter, HvStatus.InvalidHypercallInput,
      0, Mark.GeneralProtection, 0xaf7e, Mark.GeneralProtection, 0xaf7f, Mark.Done,
    ].map(hex));
    assert.equal(vm.partition.hv.guestOsId, 0x8100_0006_0100_0000n);
    assert.equal(vm.partition.hv.hypercallEnabled, true);
    const code = hypercallPageCode();
    assert.deepEqual(vm.partition.memory.bytes.slice(StubLayout.hypercallPage, StubLayout.hypercallPage + code.length), code);
    assert.ok(vm.partition.stats.total(ExitCounter.Hypercall) >= 4, 'slow hypercalls exit to userspace');
  });
});

/**
 * The SynIC interrupt handler, at vector 0xF3 only: reports [Isr, VP index, message type,
 * size | flags << 8, first payload dword], frees slot 2 (r15 points at it), writes EOM when
 * message_pending was set, EOIs the local APIC.
 */
function synicHandlers() {
  return handlers((a) => {
    a.label('isr');
    a.movImm32('ecx', 0x40000002).rdmsr().movReg32('esi', 'eax');
    a.load32('edi', 'r15', 0).load32('ebx', 'r15', 4).load32('ebp', 'r15', 16);
    report(a, Mark.Isr);
    reportRegister(a, 'esi');
    reportRegister(a, 'edi');
    reportRegister(a, 'ebx');
    reportRegister(a, 'ebp');
    a.xorReg32('eax', 'eax').store32('r15', 0, 'eax');
    a.movImm32('ecx', 0x100).testReg32('ebx', 'ecx').jcc('z', 'no-eom');
    wrmsr(a, 0x40000084, 0n);
    a.label('no-eom');
    a.movImm64('rbx', 0xfee00000n).xorReg32('eax', 'eax').store32('rbx', 0xb0, 'eax');
    a.iretq();
    return new Map([[HV_VECTOR, 'isr']]);
  });
}

/** Enables this vCPU's SynIC the way hv_vmbus does: SIMP, SIEFP, SINT2 = 0xF3 unmasked, SCONTROL. */
function enableSynic(a: Asm, vp: number): Asm {
  enableLocalApic(a);
  wrmsr(a, 0x40000083, BigInt(StubLayout.simp[vp]!) | 1n);
  wrmsr(a, 0x40000082, BigInt(StubLayout.siefp[vp]!) | 1n);
  wrmsr(a, 0x40000092, BigInt(HV_VECTOR));
  wrmsr(a, 0x40000080, 1n);
  return a.movImm64('r15', BigInt(StubLayout.simp[vp]! + 2 * 256));
}

function waitForInterrupts(a: Asm): Asm {
  return a.sti().label('wait').hlt().jmp('wait');
}

test('(b)+(d) HvPostMessage reaches the VMBus server; SynIC messages arrive in slot 2 with vector 0xF3 on the vCPU they target; EOM brings the next', { skip: kvmMissing, timeout: 60_000 }, async () => {
  const boot = new Asm(BigInt(StubLayout.code[0]));
  enableSynic(boot, 0);
  enableHypercalls(boot);
  report(boot, Mark.Ready);
  hypercall(boot, 0x5c, StubLayout.postInput); // INITIATE_CONTACT, written below
  reportRegister(boot, 'eax');
  waitForInterrupts(boot);
  const second = new Asm(BigInt(StubLayout.code[1]));
  enableSynic(second, 1);
  report(second, Mark.Ready);
  waitForInterrupts(second);

  const vm = createStubVm({ vpCount: 2, programs: [boot, second], handlerCode: synicHandlers() });
  const server = new VmbusServer({ partition: vm.partition });
  const connected = new Promise<{ version: string; targetVp: number }>((resolve) => server.once('connected', resolve));
  const contact = encodeMessage({ kind: 'initiate-contact', version: 0x50003, targetVcpu: 0, interruptPage: 0n, messageSint: 2, messageVtl: 0, monitorPage1: 0n, monitorPage2: 0n });
  const view = vm.partition.memory.view;
  view.setUint32(StubLayout.postInput, 4, true); // connection id 4: INITIATE_CONTACT for 5.x
  view.setUint32(StubLayout.postInput + 8, 1, true);
  view.setUint32(StubLayout.postInput + 12, contact.length, true);
  vm.partition.memory.bytes.set(contact, StubLayout.postInput + 16);
  await withVm(vm, async () => {
    assert.equal((await connected).version, '5.3');
    // The server answered VERSION_RESPONSE (type 15) to vCPU 0, the target_vcpu the guest named.
    const onBoot = await vm.waitForReports(0, 7);
    assert.deepEqual(onBoot.slice(0, 2).map(hex), [Mark.Ready, HvStatus.Success].map(hex));
    assert.deepEqual(onBoot.slice(2, 5).map(hex), [Mark.Isr, 0, 1].map(hex), 'ISR on VP 0 with VMBus message type 1');
    assert.equal(onBoot[6], 15, 'VERSION_RESPONSE');
    // Two messages for vCPU 1: the first says another is pending, the second comes after EOM.
    await vm.waitForReports(1, 1);
    assert.ok(vm.partition.synic.postMessage(1, 2, 0x100, payload(0xaaaa0001)));
    assert.ok(vm.partition.synic.postMessage(1, 2, 0x100, payload(0xbbbb0002)));
    const onSecond = await vm.waitForReports(1, 11);
    assert.deepEqual(onSecond.map(hex), [
      Mark.Ready,
      Mark.Isr, 1, 0x100, 8 | (1 << 8), 0xaaaa0001,
      Mark.Isr, 1, 0x100, 8, 0xbbbb0002,
    ].map(hex));
    assert.equal(vm.reports[0]!.length, 7, 'nothing meant for VP 1 reached VP 0');
    assert.equal(vm.partition.synic.queuedMessages(1, 2), 0);
  });
});

function payload(first: number): Uint8Array {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setUint32(0, first, true);
  return bytes;
}

test('(c) fast HvSignalEvent is taken by an ioeventfd without leaving the kernel; an unknown connection id gets INVALID_CONNECTION_ID', { skip: kvmMissing, timeout: 60_000 }, async () => {
  const a = new Asm(BigInt(StubLayout.code[0]));
  enableHypercalls(a);
  for (let i = 0; i < 3; i++) {
    hypercall(a, 0x1005d, 0x2001);
    reportRegister(a, 'eax');
  }
  hypercall(a, 0x1005d, 0x2999);
  reportRegister(a, 'eax');
  finish(a);
  const vm = createStubVm({ vpCount: 1, programs: [a], handlerCode: handlers() });
  const doorbell = EventFd.create();
  vm.partition.registerSignal(0x2001, doorbell);
  await withVm(vm, async () => {
    const seen = await vm.waitForReports(0, 5);
    assert.deepEqual(seen.map(hex), [0, 0, 0, HvStatus.InvalidConnectionId, Mark.Done].map(hex));
    assert.equal(doorbell.drain(), 3n, 'three signals reached the eventfd');
    const stats = vm.partition.stats;
    assert.equal(stats.total(ExitCounter.UnmatchedSignal), 1, 'only the unknown connection id exited to userspace');
    // Every port exit is accounted for: five reports and the one unmatched signal.
    assert.equal(stats.total(ExitCounter.Io), 6);
    assert.equal(stats.total(ExitCounter.Hypercall), 0);
  });
  vm.partition.unregisterSignal(0x2001);
  doorbell.close();
});

test('(e) the reference TSC page and the reference counter MSR tell the same time', { skip: kvmMissing, timeout: 60_000 }, async () => {
  const a = new Asm(BigInt(StubLayout.code[0]));
  wrmsr(a, 0x40000021, BigInt(StubLayout.tscPage) | 1n);
  a.movImm64('rbx', BigInt(StubLayout.tscPage));
  for (const offset of [0, 8, 12, 16, 20]) {
    a.load32('eax', 'rbx', offset);
    reportRegister(a, 'eax');
  }
  a.rdtsc().movReg32('esi', 'edx');
  reportRegister(a, 'eax');
  reportRegister(a, 'esi');
  a.movImm32('ecx', 0x40000020).rdmsr().movReg32('esi', 'edx');
  reportRegister(a, 'eax');
  reportRegister(a, 'esi');
  finish(a);
  const vm = createStubVm({ vpCount: 1, programs: [a], handlerCode: handlers() });
  await withVm(vm, async () => {
    const [sequence, scaleLo, scaleHi, offsetLo, offsetHi, tscLo, tscHi, refLo, refHi] = (await vm.waitForReports(0, 10)).map(BigInt);
    assert.ok(sequence !== 0n && sequence !== 0xffffffffn, 'the page is valid');
    const scale = (scaleHi! << 32n) | scaleLo!;
    assert.equal(scale, referenceTscScale(vm.partition.tscHz));
    const offset = BigInt.asIntN(64, (offsetHi! << 32n) | offsetLo!);
    const fromPage = referenceTimeFromTsc((tscHi! << 32n) | tscLo!, scale, offset);
    const fromMsr = (refHi! << 32n) | refLo!;
    // Read a few exits apart: they agree to well within 50 ms (units of 100 ns).
    const gap = fromMsr - fromPage;
    assert.ok(gap >= -100_000n && gap < 500_000n, `page ${fromPage} vs MSR ${fromMsr}`);
    assert.ok(fromMsr > 0n);
  });
});
