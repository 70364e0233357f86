// The memory of one VMBus ring as both ends see it: a 4 KiB control page and the data
// area after it (spec 6.2). The same shape serves guest RAM mapped through a GPADL
// (optionally with the data pages mapped twice, so packets never split at the seam) and
// plain or shared ArrayBuffers in tests.
import { PAGE_SIZE } from '../../memory/page.js';

export const RING_HEADER_SIZE = 4096;

/** Word indices into RingMemory.header (byte offset / 4). */
export const RingWord = {
  WriteIndex: 0,
  ReadIndex: 1,
  InterruptMask: 2,
  PendingSendSize: 3,
  FeatureBits: 16,
} as const;

/** feature_bits bit 0: the reader signals the writer when pending_send_sz is satisfied. */
export const RING_FEATURE_PENDING_SEND_SIZE = 1;

export interface RingMemory {
  /**
   * The control page as 32-bit words: [0] write_index, [1] read_index,
   * [2] interrupt_mask, [3] pending_send_sz, [16] feature_bits. Accessed only with Atomics.
   */
  header: Int32Array;
  /** The data area: dataSize bytes, or 2 * dataSize when doubleMapped. */
  data: Uint8Array;
  dataSize: number;
  /** data[dataSize + i] is the same byte as data[i]. */
  doubleMapped: boolean;
}

/**
 * Views a ring that starts at byteOffset in buffer. ringBytes is the ring's size in
 * guest terms (header page + data pages); with doubleMapped the buffer must also hold the
 * second copy of the data pages right after it (GuestMemory.mapPages(pfns, 1) builds that).
 */
export function ringMemoryFromBuffer(buffer: ArrayBufferLike, byteOffset: number, ringBytes: number, doubleMapped: boolean): RingMemory {
  // Word-aligned views for the descriptor and trailer need 8-byte alignment of the data
  // area; whole pages make the data size a multiple of 8 and match how guests size rings.
  if (!Number.isSafeInteger(byteOffset) || byteOffset < 0 || byteOffset % 8 !== 0) {
    throw new RangeError(`ring byteOffset must be a non-negative multiple of 8, got ${byteOffset}`);
  }
  if (!Number.isSafeInteger(ringBytes) || ringBytes < 2 * PAGE_SIZE || ringBytes % PAGE_SIZE !== 0) {
    throw new RangeError(`ring size must be a multiple of ${PAGE_SIZE} with at least one data page, got ${ringBytes}`);
  }
  const dataSize = ringBytes - RING_HEADER_SIZE;
  // Indices are u32 in the header and signed 32-bit in our views: keep them positive.
  if (dataSize > 0x7fff_fff8) throw new RangeError(`ring data area of ${dataSize} bytes is too large`);
  const dataBytes = doubleMapped ? 2 * dataSize : dataSize;
  if (byteOffset + RING_HEADER_SIZE + dataBytes > buffer.byteLength) {
    throw new RangeError(`ring of ${ringBytes} bytes${doubleMapped ? ' (double-mapped)' : ''} at ${byteOffset} does not fit a buffer of ${buffer.byteLength} bytes`);
  }
  return {
    header: new Int32Array(buffer, byteOffset, RING_HEADER_SIZE / 4),
    data: new Uint8Array(buffer, byteOffset + RING_HEADER_SIZE, dataBytes),
    dataSize,
    doubleMapped,
  };
}

/**
 * What the guest does to both rings before OPENCHANNEL: an empty ring, no mask, no
 * pending send, and the pending-send-size feature advertised (Linux hv_ringbuffer_init).
 */
export function initRingHeader(mem: RingMemory): void {
  mem.header.fill(0);
  Atomics.store(mem.header, RingWord.FeatureBits, RING_FEATURE_PENDING_SEND_SIZE);
}
