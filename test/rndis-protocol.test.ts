// The RNDIS codec, per-packet info, OIDs and NDIS offload objects: exact bytes for what
// the host sends (hand-computed from spec 2.5-2.8), Linux-shaped guest messages decode
// with body offsets counted from byte 8, batches walk by msg_len, encoders round-trip,
// and no input (random or mutated) makes a decoder throw or report a range outside the
// message / PPI area / information buffer it was given.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { copyBytes, zeroBytes } from '../src/devices/netvsp/le-bytes.js';
import {
  decodeRndisMessage,
  encodeRndisHalt,
  encodeRndisIndicateStatus,
  encodeRndisInitialize,
  encodeRndisInitializeComplete,
  encodeRndisKeepalive,
  encodeRndisKeepaliveComplete,
  encodeRndisPacketHeader,
  encodeRndisQuery,
  encodeRndisQueryComplete,
  encodeRndisReset,
  encodeRndisResetComplete,
  encodeRndisSet,
  encodeRndisSetComplete,
  NdisStatus,
  RNDIS_HOST_MAX_PACKETS_PER_MESSAGE,
  RNDIS_HOST_MAX_TRANSFER_SIZE,
  RNDIS_HOST_PACKET_ALIGNMENT_FACTOR,
  RndisDecoder,
  RndisError,
  RndisMessageType,
  type RndisDirection,
  type RndisMessage,
} from '../src/devices/netvsp/rndis-protocol.js';
import {
  decodePacketInfo,
  lsoIpVersion,
  lsoMss,
  lsoTcpHeaderOffset,
  lsoType,
  lsoV2Info,
  PacketInfo,
  PacketInfoIdFlag,
  PpiError,
  PpiIterator,
  PpiType,
  RxChecksum,
  tciToVlanInfo,
  TxChecksum,
  txChecksumHeaderOffset,
  txChecksumInfo,
  vlanCfi,
  vlanId,
  vlanInfo,
  vlanInfoToTci,
  vlanPriority,
  writeOpaquePpi,
  writePacketIdPpi,
  writeU32Ppi,
} from '../src/devices/netvsp/per-packet-info.js';
import { LINUX_BRINGUP_OIDS, linuxMaxAnswerLength, Oid, oidName } from '../src/devices/netvsp/rndis-oids.js';
import {
  checksumLsoAndRscOffload,
  decodeNdisOffload,
  decodeNdisOffloadParameters,
  decodeRssCapabilities,
  decodeRssParameters,
  DEFAULT_RSS_KEY,
  encodeNdisOffload,
  encodeNdisOffloadParameters,
  encodeRssCapabilities,
  encodeRssParameters,
  LINUX_RSS_HASH_INFO,
  NdisObjectError,
  ndisOffloadSizeFor,
  noOffload,
  RssCapability,
  RssParameterFlag,
  rssTableEntry,
} from '../src/devices/netvsp/ndis-offload.js';

function hex(b: Uint8Array): string {
  return Buffer.from(b).toString('hex');
}
function words(...ws: number[]): string {
  const b = Buffer.alloc(ws.length * 4);
  ws.forEach((w, i) => b.writeUInt32LE(w >>> 0, i * 4));
  return b.toString('hex');
}
function bytesOf(h: string): Uint8Array {
  return new Uint8Array(Buffer.from(h, 'hex'));
}
function decodeOk(b: Uint8Array, direction: RndisDirection, offset = 0, available = b.length - offset): RndisMessage {
  const m = decodeRndisMessage(b, offset, available, direction);
  assert.ok(!(m instanceof RndisError), m instanceof RndisError ? m.message : '');
  return m;
}
function reason(b: Uint8Array, direction: RndisDirection): string {
  const m = decodeRndisMessage(b, 0, b.length, direction);
  assert.ok(m instanceof RndisError, `expected an error, got ${JSON.stringify(m)}`);
  return m.reason;
}

// ---------------------------------------------------------------------------------------

