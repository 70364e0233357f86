// Test harness: a process-partition VM with the standard devices and the reference guest,
// recording what the guest reports and what the server logs.
import { ProcessVm, type ProcessVmOptions } from '../../src/vm/process-vm.js';
import { createStandardDevices, type StandardDevices } from '../../src/vm/standard-devices.js';
import type { GuestReport } from '../../src/guest/reference-guest.js';
import { VmStorage } from '../../src/vm/vm-storage.js';

export interface TestVm {
  vm: ProcessVm;
  devices: StandardDevices;
  /** The SCSI controller and its disks (offered only with withStorage; attach before start() for boot-time disks). */
  storage: VmStorage;
  reports: GuestReport[];
  logs: string[];
  /** Resolves with the first report matching `predicate` (already seen or future). */
  waitForReport(predicate: (r: GuestReport) => boolean, timeoutMs?: number): Promise<GuestReport>;
}

export function createTestVm(options: Partial<ProcessVmOptions> & { heartbeatIntervalMs?: number; withStorage?: boolean } = {}): TestVm {
  let devices: StandardDevices | null = null;
  let storage: VmStorage | null = null;
  const logs: string[] = [];
  const reports: GuestReport[] = [];
  const vm = new ProcessVm({
    memoryBytes: 64 << 20,
    cpus: 2,
    replyTimeoutMs: 5000,
    log: (m) => logs.push(m),
    ...options,
    devices: (context) => {
      devices = createStandardDevices({
        poller: context.poller,
        referenceTime: () => context.partition.referenceTime(),
        heartbeat: { intervalMs: options.heartbeatIntervalMs ?? 1000 },
        kvpTimeoutMs: 3000,
        log: (m) => logs.push(m),
      });
      storage = new VmStorage({ poller: context.poller, server: context.server, cpus: options.cpus ?? 2, log: (m) => logs.push(m) });
      // Only VMs that ask for storage get the controller, so the VMBus tests keep their channel counts.
      return options.withStorage ? [...devices.all, storage.controller] : devices.all;
    },
  });
  vm.on('report', (r) => reports.push(r));
  const waitForReport = (predicate: (r: GuestReport) => boolean, timeoutMs = 5000) => waitForVmReport(vm, reports, predicate, timeoutMs);
  return { vm, devices: devices!, storage: storage!, reports, logs, waitForReport };
}

export async function until(condition: () => boolean | Promise<boolean>, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Resolves with the first report matching `predicate`, already in `reports` or still to come. */
export function waitForVmReport(vm: ProcessVm, reports: GuestReport[], predicate: (r: GuestReport) => boolean, timeoutMs = 5000, context: () => string = () => ''): Promise<GuestReport> {
  return new Promise<GuestReport>((resolve, reject) => {
    const found = reports.find(predicate);
    if (found) return resolve(found);
    const timer = setTimeout(() => {
      vm.off('report', listener);
      reject(new Error(`no matching guest report within ${timeoutMs} ms; saw ${JSON.stringify(reports.slice(-10))}${context()}`));
    }, timeoutMs);
    const listener = (r: GuestReport) => {
      if (!predicate(r)) return;
      clearTimeout(timer);
      vm.off('report', listener);
      resolve(r);
    };
    vm.on('report', listener);
  });
}
