// Frame parsing and the Internet checksum. The parser finds the right offsets in every
// shape offloads meet (VLAN tags, IPv4 options, IPv6 extension headers, padding, the
// zeroed lengths of LSO frames), calls everything else Malformed/NotIp/OtherIp, and on
// arbitrary or mutated bytes never throws and never reports offsets outside the frame.
// The checksum matches hand-computed values for known packets, chunked sums equal whole
// sums, and any packet whose checksum was filled (from scratch or from a guest's partial
// pseudo-header sum) verifies, while any single changed byte does not.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { PacketKind, ParseFailure, parsePacket, ParsedPacket } from '../src/backends/net/packet-parse.js';
import {
  addChunkSum,
  fillIpv4HeaderChecksum,
  fillL4Checksum,
  fillPartialChecksum,
  finishChecksum,
  foldSum,
  ipv4HeaderChecksum,
  L4Checksum,
  l4ChecksumFieldOffset,
  l4PseudoHeaderSum,
  onesSum,
  verifyIpv4HeaderChecksum,
  verifyL4Checksum,
} from '../src/backends/net/inet-checksum.js';

interface FrameSpec {
  version: 4 | 6;
  protocol: number; // 6 TCP, 17 UDP, other
  vlans?: number[]; // TCIs, outer first (first tag 0x88a8 when two)
  ipv4Options?: number; // bytes, multiple of 4
  ipv6Ext?: { type: number; length: number }[]; // generic (length multiple of 8) or 44 (8)
  tcpOptions?: number; // bytes, multiple of 4
  payload?: Uint8Array;
  padding?: number; // bytes after the IP packet
  zeroIpLength?: boolean;
  fragment?: boolean;
}

const SRC4 = [10, 0, 0, 1];
const DST4 = [10, 0, 0, 2];
const SRC6 = Array.from({ length: 16 }, (_, i) => (i === 0 ? 0xfd : i));
const DST6 = Array.from({ length: 16 }, (_, i) => (i === 0 ? 0xfd : 0x80 + i));

