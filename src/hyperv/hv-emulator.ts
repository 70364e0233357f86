// The Hyper-V interface a KVM partition presents in userspace: the synthetic MSRs
// (0x40000000-0x400001FF, all routed here by the MSR filter) and the hypercalls that leave
// the hypercall page through HYPERCALL_PORT. Spec 1.4/1.5 (MSRs) and 4 (hypercalls).
// Every value comes from the guest: nothing here throws for bad input; a refused MSR
// access is reported to the caller (who injects #GP) and a bad hypercall gets its status.
import type { GuestMemory } from '../memory/guest-memory.js';
import { PAGE_SIZE } from '../memory/page.js';
import type { PostMessageHandler } from '../partition/partition.js';
import { HvStatus } from './hv-status.js';
import { CRASH_PARAMETER_COUNT, CrashCtl, HvMsr, HypercallMsr, ReferenceTscMsr, SYNTHETIC_MSR_FIRST, SYNTHETIC_MSR_LAST, msrPageNumber } from './hv-msrs.js';
import { FAST_SIGNAL_EVENT_CONTROL, HypercallCode, decodeHypercallControl, hypercallResult, type HypercallControl } from './hypercall-control.js';
import { hypercallPageCode } from './hypercall-page.js';
import { nextReferenceTscSequence, referenceTimeFromTsc, referenceTscScale, writeReferenceTscPage } from './reference-tsc-page.js';
import type { GuestCrash } from './guest-crash.js';
import type { Synic } from './synic.js';

/** HvPostMessage input block (spec 4.3). */
const PostMessageInput = {
  Size: 256,
  ConnectionId: 0,
  MessageType: 8,
  PayloadSize: 12,
  Payload: 16,
  PayloadMax: 240,
} as const;
const CONNECTION_ID_MASK = 0x00ffffff;
/** Message types with bit 31 set are the hypervisor's own (timer expired, ...). */
const HYPERVISOR_MESSAGE_TYPE_BIT = 0x80000000;
const INPUT_ALIGNMENT = 8;
const SIGNAL_EVENT_INPUT_SIZE = 8;
/** HvSignalEvent input: bits 24-31 (connection id's reserved byte) and 48-63. */
const SIGNAL_EVENT_RESERVED = (0xffn << 24n) | (0xffffn << 48n);

/** Default APIC timer input clock: KVM's LAPIC bus cycle is 1 ns. */
const DEFAULT_APIC_HZ = 1_000_000_000;

export interface HypervEmulatorOptions {
  memory: GuestMemory;
  synic: Synic;
  vpCount: number;
  /** The guest's TSC frequency (TSC_FREQUENCY MSR, reference TSC page scale). */
  tscHz: number;
  /** APIC timer input frequency (APIC_FREQUENCY MSR); Linux divides it by HZ itself. */
  apicHz?: number;
  /** Partition reference time in 100 ns units (TIME_REF_COUNT). */
  referenceTime: () => bigint;
  /**
   * The guest's current TSC, when the partition can tell: the reference TSC page's offset
   * is then chosen so page time equals referenceTime(). Without it the offset is 0, which
   * matches when the guest TSC and the reference clock both started at partition creation.
   */
  guestTsc?: () => bigint;
  postMessage: PostMessageHandler | null;
  /** HvSignalEvent that did not complete in the kernel: true if a channel took it. */
  signalEvent: (connectionId: number) => boolean;
  onCrash?: (crash: GuestCrash) => void;
  log?: (message: string) => void;
}

export class HypervEmulator {
  private readonly memory: GuestMemory;
  private readonly synic: Synic;
  readonly vpCount: number;
  private readonly tscHz: number;
  private readonly apicHz: number;
  private readonly tscScale: bigint;
  private readonly referenceTime: () => bigint;
  private readonly guestTsc: (() => bigint) | undefined;
  private postHandler: PostMessageHandler | null;
  private readonly signalHandler: (connectionId: number) => boolean;
  private readonly onCrash: (crash: GuestCrash) => void;
  private readonly log: (message: string) => void;

  // Partition-wide registers.
  private guestOsIdValue = 0n;
  private hypercallValue = 0n;
  private referenceTscValue = 0n;
  private tscSequence = 0;
  private tscInvariantControlValue = 0n;
  private readonly crashParameters: bigint[] = new Array<bigint>(CRASH_PARAMETER_COUNT).fill(0n);
  // Per-VP registers.
  private readonly vpAssist: bigint[];

