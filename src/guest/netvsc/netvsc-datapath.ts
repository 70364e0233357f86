// The netvsc data path of the reference guest (Linux netvsc.c netvsc_send / netvsc_receive,
// netvsc_drv.c netvsc_xmit / netvsc_alloc_recv_skb). Send: each frame becomes an RNDIS
// PACKET with a checksum or LSOv2 PPI (from the frame's PacketOffload) and goes out as
// SEND_RNDIS_PKT, either copied into a send-buffer section (small frames) or, when it does
// not fit one, from a per-queue bounce buffer in guest pages described GPA-direct. Receive:
// transfer-page packets from the 0xCAFE receive buffer, one RNDIS message per range; data
// frames go to the receiver with their RX checksum verdict, control messages to the RNDIS
// filter, and every packet is completed with {108, status}. A coalesced (RSC) segment
// arrives as fragments in consecutive ranges of one packet (PKTINFO_ID: first/last); they
// are joined into one frame with the first fragment's PPIs, as rndis_filter_receive_data
// and rsc_add_data do. Per-packet state lives in preallocated tables; nothing is
// allocated per frame.
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { PacketView } from '../../vmbus/ring/ring-reader.js';
import { PAGE_SIZE } from '../../memory/page.js';
import { DecodeError, decodeTransferPageHeader, PACKET_FLAG_COMPLETION_REQUESTED, PacketType, TransferPageHeader } from '../../vmbus/packet.js';
import {
  NETVSC_RECEIVE_BUFFER_ID,
  NVSP_INVALID_SECTION_INDEX,
  NVSP_MESSAGE_SIZE,
  NvspDecoder,
  NvspStatus,
  RndisChannelType,
  VRSS_SEND_TABLE_SIZE,
  encodeRndisPacketCompleteMessage,
  encodeRndisPacketMessage,
  isNvspError,
} from '../../devices/netvsp/nvsp-protocol.js';
import { copyBytes } from '../../devices/netvsp/le-bytes.js';
import { RndisDecoder, RndisError, RndisMessageSize, encodeRndisPacketHeader } from '../../devices/netvsp/rndis-protocol.js';
import { LsoIpVersion, PacketInfo, PacketInfoIdFlag, PpiType, PPI_U32_RECORD_SIZE, RxChecksum, TxChecksum, decodePacketInfo, lsoV2Info, txChecksumInfo, writeU32Ppi } from '../../devices/netvsp/per-packet-info.js';
import { PacketOffload } from '../../backends/net/net-backend.js';
import { ETHERTYPE_IPV4, ETHERTYPE_IPV6, IPPROTO_TCP, IPPROTO_UDP, ParsedPacket, parsePacket } from '../../backends/net/packet-parse.js';
import { fillIpv4HeaderChecksum, fillPartialChecksum, finishChecksum, pseudoHeaderSumIpv4, pseudoHeaderSumIpv6 } from '../../backends/net/inet-checksum.js';
import type { PageAllocator } from '../page-allocator.js';
import type { NetvscPort, NvspSession } from './netvsc-handshake.js';

/** Largest frame the data path sends: a 64 KiB GSO frame plus Ethernet/VLAN headers. */
export const NETVSC_MAX_SEND_FRAME = 65536 + 18;
/** Room for the PPIs netvsc_xmit adds (hash, VLAN, checksum or LSO: 16 bytes each). */
const MAX_PPI_BYTES = 4 * PPI_U32_RECORD_SIZE;
/** Where a frame goes in a bounce buffer: after room for the RNDIS header and the largest PPIs. */
const BOUNCE_FRAME_OFFSET = RndisMessageSize.Packet + MAX_PPI_BYTES;
const BOUNCE_PAGES = Math.ceil((BOUNCE_FRAME_OFFSET + NETVSC_MAX_SEND_FRAME) / PAGE_SIZE);
/** A received frame longer than this goes to the SegmentHandler where it lies instead of being copied to the FrameHandler. */
const HAND_OVER_IN_PLACE_BYTES = 2048;

/** Linux's NVSP_RSC_MAX: most fragments of one coalesced segment. */
export const NVSP_RSC_MAX = 562;
/** Largest coalesced segment taken: a 64 KiB IP packet with Ethernet and a VLAN tag. */
const MAX_COALESCED_FRAME = 0xffff + 18;
/**
 * Large frames in flight per queue. Linux sends an skb's own pages, bounded only by the
 * ring; the reference guest copies into these buffers, and with 4 of them TCP G->H
 * waited on completions at half the rate 32 gave (bench:network, 2026-11-27).
 */
