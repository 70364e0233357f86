// The bytes of one EXECUTE_SRB request: the vstor_packet with its vmscsi_request filled the
// way Linux's storvsc_queuecommand fills it, and the GPA-direct range header that hands the
// host the guest pages of the data buffer. Both write into reused buffers: nothing here
// allocates per request.
import { PAGE_SIZE } from '../../memory/page.js';
import { REQUEST_COMPLETION_FLAG, VMSCSI_REQUEST_SIZE, VMSCSI_SENSE_BYTES, VstorField, VstorOperation } from '../../devices/storvsp/storvsp-protocol.js';
import { DataIn, type ScsiTarget } from './scsi-command.js';

const SRB_FLAGS_QUEUE_ACTION_ENABLE = 0x02;
const SRB_FLAGS_DISABLE_SYNCH_TRANSFER = 0x08;
const SRB_FLAGS_DATA_IN = 0x40;
const SRB_FLAGS_DATA_OUT = 0x80;
const SRB_FLAGS_NO_QUEUE_FREEZE = 0x100;
const SP_UNTAGGED = 0xff;
const SRB_SIMPLE_TAG_REQUEST = 0x20;
/** time_out_value Linux puts in every SRB (seconds). */
const SRB_TIMEOUT_SECONDS = 60;

/** Encodes an EXECUTE_SRB vstor_packet for `t` into `p` (VSTOR_PACKET_SIZE bytes, overwritten). */
export function encodeExecuteSrb(p: Uint8Array, portNumber: number, t: ScsiTarget, cdb: Uint8Array, cdbLength: number, dataIn: number, length: number): void {
  p.fill(0);
  writeU32(p, VstorField.Operation, VstorOperation.ExecuteSrb);
  writeU32(p, VstorField.Flags, REQUEST_COMPLETION_FLAG);
  p[VstorField.SrbLength] = VMSCSI_REQUEST_SIZE;
  p[VstorField.PortNumber] = portNumber & 0xff;
  p[VstorField.PathId] = t.channel;
  p[VstorField.TargetId] = t.target;
  p[VstorField.Lun] = t.lun;
  p[VstorField.CdbLength] = cdbLength;
  p[VstorField.SenseInfoLength] = VMSCSI_SENSE_BYTES;
  p[VstorField.DataIn] = dataIn;
  writeU32(p, VstorField.DataTransferLength, length);
  for (let i = 0; i < cdbLength; i++) p[VstorField.CdbOrSense + i] = cdb[i]!;
  let flags = SRB_FLAGS_DISABLE_SYNCH_TRANSFER;
  if (t.tagged) {
    flags |= SRB_FLAGS_QUEUE_ACTION_ENABLE | SRB_FLAGS_NO_QUEUE_FREEZE;
    p[VstorField.QueueTag] = SP_UNTAGGED;
    p[VstorField.QueueAction] = SRB_SIMPLE_TAG_REQUEST;
  }
  if (dataIn === DataIn.Read) flags |= SRB_FLAGS_DATA_IN;
  else if (dataIn === DataIn.Write) flags |= SRB_FLAGS_DATA_OUT;
  writeU32(p, VstorField.SrbFlags, flags);
  writeU32(p, VstorField.TimeOutValue, SRB_TIMEOUT_SECONDS);
}

/**
 * The GPA-direct header for one contiguous guest buffer: one range (byte_count, byte_offset
 * into the first page, then every page). One buffer sized for the negotiated transfer
 * limit, with a cached view per page count.
 */
export class GpaDirectHeader {
  private buffer = new Uint8Array(16);
  private views: Uint8Array[] = [];

  /** Sizes the buffer for commands up to `maxTransferBytes` (after the handshake). */
  size(maxTransferBytes: number): void {
    const maxPages = Math.ceil((PAGE_SIZE - 1 + maxTransferBytes) / PAGE_SIZE) + 1;
    this.buffer = new Uint8Array(16 + 8 * maxPages);
    writeU32(this.buffer, 0, 0);
    writeU32(this.buffer, 4, 1); // range count
    this.views = [];
  }

  /** Fills the header for `length` bytes at `gpa` and returns it (valid until the next call). */
  describe(gpa: number, length: number): Uint8Array {
    const offset = gpa % PAGE_SIZE;
    const first = (gpa - offset) / PAGE_SIZE;
    const pages = Math.ceil((offset + length) / PAGE_SIZE);
    const h = this.views[pages] ?? this.view(pages);
    writeU32(h, 8, length);
    writeU32(h, 12, offset);
    for (let i = 0; i < pages; i++) {
      const pfn = first + i;
      writeU32(h, 16 + i * 8, pfn >>> 0);
      writeU32(h, 20 + i * 8, Math.floor(pfn / 0x1_0000_0000));
    }
    return h;
  }

  private view(pages: number): Uint8Array {
    if (16 + 8 * pages > this.buffer.length) {
      // A command larger than the negotiated limit (internal buffers): grow once.
      const grown = new Uint8Array(16 + 8 * pages);
      grown.set(this.buffer.subarray(0, 8));
      this.buffer = grown;
      this.views = [];
    }
    const view = this.buffer.subarray(0, 16 + 8 * pages);
    this.views[pages] = view;
    return view;
  }
}

export function readU32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

export function writeU32(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
  b[o + 2] = (v >>> 16) & 0xff;
  b[o + 3] = (v >>> 24) & 0xff;
}
