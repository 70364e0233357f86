// kvm_run: the page(s) a vCPU shares with KVM. KVM writes why KVM_RUN returned and the
// exit's details here, and reads our answers (IN data, MMIO read data, RDMSR values,
// registers marked dirty) from here on the next KVM_RUN, so the exit loop works on this
// memory directly instead of copying structs in and out. Every accessor reads the mapping
// through one DataView; the views it hands out are created once per run area.
// Offsets: struct kvm_run in include/uapi/linux/kvm.h, x86-64.
import { mapRunArea, unmapRunArea } from '../sys/kvm-ioctl.js';
import { viewOf } from '../sys/memfd.js';
import { KVM_SYNC_X86_REGS, REGS_SIZE } from './kvm-constants.js';

const RUN_REQUEST_INTERRUPT_WINDOW = 0;
const RUN_IMMEDIATE_EXIT = 1;
const RUN_EXIT_REASON = 8;
const RUN_READY_FOR_INTERRUPT_INJECTION = 12;
const RUN_IF_FLAG = 13;
const RUN_FLAGS = 14;
const RUN_CR8 = 16;
const RUN_APIC_BASE = 24;
/** The exit union: one struct per exit reason, 256 bytes. */
const RUN_EXIT = 32;
const RUN_VALID_REGS = 288;
const RUN_DIRTY_REGS = 296;
/** kvm_sync_regs: kvm_regs (144), kvm_sregs (312), kvm_vcpu_events (64). */
const RUN_SYNC_REGS = 304;
const RUN_SYNC_SREGS = RUN_SYNC_REGS + REGS_SIZE;
/** sizeof(struct kvm_run): the mapping must at least hold this. */
export const KVM_RUN_STRUCT_SIZE = 2352;

export const RUN_OFFSETS = {
  requestInterruptWindow: RUN_REQUEST_INTERRUPT_WINDOW,
  immediateExit: RUN_IMMEDIATE_EXIT,
  exitReason: RUN_EXIT_REASON,
  exitUnion: RUN_EXIT,
  validRegs: RUN_VALID_REGS,
  dirtyRegs: RUN_DIRTY_REGS,
  syncRegs: RUN_SYNC_REGS,
  syncSregs: RUN_SYNC_SREGS,
} as const;

export class KvmRunError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KvmRunError';
  }
}

/** kvm_run.io: port I/O (KVM_EXIT_IO). The data lives elsewhere in the area: ioData(). */
export class IoExit {
  constructor(private readonly area: KvmRunArea) {}
  /** KVM_EXIT_IO_IN (0) or KVM_EXIT_IO_OUT (1). */
  get direction(): number { return this.area.view.getUint8(RUN_EXIT); }
  /** Bytes per item: 1, 2 or 4. */
  get size(): number { return this.area.view.getUint8(RUN_EXIT + 1); }
  get port(): number { return this.area.view.getUint16(RUN_EXIT + 2, true); }
  /** Items: more than 1 for string I/O (rep ins/outs). */
  get count(): number { return this.area.view.getUint32(RUN_EXIT + 4, true); }
  /** Where the items are, from the start of the run area. */
  get dataOffset(): number { return Number(this.area.view.getBigUint64(RUN_EXIT + 8, true)); }
}

/** kvm_run.mmio (KVM_EXIT_MMIO): for a read, write the answer into `data` before the next run. */
export class MmioExit {
  private dataView: DataView | null = null;
  constructor(private readonly area: KvmRunArea) {}
  /** The 8 data bytes, in place (created once per mapping). */
  get data(): DataView {
    if (this.dataView === null || this.dataView.buffer !== this.area.buffer) this.dataView = new DataView(this.area.buffer, RUN_EXIT + 8, 8);
    return this.dataView;
  }
  get physAddr(): bigint { return this.area.view.getBigUint64(RUN_EXIT, true); }
  get len(): number { return this.area.view.getUint32(RUN_EXIT + 16, true); }
  get isWrite(): boolean { return this.area.view.getUint8(RUN_EXIT + 20) !== 0; }
}

