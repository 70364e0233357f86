// The Hyper-V reference TSC page (TLFS "partition reference TSC mechanism"; Linux
// include/clocksource/hyperv_timer.h hv_read_tsc_page_tsc): lets the guest compute the
// partition reference time (100 ns units) from its own TSC without an exit:
//   reference time = ((tsc * tsc_scale) >> 64) + tsc_offset
// Layout: tsc_sequence u32 at 0, reserved u32 at 4, tsc_scale u64 at 8, tsc_offset i64 at 16,
// the rest of the 4 KiB page reserved. The guest retries while tsc_sequence changes under
// it and falls back to the TIME_REF_COUNT MSR while it reads 0.
import type { GuestMemory } from '../memory/guest-memory.js';
import { PAGE_SIZE } from '../memory/page.js';

export const ReferenceTscPage = {
  SequenceOffset: 0,
  ScaleOffset: 8,
  OffsetOffset: 16,
} as const;

/** Reference time ticks per second (100 ns units). */
export const REFERENCE_TIME_HZ = 10_000_000n;

/** Sequence values the guest treats as "page not valid". */
const SEQUENCE_INVALID = 0;
const SEQUENCE_INVALID_ALT = 0xffffffff;

/**
 * floor(2^64 * 10^7 / tscHz). The scale must fit 64 bits, so the TSC must tick faster
 * than the reference clock (10 MHz); any real TSC does.
 */
export function referenceTscScale(tscHz: number): bigint {
  if (!Number.isSafeInteger(tscHz) || BigInt(tscHz) <= REFERENCE_TIME_HZ) {
    throw new RangeError(`TSC frequency must be an integer above 10 MHz, got ${tscHz}`);
  }
  return ((1n << 64n) * REFERENCE_TIME_HZ) / BigInt(tscHz);
}

/** What the guest computes from a TSC value and the page's scale and offset. */
export function referenceTimeFromTsc(tsc: bigint, scale: bigint, offset: bigint): bigint {
  const product = (BigInt.asUintN(64, tsc) * BigInt.asUintN(64, scale)) >> 64n;
  return BigInt.asUintN(64, product + BigInt.asIntN(64, offset));
}

/** The next valid sequence number after `previous`: never 0 or 0xFFFFFFFF, never `previous`. */
export function nextReferenceTscSequence(previous: number): number {
  let next = ((previous >>> 0) + 1) >>> 0;
  while (next === SEQUENCE_INVALID || next === SEQUENCE_INVALID_ALT) next = (next + 1) >>> 0;
  return next;
}

export interface ReferenceTscContents {
  sequence: number;
  scale: bigint;
  offset: bigint;
}

/**
 * Writes the page at `gpa` (page-aligned, inside RAM). The sequence is first set invalid,
 * so a guest reading concurrently falls back to the MSR instead of mixing old and new
 * fields; the new sequence is stored last.
 */
export function writeReferenceTscPage(memory: GuestMemory, gpa: number, contents: ReferenceTscContents): void {
  if (gpa % PAGE_SIZE !== 0) throw new RangeError(`reference TSC page at ${gpa} is not page-aligned`);
  if (contents.sequence === SEQUENCE_INVALID || contents.sequence === SEQUENCE_INVALID_ALT) {
    throw new RangeError(`reference TSC sequence ${contents.sequence} marks the page invalid`);
  }
  memory.check(gpa, PAGE_SIZE);
  const words = memory.words;
  const qwords = new BigInt64Array(memory.bytes.buffer, memory.bytes.byteOffset + gpa, 3);
  Atomics.store(words, memory.wordIndex(gpa + ReferenceTscPage.SequenceOffset), SEQUENCE_INVALID);
  Atomics.store(words, memory.wordIndex(gpa + 4), 0);
  Atomics.store(qwords, ReferenceTscPage.ScaleOffset / 8, BigInt.asIntN(64, contents.scale));
  Atomics.store(qwords, ReferenceTscPage.OffsetOffset / 8, BigInt.asIntN(64, contents.offset));
  Atomics.store(words, memory.wordIndex(gpa + ReferenceTscPage.SequenceOffset), contents.sequence | 0);
}
