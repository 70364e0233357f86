// One virtual processor, as its own worker thread drives it: the vCPU fd arrives as a
// number (fds are per process, so any thread may use it) and the thread maps the run area
// itself. The register ioctls reuse one buffer each; the exit loop itself reads exits and
// registers from the run area (sync regs) and costs one ioctl per exit.
import { ioctlBuffer, ioctlNone, ioctlRun } from '../sys/kvm-ioctl.js';
import { SysError } from '../sys/errors.js';
import { Errno } from '../sys/errors.js';
import { KICK_SIGNAL, signalThread } from '../sys/thread-signal.js';
import type { CpuidEntry, GeneralRegisters, SpecialRegisters } from '../x86/cpu-state.js';
import {
  FPU_SIZE, KVM_EXIT_INTR, KVM_GET_FPU, KVM_GET_MP_STATE, KVM_GET_MSRS, KVM_GET_REGS, KVM_GET_SREGS,
  KVM_GET_TSC_KHZ, KVM_MP_STATE_RUNNABLE, KVM_RUN, KVM_SET_CPUID2, KVM_SET_FPU, KVM_SET_MP_STATE, KVM_SET_MSRS,
  KVM_SET_REGS, KVM_SET_SREGS, KVM_SYNC_X86_EVENTS, KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS, MP_STATE_SIZE,
  REGS_SIZE, SREGS_SIZE,
} from './kvm-constants.js';
import { KvmRunArea } from './kvm-run-area.js';
import {
  decodeFpuControl, decodeMsrs, decodeRegs, decodeSregs, encodeCpuid2, encodeFpuDefaults, encodeMsrs, encodeRegs,
  encodeSregs, type MsrEntry,
} from './kvm-structs.js';

export { KvmRunArea } from './kvm-run-area.js';

export class KvmVcpuError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KvmVcpuError';
  }
}

export class KvmVcpu {
  readonly fd: number;
  readonly runArea: KvmRunArea;
  private readonly regsBuffer = new Uint8Array(REGS_SIZE);
  private readonly sregsBuffer = new Uint8Array(SREGS_SIZE);
  private readonly mpStateBuffer = new Uint8Array(MP_STATE_SIZE);

  private constructor(fd: number, runArea: KvmRunArea) {
    this.fd = fd;
    this.runArea = runArea;
  }

  /** Wraps a vCPU fd created by KvmVm.createVcpu (in any thread) and maps its run area here. */
  static fromFd(fd: number, mmapSize: number): KvmVcpu {
    return new KvmVcpu(fd, KvmRunArea.map(fd, mmapSize));
  }

  /**
   * Runs the guest until its next exit; returns kvm_run.exit_reason, or KVM_EXIT_INTR when
   * KVM_RUN was interrupted (a kick, or immediate_exit set). immediate_exit stays as it
   * is: the caller clears it when it decides to go on running.
   */
  run(): number {
    const result = ioctlRun(this.fd, KVM_RUN);
    if (result < 0) return KVM_EXIT_INTR;
    return this.runArea.exitReason;
  }

  getRegs(): GeneralRegisters {
    ioctlBuffer(this.fd, KVM_GET_REGS, this.regsBuffer);
    return decodeRegs(this.regsBuffer);
  }

  setRegs(regs: GeneralRegisters): void {
    ioctlBuffer(this.fd, KVM_SET_REGS, encodeRegs(regs, this.regsBuffer));
  }

  getSregs(): SpecialRegisters {
    ioctlBuffer(this.fd, KVM_GET_SREGS, this.sregsBuffer);
    return decodeSregs(this.sregsBuffer);
  }

  setSregs(sregs: SpecialRegisters): void {
    ioctlBuffer(this.fd, KVM_SET_SREGS, encodeSregs(sregs, this.sregsBuffer));
  }

  /** What CPUID answers in the guest (KVM_SET_CPUID2): must precede the first KVM_RUN. */
  setCpuid(entries: readonly CpuidEntry[]): void {
    ioctlBuffer(this.fd, KVM_SET_CPUID2, encodeCpuid2(entries));
  }

