// One StorVSP channel (the primary or a sub-channel) serving its rings: drain the
// guest's requests when it signals, answer the handshake, hand SCSI commands to the
// bus, and write each completion to the ring the request came in on as soon as it
// finishes. The data path allocates nothing: requests live in pooled slots (a free
// list), completions that find the ring full wait in an intrusive backlog and go out
// when the guest frees room (pending_send_sz), and a guest that floods faster than
// commands complete is held back by leaving its packets in the ring.
//
// Signals cost a wake-up on each side, so under load there are few: the completions of
// one turn of the event loop are published together (one signal at most), and while
// commands are in flight the incoming ring stays masked and each completion batch looks
// for new requests instead of the guest signalling (with a 1 ms fallback to interrupts
// when completions stop, so a stuck command never holds up the rest).
//
// The object outlives an open: attach() binds the rings of a new open, detach() lets
// them go. Commands still running at detach complete into nothing (the generation
// check) and their slots come back to the pool.
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { Poller } from '../../sys/epoll.js';
import { PacketType } from '../../vmbus/packet.js';
import { RingCorruptError } from '../../vmbus/ring/ring-errors.js';
import { RingReader, type PacketView } from '../../vmbus/ring/ring-reader.js';
import { ringPacketBytes, RingWriter, WRITE_FULL, WRITE_SIGNAL } from '../../vmbus/ring/ring-writer.js';
import { RingWriteBatch } from '../../vmbus/ring/ring-write-batch.js';
import type { OpenChannel } from '../../vmbus/server/vmbus-device.js';
import { ScsiStatus } from '../scsi/scsi-command.js';
import {
  decodeVstorPacket,
  encodeChannelProperties,
  encodeProtocolVersion,
  encodeVstorHeader,
  NtStatus,
  SrbStatus,
  VSTOR_PACKET_SIZE,
  VstorOperation,
  VstorPacket,
} from './storvsp-protocol.js';
import { StorvspHandshake, type HandshakeConfig } from './storvsp-handshake.js';
import { ReplyKind, StorvspRequest, type RequestOwner } from './storvsp-request.js';
import { SrbDecoder, SrbRejection, srbRejectionText, type RangeHeader } from './storvsp-srb.js';

/** Largest packet accepted from the guest; a legitimate one is ~2 KiB (1 MiB of PFNs). A larger one breaks the ring. */
const MAX_PACKET_BYTES = 65536;
/** Ring bytes of every packet we send (a 64-byte vstor_packet, no header). */
const REPLY_RING_BYTES = ringPacketBytes(VSTOR_PACKET_SIZE);
/** Slots made when a channel first opens, and the most it will ever have. */
const INITIAL_SLOTS = 64;
const MAX_SLOTS = 512;
/** How long the incoming ring stays masked without a completion before interrupts resume (see drain). */
const POLL_IDLE_MS = 1;
/**
 * Completions published to the guest in pieces of this many (see RingWriteBatch): the
 * guest starts resubmitting while the rest of a burst is written. 4 measured best for
 * 4 KiB QD32 on this project's machines (2, 8 and 16 did worse).
 */
const COMPLETIONS_PER_PUBLISH = 4;

/** What a channel needs from its device. */
export interface StorvspBusPort {
  /**
   * Runs a prepared command on the addressed unit (sets request.tracker if it counts it).
   * False: no unit there and nothing answered it; the channel replies INVALID_LUN.
   */
  execute(request: StorvspRequest): boolean;
  /** The guest asked for `count` sub-channels and was told yes: offer those not yet offered. */
  createSubchannels(count: number): void;
  /** The primary's negotiated protocol version (sub-channels inherit it). */
  readonly protocolVersion: number;
  log(message: string): void;
}

export interface StorvspChannelOptions extends HandshakeConfig {
  subChannelIndex: number;
  poller: Poller;
  port: StorvspBusPort;
}