const DEFAULT_BOUNCE_BUFFERS = 32;
/** Payloads up to this size (every NVSP message the data path receives) are decoded from a copy. */
const SMALL_PAYLOAD_BYTES = 64;
const SLOT_FREE = 0;
const SLOT_SECTION = 1;
const SLOT_BOUNCE = 2;
const SLOT_CONTROL = 3;

/** A received frame: frame[offset, offset+length) is valid only during the call. */
export type FrameHandler = (queue: number, frame: Uint8Array, offset: number, length: number, offload: PacketOffload) => void;
/**
 * A coalesced segment left where it arrived: `count` fragments at bytes[offsets[i],
 * offsets[i]+lengths[i]) of the receive buffer, whose native address is `address` (NaN
 * when unknown). Valid only during the call.
 */
export class CoalescedSegment {
  count = 0;
  length = 0;
  address = Number.NaN;
  readonly offsets = new Int32Array(NVSP_RSC_MAX);
  readonly lengths = new Int32Array(NVSP_RSC_MAX);
}
/** Takes a coalesced segment without copying it; false: not taken (the data path joins it and calls the FrameHandler). */
export type SegmentHandler = (queue: number, bytes: Uint8Array, segment: CoalescedSegment, offload: PacketOffload) => boolean;
/** An RNDIS control message (completion or indication) at bytes[offset, offset+length). */
export type ControlHandler = (bytes: Uint8Array, offset: number, length: number) => void;

export interface DatapathStats {
  txFrames: number; txSection: number; txBounce: number; txBusy: number; txDropped: number; txCompletions: number;
  rxPackets: number; rxFrames: number; rxBadRanges: number; rxBadMessages: number; strayCompletions: number;
  /** Of rxFrames: coalesced segments joined from RSC fragments; and segments dropped unfinished or malformed. */
  rxCoalesced: number; rxCoalesceDropped: number;
}

const scratchParsed = new ParsedPacket();

/**
 * Writes the checksum or LSOv2 PPI netvsc_xmit would add for `offload` (a vnet header's
 * NEEDS_CSUM / GSO) at target[offset] and returns its bytes (0: none needed). May rewrite
 * the frame's IP length/checksum and TCP checksum for LSO exactly as Linux does; finishes
 * checksums of protocols the PPI cannot carry in software. -1: the frame cannot be sent.
 */
export function encodeTxPpis(frame: Uint8Array, frameOffset: number, length: number, offload: PacketOffload, target: Uint8Array, offset: number): number {
  if (!offload.needsChecksum && offload.gso === 'none') return 0;
  const p = scratchParsed;
  parsePacket(frame, frameOffset, length, p);
  const l4 = offload.checksumStart;
  const isV4 = p.etherType === ETHERTYPE_IPV4;
  const isV6 = p.etherType === ETHERTYPE_IPV6;
  if (offload.gso === 'tcpv4' || offload.gso === 'tcpv6') {
    if (!(isV4 || isV6) || p.l4Protocol !== IPPROTO_TCP || p.l4Offset !== l4 || offload.gsoSize <= 0 || offload.gsoSize > 0xfffff || l4 > 0x3ff) return -1;
    const f = frame;
    const l3 = frameOffset + p.l3Offset;
    const csumAt = frameOffset + l4 + 16;
    let sum: number;
    if (isV4) {
      // Linux zeroes tot_len and the header checksum; TCP checksum = pseudo header without length.
      f[l3 + 2] = 0; f[l3 + 3] = 0; f[l3 + 10] = 0; f[l3 + 11] = 0;
      sum = pseudoHeaderSumIpv4(f, l3, IPPROTO_TCP, 0);
    } else {
      f[l3 + 4] = 0; f[l3 + 5] = 0;
      sum = pseudoHeaderSumIpv6(f, l3, IPPROTO_TCP, 0);
    }
    const folded = (~finishChecksum(sum)) & 0xffff;
    f[csumAt] = folded >>> 8; f[csumAt + 1] = folded & 0xff;
    return writeU32Ppi(target, offset, PpiType.TcpLargeSend, lsoV2Info(offload.gsoSize, l4, isV4 ? LsoIpVersion.Ipv4 : LsoIpVersion.Ipv6));
  }
  if (offload.gso !== 'none') return -1; // UFO/USO: Linux never gets these (no NETIF_F_GSO_UDP_L4 on netvsc)
  const tcp = p.l4Protocol === IPPROTO_TCP;
  const udp = p.l4Protocol === IPPROTO_UDP;
  if ((isV4 || isV6) && (tcp || udp) && p.l4Offset === l4 && l4 <= 0x3ff) {
    const flags = (isV4 ? TxChecksum.IsIpv4 : TxChecksum.IsIpv6) | (tcp ? TxChecksum.Tcp : TxChecksum.Udp);
    return writeU32Ppi(target, offset, PpiType.TcpIpChecksum, txChecksumInfo(flags, l4));
  }
  // skb_checksum_help: finish it here.
  return fillPartialChecksum(frame, frameOffset, frameOffset + length, offload.checksumStart, offload.checksumOffset) ? 0 : -1;
}

