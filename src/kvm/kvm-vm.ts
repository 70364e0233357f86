// One VM: memory slots, the in-kernel irqchip, MSR filtering and userspace MSR exits,
// ioeventfds (guest writes that signal an eventfd without leaving the kernel), irqfds and
// MSI routes (host-to-guest interrupts), and vCPU creation. The vCPUs themselves run in
// their workers (kvm-vcpu.ts); this object stays on the thread that built the VM.
import { closeFd } from '../sys/fd.js';
import { ioctlBuffer, ioctlInt, ioctlNone } from '../sys/kvm-ioctl.js';
import { mapAnonymous, munmap, viewOf } from '../sys/memfd.js';
import {
  IRQ_LEVEL_SIZE, IOEVENTFD_SIZE, IRQFD_SIZE, KVM_CAP_X86_USER_SPACE_MSR, KVM_CHECK_EXTENSION, KVM_CREATE_IRQCHIP,
  KVM_CREATE_PIT2, KVM_CREATE_VCPU, KVM_ENABLE_CAP, KVM_IOEVENTFD, KVM_IOEVENTFD_FLAG_DATAMATCH,
  KVM_IOEVENTFD_FLAG_DEASSIGN, KVM_IOEVENTFD_FLAG_PIO, KVM_IRQ_LINE, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
  KVM_IRQCHIP_PIC_SLAVE, KVM_IRQFD, KVM_IRQFD_FLAG_DEASSIGN, KVM_IRQFD_FLAG_RESAMPLE, KVM_MSR_FILTER_DEFAULT_ALLOW,
  KVM_MSR_FILTER_DEFAULT_DENY, KVM_MSR_FILTER_MAX_BITMAP_SIZE, KVM_MSR_FILTER_MAX_RANGES, KVM_MSR_FILTER_READ,
  KVM_MSR_FILTER_WRITE, KVM_PIT_SPEAKER_DUMMY, KVM_SET_GSI_ROUTING, KVM_SET_IDENTITY_MAP_ADDR, KVM_SET_TSS_ADDR,
  KVM_SET_USER_MEMORY_REGION, KVM_SIGNAL_MSI, KVM_X86_SET_MSR_FILTER, MSI_SIZE, USERSPACE_MEMORY_REGION_SIZE,
} from './kvm-constants.js';
import {
  encodeEnableCap, encodeIoeventfd, encodeIrqfd, encodeIrqLevel, encodeIrqRouting, encodeMsi, encodeMsrFilter,
  encodePitConfig, encodeUserspaceMemoryRegion, MSR_FILTER_ARENA_SIZE, type BitmapArena, type GsiRoute,
  type MsrFilterRange,
} from './kvm-structs.js';
import { vcpuTscKhz } from './kvm-vcpu.js';

export type { GsiRoute } from './kvm-structs.js';

const PAGE_SIZE = 4096;
const IOAPIC_PINS = 24;

export class KvmVmError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KvmVmError';
  }
}

/** A run of MSRs whose guest reads and/or writes the filter refuses (they exit to userspace). */
export interface MsrFilterSpec {
  base: number;
  count: number;
  allowRead: boolean;
  allowWrite: boolean;
}

/** One ioeventfd: exactly one of `port` (port I/O) and `mmio` (a guest physical address). */
export interface IoeventfdSpec {
  port?: number;
  mmio?: number;
  length: 1 | 2 | 4 | 8;
  /** Only writes of this value signal the eventfd; without it, every write does. */
  datamatch?: bigint;
  fd: number;
}

export interface MsiRouteSpec {
  gsi: number;
  msi: { addressLo: number; addressHi: number; data: number };
}

export class KvmVm {
  readonly fd: number;
  private readonly vcpuFds: number[] = [];
  private readonly irqLevel = new Uint8Array(IRQ_LEVEL_SIZE);
  private readonly msiBuffer = new Uint8Array(MSI_SIZE);
  private readonly ioeventfdBuffer = new Uint8Array(IOEVENTFD_SIZE);
  private readonly irqfdBuffer = new Uint8Array(IRQFD_SIZE);
  private readonly regionBuffer = new Uint8Array(USERSPACE_MEMORY_REGION_SIZE);
  private msrBitmaps: BitmapArena | null = null;
  private closed = false;

