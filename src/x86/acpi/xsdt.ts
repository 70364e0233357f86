// The Extended System Description Table (ACPI 6.x 5.2.8): the header followed by one
// 64-bit physical address per table. It lists every table but the DSDT (the FADT points
// at that) and the FACS (none: a hardware-reduced platform need not have one).
import { ACPI_TABLE_HEADER_SIZE, acpiTable, dataView, setTableChecksum } from './acpi-table.js';

export const XSDT_SIGNATURE = 'XSDT';
export const XSDT_REVISION = 1;
export const XSDT_ENTRY_SIZE = 8;

/** An XSDT with `entryCount` entries, all 0 until `setXsdtEntries` fills in the addresses. */
export function buildXsdt(entryCount: number): Uint8Array {
  return acpiTable(XSDT_SIGNATURE, XSDT_REVISION, new Uint8Array(entryCount * XSDT_ENTRY_SIZE));
}

export function xsdtEntryCount(xsdt: Uint8Array): number {
  return (xsdt.length - ACPI_TABLE_HEADER_SIZE) / XSDT_ENTRY_SIZE;
}

/** Writes the tables' addresses, in order, and recomputes the checksum. */
export function setXsdtEntries(xsdt: Uint8Array, gpas: readonly number[]): void {
  if (gpas.length !== xsdtEntryCount(xsdt)) throw new RangeError(`XSDT has ${xsdtEntryCount(xsdt)} entries, got ${gpas.length} addresses`);
  const view = dataView(xsdt);
  gpas.forEach((gpa, i) => view.setBigUint64(ACPI_TABLE_HEADER_SIZE + i * XSDT_ENTRY_SIZE, BigInt(gpa), true));
  setTableChecksum(xsdt);
}

export function readXsdtEntries(xsdt: Uint8Array): number[] {
  const view = dataView(xsdt);
  return Array.from({ length: xsdtEntryCount(xsdt) }, (_, i) => Number(view.getBigUint64(ACPI_TABLE_HEADER_SIZE + i * XSDT_ENTRY_SIZE, true)));
}
