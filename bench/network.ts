// Network throughput and packet rate through each way of joining a "guest" namespace G to
// a "host" namespace H, in one run, with the same iperf3 commands for every path:
//
//   node dist/bench/network.js [--seconds 4] [--rounds 5] [--out results.json]     (root; iperf3, ping)
//
//   veth       a veth pair G <-> H: the kernel's limit.
//   relay      TAP in G -> TapRelay in this process -> TAP in H (no VMBus): our own floor.
//   enlighten  G -> reference netvsc -> VMBus -> NetVSP -> TAP -> H: supplied as an
//              EnlightenPathStarter to runNetworkBench(); reported "not wired yet" without one.
//
// Per path: iperf3 TCP G->H and H->G (one stream, receiver's rate) and UDP with 64-byte
// payloads at unlimited rate (-b 0) in both directions (receiver's packets/s and loss).
// Ratios: relay/veth, enlighten/relay (issue 5's target: >= 0.8) and enlighten/veth.
//
// This machine's speed drifts by tens of percent within a minute, so the paths are not
// measured one after the other: each has its own pair of namespaces, all three stay up,
// and every test runs on each path in turn, round after round (--rounds, the path order
// rotating), so the paths see the same machine. A path's figure is the median of its
// rounds; a ratio is the median of the rounds' own ratios (two paths measured seconds
// apart, so the drift mostly cancels), with the enlighten/relay range reported too.
// The namespaces (and every link and process in them) are removed at the end, on errors
// and on SIGINT/SIGTERM.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import { pathToFileURL } from 'node:url';
import { Poller } from '../src/sys/epoll.js';
import { netnsUnavailableReason } from '../src/sys/netns.js';
import { startEnlightenPath } from './net-enlighten-path.js';
import { BenchNamespaces, type EnlightenPathStarter, type NetnsEnd, startRelayPath, startVethPath, type StopPath } from './net-namespaces.js';
import type { TapRelay } from './net-relay.js';
import { lowerMedian } from './median.js';

export type PathName = 'veth' | 'relay' | 'enlighten';

export interface TcpResult {
  /** Receiver's goodput. */
  bitsPerSecond: number;
  retransmits: number;
}

export interface UdpResult {
  /** Datagrams the receiver got per second. */
  packetsPerSecond: number;
  /** Datagrams the sender sent per second. */
  sentPacketsPerSecond: number;
  lossPercent: number;
}

export interface PathResult {
  path: PathName;
  /** 'ok', 'not wired yet', or 'failed: reason'. */
  status: string;
  tcpGuestToHost?: TcpResult;
  tcpHostToGuest?: TcpResult;
  udpGuestToHost?: UdpResult;
  udpHostToGuest?: UdpResult;
  /** Relay only: what crossed the relay (GSO frames show offloads passed through whole). */
  relayStats?: TapRelay['stats'];
  /** Every round's result per test, in round order; the fields above hold the median one. */
  rounds?: Partial<Record<MetricKey, Array<TcpResult | UdpResult>>>;
}

type MetricKey = 'tcpGuestToHost' | 'tcpHostToGuest' | 'udpGuestToHost' | 'udpHostToGuest';

export interface NetworkBenchResult {
  date: string;
  seconds: number;
  rounds: number;
  cores: number;
  kernel: string;
  paths: PathResult[];
  /** metric -> ratio name -> the median of the rounds' ratios; only where both paths ran. */
  ratios: Record<string, Record<string, number>>;
  /** metric -> enlighten/relay of the rounds in which both measured a non-zero rate, in round order. */
  roundRatios: Record<string, number[]>;
}

export interface NetworkBenchOptions {
  seconds?: number;
  /** Rounds of every test on every path (default 5). */
  rounds?: number;
  /** Write the result as JSON here. */
  out?: string;
  /** The enlighten path; absent: its row reads "not wired yet". */
  startEnlightenPath?: EnlightenPathStarter;
  log?: (line: string) => void;
}

