// A NetBackend over one TAP queue with virtio-net headers: offloaded checksums and large
// TCP segments cross between a guest and the host kernel as header fields, so neither
// side computes checksums or cuts segments in JavaScript. Frames from guest memory go out
// with writev straight from the guest's pages (the header comes from our own page);
// frames from the kernel are read into one native buffer and lent to the receiver.
// Reads run from a Poller (level-triggered epoll): each wake-up reads a bounded batch,
// and whatever is left wakes it again.
import { Errno } from '../../sys/errors.js';
import type { Poller } from '../../sys/epoll.js';
import { IovecList } from '../../sys/iovec.js';
import { mapAnonymous, munmap, viewOf } from '../../sys/memfd.js';
import { TapDevice, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 } from '../../sys/tun.js';
import type { GsoKind, NetBackend, NetBackendStats, NetFrame, ReceiveHandler, ReceiveTarget } from './net-backend.js';
import { PacketOffload } from './net-backend.js';
import { decodeVirtioNetHeader, encodeVirtioNetHeader, VIRTIO_NET_HDR_V1_BYTES, VirtioGso, VirtioNetFlag, VirtioNetHeader } from './virtio-net-header.js';

/** Room for the largest GSO frame a TAP hands out (64 KiB of IP + Ethernet/VLAN headers) plus the vnet header, page-rounded with slack. */
const FRAME_BUFFER_BYTES = 128 * 1024;
const ETHERNET_HEADER_BYTES = 14;
const DEFAULT_MAX_SEND_SEGMENTS = 64;
const DEFAULT_RECEIVE_BATCH = 64;

export interface TapBackendOptions {
  /** The TAP to create or attach to (kernel-chosen tapN when absent). */
  name?: string;
  /** Drives the reads; shared with other devices on the same thread, not owned. */
  poller: Poller;
  /** The MTU the link is configured with (link configuration itself is left to `ip`). Default 1500. */
  mtu?: number;
  /** A MAC to propose to the guest NIC (--net tap=NAME,mac=...). */
  mac?: Uint8Array;
  /** TUN_F_* offloads the kernel may leave in frames we receive; default CSUM | TSO4 | TSO6. Pass 0 if the consumer can finish none. */
  receiveOffloads?: number;
  /** Open one more queue of a multi-queue TAP (one backend per queue). */
  multiQueue?: boolean;
  maxSendSegments?: number;
  /** Frames read per wake-up before yielding to the event loop. */
  receiveBatch?: number;
}

export class TapBackend implements NetBackend {
  readonly tap: TapDevice;
  readonly mtu: number;
  readonly mac: Uint8Array | undefined;
  readonly maxSendSegments: number;
  readonly stats: NetBackendStats = { rxFrames: 0, rxBytes: 0, rxDropped: 0, txFrames: 0, txBytes: 0, txDropped: 0, txLargeFrames: 0, txLargestFrame: 0 };

  private readonly poller: Poller;
  private readonly headerBytes: number;
  private readonly receiveBatch: number;
  // Receive: [vnet header][frame] in one native buffer, read with a single read(2).
  private readonly rxAddress: bigint;
  private readonly rxAddressNumber: number;
  private readonly rxHeaderView: DataView;
  private readonly rxFrame: Uint8Array;
  private readonly rxHeader = new VirtioNetHeader();
  private readonly rxOffload = new PacketOffload();
  // Send: a native page for the header of gathered frames, and a staging buffer that
  // holds header + frame for frames given as a JS view.
  private readonly txHeaderAddress: bigint;
  private readonly txHeaderView: DataView;
  private readonly txStagingAddress: bigint;
  private readonly txStagingView: DataView;
  private readonly txStagingBytes: Uint8Array;
  private readonly txIov: IovecList;
  private readonly txHeader = new VirtioNetHeader();
  private readonly noOffload = new PacketOffload();

  private handler: ReceiveHandler | null = null;
  private target: ReceiveTarget | null = null;
  /** A read into a receive target: the vnet header into rxAddress, then the target's memory. */
  private readonly targetIov = new IovecList(2 + 64);
  /** The target list targetIov holds a copy of (after the vnet header), and its version then. */
  private targetCopied: IovecList | null = null;
  private targetCopiedVersion = -1;
  private batchEnd: (() => void) | null = null;
  private pollToken: number | null = null;
  private paused = false;
  private closed = false;
  /** errno of a read that failed for good (the device was deleted under us: EBADFD); reading stops. */
  private receiveErrno = 0;

