// The numbers of the KVM API (x86-64), from include/uapi/linux/kvm.h and
// arch/x86/include/uapi/asm/kvm.h. Request numbers are computed from the same _IO/_IOR/
// _IOW/_IOWR encoding the header uses, so the struct sizes in them are checked at a glance
// against kvm-structs.ts.
import { nameRequest } from '../sys/kvm-ioctl.js';

// --- struct sizes (x86-64) that the request numbers encode; kvm-structs.ts lays them out.
export const REGS_SIZE = 144;
export const SREGS_SIZE = 312;
export const SEGMENT_SIZE = 24;
export const DTABLE_SIZE = 16;
export const FPU_SIZE = 416;
export const CPUID2_HEADER_SIZE = 8;
export const CPUID_ENTRY2_SIZE = 40;
export const MSRS_HEADER_SIZE = 8;
export const MSR_ENTRY_SIZE = 16;
export const USERSPACE_MEMORY_REGION_SIZE = 32;
export const IOEVENTFD_SIZE = 64;
export const IRQFD_SIZE = 32;
export const MSI_SIZE = 32;
export const IRQ_LEVEL_SIZE = 8;
export const ENABLE_CAP_SIZE = 104;
export const PIT_CONFIG_SIZE = 64;
export const MSR_FILTER_RANGE_SIZE = 24;
export const MSR_FILTER_SIZE = 8 + 16 * MSR_FILTER_RANGE_SIZE;
export const IRQ_ROUTING_HEADER_SIZE = 8;
export const IRQ_ROUTING_ENTRY_SIZE = 48;
export const MP_STATE_SIZE = 4;

const KVMIO = 0xae;
const IOC_NONE = 0;
const IOC_WRITE = 1;
const IOC_READ = 2;

function ioc(dir: number, nr: number, size: number): number {
  // dir:2 | size:14 | type:8 | nr:8, as an unsigned 32-bit number.
  return ((dir << 30) | (size << 16) | (KVMIO << 8) | nr) >>> 0;
}
const io = (nr: number): number => ioc(IOC_NONE, nr, 0);
const ior = (nr: number, size: number): number => ioc(IOC_READ, nr, size);
const iow = (nr: number, size: number): number => ioc(IOC_WRITE, nr, size);
const iowr = (nr: number, size: number): number => ioc(IOC_READ | IOC_WRITE, nr, size);

/** The only KVM API version there has ever been; anything else is not KVM as we know it. */
export const KVM_API_VERSION = 12;

// --- ioctls on /dev/kvm
export const KVM_GET_API_VERSION = io(0x00);
export const KVM_CREATE_VM = io(0x01);
export const KVM_CHECK_EXTENSION = io(0x03);
export const KVM_GET_VCPU_MMAP_SIZE = io(0x04);
export const KVM_GET_SUPPORTED_CPUID = iowr(0x05, CPUID2_HEADER_SIZE);

// --- ioctls on a VM
export const KVM_CREATE_VCPU = io(0x41);
export const KVM_SET_USER_MEMORY_REGION = iow(0x46, USERSPACE_MEMORY_REGION_SIZE);
export const KVM_SET_TSS_ADDR = io(0x47);
export const KVM_SET_IDENTITY_MAP_ADDR = iow(0x48, 8);
export const KVM_CREATE_IRQCHIP = io(0x60);
export const KVM_IRQ_LINE = iow(0x61, IRQ_LEVEL_SIZE);
export const KVM_SET_GSI_ROUTING = iow(0x6a, IRQ_ROUTING_HEADER_SIZE);
export const KVM_IRQFD = iow(0x76, IRQFD_SIZE);
export const KVM_CREATE_PIT2 = iow(0x77, PIT_CONFIG_SIZE);
export const KVM_IOEVENTFD = iow(0x79, IOEVENTFD_SIZE);
export const KVM_ENABLE_CAP = iow(0xa3, ENABLE_CAP_SIZE);
export const KVM_SIGNAL_MSI = iow(0xa5, MSI_SIZE);
export const KVM_X86_SET_MSR_FILTER = iow(0xc6, MSR_FILTER_SIZE);

// --- ioctls on a vCPU
export const KVM_RUN = io(0x80);
export const KVM_GET_REGS = ior(0x81, REGS_SIZE);
export const KVM_SET_REGS = iow(0x82, REGS_SIZE);
export const KVM_GET_SREGS = ior(0x83, SREGS_SIZE);
export const KVM_SET_SREGS = iow(0x84, SREGS_SIZE);
export const KVM_GET_MSRS = iowr(0x88, MSRS_HEADER_SIZE);
export const KVM_SET_MSRS = iow(0x89, MSRS_HEADER_SIZE);
export const KVM_GET_FPU = ior(0x8c, FPU_SIZE);
export const KVM_SET_FPU = iow(0x8d, FPU_SIZE);
export const KVM_SET_CPUID2 = iow(0x90, CPUID2_HEADER_SIZE);
export const KVM_GET_MP_STATE = ior(0x98, MP_STATE_SIZE);
export const KVM_SET_MP_STATE = iow(0x99, MP_STATE_SIZE);
export const KVM_GET_TSC_KHZ = io(0xa3);

