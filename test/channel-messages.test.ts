import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  decodeMessage,
  encodeMessage,
  MAX_MESSAGE_SIZE,
  MESSAGE_HEADER_SIZE,
  messageSize,
  MessageType,
  messageTypeName,
  type ChannelMessage,
  type InitiateContactMessage,
  type MessageKind,
} from '../src/vmbus/channel-messages.js';
import {
  formatVersion,
  parseVersion,
  VERSION_WIN10,
  VERSION_WIN10_V4_1,
  VERSION_WIN10_V5,
  VERSION_WIN10_V5_1,
  VERSION_WIN10_V5_2,
  VERSION_WIN10_V5_3,
  VERSION_WIN8,
  VERSION_WIN8_1,
  versionAtLeast,
  VMBUS_VERSIONS_LINUX,
} from '../src/vmbus/versions.js';

// ---------------------------------------------------------------------------------------
// Arbitraries

const u8 = fc.integer({ min: 0, max: 0xff });
const u16 = fc.integer({ min: 0, max: 0xffff });
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const u64 = fc.bigInt({ min: 0n, max: 0xffffffffffffffffn });
const guid = fc.uint8Array({ minLength: 16, maxLength: 16 }).map((b) => {
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
});
const blob120 = fc.uint8Array({ minLength: 120, maxLength: 120 });
const version = fc.oneof(fc.constantFrom(...VMBUS_VERSIONS_LINUX, 0x0000000d, 0x00010001), u32);

const ARBITRARIES: { [K in MessageKind]: fc.Arbitrary<Extract<ChannelMessage, { kind: K }>> } = {
  'offer-channel': fc.record({
    kind: fc.constant('offer-channel'),
    interfaceId: guid,
    instanceId: guid,
    channelFlags: u16,
    mmioMegabytes: u16,
    userDefined: blob120,
    subChannelIndex: u16,
    mmioMegabytesOptional: u16,
    childRelid: u32,
    monitorId: u8,
    monitorAllocated: fc.boolean(),
    dedicatedInterrupt: fc.boolean(),
    connectionId: u32,
  }),
  'rescind-offer': fc.record({ kind: fc.constant('rescind-offer'), childRelid: u32 }),
  'request-offers': fc.constant({ kind: 'request-offers' }),
  'all-offers-delivered': fc.constant({ kind: 'all-offers-delivered' }),
  'open-channel': fc.record({
    kind: fc.constant('open-channel'),
    childRelid: u32,
    openId: u32,
    ringGpadlHandle: u32,
    targetVp: u32,
    downstreamPageOffset: u32,
    userData: blob120,
  }),
  'open-result': fc.record({ kind: fc.constant('open-result'), childRelid: u32, openId: u32, status: u32 }),
  'close-channel': fc.record({ kind: fc.constant('close-channel'), childRelid: u32 }),
  'gpadl-header': fc.record({
    kind: fc.constant('gpadl-header'),
    childRelid: u32,
    gpadl: u32,
    rangeBufferLength: u16,
    rangeCount: u16,
    rangeData: fc.uint8Array({ maxLength: MAX_MESSAGE_SIZE - 20 }),
  }),
  'gpadl-body': fc.record({
    kind: fc.constant('gpadl-body'),
    messageNumber: u32,
    gpadl: u32,
    pfnData: fc.uint8Array({ maxLength: MAX_MESSAGE_SIZE - 16 }),
  }),
  'gpadl-created': fc.record({ kind: fc.constant('gpadl-created'), childRelid: u32, gpadl: u32, status: u32 }),
  'gpadl-teardown': fc.record({ kind: fc.constant('gpadl-teardown'), childRelid: u32, gpadl: u32 }),
  'gpadl-torndown': fc.record({ kind: fc.constant('gpadl-torndown'), gpadl: u32 }),
  'relid-released': fc.record({ kind: fc.constant('relid-released'), childRelid: u32 }),
  'initiate-contact': fc.record({
    kind: fc.constant('initiate-contact'),
    version,
    targetVcpu: u32,
    interruptPage: u64,
    messageSint: u8,
    messageVtl: u8,
    monitorPage1: u64,
    monitorPage2: u64,
  }),
  'version-response': fc.record({
    kind: fc.constant('version-response'),
    versionSupported: fc.boolean(),
    connectionState: u8,
    messageConnectionId: u32,
  }),
  unload: fc.constant({ kind: 'unload' }),
  'unload-response': fc.constant({ kind: 'unload-response' }),
  'tl-connect-request': fc.record(
    { kind: fc.constant('tl-connect-request'), guestEndpointId: guid, hostServiceId: guid, siloId: guid },
    { requiredKeys: ['kind', 'guestEndpointId', 'hostServiceId'] },
  ),
  'tl-connect-result': fc.record({ kind: fc.constant('tl-connect-result'), guestEndpointId: guid, hostServiceId: guid, status: u32 }),
  'modify-channel': fc.record({ kind: fc.constant('modify-channel'), childRelid: u32, targetVp: u32 }),
  'modify-channel-response': fc.record({ kind: fc.constant('modify-channel-response'), childRelid: u32, status: u32 }),
};

