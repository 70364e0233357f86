// The NVSP codec: exact bytes for what the host sends (hand-computed from spec 2.1/2.2),
// Linux-shaped guest messages decode to the right fields, every message round-trips in
// its direction, Linux's minimum completion lengths and the direction of each type are
// enforced, and no input (random or a mutated valid message) makes the decoder throw or
// report an indirection table outside the payload.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  decodeNvspMessage,
  encodeNvspMessage,
  encodeRndisPacketCompleteMessage,
  encodeRndisPacketMessage,
  LINUX_NVSP_VERSION_ORDER,
  NETVSC_CLASS_ID,
  NdisConfigCapability,
  nvspEncodedLength,
  nvspHostMessageSize,
  NvspDecoder,
  NvspError,
  NVSP_INVALID_PROTOCOL_VERSION,
  NVSP_LEGACY_MESSAGE_SIZE,
  NVSP_MAX_MDL_CHAIN_LENGTH,
  NVSP_MESSAGE_SIZE,
  NvspMessageType,
  NvspStatus,
  NvspVersion,
  planReceiveSection,
  SEND_INDIRECTION_TABLE_OFFSET,
  sendSectionCount,
  type NvspDirection,
  type NvspMessage,
} from '../src/devices/netvsp/nvsp-protocol.js';

function hex(b: Uint8Array): string {
  return Buffer.from(b).toString('hex');
}
/** Little-endian u32 words as hex, for writing expected bytes by field. */
function words(...ws: number[]): string {
  const b = Buffer.alloc(ws.length * 4);
  ws.forEach((w, i) => b.writeUInt32LE(w >>> 0, i * 4));
  return b.toString('hex');
}
function zeros(n: number): string {
  return '00'.repeat(n);
}
function encode(m: NvspMessage, size = NVSP_MESSAGE_SIZE): Uint8Array {
  const b = new Uint8Array(nvspEncodedLength(m, size));
  assert.equal(encodeNvspMessage(m, b, 0, size), b.length);
  return b;
}
function decodeOk(b: Uint8Array, direction: NvspDirection): NvspMessage {
  const m = decodeNvspMessage(b, direction);
  assert.ok(!(m instanceof NvspError), m instanceof NvspError ? m.message : '');
  return m;
}

describe('NVSP constants', () => {
  test('class id, SUCCESS = 1 and Linux version order', () => {
    assert.equal(NETVSC_CLASS_ID, 'f8615163-df3e-46c5-913f-f2d2f965ed0e');
    assert.equal(NvspStatus.Success, 1);
    assert.equal(NvspStatus.Fail, 2);
    assert.deepEqual(LINUX_NVSP_VERSION_ORDER, [0x60001, 0x60000, 0x50000, 0x40000, 0x30002, 0x2]);
    assert.equal(NvspMessageType.SendNdisConfig, 125);
    assert.equal(NvspMessageType.Subchannel, 133);
    assert.equal(NvspMessageType.SendIndirectionTable, 134);
    assert.equal(nvspHostMessageSize(NvspVersion.V61), 40);
    assert.equal(nvspHostMessageSize(NvspVersion.V6), 28);
    assert.equal(nvspHostMessageSize(NvspVersion.V1), 28);
  });
});

