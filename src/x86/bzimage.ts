// A Linux x86 bzImage as the boot protocol describes it (Documentation/arch/x86/boot.rst):
// a real-mode setup area of (setup_sects + 1) sectors whose setup header, at file offset
// 0x1f1, tells a boot loader where and how to load the protected-mode payload behind it.
// enlighten only uses the 64-bit entry point, so only kernels that declare one are accepted.
// The file is untrusted input (a user names it): every read is bounds-checked and every
// failure is a BootImageError naming what was wrong.

export class BootImageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BootImageError';
  }
}

/** The setup header starts at this file offset (and at the same offset in boot_params). */
export const SETUP_HEADER_OFFSET = 0x1f1;
/** The "HdrS" signature; the byte before it (0x201) is the header length minus 0x202. */
export const HEADER_MAGIC_OFFSET = 0x202;
export const HEADER_MAGIC = 0x53726448; // "HdrS" read as a little-endian u32
/** The last field enlighten reads, init_size (protocol 2.10), ends here. */
const MIN_HEADER_END = 0x264;
/** boot_params keeps room for the setup header up to edd_mbr_sig_buffer at 0x290. */
export const MAX_HEADER_END = 0x290;
const SECTOR_SIZE = 512;

/** Header field offsets (file offset == boot_params offset). */
export const HDR = {
  setupSects: 0x1f1,
  syssize: 0x1f4,
  jump: 0x200,
  version: 0x206,
  kernelVersion: 0x20e,
  typeOfLoader: 0x210,
  loadflags: 0x211,
  ramdiskImage: 0x218,
  ramdiskSize: 0x21c,
  heapEndPtr: 0x224,
  cmdLinePtr: 0x228,
  initrdAddrMax: 0x22c,
  kernelAlignment: 0x230,
  relocatableKernel: 0x234,
  minAlignment: 0x235,
  xloadflags: 0x236,
  cmdlineSize: 0x238,
  hardwareSubarch: 0x23c,
  hardwareSubarchData: 0x240,
  setupData: 0x250,
  prefAddress: 0x258,
  initSize: 0x260,
} as const;

/** loadflags bits. */
export const LOADED_HIGH = 1 << 0;
export const KASLR_FLAG = 1 << 1;
export const QUIET_FLAG = 1 << 5;
export const KEEP_SEGMENTS = 1 << 6;
export const CAN_USE_HEAP = 1 << 7;

/** xloadflags bits. */
export const XLF_KERNEL_64 = 1 << 0;
export const XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1;

/** The 64-bit entry point is 0x200 bytes into the protected-mode payload (protocol 2.12+ documents it via xloadflags). */
export const ENTRY_64_OFFSET = 0x200;
export const MIN_PROTOCOL_FOR_64BIT_ENTRY = 0x020c;

/** The longest kernel version string read (the real one is about 120 characters). */
const MAX_VERSION_LENGTH = 512;

export interface BzImage {
  /** The whole file: boot_params copies the setup header from it, loadLinux the payload. */
  bytes: Uint8Array;
  /** Sectors of real-mode setup code after the boot sector (0 in the file means 4). */
  setupSects: number;
  /** Boot protocol version, major << 8 | minor (0x020f is 2.15). */
  protocolVersion: number;
  /** File offset where the setup header ends (0x202 + the byte at 0x201). */
  headerEnd: number;
  loadflags: number;
  xloadflags: number;
  /** Physical alignment a relocatable kernel needs (a power of two). */
  kernelAlignment: number;
  relocatable: boolean;
  /** Where the kernel prefers to be loaded (u64 in the header; 0 = no preference). */
  prefAddress: bigint;
  /** Bytes of memory the kernel needs from its (aligned) load address during decompression. */
  initSize: number;
  /** Longest command line the kernel accepts, not counting the terminating NUL. */
  cmdlineSize: number;
  /** Highest address the last byte of the initramfs may occupy. */
  initrdAddrMax: number;
  /** File offset of the protected-mode payload: (setupSects + 1) * 512. */
  payloadOffset: number;
  payloadSize: number;
  /** The kernel_version string ("6.1.0-50-cloud-amd64 (debian-kernel@...) #1 SMP ..."); '' when the image has no readable one. */
  kernelVersion: string;
}

/** The protected-mode payload, the part loaded at the kernel load address. */
export function bzImagePayload(image: BzImage): Uint8Array {
  return image.bytes.subarray(image.payloadOffset, image.payloadOffset + image.payloadSize);
}

export function protocolVersionText(version: number): string {
  return `${version >> 8}.${(version & 0xff).toString().padStart(2, '0')}`;
}

