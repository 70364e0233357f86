// NetVSP: the host side of a Hyper-V synthetic NIC (Linux hv_netvsc binds to it). One
// VMBus device with a primary channel and, when the guest asks for vRSS, up to
// maxQueues - 1 sub-channels. The NIC state they share (buffers, RNDIS, RSS, link) is a
// NetvspNic; each channel serves its rings on the Poller's thread (NetvspChannel). Frames
// travel to and from a NetBackend (TAP, switch).
import type { NetBackend } from '../../backends/net/net-backend.js';
import type { Poller } from '../../sys/epoll.js';
import type { ChannelCounters, OpenChannel, VmbusDevice } from '../../vmbus/server/vmbus-device.js';
import { NetvspChannel, type NetvspChannelCounters } from './netvsp-channel.js';
import { NetvspNic, type NicCounters } from './netvsp-nic.js';
import { NETVSC_CLASS_ID } from './nvsp-protocol.js';

/** Linux's default channel cap (VRSS_CHANNEL_DEFAULT is 8; VRSS_CHANNEL_MAX 64). */
export const NETVSP_MAX_QUEUES_LIMIT = 64;
export const NETVSP_DEFAULT_MTU = 1500;
/** Largest MTU offered (Hyper-V's jumbo limit). */
export const NETVSP_MAX_MTU = 9000;

export interface NetvspOptions {
  poller: Poller;
  backend: NetBackend;
  /** The guest's MAC (6 bytes). */
  mac: Uint8Array;
  /** IP MTU the NIC offers (68..9000, default 1500); sizes the receive sub-allocations. */
  mtu?: number;
  /** Receive queues = channels (default 1: no vRSS); pass the vCPU count for one per CPU. */
  maxQueues?: number;
  /** Advertise TX/RX checksum and LSO offload (default true); the backend must honour PacketOffload. */
  offload?: boolean;
  /** Offers sub-channel `index` (1..granted) of this device unless it exists; wired by the VM to the VMBus server (as StorVSP's). */
  offerSubchannel: (device: NetvspDevice, index: number) => void;
  /** Default: a fixed GUID per NIC index. */
  instanceId?: string;
  /** Picks the default instance GUID (0 for the first NIC). */
  index?: number;
  /** Same as index (the name the VM wiring uses). */
  instance?: number;
  log?: (message: string) => void;
}

/** The default instance GUID of NIC `index`. */
export function defaultNetvspInstanceId(index: number): string {
  return `7a3c91d4-52e8-4b1f-9d06-${index.toString(16).padStart(12, '0')}`;
}

export interface NetvspStats {
  channels: NetvspChannelCounters[];
  nic: NicCounters;
  receiveBufferFree: number;
  receivePaused: boolean;
  linkUp: boolean;
  nvspVersion: number;
  subchannelsGranted: number;
}

export class NetvspDevice implements VmbusDevice {
  readonly name = 'network' as const;
  readonly classId = NETVSC_CLASS_ID;
  readonly instanceId: string;
  /** The NIC state (exposed for inspect and tests). */
  readonly nic: NetvspNic;
  private readonly channels = new Map<number, NetvspChannel>();
  private readonly log: (message: string) => void;
  private closed = false;

  constructor(private readonly options: NetvspOptions) {
    const mac = options.mac;
    if (!(mac instanceof Uint8Array) || mac.length !== 6) throw new RangeError('mac must be 6 bytes');
    const mtu = options.mtu ?? NETVSP_DEFAULT_MTU;
    if (!Number.isInteger(mtu) || mtu < 68 || mtu > NETVSP_MAX_MTU) throw new RangeError(`mtu ${mtu} must be 68..${NETVSP_MAX_MTU}`);
    const maxQueues = options.maxQueues ?? 1;
    if (!Number.isInteger(maxQueues) || maxQueues < 1 || maxQueues > NETVSP_MAX_QUEUES_LIMIT) {
      throw new RangeError(`maxQueues ${maxQueues} must be 1..${NETVSP_MAX_QUEUES_LIMIT}`);
    }
    const index = options.index ?? options.instance ?? 0;
    this.instanceId = options.instanceId ?? defaultNetvspInstanceId(index);
    this.log = options.log ?? (() => {});
    this.nic = new NetvspNic({
      backend: options.backend,
      mac: Uint8Array.from(mac),
      mtu,
      maxQueues,
      offload: options.offload ?? true,
      offerSubchannel: (i) => options.offerSubchannel(this, i),
      log: this.log,
    });
  }

