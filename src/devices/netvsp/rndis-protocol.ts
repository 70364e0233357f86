// The RNDIS wire format as netvsc and NetVSP carry it inside NVSP SEND_RNDIS_PKT
// (shared/spec/vsp-protocols.md section 2.5; Linux include/linux/rndis.h and
// drivers/net/hyperv/hyperv_net.h). Message types, statuses, decoders that validate every
// length and offset against the message, and encoders. No state machine lives here.
//
// Every message starts `u32 msg_type, u32 msg_len` (msg_len covers the whole message,
// padding included, which is how batched messages are walked). Offsets inside bodies
// (information buffers, packet data, PPIs, status buffers) count from byte 8, the start
// of the body, not from the start of the message. Decoders report ranges as absolute
// offsets into the bytes they were given, each checked to lie inside the message.
import { rd32, wr32, zeroBytes } from './le-bytes.js';

export const RNDIS_HEADER_SIZE = 8;
/** Offsets in bodies are relative to this byte of the message. */
export const RNDIS_BODY_OFFSET = 8;

const COMPLETION = 0x80000000;

export const RndisMessageType = {
  Packet: 0x00000001,
  Initialize: 0x00000002,
  InitializeComplete: (0x00000002 | COMPLETION) >>> 0,
  Halt: 0x00000003,
  Query: 0x00000004,
  QueryComplete: (0x00000004 | COMPLETION) >>> 0,
  Set: 0x00000005,
  SetComplete: (0x00000005 | COMPLETION) >>> 0,
  Reset: 0x00000006,
  ResetComplete: (0x00000006 | COMPLETION) >>> 0,
  IndicateStatus: 0x00000007,
  Keepalive: 0x00000008,
  KeepaliveComplete: (0x00000008 | COMPLETION) >>> 0,
} as const;

/** Fixed sizes (header included) of each message; the variable part follows. */
export const RndisMessageSize = {
  Packet: 44,
  Initialize: 24,
  InitializeComplete: 52,
  Halt: 12,
  Query: 28,
  QueryComplete: 24,
  Set: 28,
  SetComplete: 16,
  Reset: 12,
  ResetComplete: 16,
  IndicateStatus: 20,
  Keepalive: 12,
  KeepaliveComplete: 16,
} as const;

/** NDIS_STATUS values used in completions and indications (unsigned). */
export const NdisStatus = {
  Success: 0x00000000,
  Pending: 0x00000103,
  BufferOverflow: 0x80000005,
  Failure: 0xc0000001,
  Resources: 0xc000009a,
  NotSupported: 0xc00000bb,
  InvalidLength: 0xc0010014,
  InvalidData: 0xc0010015,
  BufferTooShort: 0xc0010016,
  InvalidOid: 0xc0010017,
  // Indications (INDICATE_STATUS.status).
  MediaConnect: 0x4001000b,
  MediaDisconnect: 0x4001000c,
  MediaSpecificIndication: 0x40010012,
  LinkSpeedChange: 0x40010013,
  NetworkChange: 0x40010018,
} as const;

export const RNDIS_MAJOR_VERSION = 1;
export const RNDIS_MINOR_VERSION = 0;
/** INITIALIZE_CMPLT.device_flags. */
export const RNDIS_DF_CONNECTIONLESS = 0x1;
/** INITIALIZE_CMPLT.medium: 802.3. */
export const RNDIS_MEDIUM_802_3 = 0;
/** What Hyper-V and OpenVMM answer in INITIALIZE_CMPLT (spec 2.5). */
export const RNDIS_HOST_MAX_PACKETS_PER_MESSAGE = 8;
export const RNDIS_HOST_PACKET_ALIGNMENT_FACTOR = 3;
export const RNDIS_HOST_MAX_TRANSFER_SIZE = 0xefffffff;
/** Linux drops a control response longer than this (52-byte RNDIS message + 4096). */
export const LINUX_MAX_RESPONSE_LENGTH = 4148;

