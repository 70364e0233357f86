// The RSS hash and indirection table: the table-driven Toeplitz hash reproduces every
// vector of Microsoft's "Verifying the RSS Hash Calculation" (IPv4/IPv6, with and without
// TCP ports) with the default key, agrees bit for bit with a naive definition for random
// keys and inputs, picks the tuple NDIS picks from a parsed frame; the indirection table
// accepts only entries naming existing channels and maps hashes by their low bits.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { LINUX_HASH_INFO, MICROSOFT_RSS_KEY, NdisHash, NO_HASH, RSS_HASH_KEY_SIZE, ToeplitzHash } from '../src/devices/netvsp/toeplitz.js';
import { RssIndirectionTable, RssTableError } from '../src/devices/netvsp/rss-table.js';
import { PacketKind, parsePacket, ParsedPacket } from '../src/backends/net/packet-parse.js';

function hexKey(hex: string): Uint8Array {
  return Uint8Array.from(hex.match(/../g)!.map((h) => parseInt(h, 16)));
}

function ipv4(text: string): number[] {
  return text.split('.').map(Number);
}

function ipv6(text: string): number[] {
  const [head, tail] = text.includes('::') ? text.split('::') : [text, undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...new Array<string>(8 - h.length - t.length).fill('0'), ...t];
  assert.equal(groups.length, 8);
  return groups.flatMap((g) => {
    const v = parseInt(g, 16);
    return [v >> 8, v & 0xff];
  });
}

function port(p: number): number[] {
  return [p >> 8, p & 0xff];
}

/** Microsoft's table: destination, source, hash without ports, hash with TCP ports. */
const V4_VECTORS: [string, number, string, number, number, number][] = [
  ['161.142.100.80', 1766, '66.9.149.187', 2794, 0x323e8fc2, 0x51ccc178],
  ['65.69.140.83', 4739, '199.92.111.2', 14230, 0xd718262a, 0xc626b0ea],
  ['12.22.207.184', 38024, '24.19.198.95', 12898, 0xd2d0a5de, 0x5c2b394a],
  ['209.142.163.6', 2217, '38.27.205.30', 48228, 0x82989176, 0xafc7327f],
  ['202.188.127.2', 1303, '153.39.163.191', 44251, 0x5d1809c5, 0x10e828a2],
];
const V6_VECTORS: [string, number, string, number, number, number][] = [
  ['3ffe:2501:200:3::1', 1766, '3ffe:2501:200:1fff::7', 2794, 0x2cc18cd5, 0x40207d3d],
  ['ff02::1', 4739, '3ffe:501:8::260:97ff:fe40:efab', 14230, 0x0f0c461c, 0xdde51bbf],
  ['fe80::200:f8ff:fe21:67cf', 38024, '3ffe:1900:4545:3:200:f8ff:fe21:67cf', 44251, 0x4b61e985, 0x02d1feef],
];

/** The definition: for each input bit set, XOR in the 32 key bits starting at that bit. */
function naiveToeplitz(key: Uint8Array, input: Uint8Array): number {
  let result = 0;
  for (let bit = 0; bit < input.length * 8; bit++) {
    if ((input[bit >> 3]! >> (7 - (bit & 7))) & 1) {
      let window = 0;
      for (let k = 0; k < 32; k++) {
        const kb = bit + k;
        window = (window << 1) | ((key[kb >> 3]! >> (7 - (kb & 7))) & 1);
      }
      result ^= window;
    }
  }
  return result >>> 0;
}

/** An Ethernet + IP + TCP/UDP frame (checksums not filled: RSS does not look at them). */
function frame(version: 4 | 6, src: number[], dst: number[], protocol: number, sport: number, dport: number, fragment = false): Uint8Array {
  const l4 = protocol === 6 ? 20 : 8;
  const ipHeader = version === 4 ? 20 : 40;
  const b = new Uint8Array(14 + ipHeader + l4 + 4);
  b[12] = version === 4 ? 0x08 : 0x86;
  b[13] = version === 4 ? 0x00 : 0xdd;
  if (version === 4) {
    b[14] = 0x45;
    b[16] = 0;
    b[17] = ipHeader + l4 + 4;
    if (fragment) b[20] = 0x20; // MF
    b[22] = 64;
    b[23] = protocol;
    b.set(src, 26);
    b.set(dst, 30);
  } else {
    b[14] = 0x60;
    b[19] = l4 + 4;
    b[20] = protocol;
    b[21] = 64;
    b.set(src, 22);
    b.set(dst, 38);
  }
  const at = 14 + ipHeader;
  b.set([...port(sport), ...port(dport)], at);
  if (protocol === 6) b[at + 12] = 0x50;
  else b[at + 5] = l4 + 4;
  return b;
}