const METRICS: ReadonlyArray<{ key: MetricKey; label: string; reverse: boolean; udp: boolean }> = [
  { key: 'tcpGuestToHost', label: 'TCP G->H', reverse: false, udp: false },
  { key: 'tcpHostToGuest', label: 'TCP H->G', reverse: true, udp: false },
  { key: 'udpGuestToHost', label: 'UDP 64 B G->H', reverse: false, udp: true },
  { key: 'udpHostToGuest', label: 'UDP 64 B H->G', reverse: true, udp: true },
];

/** Child processes still running, killed on the way out (also from a signal handler). */
const children = new Set<ChildProcess>();

interface Finished {
  code: number | null;
  stdout: string;
  stderr: string;
}

function inNetns(netns: string, argv: readonly string[]): { child: ChildProcess; done: Promise<Finished> } {
  const child = spawn('ip', ['netns', 'exec', netns, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const done = new Promise<Finished>((resolve) => {
    child.on('error', (e) => {
      stderr += e.message;
    });
    child.on('close', (code) => {
      children.delete(child);
      resolve({ code, stdout, stderr });
    });
  });
  return { child, done };
}

async function runWithTimeout(netns: string, argv: readonly string[], timeoutMs: number): Promise<Finished> {
  const { child, done } = inNetns(netns, argv);
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  try {
    return await done;
  } finally {
    clearTimeout(timer);
  }
}

function killChildren(): void {
  for (const child of children) child.kill('SIGKILL');
}

let nextPort = 20_000 + Math.floor(Math.random() * 30_000);

/** One iperf3 test: a one-off server in H, the client in G (`-R` makes H the sender). Returns the client's --json. */
async function iperf3(guest: NetnsEnd, host: NetnsEnd, seconds: number, extra: readonly string[]): Promise<IperfJson> {
  const port = String(nextPort++);
  const server = inNetns(host.netns, ['iperf3', '-s', '-1', '-B', host.address, '-p', port, '--forceflush']);
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('iperf3 server did not start in 5 s')), 5000);
      const check = (d: string) => {
        if (d.includes('Server listening')) {
          clearTimeout(timer);
          resolve();
        }
      };
      server.child.stdout!.on('data', check);
      void server.done.then((r) => {
        clearTimeout(timer);
        reject(new Error(`iperf3 server exited (${r.code}): ${r.stderr.trim() || r.stdout.trim()}`));
      });
    });
    const r = await runWithTimeout(guest.netns, ['iperf3', '-c', host.address, '-p', port, '-t', String(seconds), '-J', ...extra], (seconds + 30) * 1000);
    let json: IperfJson;
    try {
      json = JSON.parse(r.stdout) as IperfJson;
    } catch {
      throw new Error(`iperf3 ${extra.join(' ')} exited ${r.code}: ${r.stderr.trim() || r.stdout.slice(0, 300)}`);
    }
    if (json.error) throw new Error(`iperf3 ${extra.join(' ')}: ${json.error}`);
    if (r.code !== 0) throw new Error(`iperf3 ${extra.join(' ')} exited ${r.code}: ${r.stderr.trim()}`);
    return json;
  } finally {
    // -1 makes the server leave after its one test; one that hangs is not waited for long.
    const timer = setTimeout(() => server.child.kill('SIGKILL'), 3000);
    await server.done;
    clearTimeout(timer);
  }
}

interface IperfSum {
  seconds: number;
  bits_per_second: number;
  retransmits?: number;
  packets?: number;
  lost_packets?: number;
  lost_percent?: number;
}

interface IperfJson {
  error?: string;
  end?: { sum_sent?: IperfSum; sum_received?: IperfSum };
}

async function tcp(guest: NetnsEnd, host: NetnsEnd, seconds: number, reverse: boolean): Promise<TcpResult> {
  const json = await iperf3(guest, host, seconds, reverse ? ['-R'] : []);
  const received = json.end?.sum_received;
  if (!received) throw new Error('iperf3 TCP: no end.sum_received in its JSON');
  return { bitsPerSecond: received.bits_per_second, retransmits: json.end?.sum_sent?.retransmits ?? 0 };
}

