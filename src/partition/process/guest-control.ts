// The messages between the host and the reference guest's thread that are not part of
// the hypervisor interface: reports (the guest's console) and test/CLI control requests.
import type { GuestReport } from '../../guest/reference-guest.js';
import type { StorvscDriverOptions } from '../../guest/storvsc/storvsc-driver.js';
import type { BenchPattern } from '../../guest/storvsc/disk-bench.js';

export type GuestRequest =
  | { op: 'boot' }
  | { op: 'halt' }
  | { op: 'unload'; closeChannels: boolean }
  | { op: 'power-off'; reason: string }
  | { op: 'state' }
  | { op: 'kvp-set'; key: string; value: string }
  | { op: 'kvp-pool'; pool: number }
  | { op: 'clock' }
  | { op: 'heartbeat' }
  | { op: 'retarget'; relid: number; vp: number }
  | { op: 'hostile'; action: string; args?: Record<string, number> }
  // storvsc disks (results: DiskInfo[], 0 or -errno, DiskReadResult, DiskSense, DiskBenchResult)
  | { op: 'disk-list' }
  | { op: 'disk-write'; lun: number; offset: number; data: Uint8Array; fua?: boolean }
  | { op: 'disk-read'; lun: number; offset: number; length: number }
  | { op: 'disk-flush'; lun: number }
  | { op: 'disk-discard'; lun: number; offset: number; length: number }
  | { op: 'disk-sense'; lun: number }
  | { op: 'disk-bench'; lun: number; pattern: BenchPattern; blockBytes: number; queueDepth: number; seconds: number; rampSeconds?: number; span?: number }
  /** Like writing /sys/block/sdX/device/timeout: the per-command timeout of every adapter from now on. */
  | { op: 'disk-timeout'; ioTimeoutMs: number }
  /** Adapter state: protocol version, limits, channels, counters. */
  | { op: 'storvsc-state' };

/** One entry of 'disk-list'. */
export interface DiskListEntry {
  name: string;
  lun: number;
  sizeBytes: number;
  blockBytes: number;
  readOnly: boolean;
  writeCache: boolean;
  fua: boolean;
  discard: boolean;
  channels: number;
}

export interface DiskReadResult {
  result: number;
  data?: Uint8Array;
}

export interface DiskSense {
  key: number;
  asc: number;
  ascq: number;
}

export type HostToGuest = { id: number; request: GuestRequest };

export type GuestToHost =
  | { type: 'report'; report: GuestReport }
  | { type: 'reply'; id: number; ok: true; result: unknown }
  | { type: 'reply'; id: number; ok: false; error: string };

import type { NetvscOptions } from '../../guest/netvsc/netvsc-driver.js';

export interface GuestWorkerOptions {
  maxVersion?: number;
  replyTimeoutMs?: number;
  drivers?: string[];
  /** Fixed guest identity for the KVP auto pool. */
  hostname?: string;
  /** How far the guest's clock is off at boot, for time sync to correct. */
  clockSkewMs?: number;
  /** storvsc timeouts and queue depth (Linux defaults when absent). */
  storvsc?: StorvscDriverOptions;
  /** Show every disk the guest finds as a file in this (existing, empty) directory, over FUSE. */
  exposeDisks?: string;
  /** netvsc's MTU, buffer sizes and queue count (Linux defaults when absent). */
  netvsc?: NetvscOptions;
  /** Surface every NIC the guest finds as a TAP device in this (existing) network namespace. */
  exposeNics?: string;
}
