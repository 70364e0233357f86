// The reference guest's SynIC driver, as hv_vmbus programs it on each CPU
// (hv_synic_enable_regs) and as its interrupt handler walks it (vmbus_isr): event flags
// first, then the message slot of SINT2, freeing the slot and writing EOM when the
// hypervisor has more queued.
import { SynicMsr, MESSAGE_SLOT_SIZE, EVENT_FLAGS_AREA_SIZE, HVMSG_NONE } from '../hyperv/synic.js';
import { PAGE_SIZE } from '../memory/page.js';
import type { GuestHypervisor } from './hypervisor.js';
import type { PageAllocator } from './page-allocator.js';
import { VMBUS_MESSAGE_SINT } from '../vmbus/message-transport.js';

export const HYPERVISOR_CALLBACK_VECTOR = 0xf3;
const MAX_RELID = 2048;

export interface SynicHandlers {
  /** A channel's event flag was set: run its callback. */
  onChannelEvent(vp: number, relid: number): void;
  /** A message arrived in slot SINT2: `slot` is a private 256-byte copy. */
  onMessage(vp: number, slot: Uint8Array): void;
}

interface VpPages {
  simpPfn: number;
  siefpPfn: number;
}

export class GuestSynic {
  private readonly pages: VpPages[] = [];
  private readonly slotCopy = new Uint8Array(MESSAGE_SLOT_SIZE);
  readonly stats = { interrupts: 0, messages: 0, events: 0, eoms: 0 };

  constructor(private readonly hv: GuestHypervisor, private readonly allocator: PageAllocator, private readonly handlers: SynicHandlers) {
    hv.setInterruptHandler((vp, vector) => this.onInterrupt(vp, vector));
  }

  /** hv_synic_enable_regs on every CPU. */
  enable(): void {
    const hv = this.hv;
    for (let vp = 0; vp < hv.vpCount; vp++) {
      const simpPfn = this.allocator.allocContiguous(1);
      const siefpPfn = this.allocator.allocContiguous(1);
      hv.memory.bytes.fill(0, simpPfn * PAGE_SIZE, (simpPfn + 1) * PAGE_SIZE);
      hv.memory.bytes.fill(0, siefpPfn * PAGE_SIZE, (siefpPfn + 1) * PAGE_SIZE);
      this.pages[vp] = { simpPfn, siefpPfn };
      const simp = hv.rdmsr(vp, SynicMsr.Simp);
      hv.wrmsr(vp, SynicMsr.Simp, (simp & 0xffen) | (BigInt(simpPfn) << 12n) | 1n);
      const siefp = hv.rdmsr(vp, SynicMsr.Siefp);
      hv.wrmsr(vp, SynicMsr.Siefp, (siefp & 0xffen) | (BigInt(siefpPfn) << 12n) | 1n);
      const sintMsr = SynicMsr.Sint0 + VMBUS_MESSAGE_SINT;
      const sint = hv.rdmsr(vp, sintMsr);
      // vector 0xF3, unmasked, no auto-EOI (the host advertises DEPRECATING_AEOI).
      hv.wrmsr(vp, sintMsr, (sint & ~0x300ffn) | BigInt(HYPERVISOR_CALLBACK_VECTOR));
      const scontrol = hv.rdmsr(vp, SynicMsr.SControl);
      hv.wrmsr(vp, SynicMsr.SControl, scontrol | 1n);
    }
  }

  /** hv_synic_disable_regs: mask SINT2, disable the pages with GPFN 0, clear SCONTROL. */
  disable(): void {
    const hv = this.hv;
    for (let vp = 0; vp < this.pages.length; vp++) {
      const sintMsr = SynicMsr.Sint0 + VMBUS_MESSAGE_SINT;
      hv.wrmsr(vp, sintMsr, hv.rdmsr(vp, sintMsr) | (1n << 16n));
      hv.wrmsr(vp, SynicMsr.Simp, hv.rdmsr(vp, SynicMsr.Simp) & 0xffen);
      hv.wrmsr(vp, SynicMsr.Siefp, hv.rdmsr(vp, SynicMsr.Siefp) & 0xffen);
      hv.wrmsr(vp, SynicMsr.SControl, hv.rdmsr(vp, SynicMsr.SControl) & ~1n);
      const { simpPfn, siefpPfn } = this.pages[vp]!;
      this.allocator.free([simpPfn, siefpPfn]);
    }
    this.pages.length = 0;
  }

  /** The message slot's guest address on a VP (for the hostile guest and tests). */
  messageSlotGpa(vp: number): number {
    return this.pages[vp]!.simpPfn * PAGE_SIZE + VMBUS_MESSAGE_SINT * MESSAGE_SLOT_SIZE;
  }

  private onInterrupt(vp: number, vector: number): void {
    if (vector !== HYPERVISOR_CALLBACK_VECTOR || !this.pages[vp]) return;
    this.stats.interrupts++;
    this.scanEvents(vp);
    this.readMessage(vp);
  }

  private scanEvents(vp: number): void {
    const area = this.pages[vp]!.siefpPfn * PAGE_SIZE + VMBUS_MESSAGE_SINT * EVENT_FLAGS_AREA_SIZE;
    const words = this.hv.memory.words;
    for (let w = 0; w < MAX_RELID / 32; w++) {
      const index = (area >>> 2) + w;
      if (Atomics.load(words, index) === 0) continue;
      let bits = Atomics.exchange(words, index, 0);
      while (bits !== 0) {
        const bit = 31 - Math.clz32(bits);
        bits &= ~(1 << bit);
        const relid = w * 32 + bit;
        if (relid === 0) continue; // relid 0 is the control connection
        this.stats.events++;
        this.handlers.onChannelEvent(vp, relid);
      }
    }
  }

  private readMessage(vp: number): void {
    const memory = this.hv.memory;
    const slot = this.messageSlotGpa(vp);
    // Several messages may be queued: the hypervisor delivers the next one after EOM.
    for (let guard = 0; guard < 4096; guard++) {
      const type = Atomics.load(memory.words, slot >>> 2);
      if (type === HVMSG_NONE) return;
      this.slotCopy.set(memory.bytes.subarray(slot, slot + MESSAGE_SLOT_SIZE));
      const pending = (this.slotCopy[5]! & 1) !== 0;
      this.stats.messages++;
      this.handlers.onMessage(vp, this.slotCopy);
      // Free the slot, then tell the hypervisor if it had more for us.
      Atomics.compareExchange(memory.words, slot >>> 2, type, HVMSG_NONE);
      if (pending || (Atomics.load(memory.bytes, slot + 5) & 1) !== 0) {
        this.stats.eoms++;
        this.hv.wrmsr(vp, SynicMsr.Eom, 0n);
      }
    }
  }
}
