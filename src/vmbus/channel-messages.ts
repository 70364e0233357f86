// VMBus channel-management messages: the payloads of HvPostMessage (guest to host) and of
// the SynIC messages the host queues in slot 2 (host to guest). Layouts follow Linux's
// include/linux/hyperv.h (packed, little-endian); message 23 and the 56-byte
// TL_CONNECT_REQUEST, which Linux never builds, follow OpenVMM's vmbus_core protocol.rs.
//
// decodeMessage is the boundary with a hostile guest: it never throws, checks every
// size before reading and copies every blob out of the (reused) input buffer.
import { GUID_SIZE, readGuid, writeGuid } from './guid.js';
import { VERSION_WIN10_V5, versionAtLeast } from './versions.js';

export const MessageType = {
  OfferChannel: 1,
  RescindChannelOffer: 2,
  RequestOffers: 3,
  AllOffersDelivered: 4,
  OpenChannel: 5,
  OpenChannelResult: 6,
  CloseChannel: 7,
  GpadlHeader: 8,
  GpadlBody: 9,
  GpadlCreated: 10,
  GpadlTeardown: 11,
  GpadlTorndown: 12,
  RelidReleased: 13,
  InitiateContact: 14,
  VersionResponse: 15,
  Unload: 16,
  UnloadResponse: 17,
  // 18-20 exist on Windows hosts but no Linux guest sends or accepts them, so they have
  // no codec here. Names as in Hyper-V's own headers (and OpenVMM).
  OpenReservedChannel: 18,
  CloseReservedChannel: 19,
  CloseReservedChannelResponse: 20,
  TlConnectRequest: 21,
  ModifyChannel: 22,
  TlConnectResult: 23,
  ModifyChannelResponse: 24,
} as const;
export type MessageType = (typeof MessageType)[keyof typeof MessageType];

/** msgtype (u32) + padding (u32). */
export const MESSAGE_HEADER_SIZE = 8;
/** The payload of one Hyper-V SynIC message; no channel message may be larger. */
export const MAX_MESSAGE_SIZE = 240;
/** Size of the user-defined blobs in OFFERCHANNEL and OPENCHANNEL. */
export const USER_DEFINED_SIZE = 120;

export interface OfferChannelMessage {
  kind: 'offer-channel';
  interfaceId: string;
  instanceId: string;
  channelFlags: number;
  mmioMegabytes: number;
  userDefined: Uint8Array;
  subChannelIndex: number;
  mmioMegabytesOptional: number;
  childRelid: number;
  monitorId: number;
  monitorAllocated: boolean;
  dedicatedInterrupt: boolean;
  connectionId: number;
}
export interface RescindOfferMessage { kind: 'rescind-offer'; childRelid: number }
export interface RequestOffersMessage { kind: 'request-offers' }
export interface AllOffersDeliveredMessage { kind: 'all-offers-delivered' }
export interface OpenChannelMessage {
  kind: 'open-channel';
  childRelid: number;
  openId: number;
  ringGpadlHandle: number;
  targetVp: number;
  downstreamPageOffset: number;
  userData: Uint8Array;
}
export interface OpenResultMessage { kind: 'open-result'; childRelid: number; openId: number; status: number }
export interface CloseChannelMessage { kind: 'close-channel'; childRelid: number }
export interface GpadlHeaderMessage {
  kind: 'gpadl-header';
  childRelid: number;
  gpadl: number;
  rangeBufferLength: number;
  rangeCount: number;
  /** The range bytes this message carries (from offset 20 to the end of the message). */
  rangeData: Uint8Array;
}
export interface GpadlBodyMessage {
  kind: 'gpadl-body';
  messageNumber: number;
  gpadl: number;
  /** The continuation bytes this message carries (from offset 16 to the end). */
  pfnData: Uint8Array;
}
export interface GpadlCreatedMessage { kind: 'gpadl-created'; childRelid: number; gpadl: number; status: number }
export interface GpadlTeardownMessage { kind: 'gpadl-teardown'; childRelid: number; gpadl: number }
export interface GpadlTorndownMessage { kind: 'gpadl-torndown'; gpadl: number }
export interface RelidReleasedMessage { kind: 'relid-released'; childRelid: number }
export interface InitiateContactMessage {
  kind: 'initiate-contact';
  version: number;
  targetVcpu: number;
  /** Meaningful below 5.0 (the u64 at offset 16). */
  interruptPage: bigint;
  /** Meaningful from 5.0 (byte 16). */
  messageSint: number;
  /** Meaningful from 5.0 (byte 17). */
  messageVtl: number;
  monitorPage1: bigint;
  monitorPage2: bigint;
}
export interface VersionResponseMessage {
  kind: 'version-response';
  versionSupported: boolean;
  connectionState: number;
  messageConnectionId: number;
}
export interface UnloadMessage { kind: 'unload' }
export interface UnloadResponseMessage { kind: 'unload-response' }
export interface TlConnectRequestMessage {
  kind: 'tl-connect-request';
  guestEndpointId: string;
  hostServiceId: string;
  /** Present only in the 56-byte form (newer Windows guests; Linux sends 40 bytes). */
  siloId?: string;
}
export interface TlConnectResultMessage {
  kind: 'tl-connect-result';
  guestEndpointId: string;
  hostServiceId: string;
  /** An NTSTATUS, carried as its unsigned 32-bit value. */
  status: number;
}
export interface ModifyChannelMessage { kind: 'modify-channel'; childRelid: number; targetVp: number }
export interface ModifyChannelResponseMessage { kind: 'modify-channel-response'; childRelid: number; status: number }

