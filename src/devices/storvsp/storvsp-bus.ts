// The SCSI bus behind one StorVSP controller: disks are path 0, target 0, LUN n; every
// other (path, target) is an empty target that still answers INQUIRY (PQ 3) and REPORT
// LUNS (empty), so the guest's scan finds nothing there instead of phantom disks. Each
// disk counts its commands in flight, so a hot-remove can hand the backend back only
// once nothing uses it any more.
import type { BlockBackend, DiskInfo } from '../../backends/block/block-backend.js';
import type { ScsiCommand, ScsiLogicalUnit } from '../scsi/scsi-command.js';
import type { InflightTracker, StorvspRequest } from './storvsp-request.js';
import { MAX_LUN } from './storvsp-srb.js';

/** The LUN map of one target (ScsiTargetLuns from src/devices/scsi/scsi-lun-map.ts). */
export interface LunMap {
  set(lun: number, unit: ScsiLogicalUnit): void;
  delete(lun: number): void;
  /** Routes to the unit, or answers REPORT LUNS / INQUIRY for an absent LUN; false when nobody answered. */
  execute(lun: number, command: ScsiCommand): boolean;
}

/** A disk on the bus and its commands in flight. */
export class BusDisk implements InflightTracker {
  inflight = 0;
  private drained: (() => void) | null = null;

  constructor(readonly lun: number, readonly backend: BlockBackend, readonly unit: ScsiLogicalUnit) {}

  get info(): DiskInfo {
    return this.backend.info;
  }

  requestDone(): void {
    this.inflight--;
    if (this.inflight === 0 && this.drained !== null) {
      const resolve = this.drained;
      this.drained = null;
      resolve();
    }
  }

  /** Resolves once every command handed to this disk has completed. */
  idle(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => {
      this.drained = resolve;
    });
  }
}

export class StorvspBus {
  /** Indexed by LUN: one array read per command. */
  private readonly disksByLun: (BusDisk | undefined)[] = new Array<BusDisk | undefined>(MAX_LUN + 1).fill(undefined);
  private readonly target0: LunMap;
  /** Shared by every other (path, target): nothing is ever added to it. */
  private readonly emptyTarget: LunMap;

  constructor(createLunMap: () => LunMap) {
    this.target0 = createLunMap();
    this.emptyTarget = createLunMap();
  }

  has(lun: number): boolean {
    return this.disksByLun[lun] !== undefined;
  }

  add(lun: number, backend: BlockBackend, unit: ScsiLogicalUnit): BusDisk {
    const disk = new BusDisk(lun, backend, unit);
    this.disksByLun[lun] = disk;
    this.target0.set(lun, unit);
    return disk;
  }

  /** Takes the disk off the bus: later commands to the LUN see it absent. */
  remove(lun: number): BusDisk | undefined {
    const disk = this.disksByLun[lun];
    if (disk === undefined) return undefined;
    this.disksByLun[lun] = undefined;
    this.target0.delete(lun);
    return disk;
  }

  disks(): BusDisk[] {
    return this.disksByLun.filter((d): d is BusDisk => d !== undefined);
  }

  /** Routes a validated command (address already range-checked). */
  execute(request: StorvspRequest): boolean {
    if (request.pathId !== 0 || request.targetId !== 0) return this.emptyTarget.execute(request.lun, request);
    const disk = this.disksByLun[request.lun];
    if (disk !== undefined) {
      disk.inflight++;
      request.tracker = disk;
    }
    return this.target0.execute(request.lun, request);
  }
}
