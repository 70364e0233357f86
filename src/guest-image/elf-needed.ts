// Just enough ELF64 (little-endian, as on x86-64) to ask two questions of a file taken
// from a Debian package: which shared libraries does this binary need (DT_NEEDED, its
// run paths and its program interpreter), and, for kernel modules, what is in a named
// section (.modinfo). Every offset and size comes from the file, so every one is checked
// against the file's length; anything malformed is an ElfFormatError, never a RangeError.

export class ElfFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ElfFormatError';
  }
}

export interface ElfSection {
  name: string;
  type: number;
  /** File offset and size of the section's bytes (size 0 for SHT_NOBITS). */
  offset: number;
  size: number;
  link: number;
}

export const SHT_DYNAMIC = 6;
const SHT_NOBITS = 8;
const SHN_XINDEX = 0xffff;
const ELF_HEADER_SIZE = 64;
const SECTION_HEADER_SIZE = 64;

export function isElf(bytes: Uint8Array): boolean {
  return bytes.length >= 4 && bytes[0] === 0x7f && bytes[1] === 0x45 && bytes[2] === 0x4c && bytes[3] === 0x46;
}

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** A u64 from the file that must index into it: as a Number, or an ElfFormatError. */
function offsetWithin(v: DataView, at: number, what: string): number {
  const value = v.getBigUint64(at, true);
  if (value > BigInt(v.byteLength)) throw new ElfFormatError(`${what} ${value} lies beyond the end of the file (${v.byteLength} bytes)`);
  return Number(value);
}

function checkRange(offset: number, size: number, length: number, what: string): void {
  if (offset + size > length) throw new ElfFormatError(`${what} (${size} bytes at ${offset}) runs past the end of the file (${length} bytes)`);
}

/** A NUL-terminated string inside [start, end) of the file. */
function cString(bytes: Uint8Array, start: number, end: number, what: string): string {
  if (start >= end) throw new ElfFormatError(`${what}: string offset outside its table`);
  let stop = start;
  while (stop < end && bytes[stop] !== 0) stop++;
  if (stop === end) throw new ElfFormatError(`${what}: string is not terminated inside its table`);
  return Buffer.from(bytes.buffer, bytes.byteOffset + start, stop - start).toString('latin1');
}

/** The section table of an ELF64 little-endian file. */
export function elfSections(bytes: Uint8Array): ElfSection[] {
  if (!isElf(bytes)) throw new ElfFormatError('not an ELF file (bad magic)');
  if (bytes.length < ELF_HEADER_SIZE) throw new ElfFormatError('truncated ELF header');
  if (bytes[4] !== 2 || bytes[5] !== 1) throw new ElfFormatError('not a 64-bit little-endian ELF file');
  const v = view(bytes);
  const shoff = offsetWithin(v, 0x28, 'section table offset');
  const shentsize = v.getUint16(0x3a, true);
  let shnum = v.getUint16(0x3c, true);
  let shstrndx = v.getUint16(0x3e, true);
  if (shoff === 0) return [];
  if (shentsize !== SECTION_HEADER_SIZE) throw new ElfFormatError(`section header size ${shentsize}, expected ${SECTION_HEADER_SIZE}`);
  checkRange(shoff, SECTION_HEADER_SIZE, bytes.length, 'section header 0');
  // More than 0xff00 sections: the real count and string-table index live in section 0.
  if (shnum === 0) shnum = offsetWithin(v, shoff + 32, 'extended section count');
  if (shstrndx === SHN_XINDEX) shstrndx = v.getUint32(shoff + 40, true);
  checkRange(shoff, shnum * SECTION_HEADER_SIZE, bytes.length, 'section table');

  const raw = [];
  for (let i = 0; i < shnum; i++) {
    const at = shoff + i * SECTION_HEADER_SIZE;
    const type = v.getUint32(at + 4, true);
    const offset = offsetWithin(v, at + 24, `section ${i} offset`);
    const size = type === SHT_NOBITS ? 0 : offsetWithin(v, at + 32, `section ${i} size`);
    checkRange(offset, size, bytes.length, `section ${i}`);
    raw.push({ nameOffset: v.getUint32(at, true), type, offset, size, link: v.getUint32(at + 40, true) });
  }
  if (raw.length === 0) return [];
  const names = raw[shstrndx];
  if (!names) throw new ElfFormatError(`section name table index ${shstrndx} out of range (${raw.length} sections)`);
  return raw.map((s, i) => ({
    name: cString(bytes, names.offset + s.nameOffset, names.offset + names.size, `name of section ${i}`),
    type: s.type,
    offset: s.offset,
    size: s.size,
    link: s.link,
  }));
}

/** The bytes of the named section, or undefined when the file has none. */
export function sectionBytes(bytes: Uint8Array, name: string): Uint8Array | undefined {
  const s = elfSections(bytes).find((x) => x.name === name);
  return s && bytes.subarray(s.offset, s.offset + s.size);
}

export interface DynamicInfo {
  /** DT_NEEDED sonames, in file order. */
  needed: string[];
  /** DT_RUNPATH, else DT_RPATH, split on ':' (may contain $ORIGIN). */
  runPaths: string[];
  /** The program interpreter (PT_INTERP, via its .interp section), e.g. /lib64/ld-linux-x86-64.so.2. */
  interpreter?: string;
}

const DT_NEEDED = 1;
const DT_RPATH = 15;
const DT_RUNPATH = 29;

/** What a dynamically linked ELF file needs to run; empty for static binaries and non-dynamic objects. */
export function dynamicInfo(bytes: Uint8Array): DynamicInfo {
  const sections = elfSections(bytes);
  const info: DynamicInfo = { needed: [], runPaths: [] };
  const interp = sections.find((s) => s.name === '.interp');
  if (interp && interp.size > 0) info.interpreter = cString(bytes, interp.offset, interp.offset + interp.size, '.interp');
  const dynamic = sections.find((s) => s.type === SHT_DYNAMIC);
  if (!dynamic) return info;
  const strings = sections[dynamic.link];
  if (!strings) throw new ElfFormatError(`.dynamic links to string table ${dynamic.link}, which does not exist`);
  const v = view(bytes);
  let rpath: string[] = [];
  let runpath: string[] | undefined;
  for (let at = dynamic.offset; at + 16 <= dynamic.offset + dynamic.size; at += 16) {
    const tag = v.getBigInt64(at, true);
    if (tag === 0n) break; // DT_NULL
    if (tag !== BigInt(DT_NEEDED) && tag !== BigInt(DT_RPATH) && tag !== BigInt(DT_RUNPATH)) continue;
    const value = v.getBigUint64(at + 8, true);
    if (value >= BigInt(strings.size)) throw new ElfFormatError(`dynamic entry string offset ${value} outside .dynstr`);
    const text = cString(bytes, strings.offset + Number(value), strings.offset + strings.size, 'dynamic entry');
    if (tag === BigInt(DT_NEEDED)) info.needed.push(text);
    else if (tag === BigInt(DT_RPATH)) rpath = text.split(':').filter(Boolean);
    else runpath = text.split(':').filter(Boolean);
  }
  // ld.so ignores DT_RPATH when DT_RUNPATH is present.
  info.runPaths = runpath ?? rpath;
  return info;
}
