// What the VMBus server needs from a guest, whatever runs it: guest memory, the host side
// of the SynIC (message slots and event flags, see Synic), the messages the guest posts,
// and the signals it raises. The KVM partition and the process partition implement it.
import type { GuestMemory } from '../memory/guest-memory.js';
import type { Synic } from '../hyperv/synic.js';
import type { HvStatus } from '../hyperv/hv-status.js';
import type { EventFd } from '../sys/eventfd.js';

/** HvPostMessage from the guest. Returns the hypercall status the guest sees. */
export type PostMessageHandler = (connectionId: number, messageType: number, payload: Uint8Array, vp: number) => HvStatus | number;

export interface Partition {
  readonly memory: GuestMemory;
  readonly synic: Synic;
  readonly vpCount: number;
  /** The server installs its handler here; until then posts fail with InvalidConnectionId. */
  setPostMessageHandler(handler: PostMessageHandler | null): void;
  /**
   * Routes the guest's HvSignalEvent(connectionId) to `target` without involving the
   * host's event loop (ioeventfd on KVM, a direct eventfd write in the process partition).
   * The eventfd must stay open until after unregisterSignal returns.
   */
  registerSignal(connectionId: number, target: EventFd): void;
  unregisterSignal(connectionId: number): void;
  /** The partition reference counter (100 ns units), the clock the guest reads too. */
  referenceTime(): bigint;
}
