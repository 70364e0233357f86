// The contract between the VMBus server and a device (a VSP): the server offers the
// device's channel, maps its rings when the guest opens it, and hands the device an
// OpenChannel; the device serves the rings until close.
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { EventFd } from '../../sys/eventfd.js';
import type { RingMemory } from '../ring/ring-memory.js';
import type { GpaRange } from '../../memory/gpa-range.js';

export interface DeviceOffer {
  channelFlags?: number;
  mmioMegabytes?: number;
  /** 120 bytes of user-defined offer data (pipe parameters, hv_sock ids). */
  userDefined?: Uint8Array;
}

export interface OpenChannel {
  readonly relid: number;
  readonly subChannelIndex: number;
  readonly connectionId: number;
  readonly openId: number;
  /** 120 bytes the guest passed in OPENCHANNEL. */
  readonly userData: Uint8Array;
  /** Guest-to-host ring (the device reads it). */
  readonly incoming: RingMemory;
  /** Host-to-guest ring (the device writes it). */
  readonly outgoing: RingMemory;
  /** Readable whenever the guest signalled this channel; the device drains it. */
  readonly guestSignal: EventFd;
  readonly memory: GuestMemory;
  /** The VP the guest wants interrupts on (changes with MODIFYCHANNEL). */
  readonly targetVp: number;
  /** Sets this channel's event flag on the target VP and interrupts it. */
  signalGuest(): void;
  /** Tell the server the device found the channel unusable (corrupt ring): it stops serving it. */
  fail(reason: string): void;
  /**
   * The page ranges of a GPADL the guest created for this channel (complete, not torn
   * down), e.g. netvsc's receive and send buffers; null for any other id. The pages are
   * checked to be inside guest RAM; map them with memory.mapPages.
   */
  gpadl(id: number): readonly GpaRange[] | null;
}

export interface VmbusDevice {
  /** Short name used in events and the CLI: heartbeat, shutdown, timesync, kvp, scsi, ... */
  readonly name: string;
  readonly classId: string;
  readonly instanceId: string;
  readonly offer?: DeviceOffer;
  /** The guest opened the channel. Returns the OPENCHANNEL_RESULT status (0 = success). */
  open(channel: OpenChannel): number | Promise<number>;
  /** The channel closed (guest close, rescind, unload, failure). Stop touching its rings. */
  close(channel: OpenChannel): void;
  /**
   * Packet and signal counters, for inspect: of the open sub-channel `subChannelIndex`,
   * or summed over every open channel of the device when it is left out.
   */
  counters?(subChannelIndex?: number): ChannelCounters | null;
}

export interface ChannelCounters {
  packetsIn: number;
  packetsOut: number;
  signalsIn: number;
  signalsOut: number;
}