/** kvm_run.msr (KVM_EXIT_X86_RDMSR / WRMSR): set `error` to inject #GP, or `data` for a read. */
export class MsrExit {
  constructor(private readonly area: KvmRunArea) {}
  /** Nonzero on the next KVM_RUN: the guest's instruction raises #GP. */
  get error(): number { return this.area.view.getUint8(RUN_EXIT); }
  set error(value: number) { this.area.view.setUint8(RUN_EXIT, value ? 1 : 0); }
  /** Why it exited: KVM_MSR_EXIT_REASON_INVAL, _UNKNOWN or _FILTER. */
  get reason(): number { return this.area.view.getUint32(RUN_EXIT + 8, true); }
  get index(): number { return this.area.view.getUint32(RUN_EXIT + 12, true); }
  /** WRMSR: the value written (edx:eax). RDMSR: set the value the guest gets. */
  get data(): bigint { return this.area.view.getBigUint64(RUN_EXIT + 16, true); }
  set data(value: bigint) { this.area.view.setBigUint64(RUN_EXIT + 16, BigInt.asUintN(64, value), true); }
}

/** kvm_run.internal (KVM_EXIT_INTERNAL_ERROR). */
export class InternalErrorExit {
  constructor(private readonly area: KvmRunArea) {}
  get suberror(): number { return this.area.view.getUint32(RUN_EXIT, true); }
  get ndata(): number { return this.area.view.getUint32(RUN_EXIT + 4, true); }
  /** The ndata words KVM attached (at most 16). */
  get data(): bigint[] { return exitDataWords(this.area.view, this.ndata); }
}

/** kvm_run.fail_entry (KVM_EXIT_FAIL_ENTRY): the VM entry itself failed. */
export class FailEntryExit {
  constructor(private readonly area: KvmRunArea) {}
  get hardwareEntryFailureReason(): bigint { return this.area.view.getBigUint64(RUN_EXIT, true); }
  get cpu(): number { return this.area.view.getUint32(RUN_EXIT + 8, true); }
}

/** kvm_run.system_event (KVM_EXIT_SYSTEM_EVENT): shutdown, reset or crash. */
export class SystemEventExit {
  constructor(private readonly area: KvmRunArea) {}
  get type(): number { return this.area.view.getUint32(RUN_EXIT, true); }
  get ndata(): number { return this.area.view.getUint32(RUN_EXIT + 4, true); }
  get data(): bigint[] { return exitDataWords(this.area.view, this.ndata); }
}

/** The u64 words after an exit's (u32 kind, u32 ndata) header; KVM sends at most 16. */
function exitDataWords(view: DataView, ndata: number): bigint[] {
  const n = Math.min(ndata, 16);
  const out: bigint[] = [];
  for (let i = 0; i < n; i++) out.push(view.getBigUint64(RUN_EXIT + 8 + i * 8, true));
  return out;
}

export class KvmRunArea {
  readonly address: bigint;
  readonly size: number;
  /** @internal The whole area; after unmap() private zeroed memory, never a hole. */
  buffer: ArrayBuffer;
  /** @internal */
  view: DataView;
  private syncRegsView: BigUint64Array;
  readonly io: IoExit;
  readonly mmio: MmioExit;
  readonly msr: MsrExit;
  readonly internalError: InternalErrorExit;
  readonly failEntry: FailEntryExit;
  readonly systemEvent: SystemEventExit;
  private ioDataView: DataView | null = null;
  private mapped = true;

  private constructor(address: bigint, size: number) {
    this.address = address;
    this.size = size;
    this.buffer = viewOf(address, size);
    this.view = new DataView(this.buffer);
    this.syncRegsView = new BigUint64Array(this.buffer, RUN_SYNC_REGS, REGS_SIZE / 8);
    this.io = new IoExit(this);
    this.mmio = new MmioExit(this);
    this.msr = new MsrExit(this);
    this.internalError = new InternalErrorExit(this);
    this.failEntry = new FailEntryExit(this);
    this.systemEvent = new SystemEventExit(this);
  }

  /**
   * Maps a vCPU's run area in the calling thread. Any thread may map it (the vCPU's own
   * worker to run it, another thread to kick it); `mmapSize` is KVM_GET_VCPU_MMAP_SIZE.
   */
  static map(vcpuFd: number, mmapSize: number): KvmRunArea {
    if (!Number.isSafeInteger(mmapSize) || mmapSize < KVM_RUN_STRUCT_SIZE) throw new KvmRunError(`the vCPU mmap size must be at least ${KVM_RUN_STRUCT_SIZE} bytes, got ${mmapSize}`);
    return new KvmRunArea(mapRunArea(vcpuFd, mmapSize).address, mmapSize);
  }