/** The receive verdict netvsc_alloc_recv_skb derives from the RX checksum PPI (fixing an invalid IPv4 header checksum). */
export function applyRxChecksum(info: PacketInfo, frame: Uint8Array, offset: number, length: number, out: PacketOffload): void {
  out.clear();
  if (!info.hasChecksum) return;
  const v = info.checksum;
  if ((v & RxChecksum.IpValueInvalid) && (v & RxChecksum.IpSucceeded) && length >= 34 && frame[offset + 12] === 0x08 && frame[offset + 13] === 0x00) {
    const ihl = (frame[offset + 14]! & 0xf) * 4;
    if (ihl >= 20 && 14 + ihl <= length) fillIpv4HeaderChecksum(frame, offset + 14, ihl);
  }
  out.checksumValid = (v & (RxChecksum.TcpSucceeded | RxChecksum.UdpSucceeded)) !== 0;
}

export interface DatapathOptions {
  memory: GuestMemory;
  allocator: PageAllocator;
  session: NvspSession;
  /** Bounce buffers per queue for frames larger than a send section. */
  bounceBuffers?: number;
  /** Outstanding sends per queue. */
  slotsPerQueue?: number;
  onFrame: FrameHandler;
  onSegment?: SegmentHandler;
  onControl: ControlHandler;
  /** An NVSP completion that is not a send completion (init replies): the handshake's. */
  onInitCompletion: (payload: Uint8Array) => boolean;
  /** A send completed on `queue`: a sender refused for want of room may try again. */
  onSendRoom?: (queue: number) => void;
  log?: (message: string) => void;
}

class Queue {
  readonly slotKind: Uint8Array;
  readonly slotIndex: Int32Array;
  readonly freeSlots: Int32Array;
  freeSlotCount: number;
  readonly bouncePfns: number[][] = [];
  readonly freeBounce: number[] = [];
  constructor(readonly port: NetvscPort, slots: number) {
    this.slotKind = new Uint8Array(slots);
    this.slotIndex = new Int32Array(slots);
    this.freeSlots = new Int32Array(slots);
    for (let i = 0; i < slots; i++) this.freeSlots[i] = slots - 1 - i;
    this.freeSlotCount = slots;
  }
}

export class NetvscDatapath {
  readonly stats: DatapathStats = { txFrames: 0, txSection: 0, txBounce: 0, txBusy: 0, txDropped: 0, txCompletions: 0, rxPackets: 0, rxFrames: 0, rxBadRanges: 0, rxBadMessages: 0, strayCompletions: 0, rxCoalesced: 0, rxCoalesceDropped: 0 };
  /** The host's SEND_INDIRECTION_TABLE (queue per hash bucket), if it sent one. */
  readonly sendTable = new Uint32Array(VRSS_SEND_TABLE_SIZE);
  private readonly queues: (Queue | null)[] = [];
  private readonly o: DatapathOptions;
  /** Guest RAM's native address as a number: read per frame, converted from the BigInt once. */
  private readonly memoryBase: number;
  private readonly session: NvspSession;
  private readonly freeSections: Int32Array;
  private freeSectionCount: number;
  private readonly nvspOut = new Uint8Array(NVSP_MESSAGE_SIZE);
  private readonly completionOut = new Uint8Array(8);
  private readonly payloadScratch = new Uint8Array(SMALL_PAYLOAD_BYTES);
  private readonly payloadViews: Uint8Array[] = Array.from({ length: SMALL_PAYLOAD_BYTES + 1 }, (_, n) => this.payloadScratch.subarray(0, n));
  private readonly gpaHeader = new Uint8Array(16 + 8 * BOUNCE_PAGES);
  private readonly gpaHeaderView = new DataView(this.gpaHeader.buffer);
  /** gpaHeader cut to the length of a header naming i pages, made once each: sending allocates nothing. */
  private readonly gpaHeaderFor: Uint8Array[] = Array.from({ length: BOUNCE_PAGES + 1 }, (_, i) => this.gpaHeader.subarray(0, 16 + 8 * i));
  /** The PPIs of the frame being sent, written here first because whether the frame takes a section depends on their size. */
  private readonly staging = new Uint8Array(RndisMessageSize.Packet + MAX_PPI_BYTES);
  private readonly nvspDecoder = new NvspDecoder();
  private readonly rndisDecoder = new RndisDecoder();
  private readonly tpHeader = new TransferPageHeader();
  private readonly rxInfo = new PacketInfo();
  private readonly rxOffload = new PacketOffload();
  /** The coalesced segment being gathered (count 0: none) and its first fragment's PPIs. */
  private readonly segment = new CoalescedSegment();
  private readonly coalescedInfo = new PacketInfo();
  /** Where a segment is joined for a receiver that takes only contiguous frames. */
  private joined: Uint8Array | null = null;
  private readonly controlPfn: number;
  private closed = false;

