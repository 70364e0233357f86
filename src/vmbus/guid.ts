// GUIDs as VMBus carries them: 16 bytes in the mixed-endian Windows layout (the first
// three groups little-endian, the last eight bytes in the order they are written), and
// as canonical lowercase 8-4-4-4-12 strings everywhere else in enlighten.

export const GUID_SIZE = 16;

const GUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** True for an 8-4-4-4-12 hex string (either case); braces and other forms are not accepted. */
export function isGuid(s: unknown): s is string {
  return typeof s === 'string' && GUID_PATTERN.test(s);
}

/** Writes `guid` at `offset` in wire order. Throws RangeError for a malformed string. */
export function writeGuid(view: DataView, offset: number, guid: string): void {
  if (!isGuid(guid)) throw new RangeError(`not a GUID: ${JSON.stringify(guid)}`);
  if (!Number.isInteger(offset) || offset < 0 || offset + GUID_SIZE > view.byteLength) {
    throw new RangeError(`GUID at offset ${offset} does not fit in ${view.byteLength} bytes`);
  }
  const hex = guid.replace(/-/g, '');
  view.setUint32(offset, parseInt(hex.slice(0, 8), 16), true);
  view.setUint16(offset + 4, parseInt(hex.slice(8, 12), 16), true);
  view.setUint16(offset + 6, parseInt(hex.slice(12, 16), 16), true);
  for (let i = 0; i < 8; i++) {
    view.setUint8(offset + 8 + i, parseInt(hex.slice(16 + 2 * i, 18 + 2 * i), 16));
  }
}

/** Reads the GUID at `offset` as a canonical lowercase string. */
export function readGuid(view: DataView, offset: number): string {
  const a = hex(view.getUint32(offset, true), 8);
  const b = hex(view.getUint16(offset + 4, true), 4);
  const c = hex(view.getUint16(offset + 6, true), 4);
  let d = '';
  let e = '';
  for (let i = 0; i < 2; i++) d += hex(view.getUint8(offset + 8 + i), 2);
  for (let i = 2; i < 8; i++) e += hex(view.getUint8(offset + 8 + i), 2);
  return `${a}-${b}-${c}-${d}-${e}`;
}

function hex(value: number, digits: number): string {
  return value.toString(16).padStart(digits, '0');
}