/** NDIS media states (OID_GEN_MEDIA_CONNECT_STATUS). */
export const NdisMediaState = { Connected: 0, Disconnected: 1 } as const;

/** OID_GEN_CURRENT_PACKET_FILTER bits. */
export const NdisPacketFilter = {
  Directed: 0x1,
  Multicast: 0x2,
  AllMulticast: 0x4,
  Broadcast: 0x8,
  Promiscuous: 0x20,
} as const;

// ---------------------------------------------------------------------------------------
// Decoded messages. `start` is where the message begins in the input and `length` its
// msg_len; every `...Offset` below is absolute in the input and lies, with its length,
// inside [start, start + length).

interface RndisBase { start: number; length: number }

export interface RndisInitialize extends RndisBase { kind: 'initialize'; requestId: number; majorVersion: number; minorVersion: number; maxTransferSize: number }
export interface RndisInitializeComplete extends RndisBase {
  kind: 'initialize-complete';
  requestId: number;
  status: number;
  majorVersion: number;
  minorVersion: number;
  deviceFlags: number;
  medium: number;
  maxPacketsPerMessage: number;
  maxTransferSize: number;
  packetAlignmentFactor: number;
  afListOffset: number;
  afListSize: number;
}
export interface RndisHalt extends RndisBase { kind: 'halt'; requestId: number }
export interface RndisQuery extends RndisBase { kind: 'query'; requestId: number; oid: number; infoOffset: number; infoLength: number; deviceVcHandle: number }
export interface RndisQueryComplete extends RndisBase { kind: 'query-complete'; requestId: number; status: number; infoOffset: number; infoLength: number }
export interface RndisSet extends RndisBase { kind: 'set'; requestId: number; oid: number; infoOffset: number; infoLength: number; deviceVcHandle: number }
export interface RndisSetComplete extends RndisBase { kind: 'set-complete'; requestId: number; status: number }
export interface RndisReset extends RndisBase { kind: 'reset'; reserved: number }
export interface RndisResetComplete extends RndisBase { kind: 'reset-complete'; status: number; addressingReset: number }
export interface RndisIndicateStatus extends RndisBase { kind: 'indicate-status'; status: number; bufferOffset: number; bufferLength: number }
export interface RndisKeepalive extends RndisBase { kind: 'keepalive'; requestId: number }
export interface RndisKeepaliveComplete extends RndisBase { kind: 'keepalive-complete'; requestId: number; status: number }
/**
 * A data message. OOB data is obsolete (Linux never sends it, NDIS 6 has none) and is
 * reported only as the raw header fields, never as a range.
 */
export interface RndisPacket extends RndisBase {
  kind: 'packet';
  dataOffset: number;
  dataLength: number;
  ppiOffset: number;
  ppiLength: number;
  oobDataOffsetField: number;
  oobDataLengthField: number;
  numOobElements: number;
  vcHandle: number;
}

export type RndisMessage =
  | RndisInitialize
  | RndisInitializeComplete
  | RndisHalt
  | RndisQuery
  | RndisQueryComplete
  | RndisSet
  | RndisSetComplete
  | RndisReset
  | RndisResetComplete
  | RndisIndicateStatus
  | RndisKeepalive
  | RndisKeepaliveComplete
  | RndisPacket;

export type RndisMessageKind = RndisMessage['kind'];

/** Guest->host ('to-host') or host->guest ('to-guest'); a few types travel both ways. */
export type RndisDirection = 'to-host' | 'to-guest';

export type RndisErrorReason =
  /** Fewer than 8 bytes, or msg_len larger than the bytes available. */
  | 'truncated'
  /** msg_len smaller than the message's fixed part. */
  | 'too-short'
  | 'unknown-type'
  | 'wrong-direction'
  /** An offset/length pair that leaves the message or overlaps its fixed part. */
  | 'bad-range';

