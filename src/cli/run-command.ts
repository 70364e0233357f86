// `enlighten run`: start a VM, print what the guest reports (text or JSON lines), serve
// the control API, and stop on request, on Ctrl-C/SIGTERM (through the Shutdown IC) or
// when the guest powers off.
import type { GuestReport } from '../guest/reference-guest.js';
import { startApiServer } from '../api/api-server.js';
import { defaultSocketPath, type ApiRequest } from '../api/api-protocol.js';
import { ProcessVm } from '../vm/process-vm.js';
import { createStandardDevices, type StandardDevices } from '../vm/standard-devices.js';
import { vmStatus } from '../vm/vm-status.js';
import { parseVersion, VMBUS_VERSIONS_LINUX } from '../vmbus/versions.js';
import { parseSize } from './sizes.js';
import fs from 'node:fs';
import path from 'node:path';
import { parseDiskSpec, type DiskSpec } from '../vm/disk-spec.js';
import { VmStorage } from '../vm/vm-storage.js';
import { UsageError } from './usage-error.js';
import { runKvm } from './kvm-run.js';
import { parseNetSpec, type NetSpec } from '../vm/net-spec.js';
import { VmNetwork } from '../vm/vm-network.js';
import { netnsExists } from '../sys/netns.js';
import { exitWithGrace } from '../vm/exit-after-shutdown.js';

export interface RunOptions {
  backend: string;
  events: string;
  stopWhen: string;
  cpus: string;
  memory: string;
  vmbusVersion?: string;
  guestVmbusVersion?: string;
  name: string;
  apiSocket?: string;
  verbose?: boolean;
  disk?: string[];
  exposeDisks?: string;
  kernel?: string;
  initrd?: string;
  cmdline?: string;
  guestKernel?: string;
  guestPackage?: string[];
  kvmDevice?: string;
  onReboot?: string;
  net?: string[];
  exposeNics?: string;
}

const MIN_MEMORY = 16 * 1024 * 1024;
const MAX_MEMORY = 64 * 1024 ** 3;
const SHUTDOWN_GRACE_MS = 15_000;

export interface ValidatedRun {
  json: boolean;
  stopWhenReady: boolean;
  cpus: number;
  memoryBytes: number;
  maxVersion?: number;
  guestMaxVersion?: number;
  socketPath: string;
  verbose: boolean;
  disks: DiskSpec[];
  exposeDisks?: string;
  nets: NetSpec[];
  exposeNics?: string;
}

export function validateRunOptions(o: RunOptions): ValidatedRun {
  if (o.backend !== 'process' && o.backend !== 'kvm') throw new UsageError(`unknown backend '${o.backend}': use 'process' or 'kvm'`);
  if (o.backend === 'process') {
    for (const [flag, value] of [['--kernel', o.kernel], ['--initrd', o.initrd], ['--cmdline', o.cmdline], ['--guest-kernel', o.guestKernel]] as const) {
      if (value !== undefined) throw new UsageError(`${flag} boots a real kernel: it needs '--backend kvm'`);
    }
  } else if (o.exposeDisks !== undefined || o.exposeNics !== undefined) {
    throw new UsageError(`${o.exposeDisks !== undefined ? '--expose-disks' : '--expose-nics'} is for the reference guest (--backend process); a real guest has its own devices`);
  }
  if (o.events !== 'json' && o.events !== 'text') throw new UsageError(`--events must be 'json' or 'text', not '${o.events}'`);
  if (o.stopWhen !== 'ready' && o.stopWhen !== 'never') throw new UsageError(`--stop-when must be 'ready' or 'never', not '${o.stopWhen}'`);
  const cpus = Number(o.cpus);
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > 64) throw new UsageError(`--cpus must be a whole number from 1 to 64, not '${o.cpus}'`);
  let memoryBytes: number;
  try {
    memoryBytes = parseSize(o.memory);
  } catch (e) {
    throw new UsageError(`--memory: ${(e as Error).message}`);
  }
  if (memoryBytes < MIN_MEMORY || memoryBytes > MAX_MEMORY || memoryBytes % 4096 !== 0) {
    throw new UsageError(`--memory must be a multiple of 4 KiB between 16M and 64G, not '${o.memory}'`);
  }
  const version = (flag: string, text?: string) => {
    if (text === undefined) return undefined;
    let v: number;
    try {
      v = parseVersion(text);
    } catch {
      throw new UsageError(`${flag} '${text}' is not a version like 5.3`);
    }
    if (!VMBUS_VERSIONS_LINUX.includes(v)) throw new UsageError(`${flag} ${text} is not a VMBus version Linux speaks (2.4, 3.0, 4.0, 4.1, 5.0-5.3)`);
    return v;
  };
  return {
    json: o.events === 'json',
    stopWhenReady: o.stopWhen === 'ready',
    cpus,
    memoryBytes,
    maxVersion: version('--vmbus-version', o.vmbusVersion),
    guestMaxVersion: version('--guest-vmbus-version', o.guestVmbusVersion),
    socketPath: o.apiSocket ?? defaultSocketPath(o.name),
    verbose: o.verbose ?? false,
    disks: (o.disk ?? []).map((text) => {
      try {
        return parseDiskSpec(text);
      } catch (e) {
        throw new UsageError(`--disk: ${(e as Error).message}`);
      }
    }),
    exposeDisks: o.exposeDisks === undefined ? undefined : existingDirectory('--expose-disks', o.exposeDisks),
    nets: (o.net ?? []).map((text) => {
      try {
        return parseNetSpec(text);
      } catch (e) {
        throw new UsageError(`--net: ${(e as Error).message}`);
      }
    }),
    exposeNics: o.exposeNics === undefined ? undefined : existingNetns(o.exposeNics),
  };
}

