// The synthetic NIC behind every NetVSP channel: what the primary channel negotiates
// (NVSP version, NDIS config, the receive and send buffers, sub-channel grants), the RNDIS
// state (RndisControl), the host link state, and the backend that carries the frames.
// Channels serve rings; this object decides where a received frame goes (RSS: Toeplitz
// hash over the frame, then the guest's indirection table) and when the backend must
// stop reading because the guest has no receive buffer or ring space left.
//
// One NIC session lasts from the primary channel's open to its close: a close (guest
// unload, MTU change, channel-count change) drops the buffers and all RNDIS state, and
// the guest repeats the whole bring-up on the next open (spec 2.2, teardown).
import type { NetBackend, PacketOffload } from '../../backends/net/net-backend.js';
import { PacketKind, ParsedPacket, parsePacket } from '../../backends/net/packet-parse.js';
import { fillIpv4HeaderChecksum, fillPartialChecksum } from '../../backends/net/inet-checksum.js';
import { IovecList } from '../../sys/iovec.js';
import { SegmentError, TcpSegmenter } from '../../backends/net/tcp-segmenter.js';
import type { GuestMemory, PageMapping } from '../../memory/guest-memory.js';
import { PAGE_SIZE } from '../../memory/page.js';
import type { OpenChannel } from '../../vmbus/server/vmbus-device.js';
import { NdisConfigCapability, NETVSC_SEND_SECTION_SIZE, NvspStatus, NvspVersion } from './nvsp-protocol.js';
import { RxChecksum, rxChecksumGood } from './per-packet-info.js';
import { copyBytes } from './le-bytes.js';
import { coalescedFragmentCount, FIRST_FRAGMENT_DATA_OFFSET, fragmentDataOffset, MAX_COALESCED_FRAGMENTS, MAX_COALESCED_FRAME, ReceiveBuffer, receiveSubAllocationSize } from './receive-buffer.js';
import { RndisControl, type RndisDeviceInfo } from './rndis-control.js';
import { NO_HASH } from './toeplitz.js';

/** Largest receive or send buffer accepted (Linux's maximum is 31 MiB receive, 15 MiB send... by default 16 MiB / 1 MiB). */
export const MAX_GUEST_BUFFER_BYTES = 128 * 1024 * 1024;
/** The section size this host announces for the send buffer (Hyper-V's and OpenVMM's). */
export const SEND_SECTION_SIZE = NETVSC_SEND_SECTION_SIZE;
/** Bytes of a segment's first fragment copied to parse its headers (Ethernet, VLAN, IP with options, TCP with options fit easily). */
const SEGMENT_HEADER_COPY_BYTES = 512;

/** What the NIC needs from a channel to put received traffic on it. */
export interface ReceiveQueue {
  readonly subChannelIndex: number;
  /** The channel is open and its rings are usable. */
  readonly isOpen: boolean;
  /** Whether a received frame (one transfer-page packet) fits in the host->guest ring now; false also asks the guest to signal once it does. */
  hasReceiveRoom(): boolean;
  /**
   * Writes one frame into a free sub-allocation and sends it. `checksumFlags` is the
   * receive checksum PPI value; hash is the RSS hash or NO_HASH. False: dropped (no room).
   */
  deliverFrame(frame: Uint8Array, length: number, offload: PacketOffload | null, parsed: ParsedPacket, hash: number): boolean;
  /** Sends a large TCP segment whole as RSC fragments; `checksum` is the receive checksum PPI value. False: no room. */
  deliverCoalesced(frame: Uint8Array, length: number, checksum: number, hash: number): boolean;
  /** Sends a segment read in place into sub-allocations indices[0, count), chained, as RSC fragments in one packet. False: no room, and they are freed. */
  sendCoalesced(indices: Int32Array, count: number, length: number, checksum: number, hash: number): boolean;
  /** Sends a frame read in place into sub-allocation `index` as one range of the packet being filled. False: the channel cannot send, and it is freed. */
  deliverInPlace(index: number, length: number, checksum: number, hash: number): boolean;
  /** Sends what deliverInPlace gathered (the end of a backend's read batch). */
  flushReceives(): void;
  /** Forgets what deliverInPlace gathered, giving it back to the receive buffer (which is going away). */
  dropPendingReceives(): void;
  /** Queues an RNDIS control message (a response or indication) for the guest. */
  queueControl(message: Uint8Array, length: number): void;
}

