import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  IC_BODY_OFFSET,
  IC_MAX_VERSION_COUNT,
  IC_SERVICES,
  IcFlags,
  IcMsgType,
  IcStatus,
  chooseVersion,
  decodeIcHeader,
  decodeNegotiateBody,
  decodePipeHeader,
  encodeIcMessage,
  encodeNegotiate,
  icVersion,
  negotiatePacketSize,
  prepareNegotiateResponse,
  versionToU32,
  versionsEqual,
} from '../src/devices/ic/ic-protocol.js';
import type { IcVersion } from '../src/devices/ic/ic-protocol.js';
import {
  HEARTBEAT_BODY_SIZE,
  decodeHeartbeatSequence,
  encodeHeartbeatBody,
  incrementHeartbeatInPlace,
} from '../src/devices/ic/heartbeat-protocol.js';
import {
  SHUTDOWN_BODY_SIZE,
  decodeShutdownBody,
  encodeShutdownBody,
  shutdownFlagsFor,
  shutdownKindFromFlags,
} from '../src/devices/ic/shutdown-protocol.js';
import {
  FILETIME_UNIX_EPOCH,
  TIMESYNC_V3_BODY_SIZE,
  TIMESYNC_V4_BODY_SIZE,
  TIMESYNC_V4_MIN_BODY_SIZE,
  TimesyncFlags,
  decodeTimesyncV3,
  decodeTimesyncV4,
  encodeTimesyncV3,
  encodeTimesyncV4,
  filetimeToUnixNs,
  unixNsToFiletime,
} from '../src/devices/ic/timesync-protocol.js';
import {
  KVP_DELETE_SIZE,
  KVP_ENUMERATE_RECORD_OFFSET,
  KVP_ENUMERATE_SIZE,
  KVP_EXCHANGE_BODY_SIZE,
  KVP_GET_SET_RECORD_OFFSET,
  KVP_RECORD_SIZE,
  KvpOperation,
  KvpPool,
  KvpValueType,
  decodeKvpEnumerateIndex,
  decodeKvpHeader,
  decodeKvpKey,
  decodeKvpValue,
  decodeUtf16z,
  encodeKvpRequest,
  encodeUtf16z,
  readKvpDeleteKey,
  readKvpRecord,
} from '../src/devices/ic/kvp-protocol.js';

const view = (b: Uint8Array): DataView => new DataView(b.buffer, b.byteOffset, b.byteLength);
const v = icVersion;

// ---------------------------------------------------------------------------------------
// Framing

const versionArb = fc
  .tuple(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 0xffff }))
  .map(([major, minor]) => icVersion(major, minor));

test('icmsg header round-trips through encodeIcMessage / decodeIcHeader', () => {
  fc.assert(
    fc.property(
      versionArb,
      versionArb,
      fc.integer({ min: 0, max: 0xffff }),
      fc.integer({ min: 0, max: 0xffffffff }),
      fc.integer({ min: 0, max: 0xff }),
      fc.integer({ min: 0, max: 0xff }),
      fc.uint8Array({ maxLength: 300 }),
      (fw, msg, msgType, status, transactionId, flags, body) => {
        const packet = encodeIcMessage({ frameworkVersion: fw, messageVersion: msg, msgType, status, transactionId, flags }, body);
        assert.equal(packet.length, IC_BODY_OFFSET + body.length);
        const header = decodeIcHeader(packet)!;
        assert.deepEqual(header, {
          frameworkVersion: fw,
          messageVersion: msg,
          msgType,
          msgSize: body.length,
          status,
          transactionId,
          flags,
        });
        assert.deepEqual(decodePipeHeader(packet), { flags: 1, msgSize: 20 + body.length });
        assert.deepEqual(packet.subarray(IC_BODY_OFFSET), body);
      },
    ),
  );
});

