// RNDIS per-packet info (PPI): the records inside an RNDIS PACKET that carry offload
// metadata with a frame: checksum requests/results, LSO, the 802.1Q tag, the RSS hash and
// RSC fragment ids (spec 2.5; Linux hyperv_net.h `struct rndis_per_packet_info`,
// rndis_filter.c `rndis_get_ppi`, netvsc_drv.c `netvsc_xmit`).
//
// A record is `u32 size` (header included), `u32 type:31 | internal:1`, `u32 ppi_offset`
// (from the record start to its data), then data. The records must tile the PPI area
// exactly; Linux 6.1 loops forever on a record of size 0, a size past the end, or an
// offset >= size, so a host must never send one, and the host rejects them from a guest.
import { rd32, wr32 } from './le-bytes.js';
import { PacketKind, type ParsedPacket } from '../../backends/net/packet-parse.js';

export const PPI_HEADER_SIZE = 12;
/** A record carrying one u32, the size Linux uses for every PPI it sends. */
export const PPI_U32_RECORD_SIZE = PPI_HEADER_SIZE + 4;

/** Public PPI types (`enum ndis_per_pkt_info_type`). */
export const PpiType = {
  TcpIpChecksum: 0,
  Ipsec: 1,
  TcpLargeSend: 2,
  ClassificationHandle: 3,
  NdisReserved: 4,
  SgList: 5,
  Ieee8021Q: 6,
  OriginalPacketInfo: 7,
  /** NBL_HASH_VALUE: Linux aliases it to PACKET_CANCEL_ID. */
  HashValue: 8,
  OriginalNetBufferList: 9,
  CachedNetBufferList: 10,
  ShortPacketPadInfo: 11,
} as const;

/** Internal PPI types (the `internal` bit set). */
export const InternalPpiType = {
  /** RSC fragment id: `u8 ver, u8 flag, u16 pkt_id`. */
  PacketInfoId: 1,
} as const;

const INTERNAL_BIT = 0x80000000;

/** Transmit view of the checksum PPI (guest asks the host to finish checksums). */
export const TxChecksum = {
  IsIpv4: 0x1,
  IsIpv6: 0x2,
  Tcp: 0x4,
  Udp: 0x8,
  IpHeader: 0x10,
} as const;
const TX_CSUM_HEADER_OFFSET_SHIFT = 16;
const TX_CSUM_HEADER_OFFSET_MASK = 0x3ff;

/** Receive view of the checksum PPI (host tells the guest what it verified). */
export const RxChecksum = {
  TcpFailed: 0x001,
  UdpFailed: 0x002,
  IpFailed: 0x004,
  TcpSucceeded: 0x008,
  UdpSucceeded: 0x010,
  IpSucceeded: 0x020,
  Loopback: 0x040,
  TcpValueInvalid: 0x080,
  IpValueInvalid: 0x100,
} as const;

/** The receive checksum PPI value for a frame whose checksums are known good. */
export function rxChecksumGood(parsed: ParsedPacket): number {
  let v = parsed.ipVersion === 4 ? RxChecksum.IpSucceeded : 0;
  if (parsed.kind === PacketKind.Tcp) v |= RxChecksum.TcpSucceeded;
  else if (parsed.kind === PacketKind.Udp) v |= RxChecksum.UdpSucceeded;
  return v;
}

/** LSO PPI `type` (bit 30) and `ip_version` (bit 31) values. */
export const LSO_V2_TYPE = 1;
export const LsoIpVersion = { Ipv4: 0, Ipv6: 1 } as const;

/** RSC fragment flags in the PacketInfoId PPI. */
export const PacketInfoIdFlag = { SubAllocation: 0x1, FirstFragment: 0x2, LastFragment: 0x4 } as const;
export const PACKET_INFO_ID_VERSION = 1;

// ---------------------------------------------------------------------------------------
// Bit-field helpers (all values are the u32 a PPI carries)

