// The NDIS objects exchanged through OIDs during netvsc bring-up (spec 2.7, 2.8; Linux
// hyperv_net.h `struct ndis_offload`, `ndis_offload_params`, `ndis_recv_scale_cap`,
// `ndis_recv_scale_param`):
//   NDIS_OFFLOAD (OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES answer) - encode, and decode with
//     Linux's acceptance rules for the reference guest;
//   NDIS_OFFLOAD_PARAMETERS (OID_TCP_OFFLOAD_PARAMETERS set) - decode, and encode;
//   NDIS_RECEIVE_SCALE_CAPABILITIES (OID_GEN_RECEIVE_SCALE_CAPABILITIES answer) - encode/decode;
//   NDIS_RECEIVE_SCALE_PARAMETERS (OID_GEN_RECEIVE_SCALE_PARAMETERS set) - decode, and encode.
// Every object starts with an NDIS_OBJECT_HEADER `{u8 type, u8 revision, u16 size}`.
import { rd16, rd32, wr16, wr32 } from './le-bytes.js';

export const NdisObjectType = {
  Default: 0x80,
  RssCapabilities: 0x88,
  RssParameters: 0x89,
  Offload: 0xa7,
} as const;

export const NDIS_OBJECT_HEADER_SIZE = 4;

export type NdisObjectErrorReason = 'too-short' | 'bad-header' | 'bad-range' | 'bad-value';

/** A malformed NDIS object in an information buffer. Returned, never thrown. */
export class NdisObjectError {
  readonly isNdisObjectError = true;
  constructor(readonly reason: NdisObjectErrorReason, readonly object: string, readonly detail: string) {}

  get message(): string {
    return `${this.object}: ${this.reason}: ${this.detail}`;
  }
}

function fits(what: string, target: Uint8Array, offset: number, size: number): void {
  if (!Number.isInteger(offset) || offset < 0 || offset + size > target.length) {
    throw new RangeError(`${what}: ${size} bytes at ${offset} do not fit in ${target.length}`);
  }
}
/** The window [offset, offset+length) clamped to the buffer: decoders never look past either. */
function window(bytes: Uint8Array, offset: number, length: number): number {
  if (!Number.isInteger(offset) || !Number.isInteger(length) || offset < 0 || length < 0 || offset > bytes.length) return 0;
  return Math.min(length, bytes.length - offset);
}

// ---------------------------------------------------------------------------------------
// NDIS_OFFLOAD

/** Sizes per NDIS version, and the revision that goes with each. */
export const NDIS_OFFLOAD_SIZE_6_0 = 112;
export const NDIS_OFFLOAD_SIZE_6_1 = 144;
export const NDIS_OFFLOAD_SIZE_6_30 = 156;
export const NDIS_OFFLOAD_SIZE = NDIS_OFFLOAD_SIZE_6_30;

/** NDIS_OFFLOAD_ENCAP_* */
export const OffloadEncapsulation = { None: 0, Null: 0x1, Ieee802_3: 0x2, Ieee802_3Pq: 0x4, Ieee802_3PqOob: 0x8, Rfc1483: 0x10 } as const;

/** Checksum capability flags (same layout TX and RX). */
export const ChecksumCapability = {
  /** v4: IP options; v6: extension headers. */
  IpOptions: 0x001,
  TcpOptions: 0x004,
  Tcp: 0x010,
  Udp: 0x040,
  /** v4 only: IP header checksum. */
  IpHeader: 0x100,
} as const;

/** LSOv2 IPv6 flags. */
export const LsoV2Ipv6Capability = { ExtensionHeaders: 0x001, TcpOptions: 0x004 } as const;

/** Largest LSO size Hyper-V and OpenVMM advertise, and their minimum segment count. */
export const HYPERV_LSO_MAX_SIZE = 62780;
export const HYPERV_LSO_MIN_SEGMENTS = 2;