test('the icmsg header sits at payload offset 8 with the spec offsets', () => {
  const packet = encodeIcMessage(
    { frameworkVersion: v(3, 0), messageVersion: v(4, 1), msgType: IcMsgType.TIMESYNC, status: IcStatus.E_FAIL, transactionId: 9, flags: 7 },
    new Uint8Array(5),
  );
  const d = view(packet);
  assert.equal(d.getUint32(0, true), 1); // pipe: data
  assert.equal(d.getUint32(4, true), 25); // pipe: bytes after the pipe header
  assert.equal(d.getUint16(8, true), 3);
  assert.equal(d.getUint16(10, true), 0);
  assert.equal(d.getUint16(12, true), IcMsgType.TIMESYNC);
  assert.equal(d.getUint16(14, true), 4);
  assert.equal(d.getUint16(16, true), 1);
  assert.equal(d.getUint16(18, true), 5);
  assert.equal(d.getUint32(20, true), 0x80004005);
  assert.equal(d.getUint8(24), 9);
  assert.equal(d.getUint8(25), 7);
  assert.equal(d.getUint16(26, true), 0);
});

test('encodeNegotiate: TRANSACTION|REQUEST, counts, then framework and message versions', () => {
  const packet = encodeNegotiate([v(1, 0), v(3, 0)], [v(1, 0), v(3, 0), v(3, 1), v(3, 2)]);
  assert.equal(packet.length, negotiatePacketSize(2, 4));
  assert.equal(packet.length, 28 + 8 + 6 * 4);
  const header = decodeIcHeader(packet)!;
  assert.equal(header.msgType, IcMsgType.NEGOTIATE);
  assert.equal(header.flags, IcFlags.TRANSACTION | IcFlags.REQUEST);
  assert.equal(header.msgSize, 8 + 6 * 4);
  const body = decodeNegotiateBody(packet.subarray(IC_BODY_OFFSET));
  assert.notEqual(typeof body, 'string');
  assert.deepEqual(body, { frameworkVersions: [v(1, 0), v(3, 0)], messageVersions: [v(1, 0), v(3, 0), v(3, 1), v(3, 2)] });
  assert.throws(() => encodeNegotiate(Array.from({ length: 101 }, () => v(1, 0)), []), RangeError);
});

// ---------------------------------------------------------------------------------------
// Negotiation, as vmbus_prep_negotiate_resp does it

function answer(packet: Uint8Array): { fwCount: number; msgCount: number; slot0: IcVersion; slot1: IcVersion; msgSize: number } {
  const d = view(packet);
  return {
    fwCount: d.getUint16(28, true),
    msgCount: d.getUint16(30, true),
    slot0: v(d.getUint16(36, true), d.getUint16(38, true)),
    slot1: v(d.getUint16(40, true), d.getUint16(42, true)),
    msgSize: d.getUint16(18, true),
  };
}

test('each service negotiates what Linux would pick from what our host offers', () => {
  const expected = {
    heartbeat: v(3, 0),
    shutdown: v(3, 2),
    timesync: v(4, 0),
    kvp: v(4, 0),
  } as const;
  for (const desc of Object.values(IC_SERVICES)) {
    const packet = encodeNegotiate(desc.hostFrameworkVersions, desc.hostMessageVersions);
    const length = packet.length;
    const outcome = prepareNegotiateResponse(packet, desc.frameworkVersions, desc.messageVersions)!;
    assert.equal(outcome.matched, true, desc.name);
    assert.deepEqual(outcome.frameworkVersion, v(3, 0), desc.name);
    assert.deepEqual(outcome.messageVersion, expected[desc.name], desc.name);
    assert.equal(packet.length, length);
    assert.deepEqual(answer(packet), { fwCount: 1, msgCount: 1, slot0: v(3, 0), slot1: expected[desc.name], msgSize: 16 });
  }
});

test('a host without 4.0 timesync gets 3.0; the guest order wins over the host order', () => {
  const ts = IC_SERVICES.timesync;
  const p1 = encodeNegotiate([v(1, 0), v(3, 0)], [v(1, 0), v(3, 0)]);
  assert.deepEqual(prepareNegotiateResponse(p1, ts.frameworkVersions, ts.messageVersions)!.messageVersion, v(3, 0));
  const p2 = encodeNegotiate([v(3, 0), v(1, 0)], [v(4, 0), v(1, 0), v(3, 0)]);
  const p3 = encodeNegotiate([v(1, 0), v(3, 0)], [v(3, 0), v(1, 0), v(4, 0)]);
  assert.deepEqual(prepareNegotiateResponse(p2, ts.frameworkVersions, ts.messageVersions)!.messageVersion, v(4, 0));
  assert.deepEqual(prepareNegotiateResponse(p3, ts.frameworkVersions, ts.messageVersions)!.messageVersion, v(4, 0));
  // An old host: framework 1.0 only, heartbeat 1.0 only.
  const hb = IC_SERVICES.heartbeat;
  const p4 = encodeNegotiate([v(1, 0)], [v(1, 0)]);
  const o4 = prepareNegotiateResponse(p4, hb.frameworkVersions, hb.messageVersions)!;
  assert.deepEqual([o4.matched, o4.frameworkVersion, o4.messageVersion], [true, v(1, 0), v(1, 0)]);
});

