// The guest's receive buffer as NetVSP carves it: one section starting at offset 0, cut
// into equal sub-allocations (spec 2.2 step 4, 2.3). Every host->guest RNDIS message -
// received frames, control responses, status indications - is written into free
// sub-allocations and handed to the guest in a transfer-page packet; they stay the
// guest's until it completes that packet.
//
// Sizing choice: the sub-allocation is big enough for the largest frame of the device's
// MTU plus the RNDIS header and every PPI the host sends (1728 bytes, Hyper-V's value, up
// to MTU 1614; MTU 9000 gives 9112), so a copied frame takes one; for a guest that takes
// RSC, 16 KiB where the buffer is large enough (see receiveSubAllocationSize). Larger pieces:
//   - a segment copied for a guest with RSC goes as fragments of one sub-allocation each
//     (PKTINFO_ID), all in one packet;
//   - a segment read in place lies at the same fragment offsets in sub-allocations the
//     host held in reserve for the read, and goes as the same fragments (Linux refuses a
//     range longer than the announced sub-allocation size);
//   - frames read in one batch share a packet, a range each.
// The sub-allocations of a packet are chained so that the guest's one completion frees
// them all.
//
// The allocator is next-fit over a state array made once per buffer: it hands out
// sub-allocations in buffer order from a cursor. Allocating and freeing touch no heap.
// The transaction id of a packet encodes the buffer generation and the index of its first
// sub-allocation, so a completion that names a buffer revoked since, an index never handed
// out, a chain member or a sub-allocation the host holds in reserve is recognised and
// ignored.
import { NETVSC_MIN_SECTION_SIZE } from './nvsp-protocol.js';
import { RndisMessageSize } from './rndis-protocol.js';
import { PPI_U32_RECORD_SIZE } from './per-packet-info.js';

/** Hyper-V's receive section size at MTU 1500; never go below it. */
export const HYPERV_RECEIVE_SECTION_SIZE = 1728;
/** PPIs the host may put in front of a received frame: checksum, hash, 802.1Q. */
export const RECEIVE_PPI_BYTES = 3 * PPI_U32_RECORD_SIZE;
/** Ethernet header plus one VLAN tag (a tag the backend leaves in the frame). */
const ETHERNET_OVERHEAD = 14 + 4;
/** Transaction ids are generation * 2^32 + index; the generation wraps below 2^20 to stay a safe integer. */
const GENERATION_LIMIT = 1 << 20;
const TWO_32 = 0x1_0000_0000;
const FREE = 0;
const HEAD = 1;
const MEMBER = 2;
/** Held by the host for a read not yet made: no guest completion can free it. */
const RESERVED = 3;

/** The largest coalesced (RSC) segment: a 64 KiB IP packet with Ethernet and a VLAN tag. */
export const MAX_COALESCED_FRAME = 0xffff + ETHERNET_OVERHEAD;
/** PPIs of the first fragment of a coalesced segment (fragment id, checksum, hash); later fragments carry the id only. */
export const COALESCED_FIRST_PPI_BYTES = 3 * PPI_U32_RECORD_SIZE;

/**
 * Where a coalesced segment's bytes sit in its sub-allocations: after the RNDIS header and
 * room for the PPIs, the largest set in the first fragment (id, checksum, hash), the id
 * alone in the others. Fixed, so a backend can read a segment straight into place before
 * anyone knows its PPIs; they are then written right before the data.
 */
export const FIRST_FRAGMENT_DATA_OFFSET = RndisMessageSize.Packet + COALESCED_FIRST_PPI_BYTES;
export const LATER_FRAGMENT_DATA_OFFSET = RndisMessageSize.Packet + PPI_U32_RECORD_SIZE;

/** Where fragment `i` of a coalesced segment keeps its data in its sub-allocation. */
export function fragmentDataOffset(i: number): number {
  return i === 0 ? FIRST_FRAGMENT_DATA_OFFSET : LATER_FRAGMENT_DATA_OFFSET;
}

/**
 * Sub-allocations a coalesced segment of `frameLength` bytes takes: each fragment is an
 * RNDIS PACKET header, room for its PPIs and as much of the frame as fits after them.
 */
