// The virtio-net header (struct virtio_net_hdr / virtio_net_hdr_v1, <linux/virtio_net.h>)
// that a TAP opened with IFF_VNET_HDR puts before every frame. It carries the offloads
// that make a software NIC fast: a checksum the receiver must finish (NEEDS_CSUM), a
// checksum already verified (DATA_VALID), and a large TCP/UDP frame still to be cut into
// gso_size pieces (GSO). Layout, little-endian (TUNSETVNETLE is the x86-64 default):
//   u8 flags @0, u8 gso_type @1, u16 hdr_len @2, u16 gso_size @4, u16 csum_start @6,
//   u16 csum_offset @8, [u16 num_buffers @10 in the 12-byte v1 / mergeable form]
// Frames from the kernel are trusted a little, frames headed for it come from a guest:
// the decoder validates both the same way and returns an error name, never throws.

export const VIRTIO_NET_HDR_BYTES = 10;
export const VIRTIO_NET_HDR_V1_BYTES = 12;

export const VirtioNetFlag = {
  /** The L4 checksum is partial: sum from csum_start to the end, store at csum_start + csum_offset. */
  NeedsChecksum: 0x01,
  /** The checksums were already verified (receive direction only). */
  DataValid: 0x02,
  /** RSC coalescing info (VIRTIO_NET_F_RSC_EXT, which we never negotiate): rejected. */
  RscInfo: 0x04,
} as const;

export const VirtioGso = {
  None: 0,
  TcpV4: 1,
  /** UFO: one UDP datagram to fragment at the IP layer. */
  Udp: 3,
  TcpV6: 4,
  /** USO: UDP payload cut into gso_size datagrams (each with its own UDP header). */
  UdpL4: 5,
  /** Flag bit on TCP types: the stream uses ECN (CWR must go on the first segment only). */
  Ecn: 0x80,
} as const;

export type VirtioNetHeaderError =
  | 'bad-header-size'
  | 'truncated'
  | 'unknown-flags'
  | 'conflicting-checksum-flags'
  | 'unknown-gso-type'
  | 'ecn-without-tcp'
  | 'gso-without-checksum'
  | 'gso-size-zero'
  | 'header-length-out-of-frame'
  | 'checksum-out-of-frame'
  | 'field-out-of-range';

/** A decoded header, reused from packet to packet (the data path allocates none). */
export class VirtioNetHeader {
  flags = 0;
  /** VirtioGso without the Ecn bit. */
  gsoType: number = VirtioGso.None;
  ecn = false;
  /** Length of the headers before the payload to segment (a hint: the kernel writes its linear part's length). 0 unless GSO. */
  hdrLen = 0;
  /** Payload bytes per segment. 0 unless GSO. */
  gsoSize = 0;
  /** 0 unless NeedsChecksum. */
  csumStart = 0;
  csumOffset = 0;
  /** Only in the 12-byte form; the kernel leaves it unwritten on TAP reads, so it means nothing there. */
  numBuffers = 0;

  clear(): this {
    this.flags = 0;
    this.gsoType = VirtioGso.None;
    this.ecn = false;
    this.hdrLen = 0;
    this.gsoSize = 0;
    this.csumStart = 0;
    this.csumOffset = 0;
    this.numBuffers = 0;
    return this;
  }
}

const KNOWN_GSO = new Set<number>([VirtioGso.None, VirtioGso.TcpV4, VirtioGso.Udp, VirtioGso.TcpV6, VirtioGso.UdpL4]);

/**
 * Decodes the header at view[offset, offset + headerSize) into `out` and checks it against
 * the frame that follows it (`frameLength` bytes): a partial checksum must lie inside the
 * frame, GSO needs a partial checksum and a segment size. Fields that mean nothing for the
 * flags present are zeroed, so a consumer can read them unconditionally. Returns null, or
 * the error (then `out` is unspecified).
 */
