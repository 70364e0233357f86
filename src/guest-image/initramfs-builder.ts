// Builds the default guest's initramfs: busybox, the Hyper-V modules of the chosen
// kernel (with everything they depend on, decompressed), /init, and optionally more
// Debian packages with exactly the shared libraries their binaries load.
//
// Extra packages: their libraries are found by DT_NEEDED, not by `apt-cache depends
// --recurse`. Debian's recursive dependencies pull in far more than a binary loads
// (fio -> python3, hyperv-daemons -> systemd/lsb-base...), and "is a library package"
// cannot be told reliably by name (zlib1g). So each ELF file we ship is read for the
// sonames it needs (and its interpreter and run paths); a soname not yet found is looked
// for in the direct Depends/Pre-Depends of the package that needs it (Debian's shlibs
// mechanism guarantees it is there), fetched lazily, and only that library file (and,
// in turn, its needs) goes into the image. Libraries loaded with dlopen (NSS, plugins)
// and scripts' interpreters (bash, perl, python) are not followed.
//
// The image is cached under <cache>/initramfs by a hash of everything that goes into it.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { cachePath } from './cache-dir.js';
import { CpioNewcWriter } from './cpio-newc.js';
import { extractDeb, isExtractStamp } from './deb-extract.js';
import { dynamicInfo, ElfFormatError, isElf } from './elf-needed.js';
import { initScript } from './init-script.js';
import { HYPERV_MODULES, indexModules, moduleClosure, OPTIONAL_MODULES } from './kernel-modules.js';
import { defaultRunner, fetchPackage, fetchPackages, progressReporter, resolvePackage, resolvePackages, type CommandRunner, type PackageRequest, type ProgressListener } from './package-fetch.js';
import { BUSYBOX, KERNELS, type KernelSeries, type PinnedPackage } from './pinned-packages.js';

/** Bump when the image layout changes in a way the cache key would not see. */
const IMAGE_FORMAT = 1;

export interface BuildInitramfsOptions {
  kernel: KernelSeries;
  /** Extra Debian packages (e2fsprogs, fio, iperf3, ethtool, hyperv-daemons...), with their shared libraries. */
  packages?: string[];
  /** Also write the image here (it is always kept in the cache). */
  out?: string;
  onProgress?: ProgressListener;
  /** Runs apt-get / apt-cache (tests inject a counting one). */
  runner?: CommandRunner;
}

export interface BuiltInitramfs {
  initramfsPath: string;
  kernelPath: string;
  kernelRelease: string;
  /** Module names in load order. */
  modules: string[];
  /** True when the image came from the cache unchanged. */
  cached: boolean;
}

export class InitramfsBuildError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'InitramfsBuildError';
  }
}

interface Extracted {
  pkg: PinnedPackage;
  root: string;
}

/** Fetches (or reuses) a package and unpacks it under <cache>/extract. */
export async function fetchAndExtract(p: PackageRequest, o: { onProgress?: ProgressListener; runner?: CommandRunner } = {}): Promise<Extracted> {
  const pkg = 'sha256' in p ? p : await resolvePackage(p.name, p.version, o.runner ?? defaultRunner);
  const deb = await fetchPackage(pkg, o);
  progressReporter(o.onProgress)({ phase: 'extract', message: `unpacking ${pkg.name}` });
  const root = await extractDeb(deb, path.join(cachePath('extract'), path.basename(deb, '.deb')));
  return { pkg, root };
}

/** One thing the image holds besides busybox, /init and the modules. */
type ImageEntry =
  | { kind: 'dir'; guestPath: string; mode: number }
  | { kind: 'file'; guestPath: string; hostPath: string; mode: number }
  | { kind: 'symlink'; guestPath: string; target: string };

