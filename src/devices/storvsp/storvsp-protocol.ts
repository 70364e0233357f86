// The storvsc/storvsp wire format (Linux drivers/scsi/storvsc_drv.c): every message is
// a 64-byte vstor_packet; SCSI requests carry a 52-byte vmscsi_request inside it.
// Shared by the host (StorVSP) and the reference guest (storvsc). Decoders read only
// within the bytes given and never throw.

export const STORVSC_SCSI_CLASS_ID = 'ba6163d9-04a1-4d29-b605-72e2ffb1dc7f';
export const STORVSC_IDE_CLASS_ID = '32412632-86cb-44a2-9b5c-50d1417354f5';

export const VSTOR_PACKET_SIZE = 64;
export const VSTOR_PAYLOAD_OFFSET = 12;
/** The Win8+ SCSI request (Linux 6.1 speaks only this form). */
export const VMSCSI_REQUEST_SIZE = 52;
export const VMSCSI_SENSE_BYTES = 20;
export const VMSCSI_CDB_BYTES = 16;

export const VstorOperation = {
  CompleteIo: 1,
  RemoveDevice: 2,
  ExecuteSrb: 3,
  ResetLun: 4,
  ResetAdapter: 5,
  ResetBus: 6,
  BeginInitialization: 7,
  EndInitialization: 8,
  QueryProtocolVersion: 9,
  QueryProperties: 10,
  EnumerateBus: 11,
  FcHbaData: 12,
  CreateSubChannels: 13,
} as const;

export const REQUEST_COMPLETION_FLAG = 1;

/** Protocol versions (major << 8 | minor) in the order Linux offers them. */
export const VstorVersion = {
  Win10: 0x0602,
  Win8_1: 0x0600,
  Win8: 0x0501,
} as const;
export const LINUX_VERSION_ORDER: readonly number[] = [VstorVersion.Win10, VstorVersion.Win8_1, VstorVersion.Win8];

/** Fixed transaction ids Linux uses for control requests. */
export const INIT_TRANSACTION_ID = 0xfffffffffffffffdn; // U64_MAX - 2
export const RESET_TRANSACTION_ID = 0xfffffffffffffffcn; // U64_MAX - 3

/** QUERY_PROPERTIES flags. */
export const STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL = 0x1;

export const NtStatus = {
  Success: 0,
  BufferOverflow: 0x80000005,
  DeviceBusy: 0x80000011,
  Unsuccessful: 0xc0000001,
  InvalidParameter: 0xc000000d,
  InvalidDeviceRequest: 0xc0000010,
  RevisionMismatch: 0xc0000059,
  DeviceNotConnected: 0xc000009d,
  IoTimeout: 0xc00000b5,
  DeviceDoesNotExist: 0xc00000c0,
  Cancelled: 0xc0000120,
  InvalidDeviceState: 0xc0000184,
  IoDeviceError: 0xc0000185,
} as const;

/** SRB status (low 6 bits) and its flag bits. */
export const SrbStatus = {
  Pending: 0x00,
  Success: 0x01,
  Aborted: 0x02,
  Error: 0x04,
  Busy: 0x05,
  InvalidRequest: 0x06,
  NoDevice: 0x08,
  SelectionTimeout: 0x0a,
  DataOverrun: 0x12,
  InvalidLun: 0x20,
  InvalidTargetId: 0x21,
  InternalError: 0x30,
  QueueFrozen: 0x40,
  AutosenseValid: 0x80,
} as const;

/** Field offsets within the 64-byte vstor_packet. */
export const VstorField = {
  Operation: 0,
  Flags: 4,
  Status: 8,
  // protocol version payload
  MajorMinor: 12,
  Revision: 14,
  // channel properties payload
  MaxChannelCount: 16,
  PropertiesFlags: 20,
  MaxTransferBytes: 24,
  // sub-channel count payload
  SubChannelCount: 12,
  // vmscsi_request payload
  SrbLength: 12,
  SrbStatus: 14,
  ScsiStatus: 15,
  PortNumber: 16,
  PathId: 17,
  TargetId: 18,
  Lun: 19,
  CdbLength: 20,
  SenseInfoLength: 21,
  DataIn: 22,
  DataTransferLength: 24,
  /** CDB in requests, sense data in replies. */
  CdbOrSense: 28,
  QueueTag: 50,
  QueueAction: 51,
  SrbFlags: 52,
  TimeOutValue: 56,
  QueueSortKey: 60,
} as const;

/** The SCSI request part of a vstor_packet, decoded into a reusable object. */
export class VmscsiRequest {
  length = 0;
  srbStatus = 0;
  scsiStatus = 0;
  portNumber = 0;
  pathId = 0;
  targetId = 0;
  lun = 0;
  cdbLength = 0;
  senseInfoLength = 0;
  dataIn = 0;
  dataTransferLength = 0;
  srbFlags = 0;
  timeOutValue = 0;
  /** 20 bytes: the CDB (first 16) in a request, the sense data in a reply. */
  readonly cdbOrSense = new Uint8Array(VMSCSI_SENSE_BYTES);
}

export class VstorPacket {
  operation = 0;
  flags = 0;
  status = 0;
  readonly srb = new VmscsiRequest();
  /** QUERY_PROTOCOL_VERSION. */
  majorMinor = 0;
  revision = 0;
  /** QUERY_PROPERTIES reply. */
  maxChannelCount = 0;
  propertiesFlags = 0;
  maxTransferBytes = 0;
  /** CREATE_SUB_CHANNELS. */
  subChannelCount = 0;
}