export type ChannelMessage =
  | OfferChannelMessage
  | RescindOfferMessage
  | RequestOffersMessage
  | AllOffersDeliveredMessage
  | OpenChannelMessage
  | OpenResultMessage
  | CloseChannelMessage
  | GpadlHeaderMessage
  | GpadlBodyMessage
  | GpadlCreatedMessage
  | GpadlTeardownMessage
  | GpadlTorndownMessage
  | RelidReleasedMessage
  | InitiateContactMessage
  | VersionResponseMessage
  | UnloadMessage
  | UnloadResponseMessage
  | TlConnectRequestMessage
  | TlConnectResultMessage
  | ModifyChannelMessage
  | ModifyChannelResponseMessage;

export type MessageKind = ChannelMessage['kind'];
export type MessageOfKind<K extends MessageKind> = Extract<ChannelMessage, { kind: K }>;

export type DecodeResult = { ok: true; message: ChannelMessage } | { ok: false; error: string };

const TL_CONNECT_REQUEST_SIZE = 40;
const TL_CONNECT_REQUEST_WITH_SILO_SIZE = 56;

// ---------------------------------------------------------------------------------------
// Field access. The writer checks every value against its field; the reader is only
// handed views whose length the decoder has already checked.

class FieldWriter {
  constructor(readonly view: DataView, readonly bytes: Uint8Array, readonly kind: string) {}

  u8(offset: number, name: string, value: number): void {
    this.view.setUint8(offset, this.check(name, value, 0xff, 'u8'));
  }
  u16(offset: number, name: string, value: number): void {
    this.view.setUint16(offset, this.check(name, value, 0xffff, 'u16'), true);
  }
  u32(offset: number, name: string, value: number): void {
    this.view.setUint32(offset, this.check(name, value, 0xffffffff, 'u32'), true);
  }
  u64(offset: number, name: string, value: bigint): void {
    if (typeof value !== 'bigint' || value < 0n || value > 0xffffffffffffffffn) {
      throw new RangeError(`${this.kind}.${name} = ${String(value)} does not fit in u64`);
    }
    this.view.setBigUint64(offset, value, true);
  }
  bool(name: string, value: boolean): number {
    if (typeof value !== 'boolean') throw new RangeError(`${this.kind}.${name} = ${String(value)} is not a boolean`);
    return value ? 1 : 0;
  }
  guid(offset: number, name: string, value: string): void {
    try {
      writeGuid(this.view, offset, value);
    } catch {
      throw new RangeError(`${this.kind}.${name} = ${JSON.stringify(value)} is not a GUID`);
    }
  }
  blob(offset: number, name: string, value: Uint8Array, length: number): void {
    if (!(value instanceof Uint8Array) || value.length !== length) {
      throw new RangeError(`${this.kind}.${name} must be a Uint8Array of ${length} bytes`);
    }
    this.bytes.set(value, offset);
  }
  tail(offset: number, name: string, value: Uint8Array): void {
    if (!(value instanceof Uint8Array)) throw new RangeError(`${this.kind}.${name} must be a Uint8Array`);
    this.bytes.set(value, offset);
  }

