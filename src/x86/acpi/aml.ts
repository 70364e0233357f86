// A small AML encoder (ACPI 6.x section 20, "ACPI Machine Language"): enough of the
// grammar for a DSDT that names devices, their resources and a sleep package. Callers
// build a tree of typed nodes with the functions below and serialise it once with
// `encodeAml`; every length prefix (PkgLength) is computed from the encoded body, so a
// tree cannot serialise with an inconsistent length.
//
// Integers assume a table of revision 2 or later (64-bit AML integers): `Ones` is
// 0xFFFF_FFFF_FFFF_FFFF. Inputs are ours, not the guest's, so bad ones throw RangeError.

// Opcodes (ACPI 6.x 20.3 / 20.2.x). Only the ones this encoder emits.
const ZERO_OP = 0x00;
const ONE_OP = 0x01;
const NAME_OP = 0x08;
const BYTE_PREFIX = 0x0a;
const WORD_PREFIX = 0x0b;
const DWORD_PREFIX = 0x0c;
const STRING_PREFIX = 0x0d;
const QWORD_PREFIX = 0x0e;
const SCOPE_OP = 0x10;
const BUFFER_OP = 0x11;
const PACKAGE_OP = 0x12;
const METHOD_OP = 0x14;
const DUAL_NAME_PREFIX = 0x2e;
const MULTI_NAME_PREFIX = 0x2f;
const EXT_OP_PREFIX = 0x5b;
const DEVICE_OP = 0x82; // after EXT_OP_PREFIX
const ROOT_CHAR = 0x5c; // '\'
const PARENT_PREFIX_CHAR = 0x5e; // '^'
const RETURN_OP = 0xa4;
const ONES_OP = 0xff;
const NULL_NAME = 0x00;

/** The largest value a 4-byte PkgLength can carry (28 bits), itself included. */
export const PKG_LENGTH_MAX = 0x0fff_ffff;
const U64_MAX = (1n << 64n) - 1n;

// ---------------------------------------------------------------------------------------
// The tree.

/** An integer constant; encoded in its smallest form (Zero, One, Ones, Byte..QWord). */
export interface AmlInteger {
  kind: 'integer';
  value: bigint;
}
export interface AmlString {
  kind: 'string';
  value: string;
}
export interface AmlBuffer {
  kind: 'buffer';
  bytes: Uint8Array;
}
/** A Buffer whose bytes are resource descriptors followed by an End Tag (ASL ResourceTemplate). */
export interface AmlResourceTemplate {
  kind: 'resourceTemplate';
  descriptors: ResourceDescriptor[];
}
export interface AmlPackage {
  kind: 'package';
  elements: AmlPackageElement[];
}
/** A reference to a named object, written as its NameString (e.g. inside a Package or Return). */
export interface AmlNameReference {
  kind: 'nameReference';
  path: string;
}

export type AmlData = AmlInteger | AmlString | AmlBuffer | AmlResourceTemplate | AmlPackage;
export type AmlPackageElement = AmlData | AmlNameReference;

export interface AmlName {
  kind: 'name';
  path: string;
  value: AmlData;
}
export interface AmlScope {
  kind: 'scope';
  path: string;
  body: AmlTerm[];
}
export interface AmlDevice {
  kind: 'device';
  path: string;
  body: AmlTerm[];
}
export interface AmlMethod {
  kind: 'method';
  path: string;
  argCount: number;
  serialized: boolean;
  syncLevel: number;
  body: AmlTerm[];
}
export interface AmlReturn {
  kind: 'return';
  value: AmlPackageElement;
}

export type AmlTerm = AmlName | AmlScope | AmlDevice | AmlMethod | AmlReturn;
export type AmlNode = AmlTerm | AmlPackageElement;

// ---------------------------------------------------------------------------------------
// Resource descriptors (ACPI 6.x 6.4). Small items carry their length in the tag byte;
// large items (bit 7 set) carry a 16-bit length after the tag.

