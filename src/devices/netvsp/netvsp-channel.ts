// One NetVSP channel (the primary or a sub-channel) serving its rings: NVSP messages from
// the guest (the bring-up on the primary, SEND_RNDIS_PKT on every channel), RNDIS data
// and control inside them, the guest's completions of receive packets, and the host's
// own traffic to the guest - received frames, control responses and indications - as
// transfer-page packets pointing into the shared receive buffer (spec 2.2 - 2.4).
//
// Flow control both ways: a guest request is taken off the ring only when its completion
// fits in the host->guest ring (otherwise pending_send_sz makes the guest signal once it
// has read enough); a frame the backend refuses (false = backpressure) leaves its packet
// in the ring and is retried shortly, with the RNDIS messages of that packet already sent
// skipped. Host->guest writes of one event-loop turn are published together, so the guest
// is interrupted at most once per turn, and only when its ring was empty with interrupts
// unmasked (RingWriter decides).
//
// Transmit copies the RNDIS bytes into a scratch buffer of the channel before parsing, so
// the guest cannot change a length after it was checked and the LSO header fix-ups never
// write guest memory. A large frame (one RNDIS PACKET in GPA-direct pages, as Linux sends
// everything that does not fit a send section) has only its first bytes copied - the
// RNDIS header, PPIs and the frame's headers - and its payload goes to the backend in
// place, as an iovec list over guest RAM: a guest that changes its payload meanwhile
// only changes what it sends. Small frames (send sections, several per packet) are
// copied whole. Everything the data path uses is allocated once per channel; what
// remains per frame are the subarray views TypedArray.set and NetBackend.send need.
import { PacketOffload } from '../../backends/net/net-backend.js';
import { fillIpv4HeaderChecksum, fillPartialChecksum, foldSum, pseudoHeaderSumIpv4, pseudoHeaderSumIpv6 } from '../../backends/net/inet-checksum.js';
import { IPPROTO_TCP, PacketKind, ParsedPacket, parsePacket } from '../../backends/net/packet-parse.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import { rangeProblem } from '../../memory/gpa-range.js';
import { PAGE_SIZE } from '../../memory/page.js';
import type { Poller } from '../../sys/epoll.js';
import { IovecList } from '../../sys/iovec.js';
import { viewOf } from '../../sys/libc.js';
import { mapAnonymousOwned } from '../../sys/memfd.js';
import {
  decodeGpaDirectHeader,
  DecodeError,
  encodeTransferPageHeader,
  GpaDirectRanges,
  PACKET_FLAG_COMPLETION_REQUESTED,
  PacketType,
  transferPageHeaderSize,
  type TransferPageRange,
} from '../../vmbus/packet.js';
import { RingCorruptError } from '../../vmbus/ring/ring-errors.js';
import { RingReader, type PacketView } from '../../vmbus/ring/ring-reader.js';
import { ringPacketBytes, RingWriter, WRITE_FULL, WRITE_SIGNAL } from '../../vmbus/ring/ring-writer.js';
import { RingWriteBatch } from '../../vmbus/ring/ring-write-batch.js';
import type { OpenChannel } from '../../vmbus/server/vmbus-device.js';
import type { NetvspNic, ReceiveQueue } from './netvsp-nic.js';
import { SEND_SECTION_SIZE } from './netvsp-nic.js';
import {
  encodeNvspMessage,
  encodeRndisPacketCompleteMessage,
  encodeRndisPacketMessage,
  NVSP_INVALID_PROTOCOL_VERSION,
  NVSP_INVALID_SECTION_INDEX,
  NVSP_MAX_MDL_CHAIN_LENGTH,
  NVSP_MESSAGE_SIZE,
  NvspDecoder,
  NvspError,
  NvspStatus,
  NvspVersion,
  LINUX_NVSP_VERSION_ORDER,
  RndisChannelType,
  SubchannelOperation,
  type NvspMessage,
  type NvspRndisPacket,
} from './nvsp-protocol.js';
import {
  decodePacketInfo,
  lsoIpVersion,
  lsoMss,
  LsoIpVersion,
  PacketInfo,
  PacketInfoIdFlag,
  PPI_U32_RECORD_SIZE,
  PpiType,
  rxChecksumGood,
  TxChecksum,
  txChecksumHeaderOffset,
  vlanInfoToTci,
  writePacketIdPpi,
  writeU32Ppi,
} from './per-packet-info.js';
import { copyBytes, zeroBytes } from './le-bytes.js';
import { coalescedFragmentCount, FIRST_FRAGMENT_DATA_OFFSET, fragmentDataOffset, MAX_COALESCED_FRAGMENTS } from './receive-buffer.js';
import { RNDIS_CONTROL_RESPONSE_MAX } from './rndis-control.js';
import { encodeRndisPacketHeader, encodeRndisPacketHeaderAt, RndisDecoder, RndisError, RndisMessageSize, type RndisPacket } from './rndis-protocol.js';
import { NO_HASH } from './toeplitz.js';

/** Largest ring packet accepted from the guest; a real one is < 1 KiB. A larger one breaks the ring. */
const MAX_PACKET_BYTES = 65536;
/** Ring bytes of a completion we send (a full 40-byte NVSP message: Linux drops short ones). */
const COMPLETION_RING_BYTES = ringPacketBytes(NVSP_MESSAGE_SIZE);
const TRANSFER_HEADER_BYTES = transferPageHeaderSize(1);
/** Ring bytes of one receive indication: transfer-page header with one range, then SEND_RNDIS_PKT. */
const RECEIVE_RING_BYTES = ringPacketBytes(TRANSFER_HEADER_BYTES + NVSP_MESSAGE_SIZE);
/** Ring bytes of the largest coalesced indication. */
const COALESCED_RING_BYTES = ringPacketBytes(transferPageHeaderSize(MAX_COALESCED_FRAGMENTS) + NVSP_MESSAGE_SIZE);
/** Largest frame the guest may transmit: an LSO frame (IP length is 16 bits) plus Ethernet and a VLAN tag. */
const MAX_TX_FRAME = 65535 + 14 + 4;
/** RNDIS bytes of one SEND_RNDIS_PKT: a send section plus the GPA-direct part of an LSO frame with its headers. */
const MAX_RNDIS_BYTES = SEND_SECTION_SIZE + MAX_TX_FRAME + 4096;
/** Bytes of an in-place frame's RNDIS stream copied for parsing: the RNDIS header, PPIs and the frame's headers fit. */
const TX_HEAD_BYTES = 512;
/** Smaller GPA-direct packets are copied whole: cheaper than a gather list. */
const TX_IN_PLACE_MIN_BYTES = 2048;
/** Segments of an in-place frame: the copied head, then page runs of a 64 KiB frame. */
const TX_IN_PLACE_SEGMENTS = 2 + Math.ceil(MAX_RNDIS_BYTES / PAGE_SIZE);
/** Control messages waiting for a sub-allocation; beyond this a guest that never completes loses answers. */
const MAX_QUEUED_CONTROL = 64;
/** Retry delay after the backend refused a frame. */
const TX_RETRY_MS = 1;
const TWO_32 = 0x1_0000_0000;

