// What the reference guest sees of the hypervisor: the instructions and hypercalls the
// Linux Hyper-V drivers use (rdmsr/wrmsr on SynIC MSRs, HvPostMessage, HvSignalEvent)
// and interrupt delivery.
import type { GuestMemory } from '../memory/guest-memory.js';

export class GeneralProtectionFault extends Error {
  constructor(what: string) {
    super(`#GP: ${what}`);
    this.name = 'GeneralProtectionFault';
  }
}

export interface GuestHypervisor {
  readonly vpCount: number;
  /** The guest's own mapping of its RAM. */
  readonly memory: GuestMemory;
  /** Throws GeneralProtectionFault when the hypervisor refuses the access. */
  wrmsr(vp: number, msr: number, value: bigint): void;
  rdmsr(vp: number, msr: number): bigint;
  /** HvPostMessage; returns the HV status. */
  postMessage(vp: number, connectionId: number, messageType: number, payload: Uint8Array): number;
  /** HvSignalEvent (fast hypercall); returns the HV status. */
  signalEvent(connectionId: number): number;
  /** Interrupt delivery: handler(vp, vector). */
  setInterruptHandler(handler: (vp: number, vector: number) => void): void;
  /** The partition reference counter, 100 ns units. */
  referenceCounter(): bigint;
  close(): Promise<void>;
}