const requestNames: Record<string, number> = {
  KVM_GET_API_VERSION, KVM_CREATE_VM, KVM_CHECK_EXTENSION, KVM_GET_VCPU_MMAP_SIZE, KVM_GET_SUPPORTED_CPUID,
  KVM_CREATE_VCPU, KVM_SET_USER_MEMORY_REGION, KVM_SET_TSS_ADDR, KVM_SET_IDENTITY_MAP_ADDR, KVM_CREATE_IRQCHIP,
  KVM_IRQ_LINE, KVM_SET_GSI_ROUTING, KVM_IRQFD, KVM_CREATE_PIT2, KVM_IOEVENTFD, KVM_ENABLE_CAP, KVM_SIGNAL_MSI,
  KVM_X86_SET_MSR_FILTER, KVM_RUN, KVM_GET_REGS, KVM_SET_REGS, KVM_GET_SREGS, KVM_SET_SREGS, KVM_GET_MSRS,
  KVM_SET_MSRS, KVM_GET_FPU, KVM_SET_FPU, KVM_SET_CPUID2, KVM_GET_MP_STATE, KVM_SET_MP_STATE, KVM_GET_TSC_KHZ,
};
for (const [name, request] of Object.entries(requestNames)) nameRequest(request, name);

// --- exit reasons (kvm_run.exit_reason)
export const KVM_EXIT_UNKNOWN = 0;
export const KVM_EXIT_EXCEPTION = 1;
export const KVM_EXIT_IO = 2;
export const KVM_EXIT_HYPERCALL = 3;
export const KVM_EXIT_DEBUG = 4;
export const KVM_EXIT_HLT = 5;
export const KVM_EXIT_MMIO = 6;
export const KVM_EXIT_IRQ_WINDOW_OPEN = 7;
export const KVM_EXIT_SHUTDOWN = 8;
export const KVM_EXIT_FAIL_ENTRY = 9;
/** KVM_RUN was interrupted (a kick); also what KvmVcpu.run() returns for EINTR. */
export const KVM_EXIT_INTR = 10;
export const KVM_EXIT_NMI = 16;
export const KVM_EXIT_INTERNAL_ERROR = 17;
export const KVM_EXIT_SYSTEM_EVENT = 24;
export const KVM_EXIT_IOAPIC_EOI = 26;
export const KVM_EXIT_HYPERV = 27;
export const KVM_EXIT_X86_RDMSR = 29;
export const KVM_EXIT_X86_WRMSR = 30;
export const KVM_EXIT_DIRTY_RING_FULL = 31;
export const KVM_EXIT_X86_BUS_LOCK = 33;
export const KVM_EXIT_NOTIFY = 37;

const exitNames = new Map<number, string>([
  [KVM_EXIT_UNKNOWN, 'UNKNOWN'], [KVM_EXIT_EXCEPTION, 'EXCEPTION'], [KVM_EXIT_IO, 'IO'],
  [KVM_EXIT_HYPERCALL, 'HYPERCALL'], [KVM_EXIT_DEBUG, 'DEBUG'], [KVM_EXIT_HLT, 'HLT'], [KVM_EXIT_MMIO, 'MMIO'],
  [KVM_EXIT_IRQ_WINDOW_OPEN, 'IRQ_WINDOW_OPEN'], [KVM_EXIT_SHUTDOWN, 'SHUTDOWN'], [KVM_EXIT_FAIL_ENTRY, 'FAIL_ENTRY'],
  [KVM_EXIT_INTR, 'INTR'], [KVM_EXIT_NMI, 'NMI'], [KVM_EXIT_INTERNAL_ERROR, 'INTERNAL_ERROR'],
  [KVM_EXIT_SYSTEM_EVENT, 'SYSTEM_EVENT'], [KVM_EXIT_IOAPIC_EOI, 'IOAPIC_EOI'], [KVM_EXIT_HYPERV, 'HYPERV'],
  [KVM_EXIT_X86_RDMSR, 'X86_RDMSR'], [KVM_EXIT_X86_WRMSR, 'X86_WRMSR'], [KVM_EXIT_DIRTY_RING_FULL, 'DIRTY_RING_FULL'],
  [KVM_EXIT_X86_BUS_LOCK, 'X86_BUS_LOCK'], [KVM_EXIT_NOTIFY, 'NOTIFY'],
]);

