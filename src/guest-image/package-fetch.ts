// Fetch a Debian package into the cache with `apt-get download`, verified by SHA256.
//
// A cached .deb whose hash matches is reused without running apt at all, so a guest that
// was built once builds again offline (and on hosts without apt, for pinned packages).
// Downloads go to a private staging directory and are renamed into place only after the
// hash checks out: an interrupted or corrupted download never looks cached.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { cachePath } from './cache-dir.js';
import type { PinnedPackage } from './pinned-packages.js';

/** What the guest-image code is doing, for a progress line. */
export interface ProgressEvent {
  phase: 'resolve' | 'download' | 'verify' | 'extract' | 'modules' | 'libraries' | 'write' | 'done';
  message: string;
  /** 0..100 while a download runs, when apt reports it. */
  percent?: number;
}
/**
 * Gets each step as a ready-to-print line (with the percentage, when there is one) and as
 * the event it came from. Download percentages arrive at most once per 10%.
 */
export type ProgressListener = (message: string, event: ProgressEvent) => void;

export function progressText(e: ProgressEvent): string {
  return e.percent === undefined ? e.message : `${e.message} ${e.percent.toFixed(0)}%`;
}

/** A function to report progress events to a listener that may be absent. */
export function progressReporter(listener: ProgressListener | undefined): (event: ProgressEvent) => void {
  return listener ? (e) => listener(progressText(e), e) : () => {};
}

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}
export interface RunOptions {
  cwd?: string;
  /** apt's machine-readable status lines (APT::Status-Fd), as they arrive. */
  onStatusLine?: (line: string) => void;
  /** stdout lines as they arrive. */
  onOutputLine?: (line: string) => void;
}
/** Runs a program; rejects with an ENOENT error when the program does not exist. Injectable for tests. */
export type CommandRunner = (command: string, args: string[], options?: RunOptions) => Promise<CommandResult>;

export type PackageFetchErrorKind = 'no-apt' | 'not-found' | 'offline' | 'hash-mismatch' | 'bad-name' | 'failed';

export class PackageFetchError extends Error {
  constructor(
    readonly kind: PackageFetchErrorKind,
    message: string,
  ) {
    super(message);
    this.name = 'PackageFetchError';
  }
}

/** A package to fetch: pinned (version and hash from our source) or by name (apt's candidate version and hash). */
export type PackageRequest = PinnedPackage | { name: string; version?: string };

export interface FetchOptions {
  onProgress?: ProgressListener;
  runner?: CommandRunner;
  /** Cache root; default cacheDir(). */
  cache?: string;
}

export const defaultRunner: CommandRunner = (command, args, options = {}) =>
  new Promise((resolve, reject) => {
    // fd 3 carries apt's status lines when asked for with -o APT::Status-Fd=3.
    const child = spawn(command, args, { cwd: options.cwd, stdio: ['ignore', 'pipe', 'pipe', 'pipe'], env: { ...process.env, LC_ALL: 'C' } });
    let stdout = '';
    let stderr = '';
    child.on('error', reject);
    const out = child.stdio[1]!;
    const err = child.stdio[2]!;
    const status = child.stdio[3] as NodeJS.ReadableStream | null;
    readline.createInterface({ input: out }).on('line', (line) => {
      stdout += `${line}\n`;
      options.onOutputLine?.(line);
    });
    err.setEncoding('utf8');
    err.on('data', (chunk: string) => (stderr += chunk));
    if (status) readline.createInterface({ input: status }).on('line', (line) => options.onStatusLine?.(line));
    child.on('close', (code, signal) => resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr }));
  });

// Debian policy's package name and version syntax. Checking it keeps a name from being
// read as an option by apt (a leading '-') or from escaping the cache directory ('/').
const packageName = /^[a-z0-9][a-z0-9+.-]+$/;
const packageVersion = /^[A-Za-z0-9][A-Za-z0-9.+~:-]*$/;

function validate(name: string, version: string | undefined): void {
  if (!packageName.test(name)) throw new PackageFetchError('bad-name', `'${name}' is not a Debian package name`);
  if (version !== undefined && !packageVersion.test(version)) throw new PackageFetchError('bad-name', `'${version}' is not a Debian version (package ${name})`);
}

/** The cache's file name for a package version (our own naming: apt's has the architecture and escapes ':'). */
export function debFileName(name: string, version: string): string {
  return `${name}_${version.replace(/:/g, '%3a')}.deb`;
}

export async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of fs.createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

function isPinned(p: PackageRequest): p is PinnedPackage {
  return typeof (p as PinnedPackage).sha256 === 'string';
}

function aptMissing(tool: string): PackageFetchError {
  return new PackageFetchError('no-apt', `fetching the guest's packages needs Debian's ${tool} (not found on this host); or pass --kernel/--initrd`);
}

