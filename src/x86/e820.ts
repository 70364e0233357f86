// The BIOS e820 memory map as boot_params carries it: the only description of RAM a
// directly booted Linux gets (no firmware to ask). Linux treats any address not listed as
// a hole, so reserved areas inside RAM must be carved out of the RAM entries, and areas
// outside RAM that the kernel must not hand to PCI BARs are listed as reserved.

export const E820_RAM = 1;
export const E820_RESERVED = 2;
/** ACPI reclaimable: tables the OS may reuse once parsed (Linux in practice keeps them). */
export const E820_ACPI = 3;
export type E820Type = typeof E820_RAM | typeof E820_RESERVED | typeof E820_ACPI;

/** boot_params.e820_table has room for this many entries (E820_MAX_ENTRIES_ZEROPAGE). */
export const E820_MAX_ENTRIES_ZEROPAGE = 128;
/** One entry in boot_params: u64 addr, u64 size, u32 type, packed. */
export const E820_ENTRY_SIZE = 20;

export interface E820Entry {
  addr: number;
  size: number;
  type: E820Type;
}

/** An area that is not usable RAM, with a name for error messages and documentation. */
export interface E820Region {
  name: string;
  addr: number;
  size: number;
  type: typeof E820_RESERVED | typeof E820_ACPI;
}

export class E820Error extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'E820Error';
  }
}

/**
 * The map for RAM [0, ramSize) with `regions` taken out of it (regions may also lie
 * outside RAM). Sorted by address, non-overlapping, adjacent entries of one type merged.
 */
export function buildE820Table(ramSize: number, regions: readonly E820Region[]): E820Entry[] {
  if (!Number.isSafeInteger(ramSize) || ramSize <= 0) throw new E820Error(`RAM size must be a positive integer, got ${ramSize}`);
  const sorted = [...regions].sort((a, b) => a.addr - b.addr);
  for (const region of sorted) {
    if (!Number.isSafeInteger(region.addr) || !Number.isSafeInteger(region.size) || region.addr < 0 || region.size <= 0) {
      throw new E820Error(`e820 region ${region.name} has a bad range ${region.addr}+${region.size}`);
    }
  }
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const cur = sorted[i]!;
    if (cur.addr < prev.addr + prev.size) throw new E820Error(`e820 regions ${prev.name} and ${cur.name} overlap`);
  }

  const entries: E820Entry[] = [];
  let ramCursor = 0;
  for (const region of sorted) {
    if (region.addr > ramCursor && ramCursor < ramSize) {
      push(entries, { addr: ramCursor, size: Math.min(region.addr, ramSize) - ramCursor, type: E820_RAM });
    }
    push(entries, { addr: region.addr, size: region.size, type: region.type });
    ramCursor = Math.max(ramCursor, region.addr + region.size);
  }
  if (ramCursor < ramSize) push(entries, { addr: ramCursor, size: ramSize - ramCursor, type: E820_RAM });

  if (entries.length > E820_MAX_ENTRIES_ZEROPAGE) {
    throw new E820Error(`the memory map needs ${entries.length} e820 entries; boot_params holds ${E820_MAX_ENTRIES_ZEROPAGE}`);
  }
  return entries;
}

function push(entries: E820Entry[], entry: E820Entry): void {
  const last = entries[entries.length - 1];
  if (last && last.type === entry.type && last.addr + last.size === entry.addr) {
    last.size += entry.size;
  } else {
    entries.push(entry);
  }
}

/** Writes `entries` in boot_params layout at `offset` of `view`. */
export function encodeE820Table(view: DataView, offset: number, entries: readonly E820Entry[]): void {
  if (entries.length > E820_MAX_ENTRIES_ZEROPAGE) throw new E820Error(`${entries.length} e820 entries exceed ${E820_MAX_ENTRIES_ZEROPAGE}`);
  entries.forEach((entry, i) => {
    const at = offset + i * E820_ENTRY_SIZE;
    view.setBigUint64(at, BigInt(entry.addr), true);
    view.setBigUint64(at + 8, BigInt(entry.size), true);
    view.setUint32(at + 16, entry.type, true);
  });
}

export function e820TypeName(type: number): string {
  return type === E820_RAM ? 'RAM' : type === E820_RESERVED ? 'reserved' : type === E820_ACPI ? 'ACPI' : `type ${type}`;
}
