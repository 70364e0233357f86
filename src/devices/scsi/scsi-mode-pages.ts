// MODE SENSE / MODE SELECT for a virtual disk. sd reads the device-specific parameter (WP:
// read-only, DPOFUA: FUA honoured) from the header of a page 0x3F request and the caching
// page (0x08: WCE) to decide whether to send SYNCHRONIZE CACHE and FUA writes. Nothing is
// changeable: MODE SELECT accepts only a caching page identical to the current one (which is
// what `echo "write back" > cache_type` sends when it changes nothing).
import { be16, putBe16 } from './scsi-cdb.js';

export const ModePage = {
  Caching: 0x08,
  AllPages: 0x3f,
} as const;

/** PC field of MODE SENSE (CDB byte 2, bits 7..6). */
export const PageControl = {
  Current: 0,
  Changeable: 1,
  Default: 2,
  Saved: 3,
} as const;

export interface ModeState {
  readonly readOnly: boolean;
  readonly writeCache: boolean;
}

export const MODE_HEADER6_BYTES = 4;
export const MODE_HEADER10_BYTES = 8;
const CACHING_PAGE_BYTES = 20;
/** The largest answer (10-byte header plus the caching page). */
export const MAX_MODE_SENSE_BYTES = MODE_HEADER10_BYTES + CACHING_PAGE_BYTES;

const DSP_WRITE_PROTECT = 0x80;
const DSP_DPOFUA = 0x10;
const CACHING_WCE = 0x04;
/** PS bit of a page's first byte: the page can be saved (ignored on MODE SELECT). */
const PAGE_SAVABLE = 0x80;

/** The caching page (SBC-3 6.4.5) for a page-control value, at `out[at..at+20)`. */
function putCachingPage(out: Uint8Array, at: number, pageControl: number, state: ModeState): void {
  out.fill(0, at, at + CACHING_PAGE_BYTES);
  out[at] = ModePage.Caching;
  out[at + 1] = CACHING_PAGE_BYTES - 2;
  // Changeable values: nothing can be changed, so every bit stays 0.
  if (pageControl !== PageControl.Changeable && state.writeCache) out[at + 2] = CACHING_WCE; // RCD = 0
}

/**
 * Writes the MODE SENSE(6) or (10) answer for the CDB into `out` (at least
 * MAX_MODE_SENSE_BYTES) and returns its full length (before allocation-length truncation),
 * or -1 when the page/subpage is not supported (ILLEGAL REQUEST, INVALID FIELD IN CDB).
 * No block descriptors are ever returned, whatever DBD says.
 */
export function buildModeSense(out: Uint8Array, cdb: Uint8Array, state: ModeState): number {
  const tenByte = cdb[0] === 0x5a;
  const pageControl = cdb[2]! >>> 6;
  const pageCode = cdb[2]! & 0x3f;
  const subpage = cdb[3]!;
  const supported = (pageCode === ModePage.Caching && subpage === 0) || (pageCode === ModePage.AllPages && (subpage === 0 || subpage === 0xff));
  if (!supported) return -1;
  const header = tenByte ? MODE_HEADER10_BYTES : MODE_HEADER6_BYTES;
  const total = header + CACHING_PAGE_BYTES;
  out.fill(0, 0, header);
  const dsp = (state.readOnly ? DSP_WRITE_PROTECT : 0) | DSP_DPOFUA;
  if (tenByte) {
    putBe16(out, 0, total - 2); // mode data length: the bytes after this field
    out[3] = dsp;
    // Block descriptor length (bytes 6..7) stays 0.
  } else {
    out[0] = total - 1;
    out[2] = dsp;
  }
  putCachingPage(out, header, pageControl, state);
  return total;
}

/**
 * Checks a MODE SELECT parameter list (`list[0..length)`): true when it changes nothing
 * (no block descriptors, only caching pages equal to the current one, PS ignored), false
 * otherwise (ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST).
 */
export function modeSelectChangesNothing(list: Uint8Array, length: number, tenByte: boolean, state: ModeState): boolean {
  const header = tenByte ? MODE_HEADER10_BYTES : MODE_HEADER6_BYTES;
  if (length < header) return false;
  const descriptorBytes = tenByte ? be16(list, 6) : list[3]!;
  if (descriptorBytes !== 0) return false;
  const current = new Uint8Array(CACHING_PAGE_BYTES);
  putCachingPage(current, 0, PageControl.Current, state);
  let at = header;
  while (at < length) {
    if (length - at < 2) return false;
    const first = list[at]!;
    if ((first & 0x40) !== 0) return false; // sub-page format: no sub-pages here
    const pageBytes = list[at + 1]! + 2;
    if (pageBytes > length - at) return false;
    if ((first & 0x3f) !== ModePage.Caching || pageBytes !== CACHING_PAGE_BYTES) return false;
    if ((first & ~PAGE_SAVABLE) !== current[0]) return false;
    for (let i = 1; i < CACHING_PAGE_BYTES; i++) if (list[at + i] !== current[i]) return false;
    at += pageBytes;
  }
  return true;
}