const KINDS = Object.keys(ARBITRARIES) as MessageKind[];
const anyMessage: fc.Arbitrary<ChannelMessage> = fc.oneof(...KINDS.map((k) => ARBITRARIES[k] as fc.Arbitrary<ChannelMessage>));

/** Struct sizes from Linux's include/linux/hyperv.h (sizeof, header included). TL_CONNECT_RESULT from OpenVMM. */
const LINUX_SIZES: Record<MessageKind, number> = {
  'offer-channel': 196, // vmbus_channel_offer_channel
  'rescind-offer': 12, // vmbus_channel_rescind_offer
  'request-offers': 8, // vmbus_channel_message_header
  'all-offers-delivered': 8,
  'open-channel': 148, // vmbus_channel_open_channel
  'open-result': 20, // vmbus_channel_open_result
  'close-channel': 12, // vmbus_channel_close_channel
  'gpadl-header': 20, // vmbus_channel_gpadl_header, without its ranges
  'gpadl-body': 16, // vmbus_channel_gpadl_body, without its PFNs
  'gpadl-created': 20, // vmbus_channel_gpadl_created
  'gpadl-teardown': 16, // vmbus_channel_gpadl_teardown
  'gpadl-torndown': 12, // vmbus_channel_gpadl_torndown
  'relid-released': 12, // vmbus_channel_relid_released
  'initiate-contact': 40, // vmbus_channel_initiate_contact
  'version-response': 16, // vmbus_channel_version_response
  unload: 8,
  'unload-response': 8,
  'tl-connect-request': 40, // vmbus_channel_tl_connect_request (56 with OpenVMM's silo id)
  'tl-connect-result': 44, // OpenVMM TlConnectResult
  'modify-channel': 16, // vmbus_channel_modifychannel
  'modify-channel-response': 16, // vmbus_channel_modifychannel_response
};

const TYPES: Record<MessageKind, number> = {
  'offer-channel': 1,
  'rescind-offer': 2,
  'request-offers': 3,
  'all-offers-delivered': 4,
  'open-channel': 5,
  'open-result': 6,
  'close-channel': 7,
  'gpadl-header': 8,
  'gpadl-body': 9,
  'gpadl-created': 10,
  'gpadl-teardown': 11,
  'gpadl-torndown': 12,
  'relid-released': 13,
  'initiate-contact': 14,
  'version-response': 15,
  unload: 16,
  'unload-response': 17,
  'tl-connect-request': 21,
  'modify-channel': 22,
  'tl-connect-result': 23,
  'modify-channel-response': 24,
};

/**
 * What a message decodes back to: a plain object (fast-check records have a null
 * prototype), and for INITIATE_CONTACT only the view its version selects.
 */
function normalized(m: ChannelMessage): ChannelMessage {
  if (m.kind !== 'initiate-contact') return { ...m };
  return normalizeContact(m);
}

