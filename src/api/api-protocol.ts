// The control API of a running VM: one JSON object per line over a unix socket, one
// reply per request. Stable: later issues add operations, never change these.
import os from 'node:os';
import path from 'node:path';

export type ApiRequest =
  | { op: 'shutdown'; kind?: 'shutdown' | 'restart' }
  | { op: 'inspect' }
  | { op: 'status' }
  /** Hot-add a disk: spec as for --disk (PATH[,readonly][,format=raw|vhdx]). */
  | { op: 'disk-add'; spec: string }
  /** Hot-remove the disk at a LUN. */
  | { op: 'disk-remove'; lun: number }
  | { op: 'disk-list' }
  /** Link up/down as the guest sees it, for one NIC (index) or all. */
  | { op: 'link'; up: boolean; nic?: number }
  | { op: 'nic-list' };

export type ApiReply = { ok: true; result: unknown } | { ok: false; error: string };

export interface ChannelStatus {
  relid: number;
  name: string;
  class: string;
  state: string;
  targetVp: number;
  /** Fraction of each ring in use, 0..1; null while closed. */
  incomingFill: number | null;
  outgoingFill: number | null;
  packetsIn: number;
  packetsOut: number;
  signalsIn: number;
  signalsOut: number;
}

export interface VmStatus {
  backend: string;
  vmbusVersion: string | null;
  cpus: number;
  memoryBytes: number;
  uptimeMs: number;
  channels: ChannelStatus[];
}

/** Where a VM called `name` listens, unless --api-socket says otherwise. */
export function defaultSocketPath(name: string): string {
  const base = process.env.XDG_RUNTIME_DIR || path.join(os.tmpdir(), `enlighten-${process.getuid?.() ?? 0}`);
  return path.join(base, 'enlighten', `${name}.sock`);
}