/** "KVM_EXIT_IO (2)", for messages and register dumps. */
export function exitReasonName(reason: number): string {
  return `KVM_EXIT_${exitNames.get(reason) ?? 'UNRECOGNISED'} (${reason})`;
}

/** kvm_run.io.direction */
export const KVM_EXIT_IO_IN = 0;
export const KVM_EXIT_IO_OUT = 1;

/** kvm_run.internal.suberror */
export const KVM_INTERNAL_ERROR_EMULATION = 1;
export const KVM_INTERNAL_ERROR_SIMUL_EX = 2;
export const KVM_INTERNAL_ERROR_DELIVERY_EV = 3;
export const KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4;

/** kvm_run.system_event.type */
export const KVM_SYSTEM_EVENT_SHUTDOWN = 1;
export const KVM_SYSTEM_EVENT_RESET = 2;
export const KVM_SYSTEM_EVENT_CRASH = 3;

// --- capabilities (KVM_CHECK_EXTENSION, KVM_ENABLE_CAP)
export const KVM_CAP_IRQCHIP = 0;
export const KVM_CAP_HLT = 1;
export const KVM_CAP_USER_MEMORY = 3;
export const KVM_CAP_SET_TSS_ADDR = 4;
export const KVM_CAP_EXT_CPUID = 7;
export const KVM_CAP_NR_VCPUS = 9;
export const KVM_CAP_NR_MEMSLOTS = 10;
export const KVM_CAP_MP_STATE = 14;
export const KVM_CAP_IRQ_ROUTING = 25;
export const KVM_CAP_IRQFD = 32;
export const KVM_CAP_PIT2 = 33;
export const KVM_CAP_IOEVENTFD = 36;
export const KVM_CAP_SET_IDENTITY_MAP_ADDR = 37;
export const KVM_CAP_ADJUST_CLOCK = 39;
export const KVM_CAP_VCPU_EVENTS = 41;
export const KVM_CAP_HYPERV = 44;
export const KVM_CAP_DEBUGREGS = 50;
export const KVM_CAP_XSAVE = 55;
export const KVM_CAP_XCRS = 56;
export const KVM_CAP_TSC_CONTROL = 60;
export const KVM_CAP_GET_TSC_KHZ = 61;
export const KVM_CAP_MAX_VCPUS = 66;
export const KVM_CAP_TSC_DEADLINE_TIMER = 72;
export const KVM_CAP_SYNC_REGS = 74;
export const KVM_CAP_SIGNAL_MSI = 77;
export const KVM_CAP_READONLY_MEM = 81;
export const KVM_CAP_IRQFD_RESAMPLE = 82;
export const KVM_CAP_ENABLE_CAP_VM = 98;
export const KVM_CAP_CHECK_EXTENSION_VM = 105;
export const KVM_CAP_SPLIT_IRQCHIP = 121;
export const KVM_CAP_IOEVENTFD_ANY_LENGTH = 122;
export const KVM_CAP_HYPERV_SYNIC = 123;
export const KVM_CAP_MAX_VCPU_ID = 128;
export const KVM_CAP_X2APIC_API = 129;
export const KVM_CAP_IMMEDIATE_EXIT = 136;
export const KVM_CAP_X86_DISABLE_EXITS = 143;
export const KVM_CAP_X86_USER_SPACE_MSR = 188;
export const KVM_CAP_X86_MSR_FILTER = 189;
export const KVM_CAP_ENFORCE_PV_FEATURE_CPUID = 190;
export const KVM_CAP_X86_BUS_LOCK_EXIT = 193;
export const KVM_CAP_EXIT_HYPERCALL = 201;

// --- userspace MSR exits (KVM_CAP_X86_USER_SPACE_MSR args[0], kvm_run.msr.reason)
/** The access would have raised #GP (KVM knows the MSR but rejects the value). */
export const KVM_MSR_EXIT_REASON_INVAL = 1 << 0;
/** KVM does not know the MSR. */
export const KVM_MSR_EXIT_REASON_UNKNOWN = 1 << 1;
/** The MSR filter denied the access. */
export const KVM_MSR_EXIT_REASON_FILTER = 1 << 2;

// --- MSR filter (kvm_msr_filter)
export const KVM_MSR_FILTER_READ = 1 << 0;
export const KVM_MSR_FILTER_WRITE = 1 << 1;
export const KVM_MSR_FILTER_DEFAULT_ALLOW = 0;
export const KVM_MSR_FILTER_DEFAULT_DENY = 1 << 0;
export const KVM_MSR_FILTER_MAX_RANGES = 16;
/** Largest bitmap one range may carry (bytes): 12,288 MSRs. */
export const KVM_MSR_FILTER_MAX_BITMAP_SIZE = 0x600;

