// The fixed guest-physical layout of enlighten's x86 machine. Everything the VMM puts in
// guest RAM before the first instruction, and every address range it keeps from the guest,
// is named here once; direct boot, ACPI, the e820 map and the stub-guest tests all use it.
//
//   0x0000_0000  real-mode IVT + BIOS data area  RAM, left zero (Linux reserves page 0 itself)
//   0x0000_1000  GDT                             boot GDT (long-mode.ts)
//   0x0000_2000  IDT                             empty: interrupts stay off until Linux loads its own
//   0x0000_3000  boot_params                     the "zero page" handed over in %rsi
//   0x0000_4000  page tables                     PML4, PDPT, 4 PDs: first 4 GiB identity-mapped
//   0x0000_a000  boot stack                      16 KiB, grows down from 0xe000
//   0x0002_0000  kernel command line             NUL-terminated, at most 64 KiB here
//   0x0009_fc00  EBDA ... 0x000d_ffff            reserved (EBDA, VGA hole, option ROMs)
//   0x000e_0000  ACPI tables + RSDP              reserved; Linux scans 0xe0000-0xfffff for the RSDP
//   0x0010_0000  free RAM
//   0x0100_0000  kernel (protected-mode payload) 16 MiB, or pref_address; init_size bytes from here
//   ...          free RAM
//   top of RAM   initramfs                      page-aligned, below initrd_addr_max
//   0xc000_0000  end of RAM at most (RAM_BELOW_4G_MAX); 32-bit MMIO hole above
//   0xfeff_c000  KVM identity-map page           outside RAM, reserved in e820 (as QEMU does)
//   0xfeff_d000  KVM TSS (3 pages)               outside RAM, reserved in e820
//
// Everything below 1 MiB that the boot writes is consumed (copied) by Linux before it
// builds its own GDT, IDT and page tables, and Linux reserves the whole first 1 MiB anyway.
import { PAGE_SIZE } from '../memory/page.js';
import { RAM_BELOW_4G_MAX } from './platform-ports.js';
import type { BzImage } from './bzimage.js';
import { E820_RESERVED, type E820Region } from './e820.js';

export class BootLayoutError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BootLayoutError';
  }
}

const KiB = 1024;
const MiB = 1024 * KiB;

/** The boot GDT: null, null, __BOOT_CS 0x10, __BOOT_DS 0x18, a TSS descriptor at 0x20 (16 bytes). */
export const GDT_GPA = 0x1000;
/** An all-zero IDT: any exception before Linux installs its own ends in a triple fault (a visible failure). */
export const IDT_GPA = 0x2000;
export const BOOT_PARAMS_GPA = 0x3000;
export const BOOT_PARAMS_SIZE = 4096;
/** PML4 at +0, PDPT at +0x1000, the four page directories at +0x2000..+0x5000. */
export const PAGE_TABLES_GPA = 0x4000;
export const PAGE_TABLES_SIZE = 6 * PAGE_SIZE;
/** The boot stack: Linux's entry code switches to its own at once, but %rsp must point at RAM. */
export const BOOT_STACK_BOTTOM = 0xa000;
export const BOOT_STACK_TOP = 0xe000;
export const CMDLINE_GPA = 0x20000;
/** Room for the command line including its NUL; the kernel's cmdline_size limits it further. */
export const CMDLINE_MAX_BYTES = 64 * KiB;

/** The extended BIOS data area starts here by convention; Linux reserves from it up to 1 MiB. */
export const EBDA_START = 0x9fc00;
/** ACPI tables live in the BIOS area, where Linux's RSDP scan looks when acpi_rsdp_addr is absent. */
export const ACPI_REGION_GPA = 0xe0000;
export const ACPI_REGION_SIZE = 0x20000;
export const HIGH_MEMORY_START = 0x100000;

/** Where the kernel goes when the header names no usable pref_address (LOAD_PHYSICAL_ADDR's default). */
export const DEFAULT_KERNEL_LOAD_ADDRESS = 16 * MiB;

/** KVM_SET_IDENTITY_MAP_ADDR: one page KVM uses for real-mode emulation on Intel; never RAM. */
export const KVM_IDENTITY_MAP_GPA = 0xfeffc000;
/** KVM_SET_TSS_ADDR: three pages right after the identity-map page; never RAM. */
export const KVM_TSS_GPA = 0xfeffd000;
export const KVM_TSS_SIZE = 3 * PAGE_SIZE;

/** Smallest RAM a Linux guest is given: a distribution kernel needs ~52 MiB just to decompress. */
export const MIN_KERNEL_RAM_BYTES = 64 * MiB;
/** RAM sizes are whole 2 MiB pages, the granularity of the boot page tables. */
export const RAM_SIZE_GRANULE = 2 * MiB;

