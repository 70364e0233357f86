// Finding the layers of an Ethernet frame: optional VLAN tags, then IPv4 or IPv6 (IPv6
// extension headers skipped), then TCP or UDP. Offloads need exactly this: where the L4
// header starts (checksum), where the payload starts (segmentation) and the addresses
// and ports (RSS). Frames come from the guest or the network, so every length field is
// checked against the bytes actually present before it is trusted; anything odd is a
// typed Malformed result, never an exception or a read past the frame.
//
// The result object is reused across calls (no allocation per packet). All offsets in it
// are relative to the start of the frame, the convention of virtio's csum_start and of
// the netvsc LSO/checksum per-packet info.

export const PacketKind = {
  /** Something is inconsistent; see ParsedPacket.failure. */
  Malformed: 0,
  /** Not IPv4/IPv6 (ARP, LLDP, ...): only the L2 fields are valid. */
  NotIp: 1,
  Tcp: 2,
  Udp: 3,
  /** IP whose transport is not TCP/UDP, or a fragment, or ESP/no-next-header: L3 fields valid, no ports. */
  OtherIp: 4,
} as const;
export type PacketKind = (typeof PacketKind)[keyof typeof PacketKind];

export const ParseFailure = {
  None: 0,
  /** Shorter than an Ethernet header. */
  TruncatedEthernet: 1,
  /** A VLAN tag cut short, or more tags than we accept. */
  BadVlan: 2,
  /** Ethertype IPv4 but not a consistent IPv4 header (version, IHL, total length). */
  BadIpv4: 3,
  /** Ethertype IPv6 but not a consistent IPv6 header (version, payload length). */
  BadIpv6: 4,
  /** An IPv6 extension header runs past the packet, or there are too many of them. */
  BadExtensionHeader: 5,
  /** TCP header cut short or its data offset is impossible. */
  BadTcp: 6,
  /** UDP header cut short or its length field is impossible. */
  BadUdp: 7,
  /** offset/length do not describe bytes inside the buffer. */
  BadBounds: 8,
} as const;
export type ParseFailure = (typeof ParseFailure)[keyof typeof ParseFailure];

export const ETHERTYPE_IPV4 = 0x0800;
export const ETHERTYPE_IPV6 = 0x86dd;
export const ETHERTYPE_VLAN = 0x8100;
export const ETHERTYPE_QINQ = 0x88a8;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;
export const ETH_HEADER_SIZE = 14;
export const VLAN_TAG_SIZE = 4;
export const IPV4_MIN_HEADER = 20;
export const IPV6_HEADER_SIZE = 40;
export const TCP_MIN_HEADER = 20;
export const UDP_HEADER_SIZE = 8;

/** Stacked tags accepted (802.1ad outer + 802.1Q inner); more is not a real frame. */
const MAX_VLAN_TAGS = 2;
/** IPv6 extension headers walked before giving up; real packets carry one or two. */
const MAX_EXTENSION_HEADERS = 8;

/** IPv6 next-header values that are extension headers with the generic (len+1)*8 layout. */
function isGenericExtension(nextHeader: number): boolean {
  // Hop-by-hop, routing, destination options, mobility, HIP, shim6, experimental.
  return nextHeader === 0 || nextHeader === 43 || nextHeader === 60 || nextHeader === 135 || nextHeader === 139 || nextHeader === 140 || nextHeader === 253 || nextHeader === 254;
}
const IPV6_FRAGMENT = 44;
const IPV6_AH = 51;

/** One parse's answer; reuse one instance per queue. */
export class ParsedPacket {
  kind: PacketKind = PacketKind.Malformed;
  failure: ParseFailure = ParseFailure.None;
  /** Ethertype after any VLAN tags. */
  etherType = 0;
  /** Number of VLAN tags in the frame (0..2) and the outermost tag's TCI (-1 without tags). */
  vlanCount = 0;
  vlanTci = -1;
  /** 4 or 6; 0 when not IP. */
  ipVersion = 0;
  l3Offset = 0;
  /** IPv4: IHL*4; IPv6: 40 plus every extension header (= l4Offset - l3Offset). */
  l3HeaderLength = 0;
  /** End of the IP packet (frame offset): from the IP length field, or the frame end when that field is 0 (LSO, jumbogram). */
  ipEnd = 0;
  /** The IP length field was 0 and the packet was taken to end with the frame. */
  ipLengthFromFrame = false;
  /** IPv4 MF/offset set, or an IPv6 fragment header that is not an atomic fragment: no L4 header is parsed. */
  isFragment = false;
  /** The transport protocol number (after IPv6 extension headers); -1 when not IP. */
  l4Protocol = -1;
  l4Offset = 0;
  /** TCP: data offset*4; UDP: 8; 0 otherwise. */
  l4HeaderLength = 0;
  payloadOffset = 0;
  /** TCP: to ipEnd; UDP: from the UDP length field. */
  payloadLength = 0;
  srcPort = 0;
  dstPort = 0;
  /** TCP flags byte (FIN 0x01 ... CWR 0x80); 0 for other kinds. */
  tcpFlags = 0;