  constructor(o: HypervEmulatorOptions) {
    if (!Number.isSafeInteger(o.vpCount) || o.vpCount < 1) throw new RangeError(`vCPU count must be a positive integer, got ${o.vpCount}`);
    if (o.synic.vpCount !== o.vpCount) throw new RangeError(`SynIC has ${o.synic.vpCount} VPs, partition ${o.vpCount}`);
    const apicHz = o.apicHz ?? DEFAULT_APIC_HZ;
    if (!Number.isSafeInteger(apicHz) || apicHz <= 0) throw new RangeError(`APIC frequency must be a positive integer, got ${apicHz}`);
    this.memory = o.memory;
    this.synic = o.synic;
    this.vpCount = o.vpCount;
    this.tscHz = o.tscHz;
    this.tscScale = referenceTscScale(o.tscHz); // validates tscHz
    this.apicHz = apicHz;
    this.referenceTime = o.referenceTime;
    this.guestTsc = o.guestTsc;
    this.postHandler = o.postMessage;
    this.signalHandler = o.signalEvent;
    this.onCrash = o.onCrash ?? (() => {});
    this.log = o.log ?? (() => {});
    this.vpAssist = new Array<bigint>(o.vpCount).fill(0n);
  }

  setPostMessageHandler(handler: PostMessageHandler | null): void {
    this.postHandler = handler;
  }

  /** Platform reset: every register of this model back to its power-on value (the SynIC resets separately). */
  reset(): void {
    this.guestOsIdValue = 0n;
    this.hypercallValue = 0n;
    this.referenceTscValue = 0n;
    this.tscInvariantControlValue = 0n;
    this.crashParameters.fill(0n);
    this.vpAssist.fill(0n);
  }

  // Inspection.
  get guestOsId(): bigint { return this.guestOsIdValue; }
  get hypercallMsr(): bigint { return this.hypercallValue; }
  get hypercallEnabled(): boolean { return (this.hypercallValue & HypercallMsr.Enable) !== 0n; }
  /** GPA of the hypercall page while enabled and inside RAM. */
  get hypercallPageGpa(): number | undefined {
    return this.hypercallEnabled ? this.pageGpa(this.hypercallValue) : undefined;
  }
  get referenceTscMsr(): bigint { return this.referenceTscValue; }
  get referenceTscEnabled(): boolean { return (this.referenceTscValue & ReferenceTscMsr.Enable) !== 0n; }
  get tscInvariantControl(): bigint { return this.tscInvariantControlValue; }
  get crashParameterValues(): readonly bigint[] { return [...this.crashParameters]; }
  vpAssistPage(vp: number): bigint | undefined { return this.vpAssist[vp]; }

  isSyntheticMsr(msr: number): boolean {
    return msr >= SYNTHETIC_MSR_FIRST && msr <= SYNTHETIC_MSR_LAST;
  }

  /** The value the guest reads, or undefined for #GP. */
  readMsr(vp: number, msr: number): bigint | undefined {
    if (!this.isVp(vp) || !this.isSyntheticMsr(msr)) return undefined;
    switch (msr) {
      case HvMsr.GuestOsId: return this.guestOsIdValue;
      case HvMsr.Hypercall: return this.hypercallValue;
      case HvMsr.VpIndex: return BigInt(vp);
      case HvMsr.TimeRefCount: return this.referenceNow();
      case HvMsr.ReferenceTsc: return this.referenceTscValue;
      case HvMsr.TscFrequency: return BigInt(this.tscHz);
      case HvMsr.ApicFrequency: return BigInt(this.apicHz);
      case HvMsr.VpAssistPage: return this.vpAssist[vp]!;
      case HvMsr.TscInvariantControl: return this.tscInvariantControlValue;
      // Reads report the capabilities, whatever the guest last wrote.
      case HvMsr.CrashCtl: return CrashCtl.Notify;
    }
    if (msr >= HvMsr.CrashP0 && msr <= HvMsr.CrashP4) return this.crashParameters[msr - HvMsr.CrashP0]!;
    if (this.synic.isSynicMsr(msr)) return this.synic.readMsr(vp, msr);
    return undefined;
  }

