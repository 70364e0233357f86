// Surfaces a netvsc NIC on the host as a TAP device in a network namespace, so the host's
// kernel plays the guest's network stack: frames the NIC receives are written into the TAP
// (the kernel receives them on that interface) with a vnet header built from the RX
// checksum PPI (DATA_VALID), and frames the kernel transmits on the TAP are read (with
// their vnet header: NEEDS_CSUM -> checksum PPI, GSO -> LSO PPI) and sent by the NIC.
// A coalesced TCP segment (RSC: longer than an MTU frame) goes in as what it is, a GSO
// frame with a partial checksum, as Linux's own stack holds an LRO or GRO segment.
// Link state follows the NIC (TUNSETCARRIER), the MTU and MAC come from the device.
import type { Poller } from '../../sys/epoll.js';
import { Errno } from '../../sys/errors.js';
import { mapAnonymous, munmap, viewOf } from '../../sys/memfd.js';
import { moveLinkToNetns, setLinkMtu, setLinkUp } from '../../sys/netns.js';
import { TapDevice, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 } from '../../sys/tun.js';
import { PacketOffload, type GsoKind } from '../../backends/net/net-backend.js';
import { foldSum, l4PseudoHeaderSum } from '../../backends/net/inet-checksum.js';
import { PacketKind, ParsedPacket, parsePacket } from '../../backends/net/packet-parse.js';
import { decodeVirtioNetHeader, encodeVirtioNetHeader, VIRTIO_NET_HDR_V1_BYTES, VirtioGso, VirtioNetFlag, VirtioNetHeader } from '../../backends/net/virtio-net-header.js';
import type { NetvscNic } from './netvsc-driver.js';
import { NVSP_RSC_MAX, type CoalescedSegment } from './netvsc-datapath.js';
import { IovecList } from '../../sys/iovec.js';

const BUFFER_BYTES = 128 * 1024;
const HEADER_PAGE_BYTES = 4096;
/** How much of a segment's first piece is copied to go before it into the TAP: its headers, with room to spare (the TCP checksum field is rewritten in the copy). */
const HEADER_COPY_BYTES = 512;
const ETH_HLEN = 14;
const READ_BATCH = 64;

export interface NicTapOptions {
  nic: NetvscNic;
  poller: Poller;
  /** Namespace to put the TAP in (must exist); absent: stays in ours. */
  netns?: string;
  /** Interface name (default: kernel-chosen tapN). */
  name?: string;
  /** Bring the interface up in its namespace. Default true. */
  up?: boolean;
}

export class NicTap {
  readonly tap: TapDevice;
  readonly stats = { toTap: 0, fromTap: 0, dropped: 0, busy: 0, coalescedToTap: 0 };
  private readonly nic: NetvscNic;
  private readonly poller: Poller;
  private readonly rxAddress: bigint; // the vnet header of frames read from the TAP
  private readonly rxAddressNumber: number; // the same, as iovecs take it (no BigInt conversion per frame)
  private readonly rxView: DataView;
  private readonly txAddress: bigint; // frames written to the TAP
  private readonly txAddressNumber: number;
  private readonly txView: DataView;
  private readonly txBytes: Uint8Array;
  private readonly header = new VirtioNetHeader();
  private readonly offload = new PacketOffload();
  private readonly parsed = new ParsedPacket();
  /** The vnet header and first fragment (copied), then the other fragments in guest RAM. */
  private readonly segmentIov = new IovecList(NVSP_RSC_MAX + 1);
  /** A read: the vnet header into rxAddress, the frame into a bounce buffer. */
  private readonly readIov = new IovecList(2);
  private token: number | null = null;
  private closed = false;
  private readonly onLink = (up: boolean) => { if (!this.closed) this.tap.setCarrier(up); };