/** Builds a frame and reports where each layer starts (independently of the parser). */
function build(spec: FrameSpec): { bytes: Uint8Array; l3: number; l4: number; payload: number; ipEnd: number } {
  const payload = spec.payload ?? new Uint8Array(0);
  const vlans = spec.vlans ?? [];
  const l3 = 14 + vlans.length * 4;
  const extBytes = (spec.ipv6Ext ?? []).reduce((n, e) => n + e.length, 0);
  const ipHeader = spec.version === 4 ? 20 + (spec.ipv4Options ?? 0) : 40 + extBytes;
  const l4Header = spec.protocol === 6 ? 20 + (spec.tcpOptions ?? 0) : spec.protocol === 17 ? 8 : 0;
  const l4 = l3 + ipHeader;
  const ipEnd = l4 + l4Header + payload.length;
  const bytes = new Uint8Array(ipEnd + (spec.padding ?? 0));
  bytes.set([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
  let at = 12;
  vlans.forEach((tci, i) => {
    const tpid = vlans.length === 2 && i === 0 ? 0x88a8 : 0x8100;
    bytes.set([tpid >> 8, tpid & 0xff, tci >> 8, tci & 0xff], at);
    at += 4;
  });
  bytes.set(spec.version === 4 ? [0x08, 0x00] : [0x86, 0xdd], at);
  const view = new DataView(bytes.buffer);
  if (spec.version === 4) {
    bytes[l3] = 0x40 | (ipHeader / 4);
    view.setUint16(l3 + 2, spec.zeroIpLength ? 0 : ipEnd - l3);
    view.setUint16(l3 + 4, 0x1234);
    view.setUint16(l3 + 6, spec.fragment ? 0x2000 : 0x4000);
    bytes[l3 + 8] = 64;
    bytes[l3 + 9] = spec.protocol;
    bytes.set(SRC4, l3 + 12);
    bytes.set(DST4, l3 + 16);
    for (let i = l3 + 20; i < l4; i++) bytes[i] = 1; // NOP options
    fillIpv4HeaderChecksum(bytes, l3, ipHeader);
  } else {
    bytes[l3] = 0x60;
    view.setUint16(l3 + 4, spec.zeroIpLength ? 0 : ipEnd - l3 - 40);
    bytes[l3 + 7] = 64;
    bytes.set(SRC6, l3 + 8);
    bytes.set(DST6, l3 + 24);
    let nextAt = l3 + 6;
    let ext = l3 + 40;
    for (const e of spec.ipv6Ext ?? []) {
      bytes[nextAt] = e.type;
      nextAt = ext;
      if (e.type === 44) {
        if (spec.fragment) view.setUint16(ext + 2, 0x0001); // M flag
      } else {
        bytes[ext + 1] = e.length / 8 - 1;
      }
      ext += e.length;
    }
    bytes[nextAt] = spec.protocol;
  }
  if (spec.protocol === 6) {
    view.setUint16(l4, 40000);
    view.setUint16(l4 + 2, 443);
    view.setUint32(l4 + 4, 0x01020304);
    bytes[l4 + 12] = (l4Header / 4) << 4;
    bytes[l4 + 13] = 0x18;
    view.setUint16(l4 + 14, 65535);
  } else if (spec.protocol === 17) {
    view.setUint16(l4, 5353);
    view.setUint16(l4 + 2, 53);
    view.setUint16(l4 + 4, spec.zeroIpLength ? 0 : l4Header + payload.length);
  }
  bytes.set(payload, l4 + l4Header);
  for (let i = ipEnd; i < bytes.length; i++) bytes[i] = 0xa5;
  return { bytes, l3, l4, payload: l4 + l4Header, ipEnd };
}

const frameSpec: fc.Arbitrary<FrameSpec> = fc.record({
  version: fc.constantFrom(4 as const, 6 as const),
  protocol: fc.constantFrom(6, 17),
  vlans: fc.array(fc.integer({ min: 0, max: 0xffff }), { maxLength: 2 }),
  ipv4Options: fc.integer({ min: 0, max: 10 }).map((n) => n * 4),
  ipv6Ext: fc.array(fc.record({ type: fc.constantFrom(0, 43, 60, 44), length: fc.integer({ min: 1, max: 4 }).map((n) => n * 8) }).map((e) => (e.type === 44 ? { type: 44, length: 8 } : e)), { maxLength: 3 }),
  tcpOptions: fc.integer({ min: 0, max: 10 }).map((n) => n * 4),
  payload: fc.uint8Array({ maxLength: 300 }),
  padding: fc.integer({ min: 0, max: 20 }),
});

function assertInvariants(p: ParsedPacket, length: number): void {
  if (p.kind === PacketKind.Malformed) {
    assert.notEqual(p.failure, ParseFailure.None);
    return;
  }
  assert.equal(p.failure, ParseFailure.None);
  assert.ok(p.l3Offset >= 14 && p.l3Offset <= length);
  if (p.kind === PacketKind.NotIp) return;
  assert.ok(p.l3Offset + p.l3HeaderLength === p.l4Offset);
  assert.ok(p.l4Offset <= p.ipEnd && p.ipEnd <= length);
  if (p.kind === PacketKind.Tcp || p.kind === PacketKind.Udp) {
    assert.equal(p.l4Offset + p.l4HeaderLength, p.payloadOffset);
    assert.ok(p.payloadLength >= 0 && p.l4End <= p.ipEnd);
  }
}

describe('packet parser', () => {
  const p = new ParsedPacket();

  test('TCP and UDP over IPv4 and IPv6, tagged or not, with options and padding', () => {
    for (const version of [4, 6] as const) {
      for (const protocol of [6, 17]) {
        for (const vlans of [[], [0x2005], [0x0064, 0x3007]]) {
          const spec: FrameSpec = { version, protocol, vlans, ipv4Options: 8, tcpOptions: 12, payload: new Uint8Array(33).fill(7), padding: 9 };
          const f = build(spec);
          assert.equal(parsePacket(f.bytes, 0, f.bytes.length, p), protocol === 6 ? PacketKind.Tcp : PacketKind.Udp);
          assert.equal(p.ipVersion, version);
          assert.equal(p.vlanCount, vlans.length);
          assert.equal(p.vlanTci, vlans.length ? vlans[0] : -1);
          assert.equal(p.etherType, version === 4 ? 0x0800 : 0x86dd);
          assert.equal(p.l3Offset, f.l3);
          assert.equal(p.l4Offset, f.l4);
          assert.equal(p.payloadOffset, f.payload);
          assert.equal(p.payloadLength, 33);
          assert.equal(p.ipEnd, f.ipEnd);
          assert.equal(p.l4Protocol, protocol);
          assert.equal(p.srcPort, protocol === 6 ? 40000 : 5353);
          assert.equal(p.dstPort, protocol === 6 ? 443 : 53);
          assert.equal(p.tcpFlags, protocol === 6 ? 0x18 : 0);
          assert.equal(p.isFragment, false);
          assert.equal(p.ipLengthFromFrame, false);
        }
      }
    }
  });

  test('IPv6 extension headers are skipped; a real fragment stops at the fragment header', () => {
    const exts = [
      { type: 0, length: 8 },
      { type: 60, length: 24 },
      { type: 44, length: 8 },
      { type: 43, length: 16 },
    ];
    const f = build({ version: 6, protocol: 6, ipv6Ext: exts, payload: new Uint8Array(10) });
    assert.equal(parsePacket(f.bytes, 0, f.bytes.length, p), PacketKind.Tcp);
    assert.equal(p.l4Offset, f.l4);
    assert.equal(p.l3HeaderLength, 40 + 56);
    const fragment = build({ version: 6, protocol: 6, ipv6Ext: [{ type: 44, length: 8 }], fragment: true, payload: new Uint8Array(10) });
    assert.equal(parsePacket(fragment.bytes, 0, fragment.bytes.length, p), PacketKind.OtherIp);
    assert.equal(p.isFragment, true);
    assert.equal(p.l4Protocol, 6);
    const v4fragment = build({ version: 4, protocol: 17, fragment: true, payload: new Uint8Array(10) });
    assert.equal(parsePacket(v4fragment.bytes, 0, v4fragment.bytes.length, p), PacketKind.OtherIp);
    assert.equal(p.isFragment, true);
  });

  test('an LSO frame with zeroed IP lengths extends to the frame end', () => {
    for (const version of [4, 6] as const) {
      const f = build({ version, protocol: 6, payload: new Uint8Array(3000), zeroIpLength: true });
      assert.equal(parsePacket(f.bytes, 0, f.bytes.length, p), PacketKind.Tcp);
      assert.equal(p.ipLengthFromFrame, true);
      assert.equal(p.payloadLength, 3000);
      assert.equal(p.ipEnd, f.bytes.length);
    }
  });

  test('ICMP is OtherIp, ARP is NotIp, and the result object is fully reset between calls', () => {
    const icmp = build({ version: 4, protocol: 1, payload: new Uint8Array(8) });
    const tcp = build({ version: 4, protocol: 6, vlans: [5] });
    parsePacket(tcp.bytes, 0, tcp.bytes.length, p);
    assert.equal(parsePacket(icmp.bytes, 0, icmp.bytes.length, p), PacketKind.OtherIp);
    assert.equal(p.l4Protocol, 1);
    assert.equal(p.srcPort, 0);
    assert.equal(p.vlanCount, 0);
    assert.equal(p.tcpFlags, 0);
    const arp = new Uint8Array(42);
    arp[12] = 0x08;
    arp[13] = 0x06;
    assert.equal(parsePacket(arp, 0, arp.length, p), PacketKind.NotIp);
    assert.equal(p.etherType, 0x0806);
    assert.equal(p.ipVersion, 0);
  });

  test('each kind of inconsistency has its own failure', () => {
    const expectFailure = (bytes: Uint8Array, failure: ParseFailure, length = bytes.length): void => {
      assert.equal(parsePacket(bytes, 0, length, p), PacketKind.Malformed);
      assert.equal(p.failure, failure);
    };
    expectFailure(new Uint8Array(13), ParseFailure.TruncatedEthernet);
    expectFailure(new Uint8Array(10), ParseFailure.BadBounds, 11);
    const tagged = build({ version: 4, protocol: 6, vlans: [1] }).bytes;
    expectFailure(tagged, ParseFailure.BadVlan, 16);
    const threeTags = new Uint8Array(60);
    for (const at of [12, 16, 20, 24]) threeTags.set([0x81, 0x00], at);
    expectFailure(threeTags, ParseFailure.BadVlan);

    const v4 = build({ version: 4, protocol: 6, payload: new Uint8Array(4) });
    expectFailure(v4.bytes, ParseFailure.BadIpv4, 14 + 19);
    const badVersion = v4.bytes.slice();
    badVersion[14] = 0x55;
    expectFailure(badVersion, ParseFailure.BadIpv4);
    const badIhl = v4.bytes.slice();
    badIhl[14] = 0x44;
    expectFailure(badIhl, ParseFailure.BadIpv4);
    const longTotal = v4.bytes.slice();
    longTotal[17] += 1;
    expectFailure(longTotal, ParseFailure.BadIpv4);
    const shortTotal = v4.bytes.slice();
    shortTotal[16] = 0;
    shortTotal[17] = 19;
    expectFailure(shortTotal, ParseFailure.BadIpv4);
    const badTcp = v4.bytes.slice();
    badTcp[34 + 12] = 0x40;
    expectFailure(badTcp, ParseFailure.BadTcp);
    const longTcp = v4.bytes.slice();
    longTcp[34 + 12] = 0x70; // 28 bytes > 24 available
    expectFailure(longTcp, ParseFailure.BadTcp);

    const udp = build({ version: 4, protocol: 17, payload: new Uint8Array(4) });
    const badUdp = udp.bytes.slice();
    badUdp[34 + 5] = 7;
    expectFailure(badUdp, ParseFailure.BadUdp);
    badUdp[34 + 5] = 13;
    expectFailure(badUdp, ParseFailure.BadUdp);
    badUdp[34 + 5] = 0;
    expectFailure(badUdp, ParseFailure.BadUdp);

    const v6 = build({ version: 6, protocol: 6, ipv6Ext: [{ type: 0, length: 8 }] });
    expectFailure(v6.bytes, ParseFailure.BadIpv6, 14 + 39);
    const badPayloadLength = v6.bytes.slice();
    badPayloadLength[19] += 1;
    expectFailure(badPayloadLength, ParseFailure.BadIpv6);
    const longExt = v6.bytes.slice();
    longExt[55] = 10;
    expectFailure(longExt, ParseFailure.BadExtensionHeader);
    const manyExt = build({ version: 6, protocol: 6, ipv6Ext: new Array(9).fill({ type: 60, length: 8 }) });
    expectFailure(manyExt.bytes, ParseFailure.BadExtensionHeader);
  });

  test('fuzz: arbitrary bytes at arbitrary offsets never throw and stay inside the frame', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), fc.nat(8), fc.nat(220), (bytes, offset, length) => {
        const kind = parsePacket(bytes, offset, length, p);
        if (offset + length > bytes.length) assert.equal(p.failure, ParseFailure.BadBounds);
        else assertInvariants(p, length);
        assert.equal(kind, p.kind);
      }),
      { numRuns: 2000 },
    );
  });

  test('fuzz: valid frames parse exactly; mutated or truncated ones stay consistent', () => {
    fc.assert(
      fc.property(frameSpec, fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }), fc.nat(), (spec, mutations, cut) => {
        const f = build(spec);
        assert.equal(parsePacket(f.bytes, 0, f.bytes.length, p), spec.protocol === 6 ? PacketKind.Tcp : PacketKind.Udp);
        assert.equal(p.payloadOffset, f.payload);
        assert.equal(p.l4End, f.ipEnd);
        const mutated = f.bytes.slice();
        for (const [at, value] of mutations) mutated[at % mutated.length] = value;
        const length = cut % (mutated.length + 1);
        parsePacket(mutated, 0, length, p);
        assertInvariants(p, length);
      }),
      { numRuns: 1000 },
    );
  });
});

