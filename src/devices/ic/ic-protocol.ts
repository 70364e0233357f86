// The framing every Hyper-V integration component (hv_utils) shares: the 8-byte pipe
// header, the 20-byte icmsg header, the version negotiation both sides run once per
// channel open, and the table of services (class/instance GUIDs, version lists).
//
// Layouts and constants follow Linux (include/linux/hyperv.h, drivers/hv/channel_mgmt.c)
// and OpenVMM (vm/devices/hyperv_ic_protocol). All integers are little-endian.

// ---------------------------------------------------------------------------------------
// Sizes and offsets

/** `struct vmbuspipe_hdr`: u32 flags @0, u32 msgsize @4 (bytes after this header). */
export const PIPE_HEADER_SIZE = 8;
/** `struct icmsg_hdr`, packed, at payload offset 8. */
export const ICMSG_HEADER_SIZE = 20;
/** Linux's ICMSG_HDR: where the message body starts in the in-band payload. */
export const IC_BODY_OFFSET = PIPE_HEADER_SIZE + ICMSG_HEADER_SIZE;

/** Pipe packet type "data" (OpenVMM's PIPE_PACKET_TYPE_DATA); Linux ignores the pipe header. */
export const PIPE_PACKET_TYPE_DATA = 1;

// Field offsets inside the payload (not inside the icmsg header).
const OFF_PIPE_FLAGS = 0;
const OFF_PIPE_MSGSIZE = 4;
const OFF_FRAMEWORK_VERSION = 8;
const OFF_MSGTYPE = 12;
const OFF_MESSAGE_VERSION = 14;
const OFF_MSGSIZE = 18;
const OFF_STATUS = 20;
const OFF_TRANSACTION_ID = 24;
const OFF_FLAGS = 25;

/** Largest message OpenVMM's IC pipes accept; also the cap our host puts on what it sends. */
export const IC_MAX_MESSAGE_SIZE = 13312;

// ---------------------------------------------------------------------------------------
// Message types, flags, statuses

/** `icmsgtype` values. */
export const IcMsgType = {
  NEGOTIATE: 0,
  HEARTBEAT: 1,
  KVP_EXCHANGE: 2,
  SHUTDOWN: 3,
  TIMESYNC: 4,
  VSS: 5,
  FCOPY: 7,
} as const;

/** `icflags` bits. */
export const IcFlags = {
  TRANSACTION: 1,
  REQUEST: 2,
  RESPONSE: 4,
} as const;

/** What the host puts on every request, and what the guest puts on every reply. */
export const IC_REQUEST_FLAGS = IcFlags.TRANSACTION | IcFlags.REQUEST;
export const IC_RESPONSE_FLAGS = IcFlags.TRANSACTION | IcFlags.RESPONSE;

/** HRESULTs carried in `status` (unsigned 32-bit values, as read from the wire). */
export const IcStatus = {
  S_OK: 0x00000000,
  E_FAIL: 0x80004005,
  /** HV_S_CONT, "no more items": ends a KVP enumeration; the daemon's generic failure. */
  NO_MORE_ITEMS: 0x80070103,
  NOT_SUPPORTED: 0x80070032,
  MACHINE_LOCKED: 0x800704f7,
  DEVICE_NOT_CONNECTED: 0x8007048f,
  INVALID_ARG: 0x80070057,
  GUID_NOT_FOUND: 0x80041002,
  ALREADY_EXISTS: 0x80070050,
} as const;

/** `0x80004005` style, for log lines and error messages. */
export function formatStatus(status: number): string {
  return `0x${(status >>> 0).toString(16).padStart(8, '0')}`;
}

// ---------------------------------------------------------------------------------------
// Versions

/** `struct ic_version`: u16 major, u16 minor. */
export interface IcVersion {
  readonly major: number;
  readonly minor: number;
}

export const IC_VERSION_SIZE = 4;

