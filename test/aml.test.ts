// The AML encoder: byte-exact encodings worked out by hand from the ACPI 6.x grammar
// (section 20), a cross-check of every resource descriptor against iasl's own output, and
// a property test that random trees decode back (with a small decoder written here) to
// the tree that was encoded, every PkgLength ending exactly where its parent says.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import {
  type AmlData,
  type AmlPackageElement,
  type AmlTerm,
  buffer,
  device,
  dwordMemory,
  eisaId,
  encodeAml,
  encodeNameSeg,
  encodeNameString,
  encodePkgLength,
  encodeResourceTemplateBytes,
  encodeTermList,
  fixedIo,
  integer,
  interrupt,
  io,
  irqNoFlags,
  method,
  name,
  nameReference,
  one,
  ones,
  packageOf,
  PKG_LENGTH_MAX,
  qwordMemory,
  resourceTemplate,
  returnValue,
  scope,
  string,
  zero,
} from '../src/x86/acpi/aml.js';
import { acpiTable } from '../src/x86/acpi/acpi-table.js';

const ascii = (s: string) => [...s].map((c) => c.charCodeAt(0));
const bytesOf = (node: Parameters<typeof encodeAml>[0]) => [...encodeAml(node)];

// ---------------------------------------------------------------------------------------
// PkgLength

test('PkgLength: one byte while body + 1 <= 63', () => {
  assert.deepEqual([...encodePkgLength(0)], [0x01]);
  assert.deepEqual([...encodePkgLength(61)], [0x3e]);
  assert.deepEqual([...encodePkgLength(62)], [0x3f]); // encoded value 63: the last one-byte form
});

test('PkgLength: the two-byte form starts at body 63 (value 65: no body encodes as 64)', () => {
  // 63 + 1 = 64 does not fit 6 bits, so two bytes: 63 + 2 = 65 = 0x041.
  assert.deepEqual([...encodePkgLength(63)], [0x41, 0x04]);
  assert.deepEqual([...encodePkgLength(64)], [0x42, 0x04]);
});

test('PkgLength: two bytes up to value 4095, three from body 4094 (value 4097: none encodes as 4096)', () => {
  assert.deepEqual([...encodePkgLength(4093)], [0x4f, 0xff]); // 4095 = 0xFFF
  assert.deepEqual([...encodePkgLength(4094)], [0x81, 0x00, 0x01]); // 4097 = 0x1001
  assert.deepEqual([...encodePkgLength(4095)], [0x82, 0x00, 0x01]);
});

test('PkgLength: three bytes up to 0xFFFFF, four bytes up to 0xFFFFFFF, then an error', () => {
  assert.deepEqual([...encodePkgLength(0xfffff - 3)], [0x8f, 0xff, 0xff]);
  assert.deepEqual([...encodePkgLength(0xfffff - 2)], [0xc1, 0x00, 0x00, 0x01]); // 0x100001
  assert.deepEqual([...encodePkgLength(PKG_LENGTH_MAX - 4)], [0xcf, 0xff, 0xff, 0xff]);
  assert.throws(() => encodePkgLength(PKG_LENGTH_MAX - 3), RangeError);
  assert.throws(() => encodePkgLength(-1), RangeError);
  assert.throws(() => encodePkgLength(1.5), RangeError);
});

test('PkgLength: any body length decodes back to body + its own size', () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: PKG_LENGTH_MAX - 4 }), (body) => {
      const enc = encodePkgLength(body);
      const { value, size } = decodePkgLength(enc, 0);
      assert.equal(size, enc.length);
      assert.equal(value, body + enc.length);
      // The smallest form: one byte fewer could not have held the value.
      if (enc.length === 1) assert.ok(value <= 0x3f);
      else assert.ok(body + enc.length - 1 >= (enc.length === 2 ? 0x40 : 1 << (4 + 8 * (enc.length - 2))));
    }),
  );
});

// ---------------------------------------------------------------------------------------
// Names

