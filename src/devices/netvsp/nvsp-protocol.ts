// The NVSP wire format (Network VSP, the message layer netvsc and NetVSP speak on every
// channel): message types, statuses, protocol versions, and a codec for each message of
// the versions Linux negotiates (1, 2, 4, 5, 6, 6.1). Layouts follow Linux
// drivers/net/hyperv/hyperv_net.h (`struct nvsp_message`); the spec is
// shared/spec/vsp-protocols.md section 2.1. No state machine lives here.
//
// Every message is `u32 msg_type` followed by a body. Guest->host messages are always 40
// bytes (sizeof(struct nvsp_message)); the host sends 28 bytes before version 6.1 and 40
// from 6.1 (40 always works too). Decoders read only inside the payload they are given,
// return a typed NvspError for anything malformed and never throw. Shared by NetVSP (host)
// and the reference netvsc (guest), hence both directions.
import { rd16, rd32, wr16, wr32, zeroBytes } from './le-bytes.js';

export const NETVSC_CLASS_ID = 'f8615163-df3e-46c5-913f-f2d2f965ed0e';

/** sizeof(struct nvsp_message): what the guest always sends, and what the host sends from v6.1. */
export const NVSP_MESSAGE_SIZE = 40;
/** The message size before v6.1 (header + the largest v1..v5 body). */
export const NVSP_LEGACY_MESSAGE_SIZE = 28;

export const NvspMessageType = {
  None: 0,
  Init: 1,
  InitComplete: 2,
  SendNdisVersion: 100,
  SendReceiveBuffer: 101,
  SendReceiveBufferComplete: 102,
  RevokeReceiveBuffer: 103,
  SendSendBuffer: 104,
  SendSendBufferComplete: 105,
  RevokeSendBuffer: 106,
  SendRndisPacket: 107,
  SendRndisPacketComplete: 108,
  // 109..124: v2 chimney / VMQ / rx-buffer allocation, never used by Linux.
  SendNdisConfig: 125,
  AllocChimneyHandle: 126,
  AllocChimneyHandleComplete: 127,
  SendVfAssociation: 128,
  SwitchDataPath: 129,
  UplinkConnectStateDeprecated: 130,
  OidQueryEx: 131,
  OidQueryExComplete: 132,
  Subchannel: 133,
  SendIndirectionTable: 134,
  PdApi: 135,
  PdPostBatch: 136,
} as const;

/** NVSP status. SUCCESS is 1, not 0: a zero status is NONE and Linux treats it as failure. */
export const NvspStatus = {
  None: 0,
  Success: 1,
  Fail: 2,
  ProtocolTooNew: 3,
  ProtocolTooOld: 4,
  InvalidRndisPacket: 5,
  Busy: 6,
  ProtocolUnsupported: 7,
} as const;

export const NvspVersion = {
  V1: 0x2,
  V2: 0x30002,
  V4: 0x40000,
  V5: 0x50000,
  V6: 0x60000,
  V61: 0x60001,
} as const;

/** The order Linux offers versions in: one INIT each (min = max), highest first. */
export const LINUX_NVSP_VERSION_ORDER: readonly number[] = [
  NvspVersion.V61,
  NvspVersion.V6,
  NvspVersion.V5,
  NvspVersion.V4,
  NvspVersion.V2,
  NvspVersion.V1,
];

/** What Hyper-V puts in INIT_COMPLETE.negotiated_ver for anything but v1 (Linux ignores it). */
export const NVSP_INVALID_PROTOCOL_VERSION = 0xffffffff;
/** INIT_COMPLETE.max_mdl_chain_len as Hyper-V sends it. */
export const NVSP_MAX_MDL_CHAIN_LENGTH = 34;

/** NDIS versions the guest announces in SEND_NDIS_VER: 6.1 up to v4, 6.30 from v5. */
export const NDIS_VERSION_6_1 = { major: 6, minor: 1 } as const;
export const NDIS_VERSION_6_30 = { major: 6, minor: 30 } as const;