export interface StorvspChannelCounters {
  subChannelIndex: number;
  packetsIn: number;
  packetsOut: number;
  /** EXECUTE_SRB packets received. */
  requests: number;
  signalsIn: number;
  signalsOut: number;
}

export class StorvspChannel implements RequestOwner {
  readonly subChannelIndex: number;
  readonly stats: StorvspChannelCounters;
  readonly handshake: StorvspHandshake;

  private open: OpenChannel | null = null;
  private reader: RingReader | null = null;
  private writer: RingWriter | null = null;
  private token = 0;
  /** Bumped at every attach and detach: a slot from another generation is not answered. */
  private generation = 0;
  private memory: GuestMemory | null = null;
  private hostBase = 0;

  private freeHead: StorvspRequest | null = null;
  private slotCount = 0;
  private backlogHead: StorvspRequest | null = null;
  private backlogTail: StorvspRequest | null = null;
  /** Draining or flushing now: completions arriving meanwhile just queue. */
  private serving = false;
  /** The drain stopped for want of a slot; packets wait in the ring until one frees. */
  private starved = false;
  /** An ENUMERATE_BUS is owed to the guest and waits for ring space. */
  private enumeratePending = false;
  /** Commands of this open handed to units and not yet completed. */
  private inflight = 0;
  /** The incoming ring is left masked while commands are in flight: completions look at it instead. */
  private polling = false;
  /**
   * No completion came for POLL_IDLE_MS while polling (a slow or stuck command): back to
   * interrupts, so new requests (a reset, I/O to another disk) never wait on it.
   */
  private pollExpired = false;
  private readonly pollTimer: NodeJS.Timeout;
  /** Writes since the batch opened are staged and published (one signal at most) when the turn ends. */
  /** A command completed inside the open batch: look for new requests when it closes. */
  private completedInBatch = false;
  /** Stages writes until the end of this turn of the event loop: a burst of completions is one publish and at most one signal. */
  private readonly batch: RingWriteBatch;

  private readonly packet = new VstorPacket();
  private readonly payload = new Uint8Array(VSTOR_PACKET_SIZE);
  private readonly notification = new Uint8Array(VSTOR_PACKET_SIZE);
  private headerScratch: Uint8Array | null = null;
  private readonly rangeHeader: RangeHeader = { bytes: this.payload, offset: 0, length: 0 };
  private readonly srb: SrbDecoder;
  private readonly iovecCapacity: number;
  private readonly onSignal: () => void;

  constructor(private readonly options: StorvspChannelOptions) {
    this.subChannelIndex = options.subChannelIndex;
    this.stats = { subChannelIndex: options.subChannelIndex, packetsIn: 0, packetsOut: 0, requests: 0, signalsIn: 0, signalsOut: 0 };
    this.handshake = new StorvspHandshake(options);
    this.srb = new SrbDecoder(options.maxTransferBytes);
    // A buffer of max_transfer bytes at any page offset spans max/4096 + 1 pages.
    this.iovecCapacity = options.maxTransferBytes / 4096 + 2;
    encodeVstorHeader(this.notification, 0, VstorOperation.EnumerateBus, 0, 0);
    this.onSignal = () => this.guestSignalled();
    this.batch = new RingWriteBatch(() => this.signalGuest(), (e) => this.failOn(e), () => this.afterPublish(), COMPLETIONS_PER_PUBLISH);
    // One timer for the channel's life, re-armed with refresh() (no allocation); it fires
    // once now, harmlessly, and never keeps the process alive.
    this.pollTimer = setTimeout(() => this.pollIdle(), POLL_IDLE_MS);
    this.pollTimer.unref();
  }

  get isOpen(): boolean {
    return this.open !== null;
  }

  get openChannel(): OpenChannel | null {
    return this.open;
  }

  get ready(): boolean {
    return this.open !== null && this.handshake.ready;
  }

