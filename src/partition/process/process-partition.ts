// The process partition, host side: guest RAM in a memfd, the host SynIC, and the
// hypervisor transport to the reference guest running in a worker thread (shared memory
// plus eventfds, see shared-layout.ts).
import { Worker } from 'node:worker_threads';
import { GuestMemory } from '../../memory/guest-memory.js';
import { Synic } from '../../hyperv/synic.js';
import { HvStatus } from '../../hyperv/hv-status.js';
import { EventFd } from '../../sys/eventfd.js';
import { Poller } from '../../sys/epoll.js';
import type { Partition, PostMessageHandler } from '../partition.js';
import { HypercallOp, Mailbox, MailboxState, MsrStatus, VECTOR_WORDS_PER_VP, referenceTimeSince, type ProcessPartitionShared } from './shared-layout.js';
import { SignalTable } from './signal-table.js';

export interface ProcessPartitionOptions {
  memoryBytes: number;
  vpCount: number;
  poller: Poller;
  log?: (message: string) => void;
}

export class ProcessPartition implements Partition {
  readonly memory: GuestMemory;
  readonly synic: Synic;
  readonly vpCount: number;
  private readonly mailbox = new SharedArrayBuffer(Mailbox.Bytes);
  private readonly mailboxWords = new Int32Array(this.mailbox);
  private readonly mailboxBytes = new Uint8Array(this.mailbox);
  private readonly doorbell = EventFd.create();
  private readonly interrupts: EventFd[];
  private readonly pendingVectors: Int32Array;
  private readonly signals = new SignalTable();
  private readonly epochNs = process.hrtime.bigint();
  private readonly doorbellToken: number;
  private postHandler: PostMessageHandler | null = null;
  private readonly log: (message: string) => void;
  /** Counters for inspection. */
  readonly stats = { hypercalls: 0, interrupts: 0 };

  constructor(private readonly options: ProcessPartitionOptions) {
    this.vpCount = options.vpCount;
    this.log = options.log ?? (() => {});
    this.memory = GuestMemory.create(options.memoryBytes);
    this.interrupts = Array.from({ length: options.vpCount }, () => EventFd.create());
    this.pendingVectors = new Int32Array(new SharedArrayBuffer(options.vpCount * VECTOR_WORDS_PER_VP * 4));
    this.synic = new Synic({ memory: this.memory, vpCount: options.vpCount, inject: (vp, vector) => this.inject(vp, vector), log: this.log });
    this.doorbellToken = options.poller.add(this.doorbell.fd, () => this.onDoorbell());
  }

  /** What the guest's thread needs to reach this partition. */
  get shared(): ProcessPartitionShared {
    return {
      memoryFd: this.memory.fd,
      memorySize: this.memory.size,
      vpCount: this.vpCount,
      mailbox: this.mailbox,
      doorbellFd: this.doorbell.fd,
      interruptFds: this.interrupts.map((e) => e.fd),
      pendingVectors: this.pendingVectors.buffer as SharedArrayBuffer,
      signalTable: this.signals.buffer,
      epochNs: this.epochNs,
    };
  }

  setPostMessageHandler(handler: PostMessageHandler | null): void {
    this.postHandler = handler;
  }

  registerSignal(connectionId: number, target: EventFd): void {
    this.signals.set(connectionId, target.fd);
  }

  unregisterSignal(connectionId: number): void {
    this.signals.delete(connectionId);
  }

  referenceTime(): bigint {
    return referenceTimeSince(this.epochNs);
  }

  /** Starts a worker whose script runs a guest against this partition. */
  startGuest(script: URL, guestOptions: unknown): Worker {
    return new Worker(script, { workerData: { shared: this.shared, guest: guestOptions } });
  }

  /** Wakes every vCPU's interrupt wait without raising a vector (used to end the guest thread). */
  kickGuest(): void {
    for (const line of this.interrupts) line.signal();
  }

  private inject(vp: number, vector: number): void {
    const word = vp * VECTOR_WORDS_PER_VP + (vector >>> 5);
    Atomics.or(this.pendingVectors, word, 1 << (vector & 31));
    this.stats.interrupts++;
    this.interrupts[vp]!.signal();
  }

  private onDoorbell(): void {
    this.doorbell.drain();
    const w = this.mailboxWords;
    if (Atomics.load(w, Mailbox.State) !== MailboxState.Request) return;
    this.stats.hypercalls++;
    const vp = w[Mailbox.Vp]!;
    const arg = w[Mailbox.Arg]! >>> 0;
    let status = 0;
    let result = 0n;
    switch (w[Mailbox.Op]) {
      case HypercallOp.WriteMsr: {
        const value = (BigInt(w[Mailbox.ValueHi]! >>> 0) << 32n) | BigInt(w[Mailbox.ValueLo]! >>> 0);
        status = this.synic.writeMsr(vp, arg, value) ? MsrStatus.Ok : MsrStatus.GeneralProtection;
        break;
      }
      case HypercallOp.ReadMsr: {
        const value = this.synic.readMsr(vp, arg);
        if (value === undefined) status = MsrStatus.GeneralProtection;
        else result = value;
        break;
      }
      case HypercallOp.PostMessage: {
        const size = w[Mailbox.PayloadSize]! >>> 0;
        const messageType = w[Mailbox.MessageType]! >>> 0;
        // The same checks Hyper-V makes on HvPostMessage input.
        if (size > 240) status = HvStatus.InvalidParameter;
        else if (messageType === 0 || (messageType & 0x80000000) !== 0) status = HvStatus.InvalidParameter;
        else if (!this.postHandler) status = HvStatus.InvalidConnectionId;
        else {
          const payload = this.mailboxBytes.slice(Mailbox.PayloadByteOffset, Mailbox.PayloadByteOffset + size);
          try {
            status = this.postHandler(arg, messageType, payload, vp);
          } catch (e) {
            this.log(`post message handler failed: ${(e as Error).stack ?? e}`);
            status = HvStatus.InsufficientBuffers;
          }
        }
        break;
      }
      case HypercallOp.SignalEvent:
        // The fast path writes the eventfd directly; reaching here means no such connection.
        status = HvStatus.InvalidConnectionId;
        break;
      default:
        status = HvStatus.InvalidHypercallCode;
    }
    w[Mailbox.Status] = status;
    w[Mailbox.ResultLo] = Number(result & 0xffffffffn) | 0;
    w[Mailbox.ResultHi] = Number(result >> 32n) | 0;
    Atomics.store(w, Mailbox.State, MailboxState.Answered);
    Atomics.notify(w, Mailbox.State);
  }

  close(): void {
    this.options.poller.remove(this.doorbellToken);
    // Eventfds the guest may still write stay open until the process ends: closing them
    // could let the guest thread write into an unrelated reused fd number.
  }
}