export function coalescedFragmentCount(frameLength: number, subAllocSize: number): number {
  const first = subAllocSize - FIRST_FRAGMENT_DATA_OFFSET;
  if (frameLength <= first) return 1;
  return 1 + Math.ceil((frameLength - first) / (subAllocSize - LATER_FRAGMENT_DATA_OFFSET));
}

/** Most fragments of one coalesced segment: a 64 KiB segment in the smallest sub-allocations. */
export const MAX_COALESCED_FRAGMENTS = coalescedFragmentCount(MAX_COALESCED_FRAME, HYPERV_RECEIVE_SECTION_SIZE);

/**
 * The sub-allocation size for a guest that takes RSC: a 64 KiB segment then travels as 5
 * fragments instead of 40, so both sides write and parse an eighth of the RNDIS headers,
 * PPIs and ranges. Linux accepts any size from its minimum MTU up (netvsc_init_buf) and
 * keeps one section-sized bounce buffer per channel (64 x 16 KiB). Measured through the
 * reference guest (2026-11-27, interleaved): TCP host->guest +37-43% and 27% less CPU per
 * byte than at 1728; 8 KiB gave +26%, 32 KiB no more than 16 KiB.
 */
export const COALESCING_RECEIVE_SECTION_SIZE = 16384;
/**
 * Every frame takes a whole sub-allocation, however small: enlarged sections stop where
 * the buffer would hold fewer than this many (a 2 MiB buffer holds exactly 128 of 16 KiB;
 * Linux's default of about 17 MiB holds 1,105).
 */
export const MIN_COALESCING_SECTIONS = 128;

/**
 * The sub-allocation size this host announces for a device MTU (payload bytes of an
 * Ethernet frame): a whole frame with its RNDIS header and PPIs, at least Hyper-V's 1728.
 * For a guest that announced RSC, larger (COALESCING_RECEIVE_SECTION_SIZE) as far as a
 * buffer of `bufferBytes` still holds MIN_COALESCING_SECTIONS of them.
 */
export function receiveSubAllocationSize(mtu: number, bufferBytes = 0, guestTakesRsc = false): number {
  const needed = RndisMessageSize.Packet + RECEIVE_PPI_BYTES + mtu + ETHERNET_OVERHEAD;
  const frame = Math.max(HYPERV_RECEIVE_SECTION_SIZE, (needed + 7) & ~7);
  if (!guestTakesRsc) return frame;
  const fitting = Math.floor(bufferBytes / MIN_COALESCING_SECTIONS / 8) * 8;
  return Math.max(frame, Math.min(COALESCING_RECEIVE_SECTION_SIZE, fitting));
}

export class ReceiveBuffer {
  readonly count: number;
  /** Bumped for every buffer made in this process; part of every transaction id handed out. */
  readonly generation: number;
  private freeTotal: number;
  /** Where the next search for a free sub-allocation starts. */
  private cursor = 0;
  /** FREE, HEAD (first or only sub-allocation of a packet), MEMBER (chained after a head) or RESERVED. */
  private readonly inUse: Uint8Array;
  /** The next sub-allocation of the same packet, or -1 (the last or only one). */
  private readonly nextInPacket: Int32Array;

  private static nextGeneration = 1;

  /**
   * `bytes` is the mapped buffer (its length is the buffer size). Throws RangeError when
   * the buffer cannot hold one sub-allocation (the caller answers the guest with a failure).
   */
  constructor(readonly bytes: Uint8Array, readonly subAllocSize: number) {
    if (!Number.isInteger(subAllocSize) || subAllocSize < NETVSC_MIN_SECTION_SIZE) throw new RangeError(`sub-allocation size ${subAllocSize} is too small`);
    const count = Math.floor(bytes.length / subAllocSize);
    if (count < 1) throw new RangeError(`a receive buffer of ${bytes.length} bytes cannot hold a ${subAllocSize}-byte sub-allocation`);
    this.count = count;
    this.generation = ReceiveBuffer.nextGeneration;
    ReceiveBuffer.nextGeneration = (ReceiveBuffer.nextGeneration % (GENERATION_LIMIT - 1)) + 1;
    this.inUse = new Uint8Array(count);
    this.nextInPacket = new Int32Array(count).fill(-1);
    this.freeTotal = count;
  }