describe('Toeplitz hash', () => {
  const hasher = new ToeplitzHash();

  test('the default key is the one Microsoft documents', () => {
    assert.deepEqual(hasher.keyBytes(), hexKey('6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa'));
    assert.deepEqual(new Uint8Array(MICROSOFT_RSS_KEY), hasher.keyBytes());
  });

  test('IPv4 vectors (addresses only, and with TCP ports)', () => {
    for (const [dst, dport, src, sport, ipOnly, withTcp] of V4_VECTORS) {
      const input = Uint8Array.from([...ipv4(src), ...ipv4(dst), ...port(sport), ...port(dport)]);
      assert.equal(hasher.hash(input, 0, 8), ipOnly, `${src} -> ${dst}`);
      assert.equal(hasher.hash(input, 0, 12), withTcp, `${src}:${sport} -> ${dst}:${dport}`);
    }
  });

  test('IPv6 vectors (addresses only, and with TCP ports)', () => {
    for (const [dst, dport, src, sport, ipOnly, withTcp] of V6_VECTORS) {
      const input = Uint8Array.from([...ipv6(src), ...ipv6(dst), ...port(sport), ...port(dport)]);
      assert.equal(hasher.hash(input, 0, 32), ipOnly, `${src} -> ${dst}`);
      assert.equal(hasher.hash(input, 0, 36), withTcp, `[${src}]:${sport} -> [${dst}]:${dport}`);
    }
  });

  test('the same vectors from parsed frames with the hash types Linux requests', () => {
    const parsed = new ParsedPacket();
    for (const [dst, dport, src, sport, ipOnly, withTcp] of V4_VECTORS) {
      const tcp = frame(4, ipv4(src), ipv4(dst), 6, sport, dport);
      assert.equal(parsePacket(tcp, 0, tcp.length, parsed), PacketKind.Tcp);
      assert.equal(hasher.hashPacket(tcp, 0, parsed, LINUX_HASH_INFO), withTcp);
      // UDP is not in Linux's hash types: the 2-tuple; with UdpIpv4 enabled: the 4-tuple.
      const udp = frame(4, ipv4(src), ipv4(dst), 17, sport, dport);
      assert.equal(parsePacket(udp, 0, udp.length, parsed), PacketKind.Udp);
      assert.equal(hasher.hashPacket(udp, 0, parsed, LINUX_HASH_INFO), ipOnly);
      assert.equal(hasher.hashPacket(udp, 0, parsed, LINUX_HASH_INFO | NdisHash.UdpIpv4), withTcp);
      // A fragment never uses ports.
      const fragment = frame(4, ipv4(src), ipv4(dst), 6, sport, dport, true);
      assert.equal(parsePacket(fragment, 0, fragment.length, parsed), PacketKind.OtherIp);
      assert.equal(hasher.hashPacket(fragment, 0, parsed, LINUX_HASH_INFO), ipOnly);
      // With the hash type off there is no hash.
      assert.equal(hasher.hashPacket(udp, 0, parsed, NdisHash.FunctionToeplitz | NdisHash.TcpIpv4), NO_HASH);
    }
    for (const [dst, dport, src, sport, ipOnly, withTcp] of V6_VECTORS) {
      const f = frame(6, ipv6(src), ipv6(dst), 6, sport, dport);
      // At an offset inside a larger buffer, to check the frame-relative offsets.
      const big = new Uint8Array(f.length + 7).fill(0xee);
      big.set(f, 3);
      assert.equal(parsePacket(big, 3, f.length, parsed), PacketKind.Tcp);
      assert.equal(hasher.hashPacket(big, 3, parsed, LINUX_HASH_INFO), withTcp);
      assert.equal(hasher.hashPacket(big, 3, parsed, NdisHash.FunctionToeplitz | NdisHash.Ipv6), ipOnly);
    }
    const arp = new Uint8Array(60);
    arp[12] = 0x08;
    arp[13] = 0x06;
    assert.equal(parsePacket(arp, 0, arp.length, parsed), PacketKind.NotIp);
    assert.equal(hasher.hashPacket(arp, 0, parsed, LINUX_HASH_INFO), NO_HASH);
  });

  test('agrees with the bitwise definition for random keys and inputs, also split in two pieces', () => {
    const h = new ToeplitzHash();
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 40, maxLength: 40 }), fc.uint8Array({ minLength: 0, maxLength: 36 }), fc.nat(36), (key, input, cut) => {
        assert.ok(h.setKey(key, 0, key.length));
        const expected = naiveToeplitz(key, input);
        assert.equal(h.hash(input, 0, input.length), expected);
        const a = Math.min(cut, input.length);
        assert.equal(h.hash2(input, 0, a, a, input.length - a), expected);
      }),
      { numRuns: 300 },
    );
  });

  test('setKey refuses anything but 40 bytes inside the buffer and keeps the old key', () => {
    const h = new ToeplitzHash();
    const key = new Uint8Array(64).fill(1);
    assert.equal(h.setKey(key, 0, 39), false);
    assert.equal(h.setKey(key, 0, 52), false);
    assert.equal(h.setKey(key, 30, 40), false);
    assert.equal(h.setKey(key, -1, 40), false);
    assert.deepEqual(h.keyBytes(), new Uint8Array(MICROSOFT_RSS_KEY));
    assert.ok(h.setKey(key, 24, RSS_HASH_KEY_SIZE));
    assert.deepEqual(h.keyBytes(), new Uint8Array(40).fill(1));
    assert.throws(() => h.hash(new Uint8Array(37), 0, 37), RangeError);
  });
});

