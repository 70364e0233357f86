// A NetBackend on the VM-to-VM switch (net-switch-hub.ts): one unix datagram socket,
// mutually connected with the port socket the hub made for us, one Ethernet frame per
// datagram. The hub carries plain frames, so whatever a NIC would have finished in
// hardware happens here: a partial checksum (NEEDS_CSUM) is completed, and a GSO frame,
// or a TCP frame too large for the link, is cut into MTU-sized segments in software.
//
// Frames that need neither go out zero-copy: sendmsg straight from the guest's pages.
// The others are copied once (native memcpy, no JS view per packet) into a staging
// buffer; segments go out with one sendmmsg. Received frames are read with recvmmsg in
// batches into fixed slots and lent to the handler as views made once at start-up.
//
// Joining and losing the hub. open() sends HELLO to the hub's path and waits for WELCOME
// (asynchronously); until then frames are dropped and counted. A keep-alive HELLO every
// keepaliveMs keeps our port alive in the hub and discovers a hub that died (the send
// fails with ECONNREFUSED); we then start over with a fresh socket and keep sending HELLO
// to the path until a hub (the restarted one) answers.
import { Errno, SysError } from '../../sys/errors.js';
import type { Poller } from '../../sys/epoll.js';
import { IovecList } from '../../sys/iovec.js';
import { mapAnonymous, munmap, viewOf } from '../../sys/memfd.js';
import { MessageVector, MSG_TRUNC, NativeSocketAddress, nativeCopy, UnixDatagramSocket, unixAddress } from '../../sys/unix-dgram.js';
import { fillPartialChecksum } from './inet-checksum.js';
import type { NetBackend, NetBackendStats, NetFrame, ReceiveHandler } from './net-backend.js';
import { PacketOffload } from './net-backend.js';
import { decodeSwitchControl, encodeSwitchControl, SWITCH_CONTROL_BYTES, SwitchControlError, SwitchControlMessage, SwitchMessageType } from './net-switch-hub.js';
import { PacketKind, parsePacket, ParsedPacket } from './packet-parse.js';
import { SegmentError, TcpSegmenter } from './tcp-segmenter.js';

const ETHERNET_HEADER_BYTES = 14;
/** Ethernet header plus one VLAN tag: what a frame may add to the MTU. */
const LINK_OVERHEAD = 18;
/** Room for the largest frame a guest hands over (64 KiB IP packet + headers). */
const STAGING_BYTES = 128 * 1024;
/** Segments of one staged frame, back to back; 64 KiB at a tiny MSS needs more than twice the input. */
const SEGMENT_BYTES = 256 * 1024;
const SEGMENT_CAPACITY = 1400;
const DEFAULT_BATCH = 32;
const DEFAULT_MAX_SEND_SEGMENTS = 64;

export interface SwitchBackendOptions {
  /** The hub's socket path (`enlighten switch PATH`). */
  path: string;
  /** Drives the reads; shared with other devices on this thread, not owned. */
  poller: Poller;
  /** The link's MTU (IP packet bytes). Default 1500. */
  mtu?: number;
  /** A MAC to propose to the guest NIC. */
  mac?: Uint8Array;
  maxSendSegments?: number;
  /** Datagrams read per wake-up. Default 32. */
  receiveBatch?: number;
  /** HELLO interval: keeps our port alive, finds a dead hub, retries joining. Default 5000 ms. */
  keepaliveMs?: number;
  /** SO_SNDBUF: bytes in flight to the hub before send() says false. Default 1 MiB. */
  sendBuffer?: number;
  /** Called each time the hub accepts us (first join and every rejoin). */
  onJoin?: () => void;
}

/** What the switch backend did beyond the common counters. */
export interface SwitchBackendCounters {
  /** Frames cut into segments in software, and the segments that made. */
  segmented: number;
  segments: number;
  /** Partial checksums completed in software. */
  checksummed: number;
  /** WELCOMEs accepted, and times the hub was found gone. */
  joins: number;
  hubLost: number;
}

export class SwitchBackend implements NetBackend {
  readonly path: string;
  readonly mtu: number;
  readonly mac: Uint8Array | undefined;
  readonly maxSendSegments: number;
  readonly stats: NetBackendStats = { rxFrames: 0, rxBytes: 0, rxDropped: 0, txFrames: 0, txBytes: 0, txDropped: 0 };
  readonly counters: SwitchBackendCounters = { segmented: 0, segments: 0, checksummed: 0, joins: 0, hubLost: 0 };