async function run(runner: CommandRunner, command: string, args: string[], options?: RunOptions): Promise<CommandResult> {
  try {
    return await runner(command, args, options);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw aptMissing(command);
    throw e;
  }
}

/** apt's candidate (or the named) version of a package and the archive's SHA256 for it, from the local package lists (no network). */
export async function resolvePackage(name: string, version: string | undefined, runner: CommandRunner = defaultRunner): Promise<PinnedPackage> {
  validate(name, version);
  const spec = version === undefined ? name : `${name}=${version}`;
  const r = await run(runner, 'apt-cache', ['show', '--no-all-versions', spec]);
  // The first stanza: with a version, the same .deb can be listed by two suites.
  const stanza = r.stdout.split(/\n\n/)[0] ?? '';
  const field = (key: string) => new RegExp(`^${key}: (.+)$`, 'm').exec(stanza)?.[1]?.trim();
  const foundVersion = field('Version');
  const sha256 = field('SHA256');
  if (r.code !== 0 || !foundVersion || !sha256) {
    throw new PackageFetchError(
      'not-found',
      `Debian package ${spec} is not in this host's apt lists (${firstError(r) ?? 'no candidate'}); run 'apt-get update', or if it was superseded, update src/guest-image/pinned-packages.ts`,
    );
  }
  return { name, version: foundVersion, sha256, size: Number(field('Size') ?? 0) };
}

function firstError(r: CommandResult): string | undefined {
  const line = `${r.stderr}\n${r.stdout}`.split('\n').find((l) => /^(E|W): /.test(l) && !/unsandboxed/.test(l));
  return line?.replace(/^E: /, '');
}

const offlinePatterns = /Could not resolve|Temporary failure resolving|Network is unreachable|Could not connect|Connection failed|Connection timed out|No route to host|Failed to fetch/;

/**
 * The path of the package's .deb in <cache>/debs: the cached file if its SHA256 matches,
 * else downloaded with `apt-get download NAME=VERSION` and verified.
 */
export async function fetchPackage(p: PackageRequest, o: FetchOptions = {}): Promise<string> {
  const runner = o.runner ?? defaultRunner;
  const progress = progressReporter(o.onProgress);
  validate(p.name, p.version);
  const debs = path.join(o.cache ?? cachePath(''), 'debs');
  await fs.promises.mkdir(debs, { recursive: true });

  // A pinned package, or a named version we already hold, needs no apt at all.
  let pinned: PinnedPackage | undefined = isPinned(p) ? p : undefined;
  if (!pinned && p.version !== undefined) {
    const cached = path.join(debs, debFileName(p.name, p.version));
    // Only a verified download is ever renamed into place, so its presence is its proof.
    if (fs.existsSync(cached)) return cached;
  }
  if (!pinned) {
    progress({ phase: 'resolve', message: `resolving ${p.name}${p.version ? `=${p.version}` : ''}` });
    pinned = await resolvePackage(p.name, p.version, runner);
  }
  const target = path.join(debs, debFileName(pinned.name, pinned.version));
  if (fs.existsSync(target)) {
    if ((await sha256File(target)) === pinned.sha256) return target;
    await fs.promises.rm(target, { force: true }); // corrupt or stale: fetch again
  }

  const spec = `${pinned.name}=${pinned.version}`;
  const staging = await fs.promises.mkdtemp(path.join(debs, '.download-'));
  try {
    progress({ phase: 'download', message: `downloading ${spec}`, percent: 0 });
    let lastTenth = 0;
    const args = ['download', '-o', 'APT::Status-Fd=3'];
    // As root apt cannot drop to its _apt user for a directory _apt cannot write; saying
    // so up front silences its "unsandboxed" warning.
    if (process.getuid?.() === 0) args.push('-o', 'APT::Sandbox::User=root');
    args.push(spec);
    const r = await run(runner, 'apt-get', args, {
      cwd: staging,
      onStatusLine: (line) => {
        // dlstatus:<item>:<percent>:<text>
        const m = /^dlstatus:[^:]*:([0-9.]+):(.*)$/.exec(line);
        if (!m) return;
        const percent = Math.min(100, Number(m[1]));
        const tenth = Math.floor(percent / 10);
        if (tenth <= lastTenth) return;
        lastTenth = tenth;
        progress({ phase: 'download', message: `downloading ${spec}`, percent });
      },
      onOutputLine: (line) => {
        if (/^(Get|Fetched)/.test(line)) progress({ phase: 'download', message: line });
      },
    });
    const files = (await fs.promises.readdir(staging)).filter((f) => f.endsWith('.deb'));
    if (r.code !== 0 || files.length !== 1) {
      const why = firstError(r) ?? `apt-get exited with status ${r.code}`;
      if (/Unable to locate package|was not found|has no installation candidate|Can't select/.test(why)) {
        throw new PackageFetchError('not-found', `Debian package ${spec} was not found by apt (${why}); run 'apt-get update', or if it was superseded, update src/guest-image/pinned-packages.ts`);
      }
      if (offlinePatterns.test(`${r.stderr}\n${r.stdout}`)) {
        throw new PackageFetchError('offline', `cannot download ${spec}: the archive is unreachable (${why}) and the package is not in the cache ${debs}`);
      }
      throw new PackageFetchError('failed', `apt-get download ${spec} failed: ${why}`);
    }
    const downloaded = path.join(staging, files[0]!);
    progress({ phase: 'verify', message: `verifying ${spec}` });
    const actual = await sha256File(downloaded);
    if (actual !== pinned.sha256) {
      throw new PackageFetchError('hash-mismatch', `${spec} downloaded with SHA256 ${actual}, expected ${pinned.sha256}; the file was deleted`);
    }
    await fs.promises.rename(downloaded, target);
    return target;
  } finally {
    await fs.promises.rm(staging, { recursive: true, force: true });
  }
}