async function udp(guest: NetnsEnd, host: NetnsEnd, seconds: number, reverse: boolean): Promise<UdpResult> {
  const json = await iperf3(guest, host, seconds, ['-u', '-l', '64', '-b', '0', ...(reverse ? ['-R'] : [])]);
  const received = json.end?.sum_received;
  const sent = json.end?.sum_sent;
  if (!received || !sent || received.packets === undefined) throw new Error('iperf3 UDP: no end.sum_received packet counts in its JSON');
  // The receiver's `packets` is the highest sequence number seen; `lost_packets` the gaps.
  const got = received.packets - (received.lost_packets ?? 0);
  return {
    packetsPerSecond: got / received.seconds,
    sentPacketsPerSecond: (sent.packets ?? 0) / sent.seconds,
    lossPercent: received.lost_percent ?? 0,
  };
}

/** Both namespaces can reach each other (also fills the neighbour caches before measuring). */
async function checkReachable(guest: NetnsEnd, host: NetnsEnd): Promise<void> {
  const r = await runWithTimeout(guest.netns, ['ping', '-c', '3', '-i', '0.2', '-W', '2', host.address], 15_000);
  if (r.code !== 0) throw new Error(`ping ${guest.netns} -> ${host.address} failed: ${r.stdout.trim().split('\n').pop()} ${r.stderr.trim()}`);
}

/** One test on one path; its result joins the path's rounds. */
async function measureOnce(ns: BenchNamespaces, result: PathResult, metric: (typeof METRICS)[number], seconds: number): Promise<void> {
  const r = metric.udp ? await udp(ns.guest, ns.host, seconds, metric.reverse) : await tcp(ns.guest, ns.host, seconds, metric.reverse);
  ((result.rounds ??= {})[metric.key] ??= []).push(r);
}

/** Sets each test's result to the median of its rounds (the lower middle one for an even count). */
function takeMedians(result: PathResult): void {
  for (const metric of METRICS) {
    const median = lowerMedian(result.rounds?.[metric.key] ?? [], measureOf);
    if (median !== undefined) (result as unknown as Record<MetricKey, TcpResult | UdpResult>)[metric.key] = median;
  }
}

function measureOf(r: TcpResult | UdpResult): number {
  return 'bitsPerSecond' in r ? r.bitsPerSecond : r.packetsPerSecond;
}

/** top/bottom of each round in which both paths ran the test. */
function roundRatiosOf(paths: PathResult[], top: PathName, bottom: PathName, key: MetricKey): number[] {
  const t = paths.find((p) => p.path === top)?.rounds?.[key] ?? [];
  const b = paths.find((p) => p.path === bottom)?.rounds?.[key] ?? [];
  return t.slice(0, b.length).map((r, i) => measureOf(r) / measureOf(b[i]!)).filter((x) => Number.isFinite(x));
}

/** enlighten/relay of each round in which both ran the test. */
function computeRoundRatios(paths: PathResult[]): NetworkBenchResult['roundRatios'] {
  const out: NetworkBenchResult['roundRatios'] = {};
  for (const metric of METRICS) out[metric.key] = roundRatiosOf(paths, 'enlighten', 'relay', metric.key);
  return out;
}

function computeRatios(paths: PathResult[]): NetworkBenchResult['ratios'] {
  const pairs: Array<[string, PathName, PathName]> = [
    ['relay/veth', 'relay', 'veth'],
    ['enlighten/relay', 'enlighten', 'relay'],
    ['enlighten/veth', 'enlighten', 'veth'],
  ];
  const ratios: NetworkBenchResult['ratios'] = {};
  for (const metric of METRICS) {
    const row: Record<string, number> = {};
    for (const [name, top, bottom] of pairs) {
      const median = lowerMedian(roundRatiosOf(paths, top, bottom, metric.key), (x) => x);
      if (median !== undefined) row[name] = median;
    }
    ratios[metric.key] = row;
  }
  return ratios;
}

function formatCell(result: PathResult, metric: (typeof METRICS)[number]): string {
  if (result.status !== 'ok') return result.status.startsWith('failed') ? 'failed' : result.status;
  const m = result[metric.key];
  if (!m) return '-';
  if ('bitsPerSecond' in m) return `${(m.bitsPerSecond / 1e9).toFixed(2)} Gbit/s`;
  return `${Math.round(m.packetsPerSecond).toLocaleString('en-US')} pps (${m.lossPercent.toFixed(1)}% lost)`;
}