export function icVersion(major: number, minor: number): IcVersion {
  return Object.freeze({ major: major & 0xffff, minor: minor & 0xffff });
}

/** Linux's packed form, `major << 16 | minor`: orders versions the way the kernel compares them. */
export function versionToU32(v: IcVersion): number {
  return ((v.major << 16) | v.minor) >>> 0;
}

export function versionFromU32(n: number): IcVersion {
  return icVersion(n >>> 16, n & 0xffff);
}

export function versionsEqual(a: IcVersion, b: IcVersion): boolean {
  return a.major === b.major && a.minor === b.minor;
}

/** Negative, zero or positive like a sort comparator. */
export function compareVersions(a: IcVersion, b: IcVersion): number {
  return versionToU32(a) - versionToU32(b);
}

export function formatVersion(v: IcVersion): string {
  return `${v.major}.${v.minor}`;
}

/** The framework versions: UTIL_FW_VERSION (3.0) and UTIL_WS2K8_FW_VERSION (1.0). */
export const FRAMEWORK_VERSION_1 = icVersion(1, 0);
export const FRAMEWORK_VERSION_3 = icVersion(3, 0);

/** The most versions of each kind a negotiate message may list (IC_VERSION_NEGOTIATION_MAX_VER_COUNT). */
export const IC_MAX_VERSION_COUNT = 100;

// ---------------------------------------------------------------------------------------
// Services

export type IcServiceName = 'heartbeat' | 'shutdown' | 'timesync' | 'kvp';

export interface IcServiceDescriptor {
  readonly name: IcServiceName;
  /** The `icmsgtype` of the service's own messages. */
  readonly msgType: number;
  /** VMBus interface (class) GUID: what the guest binds its driver to. */
  readonly classId: string;
  /** The instance GUID Hyper-V uses for the offer (any unique value works). */
  readonly instanceId: string;
  /** Framework versions Linux accepts, in its preference order. */
  readonly frameworkVersions: readonly IcVersion[];
  /** Message versions Linux accepts, in its preference order. */
  readonly messageVersions: readonly IcVersion[];
  /** Framework versions our host offers (OpenVMM's order: oldest first). */
  readonly hostFrameworkVersions: readonly IcVersion[];
  /** Message versions our host offers. */
  readonly hostMessageVersions: readonly IcVersion[];
}

export const HEARTBEAT_VERSION_1 = icVersion(1, 0);
export const HEARTBEAT_VERSION_3 = icVersion(3, 0);
export const SHUTDOWN_VERSION_1 = icVersion(1, 0);
export const SHUTDOWN_VERSION_3 = icVersion(3, 0);
/** 3.1 added restart (flags 2/3). */
export const SHUTDOWN_VERSION_3_1 = icVersion(3, 1);
/** 3.2 added hibernate (flags 4/5). */
export const SHUTDOWN_VERSION_3_2 = icVersion(3, 2);
export const TIMESYNC_VERSION_1 = icVersion(1, 0);
export const TIMESYNC_VERSION_3 = icVersion(3, 0);
/** 4.0 changed the body to carry the guest's reference time (ictimesync_ref_data). */
export const TIMESYNC_VERSION_4 = icVersion(4, 0);
export const KVP_VERSION_1 = icVersion(1, 0);
export const KVP_VERSION_3 = icVersion(3, 0);
export const KVP_VERSION_4 = icVersion(4, 0);

const LINUX_FRAMEWORK_VERSIONS = Object.freeze([FRAMEWORK_VERSION_3, FRAMEWORK_VERSION_1]);
const HOST_FRAMEWORK_VERSIONS = Object.freeze([FRAMEWORK_VERSION_1, FRAMEWORK_VERSION_3]);