  constructor(options: DatapathOptions) {
    this.o = options;
    this.memoryBase = Number(options.memory.base);
    this.session = options.session;
    const n = this.session.send.sectionCount;
    this.freeSections = new Int32Array(n);
    for (let i = 0; i < n; i++) this.freeSections[i] = n - 1 - i;
    this.freeSectionCount = n;
    this.controlPfn = options.allocator.allocContiguous(1);
  }

  /** Adds queue `index` (0 = primary) sending on `port`; allocates its bounce buffers. */
  addQueue(index: number, port: NetvscPort): void {
    const q = new Queue(port, this.o.slotsPerQueue ?? 256);
    for (let i = 0; i < (this.o.bounceBuffers ?? DEFAULT_BOUNCE_BUFFERS); i++) {
      // Contiguous, so a frame is written into guest RAM with one copy.
      const first = this.o.allocator.allocContiguous(BOUNCE_PAGES);
      q.bouncePfns.push(Array.from({ length: BOUNCE_PAGES }, (_, p) => first + p));
      q.freeBounce.push(i);
    }
    this.queues[index] = q;
  }

  removeQueue(index: number): void {
    const q = this.queues[index];
    if (!q) return;
    this.queues[index] = null;
    for (const pfns of q.bouncePfns) this.o.allocator.free(pfns);
  }

  get queueCount(): number {
    return this.queues.length;
  }

  /** Frees everything (after the channels are closed). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (let i = 0; i < this.queues.length; i++) this.removeQueue(i);
    this.o.allocator.free([this.controlPfn]);
  }

  // ---- send ----

  /**
   * Sends one RNDIS control message (rndis_filter_send_request): GPA-direct from the control
   * page, channel type 1, no send section (netvsc_send sends control messages directly).
   */
  sendControl(message: Uint8Array, length: number): boolean {
    const q = this.queues[0];
    if (!q || length > PAGE_SIZE) return false;
    const slot = this.takeSlot(q, SLOT_CONTROL, 0);
    if (slot < 0) return false;
    this.o.memory.bytes.set(message.subarray(0, length), this.controlPfn * PAGE_SIZE);
    const h = this.describe([this.controlPfn], 0, length);
    encodeRndisPacketMessage(this.nvspOut, 0, RndisChannelType.Control, NVSP_INVALID_SECTION_INDEX, 0);
    const ok = q.port.send(this.nvspOut, slot + 1, PacketType.DataUsingGpaDirect, PACKET_FLAG_COMPLETION_REQUESTED, h);
    if (!ok) this.releaseSlot(q, slot);
    q.port.flush?.();
    return ok;
  }

