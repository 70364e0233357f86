// The enlighten command line as a user runs it: JSON events, exit codes, the control API.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const bin = path.join(root, 'bin/enlighten.js');

function runSync(args: string[]) {
  return spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 30_000 });
}

test('run --events json --stop-when ready: connect, open every channel, shut down, exit 0', () => {
  const socket = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'enl-')), 'vm.sock');
  const r = runSync(['run', '--backend', 'process', '--events', 'json', '--stop-when', 'ready', '--api-socket', socket]);
  assert.equal(r.status, 0, r.stderr);
  const events = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
  assert.deepEqual(events[0], { event: 'vmbus-connected', version: '5.3' });
  const opened = events.filter((e) => e.event === 'channel-open');
  // Every VM has the SCSI controller (disks can be hot-added later); storvsc binds it even when empty.
  assert.deepEqual([...new Set(opened.map((e) => e.name))].sort(), ['heartbeat', 'kvp', 'shutdown', 'storvsc', 'timesync']);
  for (const e of opened) {
    assert.equal(typeof e.relid, 'number');
    assert.match(e.class, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  }
  assert.ok(events.some((e) => e.event === 'power-off'));
  assert.deepEqual(events.at(-1).event, 'exit');
});

test('bad arguments get one line on stderr and exit code 2', () => {
  for (const args of [
    ['run', '--cpus', 'many'],
    ['run', '--memory', '12Q'],
    ['run', '--events', 'xml'],
    ['run', '--vmbus-version', '9.9'],
    ['run', '--no-such-flag'],
    ['frobnicate'],
    ['run', '--backend', 'xen'],
    ['run', '--backend', 'kvm', '--guest-kernel', '5.10'],
    ['run', '--backend', 'kvm', '--on-reboot', 'sometimes'],
    ['run', '--kernel', '/boot/vmlinuz'],
    ['run', '--backend', 'kvm', '--expose-disks', '/tmp'],
    ['acpi', '--dump', '/tmp/x', '--cpus', '0'],
  ]) {
    const r = runSync(args);
    assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.equal(r.stderr.trim().split('\n').length, 1, `${args.join(' ')}: one line, got ${r.stderr}`);
    assert.match(r.stderr, /^enlighten: /);
  }
});

test('the server limited to an older version: the guest reports it', () => {
  const socket = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'enl-')), 'vm.sock');
  const r = runSync(['run', '--events', 'json', '--stop-when', 'ready', '--vmbus-version', '4.0', '--api-socket', socket]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout.split('\n')[0]!), { event: 'vmbus-connected', version: '4.0' });
});

test('run --stop-when never: inspect shows the channels, `enlighten shutdown` ends it with 0', async () => {
  const socket = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'enl-')), 'vm.sock');
  const child = spawn(process.execPath, [bin, 'run', '--events', 'json', '--stop-when', 'never', '--api-socket', socket], { stdio: ['ignore', 'pipe', 'pipe'] });
  const exit = new Promise<number | null>((resolve) => child.on('exit', resolve));
  try {
    const lines = readline.createInterface({ input: child.stdout });
    for await (const line of lines) if (JSON.parse(line).event === 'ready') break;
    const inspect = runSync(['inspect', '--api-socket', socket, '--json', '--interval', '200']);
    assert.equal(inspect.status, 0, inspect.stderr);
    const status = JSON.parse(inspect.stdout);
    assert.equal(status.vmbusVersion, '5.3');
    // The controller's sub-channels (one per extra vCPU) are listed under the same name.
    assert.deepEqual([...new Set(status.channels.map((c: { name: string }) => c.name))], ['heartbeat', 'shutdown', 'timesync', 'kvp', 'scsi']);
    for (const c of status.channels) assert.equal(c.state, 'open');
    const text = runSync(['inspect', '--api-socket', socket, '--interval', '100']);
    assert.match(text.stdout, /relid\s+name\s+class/);
    const shutdown = runSync(['shutdown', '--api-socket', socket]);
    assert.equal(shutdown.status, 0, shutdown.stderr);
    assert.equal(await exit, 0);
  } finally {
    child.kill('SIGKILL');
  }
});

test('SIGTERM shuts the guest down through the Shutdown IC and exits 0', async () => {
  const socket = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'enl-')), 'vm.sock');
  const child = spawn(process.execPath, [bin, 'run', '--events', 'json', '--api-socket', socket], { stdio: ['ignore', 'pipe', 'pipe'] });
  const exit = new Promise<number | null>((resolve) => child.on('exit', resolve));
  const events: { event: string }[] = [];
  const lines = readline.createInterface({ input: child.stdout });
  for await (const line of lines) {
    events.push(JSON.parse(line));
    if (events.at(-1)!.event === 'ready') break;
  }
  child.kill('SIGTERM');
  assert.equal(await exit, 0);
});

test('shutdown with no VM running says so and exits non-zero', () => {
  const r = runSync(['shutdown', '--api-socket', path.join(os.tmpdir(), 'enl-none', 'nothing.sock')]);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /no VM is running/);
});