const ETHERTYPE_VLAN = 0x8100;

/** What one transmit attempt came to. */
const TxResult = { Sent: 0, Blocked: 1, Bad: 2, NeedsCopy: 3 } as const;
/** transmitInPlace: the packet goes the copying way instead. */
const IN_PLACE_DECLINED = -2;
type TxResult = (typeof TxResult)[keyof typeof TxResult];

export interface NetvspChannelCounters {
  subChannelIndex: number;
  packetsIn: number;
  packetsOut: number;
  signalsIn: number;
  signalsOut: number;
  /** Frames the guest sent that went to the backend, and their bytes. */
  txFrames: number;
  txBytes: number;
  /** Guest frames dropped: malformed RNDIS/PPI, link down, oversize. */
  txDropped: number;
  /** Of txFrames: sent from guest RAM in place (only their headers copied). */
  txInPlace: number;
  /** Frames indicated to the guest on this channel, and their bytes. */
  rxFrames: number;
  rxBytes: number;
  /** Of rxFrames: large TCP segments sent whole as RSC fragments. */
  rxCoalesced: number;
  /** Frames meant for this channel that did not fit a sub-allocation. */
  rxDropped: number;
  /** RNDIS control messages handled, and control answers sent. */
  controlRequests: number;
  controlSent: number;
  /** NVSP/RNDIS messages refused as malformed or out of place. */
  badMessages: number;
  /** Guest completions that named no outstanding receive packet. */
  badCompletions: number;
  /** Control answers dropped (no receive buffer, or too many queued). */
  controlDropped: number;
}

export interface NetvspChannelOptions {
  subChannelIndex: number;
  poller: Poller;
  nic: NetvspNic;
  log: (message: string) => void;
}

export class NetvspChannel implements ReceiveQueue {
  readonly subChannelIndex: number;
  readonly stats: NetvspChannelCounters;
  private readonly nic: NetvspNic;

  private open: OpenChannel | null = null;
  private reader: RingReader | null = null;
  private writer: RingWriter | null = null;
  private memory: GuestMemory | null = null;
  private token = 0;
  private serving = false;
  /** Stages writes until the end of this turn of the event loop: one publish, at most one signal. */
  private readonly batch: RingWriteBatch;
  private readonly onSignal: () => void;
  /** RNDIS messages of the packet at the ring head already transmitted before the backend pushed back. */
  private skipMessages = 0;
  private retryTimer: NodeJS.Timeout | null = null;
  /** pending_send_sz is set on the host->guest ring (cleared once room is found again). */
  private pendingSendSet = false;

  // Reused buffers: nothing below is allocated per packet.
  private readonly message = new Uint8Array(NVSP_MESSAGE_SIZE);
  private readonly messageViews: Uint8Array[] = [];
  private readonly reply = new Uint8Array(NVSP_MESSAGE_SIZE);
  private readonly nvsp = new NvspDecoder();
  private readonly rndis = new RndisDecoder();
  private readonly packetInfo = new PacketInfo();
  private readonly gpaRanges = new GpaDirectRanges();
  private readonly headerScratch = new Uint8Array(MAX_PACKET_BYTES);
  /** Native memory, so an in-place frame's copied head can lead its iovec list. */
  private readonly txAddress = mapAnonymousOwned(this, MAX_RNDIS_BYTES);
  private readonly txBytes = new Uint8Array(viewOf(this.txAddress, MAX_RNDIS_BYTES));
  /** An in-place packet's RNDIS stream in guest RAM, and the frame handed to the backend. */
  private readonly txStream = new IovecList(TX_IN_PLACE_SEGMENTS);
  private readonly txFrame = new IovecList(TX_IN_PLACE_SEGMENTS);
  private readonly vlanFrame = new Uint8Array(MAX_TX_FRAME + 4);
  private readonly txOffload = new PacketOffload();
  private readonly txParsed = new ParsedPacket();
  private readonly controlOut = new Uint8Array(RNDIS_CONTROL_RESPONSE_MAX);
  private readonly transferRanges: TransferPageRange[] = Array.from({ length: MAX_COALESCED_FRAGMENTS }, () => ({ byteCount: 0, byteOffset: 0 }));
  /**
   * Frames read in place and not sent yet: the ranges of one transfer-page packet being
   * filled (Hyper-V puts many RNDIS messages in one; Linux completes the packet once), its
   * sub-allocations chained from pendingHead so that the one completion frees them all.
   * Sent at the end of the backend's read batch, when full, or before anything else.
   */
  private pendingRanges = 0;
  private pendingHead = -1;
  private pendingTail = -1;
  private pendingBytes = 0;
  private pendingFlushQueued = false;
  private readonly flushReceivesBound = (): void => {
    this.pendingFlushQueued = false;
    try {
      this.flushReceives();
    } catch (e) {
      // From a microtask nothing would catch it: fail the channel instead of the process.
      this.failOn(e);
    }
  };
  /** The id of the last coalesced segment (PKTINFO_ID pkt_id), per channel. */
  private coalescedId = 0;
  private readonly coalescedIndices = new Int32Array(MAX_COALESCED_FRAGMENTS);
  private controlQueue: Uint8Array[] = [];

  constructor(private readonly options: NetvspChannelOptions) {
    this.subChannelIndex = options.subChannelIndex;
    this.nic = options.nic;
    this.stats = emptyCounters(options.subChannelIndex);
    for (let n = 0; n <= NVSP_MESSAGE_SIZE; n++) this.messageViews.push(this.message.subarray(0, n));
    this.batch = new RingWriteBatch(() => this.signalGuest(), (e) => this.failOn(e));
    this.onSignal = () => this.guestSignalled();
  }

  get isOpen(): boolean {
    return this.open !== null;
  }

  get openChannel(): OpenChannel | null {
    return this.open;
  }

  /** Binds the rings of a new open. Throws (the open fails) if the rings are unusable. */
  attach(open: OpenChannel): void {
    if (this.open !== null) throw new Error('channel already open');
    this.reader = new RingReader(open.incoming, { maxPacketBytes: MAX_PACKET_BYTES });
    this.writer = new RingWriter(open.outgoing);
    this.memory = open.memory;
    this.skipMessages = 0;
    this.controlQueue = [];
    const s = this.stats;
    Object.assign(s, emptyCounters(this.subChannelIndex));
    this.token = this.options.poller.add(open.guestSignal.fd, this.onSignal);
    this.open = open;
  }