export function txChecksumInfo(flags: number, tcpHeaderOffset: number): number {
  return ((flags & 0x1f) | ((tcpHeaderOffset & TX_CSUM_HEADER_OFFSET_MASK) << TX_CSUM_HEADER_OFFSET_SHIFT)) >>> 0;
}
export function txChecksumHeaderOffset(value: number): number {
  return (value >>> TX_CSUM_HEADER_OFFSET_SHIFT) & TX_CSUM_HEADER_OFFSET_MASK;
}

/** LSOv2 transmit: bits 0..19 MSS, 20..29 TCP header offset (from the frame start), 30 type, 31 IP version. */
export function lsoV2Info(mss: number, tcpHeaderOffset: number, ipVersion: number): number {
  return ((mss & 0xfffff) | ((tcpHeaderOffset & 0x3ff) << 20) | (LSO_V2_TYPE << 30) | ((ipVersion & 1) << 31)) >>> 0;
}
export function lsoMss(value: number): number {
  return value & 0xfffff;
}
export function lsoTcpHeaderOffset(value: number): number {
  return (value >>> 20) & 0x3ff;
}
export function lsoType(value: number): number {
  return (value >>> 30) & 1;
}
export function lsoIpVersion(value: number): number {
  return value >>> 31;
}

/** 802.1Q PPI: bits 0..2 priority, bit 3 CFI, bits 4..15 VLAN id. */
export function vlanInfo(vlanId: number, priority: number, cfi: number): number {
  return ((priority & 7) | ((cfi & 1) << 3) | ((vlanId & 0xfff) << 4)) >>> 0;
}
export function vlanPriority(value: number): number {
  return value & 7;
}
export function vlanCfi(value: number): number {
  return (value >>> 3) & 1;
}
export function vlanId(value: number): number {
  return (value >>> 4) & 0xfff;
}
/** The PPI's fields as an 802.1Q TCI (what goes into the frame or a vnet header). */
export function vlanInfoToTci(value: number): number {
  return (vlanPriority(value) << 13) | (vlanCfi(value) << 12) | vlanId(value);
}
export function tciToVlanInfo(tci: number): number {
  return vlanInfo(tci & 0xfff, (tci >>> 13) & 7, (tci >>> 12) & 1);
}

// ---------------------------------------------------------------------------------------
// Errors

export type PpiErrorReason =
  /** Fewer than 12 bytes left for a record header. */
  | 'truncated-header'
  /** size < 12, or size past the end of the PPI area. */
  | 'bad-size'
  /** ppi_offset inside the header or at/after the record's end (Linux needs offset < size). */
  | 'bad-offset'
  /** A known type whose data is shorter than its value. */
  | 'short-value'
  /** A second record of a type a packet may carry only once. */
  | 'duplicate';

/** A malformed PPI list. Returned, never thrown. */
export class PpiError {
  readonly isPpiError = true;
  constructor(
    readonly reason: PpiErrorReason,
    /** Offset of the bad record from the start of the PPI area. */
    readonly recordOffset: number,
    readonly detail: string,
  ) {}

  get message(): string {
    return `per-packet info at +${this.recordOffset}: ${this.reason}: ${this.detail}`;
  }
}

// ---------------------------------------------------------------------------------------
// Iteration

/**
 * Walks a PPI area record by record without allocating: `reset` it on the area (absolute
 * offset and length in `bytes`, as RndisPacket reports them), then call `next` until it
 * returns false (clean end) or a PpiError. After a true, the fields describe the current
 * record; `dataOffset`/`dataLength` are absolute and inside the area.
 */
export class PpiIterator {
  type = 0;
  internal = false;
  /** Absolute offset of the current record. */
  recordOffset = 0;
  recordSize = 0;
  dataOffset = 0;
  dataLength = 0;

  private bytes: Uint8Array = new Uint8Array(0);
  private start = 0;
  private end = 0;
  private cursor = 0;