  /** Wraps a VM fd (KvmSystem.createVm makes one). */
  constructor(fd: number) {
    this.fd = fd;
  }

  /** KVM_CHECK_EXTENSION on the VM: some answers (max vCPUs, ...) depend on the VM. */
  checkExtension(cap: number): number {
    return ioctlInt(this.fd, KVM_CHECK_EXTENSION, cap);
  }

  /**
   * Maps [guestPhysAddr, +size) of guest physical memory to this process's memory at
   * hostAddress (slot `slot`; a size of 0 deletes the slot). Everything page-aligned.
   */
  setUserMemoryRegion(slot: number, guestPhysAddr: number, size: number, hostAddress: bigint, flags = 0): void {
    for (const [what, value] of [['guest physical address', guestPhysAddr], ['size', size]] as const) {
      if (!Number.isSafeInteger(value) || value < 0 || value % PAGE_SIZE !== 0) throw new KvmVmError(`memory slot ${slot}: ${what} must be a non-negative multiple of ${PAGE_SIZE}, got ${value}`);
    }
    if (hostAddress % BigInt(PAGE_SIZE) !== 0n) throw new KvmVmError(`memory slot ${slot}: host address 0x${hostAddress.toString(16)} is not page-aligned`);
    encodeUserspaceMemoryRegion({ slot, flags, guestPhysAddr: BigInt(guestPhysAddr), memorySize: BigInt(size), userspaceAddr: hostAddress }, this.regionBuffer);
    ioctlBuffer(this.fd, KVM_SET_USER_MEMORY_REGION, this.regionBuffer);
  }

  /**
   * Three pages of guest physical address space for the TSS Intel VMX needs to run real
   * mode without unrestricted guest; outside RAM. Other vendors accept and ignore it.
   */
  setTssAddr(addr: number): void {
    ioctlInt(this.fd, KVM_SET_TSS_ADDR, addr);
  }

  /** One page for VMX's identity page table (used without EPT); outside RAM. */
  setIdentityMapAddr(addr: number): void {
    const buf = new Uint8Array(8);
    new DataView(buf.buffer).setBigUint64(0, BigInt(addr), true);
    ioctlBuffer(this.fd, KVM_SET_IDENTITY_MAP_ADDR, buf);
  }

  /** The in-kernel PIC, IOAPIC and local APICs. Before any vCPU exists. */
  createIrqchip(): void {
    ioctlNone(this.fd, KVM_CREATE_IRQCHIP);
  }

  /** The in-kernel i8254 PIT (after createIrqchip); its speaker port is a dummy. */
  createPit2(): void {
    ioctlBuffer(this.fd, KVM_CREATE_PIT2, encodePitConfig(KVM_PIT_SPEAKER_DUMMY));
  }

  /** KVM_ENABLE_CAP on the VM. */
  enableCap(cap: number, args: readonly bigint[] = []): void {
    ioctlBuffer(this.fd, KVM_ENABLE_CAP, encodeEnableCap(cap, args));
  }

  /** Which failed or filtered guest MSR accesses exit to userspace (KVM_MSR_EXIT_REASON_*). */
  enableUserSpaceMsr(reasons: number): void {
    this.enableCap(KVM_CAP_X86_USER_SPACE_MSR, [BigInt(reasons)]);
  }