  /** Binds the rings of a new open and starts serving them. Throws (before watching anything) if the rings are unusable. */
  attach(open: OpenChannel): void {
    if (this.open !== null) throw new Error(`sub-channel ${this.subChannelIndex} is already open`);
    const reader = new RingReader(open.incoming, { maxPacketBytes: MAX_PACKET_BYTES });
    const writer = new RingWriter(open.outgoing);
    if (this.memory !== open.memory) {
      // Slots point at one guest RAM; a different one (never in practice) gets a fresh pool.
      this.freeHead = null;
      this.slotCount = 0;
      this.memory = open.memory;
      this.hostBase = Number(open.memory.base);
    }
    this.headerScratch = open.incoming.doubleMapped ? null : new Uint8Array(Math.min(MAX_PACKET_BYTES, open.incoming.dataSize));
    this.generation++;
    this.reader = reader;
    this.writer = writer;
    this.starved = false;
    this.enumeratePending = false;
    this.inflight = 0;
    this.polling = false;
    this.pollExpired = false;
    this.batch.drop();
    const s = this.stats;
    s.packetsIn = s.packetsOut = s.requests = s.signalsIn = s.signalsOut = 0;
    if (this.subChannelIndex === 0) this.handshake.reset();
    else this.handshake.startReady(this.options.port.protocolVersion);
    while (this.slotCount < INITIAL_SLOTS) this.release(this.newSlot());
    // Watch first: if that fails the channel stays closed (handlers only run on a later turn).
    this.token = this.options.poller.add(open.guestSignal.fd, this.onSignal);
    this.open = open;
  }

  /** Stops touching the rings (close, rescind, failure). Commands in flight complete into nothing. */
  detach(): void {
    if (this.open === null) return;
    this.options.poller.remove(this.token);
    this.open = null;
    this.reader = null;
    this.writer = null;
    this.generation++;
    this.starved = false;
    this.enumeratePending = false;
    this.inflight = 0;
    this.polling = false;
    // A batch still open is dropped with the writer: nothing more is published to a closed ring.
    this.batch.drop();
    let request = this.backlogHead;
    this.backlogHead = this.backlogTail = null;
    while (request !== null) {
      const next = request.next;
      request.next = null;
      this.release(request);
      request = next;
    }
  }

  /** Tells the guest the bus changed (hot add/remove): an unsolicited ENUMERATE_BUS, trans id 0. */
  notifyBusChanged(): void {
    if (!this.ready) return;
    this.enumeratePending = true;
    if (this.backlogHead !== null || this.serving) return; // goes out after the backlog
    try {
      this.flushBacklog();
    } catch (e) {
      this.failOn(e);
    }
  }

  // ---- serving the incoming ring ----

  private guestSignalled(): void {
    const open = this.open;
    if (open === null) return;
    try {
      open.guestSignal.drain();
    } catch (e) {
      this.options.port.log(`scsi: sub-channel ${this.subChannelIndex}: reading the guest signal failed: ${(e as Error).message}`);
    }
    this.stats.signalsIn++;
    this.serve();
  }

  private serve(): void {
    if (this.open === null || this.serving) return;
    this.serving = true;
    try {
      this.batch.begin(this.writer);
      this.flushBacklog();
      if (this.open !== null) this.drain();
    } catch (e) {
      this.failOn(e);
    } finally {
      this.serving = false;
    }
  }

  private drain(): void {
    const reader = this.reader!;
    this.starved = false;
    for (;;) {
      reader.maskInterrupts();
      let packet: PacketView | null;
      while ((packet = reader.peek()) !== null) {
        const request = this.takeSlot();
        if (request === null) {
          // Every slot is busy: leave the rest in the ring (interrupts stay masked); the
          // next completion resumes the drain.
          this.starved = true;
          return;
        }
        this.stats.packetsIn++;
        this.handlePacket(reader, packet, request);
        if (this.open === null) return; // the channel failed while handling it
        reader.next();
        // Keep read_index current (the guest signals only on the empty to non-empty edge
        // it sees) and wake a guest writer blocked on pending_send_sz.
        if (reader.commit()) this.signalGuest();
      }
      if (this.inflight > 0 && !this.pollExpired) {
        // Commands are running: their completions will look at the ring again, so the
        // guest need not signal (interrupt_mask stays set) while they keep coming. Under
        // load this replaces most guest-to-host signals and their wake-ups.
        this.polling = true;
        this.pollTimer.refresh();
        return;
      }
      this.polling = false;
      if (!reader.unmaskInterrupts()) return;
    }
  }

