// Direct boot of a Linux bzImage through the 64-bit boot protocol: no firmware runs. The
// VMM does what a boot loader would (load the payload, initramfs and command line, fill
// boot_params with the e820 map) and what the kernel's own setup code would (enter long
// mode with an identity map and a flat GDT), then starts the vCPU at the 64-bit entry.
import type { GuestMemory } from '../memory/guest-memory.js';
import { PAGE_SIZE } from '../memory/page.js';
import { buildBootParams } from './boot-params.js';
import { BootImageError, bzImagePayload, ENTRY_64_OFFSET, parseBzImage, type BzImage } from './bzimage.js';
import { GENERAL_REGISTER_NAMES, type GeneralRegisters, type SpecialRegisters } from './cpu-state.js';
import { buildE820Table, type E820Entry } from './e820.js';
import {
  ACPI_REGION_GPA,
  ACPI_REGION_SIZE,
  BOOT_PARAMS_GPA,
  BOOT_PARAMS_SIZE,
  BOOT_STACK_BOTTOM,
  BOOT_STACK_TOP,
  BootLayoutError,
  CMDLINE_GPA,
  CMDLINE_MAX_BYTES,
  describeSize,
  GDT_GPA,
  IDT_GPA,
  initrdAddress,
  kernelEnd,
  kernelLoadAddress,
  PAGE_TABLES_GPA,
  reservedRegions,
  validateGuestRam,
} from './guest-layout.js';
import { BOOT_GDT_LIMIT, longModeSpecialRegisters, writeBootGdt, writeIdentityPageTables } from './long-mode.js';

/** ACPI tables built elsewhere (src/x86/acpi), placed whole at `gpa` inside the ACPI region. */
export interface AcpiPlacement {
  bytes: Uint8Array;
  gpa: number;
  /** Where the RSDP is, inside `bytes`; 16-byte aligned so Linux's BIOS-area scan finds it too. */
  rsdpGpa: number;
}

export interface LoadLinuxOptions {
  /** The bzImage file's contents. */
  kernel: Uint8Array;
  /** An initramfs (cpio, possibly compressed); none when absent. */
  initrd?: Uint8Array;
  cmdline: string;
  acpi?: AcpiPlacement;
}

/** Every address the boot used, for diagnostics and tests. */
export interface BootLayout {
  ramSize: number;
  kernelLoadAddress: number;
  /** First address above the payload and the kernel's init_size working area. */
  kernelEnd: number;
  entryPoint: number;
  bootParamsGpa: number;
  cmdlineGpa: number;
  /** Bytes of command line, not counting the NUL. */
  cmdlineLength: number;
  initrdGpa?: number;
  initrdSize?: number;
  acpiGpa?: number;
  acpiSize?: number;
  acpiRsdpGpa?: number;
  pml4Gpa: number;
  gdtGpa: number;
  gdtLimit: number;
  idtGpa: number;
  stackTop: number;
  e820: E820Entry[];
}

export interface BootState {
  regs: GeneralRegisters;
  sregs: SpecialRegisters;
  layout: BootLayout;
  image: BzImage;
}

/** The RSDP's fixed part (ACPI 1.0, 20 bytes) must fit; the extended part is the ACPI builder's concern. */
const RSDP_V1_SIZE = 20;
const RFLAGS_RESERVED_BIT1 = 0x2n;

/**
 * Writes everything a Linux guest needs into `memory` and returns the vCPU state that
 * starts it. Throws BootImageError for a bad kernel file and BootLayoutError when the
 * pieces do not fit this RAM; guest memory is only written after all checks pass.
 */