test('NameSeg: padded to four characters with underscores', () => {
  assert.deepEqual([...encodeNameSeg('VMBS')], ascii('VMBS'));
  assert.deepEqual([...encodeNameSeg('_SB')], ascii('_SB_'));
  assert.deepEqual([...encodeNameSeg('A')], ascii('A___'));
  assert.deepEqual([...encodeNameSeg('_S5')], ascii('_S5_'));
  for (const bad of ['', 'ABCDE', '1ABC', 'abc', 'A-B', 'A B']) assert.throws(() => encodeNameSeg(bad), RangeError, bad);
});

test('NameString: root, parent prefixes, dual and multi name paths, null name', () => {
  assert.deepEqual([...encodeNameString('_HID')], ascii('_HID'));
  assert.deepEqual([...encodeNameString('\\_SB')], [0x5c, ...ascii('_SB_')]);
  assert.deepEqual([...encodeNameString('\\_SB.VMBS')], [0x5c, 0x2e, ...ascii('_SB_VMBS')]);
  assert.deepEqual([...encodeNameString('_SB.PCI0')], [0x2e, ...ascii('_SB_PCI0')]);
  assert.deepEqual([...encodeNameString('\\_SB.VMOD.VMBS')], [0x5c, 0x2f, 0x03, ...ascii('_SB_VMODVMBS')]);
  assert.deepEqual([...encodeNameString('^^FOO')], [0x5e, 0x5e, ...ascii('FOO_')]);
  assert.deepEqual([...encodeNameString('^A.B')], [0x5e, 0x2e, ...ascii('A___B___')]);
  assert.deepEqual([...encodeNameString('\\')], [0x5c, 0x00]);
  assert.deepEqual([...encodeNameString('')], [0x00]);
  for (const bad of ['\\^A', '^\\A', 'A..B', 'A.', '.A', '\\\\A', 'vmbs', '_SB.TOOLONG']) assert.throws(() => encodeNameString(bad), RangeError, bad);
});

// ---------------------------------------------------------------------------------------
// Data objects

