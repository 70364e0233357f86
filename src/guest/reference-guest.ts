// The reference guest: what a Linux kernel with hv_vmbus and its drivers does, in
// TypeScript, against any GuestHypervisor. It owns its RAM's page allocator, the VMBus
// client and the drivers, and reports what it negotiated and opened.
import { EventEmitter } from 'node:events';
import { formatVersion } from '../vmbus/versions.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import type { GuestHypervisor } from './hypervisor.js';
import { PageAllocator } from './page-allocator.js';
import { VmbusClient } from './vmbus-client.js';
import type { VmbusDriver } from './vmbus-driver.js';

export interface ReferenceGuestOptions {
  maxVersion?: number;
  replyTimeoutMs?: number;
  log?: (message: string) => void;
}

/** What the guest reports, as a kernel would on its console. */
export type GuestReport =
  | { event: 'vmbus-connected'; version: string }
  | { event: 'channel-open'; relid: number; class: string; name: string }
  | { event: 'channel-close'; relid: number; name: string }
  | { event: 'offer'; relid: number; class: string; instance: string }
  | { event: 'rescind'; relid: number }
  | { event: 'unloaded' }
  | { event: 'power-off'; reason: string }
  | { event: 'nic'; name: string; mac: string; mtu: number; queues: number }
  | { event: 'disk'; lun: number; name: string; bytes: number; blockBytes: number; readOnly: boolean; writeCache: boolean; fua: boolean; discard: boolean; channels: number }
  | { event: 'disk-removed'; lun: number; name: string }
  | { event: 'log'; message: string };

/** What a driver that needs the guest's RAM, page allocator or report line gets before boot. */
export interface GuestContext {
  memory: GuestMemory;
  allocator: PageAllocator;
  vpCount: number;
  report: (report: GuestReport) => void;
}

/** A driver that wants the GuestContext implements this (storvsc: scan buffers, disk reports). */
export interface GuestAttachable {
  attachGuest(context: GuestContext): void;
}

export class ReferenceGuest extends EventEmitter<{ report: [GuestReport] }> {
  readonly client: VmbusClient;
  readonly allocator: PageAllocator;

  constructor(readonly hv: GuestHypervisor, readonly drivers: VmbusDriver[], options: ReferenceGuestOptions = {}) {
    super();
    // Page 0 stays unused, as on a PC; the rest is the guest's to allocate.
    this.allocator = new PageAllocator(1, hv.memory.pageCount - 1);
    const log = (message: string) => {
      options.log?.(message);
      this.report({ event: 'log', message });
    };
    this.client = new VmbusClient({ hypervisor: hv, allocator: this.allocator, maxVersion: options.maxVersion, replyTimeoutMs: options.replyTimeoutMs, log });
    const context: GuestContext = { memory: hv.memory, allocator: this.allocator, vpCount: hv.vpCount, report: (r) => this.report(r) };
    for (const driver of drivers) {
      const attachable = driver as Partial<GuestAttachable>;
      if (typeof attachable.attachGuest === 'function') attachable.attachGuest(context);
      this.client.registerDriver(driver);
    }
    this.client.on('connected', ({ version }) => this.report({ event: 'vmbus-connected', version }));
    this.client.on('offer', ({ relid, classId, instanceId }) => this.report({ event: 'offer', relid, class: classId, instance: instanceId }));
    this.client.on('channel-open', ({ relid, classId, name }) => this.report({ event: 'channel-open', relid, class: classId, name }));
    this.client.on('channel-close', ({ relid, name }) => this.report({ event: 'channel-close', relid, name }));
    this.client.on('rescind', ({ relid }) => this.report({ event: 'rescind', relid }));
    this.client.on('unloaded', () => this.report({ event: 'unloaded' }));
  }

  report(report: GuestReport): void {
    this.emit('report', report);
  }

  /** Boot: connect to VMBus and probe every offered device. */
  async boot(): Promise<string> {
    return formatVersion(await this.client.connect());
  }

  driver<T extends VmbusDriver>(name: string): T | undefined {
    return this.drivers.find((d) => d.name === name) as T | undefined;
  }

  /** Orderly power-off: drivers close their channels (device shutdown), then the guest stops. */
  async powerOff(reason: string): Promise<void> {
    await this.client.settleProbes();
    for (const channel of [...this.client.channels.values()]) {
      const driver = this.client.driverFor(channel);
      try {
        if (driver) await driver.remove(channel);
        else await channel.close();
      } catch (e) {
        this.report({ event: 'log', message: `closing relid ${channel.relid} at power-off failed: ${(e as Error).message}` });
      }
    }
    this.report({ event: 'power-off', reason });
  }
}
