// The Multiple APIC Description Table (signature "APIC", ACPI 6.x 5.2.12): where the
// local APICs and the IOAPIC are, which vCPUs exist, and how the ISA IRQs reach the
// IOAPIC. Linux boots the secondary vCPUs from this list (there is no MP table).
import { IOAPIC_BASE, LAPIC_BASE } from '../platform-ports.js';
import { ACPI_TABLE_HEADER_SIZE, acpiTable, dataView } from './acpi-table.js';

export const MADT_SIGNATURE = 'APIC';
/** Revision 5 (ACPI 6.2/6.3). All our entries are enabled, so the online-capable bit
 * that newer kernels honour from revision 5 on never matters. */
export const MADT_REVISION = 5;
export const MADT_OFFSET_LOCAL_APIC_ADDRESS = 36;
export const MADT_OFFSET_FLAGS = 40;
export const MADT_ENTRIES_OFFSET = 44;
/** The machine also has dual 8259s (KVM's in-kernel irqchip has them); Linux masks them. */
export const MADT_FLAG_PCAT_COMPAT = 1;

// Interrupt controller structure types and their lengths.
export const MADT_TYPE_LOCAL_APIC = 0;
export const MADT_TYPE_IO_APIC = 1;
export const MADT_TYPE_INTERRUPT_SOURCE_OVERRIDE = 2;
export const MADT_TYPE_LOCAL_APIC_NMI = 4;
export const MADT_TYPE_LOCAL_X2APIC = 9;
export const MADT_TYPE_LOCAL_X2APIC_NMI = 10;
const LENGTH = { [MADT_TYPE_LOCAL_APIC]: 8, [MADT_TYPE_IO_APIC]: 12, [MADT_TYPE_INTERRUPT_SOURCE_OVERRIDE]: 10, [MADT_TYPE_LOCAL_APIC_NMI]: 6, [MADT_TYPE_LOCAL_X2APIC]: 16, [MADT_TYPE_LOCAL_X2APIC_NMI]: 12 };

export const MADT_LAPIC_ENABLED = 1;
/** xAPIC ids are 8 bits and 0xFF is the broadcast id, so 0xFE is the last one a Local APIC entry can name. */
export const MADT_MAX_XAPIC_ID = 0xfe;
/** "All processors" in the NMI entries. */
const ALL_PROCESSORS_UID8 = 0xff;
const ALL_PROCESSORS_UID32 = 0xffff_ffff;

/** MPS INTI flags: polarity bits 0-1 (01 active high, 11 active low), trigger bits 2-3 (01 edge, 11 level); 0 = bus default. */
export const MPS_INTI_CONFORMS = 0;
export const MPS_INTI_POLARITY_ACTIVE_HIGH = 0b01;
export const MPS_INTI_TRIGGER_LEVEL = 0b11 << 2;

export interface InterruptSourceOverride {
  /** The ISA IRQ. */
  source: number;
  gsi: number;
  flags: number;
}

/**
 * The usual PC overrides. IRQ 0 (the PIT) is wired to IOAPIC pin 2, as on every PC since
 * the IOAPIC took pin 0 for the 8259 cascade (KVM's in-kernel PIT routes to GSI 2). IRQ 9
 * is the SCI's line: level-triggered, active-high, stated explicitly because Linux would
 * otherwise assume the SCI default of active-low.
 */
export const MADT_INTERRUPT_SOURCE_OVERRIDES: readonly InterruptSourceOverride[] = [
  { source: 0, gsi: 2, flags: MPS_INTI_CONFORMS },
  { source: 9, gsi: 9, flags: MPS_INTI_POLARITY_ACTIVE_HIGH | MPS_INTI_TRIGGER_LEVEL },
];

/** LINT1 carries NMI on every local APIC, as the PC BIOSes set it up. */
export const MADT_NMI_LINT = 1;

/**
 * The IOAPIC's id. Ids are only compared among IOAPICs by 64-bit Linux, but the old APIC
 * bus shared one id space with the local APICs, so it takes the first id after the vCPUs
 * (capped at the 8-bit field).
 */
export function ioapicId(vpCount: number): number {
  return Math.min(vpCount, 0xff);
}

/**
 * A MADT for `vpCount` vCPUs with APIC id = ACPI processor UID = vCPU index: a Local APIC
 * entry for ids 0-254, a Local x2APIC entry beyond (Linux then needs x2APIC mode to bring
 * those up), one IOAPIC with GSI base 0, the two overrides, and LINT1 NMI entries.
 */