  /** Stops touching the rings (close, rescind, failure). */
  detach(): void {
    if (this.open === null) return;
    try {
      this.options.poller.remove(this.token);
    } catch (e) {
      this.options.log(`netvsp: channel ${this.subChannelIndex}: unwatching the guest signal failed: ${(e as Error).message}`);
    }
    this.open = null;
    this.pendingSendSet = false;
    this.reader = null;
    this.dropPendingReceives();
    this.writer = null;
    this.batch.drop();
    this.controlQueue = [];
    this.skipMessages = 0;
    if (this.retryTimer !== null) {
      clearTimeout(this.retryTimer);
      this.retryTimer = null;
    }
  }

  // ---- serving the incoming ring ----

  private guestSignalled(): void {
    const open = this.open;
    if (open === null) return;
    try {
      open.guestSignal.drain();
    } catch (e) {
      this.problem(`reading the guest signal failed: ${(e as Error).message}`);
    }
    this.stats.signalsIn++;
    this.serve();
  }

  /** Flushes what waits for the guest, then drains its requests. Never throws. */
  serve(): void {
    if (this.open === null || this.serving) return;
    this.serving = true;
    try {
      this.batch.begin(this.writer);
      this.flushControl();
      if (this.open !== null) this.drain();
      // Control answers produced by the requests just drained.
      if (this.open !== null) this.flushControl();
      if (this.open !== null) this.nic.resumeIfPossible();
    } catch (e) {
      this.failOn(e);
    } finally {
      this.serving = false;
    }
  }

  private drain(): void {
    const reader = this.reader!;
    for (;;) {
      reader.maskInterrupts();
      let packet: PacketView | null;
      while ((packet = reader.peek()) !== null) {
        if (!this.handlePacket(reader, packet)) return; // waits for ring space or the backend; interrupts stay masked
        if (this.open === null) return;
        this.stats.packetsIn++;
        reader.next();
        // Keep read_index current (the guest signals only on the empty to non-empty edge)
        // and wake a guest writer waiting on pending_send_sz.
        if (reader.commit()) this.signalGuest();
      }
      if (!reader.unmaskInterrupts()) return;
    }
  }

  /** Handles the packet at the ring head; false leaves it there (retried later). */
  private handlePacket(reader: RingReader, packet: PacketView): boolean {
    const type = packet.type;
    if (type === PacketType.Completion) {
      this.receiveCompleted(reader, packet);
      return true;
    }
    if (type !== PacketType.DataInband && type !== PacketType.DataUsingGpaDirect) {
      this.problem(`ignored packet type ${type}`);
      this.stats.badMessages++;
      return true;
    }
    const wantsCompletion = (packet.flags & PACKET_FLAG_COMPLETION_REQUESTED) !== 0;
    // Take the request only when its answer fits: a completion never waits in host memory.
    if (wantsCompletion && !this.roomFor(COMPLETION_RING_BYTES)) return false;
    const message = this.message;
    const length = reader.copyPayload(message);
    // A short message reads as zero-padded.
    zeroBytes(message, length, message.length);
    const decoded = this.nvsp.decode(this.messageViews[length]!, 'to-host');
    try {
      return this.handleMessage(reader, packet, decoded, wantsCompletion);
    } catch (e) {
      if (e instanceof RingCorruptError) throw e;
      // A bug must not take the channel down with it: answer, count, go on.
      this.problem(`internal error on NVSP message: ${(e as Error).stack ?? e}`);
      this.stats.badMessages++;
      if (wantsCompletion) this.completeGeneric(packet, NvspStatus.Fail);
      return true;
    }
  }

  private handleMessage(reader: RingReader, packet: PacketView, m: NvspMessage | NvspError, wantsCompletion: boolean): boolean {
    const nic = this.nic;
    const primary = this.subChannelIndex === 0;
    if (m instanceof NvspError) {
      this.problem(m.message);
      this.stats.badMessages++;
      if (wantsCompletion) this.completeGeneric(packet, NvspStatus.Fail);
      return true;
    }
    switch (m.kind) {
      case 'rndis-packet':
        return this.rndisPacket(reader, packet, m, wantsCompletion);
      case 'init': {
        let status: number = NvspStatus.Fail;
        let version = 0;
        // Only at the start of a session: the buffers were sized for the version agreed.
        if (primary && nic.receiveBuffer === null && nic.sendBuffer === null) {
          for (const v of LINUX_NVSP_VERSION_ORDER) {
            if (v >= m.minVersion && v <= m.maxVersion) {
              version = v;
              break;
            }
          }
          if (version !== 0) {
            nic.nvspVersion = version;
            status = NvspStatus.Success;
          }
        }
        if (status !== NvspStatus.Success) this.stats.badMessages++;
        this.completeWith(packet, wantsCompletion, {
          kind: 'init-complete',
          negotiatedVersion: version === NvspVersion.V1 ? version : NVSP_INVALID_PROTOCOL_VERSION,
          maxMdlChainLength: NVSP_MAX_MDL_CHAIN_LENGTH,
          status,
        });
        return true;
      }
      case 'ndis-config':
        if (primary && nic.nvspVersion !== 0) {
          // mtu includes the Ethernet header; the guest can never exceed what we advertised.
          const mtu = m.mtu - 14;
          nic.guestMtu = mtu >= 68 && mtu <= nic.mtu ? mtu : nic.mtu;
          nic.ndisCapabilities = m.capabilities;
        } else this.stats.badMessages++;
        if (wantsCompletion) this.completeGeneric(packet, NvspStatus.Success);
        return true;
      case 'ndis-version':
        if (primary) {
          nic.ndisMajor = m.major;
          nic.ndisMinor = m.minor;
        } else this.stats.badMessages++;
        if (wantsCompletion) this.completeGeneric(packet, NvspStatus.Success);
        return true;
      case 'receive-buffer': {
        const status = primary ? nic.attachReceiveBuffer(this.open!, m.gpadlHandle, m.id) : NvspStatus.Fail;
        const rb = nic.receiveBuffer;
        const ok = status === NvspStatus.Success && rb !== null;
        if (!ok) this.stats.badMessages++;
        this.completeWith(packet, wantsCompletion, {
          kind: 'receive-buffer-complete',
          status,
          numSections: ok ? 1 : 0,
          sectionOffset: 0,
          subAllocSize: ok ? rb.subAllocSize : 0,
          numSubAllocs: ok ? rb.count : 0,
          endOffset: ok ? rb.endOffset : 0,
        });
        return true;
      }
      case 'send-buffer': {
        const status = primary ? nic.attachSendBuffer(this.open!, m.gpadlHandle) : NvspStatus.Fail;
        if (status !== NvspStatus.Success) this.stats.badMessages++;
        this.completeWith(packet, wantsCompletion, {
          kind: 'send-buffer-complete',
          status,
          sectionSize: status === NvspStatus.Success ? SEND_SECTION_SIZE : 0,
        });
        return true;
      }
      case 'revoke-receive-buffer':
        if (primary) nic.revokeReceiveBuffer();
        if (wantsCompletion) this.completeGeneric(packet, NvspStatus.Success);
        return true;
      case 'revoke-send-buffer':
        if (primary) nic.revokeSendBuffer();
        if (wantsCompletion) this.completeGeneric(packet, NvspStatus.Success);
        return true;
      case 'subchannel-request': {
        const allowed = primary && m.operation === SubchannelOperation.Allocate && nic.nvspVersion >= NvspVersion.V5;
        const count = allowed ? nic.grantSubchannels(m.count) : 0;
        if (!allowed) this.stats.badMessages++;
        this.completeWith(packet, wantsCompletion, { kind: 'subchannel-complete', status: allowed ? NvspStatus.Success : NvspStatus.Fail, count });
        // The guest waits for the completion, then for exactly `count` offers.
        if (allowed) nic.offerGranted();
        return true;
      }
      case 'switch-data-path':
        // No VF is ever offered, so the data path stays synthetic; newer guests wait for the echo.
        if (wantsCompletion) {
          this.reply.set(this.message);
          this.writeCompletion(packet, this.reply);
        }
        return true;
      default:
        this.problem(`unexpected NVSP ${m.kind}`);
        this.stats.badMessages++;
        if (wantsCompletion) this.completeGeneric(packet, NvspStatus.Fail);
        return true;
    }
  }

