// The VM-to-VM switch: a learning Ethernet switch whose ports are unix datagram sockets,
// so VMs on one host talk without bridges, TAPs or root. It runs in-process from a Poller
// (`enlighten switch PATH` runs one on its own).
//
// Joining. The hub binds one socket at PATH. A VM's backend (an autobound socket) sends a
// 12-byte HELLO there; the hub answers with WELCOME from a new socket made for that VM,
// connected to the VM's address, and the VM connects back to it. The pair is private (a
// connected receiver refuses other senders) and, being mutually connected, is bounded only
// by SO_SNDBUF and not by net.unix.max_dgram_qlen (10 by default), which would otherwise
// cut a 40-segment TSO burst short.
//
// Frames are plain Ethernet, one per datagram. A datagram shorter than an Ethernet header
// (14 bytes) can never be a frame, so the control messages are 12 bytes long and share the
// same socket: HELLO (join, then keep-alive), WELCOME (the hub's answer) and BYE (leaving).
//
// Forwarding. Source MACs are learned per port and age out; unicast to a learned MAC goes
// to its port only, everything else (broadcast, multicast, unknown) floods to every other
// port. Frames read in one batch from a port are grouped per destination and sent with one
// sendmmsg per destination. A destination whose socket buffer is full loses the frame (a
// switch drops; TCP recovers); a destination whose socket is gone is forgotten at once,
// and one that stays silent longer than portTimeoutMs is forgotten by the sweep.
import fs from 'node:fs';
import { Errno } from '../../sys/errors.js';
import type { Poller } from '../../sys/epoll.js';
import { mapAnonymous, munmap, viewOf } from '../../sys/memfd.js';
import { MessageVector, MSG_TRUNC, UnixDatagramSocket, unixSocketIsLive } from '../../sys/unix-dgram.js';

// ---- control messages ----

export const SWITCH_CONTROL_BYTES = 12;
/** 'enSW' */
export const SWITCH_MAGIC = 0x656e5357;
export const SWITCH_PROTOCOL_VERSION = 1;
const ETHERNET_HEADER_BYTES = 14;

export const SwitchMessageType = {
  /** VM -> hub: join (to the hub's path) or keep-alive (on the VM's own port). */
  Hello: 1,
  /** Hub -> VM, from the VM's port socket: connect to the sender of this message. */
  Welcome: 2,
  /** VM -> hub: forget my port now. */
  Bye: 3,
} as const;
export type SwitchMessageType = (typeof SwitchMessageType)[keyof typeof SwitchMessageType];

export const SwitchControlError = {
  None: 0,
  /** Not exactly SWITCH_CONTROL_BYTES, or the bounds are outside the buffer. */
  BadLength: 1,
  BadMagic: 2,
  UnsupportedVersion: 3,
  UnknownType: 4,
  /** maxFrame below an Ethernet header or above 64 KiB + headers. */
  BadMaxFrame: 5,
} as const;
export type SwitchControlError = (typeof SwitchControlError)[keyof typeof SwitchControlError];

/** Largest frame either side may announce: a 64 KiB IP packet plus Ethernet and two VLAN tags. */
export const SWITCH_MAX_FRAME_LIMIT = 65535 + 22;

/** A decoded control message; reused. */
export class SwitchControlMessage {
  type: SwitchMessageType = SwitchMessageType.Hello;
  /** The largest frame the sender accepts (VM: MTU + Ethernet/VLAN headers; hub: its limit). */
  maxFrame = 0;
}

/**
 * Layout (big-endian): u32 magic 'enSW', u8 version, u8 type, u16 reserved (sent as 0,
 * ignored), u32 maxFrame.
 */
export function encodeSwitchControl(type: SwitchMessageType, maxFrame: number, out: Uint8Array, offset = 0): void {
  if (offset < 0 || offset + SWITCH_CONTROL_BYTES > out.length) throw new RangeError('control message does not fit');
  const v = new DataView(out.buffer, out.byteOffset + offset, SWITCH_CONTROL_BYTES);
  v.setUint32(0, SWITCH_MAGIC);
  v.setUint8(4, SWITCH_PROTOCOL_VERSION);
  v.setUint8(5, type);
  v.setUint16(6, 0);
  v.setUint32(8, maxFrame >>> 0);
}

function u32(buf: Uint8Array, at: number): number {
  return ((buf[at]! << 24) | (buf[at + 1]! << 16) | (buf[at + 2]! << 8) | buf[at + 3]!) >>> 0;
}

