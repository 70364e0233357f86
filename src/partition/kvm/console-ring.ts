// Bytes the guest writes to its UART, on their way from a vCPU thread to the main thread,
// which prints them and watches for marker lines. One single-producer ring per vCPU (the
// vCPU thread writes, the main thread reads), so no lock: a release store of the head
// publishes the bytes. A full ring drops bytes rather than stall the guest; the count of
// dropped bytes is kept.

const HEAD = 0;
const TAIL = 1;
const DROPPED = 2;
const HEADER_WORDS = 4;

export class ConsoleRing {
  readonly buffer: SharedArrayBuffer;
  private readonly words: Int32Array;
  private readonly data: Uint8Array;
  private readonly capacity: number;

  constructor(bufferOrCapacity: SharedArrayBuffer | number = 64 * 1024) {
    this.buffer = typeof bufferOrCapacity === 'number' ? new SharedArrayBuffer(HEADER_WORDS * 4 + bufferOrCapacity) : bufferOrCapacity;
    this.words = new Int32Array(this.buffer, 0, HEADER_WORDS);
    this.data = new Uint8Array(this.buffer, HEADER_WORDS * 4);
    this.capacity = this.data.length;
    // A power of two, so the free-running 32-bit indices stay correct when they wrap.
    if ((this.capacity & (this.capacity - 1)) !== 0) throw new Error('console ring capacity must be a power of two');
  }

  /** Producer: appends one byte; false if the ring was full and the byte was dropped. */
  put(byte: number): boolean {
    const head = Atomics.load(this.words, HEAD);
    const tail = Atomics.load(this.words, TAIL);
    if (((head - tail) | 0) >= this.capacity) {
      Atomics.add(this.words, DROPPED, 1);
      return false;
    }
    this.data[head & (this.capacity - 1)] = byte;
    Atomics.store(this.words, HEAD, (head + 1) | 0);
    return true;
  }

  /** Consumer: everything written so far (a fresh array; the console is not a data path). */
  take(): Uint8Array {
    const head = Atomics.load(this.words, HEAD);
    const tail = Atomics.load(this.words, TAIL);
    const length = (head - tail) | 0;
    const out = new Uint8Array(length);
    for (let i = 0; i < length; i++) out[i] = this.data[(tail + i) & (this.capacity - 1)]!;
    Atomics.store(this.words, TAIL, head);
    return out;
  }

  get dropped(): number {
    return Atomics.load(this.words, DROPPED);
  }
}
