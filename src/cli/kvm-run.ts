// `enlighten run --backend kvm`: boot a real Linux kernel on the KVM partition. The guest is
// the pinned Debian cloud kernel with enlighten's initramfs unless --kernel/--initrd say
// otherwise. The console goes to stdout (text) or becomes `console` events (json); marker
// lines from enlighten's /init become events and the exit status of a command given after
// `--`.
import fs from 'node:fs';
import { startApiServer } from '../api/api-server.js';
import type { ApiRequest } from '../api/api-protocol.js';
import { detectKvmHardware } from '../kvm/hardware-check.js';
import { KvmMachine, type MachineExit } from '../vm/kvm-machine.js';
import { createStandardDevices, type StandardDevices } from '../vm/standard-devices.js';
import { vmStatus } from '../vm/vm-status.js';
import { VmStorage } from '../vm/vm-storage.js';
import { parseDiskSpec, type DiskSpec } from '../vm/disk-spec.js';
import { defaultGuest } from '../guest-image/default-guest.js';
import { validateGuestRam } from '../x86/guest-layout.js';
import { parseGuestMarker } from '../guest-image/guest-markers.js';
import { UsageError } from './usage-error.js';
import { exitWithGrace } from '../vm/exit-after-shutdown.js';
import { SerialConsole } from '../x86/serial-console.js';
import { VmNetwork } from '../vm/vm-network.js';
import type { ValidatedRun } from './run-command.js';

export interface KvmRunOptions {
  kernel?: string;
  initrd?: string;
  cmdline?: string;
  guestKernel?: string;
  guestPackage?: string[];
  /** A command for enlighten's /init to run instead of a shell (the words after `--`). */
  command?: string[];
  kvmPath?: string;
  /** What a guest reboot does: end the run (exit 0) or boot the guest again. */
  onReboot?: 'exit' | 'restart';
}

export const DEFAULT_CMDLINE = 'console=ttyS0 panic=-1 pci=off';
const SHUTDOWN_GRACE_MS = 30_000;

/** Lets a developer try the KVM backend on a KVM without hardware virtualization anyway. */
export const FORCE_KVM_ENV = 'ENLIGHTEN_FORCE_KVM';

