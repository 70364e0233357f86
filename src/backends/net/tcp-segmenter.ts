// Software TSO: a guest hands over one large TCP segment (netvsc LSO up to ~62 KiB, or a
// virtio GSO frame) and a backend that can only carry MTU-sized frames (the unix-socket
// switch) needs it cut into what the NIC would have put on the wire. Each output frame
// gets a copy of the Ethernet/IP/TCP headers and up to MSS bytes of payload, then the
// fields that differ per segment are fixed the way Linux's GSO does it:
//   IPv4: total length, id + segment index, header checksum (netvsc zeroes tot_len and
//         the checksum in an LSO frame);
//   IPv6: payload length (netvsc zeroes it too);
//   TCP:  sequence number + payload offset; FIN and PSH only on the last segment, CWR
//         only on the first; the checksum computed from scratch (the guest left only a
//         pseudo-header sum there).
// The urgent pointer is copied unchanged (Linux never sends URG through LSO in practice).
//
// Output goes into one caller-provided buffer, frames back to back; their positions and
// lengths land in this object's reused arrays. Nothing is allocated per frame apart
// from the subarray view TypedArray.set needs to copy a payload slice (Node has no
// memcpy between two typed arrays without one).
import { fillIpv4HeaderChecksum, finishChecksum, onesSum, pseudoHeaderSumIpv4, pseudoHeaderSumIpv6 } from './inet-checksum.js';
import { IPPROTO_TCP, PacketKind, parsePacket, ParsedPacket } from './packet-parse.js';

export const SegmentError = {
  None: 0,
  /** Not a whole, parseable TCP packet over IPv4/IPv6 (or it is a fragment). */
  NotTcp: 1,
  /** MSS below 1, or no payload fits the MTU after the headers. */
  BadMss: 2,
  /** More segments than this segmenter's capacity. */
  TooManySegments: 3,
  /** The output buffer cannot hold every frame. */
  OutputTooSmall: 4,
  /** A segment's IP length would not fit its 16-bit field. */
  TooLarge: 5,
} as const;
export type SegmentError = (typeof SegmentError)[keyof typeof SegmentError];

const TCP_FIN = 0x01;
const TCP_PSH = 0x08;
const TCP_CWR = 0x80;
/** Copies shorter than this go byte by byte rather than through a subarray view. */
const SHORT_COPY = 64;

function copyBytes(src: Uint8Array, from: number, dst: Uint8Array, to: number, length: number): void {
  if (length < SHORT_COPY) {
    for (let i = 0; i < length; i++) dst[to + i] = src[from + i]!;
  } else {
    dst.set(src.subarray(from, from + length), to);
  }
}

function writeU16(buf: Uint8Array, at: number, value: number): void {
  buf[at] = (value >> 8) & 0xff;
  buf[at + 1] = value & 0xff;
}

function writeU32(buf: Uint8Array, at: number, value: number): void {
  buf[at] = value >>> 24;
  buf[at + 1] = (value >>> 16) & 0xff;
  buf[at + 2] = (value >>> 8) & 0xff;
  buf[at + 3] = value & 0xff;
}

/** Output bytes needed to segment a frame with `headerLength` header bytes and `payloadLength` payload bytes at `mss`. */
export function segmentedSize(headerLength: number, payloadLength: number, mss: number): number {
  const count = payloadLength === 0 ? 1 : Math.ceil(payloadLength / mss);
  return count * headerLength + payloadLength;
}

export class TcpSegmenter {
  /** The input frame as parsed by the last segment() call. */
  readonly parsed = new ParsedPacket();
  /** Frame i of the last successful call is out[frameOffsets[i] .. + frameLengths[i]). */
  readonly frameOffsets: Uint32Array;
  readonly frameLengths: Uint32Array;
  count = 0;

  /** capacity: most segments per input frame (64 KiB at Linux's minimum MSS of 48 needs 1366). */
  constructor(readonly capacity = 1400) {
    this.frameOffsets = new Uint32Array(capacity);
    this.frameLengths = new Uint32Array(capacity);
  }