function u16(b: Uint8Array, o: number): number {
  return b[o]! | (b[o + 1]! << 8);
}
function u32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}
function put16(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
}
function put32(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
  b[o + 2] = (v >>> 16) & 0xff;
  b[o + 3] = (v >>> 24) & 0xff;
}

const shortPacket = new Uint8Array(VSTOR_PACKET_SIZE);

/**
 * Decodes a vstor_packet from `length` bytes at `offset`. Bytes past the end of a short
 * packet read as zero (Linux zero-pads), so the caller decides what a short packet
 * means. Returns false only when even the operation field is missing.
 */
export function decodeVstorPacket(bytes: Uint8Array, offset: number, length: number, out: VstorPacket): boolean {
  if (length < 4 || offset < 0 || offset + Math.min(length, VSTOR_PACKET_SIZE) > bytes.length) return false;
  let b = bytes;
  let o = offset;
  if (length < VSTOR_PACKET_SIZE) {
    shortPacket.fill(0);
    shortPacket.set(bytes.subarray(offset, offset + length));
    b = shortPacket;
    o = 0;
  }
  out.operation = u32(b, o);
  out.flags = u32(b, o + VstorField.Flags);
  out.status = u32(b, o + VstorField.Status);
  out.majorMinor = u16(b, o + VstorField.MajorMinor);
  out.revision = u16(b, o + VstorField.Revision);
  out.maxChannelCount = u16(b, o + VstorField.MaxChannelCount);
  out.propertiesFlags = u32(b, o + VstorField.PropertiesFlags);
  out.maxTransferBytes = u32(b, o + VstorField.MaxTransferBytes);
  out.subChannelCount = u16(b, o + VstorField.SubChannelCount);
  const s = out.srb;
  s.length = u16(b, o + VstorField.SrbLength);
  s.srbStatus = b[o + VstorField.SrbStatus]!;
  s.scsiStatus = b[o + VstorField.ScsiStatus]!;
  s.portNumber = b[o + VstorField.PortNumber]!;
  s.pathId = b[o + VstorField.PathId]!;
  s.targetId = b[o + VstorField.TargetId]!;
  s.lun = b[o + VstorField.Lun]!;
  s.cdbLength = b[o + VstorField.CdbLength]!;
  s.senseInfoLength = b[o + VstorField.SenseInfoLength]!;
  s.dataIn = b[o + VstorField.DataIn]!;
  s.dataTransferLength = u32(b, o + VstorField.DataTransferLength);
  for (let i = 0; i < VMSCSI_SENSE_BYTES; i++) s.cdbOrSense[i] = b[o + VstorField.CdbOrSense + i]!;
  s.srbFlags = u32(b, o + VstorField.SrbFlags);
  s.timeOutValue = u32(b, o + VstorField.TimeOutValue);
  return true;
}

/** Writes a whole 64-byte vstor_packet header (operation, flags, status) and zeroes the payload. */
export function encodeVstorHeader(target: Uint8Array, offset: number, operation: number, flags: number, status: number): void {
  target.fill(0, offset, offset + VSTOR_PACKET_SIZE);
  put32(target, offset + VstorField.Operation, operation);
  put32(target, offset + VstorField.Flags, flags);
  put32(target, offset + VstorField.Status, status >>> 0);
}

export function encodeProtocolVersion(target: Uint8Array, offset: number, majorMinor: number, revision = 0): void {
  put16(target, offset + VstorField.MajorMinor, majorMinor);
  put16(target, offset + VstorField.Revision, revision);
}

export function encodeChannelProperties(target: Uint8Array, offset: number, maxChannelCount: number, flags: number, maxTransferBytes: number): void {
  put16(target, offset + VstorField.MaxChannelCount, maxChannelCount);
  put32(target, offset + VstorField.PropertiesFlags, flags);
  put32(target, offset + VstorField.MaxTransferBytes, maxTransferBytes);
}

export function encodeSubChannelCount(target: Uint8Array, offset: number, count: number): void {
  put16(target, offset + VstorField.SubChannelCount, count);
}

/** Writes the vmscsi_request fields of `srb` into a vstor_packet at offset (header left as is). */
export function encodeVmscsiRequest(target: Uint8Array, offset: number, srb: VmscsiRequest): void {
  put16(target, offset + VstorField.SrbLength, srb.length);
  target[offset + VstorField.SrbStatus] = srb.srbStatus & 0xff;
  target[offset + VstorField.ScsiStatus] = srb.scsiStatus & 0xff;
  target[offset + VstorField.PortNumber] = srb.portNumber & 0xff;
  target[offset + VstorField.PathId] = srb.pathId & 0xff;
  target[offset + VstorField.TargetId] = srb.targetId & 0xff;
  target[offset + VstorField.Lun] = srb.lun & 0xff;
  target[offset + VstorField.CdbLength] = srb.cdbLength & 0xff;
  target[offset + VstorField.SenseInfoLength] = srb.senseInfoLength & 0xff;
  target[offset + VstorField.DataIn] = srb.dataIn & 0xff;
  put32(target, offset + VstorField.DataTransferLength, srb.dataTransferLength);
  target.set(srb.cdbOrSense.subarray(0, VMSCSI_SENSE_BYTES), offset + VstorField.CdbOrSense);
  put32(target, offset + VstorField.SrbFlags, srb.srbFlags);
  put32(target, offset + VstorField.TimeOutValue, srb.timeOutValue);
}
