// VMBus ring packets: the descriptor every packet starts with, the packet types, and the
// two type-specific headers Linux uses (spec 6.3; Linux include/linux/hyperv.h). The ring
// moves descriptors and bytes; this file gives the bytes between the descriptor and the
// payload (the "header", offset8 * 8 - 16 bytes) their meaning.
//
// Decoders read guest-written bytes: they read each field once, bound every count by the
// header's length before looping or sizing anything, and report garbage as a DecodeError
// code instead of throwing.
import type { GpaRange } from '../memory/gpa-range.js';
import { PAGE_SIZE } from '../memory/page.js';

/** enum vmbus_packet_type. Linux drivers use only DataInband, DataUsingTransferPages (host to guest), DataUsingGpaDirect (guest to host) and Completion. */
export const PacketType = {
  Invalid: 0,
  Synch: 1,
  AddTransferPageSet: 2,
  RemoveTransferPageSet: 3,
  EstablishGpadl: 4,
  TeardownGpadl: 5,
  DataInband: 6,
  DataUsingTransferPages: 7,
  DataUsingGpadl: 8,
  DataUsingGpaDirect: 9,
  CancelRequest: 10,
  Completion: 11,
  DataUsingAdditionalPacket: 12,
  AdditionalData: 13,
} as const;
export type PacketType = (typeof PacketType)[keyof typeof PacketType];

/** Descriptor flags bit 0: the sender wants a Completion echoing trans_id. */
export const PACKET_FLAG_COMPLETION_REQUESTED = 1;

// struct vmpacket_descriptor: type u16, offset8 u16, len8 u16, flags u16, trans_id u64.
export const DESCRIPTOR_SIZE = 16;
export const DESCRIPTOR_OFFSET_TYPE = 0;
export const DESCRIPTOR_OFFSET_OFFSET8 = 2;
export const DESCRIPTOR_OFFSET_LEN8 = 4;
export const DESCRIPTOR_OFFSET_FLAGS = 6;
export const DESCRIPTOR_OFFSET_TRANS_ID = 8;
/** offset8 of a packet with no type-specific header (inband, completion). */
export const DESCRIPTOR_OFFSET8_MIN = DESCRIPTOR_SIZE / 8;
/** After every packet: u64 whose upper 32 bits are the write index the packet started at. */
export const PACKET_TRAILER_SIZE = 8;
/** len8 and offset8 are u16 counts of 8-byte units. */
export const PACKET_MAX_LEN8 = 0xffff;

// Type-specific headers, as offsets from the end of the descriptor.
// GPA direct: reserved u32, range_count u32, then ranges {byte_count u32, byte_offset u32, pfn u64[n]}.
export const GPA_DIRECT_OFFSET_RANGE_COUNT = 4;
export const GPA_DIRECT_FIXED_SIZE = 8;
export const GPA_RANGE_FIXED_SIZE = 8;
// Transfer pages: xfer_pageset_id u16, sender_owns_set u8, reserved u8, range_count u32,
// then ranges {byte_count u32, byte_offset u32}.
export const TRANSFER_PAGE_OFFSET_SET_ID = 0;
export const TRANSFER_PAGE_OFFSET_SENDER_OWNS = 2;
export const TRANSFER_PAGE_OFFSET_RANGE_COUNT = 4;
export const TRANSFER_PAGE_FIXED_SIZE = 8;
export const TRANSFER_PAGE_RANGE_SIZE = 8;

/** Why a type-specific header was rejected; None means it decoded. */
export const DecodeError = {
  None: 0,
  /** The header is shorter than its fixed part. */
  Truncated: 1,
  /** range_count ranges cannot fit in the header, whatever their size. */
  TooManyRanges: 2,
  /** A range (with its PFN list) runs past the end of the header. */
  RangeOverrun: 3,
  /** A PFN beyond 2^52: no guest has such a page, and it would not be exact as a number. */
  PfnTooLarge: 4,
} as const;
export type DecodeError = (typeof DecodeError)[keyof typeof DecodeError];

const decodeErrorText: Record<DecodeError, string> = {
  [DecodeError.None]: 'no error',
  [DecodeError.Truncated]: 'type-specific header is shorter than its fixed part',
  [DecodeError.TooManyRanges]: 'range_count does not fit in the header',
  [DecodeError.RangeOverrun]: 'a range runs past the end of the header',
  [DecodeError.PfnTooLarge]: 'a page number is beyond 2^52',
};

export function decodeErrorMessage(error: DecodeError): string {
  return decodeErrorText[error] ?? `decode error ${error}`;
}

/** A GpaRange whose page list is reused from packet to packet. */
export interface MutableGpaRange extends GpaRange {
  byteCount: number;
  byteOffset: number;
  pfns: number[];
}

