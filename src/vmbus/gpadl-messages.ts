// GPADL creation spans several channel messages: one GPADL_HEADER, then as many
// GPADL_BODY messages as the page list needs, posted back to back. Together they carry
// one byte stream of range_buflen bytes holding rangecount ranges, each
// {byte_count u32, byte_offset u32, pfn u64 × ceil((byte_offset + byte_count) / 4096)}.
// The header carries the first part of the stream, each body the next.
//
// encodeGpadl splits a stream the way Linux's create_gpadl_header does; GpadlAssembler
// rebuilds it on the host from whatever a (possibly hostile) guest sends.
import type { GpaRange } from '../memory/gpa-range.js';
import { PAGE_SIZE, pagesFor } from '../memory/page.js';
import {
  encodeMessage,
  MAX_MESSAGE_SIZE,
  type GpadlBodyMessage,
  type GpadlHeaderMessage,
} from './channel-messages.js';

/** Fixed part of GPADL_HEADER (message header, child_relid, gpadl, range_buflen, rangecount). */
export const GPADL_HEADER_FIXED_SIZE = 20;
/** Fixed part of GPADL_BODY (message header, msgnumber, gpadl). */
export const GPADL_BODY_FIXED_SIZE = 16;
/** {byte_count, byte_offset} before each range's PFNs. */
export const GPA_RANGE_HEADER_SIZE = 8;
export const PFN_SIZE = 8;
/** range_buflen and rangecount are u16 on the wire. */
export const MAX_RANGE_BUFFER_LENGTH = 0xffff;

// The stream is made of 8-byte units (range headers and PFNs), and each message carries
// whole units: 27 in the header (one range header + 26 PFNs, as Linux sends), 28 in a body.
const HEADER_DATA_CAPACITY = Math.floor((MAX_MESSAGE_SIZE - GPADL_HEADER_FIXED_SIZE) / PFN_SIZE) * PFN_SIZE;
const BODY_DATA_CAPACITY = Math.floor((MAX_MESSAGE_SIZE - GPADL_BODY_FIXED_SIZE) / PFN_SIZE) * PFN_SIZE;
/** PFNs in a GPADL_HEADER carrying a single range: 26. */
export const MAX_HEADER_PFNS = (HEADER_DATA_CAPACITY - GPA_RANGE_HEADER_SIZE) / PFN_SIZE;
/** PFNs in one GPADL_BODY: 28. */
export const MAX_BODY_PFNS = BODY_DATA_CAPACITY / PFN_SIZE;

/** A PFN at or above this is beyond any physical address x86 can have. */
const PFN_LIMIT_HIGH_WORD = 0x100; // 2^40 = 0x100 << 32

export type GpaRangesResult = { ok: true; ranges: GpaRange[] } | { ok: false; error: string };
export type GpadlAcceptResult = 'incomplete' | 'complete' | { error: string };

export interface GpadlLimits {
  /** The largest range_buflen the host will buffer (at most 65535, the field's range). */
  maxRangeBufferLength: number;
}

/** The range stream for `ranges`. Throws RangeError for a range Linux could never send. */
export function encodeGpaRanges(ranges: readonly GpaRange[]): Uint8Array {
  let length = 0;
  ranges.forEach((range, i) => {
    const problem = encodableRangeProblem(range);
    if (problem) throw new RangeError(`GPA range ${i}: ${problem}`);
    length += GPA_RANGE_HEADER_SIZE + range.pfns.length * PFN_SIZE;
  });
  const bytes = new Uint8Array(length);
  const view = new DataView(bytes.buffer);
  let offset = 0;
  for (const range of ranges) {
    view.setUint32(offset, range.byteCount, true);
    view.setUint32(offset + 4, range.byteOffset, true);
    offset += GPA_RANGE_HEADER_SIZE;
    for (const pfn of range.pfns) {
      view.setUint32(offset, pfn % 0x1_0000_0000, true);
      view.setUint32(offset + 4, Math.floor(pfn / 0x1_0000_0000), true);
      offset += PFN_SIZE;
    }
  }
  return bytes;
}

/**
 * The GPADL_HEADER and GPADL_BODY messages (encoded) that describe `ranges`, split as
 * Linux splits them: the header holds as much of the range stream as fits (26 PFNs for
 * one range), each body 28 more PFNs; msgnumber stays 0.
 */