test('integers: Zero, One, Ones and the smallest prefixed form', () => {
  assert.deepEqual(bytesOf(zero()), [0x00]);
  assert.deepEqual(bytesOf(one()), [0x01]);
  assert.deepEqual(bytesOf(ones()), [0xff]);
  assert.deepEqual(bytesOf(integer(2)), [0x0a, 0x02]);
  assert.deepEqual(bytesOf(integer(0xff)), [0x0a, 0xff]);
  assert.deepEqual(bytesOf(integer(0x100)), [0x0b, 0x00, 0x01]);
  assert.deepEqual(bytesOf(integer(0xffff)), [0x0b, 0xff, 0xff]);
  assert.deepEqual(bytesOf(integer(0x10000)), [0x0c, 0x00, 0x00, 0x01, 0x00]);
  assert.deepEqual(bytesOf(integer(0xfee00000)), [0x0c, 0x00, 0x00, 0xe0, 0xfe]);
  assert.deepEqual(bytesOf(integer(0x1_0000_0000)), [0x0e, 0, 0, 0, 0, 1, 0, 0, 0]);
  assert.deepEqual(bytesOf(integer(0xffff_ffff_ffff_fffen)), [0x0e, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
  assert.deepEqual(bytesOf(integer(0xffff_ffff_ffff_ffffn)), [0xff]);
  for (const bad of [-1, 1.5, 2 ** 64, Number.NaN, -1n, 1n << 64n]) assert.throws(() => integer(bad), RangeError, String(bad));
});

test('String: StringPrefix, ASCII, NUL terminator; non-ASCII and NUL are refused', () => {
  assert.deepEqual(bytesOf(string('VMBUS')), [0x0d, ...ascii('VMBUS'), 0x00]);
  assert.deepEqual(bytesOf(string('')), [0x0d, 0x00]);
  assert.throws(() => string('caf\u00e9'), RangeError);
  assert.throws(() => string('a\0b'), RangeError);
});

test('Buffer: BufferOp, PkgLength, the size as an integer, the bytes', () => {
  assert.deepEqual(bytesOf(buffer([1, 2, 3])), [0x11, 0x06, 0x0a, 0x03, 1, 2, 3]);
  assert.deepEqual(bytesOf(buffer([])), [0x11, 0x02, 0x00]);
  // 64 bytes: body = 0A 40 + 64 = 66, so a two-byte PkgLength of 68 = 0x044.
  const big = bytesOf(buffer(new Uint8Array(64)));
  assert.deepEqual(big.slice(0, 5), [0x11, 0x44, 0x04, 0x0a, 0x40]);
  assert.equal(big.length, 1 + 2 + 2 + 64);
});

test('Package: PackageOp, PkgLength, element count, elements', () => {
  assert.deepEqual(bytesOf(packageOf(integer(5), integer(5), zero(), zero())), [0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00]);
  assert.deepEqual(bytesOf(packageOf()), [0x12, 0x02, 0x00]);
  assert.deepEqual(bytesOf(packageOf(string('A'), nameReference('\\_SB'), packageOf(one()))), [
    0x12, 0x0e, 0x03, 0x0d, 0x41, 0x00, 0x5c, ...ascii('_SB_'), 0x12, 0x03, 0x01, 0x01,
  ]);
  assert.throws(() => packageOf(...Array.from({ length: 256 }, () => zero())), RangeError);
});

test('EISAID: compressed vendor letters and product number, as the DWord iasl emits', () => {
  assert.equal(eisaId('PNP0501').value, 0x0105d041n);
  assert.equal(eisaId('PNP0A03').value, 0x030ad041n);
  assert.equal(eisaId('PNP0B00').value, 0x000bd041n);
  assert.deepEqual(bytesOf(eisaId('PNP0501')), [0x0c, 0x41, 0xd0, 0x05, 0x01]);
  for (const bad of ['PNP050', 'pnp0501', 'PNP05G1', 'P1P0501']) assert.throws(() => eisaId(bad), RangeError, bad);
});

// ---------------------------------------------------------------------------------------
// Named objects and methods

test('Name, Device, Scope, Method and Return', () => {
  assert.deepEqual(bytesOf(name('_UID', zero())), [0x08, ...ascii('_UID'), 0x00]);
  assert.deepEqual(bytesOf(device('VMBS')), [0x5b, 0x82, 0x05, ...ascii('VMBS')]);
  assert.deepEqual(bytesOf(method('_STA', {}, returnValue(integer(0x0f)))), [0x14, 0x09, ...ascii('_STA'), 0x00, 0xa4, 0x0a, 0x0f]);
  // MethodFlags: 2 args (bits 0-2), Serialized (bit 3), SyncLevel 3 (bits 4-7).
  assert.deepEqual(bytesOf(method('FOO', { argCount: 2, serialized: true, syncLevel: 3 })), [0x14, 0x06, ...ascii('FOO_'), 0x3a]);
  assert.deepEqual(bytesOf(scope('\\_SB', device('A'))), [0x10, 0x0d, 0x5c, ...ascii('_SB_'), 0x5b, 0x82, 0x05, ...ascii('A___')]);
  assert.throws(() => method('X', { argCount: 8 }), RangeError);
  assert.throws(() => method('X', { syncLevel: 16 }), RangeError);
});

// ---------------------------------------------------------------------------------------
// Resource templates

test('ResourceTemplate: descriptors then an End Tag with checksum 0, wrapped in a Buffer', () => {
  assert.deepEqual(bytesOf(resourceTemplate()), [0x11, 0x05, 0x0a, 0x02, 0x79, 0x00]);
  assert.deepEqual([...encodeResourceTemplateBytes([io({ decode16: true, min: 0x3f8, max: 0x3f8, alignment: 0, length: 8 })])], [
    0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x00, 0x08, 0x79, 0x00,
  ]);
  assert.deepEqual([...encodeResourceTemplateBytes([irqNoFlags(4)])], [0x22, 0x10, 0x00, 0x79, 0x00]);
  assert.deepEqual([...encodeResourceTemplateBytes([irqNoFlags(1, 12)])], [0x22, 0x02, 0x10, 0x79, 0x00]);
  assert.deepEqual([...encodeResourceTemplateBytes([fixedIo(0x60, 1)])], [0x4b, 0x60, 0x00, 0x01, 0x79, 0x00]);
  assert.deepEqual([...encodeResourceTemplateBytes([interrupt({ trigger: 'level', polarity: 'activeHigh', interrupts: [5] })])], [
    0x89, 0x06, 0x00, 0x01, 0x01, 0x05, 0x00, 0x00, 0x00, 0x79, 0x00,
  ]);
  const mem = encodeResourceTemplateBytes([dwordMemory({ minFixed: true, maxFixed: true, cacheability: 'cacheable', min: 0xe0000000, max: 0xefffffff, length: 0x10000000 })]);
  assert.equal(mem.length, 3 + 23 + 2);
  assert.deepEqual([...mem.subarray(0, 6)], [0x87, 0x17, 0x00, 0x00, 0x0d, 0x03]);
  const qmem = encodeResourceTemplateBytes([qwordMemory({ consumer: false, min: 0x1_0000_0000n, max: 0x1_ffff_ffffn, length: 0x1_0000_0000n })]);
  assert.equal(qmem.length, 3 + 43 + 2);
  assert.deepEqual([...qmem.subarray(0, 6)], [0x8a, 0x2b, 0x00, 0x00, 0x00, 0x01]);
  assert.throws(() => irqNoFlags(16), RangeError);
  assert.throws(() => fixedIo(0x400, 1), RangeError);
  assert.throws(() => io({ min: 0x10, max: 0x8, alignment: 1, length: 1 }), RangeError);
  assert.throws(() => dwordMemory({ min: 0, max: 0x1_0000_0000, length: 1 }), RangeError);
  assert.throws(() => interrupt({ trigger: 'edge', polarity: 'activeHigh', interrupts: [] }), RangeError);
});

const iasl = spawnSync('iasl', ['-v'], { encoding: 'utf8' });
const IASL_MISSING = iasl.error
  ? 'SKIPPED LOUDLY: iasl (Debian acpica-tools) is not installed, so the AML encoder is NOT cross-checked against the reference compiler. apt-get install acpica-tools'
  : false;

test('every construct encodes byte for byte as iasl compiles the same ASL', { skip: IASL_MISSING }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'enl-aml-'));
  const asl = `DefinitionBlock ("", "SSDT", 2, "ENLITN", "ENLIGHTN", 1)
{
    Scope (\\_SB)
    {
        Device (DEV0)
        {
            Name (_HID, EisaId ("PNP0501"))
            Name (_UID, 0x1234)
            Name (STR0, "hello")
            Method (_STA, 0, NotSerialized) { Return (0x0F) }
            Method (M2, 2, Serialized, 3) { Return (0x123456789A) }
            Name (PKG, Package (0x03) { One, Ones, Package (0x01) { 0xFFFF } })
            Name (BUF, Buffer (0x04) { 0x01, 0x02, 0x03, 0x04 })
            Name (_CRS, ResourceTemplate ()
            {
                IO (Decode16, 0x03F8, 0x03F8, 0x00, 0x08, )
                IO (Decode10, 0x0070, 0x0072, 0x02, 0x02, )
                FixedIO (0x0060, 0x01, )
                IRQNoFlags () {3,4,15}
                Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive, ,, ) { 0x00000005, 0x00000017 }
                Interrupt (ResourceConsumer, Edge, ActiveLow, Shared, ,, ) { 0x00000009 }
                DWordMemory (ResourceConsumer, PosDecode, MinFixed, MaxFixed, Cacheable, ReadWrite,
                    0x00000000, 0xE0000000, 0xEFFFFFFF, 0x00000000, 0x10000000, ,, , AddressRangeMemory, TypeStatic)
                QWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, Prefetchable, ReadOnly,
                    0x0000000000000000, 0x0000001000000000, 0x00000017FFFFFFFF, 0x0000000000000000, 0x0000000800000000, ,, , AddressRangeMemory, TypeStatic)
                DWordMemory (ResourceConsumer, SubDecode, MinNotFixed, MaxNotFixed, WriteCombining, ReadWrite,
                    0x00000FFF, 0x00100000, 0x001FFFFF, 0x00000000, 0x00100000, ,, , AddressRangeMemory, TypeStatic)
            })
        }
    }
    Name (\\_S5, Package (0x04) { 0x05, 0x05, Zero, Zero })
}
`;
  fs.writeFileSync(path.join(dir, 'ref.asl'), asl);
  // -oa: no optimisations (iasl would otherwise drop the redundant root prefixes we keep).
  const r = spawnSync('iasl', ['-oa', '-p', path.join(dir, 'ref'), path.join(dir, 'ref.asl')], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stdout + r.stderr);
  const reference = fs.readFileSync(path.join(dir, 'ref.aml'));

  const ours = acpiTable(
    'SSDT',
    2,
    encodeTermList([
      scope(
        '\\_SB',
        device(
          'DEV0',
          name('_HID', eisaId('PNP0501')),
          name('_UID', integer(0x1234)),
          name('STR0', string('hello')),
          method('_STA', { argCount: 0 }, returnValue(integer(0x0f))),
          method('M2', { argCount: 2, serialized: true, syncLevel: 3 }, returnValue(integer(0x123456789a))),
          name('PKG', packageOf(one(), ones(), packageOf(integer(0xffff)))),
          name('BUF', buffer([1, 2, 3, 4])),
          name(
            '_CRS',
            resourceTemplate(
              io({ decode16: true, min: 0x3f8, max: 0x3f8, alignment: 0, length: 8 }),
              io({ decode16: false, min: 0x70, max: 0x72, alignment: 2, length: 2 }),
              fixedIo(0x60, 1),
              irqNoFlags(3, 4, 15),
              interrupt({ trigger: 'level', polarity: 'activeHigh', interrupts: [5, 0x17] }),
              interrupt({ trigger: 'edge', polarity: 'activeLow', shared: true, interrupts: [9] }),
              dwordMemory({ minFixed: true, maxFixed: true, cacheability: 'cacheable', min: 0xe0000000, max: 0xefffffff, length: 0x10000000 }),
              qwordMemory({
                consumer: false,
                minFixed: true,
                maxFixed: true,
                cacheability: 'prefetchable',
                readWrite: false,
                min: 0x10_0000_0000n,
                max: 0x17_ffff_ffffn,
                length: 0x8_0000_0000n,
              }),
              dwordMemory({ subtractiveDecode: true, cacheability: 'writeCombining', granularity: 0xfff, min: 0x100000, max: 0x1fffff, length: 0x100000 }),
            ),
          ),
        ),
      ),
      name('\\_S5', packageOf(integer(5), integer(5), zero(), zero())),
    ]),
  );
  // Everything after the header must match; the header differs only in the creator fields and so the checksum.
  assert.deepEqual([...ours.subarray(36)], [...reference.subarray(36)]);
  assert.equal(ours.length, reference.length);
});