export function buildMadt(vpCount: number): Uint8Array {
  if (!Number.isInteger(vpCount) || vpCount < 1) throw new RangeError(`MADT: vCPU count ${vpCount}`);
  const xapicCount = Math.min(vpCount, MADT_MAX_XAPIC_ID + 1);
  const x2apicCount = vpCount - xapicCount;
  const size =
    MADT_ENTRIES_OFFSET -
    ACPI_TABLE_HEADER_SIZE +
    xapicCount * LENGTH[MADT_TYPE_LOCAL_APIC] +
    x2apicCount * LENGTH[MADT_TYPE_LOCAL_X2APIC] +
    LENGTH[MADT_TYPE_IO_APIC] +
    MADT_INTERRUPT_SOURCE_OVERRIDES.length * LENGTH[MADT_TYPE_INTERRUPT_SOURCE_OVERRIDE] +
    LENGTH[MADT_TYPE_LOCAL_APIC_NMI] +
    (x2apicCount > 0 ? LENGTH[MADT_TYPE_LOCAL_X2APIC_NMI] : 0);
  const body = new Uint8Array(size);
  const view = dataView(body);
  const at = (tableOffset: number) => tableOffset - ACPI_TABLE_HEADER_SIZE;
  view.setUint32(at(MADT_OFFSET_LOCAL_APIC_ADDRESS), LAPIC_BASE, true);
  view.setUint32(at(MADT_OFFSET_FLAGS), MADT_FLAG_PCAT_COMPAT, true);
  let offset = at(MADT_ENTRIES_OFFSET);
  const entry = (type: keyof typeof LENGTH): number => {
    const start = offset;
    view.setUint8(start, type);
    view.setUint8(start + 1, LENGTH[type]);
    offset += LENGTH[type];
    return start;
  };

  for (let id = 0; id < xapicCount; id++) {
    const e = entry(MADT_TYPE_LOCAL_APIC);
    view.setUint8(e + 2, id); // ACPI processor UID
    view.setUint8(e + 3, id); // APIC id
    view.setUint32(e + 4, MADT_LAPIC_ENABLED, true);
  }
  for (let id = xapicCount; id < vpCount; id++) {
    const e = entry(MADT_TYPE_LOCAL_X2APIC);
    view.setUint32(e + 4, id, true); // x2APIC id
    view.setUint32(e + 8, MADT_LAPIC_ENABLED, true);
    view.setUint32(e + 12, id, true); // ACPI processor UID
  }

  const io = entry(MADT_TYPE_IO_APIC);
  view.setUint8(io + 2, ioapicId(vpCount));
  view.setUint32(io + 4, IOAPIC_BASE, true);
  view.setUint32(io + 8, 0, true); // GSI base

  for (const o of MADT_INTERRUPT_SOURCE_OVERRIDES) {
    const e = entry(MADT_TYPE_INTERRUPT_SOURCE_OVERRIDE);
    view.setUint8(e + 2, 0); // bus: ISA
    view.setUint8(e + 3, o.source);
    view.setUint32(e + 4, o.gsi, true);
    view.setUint16(e + 8, o.flags, true);
  }

  const nmi = entry(MADT_TYPE_LOCAL_APIC_NMI);
  view.setUint8(nmi + 2, ALL_PROCESSORS_UID8);
  view.setUint16(nmi + 3, MPS_INTI_CONFORMS, true);
  view.setUint8(nmi + 5, MADT_NMI_LINT);
  if (x2apicCount > 0) {
    // The 8-bit "all processors" UID above cannot name x2APIC-only processors' UIDs.
    const e = entry(MADT_TYPE_LOCAL_X2APIC_NMI);
    view.setUint16(e + 2, MPS_INTI_CONFORMS, true);
    view.setUint32(e + 4, ALL_PROCESSORS_UID32, true);
    view.setUint8(e + 8, MADT_NMI_LINT);
  }
  if (offset !== body.length) throw new Error(`MADT: wrote ${offset} of ${body.length} bytes`);
  return acpiTable(MADT_SIGNATURE, MADT_REVISION, body);
}

export interface MadtEntry {
  type: number;
  offset: number;
  length: number;
}

/** Walks the entries of a MADT (for tests and dumps); stops at a malformed length. */
export function madtEntries(madt: Uint8Array): MadtEntry[] {
  const out: MadtEntry[] = [];
  let offset = MADT_ENTRIES_OFFSET;
  while (offset + 2 <= madt.length) {
    const length = madt[offset + 1]!;
    if (length < 2 || offset + length > madt.length) break;
    out.push({ type: madt[offset]!, offset, length });
    offset += length;
  }
  return out;
}