test('no common message version: counts 0/0, slot 1 holds the host message count (kernel quirk)', () => {
  const hb = IC_SERVICES.heartbeat;
  const packet = encodeNegotiate([v(1, 0), v(3, 0)], [v(2, 0), v(5, 0), v(7, 7)]);
  const outcome = prepareNegotiateResponse(packet, hb.frameworkVersions, hb.messageVersions)!;
  assert.equal(outcome.matched, false);
  assert.deepEqual(outcome.frameworkVersion, v(3, 0));
  assert.deepEqual(outcome.messageVersion, v(3, 0)); // {major: 3 versions offered, minor 0}
  assert.deepEqual(answer(packet), { fwCount: 0, msgCount: 0, slot0: v(3, 0), slot1: v(3, 0), msgSize: 16 });
});

test('no common framework version: counts 0/0, both slots hold the counts', () => {
  const kvp = IC_SERVICES.kvp;
  const packet = encodeNegotiate([v(2, 0)], [v(4, 0), v(3, 0)]);
  const outcome = prepareNegotiateResponse(packet, kvp.frameworkVersions, kvp.messageVersions)!;
  assert.equal(outcome.matched, false);
  assert.deepEqual(answer(packet), { fwCount: 0, msgCount: 0, slot0: v(1, 0), slot1: v(2, 0), msgSize: 16 });
});

test('counts over 100 or beyond the packet are refused with 0/0 without reading versions', () => {
  const hb = IC_SERVICES.heartbeat;
  const big = encodeNegotiate([v(3, 0)], [v(3, 0)]);
  view(big).setUint16(28, IC_MAX_VERSION_COUNT + 1, true);
  const o1 = prepareNegotiateResponse(big, hb.frameworkVersions, hb.messageVersions)!;
  assert.equal(o1.matched, false);
  assert.equal(answer(big).fwCount, 0);
  assert.equal(answer(big).msgCount, 0);

  const short = encodeNegotiate([v(3, 0)], [v(3, 0)]);
  view(short).setUint16(30, 5, true); // claims 5 message versions, holds 1
  const o2 = prepareNegotiateResponse(short, hb.frameworkVersions, hb.messageVersions)!;
  assert.equal(o2.matched, false);
  assert.deepEqual(o2.messageVersion, v(5, 0));
});

test('a negotiate packet too short for the counts is left untouched', () => {
  const packet = new Uint8Array(31);
  packet[12] = IcMsgType.NEGOTIATE;
  packet[29] = 0xaa;
  const before = packet.slice();
  assert.equal(prepareNegotiateResponse(packet, [v(3, 0)], [v(3, 0)]), undefined);
  assert.deepEqual(packet, before);
});

test('negotiation matches the reference rule for any offered lists, and keeps the length', () => {
  const small = fc.tuple(fc.integer({ min: 0, max: 5 }), fc.integer({ min: 0, max: 3 })).map(([major, minor]) => icVersion(major, minor));
  fc.assert(
    fc.property(
      fc.array(small, { maxLength: 8 }),
      fc.array(small, { maxLength: 8 }),
      fc.constantFrom(...Object.values(IC_SERVICES)),
      (fws, msgs, desc) => {
        const packet = encodeNegotiate(fws, msgs);
        const length = packet.length;
        const outcome = prepareNegotiateResponse(packet, desc.frameworkVersions, desc.messageVersions)!;
        const fw = desc.frameworkVersions.find((mine) => fws.some((o) => versionsEqual(o, mine)));
        const msg = desc.messageVersions.find((mine) => msgs.some((o) => versionsEqual(o, mine)));
        assert.equal(outcome.matched, fw !== undefined && msg !== undefined);
        if (outcome.matched) {
          assert.deepEqual(outcome.frameworkVersion, fw);
          assert.deepEqual(outcome.messageVersion, msg);
        }
        assert.equal(packet.length, length);
        const a = answer(Uint8Array.from([...packet, ...new Uint8Array(16)]));
        assert.equal(a.msgSize, 16);
        assert.equal(a.fwCount, outcome.matched ? 1 : 0);
        assert.deepEqual(chooseVersion(desc.messageVersions, msgs), msg);
      },
    ),
  );
});