  /**
   * Sends frame[offset, offset+length) on `queue` with `offload` (checksum/GSO to leave to
   * the host). Returns false on backpressure (no slot, section or bounce buffer: the frame
   * is untouched; send it again after onSendRoom), true when sent or dropped (counted).
   */
  sendFrame(queue: number, frame: Uint8Array, offset: number, length: number, offload: PacketOffload): boolean {
    const q = this.queues[queue] ?? this.queues[0];
    if (!q || this.closed) return true;
    if (length < 14 || length > NETVSC_MAX_SEND_FRAME) return this.drop();
    // Room first: encodeTxPpis rewrites LSO headers in the frame, so a refused frame must
    // be refused before that, to come back unchanged.
    const mayTakeSection = RndisMessageSize.Packet + MAX_PPI_BYTES + length + 8 < this.session.send.sectionSize && this.freeSectionCount > 0;
    if (q.freeSlotCount === 0 || (!mayTakeSection && q.freeBounce.length === 0)) {
      this.stats.txBusy++;
      return false;
    }
    const ppiBytes = encodeTxPpis(frame, offset, length, offload, this.staging, RndisMessageSize.Packet);
    if (ppiBytes < 0) return this.drop();
    if (this.fitsSection(ppiBytes, length)) return this.sendViaSection(q, frame, offset, length, ppiBytes);
    const bounce = q.freeBounce.pop()!;
    this.o.memory.bytes.set(frame.subarray(offset, offset + length), this.bounceFrameGpa(q, bounce));
    return this.sendViaBounce(q, bounce, length, ppiBytes);
  }

  /**
   * Lends a bounce buffer of `queue` to read a frame straight into, as Linux sends an
   * skb's own pages: the frame goes at bounceFrameAddress(), at most bounceFrameCapacity
   * bytes, and sendReserved() sends it (or returnReserved() gives the buffer back).
   * -1: no bounce buffer or send slot is free; onSendRoom tells when one is.
   */
  reserve(queue: number): number {
    const q = this.queues[queue];
    if (!q || this.closed || q.freeSlotCount === 0) {
      this.stats.txBusy++;
      return -1;
    }
    const bounce = q.freeBounce.pop();
    if (bounce === undefined) {
      this.stats.txBusy++;
      return -1;
    }
    return bounce;
  }

  /** The native address where a reserved bounce buffer's frame goes. */
  bounceFrameAddress(queue: number, bounce: number): number {
    return this.memoryBase + this.bounceFrameGpa(this.queues[queue]!, bounce);
  }

  get bounceFrameCapacity(): number {
    return BOUNCE_PAGES * PAGE_SIZE - BOUNCE_FRAME_OFFSET;
  }

  returnReserved(queue: number, bounce: number): void {
    this.queues[queue]?.freeBounce.push(bounce);
  }

  /** Sends the `length`-byte frame read into reserved bounce buffer `bounce`. Always consumes the reservation. */
  sendReserved(queue: number, bounce: number, length: number, offload: PacketOffload): void {
    const q = this.queues[queue];
    if (!q) return;
    if (this.closed || length < 14 || length > Math.min(NETVSC_MAX_SEND_FRAME, this.bounceFrameCapacity)) {
      q.freeBounce.push(bounce);
      this.drop();
      return;
    }
    const mem = this.o.memory.bytes;
    const at = this.bounceFrameGpa(q, bounce);
    const ppiBytes = encodeTxPpis(mem, at, length, offload, this.staging, RndisMessageSize.Packet);
    if (ppiBytes < 0) {
      q.freeBounce.push(bounce);
      this.drop();
      return;
    }
    if (this.fitsSection(ppiBytes, length)) {
      // A small frame is copied into a send section (netvsc_copy_to_send_buf); the bounce buffer goes back.
      q.freeBounce.push(bounce);
      this.sendViaSection(q, mem, at, length, ppiBytes);
      return;
    }
    this.sendViaBounce(q, bounce, length, ppiBytes);
  }

  /** Where a bounce buffer's frame starts in guest RAM: after room for the RNDIS header and the largest PPIs. */
  private bounceFrameGpa(q: Queue, bounce: number): number {
    return q.bouncePfns[bounce]![0]! * PAGE_SIZE + BOUNCE_FRAME_OFFSET;
  }

  /** netvsc_send: a section when the packet plus alignment fits one and one is free. */
  private fitsSection(ppiBytes: number, length: number): boolean {
    return RndisMessageSize.Packet + ppiBytes + length + 8 < this.session.send.sectionSize && this.freeSectionCount > 0;
  }

