// The benchmark's TAP-to-TAP relay (bench/net-relay.ts) carries real traffic between two
// namespaces it does not otherwise share: ping G -> H, and a one-second iperf3 TCP run
// whose large segments cross the relay as GSO frames (offloads passed through, not
// done in JS). Namespaces and TAPs are the test's own and are removed afterwards.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import { Poller } from '../src/sys/epoll.js';
import { netnsExists, netnsUnavailableReason, runInNetns } from '../src/sys/netns.js';
import { BenchNamespaces, startRelayPath } from '../bench/net-namespaces.js';
import { iperf3Client } from './support/iperf3.js';

const unavailable = netnsUnavailableReason();
if (unavailable) console.error(`\n*** net-relay tests SKIPPED: ${unavailable}; the benchmark relay is NOT tested here ***\n`);

function hasProgram(name: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

test('TAP-to-TAP relay: ping G -> H and iperf3 -t 1 through it', async (t) => {
  if (unavailable) {
    t.skip(`NOT TESTED: ${unavailable}`);
    return;
  }
  const missing = ['ping', 'iperf3'].filter((p) => !hasProgram(p));
  if (missing.length) {
    console.error(`\n*** net-relay test SKIPPED: ${missing.join(', ')} not installed ***\n`);
    t.skip(`${missing.join(', ')} not installed`);
    return;
  }
  const errors: unknown[] = [];
  const poller = new Poller((e) => errors.push(e));
  const ns = BenchNamespaces.create();
  let server: Promise<unknown> | undefined;
  try {
    const { relay, stop } = startRelayPath(ns, poller);
    try {
      const ping = await runInNetns(ns.guest.netns, ['ping', '-c', '3', '-i', '0.2', '-W', '2', ns.host.address], 15_000);
      assert.equal(ping.code, 0, `ping failed:\n${ping.stdout}\n${ping.stderr}`);
      assert.match(ping.stdout, /3 packets transmitted, 3 received/);
      assert.ok(relay.stats.aToB.frames >= 4 && relay.stats.bToA.frames >= 4, 'ARP and echoes crossed both ways');

      const port = String(20_000 + Math.floor(Math.random() * 30_000));
      server = runInNetns(ns.host.netns, ['iperf3', '-s', '-1', '-B', ns.host.address, '-p', port], 20_000);
      // The server needs a moment to listen; the client retries on refusal.
      const client = await iperf3Client(ns.guest.netns, ['-c', ns.host.address, '-p', port, '-t', '1', '-J'], 10_000, 20_000);
      assert.equal(client.code, 0, `iperf3 failed:\n${client.stdout.slice(0, 2000)}\n${client.stderr}`);
      const json = JSON.parse(client.stdout) as { end: { sum_received: { bytes: number; bits_per_second: number } } };
      assert.ok(json.end?.sum_received, `iperf3 exited 0 without a result:\n${client.stdout.slice(0, 3000)}\n${client.stderr}`);
      assert.ok(json.end.sum_received.bytes > 1_000_000, `only ${json.end.sum_received.bytes} bytes arrived`);
      assert.ok(relay.stats.aToB.gsoFrames > 0, 'TSO frames from G crossed the relay whole (vnet header passed through)');
      assert.equal(relay.stats.aToB.busyDrops + relay.stats.bToA.busyDrops, 0);
      assert.equal(relay.a.stats.rxDropped + relay.b.stats.rxDropped + relay.a.stats.txDropped + relay.b.stats.txDropped, 0);
      console.log(`# relay: ${(json.end.sum_received.bits_per_second / 1e9).toFixed(2)} Gbit/s, ${relay.stats.aToB.frames} frames G->H (${relay.stats.aToB.gsoFrames} GSO)`);
    } finally {
      stop();
    }
    await server;
    assert.deepEqual(errors, []);
  } finally {
    await poller.stop();
    ns.destroy();
    assert.equal(netnsExists(ns.guest.netns) || netnsExists(ns.host.netns), false, 'namespaces left behind');
  }
});