  // ---- transmit (SEND_RNDIS_PKT) ----

  private rndisPacket(reader: RingReader, packet: PacketView, m: NvspRndisPacket, wantsCompletion: boolean): boolean {
    const status = this.gatherAndProcess(reader, packet, m);
    if (status < 0) {
      // The backend pushed back: keep the packet, try again shortly.
      this.scheduleRetry();
      return false;
    }
    this.skipMessages = 0;
    if (status !== NvspStatus.Success) this.stats.badMessages++;
    // Every SEND_RNDIS_PKT is completed, whatever became of it: unanswered sends stop the guest's queue.
    if (wantsCompletion) {
      encodeRndisPacketCompleteMessage(this.reply, 0, status, NVSP_MESSAGE_SIZE);
      this.writeCompletion(packet, this.reply);
    }
    return true;
  }

  /** The NVSP status for the packet, or -1 when the backend refused a frame (retry). */
  private gatherAndProcess(reader: RingReader, packet: PacketView, m: NvspRndisPacket): number {
    // The GPA-direct header is decoded once, for whichever way the packet goes.
    const gpaDirect = packet.type === PacketType.DataUsingGpaDirect;
    if (gpaDirect && !this.decodeRanges(reader, packet)) return NvspStatus.InvalidRndisPacket;
    if (gpaDirect && m.sectionIndex === NVSP_INVALID_SECTION_INDEX && this.skipMessages === 0) {
      const status = this.transmitInPlace();
      if (status !== IN_PLACE_DECLINED) return status;
    }
    const buf = this.txBytes;
    let total = 0;
    if (m.sectionIndex !== NVSP_INVALID_SECTION_INDEX) {
      const send = this.nic.sendBuffer;
      if (send === null || m.sectionIndex >= this.nic.sendSectionCount || m.sectionSize > SEND_SECTION_SIZE || m.sectionSize === 0) {
        this.problem(`send section ${m.sectionIndex} (${m.sectionSize} bytes) is not in the send buffer`);
        return NvspStatus.InvalidRndisPacket;
      }
      const start = m.sectionIndex * SEND_SECTION_SIZE;
      buf.set(send.subarray(start, start + m.sectionSize), 0);
      total = m.sectionSize;
    }
    if (gpaDirect) {
      const more = this.gatherPages(total);
      if (more < 0) return NvspStatus.InvalidRndisPacket;
      total = more;
    }
    if (total === 0) {
      this.problem('SEND_RNDIS_PKT without data');
      return NvspStatus.InvalidRndisPacket;
    }
    // Walk the concatenated messages by msg_len (a section can hold several PACKETs).
    let offset = 0;
    let index = 0;
    let status: number = NvspStatus.Success;
    while (offset < total) {
      const msg = this.rndis.decode(buf, offset, total - offset, 'to-host');
      if (msg instanceof RndisError) {
        this.problem(msg.message);
        return NvspStatus.InvalidRndisPacket;
      }
      if (index >= this.skipMessages) {
        if (msg.kind === 'packet') {
          const r = this.transmit(msg);
          if (r === TxResult.Blocked) {
            this.skipMessages = index;
            return -1;
          }
          if (r === TxResult.Bad) status = NvspStatus.InvalidRndisPacket;
        } else {
          this.control(msg);
        }
      }
      offset += msg.length;
      index++;
    }
    return status;
  }

  /**
   * A GPA-direct packet (ranges decoded) holding one large RNDIS PACKET: the first TX_HEAD_BYTES are
   * copied and parsed, the rest of the frame goes to the backend from guest RAM. Returns
   * the NVSP status, -1 (backend refused: retry), or IN_PLACE_DECLINED when the packet
   * is better copied whole (small, several messages, a VLAN tag to insert, headers
   * beyond the copied bytes) or is malformed (the copy path says why).
   */
  private transmitInPlace(): number {
    const memory = this.memory!;
    const base = Number(memory.base);
    const stream = this.txStream;
    stream.clear();
    const ranges = this.gpaRanges;
    for (let i = 0; i < ranges.count; i++) {
      const r = ranges.ranges[i]!;
      if (rangeProblem(memory, r) !== null) return IN_PLACE_DECLINED;
      let remaining = r.byteCount;
      let within = r.byteOffset;
      for (let k = 0; k < r.pfns.length && remaining > 0; k++) {
        const n = Math.min(PAGE_SIZE - within, remaining);
        const address = base + r.pfns[k]! * PAGE_SIZE + within;
        const last = stream.count - 1;
        // Consecutive pages make one segment: a contiguous bounce buffer is one iovec.
        if (last >= 0 && stream.addressAt(last) + stream.lengthAt(last) === address) stream.extendLast(n);
        else if (!stream.push(address, n)) return IN_PLACE_DECLINED;
        remaining -= n;
        within = 0;
      }
    }
    const total = stream.byteLength;
    if (total < TX_IN_PLACE_MIN_BYTES || total > MAX_RNDIS_BYTES) return IN_PLACE_DECLINED;
    const head = Math.min(total, TX_HEAD_BYTES);
    const ram = memory.bytes;
    for (let i = 0, done = 0; i < stream.count && done < head; i++) {
      const gpa = stream.addressAt(i) - base;
      const n = Math.min(stream.lengthAt(i), head - done);
      copyBytes(this.txBytes, done, ram, gpa, gpa + n);
      done += n;
    }
    const msg = this.rndis.decode(this.txBytes, 0, total, 'to-host');
    if (msg instanceof RndisError || msg.kind !== 'packet' || msg.length !== total || msg.ppiOffset + msg.ppiLength > head || msg.dataOffset >= head) return IN_PLACE_DECLINED;
    const r = this.transmit(msg, head);
    if (r === TxResult.NeedsCopy) return IN_PLACE_DECLINED;
    if (r === TxResult.Blocked) return -1;
    return r === TxResult.Bad ? NvspStatus.InvalidRndisPacket : NvspStatus.Success;
  }