  constructor(options: NicTapOptions) {
    this.nic = options.nic;
    this.poller = options.poller;
    const o = options.nic.info?.offloads;
    let offloads = TUN_F_CSUM;
    if (o?.tso4) offloads |= TUN_F_TSO4;
    if (o?.tso6) offloads |= TUN_F_TSO6;
    this.tap = TapDevice.open({ name: options.name, vnetHeaderSize: VIRTIO_NET_HDR_V1_BYTES, offloads });
    try {
      if (options.nic.info) this.tap.setMacAddress(options.nic.info.mac);
      this.tap.setCarrier(options.nic.linkUp);
      if (options.netns) moveLinkToNetns(this.tap.name, options.netns);
      setLinkMtu(this.tap.name, options.nic.mtu, options.netns);
      if (options.up ?? true) setLinkUp(this.tap.name, true, options.netns);
    } catch (e) {
      this.tap.close();
      throw e;
    }
    this.rxAddress = mapAnonymous(HEADER_PAGE_BYTES);
    this.rxAddressNumber = Number(this.rxAddress);
    this.rxView = new DataView(viewOf(this.rxAddress, HEADER_PAGE_BYTES));
    this.txAddress = mapAnonymous(BUFFER_BYTES);
    this.txAddressNumber = Number(this.txAddress);
    const tx = viewOf(this.txAddress, BUFFER_BYTES);
    this.txView = new DataView(tx);
    this.txBytes = new Uint8Array(tx);
    this.nic.onFrame = (_q, frame, offset, length, offload) => this.toTap(frame, offset, length, offload);
    this.nic.onSegment = (_q, bytes, segment, offload) => this.segmentToTap(bytes, segment, offload);
    this.nic.onSendRoom = this.onSendRoom;
    this.nic.on('link', this.onLink);
    this.token = this.poller.add(this.tap.fd, this.onReadable);
  }

  get name(): string {
    return this.tap.name;
  }

  /** A frame the NIC received: into the kernel, DATA_VALID when the host verified its checksum. */
  private toTap(frame: Uint8Array, offset: number, length: number, offload: PacketOffload): void {
    const hb = VIRTIO_NET_HDR_V1_BYTES;
    if (this.closed || length + hb > BUFFER_BYTES) return void this.stats.dropped++;
    this.txBytes.set(frame.subarray(offset, offset + length), hb);
    if (!this.writeHeader(length, offload)) return void this.stats.dropped++;
    this.count(this.tap.write(this.txAddressNumber, hb + length));
  }

  /**
   * A coalesced segment (or a long frame), written from the receive buffer where its
   * pieces lie: only the start of the first (the headers, whose TCP checksum field
   * changes) is copied.
   */
  private segmentToTap(bytes: Uint8Array, g: CoalescedSegment, offload: PacketOffload): boolean {
    const hb = VIRTIO_NET_HDR_V1_BYTES;
    const first = g.lengths[0]!;
    const copied = Math.min(first, HEADER_COPY_BYTES);
    if (!Number.isFinite(g.address)) return false; // joined and sent through toTap
    if (this.closed) return true;
    this.txBytes.set(bytes.subarray(g.offsets[0]!, g.offsets[0]! + copied), hb);
    if (!this.writeHeader(g.length, offload, copied)) {
      this.stats.dropped++;
      return true;
    }
    const iov = this.segmentIov;
    iov.clear();
    iov.push(this.txAddressNumber, hb + copied);
    if (first > copied) iov.push(g.address + g.offsets[0]! + copied, first - copied);
    for (let i = 1; i < g.count; i++) iov.push(g.address + g.offsets[i]!, g.lengths[i]!);
    this.count(this.tap.writev(iov));
    return true;
  }

  /**
   * Writes the vnet header for a `length`-byte frame whose headers are in txBytes after
   * it: DATA_VALID for a verified frame, GSO for a verified segment longer than the MTU.
   * False: the frame cannot go into the TAP.
   */
  private writeHeader(length: number, offload: PacketOffload, copied = length): boolean {
    const h = this.header.clear();
    if (length > this.nic.mtu + ETH_HLEN && offload.checksumValid) {
      if (!this.describeCoalesced(length, h, copied)) return false;
    } else if (offload.checksumValid) h.flags = VirtioNetFlag.DataValid;
    return encodeVirtioNetHeader(h, this.txView, 0, VIRTIO_NET_HDR_V1_BYTES, length) === null;
  }

  /** Counts a TAP write's result (the header writeHeader made). */
  private count(n: number): void {
    if (n < 0) this.stats.dropped++;
    else {
      this.stats.toTap++;
      if (this.header.gsoType !== VirtioGso.None) this.stats.coalescedToTap++;
    }
  }

