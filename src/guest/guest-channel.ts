// One offered channel in the reference guest, opened the way Linux's vmbus_open does it:
// allocate the two rings, describe them in a GPADL, initialise both headers, OPENCHANNEL,
// then talk through the rings and HvSignalEvent.
import type { OfferChannelMessage } from '../vmbus/channel-messages.js';
import { initRingHeader, ringMemoryFromBuffer } from '../vmbus/ring/ring-memory.js';
import { RingChannel, type PacketAtHandler, type PacketHandler } from '../vmbus/ring-channel.js';
import type { PageMapping } from '../memory/guest-memory.js';
import { PAGE_SIZE } from '../memory/page.js';
import type { VmbusClient } from './vmbus-client.js';

export interface OpenOptions {
  /** Bytes of the guest-to-host ring including its header page (a multiple of 4096). */
  sendRingBytes: number;
  /** Bytes of the host-to-guest ring including its header page. */
  receiveRingBytes: number;
  /** Largest packet the driver accepts (Linux's max_pkt_size). */
  maxPacketBytes?: number;
  userData?: Uint8Array;
  targetVp?: number;
  /** See RingChannelOptions: one of onPacket and onPacketAt. */
  onPacket?: PacketHandler;
  onPacketAt?: PacketAtHandler;
  /** See RingChannelOptions.batchWhileDraining. */
  batchWhileDraining?: boolean;
}

export class GuestChannel {
  readonly relid: number;
  readonly classId: string;
  readonly instanceId: string;
  readonly connectionId: number;
  readonly subChannelIndex: number;
  readonly dedicatedInterrupt: boolean;
  rescinded = false;
  /** For a sub-channel, its primary channel. */
  primary: GuestChannel | null = null;
  targetVp = 0;
  ring: RingChannel | null = null;
  ringGpadl = 0;
  private ringPages: { first: number; count: number } | null = null;
  private mappings: PageMapping[] = [];

  constructor(private readonly client: VmbusClient, offer: OfferChannelMessage) {
    this.relid = offer.childRelid;
    this.classId = offer.interfaceId;
    this.instanceId = offer.instanceId;
    this.connectionId = offer.connectionId;
    this.subChannelIndex = offer.subChannelIndex;
    this.dedicatedInterrupt = offer.dedicatedInterrupt;
  }

  get isOpen(): boolean {
    return this.ring !== null;
  }

  async open(options: OpenOptions): Promise<void> {
    if (this.ring) throw new Error(`relid ${this.relid} is already open`);
    const { sendRingBytes, receiveRingBytes } = options;
    if (sendRingBytes % PAGE_SIZE || receiveRingBytes % PAGE_SIZE || sendRingBytes < 2 * PAGE_SIZE || receiveRingBytes < 2 * PAGE_SIZE) {
      throw new RangeError('ring sizes must be whole pages with at least one data page each');
    }
    const client = this.client;
    const sendPages = sendRingBytes / PAGE_SIZE;
    const count = sendPages + receiveRingBytes / PAGE_SIZE;
    const first = client.allocator.allocContiguous(count);
    const pfns = Array.from({ length: count }, (_, i) => first + i);
    const memory = client.memory;
    memory.bytes.fill(0, first * PAGE_SIZE, (first + count) * PAGE_SIZE);
    // The guest maps each ring twice in a row so packets never straddle the seam (vmap in Linux).
    const sendMap = memory.mapPages(pfns.slice(0, sendPages), 1);
    const receiveMap = memory.mapPages(pfns.slice(sendPages), 1);
    const outgoing = ringMemoryFromBuffer(sendMap.buffer, 0, sendRingBytes, true);
    const incoming = ringMemoryFromBuffer(receiveMap.buffer, 0, receiveRingBytes, true);
    initRingHeader(outgoing);
    initRingHeader(incoming);
    let gpadl = 0;
    try {
      gpadl = await client.establishGpadl(this, [{ byteCount: count * PAGE_SIZE, byteOffset: 0, pfns }]);
      this.targetVp = options.targetVp ?? 0;
      this.ring = new RingChannel({
        incoming,
        outgoing,
        maxPacketBytes: options.maxPacketBytes ?? 4096,
        notifyPeer: () => client.signalHost(this),
        onPacket: options.onPacket,
        onPacketAt: options.onPacketAt,
        batchWhileDraining: options.batchWhileDraining,
        onCorrupt: (error) => client.log(`relid ${this.relid}: host broke the ring protocol: ${error.message}`),
      });
      await client.openChannel(this, gpadl, sendPages, options.userData ?? new Uint8Array(120));
    } catch (e) {
      this.ring = null;
      if (gpadl && !this.rescinded) await client.teardownGpadl(this, gpadl).catch(() => {});
      sendMap.release();
      receiveMap.release();
      client.allocator.freeRun(first, count);
      throw e;
    }
    this.ringGpadl = gpadl;
    this.ringPages = { first, count };
    this.mappings = [sendMap, receiveMap];
  }

  /** vmbus_close: CLOSECHANNEL, then (unless rescinded) tear the ring GPADL down. */
  async close(): Promise<void> {
    const ring = this.ring;
    if (!ring) return;
    ring.shutdown();
    this.ring = null;
    this.client.post({ kind: 'close-channel', childRelid: this.relid });
    if (!this.rescinded) await this.client.teardownGpadl(this, this.ringGpadl);
    this.forgetRings();
  }

  /** After UNLOAD without closing (kexec, crash): the host dropped everything; free our side. */
  abandon(): void {
    this.ring?.shutdown();
    this.ring = null;
    this.forgetRings();
  }

  private forgetRings(): void {
    for (const m of this.mappings) m.release();
    this.mappings = [];
    if (this.ringPages) this.client.allocator.freeRun(this.ringPages.first, this.ringPages.count);
    this.ringPages = null;
    this.ringGpadl = 0;
  }

  send(payload: Uint8Array, transactionId: bigint, type?: number, flags?: number): boolean {
    if (!this.ring) return false;
    return this.ring.send(payload, transactionId, type, flags);
  }

  /** MODIFYCHANNEL: move this channel's interrupts to another VP. */
  async retarget(vp: number): Promise<number> {
    const status = await this.client.modifyChannel(this, vp);
    if (status === 0) this.targetVp = vp;
    return status;
  }
}
