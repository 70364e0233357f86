// One offered channel in the server: its offer, its state as the guest drives it, and,
// while open, its mapped rings.
import type { PageMapping } from '../../memory/guest-memory.js';
import type { EventFd } from '../../sys/eventfd.js';
import type { OpenChannel, VmbusDevice } from './vmbus-device.js';

export type ChannelState = 'offered' | 'opening' | 'open' | 'rescinded';

export interface ServerChannel {
  readonly relid: number;
  readonly connectionId: number;
  readonly device: VmbusDevice;
  readonly subChannelIndex: number;
  state: ChannelState;
  /** Offer sent to the current connection. */
  offered: boolean;
  open: OpenChannel | null;
  mappings: PageMapping[];
  signal: EventFd | null;
  targetVp: number;
  /** The open counters, for inspect. */
  opens: number;
}
