// hv_storvsc for the reference guest: binds SCSI controller offers, brings each adapter up
// (StorvscController), scans it (ScsiScanner) and keeps the list of disks, handling the
// host's hot-plug notices the way storvsc_host_scan does: TEST UNIT READY every known
// disk (INVALID_LUN removes it), then rescan for new ones.
import { EventEmitter } from 'node:events';
import { STORVSC_SCSI_CLASS_ID } from '../../devices/storvsp/storvsp-protocol.js';
import { PAGE_SIZE } from '../../memory/page.js';
import type { GuestChannel } from '../guest-channel.js';
import type { GuestAttachable, GuestContext } from '../reference-guest.js';
import type { VmbusDriver } from '../vmbus-driver.js';
import type { GuestBlockDevice } from './guest-block-device.js';
import { addressKey, ScsiScanner } from './scsi-scanner.js';
import { DataIn, StorvscController, type ScsiTarget } from './storvsc-controller.js';
import { synchronizeCache10 } from './scsi-cdb.js';
import { StorvscDisk } from './storvsc-disk.js';

export interface StorvscDriverOptions {
  /** Per init step (Linux: 180 s). */
  initTimeoutMs?: number;
  /** Per SCSI command (Linux: 180 s); on expiry the request fails with -ETIMEDOUT and the bus is reset. */
  ioTimeoutMs?: number;
  /** Outstanding commands per adapter. */
  maxOutstanding?: number;
  /** Completion polling after each batch, in microseconds (0: interrupts only). */
  pollMicros?: number;
  /** See StorvscControllerOptions.keepAwake. */
  keepAwake?: () => void;
  log?: (message: string) => void;
}


export interface StorvscEvents {
  'disk-added': [GuestBlockDevice];
  'disk-removed': [GuestBlockDevice];
}

interface Adapter {
  index: number;
  controller: StorvscController;
  scanner: ScsiScanner | null;
  scanPfn: number;
  disks: Map<string, StorvscDisk>;
  /** Scans (probe, hot plug) run one at a time (Linux's scan_mutex). */
  scanning: Promise<void>;
  rescanQueued: boolean;
}

export class StorvscDriver extends EventEmitter<StorvscEvents> implements VmbusDriver, GuestAttachable {
  readonly name = 'storvsc';
  readonly classId = STORVSC_SCSI_CLASS_ID;
  private context: GuestContext | null = null;
  private readonly adapters = new Map<number, Adapter>();
  private nextIndex = 0;
  private readonly log: (message: string) => void;

  constructor(private readonly options: StorvscDriverOptions = {}) {
    super();
    this.log = options.log ?? (() => {});
  }

  /** Called by the guest before boot: memory, page allocator, VP count and its report line. */
  attachGuest(context: GuestContext): void {
    this.context = context;
  }

  /** Every disk present now, in discovery order. */
  devices(): StorvscDisk[] {
    const out: StorvscDisk[] = [];
    for (const adapter of this.adapters.values()) for (const disk of adapter.disks.values()) if (disk.present) out.push(disk);
    return out;
  }

  /** The present disk with this LUN (first adapter that has it). */
  disk(lun: number): StorvscDisk | undefined {
    return this.devices().find((d) => d.lun === lun);
  }

  /** The per-command timeout of every adapter, present and future (Linux's sysfs device/timeout). */
  setIoTimeout(ms: number): void {
    if (!Number.isFinite(ms) || ms <= 0) throw new RangeError('the I/O timeout must be a positive number of milliseconds');
    this.options.ioTimeoutMs = ms;
    for (const adapter of this.adapters.values()) adapter.controller.setIoTimeout(ms);
  }

  controllers(): StorvscController[] {
    return [...this.adapters.values()].map((a) => a.controller);
  }

  async probe(channel: GuestChannel): Promise<void> {
    const context = this.context;
    if (!context) throw new Error('storvsc: the driver was not attached to a guest');
    const index = this.nextIndex++;
    const adapter: Adapter = { index, controller: null as unknown as StorvscController, scanner: null, scanPfn: -1, disks: new Map(), scanning: Promise.resolve(), rescanQueued: false };
    adapter.controller = new StorvscController({
      primary: channel,
      memory: context.memory,
      allocator: context.allocator,
      vpCount: context.vpCount,
      portNumber: index,
      initTimeoutMs: this.options.initTimeoutMs,
      ioTimeoutMs: this.options.ioTimeoutMs,
      maxOutstanding: this.options.maxOutstanding,
      pollMicros: this.options.pollMicros,
      keepAwake: this.options.keepAwake,
      log: this.log,
      onBusChange: () => this.hotplug(adapter),
      onInvalidLun: (target) => this.removeDisk(adapter, target),
      onCapacityChanged: (target) => void this.refreshCapacity(adapter, target),
    });
    this.adapters.set(channel.relid, adapter);
    try {
      await adapter.controller.start();
      adapter.scanPfn = context.allocator.allocContiguous(1);
      adapter.scanner = new ScsiScanner({
        controller: adapter.controller,
        memory: context.memory,
        bufferGpa: adapter.scanPfn * PAGE_SIZE,
        name: (path, target, lun) => (index === 0 && path === 0 && target === 0 ? `lun${lun}` : `host${index}-${path}-${target}-lun${lun}`),
        log: this.log,
      });
    } catch (e) {
      this.adapters.delete(channel.relid);
      await adapter.controller.close();
      throw e;
    }
    await this.serialize(adapter, () => this.scan(adapter));
  }