// Documentation and translations: nothing a test guest runs.
const skippedTrees = ['usr/share/doc', 'usr/share/man', 'usr/share/info', 'usr/share/locale', 'usr/share/lintian', 'usr/share/bug'];
// Where ld.so looks without an ld.so.cache (Debian's multiarch directories first).
const libraryDirs = ['lib/x86_64-linux-gnu', 'usr/lib/x86_64-linux-gnu', 'lib64', 'usr/lib64', 'lib', 'usr/lib'];

/** Resolves guestPath's symlinks inside one unpacked package, as if root were '/'; undefined if it leads nowhere. */
function resolveInRoot(root: string, guestPath: string): string | undefined {
  let current = guestPath.replace(/^\/+/, '');
  for (let hops = 0; hops < 40; hops++) {
    const host = path.join(root, current);
    let st: fs.Stats;
    try {
      st = fs.lstatSync(host);
    } catch {
      return undefined;
    }
    if (!st.isSymbolicLink()) return st.isFile() ? host : undefined;
    const target = fs.readlinkSync(host);
    current = path.posix.normalize(target.startsWith('/') ? target : path.posix.join(path.posix.dirname(current), target)).replace(/^\/+/, '');
    if (current.startsWith('..')) return undefined;
  }
  return undefined;
}

function readElfHeaderIsElf(file: string): boolean {
  const fd = fs.openSync(file, 'r');
  try {
    const b = Buffer.alloc(4);
    return fs.readSync(fd, b, 0, 4, 0) === 4 && isElf(b);
  } finally {
    fs.closeSync(fd);
  }
}

/** Each package's Depends/Pre-Depends alternatives (and providers of virtual ones), from the local apt lists, in one apt run. */
async function directDepends(names: readonly string[], runner: CommandRunner): Promise<Map<string, string[]>> {
  const result = new Map<string, string[]>();
  if (names.length === 0) return result;
  const r = await runner('apt-cache', ['depends', '--important', ...names]);
  let current: string[] | undefined;
  for (const line of r.stdout.split('\n')) {
    if (/^\S/.test(line)) {
      current = [];
      result.set(line.trim(), current);
      continue;
    }
    const m = /^\s+\|?(?:Depends|PreDepends|Pre-Depends):\s+(\S+)/.exec(line);
    const provider = /^\s{4,}(\S+)$/.exec(line);
    const dep = m?.[1] ?? provider?.[1];
    if (!current || !dep || dep.startsWith('<')) continue;
    const name = dep.replace(/:(any|amd64)$/, '');
    if (!current.includes(name)) current.push(name);
  }
  return result;
}