export async function runKvm(run: ValidatedRun, o: KvmRunOptions): Promise<number> {
  const out = (event: Record<string, unknown>, text: string) => {
    if (run.json) process.stdout.write(`${JSON.stringify(event)}\n`);
    else process.stderr.write(`enlighten: ${text}\n`);
  };
  const log = (message: string) => {
    if (run.verbose) process.stderr.write(`enlighten: ${message}\n`);
  };
  const hardware = detectKvmHardware({ devicePath: o.kvmPath });
  if (!hardware.usable && process.env[FORCE_KVM_ENV] !== '1') {
    process.stderr.write(`enlighten: ${hardware.reason}\n`);
    return 1;
  }
  try {
    validateGuestRam(run.memoryBytes);
  } catch (e) {
    throw new UsageError(`--memory: ${(e as Error).message}`);
  }
  if (o.guestKernel !== undefined && o.guestKernel !== '6.1' && o.guestKernel !== '6.12') throw new UsageError(`--guest-kernel must be 6.1 or 6.12, not '${o.guestKernel}'`);
  if (o.initrd !== undefined && o.kernel === undefined) throw new UsageError('--initrd needs --kernel');

  let kernelPath = o.kernel;
  let initrdPath = o.initrd;
  const defaultImage = kernelPath === undefined;
  if (defaultImage) {
    const guest = await defaultGuest({
      kernel: (o.guestKernel ?? '6.1') as '6.1' | '6.12',
      packages: o.guestPackage,
      onProgress: (message: string) => process.stderr.write(`enlighten: ${message}\n`),
    });
    kernelPath = guest.kernelPath;
    initrdPath = guest.initramfsPath;
  }
  const kernel = readInput('--kernel', kernelPath!);
  const initrd = initrdPath === undefined ? undefined : readInput('--initrd', initrdPath);
  let cmdline = o.cmdline ?? DEFAULT_CMDLINE;
  if (o.command && o.command.length > 0) cmdline += ` enlighten.cmd=${Buffer.from(o.command.map(shellQuote).join(' ')).toString('base64')}`;

  // What stays across a guest reboot: the disks (re-attached to each new machine), the
  // API socket, the signal handlers.
  const diskSpecs: DiskSpec[] = [...run.disks];
  let devices: StandardDevices | null = null;
  let disks: VmStorage | null = null;
  let network: VmNetwork | null = null;
  let machine: KvmMachine | null = null;
  let commandStatus: number | null = null;
  let ready = false;
  let stopping = false;

  const shutdown = async (kind: 'shutdown' | 'restart' = 'shutdown') => {
    const service = devices?.shutdown.service;
    if (!service) throw new Error('the guest has not opened the shutdown integration service (hv_utils not loaded yet)');
    const status = await service.request(kind);
    out({ event: 'shutdown-requested', kind, status }, `asked the guest to ${kind} (guest answered status ${status})`);
    return status;
  };
  const onReady = (how: string) => {
    if (ready || !machine) return;
    ready = true;
    out({ event: 'ready', version: machine.server.negotiatedVersion, channels: machine.server.channelInfo().length, api: run.socketPath }, `guest is up (${how}); control socket ${run.socketPath}`);
    if (run.stopWhenReady && !stopping) {
      stopping = true;
      shutdown().catch((e: Error) => {
        out({ event: 'error', message: e.message }, `shutdown failed: ${e.message}`);
        void machine?.stop();
      });
    }
  };
  const requireDisks = () => {
    if (!disks) throw new Error('the VM is between boots; try again');
    return disks;
  };

  const boot = async (): Promise<KvmMachine> => {
    ready = false;
    const created = new KvmMachine({
      memoryBytes: run.memoryBytes,
      cpus: run.cpus,
      kernel,
      initrd,
      cmdline,
      maxVersion: run.maxVersion,
      kvmPath: o.kvmPath,
      log,
      devices: (context) => {
        devices = createStandardDevices({ poller: context.poller, referenceTime: () => context.partition.referenceTime(), log });
        disks = new VmStorage({ poller: context.poller, server: context.server, cpus: run.cpus, log });
        network = new VmNetwork({ poller: context.poller, server: context.server, cpus: run.cpus, log });
        return [...devices.all, disks.controller];
      },
    });
    machine = created;
    log(`booting ${created.kernelVersion} with '${cmdline}'`);
    if (run.json) created.on('line', (line) => out({ event: 'console', line }, line));
    else created.on('console', (bytes) => {
      for (const byte of bytes) serial?.transmit(byte);
    });
    created.on('line', (line) => {
      const marker = parseGuestMarker(line);
      if (!marker) return;
      switch (marker.kind) {
        case 'ready': return onReady('guest init ran');
        case 'report': return out({ event: 'guest-report', key: marker.key, value: marker.value }, `guest: ${marker.key} = ${marker.value}`);
        case 'exit':
          commandStatus = marker.status;
          return out({ event: 'command-exit', status: marker.status }, `guest command exited with status ${marker.status}`);
      }
    });
    created.server.on('connected', (e) => out({ event: 'vmbus-connected', version: e.version }, `guest: VMBus ${e.version} negotiated`));
    created.server.on('channel-open', (e) => {
      out({ event: 'channel-open', relid: e.relid, class: e.classId, name: e.name }, `guest: channel ${e.relid} open: ${e.name}`);
      // A guest without enlighten's /init has no marker: it is up once it can be shut down.
      if (!defaultImage && e.name === 'shutdown') onReady('shutdown integration service open');
    });
    for (const spec of run.nets) {
      const nic = network!.add(spec);
      log(`NIC ${nic.index}: ${nic.mac} on ${nic.kind} ${nic.target} (mtu ${nic.mtu}, ${nic.queues} queue(s))`);
    }
    for (const spec of diskSpecs) {
      const disk = await disks!.attach(spec);
      log(`${disk.path} (${disk.format}, ${disk.sizeBytes} bytes${disk.readOnly ? ', read-only' : ''}) is LUN ${disk.lun}`);
    }
    created.start();
    return created;
  };
  const teardown = async (): Promise<boolean> => {
    let clean = true;
    const m = machine;
    const d = disks;
    const n = network;
    machine = null;
    disks = null;
    network = null;
    devices = null;
    // The NICs' backends leave the VM's event loop before it stops.
    n?.close();
    if (m) await m.stop();
    if (d) {
      await d.close().catch((e: Error) => {
        process.stderr.write(`enlighten: closing the disk images failed: ${e.message}\n`);
        clean = false;
      });
    }
    return clean;
  };

  const api = await startApiServer(run.socketPath, async (request: ApiRequest) => {
    switch (request.op) {
      case 'shutdown': return shutdown(request.kind ?? 'shutdown');
      case 'inspect':
      case 'status':
        if (!machine) throw new Error('the VM is between boots; try again');
        return vmStatus(machine.server, 'kvm', run.cpus, run.memoryBytes);
      case 'disk-add': {
        const spec = parseDiskSpec(request.spec);
        const disk = await requireDisks().attach(spec);
        diskSpecs.push(spec);
        out({ event: 'disk-attached', ...disk }, `${disk.path} attached as LUN ${disk.lun}`);
        return disk;
      }
      case 'disk-remove': {
        const disk = await requireDisks().detach(request.lun);
        const index = diskSpecs.findIndex((spec) => spec.path === disk.path);
        if (index >= 0) diskSpecs.splice(index, 1);
        out({ event: 'disk-detached', ...disk }, `LUN ${disk.lun} (${disk.path}) detached`);
        return disk;
      }
      case 'disk-list': return requireDisks().list();
      case 'link':
        if (!network) throw new Error('the VM is between boots; try again');
        return network.setLink(request.up, request.nic);
      case 'nic-list': return network ? network.list() : [];
      default: throw new Error(`unknown API operation ${(request as { op: string }).op}`);
    }
  });

  // Text mode: the console is the terminal (raw keyboard input when stdin is one; Ctrl-A x
  // stops the VM). JSON mode: console lines are events and stdin is left alone.
  const serial = run.json ? null : new SerialConsole({
    sink: { receive: (bytes) => machine?.input(bytes) ?? 0 },
    onStop: () => {
      log('Ctrl-A x: stopping the VM');
      stopping = true;
      void machine?.stop();
    },
  });
  const onSignal = (signal: string) => {
    if (stopping) {
      log(`${signal} again: stopping now`);
      void machine?.stop();
      return;
    }
    stopping = true;
    log(`${signal}: asking the guest to shut down`);
    shutdown().catch((e: Error) => {
      log(`shutdown through the integration service failed: ${e.message}; stopping the VM`);
      void machine?.stop();
    });
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  let code = 1;
  try {
    for (;;) {
      const running = await boot();
      const exit = await exitWithGrace(running.waitForExit(), () => stopping, SHUTDOWN_GRACE_MS, (): MachineExit => ({ code: 1, reason: `guest did not power off within ${SHUTDOWN_GRACE_MS / 1000} s of the shutdown request`, kind: 'stopped' }));
      if (exit.kind === 'reboot' && o.onReboot === 'restart' && !stopping) {
        out({ event: 'reboot', reason: exit.reason }, `guest rebooted (${exit.reason}); starting it again`);
        if (!(await teardown())) break;
        continue;
      }
      code = commandStatus ?? exit.code;
      out({ event: 'exit', code, reason: exit.reason }, `guest stopped: ${exit.reason}`);
      break;
    }
  } catch (e) {
    process.stderr.write(`enlighten: ${(e as Error).message}\n`);
    code = 1;
  } finally {
    serial?.close();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    api.close();
    if (!(await teardown())) code = 1;
  }
  return code;
}

function readInput(flag: string, file: string): Uint8Array {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new UsageError(`${flag}: cannot read '${file}' (${code === 'ENOENT' ? 'no such file' : code ?? (e as Error).message})`);
  }
}

/** Quotes one word for the guest's sh -c. */
function shellQuote(word: string): string {
  return /^[A-Za-z0-9_./=:,@%+-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}