/** A malformed RNDIS message. Returned, never thrown. */
export class RndisError {
  readonly isRndisError = true;
  constructor(
    readonly reason: RndisErrorReason,
    readonly messageType: number,
    /** msg_len as read (0 when absent). */
    readonly messageLength: number,
    readonly detail: string,
  ) {}

  get message(): string {
    return `RNDIS message 0x${this.messageType.toString(16)} (msg_len ${this.messageLength}): ${this.reason}: ${this.detail}`;
  }
}

// ---------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------
// Decoding

interface TypeInfo { kind: RndisMessageKind; size: number; toHost: boolean; toGuest: boolean }

function typeInfo(type: number): TypeInfo | undefined {
  switch (type) {
    case RndisMessageType.Packet: return { kind: 'packet', size: RndisMessageSize.Packet, toHost: true, toGuest: true };
    case RndisMessageType.Initialize: return { kind: 'initialize', size: RndisMessageSize.Initialize, toHost: true, toGuest: false };
    case RndisMessageType.InitializeComplete: return { kind: 'initialize-complete', size: RndisMessageSize.InitializeComplete, toHost: false, toGuest: true };
    case RndisMessageType.Halt: return { kind: 'halt', size: RndisMessageSize.Halt, toHost: true, toGuest: false };
    case RndisMessageType.Query: return { kind: 'query', size: RndisMessageSize.Query, toHost: true, toGuest: false };
    case RndisMessageType.QueryComplete: return { kind: 'query-complete', size: RndisMessageSize.QueryComplete, toHost: false, toGuest: true };
    case RndisMessageType.Set: return { kind: 'set', size: RndisMessageSize.Set, toHost: true, toGuest: false };
    case RndisMessageType.SetComplete: return { kind: 'set-complete', size: RndisMessageSize.SetComplete, toHost: false, toGuest: true };
    case RndisMessageType.Reset: return { kind: 'reset', size: RndisMessageSize.Reset, toHost: true, toGuest: false };
    case RndisMessageType.ResetComplete: return { kind: 'reset-complete', size: RndisMessageSize.ResetComplete, toHost: false, toGuest: true };
    case RndisMessageType.IndicateStatus: return { kind: 'indicate-status', size: RndisMessageSize.IndicateStatus, toHost: false, toGuest: true };
    case RndisMessageType.Keepalive: return { kind: 'keepalive', size: RndisMessageSize.Keepalive, toHost: true, toGuest: true };
    case RndisMessageType.KeepaliveComplete: return { kind: 'keepalive-complete', size: RndisMessageSize.KeepaliveComplete, toHost: true, toGuest: true };
    default: return undefined;
  }
}
// Built once so the per-packet decode does not allocate a TypeInfo.
const TYPE_INFO = new Map<number, TypeInfo>();
for (const t of Object.values(RndisMessageType)) TYPE_INFO.set(t, typeInfo(t)!);

/**
 * Checks a body-relative (offset, length) pair: the range must start at or after the
 * message's fixed part and end inside msg_len. An empty range is always accepted and
 * reported at the end of the fixed part, so a reported range never leaves the message.
 * Returns the absolute start, or -1.
 */
function bodyRange(start: number, msgLen: number, fixedSize: number, bodyOffset: number, length: number): number {
  if (length === 0) return start + fixedSize;
  const rel = RNDIS_BODY_OFFSET + bodyOffset; // < 2^33: exact in a double
  if (rel < fixedSize || rel + length > msgLen) return -1;
  return start + rel;
}

/**
 * Decodes RNDIS messages into objects it owns and reuses (one decoder per channel; a
 * result is valid until the next decode), so walking a batch of packets allocates nothing.
 */