/** Extra packages' files plus the libraries their ELF files need, as image entries. */
async function extraPackageEntries(names: string[], o: BuildInitramfsOptions, runner: CommandRunner): Promise<{ entries: ImageEntry[]; packages: PinnedPackage[] }> {
  const progress = progressReporter(o.onProgress);
  const fetched = new Map<string, Extracted>();
  // Fetches and unpacks packages in one apt run; returns the names apt does not know.
  const fetchMany = async (wanted: string[]): Promise<string[]> => {
    const todo = wanted.filter((n) => !fetched.has(n));
    if (todo.length === 0) return [];
    progress({ phase: 'resolve', message: `resolving ${todo.join(' ')}` });
    const pinned = await resolvePackages(todo, runner);
    const debs = await fetchPackages([...pinned.values()], { onProgress: o.onProgress, runner });
    for (const [name, deb] of debs) {
      progress({ phase: 'extract', message: `unpacking ${name}` });
      fetched.set(name, { pkg: pinned.get(name)!, root: await extractDeb(deb, path.join(cachePath('extract'), path.basename(deb, '.deb'))) });
    }
    return todo.filter((n) => !pinned.has(n));
  };
  const entries: ImageEntry[] = [];
  const claimed = new Set<string>();
  const add = (e: ImageEntry) => {
    if (claimed.has(e.guestPath)) return;
    claimed.add(e.guestPath);
    entries.push(e);
  };
  type ElfItem = { host: string; guestPath: string; pkg: string };
  let pending: ElfItem[] = [];

  const unknown = await fetchMany(names);
  if (unknown.length > 0) throw new InitramfsBuildError(`Debian package ${unknown.join(', ')} is not in this host's apt lists (try 'apt-get update'; check the name with 'apt-cache search')`);
  for (const name of names) {
    const { root } = fetched.get(name)!;
    const walk = (rel: string) => {
      for (const d of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
        const child = rel ? `${rel}/${d.name}` : d.name;
        if (isExtractStamp(d.name) || skippedTrees.includes(child)) continue;
        const host = path.join(root, child);
        if (d.isDirectory()) {
          add({ kind: 'dir', guestPath: child, mode: fs.statSync(host).mode & 0o7777 });
          walk(child);
        } else if (d.isSymbolicLink()) add({ kind: 'symlink', guestPath: child, target: fs.readlinkSync(host) });
        else if (d.isFile()) {
          add({ kind: 'file', guestPath: child, hostPath: host, mode: fs.statSync(host).mode & 0o7777 });
          if (readElfHeaderIsElf(host)) pending.push({ host, guestPath: child, pkg: name });
        }
      }
    };
    walk('');
  }

  const findIn = (candidates: string[]): ElfItem | undefined => {
    for (const [pkg, { root }] of fetched) {
      for (const guestPath of candidates) {
        const host = resolveInRoot(root, guestPath);
        if (host) return { host, guestPath, pkg };
      }
    }
    return undefined;
  };
  const scanned = new Set<string>();
  // Rounds: resolve what the fetched packages provide; for the rest fetch the direct
  // dependencies of every package that still lacks something, all in one apt run.
  while (pending.length > 0) {
    const next: ElfItem[] = [];
    const unresolved: { item: ElfItem; label: string; candidates: string[] }[] = [];
    const place = (found: ElfItem) => {
      if (claimed.has(found.guestPath)) return;
      add({ kind: 'file', guestPath: found.guestPath, hostPath: found.host, mode: fs.statSync(found.host).mode & 0o7777 });
      next.push(found);
    };
    for (const item of pending) {
      if (scanned.has(item.host)) continue;
      scanned.add(item.host);
      let info;
      try {
        info = dynamicInfo(await fs.promises.readFile(item.host));
      } catch (e) {
        if (e instanceof ElfFormatError) continue; // an ELF we cannot read (firmware, another arch): ship it, follow nothing
        throw e;
      }
      const origin = path.posix.dirname(item.guestPath);
      const runDirs = info.runPaths.map((p) => p.replace(/\$(ORIGIN|\{ORIGIN\})/g, `/${origin}`).replace(/^\/+/, ''));
      const wants = info.needed.map((soname) => ({ label: soname, candidates: [...runDirs, ...libraryDirs].map((d) => `${d}/${soname}`) }));
      if (info.interpreter) wants.push({ label: info.interpreter, candidates: [info.interpreter.replace(/^\/+/, '')] });
      for (const want of wants) {
        if (want.candidates.some((c) => claimed.has(c))) continue;
        const found = findIn(want.candidates);
        if (found) place(found);
        else unresolved.push({ item, ...want });
      }
    }
    if (unresolved.length > 0) {
      const needers = [...new Set(unresolved.map((u) => u.item.pkg))];
      progress({ phase: 'libraries', message: `looking for ${[...new Set(unresolved.map((u) => u.label))].join(' ')}` });
      const deps = await directDepends(needers, runner);
      await fetchMany([...new Set(needers.flatMap((n) => deps.get(n) ?? []))]);
      for (const u of unresolved) {
        if (u.candidates.some((c) => claimed.has(c))) continue;
        const found = findIn(u.candidates);
        if (!found) throw new InitramfsBuildError(`/${u.item.guestPath} (package ${u.item.pkg}) needs ${u.label}, which none of the packages it depends on provides`);
        place(found);
      }
    }
    pending = next;
  }
  return { entries, packages: [...fetched.values()].map((e) => e.pkg) };
}

