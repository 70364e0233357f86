// The reference guest's standard driver set, built by name (what modules a kernel loads).
import type { VmbusDriver } from './vmbus-driver.js';
import type { GuestWorkerOptions } from '../partition/process/guest-control.js';

export interface GuestDriverHooks {
  onShutdown: (kind: string) => void;
  referenceCounter: () => bigint;
}

export interface GuestDriverSet {
  all: VmbusDriver[];
  kvp: { setGuestValue(key: string, value: string): unknown; poolEntries(pool: number): unknown } | null;
  clock: { now(): bigint };
  heartbeatReplies(): number;
}

export function createGuestDrivers(_options: GuestWorkerOptions, _hooks: GuestDriverHooks): GuestDriverSet {
  return { all: [], kvp: null, clock: { now: () => 0n }, heartbeatReplies: () => 0 };
}
