// `enlighten guest fetch` and `enlighten guest initramfs`: get the default guest's pinned
// Debian kernel and busybox into the cache, and build its initramfs, printing the paths
// (so they can be passed to --kernel/--initrd or inspected).
import { Command, Option } from 'commander';
import { fetchGuestPackages } from '../guest-image/default-guest.js';
import { buildInitramfs } from '../guest-image/initramfs-builder.js';
import type { ProgressListener } from '../guest-image/package-fetch.js';
import { KERNELS, type KernelSeries } from '../guest-image/pinned-packages.js';

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

/**
 * Progress on stderr (stdout keeps only the paths): on a terminal one line rewritten in
 * place, otherwise one line per step.
 */
export function progressPrinter(stream: NodeJS.WriteStream = process.stderr): { listener: ProgressListener; end: () => void } {
  const tty = !!stream.isTTY;
  let dirty = false;
  const listener: ProgressListener = (message) => {
    if (tty) {
      const width = Math.max(20, (stream.columns ?? 80) - 1);
      stream.write(`\r\x1b[K${message.slice(0, width)}`);
      dirty = true;
    } else stream.write(`${message}\n`);
  };
  const end = () => {
    if (tty && dirty) stream.write('\r\x1b[K');
    dirty = false;
  };
  return { listener, end };
}

function kernelOption(): Option {
  return new Option('--kernel <series>', 'Debian kernel package to use').choices(Object.keys(KERNELS)).default('6.1');
}

export function addGuestCommand(program: Command): void {
  const guest = program.command('guest').description('the default guest: a pinned Debian cloud kernel and a busybox initramfs, kept in a cache');

  guest
    .command('fetch')
    .description('download (or reuse) and verify the pinned kernel and busybox packages; print the kernel path')
    .addOption(kernelOption())
    .action(async (options: { kernel: KernelSeries }) => {
      const p = progressPrinter();
      try {
        const r = await fetchGuestPackages({ kernel: options.kernel, onProgress: p.listener });
        p.end();
        process.stdout.write(`kernel ${r.kernelPath}\nmodules ${r.modulesDir}\nbusybox ${r.busyboxPath}\n`);
      } finally {
        p.end();
      }
    });

  guest
    .command('initramfs')
    .description('build (or reuse) the initramfs for a kernel; print the kernel and initramfs paths')
    .addOption(kernelOption())
    .option('--package <name>', 'add a Debian package and the shared libraries it loads (repeatable)', collect, [])
    .option('--out <file>', 'also write the initramfs to FILE')
    .action(async (options: { kernel: KernelSeries; package: string[]; out?: string }) => {
      const p = progressPrinter();
      try {
        const r = await buildInitramfs({ kernel: options.kernel, packages: options.package, out: options.out, onProgress: p.listener });
        p.end();
        process.stdout.write(`kernel ${r.kernelPath}\ninitramfs ${r.initramfsPath}\nrelease ${r.kernelRelease}\nmodules ${r.modules.join(' ')}\n`);
      } finally {
        p.end();
      }
    });
}