export const IC_SERVICES: Readonly<Record<IcServiceName, IcServiceDescriptor>> = Object.freeze({
  heartbeat: Object.freeze({
    name: 'heartbeat',
    msgType: IcMsgType.HEARTBEAT,
    classId: '57164f39-9115-4e78-ab55-382f3bd5422d',
    instanceId: 'fd149e91-82e0-4a7d-afa6-2a4166cbd7c0',
    frameworkVersions: LINUX_FRAMEWORK_VERSIONS,
    messageVersions: Object.freeze([HEARTBEAT_VERSION_3, HEARTBEAT_VERSION_1]),
    hostFrameworkVersions: HOST_FRAMEWORK_VERSIONS,
    hostMessageVersions: Object.freeze([HEARTBEAT_VERSION_1, HEARTBEAT_VERSION_3]),
  }),
  shutdown: Object.freeze({
    name: 'shutdown',
    msgType: IcMsgType.SHUTDOWN,
    classId: '0e0b6031-5213-4934-818b-38d90ced39db',
    instanceId: 'b6650ff7-33bc-4840-8048-e0676786f393',
    frameworkVersions: LINUX_FRAMEWORK_VERSIONS,
    messageVersions: Object.freeze([SHUTDOWN_VERSION_3_2, SHUTDOWN_VERSION_3_1, SHUTDOWN_VERSION_3, SHUTDOWN_VERSION_1]),
    hostFrameworkVersions: HOST_FRAMEWORK_VERSIONS,
    hostMessageVersions: Object.freeze([SHUTDOWN_VERSION_1, SHUTDOWN_VERSION_3, SHUTDOWN_VERSION_3_1, SHUTDOWN_VERSION_3_2]),
  }),
  timesync: Object.freeze({
    name: 'timesync',
    msgType: IcMsgType.TIMESYNC,
    classId: '9527e630-d0ae-497b-adce-e80ab0175caf',
    instanceId: '2dd1ce17-079e-403c-b352-a1921ee207ee',
    frameworkVersions: LINUX_FRAMEWORK_VERSIONS,
    messageVersions: Object.freeze([TIMESYNC_VERSION_4, TIMESYNC_VERSION_3, TIMESYNC_VERSION_1]),
    hostFrameworkVersions: HOST_FRAMEWORK_VERSIONS,
    // 4.0 only when the host can read the guest's reference counter; the service drops it otherwise.
    hostMessageVersions: Object.freeze([TIMESYNC_VERSION_1, TIMESYNC_VERSION_3, TIMESYNC_VERSION_4]),
  }),
  kvp: Object.freeze({
    name: 'kvp',
    msgType: IcMsgType.KVP_EXCHANGE,
    classId: 'a9a0f4e7-5a45-4d96-b827-8a841e8c03e6',
    instanceId: '242ff919-07db-4180-9c2e-b86cb68c8c55',
    frameworkVersions: LINUX_FRAMEWORK_VERSIONS,
    messageVersions: Object.freeze([KVP_VERSION_4, KVP_VERSION_3, KVP_VERSION_1]),
    hostFrameworkVersions: HOST_FRAMEWORK_VERSIONS,
    // OpenVMM also offers 5.0 (binary IP-info messages); Linux does not accept it and we do
    // not implement IP injection, so it is left out.
    hostMessageVersions: Object.freeze([KVP_VERSION_3, KVP_VERSION_4]),
  }),
});

// ---------------------------------------------------------------------------------------
// Headers

export interface PipeHeader {
  readonly flags: number;
  readonly msgSize: number;
}

export interface IcHeader {
  readonly frameworkVersion: IcVersion;
  readonly msgType: number;
  readonly messageVersion: IcVersion;
  /** `icmsgsize`: body bytes as the sender declares them (neither side trusts it). */
  readonly msgSize: number;
  readonly status: number;
  /** `ictransaction_id` (u8): hosts write 0 and Linux echoes it; the VMBus transaction id is what matters. */
  readonly transactionId: number;
  readonly flags: number;
}

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function readVersion(view: DataView, offset: number): IcVersion {
  return icVersion(view.getUint16(offset, true), view.getUint16(offset + 2, true));
}

