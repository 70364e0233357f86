// Software TSO: for random large TCP frames over IPv4/IPv6 (tagged or not, TCP options,
// netvsc's LSO shape with zeroed IP lengths and checksum), the segments' payloads
// reassemble to the original, every segment parses and carries valid IPv4 header and
// TCP checksums and consistent lengths, respects the MSS and MTU, has the right sequence
// number and IPv4 id, and FIN/PSH appear only on the last segment and CWR only on the
// first. Inputs it cannot segment are refused with a typed error.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { PacketKind, parsePacket, ParsedPacket } from '../src/backends/net/packet-parse.js';
import { L4Checksum, pseudoHeaderSumIpv4, foldSum, verifyIpv4HeaderChecksum, verifyL4Checksum } from '../src/backends/net/inet-checksum.js';
import { SegmentError, segmentedSize, TcpSegmenter } from '../src/backends/net/tcp-segmenter.js';

interface LargeFrame {
  version: 4 | 6;
  vlan: boolean;
  tcpOptions: number;
  payload: Uint8Array;
  flags: number;
  seq: number;
  ipId: number;
  /** netvsc's LSO shape: IP length fields (and the IPv4 checksum) zeroed. */
  lso: boolean;
}

const TCP_FIN = 0x01;
const TCP_PSH = 0x08;
const TCP_CWR = 0x80;

function buildLarge(spec: LargeFrame): { bytes: Uint8Array; l3: number; l4: number; headerLength: number } {
  const l3 = spec.vlan ? 18 : 14;
  const ipHeader = spec.version === 4 ? 20 : 40;
  const l4 = l3 + ipHeader;
  const tcpHeader = 20 + spec.tcpOptions;
  const headerLength = l4 + tcpHeader;
  const bytes = new Uint8Array(headerLength + spec.payload.length);
  const v = new DataView(bytes.buffer);
  bytes.set([0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1]);
  if (spec.vlan) bytes.set([0x81, 0x00, 0x00, 0x07], 12);
  v.setUint16(l3 - 2, spec.version === 4 ? 0x0800 : 0x86dd);
  if (spec.version === 4) {
    bytes[l3] = 0x45;
    v.setUint16(l3 + 2, spec.lso ? 0 : bytes.length - l3);
    v.setUint16(l3 + 4, spec.ipId);
    v.setUint16(l3 + 6, 0x4000);
    bytes[l3 + 8] = 64;
    bytes[l3 + 9] = 6;
    bytes.set([172, 16, 0, 1, 172, 16, 0, 2], l3 + 12);
  } else {
    bytes[l3] = 0x60;
    v.setUint16(l3 + 4, spec.lso ? 0 : bytes.length - l3 - 40);
    bytes[l3 + 6] = 6;
    bytes[l3 + 7] = 64;
    for (let i = 0; i < 32; i++) bytes[l3 + 8 + i] = i * 7;
  }
  v.setUint16(l4, 51000);
  v.setUint16(l4 + 2, 5201);
  v.setUint32(l4 + 4, spec.seq);
  v.setUint32(l4 + 8, 0xabcdef01);
  bytes[l4 + 12] = (tcpHeader / 4) << 4;
  bytes[l4 + 13] = spec.flags;
  v.setUint16(l4 + 14, 501);
  for (let i = l4 + 20; i < headerLength; i++) bytes[i] = 1; // NOP options
  if (spec.version === 4) {
    // What netvsc leaves: ~csum_tcpudp_magic(saddr, daddr, 0, TCP, 0), the pseudo sum without length.
    v.setUint16(l4 + 16, foldSum(pseudoHeaderSumIpv4(bytes, l3, 6, 0)));
  }
  bytes.set(spec.payload, headerLength);
  return { bytes, l3, l4, headerLength };
}

function frameWithPayloadUpTo(maxPayload: number): fc.Arbitrary<LargeFrame> {
  return fc.record({
    version: fc.constantFrom(4 as const, 6 as const),
    vlan: fc.boolean(),
    tcpOptions: fc.constantFrom(0, 12, 40),
    payload: fc.integer({ min: 0, max: maxPayload }).chain((n) => fc.uint8Array({ minLength: n, maxLength: n })),
    flags: fc.integer({ min: 0, max: 255 }),
    seq: fc.integer({ min: 0, max: 0xffffffff }),
    ipId: fc.integer({ min: 0, max: 0xffff }),
    lso: fc.boolean(),
  });
}