  /** Applies a guest write; false means the guest gets #GP. */
  writeMsr(vp: number, msr: number, value: bigint): boolean {
    if (!this.isVp(vp) || !this.isSyntheticMsr(msr)) return false;
    value = BigInt.asUintN(64, value);
    switch (msr) {
      case HvMsr.GuestOsId:
        this.guestOsIdValue = value;
        // TLFS: a zero guest OS id disables the hypercall page (what kexec does last).
        if (value === 0n && (this.hypercallValue & HypercallMsr.Locked) === 0n) this.hypercallValue &= ~HypercallMsr.Enable;
        return true;
      case HvMsr.Hypercall:
        return this.writeHypercallMsr(vp, value);
      case HvMsr.ReferenceTsc:
        this.referenceTscValue = value & ReferenceTscMsr.Writable;
        if (this.referenceTscEnabled) this.publishReferenceTscPage(vp);
        return true;
      case HvMsr.VpAssistPage:
        // Linux writes it on every CPU whether or not it is advertised; kept for read-back only.
        this.vpAssist[vp] = value;
        return true;
      case HvMsr.TscInvariantControl:
        this.tscInvariantControlValue = value;
        return true;
      case HvMsr.CrashCtl:
        if ((value & CrashCtl.Notify) !== 0n) this.reportCrash();
        return true;
      case HvMsr.VpIndex:
      case HvMsr.TimeRefCount:
      case HvMsr.TscFrequency:
      case HvMsr.ApicFrequency:
        return false; // read-only
    }
    if (msr >= HvMsr.CrashP0 && msr <= HvMsr.CrashP4) {
      this.crashParameters[msr - HvMsr.CrashP0] = value;
      return true;
    }
    if (this.synic.isSynicMsr(msr)) return this.synic.writeMsr(vp, msr, value);
    return false;
  }

  /** Runs the hypercall that exited at HYPERCALL_PORT; returns the value for RAX. */
  hypercall(vp: number, control: bigint, input: bigint, output: bigint): bigint {
    return hypercallResult(this.hypercallStatus(vp, decodeHypercallControl(control), BigInt.asUintN(64, input)));
  }

  /**
   * The status for RCX after a write to SIGNAL_PORT that no ioeventfd matched: the page's
   * fast HvSignalEvent, with the 32 bits it wrote as input.
   */
  unmatchedSignal(vp: number, written: number): number {
    return this.hypercallStatus(vp, decodeHypercallControl(FAST_SIGNAL_EVENT_CONTROL), BigInt(written >>> 0));
  }

  private hypercallStatus(vp: number, c: HypercallControl, input: bigint): number {
    if (!this.isVp(vp)) return HvStatus.InvalidParameter;
    switch (c.code) {
      case HypercallCode.PostMessage:
        if (c.fast || !isSimpleCall(c)) return HvStatus.InvalidHypercallInput;
        return this.postMessage(vp, input);
      case HypercallCode.SignalEvent:
        if (!isSimpleCall(c)) return HvStatus.InvalidHypercallInput;
        return this.signalEvent(c.fast, input);
      default:
        return HvStatus.InvalidHypercallCode;
    }
  }

  private postMessage(vp: number, inputGpa: bigint): number {
    const gpa = this.inputGpa(inputGpa, PostMessageInput.Size);
    if (typeof gpa === 'string') return gpa === 'alignment' ? HvStatus.InvalidAlignment : HvStatus.InvalidParameter;
    const view = this.memory.view;
    const connectionId = view.getUint32(gpa + PostMessageInput.ConnectionId, true) & CONNECTION_ID_MASK;
    const messageType = view.getUint32(gpa + PostMessageInput.MessageType, true);
    const payloadSize = view.getUint32(gpa + PostMessageInput.PayloadSize, true);
    if (payloadSize > PostMessageInput.PayloadMax) return HvStatus.InvalidParameter;
    if (messageType === 0 || (messageType & HYPERVISOR_MESSAGE_TYPE_BIT) !== 0) return HvStatus.InvalidParameter;
    const handler = this.postHandler;
    if (!handler) return HvStatus.InvalidConnectionId;
    // A copy: the guest may rewrite its input page while the server still holds the message.
    const payload = this.memory.bytes.slice(gpa + PostMessageInput.Payload, gpa + PostMessageInput.Payload + payloadSize);
    let status: unknown;
    try {
      status = handler(connectionId, messageType, payload, vp);
    } catch (e) {
      this.log(`HvPostMessage handler failed (connection ${connectionId}): ${(e as Error)?.stack ?? e}`);
      return HvStatus.InsufficientBuffers;
    }
    if (typeof status !== 'number' || !Number.isInteger(status) || status < 0 || status > 0xffff) {
      this.log(`HvPostMessage handler returned ${String(status)}, not a status`);
      return HvStatus.InsufficientBuffers;
    }
    return status;
  }

