// Time Synchronization IC bodies. Times are Windows FILETIMEs (100 ns units since
// 1601-01-01 UTC); the reference time is the guest partition's Hyper-V reference counter
// (100 ns units since the partition started), the clock the guest reads from the
// reference-time MSR / TSC page.
//
// Which body a message carries depends on the negotiated message version, not on the
// header: Linux parses `ictimesync_ref_data` when the negotiated version is above 3.0 and
// `ictimesync_data` otherwise.

/** WLTIMEDELTA: FILETIME of the Unix epoch. */
export const FILETIME_UNIX_EPOCH = 116444736000000000n;

/** `flags` values (ICTIMESYNCFLAG_*). */
export const TimesyncFlags = {
  PROBE: 0,
  SYNC: 1,
  SAMPLE: 2,
} as const;

/** `struct ictimesync_data` (v1/v3), packed: parenttime, childtime, roundtriptime, u8 flags. */
export const TIMESYNC_V3_BODY_SIZE = 25;
/** `struct ictimesync_ref_data` (v4) as Linux declares it: 22 bytes, the most Linux requires. */
export const TIMESYNC_V4_MIN_BODY_SIZE = 22;
/** What OpenVMM sends for v4 (its reserved tail is 5 bytes, not 3); our host does the same. */
export const TIMESYNC_V4_BODY_SIZE = 24;

/** Linux's HOST_TIMESYNC_DELAY_THRESH: a sample older than this (by reference time) is stale. */
export const TIMESYNC_STALE_THRESHOLD_NS = 600n * 1_000_000_000n;

const U64_MASK = (1n << 64n) - 1n;

/** Unix nanoseconds to FILETIME (truncating to 100 ns), wrapped to u64 like the wire field. */
export function unixNsToFiletime(unixNs: bigint): bigint {
  const ticks = unixNs >= 0n ? unixNs / 100n : -((-unixNs + 99n) / 100n);
  return (ticks + FILETIME_UNIX_EPOCH) & U64_MASK;
}

/** FILETIME to Unix nanoseconds (negative before 1970). */
export function filetimeToUnixNs(filetime: bigint): bigint {
  return (filetime - FILETIME_UNIX_EPOCH) * 100n;
}

export interface TimesyncV3 {
  /** Host time, FILETIME. */
  readonly parentTime: bigint;
  readonly childTime: bigint;
  readonly roundTripTime: bigint;
  readonly flags: number;
}

export interface TimesyncV4 {
  /** Host time, FILETIME. */
  readonly parentTime: bigint;
  /** The guest's reference counter when parentTime was read (100 ns units). */
  readonly vmReferenceTime: bigint;
  readonly flags: number;
  /** Signed in Linux (`char leapflags`). */
  readonly leapFlags: number;
  /** Signed in Linux (`char stratum`). */
  readonly stratum: number;
}

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

export function encodeTimesyncV3(msg: TimesyncV3): Uint8Array {
  const body = new Uint8Array(TIMESYNC_V3_BODY_SIZE);
  const view = viewOf(body);
  view.setBigUint64(0, msg.parentTime & U64_MASK, true);
  view.setBigUint64(8, msg.childTime & U64_MASK, true);
  view.setBigUint64(16, msg.roundTripTime & U64_MASK, true);
  view.setUint8(24, msg.flags);
  return body;
}

/** Decodes a v1/v3 body, or undefined when shorter than 25 bytes (Linux drops those). */
export function decodeTimesyncV3(body: Uint8Array): TimesyncV3 | undefined {
  if (body.length < TIMESYNC_V3_BODY_SIZE) return undefined;
  const view = viewOf(body);
  return {
    parentTime: view.getBigUint64(0, true),
    childTime: view.getBigUint64(8, true),
    roundTripTime: view.getBigUint64(16, true),
    flags: view.getUint8(24),
  };
}

export function encodeTimesyncV4(msg: TimesyncV4): Uint8Array {
  const body = new Uint8Array(TIMESYNC_V4_BODY_SIZE);
  const view = viewOf(body);
  view.setBigUint64(0, msg.parentTime & U64_MASK, true);
  view.setBigUint64(8, msg.vmReferenceTime & U64_MASK, true);
  view.setUint8(16, msg.flags);
  view.setInt8(17, msg.leapFlags);
  view.setInt8(18, msg.stratum);
  return body;
}

/** Decodes a v4 body, or undefined when shorter than Linux's 22-byte structure. */
export function decodeTimesyncV4(body: Uint8Array): TimesyncV4 | undefined {
  if (body.length < TIMESYNC_V4_MIN_BODY_SIZE) return undefined;
  const view = viewOf(body);
  return {
    parentTime: view.getBigUint64(0, true),
    vmReferenceTime: view.getBigUint64(8, true),
    flags: view.getUint8(16),
    leapFlags: view.getInt8(17),
    stratum: view.getInt8(18),
  };
}