export interface NicCounters {
  /** Frames from the backend dropped because the guest cannot receive (no buffer, filter 0, link down). */
  rxNotReady: number;
  /** Frames dropped for want of a sub-allocation or ring space. */
  rxNoBuffer: number;
  /** GSO frames from the backend that could not be segmented or coalesced. */
  rxBadGso: number;
  /** Frames read in place that had to be joined and copied after all (a GSO frame that is not a TCP segment). */
  rxJoined: number;
  rxPauses: number;
}

export interface NetvspNicOptions {
  backend: NetBackend;
  mac: Uint8Array;
  mtu: number;
  maxQueues: number;
  offload: boolean;
  offerSubchannel: (index: number) => void;
  log: (message: string) => void;
}

export class NetvspNic implements RndisDeviceInfo {
  readonly mac: Uint8Array;
  readonly mtu: number;
  readonly maxQueues: number;
  readonly offload: boolean;
  readonly backend: NetBackend;
  readonly rndis: RndisControl;
  readonly counters: NicCounters = { rxNotReady: 0, rxNoBuffer: 0, rxBadGso: 0, rxJoined: 0, rxPauses: 0 };

  linkUp = true;
  nvspVersion = 0;
  ndisMajor = 0;
  ndisMinor = 0;
  /** The MTU the guest announced in SEND_NDIS_CONFIG (IP packet bytes), or the device MTU. */
  guestMtu: number;
  ndisCapabilities = 0n;
  subchannelsGranted = 0;
  private subchannelsOffered = 0;

  receiveBuffer: ReceiveBuffer | null = null;
  receiveBufferId = 0;
  private receiveMapping: PageMapping | null = null;
  sendBuffer: Uint8Array | null = null;
  sendSectionCount = 0;
  private sendMapping: PageMapping | null = null;

  /** Receive queues by sub-channel index (0 = primary). */
  readonly queues: (ReceiveQueue | undefined)[] = [];
  private paused = false;
  private readonly parsed = new ParsedPacket();
  /**
   * The receive room for the next read in place: sub-allocations reserved in fragment
   * order, and where their data goes (the fixed fragment data offsets: a segment lies
   * there as the RSC fragments it is sent as). It stands between reads: a read that
   * brings nothing (the EAGAIN that ends every batch) costs nothing, and a frame takes
   * the sub-allocations it filled from the front and leaves the rest for the next.
   */
  private readonly roomIov = new IovecList(MAX_COALESCED_FRAGMENTS);
  private readonly roomIndices = new Int32Array(MAX_COALESCED_FRAGMENTS);
  private roomCount = 0;
  /** roomIov describes roomIndices[0, roomCount) as they are now. */
  private roomBuilt = false;
  /** The sub-allocations of the frame just read, handed on from the room. */
  private readonly frameIndices = new Int32Array(MAX_COALESCED_FRAGMENTS);
  private joined: Uint8Array | null = null;
  private headerCopy: Uint8Array | null = null;
  private segmenter: TcpSegmenter | null = null;
  private segmentBuffer: Uint8Array | null = null;

  constructor(private readonly options: NetvspNicOptions) {
    this.mac = options.mac;
    this.mtu = options.mtu;
    this.guestMtu = options.mtu;
    this.maxQueues = options.maxQueues;
    this.offload = options.offload;
    this.backend = options.backend;
    this.rndis = new RndisControl(this);
    options.backend.onReceive(
      (frame, length, offload) => this.onFrame(frame, length, offload),
      // The end of a read batch: frames read in place go to the guest, one packet per queue.
      () => {
        for (const q of this.queues) q?.flushReceives();
      },
    );
    options.backend.setReceiveTarget?.({
      next: () => this.nextReceiveRoom(),
      received: (length, offload) => this.receivedInPlace(length, offload),
      // The room stays reserved for the next read.
      unused: () => {},
    });
  }

