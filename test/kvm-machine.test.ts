// `enlighten run --backend kvm` end to end on this machine's real /dev/kvm, with a stand-in
// kernel: a bzImage whose 64-bit entry is a stub that prints the command line it was given
// (read through boot_params, as Linux does) on the 16550 console and then powers off
// through the ACPI sleep register, resets through the ACPI reset register, or triple
// faults. PVM cannot run a real kernel, so ENLIGHTEN_FORCE_KVM=1 lets these stubs through;
// the refusal itself is tested too.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { Asm } from './support/x86-asm.js';
import { fakeBzImage } from './support/debian-kernel.js';
import { runTool, scratchDir } from './support/storage.js';
import { detectKvmHardware } from '../src/kvm/hardware-check.js';
import { ACPI_RESET_PORT, ACPI_SLEEP_CONTROL_PORT, COM1_PORT } from '../src/x86/platform-ports.js';

const BIN = new URL('../../bin/enlighten.js', import.meta.url).pathname;
const kvmMissing = fs.existsSync('/dev/kvm') ? false : 'NEEDS /dev/kvm';
const BOOT_PARAMS_CMD_LINE_PTR = 0x228;

type Ending = 'poweroff' | 'reset' | 'triple-fault' | 'panic';

/** The stub kernel's 64-bit entry (at payload offset 0x200). RSI = boot_params. */
function stubKernel(ending: Ending, extraLine?: string): Uint8Array {
  const a = new Asm();
  const putc = (ch: number) => a.movImm32('edx', COM1_PORT).movImm32('eax', ch).outDxAl();
  for (const ch of 'cmdline: ') putc(ch.charCodeAt(0));
  a.load32('r12d', 'rsi', BOOT_PARAMS_CMD_LINE_PTR);
  a.label('next');
  a.raw([0x41, 0x0f, 0xb6, 0x04, 0x24]); // movzx eax, byte [r12]
  a.raw([0x84, 0xc0]); // test al, al
  a.jcc('z', 'done');
  a.movImm32('edx', COM1_PORT).outDxAl();
  a.raw([0x49, 0xff, 0xc4]); // inc r12
  a.jmp('next');
  a.label('done');
  putc(0x0a);
  for (const ch of extraLine ?? '') putc(ch.charCodeAt(0));
  if (extraLine) putc(0x0a);
  switch (ending) {
    case 'poweroff': // SLP_TYP 5 (S5) << 2 | SLP_EN, as Linux's hardware-reduced poweroff writes it
      a.movImm32('edx', ACPI_SLEEP_CONTROL_PORT).movImm32('eax', 0x34).outDxAl();
      break;
    case 'reset':
      a.movImm32('edx', ACPI_RESET_PORT).movImm32('eax', 1).outDxAl();
      break;
    case 'panic': // what Linux's Hyper-V panic notifier does, then panic=-1's reset
      for (const [msr, value] of [[0x40000100, 0xdead], [0x40000101, 0x81], [0x40000102, 0x1234], [0x40000103, 0], [0x40000104, 0]]) {
        a.movImm32('ecx', msr!).movImm32('eax', value!).movImm32('edx', 0).wrmsr();
      }
      a.movImm32('ecx', 0x40000105).movImm32('eax', 0).movImm32('edx', 0x80000000).wrmsr();
      a.movImm32('edx', ACPI_RESET_PORT).movImm32('eax', 1).outDxAl();
      break;
    case 'triple-fault': // ud2 with no IDT: #UD, #GP, #DF, shutdown
      a.raw([0x0f, 0x0b]);
      break;
  }
  a.label('hang').hlt().jmp('hang');
  const code = a.bytes();
  const image = fakeBzImage({ payloadSize: 0x1000 });
  const payloadOffset = (4 + 1) * 512;
  image.fill(0, payloadOffset, payloadOffset + 0x1000);
  image.set(code, payloadOffset + 0x200);
  return image;
}

function runVm(args: string[], env: Record<string, string> = { ENLIGHTEN_FORCE_KVM: '1' }) {
  return runTool('env', [...Object.entries(env).map(([k, v]) => `${k}=${v}`), process.execPath, BIN, 'run', '--backend', 'kvm', '--events', 'json', '--api-socket', path.join(scratchDir('kvm-api'), 'api.sock'), ...args], 60_000);
}

function events(stdout: string): Record<string, unknown>[] {
  return stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
}

function kernelFile(ending: Ending, extraLine?: string): string {
  const file = path.join(scratchDir('kvm-kernel'), 'bzImage');
  fs.writeFileSync(file, stubKernel(ending, extraLine));
  return file;
}

