// The pinned Debian cloud kernel the boot-protocol tests run against: a real bzImage, not a
// hand-made header. Standalone until src/guest-image/ provides the shared package cache:
// it looks in the cache first, else fetches the package with apt-get download (verified
// by apt against the signed archive) and keeps the extracted vmlinuz for the next run.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export const DEBIAN_KERNEL_PACKAGE = 'linux-image-6.1.0-50-cloud-amd64';
export const DEBIAN_KERNEL_PACKAGE_VERSION = '6.1.176-1';
export const DEBIAN_KERNEL_RELEASE = '6.1.0-50-cloud-amd64';
const VMLINUZ_NAME = `vmlinuz-${DEBIAN_KERNEL_RELEASE}`;
/** SHA-256 of ./boot/vmlinuz-6.1.0-50-cloud-amd64 in linux-image-6.1.0-50-cloud-amd64_6.1.176-1_amd64.deb. */
const VMLINUZ_SHA256 = '3d616aa853fe11b1c0ea99a1cdb4fb6ddc9010ba7c4562de700ad94264989654';

export const DEBIAN_KERNEL_SKIP_REASON =
  `SKIPPED: the pinned Debian kernel (${DEBIAN_KERNEL_PACKAGE}=${DEBIAN_KERNEL_PACKAGE_VERSION}) is not in the cache ` +
  `($ENLIGHTEN_CACHE or ~/.cache/enlighten) and apt-get/dpkg-deb are not available to fetch it`;

function cacheDir(): string {
  return process.env.ENLIGHTEN_CACHE || path.join(os.homedir(), '.cache', 'enlighten');
}

let pending: Promise<Uint8Array | undefined> | undefined;

/** The pinned kernel's bzImage, or undefined when it is not cached and cannot be fetched here. */
export function debianKernelImage(): Promise<Uint8Array | undefined> {
  pending ??= loadDebianKernel();
  return pending;
}

async function loadDebianKernel(): Promise<Uint8Array | undefined> {
  // A subfolder of its own, so this stand-in never collides with the real package cache's layout.
  const cached = path.join(cacheDir(), 'test-kernels', VMLINUZ_NAME);
  // The package cache of src/guest-image/ extracts packages here; any copy with the pinned hash will do.
  const extracted = path.join(cacheDir(), 'extract', `${DEBIAN_KERNEL_PACKAGE}_${DEBIAN_KERNEL_PACKAGE_VERSION}`, 'boot', VMLINUZ_NAME);
  for (const candidate of [cached, extracted]) {
    const fromCache = await readVerified(candidate);
    if (fromCache) return fromCache;
  }
  if (!(await hasCommand('apt-get')) || !(await hasCommand('dpkg-deb'))) return undefined;

  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'enlighten-kernel-'));
  try {
    try {
      await run('apt-get', ['download', `${DEBIAN_KERNEL_PACKAGE}=${DEBIAN_KERNEL_PACKAGE_VERSION}`], { cwd: work, maxBuffer: 16 * 1024 * 1024 });
    } catch (error) {
      throw new Error(`apt-get download ${DEBIAN_KERNEL_PACKAGE}=${DEBIAN_KERNEL_PACKAGE_VERSION} failed (run apt-get update? offline?): ${describe(error)}`);
    }
    const deb = (await fs.readdir(work)).find((name) => name.endsWith('.deb'));
    if (!deb) throw new Error(`apt-get download left no .deb in ${work}`);
    await run('sh', ['-c', 'dpkg-deb --fsys-tarfile "$1" | tar -xf - -C "$2" "./boot/$3"', 'sh', path.join(work, deb), work, VMLINUZ_NAME], {
      maxBuffer: 16 * 1024 * 1024,
    });
    const bytes = await readVerified(path.join(work, 'boot', VMLINUZ_NAME));
    if (!bytes) throw new Error(`${VMLINUZ_NAME} from ${deb} does not have the pinned SHA-256 ${VMLINUZ_SHA256}`);
    await keepInCache(cached, bytes);
    return bytes;
  } finally {
    await fs.rm(work, { recursive: true, force: true });
  }
}

