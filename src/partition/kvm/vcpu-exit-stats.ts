// Per-vCPU exit counters in shared memory: the vCPU threads count, the main thread (inspect,
// tests) reads. They prove the data path claims, e.g. that a guest's HvSignalEvent is taken
// by an ioeventfd and never reaches userspace.

export const ExitCounter = {
  Total: 0,
  Io: 1,
  Mmio: 2,
  Msr: 3,
  /** Slow hypercalls (HYPERCALL_PORT). */
  Hypercall: 4,
  /** HvSignalEvent that no ioeventfd matched: the connection id was unknown. */
  UnmatchedSignal: 5,
  Uart: 6,
  Halt: 7,
  Interrupted: 8,
  OtherPort: 9,
} as const;
export type ExitCounter = (typeof ExitCounter)[keyof typeof ExitCounter];

const COUNTERS_PER_VCPU = 16;

export class VcpuExitStats {
  readonly buffer: SharedArrayBuffer;
  private readonly words: Int32Array;

  constructor(bufferOrVcpuCount: SharedArrayBuffer | number) {
    this.buffer = typeof bufferOrVcpuCount === 'number' ? new SharedArrayBuffer(bufferOrVcpuCount * COUNTERS_PER_VCPU * 4) : bufferOrVcpuCount;
    this.words = new Int32Array(this.buffer);
  }

  count(vp: number, counter: ExitCounter): void {
    Atomics.add(this.words, vp * COUNTERS_PER_VCPU + counter, 1);
  }

  get(vp: number, counter: ExitCounter): number {
    return Atomics.load(this.words, vp * COUNTERS_PER_VCPU + counter);
  }

  /** Sum over all vCPUs. */
  total(counter: ExitCounter): number {
    let sum = 0;
    for (let vp = 0; vp * COUNTERS_PER_VCPU < this.words.length; vp++) sum += this.get(vp, counter);
    return sum;
  }
}