  /** Decodes the packet's GPA-direct header into gpaRanges; false (with the reason logged) when malformed. */
  private decodeRanges(reader: RingReader, packet: PacketView): boolean {
    let bytes: Uint8Array;
    let offset: number;
    let length: number;
    if (packet.contiguous) {
      bytes = reader.mem.data;
      offset = packet.headerOffset;
      length = packet.headerLength;
    } else {
      bytes = this.headerScratch;
      offset = 0;
      length = reader.copyHeader(this.headerScratch);
    }
    const error = decodeGpaDirectHeader(bytes, offset, length, this.gpaRanges);
    if (error !== DecodeError.None) {
      this.problem(`GPA-direct header rejected (${error})`);
      return false;
    }
    return true;
  }

  /** Appends the decoded GPA-direct ranges' bytes to txBytes from `total`; returns the new total or -1. */
  private gatherPages(total: number): number {
    const ranges = this.gpaRanges;
    const memory = this.memory!;
    const ram = memory.bytes;
    const buf = this.txBytes;
    for (let i = 0; i < ranges.count; i++) {
      const r = ranges.ranges[i]!;
      const problem = rangeProblem(memory, r);
      if (problem !== null) {
        this.problem(`GPA range ${i}: ${problem}`);
        return -1;
      }
      if (total + r.byteCount > buf.length) {
        this.problem(`SEND_RNDIS_PKT of more than ${buf.length} bytes`);
        return -1;
      }
      let remaining = r.byteCount;
      let within = r.byteOffset;
      for (let k = 0; k < r.pfns.length && remaining > 0; k++) {
        const n = Math.min(PAGE_SIZE - within, remaining);
        const gpa = r.pfns[k]! * PAGE_SIZE + within;
        buf.set(ram.subarray(gpa, gpa + n), total);
        total += n;
        remaining -= n;
        within = 0;
      }
    }
    return total;
  }

  /**
   * One RNDIS PACKET to the backend, with its PPIs turned into PacketOffload. With
   * `inPlaceFrom` >= 0 only txBytes[0, inPlaceFrom) was copied and the rest of the
   * stream is txStream (guest RAM): the frame's headers must lie in the copy (else
   * NeedsCopy), and the frame goes out as the copied part plus the guest's pages.
   */
  private transmit(m: RndisPacket, inPlaceFrom = -1): TxResult {
    const s = this.stats;
    const nic = this.nic;
    const buf = this.txBytes;
    const dataLength = m.dataLength;
    if (dataLength < 14 || dataLength > MAX_TX_FRAME - 4) {
      s.txDropped++;
      return TxResult.Bad;
    }
    const info = this.packetInfo;
    const ppiError = decodePacketInfo(buf, m.ppiOffset, m.ppiLength, info);
    if (ppiError !== null) {
      this.problem(`bad per-packet info: ${ppiError.message}`);
      s.txDropped++;
      return TxResult.Bad;
    }
    const inPlace = inPlaceFrom >= 0 && m.dataOffset + dataLength > inPlaceFrom;
    // A tag to insert shifts the whole frame: that takes a copy.
    if (inPlace && info.hasVlan) return TxResult.NeedsCopy;
    const headLength = inPlaceFrom - m.dataOffset;
    // The guest strips an 802.1Q tag into a PPI; put it back into the frame.
    let frame = buf;
    let start = m.dataOffset;
    let length = dataLength;
    let shift = 0;
    if (info.hasVlan) {
      const f = this.vlanFrame;
      f.set(buf.subarray(start, start + 12), 0);
      const tci = vlanInfoToTci(info.vlan);
      f[12] = ETHERTYPE_VLAN >> 8;
      f[13] = ETHERTYPE_VLAN & 0xff;
      f[14] = tci >> 8;
      f[15] = tci & 0xff;
      f.set(buf.subarray(start + 12, start + dataLength), 16);
      frame = f;
      start = 0;
      length = dataLength + 4;
      shift = 4;
    }
    const offload = this.txOffload.clear();
    if (info.hasLso) {
      if (!this.prepareLso(frame, start, length, info.lso, offload)) {
        // In place, the headers may run past the copy: let the copying way judge.
        if (inPlace) return TxResult.NeedsCopy;
        s.txDropped++;
        return TxResult.Bad;
      }
      // prepareLso rewrote the headers in the copy; they must all be in it.
      if (inPlace && this.txParsed.payloadOffset > headLength) return TxResult.NeedsCopy;
    } else if (info.hasChecksum) {
      const v = info.checksum;
      const l4 = txChecksumHeaderOffset(v) + shift;
      const field = (v & TxChecksum.Tcp) !== 0 ? 16 : (v & TxChecksum.Udp) !== 0 ? 6 : -1;
      if (field >= 0) {
        if (l4 + field + 2 > length) {
          s.txDropped++;
          return TxResult.Bad;
        }
        if (inPlace && l4 + field + 2 > headLength) return TxResult.NeedsCopy;
        offload.setChecksum(l4, field);
      }
      if ((v & TxChecksum.IpHeader) !== 0 && (v & TxChecksum.IsIpv4) !== 0) {
        if (inPlace) return TxResult.NeedsCopy;
        // Linux never asks, but NDIS allows it: finish the IPv4 header checksum here.
        if (parsePacket(frame, start, length, this.txParsed) !== PacketKind.Malformed && this.txParsed.ipVersion === 4) {
          fillIpv4HeaderChecksum(frame, start + this.txParsed.l3Offset, this.txParsed.l3HeaderLength);
        }
      }
    }
    if (!nic.linkUp) {
      s.txDropped++;
      return TxResult.Sent;
    }
    if (inPlace) {
      const iov = this.txFrame;
      iov.clear();
      iov.push(Number(this.txAddress) + start, headLength);
      if (!this.txStream.sliceInto(iov, inPlaceFrom, length - headLength, true) || iov.count > nic.backend.maxSendSegments) return TxResult.NeedsCopy;
      if (!nic.backend.send(iov, offload)) return TxResult.Blocked;
      s.txInPlace++;
    } else if (!nic.backend.send(frame.subarray(start, start + length), offload)) return TxResult.Blocked;
    s.txFrames++;
    s.txBytes += length;
    return TxResult.Sent;
  }