describe('NVSP exact bytes (host -> guest)', () => {
  test('INIT_COMPLETE accepting v5 in the 28-byte form', () => {
    const b = encode({ kind: 'init-complete', negotiatedVersion: NVSP_INVALID_PROTOCOL_VERSION, maxMdlChainLength: NVSP_MAX_MDL_CHAIN_LENGTH, status: NvspStatus.Success }, NVSP_LEGACY_MESSAGE_SIZE);
    assert.equal(hex(b), '02000000' + 'ffffffff' + '22000000' + '01000000' + zeros(12));
  });

  test('INIT_COMPLETE in the 40-byte v6.1 form', () => {
    const b = encode({ kind: 'init-complete', negotiatedVersion: NVSP_INVALID_PROTOCOL_VERSION, maxMdlChainLength: 34, status: 2 });
    assert.equal(b.length, 40);
    assert.equal(hex(b), '02000000ffffffff2200000002000000' + zeros(24));
  });

  test('SEND_RECV_BUF_COMPLETE for a 16 MiB buffer in 1728-byte sections', () => {
    const layout = planReceiveSection(16 * 1024 * 1024, 1728);
    // 16777216 / 1728 = 9709 sections (0x25ed), 9709 * 1728 = 16777152 (0xffffc0)
    assert.deepEqual(layout, { sectionOffset: 0, subAllocSize: 1728, numSubAllocs: 9709, endOffset: 16777152 });
    const b = encode({ kind: 'receive-buffer-complete', status: 1, numSections: 1, ...layout }, 28);
    assert.equal(hex(b), '66000000' + '01000000' + '01000000' + '00000000' + 'c0060000' + 'ed250000' + 'c0ffff00');
  });

  test('SEND_SEND_BUF_COMPLETE with 6144-byte sections', () => {
    const b = encode({ kind: 'send-buffer-complete', status: 1, sectionSize: 6144 }, 28);
    assert.equal(hex(b), '69000000' + '01000000' + '00180000' + zeros(16));
  });

  test('SEND_RNDIS_PKT for a control indication, and the send completion', () => {
    const b = new Uint8Array(40);
    assert.equal(encodeRndisPacketMessage(b, 0, 1, 0xffffffff, 0), 40);
    assert.equal(hex(b), '6b000000' + '01000000' + 'ffffffff' + '00000000' + zeros(24));
    assert.deepEqual(encode({ kind: 'rndis-packet', channelType: 1, sectionIndex: 0xffffffff, sectionSize: 0 }), b);
    const c = new Uint8Array(28);
    assert.equal(encodeRndisPacketCompleteMessage(c, 0, 1, 28), 28);
    assert.equal(hex(c), '6c000000' + '01000000' + zeros(20));
  });

  test('the guest transfer-page completion is exactly 8 bytes', () => {
    const c = new Uint8Array(8);
    assert.equal(encodeRndisPacketCompleteMessage(c, 0, NvspStatus.Success, 8), 8);
    assert.equal(hex(c), '6c00000001000000');
  });

  test('SUBCHANNEL completion granting 3', () => {
    const b = encode({ kind: 'subchannel-complete', status: 1, count: 3 }, 28);
    assert.equal(hex(b), '85000000' + '01000000' + '03000000' + zeros(16));
  });

  test('SEND_INDIRECTION_TABLE places 16 entries at byte 40', () => {
    const table = new Uint32Array(16).map((_, i) => i % 2);
    const b = encode({ kind: 'indirection-table', count: 16, offset: SEND_INDIRECTION_TABLE_OFFSET, table }, 28);
    assert.equal(b.length, 40 + 64);
    assert.equal(hex(b), '86000000' + '10000000' + '28000000' + zeros(28) + words(...table));
  });

  test('VF_ASSOCIATION', () => {
    const b = encode({ kind: 'vf-association', allocated: 1, serial: 0x12345678 }, 28);
    assert.equal(hex(b), '80000000' + '01000000' + '78563412' + zeros(16));
  });

  test('an encoder zeroes stale bytes and writes at an offset', () => {
    const b = new Uint8Array(50).fill(0xee);
    encodeNvspMessage({ kind: 'rndis-packet-complete', status: 1 }, b, 5, 40);
    assert.equal(hex(b.subarray(0, 5)), 'eeeeeeeeee');
    assert.equal(hex(b.subarray(5, 45)), '6c00000001000000' + zeros(32));
    assert.equal(hex(b.subarray(45)), 'eeeeeeeeee');
  });

  test('encoders reject values that do not fit and targets that are too small', () => {
    assert.throws(() => encode({ kind: 'init', minVersion: -1, maxVersion: 2 }), RangeError);
    assert.throws(() => encode({ kind: 'revoke-send-buffer', id: 0x10000 }), RangeError);
    assert.throws(() => encodeNvspMessage({ kind: 'init', minVersion: 2, maxVersion: 2 }, new Uint8Array(39)), RangeError);
    assert.throws(() => encodeNvspMessage({ kind: 'init-complete', negotiatedVersion: 0, maxMdlChainLength: 0, status: 1 }, new Uint8Array(40), 0, 12), RangeError);
    assert.throws(() => planReceiveSection(4096, 67), RangeError);
    assert.throws(() => planReceiveSection(100, 1728), RangeError);
  });
});