export class RndisDecoder {
  private readonly initialize: RndisInitialize = { kind: 'initialize', start: 0, length: 0, requestId: 0, majorVersion: 0, minorVersion: 0, maxTransferSize: 0 };
  private readonly initializeComplete: RndisInitializeComplete = {
    kind: 'initialize-complete', start: 0, length: 0, requestId: 0, status: 0, majorVersion: 0, minorVersion: 0, deviceFlags: 0, medium: 0,
    maxPacketsPerMessage: 0, maxTransferSize: 0, packetAlignmentFactor: 0, afListOffset: 0, afListSize: 0,
  };
  private readonly halt: RndisHalt = { kind: 'halt', start: 0, length: 0, requestId: 0 };
  private readonly query: RndisQuery = { kind: 'query', start: 0, length: 0, requestId: 0, oid: 0, infoOffset: 0, infoLength: 0, deviceVcHandle: 0 };
  private readonly queryComplete: RndisQueryComplete = { kind: 'query-complete', start: 0, length: 0, requestId: 0, status: 0, infoOffset: 0, infoLength: 0 };
  private readonly set: RndisSet = { kind: 'set', start: 0, length: 0, requestId: 0, oid: 0, infoOffset: 0, infoLength: 0, deviceVcHandle: 0 };
  private readonly setComplete: RndisSetComplete = { kind: 'set-complete', start: 0, length: 0, requestId: 0, status: 0 };
  private readonly reset: RndisReset = { kind: 'reset', start: 0, length: 0, reserved: 0 };
  private readonly resetComplete: RndisResetComplete = { kind: 'reset-complete', start: 0, length: 0, status: 0, addressingReset: 0 };
  private readonly indicateStatus: RndisIndicateStatus = { kind: 'indicate-status', start: 0, length: 0, status: 0, bufferOffset: 0, bufferLength: 0 };
  private readonly keepalive: RndisKeepalive = { kind: 'keepalive', start: 0, length: 0, requestId: 0 };
  private readonly keepaliveComplete: RndisKeepaliveComplete = { kind: 'keepalive-complete', start: 0, length: 0, requestId: 0, status: 0 };
  private readonly packet: RndisPacket = {
    kind: 'packet', start: 0, length: 0, dataOffset: 0, dataLength: 0, ppiOffset: 0, ppiLength: 0,
    oobDataOffsetField: 0, oobDataLengthField: 0, numOobElements: 0, vcHandle: 0,
  };

