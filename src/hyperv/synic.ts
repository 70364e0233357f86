// The host's model of each virtual processor's synthetic interrupt controller: the SynIC
// MSRs, message slots in the guest's SIMP page with the pending/EOM protocol, and event
// flags in the SIEFP page. Both partition backends use it; they differ only in how an
// interrupt reaches a vCPU.
import { GuestMemory } from '../memory/guest-memory.js';
import { PAGE_SIZE } from '../memory/page.js';

export const SynicMsr = {
  SControl: 0x40000080,
  SVersion: 0x40000081,
  Siefp: 0x40000082,
  Simp: 0x40000083,
  Eom: 0x40000084,
  Sint0: 0x40000090,
  Sint15: 0x4000009f,
} as const;

export const SINT_COUNT = 16;
export const MESSAGE_SLOT_SIZE = 256;
export const MESSAGE_HEADER_SIZE = 16;
export const MESSAGE_PAYLOAD_MAX = 240;
export const EVENT_FLAGS_AREA_SIZE = 256;
export const HVMSG_NONE = 0;

const SINT_MASKED = 1n << 16n;
const SINT_VECTOR_MASK = 0xffn;
const PAGE_ENABLE = 1n;
const FLAG_MESSAGE_PENDING = 1;

interface VpState {
  scontrol: bigint;
  simp: bigint;
  siefp: bigint;
  sint: bigint[];
  /** Messages waiting for a free slot, per SINT, in order. */
  queues: Uint8Array[][];
}

export interface SynicOptions {
  memory: GuestMemory;
  vpCount: number;
  /** Raise `vector` on virtual processor `vp` (MSI, irqfd, or an eventfd to a process guest). */
  inject: (vp: number, vector: number) => void;
  /** Bound on messages queued per SINT; a guest that never frees its slot cannot grow host memory. */
  maxQueuedMessages?: number;
  log?: (message: string) => void;
}

export class Synic {
  private readonly memory: GuestMemory;
  private readonly vps: VpState[];
  private readonly inject: (vp: number, vector: number) => void;
  private readonly maxQueued: number;
  private readonly log: (message: string) => void;

  constructor(options: SynicOptions) {
    this.memory = options.memory;
    this.inject = options.inject;
    this.maxQueued = options.maxQueuedMessages ?? 1024;
    this.log = options.log ?? (() => {});
    this.vps = Array.from({ length: options.vpCount }, () => newVp());
  }

  get vpCount(): number {
    return this.vps.length;
  }

  /** Forgets every register and queued message (platform reset). */
  reset(): void {
    for (let i = 0; i < this.vps.length; i++) this.vps[i] = newVp();
  }

  isSynicMsr(msr: number): boolean {
    return (msr >= SynicMsr.SControl && msr <= SynicMsr.Eom) || (msr >= SynicMsr.Sint0 && msr <= SynicMsr.Sint15);
  }

  /** Returns undefined for an MSR that is not the SynIC's or a VP that does not exist. */
  readMsr(vp: number, msr: number): bigint | undefined {
    const s = this.vps[vp];
    if (!s) return undefined;
    switch (msr) {
      case SynicMsr.SControl: return s.scontrol;
      case SynicMsr.SVersion: return 1n;
      case SynicMsr.Siefp: return s.siefp;
      case SynicMsr.Simp: return s.simp;
      case SynicMsr.Eom: return 0n;
    }
    if (msr >= SynicMsr.Sint0 && msr <= SynicMsr.Sint15) return s.sint[msr - SynicMsr.Sint0];
    return undefined;
  }

  /** Returns false if the write is refused (the guest then gets #GP on real hardware). */
  writeMsr(vp: number, msr: number, value: bigint): boolean {
    const s = this.vps[vp];
    if (!s) return false;
    value = BigInt.asUintN(64, value);
    switch (msr) {
      case SynicMsr.SControl:
        s.scontrol = value;
        this.deliverAll(vp);
        return true;
      case SynicMsr.Simp:
      case SynicMsr.Siefp: {
        // A page outside guest RAM cannot be enabled: the register keeps the value but the
        // host treats the page as absent, never writing outside RAM.
        if (msr === SynicMsr.Simp) s.simp = value;
        else s.siefp = value;
        if ((value & PAGE_ENABLE) !== 0n && this.pageGpa(value) === undefined) {
          this.log(`vp ${vp}: ${msr === SynicMsr.Simp ? 'SIMP' : 'SIEFP'} page ${value >> 12n} is outside guest RAM; ignored`);
        }
        this.deliverAll(vp);
        return true;
      }
      case SynicMsr.Eom:
        this.deliverAll(vp);
        return true;
      case SynicMsr.SVersion:
        return false;
    }
    if (msr >= SynicMsr.Sint0 && msr <= SynicMsr.Sint15) {
      // Reserved bits (8-15, 19-63 except the paravisor's proxy bit 20) must be zero.
      if ((value & ~0x17_00ffn) !== 0n) return false;
      const vector = Number(value & SINT_VECTOR_MASK);
      if ((value & SINT_MASKED) === 0n && vector < 16) return false;
      s.sint[msr - SynicMsr.Sint0] = value;
      this.deliverAll(vp);
      return true;
    }
    return false;
  }