  get queueCount(): number {
    return 1 + this.subchannelsGranted;
  }

  get log(): (message: string) => void {
    return this.options.log;
  }

  /** The whole negotiated state goes: the primary channel closed. */
  resetSession(): void {
    this.nvspVersion = 0;
    this.ndisMajor = this.ndisMinor = 0;
    this.guestMtu = this.mtu;
    this.ndisCapabilities = 0n;
    this.subchannelsGranted = 0;
    this.subchannelsOffered = 0;
    this.revokeReceiveBuffer();
    this.revokeSendBuffer();
    this.rndis.reset();
    this.resumeIfPaused();
  }

  // ---- buffers ----

  /** Maps a GPADL the guest made on `open` as one contiguous buffer; a string says why not. */
  private mapGpadl(open: OpenChannel, handle: number): { mapping: PageMapping; bytes: Uint8Array } | string {
    const ranges = open.gpadl(handle);
    if (ranges === null) return `no GPADL ${handle}`;
    const pfns: number[] = [];
    let bytes = 0;
    for (const r of ranges) {
      // A buffer GPADL is whole pages; anything else cannot be mapped as one view.
      if (r.byteOffset !== 0 || r.byteCount !== r.pfns.length * PAGE_SIZE) return `GPADL ${handle} has a partial-page range`;
      for (const pfn of r.pfns) pfns.push(pfn);
      bytes += r.byteCount;
      if (bytes > MAX_GUEST_BUFFER_BYTES) return `GPADL ${handle} is larger than ${MAX_GUEST_BUFFER_BYTES} bytes`;
    }
    if (pfns.length === 0) return `GPADL ${handle} is empty`;
    let mapping: PageMapping;
    try {
      mapping = (open.memory as GuestMemory).mapPages(pfns);
    } catch (e) {
      return `GPADL ${handle} cannot be mapped: ${(e as Error).message}`;
    }
    return { mapping, bytes: new Uint8Array(mapping.buffer, 0, bytes) };
  }

  /** SEND_RECV_BUF: returns the NVSP status; on success receiveBuffer describes the layout. */
  attachReceiveBuffer(open: OpenChannel, handle: number, id: number): number {
    if (this.receiveBuffer !== null || this.nvspVersion === 0) return NvspStatus.Fail;
    const mapped = this.mapGpadl(open, handle);
    if (typeof mapped === 'string') {
      this.log(`netvsp: receive buffer refused: ${mapped}`);
      return NvspStatus.Fail;
    }
    try {
      // The guest's NDIS config (with its RSC capability) came before the buffer, as in Linux.
      this.receiveBuffer = new ReceiveBuffer(mapped.bytes, receiveSubAllocationSize(this.mtu, mapped.bytes.length, this.guestTakesRsc));
    } catch (e) {
      mapped.mapping.release();
      this.log(`netvsp: receive buffer refused: ${(e as Error).message}`);
      return NvspStatus.Fail;
    }
    this.receiveMapping = mapped.mapping;
    this.receiveBufferId = id;
    return NvspStatus.Success;
  }

  revokeReceiveBuffer(): void {
    // Frames gathered for the guest and the room's sub-allocations go with the buffer.
    for (const q of this.queues) q?.dropPendingReceives();
    this.roomCount = 0;
    this.roomBuilt = false;
    this.receiveBuffer = null;
    // After release the view reads private zeroes: a stale write can never reach guest RAM.
    this.receiveMapping?.release();
    this.receiveMapping = null;
  }

  /** SEND_SEND_BUF: returns the NVSP status. */
  attachSendBuffer(open: OpenChannel, handle: number): number {
    if (this.sendBuffer !== null || this.nvspVersion === 0) return NvspStatus.Fail;
    const mapped = this.mapGpadl(open, handle);
    if (typeof mapped === 'string') {
      this.log(`netvsp: send buffer refused: ${mapped}`);
      return NvspStatus.Fail;
    }
    const count = Math.floor(mapped.bytes.length / SEND_SECTION_SIZE);
    if (count < 1) {
      mapped.mapping.release();
      return NvspStatus.Fail;
    }
    this.sendMapping = mapped.mapping;
    this.sendBuffer = mapped.bytes;
    this.sendSectionCount = count;
    return NvspStatus.Success;
  }

