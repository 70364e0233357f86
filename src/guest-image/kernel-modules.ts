// The kernel modules the guest must load, and the order to load them in, read from the
// modules themselves.
//
// A Debian kernel package ships no modules.dep (depmod makes it at install time), so we
// read each module's `.modinfo` section: NUL-separated key=value strings that modpost
// wrote at build time, among them `name=`, `depends=` (the modules whose symbols it
// uses: exactly what must be loaded first) and `alias=` (the devices it binds, e.g.
// vmbus:<class GUID bytes>). Modules may be compressed (.ko.xz from 6.12 on in Debian);
// busybox's insmod cannot load those, so the builder ships them decompressed.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ElfFormatError, sectionBytes } from './elf-needed.js';

export { ElfFormatError };

export interface ModuleInfo {
  name: string;
  depends: string[];
  aliases: string[];
}

export class ModuleResolveError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ModuleResolveError';
  }
}

/** What the default guest loads: the VMBus driver and the devices enlighten offers. */
export const HYPERV_MODULES: readonly string[] = ['hv_vmbus', 'hv_utils', 'hv_storvsc', 'hv_netvsc'];
/**
 * Loaded when the kernel has them as modules. hv_sock: sockets to the host. sd_mod: the
 * disk driver that turns the LUNs storvsc finds into /dev/sdX (udev would load it by
 * alias; our /init has no udev).
 */
export const OPTIONAL_MODULES: readonly string[] = ['hv_sock', 'sd_mod'];

/** Module names treat '-' and '_' alike; the kernel reports the '_' form. */
export function normalizeModuleName(name: string): string {
  return name.replace(/-/g, '_');
}

/** name, depends and aliases from an uncompressed module's `.modinfo` section. */
export function parseModinfo(bytes: Uint8Array): ModuleInfo {
  const section = sectionBytes(bytes, '.modinfo');
  if (!section) throw new ElfFormatError('no .modinfo section: not a kernel module');
  const info: ModuleInfo = { name: '', depends: [], aliases: [] };
  for (const entry of Buffer.from(section.buffer, section.byteOffset, section.byteLength).toString('latin1').split('\0')) {
    const eq = entry.indexOf('=');
    if (eq <= 0) continue; // padding between entries
    const key = entry.slice(0, eq);
    const value = entry.slice(eq + 1);
    if (key === 'name') info.name = normalizeModuleName(value);
    else if (key === 'depends') info.depends.push(...value.split(',').filter(Boolean).map(normalizeModuleName));
    else if (key === 'alias') info.aliases.push(value);
  }
  return info;
}

const moduleFile = /\.ko(\.xz|\.zst|\.gz)?$/;

/** The module's name as its file name says (hv_vmbus.ko.xz -> hv_vmbus). */
export function moduleNameOfFile(file: string): string {
  return normalizeModuleName(path.basename(file).replace(moduleFile, ''));
}

function decompressWith(tool: string, file: string): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const child = spawn(tool, ['-dc', file], { stdio: ['ignore', 'pipe', 'pipe'] });
    const chunks: Buffer[] = [];
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => chunks.push(c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    child.on('error', (e: NodeJS.ErrnoException) =>
      reject(e.code === 'ENOENT' ? new ModuleResolveError(`${path.basename(file)} is compressed; decompressing it needs the '${tool}' program, not found on this host`) : e),
    );
    child.on('close', (code) => (code === 0 ? resolve(Buffer.concat(chunks)) : reject(new ModuleResolveError(`${tool} -dc ${file} failed: ${stderr.trim() || `status ${code}`}`))));
  });
}

/** A module file's ELF bytes, decompressed when it is .ko.xz, .ko.zst or .ko.gz. */
export async function readModuleBytes(file: string): Promise<Uint8Array> {
  if (file.endsWith('.ko.xz')) return decompressWith('xz', file);
  if (file.endsWith('.ko.zst')) return decompressWith('zstd', file);
  if (file.endsWith('.ko.gz')) return decompressWith('gzip', file);
  return fs.promises.readFile(file);
}

/** The modules of one kernel release, indexed by name. */
export interface ModuleTree {
  /** <root>/lib/modules/<release> on the host. */
  dir: string;
  release: string;
  /** Module name -> file, relative to dir (e.g. kernel/drivers/hv/hv_vmbus.ko.xz). */
  files: Map<string, string>;
  /** Modules compiled into the kernel (modules.builtin): present without loading. */
  builtin: Set<string>;
}

export async function indexModules(modulesDir: string, release: string): Promise<ModuleTree> {
  const files = new Map<string, string>();
  const walk = async (rel: string): Promise<void> => {
    for (const entry of await fs.promises.readdir(path.join(modulesDir, rel), { withFileTypes: true })) {
      const child = rel ? `${rel}/${entry.name}` : entry.name;
      if (entry.isDirectory()) await walk(child);
      else if (entry.isFile() && moduleFile.test(entry.name)) files.set(moduleNameOfFile(entry.name), child);
    }
  };
  try {
    await walk('kernel');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new ModuleResolveError(`no kernel modules in ${modulesDir}`);
    throw e;
  }
  const builtin = new Set<string>();
  try {
    for (const line of (await fs.promises.readFile(path.join(modulesDir, 'modules.builtin'), 'utf8')).split('\n')) if (line) builtin.add(moduleNameOfFile(line));
  } catch {
    // no list: assume nothing is built in
  }
  return { dir: modulesDir, release, files, builtin };
}

export interface ResolvedModule {
  name: string;
  /** Path inside the guest, relative to / (lib/modules/<release>/kernel/...ko, always uncompressed). */
  guestPath: string;
  /** The module's ELF bytes, decompressed. */
  bytes: Uint8Array;
  info: ModuleInfo;
}

/**
 * The modules to insmod, dependencies first, for `wanted` (each must exist as a module
 * or be built in) and `optional` (skipped when the kernel lacks them). Built-in modules
 * are left out: they are already there.
 */
export async function moduleClosure(tree: ModuleTree, wanted: readonly string[], optional: readonly string[] = []): Promise<ResolvedModule[]> {
  const order: ResolvedModule[] = [];
  const done = new Set<string>();
  const visiting: string[] = [];
  const visit = async (name: string, neededBy: string | undefined): Promise<void> => {
    if (done.has(name) || tree.builtin.has(name)) return;
    if (visiting.includes(name)) throw new ModuleResolveError(`module dependency cycle: ${[...visiting, name].join(' -> ')}`);
    const rel = tree.files.get(name);
    if (!rel) {
      throw new ModuleResolveError(`kernel ${tree.release} has no module ${name}${neededBy ? ` (needed by ${neededBy})` : ''} and does not build it in`);
    }
    visiting.push(name);
    const bytes = await readModuleBytes(path.join(tree.dir, rel));
    let info: ModuleInfo;
    try {
      info = parseModinfo(bytes);
    } catch (e) {
      if (e instanceof ElfFormatError) throw new ModuleResolveError(`${rel}: ${e.message}`);
      throw e;
    }
    for (const dep of info.depends) await visit(dep, name);
    visiting.pop();
    done.add(name);
    order.push({
      name: info.name || name,
      guestPath: `lib/modules/${tree.release}/${rel.replace(/\.ko\.(xz|zst|gz)$/, '.ko')}`,
      bytes,
      info,
    });
  };
  for (const name of wanted) await visit(normalizeModuleName(name), undefined);
  for (const name of optional) if (tree.files.has(normalizeModuleName(name))) await visit(normalizeModuleName(name), undefined);
  return order;
}