export function formatTable(r: NetworkBenchResult): string {
  const lines: string[] = [];
  lines.push(`network benchmark, ${r.date}, ${r.rounds} rounds of ${r.seconds} s per test with the paths interleaved (rates: medians; ratios: medians of the rounds' ratios), one stream, ${r.cores} cores, Linux ${r.kernel}`);
  const names = r.paths.map((p) => p.path);
  lines.push(`| test | ${names.join(' | ')} | relay/veth | enlighten/relay | enlighten/veth |`);
  lines.push(`| --- |${names.map(() => ' ---: |').join('')} ---: | ---: | ---: |`);
  for (const metric of METRICS) {
    const ratios = r.ratios[metric.key] ?? {};
    const ratio = (name: string) => (ratios[name] === undefined ? '-' : ratios[name]!.toFixed(2));
    lines.push(`| ${metric.label} | ${r.paths.map((p) => formatCell(p, metric)).join(' | ')} | ${ratio('relay/veth')} | ${ratio('enlighten/relay')} | ${ratio('enlighten/veth')} |`);
  }
  for (const p of r.paths) if (p.status !== 'ok') lines.push(`${p.path}: ${p.status}`);
  const spread = METRICS.filter((m) => (r.roundRatios[m.key] ?? []).length > 1).map((m) => {
    const rs = r.roundRatios[m.key]!;
    return `${m.label} ${Math.min(...rs).toFixed(2)}-${Math.max(...rs).toFixed(2)}`;
  });
  if (spread.length) lines.push(`enlighten/relay per round: ${spread.join(', ')}`);
  const relay = r.paths.find((p) => p.path === 'relay')?.relayStats;
  if (relay) {
    lines.push(`relay frames G->H ${relay.aToB.frames} (GSO ${relay.aToB.gsoFrames}, busy drops ${relay.aToB.busyDrops}), ` +
      `H->G ${relay.bToA.frames} (GSO ${relay.bToA.gsoFrames}, busy drops ${relay.bToA.busyDrops})`);
  }
  const target = r.ratios.tcpGuestToHost?.['enlighten/relay'];
  if (target !== undefined) {
    const missed = METRICS.filter((m) => (r.ratios[m.key]?.['enlighten/relay'] ?? 0) < 0.8).map((m) => m.label);
    lines.push(missed.length ? `target enlighten/relay >= 0.8 MISSED for: ${missed.join(', ')}` : 'target enlighten/relay >= 0.8 met for every test');
  }
  return lines.join('\n');
}

/** A path being measured: its namespaces, its result, and how to stop it. */
interface LivePath {
  ns: BenchNamespaces;
  result: PathResult;
  stop: StopPath | null;
}

/**
 * Brings the three paths up, each between its own pair of namespaces, then runs every
 * test on each of them in turn, `rounds` times. Needs root, iperf3 and ping.
 */
