// The receiving end of one VMBus ring (spec 6.3 - 6.6; Linux hv_pkt_iter_first/next/close
// and hv_begin_read/hv_end_read). The host reads the guest-outbound ring, the reference
// guest its inbound ring: the same class serves both.
//
// The reader owns read_index and interrupt_mask and reads write_index, pending_send_sz,
// feature_bits and the packets, all written by the other side: write_index and every
// descriptor are validated before use, each descriptor word is loaded once (the writer
// may rewrite it while we look), and a broken ring raises RingCorruptError.
import { DESCRIPTOR_OFFSET8_MIN, DESCRIPTOR_SIZE, PACKET_MAX_LEN8, PACKET_TRAILER_SIZE } from '../packet.js';
import { checkedRingIndex, ringFreeBytes } from './ring-index.js';
import { RingCorruptError } from './ring-errors.js';
import { RING_FEATURE_PENDING_SEND_SIZE, RingMemory, RingWord } from './ring-memory.js';

/** Up to this many bytes, copyPayload/copyHeader copy word by word instead of calling set(). */
const SMALL_COPY = 128;

export interface RingReaderOptions {
  /** Largest len8 * 8 (descriptor + header + payload, without trailer) accepted; a larger one is corruption. */
  maxPacketBytes?: number;
}

/**
 * The packet at the read position. One object per reader, refilled by peek(): copy out
 * what you keep. Offsets index mem.data. With a double mapping every region is contiguous
 * there; with a single mapping offsets are reduced modulo the data size and a region may
 * cross the end (see `contiguous`, RingReader.copyPayload and copyHeader).
 */
export class PacketView {
  type = 0;
  flags = 0;
  offset8 = 0;
  len8 = 0;
  /** trans_id as two u32 halves; `transactionId` builds the bigint only when asked. */
  transactionIdLow = 0;
  transactionIdHigh = 0;
  /** Offset of the descriptor. */
  start = 0;
  /** The type-specific header: offset8 * 8 - 16 bytes after the descriptor. */
  headerOffset = 0;
  headerLength = 0;
  /** The payload including the sender's padding to 8 (the ring has no finer length). */
  payloadOffset = 0;
  payloadLength = 0;
  /** Ring bytes the packet takes, trailer included. */
  totalBytes = 0;
  /** Whether descriptor, header and payload are contiguous in mem.data. */
  contiguous = true;

  get transactionId(): bigint {
    return (BigInt(this.transactionIdHigh) << 32n) | BigInt(this.transactionIdLow);
  }
}

export class RingReader {
  private readonly header: Int32Array;
  private readonly data: Uint8Array;
  private readonly words: Uint32Array;
  private readonly size: number;
  private readonly doubleMapped: boolean;
  private readonly maxPacketBytes: number;
  private readonly view = new PacketView();
  private viewValid = false;
  private copyTarget: Uint8Array | null = null;
  private copyTarget32: Uint32Array | null = null;

  /** Where the next packet starts (local; published by commit()). */
  private readPos: number;
  /** The read_index the writer can see. */
  private committed: number;
  /** The last write_index loaded. */
  private cachedWrite: number;

  constructor(readonly mem: RingMemory, options: RingReaderOptions = {}) {
    this.header = mem.header;
    this.data = mem.data;
    this.size = mem.dataSize;
    this.doubleMapped = mem.doubleMapped;
    if (this.data.byteOffset % 8 !== 0 || this.size % 8 !== 0 || this.size <= 0) {
      throw new RangeError('ring data area must be 8-byte aligned and a positive multiple of 8 bytes');
    }
    this.words = new Uint32Array(this.data.buffer, this.data.byteOffset, this.data.length >>> 2);
    const limit = Math.min(this.size - PACKET_TRAILER_SIZE, PACKET_MAX_LEN8 * 8);
    this.maxPacketBytes = Math.min(options.maxPacketBytes ?? limit, limit);
    this.readPos = this.validate(Atomics.load(this.header, RingWord.ReadIndex), 'read_index');
    this.committed = this.readPos;
    this.cachedWrite = this.readPos;
  }

  /**
   * The next packet, or null when the ring is empty. The same view object every time;
   * calling peek() again before next() returns it unchanged without touching the ring.
   */
  peek(): PacketView | null {
    if (this.viewValid) return this.view;
    const p = this.readPos;
    let write = this.cachedWrite;
    if (write === p) {
      write = this.loadWriteIndex();
      this.cachedWrite = write;
      if (write === p) return null;
    }
    let avail = write - p;
    if (avail < 0) avail += this.size;
    if (avail < DESCRIPTOR_SIZE + PACKET_TRAILER_SIZE) {
      throw new RingCorruptError(`ring holds only ${avail} bytes at ${p}, less than a packet`);
    }
    // Each 8-byte half of the descriptor is contiguous (p is a multiple of 8); the second
    // half may sit across the seam of a single mapping.
    const w = this.words;
    const i = p >>> 2;
    const word0 = w[i]!;
    const word1 = w[i + 1]!;
    const q = this.wrap(p + 8) >>> 2;
    const idLow = w[q]!;
    const idHigh = w[q + 1]!;

    const offset8 = word0 >>> 16;
    const len8 = word1 & 0xffff;
    if (offset8 < DESCRIPTOR_OFFSET8_MIN || offset8 > len8) {
      throw new RingCorruptError(`ring descriptor at ${p} has offset8 ${offset8} and len8 ${len8}`);
    }
    const length = len8 * 8;
    if (length + PACKET_TRAILER_SIZE > avail) {
      throw new RingCorruptError(`ring packet of ${length} bytes at ${p} runs past the ${avail} bytes published`);
    }
    if (length > this.maxPacketBytes) {
      throw new RingCorruptError(`ring packet of ${length} bytes at ${p} exceeds the maximum of ${this.maxPacketBytes}`);
    }

    const v = this.view;
    v.type = word0 & 0xffff;
    v.flags = word1 >>> 16;
    v.offset8 = offset8;
    v.len8 = len8;
    v.transactionIdLow = idLow;
    v.transactionIdHigh = idHigh;
    v.start = p;
    v.totalBytes = length + PACKET_TRAILER_SIZE;
    v.headerLength = offset8 * 8 - DESCRIPTOR_SIZE;
    v.payloadLength = length - offset8 * 8;
    if (this.doubleMapped) {
      v.headerOffset = p + DESCRIPTOR_SIZE;
      v.payloadOffset = p + offset8 * 8;
      v.contiguous = true;
    } else {
      v.headerOffset = this.wrap(p + DESCRIPTOR_SIZE);
      v.payloadOffset = this.wrap(p + offset8 * 8);
      v.contiguous = p + length <= this.size;
    }
    this.viewValid = true;
    return v;
  }