  /**
   * Installs an MSR filter that replaces the previous one. Each listed range is refused
   * for the accesses it does not allow (with enableUserSpaceMsr(FILTER) those exit to
   * userspace with reason FILTER); every other MSR follows `defaultAllow`.
   *
   * KVM decides an access from the first range whose flags include that access type and
   * that covers the MSR; a bitmap bit of 1 allows it. So a range that treats reads and
   * writes alike is one range (READ|WRITE), one that does not is two.
   */
  setMsrFilter(ranges: readonly MsrFilterSpec[], defaultAllow = true): void {
    const kvmRanges: MsrFilterRange[] = [];
    for (const r of ranges) {
      if (!Number.isInteger(r.base) || r.base < 0 || r.base > 0xffffffff) throw new KvmVmError(`MSR filter base must be a 32-bit MSR index, got ${r.base}`);
      if (!Number.isInteger(r.count) || r.count <= 0 || r.count > KVM_MSR_FILTER_MAX_BITMAP_SIZE * 8) throw new KvmVmError(`an MSR filter range covers 1 to ${KVM_MSR_FILTER_MAX_BITMAP_SIZE * 8} MSRs, got ${r.count}`);
      const bitmapFor = (allow: boolean) => allowBitmap(r.count, allow);
      if (r.allowRead === r.allowWrite) {
        kvmRanges.push({ flags: KVM_MSR_FILTER_READ | KVM_MSR_FILTER_WRITE, base: r.base, nmsrs: r.count, bitmap: bitmapFor(r.allowRead) });
      } else {
        kvmRanges.push({ flags: KVM_MSR_FILTER_READ, base: r.base, nmsrs: r.count, bitmap: bitmapFor(r.allowRead) });
        kvmRanges.push({ flags: KVM_MSR_FILTER_WRITE, base: r.base, nmsrs: r.count, bitmap: bitmapFor(r.allowWrite) });
      }
    }
    if (kvmRanges.length > KVM_MSR_FILTER_MAX_RANGES) throw new KvmVmError(`the MSR filter needs ${kvmRanges.length} KVM ranges; KVM takes at most ${KVM_MSR_FILTER_MAX_RANGES}`);
    // The struct points at the bitmaps, so they must be in native memory. KVM copies them
    // during the ioctl (memdup_user; test/kvm-layer.test.ts checks it), so one arena per VM
    // is reused by every call.
    this.msrBitmaps ??= mapArena(MSR_FILTER_ARENA_SIZE);
    const filter = encodeMsrFilter(defaultAllow ? KVM_MSR_FILTER_DEFAULT_ALLOW : KVM_MSR_FILTER_DEFAULT_DENY, kvmRanges, this.msrBitmaps);
    ioctlBuffer(this.fd, KVM_X86_SET_MSR_FILTER, filter);
  }

  /** Guest writes matching `spec` signal spec.fd inside the kernel, with no exit to userspace. */
  addIoeventfd(spec: IoeventfdSpec): void {
    ioctlBuffer(this.fd, KVM_IOEVENTFD, this.encodeIoeventfd(spec, 0));
  }

  /** Removes an ioeventfd; pass the same spec as to addIoeventfd. */
  removeIoeventfd(spec: IoeventfdSpec): void {
    ioctlBuffer(this.fd, KVM_IOEVENTFD, this.encodeIoeventfd(spec, KVM_IOEVENTFD_FLAG_DEASSIGN));
  }

  private encodeIoeventfd(spec: IoeventfdSpec, extraFlags: number): Uint8Array {
    if ((spec.port === undefined) === (spec.mmio === undefined)) throw new KvmVmError('an ioeventfd needs exactly one of port and mmio');
    if (![1, 2, 4, 8].includes(spec.length)) throw new KvmVmError(`ioeventfd length must be 1, 2, 4 or 8, got ${spec.length}`);
    let flags = extraFlags;
    let addr: bigint;
    if (spec.port !== undefined) {
      if (!Number.isInteger(spec.port) || spec.port < 0 || spec.port > 0xffff) throw new KvmVmError(`I/O port must be 0..0xffff, got ${spec.port}`);
      flags |= KVM_IOEVENTFD_FLAG_PIO;
      addr = BigInt(spec.port);
    } else {
      if (!Number.isSafeInteger(spec.mmio!) || spec.mmio! < 0) throw new KvmVmError(`MMIO address must be a non-negative integer, got ${spec.mmio}`);
      addr = BigInt(spec.mmio!);
    }
    if (spec.datamatch !== undefined) flags |= KVM_IOEVENTFD_FLAG_DATAMATCH;
    return encodeIoeventfd({ datamatch: spec.datamatch ?? 0n, addr, len: spec.length, fd: spec.fd, flags }, this.ioeventfdBuffer);
  }

