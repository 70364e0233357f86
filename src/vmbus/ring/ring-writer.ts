// The sending end of one VMBus ring (spec 6.3 - 6.6; Linux hv_ringbuffer_write and
// hv_signal_on_write). The host sends on the guest-inbound ring, the reference guest on
// its outbound ring: the same class serves both.
//
// The writer owns write_index and pending_send_sz and reads read_index and
// interrupt_mask, which the other side owns and may set to anything: read_index is
// validated on every load, and every write lands inside the data area whatever it says.
import {
  DESCRIPTOR_OFFSET8_MIN,
  DESCRIPTOR_SIZE,
  PACKET_MAX_LEN8,
  PACKET_TRAILER_SIZE,
} from '../packet.js';
import { checkedRingIndex, ringFreeBytes } from './ring-index.js';
import { RingMemory, RingWord } from './ring-memory.js';

/** What a write did. Plain numbers so the hot path allocates nothing. */
export const WriteResult = {
  /** Not enough free space; nothing was written. */
  FULL: 0,
  /** Written (or, inside a batch, staged) and the reader needs no signal. */
  WRITTEN: 1,
  /** Written, and the ring went from empty to non-empty with interrupts unmasked: signal the reader. */
  WRITTEN_SIGNAL: 2,
} as const;
export type WriteResult = (typeof WriteResult)[keyof typeof WriteResult];
export const WRITE_FULL = WriteResult.FULL;
export const WRITE_WRITTEN = WriteResult.WRITTEN;
export const WRITE_SIGNAL = WriteResult.WRITTEN_SIGNAL;

/** Ring bytes a packet takes: descriptor, header and payload padded to 8, trailer. */
export function ringPacketBytes(headerAndPayloadBytes: number): number {
  return DESCRIPTOR_SIZE + ((headerAndPayloadBytes + 7) & ~7) + PACKET_TRAILER_SIZE;
}

export class RingWriter {
  private readonly header: Int32Array;
  private readonly data: Uint8Array;
  private readonly words: Uint32Array;
  private readonly words64: BigUint64Array;
  private readonly size: number;
  private readonly doubleMapped: boolean;

  /** Where the next packet goes; ahead of `published` inside a batch. */
  private writePos: number;
  /** The write_index the reader can see: the "old write index" for the signal decision. */
  private published: number;
  /**
   * The last read_index loaded. An honest reader only moves it forward, so free space
   * computed from it is a lower bound and it is reloaded only when a packet seems not to
   * fit; a dishonest one can only make us overwrite its own unread data.
   */
  private cachedRead: number;
  private batching = false;

  /** Where the packet being written ends (trailer included): writePos once it is committed. */
  private packetEnd = 0;
  // The open reservation (reserve() .. commit()), if any.
  private reserved = false;
  private reservedTarget: Uint8Array;
  private reservedBody = 0;
  private reservedBodyBytes = 0;
  private scratch: Uint8Array | null = null;

  constructor(readonly mem: RingMemory) {
    this.header = mem.header;
    this.data = mem.data;
    this.size = mem.dataSize;
    this.doubleMapped = mem.doubleMapped;
    if (this.data.byteOffset % 8 !== 0 || this.size % 8 !== 0 || this.size <= 0) {
      throw new RangeError('ring data area must be 8-byte aligned and a positive multiple of 8 bytes');
    }
    this.words = new Uint32Array(this.data.buffer, this.data.byteOffset, this.data.length >>> 2);
    this.words64 = new BigUint64Array(this.data.buffer, this.data.byteOffset, this.data.length >>> 3);
    this.reservedTarget = this.data;
    // Our own index lives in guest memory too: trust it no more than the other one.
    this.writePos = this.validate(Atomics.load(this.header, RingWord.WriteIndex), 'write_index');
    this.published = this.writePos;
    this.cachedRead = this.loadReadIndex();
  }

  /**
   * Where reserve()'s caller writes: mem.data, except for a single-mapped ring whose
   * packet body would cross the end of the data area. Then it is a scratch buffer that
   * commit() copies into the ring in two pieces (one extra copy, only for packets that
   * wrap; a double-mapped ring never needs it).
   */
  get target(): Uint8Array {
    return this.reservedTarget;
  }

  /** Ring bytes a packet with this much header + payload takes (what canWrite and setPendingSend want). */
  packetBytes(headerAndPayloadBytes: number): number {
    return ringPacketBytes(headerAndPayloadBytes);
  }

  /** Free bytes now (spec 6.4 bytes_free): a packet of n ring bytes fits when free() > n. */
  free(): number {
    this.cachedRead = this.loadReadIndex();
    return this.freeFrom(this.cachedRead);
  }