export interface IoDescriptor {
  kind: 'io';
  /** Decode16 (true: the device decodes all 16 address bits) or Decode10. */
  decode16: boolean;
  min: number;
  max: number;
  alignment: number;
  length: number;
}
export interface FixedIoDescriptor {
  kind: 'fixedIo';
  /** A 10-bit ISA address. */
  base: number;
  length: number;
}
/** IRQNoFlags: ISA IRQs 0-15, edge-triggered, active-high, exclusive. */
export interface IrqNoFlagsDescriptor {
  kind: 'irqNoFlags';
  irqs: number[];
}
/** Interrupt (the Extended Interrupt Descriptor): global system interrupts. */
export interface InterruptDescriptor {
  kind: 'interrupt';
  consumer: boolean;
  trigger: 'edge' | 'level';
  polarity: 'activeHigh' | 'activeLow';
  shared: boolean;
  wake: boolean;
  interrupts: number[];
}
export type MemoryCacheability = 'nonCacheable' | 'cacheable' | 'writeCombining' | 'prefetchable';
export interface AddressSpaceMemoryDescriptor {
  kind: 'dwordMemory' | 'qwordMemory';
  /** ResourceConsumer (true) or ResourceProducer (false). */
  consumer: boolean;
  subtractiveDecode: boolean;
  minFixed: boolean;
  maxFixed: boolean;
  cacheability: MemoryCacheability;
  readWrite: boolean;
  granularity: bigint;
  min: bigint;
  max: bigint;
  translation: bigint;
  length: bigint;
}

export type ResourceDescriptor = IoDescriptor | FixedIoDescriptor | IrqNoFlagsDescriptor | InterruptDescriptor | AddressSpaceMemoryDescriptor;

// ---------------------------------------------------------------------------------------
// Constructors. Names and values are checked here, so a tree that was built encodes.

export function integer(value: number | bigint): AmlInteger {
  const v = toU64(value, 'AML integer');
  return { kind: 'integer', value: v };
}
export function zero(): AmlInteger {
  return integer(0);
}
export function one(): AmlInteger {
  return integer(1);
}
/** All ones: 0xFFFF_FFFF_FFFF_FFFF in a 64-bit (revision >= 2) table. */
export function ones(): AmlInteger {
  return integer(U64_MAX);
}

export function string(value: string): AmlString {
  // AML strings are ASCII without NUL (20.2.3 AsciiChar is 0x01-0x7F).
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (c < 0x01 || c > 0x7f) throw new RangeError(`AML string ${JSON.stringify(value)}: character ${i} is not ASCII 0x01-0x7F`);
  }
  return { kind: 'string', value };
}

export function buffer(bytes: Uint8Array | readonly number[]): AmlBuffer {
  const b = Uint8Array.from(bytes);
  return { kind: 'buffer', bytes: b };
}

export function resourceTemplate(...descriptors: ResourceDescriptor[]): AmlResourceTemplate {
  return { kind: 'resourceTemplate', descriptors };
}

export function packageOf(...elements: AmlPackageElement[]): AmlPackage {
  // DefPackage carries its element count in one byte; larger ones need VarPackage.
  if (elements.length > 0xff) throw new RangeError(`AML Package: ${elements.length} elements, at most 255`);
  return { kind: 'package', elements };
}

export function nameReference(path: string): AmlNameReference {
  encodeNameString(path); // validates
  return { kind: 'nameReference', path };
}

export function name(path: string, value: AmlData): AmlName {
  encodeNameString(path);
  return { kind: 'name', path, value };
}

export function scope(path: string, ...body: AmlTerm[]): AmlScope {
  encodeNameString(path);
  return { kind: 'scope', path, body };
}

export function device(path: string, ...body: AmlTerm[]): AmlDevice {
  encodeNameString(path);
  return { kind: 'device', path, body };
}

export interface MethodOptions {
  argCount?: number;
  serialized?: boolean;
  syncLevel?: number;
}