/**
 * The ranges of a GPA-direct packet. Decoding into the same object again reuses its
 * range objects and PFN arrays, so a steady stream of packets allocates nothing.
 * Only ranges[0 .. count) are valid.
 */
export class GpaDirectRanges {
  count = 0;
  readonly ranges: MutableGpaRange[] = [];

  /** The range at i, creating a reusable slot when the list has not been this long. */
  slot(i: number): MutableGpaRange {
    let r = this.ranges[i];
    if (r === undefined) {
      r = { byteCount: 0, byteOffset: 0, pfns: [] };
      this.ranges[i] = r;
    }
    return r;
  }
}

export interface TransferPageRange {
  byteCount: number;
  byteOffset: number;
}

/** A transfer-page header; reusable like GpaDirectRanges (only ranges[0 .. count) are valid). */
export class TransferPageHeader {
  pageSetId = 0;
  senderOwnsSet = false;
  count = 0;
  readonly ranges: TransferPageRange[] = [];

  slot(i: number): TransferPageRange {
    let r = this.ranges[i];
    if (r === undefined) {
      r = { byteCount: 0, byteOffset: 0 };
      this.ranges[i] = r;
    }
    return r;
  }
}

function u16(b: Uint8Array, o: number): number {
  return b[o]! | (b[o + 1]! << 8);
}

function u32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

function putU16(b: Uint8Array, o: number, v: number): void {
  b[o] = v;
  b[o + 1] = v >>> 8;
}

function putU32(b: Uint8Array, o: number, v: number): void {
  b[o] = v;
  b[o + 1] = v >>> 8;
  b[o + 2] = v >>> 16;
  b[o + 3] = v >>> 24;
}

function isU32(v: number): boolean {
  return Number.isInteger(v) && v >= 0 && v <= 0xffff_ffff;
}

/** Writes a non-negative safe integer as a little-endian u64. */
function putU64(b: Uint8Array, o: number, v: number): void {
  putU32(b, o, v >>> 0);
  putU32(b, o + 4, Math.floor(v / 0x1_0000_0000));
}

/** PFNs above this are rejected: the high word must stay below 2^20 for an exact number. */
const PFN_HIGH_WORD_LIMIT = 1 << 20;

/**
 * Decodes the GPA-direct header in bytes[offset, offset + length) (the bytes between the
 * descriptor and offset8 * 8) into out. Bytes after the last range are ignored.
 * Each range has ceil((byte_offset + byte_count) / 4096) PFNs, exactly as the guest
 * builds them; whether those pages are in guest RAM is checked where they are used
 * (rangeProblem in memory/gpa-range.ts).
 */
export function decodeGpaDirectHeader(bytes: Uint8Array, offset: number, length: number, out: GpaDirectRanges): DecodeError {
  out.count = 0;
  if (length < GPA_DIRECT_FIXED_SIZE || offset < 0 || offset + length > bytes.length) return DecodeError.Truncated;
  const rangeCount = u32(bytes, offset + GPA_DIRECT_OFFSET_RANGE_COUNT);
  // Every range takes at least its fixed 8 bytes: bound the loop before running it.
  if (rangeCount > (length - GPA_DIRECT_FIXED_SIZE) / GPA_RANGE_FIXED_SIZE) return DecodeError.TooManyRanges;
  const end = offset + length;
  let p = offset + GPA_DIRECT_FIXED_SIZE;
  for (let i = 0; i < rangeCount; i++) {
    if (p + GPA_RANGE_FIXED_SIZE > end) return DecodeError.RangeOverrun;
    const byteCount = u32(bytes, p);
    const byteOffset = u32(bytes, p + 4);
    p += GPA_RANGE_FIXED_SIZE;
    // Both are u32, so the sum is exact; the page count is bounded by the bytes left
    // before any array is sized from it.
    const pageCount = Math.ceil((byteOffset + byteCount) / PAGE_SIZE);
    if (pageCount > (end - p) / 8) return DecodeError.RangeOverrun;
    const range = out.slot(i);
    range.byteCount = byteCount;
    range.byteOffset = byteOffset;
    const pfns = range.pfns;
    pfns.length = pageCount;
    for (let k = 0; k < pageCount; k++) {
      const lo = u32(bytes, p);
      const hi = u32(bytes, p + 4);
      if (hi >= PFN_HIGH_WORD_LIMIT) return DecodeError.PfnTooLarge;
      pfns[k] = hi * 0x1_0000_0000 + lo;
      p += 8;
    }
  }
  out.count = rangeCount;
  return DecodeError.None;
}