function normalizeContact(m: InitiateContactMessage): InitiateContactMessage {
  if (m.version >= VERSION_WIN10_V5) {
    return { ...m, interruptPage: BigInt(m.messageSint | (m.messageVtl << 8)) };
  }
  return { ...m, messageSint: Number(m.interruptPage & 0xffn), messageVtl: Number((m.interruptPage >> 8n) & 0xffn) };
}

function expectedSize(m: ChannelMessage): number {
  if (m.kind === 'gpadl-header') return 20 + m.rangeData.length;
  if (m.kind === 'gpadl-body') return 16 + m.pfnData.length;
  if (m.kind === 'tl-connect-request' && m.siloId !== undefined) return 56;
  return LINUX_SIZES[m.kind];
}

function decodeOk(bytes: Uint8Array): ChannelMessage {
  const r = decodeMessage(bytes);
  if (!r.ok) assert.fail(r.error);
  return r.message;
}

function u32At(bytes: Uint8Array, offset: number): number {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(offset, true);
}

function hex(s: string): Uint8Array {
  const clean = s.replace(/\s+/g, '');
  return Uint8Array.from(clean.match(/../g) ?? [], (b) => parseInt(b, 16));
}

// ---------------------------------------------------------------------------------------
// Constants

test('MessageType numbers match Linux enum vmbus_channel_message_type', () => {
  for (const kind of KINDS) assert.ok(Object.values(MessageType).includes(TYPES[kind] as MessageType), kind);
  assert.equal(MessageType.OfferChannel, 1);
  assert.equal(MessageType.UnloadResponse, 17);
  assert.equal(MessageType.OpenReservedChannel, 18);
  assert.equal(MessageType.CloseReservedChannel, 19);
  assert.equal(MessageType.CloseReservedChannelResponse, 20);
  assert.equal(MessageType.TlConnectRequest, 21);
  assert.equal(MessageType.ModifyChannel, 22);
  assert.equal(MessageType.TlConnectResult, 23);
  assert.equal(MessageType.ModifyChannelResponse, 24);
  assert.deepEqual(Object.values(MessageType), Array.from({ length: 24 }, (_, i) => i + 1));
  assert.equal(MESSAGE_HEADER_SIZE, 8);
  assert.equal(MAX_MESSAGE_SIZE, 240);
});

test('messageTypeName names every type and marks unknown ones', () => {
  assert.equal(messageTypeName(1), 'OfferChannel');
  assert.equal(messageTypeName(14), 'InitiateContact');
  assert.equal(messageTypeName(24), 'ModifyChannelResponse');
  assert.equal(messageTypeName(0), 'unknown(0)');
  assert.equal(messageTypeName(25), 'unknown(25)');
  assert.equal(messageTypeName(0xffffffff), 'unknown(4294967295)');
});

test('versions: Linux list, names, format, parse, compare', () => {
  assert.deepEqual(VMBUS_VERSIONS_LINUX, [0x50003, 0x50002, 0x50001, 0x50000, 0x40001, 0x40000, 0x30000, 0x20004]);
  assert.deepEqual(
    [VERSION_WIN8, VERSION_WIN8_1, VERSION_WIN10, VERSION_WIN10_V4_1, VERSION_WIN10_V5, VERSION_WIN10_V5_1, VERSION_WIN10_V5_2, VERSION_WIN10_V5_3],
    [0x20004, 0x30000, 0x40000, 0x40001, 0x50000, 0x50001, 0x50002, 0x50003],
  );
  assert.deepEqual(VMBUS_VERSIONS_LINUX.map(formatVersion), ['5.3', '5.2', '5.1', '5.0', '4.1', '4.0', '3.0', '2.4']);
  assert.equal(formatVersion(0x0000000d), '0.13');
  assert.equal(parseVersion('5.3'), 0x50003);
  assert.equal(parseVersion('0.13'), 0xd);
  assert.equal(parseVersion('65535.65535'), 0xffffffff);
  for (const junk of ['', '5', '5.', '.3', '5.3.1', 'v5.3', '5.3 ', '-1.0', '65536.0', '0.65536', '5,3', '0x5.3', '1e2.0']) {
    assert.throws(() => parseVersion(junk), RangeError, junk);
  }
  assert.throws(() => parseVersion(undefined as unknown as string), RangeError);
  fc.assert(fc.property(u32, (v) => parseVersion(formatVersion(v)) === v));
  assert.ok(versionAtLeast(VERSION_WIN10_V5_3, VERSION_WIN10_V5));
  assert.ok(versionAtLeast(VERSION_WIN10_V5, VERSION_WIN10_V5));
  assert.ok(!versionAtLeast(VERSION_WIN10_V4_1, VERSION_WIN10_V5));
  assert.ok(versionAtLeast(0xffff0000, VERSION_WIN10_V5_3));
  fc.assert(fc.property(u32, u32, (a, b) => versionAtLeast(a, b) === a >= b));
});

