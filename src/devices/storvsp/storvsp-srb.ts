// Turning a guest's EXECUTE_SRB into a SCSI command: every field the guest wrote is
// checked against what storvsc can legitimately send (spec 1.2 and 1.4) before it is
// used, and the GPA-direct page list becomes an iovec list of host addresses in guest
// RAM (physically consecutive pages merged). A bad request is reported as a rejection
// code, answered by the caller with SRB INVALID_REQUEST; nothing here throws or touches
// memory outside guest RAM.
import { PAGE_SIZE } from '../../memory/page.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import { DecodeError, decodeGpaDirectHeader, GPA_DIRECT_FIXED_SIZE, GPA_DIRECT_OFFSET_RANGE_COUNT, GpaDirectRanges } from '../../vmbus/packet.js';
import { DataDirection } from '../scsi/scsi-command.js';
import { VMSCSI_CDB_BYTES, VMSCSI_REQUEST_SIZE, VSTOR_PACKET_SIZE, VstorField } from './storvsp-protocol.js';
import type { StorvspRequest } from './storvsp-request.js';

/** Linux's limits for a SCSI-class controller (storvsc: max_channel 7, max_id 2, max_lun 255). */
export const MAX_PATH_ID = 7;
export const MAX_TARGET_ID = 1;
export const MAX_LUN = 254;

export const SrbRejection = {
  None: 0,
  Truncated: 1,
  SrbLength: 2,
  CdbLength: 3,
  DataIn: 4,
  Address: 5,
  InbandWithData: 6,
  RangeCount: 7,
  BadRangeHeader: 8,
  LengthMismatch: 9,
  EmptyBuffer: 10,
  TooLarge: 11,
  ByteOffset: 12,
  PageOutsideRam: 13,
  TooManySegments: 14,
} as const;
export type SrbRejection = (typeof SrbRejection)[keyof typeof SrbRejection];

const rejectionText: Record<SrbRejection, string> = {
  [SrbRejection.None]: 'no problem',
  [SrbRejection.Truncated]: 'packet shorter than a vstor_packet',
  [SrbRejection.SrbLength]: 'srb length is not 52',
  [SrbRejection.CdbLength]: 'cdb_length outside 1..16',
  [SrbRejection.DataIn]: 'data_in outside 0..2',
  [SrbRejection.Address]: 'path/target/lun out of range',
  [SrbRejection.InbandWithData]: 'in-band request with a data length',
  [SrbRejection.RangeCount]: 'GPA-direct packet without exactly one range',
  [SrbRejection.BadRangeHeader]: 'malformed GPA-direct range',
  [SrbRejection.LengthMismatch]: 'range byte_count differs from data_transfer_length',
  [SrbRejection.EmptyBuffer]: 'GPA-direct packet with no data, or data with data_in 2',
  [SrbRejection.TooLarge]: 'data_transfer_length above max_transfer_bytes',
  [SrbRejection.ByteOffset]: 'byte_offset beyond the first page',
  [SrbRejection.PageOutsideRam]: 'a page is outside guest RAM',
  [SrbRejection.TooManySegments]: 'more pages than the request can hold',
};

export function srbRejectionText(rejection: SrbRejection): string {
  return rejectionText[rejection] ?? `rejection ${rejection}`;
}

/** Where a GPA-direct packet's range header lies (bytes between the descriptor and offset8 * 8). */
export interface RangeHeader {
  bytes: Uint8Array;
  offset: number;
  length: number;
}

export class SrbDecoder {
  private readonly ranges = new GpaDirectRanges();

  constructor(private readonly maxTransferBytes: number) {}

