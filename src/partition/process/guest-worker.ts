// Entry point of the reference guest's thread in a process partition: attach to the
// partition's shared memory, build the guest with its drivers, boot it, and answer the
// host's control requests.
import { parentPort, workerData } from 'node:worker_threads';
import { HostileGuest } from '../../guest/hostile.js';
import { ReferenceGuest } from '../../guest/reference-guest.js';
import { createGuestDrivers, GuestDriverSet } from '../../guest/guest-drivers.js';
import type { GuestRequest, GuestToHost, GuestWorkerOptions, HostToGuest } from './guest-control.js';
import { ProcessGuestHypervisor } from './guest-hypervisor.js';
import type { ProcessPartitionShared } from './shared-layout.js';

const { shared, guest: options } = workerData as { shared: ProcessPartitionShared; guest: GuestWorkerOptions };
const port = parentPort!;
const send = (message: GuestToHost) => port.postMessage(message);

const hv = new ProcessGuestHypervisor(shared);
const drivers: GuestDriverSet = createGuestDrivers(options, {
  onShutdown: (kind) => void powerOff(`shutdown integration service: ${kind}`),
  referenceCounter: () => hv.referenceCounter(),
});
const guest = new ReferenceGuest(hv, drivers.all, { maxVersion: options.maxVersion, replyTimeoutMs: options.replyTimeoutMs });
const hostile = new HostileGuest(guest.client);
guest.on('report', (report) => send({ type: 'report', report }));

let stopping = false;
async function powerOff(reason: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  await guest.powerOff(reason);
  await hv.close();
  port.close();
}

function kvp() {
  const instance = drivers.kvp?.instance;
  if (!instance) throw new Error('the KVP channel is not open in the guest');
  return instance;
}

async function handle(request: GuestRequest): Promise<unknown> {
  switch (request.op) {
    case 'boot': return guest.boot();
    case 'halt':
      // Stop waiting for interrupts so the thread can end (a pending wait would hold it).
      setImmediate(() => void hv.close().then(() => port.close()));
      return null;
    case 'unload': return guest.client.unload({ closeChannels: request.closeChannels });
    case 'power-off': return powerOff(request.reason);
    case 'state': return {
      version: guest.client.negotiatedVersion,
      channels: [...guest.client.channels.values()].map((c) => ({ relid: c.relid, class: c.classId, subChannelIndex: c.subChannelIndex, primary: c.primary?.relid ?? null, open: c.isOpen, targetVp: c.targetVp, stats: c.ring?.stats })),
      freePages: guest.allocator.freePages,
      synic: guest.client.synic.stats,
      client: guest.client.stats,
    };
    case 'kvp-set': return kvp().setGuestValue(request.key, request.value);
    case 'kvp-pool': return kvp().entries(request.pool);
    case 'clock': return drivers.clock.now().toString();
    case 'heartbeat': {
      const hb = drivers.heartbeat?.instance;
      return { answered: hb?.answered ?? 0, lastSequence: hb?.lastSequence?.toString() ?? null };
    }
    case 'retarget': {
      const channel = guest.client.channels.get(request.relid);
      if (!channel) throw new Error(`no channel ${request.relid}`);
      return channel.retarget(request.vp);
    }
    case 'hostile': return hostile.run(request.action, request.args);
  }
}

port.on('message', (message: HostToGuest) => {
  handle(message.request).then(
    (result) => send({ type: 'reply', id: message.id, ok: true, result }),
    (error: Error) => send({ type: 'reply', id: message.id, ok: false, error: error.message }),
  );
});