describe('NVSP decoding of what Linux sends (guest -> host)', () => {
  function linux(...ws: number[]): Uint8Array {
    const b = new Uint8Array(40);
    Buffer.from(words(...ws), 'hex').copy(b);
    return b;
  }

  test('INIT with min = max = 6.1', () => {
    assert.deepEqual(decodeOk(linux(1, 0x60001, 0x60001), 'to-host'), { kind: 'init', minVersion: 0x60001, maxVersion: 0x60001 });
  });

  test('SEND_NDIS_CONFIG: MTU 1514 with ieee8021q, sriov, teaming', () => {
    const caps = NdisConfigCapability.Ieee8021q | NdisConfigCapability.Sriov | NdisConfigCapability.Teaming;
    assert.deepEqual(decodeOk(linux(125, 1514, 0, caps, 0), 'to-host'), { kind: 'ndis-config', mtu: 1514, reserved: 0, capabilities: BigInt(caps) });
    const high = decodeOk(linux(125, 1514, 0, 0, 1), 'to-host');
    assert.equal(high.kind === 'ndis-config' && high.capabilities, 1n << 32n);
  });

  test('SEND_NDIS_VER 6.30, RECV_BUF with id 0xCAFE, SEND_BUF with id 0', () => {
    assert.deepEqual(decodeOk(linux(100, 6, 30), 'to-host'), { kind: 'ndis-version', major: 6, minor: 30 });
    assert.deepEqual(decodeOk(linux(101, 0x1234, 0xcafe), 'to-host'), { kind: 'receive-buffer', gpadlHandle: 0x1234, id: 0xcafe });
    assert.deepEqual(decodeOk(linux(104, 0x1235, 0), 'to-host'), { kind: 'send-buffer', gpadlHandle: 0x1235, id: 0 });
    assert.deepEqual(decodeOk(linux(103, 0xcafe), 'to-host'), { kind: 'revoke-receive-buffer', id: 0xcafe });
    assert.deepEqual(decodeOk(linux(106, 0), 'to-host'), { kind: 'revoke-send-buffer', id: 0 });
  });

  test('SEND_RNDIS_PKT in a send section, SUBCHANNEL allocate, SWITCH_DATA_PATH', () => {
    assert.deepEqual(decodeOk(linux(107, 0, 17, 1514), 'to-host'), { kind: 'rndis-packet', channelType: 0, sectionIndex: 17, sectionSize: 1514 });
    assert.deepEqual(decodeOk(linux(133, 1, 3), 'to-host'), { kind: 'subchannel-request', operation: 1, count: 3 });
    assert.deepEqual(decodeOk(linux(129, 1), 'to-host'), { kind: 'switch-data-path', activeDataPath: 1 });
  });

  test('the 8-byte transfer-page completion decodes', () => {
    assert.deepEqual(decodeOk(Buffer.from('6c00000001000000', 'hex'), 'to-host'), { kind: 'rndis-packet-complete', status: 1 });
  });

  test('a reused decoder returns the same object per kind (no allocation per packet)', () => {
    const d = new NvspDecoder();
    const a = d.decode(linux(107, 0, 1, 100), 'to-host');
    const b = d.decode(linux(107, 1, 2, 200), 'to-host');
    assert.equal(a, b);
    assert.deepEqual(b, { kind: 'rndis-packet', channelType: 1, sectionIndex: 2, sectionSize: 200 });
  });
});