  private check(name: string, value: number, max: number, type: string): number {
    if (!Number.isInteger(value) || value < 0 || value > max) {
      throw new RangeError(`${this.kind}.${name} = ${String(value)} does not fit in ${type}`);
    }
    return value;
  }
}

class FieldReader {
  constructor(readonly view: DataView, readonly bytes: Uint8Array) {}

  u8(offset: number): number {
    return this.view.getUint8(offset);
  }
  u16(offset: number): number {
    return this.view.getUint16(offset, true);
  }
  u32(offset: number): number {
    return this.view.getUint32(offset, true);
  }
  u64(offset: number): bigint {
    return this.view.getBigUint64(offset, true);
  }
  guid(offset: number): string {
    return readGuid(this.view, offset);
  }
  // Copies, never views: the input is a slot buffer that is about to be reused. (The
  // constructor copies even for a Node Buffer, whose slice() would alias.)
  blob(offset: number, length: number): Uint8Array {
    return new Uint8Array(this.bytes.subarray(offset, offset + length));
  }
  rest(offset: number): Uint8Array {
    return new Uint8Array(this.bytes.subarray(offset));
  }
}

// ---------------------------------------------------------------------------------------
// One codec per message kind. `size` is the struct size including the 8-byte header,
// which is also the minimum a decoded message must have.

interface Codec<M extends ChannelMessage> {
  type: MessageType;
  size: number;
  encodedSize?(m: M): number;
  write(w: FieldWriter, m: M): void;
  read(r: FieldReader): M;
}

type CodecTable = { [K in MessageKind]: Codec<MessageOfKind<K>> };

function headerOnly<K extends MessageKind>(kind: K, type: MessageType): Codec<MessageOfKind<K>> {
  return { type, size: 8, write() {}, read: () => ({ kind }) as MessageOfKind<K> };
}

function relidOnly<K extends 'rescind-offer' | 'close-channel' | 'relid-released'>(kind: K, type: MessageType): Codec<MessageOfKind<K>> {
  return {
    type,
    size: 12,
    write: (w, m) => w.u32(8, 'childRelid', (m as { childRelid: number }).childRelid),
    read: (r) => ({ kind, childRelid: r.u32(8) }) as MessageOfKind<K>,
  };
}