describe('RNDIS exact bytes (host -> guest)', () => {
  test('INITIALIZE_CMPLT as Hyper-V answers Linux', () => {
    const b = new Uint8Array(52);
    const n = encodeRndisInitializeComplete(b, 0, {
      requestId: 2, status: NdisStatus.Success, maxPacketsPerMessage: RNDIS_HOST_MAX_PACKETS_PER_MESSAGE,
      maxTransferSize: RNDIS_HOST_MAX_TRANSFER_SIZE, packetAlignmentFactor: RNDIS_HOST_PACKET_ALIGNMENT_FACTOR,
    });
    assert.equal(n, 52);
    // type, len, req_id, status, major 1, minor 0, flags 1, medium 0, max pkts 8, max xfer, align 3, af off, af size
    assert.equal(hex(b), words(0x80000002, 52, 2, 0, 1, 0, 1, 0, 8, 0xefffffff, 3, 0, 0));
  });

  test('QUERY_CMPLT carrying a MAC: info at byte 24, info_buf_offset 16', () => {
    const b = new Uint8Array(30);
    assert.equal(encodeRndisQueryComplete(b, 0, 7, 0, bytesOf('00155d010203')), 30);
    assert.equal(hex(b), words(0x80000004, 30, 7, 0, 6, 16) + '00155d010203');
  });

  test('QUERY_CMPLT failing with INVALID_OID and no data', () => {
    const b = new Uint8Array(24);
    encodeRndisQueryComplete(b, 0, 9, NdisStatus.InvalidOid);
    assert.equal(hex(b), words(0x80000004, 24, 9, 0xc0010017, 0, 16));
  });

  test('SET_CMPLT, RESET_CMPLT, KEEPALIVE, KEEPALIVE_CMPLT', () => {
    const b = new Uint8Array(16);
    encodeRndisSetComplete(b, 0, 5, 0);
    assert.equal(hex(b), words(0x80000005, 16, 5, 0));
    encodeRndisResetComplete(b, 0, 0, 1);
    assert.equal(hex(b), words(0x80000006, 16, 0, 1));
    encodeRndisKeepaliveComplete(b, 0, 3, 0);
    assert.equal(hex(b), words(0x80000008, 16, 3, 0));
    const k = new Uint8Array(12);
    encodeRndisKeepalive(k, 0, 4);
    assert.equal(hex(k), words(8, 12, 4));
  });

  test('INDICATE_STATUS: media connect (no buffer) and link speed (u32 at 8 + 12)', () => {
    const a = new Uint8Array(20);
    assert.equal(encodeRndisIndicateStatus(a, 0, NdisStatus.MediaConnect), 20);
    assert.equal(hex(a), words(7, 20, 0x4001000b, 0, 0));
    const b = new Uint8Array(24);
    assert.equal(encodeRndisIndicateStatus(b, 0, NdisStatus.LinkSpeedChange, bytesOf(words(100_000_000))), 24);
    assert.equal(hex(b), words(7, 24, 0x40010013, 4, 12, 100_000_000));
  });

  test('PACKET with an RX checksum PPI then a 60-byte frame', () => {
    const b = new Uint8Array(44 + 16 + 60);
    const frame = new Uint8Array(60).map((_, i) => i);
    const n = encodeRndisPacketHeader(b, 0, 16, 60);
    assert.equal(n, 120);
    assert.equal(writeU32Ppi(b, 44, PpiType.TcpIpChecksum, RxChecksum.TcpSucceeded | RxChecksum.IpSucceeded), 16);
    b.set(frame, 60);
    // data_offset = 36 + 16 = 52 (byte 60); ppi offset 36 (byte 44), ppi len 16
    assert.equal(hex(b.subarray(0, 60)), words(1, 120, 52, 60, 0, 0, 0, 36, 16, 0, 0) + words(16, 0, 12, 0x28));
    const m = decodeOk(b, 'to-guest');
    assert.ok(m.kind === 'packet');
    assert.equal(m.dataOffset, 60);
    assert.equal(m.dataLength, 60);
    assert.deepEqual(b.subarray(m.dataOffset, m.dataOffset + m.dataLength), frame);
    const info = new PacketInfo();
    assert.equal(decodePacketInfo(b, m.ppiOffset, m.ppiLength, info), null);
    assert.ok(info.hasChecksum);
    assert.equal(info.checksum, 0x28);
  });
});