  /** Copies the RNDIS PACKET (PPIs from staging, then the frame) into a free section and sends it. A slot is free. */
  private sendViaSection(q: Queue, frame: Uint8Array, offset: number, length: number, ppiBytes: number): boolean {
    const session = this.session;
    const section = this.freeSections[--this.freeSectionCount]!;
    const slot = this.takeSlot(q, SLOT_SECTION, section);
    const base = section * session.send.sectionSize;
    const out = session.send.bytes;
    this.copyPpis(out, base + RndisMessageSize.Packet, ppiBytes);
    encodeRndisPacketHeader(out, base, ppiBytes, length);
    out.set(frame.subarray(offset, offset + length), base + RndisMessageSize.Packet + ppiBytes);
    encodeRndisPacketMessage(this.nvspOut, 0, RndisChannelType.Data, section, RndisMessageSize.Packet + ppiBytes + length);
    if (!q.port.send(this.nvspOut, slot + 1, PacketType.DataInband, PACKET_FLAG_COMPLETION_REQUESTED)) {
      // Ring full, which the slot count makes rare; the frame was rewritten: drop it.
      this.releaseSlot(q, slot);
      return this.drop();
    }
    this.stats.txSection++;
    this.stats.txFrames++;
    return true;
  }

  /**
   * Sends the frame already in bounce buffer `bounce` (at its frame offset) GPA-direct,
   * with the RNDIS header and PPIs written right before it. A slot is free.
   */
  private sendViaBounce(q: Queue, bounce: number, length: number, ppiBytes: number): boolean {
    const pfns = q.bouncePfns[bounce]!;
    const mem = this.o.memory.bytes;
    const start = BOUNCE_FRAME_OFFSET - RndisMessageSize.Packet - ppiBytes;
    const base = pfns[0]! * PAGE_SIZE + start;
    const slot = this.takeSlot(q, SLOT_BOUNCE, bounce);
    this.copyPpis(mem, base + RndisMessageSize.Packet, ppiBytes);
    encodeRndisPacketHeader(mem, base, ppiBytes, length);
    const total = RndisMessageSize.Packet + ppiBytes + length;
    const h = this.describe(pfns, start, total);
    encodeRndisPacketMessage(this.nvspOut, 0, RndisChannelType.Data, NVSP_INVALID_SECTION_INDEX, 0);
    if (!q.port.send(this.nvspOut, slot + 1, PacketType.DataUsingGpaDirect, PACKET_FLAG_COMPLETION_REQUESTED, h)) {
      this.releaseSlot(q, slot);
      return this.drop();
    }
    this.stats.txBounce++;
    this.stats.txFrames++;
    return true;
  }

  /** Publishes what was sent in this turn (one signal per queue). */
  flush(): void {
    for (const q of this.queues) q?.port.flush?.();
  }

  private drop(): boolean {
    this.stats.txDropped++;
    return true;
  }

  /** The PPIs encoded in staging, to `to[at...]` (a few dozen bytes: a loop, not a subarray per frame). */
  private copyPpis(to: Uint8Array, at: number, ppiBytes: number): void {
    copyBytes(to, at, this.staging, RndisMessageSize.Packet, RndisMessageSize.Packet + ppiBytes);
  }

  /** One GPA-direct range over `pfns` from byte `offset` of the first (the mpb form: reserved, count, {len, offset, pfn[]}). */
  private describe(pfns: readonly number[], offset: number, length: number): Uint8Array {
    const pages = Math.ceil((offset + length) / PAGE_SIZE);
    const h = this.gpaHeaderFor[pages]!;
    const v = this.gpaHeaderView;
    v.setUint32(0, 0, true);
    v.setUint32(4, 1, true);
    v.setUint32(8, length, true);
    v.setUint32(12, offset, true);
    for (let i = 0; i < pages; i++) {
      v.setUint32(16 + 8 * i, pfns[i]! >>> 0, true);
      v.setUint32(20 + 8 * i, Math.floor(pfns[i]! / 0x1_0000_0000), true);
    }
    return h;
  }

  private takeSlot(q: Queue, kind: number, index: number): number {
    if (q.freeSlotCount === 0) return -1;
    const slot = q.freeSlots[--q.freeSlotCount]!;
    q.slotKind[slot] = kind;
    q.slotIndex[slot] = index;
    return slot;
  }

  private releaseSlot(q: Queue, slot: number): void {
    const kind = q.slotKind[slot];
    if (kind === SLOT_SECTION) this.freeSections[this.freeSectionCount++] = q.slotIndex[slot]!;
    else if (kind === SLOT_BOUNCE) q.freeBounce.push(q.slotIndex[slot]!);
    q.slotKind[slot] = SLOT_FREE;
    q.freeSlots[q.freeSlotCount++] = slot;
  }

  // ---- receive ----

