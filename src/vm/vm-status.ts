// A snapshot of a running VM for `enlighten inspect` and the API: each channel's state,
// ring fill and counters.
import type { ChannelStatus, VmStatus } from '../api/api-protocol.js';
import type { VmbusServer } from '../vmbus/server/vmbus-server.js';

const startedAt = Date.now();

export function vmStatus(server: VmbusServer, backend: string, cpus: number, memoryBytes: number): VmStatus {
  const channels: ChannelStatus[] = server.channelStatus().map((c) => ({
    relid: c.relid,
    name: c.name,
    class: c.classId,
    state: c.state,
    targetVp: c.targetVp,
    incomingFill: c.incomingFill,
    outgoingFill: c.outgoingFill,
    packetsIn: c.counters?.packetsIn ?? 0,
    packetsOut: c.counters?.packetsOut ?? 0,
    signalsIn: c.counters?.signalsIn ?? 0,
    signalsOut: c.counters?.signalsOut ?? 0,
  }));
  return { backend, vmbusVersion: server.negotiatedVersion, cpus, memoryBytes, uptimeMs: Date.now() - startedAt, channels };
}