  /** Whether a packet of packetBytes ring bytes (see packetBytes) fits now. */
  canWrite(packetBytes: number): boolean {
    return this.freeFrom(this.cachedRead) > packetBytes || this.free() > packetBytes;
  }

  /**
   * Writes one packet. header (the type-specific header) must be a multiple of 8 bytes;
   * the payload is padded with zeros. Outside a batch the packet is published at once.
   * A transaction id given as a number must be a non-negative safe integer (no BigInt on
   * the hot path); ids beyond 2^53 (storvsc's U64_MAX - 2) need the bigint form.
   */
  tryWrite(type: number, flags: number, transactionId: bigint | number, header: Uint8Array | null, payload: Uint8Array | null): WriteResult {
    if (this.reserved) throw new Error('tryWrite() called while a reservation is open');
    const headerBytes = header === null ? 0 : header.length;
    const payloadBytes = payload === null ? 0 : payload.length;
    const body = this.begin(type, flags, transactionId, headerBytes, headerBytes + payloadBytes);
    if (body < 0) return WriteResult.FULL;
    if (header !== null) this.copyIn(header, body);
    if (payload !== null) this.copyIn(payload, body + headerBytes);
    return this.finish();
  }

  /**
   * Zero-copy write, part 1: claims room for a packet and writes its descriptor, padding
   * and trailer. The caller writes headerAndPayloadBytes bytes (type-specific header of
   * headerBytes, a multiple of 8, then payload) into `this.target` at the returned offset,
   * then calls commit(). Returns -1 when the ring is full.
   */
  reserve(type: number, flags: number, transactionId: bigint | number, headerAndPayloadBytes: number, headerBytes = 0): number {
    if (this.reserved) throw new Error('reserve() called while a reservation is open');
    const body = this.begin(type, flags, transactionId, headerBytes, headerAndPayloadBytes);
    if (body < 0) return -1;
    this.reserved = true;
    if (this.doubleMapped || body + headerAndPayloadBytes <= this.size) {
      this.reservedTarget = this.data;
      return body;
    }
    // Single mapping and the body crosses the seam: stage it.
    if (this.scratch === null || this.scratch.length < headerAndPayloadBytes) {
      this.scratch = new Uint8Array(Math.max(headerAndPayloadBytes, 4096));
    }
    this.reservedBody = body;
    this.reservedBodyBytes = headerAndPayloadBytes;
    this.reservedTarget = this.scratch;
    return 0;
  }

  /** Zero-copy write, part 2: publishes the reserved packet (or stages it inside a batch). */
  commit(): WriteResult {
    if (!this.reserved) throw new Error('commit() without reserve()');
    this.reserved = false;
    if (this.reservedTarget !== this.data) {
      this.copyIn(this.reservedTarget.subarray(0, this.reservedBodyBytes), this.reservedBody);
      this.reservedTarget = this.data;
    }
    return this.finish();
  }

  /** Drops an open reservation: nothing of it was published. */
  cancel(): void {
    this.reserved = false;
    this.reservedTarget = this.data;
  }

  /**
   * Starts a batch: packets are written but write_index is published once, by endBatch(),
   * and the reader is signalled at most once. A FULL inside a batch means: endBatch(),
   * signal if asked, then wait for space.
   */
  beginBatch(): void {
    this.batching = true;
  }

  /** Publishes everything written since beginBatch(); signals against the index from before the batch. */
  endBatch(): WriteResult {
    this.batching = false;
    return this.publish();
  }

  /**
   * Flow control for a writer that found the ring full: asks the reader to signal once
   * more than `bytes` are free (pass packetBytes(...) of the packet that did not fit).
   * Returns true if that much is already free, so the caller retries instead of sleeping
   * (the reader may have freed space before it saw the request). Call clearPendingSend()
   * once the packet is written.
   */
  setPendingSend(bytes: number): boolean {
    if (!Number.isInteger(bytes) || bytes <= 0 || bytes >= this.size) {
      throw new RangeError(`pending send size ${bytes} can never be satisfied by a ring of ${this.size} bytes`);
    }
    // The seq-cst store orders before the read_index load (the store -> load fence that
    // pairs with the reader's read_index store -> pending_send_sz load).
    Atomics.store(this.header, RingWord.PendingSendSize, bytes);
    return this.free() > bytes;
  }

  clearPendingSend(): void {
    Atomics.store(this.header, RingWord.PendingSendSize, 0);
  }