// ---------------------------------------------------------------------------------------
// Property test: random trees, decoded back by a decoder that trusts nothing but the grammar.

function decodePkgLength(b: Uint8Array, at: number): { value: number; size: number } {
  const lead = b[at]!;
  const follow = lead >> 6;
  if (follow === 0) return { value: lead & 0x3f, size: 1 };
  assert.equal(lead & 0x30, 0, 'bits 4-5 of a multi-byte PkgLength lead byte are reserved');
  let value = lead & 0x0f;
  for (let i = 0; i < follow; i++) value |= b[at + 1 + i]! << (4 + 8 * i);
  return { value: value >>> 0, size: 1 + follow };
}

class Decoder {
  constructor(
    private readonly b: Uint8Array,
    public at = 0,
  ) {}

  private u8(): number {
    assert.ok(this.at < this.b.length, 'read past the end');
    return this.b[this.at++]!;
  }
  private le(n: number): bigint {
    let v = 0n;
    for (let i = 0; i < n; i++) v |= BigInt(this.u8()) << BigInt(8 * i);
    return v;
  }
  /** Reads a PkgLength and returns the offset its object must end at. */
  private pkgEnd(): number {
    const start = this.at;
    const { value, size } = decodePkgLength(this.b, this.at);
    this.at += size;
    const end = start + value;
    assert.ok(end <= this.b.length, 'PkgLength runs past its parent');
    return end;
  }
  nameString(): string {
    let prefix = '';
    if (this.b[this.at] === 0x5c) {
      prefix = '\\';
      this.at++;
    } else while (this.b[this.at] === 0x5e) {
      prefix += '^';
      this.at++;
    }
    const lead = this.b[this.at]!;
    let count: number;
    if (lead === 0x00) {
      this.at++;
      count = 0;
    } else if (lead === 0x2e) {
      this.at++;
      count = 2;
    } else if (lead === 0x2f) {
      this.at++;
      count = this.u8();
    } else count = 1;
    const segs: string[] = [];
    for (let i = 0; i < count; i++) segs.push(String.fromCharCode(...Array.from({ length: 4 }, () => this.u8())));
    return prefix + segs.join('.');
  }
  private isNameStart(op: number): boolean {
    return op === 0x5c || op === 0x5e || op === 0x2e || op === 0x2f || op === 0x5f || (op >= 0x41 && op <= 0x5a);
  }
  element(): AmlPackageElement {
    const op = this.b[this.at]!;
    if (this.isNameStart(op)) return { kind: 'nameReference', path: this.nameString() };
    this.at++;
    switch (op) {
      case 0x00: return { kind: 'integer', value: 0n };
      case 0x01: return { kind: 'integer', value: 1n };
      case 0xff: return { kind: 'integer', value: (1n << 64n) - 1n };
      case 0x0a: return { kind: 'integer', value: this.le(1) };
      case 0x0b: return { kind: 'integer', value: this.le(2) };
      case 0x0c: return { kind: 'integer', value: this.le(4) };
      case 0x0e: return { kind: 'integer', value: this.le(8) };
      case 0x0d: {
        let s = '';
        for (let c = this.u8(); c !== 0; c = this.u8()) s += String.fromCharCode(c);
        return { kind: 'string', value: s };
      }
      case 0x11: {
        const end = this.pkgEnd();
        const size = this.element();
        assert.equal(size.kind, 'integer');
        const n = Number((size as { value: bigint }).value);
        const bytes = this.b.slice(this.at, this.at + n);
        this.at += n;
        assert.equal(this.at, end, 'Buffer PkgLength');
        return { kind: 'buffer', bytes };
      }
      case 0x12: {
        const end = this.pkgEnd();
        const count = this.u8();
        const elements: AmlPackageElement[] = [];
        for (let i = 0; i < count; i++) elements.push(this.element());
        assert.equal(this.at, end, 'Package PkgLength');
        return { kind: 'package', elements };
      }
      default:
        assert.fail(`unexpected data opcode 0x${op.toString(16)} at ${this.at - 1}`);
    }
  }
  termList(end: number): AmlTerm[] {
    const terms: AmlTerm[] = [];
    while (this.at < end) terms.push(this.term());
    assert.equal(this.at, end, 'TermList overran its PkgLength');
    return terms;
  }
  term(): AmlTerm {
    const op = this.u8();
    switch (op) {
      case 0x08: {
        const p = this.nameString();
        return { kind: 'name', path: p, value: this.element() as AmlData };
      }
      case 0x10: {
        const end = this.pkgEnd();
        return { kind: 'scope', path: this.nameString(), body: this.termList(end) };
      }
      case 0x5b: {
        assert.equal(this.u8(), 0x82, 'only DeviceOp follows ExtOpPrefix here');
        const end = this.pkgEnd();
        return { kind: 'device', path: this.nameString(), body: this.termList(end) };
      }
      case 0x14: {
        const end = this.pkgEnd();
        const p = this.nameString();
        const flags = this.u8();
        return { kind: 'method', path: p, argCount: flags & 7, serialized: (flags & 8) !== 0, syncLevel: flags >> 4, body: this.termList(end) };
      }
      case 0xa4:
        return { kind: 'return', value: this.element() };
      default:
        assert.fail(`unexpected term opcode 0x${op.toString(16)} at ${this.at - 1}`);
    }
  }
}