/** SEND_RNDIS_PKT.channel_type. */
export const RndisChannelType = { Data: 0, Control: 1 } as const;
/** SEND_RNDIS_PKT.send_buf_section_index when the send buffer is not used. */
export const NVSP_INVALID_SECTION_INDEX = 0xffffffff;

/** Buffer ids Linux uses (the receive id is also the transfer-page set id). */
export const NETVSC_RECEIVE_BUFFER_ID = 0xcafe;
export const NETVSC_SEND_BUFFER_ID = 0;
/** Linux's defaults and limits for buffer sections. */
export const NETVSC_RECEIVE_SECTION_SIZE = 1728;
export const NETVSC_SEND_SECTION_SIZE = 6144;
/** Linux fails the device when a section is smaller than ETH_MIN_MTU. */
export const NETVSC_MIN_SECTION_SIZE = 68;

/** SEND_NDIS_CONFIG capability bits (a u64; only the low byte is defined). */
export const NdisConfigCapability = {
  Vmq: 0x01,
  Chimney: 0x02,
  Sriov: 0x04,
  Ieee8021q: 0x08,
  CorrelationId: 0x10,
  Teaming: 0x20,
  VirtualSubnetId: 0x40,
  Rsc: 0x80,
} as const;

/** SUBCHANNEL request operation. */
export const SubchannelOperation = { None: 0, Allocate: 1 } as const;
/** SWITCH_DATA_PATH.active_datapath. */
export const DataPath = { Synthetic: 0, Vf: 1 } as const;

/** SEND_INDIRECTION_TABLE: the number of entries (VRSS_SEND_TAB_SIZE) and where the host puts them. */
export const VRSS_SEND_TABLE_SIZE = 16;
export const SEND_INDIRECTION_TABLE_OFFSET = 40;

/**
 * The shortest host->guest completions Linux accepts; shorter ones are dropped silently
 * and the guest then waits forever (spec 2.2). The decoder applies these to-guest.
 */
export const LINUX_MIN_COMPLETION_LENGTH = {
  initComplete: 28,
  receiveBufferComplete: 28,
  sendBufferComplete: 12,
  subchannelComplete: 12,
} as const;

// ---------------------------------------------------------------------------------------
// Messages

export interface NvspInit { kind: 'init'; minVersion: number; maxVersion: number }
export interface NvspInitComplete { kind: 'init-complete'; negotiatedVersion: number; maxMdlChainLength: number; status: number }
export interface NvspNdisVersion { kind: 'ndis-version'; major: number; minor: number }
export interface NvspNdisConfig { kind: 'ndis-config'; mtu: number; reserved: number; capabilities: bigint }
export interface NvspReceiveBuffer { kind: 'receive-buffer'; gpadlHandle: number; id: number }
/** Only the first section is carried (Linux accepts exactly one). */
export interface NvspReceiveBufferComplete {
  kind: 'receive-buffer-complete';
  status: number;
  numSections: number;
  sectionOffset: number;
  subAllocSize: number;
  numSubAllocs: number;
  endOffset: number;
}
export interface NvspRevokeReceiveBuffer { kind: 'revoke-receive-buffer'; id: number }
export interface NvspSendBuffer { kind: 'send-buffer'; gpadlHandle: number; id: number }
export interface NvspSendBufferComplete { kind: 'send-buffer-complete'; status: number; sectionSize: number }
export interface NvspRevokeSendBuffer { kind: 'revoke-send-buffer'; id: number }
export interface NvspRndisPacket { kind: 'rndis-packet'; channelType: number; sectionIndex: number; sectionSize: number }
export interface NvspRndisPacketComplete { kind: 'rndis-packet-complete'; status: number }
export interface NvspSubchannelRequest { kind: 'subchannel-request'; operation: number; count: number }
export interface NvspSubchannelComplete { kind: 'subchannel-complete'; status: number; count: number }
/**
 * `table` holds the `count` entries (count is always 16) read from `offset` bytes after
 * the start of the message; a decoder reuses the same array.
 */