/** Decodes the control message at buf[offset .. offset+length); anything odd is a typed error. */
export function decodeSwitchControl(buf: Uint8Array, offset: number, length: number, out: SwitchControlMessage): SwitchControlError {
  if (!Number.isInteger(offset) || !Number.isInteger(length) || offset < 0 || length < 0 || offset + length > buf.length) return SwitchControlError.BadLength;
  if (length !== SWITCH_CONTROL_BYTES) return SwitchControlError.BadLength;
  if (u32(buf, offset) !== SWITCH_MAGIC) return SwitchControlError.BadMagic;
  if (buf[offset + 4] !== SWITCH_PROTOCOL_VERSION) return SwitchControlError.UnsupportedVersion;
  const type = buf[offset + 5]!;
  if (type !== SwitchMessageType.Hello && type !== SwitchMessageType.Welcome && type !== SwitchMessageType.Bye) return SwitchControlError.UnknownType;
  const maxFrame = u32(buf, offset + 8);
  if (maxFrame < ETHERNET_HEADER_BYTES || maxFrame > SWITCH_MAX_FRAME_LIMIT) return SwitchControlError.BadMaxFrame;
  out.type = type as SwitchMessageType;
  out.maxFrame = maxFrame;
  return SwitchControlError.None;
}

/** A MAC address (6 bytes at buf[at]) as one exact number, a Map key that costs no allocation. */
export function macKey(buf: Uint8Array, at: number): number {
  return ((buf[at]! << 8) | buf[at + 1]!) * 0x100000000 + u32(buf, at + 2);
}

export function macString(key: number): string {
  return key.toString(16).padStart(12, '0').replace(/(..)(?!$)/g, '$1:');
}

// ---- the hub ----

export interface NetSwitchHubOptions {
  /** Where the hub's socket lives. A stale socket file (its owner died) is replaced; a live hub there is an error. */
  path: string;
  poller: Poller;
  /** Largest frame forwarded (bigger ones are dropped). Default 16384 (jumbo frames fit). */
  maxFrameBytes?: number;
  /** A learned MAC is forgotten after this long without a frame from it. Default 300 s (Linux bridges). */
  macAgeMs?: number;
  /** A port with no datagram (frame or keep-alive) for this long is forgotten. Default 30 s. */
  portTimeoutMs?: number;
  /** Ports at most; further HELLOs are ignored. Default 64. */
  maxPorts?: number;
  /** Datagrams read from one port per wake-up. Default 32. */
  receiveBatch?: number;
  /** SO_SNDBUF of each port socket: how much may wait for a slow VM. Default 1 MiB. */
  portSendBuffer?: number;
}

export interface NetSwitchHubStats {
  /** Frames read from ports. */
  rxFrames: number;
  rxBytes: number;
  /** Frame copies handed to a destination port's socket. */
  txFrames: number;
  /** Frames sent to one learned port / flooded to all others. */
  unicast: number;
  flooded: number;
  /** Frame copies lost: destination full, frame too large for it, malformed input, same-port unicast. */
  dropped: number;
  joins: number;
  leaves: number;
}

export interface HubPortInfo {
  id: number;
  /** The VM socket's address: a path, or '@' + abstract name. */
  peer: string;
  macs: string[];
  rxFrames: number;
  txFrames: number;
  txDropped: number;
}

interface MacEntry {
  port: HubPort;
  seen: number;
}

class HubPort {
  readonly queue: Uint16Array;
  queued = 0;
  lastSeen: number;
  closed = false;
  pollToken = 0;
  rxFrames = 0;
  txFrames = 0;
  txDropped = 0;

  constructor(
    readonly id: number,
    readonly socket: UnixDatagramSocket,
    readonly peer: Uint8Array,
    public maxFrame: number,
    batch: number,
    now: number,
  ) {
    this.queue = new Uint16Array(batch);
    this.lastSeen = now;
  }
}

const DEFAULT_MAX_FRAME = 16384;
const DEFAULT_BATCH = 32;

export class NetSwitchHub {
  readonly path: string;
  readonly maxFrameBytes: number;
  readonly stats: NetSwitchHubStats = { rxFrames: 0, rxBytes: 0, txFrames: 0, unicast: 0, flooded: 0, dropped: 0, joins: 0, leaves: 0 };