  private constructor(tap: TapDevice, options: TapBackendOptions) {
    this.tap = tap;
    this.poller = options.poller;
    this.mtu = options.mtu ?? 1500;
    this.mac = options.mac ? new Uint8Array(options.mac) : undefined;
    if (this.mac && this.mac.length !== 6) throw new RangeError('a MAC address is 6 bytes');
    this.maxSendSegments = options.maxSendSegments ?? DEFAULT_MAX_SEND_SEGMENTS;
    this.receiveBatch = options.receiveBatch ?? DEFAULT_RECEIVE_BATCH;
    this.headerBytes = tap.vnetHeaderSize;

    this.rxAddress = mapAnonymous(FRAME_BUFFER_BYTES);
    this.rxAddressNumber = Number(this.rxAddress);
    const rx = viewOf(this.rxAddress, FRAME_BUFFER_BYTES);
    this.rxHeaderView = new DataView(rx, 0, VIRTIO_NET_HDR_V1_BYTES);
    this.rxFrame = new Uint8Array(rx, this.headerBytes);

    this.txHeaderAddress = mapAnonymous(4096);
    this.txHeaderView = new DataView(viewOf(this.txHeaderAddress, 4096));
    this.txStagingAddress = mapAnonymous(FRAME_BUFFER_BYTES);
    const staging = viewOf(this.txStagingAddress, FRAME_BUFFER_BYTES);
    this.txStagingView = new DataView(staging);
    this.txStagingBytes = new Uint8Array(staging);
    this.txIov = new IovecList(this.maxSendSegments + 1);
  }

  static open(options: TapBackendOptions): TapBackend {
    const tap = TapDevice.open({
      name: options.name,
      multiQueue: options.multiQueue,
      vnetHeaderSize: VIRTIO_NET_HDR_V1_BYTES,
      offloads: options.receiveOffloads ?? TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
    });
    try {
      return new TapBackend(tap, options);
    } catch (e) {
      tap.close();
      throw e;
    }
  }

  get name(): string {
    return this.tap.name;
  }

  /** 0, or the errno that stopped receiving (e.g. EBADFD once the TAP's namespace was deleted). */
  get receiveError(): number {
    return this.receiveErrno;
  }

  send(frame: NetFrame, offload: PacketOffload = this.noOffload): boolean {
    if (this.closed) return true;
    const gathered = frame instanceof IovecList;
    const frameLength = frame.byteLength;
    // The kernel refuses anything shorter than an Ethernet header (EINVAL): count it here.
    if (frameLength < ETHERNET_HEADER_BYTES || frameLength + this.headerBytes > FRAME_BUFFER_BYTES) return this.dropSend();
    const header = offloadToHeader(offload, this.txHeader);
    let n: number;
    if (gathered) {
      if (frame.count > this.maxSendSegments) throw new RangeError(`frame has ${frame.count} segments; at most ${this.maxSendSegments}`);
      if (this.headerBytes > 0 && encodeVirtioNetHeader(header, this.txHeaderView, 0, this.headerBytes, frameLength) !== null) return this.dropSend();
      const iov = this.txIov;
      iov.clear();
      if (this.headerBytes > 0) iov.push(Number(this.txHeaderAddress), this.headerBytes);
      for (let i = 0; i < frame.count; i++) iov.push(frame.addressAt(i), frame.lengthAt(i));
      n = this.tap.writev(iov);
    } else {
      if (this.headerBytes > 0 && encodeVirtioNetHeader(header, this.txStagingView, 0, this.headerBytes, frameLength) !== null) return this.dropSend();
      this.txStagingBytes.set(frame, this.headerBytes);
      n = this.tap.write(Number(this.txStagingAddress), this.headerBytes + frameLength);
    }
    if (n >= 0) {
      const stats = this.stats;
      stats.txFrames++;
      stats.txBytes += frameLength;
      // TSO segments passed through whole, with a vnet header, for the kernel to cut.
      if (offload.gso !== 'none') {
        stats.txLargeFrames!++;
        if (frameLength > stats.txLargestFrame!) stats.txLargestFrame = frameLength;
      }
      return true;
    }
    if (n === -Errno.EAGAIN || n === -Errno.ENOBUFS || n === -Errno.EINTR) return false;
    // EINVAL (the kernel disliked the offload metadata), EIO (interface down), ...: a NIC drops.
    return this.dropSend();
  }

  onReceive(handler: ReceiveHandler, batchEnd?: () => void): void {
    this.handler = handler;
    this.batchEnd = batchEnd ?? null;
    this.updatePolling();
  }

  setReceiveTarget(target: ReceiveTarget | null): void {
    this.target = target;
  }

  pauseReceive(): void {
    this.paused = true;
    this.updatePolling();
  }

  resumeReceive(): void {
    this.paused = false;
    this.updatePolling();
  }

  setLinkUp(up: boolean): void {
    this.tap.setCarrier(up);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.updatePolling();
    this.tap.close();
    munmap(this.rxAddress, FRAME_BUFFER_BYTES);
    munmap(this.txHeaderAddress, 4096);
    munmap(this.txStagingAddress, FRAME_BUFFER_BYTES);
  }

