// INQUIRY answers of a virtual disk: the standard data Linux's scan reads (36 bytes, then
// "additional length + 5") and the VPD pages sd consults (serial, identifiers, block limits,
// rotation rate, provisioning). Built once per disk; INQUIRY then copies the requested page
// truncated to the allocation length.
import { createHash } from 'node:crypto';
import { putBe16, putBe32, putBe64 } from './scsi-cdb.js';
import { VpdPage } from './scsi-opcodes.js';

export const STANDARD_INQUIRY_BYTES = 96;
const VENDOR = 'Msft    ';
const PRODUCT = 'Virtual Disk    ';
const REVISION = '1.0 ';
/** SPC-4. Linux tries READ CAPACITY(16) first for version >= 5 (SPC-3). */
const VERSION_SPC4 = 0x06;
/** Microsoft's IEEE company id, as in the NAA identifiers Hyper-V reports (60022480...). */
const MICROSOFT_OUI = 0x002248;
/** Longest serial number reported; longer ones are cut (the page stays small). */
export const MAX_SERIAL_BYTES = 128;

/** The Block Limits page numbers (VPD 0xB0), in logical blocks. */
export interface BlockLimits {
  /** MAXIMUM TRANSFER LENGTH; READ/WRITE beyond it are refused. */
  readonly maxTransferBlocks: number;
  /** OPTIMAL TRANSFER LENGTH GRANULARITY (the physical block). */
  readonly optimalGranularityBlocks: number;
  /** MAXIMUM UNMAP LBA COUNT (0 without discard). */
  readonly maxUnmapBlocks: number;
  /** MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT (0 without discard). */
  readonly maxUnmapDescriptors: number;
  readonly unmapGranularityBlocks: number;
  /** MAXIMUM WRITE SAME LENGTH. */
  readonly maxWriteSameBlocks: number;
}

export interface InquiryIdentity {
  readonly serial: string;
  readonly discard: boolean;
  readonly limits: BlockLimits;
}

function putAscii(bytes: Uint8Array, offset: number, text: string): void {
  for (let i = 0; i < text.length; i++) bytes[offset + i] = text.charCodeAt(i);
}

/**
 * Standard INQUIRY data (SPC-4 6.4.2). `peripheral` is byte 0: 0x00 for a disk, 0x7F for
 * a LUN with no unit behind it.
 */
export function buildStandardInquiry(peripheral: number): Uint8Array {
  const data = new Uint8Array(STANDARD_INQUIRY_BYTES);
  data[0] = peripheral;
  data[1] = 0x00; // not removable
  data[2] = VERSION_SPC4;
  data[3] = 0x02; // response data format 2
  data[4] = STANDARD_INQUIRY_BYTES - 5; // additional length
  data[7] = 0x02; // CmdQue: tagged command queuing
  putAscii(data, 8, VENDOR);
  putAscii(data, 16, PRODUCT);
  putAscii(data, 32, REVISION);
  // Version descriptors: SAM-5, SPC-4, SBC-3.
  putBe16(data, 58, 0x00a0);
  putBe16(data, 60, 0x0460);
  putBe16(data, 62, 0x04c0);
  return data;
}

/**
 * The serial as VPD reports it: printable ASCII without spaces (udev builds device names
 * from it), at most MAX_SERIAL_BYTES.
 */
export function sanitizeSerial(serial: string): string {
  let out = '';
  for (let i = 0; i < serial.length && out.length < MAX_SERIAL_BYTES; i++) {
    const c = serial.charCodeAt(i);
    if (c > 0x20 && c < 0x7f) out += serial[i];
  }
  return out;
}

/** A VPD page with the 4-byte header (byte 1 = page code, bytes 2..3 = page length). */
function vpdPage(code: number, pageLength: number): Uint8Array {
  const page = new Uint8Array(4 + pageLength);
  page[0] = 0x00; // peripheral: connected disk
  page[1] = code;
  putBe16(page, 2, pageLength);
  return page;
}

/** The pages this disk implements, ascending, as VPD 0x00 lists them. */
export const SUPPORTED_VPD_PAGES: readonly number[] = [
  VpdPage.SupportedPages,
  VpdPage.UnitSerialNumber,
  VpdPage.DeviceIdentification,
  VpdPage.BlockLimits,
  VpdPage.BlockDeviceCharacteristics,
  VpdPage.LogicalBlockProvisioning,
];

function buildSupportedPages(): Uint8Array {
  const page = vpdPage(VpdPage.SupportedPages, SUPPORTED_VPD_PAGES.length);
  page.set(SUPPORTED_VPD_PAGES, 4);
  return page;
}