export function method(path: string, options: MethodOptions, ...body: AmlTerm[]): AmlMethod {
  encodeNameString(path);
  const argCount = options.argCount ?? 0;
  const syncLevel = options.syncLevel ?? 0;
  // MethodFlags: ArgCount bits 0-2, SerializeFlag bit 3, SyncLevel bits 4-7.
  if (!Number.isInteger(argCount) || argCount < 0 || argCount > 7) throw new RangeError(`AML Method ${path}: argCount ${argCount} is not 0-7`);
  if (!Number.isInteger(syncLevel) || syncLevel < 0 || syncLevel > 15) throw new RangeError(`AML Method ${path}: syncLevel ${syncLevel} is not 0-15`);
  return { kind: 'method', path, argCount, serialized: options.serialized ?? false, syncLevel, body };
}

export function returnValue(value: AmlPackageElement): AmlReturn {
  return { kind: 'return', value };
}

/**
 * EISAID("PNP0501"): three uppercase letters packed 5 bits each into 15 bits, then four
 * hex digits, stored big-endian in a DWord. The AML integer is that DWord read little-endian.
 */
export function eisaId(id: string): AmlInteger {
  if (!/^[A-Z]{3}[0-9A-F]{4}$/.test(id)) throw new RangeError(`EISAID ${JSON.stringify(id)}: want three uppercase letters and four hex digits`);
  const letters = ((id.charCodeAt(0) - 0x40) << 10) | ((id.charCodeAt(1) - 0x40) << 5) | (id.charCodeAt(2) - 0x40);
  const product = Number.parseInt(id.slice(3), 16);
  const bigEndian = [letters >> 8, letters & 0xff, product >> 8, product & 0xff];
  return integer((bigEndian[0]! | (bigEndian[1]! << 8) | (bigEndian[2]! << 16) | (bigEndian[3]! << 24)) >>> 0);
}

export function io(o: { decode16?: boolean; min: number; max: number; alignment: number; length: number }): IoDescriptor {
  checkUint(o.min, 0xffff, 'IO min');
  checkUint(o.max, 0xffff, 'IO max');
  checkUint(o.alignment, 0xff, 'IO alignment');
  checkUint(o.length, 0xff, 'IO length');
  if (o.max < o.min) throw new RangeError(`IO: max 0x${o.max.toString(16)} below min 0x${o.min.toString(16)}`);
  return { kind: 'io', decode16: o.decode16 ?? true, min: o.min, max: o.max, alignment: o.alignment, length: o.length };
}

export function fixedIo(base: number, length: number): FixedIoDescriptor {
  checkUint(base, 0x3ff, 'FixedIO base');
  checkUint(length, 0xff, 'FixedIO length');
  return { kind: 'fixedIo', base, length };
}

export function irqNoFlags(...irqs: number[]): IrqNoFlagsDescriptor {
  for (const irq of irqs) checkUint(irq, 15, 'IRQNoFlags IRQ');
  return { kind: 'irqNoFlags', irqs: [...irqs] };
}

export function interrupt(o: {
  consumer?: boolean;
  trigger: 'edge' | 'level';
  polarity: 'activeHigh' | 'activeLow';
  shared?: boolean;
  wake?: boolean;
  interrupts: number[];
}): InterruptDescriptor {
  if (o.interrupts.length < 1 || o.interrupts.length > 0xff) throw new RangeError(`Interrupt: ${o.interrupts.length} interrupts, want 1-255`);
  for (const gsi of o.interrupts) checkUint(gsi, 0xffff_ffff, 'Interrupt number');
  return {
    kind: 'interrupt',
    consumer: o.consumer ?? true,
    trigger: o.trigger,
    polarity: o.polarity,
    shared: o.shared ?? false,
    wake: o.wake ?? false,
    interrupts: [...o.interrupts],
  };
}

export interface MemoryWindowOptions {
  consumer?: boolean;
  subtractiveDecode?: boolean;
  minFixed?: boolean;
  maxFixed?: boolean;
  cacheability?: MemoryCacheability;
  readWrite?: boolean;
  granularity?: number | bigint;
  min: number | bigint;
  max: number | bigint;
  translation?: number | bigint;
  length: number | bigint;
}

export function dwordMemory(o: MemoryWindowOptions): AddressSpaceMemoryDescriptor {
  return memoryWindow('dwordMemory', o, 0xffff_ffffn);
}

