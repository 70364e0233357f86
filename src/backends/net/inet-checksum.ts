// The Internet checksum (RFC 1071): the ones-complement of the ones-complement sum of
// the data as big-endian 16-bit words. Offloads need it three ways: finishing a partial
// checksum a guest left for "hardware" (Linux CHECKSUM_PARTIAL, virtio NEEDS_CSUM, the
// netvsc checksum PPI), computing one from scratch (segmentation, IPv4 headers) and
// verifying one (the receive checksum indication we give the guest).
//
// Sums are kept unfolded as plain numbers: each 16-bit word adds at most 0xffff, so a
// double stays exact far beyond any frame (2^37 words), and folding happens once at the
// end. A sum can be built from several chunks: a chunk that starts at an odd byte
// position of the checksummed stream contributes its sum byte-swapped (addChunkSum).
//
// Frame-relative offsets (csumStart, the ParsedPacket fields) are added to frameOffset to
// index the buffer; every helper checks the bytes it touches lie inside the frame.
import { IPPROTO_TCP, IPPROTO_UDP, PacketKind, type ParsedPacket } from './packet-parse.js';

/** Ones-complement sum (unfolded) of buf[offset .. offset+length) as big-endian words, odd tail padded with zero, plus `initial`. */
export function onesSum(buf: Uint8Array, offset: number, length: number, initial = 0): number {
  let sum = initial;
  let i = offset;
  const end = offset + length;
  const end8 = end - 7;
  for (; i < end8; i += 8) {
    sum += ((buf[i]! << 8) | buf[i + 1]!) + ((buf[i + 2]! << 8) | buf[i + 3]!) + ((buf[i + 4]! << 8) | buf[i + 5]!) + ((buf[i + 6]! << 8) | buf[i + 7]!);
  }
  for (; i + 1 < end; i += 2) sum += (buf[i]! << 8) | buf[i + 1]!;
  if (i < end) sum += buf[i]! << 8;
  return sum;
}

/** Folds an unfolded sum to 16 bits (end-around carry). */
export function foldSum(sum: number): number {
  // Values stay below 2^53; dividing keeps the carries exact where >>> would truncate.
  while (sum > 0xffff) sum = (sum % 0x10000) + Math.floor(sum / 0x10000);
  return sum;
}

/** The checksum field value for a sum: the complement of the folded sum. */
export function finishChecksum(sum: number): number {
  return ~foldSum(sum) & 0xffff;
}

/** Adds a chunk's sum to a running sum; a chunk starting at an odd stream position counts byte-swapped. */
export function addChunkSum(running: number, chunkSum: number, chunkStartsOdd: boolean): number {
  if (!chunkStartsOdd) return running + chunkSum;
  const folded = foldSum(chunkSum);
  return running + (((folded & 0xff) << 8) | (folded >> 8));
}

/** Sum of the IPv4 pseudo header (source, destination, protocol, L4 length) of the header at buf[l3]. */
export function pseudoHeaderSumIpv4(buf: Uint8Array, l3: number, protocol: number, l4Length: number): number {
  return onesSum(buf, l3 + 12, 8, protocol + (l4Length >>> 16) + (l4Length & 0xffff));
}

/** Sum of the IPv6 pseudo header (source, destination, 32-bit length, next header) of the header at buf[l3]. */
export function pseudoHeaderSumIpv6(buf: Uint8Array, l3: number, nextHeader: number, l4Length: number): number {
  return onesSum(buf, l3 + 8, 32, nextHeader + Math.floor(l4Length / 0x10000) + (l4Length & 0xffff));
}

function writeU16(buf: Uint8Array, at: number, value: number): void {
  buf[at] = value >> 8;
  buf[at + 1] = value & 0xff;
}

/** The IPv4 header checksum of the header at buf[l3] (its own checksum field counted as zero). */
export function ipv4HeaderChecksum(buf: Uint8Array, l3: number, headerLength: number): number {
  const sum = onesSum(buf, l3, headerLength) - ((buf[l3 + 10]! << 8) | buf[l3 + 11]!);
  return finishChecksum(sum);
}

/** Computes and stores the IPv4 header checksum. */
export function fillIpv4HeaderChecksum(buf: Uint8Array, l3: number, headerLength: number): void {
  writeU16(buf, l3 + 10, ipv4HeaderChecksum(buf, l3, headerLength));
}

/** True when the IPv4 header at buf[l3] carries a correct checksum. */
export function verifyIpv4HeaderChecksum(buf: Uint8Array, l3: number, headerLength: number): boolean {
  return foldSum(onesSum(buf, l3, headerLength)) === 0xffff;
}

