// A channel's pair of rings as a packet pipe, the same on both ends: drain the incoming
// ring when the peer signals, write packets to the outgoing ring, and apply the
// signalling and flow-control rules (signal on empty to non-empty, tell a blocked peer
// writer when space frees, wait for space with pending_send_sz when we are blocked).
// Used by the control-plane devices (integration services) and the reference guest;
// high-rate devices drive RingReader/RingWriter directly in their own workers.
import { RingReader, type PacketView } from './ring/ring-reader.js';
import { RingWriter, WRITE_FULL, WRITE_SIGNAL } from './ring/ring-writer.js';
import { RingCorruptError } from './ring/ring-errors.js';
import type { RingMemory } from './ring/ring-memory.js';
import { PacketType } from './packet.js';

export type PacketHandler = (packet: PacketView, payload: Uint8Array) => void;
/** A packet's payload where it lies: bytes[offset, offset + length), valid during the call only. */
export type PacketAtHandler = (packet: PacketView, bytes: Uint8Array, offset: number, length: number) => void;

export interface RingChannelOptions {
  incoming: RingMemory;
  outgoing: RingMemory;
  /** Signal the peer (host: set the event flag and interrupt; guest: HvSignalEvent). */
  notifyPeer: () => void;
  /** Each packet with its payload as a view of its own. Give this or onPacketAt. */
  onPacket?: PacketHandler;
  /** Each packet with its payload where it lies, no view made per packet: for data paths. */
  onPacketAt?: PacketAtHandler;
  /** The ring broke the protocol (the peer is hostile or buggy): the owner closes the channel. */
  onCorrupt: (error: RingCorruptError) => void;
  maxPacketBytes?: number;
  /** Packets we hold while our outgoing ring is full; beyond this, send() fails. */
  maxBacklog?: number;
  /**
   * What the packet handlers send while a signal is being served goes out as one batch
   * at the end of it (one publish, one signal at most): how Linux's netvsc returns its
   * receive completions, at the end of each NAPI poll (send_recv_completions).
   */
  batchWhileDraining?: boolean;
}

interface Backlogged {
  type: number;
  flags: number;
  transactionId: bigint | number;
  header: Uint8Array | null;
  payload: Uint8Array;
}

export class RingChannel {
  readonly reader: RingReader;
  readonly writer: RingWriter;
  /** backlogged: packets that found the ring full and waited for space. */
  readonly stats = { packetsIn: 0, packetsOut: 0, signalsIn: 0, signalsOut: 0, bytesIn: 0, bytesOut: 0, backlogged: 0 };
  private readonly backlog: Backlogged[] = [];
  private readonly maxBacklog: number;
  private readonly payloadScratch: Uint8Array;
  private broken = false;
  private draining = false;
  private batching = false;

  constructor(private readonly options: RingChannelOptions) {
    if ((options.onPacket === undefined) === (options.onPacketAt === undefined)) throw new TypeError('a RingChannel takes one of onPacket and onPacketAt');
    const maxPacketBytes = options.maxPacketBytes ?? 65536;
    this.reader = new RingReader(options.incoming, { maxPacketBytes });
    this.writer = new RingWriter(options.outgoing);
    this.maxBacklog = options.maxBacklog ?? 256;
    this.payloadScratch = new Uint8Array(options.incoming.doubleMapped ? 0 : maxPacketBytes);
  }

  get isBroken(): boolean {
    return this.broken;
  }

  /** The peer signalled us: read everything, then retry what was waiting for space. */
  onSignal(): void {
    if (this.broken || this.draining) return;
    this.stats.signalsIn++;
    this.draining = true;
    const batch = this.options.batchWhileDraining === true;
    if (batch) this.beginBatch();
    try {
      this.drain();
      this.flushBacklog();
    } catch (e) {
      if (e instanceof RingCorruptError) this.fail(e);
      else throw e;
    } finally {
      this.draining = false;
      if (batch) this.endBatch();
    }
  }