  /**
   * Blocks (through `sleep`, e.g. an epoll wait on the eventfd the reader signals) until
   * a packet of packetBytes ring bytes fits; sleeps only after pending_send_sz is set.
   */
  waitForSpace(packetBytes: number, sleep: () => void): void {
    if (this.canWrite(packetBytes)) return;
    while (!this.setPendingSend(packetBytes)) sleep();
    this.clearPendingSend();
  }

  /** Descriptor, padding and trailer; returns the ring position of the body or -1 if full. */
  private begin(type: number, flags: number, transactionId: bigint | number, headerBytes: number, bodyBytes: number): number {
    if (!Number.isInteger(headerBytes) || !Number.isInteger(bodyBytes) || (headerBytes & 7) !== 0 || headerBytes < 0 || bodyBytes < headerBytes) {
      throw new RangeError(`type-specific header must be a multiple of 8 bytes within the body, got ${headerBytes} of ${bodyBytes}`);
    }
    const len8 = Math.ceil((DESCRIPTOR_SIZE + bodyBytes) / 8);
    const total = len8 * 8 + PACKET_TRAILER_SIZE;
    if (len8 > PACKET_MAX_LEN8 || total >= this.size) {
      throw new RangeError(`packet of ${bodyBytes} bytes can never fit a ring of ${this.size} bytes`);
    }
    if (this.freeFrom(this.cachedRead) <= total && this.free() <= total) return -1;

    const start = this.writePos;
    const w = this.words;
    let i = start >>> 2;
    w[i] = (type & 0xffff) | ((DESCRIPTOR_OFFSET8_MIN + (headerBytes >>> 3)) << 16);
    w[i + 1] = len8 | ((flags & 0xffff) << 16);
    const idPos = this.wrap(start + 8);
    if (typeof transactionId === 'bigint') {
      this.words64[idPos >>> 3] = transactionId;
    } else {
      i = idPos >>> 2;
      w[i] = transactionId >>> 0;
      w[i + 1] = Math.floor(transactionId / 0x1_0000_0000) >>> 0;
    }
    // Zero the padding so no stale ring bytes leak to the reader; the last 8-byte unit of
    // the body never straddles the seam, so one wrap covers all padding bytes.
    const bodyEnd = start + DESCRIPTOR_SIZE + bodyBytes;
    const packetEnd = start + len8 * 8;
    if (bodyEnd < packetEnd) {
      const d = this.data;
      const p = this.wrap(bodyEnd);
      for (let k = 0; k < packetEnd - bodyEnd; k++) d[p + k] = 0;
    }
    // Trailer: upper 32 bits = where this packet started.
    i = this.wrap(packetEnd) >>> 2;
    w[i] = 0;
    w[i + 1] = start;
    this.packetEnd = this.wrap(packetEnd + PACKET_TRAILER_SIZE);
    return this.wrap(start + DESCRIPTOR_SIZE);
  }

  private finish(): WriteResult {
    this.writePos = this.packetEnd;
    return this.batching ? WriteResult.WRITTEN : this.publish();
  }

  /**
   * Publishes write_index, then decides on the signal (spec 6.5): the seq-cst store is the
   * full fence before the interrupt_mask and read_index loads, so either we see the
   * reader's unmask and its read_index, or the reader sees our write_index when it
   * re-checks after unmasking.
   */
  private publish(): WriteResult {
    const old = this.published;
    const now = this.writePos;
    if (old === now) return WriteResult.WRITTEN;
    this.published = now;
    Atomics.store(this.header, RingWord.WriteIndex, now);
    if (Atomics.load(this.header, RingWord.InterruptMask) !== 0) return WriteResult.WRITTEN;
    return Atomics.load(this.header, RingWord.ReadIndex) === old ? WriteResult.WRITTEN_SIGNAL : WriteResult.WRITTEN;
  }

  /** Copies src into the ring at ring position pos, in two pieces if a single mapping wraps. */
  private copyIn(src: Uint8Array, pos: number): void {
    const n = src.length;
    if (n === 0) return;
    if (pos >= this.size && !this.doubleMapped) pos -= this.size;
    const room = (this.doubleMapped ? 2 * this.size : this.size) - pos;
    if (n <= room) {
      this.data.set(src, pos);
    } else {
      this.data.set(src.subarray(0, room), pos);
      this.data.set(src.subarray(room), 0);
    }
  }

  private freeFrom(read: number): number {
    return ringFreeBytes(this.writePos, read, this.size);
  }

  private wrap(pos: number): number {
    return pos >= this.size ? pos - this.size : pos;
  }

  private loadReadIndex(): number {
    return this.validate(Atomics.load(this.header, RingWord.ReadIndex), 'read_index');
  }

  private validate(index: number, name: string): number {
    return checkedRingIndex(index, this.size, name);
  }
}
