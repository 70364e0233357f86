// The storvsc wire format and StorVSP's decoders of guest input: vstor_packet round trips
// and never throws on garbage; the SRB decoder accepts exactly what storvsc sends and, on
// any input, either rejects it or yields iovecs that lie inside guest RAM and add up to
// the data length; the handshake reaches Ready only through Linux's order.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import fc from 'fast-check';
import { GuestMemory } from '../src/memory/guest-memory.js';
import { PAGE_SIZE } from '../src/memory/page.js';
import { encodeGpaDirectHeader, gpaDirectHeaderSize } from '../src/vmbus/packet.js';
import { DataDirection, ScsiStatus } from '../src/devices/scsi/scsi-command.js';
import {
  decodeVstorPacket,
  encodeChannelProperties,
  encodeProtocolVersion,
  encodeSubChannelCount,
  encodeVmscsiRequest,
  encodeVstorHeader,
  NtStatus,
  SrbStatus,
  VmscsiRequest,
  VSTOR_PACKET_SIZE,
  VstorOperation,
  VstorPacket,
} from '../src/devices/storvsp/storvsp-protocol.js';
import { HandshakeState, StorvspHandshake } from '../src/devices/storvsp/storvsp-handshake.js';
import { StorvspRequest } from '../src/devices/storvsp/storvsp-request.js';
import { SrbDecoder, SrbRejection } from '../src/devices/storvsp/storvsp-srb.js';

const RAM_PAGES = 256;
const memory = GuestMemory.create(RAM_PAGES * PAGE_SIZE, 'storvsp-protocol-test');
after(() => memory.close());
const base = Number(memory.base);
const MAX_TRANSFER = 0x20000;

const owner = { requestDone() {} };
const slot = new StorvspRequest(owner, memory, MAX_TRANSFER / 4096 + 2);

function srbBytes(fields: Partial<VmscsiRequest>, cdb: number[] = [0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0]): Uint8Array {
  const b = new Uint8Array(VSTOR_PACKET_SIZE);
  encodeVstorHeader(b, 0, VstorOperation.ExecuteSrb, 1, 0);
  const srb = Object.assign(new VmscsiRequest(), { length: 52, cdbLength: cdb.length, senseInfoLength: 20, dataIn: 1 }, fields);
  srb.cdbOrSense.set(cdb.slice(0, 16));
  encodeVmscsiRequest(b, 0, srb);
  return b;
}

function decode(bytes: Uint8Array): VstorPacket {
  const p = new VstorPacket();
  assert.ok(decodeVstorPacket(bytes, 0, bytes.length, p));
  return p;
}

function header(byteCount: number, byteOffset: number, pfns: number[]): { bytes: Uint8Array; offset: number; length: number } {
  const ranges = [{ byteCount, byteOffset, pfns }];
  const bytes = new Uint8Array(gpaDirectHeaderSize(ranges));
  encodeGpaDirectHeader(ranges, bytes, 0);
  return { bytes, offset: 0, length: bytes.length };
}

