// Heartbeat IC body (`struct heartbeat_msg_data`, packed): u64 seq_num @0 followed by
// u32 reserved[8]. The host sends a sequence number; Linux answers in the same buffer
// with seq_num + 1. Linux only insists on the 8 bytes of seq_num (the host "may not fill
// the reserved area"), so that is what a decoder requires.

/** The full Linux structure, which is what our host sends. */
export const HEARTBEAT_BODY_SIZE = 40;
/** What Linux requires after the headers before it touches seq_num. */
export const HEARTBEAT_MIN_BODY_SIZE = 8;

const U64_MASK = (1n << 64n) - 1n;

/** A heartbeat body carrying `sequence` (taken modulo 2^64), reserved words zero. */
export function encodeHeartbeatBody(sequence: bigint): Uint8Array {
  const body = new Uint8Array(HEARTBEAT_BODY_SIZE);
  new DataView(body.buffer).setBigUint64(0, sequence & U64_MASK, true);
  return body;
}

/** The sequence number, or undefined when the body is shorter than 8 bytes. */
export function decodeHeartbeatSequence(body: Uint8Array): bigint | undefined {
  if (body.length < HEARTBEAT_MIN_BODY_SIZE) return undefined;
  return new DataView(body.buffer, body.byteOffset, body.byteLength).getBigUint64(0, true);
}

/** The guest's answer to `sequence`: seq_num + 1, wrapping like the kernel's u64. */
export function nextHeartbeatSequence(sequence: bigint): bigint {
  return (sequence + 1n) & U64_MASK;
}

/** Rewrites seq_num in place as seq_num + 1 (what the guest does to the request buffer). */
export function incrementHeartbeatInPlace(body: Uint8Array): boolean {
  const seq = decodeHeartbeatSequence(body);
  if (seq === undefined) return false;
  new DataView(body.buffer, body.byteOffset, body.byteLength).setBigUint64(0, nextHeartbeatSequence(seq), true);
  return true;
}