export interface NvspIndirectionTable { kind: 'indirection-table'; count: number; offset: number; table: Uint32Array }
export interface NvspSwitchDataPath { kind: 'switch-data-path'; activeDataPath: number }
export interface NvspVfAssociation { kind: 'vf-association'; allocated: number; serial: number }

export type NvspMessage =
  | NvspInit
  | NvspInitComplete
  | NvspNdisVersion
  | NvspNdisConfig
  | NvspReceiveBuffer
  | NvspReceiveBufferComplete
  | NvspRevokeReceiveBuffer
  | NvspSendBuffer
  | NvspSendBufferComplete
  | NvspRevokeSendBuffer
  | NvspRndisPacket
  | NvspRndisPacketComplete
  | NvspSubchannelRequest
  | NvspSubchannelComplete
  | NvspIndirectionTable
  | NvspSwitchDataPath
  | NvspVfAssociation;

export type NvspMessageKind = NvspMessage['kind'];

/**
 * Which way a payload travels. SUBCHANNEL (133) has the same type both ways (request and
 * completion), so a decoder must be told which side it is on; it also rejects messages
 * that only ever travel the other way.
 */
export type NvspDirection = 'to-host' | 'to-guest';

export type NvspErrorReason = 'too-short' | 'unknown-type' | 'wrong-direction' | 'bad-field';

/** A malformed NVSP payload. Returned, never thrown. */
export class NvspError {
  readonly isNvspError = true;
  constructor(
    readonly reason: NvspErrorReason,
    /** The msg_type read (0 when the payload is too short to hold one). */
    readonly messageType: number,
    /** The payload length. */
    readonly length: number,
    readonly detail: string,
  ) {}

  get message(): string {
    return `NVSP message type ${this.messageType} (${this.length} bytes): ${this.reason}: ${this.detail}`;
  }
}

export function isNvspError(x: unknown): x is NvspError {
  return x instanceof NvspError;
}

// ---------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------
// Decoding

/** The bytes each message's fields occupy (header included): the minimum a decoder accepts. */
const FIELD_EXTENT: { [K in NvspMessageKind]: number } = {
  init: 12,
  'init-complete': 16,
  'ndis-version': 12,
  'ndis-config': 20,
  'receive-buffer': 10,
  'receive-buffer-complete': 28,
  'revoke-receive-buffer': 6,
  'send-buffer': 10,
  'send-buffer-complete': 12,
  'revoke-send-buffer': 6,
  'rndis-packet': 16,
  'rndis-packet-complete': 8,
  'subchannel-request': 12,
  'subchannel-complete': 12,
  'indirection-table': 12,
  'switch-data-path': 8,
  'vf-association': 12,
};

/** The minimum length per kind for the to-guest direction: Linux's own limits where stricter. */
const TO_GUEST_MIN_LENGTH: Partial<{ [K in NvspMessageKind]: number }> = {
  'init-complete': LINUX_MIN_COMPLETION_LENGTH.initComplete,
  'receive-buffer-complete': LINUX_MIN_COMPLETION_LENGTH.receiveBufferComplete,
  'send-buffer-complete': LINUX_MIN_COMPLETION_LENGTH.sendBufferComplete,
  'subchannel-complete': LINUX_MIN_COMPLETION_LENGTH.subchannelComplete,
};