export function encodeGpadl(childRelid: number, gpadl: number, ranges: readonly GpaRange[]): Uint8Array[] {
  if (ranges.length === 0) throw new RangeError('a GPADL needs at least one range');
  if (ranges.length > 0xffff) throw new RangeError(`${ranges.length} ranges do not fit the u16 rangecount`);
  const stream = encodeGpaRanges(ranges);
  if (stream.length > MAX_RANGE_BUFFER_LENGTH) {
    throw new RangeError(`${stream.length} bytes of ranges do not fit the u16 range_buflen (at most 8190 pages)`);
  }
  const messages: Uint8Array[] = [];
  let offset = Math.min(stream.length, HEADER_DATA_CAPACITY);
  messages.push(
    encodeMessage({
      kind: 'gpadl-header',
      childRelid,
      gpadl,
      rangeBufferLength: stream.length,
      rangeCount: ranges.length,
      rangeData: stream.subarray(0, offset),
    }),
  );
  while (offset < stream.length) {
    const end = Math.min(stream.length, offset + BODY_DATA_CAPACITY);
    messages.push(encodeMessage({ kind: 'gpadl-body', messageNumber: 0, gpadl, pfnData: stream.subarray(offset, end) }));
    offset = end;
  }
  return messages;
}

/**
 * Parses `rangeCount` ranges that must fill `bytes` exactly. PFNs at or above 2^40 come
 * back as Number.MAX_SAFE_INTEGER, so that the caller's guest-RAM check rejects them;
 * that check (rangeProblem) is the caller's job.
 */