  private handlePacket(reader: RingReader, packet: PacketView, request: StorvspRequest): void {
    request.transactionIdLow = packet.transactionIdLow;
    request.transactionIdHigh = packet.transactionIdHigh;
    request.generation = this.generation;
    request.replyType = PacketType.Completion;
    request.replyFlags = 0;
    const type = packet.type;
    if (type !== PacketType.DataInband && type !== PacketType.DataUsingGpaDirect) {
      // Nothing storvsc sends; no reply is owed for a packet we do not understand the shape of.
      this.problem(`ignored packet type ${type}`);
      this.release(request);
      return;
    }
    // The vstor_packet is read in place when the ring holds it whole and contiguous (always,
    // with the server's double mapping); otherwise from a zero-padded copy.
    let bytes: Uint8Array;
    let offset: number;
    let length: number;
    if (packet.contiguous && packet.payloadLength >= VSTOR_PACKET_SIZE) {
      bytes = reader.mem.data;
      offset = packet.payloadOffset;
      length = VSTOR_PACKET_SIZE;
    } else {
      length = reader.copyPayload(this.payload);
      this.payload.fill(0, length);
      bytes = this.payload;
      offset = 0;
    }
    if (length < 4) {
      this.problem(`packet of ${length} bytes is too short for an operation`);
      this.reply(request, NtStatus.InvalidParameter);
      return;
    }
    const operation = (bytes[offset]! | (bytes[offset + 1]! << 8) | (bytes[offset + 2]! << 16) | (bytes[offset + 3]! << 24)) >>> 0;
    if (operation === VstorOperation.ExecuteSrb) {
      this.executeSrb(reader, packet, bytes, offset, length, request);
      return;
    }
    const p = this.packet;
    decodeVstorPacket(bytes, offset, length, p);
    if (type !== PacketType.DataInband) {
      this.problem(`operation ${p.operation} in a GPA-direct packet`);
      this.reply(request, NtStatus.InvalidParameter);
      return;
    }
    const hs = this.handshake;
    switch (p.operation) {
      case VstorOperation.BeginInitialization:
        this.reply(request, hs.begin());
        return;
      case VstorOperation.QueryProtocolVersion: {
        const status = hs.queryVersion(p.majorMinor);
        request.encodeControlReply(status);
        encodeProtocolVersion(request.reply, 0, p.majorMinor, 0);
        this.send(request);
        return;
      }
      case VstorOperation.QueryProperties: {
        const status = hs.queryProperties();
        request.encodeControlReply(status);
        if (status === NtStatus.Success) encodeChannelProperties(request.reply, 0, hs.maxSubchannels, hs.multiChannelFlags, hs.maxTransferBytes);
        this.send(request);
        return;
      }
      case VstorOperation.EndInitialization:
        this.reply(request, hs.end());
        return;
      case VstorOperation.CreateSubChannels: {
        const count = p.subChannelCount;
        const status = hs.createSubchannels(count, this.subChannelIndex === 0);
        this.reply(request, status);
        // The guest waits for the reply, then attaches offers as they come.
        if (status === NtStatus.Success) this.options.port.createSubchannels(count);
        return;
      }
      case VstorOperation.ResetBus:
      case VstorOperation.ResetLun:
      case VstorOperation.ResetAdapter:
        // storvsc waits for its outstanding I/O itself after the reset completes, and every
        // command here completes on its own: nothing to abort.
        this.reply(request, hs.ready ? NtStatus.Success : NtStatus.InvalidDeviceState);
        return;
      default:
        this.problem(`unknown operation ${p.operation}`);
        this.reply(request, NtStatus.InvalidDeviceRequest);
    }
  }