function kindFor(type: number, direction: NvspDirection): NvspMessageKind | 'other-direction' | undefined {
  const toHost = direction === 'to-host';
  switch (type) {
    case NvspMessageType.Init: return toHost ? 'init' : 'other-direction';
    case NvspMessageType.InitComplete: return toHost ? 'other-direction' : 'init-complete';
    case NvspMessageType.SendNdisVersion: return toHost ? 'ndis-version' : 'other-direction';
    case NvspMessageType.SendNdisConfig: return toHost ? 'ndis-config' : 'other-direction';
    case NvspMessageType.SendReceiveBuffer: return toHost ? 'receive-buffer' : 'other-direction';
    case NvspMessageType.SendReceiveBufferComplete: return toHost ? 'other-direction' : 'receive-buffer-complete';
    case NvspMessageType.RevokeReceiveBuffer: return toHost ? 'revoke-receive-buffer' : 'other-direction';
    case NvspMessageType.SendSendBuffer: return toHost ? 'send-buffer' : 'other-direction';
    case NvspMessageType.SendSendBufferComplete: return toHost ? 'other-direction' : 'send-buffer-complete';
    case NvspMessageType.RevokeSendBuffer: return toHost ? 'revoke-send-buffer' : 'other-direction';
    case NvspMessageType.SendRndisPacket: return 'rndis-packet';
    case NvspMessageType.SendRndisPacketComplete: return 'rndis-packet-complete';
    case NvspMessageType.Subchannel: return toHost ? 'subchannel-request' : 'subchannel-complete';
    case NvspMessageType.SendIndirectionTable: return toHost ? 'other-direction' : 'indirection-table';
    case NvspMessageType.SwitchDataPath: return toHost ? 'switch-data-path' : 'other-direction';
    case NvspMessageType.SendVfAssociation: return toHost ? 'other-direction' : 'vf-association';
    default: return undefined;
  }
}

/**
 * Decodes NVSP payloads into message objects it owns and reuses: one decoder per channel,
 * and each result is valid until that decoder's next decode. This keeps the data path
 * (SEND_RNDIS_PKT and its completion, once per packet) free of allocation.
 */
export class NvspDecoder {
  private readonly init: NvspInit = { kind: 'init', minVersion: 0, maxVersion: 0 };
  private readonly initComplete: NvspInitComplete = { kind: 'init-complete', negotiatedVersion: 0, maxMdlChainLength: 0, status: 0 };
  private readonly ndisVersion: NvspNdisVersion = { kind: 'ndis-version', major: 0, minor: 0 };
  private readonly ndisConfig: NvspNdisConfig = { kind: 'ndis-config', mtu: 0, reserved: 0, capabilities: 0n };
  private readonly receiveBuffer: NvspReceiveBuffer = { kind: 'receive-buffer', gpadlHandle: 0, id: 0 };
  private readonly receiveBufferComplete: NvspReceiveBufferComplete = {
    kind: 'receive-buffer-complete', status: 0, numSections: 0, sectionOffset: 0, subAllocSize: 0, numSubAllocs: 0, endOffset: 0,
  };
  private readonly revokeReceiveBuffer: NvspRevokeReceiveBuffer = { kind: 'revoke-receive-buffer', id: 0 };
  private readonly sendBuffer: NvspSendBuffer = { kind: 'send-buffer', gpadlHandle: 0, id: 0 };
  private readonly sendBufferComplete: NvspSendBufferComplete = { kind: 'send-buffer-complete', status: 0, sectionSize: 0 };
  private readonly revokeSendBuffer: NvspRevokeSendBuffer = { kind: 'revoke-send-buffer', id: 0 };
  private readonly rndisPacket: NvspRndisPacket = { kind: 'rndis-packet', channelType: 0, sectionIndex: 0, sectionSize: 0 };
  private readonly rndisPacketComplete: NvspRndisPacketComplete = { kind: 'rndis-packet-complete', status: 0 };
  private readonly subchannelRequest: NvspSubchannelRequest = { kind: 'subchannel-request', operation: 0, count: 0 };
  private readonly subchannelComplete: NvspSubchannelComplete = { kind: 'subchannel-complete', status: 0, count: 0 };
  private readonly indirectionTable: NvspIndirectionTable = {
    kind: 'indirection-table', count: 0, offset: 0, table: new Uint32Array(VRSS_SEND_TABLE_SIZE),
  };
  private readonly switchDataPath: NvspSwitchDataPath = { kind: 'switch-data-path', activeDataPath: 0 };
  private readonly vfAssociation: NvspVfAssociation = { kind: 'vf-association', allocated: 0, serial: 0 };

