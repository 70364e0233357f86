// A VM's disks: opens each image with the right backend (raw, VHDX, memory), puts it on
// the synthetic SCSI controller as the next free LUN, and takes it off again (hot-remove)
// with the image closed and unlocked.
import fs from 'node:fs';
import { MemoryDisk } from '../backends/block/memory-disk.js';
import { openRawDisk } from '../backends/block/raw-disk.js';
import { openVhdxDisk } from '../backends/block/vhdx/vhdx-disk.js';
import { UringFileIo } from '../backends/block/file-io.js';
import type { BlockBackend } from '../backends/block/block-backend.js';
import { StorvspDevice } from '../devices/storvsp/storvsp-device.js';
import type { Poller } from '../sys/epoll.js';
import type { VmbusServer } from '../vmbus/server/vmbus-server.js';
import { parseSize } from '../cli/sizes.js';
import { DiskSpecError, type DiskFormat, type DiskSpec } from './disk-spec.js';

/** LUNs Linux scans on one target (max_lun is 255 for the SCSI controller class). */
const MAX_LUNS = 64;
const VHDX_SIGNATURE = 'vhdxfile';
const MEMORY_PREFIX = 'memory:';

export interface AttachedDisk {
  lun: number;
  path: string;
  format: DiskFormat | 'memory';
  readOnly: boolean;
  sizeBytes: number;
}

export interface VmStorageOptions {
  poller: Poller;
  server: VmbusServer;
  cpus: number;
  log?: (message: string) => void;
}

export class VmStorage {
  readonly controller: StorvspDevice;
  private readonly attached = new Map<number, { disk: AttachedDisk; backend: BlockBackend }>();
  private fileIo: UringFileIo | null = null;

  constructor(private readonly options: VmStorageOptions) {
    this.controller = new StorvspDevice({
      poller: options.poller,
      offerSubchannel: (device, index) => {
        if (!options.server.hasSubchannel(device, index)) options.server.addSubchannel(device, index);
      },
      maxSubchannels: Math.max(0, options.cpus - 1),
      log: options.log,
    });
  }

  /** Opens the image and adds it as the lowest free LUN; returns the LUN. */
  async attach(spec: DiskSpec): Promise<AttachedDisk> {
    this.freeLun(); // fail before opening (and locking) the image
    const { backend, format } = await this.open(spec);
    return this.attachBackend(backend, spec.path, format);
  }

  /** Adds an open backend (also one the caller built: fault injection, custom stores) as the lowest free LUN. */
  attachBackend(backend: BlockBackend, description: string, format: AttachedDisk['format'] = 'memory'): AttachedDisk {
    const lun = this.freeLun();
    const disk: AttachedDisk = { lun, path: description, format, readOnly: backend.info.readOnly, sizeBytes: backend.info.sizeBytes };
    this.attached.set(lun, { disk, backend });
    this.controller.addDisk(lun, backend);
    return disk;
  }

  /** Hot-removes a LUN: the guest is told, then the image is flushed, closed and unlocked. */
  async detach(lun: number): Promise<AttachedDisk> {
    const entry = this.attached.get(lun);
    if (!entry) throw new DiskSpecError(`no disk at LUN ${lun}`);
    this.attached.delete(lun);
    await this.controller.removeDisk(lun);
    await entry.backend.close();
    return entry.disk;
  }

  list(): AttachedDisk[] {
    return [...this.attached.values()].map((e) => e.disk).sort((a, b) => a.lun - b.lun);
  }

  /** Closes every image (after the guest stopped): flushes and unlocks them. */
  async close(): Promise<void> {
    const entries = [...this.attached.values()];
    this.attached.clear();
    const results = await Promise.allSettled(entries.map((e) => e.backend.close()));
    this.fileIo?.close();
    this.fileIo = null;
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason as Error;
  }

  private freeLun(): number {
    for (let lun = 0; lun < MAX_LUNS; lun++) if (!this.attached.has(lun)) return lun;
    throw new DiskSpecError(`all ${MAX_LUNS} LUNs are in use`);
  }

  private async open(spec: DiskSpec): Promise<{ backend: BlockBackend; format: AttachedDisk['format'] }> {
    if (spec.path.startsWith(MEMORY_PREFIX)) {
      let sizeBytes: number;
      try {
        sizeBytes = parseSize(spec.path.slice(MEMORY_PREFIX.length));
      } catch (e) {
        throw new DiskSpecError(`disk '${spec.path}': ${(e as Error).message}`);
      }
      return { backend: new MemoryDisk({ sizeBytes, readOnly: spec.readOnly }), format: 'memory' };
    }
    const format = spec.format ?? detectFormat(spec.path);
    if (format === 'vhdx') {
      this.fileIo ??= new UringFileIo(this.options.poller);
      return { backend: await openVhdxDisk(spec.path, { readOnly: spec.readOnly, fileIo: this.fileIo }), format };
    }
    return { backend: await openRawDisk(spec.path, { readOnly: spec.readOnly, poller: this.options.poller }), format };
  }
}

/** VHDX files start with the signature "vhdxfile"; anything else is taken as raw. */
function detectFormat(path: string): DiskFormat {
  let fd: number;
  try {
    fd = fs.openSync(path, 'r');
  } catch (e) {
    throw new DiskSpecError(`cannot open disk image '${path}': ${(e as Error).message}`);
  }
  try {
    const head = Buffer.alloc(VHDX_SIGNATURE.length);
    const n = fs.readSync(fd, head, 0, head.length, 0);
    return n === head.length && head.toString('latin1') === VHDX_SIGNATURE ? 'vhdx' : 'raw';
  } finally {
    fs.closeSync(fd);
  }
}