  private dropSend(): boolean {
    this.stats.txDropped++;
    return true;
  }

  /** Watches the fd exactly while someone wants frames; until then they wait in the TAP's queue. */
  private updatePolling(): void {
    const want = !this.closed && !this.paused && this.receiveErrno === 0 && this.handler !== null;
    if (want && this.pollToken === null) this.pollToken = this.poller.add(this.tap.fd, this.onReadable);
    else if (!want && this.pollToken !== null) {
      this.poller.remove(this.pollToken);
      this.pollToken = null;
    }
  }

  private readonly onReadable = (): void => {
    const headerBytes = this.headerBytes;
    let delivered = 0;
    for (let i = 0; i < this.receiveBatch && this.pollToken !== null; i++) {
      const dest = this.target?.next() ?? null;
      let n: number;
      if (dest !== null) {
        const iov = this.targetIov;
        // The target's room usually stands unchanged between reads: copy it only when it changed.
        if (dest !== this.targetCopied || dest.version !== this.targetCopiedVersion) {
          iov.clear();
          iov.push(this.rxAddressNumber, headerBytes);
          for (let k = 0; k < dest.count; k++) iov.push(dest.addressAt(k), dest.lengthAt(k));
          this.targetCopied = dest;
          this.targetCopiedVersion = dest.version;
        }
        n = this.tap.readv(iov);
      } else n = this.tap.read(this.rxAddressNumber, FRAME_BUFFER_BYTES);
      if (n < 0) {
        if (dest !== null) this.target!.unused();
        if (n === -Errno.EINTR) continue;
        if (n !== -Errno.EAGAIN) {
          // The device is gone (EBADFD) or broken: epoll is level-triggered and would wake
          // us forever, so stop watching the fd.
          this.receiveErrno = -n;
          this.updatePolling();
        }
        break;
      }
      const frameLength = n - headerBytes;
      if (frameLength < ETHERNET_HEADER_BYTES || !this.decodeOffload(frameLength)) {
        if (dest !== null) this.target!.unused();
        this.stats.rxDropped++;
        continue;
      }
      this.stats.rxFrames++;
      this.stats.rxBytes += frameLength;
      delivered++;
      if (dest !== null) this.target!.received(frameLength, this.rxOffload);
      else this.handler!(this.rxFrame, frameLength, this.rxOffload);
    }
    if (delivered > 0) this.batchEnd?.();
  };

  private decodeOffload(frameLength: number): boolean {
    const offload = this.rxOffload.clear();
    if (this.headerBytes === 0) return true;
    const header = this.rxHeader;
    if (decodeVirtioNetHeader(this.rxHeaderView, 0, this.headerBytes, frameLength, header) !== null) return false;
    if (header.flags & VirtioNetFlag.NeedsChecksum) offload.setChecksum(header.csumStart, header.csumOffset);
    offload.checksumValid = (header.flags & VirtioNetFlag.DataValid) !== 0;
    offload.gso = gsoKindOf(header.gsoType);
    offload.gsoSize = header.gsoSize;
    offload.headerLength = header.hdrLen;
    offload.ecn = header.ecn;
    return true;
  }
}

function gsoKindOf(type: number): GsoKind {
  switch (type) {
    case VirtioGso.TcpV4:
      return 'tcpv4';
    case VirtioGso.TcpV6:
      return 'tcpv6';
    case VirtioGso.Udp:
      return 'udp';
    case VirtioGso.UdpL4:
      return 'udp-l4';
    default:
      return 'none';
  }
}

function gsoTypeOf(kind: GsoKind): number {
  switch (kind) {
    case 'tcpv4':
      return VirtioGso.TcpV4;
    case 'tcpv6':
      return VirtioGso.TcpV6;
    case 'udp':
      return VirtioGso.Udp;
    case 'udp-l4':
      return VirtioGso.UdpL4;
    default:
      return VirtioGso.None;
  }
}

/** PacketOffload -> virtio-net header fields (checked by the encoder). checksumValid is receive-only and not sent. */
function offloadToHeader(offload: PacketOffload, out: VirtioNetHeader): VirtioNetHeader {
  out.clear();
  if (offload.needsChecksum) {
    out.flags = VirtioNetFlag.NeedsChecksum;
    out.csumStart = offload.checksumStart;
    out.csumOffset = offload.checksumOffset;
  }
  out.gsoType = gsoTypeOf(offload.gso);
  if (out.gsoType !== VirtioGso.None) {
    out.gsoSize = offload.gsoSize;
    out.hdrLen = offload.headerLength;
    out.ecn = offload.ecn;
  }
  return out;
}