  decode(payload: Uint8Array, direction: NvspDirection): NvspMessage | NvspError {
    const n = payload.length;
    if (n < 4) return new NvspError('too-short', 0, n, 'no room for msg_type');
    const type = rd32(payload, 0);
    const kind = kindFor(type, direction);
    if (kind === undefined) return new NvspError('unknown-type', type, n, 'not a message type this codec knows');
    if (kind === 'other-direction') {
      return new NvspError('wrong-direction', type, n, `type ${type} never travels ${direction}`);
    }
    const min = direction === 'to-guest' ? (TO_GUEST_MIN_LENGTH[kind] ?? FIELD_EXTENT[kind]) : FIELD_EXTENT[kind];
    if (n < min) return new NvspError('too-short', type, n, `${kind} needs ${min} bytes`);
    const b = payload;
    switch (kind) {
      case 'init': {
        const m = this.init;
        m.minVersion = rd32(b, 4);
        m.maxVersion = rd32(b, 8);
        return m;
      }
      case 'init-complete': {
        const m = this.initComplete;
        m.negotiatedVersion = rd32(b, 4);
        m.maxMdlChainLength = rd32(b, 8);
        m.status = rd32(b, 12);
        return m;
      }
      case 'ndis-version': {
        const m = this.ndisVersion;
        m.major = rd32(b, 4);
        m.minor = rd32(b, 8);
        return m;
      }
      case 'ndis-config': {
        const m = this.ndisConfig;
        m.mtu = rd32(b, 4);
        m.reserved = rd32(b, 8);
        m.capabilities = (BigInt(rd32(b, 16)) << 32n) | BigInt(rd32(b, 12));
        return m;
      }
      case 'receive-buffer': {
        const m = this.receiveBuffer;
        m.gpadlHandle = rd32(b, 4);
        m.id = rd16(b, 8);
        return m;
      }
      case 'receive-buffer-complete': {
        const m = this.receiveBufferComplete;
        m.status = rd32(b, 4);
        m.numSections = rd32(b, 8);
        m.sectionOffset = rd32(b, 12);
        m.subAllocSize = rd32(b, 16);
        m.numSubAllocs = rd32(b, 20);
        m.endOffset = rd32(b, 24);
        return m;
      }
      case 'revoke-receive-buffer': {
        const m = this.revokeReceiveBuffer;
        m.id = rd16(b, 4);
        return m;
      }
      case 'send-buffer': {
        const m = this.sendBuffer;
        m.gpadlHandle = rd32(b, 4);
        m.id = rd16(b, 8);
        return m;
      }
      case 'send-buffer-complete': {
        const m = this.sendBufferComplete;
        m.status = rd32(b, 4);
        m.sectionSize = rd32(b, 8);
        return m;
      }
      case 'revoke-send-buffer': {
        const m = this.revokeSendBuffer;
        m.id = rd16(b, 4);
        return m;
      }
      case 'rndis-packet': {
        const m = this.rndisPacket;
        m.channelType = rd32(b, 4);
        m.sectionIndex = rd32(b, 8);
        m.sectionSize = rd32(b, 12);
        return m;
      }
      case 'rndis-packet-complete': {
        const m = this.rndisPacketComplete;
        m.status = rd32(b, 4);
        return m;
      }
      case 'subchannel-request': {
        const m = this.subchannelRequest;
        m.operation = rd32(b, 4);
        m.count = rd32(b, 8);
        return m;
      }
      case 'subchannel-complete': {
        const m = this.subchannelComplete;
        m.status = rd32(b, 4);
        m.count = rd32(b, 8);
        return m;
      }
      case 'indirection-table': {
        const count = rd32(b, 4);
        const offset = rd32(b, 8);
        // Linux rejects any other count; the table is a fixed 16-entry array on its side.
        if (count !== VRSS_SEND_TABLE_SIZE) {
          return new NvspError('bad-field', type, n, `indirection table count ${count}, must be ${VRSS_SEND_TABLE_SIZE}`);
        }
        if (offset < FIELD_EXTENT['indirection-table'] || offset > n - 4 * count) {
          return new NvspError('bad-field', type, n, `indirection table at ${offset} (+${4 * count}) is outside the message`);
        }
        const m = this.indirectionTable;
        m.count = count;
        m.offset = offset;
        for (let i = 0; i < count; i++) m.table[i] = rd32(b, offset + 4 * i);
        return m;
      }
      case 'switch-data-path': {
        const m = this.switchDataPath;
        m.activeDataPath = rd32(b, 4);
        return m;
      }
      case 'vf-association': {
        const m = this.vfAssociation;
        m.allocated = rd32(b, 4);
        m.serial = rd32(b, 8);
        return m;
      }
    }
  }
}

