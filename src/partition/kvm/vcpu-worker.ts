// One virtual processor: a worker thread looping on KVM_RUN. Exits that only need this
// vCPU (port I/O to the UART, the ACPI sleep and reset registers, the test port) are
// handled here; synthetic MSRs and slow hypercalls go to the main thread through the
// mailbox. A guest HvSignalEvent never gets here: an ioeventfd takes it in the kernel.
import { parentPort, workerData } from 'node:worker_threads';
import { KvmVcpu } from '../../kvm/kvm-vcpu.js';
import { KvmExit, MsrExitReason } from '../../kvm/kvm-constants.js';
import { irqLineOnVm } from '../../kvm/kvm-vm.js';
import { currentThreadId } from '../../sys/thread-signal.js';
import { EventFd } from '../../sys/eventfd.js';
import { Uart16550 } from '../../x86/uart-16550.js';
import { HypercallRegisters } from '../../hyperv/hypercall-page.js';
import { HvStatus } from '../../hyperv/hv-status.js';
import {
  ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_S5_SLEEP_TYPE, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT,
  COM1_IRQ, COM1_PORT, HYPERCALL_PORT, SIGNAL_PORT, TEST_REPORT_PORT, UART_PORT_COUNT,
} from '../../x86/platform-ports.js';
import { ConsoleRing } from './console-ring.js';
import { ExitCounter, VcpuExitStats } from './vcpu-exit-stats.js';
import { VcpuMailbox, VcpuRequestOp } from './vcpu-mailbox.js';
import { CONTROL_STOP, type VcpuMessage, type VcpuStopReason, type VcpuWorkerData } from './vcpu-worker-data.js';
import { formatRegisterDump } from './register-dump.js';
import { CMOS_DATA_PORT, CMOS_INDEX_PORT, CmosRtc } from '../../x86/cmos-rtc.js';

const SYNTHETIC_MSR_FIRST = 0x40000000;
const SYNTHETIC_MSR_LAST = 0x400001ff;
const KVM_EXIT_IO_IN = 0;
const SLP_EN = 1 << 5;
const MSR_IA32_TSC = 0x10;

const data = workerData as VcpuWorkerData;
const vp = data.vp;
const post = (message: VcpuMessage) => parentPort!.postMessage(message);
const vcpu = KvmVcpu.fromFd(data.vcpuFd, data.runAreaSize);
const run = vcpu.runArea;
const mailbox = new VcpuMailbox(data.mailbox);
const doorbell = EventFd.fromFd(data.doorbellFd);
const ring = () => doorbell.signal();
const stats = new VcpuExitStats(data.stats);
const control = new Int32Array(data.control);
const consoleRing = new ConsoleRing(data.console);
const consoleBell = EventFd.fromFd(data.consoleFd);
const uart = new Uart16550(data.uartState, {
  transmit: (byte) => {
    consoleRing.put(byte);
    consoleBell.signal();
  },
  setIrq: (level) => irqLineOnVm(data.vmFd, COM1_IRQ, level),
});

const rtc = new CmosRtc();

function setUp(): void {
  vcpu.setCpuid(data.cpuid);
  vcpu.setFpuDefaults();
  if (data.boot) {
    vcpu.setSregs(data.boot.sregs);
    vcpu.setRegs(data.boot.regs);
    // An application processor given its own entry state runs at once instead of waiting for INIT/SIPI.
    if (vp !== 0) vcpu.setMpStateRunnable();
  }
  vcpu.enableSyncRegs();
}

/** Runs the guest until it stops; returns why. */
function loop(): { reason: VcpuStopReason; detail: string } {
  for (;;) {
    if (Atomics.load(control, CONTROL_STOP) !== 0) return { reason: 'stopped', detail: `vCPU ${vp} stopped by the host at\n${dump()}` };
    const exit = vcpu.run();
    stats.count(vp, ExitCounter.Total);
    switch (exit) {
      case KvmExit.Io: {
        stats.count(vp, ExitCounter.Io);
        const stop = onIo();
        if (stop) return stop;
        break;
      }
      case KvmExit.Mmio:
        stats.count(vp, ExitCounter.Mmio);
        onMmio();
        break;
      case KvmExit.X86Rdmsr:
      case KvmExit.X86Wrmsr:
        stats.count(vp, ExitCounter.Msr);
        onMsr(exit === KvmExit.X86Wrmsr);
        break;
      case KvmExit.Hlt:
        stats.count(vp, ExitCounter.Halt);
        if (data.stopOnHalt) return { reason: 'halt', detail: 'the guest halted' };
        break;
      case KvmExit.Intr:
        stats.count(vp, ExitCounter.Interrupted);
        run.immediateExit = 0;
        break;
      case KvmExit.Shutdown:
        return { reason: 'triple-fault', detail: `vCPU ${vp}: triple fault (the guest reset itself after an unhandled exception)\n${dump()}` };
      case KvmExit.InternalError:
        return { reason: 'internal-error', detail: `vCPU ${vp}: KVM internal error, suberror ${run.internalError.suberror}\n${dump()}` };
      case KvmExit.FailEntry:
        return { reason: 'entry-failure', detail: `vCPU ${vp}: KVM could not enter the guest (hardware reason 0x${run.failEntry.hardwareEntryFailureReason.toString(16)})\n${dump()}` };
      case KvmExit.SystemEvent:
        return { reason: 'poweroff', detail: `vCPU ${vp}: system event ${run.systemEvent.type}` };
      default:
        return { reason: 'internal-error', detail: `vCPU ${vp}: unexpected KVM exit ${exit}\n${dump()}` };
    }
  }
}