describe('RNDIS decoding of what Linux sends (guest -> host)', () => {
  test('INITIALIZE: version 1.0, max transfer 0x4000', () => {
    assert.deepEqual(decodeOk(bytesOf(words(2, 24, 1, 1, 0, 0x4000)), 'to-host'),
      { kind: 'initialize', start: 0, length: 24, requestId: 1, majorVersion: 1, minorVersion: 0, maxTransferSize: 0x4000 });
  });

  test('QUERY with offset 20 puts the information buffer at byte 28 (offsets count from byte 8)', () => {
    // Linux's offload-capabilities query carries the NDIS_OFFLOAD header it expects.
    const b = bytesOf(words(4, 28 + 4, 3, Oid.TCP_OFFLOAD_HARDWARE_CAPABILITIES, 4, 20, 0) + 'a7039c00');
    const m = decodeOk(b, 'to-host');
    assert.ok(m.kind === 'query');
    assert.equal(m.oid, 0xfc01020d);
    assert.equal(m.infoOffset, 28);
    assert.equal(m.infoLength, 4);
    assert.equal(hex(b.subarray(m.infoOffset, m.infoOffset + m.infoLength)), 'a7039c00');
  });

  test('an empty QUERY (length 0, offset 20) is fine; so is any offset with length 0', () => {
    const m = decodeOk(bytesOf(words(4, 28, 3, Oid.GEN_LINK_SPEED, 0, 20, 0)), 'to-host');
    assert.ok(m.kind === 'query' && m.infoLength === 0 && m.infoOffset === 28);
    assert.ok(decodeOk(bytesOf(words(4, 28, 3, 1, 0, 0xffffffff, 0)), 'to-host').kind === 'query');
  });

  test('SET of the packet filter: u32 at byte 28', () => {
    const m = decodeOk(bytesOf(words(5, 32, 9, Oid.GEN_CURRENT_PACKET_FILTER, 4, 20, 0, 0x0b)), 'to-host');
    assert.ok(m.kind === 'set');
    assert.equal(m.infoOffset, 28);
  });

  test('information buffers that leave the message or overlap the fixed part are rejected', () => {
    // offset measured from the message start (28) instead of byte 8 (20): runs past msg_len
    assert.equal(reason(bytesOf(words(5, 32, 9, 1, 4, 28, 0, 0)), 'to-host'), 'bad-range');
    // offset 0 would point at req_id
    assert.equal(reason(bytesOf(words(5, 32, 9, 1, 4, 0, 0, 0)), 'to-host'), 'bad-range');
    assert.equal(reason(bytesOf(words(5, 32, 9, 1, 0xffffffff, 20, 0, 0)), 'to-host'), 'bad-range');
    assert.equal(reason(bytesOf(words(4, 32, 9, 1, 8, 20, 0, 0)), 'to-host'), 'bad-range');
  });

  test('HALT, RESET, KEEPALIVE_CMPLT', () => {
    assert.equal(decodeOk(bytesOf(words(3, 12, 10)), 'to-host').kind, 'halt');
    assert.equal(decodeOk(bytesOf(words(6, 12, 0)), 'to-host').kind, 'reset');
    assert.equal(decodeOk(bytesOf(words(0x80000008, 16, 1, 0)), 'to-host').kind, 'keepalive-complete');
  });

  test('a Linux TSO packet: LSO PPI then the frame; data_offset = 36 + PPI bytes', () => {
    const lso = lsoV2Info(1448, 34, 0);
    const frame = new Uint8Array(1000).fill(0xab);
    const b = new Uint8Array(44 + 16 + frame.length);
    encodeRndisPacketHeader(b, 0, 16, frame.length);
    writeU32Ppi(b, 44, PpiType.TcpLargeSend, lso);
    b.set(frame, 60);
    const m = decodeOk(b, 'to-host');
    assert.ok(m.kind === 'packet');
    assert.equal(m.dataOffset, 60);
    const info = new PacketInfo();
    assert.equal(decodePacketInfo(b, m.ppiOffset, m.ppiLength, info), null);
    assert.ok(info.hasLso && !info.hasChecksum);
    assert.equal(lsoMss(info.lso), 1448);
    assert.equal(lsoTcpHeaderOffset(info.lso), 34);
    assert.equal(lsoType(info.lso), 1);
    assert.equal(lsoIpVersion(info.lso), 0);
  });

  test('a send section with three padded packets walks by msg_len', () => {
    const section = new Uint8Array(512);
    const sizes = [60, 61, 100];
    let at = 0;
    for (const s of sizes) {
      const pad = (8 - ((44 + 16 + s) % 8)) % 8;
      const n = encodeRndisPacketHeader(section, at, 16, s, pad);
      writeU32Ppi(section, at + 44, PpiType.TcpIpChecksum, txChecksumInfo(TxChecksum.IsIpv4 | TxChecksum.Tcp, 34));
      section.fill(s & 0xff, at + 60, at + 60 + s);
      assert.equal(n % 8, 0);
      at += n;
    }
    const used = at;
    const d = new RndisDecoder();
    const seen: number[] = [];
    for (let off = 0; off < used;) {
      const m = d.decode(section, off, used - off, 'to-host');
      if (m instanceof RndisError) assert.fail(m.message);
      assert.ok(m.kind === 'packet');
      assert.ok(section.subarray(m.dataOffset, m.dataOffset + m.dataLength).every((x) => x === (m.dataLength & 0xff)));
      seen.push(m.dataLength);
      off += m.length;
    }
    assert.deepEqual(seen, sizes);
  });

  test('packet ranges are checked against msg_len, not the buffer', () => {
    const b = new Uint8Array(200);
    encodeRndisPacketHeader(b, 0, 0, 60);
    b.set(bytesOf(words(100)), 4); // msg_len shorter than 44 + 60
    assert.equal(reason(b.subarray(0, 200), 'to-host'), 'bad-range');
    const c = new Uint8Array(104);
    encodeRndisPacketHeader(c, 0, 0, 60);
    c.set(bytesOf(words(20)), 8); // data_offset 20 -> byte 28, inside the header
    assert.equal(reason(c, 'to-host'), 'bad-range');
  });

  test('truncation, short msg_len, unknown types, wrong direction', () => {
    assert.equal(reason(new Uint8Array(7), 'to-host'), 'truncated');
    assert.equal(reason(bytesOf(words(3, 13, 0)), 'to-host'), 'truncated');
    assert.equal(reason(bytesOf(words(3, 8, 0)), 'to-host'), 'too-short');
    assert.equal(reason(bytesOf(words(3, 0, 0)), 'to-host'), 'too-short');
    assert.equal(reason(bytesOf(words(0x42, 12, 0)), 'to-host'), 'unknown-type');
    assert.equal(reason(bytesOf(words(0x80000002, 52, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)), 'to-host'), 'wrong-direction');
    assert.equal(reason(bytesOf(words(7, 20, 0, 0, 0)), 'to-host'), 'wrong-direction');
    assert.equal(reason(bytesOf(words(4, 28, 0, 0, 0, 20, 0)), 'to-guest'), 'wrong-direction');
  });

  test('a window past the end of the buffer is clamped, not read', () => {
    const b = bytesOf(words(3, 12, 1));
    assert.equal(decodeOk(b, 'to-host', 0, 1000).kind, 'halt');
    assert.ok(decodeRndisMessage(b, 13, 10, 'to-host') instanceof RndisError);
    assert.ok(decodeRndisMessage(b, -1, 10, 'to-host') instanceof RndisError);
  });
});

