// A native `struct iovec[]` (base, length pairs) that the kernel reads directly: the
// currency of zero-copy I/O between guest RAM and files (preadv, io_uring, /dev/fuse).
// Allocated once with a fixed capacity and refilled per request, so the data path
// allocates nothing; addresses are plain numbers (user-space addresses fit in 2^53).
import { viewOf } from './libc.js';
import { mapAnonymousOwned } from './memfd.js';

const IOVEC_BYTES = 16;
const TWO_32 = 2 ** 32;

export class IovecList {
  /** Address of iovec[0], to hand to the kernel. */
  readonly address: bigint;
  /** The same address as a number: what the data path passes, with no BigInt conversion per call. */
  readonly addressNumber: number;
  readonly capacity: number;
  /** Entries in use. */
  count = 0;
  /** Sum of the lengths in use. */
  byteLength = 0;
  /** Changes whenever the entries do: a user that copied them can tell whether its copy is current. */
  version = 0;
  private readonly words: Uint32Array;

  constructor(capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > 65536) throw new RangeError(`iovec capacity ${capacity} out of range`);
    this.capacity = capacity;
    const bytes = Math.ceil((capacity * IOVEC_BYTES) / 4096) * 4096;
    // Unmapped when the list is collected: the kernel reads an iovec array only inside
    // the call that takes it (io_uring copies it in at submission).
    this.address = mapAnonymousOwned(this, bytes);
    this.addressNumber = Number(this.address);
    this.words = new Uint32Array(viewOf(this.address, bytes));
  }

  /** The address of entry `index` (for an io_uring SQE that points into the middle). */
  entryAddress(index: number): bigint {
    return this.address + BigInt(index * IOVEC_BYTES);
  }

  clear(): void {
    this.version++;
    this.count = 0;
    this.byteLength = 0;
  }

  /** Appends one segment; returns false (and appends nothing) when the list is full. */
  push(address: number, length: number): boolean {
    if (this.count >= this.capacity) return false;
    const w = this.words;
    const i = this.count * 4;
    w[i] = address % TWO_32;
    w[i + 1] = Math.floor(address / TWO_32);
    w[i + 2] = length % TWO_32;
    w[i + 3] = Math.floor(length / TWO_32);
    this.count++;
    this.byteLength += length;
    this.version++;
    return true;
  }

  /** Grows the last segment by `length` bytes (the caller knows the memory continues). */
  extendLast(length: number): void {
    const i = (this.count - 1) * 4;
    const total = this.words[i + 2]! + this.words[i + 3]! * TWO_32 + length;
    this.words[i + 2] = total % TWO_32;
    this.words[i + 3] = Math.floor(total / TWO_32);
    this.byteLength += length;
    this.version++;
  }

  addressAt(index: number): number {
    const w = this.words;
    return w[index * 4]! + w[index * 4 + 1]! * TWO_32;
  }

  lengthAt(index: number): number {
    const w = this.words;
    return w[index * 4 + 2]! + w[index * 4 + 3]! * TWO_32;
  }

  /**
   * Fills `target` with the sub-range [byteOffset, byteOffset + byteLength) of this list
   * (splitting segments at the edges), after what it holds with `append`. Returns false
   * if the range is out of bounds or the target is too small.
   */
  sliceInto(target: IovecList, byteOffset: number, byteLength: number, append = false): boolean {
    if (!append) target.clear();
    if (byteOffset < 0 || byteLength < 0 || byteOffset + byteLength > this.byteLength) return false;
    let skip = byteOffset;
    let left = byteLength;
    for (let i = 0; i < this.count && left > 0; i++) {
      const length = this.lengthAt(i);
      if (skip >= length) {
        skip -= length;
        continue;
      }
      const take = Math.min(length - skip, left);
      if (!target.push(this.addressAt(i) + skip, take)) return false;
      left -= take;
      skip = 0;
    }
    return left === 0;
  }
}