// ---------------------------------------------------------------------------------------
// Encoding

test('every kind round-trips through encode/decode at its Linux size', () => {
  for (const kind of KINDS) {
    fc.assert(
      fc.property(ARBITRARIES[kind] as fc.Arbitrary<ChannelMessage>, (m) => {
        const bytes = encodeMessage(m);
        assert.equal(bytes.length, expectedSize(m));
        assert.equal(messageSize(m), bytes.length);
        assert.equal(u32At(bytes, 0), TYPES[m.kind], 'msgtype');
        assert.equal(u32At(bytes, 4), 0, 'padding');
        assert.deepEqual(decodeOk(bytes), normalized(m));
      }),
      { numRuns: 200 },
    );
  }
});

test('encoded sizes equal the Linux struct sizes', () => {
  const sizes: Record<string, number> = {};
  for (const kind of KINDS) {
    const [sample] = fc.sample(ARBITRARIES[kind] as fc.Arbitrary<ChannelMessage>, { numRuns: 1, seed: 1 });
    let m = sample!;
    if (m.kind === 'gpadl-header') m = { ...m, rangeData: new Uint8Array(0) };
    if (m.kind === 'gpadl-body') m = { ...m, pfnData: new Uint8Array(0) };
    if (m.kind === 'tl-connect-request') m = { kind: m.kind, guestEndpointId: m.guestEndpointId, hostServiceId: m.hostServiceId };
    sizes[kind] = encodeMessage(m).length;
  }
  assert.deepEqual(sizes, LINUX_SIZES);
  const silo = encodeMessage({
    kind: 'tl-connect-request',
    guestEndpointId: '00000000-0000-0000-0000-000000000001',
    hostServiceId: '00000000-0000-0000-0000-000000000002',
    siloId: '00000000-0000-0000-0000-000000000003',
  });
  assert.equal(silo.length, 56);
});

test('OFFERCHANNEL known bytes (NIC offer built by hand)', () => {
  const userDefined = new Uint8Array(120);
  userDefined[0] = 0x11;
  userDefined[119] = 0x22;
  const offer: ChannelMessage = {
    kind: 'offer-channel',
    interfaceId: 'f8615163-df3e-46c5-913f-f2d2f965ed0e',
    instanceId: '12345678-9abc-def0-0123-456789abcdef',
    channelFlags: 0x2010,
    mmioMegabytes: 0x0102,
    userDefined,
    subChannelIndex: 3,
    mmioMegabytesOptional: 0x0a0b,
    childRelid: 14,
    monitorId: 0xff,
    monitorAllocated: false,
    dedicatedInterrupt: true,
    connectionId: 0x200e,
  };
  const expected = hex(`
    01000000 00000000
    635161f8 3edf c546 913f f2d2f965ed0e
    78563412 bc9a f0de 0123 456789abcdef
    00000000000000000000000000000000
    1020 0201
    11 ${'00'.repeat(118)} 22
    0300 0b0a
    0e000000
    ff 00 0100
    0e200000`);
  assert.equal(expected.length, 196);
  assert.deepEqual(encodeMessage(offer), expected);
  assert.deepEqual(decodeOk(expected), offer);
});