const CODECS: CodecTable = {
  'offer-channel': {
    type: MessageType.OfferChannel,
    size: 196,
    write(w, m) {
      w.guid(8, 'interfaceId', m.interfaceId);
      w.guid(24, 'instanceId', m.instanceId);
      // 40..55 reserved, left zero
      w.u16(56, 'channelFlags', m.channelFlags);
      w.u16(58, 'mmioMegabytes', m.mmioMegabytes);
      w.blob(60, 'userDefined', m.userDefined, USER_DEFINED_SIZE);
      w.u16(180, 'subChannelIndex', m.subChannelIndex);
      w.u16(182, 'mmioMegabytesOptional', m.mmioMegabytesOptional);
      w.u32(184, 'childRelid', m.childRelid);
      w.u8(188, 'monitorId', m.monitorId);
      w.u8(189, 'monitorAllocated', w.bool('monitorAllocated', m.monitorAllocated));
      w.u16(190, 'dedicatedInterrupt', w.bool('dedicatedInterrupt', m.dedicatedInterrupt));
      w.u32(192, 'connectionId', m.connectionId);
    },
    read: (r) => ({
      kind: 'offer-channel',
      interfaceId: r.guid(8),
      instanceId: r.guid(24),
      channelFlags: r.u16(56),
      mmioMegabytes: r.u16(58),
      userDefined: r.blob(60, USER_DEFINED_SIZE),
      subChannelIndex: r.u16(180),
      mmioMegabytesOptional: r.u16(182),
      childRelid: r.u32(184),
      monitorId: r.u8(188),
      // Only bit 0 of each is defined; the other bits are reserved.
      monitorAllocated: (r.u8(189) & 1) !== 0,
      dedicatedInterrupt: (r.u16(190) & 1) !== 0,
      connectionId: r.u32(192),
    }),
  },
  'rescind-offer': relidOnly('rescind-offer', MessageType.RescindChannelOffer),
  'request-offers': headerOnly('request-offers', MessageType.RequestOffers),
  'all-offers-delivered': headerOnly('all-offers-delivered', MessageType.AllOffersDelivered),
  'open-channel': {
    type: MessageType.OpenChannel,
    size: 148,
    write(w, m) {
      w.u32(8, 'childRelid', m.childRelid);
      w.u32(12, 'openId', m.openId);
      w.u32(16, 'ringGpadlHandle', m.ringGpadlHandle);
      w.u32(20, 'targetVp', m.targetVp);
      w.u32(24, 'downstreamPageOffset', m.downstreamPageOffset);
      w.blob(28, 'userData', m.userData, USER_DEFINED_SIZE);
    },
    read: (r) => ({
      kind: 'open-channel',
      childRelid: r.u32(8),
      openId: r.u32(12),
      ringGpadlHandle: r.u32(16),
      targetVp: r.u32(20),
      downstreamPageOffset: r.u32(24),
      userData: r.blob(28, USER_DEFINED_SIZE),
    }),
  },
  'open-result': {
    type: MessageType.OpenChannelResult,
    size: 20,
    write(w, m) {
      w.u32(8, 'childRelid', m.childRelid);
      w.u32(12, 'openId', m.openId);
      w.u32(16, 'status', m.status);
    },
    read: (r) => ({ kind: 'open-result', childRelid: r.u32(8), openId: r.u32(12), status: r.u32(16) }),
  },
  'close-channel': relidOnly('close-channel', MessageType.CloseChannel),
  'gpadl-header': {
    type: MessageType.GpadlHeader,
    size: 20,
    encodedSize: (m) => 20 + m.rangeData.length,
    write(w, m) {
      w.u32(8, 'childRelid', m.childRelid);
      w.u32(12, 'gpadl', m.gpadl);
      w.u16(16, 'rangeBufferLength', m.rangeBufferLength);
      w.u16(18, 'rangeCount', m.rangeCount);
      w.tail(20, 'rangeData', m.rangeData);
    },
    read: (r) => ({
      kind: 'gpadl-header',
      childRelid: r.u32(8),
      gpadl: r.u32(12),
      rangeBufferLength: r.u16(16),
      rangeCount: r.u16(18),
      rangeData: r.rest(20),
    }),
  },
  'gpadl-body': {
    type: MessageType.GpadlBody,
    size: 16,
    encodedSize: (m) => 16 + m.pfnData.length,
    write(w, m) {
      w.u32(8, 'messageNumber', m.messageNumber);
      w.u32(12, 'gpadl', m.gpadl);
      w.tail(16, 'pfnData', m.pfnData);
    },
    read: (r) => ({ kind: 'gpadl-body', messageNumber: r.u32(8), gpadl: r.u32(12), pfnData: r.rest(16) }),
  },
  'gpadl-created': {
    type: MessageType.GpadlCreated,
    size: 20,
    write(w, m) {
      w.u32(8, 'childRelid', m.childRelid);
      w.u32(12, 'gpadl', m.gpadl);
      w.u32(16, 'status', m.status);
    },
    read: (r) => ({ kind: 'gpadl-created', childRelid: r.u32(8), gpadl: r.u32(12), status: r.u32(16) }),
  },
  'gpadl-teardown': {
    type: MessageType.GpadlTeardown,
    size: 16,
    write(w, m) {
      w.u32(8, 'childRelid', m.childRelid);
      w.u32(12, 'gpadl', m.gpadl);
    },
    read: (r) => ({ kind: 'gpadl-teardown', childRelid: r.u32(8), gpadl: r.u32(12) }),
  },
  'gpadl-torndown': {
    type: MessageType.GpadlTorndown,
    size: 12,
    write: (w, m) => w.u32(8, 'gpadl', m.gpadl),
    read: (r) => ({ kind: 'gpadl-torndown', gpadl: r.u32(8) }),
  },
  'relid-released': relidOnly('relid-released', MessageType.RelidReleased),
  'initiate-contact': {
    type: MessageType.InitiateContact,
    size: 40,
    write(w, m) {
      w.u32(8, 'version', m.version);
      w.u32(12, 'targetVcpu', m.targetVcpu);
      // Offset 16 is a union: the interrupt page GPA before 5.0, then (sint, vtl, 6 zero
      // bytes). Every field is checked whichever view the version selects.
      w.u64(16, 'interruptPage', m.interruptPage);
      w.u8(16, 'messageSint', m.messageSint);
      w.u8(17, 'messageVtl', m.messageVtl);
      if (versionAtLeast(m.version, VERSION_WIN10_V5)) {
        w.view.setBigUint64(16, BigInt(m.messageSint | (m.messageVtl << 8)), true);
      } else {
        w.view.setBigUint64(16, m.interruptPage, true);
      }
      w.u64(24, 'monitorPage1', m.monitorPage1);
      w.u64(32, 'monitorPage2', m.monitorPage2);
    },
    read: (r) => ({
      kind: 'initiate-contact',
      version: r.u32(8),
      targetVcpu: r.u32(12),
      interruptPage: r.u64(16),
      messageSint: r.u8(16),
      messageVtl: r.u8(17),
      monitorPage1: r.u64(24),
      monitorPage2: r.u64(32),
    }),
  },
  'version-response': {
    type: MessageType.VersionResponse,
    size: 16,
    write(w, m) {
      w.u8(8, 'versionSupported', w.bool('versionSupported', m.versionSupported));
      w.u8(9, 'connectionState', m.connectionState);
      // 10..11 padding
      w.u32(12, 'messageConnectionId', m.messageConnectionId);
    },
    read: (r) => ({
      kind: 'version-response',
      // The guest treats any non-zero byte as "accepted".
      versionSupported: r.u8(8) !== 0,
      connectionState: r.u8(9),
      messageConnectionId: r.u32(12),
    }),
  },
  unload: headerOnly('unload', MessageType.Unload),
  'unload-response': headerOnly('unload-response', MessageType.UnloadResponse),
  'tl-connect-request': {
    type: MessageType.TlConnectRequest,
    size: TL_CONNECT_REQUEST_SIZE,
    encodedSize: (m) => (m.siloId === undefined ? TL_CONNECT_REQUEST_SIZE : TL_CONNECT_REQUEST_WITH_SILO_SIZE),
    write(w, m) {
      w.guid(8, 'guestEndpointId', m.guestEndpointId);
      w.guid(24, 'hostServiceId', m.hostServiceId);
      if (m.siloId !== undefined) w.guid(40, 'siloId', m.siloId);
    },
    read(r) {
      const m: TlConnectRequestMessage = { kind: 'tl-connect-request', guestEndpointId: r.guid(8), hostServiceId: r.guid(24) };
      // The two forms differ only in size.
      if (r.bytes.length >= TL_CONNECT_REQUEST_WITH_SILO_SIZE) m.siloId = r.guid(40);
      return m;
    },
  },
  'tl-connect-result': {
    type: MessageType.TlConnectResult,
    size: 8 + 2 * GUID_SIZE + 4,
    write(w, m) {
      w.guid(8, 'guestEndpointId', m.guestEndpointId);
      w.guid(24, 'hostServiceId', m.hostServiceId);
      w.u32(40, 'status', m.status);
    },
    read: (r) => ({ kind: 'tl-connect-result', guestEndpointId: r.guid(8), hostServiceId: r.guid(24), status: r.u32(40) }),
  },
  'modify-channel': {
    type: MessageType.ModifyChannel,
    size: 16,
    write(w, m) {
      w.u32(8, 'childRelid', m.childRelid);
      w.u32(12, 'targetVp', m.targetVp);
    },
    read: (r) => ({ kind: 'modify-channel', childRelid: r.u32(8), targetVp: r.u32(12) }),
  },
  'modify-channel-response': {
    type: MessageType.ModifyChannelResponse,
    size: 16,
    write(w, m) {
      w.u32(8, 'childRelid', m.childRelid);
      w.u32(12, 'status', m.status);
    },
    read: (r) => ({ kind: 'modify-channel-response', childRelid: r.u32(8), status: r.u32(12) }),
  },
};