describe('RNDIS round trips', () => {
  test('guest->host encoders decode to their fields', () => {
    fc.assert(fc.property(fc.nat(0xffffffff), fc.nat(0xffffffff), fc.uint8Array({ maxLength: 64 }), (id, oid, info) => {
      const b = new Uint8Array(200);
      let n = encodeRndisInitialize(b, 3, id, oid);
      assert.deepEqual(decodeOk(b, 'to-host', 3, n), { kind: 'initialize', start: 3, length: 24, requestId: id, majorVersion: 1, minorVersion: 0, maxTransferSize: oid });
      n = encodeRndisQuery(b, 0, id, oid, info);
      let m = decodeOk(b, 'to-host', 0, n);
      assert.ok(m.kind === 'query' && m.requestId === id && m.oid === oid && m.length === 28 + info.length);
      assert.deepEqual(b.subarray(m.infoOffset, m.infoOffset + m.infoLength), info);
      n = encodeRndisSet(b, 0, id, oid, info);
      m = decodeOk(b, 'to-host', 0, n);
      assert.ok(m.kind === 'set');
      assert.deepEqual(b.subarray(m.infoOffset, m.infoOffset + m.infoLength), info);
      n = encodeRndisHalt(b, 0, id);
      assert.deepEqual(decodeOk(b, 'to-host', 0, n), { kind: 'halt', start: 0, length: 12, requestId: id });
      n = encodeRndisReset(b, 0);
      assert.equal(decodeOk(b, 'to-host', 0, n).kind, 'reset');
    }));
  });

  test('host->guest encoders decode to their fields', () => {
    fc.assert(fc.property(fc.nat(0xffffffff), fc.nat(0xffffffff), fc.uint8Array({ maxLength: 64 }), (id, status, info) => {
      const b = new Uint8Array(200);
      let n = encodeRndisQueryComplete(b, 0, id, status, info);
      let m = decodeOk(b, 'to-guest', 0, n);
      assert.ok(m.kind === 'query-complete' && m.requestId === id && m.status === status);
      assert.deepEqual(b.subarray(m.infoOffset, m.infoOffset + m.infoLength), info);
      n = encodeRndisIndicateStatus(b, 0, status, info);
      m = decodeOk(b, 'to-guest', 0, n);
      assert.ok(m.kind === 'indicate-status' && m.status === status);
      assert.deepEqual(b.subarray(m.bufferOffset, m.bufferOffset + m.bufferLength), info);
      n = encodeRndisSetComplete(b, 0, id, status);
      assert.deepEqual(decodeOk(b, 'to-guest', 0, n), { kind: 'set-complete', start: 0, length: 16, requestId: id, status });
      n = encodeRndisResetComplete(b, 0, status, id);
      assert.deepEqual(decodeOk(b, 'to-guest', 0, n), { kind: 'reset-complete', start: 0, length: 16, status, addressingReset: id });
      n = encodeRndisInitializeComplete(b, 0, { requestId: id, status, maxPacketsPerMessage: 8, maxTransferSize: status, packetAlignmentFactor: 3 });
      m = decodeOk(b, 'to-guest', 0, n);
      assert.ok(m.kind === 'initialize-complete' && m.requestId === id && m.maxTransferSize === status && m.packetAlignmentFactor === 3);
    }));
  });
});

// ---------------------------------------------------------------------------------------
// Fuzz: decoders never throw and never report a range outside their input

const RNDIS_TYPES = Object.values(RndisMessageType);

function checkRndisOutcome(b: Uint8Array, offset: number, available: number, dir: RndisDirection): void {
  let m: RndisMessage | RndisError;
  try {
    m = new RndisDecoder().decode(b, offset, available, dir);
  } catch (e) {
    assert.fail(`RNDIS decoder threw: ${String(e)}`);
  }
  if (m instanceof RndisError) return;
  const end = Math.min(offset + available, b.length);
  assert.equal(m.start, offset);
  assert.ok(m.length >= 12 && m.start + m.length <= end, 'message inside the window');
  const inside = (o: number, n: number) => o >= m.start && o + n <= m.start + m.length;
  if (m.kind === 'packet') {
    assert.ok(inside(m.dataOffset, m.dataLength), 'data inside the message');
    assert.ok(inside(m.ppiOffset, m.ppiLength), 'PPIs inside the message');
    assert.ok(m.dataLength === 0 || m.dataOffset >= m.start + 44);
    checkPpiOutcome(b, m.ppiOffset, m.ppiLength);
  } else if (m.kind === 'query' || m.kind === 'set') {
    assert.ok(inside(m.infoOffset, m.infoLength) && (m.infoLength === 0 || m.infoOffset >= m.start + 28));
  } else if (m.kind === 'query-complete') {
    assert.ok(inside(m.infoOffset, m.infoLength) && (m.infoLength === 0 || m.infoOffset >= m.start + 24));
  } else if (m.kind === 'indicate-status') {
    assert.ok(inside(m.bufferOffset, m.bufferLength) && (m.bufferLength === 0 || m.bufferOffset >= m.start + 20));
  }
}