  /** End of the L4 datagram (frame offset): what an L4 checksum covers, from l4Offset. */
  get l4End(): number {
    return this.payloadOffset + this.payloadLength;
  }

  /** Back to an empty Malformed result (parsePacket starts with this). */
  clear(): void {
    this.kind = PacketKind.Malformed;
    this.failure = ParseFailure.None;
    this.etherType = 0;
    this.vlanCount = 0;
    this.vlanTci = -1;
    this.ipVersion = 0;
    this.l3Offset = 0;
    this.l3HeaderLength = 0;
    this.ipEnd = 0;
    this.ipLengthFromFrame = false;
    this.isFragment = false;
    this.l4Protocol = -1;
    this.l4Offset = 0;
    this.l4HeaderLength = 0;
    this.payloadOffset = 0;
    this.payloadLength = 0;
    this.srcPort = 0;
    this.dstPort = 0;
    this.tcpFlags = 0;
  }
}

function fail(out: ParsedPacket, failure: ParseFailure): PacketKind {
  out.kind = PacketKind.Malformed;
  out.failure = failure;
  return PacketKind.Malformed;
}

function u16(b: Uint8Array, at: number): number {
  return (b[at]! << 8) | b[at + 1]!;
}

/**
 * Parses the frame at buf[offset .. offset+length). Returns (and stores in out.kind) what
 * was found; all other fields of `out` describe the frame as far as it was valid.
 */
export function parsePacket(buf: Uint8Array, offset: number, length: number, out: ParsedPacket): PacketKind {
  out.clear();
  if (!Number.isInteger(offset) || !Number.isInteger(length) || offset < 0 || length < 0 || offset + length > buf.length) {
    return fail(out, ParseFailure.BadBounds);
  }
  if (length < ETH_HEADER_SIZE) return fail(out, ParseFailure.TruncatedEthernet);
  const end = offset + length;
  let at = offset + 12;
  let etherType = u16(buf, at);
  at += 2;
  while (etherType === ETHERTYPE_VLAN || etherType === ETHERTYPE_QINQ) {
    if (out.vlanCount === MAX_VLAN_TAGS || at + VLAN_TAG_SIZE > end) return fail(out, ParseFailure.BadVlan);
    if (out.vlanCount === 0) out.vlanTci = u16(buf, at);
    out.vlanCount++;
    etherType = u16(buf, at + 2);
    at += VLAN_TAG_SIZE;
  }
  out.etherType = etherType;
  out.l3Offset = at - offset;
  if (etherType === ETHERTYPE_IPV4) return parseIpv4(buf, offset, at, end, out);
  if (etherType === ETHERTYPE_IPV6) return parseIpv6(buf, offset, at, end, out);
  out.kind = PacketKind.NotIp;
  return PacketKind.NotIp;
}

function parseIpv4(buf: Uint8Array, base: number, l3: number, end: number, out: ParsedPacket): PacketKind {
  if (l3 + IPV4_MIN_HEADER > end) return fail(out, ParseFailure.BadIpv4);
  const versionIhl = buf[l3]!;
  const headerLength = (versionIhl & 0x0f) * 4;
  if (versionIhl >> 4 !== 4 || headerLength < IPV4_MIN_HEADER || l3 + headerLength > end) return fail(out, ParseFailure.BadIpv4);
  const totalLength = u16(buf, l3 + 2);
  let ipEnd: number;
  if (totalLength === 0) {
    // Linux's netvsc zeroes tot_len in an LSO frame; the packet is the rest of the frame.
    ipEnd = end;
    out.ipLengthFromFrame = true;
  } else {
    if (totalLength < headerLength || l3 + totalLength > end) return fail(out, ParseFailure.BadIpv4);
    ipEnd = l3 + totalLength; // anything after is Ethernet padding
  }
  out.ipVersion = 4;
  out.l3HeaderLength = headerLength;
  out.ipEnd = ipEnd - base;
  out.l4Protocol = buf[l3 + 9]!;
  const fragment = u16(buf, l3 + 6);
  out.isFragment = (fragment & 0x3fff) !== 0; // MF or a fragment offset
  return parseTransport(buf, base, l3 + headerLength, ipEnd, out);
}