  /**
   * Queues a message for (vp, sint) and delivers it as soon as the slot is free and the
   * VP is ready. Returns false if the VP does not exist or its queue is full.
   */
  postMessage(vp: number, sint: number, messageType: number, payload: Uint8Array): boolean {
    const s = this.vps[vp];
    if (!s || sint < 0 || sint >= SINT_COUNT || payload.length > MESSAGE_PAYLOAD_MAX) return false;
    const queue = s.queues[sint]!;
    if (queue.length >= this.maxQueued) {
      this.log(`vp ${vp} sint ${sint}: message queue full, dropping message type ${messageType}`);
      return false;
    }
    const slot = new Uint8Array(MESSAGE_SLOT_SIZE);
    const view = new DataView(slot.buffer);
    view.setUint32(0, messageType, true);
    slot[4] = payload.length;
    slot.set(payload, MESSAGE_HEADER_SIZE);
    queue.push(slot);
    this.deliver(vp, sint);
    return true;
  }

  /** Messages still waiting in the host for (vp, sint): for inspection and tests. */
  queuedMessages(vp: number, sint: number): number {
    return this.vps[vp]?.queues[sint]?.length ?? 0;
  }

  /**
   * Sets event flag `flag` of `sint` in vp's SIEFP page and interrupts the VP if the flag
   * was clear. Returns false if nothing could be signalled (SynIC or SINT not ready).
   */
  signalEvent(vp: number, sint: number, flag: number): boolean {
    const s = this.vps[vp];
    if (!s || sint < 0 || sint >= SINT_COUNT || flag < 0 || flag >= EVENT_FLAGS_AREA_SIZE * 8) return false;
    if ((s.scontrol & 1n) === 0n || (s.siefp & PAGE_ENABLE) === 0n) return false;
    const page = this.pageGpa(s.siefp);
    if (page === undefined) return false;
    const byte = page + sint * EVENT_FLAGS_AREA_SIZE + (flag >>> 3);
    const bit = 1 << (flag & 7);
    const before = Atomics.or(this.memory.bytes, byte, bit);
    if ((before & bit) === 0) this.interrupt(vp, sint);
    return true;
  }

  private deliverAll(vp: number): void {
    for (let sint = 0; sint < SINT_COUNT; sint++) this.deliver(vp, sint);
  }

  private deliver(vp: number, sint: number): void {
    const s = this.vps[vp]!;
    const queue = s.queues[sint]!;
    if (queue.length === 0) return;
    if ((s.scontrol & 1n) === 0n || (s.simp & PAGE_ENABLE) === 0n) return;
    if ((s.sint[sint]! & SINT_MASKED) !== 0n) return;
    const page = this.pageGpa(s.simp);
    if (page === undefined) return;
    const slotGpa = page + sint * MESSAGE_SLOT_SIZE;
    const typeIndex = slotGpa >>> 2;
    const words = this.memory.words;
    const bytes = this.memory.bytes;
    for (;;) {
      if (Atomics.load(words, typeIndex) !== HVMSG_NONE) {
        // Slot busy: ask the guest for an EOM, then look again in case it freed the slot
        // just before seeing the flag (otherwise nobody would ever write EOM).
        Atomics.or(bytes, slotGpa + 5, FLAG_MESSAGE_PENDING);
        if (Atomics.load(words, typeIndex) !== HVMSG_NONE) return;
      }
      const message = queue.shift()!;
      // Bytes 4..255 first, message_type last: the guest treats a non-zero type as "full".
      message[5] = queue.length > 0 ? FLAG_MESSAGE_PENDING : 0;
      bytes.set(message.subarray(4), slotGpa + 4);
      Atomics.store(words, typeIndex, new DataView(message.buffer).getInt32(0, true));
      this.interrupt(vp, sint);
      if (queue.length === 0) return;
      // The slot is now full; loop once more to set message_pending for the next one.
    }
  }

  private interrupt(vp: number, sint: number): void {
    const value = this.vps[vp]!.sint[sint]!;
    if ((value & SINT_MASKED) !== 0n) return;
    if ((value & (1n << 18n)) !== 0n) return; // polling mode: no interrupt
    this.inject(vp, Number(value & SINT_VECTOR_MASK));
  }

  private pageGpa(register: bigint): number | undefined {
    const pfn = register >> 12n;
    if (pfn >= BigInt(this.memory.pageCount)) return undefined;
    return Number(pfn) * PAGE_SIZE;
  }
}

function newVp(): VpState {
  return {
    scontrol: 0n,
    simp: 0n,
    siefp: 0n,
    sint: Array.from({ length: SINT_COUNT }, () => SINT_MASKED),
    queues: Array.from({ length: SINT_COUNT }, () => []),
  };
}