test('versionToU32 orders versions like the kernel', () => {
  assert.equal(versionToU32(v(3, 0)), 0x30000);
  assert.ok(versionToU32(v(4, 0)) > versionToU32(v(3, 2)));
});

// ---------------------------------------------------------------------------------------
// Hostile bytes: no decoder throws

test('decoders never throw on garbage', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 3000 }), fc.integer({ min: -10, max: 3000 }), fc.nat(), (bytes, offset, size) => {
      decodePipeHeader(bytes);
      decodeIcHeader(bytes);
      decodeNegotiateBody(bytes);
      const copy = bytes.slice();
      prepareNegotiateResponse(copy, IC_SERVICES.shutdown.frameworkVersions, IC_SERVICES.shutdown.messageVersions);
      assert.equal(copy.length, bytes.length);
      decodeHeartbeatSequence(bytes);
      incrementHeartbeatInPlace(bytes.slice());
      decodeShutdownBody(bytes);
      decodeTimesyncV3(bytes);
      decodeTimesyncV4(bytes);
      decodeKvpHeader(bytes);
      decodeKvpEnumerateIndex(bytes);
      readKvpDeleteKey(bytes);
      decodeUtf16z(bytes, size);
      const record = readKvpRecord(bytes, offset);
      if (record !== undefined) {
        decodeKvpKey(record);
        decodeKvpValue(record);
      }
    }),
  );
});

test('negotiate bodies with hostile counts decode to a reason, not an exception', () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 0xffff }), fc.uint8Array({ maxLength: 900 }), (f, m, rest) => {
      const body = new Uint8Array(8 + rest.length);
      view(body).setUint16(0, f, true);
      view(body).setUint16(2, m, true);
      body.set(rest, 8);
      const r = decodeNegotiateBody(body);
      if (f > 100 || m > 100 || body.length < 8 + 4 * (f + m)) assert.equal(typeof r, 'string');
      else assert.notEqual(typeof r, 'string');
    }),
  );
});

// ---------------------------------------------------------------------------------------
// Heartbeat, shutdown, timesync bodies

test('heartbeat body: 40 bytes, seq at 0, incremented in place with u64 wrap', () => {
  fc.assert(
    fc.property(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), (seq) => {
      const body = encodeHeartbeatBody(seq);
      assert.equal(body.length, HEARTBEAT_BODY_SIZE);
      assert.equal(decodeHeartbeatSequence(body), seq);
      assert.ok(incrementHeartbeatInPlace(body));
      assert.equal(decodeHeartbeatSequence(body), (seq + 1n) % (1n << 64n));
    }),
  );
  assert.equal(decodeHeartbeatSequence(new Uint8Array(7)), undefined);
});

test('shutdown body: 2060 bytes, fields round-trip, flags map like Linux', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: 0xffffffff }),
      fc.integer({ min: 0, max: 0xffffffff }),
      fc.integer({ min: 0, max: 0xffffffff }),
      fc.string({ maxLength: 100 }).filter((s) => !s.includes('\0')),
      (reasonCode, timeoutSeconds, flags, message) => {
        const body = encodeShutdownBody({ reasonCode, timeoutSeconds, flags, message });
        assert.equal(body.length, SHUTDOWN_BODY_SIZE);
        assert.deepEqual(decodeShutdownBody(body), { reasonCode, timeoutSeconds, flags, message });
      },
    ),
  );
  assert.equal(decodeShutdownBody(new Uint8Array(SHUTDOWN_BODY_SIZE - 1)), undefined);
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 6, 7, 8].map(shutdownKindFromFlags),
    ['shutdown', 'shutdown', 'restart', 'restart', 'hibernate', 'hibernate', undefined, undefined, undefined],
  );
  assert.equal(shutdownFlagsFor('restart', true), 3);
  assert.equal(shutdownFlagsFor('hibernate', false), 4);
  assert.equal(shutdownFlagsFor('shutdown', false), 0);
});