  /**
   * Decodes the message at `bytes[offset]`, with `available` bytes left in the buffer
   * (the rest of a send section or receive range). On success the next message, if any,
   * starts at `offset + result.length`; msg_len is at least 8, so a walk always advances.
   */
  decode(bytes: Uint8Array, offset: number, available: number, direction: RndisDirection): RndisMessage | RndisError {
    if (!Number.isInteger(offset) || !Number.isInteger(available) || offset < 0 || available < 0 || offset > bytes.length) {
      return new RndisError('truncated', 0, 0, `window ${offset}+${available} is not inside ${bytes.length} bytes`);
    }
    const avail = Math.min(available, bytes.length - offset);
    if (avail < RNDIS_HEADER_SIZE) return new RndisError('truncated', 0, 0, `${avail} bytes, the header needs 8`);
    const b = bytes;
    const s = offset;
    const type = rd32(b, s);
    const len = rd32(b, s + 4);
    if (len > avail) return new RndisError('truncated', type, len, `msg_len ${len} exceeds the ${avail} bytes available`);
    const info = TYPE_INFO.get(type);
    if (info === undefined) {
      if (len < RNDIS_HEADER_SIZE) return new RndisError('too-short', type, len, 'msg_len below the 8-byte header');
      return new RndisError('unknown-type', type, len, 'not an RNDIS message type of a connectionless device');
    }
    if (direction === 'to-host' ? !info.toHost : !info.toGuest) {
      return new RndisError('wrong-direction', type, len, `${info.kind} never travels ${direction}`);
    }
    if (len < info.size) return new RndisError('too-short', type, len, `${info.kind} needs ${info.size} bytes`);

    switch (info.kind) {
      case 'packet': {
        const m = this.packet;
        const dataOff = rd32(b, s + 8);
        const dataLen = rd32(b, s + 12);
        const ppiOff = rd32(b, s + 28);
        const ppiLen = rd32(b, s + 32);
        const data = bodyRange(s, len, info.size, dataOff, dataLen);
        if (data < 0) return new RndisError('bad-range', type, len, `data ${dataOff}+${dataLen} (from byte 8) is outside the message`);
        const ppi = bodyRange(s, len, info.size, ppiOff, ppiLen);
        if (ppi < 0) return new RndisError('bad-range', type, len, `per-packet info ${ppiOff}+${ppiLen} (from byte 8) is outside the message`);
        m.start = s;
        m.length = len;
        m.dataOffset = data;
        m.dataLength = dataLen;
        m.ppiOffset = ppi;
        m.ppiLength = ppiLen;
        m.oobDataOffsetField = rd32(b, s + 16);
        m.oobDataLengthField = rd32(b, s + 20);
        m.numOobElements = rd32(b, s + 24);
        m.vcHandle = rd32(b, s + 36);
        return m;
      }
      case 'initialize': {
        const m = this.initialize;
        m.start = s;
        m.length = len;
        m.requestId = rd32(b, s + 8);
        m.majorVersion = rd32(b, s + 12);
        m.minorVersion = rd32(b, s + 16);
        m.maxTransferSize = rd32(b, s + 20);
        return m;
      }
      case 'initialize-complete': {
        const m = this.initializeComplete;
        m.start = s;
        m.length = len;
        m.requestId = rd32(b, s + 8);
        m.status = rd32(b, s + 12);
        m.majorVersion = rd32(b, s + 16);
        m.minorVersion = rd32(b, s + 20);
        m.deviceFlags = rd32(b, s + 24);
        m.medium = rd32(b, s + 28);
        m.maxPacketsPerMessage = rd32(b, s + 32);
        m.maxTransferSize = rd32(b, s + 36);
        m.packetAlignmentFactor = rd32(b, s + 40);
        m.afListOffset = rd32(b, s + 44);
        m.afListSize = rd32(b, s + 48);
        return m;
      }
      case 'halt': {
        const m = this.halt;
        m.start = s;
        m.length = len;
        m.requestId = rd32(b, s + 8);
        return m;
      }
      case 'query':
      case 'set': {
        const infoLen = rd32(b, s + 16);
        const infoOff = rd32(b, s + 20);
        const at = bodyRange(s, len, info.size, infoOff, infoLen);
        if (at < 0) return new RndisError('bad-range', type, len, `information buffer ${infoOff}+${infoLen} (from byte 8) is outside the message`);
        const m = info.kind === 'query' ? this.query : this.set;
        m.start = s;
        m.length = len;
        m.requestId = rd32(b, s + 8);
        m.oid = rd32(b, s + 12);
        m.infoOffset = at;
        m.infoLength = infoLen;
        m.deviceVcHandle = rd32(b, s + 24);
        return m;
      }
      case 'query-complete': {
        const infoLen = rd32(b, s + 16);
        const infoOff = rd32(b, s + 20);
        const at = bodyRange(s, len, info.size, infoOff, infoLen);
        if (at < 0) return new RndisError('bad-range', type, len, `information buffer ${infoOff}+${infoLen} (from byte 8) is outside the message`);
        const m = this.queryComplete;
        m.start = s;
        m.length = len;
        m.requestId = rd32(b, s + 8);
        m.status = rd32(b, s + 12);
        m.infoOffset = at;
        m.infoLength = infoLen;
        return m;
      }
      case 'set-complete': {
        const m = this.setComplete;
        m.start = s;
        m.length = len;
        m.requestId = rd32(b, s + 8);
        m.status = rd32(b, s + 12);
        return m;
      }
      case 'reset': {
        const m = this.reset;
        m.start = s;
        m.length = len;
        m.reserved = rd32(b, s + 8);
        return m;
      }
      case 'reset-complete': {
        const m = this.resetComplete;
        m.start = s;
        m.length = len;
        m.status = rd32(b, s + 8);
        m.addressingReset = rd32(b, s + 12);
        return m;
      }
      case 'indicate-status': {
        const bufLen = rd32(b, s + 12);
        const bufOff = rd32(b, s + 16);
        const at = bodyRange(s, len, info.size, bufOff, bufLen);
        if (at < 0) return new RndisError('bad-range', type, len, `status buffer ${bufOff}+${bufLen} (from byte 8) is outside the message`);
        const m = this.indicateStatus;
        m.start = s;
        m.length = len;
        m.status = rd32(b, s + 8);
        m.bufferOffset = at;
        m.bufferLength = bufLen;
        return m;
      }
      case 'keepalive': {
        const m = this.keepalive;
        m.start = s;
        m.length = len;
        m.requestId = rd32(b, s + 8);
        return m;
      }
      case 'keepalive-complete': {
        const m = this.keepaliveComplete;
        m.start = s;
        m.length = len;
        m.requestId = rd32(b, s + 8);
        m.status = rd32(b, s + 12);
        return m;
      }
    }
  }
}