  private readonly poller: Poller;
  private readonly socket: UnixDatagramSocket;
  private readonly socketToken: number;
  private readonly macAgeMs: number;
  private readonly portTimeoutMs: number;
  private readonly maxPorts: number;
  private readonly batch: number;
  private readonly portSendBuffer: number;
  private readonly portList: HubPort[] = [];
  private readonly macs = new Map<number, MacEntry>();
  private nextPortId = 1;
  // Receive slots (one frame each) shared by every port: handlers run one at a time.
  private readonly slotBytes: number;
  private readonly slotsAddress: bigint;
  private readonly slotsLength: number;
  private readonly slots: Uint8Array;
  private readonly rxVector: MessageVector;
  private readonly txVector: MessageVector;
  private readonly frameLengths: Uint32Array;
  private readonly dirty: HubPort[] = [];
  private dirtyCount = 0;
  private readonly control = new SwitchControlMessage();
  private readonly controlAddress: bigint;
  private readonly controlBytes: Uint8Array;
  private readonly sweepTimer: NodeJS.Timeout;
  private closed = false;

  private constructor(options: NetSwitchHubOptions, socket: UnixDatagramSocket) {
    this.path = options.path;
    this.poller = options.poller;
    this.socket = socket;
    this.maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MAX_FRAME;
    if (!Number.isInteger(this.maxFrameBytes) || this.maxFrameBytes < 64 || this.maxFrameBytes > SWITCH_MAX_FRAME_LIMIT) throw new RangeError(`maxFrameBytes ${this.maxFrameBytes} out of range`);
    this.macAgeMs = options.macAgeMs ?? 300_000;
    this.portTimeoutMs = options.portTimeoutMs ?? 30_000;
    this.maxPorts = options.maxPorts ?? 64;
    this.batch = options.receiveBatch ?? DEFAULT_BATCH;
    if (!Number.isInteger(this.batch) || this.batch < 1 || this.batch > 1024) throw new RangeError(`receiveBatch ${this.batch} out of range`);
    this.portSendBuffer = options.portSendBuffer ?? 1 << 20;

    this.slotBytes = Math.ceil(this.maxFrameBytes / 64) * 64;
    this.slotsLength = Math.ceil((this.slotBytes * this.batch) / 4096) * 4096;
    this.slotsAddress = mapAnonymous(this.slotsLength);
    this.slots = new Uint8Array(viewOf(this.slotsAddress, this.slotsLength));
    this.rxVector = new MessageVector(this.batch);
    for (let i = 0; i < this.batch; i++) this.rxVector.setBuffer(i, this.slotAddress(i), this.slotBytes, true);
    this.txVector = new MessageVector(this.batch);
    this.frameLengths = new Uint32Array(this.batch);
    this.controlAddress = mapAnonymous(4096);
    this.controlBytes = new Uint8Array(viewOf(this.controlAddress, SWITCH_CONTROL_BYTES));

    this.socketToken = this.poller.add(socket.fd, this.onJoinSocketReadable);
    const sweepEvery = Math.max(20, Math.min(10_000, Math.floor(Math.min(this.macAgeMs, this.portTimeoutMs) / 2)));
    this.sweepTimer = setInterval(() => this.sweep(), sweepEvery);
    this.sweepTimer.unref();
  }

  /** Binds PATH (replacing a stale socket file) and starts serving from the poller. */
  static start(options: NetSwitchHubOptions): NetSwitchHub {
    const { path } = options;
    let stat: fs.Stats | undefined;
    try {
      stat = fs.statSync(path);
    } catch {
      stat = undefined;
    }
    if (stat) {
      if (!stat.isSocket()) throw new Error(`${path} exists and is not a socket; not replacing it`);
      if (unixSocketIsLive(path)) throw new Error(`a switch (or another socket) is already live at ${path}`);
      fs.unlinkSync(path); // left behind by a hub that died
    }
    const socket = UnixDatagramSocket.create();
    try {
      socket.bind(path);
      return new NetSwitchHub(options, socket);
    } catch (e) {
      socket.close();
      throw e;
    }
  }

  get portCount(): number {
    return this.portList.length;
  }

  ports(): HubPortInfo[] {
    return this.portList.map((p) => ({
      id: p.id,
      peer: describeAddress(p.peer),
      macs: [...this.macs].filter(([, e]) => e.port === p).map(([k]) => macString(k)),
      rxFrames: p.rxFrames,
      txFrames: p.txFrames,
      txDropped: p.txDropped,
    }));
  }