  /**
   * LSOv2: netvsc zeroed the IPv4 total length and header checksum (IPv6: payload
   * length) and left a pseudo-header sum without length in the TCP checksum. A GSO
   * consumer (a TAP, the kernel's GSO) expects a consistent packet: real lengths, a valid
   * IPv4 header checksum, and the pseudo-header sum over the real TCP length.
   */
  private prepareLso(frame: Uint8Array, start: number, length: number, lso: number, offload: PacketOffload): boolean {
    const mss = lsoMss(lso);
    const p = this.txParsed;
    if (mss === 0 || parsePacket(frame, start, length, p) !== PacketKind.Tcp || p.l4Protocol !== IPPROTO_TCP || p.isFragment) return false;
    const wantV6 = lsoIpVersion(lso) === LsoIpVersion.Ipv6;
    if ((p.ipVersion === 6) !== wantV6) return false;
    const l3 = start + p.l3Offset;
    const ipLength = length - p.l3Offset;
    const l4Length = length - p.l4Offset;
    if (p.ipVersion === 4) {
      if (ipLength > 0xffff) return false;
      frame[l3 + 2] = ipLength >> 8;
      frame[l3 + 3] = ipLength & 0xff;
      fillIpv4HeaderChecksum(frame, l3, p.l3HeaderLength);
    } else {
      const payload = ipLength - 40;
      if (payload > 0xffff) return false;
      frame[l3 + 4] = payload >> 8;
      frame[l3 + 5] = payload & 0xff;
    }
    const pseudo = p.ipVersion === 4 ? pseudoHeaderSumIpv4(frame, l3, IPPROTO_TCP, l4Length) : pseudoHeaderSumIpv6(frame, l3, IPPROTO_TCP, l4Length);
    const sum = foldSum(pseudo);
    const field = start + p.l4Offset + 16;
    frame[field] = sum >> 8;
    frame[field + 1] = sum & 0xff;
    offload.setChecksum(p.l4Offset, 16);
    offload.setGso(p.ipVersion === 4 ? 'tcpv4' : 'tcpv6', mss, p.payloadOffset);
    return true;
  }

  /** An RNDIS control message: the answer goes back through the receive buffer. */
  private control(msg: Exclude<ReturnType<RndisDecoder['decode']>, RndisError>): void {
    this.stats.controlRequests++;
    const n = this.nic.rndis.handle(this.txBytes, msg, this.controlOut);
    if (n > 0) this.queueControl(this.controlOut, n);
  }

  // ---- completions to the guest ----

  private roomFor(bytes: number): boolean {
    const writer = this.writer!;
    if (writer.canWrite(bytes)) {
      if (this.pendingSendSet) {
        writer.clearPendingSend();
        this.pendingSendSet = false;
      }
      return true;
    }
    // Ask the guest to signal when it has read enough; it may already have.
    if (writer.setPendingSend(bytes)) {
      writer.clearPendingSend();
      this.pendingSendSet = false;
      return true;
    }
    this.pendingSendSet = true;
    return false;
  }

  private completeWith(packet: PacketView, wantsCompletion: boolean, m: NvspMessage): void {
    if (!wantsCompletion) return;
    encodeNvspMessage(m, this.reply, 0, NVSP_MESSAGE_SIZE);
    this.writeCompletion(packet, this.reply);
  }

  /** A completion for a request with no answer of its own: its type and a status. */
  private completeGeneric(packet: PacketView, status: number): void {
    const r = this.reply;
    zeroBytes(r, 0, r.length);
    const type = this.message[0]! | (this.message[1]! << 8) | (this.message[2]! << 16) | (this.message[3]! << 24);
    writeU32(r, 0, type >>> 0);
    writeU32(r, 4, status);
    this.writeCompletion(packet, r);
  }

  private writeCompletion(packet: PacketView, payload: Uint8Array): void {
    const high = packet.transactionIdHigh;
    // Linux's request ids are small; anything beyond 2^53 needs the bigint form.
    const id = high < 0x200000 ? high * TWO_32 + packet.transactionIdLow : (BigInt(high) << 32n) | BigInt(packet.transactionIdLow);
    this.batch.begin(this.writer);
    const result = this.writer!.tryWrite(PacketType.Completion, 0, id, null, payload);
    // roomFor() checked before the request was taken: FULL here means the guest moved its
    // indices backwards. The guest loses an answer it broke itself.
    if (result === WRITE_FULL) {
      this.problem('no ring space for a completion');
      return;
    }
    this.wrote(result);
  }

  // ---- receive (host -> guest) ----

  /** The guest finished with a transfer-page packet: its sub-allocation is free again. */
  private receiveCompleted(_reader: RingReader, packet: PacketView): void {
    const rb = this.nic.receiveBuffer;
    if (rb === null || !rb.complete(packet.transactionIdLow, packet.transactionIdHigh)) {
      this.stats.badCompletions++;
      return;
    }
    this.flushControl();
  }

  hasReceiveRoom(): boolean {
    if (this.writer === null) return false;
    // The next frame may also have to flush the packet being filled (it is full, or a
    // segment must go after it): room for that packet too.
    const pending = this.pendingRanges > 0 ? COALESCED_RING_BYTES : 0;
    return this.roomFor((this.nic.coalescing ? COALESCED_RING_BYTES : RECEIVE_RING_BYTES) + pending);
  }