/** Bytes of the GPA-direct header for these ranges (a multiple of 8, as offset8 needs). */
export function gpaDirectHeaderSize(ranges: readonly GpaRange[]): number {
  let n = GPA_DIRECT_FIXED_SIZE;
  for (const r of ranges) n += GPA_RANGE_FIXED_SIZE + 8 * r.pfns.length;
  return n;
}

/** Writes a GPA-direct header (what a guest sends); returns the bytes written. */
export function encodeGpaDirectHeader(ranges: readonly GpaRange[], target: Uint8Array, offset: number): number {
  const size = gpaDirectHeaderSize(ranges);
  if (offset < 0 || offset + size > target.length) throw new RangeError(`GPA-direct header of ${size} bytes does not fit at ${offset}`);
  putU32(target, offset, 0);
  putU32(target, offset + GPA_DIRECT_OFFSET_RANGE_COUNT, ranges.length);
  let p = offset + GPA_DIRECT_FIXED_SIZE;
  for (const r of ranges) {
    // The reader derives the PFN count from byte_offset + byte_count: a list of another
    // length would shift every later range.
    if (!isU32(r.byteCount) || !isU32(r.byteOffset) || r.pfns.length !== Math.ceil((r.byteOffset + r.byteCount) / PAGE_SIZE)) {
      throw new RangeError(`GPA range of ${r.byteCount} bytes at offset ${r.byteOffset} with ${r.pfns.length} pages is malformed`);
    }
    putU32(target, p, r.byteCount);
    putU32(target, p + 4, r.byteOffset);
    p += GPA_RANGE_FIXED_SIZE;
    for (const pfn of r.pfns) {
      if (!Number.isSafeInteger(pfn) || pfn < 0) throw new RangeError(`bad page number ${pfn}`);
      putU64(target, p, pfn);
      p += 8;
    }
  }
  return size;
}

/** Decodes a transfer-page header in bytes[offset, offset + length) into out. */
export function decodeTransferPageHeader(bytes: Uint8Array, offset: number, length: number, out: TransferPageHeader): DecodeError {
  out.count = 0;
  if (length < TRANSFER_PAGE_FIXED_SIZE || offset < 0 || offset + length > bytes.length) return DecodeError.Truncated;
  out.pageSetId = u16(bytes, offset + TRANSFER_PAGE_OFFSET_SET_ID);
  out.senderOwnsSet = bytes[offset + TRANSFER_PAGE_OFFSET_SENDER_OWNS] !== 0;
  const rangeCount = u32(bytes, offset + TRANSFER_PAGE_OFFSET_RANGE_COUNT);
  if (rangeCount > (length - TRANSFER_PAGE_FIXED_SIZE) / TRANSFER_PAGE_RANGE_SIZE) return DecodeError.TooManyRanges;
  let p = offset + TRANSFER_PAGE_FIXED_SIZE;
  for (let i = 0; i < rangeCount; i++) {
    const range = out.slot(i);
    range.byteCount = u32(bytes, p);
    range.byteOffset = u32(bytes, p + 4);
    p += TRANSFER_PAGE_RANGE_SIZE;
  }
  out.count = rangeCount;
  return DecodeError.None;
}

export function transferPageHeaderSize(rangeCount: number): number {
  return TRANSFER_PAGE_FIXED_SIZE + TRANSFER_PAGE_RANGE_SIZE * rangeCount;
}

/** Writes a transfer-page header (what the host sends for netvsc receives); returns the bytes written. */
export function encodeTransferPageHeader(
  pageSetId: number,
  senderOwnsSet: boolean,
  ranges: readonly TransferPageRange[],
  target: Uint8Array,
  offset: number,
  rangeCount = ranges.length,
): number {
  const size = transferPageHeaderSize(rangeCount);
  if (offset < 0 || offset + size > target.length) throw new RangeError(`transfer-page header of ${size} bytes does not fit at ${offset}`);
  putU16(target, offset + TRANSFER_PAGE_OFFSET_SET_ID, pageSetId);
  target[offset + TRANSFER_PAGE_OFFSET_SENDER_OWNS] = senderOwnsSet ? 1 : 0;
  target[offset + TRANSFER_PAGE_OFFSET_SENDER_OWNS + 1] = 0;
  putU32(target, offset + TRANSFER_PAGE_OFFSET_RANGE_COUNT, rangeCount);
  let p = offset + TRANSFER_PAGE_FIXED_SIZE;
  for (let i = 0; i < rangeCount; i++) {
    const r = ranges[i]!;
    putU32(target, p, r.byteCount);
    putU32(target, p + 4, r.byteOffset);
    p += TRANSFER_PAGE_RANGE_SIZE;
  }
  return size;
}