describe('TCP segmenter', () => {
  const segmenter = new TcpSegmenter();
  // Room for the worst case the property generates: 62,780 bytes at an MSS of 48 is 1,308
  // segments, each with up to 18 + 40 + 60 header bytes.
  const out = new Uint8Array(segmentedSize(18 + 40 + 60, 62_780, 48) + 16);
  const parsed = new ParsedPacket();

  test('property: segments reassemble, parse, verify, fit the MSS/MTU and follow the flag rules', () => {
    fc.assert(
      fc.property(frameWithPayloadUpTo(62780), fc.integer({ min: 48, max: 9000 }), fc.constantFrom(0, 576, 1500, 9000), fc.nat(16), (spec, mss, mtu, outOffset) => {
        const f = buildLarge(spec);
        const ipHeaderBytes = f.headerLength - f.l3;
        const effectiveMss = mtu > 0 ? Math.min(mss, mtu - ipHeaderBytes) : mss;
        const result = segmenter.segment(f.bytes, 0, f.bytes.length, mss, out, outOffset, mtu);
        assert.equal(result, SegmentError.None);
        const expectedCount = spec.payload.length === 0 ? 1 : Math.ceil(spec.payload.length / effectiveMss);
        assert.equal(segmenter.count, expectedCount);
        const reassembled = new Uint8Array(spec.payload.length);
        let received = 0;
        let expectedAt = outOffset;
        for (let i = 0; i < segmenter.count; i++) {
          const at = segmenter.frameOffsets[i]!;
          const length = segmenter.frameLengths[i]!;
          assert.equal(at, expectedAt);
          expectedAt += length;
          assert.equal(parsePacket(out, at, length, parsed), PacketKind.Tcp);
          assert.equal(parsed.ipLengthFromFrame, false);
          assert.equal(parsed.ipEnd, length);
          assert.equal(parsed.payloadOffset, f.headerLength);
          assert.ok(parsed.payloadLength <= effectiveMss);
          if (i < segmenter.count - 1) assert.equal(parsed.payloadLength, effectiveMss);
          if (mtu > 0) assert.ok(length - f.l3 <= mtu, `IP packet ${length - f.l3} > MTU ${mtu}`);
          assert.equal(verifyL4Checksum(out, at, parsed), L4Checksum.Valid);
          const v = new DataView(out.buffer, out.byteOffset + at, length);
          if (spec.version === 4) {
            assert.ok(verifyIpv4HeaderChecksum(out, at + f.l3, 20));
            assert.equal(v.getUint16(f.l3 + 4), (spec.ipId + i) & 0xffff);
          }
          assert.equal(v.getUint32(f.l4 + 4), (spec.seq + received) >>> 0);
          const flags = out[at + f.l4 + 13]!;
          const last = i === segmenter.count - 1;
          const first = i === 0;
          assert.equal(flags & TCP_FIN, last ? spec.flags & TCP_FIN : 0);
          assert.equal(flags & TCP_PSH, last ? spec.flags & TCP_PSH : 0);
          assert.equal(flags & TCP_CWR, first ? spec.flags & TCP_CWR : 0);
          assert.equal(flags & ~(TCP_FIN | TCP_PSH | TCP_CWR), spec.flags & ~(TCP_FIN | TCP_PSH | TCP_CWR));
          // Everything else in the headers is copied: MACs, tag, addresses, ports, ack, window, options.
          assert.deepEqual(out.subarray(at, at + f.l3 + 2), f.bytes.subarray(0, f.l3 + 2));
          assert.deepEqual(out.subarray(at + f.l4, at + f.l4 + 4), f.bytes.subarray(f.l4, f.l4 + 4));
          assert.deepEqual(out.subarray(at + f.l4 + 8, at + f.l4 + 13), f.bytes.subarray(f.l4 + 8, f.l4 + 13));
          assert.deepEqual(out.subarray(at + f.l4 + 14, at + f.l4 + 16), f.bytes.subarray(f.l4 + 14, f.l4 + 16));
          assert.deepEqual(out.subarray(at + f.l4 + 18, at + f.headerLength), f.bytes.subarray(f.l4 + 18, f.headerLength));
          const fixedIp = spec.version === 4 ? [6, 10, 12, 20] : [0, 4, 6, 40];
          assert.deepEqual(out.subarray(at + f.l3 + fixedIp[0]!, at + f.l3 + fixedIp[1]!), f.bytes.subarray(f.l3 + fixedIp[0]!, f.l3 + fixedIp[1]!));
          assert.deepEqual(out.subarray(at + f.l3 + fixedIp[2]!, at + f.l3 + fixedIp[3]!), f.bytes.subarray(f.l3 + fixedIp[2]!, f.l3 + fixedIp[3]!));
          reassembled.set(out.subarray(at + parsed.payloadOffset, at + parsed.l4End), received);
          received += parsed.payloadLength;
        }
        assert.equal(received, spec.payload.length);
        assert.deepEqual(reassembled, spec.payload);
        assert.equal(expectedAt - outOffset, segmentedSize(f.headerLength, spec.payload.length, effectiveMss));
      }),
      { numRuns: 150 },
    );
  });

  test('a 64 KiB netvsc LSO frame at MSS 1448 becomes 1500-byte packets; at the minimum MSS 48 it still fits the default capacity', () => {
    const payload = Uint8Array.from({ length: 62780 - 52 }, (_, i) => (i * 31) & 0xff);
    const f = buildLarge({ version: 4, vlan: false, tcpOptions: 12, payload, flags: 0x18, seq: 0xfffff000, ipId: 0xfffe, lso: true });
    assert.equal(segmenter.segment(f.bytes, 0, f.bytes.length, 1448, out, 0, 1500), SegmentError.None);
    assert.equal(segmenter.count, Math.ceil(payload.length / 1448));
    assert.equal(segmenter.frameLengths[0], 14 + 1500);
    const big = new Uint8Array(segmentedSize(f.headerLength, payload.length, 48));
    assert.equal(segmenter.segment(f.bytes, 0, f.bytes.length, 48, big, 0), SegmentError.None);
    assert.equal(segmenter.count, Math.ceil(payload.length / 48));
  });

  test('refuses what it cannot segment, with a typed error', () => {
    const f = buildLarge({ version: 6, vlan: false, tcpOptions: 0, payload: new Uint8Array(5000), flags: 0x10, seq: 1, ipId: 0, lso: false });
    assert.equal(segmenter.segment(f.bytes, 0, f.bytes.length, 0, out, 0), SegmentError.BadMss);
    assert.equal(segmenter.segment(f.bytes, 0, f.bytes.length, 1.5, out, 0), SegmentError.BadMss);
    assert.equal(segmenter.segment(f.bytes, 0, f.bytes.length, 1000, out, 0, 60), SegmentError.BadMss);
    assert.equal(segmenter.count, 0);
    assert.equal(new TcpSegmenter(4).segment(f.bytes, 0, f.bytes.length, 1000, out, 0), SegmentError.TooManySegments);
    assert.equal(segmenter.segment(f.bytes, 0, f.bytes.length, 1000, out.subarray(0, 5000), 0), SegmentError.OutputTooSmall);
    assert.equal(segmenter.segment(f.bytes, 0, f.bytes.length, 1000, out, out.length - 100), SegmentError.OutputTooSmall);
    assert.equal(segmenter.segment(f.bytes, 0, f.bytes.length, 1000, out, -1), SegmentError.OutputTooSmall);
    assert.equal(segmenter.segment(f.bytes, 0, f.bytes.length, 70000, out, 0), SegmentError.None); // one segment
    const notTcp = f.bytes.slice();
    notTcp[14 + 6] = 17;
    assert.equal(segmenter.segment(notTcp, 0, notTcp.length, 1000, out, 0), SegmentError.NotTcp);
    assert.equal(segmenter.segment(f.bytes, 0, 30, 1000, out, 0), SegmentError.NotTcp);
    assert.equal(segmenter.segment(f.bytes, 10, f.bytes.length, 1000, out, 0), SegmentError.NotTcp);
    const fragment = buildLarge({ version: 4, vlan: false, tcpOptions: 0, payload: new Uint8Array(3000), flags: 0x10, seq: 1, ipId: 0, lso: false });
    fragment.bytes[14 + 6] = 0x20; // MF
    assert.equal(segmenter.segment(fragment.bytes, 0, fragment.bytes.length, 1000, out, 0), SegmentError.NotTcp);
  });

  test('fuzz: mutated and truncated frames never throw; a success only yields valid frames inside the output', () => {
    const small = new Uint8Array(8192);
    let successes = 0;
    fc.assert(
      fc.property(
        frameWithPayloadUpTo(3000),
        fc.array(fc.tuple(fc.nat(90), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }),
        fc.nat(),
        fc.integer({ min: -2, max: 3000 }),
        fc.integer({ min: -1, max: 9000 }),
        fc.integer({ min: 0, max: 64 }),
        (spec, mutations, cut, mss, mtu, outOffset) => {
          const f = buildLarge(spec);
          for (const [at, value] of mutations) f.bytes[at % f.bytes.length] = value;
          const length = f.bytes.length - (cut % 3 === 0 ? cut % (f.bytes.length + 1) : 0);
          const result = segmenter.segment(f.bytes, 0, length, mss, small, outOffset, mtu);
          if (result === SegmentError.None) {
            successes++;
            for (let i = 0; i < segmenter.count; i++) {
              assert.ok(segmenter.frameOffsets[i]! + segmenter.frameLengths[i]! <= small.length);
              assert.equal(parsePacket(small, segmenter.frameOffsets[i]!, segmenter.frameLengths[i]!, parsed), PacketKind.Tcp);
              assert.equal(verifyL4Checksum(small, segmenter.frameOffsets[i]!, parsed), L4Checksum.Valid);
            }
          } else {
            assert.equal(segmenter.count, 0);
          }
        },
      ),
      { numRuns: 1000 },
    );
    assert.ok(successes > 100, `only ${successes} of 1000 fuzz cases reached segmentation`);
  });
});