export function decodeGpaRanges(bytes: Uint8Array, rangeCount: number): GpaRangesResult {
  if (!Number.isInteger(rangeCount) || rangeCount < 1) return fail(`bad range count ${rangeCount}`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const ranges: GpaRange[] = [];
  let offset = 0;
  for (let i = 0; i < rangeCount; i++) {
    const left = bytes.length - offset;
    if (left < GPA_RANGE_HEADER_SIZE) {
      return fail(`range ${i} of ${rangeCount}: ${left} bytes left, too few for its ${GPA_RANGE_HEADER_SIZE}-byte header`);
    }
    const byteCount = view.getUint32(offset, true);
    const byteOffset = view.getUint32(offset + 4, true);
    offset += GPA_RANGE_HEADER_SIZE;
    if (byteCount === 0) return fail(`range ${i} of ${rangeCount} is empty`);
    if (byteOffset >= PAGE_SIZE) return fail(`range ${i} of ${rangeCount}: byte offset ${byteOffset} is not within the first page`);
    // Checked against the bytes present before anything is sized from it.
    const pfnCount = pagesFor(byteOffset, byteCount);
    const pfnsLeft = Math.floor((bytes.length - offset) / PFN_SIZE);
    if (pfnCount > pfnsLeft) {
      return fail(`range ${i} of ${rangeCount}: ${byteCount} bytes at offset ${byteOffset} need ${pfnCount} PFNs, only ${pfnsLeft} remain`);
    }
    const pfns: number[] = [];
    for (let j = 0; j < pfnCount; j++, offset += PFN_SIZE) pfns.push(readPfn(view, offset));
    ranges.push({ byteCount, byteOffset, pfns });
  }
  if (offset !== bytes.length) {
    return fail(`${bytes.length - offset} bytes left over after ${rangeCount} range(s) (range_buflen ${bytes.length})`);
  }
  return { ok: true, ranges };
}

/**
 * Rebuilds one GPADL on the host from its GPADL_HEADER and the GPADL_BODY messages that
 * follow. Never throws. The first problem is final: every later call reports it, and the
 * host answers GPADL_CREATED with a failure status. Buffers at most
 * limits.maxRangeBufferLength bytes, reserved only after the header has been checked.
 */
export class GpadlAssembler {
  readonly childRelid: number;
  readonly gpadl: number;
  readonly rangeBufferLength: number;
  readonly rangeCount: number;
  #buffer: Uint8Array | null = null;
  #filled = 0;
  #error: string | null = null;
  #ranges: GpaRange[] | null = null;

  constructor(header: GpadlHeaderMessage, limits: GpadlLimits) {
    this.childRelid = header.childRelid;
    this.gpadl = header.gpadl;
    this.rangeBufferLength = header.rangeBufferLength;
    this.rangeCount = header.rangeCount;
    const problem = headerProblem(header, limits);
    if (problem) {
      this.#error = `GPADL ${header.gpadl}: ${problem}`;
      return;
    }
    this.#buffer = new Uint8Array(header.rangeBufferLength);
    this.#append(header.rangeData, 'header');
  }

  /** Adds one GPADL_BODY; 'complete' means every byte arrived and the ranges parse. */
  accept(body: GpadlBodyMessage): GpadlAcceptResult {
    if (this.#error !== null) return { error: this.#error };
    if (this.#ranges !== null) {
      return this.#fail(`a body arrived after all ${this.rangeBufferLength} bytes of ranges`);
    }
    if (body.gpadl !== this.gpadl) return this.#fail(`a body for GPADL ${body.gpadl} arrived while assembling it`);
    if (body.pfnData.length === 0) return this.#fail('a body carries no PFNs');
    return this.#append(body.pfnData, 'body');
  }

  /** True once every byte arrived and the ranges parsed, and no error came after. */
  get complete(): boolean {
    return this.#error === null && this.#ranges !== null;
  }

  /** Why this GPADL is unusable, or null while it is still fine. */
  get error(): string | null {
    return this.#error;
  }

  /** Bytes this assembler holds for the range stream (never above the limit). */
  get reservedBytes(): number {
    return this.#buffer?.length ?? 0;
  }

  /** The parsed ranges once complete. Guest-RAM bounds are still to be checked (rangeProblem). */
  ranges(): GpaRangesResult {
    if (this.#error !== null) return fail(this.#error);
    if (this.#ranges === null) {
      return fail(`GPADL ${this.gpadl}: incomplete, ${this.#filled} of ${this.rangeBufferLength} bytes of ranges received`);
    }
    return { ok: true, ranges: this.#ranges };
  }

  #append(data: Uint8Array, what: 'header' | 'body'): GpadlAcceptResult {
    const buffer = this.#buffer!;
    if (data.length % PFN_SIZE !== 0) {
      return this.#fail(`${what} carries ${data.length} bytes of ranges, not a multiple of ${PFN_SIZE}`);
    }
    if (data.length > buffer.length - this.#filled) {
      return this.#fail(`${what} brings the ranges to ${this.#filled + data.length} bytes, more than range_buflen ${buffer.length}`);
    }
    buffer.set(data, this.#filled);
    this.#filled += data.length;
    if (this.#filled < buffer.length) return 'incomplete';
    const parsed = decodeGpaRanges(buffer, this.rangeCount);
    if (!parsed.ok) return this.#fail(parsed.error);
    this.#ranges = parsed.ranges;
    this.#buffer = null; // the parsed ranges replace the stream
    return 'complete';
  }

  #fail(problem: string): { error: string } {
    this.#error = `GPADL ${this.gpadl}: ${problem}`;
    this.#buffer = null;
    this.#ranges = null;
    return { error: this.#error };
  }
}

function headerProblem(header: GpadlHeaderMessage, limits: GpadlLimits): string | null {
  const { rangeBufferLength: length, rangeCount: count } = header;
  const limit = limits.maxRangeBufferLength;
  const max = limit >= 0 ? Math.min(limit, MAX_RANGE_BUFFER_LENGTH) : 0; // NaN and negatives allow nothing
  if (!Number.isInteger(length) || length <= 0) return `bad range_buflen ${length}`;
  if (length > max) return `range_buflen ${length} is over the limit of ${max} bytes`;
  if (length % PFN_SIZE !== 0) return `range_buflen ${length} is not a multiple of ${PFN_SIZE}`;
  if (!Number.isInteger(count) || count <= 0) return `bad rangecount ${count}`;
  // The smallest range is a header and one PFN.
  if (count * (GPA_RANGE_HEADER_SIZE + PFN_SIZE) > length) return `${count} ranges cannot fit in range_buflen ${length}`;
  return null;
}

function encodableRangeProblem(range: GpaRange): string | null {
  const { byteCount, byteOffset, pfns } = range;
  if (!Number.isInteger(byteCount) || byteCount <= 0 || byteCount > 0xffffffff) return `bad byte count ${byteCount}`;
  if (!Number.isInteger(byteOffset) || byteOffset < 0 || byteOffset >= PAGE_SIZE) return `bad byte offset ${byteOffset}`;
  const needed = pagesFor(byteOffset, byteCount);
  if (pfns.length !== needed) return `${byteCount} bytes at offset ${byteOffset} need ${needed} PFNs, got ${pfns.length}`;
  for (const pfn of pfns) if (!Number.isSafeInteger(pfn) || pfn < 0) return `bad PFN ${pfn}`;
  return null;
}

function readPfn(view: DataView, offset: number): number {
  const high = view.getUint32(offset + 4, true);
  if (high >= PFN_LIMIT_HIGH_WORD) return Number.MAX_SAFE_INTEGER;
  return high * 0x1_0000_0000 + view.getUint32(offset, true);
}

function fail(error: string): { ok: false; error: string } {
  return { ok: false, error };
}