/**
 * Finishes a partial checksum (CHECKSUM_PARTIAL / NEEDS_CSUM): the field at
 * csumStart+csumOffset already holds the pseudo-header sum; sums from csumStart to `end`
 * (frame-relative; the frame length, or ParsedPacket.l4End to skip Ethernet padding) and
 * stores the complement there. A result of 0 is stored as 0xffff, as Linux does, since
 * 0 means "no checksum" for UDP and both are the same value for TCP.
 * False (nothing written) when the positions are outside the frame.
 */
export function fillPartialChecksum(buf: Uint8Array, frameOffset: number, end: number, csumStart: number, csumOffset: number): boolean {
  if (!Number.isInteger(csumStart) || !Number.isInteger(csumOffset) || !Number.isInteger(end) || !Number.isInteger(frameOffset)) return false;
  if (frameOffset < 0 || end < 0 || frameOffset + end > buf.length) return false;
  if (csumStart < 0 || csumOffset < 0 || csumStart + csumOffset + 2 > end) return false;
  const field = frameOffset + csumStart + csumOffset;
  const sum = onesSum(buf, frameOffset + csumStart, end - csumStart);
  writeU16(buf, field, finishChecksum(sum) || 0xffff);
  return true;
}

/** Offset of the checksum field inside the TCP (16) or UDP (6) header. */
export function l4ChecksumFieldOffset(protocol: number): number {
  return protocol === IPPROTO_TCP ? 16 : 6;
}

/** The pseudo-header sum for the parsed TCP/UDP packet (its actual L4 length). */
export function l4PseudoHeaderSum(buf: Uint8Array, frameOffset: number, parsed: ParsedPacket): number {
  const l3 = frameOffset + parsed.l3Offset;
  const l4Length = parsed.l4End - parsed.l4Offset;
  return parsed.ipVersion === 4 ? pseudoHeaderSumIpv4(buf, l3, parsed.l4Protocol, l4Length) : pseudoHeaderSumIpv6(buf, l3, parsed.l4Protocol, l4Length);
}

function isChecksummable(buf: Uint8Array, frameOffset: number, parsed: ParsedPacket): boolean {
  return (parsed.kind === PacketKind.Tcp || parsed.kind === PacketKind.Udp) && frameOffset >= 0 && frameOffset + parsed.l4End <= buf.length;
}

/**
 * Computes the TCP/UDP checksum of a parsed packet from scratch (pseudo header, whatever
 * the field held) and stores it. False when the packet is not TCP/UDP. Note: an IPv6
 * routing header would change the pseudo-header destination; that case is not handled.
 */
export function fillL4Checksum(buf: Uint8Array, frameOffset: number, parsed: ParsedPacket): boolean {
  if (!isChecksummable(buf, frameOffset, parsed)) return false;
  const l4 = frameOffset + parsed.l4Offset;
  const field = l4 + l4ChecksumFieldOffset(parsed.l4Protocol);
  buf[field] = 0;
  buf[field + 1] = 0;
  const sum = onesSum(buf, l4, parsed.l4End - parsed.l4Offset, l4PseudoHeaderSum(buf, frameOffset, parsed));
  const checksum = finishChecksum(sum);
  writeU16(buf, field, parsed.l4Protocol === IPPROTO_UDP && checksum === 0 ? 0xffff : checksum);
  return true;
}

export const L4Checksum = {
  /** Not TCP/UDP (or a fragment): nothing to verify. */
  NotApplicable: 0,
  Valid: 1,
  Invalid: 2,
  /** UDP over IPv4 with checksum 0: the sender did not compute one. */
  Absent: 3,
} as const;
export type L4Checksum = (typeof L4Checksum)[keyof typeof L4Checksum];

/** Verifies the TCP/UDP checksum of a parsed packet. */
export function verifyL4Checksum(buf: Uint8Array, frameOffset: number, parsed: ParsedPacket): L4Checksum {
  if (!isChecksummable(buf, frameOffset, parsed)) return L4Checksum.NotApplicable;
  const l4 = frameOffset + parsed.l4Offset;
  if (parsed.l4Protocol === IPPROTO_UDP && buf[l4 + 6] === 0 && buf[l4 + 7] === 0) {
    return parsed.ipVersion === 4 ? L4Checksum.Absent : L4Checksum.Invalid; // mandatory over IPv6
  }
  const sum = onesSum(buf, l4, parsed.l4End - parsed.l4Offset, l4PseudoHeaderSum(buf, frameOffset, parsed));
  return foldSum(sum) === 0xffff ? L4Checksum.Valid : L4Checksum.Invalid;
}