/** Why `bytes` cannot be the guest's RAM size, or undefined when it can. */
export function guestRamProblem(bytes: number, minimum = MIN_KERNEL_RAM_BYTES): string | undefined {
  if (!Number.isSafeInteger(bytes) || bytes <= 0) return `RAM size must be a positive whole number of bytes, got ${bytes}`;
  if (bytes < minimum) return `RAM size ${describeSize(bytes)} is too small: a Linux guest needs at least ${describeSize(minimum)}`;
  if (bytes > RAM_BELOW_4G_MAX) {
    return `RAM size ${describeSize(bytes)} is too large: at most ${describeSize(RAM_BELOW_4G_MAX)} (guest RAM lies below the 32-bit MMIO hole at 0x${RAM_BELOW_4G_MAX.toString(16)})`;
  }
  if (bytes % RAM_SIZE_GRANULE !== 0) return `RAM size ${describeSize(bytes)} is not a multiple of 2 MiB`;
  return undefined;
}

export function validateGuestRam(bytes: number, minimum = MIN_KERNEL_RAM_BYTES): void {
  const problem = guestRamProblem(bytes, minimum);
  if (problem !== undefined) throw new BootLayoutError(problem);
}

/** The areas the e820 map keeps from the guest (the rest of RAM is usable). */
export function reservedRegions(): E820Region[] {
  return [
    { name: 'EBDA, VGA hole and option ROM area', addr: EBDA_START, size: ACPI_REGION_GPA - EBDA_START, type: E820_RESERVED },
    // Reserved rather than ACPI-reclaimable: it is the PC BIOS area, and the DSDT's AML
    // is interpreted from this memory for the life of the guest.
    { name: 'ACPI tables and RSDP', addr: ACPI_REGION_GPA, size: ACPI_REGION_SIZE, type: E820_RESERVED },
    { name: 'KVM identity map and TSS', addr: KVM_IDENTITY_MAP_GPA, size: PAGE_SIZE + KVM_TSS_SIZE, type: E820_RESERVED },
  ];
}

/**
 * Where the protected-mode payload goes: pref_address when the kernel is relocatable and
 * that address is usable (above 1 MiB, aligned as the kernel asks, within RAM), otherwise 16 MiB.
 */
export function kernelLoadAddress(image: BzImage, ramSize: number): number {
  const pref = image.prefAddress;
  if (image.relocatable && pref >= BigInt(HIGH_MEMORY_START) && pref < BigInt(ramSize)) {
    const address = Number(pref);
    if (address % image.kernelAlignment === 0 && kernelEnd(image, address) <= ramSize) return address;
  }
  return DEFAULT_KERNEL_LOAD_ADDRESS;
}

/**
 * The first address above the memory the kernel claims while it starts: the payload
 * itself, and init_size bytes from where it will run (a relocatable kernel rounds its
 * load address up to kernel_alignment; a fixed one runs at pref_address).
 */
export function kernelEnd(image: BzImage, loadAddress: number): number {
  let runAddress = loadAddress;
  if (image.relocatable) {
    runAddress = Math.ceil(loadAddress / image.kernelAlignment) * image.kernelAlignment;
  } else if (image.prefAddress >= BigInt(HIGH_MEMORY_START) && image.prefAddress <= BigInt(RAM_BELOW_4G_MAX)) {
    runAddress = Number(image.prefAddress);
  }
  return Math.max(loadAddress + image.payloadSize, runAddress + image.initSize);
}

/**
 * The initramfs goes as high as it can (below initrd_addr_max and the top of RAM, page
 * aligned), where it is furthest from the kernel's decompression buffer.
 */
export function initrdAddress(image: BzImage, ramSize: number, initrdSize: number, kernelLimit: number): number {
  const ceiling = Math.min(ramSize, image.initrdAddrMax + 1);
  const address = Math.floor((ceiling - initrdSize) / PAGE_SIZE) * PAGE_SIZE;
  if (initrdSize > ceiling || address < kernelLimit) {
    throw new BootLayoutError(
      `initrd does not fit: ${describeSize(initrdSize)} must lie between the kernel's end at 0x${kernelLimit.toString(16)} ` +
        `and 0x${ceiling.toString(16)} (top of RAM ${describeSize(ramSize)}, initrd_addr_max 0x${image.initrdAddrMax.toString(16)}), ` +
        `leaving ${describeSize(Math.max(0, ceiling - kernelLimit))}; give the guest more memory`,
    );
  }
  return address;
}

export function describeSize(bytes: number): string {
  if (bytes >= MiB && bytes % MiB === 0) return `${bytes / MiB} MiB`;
  if (bytes >= MiB) return `${(bytes / MiB).toFixed(1)} MiB (${bytes} bytes)`;
  if (bytes >= KiB && bytes % KiB === 0) return `${bytes / KiB} KiB`;
  return `${bytes} bytes`;
}
