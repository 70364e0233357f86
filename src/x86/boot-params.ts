// struct boot_params, the "zero page" a boot loader hands a Linux kernel in %rsi at the
// 64-bit entry (arch/x86/include/uapi/asm/bootparam.h, Documentation/arch/x86/zero-page.rst).
// Everything not set here stays zero, which is what the kernel expects from a loader that
// has no BIOS to ask (no video, no EDD, no APM, no EFI).
import {
  CAN_USE_HEAP,
  LOADED_HIGH,
  HDR,
  SETUP_HEADER_OFFSET,
  type BzImage,
} from './bzimage.js';
import { E820_MAX_ENTRIES_ZEROPAGE, encodeE820Table, type E820Entry } from './e820.js';

export const BOOT_PARAMS_BYTES = 4096;

/** boot_params offsets outside the setup header (the header's own are in bzimage.ts HDR). */
export const BP = {
  acpiRsdpAddr: 0x070,
  extRamdiskImage: 0x0c0,
  extRamdiskSize: 0x0c4,
  extCmdLinePtr: 0x0c8,
  e820Entries: 0x1e8,
  /** Non-zero tells the kernel a loader copied stale bytes over boot_params (it then clears fields). */
  sentinel: 0x1ef,
  e820Table: 0x2d0,
} as const;

/** type_of_loader 0xff: "undefined" loader, what the boot protocol asks of loaders without an assigned id. */
export const LOADER_TYPE_UNDEFINED = 0xff;
/**
 * acpi_rsdp_addr (boot_params 0x070) is read by kernels from about Linux 5.0, whose header
 * says protocol 2.14; older kernels ignore those bytes and find the RSDP by scanning
 * 0xe0000-0xfffff, which is why the layout keeps it there too.
 */
export const MIN_PROTOCOL_FOR_ACPI_RSDP = 0x020e;
/** hardware_subarch X86_SUBARCH_PC: a normal PC, no special early platform code. */
export const X86_SUBARCH_PC = 0;

export interface BootParamsOptions {
  cmdlineGpa: number;
  /** Command line length in bytes, not counting the NUL. */
  cmdlineLength: number;
  initrdGpa?: number;
  initrdSize?: number;
  e820: readonly E820Entry[];
  acpiRsdpGpa?: number;
}

export function buildBootParams(image: BzImage, o: BootParamsOptions): Uint8Array {
  if (o.e820.length > E820_MAX_ENTRIES_ZEROPAGE) throw new RangeError(`${o.e820.length} e820 entries exceed ${E820_MAX_ENTRIES_ZEROPAGE}`);
  const bytes = new Uint8Array(BOOT_PARAMS_BYTES);
  const view = new DataView(bytes.buffer);

  // The setup header goes over verbatim (it holds values the kernel reads back, such as
  // kernel_alignment and init_size); the sentinel at 0x1ef lies before it and stays zero.
  bytes.set(image.bytes.subarray(SETUP_HEADER_OFFSET, image.headerEnd), SETUP_HEADER_OFFSET);

  bytes[HDR.typeOfLoader] = LOADER_TYPE_UNDEFINED;
  // LOADED_HIGH stays (the payload is above 1 MiB). CAN_USE_HEAP is cleared: it tells the
  // 16-bit setup code that heap_end_ptr is valid, and the 64-bit entry skips that code,
  // so there is no setup heap to describe. The other bits are the kernel's own defaults.
  bytes[HDR.loadflags] = (image.loadflags | LOADED_HIGH) & ~CAN_USE_HEAP & 0xff;
  view.setUint16(HDR.heapEndPtr, 0, true);

  setSplit64(view, HDR.cmdLinePtr, BP.extCmdLinePtr, o.cmdlineGpa);
  setSplit64(view, HDR.ramdiskImage, BP.extRamdiskImage, o.initrdGpa ?? 0);
  setSplit64(view, HDR.ramdiskSize, BP.extRamdiskSize, o.initrdSize ?? 0);

  view.setUint32(HDR.hardwareSubarch, X86_SUBARCH_PC, true);
  view.setBigUint64(HDR.hardwareSubarchData, 0n, true);
  // No setup_data chain: nothing extra (no DTB, no EFI, no RNG seed) is handed over.
  view.setBigUint64(HDR.setupData, 0n, true);

  bytes[BP.e820Entries] = o.e820.length;
  encodeE820Table(view, BP.e820Table, o.e820);

  if (o.acpiRsdpGpa !== undefined && image.protocolVersion >= MIN_PROTOCOL_FOR_ACPI_RSDP) {
    view.setBigUint64(BP.acpiRsdpAddr, BigInt(o.acpiRsdpGpa), true);
  }
  return bytes;
}

/** A 64-bit value kept as a 32-bit header field plus its ext_* upper half (protocol 2.12+ reads both). */
function setSplit64(view: DataView, lowOffset: number, highOffset: number, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`boot_params value ${value} is not a valid address or size`);
  view.setUint32(lowOffset, value % 2 ** 32, true);
  view.setUint32(highOffset, Math.floor(value / 2 ** 32), true);
}