  deliverFrame(frame: Uint8Array, length: number, offload: PacketOffload | null, parsed: ParsedPacket, hash: number): boolean {
    const rb = this.nic.receiveBuffer;
    if (rb === null || this.writer === null) return false;
    this.flushReceives();
    const ppiBytes = PPI_U32_RECORD_SIZE + (hash !== NO_HASH ? PPI_U32_RECORD_SIZE : 0);
    const messageLength = RndisMessageSize.Packet + ppiBytes + length;
    if (messageLength > rb.subAllocSize) {
      // Bigger than the device MTU allows: a NIC drops it.
      this.stats.rxDropped++;
      return true;
    }
    const index = rb.allocate();
    if (index < 0) {
      this.stats.rxDropped++;
      return false;
    }
    const buf = rb.bytes;
    const at = rb.offsetOf(index);
    encodeRndisPacketHeader(buf, at, ppiBytes, length);
    const frameAt = at + RndisMessageSize.Packet + ppiBytes;
    buf.set(length === frame.length ? frame : frame.subarray(0, length), frameAt);
    // Tell the guest what is known good, so it skips verifying: frames whose checksum the
    // host finished or verified (or that never crossed a wire).
    let good = offload === null || offload.checksumValid;
    if (offload !== null && offload.needsChecksum) good = fillPartialChecksum(buf, frameAt, length, offload.checksumStart, offload.checksumOffset);
    const checksum = good ? rxChecksumGood(parsed) : 0;
    let ppi = at + RndisMessageSize.Packet;
    ppi += writeU32Ppi(buf, ppi, PpiType.TcpIpChecksum, checksum);
    if (hash !== NO_HASH) writeU32Ppi(buf, ppi, PpiType.HashValue, hash);
    return this.sendOneFrame(index, messageLength, length);
  }

  /** Sends sub-allocation `index`, one RNDIS message of `messageLength` bytes carrying a `length`-byte frame. False: no ring room, and it is freed. */
  private sendOneFrame(index: number, messageLength: number, length: number): boolean {
    const rb = this.nic.receiveBuffer!;
    this.setRange(0, rb.offsetOf(index), messageLength);
    if (this.writer === null || !this.sendTransferPage(index, RndisChannelType.Data, 1)) {
      rb.free(index);
      this.stats.rxDropped++;
      return false;
    }
    this.stats.rxFrames++;
    this.stats.rxBytes += length;
    return true;
  }

  /**
   * A large TCP segment for a guest that turned RSC on, sent whole: copied into
   * fragments of one sub-allocation each (sendCoalesced sends them). False: no room.
   */
  deliverCoalesced(frame: Uint8Array, length: number, checksum: number, hash: number): boolean {
    const rb = this.nic.receiveBuffer;
    if (rb === null || this.writer === null) return false;
    this.flushReceives();
    const fragments = coalescedFragmentCount(length, rb.subAllocSize);
    if (fragments > MAX_COALESCED_FRAGMENTS || rb.freeCount < fragments) {
      this.stats.rxDropped++;
      return false;
    }
    const indices = this.coalescedIndices;
    for (let i = 0, done = 0; i < fragments; i++) {
      const index = rb.allocate(); // cannot fail: freeCount was checked
      indices[i] = index;
      const dataAt = fragmentDataOffset(i);
      const n = Math.min(rb.subAllocSize - dataAt, length - done);
      rb.bytes.set(frame.subarray(done, done + n), rb.offsetOf(index) + dataAt);
      done += n;
    }
    return this.sendCoalesced(indices, fragments, length, checksum, hash);
  }

  /**
   * Sends a segment whose bytes already lie in sub-allocations indices[0, count), at
   * the fixed fragment data offsets, as one transfer-page packet (Linux drops a segment
   * whose fragments span packets). Every fragment is an RNDIS PACKET with the PKTINFO_ID
   * PPI (sub-allocation, first, last); the first also carries the checksum verdict and
   * the RSS hash, which Linux applies to the whole segment (rsc_add_data). The PPIs go
   * right before the data. The IP header must already describe the whole segment. The
   * sub-allocations become one packet's; on false (no ring room) they are freed.
   */
  sendCoalesced(indices: Int32Array, count: number, length: number, checksum: number, hash: number): boolean {
    const rb = this.nic.receiveBuffer!;
    // A segment's fragments are one packet of their own, after the frames gathered before it.
    this.flushReceives();
    const buf = rb.bytes;
    const id = (this.coalescedId = (this.coalescedId + 1) & 0xffff);
    const head = indices[0]!;
    for (let i = 0, done = 0; i < count; i++) {
      const index = indices[i]!;
      if (i > 0) rb.chain(indices[i - 1]!, index);
      const first = i === 0;
      const last = i === count - 1;
      const dataAt = fragmentDataOffset(i);
      const n = Math.min(rb.subAllocSize - dataAt, length - done);
      const ppiBytes = first ? PPI_U32_RECORD_SIZE * (hash !== NO_HASH ? 3 : 2) : PPI_U32_RECORD_SIZE;
      const at = rb.offsetOf(index);
      encodeRndisPacketHeaderAt(buf, at, dataAt - ppiBytes, ppiBytes, dataAt, n);
      let ppi = at + dataAt - ppiBytes;
      const flags = PacketInfoIdFlag.SubAllocation | (first ? PacketInfoIdFlag.FirstFragment : 0) | (last ? PacketInfoIdFlag.LastFragment : 0);
      ppi += writePacketIdPpi(buf, ppi, flags, id);
      if (first) {
        ppi += writeU32Ppi(buf, ppi, PpiType.TcpIpChecksum, checksum);
        if (hash !== NO_HASH) writeU32Ppi(buf, ppi, PpiType.HashValue, hash);
      }
      this.setRange(i, at, dataAt + n);
      done += n;
    }
    if (this.writer === null || !this.sendTransferPage(head, RndisChannelType.Data, count)) {
      rb.free(head);
      this.stats.rxDropped++;
      return false;
    }
    this.stats.rxFrames++;
    this.stats.rxCoalesced++;
    this.stats.rxBytes += length;
    return true;
  }

  /**
   * Sends a frame read in place into sub-allocation `index`, at the first fragment's data
   * offset; its PPIs go right before it. The range joins the packet being filled (see
   * pendingRanges). False: the channel cannot send, and the sub-allocation is freed.
   */
  deliverInPlace(index: number, length: number, checksum: number, hash: number): boolean {
    const rb = this.nic.receiveBuffer!;
    if (this.writer === null) {
      rb.free(index);
      this.stats.rxDropped++;
      return false;
    }
    const buf = rb.bytes;
    const at = rb.offsetOf(index);
    const dataAt = FIRST_FRAGMENT_DATA_OFFSET;
    const ppiBytes = PPI_U32_RECORD_SIZE * (hash !== NO_HASH ? 2 : 1);
    encodeRndisPacketHeaderAt(buf, at, dataAt - ppiBytes, ppiBytes, dataAt, length);
    const ppi = at + dataAt - ppiBytes;
    writeU32Ppi(buf, ppi, PpiType.TcpIpChecksum, checksum);
    if (hash !== NO_HASH) writeU32Ppi(buf, ppi + PPI_U32_RECORD_SIZE, PpiType.HashValue, hash);
    if (this.pendingRanges === MAX_COALESCED_FRAGMENTS) this.flushReceives();
    this.setRange(this.pendingRanges, at, dataAt + length);
    if (this.pendingRanges === 0) {
      this.pendingHead = index;
      // A backend that never ends its batches still gets its frames out this turn.
      if (!this.pendingFlushQueued) {
        this.pendingFlushQueued = true;
        queueMicrotask(this.flushReceivesBound);
      }
    } else rb.chain(this.pendingTail, index);
    this.pendingTail = index;
    this.pendingRanges++;
    this.pendingBytes += length;
    return true;
  }

