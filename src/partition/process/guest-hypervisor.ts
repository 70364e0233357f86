// The process partition, guest side: how the reference guest's thread issues MSR accesses
// and hypercalls (a synchronous shared-memory mailbox plus a doorbell eventfd), signals
// channels (a direct eventfd write: no host thread involved) and takes interrupts.
import { GuestMemory } from '../../memory/guest-memory.js';
import { HvStatus } from '../../hyperv/hv-status.js';
import { EventFd } from '../../sys/eventfd.js';
import { Poller } from '../../sys/epoll.js';
import { GeneralProtectionFault, type GuestHypervisor } from '../../guest/hypervisor.js';
import { HypercallOp, Mailbox, MailboxState, MsrStatus, VECTOR_WORDS_PER_VP, referenceTimeSince, type ProcessPartitionShared } from './shared-layout.js';
import { SignalTable } from './signal-table.js';

export class ProcessGuestHypervisor implements GuestHypervisor {
  readonly vpCount: number;
  readonly memory: GuestMemory;
  private readonly words: Int32Array;
  private readonly bytes: Uint8Array;
  private readonly doorbell: EventFd;
  private readonly pending: Int32Array;
  private readonly signals: SignalTable;
  private readonly poller: Poller;
  private readonly signalFds = new Map<number, EventFd>();
  private handler: (vp: number, vector: number) => void = () => {};

  constructor(private readonly shared: ProcessPartitionShared, poller?: Poller) {
    this.vpCount = shared.vpCount;
    this.memory = GuestMemory.attach({ fd: shared.memoryFd, size: shared.memorySize });
    this.words = new Int32Array(shared.mailbox);
    this.bytes = new Uint8Array(shared.mailbox);
    this.doorbell = EventFd.fromFd(shared.doorbellFd);
    this.pending = new Int32Array(shared.pendingVectors);
    this.signals = new SignalTable(shared.signalTable);
    this.poller = poller ?? new Poller();
    shared.interruptFds.forEach((fd, vp) => {
      const line = EventFd.fromFd(fd);
      this.poller.add(fd, () => {
        line.drain();
        this.dispatchInterrupts(vp);
      });
    });
  }

  setInterruptHandler(handler: (vp: number, vector: number) => void): void {
    this.handler = handler;
  }

  wrmsr(vp: number, msr: number, value: bigint): void {
    const w = this.words;
    w[Mailbox.Vp] = vp;
    w[Mailbox.Arg] = msr | 0;
    w[Mailbox.ValueLo] = Number(BigInt.asUintN(64, value) & 0xffffffffn) | 0;
    w[Mailbox.ValueHi] = Number(BigInt.asUintN(64, value) >> 32n) | 0;
    if (this.call(HypercallOp.WriteMsr) !== MsrStatus.Ok) throw new GeneralProtectionFault(`wrmsr 0x${msr.toString(16)}`);
  }

  rdmsr(vp: number, msr: number): bigint {
    const w = this.words;
    w[Mailbox.Vp] = vp;
    w[Mailbox.Arg] = msr | 0;
    if (this.call(HypercallOp.ReadMsr) !== MsrStatus.Ok) throw new GeneralProtectionFault(`rdmsr 0x${msr.toString(16)}`);
    return (BigInt(w[Mailbox.ResultHi]! >>> 0) << 32n) | BigInt(w[Mailbox.ResultLo]! >>> 0);
  }

  postMessage(vp: number, connectionId: number, messageType: number, payload: Uint8Array): number {
    // The hypercall input page holds at most 240 payload bytes; a longer post is refused
    // by the hypervisor, which the hostile guest relies on being reported, not truncated.
    if (payload.length > 240) return HvStatus.InvalidParameter;
    const w = this.words;
    w[Mailbox.Vp] = vp;
    w[Mailbox.Arg] = connectionId | 0;
    w[Mailbox.MessageType] = messageType | 0;
    w[Mailbox.PayloadSize] = payload.length;
    this.bytes.set(payload, Mailbox.PayloadByteOffset);
    return this.call(HypercallOp.PostMessage);
  }

  signalEvent(connectionId: number): number {
    const fd = this.signals.lookup(connectionId);
    if (fd < 0) {
      this.words[Mailbox.Arg] = connectionId | 0;
      return this.call(HypercallOp.SignalEvent);
    }
    let line = this.signalFds.get(fd);
    if (!line) {
      line = EventFd.fromFd(fd);
      this.signalFds.set(fd, line);
    }
    line.signal();
    return HvStatus.Success;
  }

  referenceCounter(): bigint {
    return referenceTimeSince(this.shared.epochNs);
  }

  /** A synchronous round trip: the guest's vCPU is stopped for the duration, as in a real exit. */
  private call(op: number): number {
    const w = this.words;
    w[Mailbox.Op] = op;
    Atomics.store(w, Mailbox.State, MailboxState.Request);
    this.doorbell.signal();
    while (Atomics.load(w, Mailbox.State) === MailboxState.Request) {
      // Bounded wait so a host that died cannot hang the guest thread forever silently.
      if (Atomics.wait(w, Mailbox.State, MailboxState.Request, 10_000) === 'timed-out' && Atomics.load(w, Mailbox.State) === MailboxState.Request) {
        throw new Error('hypervisor did not answer a hypercall within 10 s');
      }
    }
    const status = w[Mailbox.Status]!;
    Atomics.store(w, Mailbox.State, MailboxState.Idle);
    return status;
  }

  private dispatchInterrupts(vp: number): void {
    const base = vp * VECTOR_WORDS_PER_VP;
    for (let i = 0; i < VECTOR_WORDS_PER_VP; i++) {
      let bits = Atomics.exchange(this.pending, base + i, 0);
      while (bits !== 0) {
        const bit = 31 - Math.clz32(bits);
        bits &= ~(1 << bit);
        this.handler(vp, i * 32 + bit);
      }
    }
  }

  async close(): Promise<void> {
    await this.poller.stop();
  }
}