async function readVerified(file: string): Promise<Uint8Array | undefined> {
  let bytes: Buffer;
  try {
    bytes = await fs.readFile(file);
  } catch {
    return undefined;
  }
  if (createHash('sha256').update(bytes).digest('hex') !== VMLINUZ_SHA256) return undefined;
  return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Best effort: a read-only cache only costs a download next time. */
async function keepInCache(file: string, bytes: Uint8Array): Promise<void> {
  try {
    await fs.mkdir(path.dirname(file), { recursive: true });
    const temp = `${file}.${process.pid}.tmp`;
    await fs.writeFile(temp, bytes);
    await fs.rename(temp, file);
  } catch {
    // ignored on purpose
  }
}

async function hasCommand(name: string): Promise<boolean> {
  try {
    await run('sh', ['-c', 'command -v "$1"', 'sh', name]);
    return true;
  } catch {
    return false;
  }
}

function describe(error: unknown): string {
  const e = error as { stderr?: string; message?: string };
  return (e.stderr?.trim() || e.message || String(error)).split('\n').slice(-3).join(' | ');
}

export interface FakeBzImageOptions {
  protocolVersion?: number;
  setupSects?: number;
  payloadSize?: number;
  initSize?: number;
  kernelAlignment?: number;
  relocatable?: boolean;
  prefAddress?: bigint;
  cmdlineSize?: number;
  initrdAddrMax?: number;
  loadflags?: number;
  xloadflags?: number;
  version?: string;
}

/**
 * A minimal, well-formed bzImage for tests that need exact control of the header (the
 * real kernel covers the rest): the setup header with the fields the boot protocol
 * documents, a version string in the setup area and a recognisable payload pattern.
 */
export function fakeBzImage(o: FakeBzImageOptions = {}): Uint8Array {
  const setupSects = o.setupSects ?? 4;
  const payloadSize = o.payloadSize ?? 64 * 1024;
  const payloadOffset = ((setupSects === 0 ? 4 : setupSects) + 1) * 512;
  const bytes = new Uint8Array(payloadOffset + payloadSize);
  const view = new DataView(bytes.buffer);
  bytes[0x1f1] = setupSects;
  view.setUint32(0x1f4, Math.floor(payloadSize / 16), true); // syssize
  view.setUint16(0x1fa, 0xffff, true); // vid_mode "normal"
  view.setUint16(0x1fe, 0xaa55, true); // boot_flag
  bytes[0x200] = 0xeb; // jmp short over the header...
  bytes[0x201] = 0x6a; // ...which ends at 0x202 + 0x6a = 0x26c (protocol 2.15)
  bytes.set([0x48, 0x64, 0x72, 0x53], 0x202); // "HdrS"
  view.setUint16(0x206, o.protocolVersion ?? 0x020f, true);
  const versionAt = 0x400;
  view.setUint16(0x20e, versionAt - 0x200, true);
  bytes.set(new TextEncoder().encode(`${o.version ?? '6.1.0-fake (test@example) #1 SMP'}\0`), versionAt);
  bytes[0x211] = o.loadflags ?? 0x01; // LOADED_HIGH
  view.setUint32(0x214, 0x100000, true); // code32_start
  view.setUint32(0x22c, o.initrdAddrMax ?? 0x7fffffff, true);
  view.setUint32(0x230, o.kernelAlignment ?? 0x200000, true);
  bytes[0x234] = (o.relocatable ?? true) ? 1 : 0;
  bytes[0x235] = 21; // min_alignment: 2 MiB
  view.setUint16(0x236, o.xloadflags ?? 0x03, true); // XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G
  view.setUint32(0x238, o.cmdlineSize ?? 2047, true);
  view.setBigUint64(0x258, o.prefAddress ?? 0x1000000n, true);
  view.setUint32(0x260, o.initSize ?? 4 * 1024 * 1024, true);
  for (let i = 0; i < payloadSize; i++) bytes[payloadOffset + i] = (i * 13 + (i >> 9)) & 0xff;
  return bytes;
}