  /**
   * Signalling eventfd `fd` raises GSI `gsi` (edge; with `resampleFd`, level-triggered:
   * KVM lowers the line on EOI and signals resampleFd so the source can re-assert it).
   */
  addIrqfd(gsi: number, fd: number, resampleFd?: number): void {
    const flags = resampleFd === undefined ? 0 : KVM_IRQFD_FLAG_RESAMPLE;
    ioctlBuffer(this.fd, KVM_IRQFD, encodeIrqfd({ fd, gsi, flags, resampleFd: resampleFd ?? 0 }, this.irqfdBuffer));
  }

  removeIrqfd(gsi: number, fd: number): void {
    ioctlBuffer(this.fd, KVM_IRQFD, encodeIrqfd({ fd, gsi, flags: KVM_IRQFD_FLAG_DEASSIGN }, this.irqfdBuffer));
  }

  /**
   * Replaces the whole GSI routing table. KVM's default table routes GSIs 0-23 to the
   * IOAPIC (and 0-15 to the PICs too); a table without those entries disconnects them, so
   * include defaultIrqchipRoutes() unless that is the intent.
   */
  setGsiRouting(entries: readonly (MsiRouteSpec | GsiRoute)[]): void {
    ioctlBuffer(this.fd, KVM_SET_GSI_ROUTING, encodeIrqRouting(entries));
  }

  /**
   * Delivers one MSI now (to the local APIC the address names). Returns KVM's answer: >0
   * delivered, 0 blocked by the guest (e.g. a masked or disabled APIC).
   */
  signalMsi(addressLo: number, addressHi: number, data: number): number {
    return ioctlBuffer(this.fd, KVM_SIGNAL_MSI, encodeMsi({ addressLo, addressHi, data }, this.msiBuffer));
  }

  /** Sets an irqchip input line (GSI) high or low. */
  irqLine(irq: number, level: boolean): void {
    ioctlBuffer(this.fd, KVM_IRQ_LINE, encodeIrqLevel(irq, level, this.irqLevel));
  }

  /** Creates vCPU `id` (its APIC ID); returns the fd, which this VM closes in close(). */
  createVcpu(id: number): number {
    const fd = ioctlInt(this.fd, KVM_CREATE_VCPU, id);
    this.vcpuFds.push(fd);
    return fd;
  }

  /** The guest TSC frequency in kHz, asked of one of this VM's vCPUs. */
  tscKhz(vcpuFd: number): number {
    return vcpuTscKhz(vcpuFd);
  }

  /**
   * Closes the vCPU fds and the VM fd. KVM frees the VM when the last reference goes:
   * a run area still mapped in some thread keeps its vCPU (and so the VM) alive until
   * that thread unmaps it.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const fd of this.vcpuFds) closeFd(fd);
    closeFd(this.fd);
    if (this.msrBitmaps !== null) munmap(this.msrBitmaps.address, this.msrBitmaps.bytes.byteLength);
    this.msrBitmaps = null;
  }
}

/**
 * KVM's default routing for an in-kernel irqchip: GSI n to IOAPIC pin n for 0-23, and
 * GSIs 0-15 also to the PIC pins (master 0-7, slave 8-15).
 */
export function defaultIrqchipRoutes(): GsiRoute[] {
  const routes: GsiRoute[] = [];
  for (let gsi = 0; gsi < IOAPIC_PINS; gsi++) {
    routes.push({ gsi, irqchip: { chip: KVM_IRQCHIP_IOAPIC, pin: gsi } });
    if (gsi < 16) routes.push({ gsi, irqchip: { chip: gsi < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE, pin: gsi % 8 } });
  }
  return routes;
}

// KVM_IRQ_LINE from a thread that has only the VM fd (a vCPU worker's UART raising its
// IRQ). One buffer per thread: each worker has its own instance of this module.
const irqLevelBuffer = new Uint8Array(IRQ_LEVEL_SIZE);

export function irqLineOnVm(vmFd: number, irq: number, level: boolean): void {
  ioctlBuffer(vmFd, KVM_IRQ_LINE, encodeIrqLevel(irq, level, irqLevelBuffer));
}

function allowBitmap(count: number, allow: boolean): Uint8Array {
  return new Uint8Array(Math.ceil(count / 8)).fill(allow ? 0xff : 0);
}

function mapArena(size: number): BitmapArena {
  const address = mapAnonymous(size);
  return { address, bytes: new Uint8Array(viewOf(address, size)) };
}