  /** Moves past the current packet. Local only: the writer sees it after commit(). */
  next(): void {
    if (!this.viewValid) throw new Error('next() without a packet from peek()');
    this.viewValid = false;
    this.readPos = this.wrap(this.readPos + this.view.totalBytes);
  }

  /**
   * Publishes read_index (keep it current: the writer signals only on the empty to
   * non-empty transition it sees through read_index). Returns true when the writer is
   * blocked on pending_send_sz and this commit moved free space from <= pending_send_sz
   * to > pending_send_sz: signal the writer. Packet views and offsets are void after this.
   */
  commit(): boolean {
    const before = this.committed;
    const after = this.readPos;
    if (before === after) return false;
    this.committed = after;
    // Seq-cst store: all packet reads happen before it, and it fences the pending_send_sz
    // load below (a writer setting pending_send_sz after we load it sees our read_index).
    Atomics.store(this.header, RingWord.ReadIndex, after);
    if ((Atomics.load(this.header, RingWord.FeatureBits) & RING_FEATURE_PENDING_SEND_SIZE) === 0) return false;
    const pending = Atomics.load(this.header, RingWord.PendingSendSize) >>> 0;
    if (pending === 0) return false;
    const write = this.loadWriteIndex();
    this.cachedWrite = write;
    return this.freeFrom(write, before) <= pending && this.freeFrom(write, after) > pending;
  }

  /** Asks the writer not to signal (while this side is draining anyway). */
  maskInterrupts(): void {
    Atomics.store(this.header, RingWord.InterruptMask, 1);
  }

  /**
   * Asks the writer to signal again. Returns true if data is present: a packet may have
   * landed while the mask was set, without a signal, so drain again before sleeping.
   */
  unmaskInterrupts(): boolean {
    // Seq-cst store then load: the store -> load fence of spec 6.6.
    Atomics.store(this.header, RingWord.InterruptMask, 0);
    const write = this.loadWriteIndex();
    this.cachedWrite = write;
    return this.viewValid || write !== this.readPos;
  }

  /** Bytes published and not yet consumed (from the local read position). */
  available(): number {
    const write = this.loadWriteIndex();
    this.cachedWrite = write;
    let n = write - this.readPos;
    if (n < 0) n += this.size;
    return n;
  }

  /** Copies the current packet's payload (with padding) into target; returns the bytes copied. */
  copyPayload(target: Uint8Array): number {
    return this.copyOut(this.view.payloadOffset, this.view.payloadLength, target);
  }

  /** Copies the current packet's type-specific header into target; returns the bytes copied. */
  copyHeader(target: Uint8Array): number {
    return this.copyOut(this.view.headerOffset, this.view.headerLength, target);
  }

  private copyOut(offset: number, length: number, target: Uint8Array): number {
    const n = Math.min(length, target.length);
    if (n === 0) return 0;
    const room = this.data.length - offset;
    if (n <= SMALL_COPY && n <= room) {
      // Small copies: a word loop beats subarray + set, whose view allocation and builtin
      // call cost more than the copy itself. Ring offsets are 8-aligned; the target's
      // word view is cached because callers reuse one buffer.
      if (target !== this.copyTarget) {
        this.copyTarget = target;
        this.copyTarget32 = (target.byteOffset & 3) === 0 ? new Uint32Array(target.buffer, target.byteOffset, target.length >>> 2) : null;
      }
      const t32 = this.copyTarget32;
      if (t32 !== null) {
        const words = n >>> 2;
        const w = this.words;
        const from = offset >>> 2;
        for (let k = 0; k < words; k++) t32[k] = w[from + k]!;
        for (let k = words << 2; k < n; k++) target[k] = this.data[offset + k]!;
        return n;
      }
    }
    if (n <= room) {
      target.set(this.data.subarray(offset, offset + n));
    } else {
      target.set(this.data.subarray(offset), 0);
      target.set(this.data.subarray(0, n - room), room);
    }
    return n;
  }

  private freeFrom(write: number, read: number): number {
    return ringFreeBytes(write, read, this.size);
  }

  private wrap(pos: number): number {
    return pos >= this.size ? pos - this.size : pos;
  }

  private loadWriteIndex(): number {
    return this.validate(Atomics.load(this.header, RingWord.WriteIndex), 'write_index');
  }

  private validate(index: number, name: string): number {
    return checkedRingIndex(index, this.size, name);
  }
}
