// The Toeplitz hash, as Windows (and so Hyper-V's vRSS) computes it to spread received
// flows over queues. For every set bit of the input (most significant bit of the first
// byte first), the hash XORs in the 32 bits of the secret key that start at that bit
// position. The input is the source address, destination address, then for TCP (and UDP
// when enabled) the source and destination ports, all in network byte order, exactly as
// they sit in the packet.
//
// Per-key tables make a hash one table lookup and XOR per input byte, with no
// allocation: table[i*256 + b] is the XOR of the key windows selected by the bits of
// byte value b at input position i. A 40-byte key allows 36 input bytes, which is the
// largest tuple (IPv6 + ports).
import { PacketKind, type ParsedPacket } from '../../backends/net/packet-parse.js';

export const RSS_HASH_KEY_SIZE = 40;
/** Input bytes a 40-byte key covers (each input bit needs 32 key bits from its position). */
export const RSS_MAX_INPUT = RSS_HASH_KEY_SIZE - 4;

/** The default key of Microsoft's RSS documentation ("Verifying the RSS Hash Calculation"), also Hyper-V's and many NICs'. */
export const MICROSOFT_RSS_KEY: Readonly<Uint8Array> = Uint8Array.from([
  0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0, 0xd0, 0xca, 0x2b, 0xcb,
  0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
]);

/** NDIS hash-information bits (NDIS_RECEIVE_SCALE_PARAMETERS.HashInformation). Linux sets 0x1701. */
export const NdisHash = {
  FunctionToeplitz: 0x0000_0001,
  Ipv4: 0x0000_0100,
  TcpIpv4: 0x0000_0200,
  Ipv6: 0x0000_0400,
  Ipv6Ex: 0x0000_0800,
  TcpIpv6: 0x0000_1000,
  TcpIpv6Ex: 0x0000_2000,
  UdpIpv4: 0x0000_4000,
  UdpIpv6: 0x0000_8000,
  UdpIpv6Ex: 0x0001_0000,
} as const;
/** What Linux's netvsc asks for: Toeplitz over IPv4/IPv6 addresses, plus ports for TCP. */
export const LINUX_HASH_INFO = NdisHash.FunctionToeplitz | NdisHash.Ipv4 | NdisHash.TcpIpv4 | NdisHash.Ipv6 | NdisHash.TcpIpv6;

/** A hash result meaning "no hash type applies" (non-IP frame, or the type is not enabled). */
export const NO_HASH = -1;

export class ToeplitzHash {
  private readonly table = new Uint32Array(RSS_MAX_INPUT * 256);
  private readonly key = new Uint8Array(RSS_HASH_KEY_SIZE);

  constructor(key: Uint8Array = MICROSOFT_RSS_KEY as Uint8Array) {
    if (!this.setKey(key, 0, key.length)) throw new RangeError(`an RSS key is ${RSS_HASH_KEY_SIZE} bytes`);
  }

  /** The current key (a copy the caller may keep). */
  keyBytes(): Uint8Array {
    return this.key.slice();
  }

  /** Installs a key from buf[offset .. offset+length); false (key unchanged) unless exactly 40 bytes inside buf. */
  setKey(buf: Uint8Array, offset: number, length: number): boolean {
    if (length !== RSS_HASH_KEY_SIZE || !Number.isInteger(offset) || offset < 0 || offset + length > buf.length) return false;
    const key = this.key;
    for (let i = 0; i < RSS_HASH_KEY_SIZE; i++) key[i] = buf[offset + i]!;
    const table = this.table;
    for (let position = 0; position < RSS_MAX_INPUT; position++) {
      const base = position * 256;
      // Windows of the key for the 8 bits of this byte, MSB (j = 0) first.
      const head = ((key[position]! << 24) | (key[position + 1]! << 16) | (key[position + 2]! << 8) | key[position + 3]!) >>> 0;
      const next = key[position + 4]!;
      table[base] = 0;
      for (let value = 1; value < 256; value++) {
        const low = value & -value; // lowest set bit: input bit j where low = 0x80 >> j
        const j = 7 - (31 - Math.clz32(low));
        const window = j === 0 ? head : ((head << j) | (next >>> (8 - j))) >>> 0;
        table[base + value] = (table[base + (value & (value - 1))]! ^ window) >>> 0;
      }
    }
    return true;
  }

  /** Hash of buf[offset .. offset+length) (length <= 36). */
  hash(buf: Uint8Array, offset: number, length: number): number {
    return this.continueHash(0, 0, buf, offset, length) >>> 0;
  }

  /** Hash of two concatenated pieces: the addresses and the ports are not adjacent in a packet. */
  hash2(buf: Uint8Array, offsetA: number, lengthA: number, offsetB: number, lengthB: number): number {
    return this.continueHash(this.continueHash(0, 0, buf, offsetA, lengthA), lengthA, buf, offsetB, lengthB) >>> 0;
  }

  private continueHash(hash: number, position: number, buf: Uint8Array, offset: number, length: number): number {
    if (position + length > RSS_MAX_INPUT) throw new RangeError(`Toeplitz input longer than ${RSS_MAX_INPUT} bytes`);
    const table = this.table;
    for (let i = 0; i < length; i++) hash ^= table[((position + i) << 8) | buf[offset + i]!]!;
    return hash;
  }

  /**
   * The RSS hash of a parsed frame as NDIS computes it for `hashInfo` (NdisHash bits):
   * the 4-tuple for TCP (and UDP when its type is enabled) unless the packet is a
   * fragment, else the 2-tuple of addresses if that type is enabled, else NO_HASH.
   * IPv6 uses the fixed header's addresses (the _EX types' home-address/routing
   * substitutions are not implemented; Linux does not request them).
   */
  hashPacket(buf: Uint8Array, frameOffset: number, parsed: ParsedPacket, hashInfo: number): number {
    const kind = parsed.kind;
    if (kind !== PacketKind.Tcp && kind !== PacketKind.Udp && kind !== PacketKind.OtherIp) return NO_HASH;
    const l3 = frameOffset + parsed.l3Offset;
    const l4 = frameOffset + parsed.l4Offset;
    // Fragments never get ports (parsePacket reports them as OtherIp), so every fragment of a flow hashes alike.
    const fourTuple = !parsed.isFragment;
    if (parsed.ipVersion === 4) {
      if (fourTuple && ((kind === PacketKind.Tcp && hashInfo & NdisHash.TcpIpv4) || (kind === PacketKind.Udp && hashInfo & NdisHash.UdpIpv4))) {
        return this.hash2(buf, l3 + 12, 8, l4, 4);
      }
      return hashInfo & NdisHash.Ipv4 ? this.hash(buf, l3 + 12, 8) : NO_HASH;
    }
    if (parsed.ipVersion === 6) {
      if (fourTuple && ((kind === PacketKind.Tcp && hashInfo & NdisHash.TcpIpv6) || (kind === PacketKind.Udp && hashInfo & NdisHash.UdpIpv6))) {
        return this.hash2(buf, l3 + 8, 32, l4, 4);
      }
      return hashInfo & NdisHash.Ipv6 ? this.hash(buf, l3 + 8, 32) : NO_HASH;
    }
    return NO_HASH;
  }
}