/** The capability fields of NDIS_OFFLOAD this host sets; everything else is written as 0. */
export interface NdisOffloadFields {
  ipv4TxEncapsulation: number;
  ipv4TxFlags: number;
  ipv4RxEncapsulation: number;
  ipv4RxFlags: number;
  ipv6TxEncapsulation: number;
  ipv6TxFlags: number;
  ipv6RxEncapsulation: number;
  ipv6RxFlags: number;
  lsoV1Encapsulation: number;
  lsoV1MaxSize: number;
  lsoV1MinSegments: number;
  lsoV1Options: number;
  lsoV2Ipv4Encapsulation: number;
  lsoV2Ipv4MaxSize: number;
  lsoV2Ipv4MinSegments: number;
  lsoV2Ipv6Encapsulation: number;
  lsoV2Ipv6MaxSize: number;
  lsoV2Ipv6MinSegments: number;
  lsoV2Ipv6Flags: number;
  flags: number;
  rscIpv4: number;
  rscIpv6: number;
}

/** No offload at all: the guest computes every checksum and sends no LSO/checksum PPIs. */
export function noOffload(): NdisOffloadFields {
  return {
    ipv4TxEncapsulation: 0, ipv4TxFlags: 0, ipv4RxEncapsulation: 0, ipv4RxFlags: 0,
    ipv6TxEncapsulation: 0, ipv6TxFlags: 0, ipv6RxEncapsulation: 0, ipv6RxFlags: 0,
    lsoV1Encapsulation: 0, lsoV1MaxSize: 0, lsoV1MinSegments: 0, lsoV1Options: 0,
    lsoV2Ipv4Encapsulation: 0, lsoV2Ipv4MaxSize: 0, lsoV2Ipv4MinSegments: 0,
    lsoV2Ipv6Encapsulation: 0, lsoV2Ipv6MaxSize: 0, lsoV2Ipv6MinSegments: 0, lsoV2Ipv6Flags: 0,
    flags: 0, rscIpv4: 0, rscIpv6: 0,
  };
}

/**
 * TX/RX checksum for TCP and UDP on v4 and v6 plus LSOv2, as spec 2.7 recommends, and
 * RSC on both IP versions (Hyper-V 2019 and later): Linux offers LRO for it, and a guest
 * that turns it on receives the host's large TCP segments whole, as fragments.
 */
export function checksumLsoAndRscOffload(): NdisOffloadFields {
  const C = ChecksumCapability;
  const v4 = C.IpOptions | C.TcpOptions | C.Tcp | C.Udp; // 0x055
  const v6 = C.IpOptions | C.TcpOptions | C.Tcp | C.Udp; // 0x055 (IpOptions = extension headers)
  const e = OffloadEncapsulation.Ieee802_3;
  return {
    ...noOffload(),
    ipv4TxEncapsulation: e, ipv4TxFlags: v4, ipv4RxEncapsulation: e, ipv4RxFlags: v4 | C.IpHeader,
    ipv6TxEncapsulation: e, ipv6TxFlags: v6, ipv6RxEncapsulation: e, ipv6RxFlags: v6,
    lsoV2Ipv4Encapsulation: e, lsoV2Ipv4MaxSize: HYPERV_LSO_MAX_SIZE, lsoV2Ipv4MinSegments: HYPERV_LSO_MIN_SEGMENTS,
    lsoV2Ipv6Encapsulation: e, lsoV2Ipv6MaxSize: HYPERV_LSO_MAX_SIZE, lsoV2Ipv6MinSegments: HYPERV_LSO_MIN_SEGMENTS,
    lsoV2Ipv6Flags: LsoV2Ipv6Capability.ExtensionHeaders | LsoV2Ipv6Capability.TcpOptions,
    rscIpv4: 1, rscIpv6: 1,
  };
}

/** The NDIS_OFFLOAD size (and with it the revision) to answer at an NVSP version (spec 2.7). */
export function ndisOffloadSizeFor(nvspVersion: number): number {
  if (nvspVersion >= 0x50000) return NDIS_OFFLOAD_SIZE_6_30;
  if (nvspVersion >= 0x40000) return NDIS_OFFLOAD_SIZE_6_1;
  return NDIS_OFFLOAD_SIZE_6_0;
}