  /**
   * Fills `request` from the EXECUTE_SRB vstor_packet at bytes[offset, offset + length),
   * which may be the ring itself: each field is read once, then checked. `header` is null
   * for an in-band packet. On a rejection the addressing fields are still filled where
   * present, for the error reply.
   */
  prepare(bytes: Uint8Array, offset: number, length: number, header: RangeHeader | null, memory: GuestMemory, hostBase: number, request: StorvspRequest): SrbRejection {
    request.requestedLength = 0;
    request.cdbLength = 0;
    request.data.clear();
    if (length < VSTOR_PACKET_SIZE || offset < 0 || offset + VSTOR_PACKET_SIZE > bytes.length) {
      request.pathId = request.targetId = request.lun = request.dataIn = request.senseRoom = 0;
      return SrbRejection.Truncated;
    }
    const o = offset;
    const pathId = bytes[o + VstorField.PathId]!;
    const targetId = bytes[o + VstorField.TargetId]!;
    const lun = bytes[o + VstorField.Lun]!;
    const dataIn = bytes[o + VstorField.DataIn]!;
    request.pathId = pathId;
    request.targetId = targetId;
    request.lun = lun;
    request.dataIn = dataIn;
    request.senseRoom = bytes[o + VstorField.SenseInfoLength]!;
    const srbLength = bytes[o + VstorField.SrbLength]! | (bytes[o + VstorField.SrbLength + 1]! << 8);
    if (srbLength !== VMSCSI_REQUEST_SIZE) return SrbRejection.SrbLength;
    const cdbLength = bytes[o + VstorField.CdbLength]!;
    if (cdbLength < 1 || cdbLength > VMSCSI_CDB_BYTES) return SrbRejection.CdbLength;
    if (dataIn > DataDirection.None) return SrbRejection.DataIn;
    if (pathId > MAX_PATH_ID || targetId > MAX_TARGET_ID || lun > MAX_LUN) return SrbRejection.Address;
    request.cdbLength = cdbLength;
    const cdb = request.cdb;
    const c = o + VstorField.CdbOrSense;
    for (let i = 0; i < VMSCSI_CDB_BYTES; i++) cdb[i] = bytes[c + i]!;
    request.dataDirection = dataIn as DataDirection;
    const d = o + VstorField.DataTransferLength;
    const length32 = (bytes[d]! | (bytes[d + 1]! << 8) | (bytes[d + 2]! << 16) | (bytes[d + 3]! << 24)) >>> 0;
    if (header === null) {
      // Linux sends a command without a buffer in-band; a length there would have no pages.
      if (length32 !== 0) return SrbRejection.InbandWithData;
      return SrbRejection.None;
    }
    return this.mapBuffer(header, length32, memory, hostBase, request);
  }

  private mapBuffer(header: RangeHeader, length: number, memory: GuestMemory, hostBase: number, request: StorvspRequest): SrbRejection {
    const { bytes, offset } = header;
    if (header.length < GPA_DIRECT_FIXED_SIZE) return SrbRejection.BadRangeHeader;
    // storvsc always sends exactly one range; check before decoding so a hostile count
    // never makes the decoder build range objects.
    const p = offset + GPA_DIRECT_OFFSET_RANGE_COUNT;
    const rangeCount = (bytes[p]! | (bytes[p + 1]! << 8) | (bytes[p + 2]! << 16) | (bytes[p + 3]! << 24)) >>> 0;
    if (rangeCount !== 1) return SrbRejection.RangeCount;
    if (decodeGpaDirectHeader(bytes, offset, header.length, this.ranges) !== DecodeError.None) return SrbRejection.BadRangeHeader;
    // The header may be the ring, which the guest can rewrite between the two reads.
    if (this.ranges.count !== 1) return SrbRejection.RangeCount;
    const range = this.ranges.ranges[0]!;
    if (range.byteCount !== length) return SrbRejection.LengthMismatch;
    if (length === 0 || request.dataDirection === DataDirection.None) return SrbRejection.EmptyBuffer;
    if (length > this.maxTransferBytes) return SrbRejection.TooLarge;
    let pageOffset = range.byteOffset;
    if (pageOffset >= PAGE_SIZE) return SrbRejection.ByteOffset;
    // The decoder sized the list as ceil((byte_offset + byte_count) / 4096), the count the
    // guest must send; check every page before the first iovec is built.
    const pfns = range.pfns;
    const pages = pfns.length;
    for (let k = 0; k < pages; k++) if (!memory.containsPage(pfns[k]!)) return SrbRejection.PageOutsideRam;
    const data = request.data;
    let remaining = length;
    let runAddress = 0;
    let runLength = 0;
    for (let k = 0; k < pages && remaining > 0; k++) {
      const take = Math.min(PAGE_SIZE - pageOffset, remaining);
      const address = hostBase + pfns[k]! * PAGE_SIZE + pageOffset;
      if (runLength > 0 && runAddress + runLength === address) {
        runLength += take;
      } else {
        if (runLength > 0 && !data.push(runAddress, runLength)) return SrbRejection.TooManySegments;
        runAddress = address;
        runLength = take;
      }
      remaining -= take;
      pageOffset = 0;
    }
    if (runLength > 0 && !data.push(runAddress, runLength)) return SrbRejection.TooManySegments;
    request.requestedLength = length;
    return SrbRejection.None;
  }
}