  /** Sends the packet of frames read in place (one transfer-page packet, one completion for all). */
  flushReceives(): void {
    const count = this.pendingRanges;
    if (count === 0) return;
    const head = this.pendingHead;
    const bytes = this.pendingBytes;
    this.forgetPending();
    if (this.writer === null || !this.sendTransferPage(head, RndisChannelType.Data, count)) {
      this.nic.receiveBuffer?.free(head);
      this.stats.rxDropped += count;
      return;
    }
    this.stats.rxFrames += count;
    this.stats.rxBytes += bytes;
  }

  /** The channel stops, or the receive buffer goes: frames read in place and not sent go back to the receive buffer. */
  dropPendingReceives(): void {
    if (this.pendingRanges === 0) return;
    this.nic.receiveBuffer?.free(this.pendingHead);
    this.stats.rxDropped += this.pendingRanges;
    this.forgetPending();
  }

  /** No packet is being filled any more (it was sent or dropped). */
  private forgetPending(): void {
    this.pendingRanges = this.pendingBytes = 0;
    this.pendingHead = this.pendingTail = -1;
  }

  queueControl(message: Uint8Array, length: number): void {
    if (this.open === null) return;
    if (this.controlQueue.length >= MAX_QUEUED_CONTROL) {
      this.stats.controlDropped++;
      return;
    }
    this.controlQueue.push(message.slice(0, length));
    if (!this.serving) {
      try {
        this.flushControl();
      } catch (e) {
        this.failOn(e);
      }
    }
  }

  private flushControl(): void {
    const queue = this.controlQueue;
    if (queue.length === 0 || this.writer === null) return;
    this.flushReceives();
    const rb = this.nic.receiveBuffer;
    if (rb === null) {
      // RNDIS before SEND_RECV_BUF: there is nowhere to put the answer.
      this.stats.controlDropped += queue.length;
      queue.length = 0;
      return;
    }
    let sent = 0;
    while (sent < queue.length) {
      const message = queue[sent]!;
      if (message.length > rb.subAllocSize) {
        this.stats.controlDropped++;
        sent++;
        continue;
      }
      const index = rb.allocate();
      if (index < 0) break; // the next completion flushes again
      rb.bytes.set(message, rb.offsetOf(index));
      this.setRange(0, rb.offsetOf(index), message.length);
      if (!this.sendTransferPage(index, RndisChannelType.Control, 1)) {
        rb.free(index);
        this.roomFor(RECEIVE_RING_BYTES); // sets pending_send_sz: the guest signals when it has read
        break;
      }
      this.stats.controlSent++;
      sent++;
    }
    if (sent > 0) queue.splice(0, sent);
  }

  private setRange(i: number, byteOffset: number, byteCount: number): void {
    const r = this.transferRanges[i]!;
    r.byteOffset = byteOffset;
    r.byteCount = byteCount;
  }

  /**
   * A transfer-page packet naming the first `rangeCount` transfer ranges (set before) and
   * SEND_RNDIS_PKT; its transaction id names the packet's first sub-allocation, `index`.
   */
  private sendTransferPage(index: number, channelType: number, rangeCount: number): boolean {
    const writer = this.writer!;
    const rb = this.nic.receiveBuffer!;
    this.batch.begin(this.writer);
    const headerBytes = transferPageHeaderSize(rangeCount);
    const body = writer.reserve(
      PacketType.DataUsingTransferPages,
      PACKET_FLAG_COMPLETION_REQUESTED,
      rb.transactionIdFor(index),
      headerBytes + NVSP_MESSAGE_SIZE,
      headerBytes,
    );
    if (body < 0) return false;
    const target = writer.target;
    encodeTransferPageHeader(this.nic.receiveBufferId, false, this.transferRanges, target, body, rangeCount);
    encodeRndisPacketMessage(target, body + headerBytes, channelType, NVSP_INVALID_SECTION_INDEX, 0, NVSP_MESSAGE_SIZE);
    this.wrote(writer.commit());
    return true;
  }

  // ---- batching and signals ----

  private wrote(result: number): void {
    this.stats.packetsOut++;
    if (result === WRITE_SIGNAL) this.signalGuest();
  }

  private signalGuest(): void {
    this.stats.signalsOut++;
    this.open!.signalGuest();
  }

  private scheduleRetry(): void {
    if (this.retryTimer !== null) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.serve();
    }, TX_RETRY_MS);
  }

  // ---- failure ----

  private failOn(e: unknown): void {
    const open = this.open;
    const reason = e instanceof RingCorruptError ? e.message : `internal error: ${(e as Error)?.stack ?? e}`;
    this.options.log(`netvsp: channel ${this.subChannelIndex} failed: ${reason}`);
    if (open === null) return;
    this.detach();
    open.fail(reason);
  }

  private problems = 0;

  private problem(message: string): void {
    // A hostile guest must not turn into a flood of log lines.
    const n = ++this.problems;
    if (n <= 100 || n % 1000 === 0) this.options.log(`netvsp: channel ${this.subChannelIndex}: ${message}${n > 100 ? ` (${n} so far)` : ''}`);
  }
}

function emptyCounters(subChannelIndex: number): NetvspChannelCounters {
  return {
    subChannelIndex,
    packetsIn: 0,
    packetsOut: 0,
    signalsIn: 0,
    signalsOut: 0,
    txFrames: 0,
    txBytes: 0,
    txDropped: 0,
    txInPlace: 0,
    rxFrames: 0,
    rxBytes: 0,
    rxCoalesced: 0,
    rxDropped: 0,
    controlRequests: 0,
    controlSent: 0,
    badMessages: 0,
    badCompletions: 0,
    controlDropped: 0,
  };
}

function writeU32(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
  b[o + 2] = (v >>> 16) & 0xff;
  b[o + 3] = (v >>> 24) & 0xff;
}