  /** The bytes announced in SEND_RECV_BUF_COMPLETE (end_offset). */
  get endOffset(): number {
    return this.count * this.subAllocSize;
  }

  get freeCount(): number {
    return this.freeTotal;
  }

  /** A free sub-allocation's index (the first at or after the cursor), or -1 when the guest holds them all. */
  allocate(): number {
    if (this.freeTotal === 0) return -1;
    const count = this.count;
    // One lap at most: freeTotal > 0 says a free one exists.
    for (let k = 0, index = this.cursor; k < count; k++, index = index + 1 === count ? 0 : index + 1) {
      if (this.inUse[index] !== FREE) continue;
      this.take(index, HEAD);
      this.cursor = index + 1 === count ? 0 : index + 1;
      return index;
    }
    return -1;
  }

  private take(index: number, state: number): void {
    this.inUse[index] = state;
    this.nextInPacket[index] = -1;
    this.freeTotal--;
  }

  /**
   * A free sub-allocation held for a read into place that may come later, or -1. Until
   * claim() or release(), no completion frees it: a guest naming it is refused.
   */
  reserve(): number {
    const index = this.allocate();
    if (index >= 0) this.inUse[index] = RESERVED;
    return index;
  }

  /** A reserved sub-allocation becomes the head of a packet (it is being sent). */
  claim(index: number): void {
    if (this.inUse[index] === RESERVED) this.inUse[index] = HEAD;
  }

  /** A reserved sub-allocation goes back unused; false (nothing changes) if `index` is not reserved. */
  release(index: number): boolean {
    if (!Number.isInteger(index) || index < 0 || index >= this.count || this.inUse[index] !== RESERVED) return false;
    this.inUse[index] = FREE;
    this.nextInPacket[index] = -1;
    this.freeTotal++;
    return true;
  }

  /** Makes `next` part of the packet `previous` belongs to: freeing the packet frees it too. */
  chain(previous: number, next: number): void {
    // Only sub-allocations the host holds are chained; a free one never joins a packet.
    if (this.inUse[next] === FREE || this.inUse[previous] === FREE) return;
    this.nextInPacket[previous] = next;
    this.inUse[next] = MEMBER;
  }

  /**
   * Returns a packet's sub-allocations: `index` and every one chained after it. False
   * (nothing changes) for an index that is not the head of a packet out: a forged
   * completion naming the middle of a chain must not free part of it twice.
   */
  free(index: number): boolean {
    if (!Number.isInteger(index) || index < 0 || index >= this.count || this.inUse[index] !== HEAD) return false;
    // A chain is never longer than the buffer: the bound only guards the walk itself.
    for (let i = index, steps = 0; i >= 0 && steps < this.count && this.inUse[i] !== FREE; steps++) {
      const next = this.nextInPacket[i]!;
      this.nextInPacket[i] = -1;
      this.inUse[i] = FREE;
      this.freeTotal++;
      i = next;
    }
    return true;
  }

  isAllocated(index: number): boolean {
    return Number.isInteger(index) && index >= 0 && index < this.count && this.inUse[index] !== FREE;
  }

  /** Byte offset of a sub-allocation in the buffer (what a transfer-page range names). */
  offsetOf(index: number): number {
    return index * this.subAllocSize;
  }

  /** The transaction id for a packet carrying sub-allocation `index`. */
  transactionIdFor(index: number): number {
    return this.generation * TWO_32 + index;
  }

  /**
   * Frees the sub-allocation a guest completion names (its transaction id as two u32
   * halves). False for an id of another buffer or an index not out: a stale or forged
   * completion, which must not free a section still in use.
   */
  complete(transactionIdLow: number, transactionIdHigh: number): boolean {
    if (transactionIdHigh !== this.generation) return false;
    return this.free(transactionIdLow);
  }
}
