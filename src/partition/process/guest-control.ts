// The messages between the host and the reference guest's thread that are not part of
// the hypervisor interface: reports (the guest's console) and test/CLI control requests.
import type { GuestReport } from '../../guest/reference-guest.js';

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
  | { op: 'hostile'; action: string; args?: Record<string, number> };

export type HostToGuest = { id: number; request: GuestRequest };

export type GuestToHost =
  | { type: 'report'; report: GuestReport }
  | { type: 'reply'; id: number; ok: true; result: unknown }
  | { type: 'reply'; id: number; ok: false; error: string };

export interface GuestWorkerOptions {
  maxVersion?: number;
  replyTimeoutMs?: number;
  drivers?: string[];
  /** Fixed guest identity for the KVP auto pool. */
  hostname?: string;
  /** How far the guest's clock is off at boot, for time sync to correct. */
  clockSkewMs?: number;
}