test('FILETIME conversions: the Unix epoch, and round trips at 100 ns resolution', () => {
  assert.equal(unixNsToFiletime(0n), FILETIME_UNIX_EPOCH);
  assert.equal(FILETIME_UNIX_EPOCH, 116444736000000000n);
  assert.equal(filetimeToUnixNs(FILETIME_UNIX_EPOCH + 1n), 100n);
  fc.assert(
    // Any FILETIME from 1601 (0) on.
    fc.property(fc.bigInt({ min: -FILETIME_UNIX_EPOCH, max: 10n ** 19n }), (ticks) => {
      assert.equal(filetimeToUnixNs(unixNsToFiletime(ticks * 100n)), ticks * 100n);
    }),
  );
  assert.equal(unixNsToFiletime(199n), FILETIME_UNIX_EPOCH + 1n); // truncates
});

test('timesync bodies: v3 is 25 bytes, v4 24 sent / 22 required', () => {
  const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
  fc.assert(
    fc.property(u64, u64, u64, fc.integer({ min: 0, max: 255 }), (parentTime, childTime, roundTripTime, flags) => {
      const body = encodeTimesyncV3({ parentTime, childTime, roundTripTime, flags });
      assert.equal(body.length, TIMESYNC_V3_BODY_SIZE);
      assert.deepEqual(decodeTimesyncV3(body), { parentTime, childTime, roundTripTime, flags });
    }),
  );
  fc.assert(
    fc.property(u64, u64, fc.integer({ min: 0, max: 255 }), fc.integer({ min: -128, max: 127 }), fc.integer({ min: -128, max: 127 }), (parentTime, vmReferenceTime, flags, leapFlags, stratum) => {
      const body = encodeTimesyncV4({ parentTime, vmReferenceTime, flags, leapFlags, stratum });
      assert.equal(body.length, TIMESYNC_V4_BODY_SIZE);
      assert.deepEqual(decodeTimesyncV4(body), { parentTime, vmReferenceTime, flags, leapFlags, stratum });
      assert.deepEqual(decodeTimesyncV4(body.subarray(0, TIMESYNC_V4_MIN_BODY_SIZE)), { parentTime, vmReferenceTime, flags, leapFlags, stratum });
    }),
  );
  assert.equal(decodeTimesyncV4(new Uint8Array(21)), undefined);
  assert.equal(decodeTimesyncV3(new Uint8Array(24)), undefined);
  const v4 = encodeTimesyncV4({ parentTime: 1n, vmReferenceTime: 2n, flags: TimesyncFlags.SYNC, leapFlags: 0, stratum: 0 });
  assert.equal(v4[16], 1);
});

// ---------------------------------------------------------------------------------------
// KVP

test('KVP sizes are the packed hv_kvp_msg sizes', () => {
  assert.equal(KVP_RECORD_SIZE, 2572);
  assert.equal(KVP_ENUMERATE_SIZE, 2576);
  assert.equal(KVP_DELETE_SIZE, 516);
  assert.equal(KVP_EXCHANGE_BODY_SIZE, 2580);
});

test('KVP SET layout: op/pool header, record at 4, UTF-16LE with the NUL counted', () => {
  const body = encodeKvpRequest({ op: 'set', pool: KvpPool.EXTERNAL, key: 'abc', value: 'xy' });
  assert.equal(body.length, KVP_EXCHANGE_BODY_SIZE);
  const d = view(body);
  assert.deepEqual(decodeKvpHeader(body), { operation: KvpOperation.SET, pool: 0 });
  assert.equal(d.getUint32(4, true), KvpValueType.REG_SZ);
  assert.equal(d.getUint32(8, true), 8); // "abc\0"
  assert.equal(d.getUint32(12, true), 6); // "xy\0"
  assert.deepEqual([...body.subarray(16, 24)], [0x61, 0, 0x62, 0, 0x63, 0, 0, 0]);
  assert.deepEqual([...body.subarray(528, 534)], [0x78, 0, 0x79, 0, 0, 0]);

  const u32 = view(encodeKvpRequest({ op: 'set', pool: 1, key: 'k', value: 0xdeadbeef }));
  assert.equal(u32.getUint32(4, true), KvpValueType.REG_U32);
  assert.equal(u32.getUint32(12, true), 4);
  assert.equal(u32.getUint32(528, true), 0xdeadbeef);
  const u64 = view(encodeKvpRequest({ op: 'set', pool: 1, key: 'k', value: 1n << 40n }));
  assert.equal(u64.getUint32(4, true), KvpValueType.REG_U64);
  assert.equal(u64.getUint32(12, true), 8);
  assert.equal(u64.getBigUint64(528, true), 1n << 40n);
});