  // ---- VmbusDevice ----

  open(channel: OpenChannel): number {
    if (this.closed) return 1;
    const index = channel.subChannelIndex;
    // Sub-channels exist only once granted; a stray open is refused.
    if (index !== 0 && (index > this.nic.subchannelsGranted || this.channels.get(0)?.isOpen !== true)) {
      this.log(`netvsp: sub-channel ${index} opened without a grant`);
      return 1;
    }
    let served = this.channels.get(index);
    if (served === undefined) {
      served = new NetvspChannel({ subChannelIndex: index, poller: this.options.poller, nic: this.nic, log: this.log });
      this.channels.set(index, served);
    }
    if (served.isOpen) {
      this.log(`netvsp: channel ${index} opened twice`);
      return 1;
    }
    try {
      served.attach(channel);
    } catch (e) {
      this.log(`netvsp: channel ${index} cannot be served: ${(e as Error).message}`);
      return 1;
    }
    this.nic.queues[index] = served;
    return 0;
  }

  /**
   * With a channel (VmbusDevice): that channel closed. Without one: the device is done -
   * every channel stops being served and the guest buffers are dropped; the backend stays
   * the caller's to close.
   */
  close(channel?: OpenChannel): void {
    if (channel === undefined) {
      this.shutdown();
      return;
    }
    const index = channel.subChannelIndex;
    const served = this.channels.get(index);
    if (served === undefined || served.openChannel !== channel) return;
    served.detach();
    // A closed primary ends the session: the guest renegotiates everything on reopen.
    if (index === 0) this.nic.resetSession();
  }

  counters(subChannelIndex?: number): ChannelCounters | null {
    let any = false;
    const sum = { packetsIn: 0, packetsOut: 0, signalsIn: 0, signalsOut: 0 };
    for (const c of this.channels.values()) {
      if (!c.isOpen || (subChannelIndex !== undefined && c.subChannelIndex !== subChannelIndex)) continue;
      any = true;
      sum.packetsIn += c.stats.packetsIn;
      sum.packetsOut += c.stats.packetsOut;
      sum.signalsIn += c.stats.signalsIn;
      sum.signalsOut += c.stats.signalsOut;
    }
    return any ? sum : null;
  }

  // ---- host controls ----

  /** Host link state: the guest gets MEDIA_CONNECT / MEDIA_DISCONNECT once RNDIS is up. */
  setLinkUp(up: boolean): void {
    this.nic.setLinkUp(up, (message, length) => this.channels.get(0)?.queueControl(message, length));
  }

  get linkUp(): boolean {
    return this.nic.linkUp;
  }

  /** Counters per channel that was ever opened (sub-channel order), plus NIC-wide ones. */
  stats(): NetvspStats {
    const nic = this.nic;
    return {
      channels: [...this.channels.values()].sort((a, b) => a.subChannelIndex - b.subChannelIndex).map((c) => ({ ...c.stats })),
      nic: { ...nic.counters },
      receiveBufferFree: nic.receiveBufferFree,
      receivePaused: nic.receivePaused,
      linkUp: nic.linkUp,
      nvspVersion: nic.nvspVersion,
      subchannelsGranted: nic.subchannelsGranted,
    };
  }

  private shutdown(): void {
    if (this.closed) return;
    this.closed = true;
    for (const c of this.channels.values()) c.detach();
    this.nic.resetSession();
  }
}
