// Network namespaces and links, through iproute2's `ip`: the set-up that tests and
// --expose-nics need (create a namespace, move a TAP into it, give it an address). It is
// control plane only, so spawning `ip` is fine; nothing here runs per packet.
//
// The synchronous helpers block the event loop while `ip` runs. Never use them to run a
// program that needs this process to answer (a ping through a TAP this thread serves):
// use runInNetns, which is asynchronous.
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';

const IP = 'ip';

/** Runs `ip [-n netns] args...`; returns stdout, throws with ip's stderr on failure. */
export function ip(args: readonly string[], netns?: string): string {
  const argv = netns === undefined ? [...args] : ['-n', netns, ...args];
  try {
    return execFileSync(IP, argv, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`ip ${argv.join(' ')} failed: ${(err.stderr ?? '').trim() || err.message}`);
  }
}

/**
 * Can this process create namespaces and TAPs? Returns null when it can, otherwise the
 * reason (for a loud test skip).
 */
export function netnsUnavailableReason(): string | null {
  if (process.getuid?.() !== 0) return 'not running as root';
  if (!fs.existsSync('/dev/net/tun')) return '/dev/net/tun is missing';
  try {
    execFileSync(IP, ['-V'], { stdio: 'ignore' });
  } catch {
    return 'iproute2 (`ip`) is not installed';
  }
  const probe = uniqueName('enlp');
  try {
    createNetns(probe);
  } catch (e) {
    return `cannot create a network namespace: ${(e as Error).message}`;
  } finally {
    deleteNetns(probe);
  }
  return null;
}

/**
 * A name unlikely to collide with anything else on the host (concurrent tests, leftovers),
 * short enough for an interface name (15 bytes): prefix (<= 7 chars) + 8 hex digits.
 */
export function uniqueName(prefix: string): string {
  if (prefix.length > 7) throw new RangeError(`prefix '${prefix}' is longer than 7 characters`);
  return prefix + randomBytes(4).toString('hex');
}

export function netnsExists(name: string): boolean {
  return fs.existsSync(`/run/netns/${name}`);
}

/** `ip netns add NAME`, then brings its loopback up (a fresh namespace has it down). */
export function createNetns(name: string): void {
  ip(['netns', 'add', name]);
  try {
    ip(['link', 'set', 'lo', 'up'], name);
  } catch (e) {
    deleteNetns(name);
    throw e;
  }
}

/** Deletes a namespace if it exists; never throws (it runs in `finally` blocks). Links inside it go with it. */
export function deleteNetns(name: string): boolean {
  if (!netnsExists(name)) return false;
  try {
    ip(['netns', 'delete', name]);
    return true;
  } catch {
    return false;
  }
}

/** Moves a link (a TAP, one end of a veth) from `fromNetns` (default: ours) into `netns`. */
export function moveLinkToNetns(link: string, netns: string, fromNetns?: string): void {
  ip(['link', 'set', 'dev', link, 'netns', netns], fromNetns);
}

/** Adds an address such as 10.77.1.1/24 to a link. */
export function addAddress(link: string, cidr: string, netns?: string): void {
  ip(['address', 'add', cidr, 'dev', link], netns);
}

export function setLinkUp(link: string, up: boolean, netns?: string): void {
  ip(['link', 'set', 'dev', link, up ? 'up' : 'down'], netns);
}

export function setLinkMtu(link: string, mtu: number, netns?: string): void {
  ip(['link', 'set', 'dev', link, 'mtu', String(mtu)], netns);
}

/** Deletes a link if it exists; never throws. */
export function deleteLink(link: string, netns?: string): boolean {
  try {
    ip(['link', 'delete', 'dev', link], netns);
    return true;
  } catch {
    return false;
  }
}

export interface LinkInfo {
  name: string;
  mtu: number;
  /** The flags `ip` prints: UP, LOWER_UP, NO-CARRIER, ... */
  flags: string[];
  operstate: string;
  mac: string;
}

/** `ip -j link show dev LINK`, in a namespace or ours. */
export function linkInfo(link: string, netns?: string): LinkInfo {
  const json = JSON.parse(ip(['-j', 'link', 'show', 'dev', link], netns)) as Array<{ ifname: string; mtu: number; flags: string[]; operstate: string; address: string }>;
  const entry = json[0];
  if (!entry) throw new Error(`ip link show ${link}: no such link`);
  return { name: entry.ifname, mtu: entry.mtu, flags: entry.flags, operstate: entry.operstate, mac: entry.address };
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs argv inside a namespace (`ip netns exec`), asynchronously, so this thread's event
 * loop keeps serving the devices the program talks to. Never rejects on a non-zero exit;
 * the caller reads `code`. A timeout kills the program (code null).
 */
export function runInNetns(netns: string, argv: readonly string[], timeoutMs = 30_000): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(IP, ['netns', 'exec', netns, ...argv], { encoding: 'utf8', timeout: timeoutMs, maxBuffer: 16 << 20 }, (error, stdout, stderr) => {
      const code = error ? (typeof (error as { code?: unknown }).code === 'number' ? ((error as { code: number }).code) : null) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}