  /**
   * A verified TCP segment longer than the MTU (RSC joined it): GSO with the MSS the MTU
   * gives this connection's headers, and a partial checksum (the field set to the
   * pseudo-header sum), which the kernel takes as good on local delivery and can finish
   * if it forwards the segment. False: not a TCP segment, which an MTU-bound link drops.
   */
  private describeCoalesced(length: number, h: VirtioNetHeader, copied: number): boolean {
    const hb = VIRTIO_NET_HDR_V1_BYTES;
    const p = this.parsed;
    // The headers must lie in the copied bytes (they always do: HEADER_COPY_BYTES is more than any TCP/IP header chain here).
    if (parsePacket(this.txBytes, hb, length, p) !== PacketKind.Tcp || p.isFragment || p.l3Offset !== ETH_HLEN || p.payloadOffset > copied) return false;
    const mss = this.nic.mtu + ETH_HLEN - p.payloadOffset;
    if (mss <= 0) return false;
    const sum = foldSum(l4PseudoHeaderSum(this.txBytes, hb, p));
    const field = hb + p.l4Offset + 16;
    this.txBytes[field] = sum >> 8;
    this.txBytes[field + 1] = sum & 0xff;
    h.flags = VirtioNetFlag.NeedsChecksum;
    h.csumStart = p.l4Offset;
    h.csumOffset = 16;
    h.gsoType = p.ipVersion === 4 ? VirtioGso.TcpV4 : VirtioGso.TcpV6;
    h.gsoSize = mss;
    h.hdrLen = p.payloadOffset;
    return true;
  }

  /**
   * Frames the kernel transmits: read straight into a bounce buffer of the NIC (guest
   * RAM, as Linux sends an skb's own pages) and sent from there. Without a free bounce
   * buffer nothing is read: the frames wait in the TAP until a send completes.
   */
  private readonly onReadable = (): void => {
    const hb = VIRTIO_NET_HDR_V1_BYTES;
    const datapath = this.nic.datapath;
    if (datapath === null) return;
    const iov = this.readIov;
    for (let i = 0; i < READ_BATCH && !this.closed; i++) {
      const bounce = datapath.reserve(0);
      if (bounce < 0) {
        this.stats.busy++;
        this.waitingForRoom = true;
        this.stopReading();
        break;
      }
      iov.clear();
      iov.push(this.rxAddressNumber, hb);
      iov.push(datapath.bounceFrameAddress(0, bounce), datapath.bounceFrameCapacity);
      const n = this.tap.readv(iov);
      if (n < 0) {
        datapath.returnReserved(0, bounce);
        if (n === -Errno.EINTR) continue;
        if (n !== -Errno.EAGAIN) this.stopReading();
        break;
      }
      const length = n - hb;
      const o = this.offload.clear();
      if (length < 14 || decodeVirtioNetHeader(this.rxView, 0, hb, length, this.header) !== null) {
        datapath.returnReserved(0, bounce);
        this.stats.dropped++;
        continue;
      }
      const h = this.header;
      if (h.flags & VirtioNetFlag.NeedsChecksum) o.setChecksum(h.csumStart, h.csumOffset);
      if (h.gsoType !== VirtioGso.None) o.setGso(gsoKind(h.gsoType), h.gsoSize, h.hdrLen);
      // One queue for now: the stack's TX hash would pick the queue (netvsc_select_queue).
      datapath.sendReserved(0, bounce, length, o);
      this.stats.fromTap++;
    }
    datapath.flush();
  };

  /** Reading stopped for want of a bounce buffer; a send completion resumes it. */
  private waitingForRoom = false;

  private readonly onSendRoom = (): void => {
    if (!this.waitingForRoom || this.closed) return;
    this.waitingForRoom = false;
    this.token = this.poller.add(this.tap.fd, this.onReadable);
  };

  private stopReading(): void {
    if (this.token !== null) this.poller.remove(this.token);
    this.token = null;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.stopReading();
    this.nic.off('link', this.onLink);
    this.nic.onSegment = null;
    this.nic.onSendRoom = null;
    this.tap.close();
    munmap(this.rxAddress, HEADER_PAGE_BYTES);
    munmap(this.txAddress, BUFFER_BYTES);
  }
}

function gsoKind(t: number): GsoKind {
  return t === VirtioGso.TcpV4 ? 'tcpv4' : t === VirtioGso.TcpV6 ? 'tcpv6' : t === VirtioGso.Udp ? 'udp' : t === VirtioGso.UdpL4 ? 'udp-l4' : 'none';
}