/**
 * Decodes one payload into fresh objects (control paths and tests). Hot paths keep an
 * NvspDecoder per channel instead.
 */
export function decodeNvspMessage(payload: Uint8Array, direction: NvspDirection): NvspMessage | NvspError {
  const m = new NvspDecoder().decode(payload, direction);
  if (m instanceof NvspError || m.kind !== 'indirection-table') return m;
  return { ...m, table: new Uint32Array(m.table) };
}

// ---------------------------------------------------------------------------------------
// Encoding

/** The size the host should send at `version`: 40 from v6.1, 28 before (spec 2.1). */
export function nvspHostMessageSize(version: number): number {
  return version >= NvspVersion.V61 ? NVSP_MESSAGE_SIZE : NVSP_LEGACY_MESSAGE_SIZE;
}

function u32(name: string, v: number): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new RangeError(`NVSP ${name} = ${String(v)} does not fit in u32`);
  return v;
}
function u16(name: string, v: number): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffff) throw new RangeError(`NVSP ${name} = ${String(v)} does not fit in u16`);
  return v;
}

function typeOf(m: NvspMessage): number {
  switch (m.kind) {
    case 'init': return NvspMessageType.Init;
    case 'init-complete': return NvspMessageType.InitComplete;
    case 'ndis-version': return NvspMessageType.SendNdisVersion;
    case 'ndis-config': return NvspMessageType.SendNdisConfig;
    case 'receive-buffer': return NvspMessageType.SendReceiveBuffer;
    case 'receive-buffer-complete': return NvspMessageType.SendReceiveBufferComplete;
    case 'revoke-receive-buffer': return NvspMessageType.RevokeReceiveBuffer;
    case 'send-buffer': return NvspMessageType.SendSendBuffer;
    case 'send-buffer-complete': return NvspMessageType.SendSendBufferComplete;
    case 'revoke-send-buffer': return NvspMessageType.RevokeSendBuffer;
    case 'rndis-packet': return NvspMessageType.SendRndisPacket;
    case 'rndis-packet-complete': return NvspMessageType.SendRndisPacketComplete;
    case 'subchannel-request':
    case 'subchannel-complete': return NvspMessageType.Subchannel;
    case 'indirection-table': return NvspMessageType.SendIndirectionTable;
    case 'switch-data-path': return NvspMessageType.SwitchDataPath;
    case 'vf-association': return NvspMessageType.SendVfAssociation;
  }
}

/** The bytes `encodeNvspMessage` writes for `m` at `size`. */
export function nvspEncodedLength(m: NvspMessage, size: number = NVSP_MESSAGE_SIZE): number {
  if (m.kind === 'indirection-table') return Math.max(size, m.offset + 4 * m.count);
  return size;
}

/**
 * Writes `m` at `target[offset]` as a `size`-byte message (NVSP_MESSAGE_SIZE or
 * NVSP_LEGACY_MESSAGE_SIZE; see nvspHostMessageSize), zeroing the unused body, and
 * returns the bytes written. SEND_INDIRECTION_TABLE is longer: its table follows at
 * `m.offset` (SEND_INDIRECTION_TABLE_OFFSET). Throws RangeError for a value that does
 * not fit its field or a target that is too small (caller bugs, never guest input).
 */
