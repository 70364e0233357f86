// The default guest enlighten boots when given no --kernel/--initrd: a pinned Debian
// cloud kernel and an initramfs built around busybox (see initramfs-builder.ts).
// Everything is fetched and built once into the cache and reused (offline too).
import fs from 'node:fs';
import path from 'node:path';
import { buildInitramfs, fetchAndExtract, type BuiltInitramfs } from './initramfs-builder.js';
import type { CommandRunner, ProgressListener } from './package-fetch.js';
import { BUSYBOX, KERNELS, type KernelSeries } from './pinned-packages.js';

export const DEFAULT_KERNEL: KernelSeries = '6.1';

export interface DefaultGuestOptions {
  kernel?: KernelSeries;
  packages?: string[];
  onProgress?: ProgressListener;
  runner?: CommandRunner;
}

export type DefaultGuest = BuiltInitramfs;

/** The kernel and initramfs of the default guest: fetched, verified and built as needed, else reused from the cache. */
export function defaultGuest(o: DefaultGuestOptions = {}): Promise<DefaultGuest> {
  return buildInitramfs({ kernel: o.kernel ?? DEFAULT_KERNEL, packages: o.packages, onProgress: o.onProgress, runner: o.runner });
}

export interface FetchedGuestPackages {
  kernelRelease: string;
  kernelPath: string;
  /** The kernel's modules directory (lib/modules/<release>) on the host. */
  modulesDir: string;
  busyboxPath: string;
}

/** Fetches and unpacks the pinned kernel and busybox only (no initramfs). */
export async function fetchGuestPackages(o: { kernel?: KernelSeries; onProgress?: ProgressListener; runner?: CommandRunner } = {}): Promise<FetchedGuestPackages> {
  const pinned = KERNELS[o.kernel ?? DEFAULT_KERNEL];
  const kernel = await fetchAndExtract(pinned, o);
  const busybox = await fetchAndExtract(BUSYBOX, o);
  const result = {
    kernelRelease: pinned.release,
    kernelPath: path.join(kernel.root, 'boot', `vmlinuz-${pinned.release}`),
    modulesDir: path.join(kernel.root, 'lib', 'modules', pinned.release),
    busyboxPath: path.join(busybox.root, 'bin', 'busybox'),
  };
  for (const f of [result.kernelPath, result.busyboxPath]) if (!fs.existsSync(f)) throw new Error(`${f} is missing from its package (did the package layout change?)`);
  return result;
}