test('INITIATE_CONTACT: 5.0+ sends (sint, vtl), older sends the interrupt page', () => {
  const base = { kind: 'initiate-contact', targetVcpu: 0, monitorPage1: 0x1000n, monitorPage2: 0x2000n } as const;
  const v53 = encodeMessage({ ...base, version: VERSION_WIN10_V5_3, interruptPage: 0xdeadbeefn, messageSint: 2, messageVtl: 0 });
  assert.equal(v53.length, 40);
  assert.deepEqual([...v53.subarray(16, 24)], [2, 0, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual(decodeOk(v53), { ...base, version: VERSION_WIN10_V5_3, interruptPage: 2n, messageSint: 2, messageVtl: 0 });
  const v41 = encodeMessage({ ...base, version: VERSION_WIN10_V4_1, interruptPage: 0x123456789an, messageSint: 2, messageVtl: 1 });
  assert.deepEqual([...v41.subarray(16, 24)], [0x9a, 0x78, 0x56, 0x34, 0x12, 0, 0, 0]);
  assert.deepEqual(decodeOk(v41), { ...base, version: VERSION_WIN10_V4_1, interruptPage: 0x123456789an, messageSint: 0x9a, messageVtl: 0x78 });
  assert.deepEqual([...v41.subarray(24, 40)], [0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0]);
});

test('VERSION_RESPONSE layout and non-zero version_supported', () => {
  const bytes = encodeMessage({ kind: 'version-response', versionSupported: true, connectionState: 0, messageConnectionId: 1 });
  assert.deepEqual(bytes, hex('0f000000 00000000 01 00 0000 01000000'));
  const weird = hex('0f000000 00000000 07 02 ffff 04000000');
  assert.deepEqual(decodeOk(weird), { kind: 'version-response', versionSupported: true, connectionState: 2, messageConnectionId: 4 });
});

test('reserved bits are ignored on decode', () => {
  const [m] = fc.sample(ARBITRARIES['offer-channel'], { numRuns: 1, seed: 7 });
  const bytes = encodeMessage({ ...m!, monitorAllocated: false, dedicatedInterrupt: false });
  bytes.fill(0xee, 40, 56); // reserved GUID-sized area
  bytes[189] = 0xfe; // monitor_allocated bit clear, reserved bits set
  bytes[190] = 0xfe;
  bytes[191] = 0xff;
  const decoded = decodeOk(bytes);
  assert.equal(decoded.kind, 'offer-channel');
  if (decoded.kind === 'offer-channel') {
    assert.equal(decoded.monitorAllocated, false);
    assert.equal(decoded.dedicatedInterrupt, false);
  }
});

test('encode rejects values that do not fit their fields', () => {
  const offer = fc.sample(ARBITRARIES['offer-channel'], { numRuns: 1, seed: 3 })[0]!;
  const bad: unknown[] = [
    { kind: 'rescind-offer', childRelid: -1 },
    { kind: 'rescind-offer', childRelid: 0x100000000 },
    { kind: 'rescind-offer', childRelid: 1.5 },
    { kind: 'rescind-offer', childRelid: NaN },
    { kind: 'rescind-offer', childRelid: '3' },
    { kind: 'rescind-offer' },
    { ...offer, channelFlags: 0x10000 },
    { ...offer, monitorId: 256 },
    { ...offer, userDefined: new Uint8Array(119) },
    { ...offer, userDefined: new Array(120).fill(0) },
    { ...offer, interfaceId: 'not-a-guid' },
    { ...offer, monitorAllocated: 1 },
    { kind: 'initiate-contact', version: VERSION_WIN10_V5_3, targetVcpu: 0, interruptPage: -1n, messageSint: 2, messageVtl: 0, monitorPage1: 0n, monitorPage2: 0n },
    { kind: 'initiate-contact', version: VERSION_WIN10_V5_3, targetVcpu: 0, interruptPage: 0n, messageSint: 2, messageVtl: 0, monitorPage1: 1n << 64n, monitorPage2: 0n },
    { kind: 'initiate-contact', version: VERSION_WIN10_V5_3, targetVcpu: 0, interruptPage: 0n, messageSint: 256, messageVtl: 0, monitorPage1: 0n, monitorPage2: 0n },
    { kind: 'initiate-contact', version: VERSION_WIN10_V5_3, targetVcpu: 0, interruptPage: 0, messageSint: 2, messageVtl: 0, monitorPage1: 0n, monitorPage2: 0n },
    { kind: 'gpadl-header', childRelid: 1, gpadl: 1, rangeBufferLength: 0x10000, rangeCount: 1, rangeData: new Uint8Array(0) },
    { kind: 'gpadl-header', childRelid: 1, gpadl: 1, rangeBufferLength: 8, rangeCount: 1, rangeData: new Uint8Array(221) },
    { kind: 'gpadl-body', messageNumber: 0, gpadl: 1, pfnData: new Uint8Array(225) },
    { kind: 'tl-connect-request', guestEndpointId: 'x', hostServiceId: '00000000-0000-0000-0000-000000000000' },
    { kind: 'bogus' },
    { kind: 'toString' },
    {},
  ];
  for (const m of bad) assert.throws(() => encodeMessage(m as ChannelMessage), RangeError, JSON.stringify(m, (_, v) => (typeof v === 'bigint' ? `${v}n` : v)));
  // The largest legal GPADL messages are exactly 240 bytes.
  assert.equal(encodeMessage({ kind: 'gpadl-header', childRelid: 1, gpadl: 1, rangeBufferLength: 8, rangeCount: 1, rangeData: new Uint8Array(220) }).length, 240);
  assert.equal(encodeMessage({ kind: 'gpadl-body', messageNumber: 0, gpadl: 1, pfnData: new Uint8Array(224) }).length, 240);
});

// ---------------------------------------------------------------------------------------
// Decoding hostile input

test('every prefix of every message decodes to ok:false, or ok:true once the struct is complete', () => {
  fc.assert(
    fc.property(anyMessage, (m) => {
      const bytes = encodeMessage(m);
      const minimum = LINUX_SIZES[m.kind];
      for (let n = 0; n <= bytes.length; n++) {
        const r = decodeMessage(bytes.subarray(0, n));
        assert.equal(r.ok, n >= minimum, `${m.kind} prefix ${n}`);
        if (!r.ok) assert.match(r.error, n < 8 ? /header/ : new RegExp(messageTypeName(TYPES[m.kind])));
      }
    }),
    { numRuns: 500 },
  );
});

test('bytes after a fixed-size struct are ignored', () => {
  const fixed = anyMessage.filter((m) => m.kind !== 'gpadl-header' && m.kind !== 'gpadl-body' && m.kind !== 'tl-connect-request');
  fc.assert(
    fc.property(fixed, fc.uint8Array({ minLength: 1, maxLength: 232 }), (m, extra) => {
      const bytes = encodeMessage(m);
      const longer = new Uint8Array(Math.min(MAX_MESSAGE_SIZE, bytes.length + extra.length));
      longer.set(bytes);
      longer.set(extra.subarray(0, longer.length - bytes.length), bytes.length);
      assert.deepEqual(decodeOk(longer), normalized(m));
    }),
    { numRuns: 200 },
  );
});

test('a TL_CONNECT_REQUEST between 40 and 55 bytes has no silo id; 56 or more has one', () => {
  const m = { kind: 'tl-connect-request', guestEndpointId: '00000000-0000-0000-0000-000000000001', hostServiceId: '00000000-0000-0000-0000-000000000002' } as const;
  const bytes = encodeMessage({ ...m, siloId: 'ffffffff-0000-0000-0000-000000000003' });
  for (let n = 40; n < 56; n++) assert.deepEqual(decodeOk(bytes.subarray(0, n)), m);
  assert.deepEqual(decodeOk(bytes), { ...m, siloId: 'ffffffff-0000-0000-0000-000000000003' });
});

test('unknown, reserved, short and oversized messages are refused with a reason', () => {
  const withType = (type: number, size: number) => {
    const b = new Uint8Array(size);
    new DataView(b.buffer).setUint32(0, type, true);
    return b;
  };
  const cases: [Uint8Array, RegExp][] = [
    [new Uint8Array(0), /shorter than the 8-byte header/],
    [new Uint8Array(7), /shorter than the 8-byte header/],
    [withType(0, 8), /unknown channel message type 0/],
    [withType(25, 64), /unknown channel message type 25/],
    [withType(0xffffffff, 64), /unknown channel message type 4294967295/],
    [withType(18, 64), /OpenReservedChannel \(type 18\) is not supported/],
    [withType(19, 64), /CloseReservedChannel \(type 19\) is not supported/],
    [withType(20, 64), /CloseReservedChannelResponse \(type 20\) is not supported/],
    [withType(1, 195), /OfferChannel \(type 1\) message of 195 bytes is shorter than its 196-byte struct/],
    [withType(5, 147), /OpenChannel \(type 5\).*148-byte/],
    [withType(14, 39), /InitiateContact \(type 14\).*40-byte/],
    [withType(8, 19), /GpadlHeader \(type 8\).*20-byte/],
    [withType(9, 15), /GpadlBody \(type 9\).*16-byte/],
    [withType(1, 241), /OfferChannel \(type 1\) message of 241 bytes exceeds the 240-byte/],
    [withType(9, 4096), /GpadlBody \(type 9\) message of 4096 bytes exceeds/],
  ];
  for (const [bytes, pattern] of cases) {
    const r = decodeMessage(bytes);
    assert.equal(r.ok, false);
    if (!r.ok) assert.match(r.error, pattern);
  }
  assert.equal(decodeMessage(null as unknown as Uint8Array).ok, false);
  assert.equal(decodeMessage('abc' as unknown as Uint8Array).ok, false);
  assert.equal(decodeMessage([1, 0, 0, 0, 0, 0, 0, 0] as unknown as Uint8Array).ok, false);
});

test('random garbage never throws, and whatever decodes re-encodes to the same message', () => {
  const typed = fc
    .tuple(fc.integer({ min: 0, max: 30 }), fc.uint8Array({ maxLength: 260 }))
    .map(([type, rest]) => {
      const b = new Uint8Array(4 + rest.length);
      new DataView(b.buffer).setUint32(0, type, true);
      b.set(rest, 4);
      return b;
    });
  fc.assert(
    fc.property(fc.oneof(fc.uint8Array({ maxLength: 300 }), typed), (bytes) => {
      const r = decodeMessage(bytes);
      if (!r.ok) {
        assert.equal(typeof r.error, 'string');
        return;
      }
      assert.ok(bytes.length >= LINUX_SIZES[r.message.kind] && bytes.length <= MAX_MESSAGE_SIZE);
      const again = decodeOk(encodeMessage(r.message));
      assert.deepEqual(normalized(again), normalized(r.message));
    }),
    { numRuns: 10000 },
  );
});

test('decoded messages do not alias the input buffer (also for a Node Buffer)', () => {
  fc.assert(
    fc.property(anyMessage, fc.boolean(), (m, asNodeBuffer) => {
      const encoded = encodeMessage(m);
      // Place the message inside a larger reused "slot" buffer, as the SynIC path does.
      const slot = asNodeBuffer ? Buffer.alloc(256) : new Uint8Array(256);
      slot.set(encoded, 16);
      const r = decodeMessage(slot.subarray(16, 16 + encoded.length));
      assert.ok(r.ok);
      const snapshot = structuredClone(r.message);
      slot.fill(0xa5);
      assert.deepEqual(r.message, snapshot);
      for (const value of Object.values(r.message)) {
        if (value instanceof Uint8Array) {
          assert.notEqual(value.buffer, slot.buffer);
          assert.equal(Object.getPrototypeOf(value), Uint8Array.prototype);
        }
      }
    }),
    { numRuns: 200 },
  );
});
