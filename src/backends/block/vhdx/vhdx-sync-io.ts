// Synchronous positional reads and writes of VHDX metadata (headers, region table, BAT,
// log). These happen at open, create and when a block is first allocated, never per
// request, so plain node:fs on the fd is the right tool; payload data goes through FileIo.
import fs from 'node:fs';
import { VhdxFormatError } from './vhdx-format.js';

/** Reads exactly `length` bytes at `offset`; a read past the end of the file means a truncated image. */
export function readAt(fd: number, offset: number, length: number, what: string): Uint8Array {
  const buffer = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const n = fs.readSync(fd, buffer, done, length - done, offset + done);
    if (n === 0) throw new VhdxFormatError(`the VHDX file ends inside its ${what} (${length} bytes at ${offset}): it is truncated`);
    done += n;
  }
  return buffer;
}

export function writeAt(fd: number, data: Uint8Array, offset: number): void {
  let done = 0;
  while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done, offset + done);
}