export function encodeNvspMessage(m: NvspMessage, target: Uint8Array, offset = 0, size: number = NVSP_MESSAGE_SIZE): number {
  if (size < FIELD_EXTENT[m.kind]) throw new RangeError(`NVSP ${m.kind} needs ${FIELD_EXTENT[m.kind]} bytes, size is ${size}`);
  const length = nvspEncodedLength(m, size);
  if (!Number.isInteger(offset) || offset < 0 || offset + length > target.length) {
    throw new RangeError(`NVSP ${m.kind}: ${length} bytes at ${offset} do not fit in ${target.length}`);
  }
  const t = target;
  const o = offset;
  zeroBytes(t, o, o + length);
  wr32(t, o, typeOf(m));
  switch (m.kind) {
    case 'init':
      wr32(t, o + 4, u32('minVersion', m.minVersion));
      wr32(t, o + 8, u32('maxVersion', m.maxVersion));
      break;
    case 'init-complete':
      wr32(t, o + 4, u32('negotiatedVersion', m.negotiatedVersion));
      wr32(t, o + 8, u32('maxMdlChainLength', m.maxMdlChainLength));
      wr32(t, o + 12, u32('status', m.status));
      break;
    case 'ndis-version':
      wr32(t, o + 4, u32('major', m.major));
      wr32(t, o + 8, u32('minor', m.minor));
      break;
    case 'ndis-config': {
      if (typeof m.capabilities !== 'bigint' || m.capabilities < 0n || m.capabilities > 0xffffffffffffffffn) {
        throw new RangeError(`NVSP capabilities = ${String(m.capabilities)} does not fit in u64`);
      }
      wr32(t, o + 4, u32('mtu', m.mtu));
      wr32(t, o + 8, u32('reserved', m.reserved));
      wr32(t, o + 12, Number(m.capabilities & 0xffffffffn));
      wr32(t, o + 16, Number(m.capabilities >> 32n));
      break;
    }
    case 'receive-buffer':
    case 'send-buffer':
      wr32(t, o + 4, u32('gpadlHandle', m.gpadlHandle));
      wr16(t, o + 8, u16('id', m.id));
      break;
    case 'receive-buffer-complete':
      wr32(t, o + 4, u32('status', m.status));
      wr32(t, o + 8, u32('numSections', m.numSections));
      wr32(t, o + 12, u32('sectionOffset', m.sectionOffset));
      wr32(t, o + 16, u32('subAllocSize', m.subAllocSize));
      wr32(t, o + 20, u32('numSubAllocs', m.numSubAllocs));
      wr32(t, o + 24, u32('endOffset', m.endOffset));
      break;
    case 'revoke-receive-buffer':
    case 'revoke-send-buffer':
      wr16(t, o + 4, u16('id', m.id));
      break;
    case 'send-buffer-complete':
      wr32(t, o + 4, u32('status', m.status));
      wr32(t, o + 8, u32('sectionSize', m.sectionSize));
      break;
    case 'rndis-packet':
      wr32(t, o + 4, u32('channelType', m.channelType));
      wr32(t, o + 8, u32('sectionIndex', m.sectionIndex));
      wr32(t, o + 12, u32('sectionSize', m.sectionSize));
      break;
    case 'rndis-packet-complete':
      wr32(t, o + 4, u32('status', m.status));
      break;
    case 'subchannel-request':
      wr32(t, o + 4, u32('operation', m.operation));
      wr32(t, o + 8, u32('count', m.count));
      break;
    case 'subchannel-complete':
      wr32(t, o + 4, u32('status', m.status));
      wr32(t, o + 8, u32('count', m.count));
      break;
    case 'indirection-table': {
      if (m.offset < FIELD_EXTENT['indirection-table']) throw new RangeError(`NVSP indirection table offset ${m.offset} overlaps the header`);
      if (m.table.length < m.count) throw new RangeError(`NVSP indirection table has ${m.table.length} entries, count is ${m.count}`);
      wr32(t, o + 4, u32('count', m.count));
      wr32(t, o + 8, u32('offset', m.offset));
      for (let i = 0; i < m.count; i++) wr32(t, o + m.offset + 4 * i, u32('table entry', m.table[i]!));
      break;
    }
    case 'switch-data-path':
      wr32(t, o + 4, u32('activeDataPath', m.activeDataPath));
      break;
    case 'vf-association':
      wr32(t, o + 4, u32('allocated', m.allocated));
      wr32(t, o + 8, u32('serial', m.serial));
      break;
  }
  return length;
}