  reset(bytes: Uint8Array, offset: number, length: number): this {
    this.bytes = bytes;
    // Clamp to the buffer so that a caller's bad window can only shorten the walk.
    const start = Math.max(0, Math.min(offset, bytes.length));
    this.start = start;
    this.end = Math.max(start, Math.min(offset + length, bytes.length));
    this.cursor = start;
    return this;
  }

  next(): boolean | PpiError {
    const remaining = this.end - this.cursor;
    if (remaining === 0) return false;
    const at = this.cursor - this.start;
    if (remaining < PPI_HEADER_SIZE) return new PpiError('truncated-header', at, `${remaining} bytes left, a record header needs ${PPI_HEADER_SIZE}`);
    const b = this.bytes;
    const c = this.cursor;
    const size = rd32(b, c);
    const typeWord = rd32(b, c + 4);
    const ppiOffset = rd32(b, c + 8);
    if (size < PPI_HEADER_SIZE || size > remaining) return new PpiError('bad-size', at, `size ${size} with ${remaining} bytes left`);
    if (ppiOffset < PPI_HEADER_SIZE || ppiOffset >= size) return new PpiError('bad-offset', at, `ppi_offset ${ppiOffset} in a ${size}-byte record`);
    this.type = typeWord & ~INTERNAL_BIT & 0x7fffffff;
    this.internal = (typeWord & INTERNAL_BIT) !== 0;
    this.recordOffset = c;
    this.recordSize = size;
    this.dataOffset = c + ppiOffset;
    this.dataLength = size - ppiOffset;
    this.cursor = c + size;
    return true;
  }
}

// ---------------------------------------------------------------------------------------
// The PPIs of one packet, summarised

/**
 * What a packet's PPIs say, in a reusable object (one per channel). Unknown public types
 * and internal types other than PacketInfoId are counted and otherwise ignored, as Linux
 * does. The raw u32 of each known type is kept; use the helpers above to read fields.
 */
export class PacketInfo {
  hasChecksum = false;
  checksum = 0;
  hasLso = false;
  lso = 0;
  hasVlan = false;
  vlan = 0;
  hasHash = false;
  hash = 0;
  hasPacketId = false;
  packetIdVersion = 0;
  packetIdFlags = 0;
  packetId = 0;
  /** Records of other types (opaque). */
  otherCount = 0;

  /** Takes another packet's values (what an RSC segment keeps of its first fragment). */
  copyFrom(other: PacketInfo): void {
    this.hasChecksum = other.hasChecksum;
    this.checksum = other.checksum;
    this.hasLso = other.hasLso;
    this.lso = other.lso;
    this.hasVlan = other.hasVlan;
    this.vlan = other.vlan;
    this.hasHash = other.hasHash;
    this.hash = other.hash;
    this.hasPacketId = other.hasPacketId;
    this.packetIdVersion = other.packetIdVersion;
    this.packetIdFlags = other.packetIdFlags;
    this.packetId = other.packetId;
    this.otherCount = other.otherCount;
  }

  clear(): void {
    this.hasChecksum = this.hasLso = this.hasVlan = this.hasHash = this.hasPacketId = false;
    this.checksum = this.lso = this.vlan = this.hash = 0;
    this.packetIdVersion = this.packetIdFlags = this.packetId = 0;
    this.otherCount = 0;
  }
}

const scratchIterator = new PpiIterator();

/**
 * Walks the PPI area at bytes[offset, offset+length) into `out` (cleared first). Returns
 * null, or the PpiError of the first bad record (then `out` holds what came before it).
 * A known type may appear once; its data must hold its 4-byte value.
 */
