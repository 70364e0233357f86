// The Root System Description Pointer (ACPI 6.x 5.2.5.3), revision 2: the one structure a
// guest finds by address (boot_params.acpi_rsdp_addr, or a scan of 0xE0000-0xFFFFF on
// 16-byte boundaries) and from which it reaches every table through the XSDT.
import { ACPI_OEM_ID, dataView, setChecksum, writeAscii } from './acpi-table.js';

export const RSDP_SIZE = 36;
/** The scan looks only at 16-byte boundaries. */
export const RSDP_ALIGNMENT = 16;
export const RSDP_SIGNATURE = 'RSD PTR ';
export const RSDP_REVISION = 2;
export const RSDP_OFFSET_CHECKSUM = 8;
export const RSDP_OFFSET_OEM_ID = 9;
export const RSDP_OFFSET_REVISION = 15;
export const RSDP_OFFSET_RSDT_ADDRESS = 16;
export const RSDP_OFFSET_LENGTH = 20;
export const RSDP_OFFSET_XSDT_ADDRESS = 24;
export const RSDP_OFFSET_EXTENDED_CHECKSUM = 32;
/** The revision-1 checksum covers the ACPI 1.0 part only. */
export const RSDP_V1_SIZE = 20;

/**
 * An RSDP pointing at an XSDT. There is no RSDT: its address is 0, which Linux (ACPICA)
 * accepts on revision >= 2 because it prefers the XSDT whenever one is given.
 */
export function buildRsdp(xsdtGpa: number): Uint8Array {
  const rsdp = new Uint8Array(RSDP_SIZE);
  writeAscii(rsdp, 0, RSDP_SIGNATURE, 8);
  writeAscii(rsdp, RSDP_OFFSET_OEM_ID, ACPI_OEM_ID, 6);
  rsdp[RSDP_OFFSET_REVISION] = RSDP_REVISION;
  dataView(rsdp).setUint32(RSDP_OFFSET_LENGTH, RSDP_SIZE, true);
  setRsdpXsdtAddress(rsdp, xsdtGpa);
  return rsdp;
}

/** Points the RSDP at `xsdtGpa` and recomputes both checksums. */
export function setRsdpXsdtAddress(rsdp: Uint8Array, xsdtGpa: number): void {
  if (!Number.isSafeInteger(xsdtGpa) || xsdtGpa < 0) throw new RangeError(`XSDT address ${xsdtGpa}`);
  dataView(rsdp).setBigUint64(RSDP_OFFSET_XSDT_ADDRESS, BigInt(xsdtGpa), true);
  // The v1 checksum first: the extended checksum covers the v1 checksum byte too.
  setChecksum(rsdp, RSDP_OFFSET_CHECKSUM, 0, RSDP_V1_SIZE);
  setChecksum(rsdp, RSDP_OFFSET_EXTENDED_CHECKSUM, 0, RSDP_SIZE);
}
