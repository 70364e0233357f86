// Little-endian field access on byte arrays for the network codecs: NVSP, RNDIS, PPIs and
// NDIS objects all run per packet, so no DataView is created per message.

export function rd16(b: Uint8Array, o: number): number {
  return b[o]! | (b[o + 1]! << 8);
}

export function rd32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

export function wr16(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
}

export function wr32(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
  b[o + 2] = (v >>> 16) & 0xff;
  b[o + 3] = (v >>> 24) & 0xff;
}

/**
 * Zeroes b[from, to): for the few dozen bytes of a per-packet header a loop is cheaper
 * than TypedArray fill, which leaves the optimised code for a C++ builtin on every call.
 */
export function zeroBytes(b: Uint8Array, from: number, to: number): void {
  for (let i = from; i < to; i++) b[i] = 0;
}

/**
 * Copies from[start, end) to to[at...]: for the few hundred bytes of a header a loop,
 * where TypedArray set would need a subarray view (an allocation) per packet.
 */
export function copyBytes(to: Uint8Array, at: number, from: Uint8Array, start: number, end: number): void {
  for (let i = start; i < end; i++) to[at + i - start] = from[i]!;
}