describe('NVSP rejections', () => {
  function reason(b: Uint8Array, direction: NvspDirection): string {
    const m = decodeNvspMessage(b, direction);
    assert.ok(m instanceof NvspError, `expected an error, got ${JSON.stringify(m, (_k, v) => (typeof v === 'bigint' ? String(v) : v))}`);
    return m.reason;
  }

  test('too short for msg_type or for the fields', () => {
    assert.equal(reason(new Uint8Array(3), 'to-host'), 'too-short');
    assert.equal(reason(Buffer.from(words(1, 2), 'hex'), 'to-host'), 'too-short');
    assert.equal(reason(Buffer.from(words(107, 0, 0), 'hex'), 'to-host'), 'too-short');
  });

  test("Linux's minimum completion lengths apply to-guest", () => {
    const ic = encode({ kind: 'init-complete', negotiatedVersion: 0, maxMdlChainLength: 34, status: 1 }, 28);
    assert.equal(reason(ic.subarray(0, 27), 'to-guest'), 'too-short');
    assert.equal(decodeOk(ic, 'to-guest').kind, 'init-complete');
    const sb = encode({ kind: 'send-buffer-complete', status: 1, sectionSize: 6144 }, 28);
    assert.equal(decodeOk(sb.subarray(0, 12), 'to-guest').kind, 'send-buffer-complete');
    assert.equal(reason(sb.subarray(0, 11), 'to-guest'), 'too-short');
  });

  test('unknown and obsolete types, and types from the wrong side', () => {
    assert.equal(reason(Buffer.from(words(0, 0, 0, 0), 'hex'), 'to-host'), 'unknown-type');
    assert.equal(reason(Buffer.from(words(109, 0, 0, 0), 'hex'), 'to-host'), 'unknown-type');
    assert.equal(reason(Buffer.from(words(0xffffffff, 0, 0, 0), 'hex'), 'to-guest'), 'unknown-type');
    assert.equal(reason(Buffer.from(words(1, 2, 2, 0), 'hex'), 'to-guest'), 'wrong-direction');
    assert.equal(reason(Buffer.from(words(2, 2, 2, 0, 0, 0, 0), 'hex'), 'to-host'), 'wrong-direction');
    assert.equal(reason(Buffer.from(words(134, 16, 40, 0), 'hex'), 'to-host'), 'wrong-direction');
  });

  test('indirection table: count must be 16 and the table inside the message', () => {
    const ok = encode({ kind: 'indirection-table', count: 16, offset: 40, table: new Uint32Array(16) });
    assert.equal(decodeOk(ok, 'to-guest').kind, 'indirection-table');
    assert.equal(reason(ok.subarray(0, 103), 'to-guest'), 'bad-field');
    const bad = new Uint8Array(ok);
    bad[4] = 15;
    assert.equal(reason(bad, 'to-guest'), 'bad-field');
    const far = new Uint8Array(ok);
    far.set(Buffer.from(words(41), 'hex'), 8);
    assert.equal(reason(far, 'to-guest'), 'bad-field');
    const inHeader = new Uint8Array(ok);
    inHeader.set(Buffer.from(words(8), 'hex'), 8);
    assert.equal(reason(inHeader, 'to-guest'), 'bad-field');
  });
});

// ---------------------------------------------------------------------------------------
// Properties

const u32 = fc.nat(0xffffffff);
/** fc.record builds null-prototype objects; the decoder's are plain, and deepEqual compares prototypes. */
function plain<T extends object>(a: fc.Arbitrary<T>): fc.Arbitrary<T> {
  return a.map((o) => ({ ...o }));
}
const u16 = fc.nat(0xffff);

const toHost: fc.Arbitrary<NvspMessage> = plain(fc.oneof(
  fc.record({ kind: fc.constant('init' as const), minVersion: u32, maxVersion: u32 }),
  fc.record({ kind: fc.constant('ndis-version' as const), major: u32, minor: u32 }),
  fc.record({ kind: fc.constant('ndis-config' as const), mtu: u32, reserved: u32, capabilities: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }) }),
  fc.record({ kind: fc.constant('receive-buffer' as const), gpadlHandle: u32, id: u16 }),
  fc.record({ kind: fc.constant('revoke-receive-buffer' as const), id: u16 }),
  fc.record({ kind: fc.constant('send-buffer' as const), gpadlHandle: u32, id: u16 }),
  fc.record({ kind: fc.constant('revoke-send-buffer' as const), id: u16 }),
  fc.record({ kind: fc.constant('rndis-packet' as const), channelType: u32, sectionIndex: u32, sectionSize: u32 }),
  fc.record({ kind: fc.constant('rndis-packet-complete' as const), status: u32 }),
  fc.record({ kind: fc.constant('subchannel-request' as const), operation: u32, count: u32 }),
  fc.record({ kind: fc.constant('switch-data-path' as const), activeDataPath: u32 }),
));

const toGuest: fc.Arbitrary<NvspMessage> = plain(fc.oneof(
  fc.record({ kind: fc.constant('init-complete' as const), negotiatedVersion: u32, maxMdlChainLength: u32, status: u32 }),
  fc.record({
    kind: fc.constant('receive-buffer-complete' as const), status: u32, numSections: u32, sectionOffset: u32, subAllocSize: u32, numSubAllocs: u32, endOffset: u32,
  }),
  fc.record({ kind: fc.constant('send-buffer-complete' as const), status: u32, sectionSize: u32 }),
  fc.record({ kind: fc.constant('rndis-packet' as const), channelType: u32, sectionIndex: u32, sectionSize: u32 }),
  fc.record({ kind: fc.constant('rndis-packet-complete' as const), status: u32 }),
  fc.record({ kind: fc.constant('subchannel-complete' as const), status: u32, count: u32 }),
  fc.record({
    kind: fc.constant('indirection-table' as const), count: fc.constant(16), offset: fc.integer({ min: 12, max: 200 }),
    table: fc.array(u32, { minLength: 16, maxLength: 16 }).map((a) => Uint32Array.from(a)),
  }),
  fc.record({ kind: fc.constant('vf-association' as const), allocated: u32, serial: u32 }),
));