  revokeSendBuffer(): void {
    this.sendBuffer = null;
    this.sendSectionCount = 0;
    this.sendMapping?.release();
    this.sendMapping = null;
  }

  // ---- sub-channels ----

  /** SUBCHANNEL ALLOCATE: grants up to maxQueues - 1 and offers those not offered yet. Returns the grant. */
  grantSubchannels(requested: number): number {
    const granted = Math.max(0, Math.min(requested, this.maxQueues - 1));
    this.subchannelsGranted = granted;
    return granted;
  }

  /** Offers the granted sub-channels (after the completion went out: the guest waits for it first). */
  offerGranted(): void {
    while (this.subchannelsOffered < this.subchannelsGranted) {
      const index = ++this.subchannelsOffered;
      try {
        this.options.offerSubchannel(index);
      } catch (e) {
        this.log(`netvsp: offering sub-channel ${index} failed: ${(e as Error).message}`);
        return;
      }
    }
  }

  // ---- link ----

  setLinkUp(up: boolean, notify: (message: Uint8Array, length: number) => void): void {
    if (this.linkUp === up) return;
    // The guest's view only: the backend's own carrier is the caller's (VmNetwork sets both).
    this.linkUp = up;
    if (!this.rndis.initialized) return; // the guest reads the state with its MEDIA_CONNECT_STATUS query
    const message = new Uint8Array(64);
    notify(message, this.rndis.encodeLinkIndication(up, message));
  }

  // ---- receive ----

  /** Whether the guest can be given frames at all. */
  get receiveOpen(): boolean {
    return this.receiveBuffer !== null && this.linkUp && this.rndis.receiving && this.queues[0]?.isOpen === true;
  }

  private onFrame(frame: Uint8Array, length: number, offload: PacketOffload): void {
    if (!this.receiveOpen) {
      this.counters.rxNotReady++;
      return;
    }
    try {
      if (offload.gso !== 'none') {
        if (this.coalesces(offload)) this.deliverCoalesced(frame, length, offload);
        else this.deliverSegmented(frame, length, offload);
      } else if (!this.deliverOne(frame, length, offload)) this.counters.rxNoBuffer++;
    } catch (e) {
      this.log(`netvsp: receive failed: ${(e as Error).stack ?? e}`);
    }
    if (!this.canAcceptMore()) this.pause();
  }

  private deliverOne(frame: Uint8Array, length: number, offload: PacketOffload | null): boolean {
    const parsed = this.parsed;
    parsePacket(frame, 0, length, parsed);
    const target = this.pickQueue(frame, 0, parsed);
    return target.deliverFrame(frame, length, offload, parsed, this.hash);
  }

  /** The RSS hash of the frame pickQueue saw last (NO_HASH without RSS). */
  private hash = NO_HASH;

  /** The receive queue for a parsed frame: RSS when the guest set it up, else the primary. */
  private pickQueue(frame: Uint8Array, offset: number, parsed: ParsedPacket): ReceiveQueue {
    const r = this.rndis;
    let queue = 0;
    this.hash = NO_HASH;
    if (r.rssEnabled) {
      this.hash = r.toeplitz.hashPacket(frame, offset, parsed, r.rssHashInfo);
      if (this.hash !== NO_HASH) queue = r.rssTable.queueFor(this.hash);
    }
    const target = this.queues[queue];
    return target === undefined || !target.isOpen ? this.queues[0]! : target;
  }

  /**
   * Whether the guest takes large TCP segments whole (RSC): it said it can (NDIS config,
   * NVSP 6.1+), turned RSC on for the segment's IP version, and the NIC offloads at all.
   */
  private coalesces(offload: PacketOffload): boolean {
    if (!this.guestTakesRsc) return false;
    return offload.gso === 'tcpv4' ? this.rndis.rscIpv4 : offload.gso === 'tcpv6' && this.rndis.rscIpv6;
  }