  /**
   * Cuts the TCP frame at src[srcOffset .. +srcLength) into frames of at most `mss`
   * payload bytes (fewer if `mtu` > 0 and headers + mss would exceed it: mtu counts the IP
   * packet, not the Ethernet header) written back to back from out[outOffset]. `src` and
   * `out` must not overlap. A frame whose payload fits in one segment still comes out
   * fixed (lengths, checksums), which is what an LSO frame needs.
   */
  segment(src: Uint8Array, srcOffset: number, srcLength: number, mss: number, out: Uint8Array, outOffset: number, mtu = 0): SegmentError {
    this.count = 0;
    const p = this.parsed;
    if (parsePacket(src, srcOffset, srcLength, p) !== PacketKind.Tcp || p.l4Protocol !== IPPROTO_TCP) return SegmentError.NotTcp;
    const headerLength = p.payloadOffset;
    const ipHeaderBytes = headerLength - p.l3Offset; // IP (+ extension) + TCP headers
    let segmentSize = Number.isInteger(mss) ? mss : 0;
    if (mtu > 0) segmentSize = Math.min(segmentSize, mtu - ipHeaderBytes);
    if (segmentSize < 1) return SegmentError.BadMss;
    const payloadLength = p.payloadLength;
    const count = payloadLength === 0 ? 1 : Math.ceil(payloadLength / segmentSize);
    if (count > this.capacity) return SegmentError.TooManySegments;
    const largest = Math.min(segmentSize, payloadLength);
    if (p.ipVersion === 4 ? ipHeaderBytes + largest > 0xffff : ipHeaderBytes - 40 + largest > 0xffff) return SegmentError.TooLarge;
    if (!Number.isInteger(outOffset) || outOffset < 0 || outOffset + count * headerLength + payloadLength > out.length) return SegmentError.OutputTooSmall;

    const l3 = p.l3Offset;
    const l4 = p.l4Offset;
    const tcpHeaderLength = p.l4HeaderLength;
    const ipv4 = p.ipVersion === 4;
    const firstSeq = ((src[srcOffset + l4 + 4]! << 24) | (src[srcOffset + l4 + 5]! << 16) | (src[srcOffset + l4 + 6]! << 8) | src[srcOffset + l4 + 7]!) >>> 0;
    const flags = p.tcpFlags;
    const firstId = ipv4 ? (src[srcOffset + l3 + 4]! << 8) | src[srcOffset + l3 + 5]! : 0;

    let at = outOffset;
    for (let i = 0; i < count; i++) {
      const sent = i * segmentSize;
      const length = Math.min(segmentSize, payloadLength - sent);
      copyBytes(src, srcOffset, out, at, headerLength);
      copyBytes(src, srcOffset + headerLength + sent, out, at + headerLength, length);
      const outL3 = at + l3;
      const outL4 = at + l4;
      const tcpLength = tcpHeaderLength + length;
      if (ipv4) {
        writeU16(out, outL3 + 2, ipHeaderBytes + length);
        writeU16(out, outL3 + 4, (firstId + i) & 0xffff);
        fillIpv4HeaderChecksum(out, outL3, p.l3HeaderLength);
      } else {
        writeU16(out, outL3 + 4, ipHeaderBytes - 40 + length);
      }
      writeU32(out, outL4 + 4, (firstSeq + sent) >>> 0);
      let segmentFlags = flags;
      if (i !== count - 1) segmentFlags &= ~(TCP_FIN | TCP_PSH);
      if (i !== 0) segmentFlags &= ~TCP_CWR;
      out[outL4 + 13] = segmentFlags;
      out[outL4 + 16] = 0;
      out[outL4 + 17] = 0;
      const pseudo = ipv4 ? pseudoHeaderSumIpv4(out, outL3, IPPROTO_TCP, tcpLength) : pseudoHeaderSumIpv6(out, outL3, IPPROTO_TCP, tcpLength);
      writeU16(out, outL4 + 16, finishChecksum(onesSum(out, outL4, tcpLength, pseudo)));
      this.frameOffsets[i] = at;
      this.frameLengths[i] = headerLength + length;
      at += headerLength + length;
    }
    this.count = count;
    return SegmentError.None;
  }
}