// --- ioeventfd, irqfd, routing, memory slots
export const KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0;
export const KVM_IOEVENTFD_FLAG_PIO = 1 << 1;
export const KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2;
export const KVM_IRQFD_FLAG_DEASSIGN = 1 << 0;
export const KVM_IRQFD_FLAG_RESAMPLE = 1 << 1;
export const KVM_IRQ_ROUTING_IRQCHIP = 1;
export const KVM_IRQ_ROUTING_MSI = 2;
export const KVM_IRQCHIP_PIC_MASTER = 0;
export const KVM_IRQCHIP_PIC_SLAVE = 1;
export const KVM_IRQCHIP_IOAPIC = 2;
export const KVM_MEM_LOG_DIRTY_PAGES = 1 << 0;
export const KVM_MEM_READONLY = 1 << 1;
export const KVM_PIT_SPEAKER_DUMMY = 1;

// --- sync regs (kvm_run.kvm_valid_regs / kvm_dirty_regs)
export const KVM_SYNC_X86_REGS = 1 << 0;
export const KVM_SYNC_X86_SREGS = 1 << 1;
export const KVM_SYNC_X86_EVENTS = 1 << 2;

/** kvm_cpuid_entry2.flags: the subleaf (index) selects the entry. */
export const KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0;

/** kvm_mp_state.mp_state */
export const KVM_MP_STATE_RUNNABLE = 0;
export const KVM_MP_STATE_UNINITIALIZED = 1;
export const KVM_MP_STATE_INIT_RECEIVED = 2;
export const KVM_MP_STATE_HALTED = 3;

// The same numbers grouped by use, for `switch (exit) { case KvmExit.Io: ... }`.

export const KvmExit = {
  Unknown: KVM_EXIT_UNKNOWN,
  Exception: KVM_EXIT_EXCEPTION,
  Io: KVM_EXIT_IO,
  Hypercall: KVM_EXIT_HYPERCALL,
  Debug: KVM_EXIT_DEBUG,
  Hlt: KVM_EXIT_HLT,
  Mmio: KVM_EXIT_MMIO,
  IrqWindowOpen: KVM_EXIT_IRQ_WINDOW_OPEN,
  Shutdown: KVM_EXIT_SHUTDOWN,
  FailEntry: KVM_EXIT_FAIL_ENTRY,
  Intr: KVM_EXIT_INTR,
  Nmi: KVM_EXIT_NMI,
  InternalError: KVM_EXIT_INTERNAL_ERROR,
  SystemEvent: KVM_EXIT_SYSTEM_EVENT,
  IoapicEoi: KVM_EXIT_IOAPIC_EOI,
  Hyperv: KVM_EXIT_HYPERV,
  X86Rdmsr: KVM_EXIT_X86_RDMSR,
  X86Wrmsr: KVM_EXIT_X86_WRMSR,
  DirtyRingFull: KVM_EXIT_DIRTY_RING_FULL,
  X86BusLock: KVM_EXIT_X86_BUS_LOCK,
  Notify: KVM_EXIT_NOTIFY,
} as const;

export const KvmCap = {
  Irqchip: KVM_CAP_IRQCHIP,
  Hlt: KVM_CAP_HLT,
  UserMemory: KVM_CAP_USER_MEMORY,
  SetTssAddr: KVM_CAP_SET_TSS_ADDR,
  NrVcpus: KVM_CAP_NR_VCPUS,
  NrMemslots: KVM_CAP_NR_MEMSLOTS,
  IrqRouting: KVM_CAP_IRQ_ROUTING,
  Irqfd: KVM_CAP_IRQFD,
  Pit2: KVM_CAP_PIT2,
  Ioeventfd: KVM_CAP_IOEVENTFD,
  SetIdentityMapAddr: KVM_CAP_SET_IDENTITY_MAP_ADDR,
  GetTscKhz: KVM_CAP_GET_TSC_KHZ,
  MaxVcpus: KVM_CAP_MAX_VCPUS,
  SyncRegs: KVM_CAP_SYNC_REGS,
  SignalMsi: KVM_CAP_SIGNAL_MSI,
  IrqfdResample: KVM_CAP_IRQFD_RESAMPLE,
  ImmediateExit: KVM_CAP_IMMEDIATE_EXIT,
  X86UserSpaceMsr: KVM_CAP_X86_USER_SPACE_MSR,
  X86MsrFilter: KVM_CAP_X86_MSR_FILTER,
} as const;

export const MsrExitReason = {
  Inval: KVM_MSR_EXIT_REASON_INVAL,
  Unknown: KVM_MSR_EXIT_REASON_UNKNOWN,
  Filter: KVM_MSR_EXIT_REASON_FILTER,
} as const;
