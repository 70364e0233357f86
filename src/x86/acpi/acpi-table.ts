// The 36-byte header every ACPI system description table starts with (ACPI 6.x 5.2.6),
// and the checksum rule shared by the tables and the RSDP: all covered bytes sum to 0
// modulo 256.

export const ACPI_TABLE_HEADER_SIZE = 36;
export const ACPI_HEADER_OFFSET_SIGNATURE = 0;
export const ACPI_HEADER_OFFSET_LENGTH = 4;
export const ACPI_HEADER_OFFSET_REVISION = 8;
export const ACPI_HEADER_OFFSET_CHECKSUM = 9;
export const ACPI_HEADER_OFFSET_OEM_ID = 10;
export const ACPI_HEADER_OFFSET_OEM_TABLE_ID = 16;
export const ACPI_HEADER_OFFSET_OEM_REVISION = 24;
export const ACPI_HEADER_OFFSET_CREATOR_ID = 28;
export const ACPI_HEADER_OFFSET_CREATOR_REVISION = 32;

/** Who made the tables. OEM ID is 6 bytes, OEM table ID 8, creator ID 4. */
export const ACPI_OEM_ID = 'ENLITN';
export const ACPI_OEM_TABLE_ID = 'ENLIGHTN';
export const ACPI_OEM_REVISION = 1;
export const ACPI_CREATOR_ID = 'ENLT';
export const ACPI_CREATOR_REVISION = 1;

export function dataView(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Writes `text` as ASCII into exactly `width` bytes (space padding is the ACPI habit for IDs). */
export function writeAscii(bytes: Uint8Array, offset: number, text: string, width: number, pad = 0x20): void {
  if (text.length > width || !/^[\x20-\x7e]*$/.test(text)) throw new RangeError(`ACPI ID ${JSON.stringify(text)} does not fit ${width} ASCII bytes`);
  for (let i = 0; i < width; i++) bytes[offset + i] = i < text.length ? text.charCodeAt(i) : pad;
}

export function readAscii(bytes: Uint8Array, offset: number, width: number): string {
  return String.fromCharCode(...bytes.subarray(offset, offset + width));
}

/** The sum of `bytes[start..end)` modulo 256; 0 means the checksum is right. */
export function byteSum(bytes: Uint8Array, start = 0, end = bytes.length): number {
  let sum = 0;
  for (let i = start; i < end; i++) sum = (sum + bytes[i]!) & 0xff;
  return sum;
}

/** Sets the checksum byte at `checksumOffset` so that `bytes[start..end)` sums to 0. */
export function setChecksum(bytes: Uint8Array, checksumOffset: number, start = 0, end = bytes.length): void {
  bytes[checksumOffset] = 0;
  bytes[checksumOffset] = (0x100 - byteSum(bytes, start, end)) & 0xff;
}

/** Recomputes a table's header checksum over its whole length (after a pointer was patched). */
export function setTableChecksum(table: Uint8Array): void {
  setChecksum(table, ACPI_HEADER_OFFSET_CHECKSUM);
}

/**
 * A complete table: the header (with our OEM and creator IDs) followed by `body`, with a
 * valid checksum. `signature` is the 4-character table signature ("FACP", "APIC", ...).
 */
export function acpiTable(signature: string, revision: number, body: Uint8Array): Uint8Array {
  if (!/^[A-Z0-9_]{4}$/.test(signature)) throw new RangeError(`ACPI signature ${JSON.stringify(signature)}`);
  const table = new Uint8Array(ACPI_TABLE_HEADER_SIZE + body.length);
  const view = dataView(table);
  writeAscii(table, ACPI_HEADER_OFFSET_SIGNATURE, signature, 4);
  view.setUint32(ACPI_HEADER_OFFSET_LENGTH, table.length, true);
  view.setUint8(ACPI_HEADER_OFFSET_REVISION, revision);
  writeAscii(table, ACPI_HEADER_OFFSET_OEM_ID, ACPI_OEM_ID, 6);
  writeAscii(table, ACPI_HEADER_OFFSET_OEM_TABLE_ID, ACPI_OEM_TABLE_ID, 8);
  view.setUint32(ACPI_HEADER_OFFSET_OEM_REVISION, ACPI_OEM_REVISION, true);
  writeAscii(table, ACPI_HEADER_OFFSET_CREATOR_ID, ACPI_CREATOR_ID, 4);
  view.setUint32(ACPI_HEADER_OFFSET_CREATOR_REVISION, ACPI_CREATOR_REVISION, true);
  table.set(body, ACPI_TABLE_HEADER_SIZE);
  setTableChecksum(table);
  return table;
}

export function tableSignature(table: Uint8Array): string {
  return readAscii(table, ACPI_HEADER_OFFSET_SIGNATURE, 4);
}

export function tableLength(table: Uint8Array): number {
  return dataView(table).getUint32(ACPI_HEADER_OFFSET_LENGTH, true);
}