function buildSerialNumber(serial: string): Uint8Array {
  const page = vpdPage(VpdPage.UnitSerialNumber, serial.length);
  putAscii(page, 4, serial);
  return page;
}

/**
 * NAA 6 (IEEE Registered Extended): 4-bit NAA, 24-bit company id, then 100 bits that are
 * the serial's SHA-256, so the same image always gets the same /dev/disk/by-id name.
 */
export function naaIdentifier(serial: string): Uint8Array {
  const hash = createHash('sha256').update(serial, 'utf8').digest();
  const id = new Uint8Array(16);
  id[0] = 0x60 | ((MICROSOFT_OUI >>> 20) & 0x0f);
  id[1] = (MICROSOFT_OUI >>> 12) & 0xff;
  id[2] = (MICROSOFT_OUI >>> 4) & 0xff;
  id[3] = ((MICROSOFT_OUI & 0x0f) << 4) | (hash[0]! & 0x0f);
  for (let i = 4; i < 16; i++) id[i] = hash[i - 3]!;
  return id;
}

function buildDeviceIdentification(serial: string): Uint8Array {
  const naaLength = 4 + 16;
  const t10Length = 4 + 8 + serial.length;
  const page = vpdPage(VpdPage.DeviceIdentification, naaLength + t10Length);
  let at = 4;
  // Designator 1: binary code set, association = logical unit, type 3 (NAA).
  page[at] = 0x01;
  page[at + 1] = 0x03;
  page[at + 3] = 16;
  page.set(naaIdentifier(serial), at + 4);
  at += naaLength;
  // Designator 2: ASCII code set, association = logical unit, type 1 (T10 vendor id):
  // the vendor, then the serial.
  page[at] = 0x02;
  page[at + 1] = 0x01;
  page[at + 3] = 8 + serial.length;
  putAscii(page, at + 4, VENDOR);
  putAscii(page, at + 12, serial);
  return page;
}

function buildBlockLimits(limits: BlockLimits): Uint8Array {
  const page = vpdPage(VpdPage.BlockLimits, 0x3c);
  page[4] = 0x01; // WSNZ: a WRITE SAME length of 0 ("to the end") is refused
  putBe16(page, 6, limits.optimalGranularityBlocks);
  putBe32(page, 8, limits.maxTransferBlocks);
  // OPTIMAL TRANSFER LENGTH (12..15) stays 0: no preference reported.
  putBe32(page, 20, limits.maxUnmapBlocks);
  putBe32(page, 24, limits.maxUnmapDescriptors);
  putBe32(page, 28, limits.unmapGranularityBlocks);
  if (limits.maxUnmapBlocks > 0) putBe32(page, 32, 0x80000000); // UGAVALID, alignment 0
  putBe64(page, 36, limits.maxWriteSameBlocks);
  return page;
}

function buildBlockDeviceCharacteristics(): Uint8Array {
  const page = vpdPage(VpdPage.BlockDeviceCharacteristics, 0x3c);
  putBe16(page, 4, 0x0001); // MEDIUM ROTATION RATE 1: non-rotating (solid state)
  return page;
}

function buildLogicalBlockProvisioning(discard: boolean): Uint8Array {
  const page = vpdPage(VpdPage.LogicalBlockProvisioning, 4);
  if (discard) {
    // LBPU (UNMAP), LBPWS (WRITE SAME(16)+UNMAP), LBPWS10, LBPRZ = 1 (unmapped reads zero).
    page[5] = 0x80 | 0x40 | 0x20 | 0x04;
    page[6] = 0x02; // provisioning type: thin
  }
  return page;
}

/** Every VPD page of one disk, indexed by page code. */
export class VpdPages {
  private readonly pages: (Uint8Array | undefined)[] = new Array(256).fill(undefined);

  constructor(identity: InquiryIdentity) {
    const serial = sanitizeSerial(identity.serial);
    this.pages[VpdPage.SupportedPages] = buildSupportedPages();
    this.pages[VpdPage.UnitSerialNumber] = buildSerialNumber(serial);
    this.pages[VpdPage.DeviceIdentification] = buildDeviceIdentification(serial);
    this.pages[VpdPage.BlockLimits] = buildBlockLimits(identity.limits);
    this.pages[VpdPage.BlockDeviceCharacteristics] = buildBlockDeviceCharacteristics();
    this.pages[VpdPage.LogicalBlockProvisioning] = buildLogicalBlockProvisioning(identity.discard);
  }

  /** The page, or undefined for one this disk does not implement. */
  page(code: number): Uint8Array | undefined {
    return this.pages[code & 0xff];
  }
}