export async function buildInitramfs(o: BuildInitramfsOptions): Promise<BuiltInitramfs> {
  const kernelPkg = KERNELS[o.kernel];
  if (!kernelPkg) throw new InitramfsBuildError(`unknown kernel '${o.kernel}' (known: ${Object.keys(KERNELS).join(', ')})`);
  const runner = o.runner ?? defaultRunner;
  const progress = progressReporter(o.onProgress);
  const fo = { onProgress: o.onProgress, runner };

  const kernel = await fetchAndExtract(kernelPkg, fo);
  const busybox = await fetchAndExtract(BUSYBOX, fo);
  const kernelPath = path.join(kernel.root, 'boot', `vmlinuz-${kernelPkg.release}`);
  const busyboxPath = path.join(busybox.root, 'bin', 'busybox');
  for (const f of [kernelPath, busyboxPath]) if (!fs.existsSync(f)) throw new InitramfsBuildError(`${f} is missing from its package (did the package layout change?)`);

  progress({ phase: 'modules', message: `resolving Hyper-V modules of ${kernelPkg.release}` });
  const tree = await indexModules(path.join(kernel.root, 'lib', 'modules', kernelPkg.release), kernelPkg.release);
  const modules = await moduleClosure(tree, HYPERV_MODULES, OPTIONAL_MODULES);
  const init = initScript({ modules });

  const extra = o.packages?.length ? await extraPackageEntries([...new Set(o.packages)].sort(), o, runner) : { entries: [], packages: [] };

  const key = createHash('sha256')
    .update(JSON.stringify({ IMAGE_FORMAT, kernel: kernelPkg.sha256, busybox: BUSYBOX.sha256, init, extras: extra.packages.map((p) => [p.name, p.version, p.sha256]).sort() }))
    .digest('hex')
    .slice(0, 16);
  const dir = cachePath('initramfs');
  await fs.promises.mkdir(dir, { recursive: true });
  const cachedPath = path.join(dir, `${kernelPkg.release}-${key}.cpio`);
  const cached = fs.existsSync(cachedPath);
  if (!cached) {
    progress({ phase: 'write', message: `writing initramfs ${path.basename(cachedPath)}` });
    const tmp = `${cachedPath}.partial-${process.pid}`;
    const w = await CpioNewcWriter.create(tmp);
    try {
      for (const d of ['bin', 'sbin', 'dev', 'etc', 'proc', 'sys', 'run', 'root', 'usr/bin', 'usr/sbin']) await w.directory(d);
      await w.directory('tmp', 0o1777);
      await w.device('dev/console', 'char', 5, 1, 0o600);
      await w.device('dev/null', 'char', 1, 3, 0o666);
      await w.file('bin/busybox', { hostPath: busyboxPath }, 0o755);
      await w.symlink('bin/sh', 'busybox');
      await w.file('init', Buffer.from(init, 'utf8'), 0o755);
      for (const m of modules) await w.file(m.guestPath, m.bytes, 0o644);
      for (const e of extra.entries) {
        if (e.kind === 'dir') await w.directory(e.guestPath, e.mode);
        else if (e.guestPath === 'bin/busybox' || e.guestPath === 'bin/sh' || e.guestPath === 'init') continue;
        else if (e.kind === 'file') await w.file(e.guestPath, { hostPath: e.hostPath }, e.mode);
        else await w.symlink(e.guestPath, e.target);
      }
      await w.finish();
      await fs.promises.rename(tmp, cachedPath);
    } catch (e) {
      await w.abort();
      await fs.promises.rm(tmp, { force: true });
      throw e;
    }
  }
  let initramfsPath = cachedPath;
  if (o.out) {
    await fs.promises.copyFile(cachedPath, o.out);
    initramfsPath = path.resolve(o.out);
  }
  progress({ phase: 'done', message: `initramfs ${initramfsPath}` });
  return { initramfsPath, kernelPath, kernelRelease: kernelPkg.release, modules: modules.map((m) => m.name), cached };
}