  get exitReason(): number { return this.view.getUint32(RUN_EXIT_REASON, true); }

  /** Nonzero: the next KVM_RUN returns EINTR at once (how a kick that races the entry lands). */
  get immediateExit(): number { return this.view.getUint8(RUN_IMMEDIATE_EXIT); }
  set immediateExit(value: number) { this.view.setUint8(RUN_IMMEDIATE_EXIT, value ? 1 : 0); }

  get requestInterruptWindow(): number { return this.view.getUint8(RUN_REQUEST_INTERRUPT_WINDOW); }
  set requestInterruptWindow(value: number) { this.view.setUint8(RUN_REQUEST_INTERRUPT_WINDOW, value ? 1 : 0); }
  get readyForInterruptInjection(): boolean { return this.view.getUint8(RUN_READY_FOR_INTERRUPT_INJECTION) !== 0; }
  get ifFlag(): boolean { return this.view.getUint8(RUN_IF_FLAG) !== 0; }
  get flags(): number { return this.view.getUint16(RUN_FLAGS, true); }
  get cr8(): bigint { return this.view.getBigUint64(RUN_CR8, true); }
  get apicBase(): bigint { return this.view.getBigUint64(RUN_APIC_BASE, true); }

  /**
   * The data of a port I/O exit, in place: io.count items of io.size bytes. OUT: what the
   * guest wrote. IN: write the answer here before the next KVM_RUN. Reused while the
   * exits keep the same offset and length (the usual case), so the loop allocates nothing.
   */
  ioData(): DataView {
    const offset = this.io.dataOffset;
    const length = this.io.size * this.io.count;
    const cached = this.ioDataView;
    if (cached !== null && cached.byteOffset === offset && cached.byteLength === length && cached.buffer === this.buffer) return cached;
    if (offset < KVM_RUN_STRUCT_SIZE || offset + length > this.size) throw new KvmRunError(`port I/O data at ${offset}+${length} is outside the ${this.size}-byte run area`);
    this.ioDataView = new DataView(this.buffer, offset, length);
    return this.ioDataView;
  }

  /** kvm_valid_regs: which register sets KVM copies out on every exit (KVM_SYNC_X86_*). */
  get validRegs(): number { return Number(this.view.getBigUint64(RUN_VALID_REGS, true)); }
  set validRegs(mask: number) { this.view.setBigUint64(RUN_VALID_REGS, BigInt(mask), true); }
  /** kvm_dirty_regs: which synced sets KVM loads back on the next KVM_RUN (it clears them then). */
  get dirtyRegs(): number { return Number(this.view.getBigUint64(RUN_DIRTY_REGS, true)); }
  set dirtyRegs(mask: number) { this.view.setBigUint64(RUN_DIRTY_REGS, BigInt(mask), true); }

  /**
   * s.regs.regs: the general registers at the last exit, 18 u64 in kvm_regs order (rax,
   * rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8..r15, rip, rflags). Valid when enableSyncRegs()
   * was called; after changing any, call markRegsDirty() so KVM loads them.
   */
  get syncRegs(): BigUint64Array { return this.syncRegsView; }

  markRegsDirty(): void {
    this.view.setUint8(RUN_DIRTY_REGS, this.view.getUint8(RUN_DIRTY_REGS) | KVM_SYNC_X86_REGS);
  }

  /**
   * Unmaps the area. The accessors then read private zeroed memory instead: a view kept
   * by mistake reads zeros rather than faulting the process. Views taken from ioData()
   * before unmap() must not be touched again.
   */
  unmap(): void {
    if (!this.mapped) return;
    this.mapped = false;
    this.buffer = new ArrayBuffer(this.size);
    this.view = new DataView(this.buffer);
    this.syncRegsView = new BigUint64Array(this.buffer, RUN_SYNC_REGS, REGS_SIZE / 8);
    this.ioDataView = null;
    unmapRunArea(this.address, this.size);
  }
}