  private executeSrb(reader: RingReader, packet: PacketView, bytes: Uint8Array, offset: number, length: number, request: StorvspRequest): void {
    this.stats.requests++;
    let header: RangeHeader | null = null;
    if (packet.type === PacketType.DataUsingGpaDirect) {
      header = this.rangeHeader;
      if (packet.contiguous) {
        header.bytes = reader.mem.data;
        header.offset = packet.headerOffset;
        header.length = packet.headerLength;
      } else {
        const scratch = this.headerScratch!;
        header.bytes = scratch;
        header.offset = 0;
        header.length = reader.copyHeader(scratch);
      }
    }
    const rejection = this.srb.prepare(bytes, offset, length, header, this.memory!, this.hostBase, request);
    if (!this.handshake.ready) {
      request.setSrbError(NtStatus.InvalidDeviceState, SrbStatus.InvalidRequest, ScsiStatus.Good);
      this.send(request);
      return;
    }
    if (rejection !== SrbRejection.None) {
      this.problem(`EXECUTE_SRB rejected: ${srbRejectionText(rejection)}`);
      request.setSrbError(NtStatus.InvalidParameter, SrbStatus.InvalidRequest, ScsiStatus.Good);
      this.send(request);
      return;
    }
    request.resetResults();
    request.inFlight = true;
    this.inflight++;
    let taken: boolean;
    try {
      taken = this.options.port.execute(request);
    } catch (e) {
      // A unit bug: answer the guest (an I/O never completed hangs it) and retire the slot,
      // since the unit may still complete it later.
      this.options.port.log(`scsi: unit failed on opcode 0x${request.cdb[0]!.toString(16)}: ${(e as Error).stack ?? e}`);
      if (request.inFlight) {
        request.inFlight = false;
        this.inflight--;
        request.quarantined = true;
        this.untrack(request);
        request.setSrbError(NtStatus.Unsuccessful, SrbStatus.InternalError, ScsiStatus.Good);
        this.send(request);
      }
      return;
    }
    if (!taken && request.inFlight) {
      request.inFlight = false;
      this.inflight--;
      this.untrack(request);
      // No such LUN: the guest drops the device (DID_NO_CONNECT) and stops using it.
      request.setSrbError(NtStatus.DeviceDoesNotExist, SrbStatus.InvalidLun, ScsiStatus.CheckCondition);
      this.send(request);
    }
  }

  // ---- completions ----

  /** A unit finished a command (RequestOwner): answer it on this channel if it is still the same open. */
  requestDone(request: StorvspRequest): void {
    if (!request.inFlight) {
      this.options.port.log(`scsi: a unit completed a command twice (opcode 0x${request.cdb[0]!.toString(16)})`);
      return;
    }
    request.inFlight = false;
    this.untrack(request);
    if (request.generation !== this.generation || this.open === null) {
      this.release(request);
      return;
    }
    this.inflight--;
    request.setScsiResult();
    this.completedInBatch = true;
    this.pollExpired = false;
    try {
      this.batch.begin(this.writer);
      this.send(request);
      this.batch.wrote();
    } catch (e) {
      this.failOn(e);
    }
  }

  /** Polling found no completion for POLL_IDLE_MS: unmask (drain does it) and wait for signals again. */
  private pollIdle(): void {
    if (!this.polling || this.open === null) return;
    this.pollExpired = true;
    this.serve();
  }

  /** After each publish: completions free slots and, while the ring is masked, are how new requests are seen. */
  private afterPublish(): void {
    if (this.completedInBatch && !this.serving && (this.polling || this.starved)) {
      this.completedInBatch = false;
      this.serve();
    }
    this.completedInBatch = false;
  }

  private untrack(request: StorvspRequest): void {
    const tracker = request.tracker;
    if (tracker !== null) {
      request.tracker = null;
      tracker.requestDone();
    }
  }