export function qwordMemory(o: MemoryWindowOptions): AddressSpaceMemoryDescriptor {
  return memoryWindow('qwordMemory', o, U64_MAX);
}

function memoryWindow(kind: 'dwordMemory' | 'qwordMemory', o: MemoryWindowOptions, limit: bigint): AddressSpaceMemoryDescriptor {
  const field = (v: number | bigint | undefined, what: string) => {
    const x = toU64(v ?? 0, `${kind} ${what}`);
    if (x > limit) throw new RangeError(`${kind} ${what} 0x${x.toString(16)} does not fit`);
    return x;
  };
  const d: AddressSpaceMemoryDescriptor = {
    kind,
    // iasl's defaults: ResourceConsumer, PosDecode, MinNotFixed, MaxNotFixed, ReadWrite.
    consumer: o.consumer ?? true,
    subtractiveDecode: o.subtractiveDecode ?? false,
    minFixed: o.minFixed ?? false,
    maxFixed: o.maxFixed ?? false,
    cacheability: o.cacheability ?? 'nonCacheable',
    readWrite: o.readWrite ?? true,
    granularity: field(o.granularity, 'granularity'),
    min: field(o.min, 'min'),
    max: field(o.max, 'max'),
    translation: field(o.translation, 'translation'),
    length: field(o.length, 'length'),
  };
  if (d.max < d.min) throw new RangeError(`${kind}: max below min`);
  return d;
}

// ---------------------------------------------------------------------------------------
// Encoding.

/**
 * PkgLength for a body of `bodyLength` bytes. The encoded length counts the PkgLength
 * bytes themselves, so the form is chosen by body + its own size: one byte up to 63,
 * otherwise 2-4 bytes whose first byte holds the byte count (bits 6-7) and the low nibble
 * (bits 0-3), the following bytes the rest, least significant first.
 */
export function encodePkgLength(bodyLength: number): Uint8Array {
  if (!Number.isInteger(bodyLength) || bodyLength < 0) throw new RangeError(`PkgLength: body length ${bodyLength}`);
  if (bodyLength + 1 <= 0x3f) return Uint8Array.of(bodyLength + 1);
  for (let size = 2; size <= 4; size++) {
    const total = bodyLength + size;
    if (total < 1 << (4 + 8 * (size - 1))) {
      const out = new Uint8Array(size);
      out[0] = ((size - 1) << 6) | (total & 0x0f);
      for (let i = 1; i < size; i++) out[i] = (total >>> (4 + 8 * (i - 1))) & 0xff;
      return out;
    }
  }
  throw new RangeError(`PkgLength: body of ${bodyLength} bytes exceeds ${PKG_LENGTH_MAX}`);
}

/** A NameSeg: 1-4 characters, the first [A-Z_], the others [A-Z0-9_], padded to 4 with '_'. */
export function encodeNameSeg(seg: string): Uint8Array {
  if (!/^[A-Z_][A-Z0-9_]{0,3}$/.test(seg)) throw new RangeError(`AML NameSeg ${JSON.stringify(seg)}: want 1-4 of [A-Z0-9_], not starting with a digit`);
  const padded = seg.padEnd(4, '_');
  return Uint8Array.from(padded, (c) => c.charCodeAt(0));
}

/**
 * A NameString: '\' (root) or any number of '^' (parent), then dot-separated NameSegs.
 * No segment is NullName, two take the DualNamePrefix, three or more MultiNamePrefix
 * with a count byte.
 */
export function encodeNameString(path: string): Uint8Array {
  const m = /^(\\|\^*)(.*)$/s.exec(path)!;
  const prefix = m[1]!;
  const rest = m[2]!;
  const segs = rest === '' ? [] : rest.split('.');
  if (segs.length > 0xff) throw new RangeError(`AML NameString ${JSON.stringify(path)}: more than 255 segments`);
  const encodedSegs = segs.map((s) => {
    try {
      return encodeNameSeg(s);
    } catch {
      throw new RangeError(`AML NameString ${JSON.stringify(path)}: bad segment ${JSON.stringify(s)}`);
    }
  });
  const out: number[] = [];
  for (const c of prefix) out.push(c === '\\' ? ROOT_CHAR : PARENT_PREFIX_CHAR);
  if (segs.length === 0) out.push(NULL_NAME);
  else if (segs.length === 2) out.push(DUAL_NAME_PREFIX);
  else if (segs.length > 2) out.push(MULTI_NAME_PREFIX, segs.length);
  for (const s of encodedSegs) out.push(...s);
  return Uint8Array.from(out);
}