describe('vstor_packet codec', () => {
  test('a vmscsi_request round-trips field by field', () => {
    fc.assert(
      fc.property(
        fc.record({
          length: fc.integer({ min: 0, max: 0xffff }),
          srbStatus: fc.integer({ min: 0, max: 255 }),
          scsiStatus: fc.integer({ min: 0, max: 255 }),
          portNumber: fc.integer({ min: 0, max: 255 }),
          pathId: fc.integer({ min: 0, max: 255 }),
          targetId: fc.integer({ min: 0, max: 255 }),
          lun: fc.integer({ min: 0, max: 255 }),
          cdbLength: fc.integer({ min: 0, max: 255 }),
          senseInfoLength: fc.integer({ min: 0, max: 255 }),
          dataIn: fc.integer({ min: 0, max: 255 }),
          dataTransferLength: fc.nat(0xffffffff),
          srbFlags: fc.nat(0xffffffff),
          timeOutValue: fc.nat(0xffffffff),
        }),
        fc.uint8Array({ minLength: 20, maxLength: 20 }),
        fc.nat(0xffffffff),
        (fields, cdb, status) => {
          const b = new Uint8Array(VSTOR_PACKET_SIZE);
          encodeVstorHeader(b, 0, VstorOperation.ExecuteSrb, 1, status);
          const srb = Object.assign(new VmscsiRequest(), fields);
          srb.cdbOrSense.set(cdb);
          encodeVmscsiRequest(b, 0, srb);
          const p = decode(b);
          assert.equal(p.operation, VstorOperation.ExecuteSrb);
          assert.equal(p.flags, 1);
          assert.equal(p.status, status);
          for (const [k, v] of Object.entries(fields)) assert.equal((p.srb as unknown as Record<string, number>)[k], v, k);
          assert.deepEqual(p.srb.cdbOrSense, cdb);
        },
      ),
    );
  });

  test('version, properties and sub-channel payloads round-trip', () => {
    const b = new Uint8Array(VSTOR_PACKET_SIZE);
    encodeVstorHeader(b, 0, VstorOperation.CompleteIo, 0, NtStatus.RevisionMismatch);
    encodeProtocolVersion(b, 0, 0x0602, 0);
    let p = decode(b);
    assert.equal(p.status, NtStatus.RevisionMismatch);
    assert.equal(p.majorMinor, 0x0602);
    encodeVstorHeader(b, 0, VstorOperation.CompleteIo, 0, 0);
    encodeChannelProperties(b, 0, 7, 1, 0x100000);
    p = decode(b);
    assert.deepEqual([p.maxChannelCount, p.propertiesFlags, p.maxTransferBytes], [7, 1, 0x100000]);
    encodeVstorHeader(b, 0, VstorOperation.CreateSubChannels, 1, 0);
    encodeSubChannelCount(b, 0, 15);
    assert.equal(decode(b).subChannelCount, 15);
  });

  test('random bytes of any length never throw; short packets read as zero-padded; under 4 bytes is refused', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 100 }), fc.nat(8), (bytes, offset) => {
        const buf = new Uint8Array(bytes.length + offset);
        buf.set(bytes, offset);
        const p = new VstorPacket();
        const ok = decodeVstorPacket(buf, offset, bytes.length, p);
        assert.equal(ok, bytes.length >= 4);
        if (!ok) return;
        const padded = new Uint8Array(VSTOR_PACKET_SIZE);
        padded.set(bytes.subarray(0, VSTOR_PACKET_SIZE));
        const q = decode(padded);
        assert.deepEqual({ ...p, srb: { ...p.srb } }, { ...q, srb: { ...q.srb } });
      }),
    );
    // A length beyond the buffer is refused rather than read past it.
    assert.equal(decodeVstorPacket(new Uint8Array(10), 0, 64, new VstorPacket()), false);
  });
});