const decoderOutcome = (payload: Uint8Array, direction: NvspDirection): void => {
  let m: NvspMessage | NvspError;
  try {
    m = new NvspDecoder().decode(payload, direction);
  } catch (e) {
    assert.fail(`decoder threw: ${String(e)}`);
  }
  if (m instanceof NvspError) {
    assert.ok(['too-short', 'unknown-type', 'wrong-direction', 'bad-field'].includes(m.reason));
    assert.equal(m.length, payload.length);
    return;
  }
  if (m.kind === 'indirection-table') {
    assert.equal(m.count, 16);
    assert.ok(m.offset >= 12 && m.offset + 4 * m.count <= payload.length, 'table inside the payload');
  }
};

describe('NVSP properties', () => {
  test('every guest->host message round-trips at 40 bytes', () => {
    fc.assert(fc.property(toHost, (m) => {
      const b = encode(m);
      assert.equal(b.length, 40);
      assert.deepEqual(decodeOk(b, 'to-host'), m);
    }));
  });

  test('every host->guest message round-trips at 28 and 40 bytes', () => {
    fc.assert(fc.property(toGuest, fc.constantFrom(28, 40), (m, size) => {
      assert.deepEqual(decodeOk(encode(m, size), 'to-guest'), m);
    }));
  });

  test('random payloads: a message or a typed error, never a throw', () => {
    fc.assert(fc.property(
      fc.uint8Array({ maxLength: 120 }),
      fc.constantFrom<NvspDirection>('to-host', 'to-guest'),
      (b, dir) => decoderOutcome(b, dir),
    ), { numRuns: 2000 });
  });

  test('random payloads with a known type: a message or a typed error, never a throw', () => {
    const types = [1, 2, 100, 101, 102, 103, 104, 105, 106, 107, 108, 125, 128, 129, 133, 134, 135];
    fc.assert(fc.property(
      fc.constantFrom(...types), fc.uint8Array({ maxLength: 120 }), fc.constantFrom<NvspDirection>('to-host', 'to-guest'),
      (type, body, dir) => {
        const b = new Uint8Array(4 + body.length);
        b.set(Buffer.from(words(type), 'hex'));
        b.set(body, 4);
        decoderOutcome(b, dir);
      },
    ), { numRuns: 2000 });
  });

  test('mutated and truncated valid messages: never a throw', () => {
    fc.assert(fc.property(
      fc.oneof(toHost.map((m) => ({ m, dir: 'to-host' as const })), toGuest.map((m) => ({ m, dir: 'to-guest' as const }))),
      fc.array(fc.tuple(fc.nat(200), fc.nat(255)), { maxLength: 6 }),
      fc.nat(200),
      ({ m, dir }, flips, cut) => {
        const b = encode(m);
        for (const [at, v] of flips) b[at % b.length] = v;
        decoderOutcome(b.subarray(0, Math.min(cut, b.length)), dir);
        decoderOutcome(b, dir);
      },
    ), { numRuns: 2000 });
  });

  test('receive section plans satisfy what Linux checks', () => {
    fc.assert(fc.property(fc.integer({ min: 68, max: 65536 }), fc.integer({ min: 1, max: 4096 }), (size, pages) => {
      const buffer = pages * 4096;
      if (buffer < size) {
        assert.throws(() => planReceiveSection(buffer, size), RangeError);
        return;
      }
      const p = planReceiveSection(buffer, size);
      assert.equal(p.sectionOffset, 0);
      assert.ok(p.numSubAllocs >= 1);
      assert.ok(p.subAllocSize * p.numSubAllocs <= buffer);
      assert.ok(buffer - p.subAllocSize * p.numSubAllocs < p.subAllocSize);
      assert.equal(p.endOffset, p.subAllocSize * p.numSubAllocs);
    }));
    assert.equal(sendSectionCount(170 * 6144, 6144), 170);
    assert.equal(sendSectionCount(1024 * 1024, 0), 0);
  });
});