  /** RSC is on for at least one IP version: a received frame may take many sub-allocations. */
  get coalescing(): boolean {
    return (this.rndis.rscIpv4 || this.rndis.rscIpv6) && this.guestTakesRsc;
  }

  /** The guest announced RSC in its NDIS config, which NVSP 6.1 introduced. */
  private get guestTakesRsc(): boolean {
    return this.nvspVersion >= NvspVersion.V61 && (this.ndisCapabilities & BigInt(NdisConfigCapability.Rsc)) !== 0n;
  }

  /**
   * A GSO frame from the host for a guest with RSC: one coalesced segment instead of
   * MTU-sized ones. Its IP header is made to describe the whole segment (lengths, IPv4
   * header checksum, which Linux verifies); the TCP checksum field keeps the
   * pseudo-header sum the backend left, and the guest is told the TCP checksum is good,
   * as it is for data that never crossed a wire.
   */
  private deliverCoalesced(frame: Uint8Array, length: number, offload: PacketOffload): void {
    const p = this.parsed;
    if (parsePacket(frame, 0, length, p) !== PacketKind.Tcp || !this.describeWholeSegment(frame, 0, length, offload, p)) {
      this.counters.rxBadGso++;
      return;
    }
    const checksum = (p.ipVersion === 4 ? RxChecksum.IpSucceeded : 0) | RxChecksum.TcpSucceeded;
    const target = this.pickQueue(frame, 0, p);
    if (!target.deliverCoalesced(frame, length, checksum, this.hash)) this.counters.rxNoBuffer++;
  }

  /**
   * Makes the IP header of a parsed TCP segment at frame[offset] describe the whole
   * segment: lengths, and the IPv4 header checksum (which Linux verifies). False: not a
   * segment that can be sent whole (fragment, wrong IP version for its GSO type, longer
   * than 16-bit IP lengths allow).
   */
  private describeWholeSegment(frame: Uint8Array, offset: number, length: number, offload: PacketOffload, p: ParsedPacket): boolean {
    const v4 = offload.gso === 'tcpv4';
    if (p.isFragment || p.ipVersion !== (v4 ? 4 : 6) || length > MAX_COALESCED_FRAME) return false;
    const ipLength = length - p.l3Offset;
    // The IP length fields are 16 bits: a larger segment cannot be described (a TAP never makes one).
    if (ipLength - (v4 ? 0 : 40) > 0xffff) return false;
    const l3 = offset + p.l3Offset;
    if (v4) {
      frame[l3 + 2] = ipLength >> 8;
      frame[l3 + 3] = ipLength & 0xff;
      fillIpv4HeaderChecksum(frame, l3, p.l3HeaderLength);
    } else {
      const payload = ipLength - 40;
      frame[l3 + 4] = payload >> 8;
      frame[l3 + 5] = payload & 0xff;
    }
    return true;
  }

  /**
   * A GSO frame from the host (a TAP with TSO receive offload): the guest has no RSC
   * here, so it gets MTU-sized segments with their checksums finished.
   */
  private deliverSegmented(frame: Uint8Array, length: number, offload: PacketOffload): void {
    if (offload.gso !== 'tcpv4' && offload.gso !== 'tcpv6') {
      this.counters.rxBadGso++;
      return;
    }
    if (this.segmenter === null) {
      this.segmenter = new TcpSegmenter();
      this.segmentBuffer = new Uint8Array(512 * 1024);
    }
    const s = this.segmenter;
    const out = this.segmentBuffer!;
    if (s.segment(frame, 0, length, offload.gsoSize, out, 0, this.guestMtu) !== SegmentError.None) {
      this.counters.rxBadGso++;
      return;
    }
    for (let i = 0; i < s.count; i++) {
      const at = s.frameOffsets[i]!;
      const n = s.frameLengths[i]!;
      // The segmenter computed every checksum: report them good (null offload = verified).
      if (!this.deliverOne(out.subarray(at, at + n), n, null)) this.counters.rxNoBuffer++;
    }
  }