function writeVersion(view: DataView, offset: number, v: IcVersion): void {
  view.setUint16(offset, v.major, true);
  view.setUint16(offset + 2, v.minor, true);
}

/** The pipe header, or undefined when the payload is shorter than 8 bytes. */
export function decodePipeHeader(payload: Uint8Array): PipeHeader | undefined {
  if (payload.length < PIPE_HEADER_SIZE) return undefined;
  const view = viewOf(payload);
  return { flags: view.getUint32(OFF_PIPE_FLAGS, true), msgSize: view.getUint32(OFF_PIPE_MSGSIZE, true) };
}

/** The icmsg header, or undefined when the payload cannot hold pipe + icmsg headers (Linux drops those). */
export function decodeIcHeader(payload: Uint8Array): IcHeader | undefined {
  if (payload.length < IC_BODY_OFFSET) return undefined;
  const view = viewOf(payload);
  return {
    frameworkVersion: readVersion(view, OFF_FRAMEWORK_VERSION),
    msgType: view.getUint16(OFF_MSGTYPE, true),
    messageVersion: readVersion(view, OFF_MESSAGE_VERSION),
    msgSize: view.getUint16(OFF_MSGSIZE, true),
    status: view.getUint32(OFF_STATUS, true),
    transactionId: view.getUint8(OFF_TRANSACTION_ID),
    flags: view.getUint8(OFF_FLAGS),
  };
}

/** The body: everything after the two headers (empty for a too-short payload). */
export function icBody(payload: Uint8Array): Uint8Array {
  return payload.subarray(Math.min(IC_BODY_OFFSET, payload.length));
}

export interface IcMessageFields {
  readonly frameworkVersion: IcVersion;
  readonly msgType: number;
  readonly messageVersion: IcVersion;
  readonly status?: number;
  readonly transactionId?: number;
  readonly flags: number;
}

/**
 * Builds a whole in-band payload: pipe header (type data, msgsize = icmsg header + body),
 * icmsg header with `icmsgsize` = body length, then the body. Throws RangeError when the
 * result would exceed IC_MAX_MESSAGE_SIZE (a caller bug, never guest input).
 */
export function encodeIcMessage(fields: IcMessageFields, body: Uint8Array): Uint8Array {
  const total = IC_BODY_OFFSET + body.length;
  if (total > IC_MAX_MESSAGE_SIZE) {
    throw new RangeError(`IC message of ${total} bytes exceeds ${IC_MAX_MESSAGE_SIZE}`);
  }
  const out = new Uint8Array(total);
  const view = viewOf(out);
  view.setUint32(OFF_PIPE_FLAGS, PIPE_PACKET_TYPE_DATA, true);
  view.setUint32(OFF_PIPE_MSGSIZE, ICMSG_HEADER_SIZE + body.length, true);
  writeVersion(view, OFF_FRAMEWORK_VERSION, fields.frameworkVersion);
  view.setUint16(OFF_MSGTYPE, fields.msgType, true);
  writeVersion(view, OFF_MESSAGE_VERSION, fields.messageVersion);
  view.setUint16(OFF_MSGSIZE, body.length, true);
  view.setUint32(OFF_STATUS, (fields.status ?? IcStatus.S_OK) >>> 0, true);
  view.setUint8(OFF_TRANSACTION_ID, fields.transactionId ?? 0);
  view.setUint8(OFF_FLAGS, fields.flags);
  out.set(body, IC_BODY_OFFSET);
  return out;
}

/** Overwrites `status` in place (a guest answering in the request's own buffer). Needs a full header. */
export function setIcStatus(packet: Uint8Array, status: number): void {
  if (packet.length < IC_BODY_OFFSET) return;
  viewOf(packet).setUint32(OFF_STATUS, status >>> 0, true);
}