  /**
   * Sends one packet (payload copied into the ring). Returns false if it had to be
   * dropped because the ring is full and the backlog too. `header` is the type-specific
   * header (a multiple of 8 bytes), e.g. a GPA-direct range list; a transaction id given
   * as a number must be a non-negative safe integer (no BigInt on a hot path).
   */
  send(payload: Uint8Array, transactionId: bigint | number, type: number = PacketType.DataInband, flags = 0, header: Uint8Array | null = null): boolean {
    if (this.broken) return false;
    if (this.backlog.length === 0) {
      try {
        const result = this.writer.tryWrite(type, flags, transactionId, header, payload);
        if (result !== WRITE_FULL) {
          this.noteSent(payload.length, result === WRITE_SIGNAL);
          return true;
        }
      } catch (e) {
        if (e instanceof RingCorruptError) {
          this.fail(e);
          return false;
        }
        throw e;
      }
    }
    if (this.backlog.length >= this.maxBacklog) return false;
    this.stats.backlogged++;
    this.backlog.push({ type, flags, transactionId, header: header === null ? null : header.slice(), payload: payload.slice() });
    // Ask the peer to signal once it has freed room for the first waiting packet.
    if (this.writer.setPendingSend(this.writer.packetBytes(backlogBytes(this.backlog[0]!)))) this.flushBacklog();
    return true;
  }

  /**
   * Starts a batch: packets sent until endBatch() are published together and the peer is
   * signalled at most once (a driver submitting a burst of requests, as Linux's blk-mq
   * commit_rqs does). Nested calls are no-ops.
   */
  beginBatch(): void {
    if (this.batching || this.broken) return;
    this.batching = true;
    this.writer.beginBatch();
  }

  /** Publishes the batch and signals the peer if the ring went from empty to non-empty. */
  endBatch(): void {
    if (!this.batching) return;
    this.batching = false;
    if (this.broken) return;
    try {
      if (this.writer.endBatch() === WRITE_SIGNAL) this.noteSent(0, true, false);
    } catch (e) {
      if (e instanceof RingCorruptError) this.fail(e);
      else throw e;
    }
  }

  /** Packets waiting for ring space (sent but not yet in the ring). */
  get backlogLength(): number {
    return this.backlog.length;
  }

  private noteSent(bytes: number, signal: boolean, packet = true): void {
    if (packet) {
      this.stats.packetsOut++;
      this.stats.bytesOut += bytes;
    }
    if (signal) {
      this.stats.signalsOut++;
      this.options.notifyPeer();
    }
  }

  private flushBacklog(): void {
    while (this.backlog.length > 0) {
      const next = this.backlog[0]!;
      const result = this.writer.tryWrite(next.type, next.flags, next.transactionId, next.header, next.payload);
      if (result === WRITE_FULL) {
        if (this.writer.setPendingSend(this.writer.packetBytes(backlogBytes(next)))) continue;
        return;
      }
      this.backlog.shift();
      this.noteSent(next.payload.length, result === WRITE_SIGNAL);
    }
    this.writer.clearPendingSend();
  }

  private drain(): void {
    const reader = this.reader;
    for (;;) {
      reader.maskInterrupts();
      let packet: PacketView | null;
      while ((packet = reader.peek()) !== null) {
        this.stats.packetsIn++;
        this.stats.bytesIn += packet.payloadLength;
        const at = this.options.onPacketAt;
        if (at !== undefined) {
          if (reader.mem.doubleMapped) at(packet, reader.mem.data, packet.payloadOffset, packet.payloadLength);
          else at(packet, this.payloadScratch, 0, reader.copyPayload(this.payloadScratch));
        } else {
          const payload = reader.mem.doubleMapped
            ? reader.mem.data.subarray(packet.payloadOffset, packet.payloadOffset + packet.payloadLength)
            : this.payloadScratch.subarray(0, reader.copyPayload(this.payloadScratch));
          this.options.onPacket!(packet, payload);
        }
        reader.next();
        if (this.broken) return;
        // Keep read_index current: the peer only signals on the empty to non-empty edge it sees.
        if (reader.commit()) this.notifyWriterSpace();
      }
      if (!reader.unmaskInterrupts()) return;
    }
  }

  private notifyWriterSpace(): void {
    this.stats.signalsOut++;
    this.options.notifyPeer();
  }

  private fail(error: RingCorruptError): void {
    if (this.broken) return;
    this.broken = true;
    this.backlog.length = 0;
    this.options.onCorrupt(error);
  }

  /** Stops using the rings (close, rescind, unload): nothing is read or written afterwards. */
  shutdown(): void {
    this.broken = true;
    this.backlog.length = 0;
  }
}

function backlogBytes(packet: Backlogged): number {
  return (packet.header === null ? 0 : packet.header.length) + packet.payload.length;
}
