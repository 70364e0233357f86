// A GPADL as the server keeps it: the guest's page list for a buffer, built from a
// GPADL_HEADER and its GPADL_BODY messages, owned by one channel.
import type { GpaRange } from '../../memory/gpa-range.js';
import type { GpadlAssembler } from '../gpadl-messages.js';

export interface ServerGpadl {
  readonly id: number;
  readonly childRelid: number;
  /** Present while bodies are still arriving. */
  assembler: GpadlAssembler | null;
  ranges: GpaRange[];
  /** The channel whose rings live in it, while open. */
  usedByRelid: number | null;
}

/** Total pages of a GPADL's ranges. */
export function gpadlPageCount(gpadl: ServerGpadl): number {
  let n = 0;
  for (const r of gpadl.ranges) n += r.pfns.length;
  return n;
}