function checkPpiOutcome(b: Uint8Array, offset: number, length: number): void {
  const it = new PpiIterator().reset(b, offset, length);
  let total = 0;
  for (let guard = 0; ; guard++) {
    assert.ok(guard <= length / 12 + 1, 'the walk always advances');
    let r: boolean | PpiError;
    try {
      r = it.next();
    } catch (e) {
      assert.fail(`PPI iterator threw: ${String(e)}`);
    }
    if (r === false) {
      assert.equal(total, Math.max(0, Math.min(offset + length, b.length) - Math.max(0, Math.min(offset, b.length))), 'records tile the area');
      break;
    }
    if (r !== true) {
      assert.ok(r instanceof PpiError);
      break;
    }
    assert.ok(it.recordOffset >= offset && it.recordOffset + it.recordSize <= offset + length);
    assert.ok(it.dataOffset >= it.recordOffset + 12 && it.dataLength >= 1);
    assert.equal(it.dataOffset + it.dataLength, it.recordOffset + it.recordSize);
    total += it.recordSize;
  }
  try {
    const r = decodePacketInfo(b, offset, length, new PacketInfo());
    assert.ok(r === null || r instanceof PpiError);
  } catch (e) {
    assert.fail(`decodePacketInfo threw: ${String(e)}`);
  }
}

/** A valid message of any kind, for mutation. */
const validMessage: fc.Arbitrary<{ bytes: Uint8Array; dir: RndisDirection }> = fc.tuple(
  fc.nat(12), fc.nat(0xffffffff), fc.uint8Array({ maxLength: 48 }), fc.nat(4),
).map(([which, v, data, ppis]) => {
  const b = new Uint8Array(256);
  let n: number;
  let dir: RndisDirection = 'to-host';
  switch (which) {
    case 0: n = encodeRndisInitialize(b, 0, v, 0x4000); break;
    case 1: n = encodeRndisQuery(b, 0, v, v, data); break;
    case 2: n = encodeRndisSet(b, 0, v, v, data); break;
    case 3: n = encodeRndisHalt(b, 0, v); break;
    case 4: n = encodeRndisReset(b, 0); break;
    case 5: n = encodeRndisKeepaliveComplete(b, 0, v, 0); break;
    case 6: dir = 'to-guest'; n = encodeRndisQueryComplete(b, 0, v, 0, data); break;
    case 7: dir = 'to-guest'; n = encodeRndisIndicateStatus(b, 0, v, data); break;
    case 8: dir = 'to-guest'; n = encodeRndisInitializeComplete(b, 0, { requestId: v, status: 0, maxPacketsPerMessage: 8, maxTransferSize: v, packetAlignmentFactor: 3 }); break;
    case 9: dir = 'to-guest'; n = encodeRndisSetComplete(b, 0, v, 0); break;
    default: {
      n = encodeRndisPacketHeader(b, 0, 16 * ppis, data.length);
      for (let i = 0; i < ppis; i++) writeU32Ppi(b, 44 + 16 * i, [0, 2, 6, 8][i]!, v);
      b.set(data, 44 + 16 * ppis);
      dir = which === 10 ? 'to-host' : 'to-guest';
    }
  }
  return { bytes: b.subarray(0, n), dir };
});

describe('RNDIS and PPI fuzz', () => {
  test('random bytes: a message or a typed error, ranges inside the message', () => {
    fc.assert(fc.property(
      fc.uint8Array({ maxLength: 160 }), fc.nat(170), fc.nat(200), fc.constantFrom<RndisDirection>('to-host', 'to-guest'),
      (b, off, avail, dir) => checkRndisOutcome(b, off, avail, dir),
    ), { numRuns: 2000 });
  });

  test('random bodies behind a valid type and a fitting msg_len', () => {
    fc.assert(fc.property(
      fc.constantFrom(...RNDIS_TYPES), fc.uint8Array({ minLength: 8, maxLength: 160 }), fc.constantFrom<RndisDirection>('to-host', 'to-guest'),
      fc.boolean(),
      (type, body, dir, smallOffsets) => {
        const b = new Uint8Array(8 + body.length);
        b.set(bytesOf(words(type, b.length)));
        b.set(body, 8);
        if (smallOffsets) {
          // Keep offset/length words small so that many ranges land near the message.
          for (let i = 8; i + 4 <= b.length; i += 4) b[i + 1] = b[i + 2] = b[i + 3] = 0;
        }
        checkRndisOutcome(b, 0, b.length, dir);
      },
    ), { numRuns: 3000 });
  });

  test('mutated and truncated valid messages', () => {
    fc.assert(fc.property(
      validMessage, fc.array(fc.tuple(fc.nat(300), fc.nat(255)), { maxLength: 6 }), fc.nat(300),
      ({ bytes, dir }, flips, cut) => {
        const b = new Uint8Array(bytes);
        checkRndisOutcome(b, 0, b.length, dir);
        for (const [at, v] of flips) b[at % b.length] = v;
        checkRndisOutcome(b, 0, b.length, dir);
        checkRndisOutcome(b, 0, Math.min(cut, b.length), dir);
      },
    ), { numRuns: 3000 });
  });

  test('random PPI areas never throw and never leave the area', () => {
    fc.assert(fc.property(
      fc.array(fc.tuple(fc.nat(40), fc.nat(12), fc.nat(40), fc.uint8Array({ maxLength: 12 })), { maxLength: 6 }),
      fc.nat(8),
      (records, slack) => {
        // Records with small, often-wrong sizes and offsets, plus trailing garbage.
        const parts: number[] = [];
        for (const [size, type, off, data] of records) parts.push(...Buffer.from(words(size, type, off)), ...data);
        for (let i = 0; i < slack; i++) parts.push(i);
        const b = new Uint8Array(parts);
        checkPpiOutcome(b, 0, b.length);
        checkPpiOutcome(b, 3, b.length);
        checkPpiOutcome(b, 0, b.length + 50);
      },
    ), { numRuns: 3000 });
  });
});