test('KVP DELETE and ENUMERATE layouts', () => {
  const del = encodeKvpRequest({ op: 'delete', pool: KvpPool.GUEST, key: 'k' });
  assert.equal(del.length, KVP_EXCHANGE_BODY_SIZE);
  assert.deepEqual(decodeKvpHeader(del), { operation: KvpOperation.DELETE, pool: 1 });
  assert.equal(view(del).getUint32(4, true), 4);
  assert.deepEqual([...del.subarray(8, 12)], [0x6b, 0, 0, 0]);
  assert.equal(readKvpDeleteKey(del)!.keySize, 4);

  const en = encodeKvpRequest({ op: 'enumerate', pool: KvpPool.AUTO, index: 7 });
  assert.deepEqual(decodeKvpHeader(en), { operation: KvpOperation.ENUMERATE, pool: 2 });
  assert.equal(decodeKvpEnumerateIndex(en), 7);
  assert.ok(readKvpRecord(en, KVP_ENUMERATE_RECORD_OFFSET));
  assert.ok(readKvpRecord(en, KVP_GET_SET_RECORD_OFFSET));
});

test('KVP records round-trip strings, u32 and u64 values', () => {
  const value = fc.oneof(
    fc.string({ unit: 'grapheme', maxLength: 200 }),
    fc.integer({ min: 0, max: 0xffffffff }),
    fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
  );
  fc.assert(
    fc.property(fc.string({ unit: 'grapheme', maxLength: 100 }), value, fc.integer({ min: 0, max: 4 }), (key, val, pool) => {
      const body = encodeKvpRequest({ op: 'set', pool, key, value: val });
      const record = readKvpRecord(body, KVP_GET_SET_RECORD_OFFSET)!;
      assert.deepEqual(decodeKvpKey(record), { ok: true, value: key });
      assert.deepEqual(decodeKvpValue(record), { ok: true, value: val });
    }),
  );
});

test('KVP encoders refuse what does not fit; the strict string reader refuses malformed sizes', () => {
  assert.throws(() => encodeKvpRequest({ op: 'set', pool: 0, key: 'k'.repeat(256), value: '' }), RangeError);
  assert.doesNotThrow(() => encodeKvpRequest({ op: 'set', pool: 0, key: 'k'.repeat(255), value: 'v'.repeat(1023) }));
  assert.throws(() => encodeKvpRequest({ op: 'set', pool: 0, key: 'k', value: 'v'.repeat(1024) }), RangeError);
  assert.throws(() => encodeKvpRequest({ op: 'set', pool: 0, key: 'k', value: 2 ** 32 }), RangeError);
  assert.throws(() => encodeKvpRequest({ op: 'set', pool: 0, key: 'k', value: -1n }), RangeError);
  assert.throws(() => encodeKvpRequest({ op: 'get', pool: 256, key: 'k' }), RangeError);
  assert.throws(() => encodeKvpRequest({ op: 'enumerate', pool: 0, index: -1 }), RangeError);

  const field = encodeUtf16z('hi', 512)!;
  assert.equal(field.length, 6);
  assert.deepEqual(decodeUtf16z(field, 6), { ok: true, value: 'hi' });
  assert.equal(decodeUtf16z(field, 5).ok, false); // odd
  assert.equal(decodeUtf16z(field, 4).ok, false); // no NUL inside the size
  assert.equal(decodeUtf16z(field, 8).ok, false); // beyond the field
  assert.equal(decodeUtf16z(field, 0).ok, false);
  assert.equal(encodeUtf16z('abc', 7), undefined);
});