export function decodePacketInfo(bytes: Uint8Array, offset: number, length: number, out: PacketInfo): PpiError | null {
  out.clear();
  const it = scratchIterator.reset(bytes, offset, length);
  for (;;) {
    const r = it.next();
    if (r === false) return null;
    if (r !== true) return r;
    const at = it.recordOffset - offset;
    if (it.internal) {
      if (it.type !== InternalPpiType.PacketInfoId) {
        out.otherCount++;
        continue;
      }
      if (it.dataLength < 4) return new PpiError('short-value', at, `packet-id data is ${it.dataLength} bytes`);
      if (out.hasPacketId) return new PpiError('duplicate', at, 'second packet-id record');
      out.hasPacketId = true;
      out.packetIdVersion = bytes[it.dataOffset]!;
      out.packetIdFlags = bytes[it.dataOffset + 1]!;
      out.packetId = bytes[it.dataOffset + 2]! | (bytes[it.dataOffset + 3]! << 8);
      continue;
    }
    switch (it.type) {
      case PpiType.TcpIpChecksum:
      case PpiType.TcpLargeSend:
      case PpiType.Ieee8021Q:
      case PpiType.HashValue: {
        if (it.dataLength < 4) return new PpiError('short-value', at, `type ${it.type} data is ${it.dataLength} bytes`);
        const v = rd32(bytes, it.dataOffset);
        if (it.type === PpiType.TcpIpChecksum) {
          if (out.hasChecksum) return new PpiError('duplicate', at, 'second checksum record');
          out.hasChecksum = true;
          out.checksum = v;
        } else if (it.type === PpiType.TcpLargeSend) {
          if (out.hasLso) return new PpiError('duplicate', at, 'second LSO record');
          out.hasLso = true;
          out.lso = v;
        } else if (it.type === PpiType.Ieee8021Q) {
          if (out.hasVlan) return new PpiError('duplicate', at, 'second 802.1Q record');
          out.hasVlan = true;
          out.vlan = v;
        } else {
          if (out.hasHash) return new PpiError('duplicate', at, 'second hash record');
          out.hasHash = true;
          out.hash = v;
        }
        break;
      }
      default:
        out.otherCount++;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Encoding. Each writes one record at target[offset] and returns its size.

function fits(target: Uint8Array, offset: number, size: number): void {
  if (!Number.isInteger(offset) || offset < 0 || offset + size > target.length) {
    throw new RangeError(`PPI: ${size} bytes at ${offset} do not fit in ${target.length}`);
  }
}

/** A record carrying one u32 (every type Linux sends: checksum, LSO, 802.1Q, hash). */
export function writeU32Ppi(target: Uint8Array, offset: number, type: number, value: number, internal = false): number {
  fits(target, offset, PPI_U32_RECORD_SIZE);
  wr32(target, offset, PPI_U32_RECORD_SIZE);
  wr32(target, offset + 4, ((type & 0x7fffffff) | (internal ? INTERNAL_BIT : 0)) >>> 0);
  wr32(target, offset + 8, PPI_HEADER_SIZE);
  wr32(target, offset + 12, value >>> 0);
  return PPI_U32_RECORD_SIZE;
}

/** The internal RSC fragment-id record. */
export function writePacketIdPpi(target: Uint8Array, offset: number, flags: number, packetId: number, version = PACKET_INFO_ID_VERSION): number {
  return writeU32Ppi(target, offset, InternalPpiType.PacketInfoId,
    ((version & 0xff) | ((flags & 0xff) << 8) | ((packetId & 0xffff) << 16)) >>> 0, true);
}

/** A record with arbitrary data right after the header. */
export function writeOpaquePpi(target: Uint8Array, offset: number, type: number, data: Uint8Array, internal = false): number {
  // An empty record would have ppi_offset == size, which Linux 6.1 loops forever on.
  if (data.length === 0) throw new RangeError('PPI: a record needs at least one data byte');
  const size = PPI_HEADER_SIZE + data.length;
  fits(target, offset, size);
  wr32(target, offset, size);
  wr32(target, offset + 4, ((type & 0x7fffffff) | (internal ? INTERNAL_BIT : 0)) >>> 0);
  wr32(target, offset + 8, PPI_HEADER_SIZE);
  target.set(data, offset + PPI_HEADER_SIZE);
  return size;
}
