// The KVM partition with in-guest stubs on this machine's real /dev/kvm: a handful of
// instructions per test exercise the Hyper-V interface exactly as Linux's hv_vmbus uses it
// (guest OS id, hypercall page, HvPostMessage, fast HvSignalEvent, SynIC message slots with
// pending/EOM, the reference TSC page) and the statuses a misbehaving guest gets.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { Asm } from './support/x86-asm.js';
import { createStubVm, enableHypercalls, finish, handlers, hex, hypercall, Mark, report, reportRegister, StubLayout, wrmsr, type StubVm } from './support/kvm-stub.js';
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

test('(a)+(f) guest OS id, hypercall MSR and page, hypercall statuses, #GP for synthetic MSRs we do not offer', { skip: kvmMissing }, async () => {
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