/**
 * apt's candidate version and SHA256 of each named package, with one `apt-cache show`
 * (each apt run costs about a second of reading its lists, which dominates when a
 * package needs dozens of libraries). Names apt does not know are absent from the map.
 */
export async function resolvePackages(names: readonly string[], runner: CommandRunner = defaultRunner): Promise<Map<string, PinnedPackage>> {
  const found = new Map<string, PinnedPackage>();
  if (names.length === 0) return found;
  for (const n of names) validate(n, undefined);
  const r = await run(runner, 'apt-cache', ['show', '--no-all-versions', ...names]);
  for (const stanza of r.stdout.split(/\n\n+/)) {
    const field = (key: string) => new RegExp(`^${key}: (.+)$`, 'm').exec(stanza)?.[1]?.trim();
    const name = field('Package');
    const version = field('Version');
    const sha256 = field('SHA256');
    if (name && version && sha256 && !found.has(name) && names.includes(name)) found.set(name, { name, version, sha256, size: Number(field('Size') ?? 0) });
  }
  return found;
}

/**
 * Like fetchPackage for many pinned packages at once: cached ones are reused, the rest
 * come from one `apt-get download` and are each verified. Returns name -> .deb path.
 */
export async function fetchPackages(packages: readonly PinnedPackage[], o: FetchOptions = {}): Promise<Map<string, string>> {
  const runner = o.runner ?? defaultRunner;
  const progress = progressReporter(o.onProgress);
  const debs = path.join(o.cache ?? cachePath(''), 'debs');
  await fs.promises.mkdir(debs, { recursive: true });
  const result = new Map<string, string>();
  const missing: PinnedPackage[] = [];
  for (const p of packages) {
    validate(p.name, p.version);
    const target = path.join(debs, debFileName(p.name, p.version));
    if (fs.existsSync(target) && (await sha256File(target)) === p.sha256) result.set(p.name, target);
    else missing.push(p);
  }
  if (missing.length <= 1) {
    for (const p of missing) result.set(p.name, await fetchPackage(p, o));
    return result;
  }
  const staging = await fs.promises.mkdtemp(path.join(debs, '.download-'));
  try {
    progress({ phase: 'download', message: `downloading ${missing.length} packages: ${missing.map((p) => p.name).join(' ')}` });
    const args = ['download'];
    if (process.getuid?.() === 0) args.push('-o', 'APT::Sandbox::User=root');
    args.push(...missing.map((p) => `${p.name}=${p.version}`));
    const r = await run(runner, 'apt-get', args, { cwd: staging });
    if (r.code !== 0) {
      // Let the one-at-a-time path find and name the culprit with its precise error.
      for (const p of missing) result.set(p.name, await fetchPackage(p, o));
      return result;
    }
    const files = await fs.promises.readdir(staging);
    for (const p of missing) {
      // apt names a download NAME_VERSION_ARCH.deb (':' in the version as %3a).
      const file = files.find((f) => f.startsWith(`${p.name}_`) && f.endsWith('.deb'));
      if (!file) throw new PackageFetchError('failed', `apt-get download reported success but left no .deb for ${p.name}=${p.version}`);
      const actual = await sha256File(path.join(staging, file));
      if (actual !== p.sha256) throw new PackageFetchError('hash-mismatch', `${p.name}=${p.version} downloaded with SHA256 ${actual}, expected ${p.sha256}; the file was deleted`);
      const target = path.join(debs, debFileName(p.name, p.version));
      await fs.promises.rename(path.join(staging, file), target);
      result.set(p.name, target);
    }
    return result;
  } finally {
    await fs.promises.rm(staging, { recursive: true, force: true });
  }
}