// ---------------------------------------------------------------------------------------

describe('per-packet info', () => {
  test('the records Linux 6.1 would loop on are errors', () => {
    const err = (h: string) => {
      const b = bytesOf(h);
      const r = new PpiIterator().reset(b, 0, b.length).next();
      assert.ok(r instanceof PpiError);
      return r.reason;
    };
    assert.equal(err(words(0, 0, 12, 0)), 'bad-size');
    assert.equal(err(words(20, 0, 12, 0)), 'bad-size'); // past the end
    assert.equal(err(words(16, 0, 16, 0)), 'bad-offset'); // offset == size
    assert.equal(err(words(16, 0, 4, 0)), 'bad-offset'); // inside the header
    assert.equal(err(words(16, 0)), 'truncated-header');
  });

  test('short values and duplicates of known types are errors; unknown types are counted', () => {
    const info = new PacketInfo();
    const shortVlan = bytesOf(words(14, PpiType.Ieee8021Q, 12) + '0100');
    assert.equal(decodePacketInfo(shortVlan, 0, shortVlan.length, info)?.reason, 'short-value');
    const b = new Uint8Array(64);
    let n = writeU32Ppi(b, 0, PpiType.Ieee8021Q, 1);
    n += writeU32Ppi(b, n, PpiType.Ieee8021Q, 2);
    assert.equal(decodePacketInfo(b, 0, n, info)?.reason, 'duplicate');
    n = writeOpaquePpi(b, 0, PpiType.OriginalPacketInfo, bytesOf('01'));
    n += writeU32Ppi(b, n, 5, 0, true); // an internal type this codec does not know
    assert.equal(decodePacketInfo(b, 0, n, info), null);
    assert.equal(info.otherCount, 2);
  });

  test('every Linux PPI in one area: checksum, 802.1Q, hash, packet id', () => {
    const b = new Uint8Array(64);
    let n = writeU32Ppi(b, 0, PpiType.TcpIpChecksum, txChecksumInfo(TxChecksum.IsIpv6 | TxChecksum.Udp, 54));
    n += writeU32Ppi(b, n, PpiType.Ieee8021Q, vlanInfo(100, 5, 0));
    n += writeU32Ppi(b, n, PpiType.HashValue, 0xdeadbeef);
    n += writePacketIdPpi(b, n, PacketInfoIdFlag.FirstFragment | PacketInfoIdFlag.LastFragment, 0x1234);
    assert.equal(n, 64);
    assert.equal(hex(b.subarray(48, 64)), words(16, 0x80000001, 12) + '01063412');
    const info = new PacketInfo();
    assert.equal(decodePacketInfo(b, 0, n, info), null);
    assert.equal(info.checksum & 0xffff, TxChecksum.IsIpv6 | TxChecksum.Udp);
    assert.equal(txChecksumHeaderOffset(info.checksum), 54);
    assert.equal(vlanId(info.vlan), 100);
    assert.equal(vlanPriority(info.vlan), 5);
    assert.equal(info.hash, 0xdeadbeef);
    assert.ok(info.hasPacketId && info.packetId === 0x1234 && info.packetIdFlags === 6 && info.packetIdVersion === 1);
  });

  test('bit fields match the spec layout', () => {
    assert.equal(txChecksumInfo(TxChecksum.IsIpv4 | TxChecksum.Tcp, 34), 0x00220005);
    assert.equal(lsoV2Info(1448, 34, 1), (1448 | (34 << 20) | (1 << 30) | (1 << 31)) >>> 0);
    assert.equal(vlanInfo(0xabc, 7, 1), 0xabcf);
    fc.assert(fc.property(fc.nat(0xffff), (tci) => {
      const v = tciToVlanInfo(tci);
      assert.equal(vlanInfoToTci(v), tci);
      assert.equal(vlanId(v), tci & 0xfff);
      assert.equal(vlanCfi(v), (tci >> 12) & 1);
    }));
    fc.assert(fc.property(fc.nat(0xfffff), fc.nat(0x3ff), fc.nat(1), (mss, off, ip) => {
      const v = lsoV2Info(mss, off, ip);
      assert.deepEqual([lsoMss(v), lsoTcpHeaderOffset(v), lsoType(v), lsoIpVersion(v)], [mss, off, 1, ip]);
    }));
  });
});

describe('OIDs', () => {
  test('numbers and names', () => {
    assert.equal(Oid['802_3_PERMANENT_ADDRESS'], 0x01010101);
    assert.equal(Oid.GEN_RECEIVE_SCALE_PARAMETERS, 0x00010204);
    assert.equal(Oid.GEN_FRIENDLY_NAME, 0x00020216);
    assert.equal(oidName(0xfc01020d), 'OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES');
    assert.equal(oidName(0x01010101), 'OID_802_3_PERMANENT_ADDRESS');
    assert.equal(oidName(0x12345678), 'OID 0x12345678');
    assert.deepEqual(LINUX_BRINGUP_OIDS.map((u) => u.oid), [0x00010106, 0x01010101, 0x00020216, 0xfc01020d, 0xfc01020c, 0x00010114, 0x00010107, 0x00010203]);
    assert.equal(linuxMaxAnswerLength(Oid.GEN_RECEIVE_SCALE_CAPABILITIES), 18);
    assert.equal(linuxMaxAnswerLength(Oid.TCP_OFFLOAD_HARDWARE_CAPABILITIES), 156);
    assert.equal(new Set(Object.values(Oid)).size, Object.values(Oid).length, 'no duplicate numbers');
  });
});

