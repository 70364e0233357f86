// What the main thread hands each vCPU thread: numbers and shared buffers only (views of
// native memory cannot cross threads; every thread maps what it needs itself).
import type { CpuidEntry, GeneralRegisters, SpecialRegisters } from '../../x86/cpu-state.js';

export interface VcpuBootState {
  regs: GeneralRegisters;
  sregs: SpecialRegisters;
}

export interface VcpuWorkerData {
  vp: number;
  vcpuFd: number;
  vmFd: number;
  runAreaSize: number;
  cpuid: CpuidEntry[];
  /** The bootstrap processor's entry state; null for application processors (they wait for INIT/SIPI). */
  boot: VcpuBootState | null;
  mailbox: SharedArrayBuffer;
  doorbellFd: number;
  stats: SharedArrayBuffer;
  /** Int32 word 0: non-zero once the VM is stopping. */
  control: SharedArrayBuffer;
  uartState: SharedArrayBuffer;
  console: SharedArrayBuffer;
  consoleFd: number;
  /** HLT ends this vCPU (in-guest test stubs); a real guest's HLT never reaches userspace. */
  stopOnHalt: boolean;
}

/** Messages a vCPU thread posts to the main thread (rare: lifecycle and test reports). */
export type VcpuMessage =
  | { type: 'started'; vp: number; tid: number; tsc: bigint; atNs: bigint }
  | { type: 'test-report'; vp: number; value: number }
  | { type: 'stopped'; vp: number; reason: VcpuStopReason; detail: string };

export type VcpuStopReason = 'poweroff' | 'reboot' | 'halt' | 'stopped' | 'triple-fault' | 'internal-error' | 'entry-failure' | 'crash';

export const CONTROL_STOP = 0;
