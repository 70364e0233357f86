// The whole set of ACPI tables a guest gets, and where they go in guest memory:
//
//   RSDP -> XSDT -> { FACP -> DSDT, APIC }
//
// The tables are built with their pointers at 0; layout places them and patches the
// pointers (recomputing each checksum), so the same set can be laid out anywhere.
import { byteSum, tableLength, tableSignature } from './acpi-table.js';
import { buildDsdt } from './dsdt.js';
import { buildFadt, setFadtDsdtAddress } from './fadt.js';
import { buildMadt } from './madt.js';
import { buildRsdp, RSDP_ALIGNMENT, RSDP_SIZE, setRsdpXsdtAddress } from './rsdp.js';
import { buildXsdt, setXsdtEntries } from './xsdt.js';

/** Where the boot helper reserves room for the tables: the BIOS area Linux scans for the RSDP. */
export const ACPI_REGION_BASE = 0xe0000;
export const ACPI_REGION_SIZE = 0x20000;
/** Tables are placed on 8-byte boundaries (their 64-bit fields then stay naturally aligned). */
export const ACPI_TABLE_ALIGNMENT = 8;
/** The most vCPUs the MADT is built for (KVM's own limit on x86 is at most this). */
export const ACPI_MAX_VP_COUNT = 4096;

export interface AcpiTableSet {
  vpCount: number;
  rsdp: Uint8Array;
  xsdt: Uint8Array;
  fadt: Uint8Array;
  madt: Uint8Array;
  dsdt: Uint8Array;
}

export interface PlacedAcpiTable {
  signature: string;
  gpa: number;
  bytes: Uint8Array;
}

export interface AcpiLayout {
  /** The image to copy to `baseGpa`: RSDP first, then the tables. Only as long as it needs to be. */
  bytes: Uint8Array;
  rsdpGpa: number;
  /** XSDT, FACP, APIC, DSDT in image order; `bytes` are views into the image. */
  tables: PlacedAcpiTable[];
}

export function buildAcpiTables(o: { vpCount: number }): AcpiTableSet {
  if (!Number.isInteger(o.vpCount) || o.vpCount < 1 || o.vpCount > ACPI_MAX_VP_COUNT) {
    throw new RangeError(`ACPI tables: vCPU count ${o.vpCount} is not 1-${ACPI_MAX_VP_COUNT}`);
  }
  return {
    vpCount: o.vpCount,
    rsdp: buildRsdp(0),
    // The XSDT lists the FADT and the MADT, in that order.
    xsdt: buildXsdt(2),
    fadt: buildFadt(),
    madt: buildMadt(o.vpCount),
    dsdt: buildDsdt(),
  };
}

function alignUp(value: number, alignment: number): number {
  return Math.ceil(value / alignment) * alignment;
}

/**
 * Places the set at `baseGpa` (RSDP on the first 16-byte boundary, each table on the next
 * 8-byte boundary after the previous one), points RSDP -> XSDT -> FADT, MADT and
 * FADT -> DSDT at the real addresses, and checks it all fits in `regionSize` bytes.
 * The input set is not modified.
 */
export function layoutAcpiTables(set: AcpiTableSet, baseGpa: number, regionSize: number): AcpiLayout {
  if (!Number.isSafeInteger(baseGpa) || baseGpa < 0) throw new RangeError(`ACPI tables: base address ${baseGpa}`);
  if (!Number.isSafeInteger(regionSize) || regionSize < 0) throw new RangeError(`ACPI tables: region size ${regionSize}`);
  const rsdp = set.rsdp.slice();
  const xsdt = set.xsdt.slice();
  const fadt = set.fadt.slice();
  const madt = set.madt.slice();
  const dsdt = set.dsdt.slice();

  const rsdpGpa = alignUp(baseGpa, RSDP_ALIGNMENT);
  let cursor = rsdpGpa + RSDP_SIZE;
  const place = (table: Uint8Array): number => {
    const gpa = alignUp(cursor, ACPI_TABLE_ALIGNMENT);
    cursor = gpa + table.length;
    return gpa;
  };
  const xsdtGpa = place(xsdt);
  const fadtGpa = place(fadt);
  const madtGpa = place(madt);
  const dsdtGpa = place(dsdt);
  const used = cursor - baseGpa;
  if (used > regionSize) {
    throw new RangeError(`ACPI tables need ${used} bytes from 0x${baseGpa.toString(16)}, the region has ${regionSize}`);
  }
  // The FADT's 32-bit DSDT field must hold the address too; and the guest maps these early.
  if (cursor > 0x1_0000_0000) throw new RangeError(`ACPI tables at 0x${baseGpa.toString(16)} would end above 4 GiB`);

  setRsdpXsdtAddress(rsdp, xsdtGpa);
  setXsdtEntries(xsdt, [fadtGpa, madtGpa]);
  setFadtDsdtAddress(fadt, dsdtGpa);

  const bytes = new Uint8Array(used);
  bytes.set(rsdp, rsdpGpa - baseGpa);
  const tables: PlacedAcpiTable[] = [];
  for (const [table, gpa] of [
    [xsdt, xsdtGpa],
    [fadt, fadtGpa],
    [madt, madtGpa],
    [dsdt, dsdtGpa],
  ] as const) {
    bytes.set(table, gpa - baseGpa);
    const placed = bytes.subarray(gpa - baseGpa, gpa - baseGpa + table.length);
    // Cheap self-check: a table whose length or checksum is wrong is worse than no table.
    if (tableLength(placed) !== placed.length || byteSum(placed) !== 0) throw new Error(`ACPI ${tableSignature(placed)}: bad length or checksum`);
    tables.push({ signature: tableSignature(placed), gpa, bytes: placed });
  }
  return { bytes, rsdpGpa, tables };
}

/** The file name each table is dumped under (iasl's habit: the signature, .aml). */
export function acpiDumpFileName(signature: string): string {
  return signature === 'RSD PTR ' ? 'RSDP.bin' : `${signature}.aml`;
}

/**
 * One file per table, laid out at ACPI_REGION_BASE so every pointer is the one a guest
 * sees: "RSDP.bin", "XSDT.aml", "FACP.aml", "APIC.aml", "DSDT.aml".
 */
export function acpiTablesForDump(set: AcpiTableSet): Map<string, Uint8Array> {
  const layout = layoutAcpiTables(set, ACPI_REGION_BASE, ACPI_REGION_SIZE);
  const files = new Map<string, Uint8Array>();
  const rsdpOffset = layout.rsdpGpa - ACPI_REGION_BASE;
  files.set(acpiDumpFileName('RSD PTR '), layout.bytes.slice(rsdpOffset, rsdpOffset + RSDP_SIZE));
  for (const t of layout.tables) files.set(acpiDumpFileName(t.signature), t.bytes.slice());
  return files;
}
