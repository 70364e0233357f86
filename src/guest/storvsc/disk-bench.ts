// A fio-like load generator that runs inside the reference guest's thread: queueDepth
// requests kept in flight against one GuestBlockDevice for a fixed time, with buffers
// and request objects allocated once up front (guest pages from the allocator), so the
// measurement is the storage path itself: no postMessage, Promise or allocation per I/O.
// Like fio's ramp_time, an optional ramp runs the load unmeasured first, so the figure is
// the steady state rather than the JIT warming up on the first thousands of requests.
import type { GuestMemory } from '../../memory/guest-memory.js';
import { PAGE_SIZE } from '../../memory/page.js';
import type { PageAllocator } from '../page-allocator.js';
import { BlockOp, type GuestBlockDevice, type GuestBlockRequest } from './guest-block-device.js';

export type BenchPattern = 'randread' | 'randwrite' | 'read' | 'write';

export interface DiskBenchOptions {
  pattern: BenchPattern;
  blockBytes: number;
  queueDepth: number;
  seconds: number;
  /** Seconds of load before the measured `seconds` start (fio's ramp_time); default 0. */
  rampSeconds?: number;
  /** Bytes of the disk the offsets range over (default: all of it). */
  span?: number;
}

export interface DiskBenchResult {
  ops: number;
  bytes: number;
  seconds: number;
  errors: number;
}

class BenchRequest implements GuestBlockRequest {
  op: BlockOp = BlockOp.Read;
  offset = 0;
  length = 0;
  gpa = 0;
  fua = false;
  readonly done: (result: number) => void;
  constructor(run: BenchRun) {
    this.done = (result) => run.onDone(this, result);
  }
}

class BenchRun {
  ops = 0;
  errors = 0;
  inflight = 0;
  private stopAt = 0;
  /** When the measured part begins: completions before it are the ramp. */
  private measureFrom = 0;
  private nextSequential = 0;
  private readonly random: boolean;
  private readonly op: BlockOp;
  private readonly spanBlocks: number;
  private finish: ((r: DiskBenchResult) => void) | null = null;

  constructor(private readonly device: GuestBlockDevice, private readonly o: DiskBenchOptions, span: number) {
    this.random = o.pattern === 'randread' || o.pattern === 'randwrite';
    this.op = o.pattern === 'randwrite' || o.pattern === 'write' ? BlockOp.Write : BlockOp.Read;
    this.spanBlocks = Math.floor(span / o.blockBytes);
  }

  start(requests: BenchRequest[]): Promise<DiskBenchResult> {
    return new Promise((resolve) => {
      this.finish = resolve;
      this.measureFrom = performance.now() + (this.o.rampSeconds ?? 0) * 1000;
      this.stopAt = this.measureFrom + this.o.seconds * 1000;
      for (const r of requests) this.issue(r);
    });
  }

  private issue(r: BenchRequest): void {
    r.op = this.op;
    r.length = this.o.blockBytes;
    let block: number;
    if (this.random) {
      block = Math.floor(Math.random() * this.spanBlocks);
    } else {
      block = this.nextSequential;
      this.nextSequential = block + 1 >= this.spanBlocks ? 0 : block + 1;
    }
    r.offset = block * this.o.blockBytes;
    this.inflight++;
    this.device.submit(r);
  }

  onDone(r: BenchRequest, result: number): void {
    this.inflight--;
    const now = performance.now();
    if (result !== 0) this.errors++;
    else if (now >= this.measureFrom) this.ops++;
    // A device that fails everything would spin: stop at the first error burst.
    if (now < this.stopAt && this.errors < 1000 && this.device.present) {
      this.issue(r);
      return;
    }
    if (this.inflight === 0 && this.finish) {
      const seconds = Math.max(0, performance.now() - this.measureFrom) / 1000;
      const finish = this.finish;
      this.finish = null;
      finish({ ops: this.ops, bytes: this.ops * this.o.blockBytes, seconds, errors: this.errors });
    }
  }
}

export async function runDiskBench(device: GuestBlockDevice, memory: GuestMemory, allocator: PageAllocator, o: DiskBenchOptions): Promise<DiskBenchResult> {
  const { blockBytes, queueDepth, seconds } = o;
  const ramp = o.rampSeconds ?? 0;
  if (!(ramp >= 0 && ramp <= 60)) throw new Error('rampSeconds must be in [0, 60]');
  if (!['randread', 'randwrite', 'read', 'write'].includes(o.pattern)) throw new Error(`unknown pattern '${o.pattern}'`);
  if (!Number.isInteger(blockBytes) || blockBytes <= 0 || blockBytes % device.blockBytes !== 0) throw new Error(`blockBytes must be a multiple of the disk's ${device.blockBytes}-byte blocks`);
  if (!Number.isInteger(queueDepth) || queueDepth < 1 || queueDepth > 1024) throw new Error('queueDepth must be 1..1024');
  if (!(seconds > 0 && seconds <= 600)) throw new Error('seconds must be in (0, 600]');
  const span = Math.min(o.span ?? device.sizeBytes, device.sizeBytes);
  if (span < blockBytes) throw new Error(`span of ${span} bytes holds no ${blockBytes}-byte block`);
  const pagesEach = Math.ceil(blockBytes / PAGE_SIZE);
  const firstPfns: number[] = [];
  try {
    const run = new BenchRun(device, o, span);
    const requests: BenchRequest[] = [];
    for (let i = 0; i < queueDepth; i++) {
      const pfn = allocator.allocContiguous(pagesEach);
      firstPfns.push(pfn);
      const r = new BenchRequest(run);
      r.gpa = pfn * PAGE_SIZE;
      // Recognisable write data; reads overwrite it.
      memory.bytes.fill(0xa5 ^ (i & 0xff), r.gpa, r.gpa + blockBytes);
      requests.push(r);
    }
    return await run.start(requests);
  } finally {
    for (const pfn of firstPfns) allocator.freeRun(pfn, pagesEach);
  }
}