  private signalEvent(fast: boolean, input: bigint): number {
    let value = input;
    if (!fast) {
      const gpa = this.inputGpa(input, SIGNAL_EVENT_INPUT_SIZE);
      if (typeof gpa === 'string') return gpa === 'alignment' ? HvStatus.InvalidAlignment : HvStatus.InvalidParameter;
      value = this.memory.view.getBigUint64(gpa, true);
    }
    if ((value & SIGNAL_EVENT_RESERVED) !== 0n) return HvStatus.InvalidHypercallInput;
    // Bits 32-47 (event flag number) are ignored: the in-kernel fast path never sees them
    // either, and one connection id names one channel's signal.
    const connectionId = Number(value & BigInt(CONNECTION_ID_MASK));
    let taken: boolean;
    try {
      taken = this.signalHandler(connectionId) === true;
    } catch (e) {
      this.log(`HvSignalEvent handler failed (connection ${connectionId}): ${(e as Error)?.stack ?? e}`);
      return HvStatus.InsufficientBuffers;
    }
    return taken ? HvStatus.Success : HvStatus.InvalidConnectionId;
  }

  /**
   * A slow hypercall's input block: 8-byte aligned, not crossing a page (TLFS), inside RAM.
   * Returns its GPA or why not.
   */
  private inputGpa(gpa: bigint, size: number): number | 'alignment' | 'outside' {
    if (gpa % BigInt(INPUT_ALIGNMENT) !== 0n) return 'alignment';
    if ((gpa % BigInt(PAGE_SIZE)) + BigInt(size) > BigInt(PAGE_SIZE)) return 'alignment';
    if (gpa + BigInt(size) > BigInt(this.memory.size)) return 'outside';
    return Number(gpa);
  }

  private writeHypercallMsr(vp: number, value: bigint): boolean {
    const before = this.hypercallValue;
    if ((before & HypercallMsr.Locked) !== 0n) return false; // immutable until reset
    const next = value & HypercallMsr.Writable;
    if ((next & HypercallMsr.Enable) !== 0n && this.guestOsIdValue === 0n) {
      // TLFS: the page cannot be enabled before the guest has identified itself. Like
      // KVM, the write is dropped without a fault; the guest sees enable = 0 on read-back.
      this.log(`vp ${vp}: hypercall page enable refused: guest OS id is 0`);
      return true;
    }
    this.hypercallValue = next;
    const enabled = (next & HypercallMsr.Enable) !== 0n;
    const wasEnabled = (before & HypercallMsr.Enable) !== 0n;
    if (enabled && (!wasEnabled || msrPageNumber(next) !== msrPageNumber(before))) this.installHypercallPage(vp);
    return true;
  }

  private installHypercallPage(vp: number): void {
    const gpa = this.pageGpa(this.hypercallValue);
    if (gpa === undefined) {
      // Linux always picks a page of its own RAM; outside RAM there is nothing to write to.
      this.log(`vp ${vp}: hypercall page ${msrPageNumber(this.hypercallValue)} is outside guest RAM; not written`);
      return;
    }
    this.memory.bytes.set(hypercallPageCode(), gpa);
  }

  private publishReferenceTscPage(vp: number): void {
    const gpa = this.pageGpa(this.referenceTscValue);
    if (gpa === undefined) {
      this.log(`vp ${vp}: reference TSC page ${msrPageNumber(this.referenceTscValue)} is outside guest RAM; not written`);
      return;
    }
    let offset = 0n;
    if (this.guestTsc) {
      try {
        offset = this.referenceNow() - referenceTimeFromTsc(this.guestTsc(), this.tscScale, 0n);
      } catch (e) {
        this.log(`guest TSC unavailable for the reference TSC page: ${(e as Error)?.message ?? e}`);
      }
    }
    this.tscSequence = nextReferenceTscSequence(this.tscSequence);
    writeReferenceTscPage(this.memory, gpa, { sequence: this.tscSequence, scale: this.tscScale, offset });
  }

  private reportCrash(): void {
    const crash: GuestCrash = { p: [...this.crashParameters] };
    try {
      this.onCrash(crash);
    } catch (e) {
      this.log(`crash handler failed: ${(e as Error)?.stack ?? e}`);
    }
  }

  private referenceNow(): bigint {
    return BigInt.asUintN(64, this.referenceTime());
  }

  private isVp(vp: number): boolean {
    return Number.isInteger(vp) && vp >= 0 && vp < this.vpCount;
  }

  private pageGpa(register: bigint): number | undefined {
    const pfn = msrPageNumber(register);
    if (pfn >= BigInt(this.memory.pageCount)) return undefined;
    return Number(pfn) * PAGE_SIZE;
  }
}

/** HvPostMessage and HvSignalEvent are simple calls: no reps, no variable header, no reserved bits. */
function isSimpleCall(c: HypercallControl): boolean {
  return c.repCount === 0 && c.repStart === 0 && c.variableHeaderQwords === 0 && !c.reservedBitsSet;
}