  async subchannel(primary: GuestChannel, sub: GuestChannel): Promise<void> {
    const adapter = this.adapters.get(primary.relid);
    if (!adapter) return;
    await adapter.controller.addSubchannel(sub);
  }

  async remove(channel: GuestChannel): Promise<void> {
    const adapter = this.adapters.get(channel.relid);
    if (!adapter) {
      // A sub-channel (its primary's adapter handles it) or a channel we never bound.
      const owner = channel.primary ? this.adapters.get(channel.primary.relid) : undefined;
      if (owner) await owner.controller.removeSubchannel(channel);
      else await channel.close();
      return;
    }
    // sd_shutdown: a write-back disk gets SYNCHRONIZE CACHE before it goes (not when the
    // host already took the controller away: nobody would answer).
    if (!channel.rescinded) {
      await adapter.scanning;
      for (const disk of adapter.disks.values()) {
        if (!disk.present || !disk.writeCache) continue;
        const r = await adapter.controller.command(disk, synchronizeCache10, DataIn.None, 0, 0);
        if (!r.good) this.log(`storvsc: ${disk.name}: SYNCHRONIZE CACHE at shutdown failed`);
      }
    }
    this.adapters.delete(channel.relid);
    for (const disk of [...adapter.disks.values()]) this.removeDisk(adapter, disk);
    await adapter.controller.close();
    if (adapter.scanPfn >= 0 && this.context) this.context.allocator.free([adapter.scanPfn]);
    adapter.scanPfn = -1;
  }

  // ---- scanning and hot plug ----

  private serialize(adapter: Adapter, work: () => Promise<void>): Promise<void> {
    const run = adapter.scanning.then(work).catch((e: Error) => this.log(`storvsc: scan failed: ${e.message}`));
    adapter.scanning = run;
    return run;
  }

  private async scan(adapter: Adapter): Promise<void> {
    if (!adapter.scanner || !this.adapters.has(adapter.controller.primary.relid)) return;
    const found = await adapter.scanner.scan(adapter.disks);
    for (const disk of found) {
      if (!this.adapters.has(adapter.controller.primary.relid)) return;
      adapter.disks.set(addressKey(disk.channel, disk.target, disk.lun), disk);
      this.context?.report({
        event: 'disk',
        lun: disk.lun,
        name: disk.name,
        bytes: disk.sizeBytes,
        blockBytes: disk.blockBytes,
        readOnly: disk.readOnly,
        writeCache: disk.writeCache,
        fua: disk.fua,
        discard: disk.discard,
        channels: disk.channels,
      });
      this.emit('disk-added', disk);
    }
  }

  /** storvsc_host_scan: TEST UNIT READY each known disk, then scan for new ones. */
  private hotplug(adapter: Adapter): void {
    // Notices that arrive while a rescan is waiting to start are covered by that rescan.
    if (adapter.rescanQueued) return;
    adapter.rescanQueued = true;
    void this.serialize(adapter, async () => {
      adapter.rescanQueued = false;
      const scanner = adapter.scanner;
      if (!scanner) return;
      for (const disk of [...adapter.disks.values()]) {
        // INVALID_LUN reaches removeDisk through the controller's onInvalidLun.
        if (disk.present) await scanner.testUnitReady(disk);
      }
      await this.scan(adapter);
    });
  }

  private removeDisk(adapter: Adapter, target: ScsiTarget): void {
    const key = addressKey(target.channel, target.target, target.lun);
    const disk = adapter.disks.get(key);
    if (!disk || disk !== target || !disk.present) return;
    disk.present = false;
    adapter.disks.delete(key);
    adapter.controller.failQueued(disk);
    this.context?.report({ event: 'disk-removed', lun: disk.lun, name: disk.name });
    this.emit('disk-removed', disk);
  }

  private async refreshCapacity(adapter: Adapter, target: ScsiTarget): Promise<void> {
    const disk = adapter.disks.get(addressKey(target.channel, target.target, target.lun));
    if (!disk || !adapter.scanner) return;
    await this.serialize(adapter, async () => {
      const before = disk.sizeBytes;
      if ((await adapter.scanner!.refreshCapacity(disk)) && disk.sizeBytes !== before) this.log(`storvsc: ${disk.name}: capacity changed from ${before} to ${disk.sizeBytes} bytes`);
    });
  }
}