export async function runNetworkBench(options: NetworkBenchOptions = {}): Promise<NetworkBenchResult> {
  const seconds = options.seconds ?? 4;
  const rounds = options.rounds ?? 5;
  const log = options.log ?? ((line: string) => console.error(line));
  const unavailable = netnsUnavailableReason();
  if (unavailable) throw new Error(`cannot run the network benchmark: ${unavailable}`);

  const live: LivePath[] = [];
  const pollerErrors: unknown[] = [];
  const poller = new Poller((e) => pollerErrors.push(e));
  let relay: TapRelay | null = null;
  const stopAll = async (): Promise<void> => {
    for (const p of live) {
      const stop = p.stop;
      p.stop = null;
      try {
        await stop?.();
      } catch {
        // the namespaces go anyway
      }
    }
  };
  const destroyAll = (): void => {
    for (const p of live) p.ns.destroy();
  };
  // A signal must not leave namespaces (or iperf3 processes in them) behind.
  const onSignal = (signal: NodeJS.Signals) => {
    killChildren();
    void stopAll();
    destroyAll();
    process.stderr.write(`\nbench/network: ${signal}, namespaces removed\n`);
    process.exit(signal === 'SIGINT' ? 130 : 143);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const start = async (path: PathName, up: (ns: BenchNamespaces) => StopPath | Promise<StopPath>): Promise<void> => {
    const p: LivePath = { ns: BenchNamespaces.create(), result: { path, status: 'failed' }, stop: null };
    live.push(p);
    try {
      log(`${path}: namespaces ${p.ns.guest.netns} (${p.ns.guest.cidr}) and ${p.ns.host.netns} (${p.ns.host.cidr})`);
      p.stop = await up(p.ns);
      await checkReachable(p.ns.guest, p.ns.host);
      p.result.status = 'ok';
    } catch (e) {
      p.result.status = `failed: ${(e as Error).message}`;
    }
  };

  try {
    await start('veth', (ns) => startVethPath(ns));
    await start('relay', (ns) => {
      const started = startRelayPath(ns, poller);
      relay = started.relay;
      return started.stop;
    });
    if (options.startEnlightenPath) {
      const starter = options.startEnlightenPath;
      await start('enlighten', (ns) => starter(ns.guest, ns.host));
    } else live.push({ ns: BenchNamespaces.create(), result: { path: 'enlighten', status: 'not wired yet' }, stop: null });

    for (let round = 0; round < rounds; round++) {
      for (const metric of METRICS) {
        // The order of the paths rotates each round, so none always runs first.
        for (let k = 0; k < live.length; k++) {
          const p = live[(k + round) % live.length]!;
          if (p.result.status !== 'ok') continue;
          log(`  round ${round + 1}/${rounds}: ${p.result.path}: ${metric.label}`);
          try {
            await measureOnce(p.ns, p.result, metric, seconds);
          } catch (e) {
            p.result.status = `failed: ${(e as Error).message}`;
          }
        }
      }
    }
    if (pollerErrors.length) throw pollerErrors[0];
  } finally {
    killChildren();
    await stopAll();
    await poller.stop();
    destroyAll();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }

  const paths = live.map((p) => p.result);
  for (const p of paths) takeMedians(p);
  const relayPath = paths.find((p) => p.path === 'relay');
  if (relayPath && relay) relayPath.relayStats = structuredClone((relay as TapRelay).stats);
  const result: NetworkBenchResult = {
    date: new Date().toISOString().slice(0, 10),
    seconds,
    rounds,
    cores: os.cpus().length,
    kernel: os.release(),
    paths,
    ratios: computeRatios(paths),
    roundRatios: computeRoundRatios(paths),
  };
  if (options.out) fs.writeFileSync(options.out, `${JSON.stringify(result, null, 2)}\n`);
  return result;
}

function parseArgs(argv: string[]): { seconds: number; rounds: number; out?: string } {
  let seconds = Number(process.env.BENCH_SECONDS ?? 4);
  let rounds = Number(process.env.BENCH_ROUNDS ?? 5);
  let out: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--out') out = argv[++i];
    else if (a.startsWith('--out=')) out = a.slice(6);
    else if (a === '--seconds') seconds = Number(argv[++i]);
    else if (a.startsWith('--seconds=')) seconds = Number(a.slice(10));
    else if (a === '--rounds') rounds = Number(argv[++i]);
    else if (a.startsWith('--rounds=')) rounds = Number(a.slice(9));
    else throw new Error(`unknown argument ${a} (use --seconds N, --rounds N, --out FILE)`);
  }
  if (out === undefined && argv.includes('--out')) throw new Error('--out needs a file name');
  if (!Number.isFinite(seconds) || seconds < 1) throw new Error(`--seconds must be >= 1`);
  if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`--rounds must be a whole number >= 1`);
  return { seconds, rounds, out };
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const result = await runNetworkBench({ ...args, startEnlightenPath });
  console.log(formatTable(result));
  if (args.out) console.log(`JSON written to ${args.out}`);
  if (result.paths.some((p) => p.status.startsWith('failed'))) process.exitCode = 1;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((e) => {
    console.error(`bench/network: ${(e as Error).stack ?? e}`);
    process.exitCode = 1;
  });
}
