// Scatter-gather lists: a GPA range as Hyper-V describes it (byte count, offset into the
// first page, page numbers) and the validated guest segments it covers.
import { GuestMemory, GuestMemoryError } from './guest-memory.js';
import { PAGE_SIZE, pagesFor } from './page.js';

export interface GpaRange {
  byteCount: number;
  byteOffset: number;
  pfns: readonly number[];
}

export interface GuestSegment {
  gpa: number;
  length: number;
}

/** Why a range is unusable, or null if every page lies in guest RAM and the shape is right. */
export function rangeProblem(memory: GuestMemory, range: GpaRange): string | null {
  const { byteCount, byteOffset, pfns } = range;
  if (!Number.isSafeInteger(byteCount) || byteCount < 0) return `bad byte count ${byteCount}`;
  if (!Number.isSafeInteger(byteOffset) || byteOffset < 0 || byteOffset >= PAGE_SIZE) return `bad byte offset ${byteOffset}`;
  const needed = pagesFor(byteOffset, byteCount);
  if (pfns.length !== needed) return `range of ${byteCount} bytes at offset ${byteOffset} needs ${needed} pages, got ${pfns.length}`;
  for (const pfn of pfns) if (!memory.containsPage(pfn)) return `page ${pfn} is outside guest RAM`;
  return null;
}

/** The guest segments of a range, merged where pages are consecutive. Throws if invalid. */
export function rangeSegments(memory: GuestMemory, range: GpaRange, out: GuestSegment[] = []): GuestSegment[] {
  const problem = rangeProblem(memory, range);
  if (problem) throw new GuestMemoryError(problem);
  out.length = 0;
  let remaining = range.byteCount;
  let offset = range.byteOffset;
  for (const pfn of range.pfns) {
    if (remaining === 0) break;
    const length = Math.min(PAGE_SIZE - offset, remaining);
    const gpa = pfn * PAGE_SIZE + offset;
    const last = out[out.length - 1];
    if (last && last.gpa + last.length === gpa) last.length += length;
    else out.push({ gpa, length });
    remaining -= length;
    offset = 0;
  }
  return out;
}

/** Copies a range's bytes out of guest RAM (control-plane use only; the data path uses views). */
export function readRange(memory: GuestMemory, range: GpaRange, target: Uint8Array): number {
  let done = 0;
  for (const s of rangeSegments(memory, range)) {
    const n = Math.min(s.length, target.length - done);
    target.set(memory.bytes.subarray(s.gpa, s.gpa + n), done);
    done += n;
    if (done === target.length) break;
  }
  return done;
}