/** Decodes one message into a fresh object (control paths and tests). */
export function decodeRndisMessage(bytes: Uint8Array, offset: number, available: number, direction: RndisDirection): RndisMessage | RndisError {
  const m = new RndisDecoder().decode(bytes, offset, available, direction);
  return m instanceof RndisError ? m : { ...m };
}

// ---------------------------------------------------------------------------------------
// Encoding. Each writes one complete message at target[offset] and returns msg_len.
// Throws RangeError when the target is too small or a value does not fit (caller bugs).

const EMPTY = new Uint8Array(0);

function u32(name: string, v: number): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new RangeError(`RNDIS ${name} = ${String(v)} does not fit in u32`);
  return v;
}

function begin(target: Uint8Array, offset: number, type: number, length: number, what: string): void {
  if (!Number.isInteger(offset) || offset < 0 || offset + length > target.length) {
    throw new RangeError(`RNDIS ${what}: ${length} bytes at ${offset} do not fit in ${target.length}`);
  }
  u32(`${what} msg_len`, length);
  target.fill(0, offset, offset + length);
  wr32(target, offset, type);
  wr32(target, offset + 4, length);
}

export function encodeRndisInitialize(target: Uint8Array, offset: number, requestId: number, maxTransferSize: number,
  majorVersion = RNDIS_MAJOR_VERSION, minorVersion = RNDIS_MINOR_VERSION): number {
  const n = RndisMessageSize.Initialize;
  begin(target, offset, RndisMessageType.Initialize, n, 'initialize');
  wr32(target, offset + 8, u32('requestId', requestId));
  wr32(target, offset + 12, u32('majorVersion', majorVersion));
  wr32(target, offset + 16, u32('minorVersion', minorVersion));
  wr32(target, offset + 20, u32('maxTransferSize', maxTransferSize));
  return n;
}

export interface RndisInitializeCompleteFields {
  requestId: number;
  status: number;
  majorVersion?: number;
  minorVersion?: number;
  deviceFlags?: number;
  medium?: number;
  maxPacketsPerMessage: number;
  maxTransferSize: number;
  packetAlignmentFactor: number;
  afListOffset?: number;
  afListSize?: number;
}