  private reply(request: StorvspRequest, status: number): void {
    request.encodeControlReply(status);
    this.send(request);
  }

  /** Writes the slot's reply now, or queues it behind earlier ones until the guest makes room. */
  private send(request: StorvspRequest): void {
    if (this.open === null || request.generation !== this.generation) {
      this.release(request);
      return;
    }
    if (this.backlogHead === null && this.write(request)) {
      this.release(request);
      return;
    }
    request.next = null;
    if (this.backlogTail === null) this.backlogHead = request;
    else this.backlogTail.next = request;
    this.backlogTail = request;
    // Ask the guest to signal once it has read enough; if it already has, flush now.
    if (this.writer!.setPendingSend(REPLY_RING_BYTES)) this.flushBacklog();
  }

  private flushBacklog(): void {
    const writer = this.writer;
    if (writer === null) return;
    let request: StorvspRequest | null;
    while ((request = this.backlogHead) !== null) {
      if (!this.write(request)) {
        if (writer.setPendingSend(REPLY_RING_BYTES)) continue;
        return;
      }
      this.backlogHead = request.next;
      if (this.backlogHead === null) this.backlogTail = null;
      request.next = null;
      this.release(request);
    }
    while (this.enumeratePending) {
      const result = writer.tryWrite(PacketType.DataInband, 0, 0, null, this.notification);
      if (result === WRITE_FULL) {
        if (writer.setPendingSend(REPLY_RING_BYTES)) continue;
        return;
      }
      this.enumeratePending = false;
      this.wrote(result);
    }
    writer.clearPendingSend();
  }

  /** One reply into the ring; false when it does not fit. */
  private write(request: StorvspRequest): boolean {
    const writer = this.writer!;
    if (request.replyKind === ReplyKind.Srb) {
      // Encoded straight into the ring: no scratch copy on the data path.
      const body = writer.reserve(request.replyType, request.replyFlags, request.transactionId(), VSTOR_PACKET_SIZE);
      if (body < 0) return false;
      request.encodeSrbReply(writer.target, body);
      this.wrote(writer.commit());
      return true;
    }
    const result = writer.tryWrite(request.replyType, request.replyFlags, request.transactionId(), null, request.reply);
    if (result === WRITE_FULL) return false;
    this.wrote(result);
    return true;
  }

  private wrote(result: number): void {
    this.stats.packetsOut++;
    if (result === WRITE_SIGNAL) this.signalGuest();
  }

  private signalGuest(): void {
    this.stats.signalsOut++;
    this.open!.signalGuest();
  }

  // ---- slots ----

  private takeSlot(): StorvspRequest | null {
    const request = this.freeHead;
    if (request !== null) {
      this.freeHead = request.next;
      request.next = null;
      return request;
    }
    return this.slotCount < MAX_SLOTS ? this.newSlot() : null;
  }

  private newSlot(): StorvspRequest {
    this.slotCount++;
    return new StorvspRequest(this, this.memory!, this.iovecCapacity);
  }

  private release(request: StorvspRequest): void {
    // A quarantined slot may still be completed by its unit; one from another RAM belongs to an old pool.
    if (request.quarantined || request.memory !== this.memory) return;
    request.tracker = null;
    request.next = this.freeHead;
    this.freeHead = request;
  }

  // ---- failure ----

  private failOn(e: unknown): void {
    const open = this.open;
    const reason = e instanceof RingCorruptError ? e.message : `internal error: ${(e as Error)?.stack ?? e}`;
    this.options.port.log(`scsi: sub-channel ${this.subChannelIndex} failed: ${reason}`);
    if (open === null) return;
    this.detach();
    open.fail(reason);
  }

  private problems = 0;

  private problem(message: string): void {
    // A hostile guest must not turn into a flood of log lines.
    const n = ++this.problems;
    if (n <= 100 || n % 1000 === 0) this.options.port.log(`scsi: sub-channel ${this.subChannelIndex}: ${message}${n > 100 ? ` (${n} so far)` : ''}`);
  }
}