function parseIpv6(buf: Uint8Array, base: number, l3: number, end: number, out: ParsedPacket): PacketKind {
  if (l3 + IPV6_HEADER_SIZE > end || buf[l3]! >> 4 !== 6) return fail(out, ParseFailure.BadIpv6);
  const payloadLength = u16(buf, l3 + 4);
  let ipEnd: number;
  if (payloadLength === 0) {
    // Jumbogram or a Linux LSO frame (netvsc zeroes payload_len): the rest of the frame.
    ipEnd = end;
    out.ipLengthFromFrame = true;
  } else {
    if (l3 + IPV6_HEADER_SIZE + payloadLength > end) return fail(out, ParseFailure.BadIpv6);
    ipEnd = l3 + IPV6_HEADER_SIZE + payloadLength;
  }
  out.ipVersion = 6;
  out.ipEnd = ipEnd - base;
  let next = buf[l3 + 6]!;
  let at = l3 + IPV6_HEADER_SIZE;
  for (let count = 0; ; count++) {
    let extLength: number;
    if (isGenericExtension(next)) {
      if (at + 8 > ipEnd) return fail(out, ParseFailure.BadExtensionHeader);
      extLength = (buf[at + 1]! + 1) * 8;
    } else if (next === IPV6_AH) {
      if (at + 8 > ipEnd) return fail(out, ParseFailure.BadExtensionHeader);
      extLength = (buf[at + 1]! + 2) * 4;
    } else if (next === IPV6_FRAGMENT) {
      if (at + 8 > ipEnd) return fail(out, ParseFailure.BadExtensionHeader);
      extLength = 8;
      // Offset or M flag set: a real fragment. Both clear is an "atomic fragment", a whole packet.
      if ((u16(buf, at + 2) & 0xfff9) !== 0) out.isFragment = true;
    } else {
      break;
    }
    if (count === MAX_EXTENSION_HEADERS || at + extLength > ipEnd) return fail(out, ParseFailure.BadExtensionHeader);
    next = buf[at]!;
    at += extLength;
    if (out.isFragment) break; // what follows belongs to the reassembled packet
  }
  out.l3HeaderLength = at - l3;
  out.l4Protocol = next;
  return parseTransport(buf, base, at, ipEnd, out);
}

function parseTransport(buf: Uint8Array, base: number, l4: number, ipEnd: number, out: ParsedPacket): PacketKind {
  out.l4Offset = l4 - base;
  out.payloadOffset = l4 - base;
  out.payloadLength = ipEnd - l4;
  const protocol = out.l4Protocol;
  if (out.isFragment || (protocol !== IPPROTO_TCP && protocol !== IPPROTO_UDP)) {
    out.kind = PacketKind.OtherIp;
    return PacketKind.OtherIp;
  }
  if (protocol === IPPROTO_TCP) {
    if (l4 + TCP_MIN_HEADER > ipEnd) return fail(out, ParseFailure.BadTcp);
    const headerLength = (buf[l4 + 12]! >> 4) * 4;
    if (headerLength < TCP_MIN_HEADER || l4 + headerLength > ipEnd) return fail(out, ParseFailure.BadTcp);
    out.srcPort = u16(buf, l4);
    out.dstPort = u16(buf, l4 + 2);
    out.tcpFlags = buf[l4 + 13]!;
    out.l4HeaderLength = headerLength;
    out.payloadOffset = l4 + headerLength - base;
    out.payloadLength = ipEnd - (l4 + headerLength);
    out.kind = PacketKind.Tcp;
    return PacketKind.Tcp;
  }
  if (l4 + UDP_HEADER_SIZE > ipEnd) return fail(out, ParseFailure.BadUdp);
  let udpLength = u16(buf, l4 + 4);
  if (udpLength === 0 && out.ipLengthFromFrame) {
    udpLength = ipEnd - l4; // jumbogram convention (RFC 2675)
  } else if (udpLength < UDP_HEADER_SIZE || l4 + udpLength > ipEnd) {
    return fail(out, ParseFailure.BadUdp);
  }
  out.srcPort = u16(buf, l4);
  out.dstPort = u16(buf, l4 + 2);
  out.l4HeaderLength = UDP_HEADER_SIZE;
  out.payloadOffset = l4 + UDP_HEADER_SIZE - base;
  out.payloadLength = udpLength - UDP_HEADER_SIZE;
  out.kind = PacketKind.Udp;
  return PacketKind.Udp;
}