describe('SRB decoder', () => {
  const decoder = new SrbDecoder(MAX_TRANSFER);

  test('accepts what storvsc sends and builds merged iovecs of host addresses', () => {
    // Pages 10..12 are consecutive: one segment starting 100 bytes in.
    const h = header(3 * 4096 - 100, 100, [10, 11, 12]);
    assert.equal(decoder.prepare(srbBytes({ dataTransferLength: 3 * 4096 - 100, dataIn: 1 }), 0, 64, h, memory, base, slot), SrbRejection.None);
    assert.equal(slot.data.count, 1);
    assert.equal(slot.data.addressAt(0), base + 10 * 4096 + 100);
    assert.equal(slot.data.byteLength, 3 * 4096 - 100);
    assert.equal(slot.dataDirection, DataDirection.FromDevice);
    assert.equal(slot.cdbLength, 10);
    assert.equal(slot.cdb[0], 0x28);

    // Pages 10, 11 consecutive, then 40: two segments.
    const h2 = header(2 * 4096 + 8, 0, [10, 11, 40]);
    assert.equal(decoder.prepare(srbBytes({ dataTransferLength: 2 * 4096 + 8, dataIn: 0 }), 0, 64, h2, memory, base, slot), SrbRejection.None);
    assert.deepEqual(
      Array.from({ length: slot.data.count }, (_, i) => [slot.data.addressAt(i) - base, slot.data.lengthAt(i)]),
      [[10 * 4096, 8192], [40 * 4096, 8]],
    );
    assert.equal(slot.dataDirection, DataDirection.ToDevice);

    // In-band, no data.
    assert.equal(decoder.prepare(srbBytes({ dataTransferLength: 0, dataIn: 2 }, [0, 0, 0, 0, 0, 0]), 0, 64, null, memory, base, slot), SrbRejection.None);
    assert.equal(slot.data.count, 0);
    assert.equal(slot.dataDirection, DataDirection.None);
  });

  test('rejects each malformed field with its own reason', () => {
    const ok = { dataTransferLength: 4096, dataIn: 1 };
    const h = header(4096, 0, [10]);
    const cases: [Partial<VmscsiRequest>, ReturnType<typeof header> | null, number, SrbRejection][] = [
      [ok, h, 48, SrbRejection.Truncated],
      [{ ...ok, length: 36 }, h, 64, SrbRejection.SrbLength],
      [{ ...ok, cdbLength: 0 }, h, 64, SrbRejection.CdbLength],
      [{ ...ok, cdbLength: 17 }, h, 64, SrbRejection.CdbLength],
      [{ ...ok, dataIn: 3 }, h, 64, SrbRejection.DataIn],
      [{ ...ok, pathId: 8 }, h, 64, SrbRejection.Address],
      [{ ...ok, targetId: 2 }, h, 64, SrbRejection.Address],
      [{ ...ok, lun: 255 }, h, 64, SrbRejection.Address],
      [ok, null, 64, SrbRejection.InbandWithData],
      [ok, header(4000, 0, [10]), 64, SrbRejection.LengthMismatch],
      [{ ...ok, dataIn: 2 }, h, 64, SrbRejection.EmptyBuffer],
      [{ ...ok, dataTransferLength: 0 }, header(0, 0, []), 64, SrbRejection.EmptyBuffer],
      [{ ...ok, dataTransferLength: MAX_TRANSFER + 4096 }, header(MAX_TRANSFER + 4096, 0, Array.from({ length: 33 }, (_, i) => i)), 64, SrbRejection.TooLarge],
      [ok, header(4096, 4096, [10, 11]), 64, SrbRejection.ByteOffset],
      [ok, header(4096, 0, [RAM_PAGES]), 64, SrbRejection.PageOutsideRam],
      [ok, { bytes: new Uint8Array(8), offset: 0, length: 8 }, 64, SrbRejection.RangeCount],
      [ok, { bytes: new Uint8Array([0, 0, 0, 0, 1, 0, 0, 0]), offset: 0, length: 8 }, 64, SrbRejection.BadRangeHeader],
      [ok, { bytes: new Uint8Array(4), offset: 0, length: 4 }, 64, SrbRejection.BadRangeHeader],
    ];
    for (const [fields, hdr, length, expected] of cases) {
      assert.equal(decoder.prepare(srbBytes(fields), 0, length, hdr, memory, base, slot), expected, JSON.stringify(fields));
    }
    const two = { bytes: new Uint8Array(gpaDirectHeaderSize([{ byteCount: 1, byteOffset: 0, pfns: [1] }, { byteCount: 1, byteOffset: 0, pfns: [2] }])), offset: 0, length: 0 };
    two.length = encodeGpaDirectHeader([{ byteCount: 1, byteOffset: 0, pfns: [1] }, { byteCount: 1, byteOffset: 0, pfns: [2] }], two.bytes, 0);
    assert.equal(decoder.prepare(srbBytes({ dataTransferLength: 1, dataIn: 1 }), 0, 64, two, memory, base, slot), SrbRejection.RangeCount);
  });

  test('property: any packet and range header either is rejected or maps exactly data_transfer_length bytes inside guest RAM', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 64, maxLength: 64 }),
        fc.oneof(
          fc.constant(null),
          fc.uint8Array({ minLength: 0, maxLength: 300 }),
          fc.record({ count: fc.integer({ min: 0, max: MAX_TRANSFER + 8192 }), offset: fc.nat(4200), first: fc.nat(RAM_PAGES + 4), scatter: fc.boolean() }),
        ),
        fc.boolean(),
        (raw, hdr, plausible) => {
          const bytes = raw.slice();
          if (plausible) {
            // Steer half the runs to the interesting part: a well-formed SRB with random rest.
            bytes[12] = 52;
            bytes[13] = 0;
            bytes[20] = 1 + (bytes[20]! % 16);
            bytes[22] = bytes[22]! % 3;
            bytes[17] = bytes[17]! % 8;
            bytes[18] = bytes[18]! % 2;
          }
          let range: { bytes: Uint8Array; offset: number; length: number } | null = null;
          if (hdr instanceof Uint8Array) {
            range = { bytes: hdr, offset: 0, length: hdr.length };
          } else if (hdr !== null) {
            const pages = Math.ceil((hdr.offset + hdr.count) / 4096);
            range = header(hdr.count, hdr.offset, Array.from({ length: pages }, (_, i) => hdr.first + (hdr.scatter ? 2 * i : i)));
            if (plausible) new DataView(bytes.buffer).setUint32(24, hdr.count, true);
          }
          const p = decode(bytes);
          const result = decoder.prepare(bytes, 0, 64, range, memory, base, slot);
          if (result !== SrbRejection.None) {
            assert.ok(result > 0 && result <= SrbRejection.TooManySegments);
            return;
          }
          assert.ok(p.srb.cdbLength >= 1 && p.srb.cdbLength <= 16);
          assert.ok(p.srb.dataIn <= 2);
          assert.equal(slot.data.byteLength, p.srb.dataTransferLength);
          assert.ok(slot.data.byteLength <= MAX_TRANSFER);
          let total = 0;
          for (let i = 0; i < slot.data.count; i++) {
            const gpa = slot.data.addressAt(i) - base;
            const len = slot.data.lengthAt(i);
            assert.ok(len > 0 && memory.contains(gpa, len), `segment ${gpa}+${len} inside RAM`);
            total += len;
          }
          assert.equal(total, p.srb.dataTransferLength);
        },
      ),
      { numRuns: 2000 },
    );
  });
});