/** Serialises a node (and everything under it). */
export function encodeAml(node: AmlNode): Uint8Array {
  const out = new ByteSink();
  write(out, node);
  return out.bytes();
}

/** Serialises a TermList: the body of a DefinitionBlock. */
export function encodeTermList(terms: readonly AmlTerm[]): Uint8Array {
  const out = new ByteSink();
  for (const t of terms) write(out, t);
  return out.bytes();
}

/** Serialises resource descriptors followed by an End Tag: the bytes of a ResourceTemplate buffer. */
export function encodeResourceTemplateBytes(descriptors: readonly ResourceDescriptor[]): Uint8Array {
  const out = new ByteSink();
  for (const d of descriptors) writeDescriptor(out, d);
  // End Tag (small item 0x0F, length 1): a checksum of 0 means "treat as valid".
  out.u8(0x79);
  out.u8(0x00);
  return out.bytes();
}

class ByteSink {
  private chunks: number[] = [];
  u8(v: number): void {
    this.chunks.push(v & 0xff);
  }
  u16(v: number): void {
    this.u8(v);
    this.u8(v >>> 8);
  }
  u32(v: number): void {
    this.u16(v & 0xffff);
    this.u16(v >>> 16);
  }
  u64(v: bigint): void {
    this.u32(Number(v & 0xffff_ffffn));
    this.u32(Number(v >> 32n));
  }
  append(bytes: Uint8Array): void {
    for (const b of bytes) this.chunks.push(b);
  }
  get length(): number {
    return this.chunks.length;
  }
  bytes(): Uint8Array {
    return Uint8Array.from(this.chunks);
  }
}

/** Writes `PkgLength` then the body that `fill` produces. */
function withPkgLength(out: ByteSink, fill: (body: ByteSink) => void): void {
  const body = new ByteSink();
  fill(body);
  const encoded = body.bytes();
  out.append(encodePkgLength(encoded.length));
  out.append(encoded);
}

function write(out: ByteSink, node: AmlNode): void {
  switch (node.kind) {
    case 'integer':
      writeInteger(out, node.value);
      return;
    case 'string':
      out.u8(STRING_PREFIX);
      for (let i = 0; i < node.value.length; i++) out.u8(node.value.charCodeAt(i));
      out.u8(0x00);
      return;
    case 'buffer':
      writeBuffer(out, node.bytes);
      return;
    case 'resourceTemplate':
      writeBuffer(out, encodeResourceTemplateBytes(node.descriptors));
      return;
    case 'package':
      out.u8(PACKAGE_OP);
      withPkgLength(out, (body) => {
        body.u8(node.elements.length);
        for (const e of node.elements) write(body, e);
      });
      return;
    case 'nameReference':
      out.append(encodeNameString(node.path));
      return;
    case 'name':
      out.u8(NAME_OP);
      out.append(encodeNameString(node.path));
      write(out, node.value);
      return;
    case 'scope':
      out.u8(SCOPE_OP);
      withPkgLength(out, (body) => {
        body.append(encodeNameString(node.path));
        for (const t of node.body) write(body, t);
      });
      return;
    case 'device':
      out.u8(EXT_OP_PREFIX);
      out.u8(DEVICE_OP);
      withPkgLength(out, (body) => {
        body.append(encodeNameString(node.path));
        for (const t of node.body) write(body, t);
      });
      return;
    case 'method':
      out.u8(METHOD_OP);
      withPkgLength(out, (body) => {
        body.append(encodeNameString(node.path));
        body.u8(node.argCount | (node.serialized ? 0x08 : 0) | (node.syncLevel << 4));
        for (const t of node.body) write(body, t);
      });
      return;
    case 'return':
      out.u8(RETURN_OP);
      write(out, node.value);
      return;
  }
}