const CODEC_BY_TYPE = new Map<number, Codec<ChannelMessage>>(
  Object.values(CODECS).map((codec) => [codec.type, codec as unknown as Codec<ChannelMessage>]),
);

const TYPE_NAMES = new Map<number, string>(Object.entries(MessageType).map(([name, type]) => [type, name]));

/** "OfferChannel" for 1, "unknown(99)" for a type VMBus does not define. */
export function messageTypeName(type: number): string {
  return TYPE_NAMES.get(type) ?? `unknown(${type})`;
}

function codecFor(m: ChannelMessage): Codec<ChannelMessage> {
  const kind: unknown = m?.kind;
  if (typeof kind !== 'string' || !Object.hasOwn(CODECS, kind)) {
    throw new RangeError(`unknown channel message kind ${JSON.stringify(kind)}`);
  }
  return CODECS[kind as MessageKind] as unknown as Codec<ChannelMessage>;
}

/** The encoded size of `m` in bytes, header included. */
export function messageSize(m: ChannelMessage): number {
  const codec = codecFor(m);
  return codec.encodedSize ? codec.encodedSize(m) : codec.size;
}

/**
 * Encodes `m` at its exact size. Throws RangeError if a field value does not fit its
 * field or the message would exceed MAX_MESSAGE_SIZE.
 */