  // ---- reading in place ----

  /**
   * Whether the backend reads frames straight into the receive buffer: when the guest
   * coalesces both IP versions, since a TAP may hand over a 64 KiB segment at any time
   * and only a segment sent whole needs no copy.
   */
  private get readsInPlace(): boolean {
    return this.receiveOpen && this.rndis.rscIpv4 && this.rndis.rscIpv6 && this.guestTakesRsc && this.receiveMapping !== null;
  }

  /** Sub-allocations the guest does not hold: free, or reserved for the next read in place. */
  get receiveBufferFree(): number {
    return this.receiveBuffer === null ? 0 : this.receiveBuffer.freeCount + this.roomCount;
  }

  /**
   * Room for the next frame, whatever its size: enough sub-allocations for a 64 KiB
   * segment at the fragment data offsets. The same list while nothing was read into it;
   * topped up (the unfilled ones moved to the front) after a frame took some.
   */
  private nextReceiveRoom(): IovecList | null {
    const rb = this.receiveBuffer;
    if (rb === null) return null;
    if (!this.readsInPlace) {
      this.releaseReceiveRoom();
      return null;
    }
    const need = coalescedFragmentCount(MAX_COALESCED_FRAME, rb.subAllocSize);
    if (need > MAX_COALESCED_FRAGMENTS) return null;
    if (this.roomBuilt && this.roomCount === need) return this.roomIov;
    if (rb.freeCount < need - this.roomCount) return null;
    while (this.roomCount < need) this.roomIndices[this.roomCount++] = rb.reserve();
    const base = Number(this.receiveMapping!.address);
    const iov = this.roomIov;
    iov.clear();
    for (let i = 0; i < need; i++) {
      const dataAt = fragmentDataOffset(i);
      iov.push(base + rb.offsetOf(this.roomIndices[i]!) + dataAt, rb.subAllocSize - dataAt);
    }
    this.roomBuilt = true;
    return iov;
  }

  /** Gives the room's reserved sub-allocations back (the guest stopped coalescing). */
  private releaseReceiveRoom(): void {
    const rb = this.receiveBuffer;
    for (let i = 0; i < this.roomCount; i++) rb?.release(this.roomIndices[i]!);
    this.roomCount = 0;
    this.roomBuilt = false;
  }

  /** The room's first `count` sub-allocations hold a frame: they move to frameIndices, the rest to the front of the room. */
  private takeFromRoom(count: number): void {
    const room = this.roomIndices;
    for (let i = 0; i < count; i++) this.frameIndices[i] = room[i]!;
    room.copyWithin(0, count, this.roomCount);
    this.roomCount -= count;
    this.roomBuilt = false;
  }

