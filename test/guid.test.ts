import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { GUID_SIZE, isGuid, readGuid, writeGuid } from '../src/vmbus/guid.js';

const NIC = 'f8615163-df3e-46c5-913f-f2d2f965ed0e';
const NIC_WIRE = [0x63, 0x51, 0x61, 0xf8, 0x3e, 0xdf, 0xc5, 0x46, 0x91, 0x3f, 0xf2, 0xd2, 0xf9, 0x65, 0xed, 0x0e];

/** A canonical GUID string built straight from 16 random bytes (string order, not wire order). */
const guidString = fc.uint8Array({ minLength: 16, maxLength: 16 }).map((b) => {
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
});

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

test('GUID_SIZE is 16', () => {
  assert.equal(GUID_SIZE, 16);
});

test('the NIC class GUID has the wire bytes given in the spec', () => {
  const bytes = new Uint8Array(16);
  writeGuid(viewOf(bytes), 0, NIC);
  assert.deepEqual([...bytes], NIC_WIRE);
  assert.equal(readGuid(viewOf(Uint8Array.from(NIC_WIRE)), 0), NIC);
});

test('writeGuid honours the offset and touches only its 16 bytes', () => {
  const bytes = new Uint8Array(40).fill(0xaa);
  writeGuid(viewOf(bytes), 11, NIC);
  assert.deepEqual([...bytes.subarray(11, 27)], NIC_WIRE);
  assert.ok(bytes.subarray(0, 11).every((b) => b === 0xaa));
  assert.ok(bytes.subarray(27).every((b) => b === 0xaa));
  assert.equal(readGuid(viewOf(bytes), 11), NIC);
});

test('uppercase input is accepted and reads back lowercase', () => {
  const bytes = new Uint8Array(16);
  writeGuid(viewOf(bytes), 0, NIC.toUpperCase());
  assert.equal(readGuid(viewOf(bytes), 0), NIC);
});

test('string -> wire -> string round trip', () => {
  fc.assert(
    fc.property(guidString, fc.boolean(), (guid, upper) => {
      const bytes = new Uint8Array(16);
      writeGuid(viewOf(bytes), 0, upper ? guid.toUpperCase() : guid);
      assert.equal(readGuid(viewOf(bytes), 0), guid);
    }),
  );
});

test('wire -> string -> wire round trip', () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 16, maxLength: 16 }), (wire) => {
      const guid = readGuid(viewOf(wire), 0);
      assert.ok(isGuid(guid));
      assert.equal(guid, guid.toLowerCase());
      const again = new Uint8Array(16);
      writeGuid(viewOf(again), 0, guid);
      assert.deepEqual(again, wire);
    }),
  );
});

test('readGuid works on a view that starts inside a larger buffer', () => {
  const backing = new Uint8Array(64);
  backing.set(NIC_WIRE, 20);
  const view = new DataView(backing.buffer, 16, 32);
  assert.equal(readGuid(view, 4), NIC);
});

const MALFORMED = [
  '',
  'f8615163df3e46c5913ff2d2f965ed0e',
  '{f8615163-df3e-46c5-913f-f2d2f965ed0e}',
  'f8615163-df3e-46c5-913f-f2d2f965ed0',
  'f8615163-df3e-46c5-913f-f2d2f965ed0e0',
  'g8615163-df3e-46c5-913f-f2d2f965ed0e',
  'f8615163-df3e-46c5-913ff2d2-f965ed0e',
  ' f8615163-df3e-46c5-913f-f2d2f965ed0e',
  'f8615163-df3e-46c5-913f-f2d2f965ed0e\n',
  'f8615163_df3e_46c5_913f_f2d2f965ed0e',
];

test('malformed strings are not GUIDs and writeGuid throws RangeError', () => {
  for (const s of MALFORMED) {
    assert.equal(isGuid(s), false, s);
    assert.throws(() => writeGuid(viewOf(new Uint8Array(16)), 0, s), RangeError, s);
  }
  for (const v of [undefined, null, 42, {}, ['f8615163-df3e-46c5-913f-f2d2f965ed0e']]) {
    assert.equal(isGuid(v), false);
    assert.throws(() => writeGuid(viewOf(new Uint8Array(16)), 0, v as unknown as string), RangeError);
  }
});

test('random strings are rejected unless they really are GUIDs', () => {
  fc.assert(
    fc.property(fc.string({ maxLength: 40 }), (s) => {
      const shaped = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/.test(s);
      assert.equal(isGuid(s), shaped);
      if (!shaped) assert.throws(() => writeGuid(viewOf(new Uint8Array(16)), 0, s), RangeError);
    }),
  );
});

test('writeGuid refuses an offset where 16 bytes do not fit', () => {
  assert.throws(() => writeGuid(viewOf(new Uint8Array(20)), 5, NIC), RangeError);
  assert.throws(() => writeGuid(viewOf(new Uint8Array(20)), -1, NIC), RangeError);
  const bytes = new Uint8Array(20);
  writeGuid(viewOf(bytes), 4, NIC);
  assert.equal(readGuid(viewOf(bytes), 4), NIC);
});