function existingNetns(name: string): string {
  if (!netnsExists(name)) throw new UsageError(`--expose-nics: network namespace '${name}' does not exist (create it first: ip netns add ${name})`);
  return name;
}

function existingDirectory(flag: string, dir: string): string {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(dir);
  } catch {
    throw new UsageError(`${flag}: '${dir}' does not exist (create the directory first)`);
  }
  if (!stat.isDirectory()) throw new UsageError(`${flag}: '${dir}' is not a directory`);
  return path.resolve(dir);
}

export async function runCommand(options: RunOptions, guestCommand: string[] = []): Promise<number> {
  const run = validateRunOptions(options);
  if (options.backend === 'kvm') {
    return runKvm(run, { kernel: options.kernel, initrd: options.initrd, cmdline: options.cmdline, guestKernel: options.guestKernel, guestPackage: options.guestPackage, command: guestCommand, kvmPath: options.kvmDevice, onReboot: options.onReboot === 'restart' ? 'restart' : 'exit' });
  }
  if (guestCommand.length > 0) throw new UsageError('a command after -- runs inside a real guest: it needs --backend kvm');
  const out = (event: Record<string, unknown>, text: string) => {
    if (run.json) process.stdout.write(`${JSON.stringify(event)}\n`);
    else process.stdout.write(`${text}\n`);
  };
  const log = (message: string) => {
    if (run.verbose) process.stderr.write(`enlighten: ${message}\n`);
  };
  let devices: StandardDevices | null = null;
  // Assigned while the VM is constructed (the device factory runs synchronously).
  let disks!: VmStorage;
  let network!: VmNetwork;
  const vm = new ProcessVm({
    memoryBytes: run.memoryBytes,
    cpus: run.cpus,
    maxVersion: run.maxVersion,
    guestMaxVersion: run.guestMaxVersion,
    guestExposeDisks: run.exposeDisks,
    guestExposeNics: run.exposeNics,
    // This process runs this one VM: its event loop may wait for the VM's fds itself.
    pollInThread: true,
    devices: (context) => {
      devices = createStandardDevices({ poller: context.poller, referenceTime: () => context.partition.referenceTime(), log });
      disks = new VmStorage({ poller: context.poller, server: context.server, cpus: run.cpus, log });
      network = new VmNetwork({ poller: context.poller, server: context.server, cpus: run.cpus, log });
      return [...devices.all, disks.controller];
    },
    log,
  });
  vm.on('report', (report) => printReport(report, out, log));
  const shutdown = async (kind: 'shutdown' | 'restart' = 'shutdown') => {
    const service = devices?.shutdown.service;
    if (!service) throw new Error('the guest has not opened the shutdown integration service');
    const status = await service.request(kind);
    out({ event: 'shutdown-requested', kind, status }, `asked the guest to ${kind} (guest answered status ${status})`);
    return status;
  };
  const api = await startApiServer(run.socketPath, async (request: ApiRequest) => {
    switch (request.op) {
      case 'shutdown': return shutdown(request.kind ?? 'shutdown');
      case 'inspect':
      case 'status': return vmStatus(vm.server, 'process', run.cpus, run.memoryBytes);
      case 'disk-add': {
        const disk = await disks.attach(parseDiskSpec(request.spec));
        out({ event: 'disk-attached', ...disk }, `host: ${disk.path} attached as LUN ${disk.lun}`);
        return disk;
      }
      case 'disk-remove': {
        const disk = await disks.detach(request.lun);
        out({ event: 'disk-detached', ...disk }, `host: LUN ${disk.lun} (${disk.path}) detached`);
        return disk;
      }
      case 'disk-list': return disks.list();
      case 'link': return network.setLink(request.up, request.nic);
      case 'nic-list': return network.list();
      default: throw new Error(`unknown API operation ${(request as { op: string }).op}`);
    }
  });
  let stopping = false;
  const onSignal = (signal: string) => {
    if (stopping) {
      log(`${signal} again: stopping now`);
      process.exitCode = 1;
      void vm.stop();
      return;
    }
    stopping = true;
    log(`${signal}: asking the guest to shut down`);
    shutdown().catch((e: Error) => {
      log(`shutdown through the integration service failed: ${e.message}; stopping the VM`);
      void vm.stop();
    });
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  let code = 1;
  try {
    for (const spec of run.disks) {
      const disk = await disks.attach(spec);
      log(`${disk.path} (${disk.format}, ${disk.sizeBytes} bytes${disk.readOnly ? ', read-only' : ''}) is LUN ${disk.lun}`);
    }
    for (const spec of run.nets) {
      const nic = network.add(spec);
      log(`NIC ${nic.index}: ${nic.mac} on ${nic.kind} ${nic.target} (mtu ${nic.mtu}, ${nic.queues} queue(s))`);
    }
    const version = await vm.start();
    out({ event: 'ready', version, channels: vm.server.channelInfo().length, api: run.socketPath }, `guest is up: VMBus ${version}; control socket ${run.socketPath}`);
    if (run.stopWhenReady) {
      stopping = true;
      await shutdown();
    }
    const exit = await exitWithGrace(vm.waitForExit(), () => stopping, SHUTDOWN_GRACE_MS, () => ({ code: 1, reason: `guest did not power off within ${SHUTDOWN_GRACE_MS / 1000} s of the shutdown request` }));
    code = exit.code;
    out({ event: 'exit', code: exit.code, reason: exit.reason }, `guest stopped: ${exit.reason}`);
  } catch (e) {
    process.stderr.write(`enlighten: ${(e as Error).message}\n`);
    code = 1;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    api.close();
    // The NICs' backends leave the VM's event loop before it stops.
    network.close();
    await vm.stop();
    await disks.close().catch((e: Error) => {
      process.stderr.write(`enlighten: closing the disk images failed: ${e.message}\n`);
      code = 1;
    });
  }
  return code;
}

function printReport(report: GuestReport, out: (event: Record<string, unknown>, text: string) => void, log: (m: string) => void): void {
  switch (report.event) {
    case 'vmbus-connected': return out(report, `guest: VMBus ${report.version} negotiated`);
    case 'channel-open': return out(report, `guest: channel ${report.relid} open: ${report.name} (${report.class})`);
    case 'channel-close': return out(report, `guest: channel ${report.relid} closed: ${report.name}`);
    case 'rescind': return out(report, `guest: channel ${report.relid} rescinded by the host`);
    case 'unloaded': return out(report, 'guest: VMBus unloaded');
    case 'power-off': return out(report, `guest: powered off (${report.reason})`);
    case 'offer': return log(`guest saw offer ${report.relid} ${report.class}`);
    case 'log': return log(`guest: ${report.message}`);
    case 'disk': return out(report, `guest: disk ${report.name}: ${report.bytes} bytes, ${report.blockBytes}-byte blocks${report.readOnly ? ', read-only' : ''} on ${report.channels} channel(s)`);
    case 'disk-removed': return out(report, `guest: disk ${report.name} removed`);
    case 'nic': return out(report, `guest: NIC ${report.name} ${report.mac}, mtu ${report.mtu}, ${report.queues} queue(s)`);
  }
}