  /** The learned MACs and their port ids. */
  macTable(): Array<{ mac: string; port: number }> {
    return [...this.macs].map(([k, e]) => ({ mac: macString(k), port: e.port.id }));
  }

  /**
   * Stops serving and closes every port. `unlink: false` leaves the socket file behind, as
   * a crash would (tests use it; the next start() replaces the stale file). Idempotent.
   */
  close(options: { unlink?: boolean } = {}): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.sweepTimer);
    for (const port of [...this.portList]) this.removePort(port, false);
    this.poller.remove(this.socketToken);
    this.socket.close(options.unlink ?? true);
    this.rxVector.release();
    this.txVector.release();
    munmap(this.slotsAddress, this.slotsLength);
    munmap(this.controlAddress, 4096);
  }

  private slotAddress(index: number): number {
    return Number(this.slotsAddress) + index * this.slotBytes;
  }

  /** The join socket: HELLO makes (or refreshes) a port, BYE removes one; frames have no business here. */
  private readonly onJoinSocketReadable = (): void => {
    if (this.closed) return;
    const vector = this.rxVector;
    const n = this.socket.receiveMany(vector, this.batch);
    if (n <= 0) return;
    const now = performance.now();
    for (let i = 0; i < n; i++) {
      const length = vector.messageLength(i);
      const at = i * this.slotBytes;
      if (decodeSwitchControl(this.slots, at, length, this.control) !== SwitchControlError.None) {
        this.stats.dropped++;
        continue;
      }
      const nameLength = vector.nameLength(i);
      if (nameLength <= 2 || nameLength > 110) continue; // an unbound sender: we could never answer it
      const peer = vector.nameView(i).subarray(0, nameLength);
      const existing = this.portList.find((p) => equalBytes(p.peer, peer));
      if (this.control.type === SwitchMessageType.Bye) {
        if (existing) this.removePort(existing, true);
        continue;
      }
      if (this.control.type !== SwitchMessageType.Hello) continue;
      if (existing) {
        existing.lastSeen = now;
        existing.maxFrame = this.control.maxFrame;
        this.sendWelcome(existing);
      } else {
        this.addPort(new Uint8Array(peer), this.control.maxFrame, now);
      }
    }
  };

  private addPort(peer: Uint8Array, maxFrame: number, now: number): void {
    if (this.portList.length >= this.maxPorts) return;
    let socket: UnixDatagramSocket;
    try {
      socket = UnixDatagramSocket.create({ sendBuffer: this.portSendBuffer, receiveBuffer: this.portSendBuffer });
    } catch {
      this.stats.dropped++; // out of descriptors or memory: this VM may try again with its next HELLO
      return;
    }
    try {
      socket.autobind();
      if (socket.connectAddress(peer) !== 0) {
        socket.close(); // the VM left before we answered
        return;
      }
    } catch {
      socket.close();
      this.stats.dropped++;
      return;
    }
    const port = new HubPort(this.nextPortId++, socket, peer, maxFrame, this.batch, now);
    port.pollToken = this.poller.add(socket.fd, () => this.onPortReadable(port));
    this.portList.push(port);
    this.stats.joins++;
    this.sendWelcome(port);
  }

  private sendWelcome(port: HubPort): void {
    encodeSwitchControl(SwitchMessageType.Welcome, this.maxFrameBytes, this.controlBytes);
    const n = port.socket.send(Number(this.controlAddress), SWITCH_CONTROL_BYTES);
    if (n < 0 && isPeerGone(-n)) this.removePort(port, true);
  }

  private removePort(port: HubPort, count: boolean): void {
    if (port.closed) return;
    port.closed = true;
    this.poller.remove(port.pollToken);
    port.socket.close();
    const index = this.portList.indexOf(port);
    if (index >= 0) this.portList.splice(index, 1);
    for (const [key, entry] of this.macs) if (entry.port === port) this.macs.delete(key);
    if (count) this.stats.leaves++;
  }

  private onPortReadable(port: HubPort): void {
    if (port.closed || this.closed) return;
    const vector = this.rxVector;
    const n = port.socket.receiveMany(vector, this.batch);
    if (n < 0) {
      if (isPeerGone(-n)) this.removePort(port, true);
      return;
    }
    if (n === 0) return;
    const now = performance.now();
    port.lastSeen = now;
    const slots = this.slots;
    for (let i = 0; i < n && !port.closed; i++) {
      const length = vector.messageLength(i);
      const at = i * this.slotBytes;
      if ((vector.messageFlags(i) & MSG_TRUNC) !== 0) {
        this.stats.dropped++;
        continue;
      }
      if (length < ETHERNET_HEADER_BYTES) {
        this.onPortControl(port, at, length);
        continue;
      }
      port.rxFrames++;
      this.stats.rxFrames++;
      this.stats.rxBytes += length;
      this.frameLengths[i] = length;
      // Learn the source (never a group address: those are not stations).
      if ((slots[at + 6]! & 1) === 0) {
        const source = macKey(slots, at + 6);
        if (source !== 0) {
          const entry = this.macs.get(source);
          if (entry === undefined) this.macs.set(source, { port, seen: now });
          else {
            entry.port = port;
            entry.seen = now;
          }
        }
      }
      if ((slots[at]! & 1) === 0) {
        const entry = this.macs.get(macKey(slots, at));
        if (entry !== undefined && !entry.port.closed && now - entry.seen <= this.macAgeMs) {
          if (entry.port === port) this.stats.dropped++; // both stations behind one port: nothing to do
          else {
            this.stats.unicast++;
            this.enqueue(entry.port, i, length);
          }
          continue;
        }
      }
      this.stats.flooded++;
      for (let p = 0; p < this.portList.length; p++) {
        const other = this.portList[p]!;
        if (other !== port) this.enqueue(other, i, length);
      }
    }
    this.flush();
  }

  private onPortControl(port: HubPort, at: number, length: number): void {
    if (decodeSwitchControl(this.slots, at, length, this.control) !== SwitchControlError.None) {
      this.stats.dropped++;
      return;
    }
    if (this.control.type === SwitchMessageType.Bye) this.removePort(port, true);
    else if (this.control.type === SwitchMessageType.Hello) port.maxFrame = this.control.maxFrame; // keep-alive
  }

  private enqueue(port: HubPort, slot: number, length: number): void {
    if (length > port.maxFrame) {
      port.txDropped++;
      this.stats.dropped++;
      return;
    }
    if (port.queued === 0) this.dirty[this.dirtyCount++] = port;
    port.queue[port.queued++] = slot;
  }

  /** One sendmmsg per destination for everything this batch sends it. */
  private flush(): void {
    const vector = this.txVector;
    for (let d = 0; d < this.dirtyCount; d++) {
      const port = this.dirty[d]!;
      const count = port.queued;
      port.queued = 0;
      if (port.closed) continue;
      for (let j = 0; j < count; j++) {
        const slot = port.queue[j]!;
        vector.setBuffer(j, this.slotAddress(slot), this.frameLengths[slot]!);
      }
      let sent = 0;
      while (sent < count) {
        const r = port.socket.sendMany(vector, sent, count - sent);
        if (r > 0) {
          sent += r;
          continue;
        }
        const e = -r;
        if (e === Errno.EINTR) continue;
        if (isPeerGone(e)) {
          this.removePort(port, true);
          break;
        }
        if (e === Errno.EAGAIN || e === Errno.ENOBUFS) break; // the VM is not keeping up: drop the rest
        // Anything else (EMSGSIZE, ...) concerns this one frame: drop it and go on.
        port.txDropped++;
        this.stats.dropped++;
        sent++;
      }
      port.txFrames += Math.min(sent, count);
      this.stats.txFrames += Math.min(sent, count);
      if (sent < count && !port.closed) {
        port.txDropped += count - sent;
        this.stats.dropped += count - sent;
      }
    }
    this.dirtyCount = 0;
  }

  /** Forgets silent ports and old MACs (lookups also ignore old MACs, so timing is not critical). */
  private sweep(): void {
    if (this.closed) return;
    const now = performance.now();
    for (const port of [...this.portList]) if (now - port.lastSeen > this.portTimeoutMs) this.removePort(port, true);
    for (const [key, entry] of this.macs) if (now - entry.seen > this.macAgeMs) this.macs.delete(key);
  }
}

function isPeerGone(e: number): boolean {
  return e === Errno.ECONNREFUSED || e === Errno.ECONNRESET || e === Errno.ENOTCONN || e === Errno.EPIPE || e === Errno.ENOENT;
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function describeAddress(addr: Uint8Array): string {
  const path = addr.subarray(2);
  if (path.length > 0 && path[0] === 0) return '@' + Buffer.from(path.subarray(1)).toString('latin1');
  const end = path.indexOf(0);
  return Buffer.from(end < 0 ? path : path.subarray(0, end)).toString('utf8');
}