export function loadLinux(memory: GuestMemory, o: LoadLinuxOptions): BootState {
  const image = parseBzImage(o.kernel);
  const ramSize = memory.size;
  validateGuestRam(ramSize);

  const loadAddress = kernelLoadAddress(image, ramSize);
  const kernelLimit = kernelEnd(image, loadAddress);
  if (kernelLimit > ramSize) {
    throw new BootLayoutError(
      `kernel does not fit: loaded at 0x${loadAddress.toString(16)} it needs memory up to 0x${kernelLimit.toString(16)} ` +
        `(payload ${describeSize(image.payloadSize)}, init_size ${describeSize(image.initSize)}), but RAM is ${describeSize(ramSize)}`,
    );
  }

  const cmdline = encodeCmdline(o.cmdline, image);

  let initrdGpa: number | undefined;
  if (o.initrd !== undefined) {
    if (o.initrd.length === 0) throw new BootLayoutError('initrd is empty (leave it out to boot without one)');
    initrdGpa = initrdAddress(image, ramSize, o.initrd.length, kernelLimit);
  }

  if (o.acpi !== undefined) checkAcpiPlacement(o.acpi);

  const e820 = buildE820Table(ramSize, reservedRegions());
  const bootParams = buildBootParams(image, {
    cmdlineGpa: CMDLINE_GPA,
    cmdlineLength: cmdline.length,
    initrdGpa,
    initrdSize: o.initrd?.length,
    e820,
    acpiRsdpGpa: o.acpi?.rsdpGpa,
  });

  // All checks passed: write guest RAM.
  memory.slice(loadAddress, image.payloadSize).set(bzImagePayload(image));
  if (o.initrd !== undefined && initrdGpa !== undefined) memory.slice(initrdGpa, o.initrd.length).set(o.initrd);
  const cmdlineArea = memory.slice(CMDLINE_GPA, CMDLINE_MAX_BYTES);
  cmdlineArea.fill(0);
  cmdlineArea.set(cmdline);
  memory.slice(BOOT_PARAMS_GPA, BOOT_PARAMS_SIZE).set(bootParams);
  if (o.acpi !== undefined) memory.slice(o.acpi.gpa, o.acpi.bytes.length).set(o.acpi.bytes);
  memory.slice(IDT_GPA, PAGE_SIZE).fill(0);
  memory.slice(BOOT_STACK_BOTTOM, BOOT_STACK_TOP - BOOT_STACK_BOTTOM).fill(0);
  writeIdentityPageTables(memory, PAGE_TABLES_GPA);
  writeBootGdt(memory, GDT_GPA);

  const entryPoint = loadAddress + ENTRY_64_OFFSET;
  const regs = Object.fromEntries(GENERAL_REGISTER_NAMES.map((name) => [name, 0n])) as GeneralRegisters;
  regs.rip = BigInt(entryPoint);
  regs.rsi = BigInt(BOOT_PARAMS_GPA);
  regs.rsp = BigInt(BOOT_STACK_TOP);
  regs.rflags = RFLAGS_RESERVED_BIT1; // IF clear: the protocol enters with interrupts off

  const sregs = longModeSpecialRegisters({
    pml4Gpa: PAGE_TABLES_GPA,
    gdtGpa: GDT_GPA,
    gdtLimit: BOOT_GDT_LIMIT,
    idt: { base: BigInt(IDT_GPA), limit: 0 },
  });

  const layout: BootLayout = {
    ramSize,
    kernelLoadAddress: loadAddress,
    kernelEnd: kernelLimit,
    entryPoint,
    bootParamsGpa: BOOT_PARAMS_GPA,
    cmdlineGpa: CMDLINE_GPA,
    cmdlineLength: cmdline.length,
    pml4Gpa: PAGE_TABLES_GPA,
    gdtGpa: GDT_GPA,
    gdtLimit: BOOT_GDT_LIMIT,
    idtGpa: IDT_GPA,
    stackTop: BOOT_STACK_TOP,
    e820,
  };
  if (initrdGpa !== undefined && o.initrd !== undefined) {
    layout.initrdGpa = initrdGpa;
    layout.initrdSize = o.initrd.length;
  }
  if (o.acpi !== undefined) {
    layout.acpiGpa = o.acpi.gpa;
    layout.acpiSize = o.acpi.bytes.length;
    layout.acpiRsdpGpa = o.acpi.rsdpGpa;
  }
  return { regs, sregs, layout, image };
}

/** The command line as the NUL-free bytes the kernel will copy (UTF-8; Linux treats it as bytes). */
function encodeCmdline(cmdline: string, image: BzImage): Uint8Array {
  if (typeof cmdline !== 'string') throw new BootLayoutError('the kernel command line must be a string');
  if (cmdline.includes('\0')) throw new BootLayoutError('the kernel command line contains a NUL character');
  const bytes = new TextEncoder().encode(cmdline);
  const limit = Math.min(image.cmdlineSize, CMDLINE_MAX_BYTES - 1);
  if (bytes.length > limit) {
    throw new BootLayoutError(`kernel command line does not fit: ${bytes.length} bytes, the kernel accepts at most ${limit} (cmdline_size)`);
  }
  return bytes;
}

function checkAcpiPlacement(acpi: AcpiPlacement): void {
  const { bytes, gpa, rsdpGpa } = acpi;
  const regionEnd = ACPI_REGION_GPA + ACPI_REGION_SIZE;
  if (!Number.isSafeInteger(gpa) || gpa < ACPI_REGION_GPA || gpa + bytes.length > regionEnd) {
    throw new BootLayoutError(
      `ACPI tables do not fit: ${describeSize(bytes.length)} at 0x${Number(gpa).toString(16)} must lie within ` +
        `0x${ACPI_REGION_GPA.toString(16)}-0x${(regionEnd - 1).toString(16)} (${describeSize(ACPI_REGION_SIZE)})`,
    );
  }
  if (!Number.isSafeInteger(rsdpGpa) || rsdpGpa % 16 !== 0 || rsdpGpa < gpa || rsdpGpa + RSDP_V1_SIZE > gpa + bytes.length) {
    throw new BootLayoutError(`ACPI RSDP at 0x${Number(rsdpGpa).toString(16)} must be 16-byte aligned and inside the ACPI tables at 0x${gpa.toString(16)}+${bytes.length}`);
  }
}

export { BootImageError, BootLayoutError };