export function parseBzImage(bytes: Uint8Array): BzImage {
  if (!(bytes instanceof Uint8Array)) throw new BootImageError('not a bzImage: expected the file contents as bytes');
  if (bytes.length < HEADER_MAGIC_OFFSET + 4) {
    throw new BootImageError(`not a bzImage: ${bytes.length} bytes is too short to hold a setup header (needs at least ${HEADER_MAGIC_OFFSET + 4})`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (view.getUint32(HEADER_MAGIC_OFFSET, true) !== HEADER_MAGIC) {
    throw new BootImageError(`not a bzImage: no HdrS signature at 0x${HEADER_MAGIC_OFFSET.toString(16)}`);
  }
  if (bytes.length < HDR.version + 2) throw new BootImageError('not a bzImage: the file ends inside the setup header');
  const protocolVersion = view.getUint16(HDR.version, true);
  if (protocolVersion < MIN_PROTOCOL_FOR_64BIT_ENTRY) {
    throw new BootImageError(
      `boot protocol ${protocolVersionText(protocolVersion)} is too old: the 64-bit entry point needs protocol ${protocolVersionText(MIN_PROTOCOL_FOR_64BIT_ENTRY)} or later (Linux 3.8+)`,
    );
  }
  const headerEnd = HEADER_MAGIC_OFFSET + bytes[HDR.jump + 1]!;
  if (headerEnd < MIN_HEADER_END || headerEnd > MAX_HEADER_END) {
    throw new BootImageError(
      `setup header length byte at 0x201 says the header ends at 0x${headerEnd.toString(16)}; protocol ${protocolVersionText(protocolVersion)} needs 0x${MIN_HEADER_END.toString(16)}..0x${MAX_HEADER_END.toString(16)}`,
    );
  }
  if (bytes.length < headerEnd) {
    throw new BootImageError(`truncated bzImage: ${bytes.length} bytes, but the setup header ends at 0x${headerEnd.toString(16)}`);
  }

  const rawSetupSects = bytes[HDR.setupSects]!;
  const setupSects = rawSetupSects === 0 ? 4 : rawSetupSects;
  const payloadOffset = (setupSects + 1) * SECTOR_SIZE;
  if (payloadOffset >= bytes.length) {
    throw new BootImageError(
      `truncated bzImage: setup_sects ${rawSetupSects} puts the protected-mode payload at offset ${payloadOffset}, but the file has ${bytes.length} bytes`,
    );
  }
  const payloadSize = bytes.length - payloadOffset;
  const syssizeBytes = view.getUint32(HDR.syssize, true) * 16;
  if (syssizeBytes > payloadSize) {
    throw new BootImageError(`truncated bzImage: syssize says the payload has ${syssizeBytes} bytes, the file holds ${payloadSize}`);
  }

  const loadflags = bytes[HDR.loadflags]!;
  if ((loadflags & LOADED_HIGH) === 0) {
    throw new BootImageError('not a bzImage: loadflags LOADED_HIGH is clear (a zImage, loaded below 1 MiB, has no 64-bit entry)');
  }
  const xloadflags = view.getUint16(HDR.xloadflags, true);
  if ((xloadflags & XLF_KERNEL_64) === 0) {
    throw new BootImageError('kernel has no 64-bit entry point: xloadflags XLF_KERNEL_64 (bit 0) is clear (a 32-bit kernel?)');
  }

  const relocatable = bytes[HDR.relocatableKernel]! !== 0;
  const kernelAlignment = view.getUint32(HDR.kernelAlignment, true);
  if (relocatable && !isPowerOfTwo(kernelAlignment)) {
    throw new BootImageError(`relocatable kernel with kernel_alignment 0x${kernelAlignment.toString(16)}, which is not a power of two`);
  }
  const initSize = view.getUint32(HDR.initSize, true);
  if (initSize === 0) throw new BootImageError('setup header init_size is 0: the kernel does not say how much memory it needs');

  return {
    bytes,
    setupSects,
    protocolVersion,
    headerEnd,
    loadflags,
    xloadflags,
    kernelAlignment,
    relocatable,
    prefAddress: view.getBigUint64(HDR.prefAddress, true),
    initSize,
    cmdlineSize: view.getUint32(HDR.cmdlineSize, true),
    initrdAddrMax: view.getUint32(HDR.initrdAddrMax, true),
    payloadOffset,
    payloadSize,
    kernelVersion: readKernelVersion(bytes, view, payloadOffset),
  };
}

/**
 * kernel_version holds (string offset - 0x200) into the setup area. A missing or broken
 * pointer does not make the kernel unbootable, so it yields '' rather than an error.
 */
function readKernelVersion(bytes: Uint8Array, view: DataView, setupEnd: number): string {
  const pointer = view.getUint16(HDR.kernelVersion, true);
  if (pointer === 0) return '';
  const start = pointer + 0x200;
  const limit = Math.min(setupEnd, start + MAX_VERSION_LENGTH);
  let text = '';
  for (let i = start; i < limit; i++) {
    const c = bytes[i]!;
    if (c === 0) return text;
    if (c < 0x20 || c > 0x7e) return '';
    text += String.fromCharCode(c);
  }
  return ''; // no NUL inside the setup area
}

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}
