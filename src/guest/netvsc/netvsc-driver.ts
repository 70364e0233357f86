// hv_netvsc for the reference guest: binds network offers (one NIC per offer) and brings
// each up as netvsc_probe does: open the primary channel (512 KiB rings), NVSP handshake
// and buffers (netvsc-handshake.ts), RNDIS bring-up (rndis-filter.ts), packet filter (the
// interface "opens"), then sub-channels and RSS parameters when the host offers > 1 queue.
// NetvscNic holds one NIC and talks to its channels only through NetvscPort/GpadlService,
// so tests can drive it with a scripted host; NetvscDriver adapts GuestChannels to that.
import { EventEmitter } from 'node:events';
import type { GuestMemory } from '../../memory/guest-memory.js';
import { PacketType } from '../../vmbus/packet.js';
import type { PacketView } from '../../vmbus/ring/ring-reader.js';
import { NETVSC_CLASS_ID, NETVSC_RECEIVE_BUFFER_ID, NETVSC_SEND_BUFFER_ID, NvspVersion } from '../../devices/netvsp/nvsp-protocol.js';
import { PacketOffload } from '../../backends/net/net-backend.js';
import type { GuestChannel } from '../guest-channel.js';
import type { PageAllocator } from '../page-allocator.js';
import type { GuestAttachable, GuestContext } from '../reference-guest.js';
import type { VmbusClient } from '../vmbus-client.js';
import type { VmbusDriver } from '../vmbus-driver.js';
import { NetvscDatapath, type FrameHandler, type SegmentHandler } from './netvsc-datapath.js';
import { NvspControl, netvscConnectVsp, releaseBuffer, requestSubchannels, type GpadlService, type NetvscPort, type NvspSession } from './netvsc-handshake.js';
import { NETVSC_DEFAULT_MAX_CHANNELS, RndisFilter, type RndisDeviceInfo } from './rndis-filter.js';

/** Linux's netvsc_ring_bytes: 128 pages per direction. */
export const NETVSC_RING_BYTES = 128 * 4096;

export interface NetvscOptions {
  mtu?: number;
  receiveBufferBytes?: number;
  sendBufferBytes?: number;
  /** Most queues to use (Linux: 8); also capped by the VP count and the host's RSS queues. */
  maxQueues?: number;
  initTimeoutMs?: number;
  maxNvspVersion?: number;
  answerKeepalive?: boolean;
  /**
   * Turn LRO on when the host offers RSC, as `ethtool -K <nic> lro on` does on Linux
   * (default true). Linux lists LRO as on after probe but tells the host "off" in its
   * bring-up; it asks for RSC on its next re-attach or an ethtool change. The reference
   * guest does the bring-up as Linux does, then asks at once.
   */
  lro?: boolean;
  log?: (message: string) => void;
}

export interface NicEvents {
  link: [boolean];
  frame: Parameters<FrameHandler>;
}

/** One synthetic NIC. */
export class NetvscNic extends EventEmitter<NicEvents> {
  session: NvspSession | null = null;
  info: RndisDeviceInfo | null = null;
  datapath: NetvscDatapath | null = null;
  readonly rndis: RndisFilter;
  readonly control: NvspControl;
  linkUp = false;
  /** Queues in use (1 + open sub-channels). */
  queues = 1;
  /** The receiver of frames (the TAP surfacing, a test); default: emit 'frame'. */
  onFrame: FrameHandler = (q, f, o, l, off) => this.emit('frame', q, f, o, l, off);
  /** A receiver of coalesced segments in place (the TAP surfacing); null: they come joined, through onFrame. */
  onSegment: SegmentHandler | null = null;
  /** Called when a send completes (room for a frame send() refused); null: nobody waits. */
  onSendRoom: ((queue: number) => void) | null = null;
  private readonly subchannelWaiters: (() => void)[] = [];
  private wantedQueues = 1;
  private openSubchannels = 0;

  constructor(
    readonly name: string,
    private readonly primary: NetvscPort,
    private readonly gpadl: GpadlService,
    private readonly memory: GuestMemory,
    private readonly allocator: PageAllocator,
    private readonly vpCount: number,
    private readonly options: NetvscOptions = {},
  ) {
    super();
    this.control = new NvspControl(primary, options.initTimeoutMs);
    this.rndis = new RndisFilter({
      send: (m, n) => this.datapath?.sendControl(m, n) ?? false,
      timeoutMs: options.initTimeoutMs,
      answerKeepalive: options.answerKeepalive,
      log: options.log,
      onLinkChange: (up, reason) => this.setLink(reason === 'network-change' ? false : up, reason),
    });
  }