  private readonly poller: Poller;
  private readonly onJoin: (() => void) | undefined;
  private readonly hubAddress: NativeSocketAddress;
  private readonly maxFrame: number;
  /** The hub's limit from WELCOME; frames above min(ours, its) are segmented or dropped. */
  private hubMaxFrame = 0;
  private socket: UnixDatagramSocket;
  private isJoined = false;
  private linkUp = true;
  private closed = false;
  private handler: ReceiveHandler | null = null;
  private batchEnd: (() => void) | null = null;
  private paused = false;
  private pollToken: number | null = null;
  private readonly keepaliveTimer: NodeJS.Timeout;

  // Receive: fixed slots, one view each, filled by recvmmsg.
  private readonly receiveBatch: number;
  private readonly rxSlotBytes: number;
  private readonly rxLength: number;
  private readonly rxAddress: bigint;
  private readonly rxVector: MessageVector;
  private readonly rxViews: Uint8Array[] = [];
  private readonly rxOffload = new PacketOffload();
  /** Frames read but not yet delivered because the receiver paused in the middle of a batch. */
  private rxNext = 0;
  private rxCount = 0;
  private resumeScheduled = false;

  // Send: staging for frames that need work, segment output, a vector for sendmmsg.
  private readonly stagingAddress: bigint;
  private readonly staging: Uint8Array;
  private readonly segmentsAddress: bigint;
  private readonly segmentsBuffer: Uint8Array;
  private readonly txVector: MessageVector;
  private readonly segmenter = new TcpSegmenter(SEGMENT_CAPACITY);
  private readonly parsed = new ParsedPacket();
  private readonly noOffload = new PacketOffload();
  /** Segments of the last GSO frame that the socket had no room for yet: [pendingNext, pendingCount). */
  private pendingNext = 0;
  private pendingCount = 0;
  private retryTimer: NodeJS.Timeout | null = null;
  private retryDelayMs = 1;
  private readonly controlAddress: bigint;
  private readonly controlBytes: Uint8Array;
  private readonly control = new SwitchControlMessage();

  private constructor(options: SwitchBackendOptions) {
    this.path = options.path;
    this.poller = options.poller;
    this.onJoin = options.onJoin;
    this.mtu = options.mtu ?? 1500;
    if (!Number.isInteger(this.mtu) || this.mtu < 68 || this.mtu > 65535) throw new RangeError(`MTU ${this.mtu} out of range`);
    this.mac = options.mac ? new Uint8Array(options.mac) : undefined;
    if (this.mac && this.mac.length !== 6) throw new RangeError('a MAC address is 6 bytes');
    this.maxSendSegments = options.maxSendSegments ?? DEFAULT_MAX_SEND_SEGMENTS;
    this.receiveBatch = options.receiveBatch ?? DEFAULT_BATCH;
    if (!Number.isInteger(this.receiveBatch) || this.receiveBatch < 1 || this.receiveBatch > 1024) throw new RangeError(`receiveBatch ${this.receiveBatch} out of range`);
    this.maxFrame = this.mtu + LINK_OVERHEAD;
    this.hubAddress = new NativeSocketAddress(unixAddress(options.path));

    this.rxSlotBytes = Math.ceil((this.maxFrame + 64) / 64) * 64;
    this.rxLength = Math.ceil((this.rxSlotBytes * this.receiveBatch) / 4096) * 4096;
    this.rxAddress = mapAnonymous(this.rxLength);
    const rx = viewOf(this.rxAddress, this.rxLength);
    this.rxVector = new MessageVector(this.receiveBatch);
    for (let i = 0; i < this.receiveBatch; i++) {
      this.rxVector.setBuffer(i, Number(this.rxAddress) + i * this.rxSlotBytes, this.rxSlotBytes, true);
      this.rxViews.push(new Uint8Array(rx, i * this.rxSlotBytes, this.rxSlotBytes));
    }

    this.stagingAddress = mapAnonymous(STAGING_BYTES);
    this.staging = new Uint8Array(viewOf(this.stagingAddress, STAGING_BYTES));
    this.segmentsAddress = mapAnonymous(SEGMENT_BYTES);
    this.segmentsBuffer = new Uint8Array(viewOf(this.segmentsAddress, SEGMENT_BYTES));
    this.txVector = new MessageVector(SEGMENT_CAPACITY);
    this.controlAddress = mapAnonymous(4096);
    this.controlBytes = new Uint8Array(viewOf(this.controlAddress, SWITCH_CONTROL_BYTES));

    this.socket = this.newSocket(options.sendBuffer ?? 1 << 20);
    this.sendBufferBytes = options.sendBuffer ?? 1 << 20;
    this.keepaliveMs = options.keepaliveMs ?? 5000;
    if (!(this.keepaliveMs > 0)) throw new RangeError(`keepaliveMs ${this.keepaliveMs} must be positive`);
    // The timer ticks at least once a second so a lost hub is looked for again soon;
    // keep-alives to a live one still go every keepaliveMs.
    this.keepaliveTimer = setInterval(() => this.keepalive(), Math.min(this.keepaliveMs, 1000));
    this.keepaliveTimer.unref();
  }