describe('NDIS offload objects', () => {
  test('NDIS_OFFLOAD with checksum, LSO and RSC, 156 bytes, revision 3', () => {
    const b = new Uint8Array(156);
    assert.equal(encodeNdisOffload(b, 0, checksumLsoAndRscOffload()), 156);
    const expected = new Uint8Array(156);
    expected.set(bytesOf('a7039c00'), 0);
    // checksum block: v4 tx encap 2 / flags 0x55, rx 2 / 0x155, v6 tx 2 / 0x55, rx 2 / 0x55
    expected.set(bytesOf(words(2, 0x55, 2, 0x155, 2, 0x55, 2, 0x55)), 4);
    // LSOv2 @80: v4 encap 2, max 62780, min 2; v6 encap 2, max 62780, min 2, flags 5
    expected.set(bytesOf(words(2, 62780, 2, 2, 62780, 2, 5)), 80);
    // RSC @144: IPv4 and IPv6 offered (u8 each)
    expected.set([1, 1], 144);
    assert.equal(hex(b), hex(expected));
  });

  test('no offload is the header alone; 6.0 and 6.1 sizes carry revisions 1 and 2', () => {
    const b = new Uint8Array(156).fill(0xff);
    encodeNdisOffload(b, 0, noOffload());
    assert.equal(hex(b), 'a7039c00' + '00'.repeat(152));
    const c = new Uint8Array(112);
    encodeNdisOffload(c, 0, checksumLsoAndRscOffload(), ndisOffloadSizeFor(0x30002));
    assert.equal(hex(c.subarray(0, 4)), 'a7017000');
    const d = new Uint8Array(144);
    encodeNdisOffload(d, 0, checksumLsoAndRscOffload(), ndisOffloadSizeFor(0x40000));
    assert.equal(hex(d.subarray(0, 4)), 'a7029000');
    assert.equal(ndisOffloadSizeFor(0x60001), 156);
    assert.throws(() => encodeNdisOffload(b, 0, noOffload(), 100), RangeError);
  });

  test('NDIS_OFFLOAD round-trips and is checked as Linux checks it', () => {
    const f = { ...checksumLsoAndRscOffload(), rscIpv4: 1, rscIpv6: 1 };
    const b = new Uint8Array(156);
    encodeNdisOffload(b, 0, f);
    const d = decodeNdisOffload(b, 0, 156);
    assert.ok(!(d instanceof NdisObjectError));
    assert.deepEqual(d, { ...f, revision: 3, size: 156 });
    assert.ok(decodeNdisOffload(b, 0, 155) instanceof NdisObjectError); // size > info length
    const wrong = new Uint8Array(b);
    wrong[0] = 0x80;
    assert.ok(decodeNdisOffload(wrong, 0, 156) instanceof NdisObjectError);
  });

  test("NDIS_OFFLOAD_PARAMETERS as Linux sets them (28 bytes, and 22 up to v4)", () => {
    // header 0x80/3/28; ip_v4_csum 1 (disabled), tcp4 4, udp4 4, tcp6 4, udp6 4, lso_v1 0, ipsec 0, lso4 2, lso6 2
    const b = bytesOf('80031c00' + '0104040404' + '0000' + '0202' + '0000' + '00' + words(0) + '0000' + '0101' + '0000' + '0000');
    assert.equal(b.length, 28);
    const p = decodeNdisOffloadParameters(b, 0, b.length);
    assert.ok(!(p instanceof NdisObjectError));
    assert.equal(p.ipv4Checksum, 1);
    assert.equal(p.tcpIpv4Checksum, 4);
    assert.equal(p.udpIpv6Checksum, 4);
    assert.equal(p.lsoV2Ipv4, 2);
    assert.equal(p.lsoV2Ipv6, 2);
    assert.equal(p.rscIpv4, 1);
    const e = new Uint8Array(28);
    const { revision: _r, size: _s, ...fields } = p;
    encodeNdisOffloadParameters(e, 0, fields);
    assert.equal(hex(e), hex(b));
    // The v4 form: 22 bytes, fields past 22 read as "no change" even if bytes follow.
    const v4 = new Uint8Array(b);
    v4[2] = 22;
    const q = decodeNdisOffloadParameters(v4, 0, 28);
    assert.ok(!(q instanceof NdisObjectError) && q.size === 22 && q.rscIpv4 === 0 && q.lsoV2Ipv4 === 2);
    assert.ok(decodeNdisOffloadParameters(b, 0, 3) instanceof NdisObjectError);
    const badType = new Uint8Array(b);
    badType[0] = 0xa7;
    assert.ok(decodeNdisOffloadParameters(badType, 0, 28) instanceof NdisObjectError);
  });

  test('RSS capabilities: 18 exact bytes and back', () => {
    const b = new Uint8Array(18);
    const caps = { capabilities: RssCapability.HashFunctionToeplitz | RssCapability.HashTypeTcpIpv4 | RssCapability.HashTypeTcpIpv6, numInterruptMessages: 1, numReceiveQueues: 4, numIndirectionEntries: 128 };
    assert.equal(encodeRssCapabilities(b, 0, caps), 18);
    assert.equal(hex(b), '88021200' + words(0x301, 1, 4) + '8000');
    assert.deepEqual(decodeRssCapabilities(b, 0, 18), caps);
    assert.ok(decodeRssCapabilities(b, 0, 17) instanceof NdisObjectError);
  });

  test('RSS parameters as Linux sets them: 128 entries at 40, the key after', () => {
    const table = Array.from({ length: 128 }, (_, i) => i % 3);
    const b = new Uint8Array(40 + 512 + 40);
    assert.equal(encodeRssParameters(b, 0, 0, LINUX_RSS_HASH_INFO, table, DEFAULT_RSS_KEY), b.length);
    assert.equal(hex(b.subarray(0, 40)), '89022800' + '0000' + '0000' + words(0x1701) + '0002' + '0000' + words(40) + '2800' + '0000' + words(552) + words(0, 0, 0));
    const p = decodeRssParameters(b, 0, b.length);
    assert.ok(!(p instanceof NdisObjectError));
    assert.equal(p.hashInfo, 0x1701);
    assert.equal(p.tableEntries, 128);
    assert.equal(p.keyLength, 40);
    assert.deepEqual(Array.from({ length: 128 }, (_, i) => rssTableEntry(b, p, i)), table);
    assert.deepEqual([...b.subarray(p.keyOffset, p.keyOffset + p.keyLength)], DEFAULT_RSS_KEY);
    assert.equal(DEFAULT_RSS_KEY.length, 40);
    // The disabling SET Linux sends first.
    encodeRssParameters(b, 0, RssParameterFlag.DisableRss, LINUX_RSS_HASH_INFO, table, DEFAULT_RSS_KEY);
    const q = decodeRssParameters(b, 0, b.length);
    assert.ok(!(q instanceof NdisObjectError) && q.flags === 0x10);
  });

  test('RSS parameters with bad table or key geometry are rejected', () => {
    const table = [0, 1, 0, 1];
    const b = new Uint8Array(40 + 16 + 40);
    encodeRssParameters(b, 0, 0, LINUX_RSS_HASH_INFO, table, DEFAULT_RSS_KEY);
    const reasonOf = (mut: (c: Uint8Array) => void, len = b.length) => {
      const c = new Uint8Array(b);
      mut(c);
      const r = decodeRssParameters(c, 0, len);
      assert.ok(r instanceof NdisObjectError);
      return r.reason;
    };
    assert.equal(reasonOf(() => {}, 95), 'bad-range'); // key runs past the buffer
    assert.equal(reasonOf((c) => { c[12] = 6; }), 'bad-value'); // table size not a multiple of 4
    assert.equal(reasonOf((c) => { c[20] = 41; }), 'bad-value'); // key longer than 40
    assert.equal(reasonOf((c) => { c[16] = 4; }), 'bad-range'); // table inside the header
    assert.equal(reasonOf((c) => { c[16] = 0xff; c[17] = 0xff; c[18] = 0xff; c[19] = 0xff; }), 'bad-range');
    assert.equal(reasonOf((c) => { c[0] = 0x88; }), 'bad-header');
    assert.equal(reasonOf(() => {}, 27), 'too-short');
  });

  test('offload decoders never throw and never report ranges outside the buffer', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), fc.nat(210), fc.nat(210), fc.boolean(), (raw, off, len, shape) => {
      const b = new Uint8Array(raw);
      if (shape && b.length >= 28) {
        b[0] = 0x89;
        b[1] = 2;
        for (const at of [13, 17, 18, 19, 21, 25, 26, 27]) b[at] = 0; // small sizes and offsets
      }
      try {
        const p = decodeRssParameters(b, off, len);
        if (!(p instanceof NdisObjectError)) {
          const end = Math.min(off + len, b.length);
          assert.ok(p.tableOffset >= off && p.tableOffset + 4 * p.tableEntries <= end);
          assert.ok(p.keyOffset >= off && p.keyOffset + p.keyLength <= end);
        }
        decodeNdisOffloadParameters(b, off, len);
        decodeNdisOffload(b, off, len);
        decodeRssCapabilities(b, off, len);
      } catch (e) {
        assert.fail(`offload decoder threw: ${String(e)}`);
      }
    }), { numRuns: 3000 });
  });
});

describe('the byte helpers the per-packet codecs use', () => {
  test('copyBytes and zeroBytes do what TypedArray set and fill do', () => {
    fc.assert(fc.property(fc.uint8Array({ minLength: 1, maxLength: 600 }), fc.nat(), fc.nat(), fc.nat(), (from, a, b, c) => {
      const start = a % from.length;
      const end = start + (b % (from.length - start + 1));
      const to = new Uint8Array(700).fill(0x5a);
      const at = c % (to.length - (end - start) + 1);
      const want = to.slice();
      want.set(from.subarray(start, end), at);
      copyBytes(to, at, from, start, end);
      assert.deepEqual(to, want);
      want.fill(0, at, at + (end - start));
      zeroBytes(to, at, at + (end - start));
      assert.deepEqual(to, want);
    }));
  });
});