/** Overwrites `icflags` in place. Needs a full header. */
export function setIcFlags(packet: Uint8Array, flags: number): void {
  if (packet.length < IC_BODY_OFFSET) return;
  packet[OFF_FLAGS] = flags & 0xff;
}

// ---------------------------------------------------------------------------------------
// Negotiation

/** `struct icmsg_negotiate` up to the version array: u16 icframe_vercnt, u16 icmsg_vercnt, u32 reserved. */
export const NEGOTIATE_FIXED_SIZE = 8;
/** The `icmsgsize` Linux writes into its answer: the fixed part plus two versions. */
export const NEGOTIATE_RESPONSE_BODY_SIZE = 16;

/** Payload bytes a negotiate message with these counts needs (Linux's ICMSG_NEGOTIATE_PKT_SIZE). */
export function negotiatePacketSize(frameworkCount: number, messageCount: number): number {
  return IC_BODY_OFFSET + NEGOTIATE_FIXED_SIZE + (frameworkCount + messageCount) * IC_VERSION_SIZE;
}

/**
 * The host's NEGOTIATE request: flags TRANSACTION|REQUEST, header versions zero (the
 * versions are what is being negotiated), body = counts, reserved, framework versions,
 * message versions. Throws RangeError for more than 100 versions of either kind.
 */
export function encodeNegotiate(
  frameworkVersions: readonly IcVersion[],
  messageVersions: readonly IcVersion[],
): Uint8Array {
  if (frameworkVersions.length > IC_MAX_VERSION_COUNT || messageVersions.length > IC_MAX_VERSION_COUNT) {
    throw new RangeError(`at most ${IC_MAX_VERSION_COUNT} versions of each kind may be offered`);
  }
  const body = new Uint8Array(NEGOTIATE_FIXED_SIZE + (frameworkVersions.length + messageVersions.length) * IC_VERSION_SIZE);
  const view = viewOf(body);
  view.setUint16(0, frameworkVersions.length, true);
  view.setUint16(2, messageVersions.length, true);
  let offset = NEGOTIATE_FIXED_SIZE;
  for (const v of [...frameworkVersions, ...messageVersions]) {
    writeVersion(view, offset, v);
    offset += IC_VERSION_SIZE;
  }
  const zero = icVersion(0, 0);
  return encodeIcMessage(
    { frameworkVersion: zero, msgType: IcMsgType.NEGOTIATE, messageVersion: zero, flags: IC_REQUEST_FLAGS },
    body,
  );
}

export interface NegotiateBody {
  readonly frameworkVersions: readonly IcVersion[];
  readonly messageVersions: readonly IcVersion[];
}

/**
 * Parses a negotiate body (either direction). Returns a reason string instead of throwing
 * for counts over 100 or a body too short for the counts it declares.
 */
export function decodeNegotiateBody(body: Uint8Array): NegotiateBody | string {
  if (body.length < NEGOTIATE_FIXED_SIZE) return `negotiate body of ${body.length} bytes is shorter than ${NEGOTIATE_FIXED_SIZE}`;
  const view = viewOf(body);
  const fwCount = view.getUint16(0, true);
  const msgCount = view.getUint16(2, true);
  if (fwCount > IC_MAX_VERSION_COUNT || msgCount > IC_MAX_VERSION_COUNT) {
    return `negotiate counts ${fwCount}/${msgCount} exceed ${IC_MAX_VERSION_COUNT}`;
  }
  const need = NEGOTIATE_FIXED_SIZE + (fwCount + msgCount) * IC_VERSION_SIZE;
  if (body.length < need) return `negotiate body of ${body.length} bytes cannot hold ${fwCount}+${msgCount} versions`;
  const read = (first: number, count: number): IcVersion[] => {
    const out: IcVersion[] = [];
    for (let i = 0; i < count; i++) out.push(readVersion(view, NEGOTIATE_FIXED_SIZE + (first + i) * IC_VERSION_SIZE));
    return out;
  };
  return { frameworkVersions: read(0, fwCount), messageVersions: read(fwCount, msgCount) };
}