  /**
   * A frame the backend read into the room. A frame that fits one sub-allocation goes
   * from there as one range; a TCP segment for a coalescing guest as RSC fragments, one
   * per sub-allocation (Linux refuses a range longer than the sub-allocation size it was
   * told: "Packet too big"). Anything else (a GSO frame that is not a TCP segment) is
   * joined and takes the copying way.
   */
  private receivedInPlace(length: number, offload: PacketOffload): void {
    const rb = this.receiveBuffer!;
    const count = Math.min(coalescedFragmentCount(length, rb.subAllocSize), this.roomCount);
    this.takeFromRoom(count);
    const indices = this.frameIndices;
    const head = indices[0]!;
    // From here the frame's first sub-allocation heads a packet: sent (sendCoalesced chains
    // the rest to it), or given back below.
    rb.claim(head);
    let handedOver = false;
    const buf = rb.bytes;
    const at = rb.offsetOf(head) + FIRST_FRAGMENT_DATA_OFFSET;
    try {
      const p = this.parsed;
      const firstLength = Math.min(length, rb.subAllocSize - FIRST_FRAGMENT_DATA_OFFSET);
      // The headers are in the first fragment; a segment's length runs past it (and may
      // run past the buffer's end), so its headers are parsed from a copy of the
      // fragment's head. Every offset the parser reads is below the payload offset it
      // finds, so a parse that ends inside the copy read only copied bytes; anything else
      // (a long IPv6 extension chain, a malformed frame) is parsed again from a copy of
      // the whole fragment.
      let kind: PacketKind;
      if (count === 1) kind = parsePacket(buf, at, length, p);
      else {
        const headers = (this.headerCopy ??= new Uint8Array(MAX_COALESCED_FRAME));
        const copied = Math.min(firstLength, SEGMENT_HEADER_COPY_BYTES);
        copyBytes(headers, 0, buf, at, at + copied);
        kind = parsePacket(headers, 0, length, p);
        if (copied < firstLength && (kind === PacketKind.Malformed || p.payloadOffset > copied)) {
          headers.set(buf.subarray(at + copied, at + firstLength), copied);
          kind = parsePacket(headers, 0, length, p);
        }
      }
      if (offload.gso === 'none' && count === 1) {
        let good = offload.checksumValid;
        if (offload.needsChecksum) good = fillPartialChecksum(buf, at, length, offload.checksumStart, offload.checksumOffset);
        const checksum = good ? rxChecksumGood(p) : 0;
        const target = this.pickQueue(buf, at, p);
        handedOver = true;
        if (!target.deliverInPlace(head, length, checksum, this.hash)) this.counters.rxNoBuffer++;
      } else if (offload.gso !== 'none' && this.coalesces(offload) && kind === PacketKind.Tcp && this.describeWholeSegment(buf, at, length, offload, p)) {
        const target = this.pickQueue(buf, at, p);
        handedOver = true;
        if (!target.sendCoalesced(indices, count, length, (p.ipVersion === 4 ? RxChecksum.IpSucceeded : 0) | RxChecksum.TcpSucceeded, this.hash)) this.counters.rxNoBuffer++;
      } else {
        const joined = (this.joined ??= new Uint8Array(MAX_COALESCED_FRAME));
        for (let i = 0, done = 0; i < count; i++) {
          const dataAt = fragmentDataOffset(i);
          const n = Math.min(rb.subAllocSize - dataAt, length - done);
          const from = rb.offsetOf(indices[i]!) + dataAt;
          joined.set(buf.subarray(from, from + n), done);
          done += n;
        }
        handedOver = true;
        this.giveBack(indices, count);
        this.counters.rxJoined++;
        this.onFrame(joined, length, offload);
        return;
      }
    } catch (e) {
      this.log(`netvsp: receive failed: ${(e as Error).stack ?? e}`);
      // A frame that never reached a queue gives its sub-allocations back.
      if (!handedOver) this.giveBack(indices, count);
    }
    if (!this.canAcceptMore()) this.pause();
  }

  /** Returns a frame's sub-allocations that no packet took: the claimed head, the rest still reserved. */
  private giveBack(indices: Int32Array, count: number): void {
    const rb = this.receiveBuffer!;
    rb.free(indices[0]!);
    for (let i = 1; i < count; i++) rb.release(indices[i]!);
  }

  /** Sub-allocations are free for the largest frame the backend may hand over, and every open channel has ring room for it. */
  canAcceptMore(): boolean {
    const rb = this.receiveBuffer;
    if (rb === null || !this.receiveOpen) return true; // frames are dropped, not held: keep reading
    // The standing room counts as free: it is what the next read goes into.
    if (rb.freeCount + this.roomCount < (this.coalescing ? coalescedFragmentCount(MAX_COALESCED_FRAME, rb.subAllocSize) : 1)) return false;
    for (const q of this.queues) if (q !== undefined && q.isOpen && !q.hasReceiveRoom()) return false;
    return true;
  }

  private pause(): void {
    if (this.paused) return;
    this.paused = true;
    this.counters.rxPauses++;
    this.backend.pauseReceive();
  }

  /** Called when the guest returned sub-allocations or ring space. */
  resumeIfPossible(): void {
    if (this.paused && this.canAcceptMore()) this.resumeIfPaused();
  }

  private resumeIfPaused(): void {
    if (!this.paused) return;
    this.paused = false;
    this.backend.resumeReceive();
  }

  get receivePaused(): boolean {
    return this.paused;
  }
}
