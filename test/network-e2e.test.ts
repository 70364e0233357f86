// The whole network path with real tools: a guest namespace G holds the reference guest's
// NIC (its netvsc surfaced as a TAP), a host namespace H holds NetVSP's TAP backend.
// G's kernel -> TAP -> reference netvsc -> VMBus -> NetVSP -> TAP -> H's kernel, and back.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { createNetns, deleteNetns, ip, netnsUnavailableReason, runInNetns, uniqueName } from '../src/sys/netns.js';
import { runTool, scratchDir } from './support/storage.js';
import { iperf3Client } from './support/iperf3.js';

const BIN = new URL('../../bin/enlighten.js', import.meta.url).pathname;
const unavailable = netnsUnavailableReason();
const toolMissing = (tool: string) => runTool('sh', ['-c', `command -v ${tool}`]).then((r) => (r.code === 0 ? null : `NEEDS ${tool}`));

interface Vm {
  child: ChildProcess;
  events: Record<string, unknown>[];
  api: string;
  waitFor(predicate: (e: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  stop(): Promise<number | null>;
}

function startVm(args: string[]): Vm {
  const api = path.join(scratchDir('net-api'), 'api.sock');
  const child = spawn(process.execPath, [BIN, 'run', '--events', 'json', '--api-socket', api, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const events: Record<string, unknown>[] = [];
  const waiters: (() => void)[] = [];
  let buffer = '';
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stdout!.on('data', (d: Buffer) => {
    buffer += d.toString();
    const lines = buffer.split('\n');
    buffer = lines.pop()!;
    for (const line of lines) if (line.startsWith('{')) events.push(JSON.parse(line) as Record<string, unknown>);
    for (const w of waiters.splice(0)) w();
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return {
    child,
    events,
    api,
    waitFor(predicate, timeoutMs = 20_000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no matching event; saw ${JSON.stringify(events.slice(-8))}; stderr ${stderr.slice(-2000)}`)), timeoutMs);
        const check = () => {
          const found = events.find(predicate);
          if (found) {
            clearTimeout(timer);
            resolve(found);
          } else waiters.push(check);
        };
        check();
      });
    },
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}

/** An iperf3 client run that must succeed (retried while the server is not listening yet). */
async function iperf3(ns: string, args: string[]): Promise<string> {
  const r = await iperf3Client(ns, args);
  assert.equal(r.code, 0, `iperf3 ${args.join(' ')} in ${ns}: ${r.stderr}${r.stdout}`);
  assert.doesNotMatch(r.stdout, /"error"/, `iperf3 ${args.join(' ')} in ${ns}: ${r.stdout.slice(0, 2000)}`);
  return r.stdout;
}

async function inNs(ns: string, argv: string[], timeoutMs = 60_000) {
  const r = await runInNetns(ns, argv, timeoutMs);
  assert.equal(r.code, 0, `${argv.join(' ')} in ${ns}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

test('ping, iperf3 both ways, a 1 GiB transfer, MTU 9000 and link down/up between a guest and a host namespace', { skip: unavailable ?? false, timeout: 300_000 }, async (t) => {
  const step = (what: string) => { t.diagnostic(what); if (process.env.NET_E2E_TRACE) process.stderr.write(`${new Date().toISOString()} ${what}\n`); };
  const missing = (await toolMissing('ping')) ?? (await toolMissing('iperf3'));
  if (missing) return t.skip(`SKIPPED LOUDLY: ${missing}`);
  const g = uniqueName('eng');
  const h = uniqueName('enh');
  const hostTap = uniqueName('enht');
  createNetns(g);
  createNetns(h);
  const vm = startVm(['--net', `tap=${hostTap},netns=${h},mtu=9000`, '--expose-nics', g, '--cpus', '2']);
  try {
    const nic = await vm.waitFor((e) => e.event === 'nic');
    const guestTap = String(nic.name);
    const subnet = 10 + (process.pid % 200);
    ip(['addr', 'add', `10.${subnet}.7.1/24`, 'dev', hostTap], h);
    ip(['link', 'set', guestTap, 'mtu', '9000', 'up'], g);
    ip(['addr', 'add', `10.${subnet}.7.2/24`, 'dev', guestTap], g);
    const hostIp = `10.${subnet}.7.1`;
    const guestIp = `10.${subnet}.7.2`;
    step('ping');
    await inNs(g, ['ping', '-c', '3', '-W', '5', hostIp]);
    await inNs(h, ['ping', '-c', '3', '-W', '5', guestIp]);
    step('jumbo');
    // MTU 9000: a jumbo ping that must not fragment.
    await inNs(g, ['ping', '-c', '2', '-W', '5', '-M', 'do', '-s', '8972', hostIp]);

    step('iperf3');
    // iperf3 TCP both directions (the client in G sends, then -R receives).
    const server = spawn('ip', ['netns', 'exec', h, 'iperf3', '-s', '-1', '--json'], { stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 500));
    const up = JSON.parse(await iperf3(g, ['-c', hostIp, '-t', '2', '--json'])) as { end: { sum_received: { bytes: number } } };
    assert.ok(up.end.sum_received.bytes > 1_000_000, 'G -> H carried data');
    server.kill();
    // TSO from the guest side: G's kernel hands its TAP large segments, netvsc sends them with
    // an LSO PPI, and NetVSP passes them whole (vnet header) to the host TAP, whose kernel
    // cuts them; the transfer above arriving intact shows they were cut correctly.
    const afterUp = JSON.parse((await runTool(process.execPath, [BIN, 'nics', '--json', '--api-socket', vm.api])).stdout) as { backend: { txLargeFrames: number; txLargestFrame: number } }[];
    assert.ok(afterUp[0]!.backend.txLargeFrames > 0, `large segments reached the host TAP whole: ${JSON.stringify(afterUp[0]!.backend)}`);
    assert.ok(afterUp[0]!.backend.txLargestFrame > 9014, `a segment larger than one MTU-9000 frame: ${afterUp[0]!.backend.txLargestFrame}`);
    const server2 = spawn('ip', ['netns', 'exec', h, 'iperf3', '-s', '-1', '--json'], { stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 500));
    const down = JSON.parse(await iperf3(g, ['-c', hostIp, '-t', '2', '-R', '--json'])) as { end: { sum_received: { bytes: number } } };
    assert.ok(down.end.sum_received.bytes > 1_000_000, 'H -> G carried data');
    server2.kill();

    // RSC: the host's large segments reached the guest whole, as fragments joined by netvsc.
    const afterDown = JSON.parse((await runTool(process.execPath, [BIN, 'nics', '--json', '--api-socket', vm.api])).stdout) as { channels: { rxCoalesced: number }[] }[];
    const coalesced = afterDown[0]!.channels.reduce((n, c) => n + c.rxCoalesced, 0);
    assert.ok(coalesced > 0, `coalesced segments went to the guest: ${JSON.stringify(afterDown[0]!.channels)}`);

    step('1GiB');
    // 1 GiB from G to H (LSO from the guest) and 256 MiB from H to G (RSC toward the
    // guest), each with the same SHA-256 on both ends.
    await checkedTransfer(g, h, hostIp, 1024, 5201);
    await checkedTransfer(h, g, guestIp, 256, 5202);

    step('link');
    // Link down from the host: G's interface loses its carrier; up brings it back.
    const down1 = await runTool(process.execPath, [BIN, 'link', 'down', '--api-socket', vm.api]);
    assert.equal(down1.code, 0, down1.stderr);
    await until(async () => /NO-CARRIER/.test(ip(['link', 'show', guestTap], g)), 'NO-CARRIER in G');
    const up1 = await runTool(process.execPath, [BIN, 'link', 'up', '--api-socket', vm.api]);
    assert.equal(up1.code, 0, up1.stderr);
    await until(async () => /LOWER_UP/.test(ip(['link', 'show', guestTap], g)), 'LOWER_UP in G');
    await inNs(g, ['ping', '-c', '1', '-W', '5', hostIp]);
  } finally {
    await vm.stop();
    deleteNetns(g);
    deleteNetns(h);
  }
});

/** Sends `mib` MiB over TCP from namespace `from` to a receiver in `to` listening on ip:port; both ends' SHA-256 must agree. */
async function checkedTransfer(from: string, to: string, ip: string, mib: number, port: number): Promise<void> {
  const receiver = spawn('ip', ['netns', 'exec', to, process.execPath, '-e', `
    const h = require('crypto').createHash('sha256'); let n = 0;
    require('net').createServer((s) => { s.on('data', (d) => { h.update(d); n += d.length; }); s.on('end', () => { console.log(n + ' ' + h.digest('hex')); process.exit(0); }); }).listen(${port}, '${ip}');
  `], { stdio: ['ignore', 'pipe', 'inherit'] });
  let received = '';
  receiver.stdout!.on('data', (d: Buffer) => (received += d.toString()));
  const receiverExited = new Promise((r) => receiver.on('exit', r));
  await new Promise((r) => setTimeout(r, 500));
  const sent = await inNs(from, [process.execPath, '-e', `
    const h = require('crypto').createHash('sha256'); const chunk = Buffer.alloc(1 << 20); let i = 0;
    const s = require('net').connect(${port}, '${ip}', () => { (function more() { while (i < ${mib}) { chunk.writeUInt32LE(i, 0); h.update(chunk); i++; if (!s.write(chunk)) return s.once('drain', more); } s.end(() => console.log((${mib} * (1 << 20)) + ' ' + h.digest('hex'))); })(); });
  `], 240_000);
  await receiverExited;
  assert.equal(received.trim(), sent.trim(), `${mib} MiB from ${from} arrived intact in ${to}`);
}

async function until(condition: () => Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test('multi-queue: with 2 queues, flows to the guest spread over both channels (per-channel counters)', { skip: unavailable ?? false, timeout: 120_000 }, async (t) => {
  const missing = await toolMissing('iperf3');
  if (missing) return t.skip(`SKIPPED LOUDLY: ${missing}`);
  const g = uniqueName('eng');
  const h = uniqueName('enh');
  const hostTap = uniqueName('enht');
  createNetns(g);
  createNetns(h);
  const vm = startVm(['--net', `tap=${hostTap},netns=${h},queues=2`, '--expose-nics', g, '--cpus', '2']);
  try {
    const nic = await vm.waitFor((e) => e.event === 'nic');
    assert.equal(nic.queues, 2, 'the guest opened a sub-channel');
    const guestTap = String(nic.name);
    const subnet = 10 + ((process.pid + 1) % 200);
    ip(['addr', 'add', `10.${subnet}.8.1/24`, 'dev', hostTap], h);
    ip(['addr', 'add', `10.${subnet}.8.2/24`, 'dev', guestTap], g);
    const guestIp = `10.${subnet}.8.2`;
    const server = spawn('ip', ['netns', 'exec', g, 'iperf3', '-s', '-1'], { stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 500));
    // Eight flows from the host side: NetVSP picks each one's channel by Toeplitz hash.
    await inNs(h, ['iperf3', '-c', guestIp, '-t', '2', '-P', '8']);
    server.kill();
    const list = await runTool(process.execPath, [BIN, 'nics', '--json', '--api-socket', vm.api]);
    assert.equal(list.code, 0, list.stderr);
    const channels = (JSON.parse(list.stdout) as { channels: { subChannelIndex: number; rxFrames: number }[] }[])[0]!.channels;
    assert.equal(channels.length, 2, JSON.stringify(channels));
    for (const c of channels) assert.ok(c.rxFrames > 100, `channel ${c.subChannelIndex} carried flows: ${JSON.stringify(channels)}`);
    // inspect has a row per channel, each with that channel's own counters (not the NIC's sum).
    const inspect = await runTool(process.execPath, [BIN, 'inspect', '--json', '--api-socket', vm.api]);
    assert.equal(inspect.code, 0, inspect.stderr);
    const rows = (JSON.parse(inspect.stdout.split('\n')[0]!) as { channels: { name: string; packetsOut: number }[] }).channels.filter((c) => c.name === 'network');
    assert.equal(rows.length, 2, inspect.stdout);
    for (const r of rows) assert.ok(r.packetsOut > 100, JSON.stringify(rows));
    assert.notEqual(rows[0]!.packetsOut, rows[1]!.packetsOut, `each row counts its own channel: ${JSON.stringify(rows)}`);
  } finally {
    await vm.stop();
    deleteNetns(g);
    deleteNetns(h);
  }
});

test('two VMs on one switch (unix datagram hub) ping each other and run iperf3', { skip: unavailable ?? false, timeout: 120_000 }, async (t) => {
  const missing = (await toolMissing('ping')) ?? (await toolMissing('iperf3'));
  if (missing) return t.skip(`SKIPPED LOUDLY: ${missing}`);
  const hubPath = path.join(scratchDir('net-switch'), 'hub.sock');
  const hub = spawn(process.execPath, [BIN, 'switch', hubPath], { stdio: ['ignore', 'ignore', 'pipe'] });
  const g1 = uniqueName('en1');
  const g2 = uniqueName('en2');
  createNetns(g1);
  createNetns(g2);
  let vm1: Vm | null = null;
  let vm2: Vm | null = null;
  try {
    await until(async () => (await import('node:fs')).existsSync(hubPath), 'the hub socket');
    vm1 = startVm(['--net', `switch=${hubPath}`, '--expose-nics', g1, '--cpus', '1']);
    vm2 = startVm(['--net', `switch=${hubPath}`, '--expose-nics', g2, '--cpus', '1']);
    const nic1 = await vm1.waitFor((e) => e.event === 'nic');
    const nic2 = await vm2.waitFor((e) => e.event === 'nic');
    assert.notEqual(nic1.mac, nic2.mac);
    const subnet = 10 + ((process.pid + 2) % 200);
    ip(['addr', 'add', `10.${subnet}.9.1/24`, 'dev', String(nic1.name)], g1);
    ip(['addr', 'add', `10.${subnet}.9.2/24`, 'dev', String(nic2.name)], g2);
    await inNs(g1, ['ping', '-c', '3', '-W', '5', `10.${subnet}.9.2`]);
    await inNs(g2, ['ping', '-c', '3', '-W', '5', `10.${subnet}.9.1`]);
    const server = spawn('ip', ['netns', 'exec', g2, 'iperf3', '-s', '-1', '--json'], { stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 500));
    const result = JSON.parse(await inNs(g1, ['iperf3', '-c', `10.${subnet}.9.2`, '-t', '2', '--json'])) as { end: { sum_received: { bytes: number } } };
    assert.ok(result.end.sum_received.bytes > 1_000_000, 'VM 1 -> VM 2 carried data');
    server.kill();
  } finally {
    await vm1?.stop();
    await vm2?.stop();
    hub.kill('SIGTERM');
    deleteNetns(g1);
    deleteNetns(g2);
  }
});