  get mtu(): number {
    return this.info?.mtu ?? this.options.mtu ?? 1500;
  }

  /** Everything that arrives on queue `queue`'s ring goes here (see NetvscDatapath.onPacket). */
  onPacket(queue: number, packet: PacketView, ring: Uint8Array, bytes: Uint8Array, offset: number, length: number): void {
    if (this.datapath) this.datapath.onPacket(queue, packet, ring, bytes, offset, length);
    else if (queue === 0 && packet.type === PacketType.Completion) this.control.onCompletion(bytes.slice(offset, offset + length));
  }

  /** netvsc_probe up to register_netdev + open: NVSP, buffers, RNDIS, packet filter. */
  async start(): Promise<void> {
    const session = await netvscConnectVsp(this.control, {
      memory: this.memory, allocator: this.allocator, gpadl: this.gpadl, mtu: this.options.mtu ?? 1500,
      receiveBufferBytes: this.options.receiveBufferBytes, sendBufferBytes: this.options.sendBufferBytes, maxVersion: this.options.maxNvspVersion, log: this.options.log,
    });
    this.session = session;
    this.datapath = new NetvscDatapath({
      memory: this.memory, allocator: this.allocator, session,
      onFrame: (q, f, o, l, off) => this.onFrame(q, f, o, l, off),
      onSegment: (q, b, g, off) => this.onSegment?.(q, b, g, off) ?? false,
      onSendRoom: (q) => this.onSendRoom?.(q),
      onControl: (b, o, l) => this.rndis.onControl(b, o, l),
      onInitCompletion: (p) => this.control.onCompletion(p),
      log: this.options.log,
    });
    this.datapath.addQueue(0, this.primary);
    this.info = await this.rndis.bringUp(session.version, this.options.mtu ?? 1500);
    this.linkUp = this.info.linkUp;
    await this.rndis.setPacketFilter();
    if (this.info.offloads.lro && (this.options.lro ?? true)) {
      const status = await this.rndis.setLro(true, session.version);
      if (status !== 0) this.options.log?.(`netvsc ${this.name}: the host refused LRO: 0x${status.toString(16)}`);
    }
    this.wantedQueues = Math.max(1, Math.min(this.info.rssQueues, this.vpCount, this.options.maxQueues ?? NETVSC_DEFAULT_MAX_CHANNELS, 64));
  }

  /** netvsc_subchan_work: ask for sub-channels, wait for all to open, then set RSS. Returns the queue count. */
  async startSubchannels(): Promise<number> {
    if (!this.session || this.session.version < NvspVersion.V5 || this.wantedQueues < 2) return this.queues;
    const granted = await requestSubchannels(this.control, this.wantedQueues - 1);
    if (granted > 0) {
      await new Promise<void>((resolve) => {
        if (this.openSubchannels >= granted) resolve();
        else this.subchannelWaiters.push(() => { if (this.openSubchannels >= granted) resolve(); });
      });
      await this.rndis.setRssParameters(1 + granted, this.info?.rssTableEntries || 128);
    }
    this.queues = 1 + granted;
    return this.queues;
  }

  /** A sub-channel was opened (index = sub_channel_index). */
  addQueue(index: number, port: NetvscPort): void {
    this.datapath?.addQueue(index, port);
    this.openSubchannels++;
    for (const w of this.subchannelWaiters.splice(0)) w();
  }

  /** Sends one frame (what the stack would transmit). */
  send(queue: number, frame: Uint8Array, offset: number, length: number, offload: PacketOffload = NO_OFFLOAD): boolean {
    return this.datapath?.sendFrame(queue, frame, offset, length, offload) ?? true;
  }

  private setLink(up: boolean, reason: string): void {
    if (reason === 'network-change') {
      // netvsc_link_change: bounce the link so the stack renews (Linux waits ~2 s).
      this.linkUp = false;
      this.emit('link', false);
      setTimeout(() => { this.linkUp = true; this.emit('link', true); }, 2000).unref();
      return;
    }
    this.linkUp = up;
    this.emit('link', up);
  }

  /** netvsc_revoke_recv_buf / netvsc_revoke_send_buf (no completion), before the channel closes. */
  revokeBuffers(): void {
    if (!this.session) return;
    this.control.post({ kind: 'revoke-receive-buffer', id: NETVSC_RECEIVE_BUFFER_ID });
    this.control.post({ kind: 'revoke-send-buffer', id: NETVSC_SEND_BUFFER_ID });
  }