export function encodeRndisInitializeComplete(target: Uint8Array, offset: number, f: RndisInitializeCompleteFields): number {
  const n = RndisMessageSize.InitializeComplete;
  begin(target, offset, RndisMessageType.InitializeComplete, n, 'initialize-complete');
  wr32(target, offset + 8, u32('requestId', f.requestId));
  wr32(target, offset + 12, u32('status', f.status));
  wr32(target, offset + 16, u32('majorVersion', f.majorVersion ?? RNDIS_MAJOR_VERSION));
  wr32(target, offset + 20, u32('minorVersion', f.minorVersion ?? RNDIS_MINOR_VERSION));
  wr32(target, offset + 24, u32('deviceFlags', f.deviceFlags ?? RNDIS_DF_CONNECTIONLESS));
  wr32(target, offset + 28, u32('medium', f.medium ?? RNDIS_MEDIUM_802_3));
  wr32(target, offset + 32, u32('maxPacketsPerMessage', f.maxPacketsPerMessage));
  wr32(target, offset + 36, u32('maxTransferSize', f.maxTransferSize));
  wr32(target, offset + 40, u32('packetAlignmentFactor', f.packetAlignmentFactor));
  wr32(target, offset + 44, u32('afListOffset', f.afListOffset ?? 0));
  wr32(target, offset + 48, u32('afListSize', f.afListSize ?? 0));
  return n;
}

export function encodeRndisHalt(target: Uint8Array, offset: number, requestId: number): number {
  const n = RndisMessageSize.Halt;
  begin(target, offset, RndisMessageType.Halt, n, 'halt');
  wr32(target, offset + 8, u32('requestId', requestId));
  return n;
}

function encodeRequest(type: number, what: string, target: Uint8Array, offset: number, requestId: number, oid: number, info: Uint8Array): number {
  const fixed = RndisMessageSize.Query; // QUERY and SET share the layout
  const n = fixed + info.length;
  begin(target, offset, type, n, what);
  wr32(target, offset + 8, u32('requestId', requestId));
  wr32(target, offset + 12, u32('oid', oid));
  wr32(target, offset + 16, info.length);
  // Linux puts the buffer right after the fixed part: offset 20 from byte 8, even when empty.
  wr32(target, offset + 20, fixed - RNDIS_BODY_OFFSET);
  target.set(info, offset + fixed);
  return n;
}

export function encodeRndisQuery(target: Uint8Array, offset: number, requestId: number, oid: number, info: Uint8Array = EMPTY): number {
  return encodeRequest(RndisMessageType.Query, 'query', target, offset, requestId, oid, info);
}

export function encodeRndisSet(target: Uint8Array, offset: number, requestId: number, oid: number, info: Uint8Array): number {
  return encodeRequest(RndisMessageType.Set, 'set', target, offset, requestId, oid, info);
}

/**
 * QUERY_CMPLT with the information buffer right after the 24-byte fixed part
 * (info_buf_offset 16, the smallest Linux accepts). With no data the offset is still 16.
 */
export function encodeRndisQueryComplete(target: Uint8Array, offset: number, requestId: number, status: number, info: Uint8Array = EMPTY): number {
  const fixed = RndisMessageSize.QueryComplete;
  const n = fixed + info.length;
  begin(target, offset, RndisMessageType.QueryComplete, n, 'query-complete');
  wr32(target, offset + 8, u32('requestId', requestId));
  wr32(target, offset + 12, u32('status', status));
  wr32(target, offset + 16, info.length);
  wr32(target, offset + 20, fixed - RNDIS_BODY_OFFSET);
  target.set(info, offset + fixed);
  return n;
}

export function encodeRndisSetComplete(target: Uint8Array, offset: number, requestId: number, status: number): number {
  const n = RndisMessageSize.SetComplete;
  begin(target, offset, RndisMessageType.SetComplete, n, 'set-complete');
  wr32(target, offset + 8, u32('requestId', requestId));
  wr32(target, offset + 12, u32('status', status));
  return n;
}

export function encodeRndisReset(target: Uint8Array, offset: number): number {
  const n = RndisMessageSize.Reset;
  begin(target, offset, RndisMessageType.Reset, n, 'reset');
  return n;
}

export function encodeRndisResetComplete(target: Uint8Array, offset: number, status: number, addressingReset: number): number {
  const n = RndisMessageSize.ResetComplete;
  begin(target, offset, RndisMessageType.ResetComplete, n, 'reset-complete');
  wr32(target, offset + 8, u32('status', status));
  wr32(target, offset + 12, u32('addressingReset', addressingReset));
  return n;
}

