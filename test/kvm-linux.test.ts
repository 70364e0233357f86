// Real Linux guests on the KVM partition: the pinned Debian cloud kernels (6.1 and 6.12)
// with enlighten's initramfs. These need hardware virtualization (VT-x/AMD-V): on a host
// without it (PVM, as on the CI machines) every test here is SKIPPED LOUDLY with the reason,
// and counted. Run just these with `npm run test:kvm`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { detectKvmHardware } from '../src/kvm/hardware-check.js';
import { IC_SERVICES } from '../src/devices/ic/ic-protocol.js';
import { scratchDir, sparseImage } from './support/storage.js';
import { createNetns, deleteNetns, ip, uniqueName } from '../src/sys/netns.js';

const BIN = new URL('../../bin/enlighten.js', import.meta.url).pathname;
const hardware = detectKvmHardware();
const noHardware = hardware.usable ? false : `SKIPPED LOUDLY: NEEDS VT-x/AMD-V to boot a real Linux kernel (${hardware.reason})`;
if (noHardware) process.stderr.write(`kvm-linux: ${noHardware}\n`);

interface Run {
  code: number | null;
  events: Record<string, unknown>[];
  stderr: string;
}

/** `enlighten run --backend kvm --events json ARGS`; resolves when it exits. */
function boot(args: string[], timeoutMs = 300_000): Promise<Run> {
  const api = path.join(scratchDir('kvm-linux'), 'api.sock');
  const child = spawn(process.execPath, [BIN, 'run', '--backend', 'kvm', '--events', 'json', '--api-socket', api, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  return new Promise((resolve) => child.on('exit', (code) => {
    clearTimeout(timer);
    const events = stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
    resolve({ code, events, stderr });
  }));
}

const reports = (r: Run, key: string) => r.events.filter((e) => e.event === 'guest-report' && e.key === key).map((e) => String(e.value));
const consoleLines = (r: Run) => r.events.filter((e) => e.event === 'console').map((e) => String(e.line));

for (const kernel of ['6.1', '6.12']) {
  test(`Debian ${kernel}: Hyper-V detected, VMBus negotiated, the offered devices listed, 2 CPUs online, Shutdown IC powers it off`, { skip: noHardware, timeout: 600_000 }, async () => {
    const r = await boot(['--guest-kernel', kernel, '--cpus', '2', '--memory', '512M', '--stop-when', 'ready']);
    assert.equal(r.code, 0, `${r.stderr}\n${consoleLines(r).slice(-40).join('\n')}`);
    assert.deepEqual(reports(r, 'hyperv'), ['yes']);
    const version = reports(r, 'vmbus-version')[0];
    assert.match(version ?? '', /^\d+\.\d+$/, 'hv_vmbus negotiated a version');
    assert.ok(r.events.some((e) => e.event === 'vmbus-connected' && e.version === version), 'the host saw the same version');
    const offered = new Set(r.events.filter((e) => e.event === 'channel-open').map((e) => String(e.class)));
    const listed = new Set(reports(r, 'vmbus-device').map((g) => g.toLowerCase()));
    for (const name of ['heartbeat', 'shutdown', 'timesync', 'kvp'] as const) assert.ok(listed.has(IC_SERVICES[name].classId), `${name} in /sys/bus/vmbus/devices`);
    assert.ok(listed.has('ba6163d9-04a1-4d29-b605-72e2ffb1dc7f'), 'the SCSI controller in /sys/bus/vmbus/devices');
    assert.ok(offered.size >= 5);
    assert.deepEqual(reports(r, 'cpu-count'), ['2']);
    assert.ok(r.events.some((e) => e.event === 'shutdown-requested'));
    assert.match(String(r.events.find((e) => e.event === 'exit')?.reason), /powered off/);
  });
}

test('Debian 6.1 with 2 CPUs: a channel the guest opened on vCPU 1 interrupts vCPU 1', { skip: noHardware, timeout: 600_000 }, async () => {
  const r = await boot(['--cpus', '2', '--memory', '512M', '--', 'sh', '-c', 'for c in /sys/bus/vmbus/devices/*/channels/*/cpu; do echo "CHANNEL-CPU $(cat $c)"; done; grep HYP /proc/interrupts']);
  assert.equal(r.code, 0, r.stderr);
  const lines = consoleLines(r);
  const cpus = lines.filter((l) => l.startsWith('CHANNEL-CPU ')).map((l) => Number(l.split(' ')[1]));
  assert.ok(cpus.includes(1), `some channel targets CPU 1: ${cpus.join(',')}`);
  const hyp = lines.find((l) => /^\s*HYP:/.test(l));
  assert.ok(hyp, 'the guest has a HYP line in /proc/interrupts');
  const counts = hyp!.trim().split(/\s+/).slice(1, 3).map(Number);
  assert.ok(counts[1]! > 0, `vCPU 1 took Hyper-V callback interrupts: ${hyp}`);
});

test('Debian 6.1 with a StorVSP disk: mkfs, mount and fio verify inside the guest', { skip: noHardware, timeout: 900_000 }, async () => {
  const image = sparseImage(scratchDir('kvm-linux-disk'), 'disk.raw', 512 * 1024 * 1024);
  const script = [
    'set -e',
    'mkfs.ext4 -q /dev/sda',
    'mkdir -p /mnt && mount -t ext4 /dev/sda /mnt',
    'fio --name=verify --filename=/mnt/f --size=128M --rw=randrw --bs=4k --iodepth=16 --ioengine=libaio --direct=1 --verify=crc32c --verify_fatal=1 --numjobs=2 --group_reporting',
    'umount /mnt',
    'e2fsck -fn /dev/sda',
  ].join('; ');
  const r = await boot(['--cpus', '2', '--memory', '1G', '--disk', image, '--guest-package', 'e2fsprogs', '--guest-package', 'fio', '--', 'sh', '-c', script]);
  assert.equal(r.code, 0, `${r.stderr}\n${consoleLines(r).slice(-60).join('\n')}`);
});

test('Debian 6.1 with a NetVSP NIC on a TAP: ping and iperf3 from inside the guest to a host namespace', { skip: noHardware, timeout: 900_000 }, async () => {
  const h = uniqueName('enkh');
  const hostTap = uniqueName('enkt');
  createNetns(h);
  const server = spawn('ip', ['netns', 'exec', h, 'iperf3', '-s', '-1'], { stdio: 'ignore' });
  try {
    const script = [
      'set -e',
      'ip link set eth0 up',
      'ip addr add 10.79.1.2/24 dev eth0',
      'ping -c 3 -W 5 10.79.1.1',
      'iperf3 -c 10.79.1.1 -t 3',
      'iperf3 -c 10.79.1.1 -t 3 -R || true',
    ].join('; ');
    // The TAP appears in H once the VM starts; give it the host address from a watcher.
    const watcher = setInterval(() => {
      try {
        ip(['addr', 'add', '10.79.1.1/24', 'dev', hostTap], h);
        clearInterval(watcher);
      } catch {
        // not there yet
      }
    }, 200);
    const r = await boot(['--cpus', '2', '--memory', '512M', '--net', `tap=${hostTap},netns=${h}`, '--guest-package', 'iperf3', '--', 'sh', '-c', script]);
    clearInterval(watcher);
    assert.equal(r.code, 0, `${r.stderr}\n${consoleLines(r).slice(-60).join('\n')}`);
    assert.ok(consoleLines(r).some((l) => /3 packets transmitted, 3 (packets )?received/.test(l)));
  } finally {
    server.kill();
    deleteNetns(h);
  }
});