  private readonly sendBufferBytes: number;
  private readonly keepaliveMs: number;
  private lastKeepalive = 0;

  /**
   * Opens a socket and asks the hub at options.path to let us join. Throws SysError when
   * nothing is there (ENOENT) or the socket file is stale (ECONNREFUSED): a mistyped path
   * should fail loudly. The join completes asynchronously (see `joined`, onJoin).
   */
  static open(options: SwitchBackendOptions): SwitchBackend {
    const backend = new SwitchBackend(options);
    const n = backend.sendHelloToHub();
    if (n < 0) {
      backend.close();
      throw new SysError(`switch hello to ${options.path}`, -n);
    }
    backend.updatePolling(); // read the WELCOME even before anyone wants frames
    return backend;
  }

  /** The same as open(): a port on the switch at options.path. */
  static connect(options: SwitchBackendOptions): SwitchBackend {
    return SwitchBackend.open(options);
  }

  /** True once the hub has accepted us (and until we find it gone). */
  get joined(): boolean {
    return this.isJoined;
  }

  send(frame: NetFrame, offload: PacketOffload = this.noOffload): boolean {
    if (this.closed) return true;
    const gathered = frame instanceof IovecList;
    if (gathered && frame.count > this.maxSendSegments) throw new RangeError(`frame has ${frame.count} segments; at most ${this.maxSendSegments}`);
    if (!this.linkUp || !this.isJoined) return this.dropSend();
    if (this.pendingNext < this.pendingCount && !this.flushPending()) return false;
    const length = frame.byteLength;
    if (length < ETHERNET_HEADER_BYTES) return this.dropSend();
    const limit = this.hubMaxFrame > 0 ? Math.min(this.maxFrame, this.hubMaxFrame) : this.maxFrame;
    const segment = offload.gso !== 'none' || length > limit;

    if (!segment && !offload.needsChecksum) {
      let n: number;
      if (gathered) n = this.socket.sendIovecs(frame);
      else {
        this.staging.set(frame);
        n = this.socket.send(Number(this.stagingAddress), length);
      }
      return this.afterSingleSend(n, length);
    }

    // Everything else needs the bytes in our own memory.
    if (length > STAGING_BYTES) return this.dropSend();
    if (gathered) {
      let at = Number(this.stagingAddress);
      for (let i = 0; i < frame.count; i++) {
        const segmentLength = frame.lengthAt(i);
        nativeCopy(at, frame.addressAt(i), segmentLength);
        at += segmentLength;
      }
    } else {
      this.staging.set(frame);
    }

    if (!segment) {
      // A partial checksum only. Sum to the end of the L4 datagram when the frame parses
      // (Ethernet padding is not part of it), else to the end of the frame.
      const kind = parsePacket(this.staging, 0, length, this.parsed);
      const end = kind === PacketKind.Tcp || kind === PacketKind.Udp ? this.parsed.l4End : length;
      if (!fillPartialChecksum(this.staging, 0, end, offload.checksumStart, offload.checksumOffset)) return this.dropSend();
      this.counters.checksummed++;
      return this.afterSingleSend(this.socket.send(Number(this.stagingAddress), length), length);
    }

    // Software segmentation (computes every checksum itself). UDP GSO is not done here.
    if (offload.gso === 'udp' || offload.gso === 'udp-l4') return this.dropSend();
    const mss = offload.gso !== 'none' ? offload.gsoSize : this.mtu;
    // The segmenter's mtu counts the IP packet; leave room for the Ethernet header and a VLAN tag.
    const linkMtu = Math.min(this.mtu, limit - LINK_OVERHEAD);
    const error = this.segmenter.segment(this.staging, 0, length, mss, this.segmentsBuffer, 0, linkMtu);
    if (error !== SegmentError.None) return this.dropSend();
    const count = this.segmenter.count;
    const base = Number(this.segmentsAddress);
    for (let i = 0; i < count; i++) this.txVector.setBuffer(i, base + this.segmenter.frameOffsets[i]!, this.segmenter.frameLengths[i]!);
    const r = this.socket.sendMany(this.txVector, 0, count);
    if (r < 0) {
      const e = -r;
      if (e === Errno.EAGAIN || e === Errno.ENOBUFS || e === Errno.EINTR) return false; // nothing went out
      if (isHubGone(e)) this.hubLost();
      return this.dropSend();
    }
    this.counters.segmented++;
    this.counters.segments += count;
    this.stats.txFrames++;
    this.stats.txBytes += length;
    if (r < count) {
      // Part of the burst is out: the rest must follow before anything else, or TCP sees reordering.
      this.pendingNext = r;
      this.pendingCount = count;
      this.scheduleRetry();
    }
    return true;
  }