/**
 * INDICATE_STATUS with the status buffer right after the 20-byte fixed part
 * (status_buf_offset 12, which Linux requires for LINK_SPEED_CHANGE). With no buffer,
 * length and offset are both 0.
 */
export function encodeRndisIndicateStatus(target: Uint8Array, offset: number, status: number, buffer: Uint8Array = EMPTY): number {
  const fixed = RndisMessageSize.IndicateStatus;
  const n = fixed + buffer.length;
  begin(target, offset, RndisMessageType.IndicateStatus, n, 'indicate-status');
  wr32(target, offset + 8, u32('status', status));
  wr32(target, offset + 12, buffer.length);
  wr32(target, offset + 16, buffer.length === 0 ? 0 : fixed - RNDIS_BODY_OFFSET);
  target.set(buffer, offset + fixed);
  return n;
}

export function encodeRndisKeepalive(target: Uint8Array, offset: number, requestId: number): number {
  const n = RndisMessageSize.Keepalive;
  begin(target, offset, RndisMessageType.Keepalive, n, 'keepalive');
  wr32(target, offset + 8, u32('requestId', requestId));
  return n;
}

export function encodeRndisKeepaliveComplete(target: Uint8Array, offset: number, requestId: number, status: number): number {
  const n = RndisMessageSize.KeepaliveComplete;
  begin(target, offset, RndisMessageType.KeepaliveComplete, n, 'keepalive-complete');
  wr32(target, offset + 8, u32('requestId', requestId));
  wr32(target, offset + 12, u32('status', status));
  return n;
}

/**
 * Writes the 44-byte PACKET header for a message laid out as Linux does: PPIs at byte 44
 * (per_pkt_info_offset 36), then the frame (data_offset 36 + ppiLength), then `padding`
 * bytes (a guest batching messages pads each to the host's alignment; msg_len includes
 * it). Only the header is written: the caller puts the PPIs at offset+44 and the frame at
 * offset+44+ppiLength, so a frame can be written in place. Returns msg_len.
 */
export function encodeRndisPacketHeader(target: Uint8Array, offset: number, ppiLength: number, dataLength: number, padding = 0): number {
  const fixed = RndisMessageSize.Packet;
  return encodeRndisPacketHeaderAt(target, offset, fixed, ppiLength, fixed + ppiLength, dataLength, padding);
}

/**
 * The RNDIS PACKET header for a message whose PPIs and data sit at given offsets from the
 * message start (ppiOffset >= 44, data after the PPIs), as a host lays out a receive
 * sub-allocation whose frame was read in place: the data at a fixed offset, the PPIs
 * right before it. Linux finds both by their offsets; bytes between are ignored.
 */
export function encodeRndisPacketHeaderAt(target: Uint8Array, offset: number, ppiOffset: number, ppiLength: number, dataOffset: number, dataLength: number, padding = 0): number {
  const fixed = RndisMessageSize.Packet;
  if (ppiOffset < fixed || dataOffset < ppiOffset + ppiLength) throw new RangeError(`RNDIS packet layout: PPIs at ${ppiOffset}+${ppiLength}, data at ${dataOffset}`);
  const n = dataOffset + dataLength + padding;
  if (!Number.isInteger(offset) || offset < 0 || offset + fixed > target.length) {
    throw new RangeError(`RNDIS packet header at ${offset} does not fit in ${target.length}`);
  }
  u32('msg_len', n);
  zeroBytes(target, offset, offset + fixed);
  wr32(target, offset, RndisMessageType.Packet);
  wr32(target, offset + 4, n);
  wr32(target, offset + 8, dataOffset - RNDIS_BODY_OFFSET);
  wr32(target, offset + 12, dataLength);
  wr32(target, offset + 28, ppiOffset - RNDIS_BODY_OFFSET);
  wr32(target, offset + 32, ppiLength);
  return n;
}