/**
 * SEND_RNDIS_PKT without a message object, for the per-packet paths: the host's receive
 * indications (section index 0xFFFFFFFF, size 0) and the guest's sends.
 */
export function encodeRndisPacketMessage(
  target: Uint8Array, offset: number, channelType: number, sectionIndex: number, sectionSize: number, size: number = NVSP_MESSAGE_SIZE,
): number {
  if (size < 16 || offset < 0 || offset + size > target.length) throw new RangeError(`NVSP rndis-packet: ${size} bytes at ${offset} do not fit in ${target.length}`);
  zeroBytes(target, offset, offset + size);
  wr32(target, offset, NvspMessageType.SendRndisPacket);
  wr32(target, offset + 4, channelType);
  wr32(target, offset + 8, sectionIndex);
  wr32(target, offset + 12, sectionSize);
  return size;
}

/**
 * SEND_RNDIS_PKT_COMPLETE without a message object. The guest's transfer-page completion
 * is exactly these 8 bytes; the host's send completion uses the full message size.
 */
export function encodeRndisPacketCompleteMessage(target: Uint8Array, offset: number, status: number, size: number = NVSP_MESSAGE_SIZE): number {
  if (size < 8 || offset < 0 || offset + size > target.length) throw new RangeError(`NVSP rndis-packet-complete: ${size} bytes at ${offset} do not fit in ${target.length}`);
  zeroBytes(target, offset, offset + size);
  wr32(target, offset, NvspMessageType.SendRndisPacketComplete);
  wr32(target, offset + 4, status);
  return size;
}

// ---------------------------------------------------------------------------------------
// Buffer layout

/** The one receive-buffer section the host announces in SEND_RECV_BUF_COMPLETE. */
export interface ReceiveSectionLayout {
  sectionOffset: number;
  subAllocSize: number;
  numSubAllocs: number;
  endOffset: number;
}

/**
 * Splits a receive buffer into equal sub-allocations of `subAllocSize` starting at 0,
 * as Linux requires (one section, offset 0, size >= 68, size * count <= buffer).
 * Throws RangeError when the buffer cannot hold a single sub-allocation.
 */
export function planReceiveSection(bufferBytes: number, subAllocSize: number): ReceiveSectionLayout {
  if (!Number.isInteger(subAllocSize) || subAllocSize < NETVSC_MIN_SECTION_SIZE || subAllocSize > 0xffffffff) {
    throw new RangeError(`receive section size ${subAllocSize} must be an integer >= ${NETVSC_MIN_SECTION_SIZE}`);
  }
  if (!Number.isInteger(bufferBytes) || bufferBytes < subAllocSize || bufferBytes > 0xffffffff) {
    throw new RangeError(`receive buffer of ${bufferBytes} bytes cannot hold a ${subAllocSize}-byte section`);
  }
  const numSubAllocs = Math.floor(bufferBytes / subAllocSize);
  return { sectionOffset: 0, subAllocSize, numSubAllocs, endOffset: subAllocSize * numSubAllocs };
}

/** The number of send sections the guest derives from its buffer (buffer / section size). */
export function sendSectionCount(bufferBytes: number, sectionSize: number): number {
  if (!Number.isInteger(sectionSize) || sectionSize < NETVSC_MIN_SECTION_SIZE) return 0;
  return Math.floor(bufferBytes / sectionSize);
}
