// What a synthetic NIC (NetVSP) needs from whatever carries its frames on the host: a TAP
// device, the VM-to-VM switch, later a user-mode NAT. Frames are plain Ethernet (no FCS);
// offloads travel beside them as a PacketOffload, the common ground between RNDIS
// per-packet info on the guest side and virtio-net headers on the TAP side.
//
// The data path allocates nothing per packet: a sender fills one PacketOffload it keeps
// and passes it with each frame; a backend hands each received frame to the handler as a
// view of its own receive buffer plus a length, with a PacketOffload it reuses. Both are
// valid only during the call.
import type { IovecList } from '../../sys/iovec.js';

/** Segmentation the receiver of a large frame still has to do (or pass on as metadata). */
export type GsoKind = 'none' | 'tcpv4' | 'tcpv6' | 'udp' | 'udp-l4';

/** Offload metadata of one frame. Flat and mutable so one instance serves every packet. */
export class PacketOffload {
  /**
   * The L4 checksum is unfinished (Linux CHECKSUM_PARTIAL): the checksum field holds the
   * pseudo-header sum; whoever finishes it sums from checksumStart to the frame's end and
   * stores the result at checksumStart + checksumOffset.
   */
  needsChecksum = false;
  checksumStart = 0;
  checksumOffset = 0;
  /** Receive only: the L3/L4 checksums are known good (verified, or never on a wire). */
  checksumValid = false;
  /** A frame larger than the MTU to be cut into gsoSize-byte payloads; needs needsChecksum. */
  gso: GsoKind = 'none';
  gsoSize = 0;
  /** Bytes of headers (Ethernet + IP + L4) before the payload; a hint, 0 when unknown. */
  headerLength = 0;
  /** TCP only: the stream uses ECN. */
  ecn = false;

  clear(): this {
    this.needsChecksum = false;
    this.checksumStart = 0;
    this.checksumOffset = 0;
    this.checksumValid = false;
    this.gso = 'none';
    this.gsoSize = 0;
    this.headerLength = 0;
    this.ecn = false;
    return this;
  }

  /** Sets a partial checksum (e.g. from RNDIS TCP/UDP checksum PPI). */
  setChecksum(start: number, offset: number): this {
    this.needsChecksum = true;
    this.checksumStart = start;
    this.checksumOffset = offset;
    return this;
  }

  /** Sets segmentation (e.g. from RNDIS LSOv2 PPI); a GSO frame always carries a partial checksum too. */
  setGso(kind: GsoKind, size: number, headerLength = 0): this {
    this.gso = kind;
    this.gsoSize = size;
    this.headerLength = headerLength;
    return this;
  }
}

/** A frame to send: addresses in native memory (guest RAM pages, zero-copy) or one JS view (copied). */
export type NetFrame = IovecList | Uint8Array;

/**
 * Called once per received frame. `frame[0, length)` is the Ethernet frame; the view and
 * `offload` belong to the backend and are reused after the handler returns.
 */
export type ReceiveHandler = (frame: Uint8Array, length: number, offload: PacketOffload) => void;

/**
 * Where a receiver wants frames put: memory of its own (a NIC's receive buffer in guest
 * RAM), so a backend that can read into given memory skips its own buffer and the copy.
 */
export interface ReceiveTarget {
  /** Room for the next frame, whatever its size (up to a 64 KiB segment), or null: use the backend's buffer and the ReceiveHandler. */
  next(): IovecList | null;
  /** The frame read into the list next() gave: `length` bytes. `offload` is the backend's, valid during the call. */
  received(length: number, offload: PacketOffload): void;
  /** The list next() gave was not used (the read failed or the frame was dropped). */
  unused(): void;
}

export interface NetBackendStats {
  rxFrames: number;
  rxBytes: number;
  /** Frames read but not delivered (bad vnet header, no handler). */
  rxDropped: number;
  txFrames: number;
  txBytes: number;
  /** Frames refused for good (bad offload metadata, link down): counted, not retried. */
  txDropped: number;
  /** Large segments (GSO) handed to the backend whole, and the largest one's length. */
  txLargeFrames?: number;
  txLargestFrame?: number;
}

export interface NetBackend {
  /** The largest frame payload (IP packet) the backend's link carries without GSO. */
  readonly mtu: number;
  /** A MAC address this backend wants the guest NIC to use, or undefined to let the device choose. */
  readonly mac: Uint8Array | undefined;
  /** Most segments one IovecList frame may have (a bigger frame is a caller bug: RangeError). */
  readonly maxSendSegments: number;
  readonly stats: NetBackendStats;

  /**
   * Sends one frame. Returns false on backpressure (nothing sent; try again later), true
   * when the frame was consumed: sent, or dropped and counted in stats.txDropped.
   */
  send(frame: NetFrame, offload?: PacketOffload): boolean;

  /**
   * Sets the receiver (one; a second call replaces it). Frames are read on the event loop
   * of the thread that owns the backend, in batches; `batchEnd` runs after each batch, the
   * place to signal the guest once instead of once per frame.
   */
  onReceive(handler: ReceiveHandler, batchEnd?: () => void): void;

  /** Optional: read frames straight into the target's memory when it offers some (null: stop). */
  setReceiveTarget?(target: ReceiveTarget | null): void;

  /** Stops reading (the guest has no receive buffer free); frames wait in the backend's queue. */
  pauseReceive(): void;
  resumeReceive(): void;

  /** Host-side link state (a TAP's carrier): down drops traffic on the host side too. */
  setLinkUp(up: boolean): void;

  /** Stops reading and releases the backend's resources. Idempotent. */
  close(): void;
}