function offloadRevisionFor(size: number): number {
  return size >= NDIS_OFFLOAD_SIZE_6_30 ? 3 : size >= NDIS_OFFLOAD_SIZE_6_1 ? 2 : 1;
}

/** Field offsets inside NDIS_OFFLOAD. */
const OFF = {
  ipv4TxEncapsulation: 4, ipv4TxFlags: 8, ipv4RxEncapsulation: 12, ipv4RxFlags: 16,
  ipv6TxEncapsulation: 20, ipv6TxFlags: 24, ipv6RxEncapsulation: 28, ipv6RxFlags: 32,
  lsoV1Encapsulation: 36, lsoV1MaxSize: 40, lsoV1MinSegments: 44, lsoV1Options: 48,
  // IPsecv1 @52 (28 bytes) stays zero.
  lsoV2Ipv4Encapsulation: 80, lsoV2Ipv4MaxSize: 84, lsoV2Ipv4MinSegments: 88,
  lsoV2Ipv6Encapsulation: 92, lsoV2Ipv6MaxSize: 96, lsoV2Ipv6MinSegments: 100, lsoV2Ipv6Flags: 104,
  flags: 108,
  // IPsecv2 @112 (32 bytes) stays zero; RSC (two u8) @144; GRE encapsulation @148 (8) stays zero.
} as const;
const OFF_RSC_IPV4 = 144;
const OFF_RSC_IPV6 = 145;
type U32Field = keyof typeof OFF;
const U32_FIELDS = Object.keys(OFF) as U32Field[];

/**
 * Writes NDIS_OFFLOAD of `size` bytes (112, 144 or 156: the revision follows the size)
 * at target[offset] and returns `size`. Fields past `size` are not written.
 */
export function encodeNdisOffload(target: Uint8Array, offset: number, f: NdisOffloadFields, size: number = NDIS_OFFLOAD_SIZE): number {
  if (size !== NDIS_OFFLOAD_SIZE_6_0 && size !== NDIS_OFFLOAD_SIZE_6_1 && size !== NDIS_OFFLOAD_SIZE_6_30) {
    throw new RangeError(`NDIS_OFFLOAD size ${size} is none of 112, 144, 156`);
  }
  fits('NDIS_OFFLOAD', target, offset, size);
  target.fill(0, offset, offset + size);
  target[offset] = NdisObjectType.Offload;
  target[offset + 1] = offloadRevisionFor(size);
  wr16(target, offset + 2, size);
  for (const k of U32_FIELDS) {
    const v = f[k];
    if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new RangeError(`NDIS_OFFLOAD.${k} = ${String(v)} does not fit in u32`);
    wr32(target, offset + OFF[k], v);
  }
  if (size >= NDIS_OFFLOAD_SIZE_6_30) {
    target[offset + OFF_RSC_IPV4] = f.rscIpv4 & 0xff;
    target[offset + OFF_RSC_IPV6] = f.rscIpv6 & 0xff;
  }
  return size;
}

export interface DecodedNdisOffload extends NdisOffloadFields { revision: number; size: number }

/**
 * Reads an NDIS_OFFLOAD answer with the checks Linux applies (type 0xA7, revision >= 1,
 * header size in [112, info length]); fields past header.size read as 0.
 */
