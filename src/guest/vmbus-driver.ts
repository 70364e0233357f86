// The reference guest's driver model: a driver claims offers by class GUID, like a Linux
// hv_driver's id_table, and is probed once per offered channel.
import type { GuestChannel } from './guest-channel.js';

export interface VmbusDriver {
  /** Device name reported in events: heartbeat, shutdown, timesync, kvp, scsi, network ... */
  readonly name: string;
  readonly classId: string;
  probe(channel: GuestChannel): Promise<void>;
  /** Undo probe: close the channel. Called on unload, rescind and guest shutdown. */
  remove(channel: GuestChannel): Promise<void>;
  /** A sub-channel of a bound primary was offered (multi-queue drivers open it here). */
  subchannel?(primary: GuestChannel, sub: GuestChannel): Promise<void>;
}
