// The enlighten command line.
import { Command, CommanderError, Option } from 'commander';
import { callApi } from '../api/api-client.js';
import { defaultSocketPath } from '../api/api-protocol.js';
import { inspectCommand } from './inspect-command.js';
import { runCommand } from './run-command.js';
import { UsageError } from './usage-error.js';
import { DEFAULT_CMDLINE } from './kvm-run.js';
import { addAcpiCommand } from './acpi-command.js';
import { addGuestCommand } from './guest-command.js';
import { addSwitchCommand } from './switch-command.js';

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

function program(): Command {
  const root = new Command('enlighten')
    .description('Hyper-V enlightened I/O host: a VMBus server with synthetic devices, on a process partition (reference guest) or KVM')
    .exitOverride()
    .configureOutput({ writeErr: () => {} })
    .showHelpAfterError(false);

  root
    .command('run')
    .description('start a VM and show what the guest negotiated')
    .addOption(new Option('--backend <backend>', 'partition backend').choices(['process', 'kvm']).default('process'))
    .addOption(new Option('--events <format>', 'output: text for people, json for one JSON object per line').choices(['text', 'json']).default('text'))
    .addOption(new Option('--stop-when <when>', 'ready: shut the guest down once it is up; never: run until SIGTERM or `enlighten shutdown`').choices(['ready', 'never']).default('never'))
    .option('--cpus <n>', 'virtual processors', '2')
    .option('--memory <size>', 'guest RAM (e.g. 256M, 1G)', '256M')
    .option('--vmbus-version <major.minor>', 'newest VMBus version the host accepts (default 5.3)')
    .option('--guest-vmbus-version <major.minor>', "newest VMBus version the reference guest tries (Linux's max_version)")
    .option('--name <name>', 'VM name, for the control socket', 'default')
    .option('--api-socket <path>', 'control socket path (default: derived from --name)')
    .option('--disk <spec>', 'attach a disk image as the next SCSI LUN: PATH[,readonly][,format=raw|vhdx] (repeatable; PATH memory:SIZE is a RAM disk)', collect, [])
    .option('--expose-disks <dir>', 'the reference guest surfaces each disk it finds as the file DIR/lun<N> (FUSE)')
    .option('--net <spec>', 'add a NIC: tap=NAME[,mac=MAC][,mtu=N][,queues=N][,netns=NS] or switch=PATH[,mac=MAC][,mtu=N][,queues=N] (repeatable)', collect, [])
    .option('--expose-nics <netns>', "the reference guest surfaces each NIC it finds as a TAP device in the existing network namespace NETNS")
    .option('--kernel <bzImage>', 'kvm: boot this kernel instead of the pinned Debian cloud kernel')
    .option('--initrd <file>', 'kvm: initramfs for --kernel')
    .option('--cmdline <text>', `kvm: kernel command line (default '${DEFAULT_CMDLINE}')`)
    .addOption(new Option('--guest-kernel <version>', 'kvm: which pinned Debian kernel the default guest boots').choices(['6.1', '6.12']))
    .option('--guest-package <name>', 'kvm: add a Debian package (with its libraries) to the default initramfs (repeatable)', collect, [])
    .option('--kvm-device <path>', 'kvm: the KVM device', '/dev/kvm')
    .addOption(new Option('--on-reboot <action>', 'kvm: when the guest reboots, exit (status 0) or restart it').choices(['exit', 'restart']).default('restart'))
    .option('-v, --verbose', 'log host and guest diagnostics to stderr')
    .argument('[command...]', 'kvm: a command for the guest to run instead of a shell (after --); its exit status becomes ours')
    .action(async (command: string[], options) => {
      process.exitCode = await runCommand(options, command);
    });

  addAcpiCommand(root);
  addGuestCommand(root);
  addSwitchCommand(root);

  const disk = root.command('disk').description("add, remove or list a running VM's disks (SCSI hot-plug)");
  const socketOf = (options: { apiSocket?: string; name: string }) => options.apiSocket ?? defaultSocketPath(options.name);
  disk
    .command('add <spec>')
    .description('hot-add a disk image: PATH[,readonly][,format=raw|vhdx]')
    .option('--name <name>', 'VM name', 'default')
    .option('--api-socket <path>', 'control socket path')
    .action(async (spec: string, options) => {
      const result = (await callApi(socketOf(options), { op: 'disk-add', spec })) as { lun: number; path: string };
      process.stdout.write(`${result.path} attached as LUN ${result.lun}\n`);
    });
  disk
    .command('remove <lun>')
    .description('hot-remove the disk at a LUN')
    .option('--name <name>', 'VM name', 'default')
    .option('--api-socket <path>', 'control socket path')
    .action(async (lunText: string, options) => {
      const lun = Number(lunText);
      if (!Number.isInteger(lun) || lun < 0 || lun > 255) throw new UsageError(`LUN must be a whole number from 0 to 255, not '${lunText}'`);
      const result = (await callApi(socketOf(options), { op: 'disk-remove', lun })) as { lun: number; path: string };
      process.stdout.write(`LUN ${result.lun} (${result.path}) removed\n`);
    });
  disk
    .command('list')
    .description('list the attached disks')
    .option('--name <name>', 'VM name', 'default')
    .option('--api-socket <path>', 'control socket path')
    .option('--json', 'JSON output')
    .action(async (options) => {
      const disks = (await callApi(socketOf(options), { op: 'disk-list' })) as { lun: number; path: string; format: string; readOnly: boolean; sizeBytes: number }[];
      if (options.json) process.stdout.write(`${JSON.stringify(disks)}\n`);
      else for (const d of disks) process.stdout.write(`LUN ${d.lun}  ${d.format}  ${d.sizeBytes} bytes${d.readOnly ? '  read-only' : ''}  ${d.path}\n`);
    });

  root
    .command('link <state>')
    .description("set a running VM's NIC link up or down, as the guest sees it (the cable)")
    .option('--nic <index>', 'only this NIC (default: all)')
    .option('--name <name>', 'VM name', 'default')
    .option('--api-socket <path>', 'control socket path')
    .action(async (state: string, options) => {
      if (state !== 'up' && state !== 'down') throw new UsageError(`link state must be 'up' or 'down', not '${state}'`);
      let nic: number | undefined;
      if (options.nic !== undefined) {
        nic = Number(options.nic);
        if (!Number.isInteger(nic) || nic < 0) throw new UsageError(`--nic must be a NIC index (0, 1, ...), not '${options.nic}'`);
      }
      const nics = (await callApi(socketOf(options), { op: 'link', up: state === 'up', nic })) as { index: number; mac: string }[];
      for (const n of nics) process.stdout.write(`NIC ${n.index} (${n.mac}): link ${state}\n`);
    });
  root
    .command('nics')
    .description("list a running VM's NICs")
    .option('--name <name>', 'VM name', 'default')
    .option('--api-socket <path>', 'control socket path')
    .option('--json', 'JSON output')
    .action(async (options) => {
      const nics = (await callApi(socketOf(options), { op: 'nic-list' })) as { index: number; kind: string; target: string; mac: string; mtu: number; queues: number; linkUp: boolean }[];
      if (options.json) process.stdout.write(`${JSON.stringify(nics)}\n`);
      else for (const n of nics) process.stdout.write(`NIC ${n.index}  ${n.mac}  ${n.kind}=${n.target}  mtu ${n.mtu}  ${n.queues} queue(s)  link ${n.linkUp ? 'up' : 'down'}\n`);
    });

  root
    .command('shutdown')
    .description('ask a running VM\'s guest to shut down through the Shutdown integration service')
    .option('--name <name>', 'VM name', 'default')
    .option('--api-socket <path>', 'control socket path')
    .option('--restart', 'restart instead of powering off')
    .action(async (options) => {
      const status = await callApi(options.apiSocket ?? defaultSocketPath(options.name), { op: 'shutdown', kind: options.restart ? 'restart' : 'shutdown' });
      process.stdout.write(`guest accepted the request (status ${status})\n`);
    });

  root
    .command('inspect')
    .description('show each channel of a running VM: relid, class, ring fill, packets and signals per second')
    .option('--name <name>', 'VM name', 'default')
    .option('--api-socket <path>', 'control socket path')
    .option('--watch', 'refresh until interrupted')
    .option('--interval <ms>', 'sampling interval', '1000')
    .option('--json', 'one JSON object per sample')
    .action(async (options) => {
      const intervalMs = Number(options.interval);
      if (!Number.isInteger(intervalMs) || intervalMs < 50) throw new UsageError('--interval must be a whole number of milliseconds, at least 50');
      process.exitCode = await inspectCommand({ socketPath: options.apiSocket ?? defaultSocketPath(options.name), watch: !!options.watch, intervalMs, json: !!options.json });
    });
  return root;
}

export async function main(argv: string[]): Promise<void> {
  try {
    await program().parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.exitCode === 0) return; // --help, --version
      process.stderr.write(`enlighten: ${e.message.replace(/^error: /, '')} (see 'enlighten --help')\n`);
      process.exitCode = 2;
      return;
    }
    if (e instanceof UsageError) {
      process.stderr.write(`enlighten: ${e.message}\n`);
      process.exitCode = 2;
      return;
    }
    process.stderr.write(`enlighten: ${(e as Error).message}\n`);
    process.exitCode = 1;
  }
}