function onIo(): { reason: VcpuStopReason; detail: string } | null {
  const io = run.io;
  const bytes = run.ioData();
  const isIn = io.direction === KVM_EXIT_IO_IN;
  const port = io.port;
  if (port >= COM1_PORT && port < COM1_PORT + UART_PORT_COUNT) {
    stats.count(vp, ExitCounter.Uart);
    // String I/O (rep outsb) arrives as `count` items of `size` bytes.
    for (let i = 0; i < io.count; i++) {
      if (isIn) bytes.setUint8(i * io.size, uart.read(port - COM1_PORT));
      else uart.write(port - COM1_PORT, bytes.getUint8(i * io.size));
    }
    return null;
  }
  if (port === CMOS_INDEX_PORT || port === CMOS_DATA_PORT) {
    if (port === CMOS_INDEX_PORT && !isIn) rtc.selectRegister(bytes.getUint8(0));
    else if (port === CMOS_DATA_PORT && isIn) bytes.setUint8(0, rtc.read());
    return null;
  }
  if (!isIn) {
    const value = readValue(bytes, io.size);
    switch (port) {
      case HYPERCALL_PORT: {
        stats.count(vp, ExitCounter.Hypercall);
        const regs = run.syncRegs;
        const answer = mailbox.call(vp, VcpuRequestOp.Hypercall, 0, regs[REG[HypercallRegisters.control]]!, regs[REG[HypercallRegisters.input]]!, regs[REG[HypercallRegisters.output]]!, ring);
        regs[REG[HypercallRegisters.result]] = answer.result;
        run.markRegsDirty();
        return null;
      }
      case SIGNAL_PORT:
        // No ioeventfd matched this connection id, so no channel has it.
        stats.count(vp, ExitCounter.UnmatchedSignal);
        run.syncRegs[REG[HypercallRegisters.unmatchedSignalStatus]] = BigInt(HvStatus.InvalidConnectionId);
        run.markRegsDirty();
        return null;
      case TEST_REPORT_PORT:
        post({ type: 'test-report', vp, value });
        return null;
      case ACPI_SLEEP_CONTROL_PORT:
        if ((value & SLP_EN) !== 0 && ((value >> 2) & 7) === ACPI_S5_SLEEP_TYPE) return { reason: 'poweroff', detail: 'the guest powered off (ACPI S5)' };
        return null;
      case ACPI_RESET_PORT:
        if (value === ACPI_RESET_VALUE) return { reason: 'reboot', detail: 'the guest asked for a reset (ACPI reset register)' };
        return null;
    }
  } else if (port === ACPI_SLEEP_STATUS_PORT) {
    // WAK_STS (bit 7) set: the platform is awake.
    fill(bytes, io.size * io.count, 0);
    bytes.setUint8(0, 0x80);
    return null;
  }
  // Nothing lives here: reads float high as on a PC bus, writes are dropped.
  stats.count(vp, ExitCounter.OtherPort);
  if (isIn) fill(bytes, io.size * io.count, 0xff);
  return null;
}

function onMmio(): void {
  // No emulated MMIO devices: reads float high, writes are dropped.
  const mmio = run.mmio;
  if (!mmio.isWrite) for (let i = 0; i < mmio.len; i++) mmio.data.setUint8(i, 0xff);
}

function onMsr(isWrite: boolean): void {
  const msr = run.msr;
  const index = msr.index;
  if (msr.reason !== MsrExitReason.Filter || index < SYNTHETIC_MSR_FIRST || index > SYNTHETIC_MSR_LAST) {
    // An MSR neither KVM nor we implement: #GP, as real hardware does.
    msr.error = 1;
    return;
  }
  const answer = isWrite
    ? mailbox.call(vp, VcpuRequestOp.WriteMsr, index, msr.data, 0n, 0n, ring)
    : mailbox.call(vp, VcpuRequestOp.ReadMsr, index, 0n, 0n, 0n, ring);
  msr.error = answer.fault ? 1 : 0;
  if (!isWrite && !answer.fault) msr.data = answer.result;
}

function readValue(bytes: DataView, size: number): number {
  if (size === 1) return bytes.getUint8(0);
  if (size === 2) return bytes.getUint16(0, true);
  return bytes.getUint32(0, true);
}

function fill(bytes: DataView, length: number, value: number): void {
  for (let i = 0; i < length && i < bytes.byteLength; i++) bytes.setUint8(i, value);
}

function dump(): string {
  try {
    return formatRegisterDump(vcpu.getRegs(), vcpu.getSregs());
  } catch (e) {
    return `(registers unavailable: ${(e as Error).message})`;
  }
}

/** Index into the sync-regs array (kvm_regs order). */
const REG: Record<string, number> = {
  rax: 0, rbx: 1, rcx: 2, rdx: 3, rsi: 4, rdi: 5, rsp: 6, rbp: 7,
  r8: 8, r9: 9, r10: 10, r11: 11, r12: 12, r13: 13, r14: 14, r15: 15, rip: 16, rflags: 17,
};

let result: { reason: VcpuStopReason; detail: string };
try {
  setUp();
  // The guest TSC now, with the host clock: the main thread's reference clock follows it.
  const [tsc] = vcpu.getMsrs([MSR_IA32_TSC]);
  post({ type: 'started', vp, tid: currentThreadId(), tsc: tsc!, atNs: process.hrtime.bigint() });
  result = loop();
} catch (e) {
  result = { reason: 'crash', detail: `vCPU ${vp}: ${(e as Error).stack ?? e}` };
}
post({ type: 'stopped', vp, reason: result.reason, detail: result.detail });