  /**
   * One packet from queue `queue`'s ring, valid during the call: its type-specific header
   * (transfer-page ranges) lies in `ring`, its payload at bytes[offset, offset + length).
   */
  onPacket(queue: number, packet: PacketView, ring: Uint8Array, bytes: Uint8Array, offset: number, length: number): void {
    const q = this.queues[queue];
    if (!q) return;
    const type = packet.type;
    const txLow = packet.transactionIdLow;
    const txHigh = packet.transactionIdHigh;
    const payload = this.smallPayload(bytes, offset, length);
    if (type === PacketType.Completion) {
      const m = this.nvspDecoder.decode(payload, 'to-guest');
      if (!isNvspError(m) && m.kind === 'rndis-packet-complete') {
        const slot = txLow - 1;
        if (txHigh !== 0 || slot < 0 || slot >= q.slotKind.length || q.slotKind[slot] === SLOT_FREE) {
          this.stats.strayCompletions++;
          return;
        }
        if (m.status !== NvspStatus.Success) this.o.log?.(`netvsc: send completed with status ${m.status}`);
        this.stats.txCompletions++;
        this.releaseSlot(q, slot);
        this.o.onSendRoom?.(queue);
        return;
      }
      // Control-plane replies keep a copy of their own (the handshake holds what it decoded).
      if (queue !== 0 || !this.o.onInitCompletion(bytes.slice(offset, offset + length))) this.stats.strayCompletions++;
      return;
    }
    if (type === PacketType.DataUsingTransferPages) return this.onReceive(q, queue, txLow, txHigh, ring, packet.headerOffset, packet.headerLength, payload);
    if (type === PacketType.DataInband) {
      const m = this.nvspDecoder.decode(payload, 'to-guest');
      if (!isNvspError(m) && m.kind === 'indirection-table' && m.count === VRSS_SEND_TABLE_SIZE) this.sendTable.set(m.table.subarray(0, VRSS_SEND_TABLE_SIZE));
      // VF association and anything else: ignored (no VF in the reference guest).
    }
  }

  /**
   * The payload as an array of its own for the NVSP decoder: NVSP messages on the data
   * path are a few dozen bytes, copied into a scratch buffer and seen through a view made
   * once per length, so no view is created per packet. Anything longer gets a view.
   */
  private smallPayload(bytes: Uint8Array, offset: number, length: number): Uint8Array {
    if (length > SMALL_PAYLOAD_BYTES) return bytes.subarray(offset, offset + length);
    copyBytes(this.payloadScratch, 0, bytes, offset, offset + length);
    return this.payloadViews[length]!;
  }

  private onReceive(q: Queue, queue: number, txLow: number, txHigh: number, ring: Uint8Array, headerOffset: number, headerLength: number, payload: Uint8Array): void {
    this.stats.rxPackets++;
    let status: number = NvspStatus.Success;
    const tp = this.tpHeader;
    const nvsp = this.nvspDecoder.decode(payload, 'to-guest');
    const rx = this.session.receive;
    // What netvsc_receive checks: a range lies in the buffer, and is no longer than the
    // sub-allocation size the host announced (Linux copies each range into a buffer of
    // that size and drops a longer one: "Packet too big").
    const limit = rx.bytes.length;
    if (decodeTransferPageHeader(ring, headerOffset, headerLength, tp) !== DecodeError.None || tp.pageSetId !== NETVSC_RECEIVE_BUFFER_ID || isNvspError(nvsp) || nvsp.kind !== 'rndis-packet') {
      this.stats.rxBadRanges++;
      status = NvspStatus.Fail;
    } else {
      const bytes = rx.bytes;
      for (let i = 0; i < tp.count; i++) {
        const r = tp.ranges[i]!;
        if (r.byteCount > limit || r.byteOffset > limit - r.byteCount || r.byteCount > rx.subAllocSize) {
          this.stats.rxBadRanges++;
          this.dropCoalesced();
          status = NvspStatus.Fail;
          continue;
        }
        if (!this.onMessage(queue, bytes, r.byteOffset, r.byteCount, i === tp.count - 1)) {
          this.dropCoalesced();
          status = NvspStatus.Fail;
        }
      }
    }
    // The completion hands the sections back to the host: {108, status}, the transaction id echoed.
    encodeRndisPacketCompleteMessage(this.completionOut, 0, status, 8);
    const txid = txHigh < 0x200000 ? txHigh * 0x1_0000_0000 + txLow : (BigInt(txHigh) << 32n) | BigInt(txLow);
    q.port.send(this.completionOut, txid as number, PacketType.Completion, 0);
  }

