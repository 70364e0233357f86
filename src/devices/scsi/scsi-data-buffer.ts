// Small answers (INQUIRY, MODE SENSE, READ CAPACITY, REPORT LUNS) and small parameter lists
// (UNMAP, MODE SELECT) move between a scratch array and the initiator's buffer, an IovecList
// of host addresses into guest RAM. Each segment is translated back to a guest-physical
// range and bounds-checked against guest RAM before it is touched. Payload data never comes
// through here: READ/WRITE go to the backend as iovecs.
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { IovecList } from '../../sys/iovec.js';

/**
 * Copies the first `length` bytes of `source` into the buffer's segments, in order, never
 * past the buffer's end. Returns the bytes copied, or -1 when a segment does not lie in
 * guest RAM (a transport bug: nothing is written from that segment on).
 */
export function copyToDataBuffer(memory: GuestMemory, data: IovecList, source: Uint8Array, length: number): number {
  return transfer(memory, data, source, length, true);
}

/**
 * Copies up to `length` bytes from the buffer's segments into `target`. Returns the bytes
 * copied, or -1 when a segment does not lie in guest RAM.
 */
export function copyFromDataBuffer(memory: GuestMemory, data: IovecList, target: Uint8Array, length: number): number {
  return transfer(memory, data, target, length, false);
}

/** Walks the segments once for either direction, checking each against guest RAM first. */
function transfer(memory: GuestMemory, data: IovecList, scratch: Uint8Array, length: number, toGuest: boolean): number {
  let left = Math.min(length, scratch.length, data.byteLength);
  if (!(left > 0)) return 0;
  const base = Number(memory.base);
  let done = 0;
  for (let i = 0; i < data.count && left > 0; i++) {
    const take = Math.min(data.lengthAt(i), left);
    const gpa = data.addressAt(i) - base;
    if (!memory.contains(gpa, take)) return -1;
    if (toGuest) memory.bytes.set(scratch.subarray(done, done + take), gpa);
    else scratch.set(memory.bytes.subarray(gpa, gpa + take), done);
    done += take;
    left -= take;
  }
  return done;
}