/** What the decoder gives back for a path: every segment padded to four characters. */
function canonicalPath(p: string): string {
  const m = /^(\\|\^*)(.*)$/.exec(p)!;
  const segs = m[2] === '' ? [] : m[2]!.split('.');
  return m[1]! + segs.map((s) => s.padEnd(4, '_')).join('.');
}

function canonical<T>(node: T): T {
  if (Array.isArray(node)) return node.map(canonical) as T;
  if (node instanceof Uint8Array || typeof node !== 'object' || node === null) return node;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(node)) out[k] = k === 'path' ? canonicalPath(v as string) : canonical(v);
  return out as T;
}

const seg = fc.stringMatching(/^[A-Z_][A-Z0-9_]{0,3}$/);
const pathArb = fc
  .tuple(fc.constantFrom('', '\\', '^', '^^'), fc.array(seg, { minLength: 1, maxLength: 4 }))
  .map(([prefix, segs]) => prefix + segs.join('.'));

const { term: termArb } = fc.letrec<{ data: AmlData; element: AmlPackageElement; term: AmlTerm; terms: AmlTerm[] }>((tie) => ({
  data: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }).map((v) => integer(v)),
    fc.constantFrom(0n, 1n, 0xffn, 0x100n, 0xffffn, 0x10000n, 0xffff_ffffn, 1n << 32n, (1n << 64n) - 1n).map((v) => integer(v)),
    fc.string({ unit: fc.integer({ min: 1, max: 0x7f }).map((c) => String.fromCharCode(c)), maxLength: 80 }).map((s) => string(s)),
    // Up to 5000 bytes so buffers cross the one-, two- and three-byte PkgLength forms.
    fc.oneof(fc.uint8Array({ maxLength: 70 }), fc.uint8Array({ minLength: 4000, maxLength: 5000 })).map((b) => buffer(b)),
    fc.array(tie('element'), { maxLength: 6 }).map((els) => packageOf(...els)),
  ),
  element: fc.oneof(tie('data'), pathArb.map((p) => nameReference(p))),
  term: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.tuple(pathArb, tie('data')).map(([p, d]) => name(p, d)),
    tie('element').map((e) => returnValue(e)),
    fc.tuple(pathArb, tie('terms')).map(([p, body]) => scope(p, ...body)),
    fc.tuple(pathArb, tie('terms')).map(([p, body]) => device(p, ...body)),
    fc
      .tuple(pathArb, fc.integer({ min: 0, max: 7 }), fc.boolean(), fc.integer({ min: 0, max: 15 }), tie('terms'))
      .map(([p, argCount, serialized, syncLevel, body]) => method(p, { argCount, serialized, syncLevel }, ...body)),
  ),
  terms: fc.array(tie('term'), { maxLength: 4 }),
}));

test('random trees decode back to themselves: every PkgLength is consistent', () => {
  fc.assert(
    fc.property(fc.array(termArb, { minLength: 1, maxLength: 4 }), (terms) => {
      const bytes = encodeTermList(terms);
      const d = new Decoder(bytes);
      const decoded = d.termList(bytes.length);
      assert.deepEqual(decoded, canonical(terms));
    }),
    { numRuns: 300 },
  );
});