  /** One RNDIS message of a receive packet; `lastInPacket`: no range follows it. False: dropped (the packet completes with a failure). */
  private onMessage(queue: number, bytes: Uint8Array, offset: number, length: number, lastInPacket: boolean): boolean {
    const m = this.rndisDecoder.decode(bytes, offset, length, 'to-guest');
    if (m instanceof RndisError) {
      this.stats.rxBadMessages++;
      return false;
    }
    if (m.kind !== 'packet') {
      this.o.onControl(bytes, offset, m.length);
      return true;
    }
    const info = this.rxInfo;
    if (m.ppiLength > 0 && decodePacketInfo(bytes, m.ppiOffset, m.ppiLength, info) !== null) {
      this.stats.rxBadMessages++;
      return false;
    }
    if (m.ppiLength === 0) info.clear();
    if (info.hasPacketId && (info.packetIdFlags & PacketInfoIdFlag.SubAllocation)) return this.onFragment(queue, bytes, m.dataOffset, m.dataLength, info, lastInPacket);
    applyRxChecksum(info, bytes, m.dataOffset, m.dataLength, this.rxOffload);
    this.stats.rxFrames++;
    const g = this.segment;
    g.count = 0;
    if (m.dataLength > HAND_OVER_IN_PLACE_BYTES && this.o.onSegment) {
      // A long frame (a jumbo frame) is handed over where it lies, as a one-piece
      // segment, rather than copied: Linux builds the same skb either way.
      g.count = 1;
      g.offsets[0] = m.dataOffset;
      g.lengths[0] = m.dataLength;
      g.length = m.dataLength;
      g.address = this.receiveAddress(bytes);
      const taken = this.o.onSegment(queue, bytes, g, this.rxOffload);
      g.count = 0;
      if (taken) return true;
    }
    this.o.onFrame(queue, bytes, m.dataOffset, m.dataLength, this.rxOffload);
    return true;
  }

  /**
   * One fragment of a coalesced segment (rndis_filter_receive_data): a first fragment
   * starts a segment, a later one needs one started, and a segment must end (last flag)
   * within its packet. The first fragment's PPIs hold for the whole segment.
   */
  private onFragment(queue: number, bytes: Uint8Array, offset: number, length: number, info: PacketInfo, lastInPacket: boolean): boolean {
    const flags = info.packetIdFlags;
    const g = this.segment;
    if (flags & PacketInfoIdFlag.FirstFragment) {
      g.count = 0;
      g.length = 0;
      this.coalescedInfo.copyFrom(info);
    } else if (g.count === 0) {
      this.stats.rxCoalesceDropped++;
      return false;
    }
    const more = (flags & PacketInfoIdFlag.LastFragment) === 0;
    if ((more && lastInPacket) || g.count >= NVSP_RSC_MAX || length > MAX_COALESCED_FRAME - g.length) {
      this.stats.rxCoalesceDropped++;
      g.count = 0;
      return false;
    }
    g.offsets[g.count] = offset;
    g.lengths[g.count] = length;
    g.count++;
    g.length += length;
    if (more) return true;
    this.stats.rxFrames++;
    this.stats.rxCoalesced++;
    // The headers are in the first fragment: its checksum verdict (and IPv4 header fix) applies to the segment.
    applyRxChecksum(this.coalescedInfo, bytes, g.offsets[0]!, g.lengths[0]!, this.rxOffload);
    g.address = this.receiveAddress(bytes);
    const taken = this.o.onSegment?.(queue, bytes, g, this.rxOffload) ?? false;
    if (!taken) {
      const joined = (this.joined ??= new Uint8Array(MAX_COALESCED_FRAME));
      for (let i = 0, at = 0; i < g.count; at += g.lengths[i]!, i++) joined.set(bytes.subarray(g.offsets[i]!, g.offsets[i]! + g.lengths[i]!), at);
      this.o.onFrame(queue, joined, 0, g.length, this.rxOffload);
    }
    g.count = 0;
    return true;
  }

  /** The native address of `bytes` (the receive buffer, guest RAM), NaN if it is not a view of guest RAM. */
  private receiveAddress(bytes: Uint8Array): number {
    const ram = this.o.memory.bytes;
    return bytes.buffer === ram.buffer ? this.memoryBase + ram.byteOffset + bytes.byteOffset : Number.NaN;
  }

  private dropCoalesced(): void {
    if (this.segment.count > 0) this.stats.rxCoalesceDropped++;
    this.segment.count = 0;
  }
}