  onReceive(handler: ReceiveHandler, batchEnd?: () => void): void {
    this.handler = handler;
    this.batchEnd = batchEnd ?? null;
    this.updatePolling();
  }

  pauseReceive(): void {
    this.paused = true;
    this.updatePolling();
  }

  resumeReceive(): void {
    this.paused = false;
    this.updatePolling();
    // Frames read before the pause have no readiness event of their own.
    if (this.rxNext < this.rxCount && !this.resumeScheduled) {
      this.resumeScheduled = true;
      setImmediate(() => {
        this.resumeScheduled = false;
        if (!this.closed && !this.paused) this.deliverPending();
      });
    }
  }

  /** Link down drops frames both ways here; our port in the hub stays (keep-alives go on). */
  setLinkUp(up: boolean): void {
    this.linkUp = up;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.keepaliveTimer);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.isJoined) this.sendControl(SwitchMessageType.Bye, false);
    this.isJoined = false;
    this.updatePolling();
    this.socket.close();
    this.hubAddress.release();
    this.rxVector.release();
    this.txVector.release();
    munmap(this.rxAddress, this.rxLength);
    munmap(this.stagingAddress, STAGING_BYTES);
    munmap(this.segmentsAddress, SEGMENT_BYTES);
    munmap(this.controlAddress, 4096);
  }

  // ---- joining ----

  private newSocket(sendBuffer: number): UnixDatagramSocket {
    const socket = UnixDatagramSocket.create({ sendBuffer, receiveBuffer: sendBuffer });
    try {
      socket.autobind();
    } catch (e) {
      socket.close();
      throw e;
    }
    return socket;
  }

  private sendHelloToHub(): number {
    return this.sendControl(SwitchMessageType.Hello, true);
  }

  /** A control message to the hub's path (joining) or our connected port: bytes sent or -errno. */
  private sendControl(type: SwitchMessageType, toPath: boolean): number {
    encodeSwitchControl(type, this.maxFrame, this.controlBytes);
    const address = Number(this.controlAddress);
    return toPath ? this.socket.sendTo(address, SWITCH_CONTROL_BYTES, this.hubAddress) : this.socket.send(address, SWITCH_CONTROL_BYTES);
  }

  private keepalive(): void {
    if (this.closed) return;
    if (this.isJoined) {
      const now = performance.now();
      if (now - this.lastKeepalive < this.keepaliveMs - 1) return;
      this.lastKeepalive = now;
      const n = this.sendControl(SwitchMessageType.Hello, false);
      if (n < 0 && isHubGone(-n)) this.hubLost();
      return;
    }
    // Not joined: (re)try the hub's path; ENOENT/ECONNREFUSED just mean it is not back yet.
    this.updatePolling();
    this.sendHelloToHub();
  }

  /** The hub (or our port in it) is gone: start over on a fresh socket, so no stale connection refuses the next hub. */
  private hubLost(): void {
    if (this.closed) return;
    this.counters.hubLost++;
    this.isJoined = false;
    this.pendingNext = this.pendingCount = 0;
    this.rxNext = this.rxCount = 0;
    if (this.pollToken !== null) {
      this.poller.remove(this.pollToken);
      this.pollToken = null;
    }
    this.socket.close();
    this.socket = this.newSocket(this.sendBufferBytes);
    this.updatePolling();
    this.sendHelloToHub();
  }

  private onControl(slot: number, length: number): void {
    if (decodeSwitchControl(this.rxViews[slot]!, 0, length, this.control) !== SwitchControlError.None) return;
    if (this.control.type !== SwitchMessageType.Welcome || this.isJoined) return;
    // The WELCOME comes from the port socket the hub made for us: connect to it, which
    // also makes the kernel refuse datagrams from anyone else.
    const nameLength = this.rxVector.nameLength(slot);
    if (nameLength <= 2) return;
    const peer = this.rxVector.nameView(slot).slice(0, nameLength);
    if (this.socket.connectAddress(peer) !== 0) return;
    this.hubMaxFrame = this.control.maxFrame;
    this.isJoined = true;
    this.counters.joins++;
    this.updatePolling();
    this.onJoin?.();
  }

  // ---- receiving ----

  /** Read while someone wants frames, and always while joining (the WELCOME must get through). */
  private updatePolling(): void {
    const want = !this.closed && (!this.isJoined || (this.handler !== null && !this.paused));
    if (want && this.pollToken === null) this.pollToken = this.poller.add(this.socket.fd, this.onReadable);
    else if (!want && this.pollToken !== null) {
      this.poller.remove(this.pollToken);
      this.pollToken = null;
    }
  }

  private readonly onReadable = (): void => {
    if (this.closed) return;
    if (this.rxNext < this.rxCount) {
      this.deliverPending();
      if (this.rxNext < this.rxCount) return;
    }
    const n = this.socket.receiveMany(this.rxVector, this.receiveBatch);
    if (n < 0) {
      if (isHubGone(-n)) this.hubLost();
      return;
    }
    this.rxNext = 0;
    this.rxCount = n;
    this.deliverPending();
  };

  /** Hands out the frames of the current batch until it ends or the receiver pauses. */
  private deliverPending(): void {
    let delivered = 0;
    while (this.rxNext < this.rxCount) {
      if (this.isJoined && this.handler !== null && this.paused) break;
      const i = this.rxNext++;
      const length = this.rxVector.messageLength(i);
      if ((this.rxVector.messageFlags(i) & MSG_TRUNC) !== 0) {
        this.stats.rxDropped++;
        continue;
      }
      if (length < ETHERNET_HEADER_BYTES) {
        this.onControl(i, length);
        continue;
      }
      if (!this.isJoined || !this.linkUp || this.handler === null) {
        this.stats.rxDropped++;
        continue;
      }
      this.stats.rxFrames++;
      this.stats.rxBytes += length;
      delivered++;
      // Checksums stay unverified (checksumValid false): another VM's frames are not to be trusted.
      this.handler(this.rxViews[i]!, length, this.rxOffload.clear());
    }
    if (delivered > 0) this.batchEnd?.();
  }

  // ---- sending ----

  private afterSingleSend(n: number, length: number): boolean {
    if (n >= 0) {
      this.stats.txFrames++;
      this.stats.txBytes += length;
      return true;
    }
    const e = -n;
    if (e === Errno.EAGAIN || e === Errno.ENOBUFS || e === Errno.EINTR) return false;
    if (isHubGone(e)) this.hubLost();
    return this.dropSend();
  }

  private dropSend(): boolean {
    this.stats.txDropped++;
    return true;
  }

  /** Sends what is left of a segmented frame; true when nothing is left. */
  private flushPending(): boolean {
    while (this.pendingNext < this.pendingCount) {
      const r = this.socket.sendMany(this.txVector, this.pendingNext, this.pendingCount - this.pendingNext);
      if (r > 0) {
        this.pendingNext += r;
        continue;
      }
      const e = -r;
      if (e === Errno.EINTR) continue;
      if (e === Errno.EAGAIN || e === Errno.ENOBUFS) {
        this.scheduleRetry();
        return false;
      }
      // The hub is gone or the segment is refused: the rest of the burst is lost (TCP resends).
      this.stats.txDropped++;
      this.pendingNext = this.pendingCount = 0;
      if (isHubGone(e)) this.hubLost();
      return true;
    }
    this.pendingNext = this.pendingCount = 0;
    this.retryDelayMs = 1;
    return true;
  }

  /** Nothing tells us when the hub has drained (the Poller watches readability only): retry on a short, growing timer. */
  private scheduleRetry(): void {
    if (this.retryTimer !== null || this.closed) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      if (this.closed) return;
      if (this.flushPending()) this.retryDelayMs = 1;
      else this.retryDelayMs = Math.min(this.retryDelayMs * 2, 50);
    }, this.retryDelayMs);
  }
}

function isHubGone(e: number): boolean {
  return e === Errno.ECONNREFUSED || e === Errno.ECONNRESET || e === Errno.ENOTCONN || e === Errno.EPIPE || e === Errno.ENOENT || e === Errno.EDESTADDRREQ;
}
