// Ring index arithmetic shared by both ends: indices are byte offsets into the data area,
// multiples of 8, and come from memory the other side can scribble on.
import { RingCorruptError } from './ring-errors.js';

/** Bytes a writer may still use given the two indices (the ring is never filled completely). */
export function ringFreeBytes(write: number, read: number, size: number): number {
  let used = write - read;
  if (used < 0) used += size;
  return size - used;
}

/** Returns `index` if it is a valid ring index, else throws RingCorruptError. */
export function checkedRingIndex(index: number, size: number, name: string): number {
  // Atomics.load on an Int32Array: values >= 2^31 arrive negative and fail the range check.
  if (index < 0 || index >= size || (index & 7) !== 0) {
    throw new RingCorruptError(`ring ${name} ${index >>> 0} is not a multiple of 8 below the data size ${size}`);
  }
  return index;
}