test('a direct-booted kernel gets its command line through boot_params, prints on the 16550 console, and ACPI S5 poweroff exits 0', { skip: kvmMissing, timeout: 90_000 }, async () => {
  const r = await runVm(['--kernel', kernelFile('poweroff'), '--cmdline', 'console=ttyS0 hello=world', '--cpus', '2', '--memory', '128M']);
  assert.equal(r.code, 0, r.stderr);
  const all = events(r.stdout);
  assert.ok(all.some((e) => e.event === 'console' && e.line === 'cmdline: console=ttyS0 hello=world'), r.stdout);
  const exit = all.find((e) => e.event === 'exit')!;
  assert.equal(exit.code, 0);
  assert.match(String(exit.reason), /powered off \(ACPI S5\)/);
});

test('the exit status a guest reports with ENLIGHTEN-EXIT becomes the exit code', { skip: kvmMissing, timeout: 90_000 }, async () => {
  const r = await runVm(['--kernel', kernelFile('poweroff', 'ENLIGHTEN-EXIT 7'), '--memory', '128M']);
  assert.equal(r.code, 7, r.stderr);
  assert.ok(events(r.stdout).some((e) => e.event === 'command-exit' && e.status === 7));
});

test('a guest reset exits 0 with --on-reboot exit, and boots again with --on-reboot restart', { skip: kvmMissing, timeout: 90_000 }, async () => {
  const exit = await runVm(['--kernel', kernelFile('reset'), '--memory', '128M', '--on-reboot', 'exit']);
  assert.equal(exit.code, 0, exit.stderr);
  assert.match(String(events(exit.stdout).find((e) => e.event === 'exit')!.reason), /reset/);
  // With restart the stub resets forever: the second boot prints its command line again; then stop it.
  const child = (await import('node:child_process')).spawn(process.execPath, [BIN, 'run', '--backend', 'kvm', '--events', 'json', '--api-socket', path.join(scratchDir('kvm-api'), 'api.sock'), '--kernel', kernelFile('reset'), '--memory', '128M'], { env: { ...process.env, ENLIGHTEN_FORCE_KVM: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no second boot: ${out}`)), 30_000);
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (events(out).filter((e) => e.event === 'reboot').length >= 2) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  child.kill('SIGTERM');
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  assert.equal(events(out).filter((e) => e.event === 'console' && String(e.line).startsWith('cmdline:')).length >= 2, true);
  // SIGTERM lands either mid-boot (stopped by the host: 1) or on a reset (not restarted while stopping: 0).
  assert.ok(code === 0 || code === 1, `exit code ${code}`);
});

test('a triple fault ends the VM with status 1 and a register dump', { skip: kvmMissing, timeout: 90_000 }, async () => {
  const r = await runVm(['--kernel', kernelFile('triple-fault'), '--memory', '128M']);
  assert.equal(r.code, 1);
  const exit = events(r.stdout).find((e) => e.event === 'exit')!;
  assert.match(String(exit.reason), /triple fault/);
  assert.match(String(exit.reason), /RIP=[0-9a-f]{16}/);
});

test('a guest that reports a panic through the Hyper-V crash MSRs ends with status 1 and the crash, not a restart', { skip: kvmMissing, timeout: 90_000 }, async () => {
  const r = await runVm(['--kernel', kernelFile('panic'), '--memory', '128M']);
  assert.equal(r.code, 1, r.stderr);
  const exit = events(r.stdout).find((e) => e.event === 'exit')!;
  assert.match(String(exit.reason), /guest crashed: error code 0xdead/);
  assert.equal(events(r.stdout).filter((e) => e.event === 'reboot').length, 0);
});

test('without VT-x/AMD-V the KVM backend refuses with one line that names the alternative', { skip: kvmMissing, timeout: 30_000 }, async (t) => {
  const hardware = detectKvmHardware();
  if (hardware.usable) return t.skip('this host has hardware virtualization: nothing to refuse');
  const r = await runVm(['--kernel', kernelFile('poweroff')], {});
  assert.equal(r.code, 1);
  assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  assert.match(r.stderr, /PVM|no VT-x/);
  assert.match(r.stderr, /--backend process/);
});

test('bad input to the KVM backend: clear errors and non-zero exits', { skip: kvmMissing, timeout: 60_000 }, async () => {
  const missing = await runVm(['--kernel', '/nonexistent/bzImage']);
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /cannot read '\/nonexistent\/bzImage'/);
  const notImage = path.join(scratchDir('kvm-kernel'), 'notes.txt');
  fs.writeFileSync(notImage, 'not a kernel at all '.repeat(200));
  const bad = await runVm(['--kernel', notImage]);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /not a bzImage/);
  const big = await runVm(['--kernel', kernelFile('poweroff'), '--memory', '8G']);
  assert.equal(big.code, 2);
  assert.match(big.stderr, /--memory/);
  const noDevice = await runVm(['--kernel', kernelFile('poweroff'), '--kvm-device', '/nonexistent/kvm'], {});
  assert.equal(noDevice.code, 1);
  assert.match(noDevice.stderr, /\/nonexistent\/kvm/);
  const processBackend = await runTool(process.execPath, [BIN, 'run', '--kernel', kernelFile('poweroff')]);
  assert.equal(processBackend.code, 2);
  assert.match(processBackend.stderr, /needs '--backend kvm'/);
});