describe('SRB completion encoding', () => {
  test('results map to srb status, scsi status, sense and length as storvsc reads them', () => {
    const s = slot;
    s.pathId = 1;
    s.targetId = 0;
    s.lun = 3;
    s.cdbLength = 10;
    s.dataIn = 1;
    s.requestedLength = 4096;
    s.senseRoom = 20;

    s.resetResults();
    s.bytesTransferred = 99999; // a unit claiming more than the buffer is clamped
    s.setScsiResult();
    s.encodeSrbReply(s.reply, 0);
    let p = decode(s.reply);
    assert.deepEqual([p.operation, p.status, p.srb.length, p.srb.srbStatus, p.srb.scsiStatus, p.srb.dataTransferLength], [VstorOperation.CompleteIo, 0, 52, SrbStatus.Success, 0, 4096]);
    assert.deepEqual([p.srb.pathId, p.srb.lun], [1, 3]);

    s.resetResults();
    s.scsiStatus = ScsiStatus.CheckCondition;
    s.sense.fill(0xaa);
    s.senseLength = 32;
    s.senseRoom = 14;
    s.bytesTransferred = 512;
    s.setScsiResult();
    s.encodeSrbReply(s.reply, 0);
    p = decode(s.reply);
    assert.equal(p.srb.srbStatus, SrbStatus.Error | SrbStatus.AutosenseValid);
    assert.equal(p.srb.scsiStatus, 2);
    assert.equal(p.srb.senseInfoLength, 14, 'no more sense than the guest has room for');
    assert.equal(p.srb.dataTransferLength, 0);
    assert.deepEqual([...p.srb.cdbOrSense.subarray(0, 15)], [...new Array(14).fill(0xaa), 0]);

    s.resetResults();
    s.scsiStatus = ScsiStatus.CheckCondition;
    s.senseLength = 0;
    s.setScsiResult();
    s.encodeSrbReply(s.reply, 0);
    assert.equal(decode(s.reply).srb.srbStatus, SrbStatus.Error, 'no autosense flag without sense');

    s.resetResults();
    s.scsiStatus = ScsiStatus.TaskSetFull;
    s.setScsiResult();
    s.encodeSrbReply(s.reply, 0);
    p = decode(s.reply);
    assert.deepEqual([p.srb.srbStatus, p.srb.scsiStatus], [SrbStatus.Busy, ScsiStatus.TaskSetFull]);
  });

  test('transaction ids: numbers when exact, bigints beyond 2^53', () => {
    slot.transactionIdLow = 5;
    slot.transactionIdHigh = 0;
    assert.equal(slot.transactionId(), 5);
    slot.transactionIdLow = 0xfffffffd;
    slot.transactionIdHigh = 0xffffffff;
    assert.equal(slot.transactionId(), 0xfffffffffffffffdn);
  });
});