export function decodeVirtioNetHeader(view: DataView, offset: number, headerSize: number, frameLength: number, out: VirtioNetHeader): VirtioNetHeaderError | null {
  if (headerSize !== VIRTIO_NET_HDR_BYTES && headerSize !== VIRTIO_NET_HDR_V1_BYTES) return 'bad-header-size';
  if (!Number.isSafeInteger(offset) || offset < 0 || offset + headerSize > view.byteLength) return 'truncated';
  if (!Number.isSafeInteger(frameLength) || frameLength < 0) return 'truncated';
  const flags = view.getUint8(offset);
  const rawGso = view.getUint8(offset + 1);
  const error = checkHeader(flags, rawGso, view.getUint16(offset + 2, true), view.getUint16(offset + 4, true), view.getUint16(offset + 6, true), view.getUint16(offset + 8, true), frameLength);
  if (error) return error;
  const gso = rawGso & ~VirtioGso.Ecn;
  const checksum = (flags & VirtioNetFlag.NeedsChecksum) !== 0;
  out.flags = flags;
  out.gsoType = gso;
  out.ecn = (rawGso & VirtioGso.Ecn) !== 0;
  out.hdrLen = gso === VirtioGso.None ? 0 : view.getUint16(offset + 2, true);
  out.gsoSize = gso === VirtioGso.None ? 0 : view.getUint16(offset + 4, true);
  out.csumStart = checksum ? view.getUint16(offset + 6, true) : 0;
  out.csumOffset = checksum ? view.getUint16(offset + 8, true) : 0;
  out.numBuffers = headerSize === VIRTIO_NET_HDR_V1_BYTES ? view.getUint16(offset + 10, true) : 0;
  return null;
}

/**
 * Writes `header` at view[offset, offset + headerSize) after the same checks as the
 * decoder (so what we hand the kernel is what it accepts). num_buffers is written as 0 in
 * the 12-byte form (the kernel ignores it on writes). Returns null or the error, having
 * written nothing then.
 */
export function encodeVirtioNetHeader(header: VirtioNetHeader, view: DataView, offset: number, headerSize: number, frameLength: number): VirtioNetHeaderError | null {
  if (headerSize !== VIRTIO_NET_HDR_BYTES && headerSize !== VIRTIO_NET_HDR_V1_BYTES) return 'bad-header-size';
  if (!Number.isSafeInteger(offset) || offset < 0 || offset + headerSize > view.byteLength) return 'truncated';
  if (!Number.isSafeInteger(frameLength) || frameLength < 0) return 'truncated';
  const { flags, gsoType, hdrLen, gsoSize, csumStart, csumOffset } = header;
  if (!isU8(flags) || !isU8(gsoType) || !isU16(hdrLen) || !isU16(gsoSize) || !isU16(csumStart) || !isU16(csumOffset)) return 'field-out-of-range';
  if ((gsoType & VirtioGso.Ecn) !== 0) return 'unknown-gso-type'; // ECN travels in header.ecn
  const rawGso = header.ecn ? gsoType | VirtioGso.Ecn : gsoType;
  const error = checkHeader(flags, rawGso, hdrLen, gsoSize, csumStart, csumOffset, frameLength);
  if (error) return error;
  const none = gsoType === VirtioGso.None;
  const checksum = (flags & VirtioNetFlag.NeedsChecksum) !== 0;
  view.setUint8(offset, flags);
  view.setUint8(offset + 1, rawGso);
  view.setUint16(offset + 2, none ? 0 : hdrLen, true);
  view.setUint16(offset + 4, none ? 0 : gsoSize, true);
  view.setUint16(offset + 6, checksum ? csumStart : 0, true);
  view.setUint16(offset + 8, checksum ? csumOffset : 0, true);
  if (headerSize === VIRTIO_NET_HDR_V1_BYTES) view.setUint16(offset + 10, 0, true);
  return null;
}

function checkHeader(flags: number, rawGso: number, hdrLen: number, gsoSize: number, csumStart: number, csumOffset: number, frameLength: number): VirtioNetHeaderError | null {
  if ((flags & ~(VirtioNetFlag.NeedsChecksum | VirtioNetFlag.DataValid)) !== 0) return 'unknown-flags';
  const checksum = (flags & VirtioNetFlag.NeedsChecksum) !== 0;
  // The kernel sets one or the other (partial vs already verified), never both.
  if (checksum && (flags & VirtioNetFlag.DataValid) !== 0) return 'conflicting-checksum-flags';
  const gso = rawGso & ~VirtioGso.Ecn;
  if (!KNOWN_GSO.has(gso)) return 'unknown-gso-type';
  if ((rawGso & VirtioGso.Ecn) !== 0 && gso !== VirtioGso.TcpV4 && gso !== VirtioGso.TcpV6) return 'ecn-without-tcp';
  if (checksum && csumStart + csumOffset + 2 > frameLength) return 'checksum-out-of-frame';
  if (gso !== VirtioGso.None) {
    // Segmenting rewrites each piece's L4 checksum, so GSO always comes with a partial one.
    if (!checksum) return 'gso-without-checksum';
    if (gsoSize === 0) return 'gso-size-zero';
    if (hdrLen > frameLength) return 'header-length-out-of-frame';
  }
  return null;
}

function isU8(v: number): boolean {
  return Number.isInteger(v) && v >= 0 && v <= 0xff;
}

function isU16(v: number): boolean {
  return Number.isInteger(v) && v >= 0 && v <= 0xffff;
}