function u32le(values: number[]): Uint8Array {
  const b = new Uint8Array(values.length * 4);
  const v = new DataView(b.buffer);
  values.forEach((x, i) => v.setUint32(i * 4, x, true));
  return b;
}

describe('RSS indirection table', () => {
  test('starts with everything on the primary channel', () => {
    const t = new RssIndirectionTable();
    assert.equal(t.queueFor(0xffffffff), 0);
    assert.equal(t.queueFor(NO_HASH), 0);
  });

  test('Linux-style round-robin tables map a hash by its low bits', () => {
    const t = new RssIndirectionTable();
    for (const entries of [16, 128, 256]) {
      const values = Array.from({ length: entries }, (_, i) => i % 3);
      assert.equal(t.load(u32le(values), 0, entries * 4, 3), RssTableError.None);
      assert.equal(t.entryCount, entries);
      for (const hash of [0, 1, 2, 15, 16, 0x51ccc178, 0xffffffff, 0x80000000]) {
        assert.equal(t.queueFor(hash), values[hash % entries]);
        assert.equal(t.queueFor(hash), values[(hash >>> 0) & (entries - 1)]);
      }
    }
  });

  test('a non-power-of-two size uses the remainder', () => {
    const t = new RssIndirectionTable();
    assert.equal(t.load(u32le([0, 1, 2]), 0, 12, 3), RssTableError.None);
    assert.equal(t.queueFor(4), 1);
    assert.equal(t.queueFor(0xffffffff), 0xffffffff % 3);
  });

  test('rejects bad tables and keeps the previous one', () => {
    const t = new RssIndirectionTable();
    assert.equal(t.spreadEvenly(128, 2), RssTableError.None);
    assert.equal(t.load(u32le([0, 1, 2, 1]), 0, 16, 2), RssTableError.EntryOutOfRange);
    assert.equal(t.load(u32le([0, 1]), 0, 6, 2), RssTableError.BadBounds);
    assert.equal(t.load(u32le([0, 1]), 4, 8, 2), RssTableError.BadBounds);
    assert.equal(t.load(u32le([]), 0, 0, 2), RssTableError.BadCount);
    assert.equal(t.load(u32le(new Array<number>(257).fill(0)), 0, 257 * 4, 2), RssTableError.BadCount);
    assert.equal(t.load(u32le([0]), 0, 4, 0), RssTableError.BadChannelCount);
    assert.equal(t.load(u32le([0xffffffff]), 0, 4, 4), RssTableError.EntryOutOfRange);
    assert.equal(t.entryCount, 128);
    assert.equal(t.queueFor(5), 1);
    assert.equal(t.fitsChannels(2), true);
    assert.equal(t.fitsChannels(1), false);
    assert.equal(t.highestChannel(), 1);
  });

  test('any input either loads a table whose entries are all below the channel count, or leaves the old one', () => {
    const t = new RssIndirectionTable();
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 1100 }), fc.integer({ min: -4, max: 1200 }), fc.integer({ min: -4, max: 1200 }), fc.integer({ min: -1, max: 70 }), (bytes, offset, length, channels) => {
        t.spreadEvenly(16, 1);
        const result = t.load(bytes, offset, length, channels);
        if (result === RssTableError.None) {
          assert.equal(t.entryCount, length / 4);
          assert.ok(t.highestChannel() < channels);
        } else {
          assert.equal(t.entryCount, 16);
          assert.equal(t.highestChannel(), 0);
        }
      }),
    );
  });

  test('two flows with the default key and a 2-channel table land on different channels', () => {
    // The Microsoft TCP vectors, as a sanity check that RSS spreads at all.
    const h = new ToeplitzHash();
    const t = new RssIndirectionTable();
    t.spreadEvenly(128, 2);
    const queues = new Set<number>();
    for (const [dst, dport, src, sport] of V4_VECTORS) {
      const input = Uint8Array.from([...ipv4(src), ...ipv4(dst), ...port(sport), ...port(dport)]);
      queues.add(t.queueFor(h.hash(input, 0, 12)));
    }
    assert.equal(queues.size, 2);
  });
});