describe('handshake', () => {
  const config = { maxVersion: 0x0602, maxSubchannels: 2, maxTransferBytes: 0x100000 };

  test('property: Ready is reached only by begin, an accepted version, properties, end in that order', () => {
    const step = fc.oneof(
      fc.constant({ op: 'begin' as const }),
      fc.record({ op: fc.constant('version' as const), v: fc.constantFrom(0x0602, 0x0600, 0x0501, 0x0402, 0x0700) }),
      fc.constant({ op: 'properties' as const }),
      fc.constant({ op: 'end' as const }),
      fc.record({ op: fc.constant('sub' as const), n: fc.nat(4) }),
    );
    fc.assert(
      fc.property(fc.array(step, { maxLength: 12 }), (steps) => {
        const hs = new StorvspHandshake(config);
        // The model: how far along the sequence the guest is.
        let model: number = HandshakeState.AwaitBegin;
        for (const s of steps) {
          let status: number;
          let expectOk: boolean;
          switch (s.op) {
            case 'begin':
              expectOk = model === HandshakeState.AwaitBegin;
              status = hs.begin();
              if (expectOk) model = HandshakeState.AwaitVersion;
              break;
            case 'version':
              expectOk = model === HandshakeState.AwaitVersion && [0x0602, 0x0600, 0x0501].includes(s.v);
              status = hs.queryVersion(s.v);
              if (expectOk) model = HandshakeState.AwaitProperties;
              else if (model === HandshakeState.AwaitVersion) assert.equal(status, NtStatus.RevisionMismatch);
              break;
            case 'properties':
              expectOk = model === HandshakeState.AwaitProperties;
              status = hs.queryProperties();
              if (expectOk) model = HandshakeState.AwaitEnd;
              break;
            case 'end':
              expectOk = model === HandshakeState.AwaitEnd;
              status = hs.end();
              if (expectOk) model = HandshakeState.Ready;
              break;
            case 'sub':
              expectOk = model === HandshakeState.Ready && s.n >= 1 && s.n <= 2;
              status = hs.createSubchannels(s.n, true);
              break;
          }
          assert.equal(status === NtStatus.Success, expectOk, `${JSON.stringify(s)} in state ${model}`);
          assert.equal(hs.state, model);
        }
      }),
    );
  });

  test('sub-channels start ready; CREATE_SUB_CHANNELS is refused on them', () => {
    const hs = new StorvspHandshake(config);
    hs.startReady(0x0602);
    assert.ok(hs.ready);
    assert.equal(hs.createSubchannels(1, false), NtStatus.InvalidDeviceState);
    assert.equal(hs.begin(), NtStatus.InvalidDeviceState);
  });
});