export function encodeMessage(m: ChannelMessage): Uint8Array {
  const codec = codecFor(m);
  const size = codec.encodedSize ? codec.encodedSize(m) : codec.size;
  if (size > MAX_MESSAGE_SIZE) {
    throw new RangeError(`${m.kind} of ${size} bytes exceeds the ${MAX_MESSAGE_SIZE}-byte message limit`);
  }
  const bytes = new Uint8Array(size);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, codec.type, true);
  codec.write(new FieldWriter(view, bytes, m.kind), m);
  return bytes;
}

/**
 * Decodes one message. Never throws: anything malformed comes back as ok:false with a
 * reason. Bytes past the struct are ignored, except for GPADL_HEADER and GPADL_BODY,
 * whose trailing bytes are their data. The result shares no memory with `bytes`.
 */
export function decodeMessage(bytes: Uint8Array): DecodeResult {
  if (!(bytes instanceof Uint8Array)) return fail('channel message is not a byte array');
  const length = bytes.length;
  if (length < MESSAGE_HEADER_SIZE) {
    return fail(`channel message of ${length} bytes is shorter than the ${MESSAGE_HEADER_SIZE}-byte header`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, length);
  const type = view.getUint32(0, true);
  const name = `${messageTypeName(type)} (type ${type})`;
  if (length > MAX_MESSAGE_SIZE) {
    return fail(`${name} message of ${length} bytes exceeds the ${MAX_MESSAGE_SIZE}-byte message limit`);
  }
  const codec = CODEC_BY_TYPE.get(type);
  if (!codec) {
    return fail(TYPE_NAMES.has(type) ? `${name} is not supported` : `unknown channel message type ${type}`);
  }
  if (length < codec.size) {
    return fail(`${name} message of ${length} bytes is shorter than its ${codec.size}-byte struct`);
  }
  return { ok: true, message: codec.read(new FieldReader(view, bytes)) };
}

function fail(error: string): DecodeResult {
  return { ok: false, error };
}