  /** netvsc_remove after the channels are closed: give back buffers and pages. */
  async release(teardown: boolean): Promise<void> {
    this.rndis.cancelAll('the NIC was removed');
    this.control.cancel('the NIC was removed');
    this.datapath?.close();
    this.datapath = null;
    const s = this.session;
    this.session = null;
    if (s) {
      await releaseBuffer({ allocator: this.allocator, gpadl: this.gpadl }, s.send, teardown);
      await releaseBuffer({ allocator: this.allocator, gpadl: this.gpadl }, s.receive, teardown);
    }
  }
}

const NO_OFFLOAD = new PacketOffload();

/** What the guest reports for each NIC. */
export interface NicReport { event: 'nic'; name: string; mac: string; mtu: number; queues: number }

export interface NetvscDriverOptions extends NetvscOptions {
  /** Called once per NIC brought up (e.g. to surface it as a TAP: NicTap). */
  onNic?: (nic: NetvscNic) => string | undefined;
}

function portOf(channel: GuestChannel): NetvscPort {
  return {
    send: (payload, txid, type, flags, header) => channel.ring?.send(payload, txid, type, flags, header ?? null) ?? false,
  };
}

/** GuestChannel keeps its VmbusClient private; GPADLs for the NIC's buffers need it (see the report). */
function gpadlOf(channel: GuestChannel): GpadlService {
  const client = (channel as unknown as { client: VmbusClient }).client;
  return {
    establish: (pfns, byteCount) => client.establishGpadl(channel, [{ byteCount, byteOffset: 0, pfns: [...pfns] }]),
    teardown: (handle) => client.teardownGpadl(channel, handle),
  };
}

export class NetvscDriver implements VmbusDriver, GuestAttachable {
  readonly name = 'netvsc';
  readonly classId = NETVSC_CLASS_ID;
  private context: GuestContext | null = null;
  private readonly nics = new Map<number, NetvscNic>();
  private nextIndex = 0;

  constructor(private readonly options: NetvscDriverOptions = {}) {}

  attachGuest(context: GuestContext): void {
    this.context = context;
  }

  devices(): NetvscNic[] {
    return [...this.nics.values()];
  }

  async probe(channel: GuestChannel): Promise<void> {
    const context = this.context;
    if (!context) throw new Error('netvsc: the driver was not attached to a guest');
    const nic = new NetvscNic(`eth${this.nextIndex++}`, portOf(channel), gpadlOf(channel), context.memory, context.allocator, context.vpCount, this.options);
    this.nics.set(channel.relid, nic);
    await this.openRing(nic, channel, 0);
    try {
      await nic.start();
    } catch (e) {
      this.nics.delete(channel.relid);
      await channel.close().catch(() => {});
      await nic.release(false);
      throw e;
    }
    // Where the NIC is surfaced (a TAP's name in another namespace) is the name users need.
    const surfacedAs = this.options.onNic?.(nic);
    const report = () => context.report({ event: 'nic', name: surfacedAs ?? nic.name, mac: formatMac(nic.info!.mac), mtu: nic.mtu, queues: nic.queues } as never);
    // Sub-channels come later (a work item in Linux); the NIC is usable on one queue meanwhile.
    void nic.startSubchannels().then(report, (e: Error) => { this.options.log?.(`netvsc: sub-channels: ${e.message}`); report(); });
  }

  async subchannel(primary: GuestChannel, sub: GuestChannel): Promise<void> {
    const nic = this.nics.get(primary.relid);
    if (!nic) return;
    await this.openRing(nic, sub, sub.subChannelIndex);
    nic.addQueue(sub.subChannelIndex, portOf(sub));
  }

  private async openRing(nic: NetvscNic, channel: GuestChannel, queue: number): Promise<void> {
    const vps = Math.max(1, this.context?.vpCount ?? 1);
    await channel.open({
      sendRingBytes: NETVSC_RING_BYTES,
      receiveRingBytes: NETVSC_RING_BYTES,
      maxPacketBytes: 8192,
      targetVp: queue % vps,
      // Receive completions (and sends the frames they carried set off) go out together at the end of each drain.
      batchWhileDraining: true,
      // In place: no view of the header or the payload is made per packet.
      onPacketAt: (packet, bytes, offset, length) => nic.onPacket(queue, packet, channel.ring!.reader.mem.data, bytes, offset, length),
    });
  }

  async remove(channel: GuestChannel): Promise<void> {
    const nic = this.nics.get(channel.relid);
    if (!nic) return channel.close();
    this.nics.delete(channel.relid);
    if (!channel.rescinded) nic.revokeBuffers();
    await channel.close();
    await nic.release(!channel.rescinded);
  }
}

export function formatMac(mac: Uint8Array): string {
  return [...mac].map((b) => b.toString(16).padStart(2, '0')).join(':');
}