/** RFC 1071 style reference: add each word with end-around carry immediately. */
function referenceSum(bytes: Uint8Array, from = 0, to = bytes.length): number {
  let sum = 0;
  for (let i = from; i < to; i += 2) {
    sum += (bytes[i]! << 8) | (i + 1 < to ? bytes[i + 1]! : 0);
    sum = (sum & 0xffff) + (sum >>> 16);
  }
  return sum;
}

describe('Internet checksum', () => {
  const p = new ParsedPacket();

  test('RFC 1071 example and a known IPv4 header', () => {
    const rfc = Uint8Array.from([0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
    assert.equal(foldSum(onesSum(rfc, 0, 8)), 0xddf2);
    assert.equal(finishChecksum(onesSum(rfc, 0, 8)), 0x220d);
    const header = Uint8Array.from([0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7]);
    assert.equal(ipv4HeaderChecksum(header, 0, 20), 0xb861);
    assert.ok(verifyIpv4HeaderChecksum(header, 0, 20));
    header[10] = 0;
    header[11] = 0;
    assert.ok(!verifyIpv4HeaderChecksum(header, 0, 20));
    fillIpv4HeaderChecksum(header, 0, 20);
    assert.equal((header[10]! << 8) | header[11]!, 0xb861);
  });

  test('known UDP/IPv4 and TCP/IPv6 packets (values computed by hand, independently)', () => {
    const udp = build({ version: 4, protocol: 17, payload: new TextEncoder().encode('hello') });
    udp.bytes.set([192, 168, 0, 1, 192, 168, 0, 199], udp.l3 + 12);
    new DataView(udp.bytes.buffer).setUint16(udp.l3 + 4, 0x1c46);
    new DataView(udp.bytes.buffer).setUint16(udp.l4, 1234);
    new DataView(udp.bytes.buffer).setUint16(udp.l4 + 2, 5678);
    fillIpv4HeaderChecksum(udp.bytes, udp.l3, 20);
    assert.equal(ipv4HeaderChecksum(udp.bytes, udp.l3, 20), 0x9c6d);
    assert.equal(parsePacket(udp.bytes, 0, udp.bytes.length, p), PacketKind.Udp);
    assert.equal(verifyL4Checksum(udp.bytes, 0, p), L4Checksum.Absent);
    assert.ok(fillL4Checksum(udp.bytes, 0, p));
    assert.equal((udp.bytes[udp.l4 + 6]! << 8) | udp.bytes[udp.l4 + 7]!, 0x1ee9);
    assert.equal(verifyL4Checksum(udp.bytes, 0, p), L4Checksum.Valid);

    const tcp = build({ version: 6, protocol: 6, payload: new TextEncoder().encode('GET /\r\n') });
    tcp.bytes.set([0x20, 0x01, 0x0d, 0xb8, ...new Array(11).fill(0), 1, 0x20, 0x01, 0x0d, 0xb8, ...new Array(11).fill(0), 2], tcp.l3 + 8);
    const v = new DataView(tcp.bytes.buffer);
    v.setUint16(tcp.l4 + 2, 80);
    v.setUint32(tcp.l4 + 4, 1);
    assert.equal(parsePacket(tcp.bytes, 0, tcp.bytes.length, p), PacketKind.Tcp);
    assert.equal(p.l4End - p.l4Offset, 27); // odd length: the zero-padded tail
    assert.ok(fillL4Checksum(tcp.bytes, 0, p));
    assert.equal(v.getUint16(tcp.l4 + 16), 0xe34c);
    assert.equal(verifyL4Checksum(tcp.bytes, 0, p), L4Checksum.Valid);
  });

  test('sums agree with the RFC 1071 reference, and chunked sums (odd splits too) with whole ones', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), fc.array(fc.nat(600), { maxLength: 5 }), (bytes, cuts) => {
        const whole = foldSum(onesSum(bytes, 0, bytes.length));
        assert.equal(whole, referenceSum(bytes));
        const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
        let running = 0;
        let from = 0;
        for (const to of [...points, bytes.length]) {
          running = addChunkSum(running, onesSum(bytes, from, to - from), from % 2 === 1);
          from = to;
        }
        // 0 and 0xffff are the same ones-complement value.
        assert.equal(foldSum(running) % 0xffff, whole % 0xffff);
      }),
    );
  });

  test('property: a filled checksum verifies; any one changed byte is caught', () => {
    fc.assert(
      fc.property(frameSpec, fc.nat(), fc.integer({ min: 1, max: 255 }), (spec, where, delta) => {
        const f = build(spec);
        assert.notEqual(parsePacket(f.bytes, 0, f.bytes.length, p), PacketKind.Malformed);
        assert.ok(fillL4Checksum(f.bytes, 0, p));
        assert.equal(verifyL4Checksum(f.bytes, 0, p), L4Checksum.Valid);
        if (p.ipVersion === 4) assert.ok(verifyIpv4HeaderChecksum(f.bytes, p.l3Offset, p.l3HeaderLength));
        // Change one byte the checksum covers (the pseudo-header addresses, or the L4 bytes).
        const covered = [...Array.from({ length: p.ipVersion === 4 ? 8 : 32 }, (_, i) => p.l3Offset + (p.ipVersion === 4 ? 12 : 8) + i)];
        for (let i = p.l4Offset; i < p.l4End; i++) covered.push(i);
        const at = covered[where % covered.length]!;
        const changed = f.bytes.slice();
        changed[at] = (changed[at]! + delta) & 0xff;
        const verdict = verifyL4Checksum(changed, 0, p);
        if (!(spec.protocol === 17 && spec.version === 4 && changed[p.l4Offset + 6] === 0 && changed[p.l4Offset + 7] === 0)) {
          assert.equal(verdict, L4Checksum.Invalid);
        }
      }),
      { numRuns: 500 },
    );
  });

  test('a partial checksum (pseudo-header sum left by the guest) is finished to the same value', () => {
    fc.assert(
      fc.property(frameSpec, fc.nat(8), (spec, offset) => {
        const f = build(spec);
        const buf = new Uint8Array(f.bytes.length + offset + 3);
        buf.set(f.bytes, offset);
        assert.notEqual(parsePacket(buf, offset, f.bytes.length, p), PacketKind.Malformed);
        assert.ok(fillL4Checksum(buf, offset, p));
        const field = offset + p.l4Offset + l4ChecksumFieldOffset(p.l4Protocol);
        const expected = (buf[field]! << 8) | buf[field + 1]!;
        // What Linux leaves: ~csum_tcpudp_magic(..., len, ...), the folded pseudo sum.
        const pseudo = foldSum(l4PseudoHeaderSum(buf, offset, p));
        buf[field] = pseudo >> 8;
        buf[field + 1] = pseudo & 0xff;
        assert.ok(fillPartialChecksum(buf, offset, p.l4End, p.l4Offset, l4ChecksumFieldOffset(p.l4Protocol)));
        assert.equal((buf[field]! << 8) | buf[field + 1]!, expected);
        assert.equal(verifyL4Checksum(buf, offset, p), L4Checksum.Valid);
      }),
      { numRuns: 300 },
    );
  });

  test('fillPartialChecksum refuses positions outside the frame and writes nothing', () => {
    const buf = new Uint8Array(100).fill(9);
    const copy = buf.slice();
    assert.equal(fillPartialChecksum(buf, 0, 100, 90, 9), false);
    assert.equal(fillPartialChecksum(buf, 0, 101, 34, 16), false);
    assert.equal(fillPartialChecksum(buf, 10, 95, 34, 16), false);
    assert.equal(fillPartialChecksum(buf, 0, 100, -1, 16), false);
    assert.equal(fillPartialChecksum(buf, 0, 100, 34, -16), false);
    assert.equal(fillPartialChecksum(buf, 0, 100, 34.5, 16), false);
    assert.deepEqual(buf, copy);
    assert.equal(fillPartialChecksum(buf, 0, 100, 34, 16), true);
    fc.assert(
      fc.property(fc.integer({ min: -5, max: 120 }), fc.integer({ min: -5, max: 120 }), fc.integer({ min: -5, max: 120 }), fc.integer({ min: -5, max: 120 }), (frameOffset, end, start, off) => {
        const b = new Uint8Array(100);
        const ok = fillPartialChecksum(b, frameOffset, end, start, off);
        if (ok) assert.ok(frameOffset >= 0 && frameOffset + end <= 100 && start >= 0 && off >= 0 && start + off + 2 <= end);
      }),
    );
  });

  test('non-TCP/UDP packets are not checksummed', () => {
    const icmp = build({ version: 4, protocol: 1, payload: new Uint8Array(8) });
    parsePacket(icmp.bytes, 0, icmp.bytes.length, p);
    assert.equal(fillL4Checksum(icmp.bytes, 0, p), false);
    assert.equal(verifyL4Checksum(icmp.bytes, 0, p), L4Checksum.NotApplicable);
  });
});