/**
 * Linux's selection rule: walk our own list in preference order and take the first entry
 * present anywhere in the offered list (so the guest's order wins, not the host's).
 */
export function chooseVersion(own: readonly IcVersion[], offered: readonly IcVersion[]): IcVersion | undefined {
  for (const mine of own) {
    if (offered.some((v) => versionsEqual(v, mine))) return mine;
  }
  return undefined;
}

export interface NegotiationOutcome {
  /** Both a framework and a message version matched: the answer carries counts 1/1. */
  readonly matched: boolean;
  /**
   * What Linux writes into slot 0 and reports as the negotiated framework version. When
   * nothing matched this is `{major: <host's framework count>, minor: 0}`, a kernel quirk
   * kept so the bytes on the wire are the same.
   */
  readonly frameworkVersion: IcVersion;
  /** Slot 1 / the service version Linux records (same quirk when unmatched). */
  readonly messageVersion: IcVersion;
}

/**
 * The guest's answer to NEGOTIATE, made in place in the received packet exactly as
 * vmbus_prep_negotiate_resp does it: icmsgsize = 16, counts 1/1 with the chosen framework
 * version in slot 0 and message version in slot 1, or counts 0/0 when nothing matched,
 * when either count exceeds 100, or when the packet is too short for its counts. The
 * caller then sets the response flags and sends the packet back at its received length
 * (slots that fall beyond it are simply not sent, as in Linux).
 *
 * Returns undefined, leaving the packet untouched, when it cannot even hold the two
 * counts (Linux bails out before writing anything; the caller still answers).
 */
export function prepareNegotiateResponse(
  packet: Uint8Array,
  ownFrameworkVersions: readonly IcVersion[],
  ownMessageVersions: readonly IcVersion[],
): NegotiationOutcome | undefined {
  if (packet.length < IC_BODY_OFFSET + 4) return undefined;
  const view = viewOf(packet);
  view.setUint16(OFF_MSGSIZE, NEGOTIATE_RESPONSE_BODY_SIZE, true);
  const fwCount = view.getUint16(IC_BODY_OFFSET, true);
  const msgCount = view.getUint16(IC_BODY_OFFSET + 2, true);

  // Before anything matches, the kernel's "chosen" versions hold the counts.
  let frameworkVersion = icVersion(fwCount, 0);
  let messageVersion = icVersion(msgCount, 0);
  let matched = false;

  const plausible =
    fwCount <= IC_MAX_VERSION_COUNT &&
    msgCount <= IC_MAX_VERSION_COUNT &&
    negotiatePacketSize(fwCount, msgCount) <= packet.length;
  if (plausible) {
    const offered = decodeNegotiateBody(packet.subarray(IC_BODY_OFFSET));
    if (typeof offered !== 'string') {
      const fw = chooseVersion(ownFrameworkVersions, offered.frameworkVersions);
      if (fw !== undefined) {
        frameworkVersion = fw;
        const msg = chooseVersion(ownMessageVersions, offered.messageVersions);
        if (msg !== undefined) {
          messageVersion = msg;
          matched = true;
        }
      }
    }
  }

  view.setUint16(IC_BODY_OFFSET, matched ? 1 : 0, true);
  view.setUint16(IC_BODY_OFFSET + 2, matched ? 1 : 0, true);
  const slot0 = IC_BODY_OFFSET + NEGOTIATE_FIXED_SIZE;
  const slot1 = slot0 + IC_VERSION_SIZE;
  if (slot0 + IC_VERSION_SIZE <= packet.length) writeVersion(view, slot0, frameworkVersion);
  if (slot1 + IC_VERSION_SIZE <= packet.length) writeVersion(view, slot1, messageVersion);
  return { matched, frameworkVersion, messageVersion };
}