  /** Reads MSRs through KVM; throws naming the first MSR KVM would not read. */
  getMsrs(indices: readonly number[]): bigint[] {
    const buf = encodeMsrs(indices.map((index) => ({ index, value: 0n })));
    const done = ioctlBuffer(this.fd, KVM_GET_MSRS, buf);
    if (done < indices.length) throw new KvmVcpuError(`KVM_GET_MSRS read ${done} of ${indices.length} MSRs: MSR 0x${indices[done]!.toString(16)} is not readable`);
    return decodeMsrs(buf).map((e) => e.value);
  }

  /** Writes MSRs through KVM (host-initiated: filters do not apply); throws naming the first refused. */
  setMsrs(entries: readonly MsrEntry[]): void {
    const done = ioctlBuffer(this.fd, KVM_SET_MSRS, encodeMsrs(entries));
    if (done < entries.length) throw new KvmVcpuError(`KVM_SET_MSRS wrote ${done} of ${entries.length} MSRs: MSR 0x${entries[done]!.index.toString(16)} refused 0x${entries[done]!.value.toString(16)}`);
  }

  /** x87/SSE state as after reset (FCW 0x37f, MXCSR 0x1f80), not KVM's all-zero default. */
  setFpuDefaults(): void {
    ioctlBuffer(this.fd, KVM_SET_FPU, encodeFpuDefaults());
  }

  getFpuControl(): { fcw: number; mxcsr: number } {
    const buf = new Uint8Array(FPU_SIZE);
    ioctlBuffer(this.fd, KVM_GET_FPU, buf);
    return decodeFpuControl(buf);
  }

  /**
   * Has KVM copy the general registers, special registers and events into the run area on
   * every exit (KVM_CAP_SYNC_REGS), so the exit loop reads them without KVM_GET_REGS.
   */
  enableSyncRegs(): void {
    this.runArea.validRegs = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS;
  }

  /** kvm_mp_state.mp_state (KVM_MP_STATE_*). */
  getMpState(): number {
    ioctlBuffer(this.fd, KVM_GET_MP_STATE, this.mpStateBuffer);
    return new DataView(this.mpStateBuffer.buffer).getUint32(0, true);
  }

  /**
   * Makes an application processor runnable at once (with the in-kernel irqchip it would
   * otherwise wait for INIT/SIPI); its entry state comes from setRegs/setSregs.
   */
  setMpStateRunnable(): void {
    new DataView(this.mpStateBuffer.buffer).setUint32(0, KVM_MP_STATE_RUNNABLE, true);
    ioctlBuffer(this.fd, KVM_SET_MP_STATE, this.mpStateBuffer);
  }

  /** The guest TSC frequency in kHz (KVM_GET_TSC_KHZ). */
  tscKhz(): number {
    return vcpuTscKhz(this.fd);
  }

  /** Unmaps the run area in this thread. The fd belongs to the VM (KvmVm.close closes it). */
  close(): void {
    this.runArea.unmap();
  }
}

export function vcpuTscKhz(vcpuFd: number): number {
  return ioctlNone(vcpuFd, KVM_GET_TSC_KHZ);
}

/**
 * Makes a vCPU thread leave KVM_RUN, from any other thread: immediate_exit catches a
 * thread that is about to enter KVM_RUN, the signal one already inside it. The signal
 * needs installKickHandler() (thread-signal.ts) done first, or it kills the process.
 * Returns false when the thread no longer exists (it already stopped).
 */
export function kickVcpu(runArea: KvmRunArea, tid: number): boolean {
  runArea.immediateExit = 1;
  try {
    signalThread(tid, KICK_SIGNAL);
  } catch (e) {
    if (e instanceof SysError && e.errno === Errno.ESRCH) return false;
    throw e;
  }
  return true;
}

/** Same as kickVcpu. */
export const kick = kickVcpu;