export function decodeNdisOffload(bytes: Uint8Array, offset: number, length: number): DecodedNdisOffload | NdisObjectError {
  const n = window(bytes, offset, length);
  if (n < NDIS_OFFLOAD_SIZE_6_0) return new NdisObjectError('too-short', 'NDIS_OFFLOAD', `${n} bytes, needs ${NDIS_OFFLOAD_SIZE_6_0}`);
  const type = bytes[offset]!;
  const revision = bytes[offset + 1]!;
  const size = rd16(bytes, offset + 2);
  if (type !== NdisObjectType.Offload || revision < 1 || size < NDIS_OFFLOAD_SIZE_6_0 || size > n) {
    return new NdisObjectError('bad-header', 'NDIS_OFFLOAD', `type 0x${type.toString(16)} revision ${revision} size ${size} in ${n} bytes`);
  }
  const out = { ...noOffload(), revision, size };
  for (const k of U32_FIELDS) out[k] = rd32(bytes, offset + OFF[k]);
  if (size >= OFF_RSC_IPV6 + 1) {
    out.rscIpv4 = bytes[offset + OFF_RSC_IPV4]!;
    out.rscIpv6 = bytes[offset + OFF_RSC_IPV6]!;
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// NDIS_OFFLOAD_PARAMETERS

/** Values of each u8 field: 0 no change, 1 disabled, 2 TX only (LSO/RSC: 2 = enabled), 3 RX only, 4 TX+RX. */
export const OffloadParameter = {
  NoChange: 0,
  Disabled: 1,
  TxEnabledRxDisabled: 2,
  RxEnabledTxDisabled: 3,
  TxRxEnabled: 4,
  /** LSO and RSC fields. */
  Enabled: 2,
} as const;

export const NDIS_OFFLOAD_PARAMETERS_REVISION = 3;
/** What Linux sends: 22 bytes up to NVSP v4 (UDP fields forced to 0), else the full 28. */
export const NDIS_OFFLOAD_PARAMETERS_SIZE_V4 = 22;
export const NDIS_OFFLOAD_PARAMETERS_SIZE = 28;

export interface NdisOffloadParameters {
  revision: number;
  /** header.size as sent. */
  size: number;
  ipv4Checksum: number;
  tcpIpv4Checksum: number;
  udpIpv4Checksum: number;
  tcpIpv6Checksum: number;
  udpIpv6Checksum: number;
  lsoV1: number;
  ipsecV1: number;
  lsoV2Ipv4: number;
  lsoV2Ipv6: number;
  tcpConnectionIpv4: number;
  tcpConnectionIpv6: number;
  flags: number;
  ipsecV2: number;
  ipsecV2Ipv4: number;
  rscIpv4: number;
  rscIpv6: number;
  encapsulatedPacketTaskOffload: number;
  encapsulationTypes: number;
}

const PARAM_U8: readonly [keyof NdisOffloadParameters, number][] = [
  ['ipv4Checksum', 4], ['tcpIpv4Checksum', 5], ['udpIpv4Checksum', 6], ['tcpIpv6Checksum', 7], ['udpIpv6Checksum', 8],
  ['lsoV1', 9], ['ipsecV1', 10], ['lsoV2Ipv4', 11], ['lsoV2Ipv6', 12], ['tcpConnectionIpv4', 13], ['tcpConnectionIpv6', 14],
  ['ipsecV2', 20], ['ipsecV2Ipv4', 21], ['rscIpv4', 22], ['rscIpv6', 23], ['encapsulatedPacketTaskOffload', 24], ['encapsulationTypes', 25],
];
const PARAM_FLAGS_OFFSET = 16;

/**
 * Reads the NDIS_OFFLOAD_PARAMETERS a guest SETs. Requires the header (type 0x80); a
 * field is read only when it lies inside both header.size and the buffer, otherwise it
 * is 0 ("no change"), which is how NDIS treats shorter, older revisions.
 */
export function decodeNdisOffloadParameters(bytes: Uint8Array, offset: number, length: number): NdisOffloadParameters | NdisObjectError {
  const n = window(bytes, offset, length);
  if (n < NDIS_OBJECT_HEADER_SIZE) return new NdisObjectError('too-short', 'NDIS_OFFLOAD_PARAMETERS', `${n} bytes`);
  const type = bytes[offset]!;
  const revision = bytes[offset + 1]!;
  const size = rd16(bytes, offset + 2);
  if (type !== NdisObjectType.Default || revision < 1 || size < NDIS_OBJECT_HEADER_SIZE) {
    return new NdisObjectError('bad-header', 'NDIS_OFFLOAD_PARAMETERS', `type 0x${type.toString(16)} revision ${revision} size ${size}`);
  }
  const limit = Math.min(size, n);
  const out: NdisOffloadParameters = {
    revision, size, ipv4Checksum: 0, tcpIpv4Checksum: 0, udpIpv4Checksum: 0, tcpIpv6Checksum: 0, udpIpv6Checksum: 0,
    lsoV1: 0, ipsecV1: 0, lsoV2Ipv4: 0, lsoV2Ipv6: 0, tcpConnectionIpv4: 0, tcpConnectionIpv6: 0, flags: 0,
    ipsecV2: 0, ipsecV2Ipv4: 0, rscIpv4: 0, rscIpv6: 0, encapsulatedPacketTaskOffload: 0, encapsulationTypes: 0,
  };
  for (const [k, at] of PARAM_U8) if (at < limit) out[k] = bytes[offset + at]!;
  if (PARAM_FLAGS_OFFSET + 4 <= limit) out.flags = rd32(bytes, offset + PARAM_FLAGS_OFFSET);
  return out;
}

/** Writes NDIS_OFFLOAD_PARAMETERS (as the reference guest SETs it) and returns `size`. */
export function encodeNdisOffloadParameters(target: Uint8Array, offset: number, p: Omit<NdisOffloadParameters, 'revision' | 'size'>,
  size: number = NDIS_OFFLOAD_PARAMETERS_SIZE): number {
  if (!Number.isInteger(size) || size < NDIS_OBJECT_HEADER_SIZE || size > NDIS_OFFLOAD_PARAMETERS_SIZE) {
    throw new RangeError(`NDIS_OFFLOAD_PARAMETERS size ${size} outside 4..28`);
  }
  fits('NDIS_OFFLOAD_PARAMETERS', target, offset, size);
  target.fill(0, offset, offset + size);
  target[offset] = NdisObjectType.Default;
  target[offset + 1] = NDIS_OFFLOAD_PARAMETERS_REVISION;
  wr16(target, offset + 2, size);
  for (const [k, at] of PARAM_U8) if (at < size) target[offset + at] = (p as Record<string, number>)[k]! & 0xff;
  if (PARAM_FLAGS_OFFSET + 4 <= size) wr32(target, offset + PARAM_FLAGS_OFFSET, p.flags >>> 0);
  return size;
}

// ---------------------------------------------------------------------------------------
// NDIS_RECEIVE_SCALE_CAPABILITIES

export const RSS_CAPABILITIES_SIZE = 18;
export const RSS_CAPABILITIES_REVISION = 2;

/** cap_flags bits. */
export const RssCapability = {
  HashFunctionToeplitz: 0x00000001,
  HashTypeTcpIpv4: 0x00000100,
  HashTypeTcpIpv6: 0x00000200,
  HashTypeTcpIpv6Ex: 0x00000400,
  MessageSignaledInterrupts: 0x01000000,
  ClassificationAtIsr: 0x02000000,
  ClassificationAtDpc: 0x04000000,
  UsingMsiX: 0x08000000,
  RssAvailableOnPorts: 0x10000000,
  SupportsMsiX: 0x20000000,
} as const;

export interface RssCapabilities {
  capabilities: number;
  numInterruptMessages: number;
  numReceiveQueues: number;
  /** 0 makes Linux use 128. */
  numIndirectionEntries: number;
}

/** Writes the 18-byte NDIS_RECEIVE_SCALE_CAPABILITIES and returns 18. */
export function encodeRssCapabilities(target: Uint8Array, offset: number, c: RssCapabilities): number {
  fits('NDIS_RECEIVE_SCALE_CAPABILITIES', target, offset, RSS_CAPABILITIES_SIZE);
  if (!Number.isInteger(c.numIndirectionEntries) || c.numIndirectionEntries < 0 || c.numIndirectionEntries > 0xffff) {
    throw new RangeError(`RSS numIndirectionEntries ${c.numIndirectionEntries} does not fit in u16`);
  }
  target[offset] = NdisObjectType.RssCapabilities;
  target[offset + 1] = RSS_CAPABILITIES_REVISION;
  wr16(target, offset + 2, RSS_CAPABILITIES_SIZE);
  wr32(target, offset + 4, c.capabilities >>> 0);
  wr32(target, offset + 8, c.numInterruptMessages >>> 0);
  wr32(target, offset + 12, c.numReceiveQueues >>> 0);
  wr16(target, offset + 16, c.numIndirectionEntries);
  return RSS_CAPABILITIES_SIZE;
}

export function decodeRssCapabilities(bytes: Uint8Array, offset: number, length: number): RssCapabilities | NdisObjectError {
  const n = window(bytes, offset, length);
  if (n < RSS_CAPABILITIES_SIZE) return new NdisObjectError('too-short', 'NDIS_RECEIVE_SCALE_CAPABILITIES', `${n} bytes, needs ${RSS_CAPABILITIES_SIZE}`);
  if (bytes[offset] !== NdisObjectType.RssCapabilities) {
    return new NdisObjectError('bad-header', 'NDIS_RECEIVE_SCALE_CAPABILITIES', `type 0x${bytes[offset]!.toString(16)}`);
  }
  return {
    capabilities: rd32(bytes, offset + 4),
    numInterruptMessages: rd32(bytes, offset + 8),
    numReceiveQueues: rd32(bytes, offset + 12),
    numIndirectionEntries: rd16(bytes, offset + 16),
  };
}

// ---------------------------------------------------------------------------------------
// NDIS_RECEIVE_SCALE_PARAMETERS

export const RSS_PARAMETERS_SIZE = 40;
export const RSS_PARAMETERS_REVISION = 2;
/** The fixed fields this decoder reads (through hash_key_offset). */
const RSS_PARAMETERS_FIXED = 28;
/** NDIS allows 128 entries at revision 2; Linux >= 6.x may use up to 256. */
export const RSS_MAX_INDIRECTION_ENTRIES = 256;
export const RSS_HASH_KEY_MAX_SIZE = 40;

export const RssParameterFlag = {
  BaseCpuUnchanged: 0x01,
  HashInfoUnchanged: 0x02,
  IndirectionTableUnchanged: 0x04,
  HashKeyUnchanged: 0x08,
  DisableRss: 0x10,
} as const;

/** hash_info bits. */
export const RssHash = {
  FunctionToeplitz: 0x00000001,
  Ipv4: 0x00000100,
  TcpIpv4: 0x00000200,
  Ipv6: 0x00000400,
  Ipv6Ex: 0x00000800,
  TcpIpv6: 0x00001000,
  TcpIpv6Ex: 0x00002000,
} as const;

/** What Linux asks for: Toeplitz over IPv4/IPv6 with TCP ports. */
export const LINUX_RSS_HASH_INFO = RssHash.FunctionToeplitz | RssHash.Ipv4 | RssHash.TcpIpv4 | RssHash.Ipv6 | RssHash.TcpIpv6;

/** The well-known Microsoft Toeplitz key Linux uses by default. */
export const DEFAULT_RSS_KEY: readonly number[] = [
  0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
  0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
  0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
];

/**
 * A decoded NDIS_RECEIVE_SCALE_PARAMETERS. `tableOffset`/`keyOffset` are absolute in the
 * input and lie, with their lengths, inside the information buffer; read entries with
 * rssTableEntry().
 */
export interface RssParameters {
  revision: number;
  size: number;
  flags: number;
  baseCpuNumber: number;
  hashInfo: number;
  tableOffset: number;
  tableEntries: number;
  keyOffset: number;
  keyLength: number;
}

/**
 * Reads the RSS parameters a guest SETs. The indirection table (u32 entries, size a
 * multiple of 4, at most 256 entries) and the hash key (at most 40 bytes) must lie inside
 * the buffer after the fixed fields; offsets are from the start of the structure.
 */
export function decodeRssParameters(bytes: Uint8Array, offset: number, length: number): RssParameters | NdisObjectError {
  const what = 'NDIS_RECEIVE_SCALE_PARAMETERS';
  const n = window(bytes, offset, length);
  if (n < RSS_PARAMETERS_FIXED) return new NdisObjectError('too-short', what, `${n} bytes, needs ${RSS_PARAMETERS_FIXED}`);
  const type = bytes[offset]!;
  const revision = bytes[offset + 1]!;
  const size = rd16(bytes, offset + 2);
  if (type !== NdisObjectType.RssParameters || revision < 1) {
    return new NdisObjectError('bad-header', what, `type 0x${type.toString(16)} revision ${revision}`);
  }
  const tableBytes = rd16(bytes, offset + 12);
  const tableOff = rd32(bytes, offset + 16);
  const keyBytes = rd16(bytes, offset + 20);
  const keyOff = rd32(bytes, offset + 24);
  if (tableBytes % 4 !== 0 || tableBytes / 4 > RSS_MAX_INDIRECTION_ENTRIES) {
    return new NdisObjectError('bad-value', what, `indirection table of ${tableBytes} bytes`);
  }
  if (keyBytes > RSS_HASH_KEY_MAX_SIZE) return new NdisObjectError('bad-value', what, `hash key of ${keyBytes} bytes`);
  if (tableBytes > 0 && (tableOff < RSS_PARAMETERS_FIXED || tableOff + tableBytes > n)) {
    return new NdisObjectError('bad-range', what, `indirection table ${tableOff}+${tableBytes} outside ${n} bytes`);
  }
  if (keyBytes > 0 && (keyOff < RSS_PARAMETERS_FIXED || keyOff + keyBytes > n)) {
    return new NdisObjectError('bad-range', what, `hash key ${keyOff}+${keyBytes} outside ${n} bytes`);
  }
  return {
    revision,
    size,
    flags: rd16(bytes, offset + 4),
    baseCpuNumber: rd16(bytes, offset + 6),
    hashInfo: rd32(bytes, offset + 8),
    tableOffset: tableBytes > 0 ? offset + tableOff : offset + n,
    tableEntries: tableBytes / 4,
    keyOffset: keyBytes > 0 ? offset + keyOff : offset + n,
    keyLength: keyBytes,
  };
}

/** Entry `i` (< tableEntries) of a decoded indirection table. */
export function rssTableEntry(bytes: Uint8Array, p: RssParameters, i: number): number {
  return rd32(bytes, p.tableOffset + 4 * i);
}

/**
 * Writes NDIS_RECEIVE_SCALE_PARAMETERS as Linux does: the 40-byte structure, then the
 * table (u32 per entry) at 40, then the key. Returns the total length.
 */
export function encodeRssParameters(target: Uint8Array, offset: number, flags: number, hashInfo: number,
  table: ArrayLike<number>, key: ArrayLike<number>): number {
  if (table.length > RSS_MAX_INDIRECTION_ENTRIES) throw new RangeError(`RSS table of ${table.length} entries`);
  if (key.length > RSS_HASH_KEY_MAX_SIZE) throw new RangeError(`RSS key of ${key.length} bytes`);
  const tableOff = RSS_PARAMETERS_SIZE;
  const keyOff = tableOff + 4 * table.length;
  const total = keyOff + key.length;
  fits('NDIS_RECEIVE_SCALE_PARAMETERS', target, offset, total);
  target.fill(0, offset, offset + total);
  target[offset] = NdisObjectType.RssParameters;
  target[offset + 1] = RSS_PARAMETERS_REVISION;
  wr16(target, offset + 2, RSS_PARAMETERS_SIZE);
  wr16(target, offset + 4, flags);
  wr32(target, offset + 8, hashInfo >>> 0);
  wr16(target, offset + 12, 4 * table.length);
  wr32(target, offset + 16, tableOff);
  wr16(target, offset + 20, key.length);
  wr32(target, offset + 24, keyOff);
  for (let i = 0; i < table.length; i++) wr32(target, offset + tableOff + 4 * i, table[i]! >>> 0);
  for (let i = 0; i < key.length; i++) target[offset + keyOff + i] = key[i]! & 0xff;
  return total;
}