function writeInteger(out: ByteSink, v: bigint): void {
  if (v === 0n) out.u8(ZERO_OP);
  else if (v === 1n) out.u8(ONE_OP);
  else if (v === U64_MAX) out.u8(ONES_OP);
  else if (v <= 0xffn) {
    out.u8(BYTE_PREFIX);
    out.u8(Number(v));
  } else if (v <= 0xffffn) {
    out.u8(WORD_PREFIX);
    out.u16(Number(v));
  } else if (v <= 0xffff_ffffn) {
    out.u8(DWORD_PREFIX);
    out.u32(Number(v));
  } else {
    out.u8(QWORD_PREFIX);
    out.u64(v);
  }
}

function writeBuffer(out: ByteSink, bytes: Uint8Array): void {
  out.u8(BUFFER_OP);
  withPkgLength(out, (body) => {
    writeInteger(body, BigInt(bytes.length));
    body.append(bytes);
  });
}

function writeDescriptor(out: ByteSink, d: ResourceDescriptor): void {
  switch (d.kind) {
    case 'io':
      // Small item 0x08, length 7.
      out.u8(0x47);
      out.u8(d.decode16 ? 1 : 0);
      out.u16(d.min);
      out.u16(d.max);
      out.u8(d.alignment);
      out.u8(d.length);
      return;
    case 'fixedIo':
      // Small item 0x09, length 3.
      out.u8(0x4b);
      out.u16(d.base);
      out.u8(d.length);
      return;
    case 'irqNoFlags': {
      // Small item 0x04, length 2: the two-byte form means edge, active-high, exclusive.
      out.u8(0x22);
      let mask = 0;
      for (const irq of d.irqs) mask |= 1 << irq;
      out.u16(mask);
      return;
    }
    case 'interrupt': {
      // Large item 0x09: flags, count, then one DWord per interrupt.
      out.u8(0x89);
      out.u16(2 + 4 * d.interrupts.length);
      const flags =
        (d.consumer ? 0x01 : 0) | (d.trigger === 'edge' ? 0x02 : 0) | (d.polarity === 'activeLow' ? 0x04 : 0) | (d.shared ? 0x08 : 0) | (d.wake ? 0x10 : 0);
      out.u8(flags);
      out.u8(d.interrupts.length);
      for (const gsi of d.interrupts) out.u32(gsi);
      return;
    }
    case 'dwordMemory':
    case 'qwordMemory': {
      const qword = d.kind === 'qwordMemory';
      // Large items 0x07 (DWord) and 0x0A (QWord) address space descriptors.
      out.u8(qword ? 0x8a : 0x87);
      out.u16(qword ? 3 + 5 * 8 : 3 + 5 * 4);
      out.u8(0); // resource type: memory range
      // General flags: bit 0 consumer, bit 1 subtractive decode, bit 2 MinFixed, bit 3 MaxFixed.
      out.u8((d.consumer ? 1 : 0) | (d.subtractiveDecode ? 2 : 0) | (d.minFixed ? 4 : 0) | (d.maxFixed ? 8 : 0));
      // Type-specific flags: bit 0 read-write, bits 1-2 cacheability; AddressRangeMemory, TypeStatic.
      const cache = { nonCacheable: 0, cacheable: 1, writeCombining: 2, prefetchable: 3 }[d.cacheability];
      out.u8((d.readWrite ? 1 : 0) | (cache << 1));
      for (const v of [d.granularity, d.min, d.max, d.translation, d.length]) {
        if (qword) out.u64(v);
        else out.u32(Number(v));
      }
      return;
    }
  }
}

function toU64(value: number | bigint, what: string): bigint {
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) throw new RangeError(`${what}: ${value} is not a safe integer`);
    value = BigInt(value);
  }
  if (value < 0n || value > U64_MAX) throw new RangeError(`${what}: ${value} is outside 0..2^64-1`);
  return value;
}

function checkUint(v: number, max: number, what: string): void {
  if (!Number.isInteger(v) || v < 0 || v > max) throw new RangeError(`${what}: ${v} is not 0..0x${max.toString(16)}`);
}
