// NetVSP driven by a scripted netvsc: real rings and buffers in guest RAM, a real eventfd
// and Poller, GPADLs served by the fake OpenChannel, and a fake NetBackend that records
// what the guest sends and injects what it receives. Covers Linux's bring-up in order,
// frames both ways (send-buffer, GPA-direct and mixed shapes), checksum/LSO PPIs mapped to
// PacketOffload, link indications, RSS over two channels, receive backpressure, and a
// hostile guest (answered with failure statuses, never a throw, still serving).
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import fc from 'fast-check';
import { PacketOffload, type NetBackend, type NetBackendStats, type NetFrame, type ReceiveHandler, type ReceiveTarget } from '../src/backends/net/net-backend.js';
import { verifyIpv4HeaderChecksum, onesSum, foldSum, pseudoHeaderSumIpv4, pseudoHeaderSumIpv6, fillIpv4HeaderChecksum } from '../src/backends/net/inet-checksum.js';
import { ParsedPacket, parsePacket } from '../src/backends/net/packet-parse.js';
import type { GpaRange } from '../src/memory/gpa-range.js';
import { GuestMemory } from '../src/memory/guest-memory.js';
import { PAGE_SIZE } from '../src/memory/page.js';
import { Poller } from '../src/sys/epoll.js';
import { IovecList } from '../src/sys/iovec.js';
import { viewOf } from '../src/sys/libc.js';
import { decodeTransferPageHeader, encodeGpaDirectHeader, gpaDirectHeaderSize, PacketType, TransferPageHeader } from '../src/vmbus/packet.js';
import { RingWord } from '../src/vmbus/ring/ring-memory.js';
import { NetvspDevice, type NetvspOptions } from '../src/devices/netvsp/netvsp-device.js';
import { coalescedFragmentCount, MAX_COALESCED_FRAME, ReceiveBuffer, receiveSubAllocationSize } from '../src/devices/netvsp/receive-buffer.js';
import { encodeNdisOffloadParameters, encodeRssParameters, LINUX_RSS_HASH_INFO, RssParameterFlag } from '../src/devices/netvsp/ndis-offload.js';
import { NETVSC_CLASS_ID, NvspMessageType, NvspStatus } from '../src/devices/netvsp/nvsp-protocol.js';
import { Oid } from '../src/devices/netvsp/rndis-oids.js';
import { lsoV2Info, PpiType, PacketInfo, PacketInfoIdFlag, decodePacketInfo, RxChecksum, TxChecksum, txChecksumInfo, writeU32Ppi, LsoIpVersion } from '../src/devices/netvsp/per-packet-info.js';
import {
  decodeRndisMessage,
  encodeRndisInitialize,
  encodeRndisPacketHeader,
  encodeRndisQuery,
  encodeRndisSet,
  NdisStatus,
  RndisMessageType,
  type RndisMessage,
} from '../src/devices/netvsp/rndis-protocol.js';
import { MICROSOFT_RSS_KEY, ToeplitzHash } from '../src/devices/netvsp/toeplitz.js';
import { FakeGuestEnd, pageCursor, waitFor, type HostPacket } from './support/device-rig.js';

const RAM_PAGES = 4096; // 16 MiB
const memory = GuestMemory.create(RAM_PAGES * PAGE_SIZE, 'netvsp-test');
const poller = new Poller();
const rigs: { device: NetvspDevice; guests: FakeGuestChannel[] }[] = [];
after(async () => {
  for (const r of rigs) {
    r.device.close();
    for (const g of r.guests) g.release();
  }
  await poller.stop();
  memory.close();
});

const allocPages = pageCursor(RAM_PAGES);

const MAC = Uint8Array.from([0x00, 0x15, 0x5d, 0x01, 0x02, 0x03]);

// ---- a fake backend ----

/** The bytes an iovec list names, copied out (what the kernel would read at writev). */
function gathered(iov: IovecList): Uint8Array {
  const out = new Uint8Array(iov.byteLength);
  for (let i = 0, at = 0; i < iov.count; at += iov.lengthAt(i), i++) out.set(new Uint8Array(viewOf(BigInt(iov.addressAt(i)), iov.lengthAt(i))), at);
  return out;
}

class FakeBackend implements NetBackend {
  readonly mtu = 1500;
  readonly mac = undefined;
  readonly maxSendSegments = 64;
  readonly stats: NetBackendStats = { rxFrames: 0, rxBytes: 0, rxDropped: 0, txFrames: 0, txBytes: 0, txDropped: 0 };
  /** What was sent; inPlace: handed over as an iovec list (from guest RAM) rather than a copy. */
  readonly sent: { frame: Uint8Array; offload: PacketOffload; inPlace: boolean }[] = [];
  paused = false;
  refuse = 0;
  private handler: ReceiveHandler | null = null;
  private batchEnd: (() => void) | null = null;
  private readonly rxOffload = new PacketOffload();

  send(frame: NetFrame, offload?: PacketOffload): boolean {
    if (this.refuse > 0) {
      this.refuse--;
      return false;
    }
    const o = new PacketOffload();
    if (offload) Object.assign(o, offload);
    this.sent.push({ frame: frame instanceof IovecList ? gathered(frame) : Uint8Array.from(frame), offload: o, inPlace: frame instanceof IovecList });
    return true;
  }
  onReceive(handler: ReceiveHandler, batchEnd?: () => void): void {
    this.handler = handler;
    this.batchEnd = batchEnd ?? null;
  }
  pauseReceive(): void {
    this.paused = true;
  }
  resumeReceive(): void {
    this.paused = false;
  }
  setLinkUp(): void {}
  close(): void {}

  /** Delivers frames the way a backend does: one batch (ignores `paused`, as a race would). */
  /** Set by a NIC that takes frames read straight into its receive buffer (as a TAP backend does). */
  target: ReceiveTarget | null = null;
  /** Frames injected through the target (in place) rather than the handler. */
  injectedInPlace = 0;
  setReceiveTarget(target: ReceiveTarget | null): void {
    this.target = target;
  }

  inject(frames: Uint8Array[], fill?: (o: PacketOffload) => void): void {
    for (const f of frames) {
      const o = this.rxOffload.clear();
      fill?.(o);
      const room = this.target?.next() ?? null;
      if (room !== null) {
        // What a readv into the room does: the frame's bytes spread over its segments.
        assert.ok(room.byteLength >= f.length, 'the room holds any frame');
        for (let i = 0, done = 0; i < room.count && done < f.length; i++) {
          const n = Math.min(room.lengthAt(i), f.length - done);
          new Uint8Array(viewOf(BigInt(room.addressAt(i)), n)).set(f.subarray(done, done + n));
          done += n;
        }
        this.injectedInPlace++;
        this.target!.received(f.length, o);
        continue;
      }
      const view = new Uint8Array(f.length + 64);
      view.set(f);
      this.handler!(view, f.length, o);
    }
    this.batchEnd?.();
  }
}

// ---- the guest end of a channel ----

type Packet = HostPacket;

/** The guest end of a NetVSP channel: 16-page rings and the test's GPADLs. */
class FakeGuestChannel extends FakeGuestEnd {
  constructor(subChannelIndex: number, gpadls: Map<number, GpaRange[]>, pages = 16) {
    super(memory, allocPages, { subChannelIndex, gpadls, sendPages: pages, receivePages: pages });
  }

  take(): Packet | null {
    return this.takePacket();
  }

  async next(what = 'a packet from the host'): Promise<Packet> {
    await this.packetWaiting(what);
    return this.take()!;
  }
}

// ---- message builders ----

function u32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}
function put32(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
  b[o + 2] = (v >>> 16) & 0xff;
  b[o + 3] = (v >>> 24) & 0xff;
}
function nvsp(type: number, ...fields: number[]): Uint8Array {
  const b = new Uint8Array(40);
  put32(b, 0, type);
  fields.forEach((v, i) => put32(b, 4 + 4 * i, v));
  return b;
}
function rndisPkt(channelType: number, sectionIndex = 0xffffffff, sectionSize = 0): Uint8Array {
  return nvsp(NvspMessageType.SendRndisPacket, channelType, sectionIndex, sectionSize);
}
function gpaHeader(ranges: GpaRange[]): Uint8Array {
  const h = new Uint8Array(gpaDirectHeaderSize(ranges));
  encodeGpaDirectHeader(ranges, h, 0);
  return h;
}

/** Guest bytes placed in fresh pages; returns the GPA range describing them. */
function guestBytes(bytes: Uint8Array, offset = 0): GpaRange {
  const pages = Math.ceil((offset + bytes.length) / PAGE_SIZE);
  const first = allocPages(pages);
  memory.bytes.set(bytes, first * PAGE_SIZE + offset);
  return { byteCount: bytes.length, byteOffset: offset, pfns: Array.from({ length: pages }, (_, i) => first + i) };
}

/** An Ethernet/IPv4/TCP frame. */
function tcpFrame(opts: { src?: number[]; dst?: number[]; sport?: number; dport?: number; payload?: number; zeroLength?: boolean } = {}): Uint8Array {
  const payload = opts.payload ?? 32;
  const f = new Uint8Array(14 + 20 + 20 + payload);
  f.set([0x00, 0x15, 0x5d, 0x09, 0x09, 0x09], 0);
  f.set(MAC, 6);
  f[12] = 0x08;
  f[13] = 0x00;
  const ip = 14;
  f[ip] = 0x45;
  const total = opts.zeroLength ? 0 : 20 + 20 + payload;
  f[ip + 2] = total >> 8;
  f[ip + 3] = total & 0xff;
  f[ip + 8] = 64;
  f[ip + 9] = 6;
  f.set(opts.src ?? [10, 0, 0, 1], ip + 12);
  f.set(opts.dst ?? [10, 0, 0, 2], ip + 16);
  const tcp = ip + 20;
  const sport = opts.sport ?? 1234;
  const dport = opts.dport ?? 80;
  f[tcp] = sport >> 8;
  f[tcp + 1] = sport & 0xff;
  f[tcp + 2] = dport >> 8;
  f[tcp + 3] = dport & 0xff;
  f[tcp + 12] = 0x50;
  f[tcp + 13] = 0x18;
  for (let i = 0; i < payload; i++) f[tcp + 20 + i] = (i * 7) & 0xff;
  return f;
}

/** An RNDIS PACKET carrying `frame` with u32 PPIs [type, value]. */
function rndisData(frame: Uint8Array, ppis: [number, number][] = []): Uint8Array {
  const ppiLength = ppis.length * 16;
  const b = new Uint8Array(44 + ppiLength + frame.length);
  encodeRndisPacketHeader(b, 0, ppiLength, frame.length);
  ppis.forEach(([t, v], i) => writeU32Ppi(b, 44 + 16 * i, t, v));
  b.set(frame, 44 + ppiLength);
  return b;
}

// ---- a rig: device + primary channel + buffers ----

interface Rig {
  device: NetvspDevice;
  backend: FakeBackend;
  guest: FakeGuestChannel;
  gpadls: Map<number, GpaRange[]>;
  offered: number[];
  logs: string[];
  receiveBase: number;
  receiveBytes: number;
  sendBase: number;
  subAllocSize: number;
  tid: number;
}


function makeRig(options: Partial<NetvspOptions> = {}): Rig {
  const backend = new FakeBackend();
  const offered: number[] = [];
  const logs: string[] = [];
  const device = new NetvspDevice({ poller, backend, mac: MAC, offerSubchannel: (_d, i) => offered.push(i), log: (m) => logs.push(m), ...options });
  const gpadls = new Map<number, GpaRange[]>();
  const guest = new FakeGuestChannel(0, gpadls);
  rigs.push({ device, guests: [guest] });
  assert.equal(device.open(guest.open), 0);
  return { device, backend, guest, gpadls, offered, logs, receiveBase: 0, receiveBytes: 0, sendBase: 0, subAllocSize: 0, tid: 1 };
}

/** Sends a request and returns the payload of the completion echoing its transaction id (other packets are kept). */
async function request(rig: Rig, guest: FakeGuestChannel, payload: Uint8Array, header: Uint8Array | null = null, others: Packet[] = []): Promise<Uint8Array> {
  const tid = rig.tid++;
  guest.send(header ? PacketType.DataUsingGpaDirect : PacketType.DataInband, tid, payload, header);
  for (;;) {
    const p = await guest.next(`the completion of transaction ${tid}`);
    if (p.type === PacketType.Completion && p.transactionId === BigInt(tid)) return p.payload;
    others.push(p);
  }
}

/** A received RNDIS message: the transfer-page packet is completed at once unless told not to. */
interface Received {
  channelType: number;
  message: Uint8Array;
  transactionId: bigint;
}

function readTransferPage(rig: Rig, p: Packet): Received {
  assert.equal(p.type, PacketType.DataUsingTransferPages);
  assert.equal(p.flags & 1, 1, 'completion requested');
  const h = new TransferPageHeader();
  assert.equal(decodeTransferPageHeader(p.header, 0, p.header.length, h), 0);
  assert.equal(h.pageSetId, 0xcafe);
  assert.equal(h.count, 1);
  const r = h.ranges[0]!;
  assert.ok(r.byteCount <= rig.subAllocSize, 'a range fits one sub-allocation');
  assert.ok(r.byteOffset + r.byteCount <= rig.receiveBytes);
  assert.equal(u32(p.payload, 0), NvspMessageType.SendRndisPacket);
  assert.equal(u32(p.payload, 8), 0xffffffff);
  const message = memory.bytes.slice(rig.receiveBase + r.byteOffset, rig.receiveBase + r.byteOffset + r.byteCount);
  return { channelType: u32(p.payload, 4), message, transactionId: p.transactionId };
}

function completeReceive(guest: FakeGuestChannel, transactionId: bigint): void {
  const b = new Uint8Array(8);
  put32(b, 0, NvspMessageType.SendRndisPacketComplete);
  put32(b, 4, NvspStatus.Success);
  guest.send(PacketType.Completion, transactionId, b, null, 0);
}

async function receive(rig: Rig, guest: FakeGuestChannel = rig.guest, complete = true): Promise<Received> {
  const p = await guest.next('a transfer-page packet');
  const r = readTransferPage(rig, p);
  if (complete) completeReceive(guest, r.transactionId);
  return r;
}

/** An RNDIS control request as netvsc sends it (GPA-direct, one range) and its answer. */
async function control(rig: Rig, message: Uint8Array): Promise<RndisMessage> {
  const others: Packet[] = [];
  const completion = await request(rig, rig.guest, rndisPkt(1), gpaHeader([guestBytes(message, 64)]), others);
  assert.equal(u32(completion, 0), NvspMessageType.SendRndisPacketComplete);
  assert.equal(u32(completion, 4), NvspStatus.Success);
  const packet = others.shift() ?? (await rig.guest.next('an RNDIS answer'));
  const r = readTransferPage(rig, packet);
  completeReceive(rig.guest, r.transactionId);
  assert.equal(r.channelType, 1, 'control answers use channel type 1');
  const m = decodeRndisMessage(r.message, 0, r.message.length, 'to-guest');
  assert.ok(!('isRndisError' in m), `answer decodes: ${'message' in m ? (m as { message: string }).message : ''}`);
  return m as RndisMessage;
}

let requestId = 100;
async function set(rig: Rig, oid: number, info: Uint8Array): Promise<number> {
  const b = new Uint8Array(28 + info.length);
  const id = requestId++;
  encodeRndisSet(b, 0, id, oid, info);
  const m = await control(rig, b);
  assert.equal(m.kind, 'set-complete');
  if (m.kind !== 'set-complete') throw new Error('unreachable');
  assert.equal(m.requestId, id);
  return m.status;
}

function u32Bytes(v: number): Uint8Array {
  const b = new Uint8Array(4);
  put32(b, 0, v);
  return b;
}

/** The NVSP part of Linux's bring-up (spec 2.2 steps 1-5). */
async function nvspBringUp(rig: Rig, receivePages = 64, sendPages = 16, ndisCapabilities = 0x08 | 0x04 | 0x20 | 0x80): Promise<void> {
  const g = rig.guest;
  // Highest first; one the host does not know is refused and the guest tries the next.
  const refused = await request(rig, g, nvsp(NvspMessageType.Init, 0x70000, 0x70000));
  assert.equal(u32(refused, 0), NvspMessageType.InitComplete);
  assert.equal(u32(refused, 12), NvspStatus.Fail);
  const init = await request(rig, g, nvsp(NvspMessageType.Init, 0x60001, 0x60001));
  assert.equal(init.length, 40, 'full-size completion');
  assert.equal(u32(init, 12), NvspStatus.Success);
  assert.equal(u32(init, 8), 34);
  g.send(PacketType.DataInband, rig.tid++, nvsp(NvspMessageType.SendNdisConfig, 1514, 0, ndisCapabilities), null, 0);
  g.send(PacketType.DataInband, rig.tid++, nvsp(NvspMessageType.SendNdisVersion, 6, 30), null, 0);
  const rfirst = allocPages(receivePages);
  rig.gpadls.set(0x100, [{ byteCount: receivePages * PAGE_SIZE, byteOffset: 0, pfns: Array.from({ length: receivePages }, (_, i) => rfirst + i) }]);
  rig.receiveBase = rfirst * PAGE_SIZE;
  rig.receiveBytes = receivePages * PAGE_SIZE;
  const recv = await request(rig, g, nvsp(NvspMessageType.SendReceiveBuffer, 0x100, 0xcafe));
  assert.ok(recv.length >= 28);
  assert.equal(u32(recv, 0), NvspMessageType.SendReceiveBufferComplete);
  assert.equal(u32(recv, 4), NvspStatus.Success);
  assert.equal(u32(recv, 8), 1, 'one section');
  assert.equal(u32(recv, 12), 0, 'at offset 0');
  const sub = u32(recv, 16);
  const count = u32(recv, 20);
  assert.ok(sub >= 68);
  assert.ok(sub * count <= receivePages * PAGE_SIZE);
  assert.equal(u32(recv, 24), sub * count);
  rig.subAllocSize = sub;
  const sfirst = allocPages(sendPages);
  rig.gpadls.set(0x101, [{ byteCount: sendPages * PAGE_SIZE, byteOffset: 0, pfns: Array.from({ length: sendPages }, (_, i) => sfirst + i) }]);
  rig.sendBase = sfirst * PAGE_SIZE;
  const send = await request(rig, g, nvsp(NvspMessageType.SendSendBuffer, 0x101, 0));
  assert.equal(u32(send, 0), NvspMessageType.SendSendBufferComplete);
  assert.equal(u32(send, 4), NvspStatus.Success);
  assert.equal(u32(send, 8), 6144);
}

/** NVSP, RNDIS INIT and packet filter: a NIC ready to carry frames. */
async function bringUp(rig: Rig, receivePages = 64, ndisCapabilities?: number): Promise<void> {
  await nvspBringUp(rig, receivePages, 16, ndisCapabilities);
  const b = new Uint8Array(24);
  encodeRndisInitialize(b, 0, requestId++, 0x4000);
  const m = await control(rig, b);
  assert.equal(m.kind, 'initialize-complete');
  assert.equal(await set(rig, Oid.GEN_CURRENT_PACKET_FILTER, u32Bytes(0x0b)), NdisStatus.Success);
  // Let the host take the guest's receive completions: every sub-allocation is free again.
  await waitFor(() => rig.guest.consumed, 'the host to read the completions');
}

// ---------------------------------------------------------------------------------------

describe('receive buffer allocator', () => {
  test('hands out every sub-allocation once, frees only what is out, no stale completions', () => {
    const rb = new ReceiveBuffer(new Uint8Array(10 * 1728 + 100), 1728);
    assert.equal(rb.count, 10);
    assert.equal(rb.endOffset, 17280);
    const got = new Set<number>();
    for (let i = 0; i < 10; i++) got.add(rb.allocate());
    assert.equal(got.size, 10);
    assert.equal(rb.allocate(), -1);
    assert.equal(rb.free(3), true);
    assert.equal(rb.free(3), false, 'double free refused');
    assert.equal(rb.free(99), false);
    const id = rb.transactionIdFor(4);
    assert.equal(rb.complete(id % 2 ** 32, Math.floor(id / 2 ** 32) + 1), false, 'another generation');
    assert.equal(rb.complete(id % 2 ** 32, Math.floor(id / 2 ** 32)), true);
    assert.equal(rb.freeCount, 2);
  });

  test('sub-allocation size: Hyper-V 1728 at MTU 1500, a whole jumbo frame at 9000', () => {
    assert.equal(receiveSubAllocationSize(1500), 1728);
    const jumbo = receiveSubAllocationSize(9000);
    assert.ok(jumbo >= 44 + 48 + 9000 + 18);
    assert.equal(jumbo % 8, 0);
  });

  test('sub-allocation size for a guest that takes RSC: 16 KiB while the buffer holds 128 of them, never below a whole frame', () => {
    const MiB = 1 << 20;
    assert.equal(receiveSubAllocationSize(1500, 10485 * 1728, true), 16384, "Linux's default buffer");
    assert.equal(receiveSubAllocationSize(1500, 2 * MiB, true), 16384, 'exactly 128 of them');
    assert.equal(receiveSubAllocationSize(1500, 2 * MiB - 1, true), 16376);
    assert.equal(receiveSubAllocationSize(1500, MiB, true), 8192);
    assert.equal(receiveSubAllocationSize(1500, 100_000, true), 1728, 'a small buffer keeps Hyper-V\'s size');
    assert.equal(receiveSubAllocationSize(1500, 2 * MiB, false), 1728, 'no RSC: one frame per sub-allocation');
    assert.equal(receiveSubAllocationSize(9000, 512 * 1024, true), receiveSubAllocationSize(9000), 'a jumbo frame still fits one');
    assert.equal(receiveSubAllocationSize(65521, 64 * MiB, true), receiveSubAllocationSize(65521));
    fc.assert(fc.property(fc.integer({ min: 68, max: 65521 }), fc.integer({ min: 0, max: 1 << 30 }), fc.boolean(), (mtu, bytes, rsc) => {
      const size = receiveSubAllocationSize(mtu, bytes, rsc);
      return size % 8 === 0 && size >= receiveSubAllocationSize(mtu) && (size === receiveSubAllocationSize(mtu) || (size <= 16384 && size * 128 <= bytes));
    }));
  });

  // RSC chains the sub-allocations of one packet so that one guest completion frees them
  // all. A mistake here hands a section to two packets at once (the guest reads one
  // frame's bytes overwritten by another's) or lets a forged completion naming the middle
  // of a chain free part of it while the guest still owns the rest. The model is the set
  // of packets out, each the list of its sub-allocations, head first.
  // A NIC reading in place holds sub-allocations reserved between reads (its standing
  // room): a forged completion naming one must not free it under the host, and claim /
  // release / chaining a reserved one into a packet keep the books exact.
  test('fast-check: allocate / reserve / chain / free keep every index out once, count free ones exactly, free only whole packets', () => {
    type Op =
      | { kind: 'alloc' }
      | { kind: 'reserve' }
      | { kind: 'claim'; pick: number }
      | { kind: 'release'; pick: number }
      | { kind: 'chain-reserved'; pick: number; into: number }
      | { kind: 'forge-reserved'; pick: number }

      | { kind: 'chain'; pick: number }
      | { kind: 'free-head'; pick: number }
      | { kind: 'free-member'; pick: number; at: number }
      | { kind: 'free-any'; index: number }
      | { kind: 'complete'; pick: number; wrongGeneration: boolean };
    const op: fc.Arbitrary<Op> = fc.oneof(
      fc.constant({ kind: 'alloc' as const }),
      fc.constant({ kind: 'reserve' as const }),
      fc.record({ kind: fc.constant('claim' as const), pick: fc.nat() }),
      fc.record({ kind: fc.constant('release' as const), pick: fc.nat() }),
      fc.record({ kind: fc.constant('chain-reserved' as const), pick: fc.nat(), into: fc.nat() }),
      fc.record({ kind: fc.constant('forge-reserved' as const), pick: fc.nat() }),

      fc.record({ kind: fc.constant('chain' as const), pick: fc.nat() }),
      fc.record({ kind: fc.constant('chain' as const), pick: fc.nat() }),
      fc.record({ kind: fc.constant('free-head' as const), pick: fc.nat() }),
      fc.record({ kind: fc.constant('free-member' as const), pick: fc.nat(), at: fc.nat() }),
      fc.record({ kind: fc.constant('free-any' as const), index: fc.oneof(fc.integer({ min: -3, max: 20 }), fc.constantFrom(0.5, NaN, 2 ** 32)) }),
      fc.record({ kind: fc.constant('complete' as const), pick: fc.nat(), wrongGeneration: fc.boolean() }),
    );
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 16 }), fc.array(op, { maxLength: 200 }), (count, ops) => {
        const rb = new ReceiveBuffer(new Uint8Array(count * 1728 + 17), 1728);
        assert.equal(rb.count, count);
        const packets: number[][] = [];
        const reserved: number[] = [];
        const outstanding = () => packets.reduce((n, p) => n + p.length, 0) + reserved.length;
        const owner = (i: number) => packets.findIndex((p) => p.includes(i));
        const check = (what: string) => {
          assert.equal(rb.freeCount, count - outstanding(), `freeCount after ${what}`);
          for (let i = 0; i < count; i++) assert.equal(rb.isAllocated(i), owner(i) >= 0 || reserved.includes(i), `isAllocated(${i}) after ${what}`);
        };
        const freshIndex = (reserve = false): number => {
          const i = reserve ? rb.reserve() : rb.allocate();
          if (outstanding() === count) {
            assert.equal(i, -1, 'nothing free: -1');
            return -1;
          }
          assert.ok(Number.isInteger(i) && i >= 0 && i < count, `index ${i} in range`);
          assert.equal(owner(i), -1, `index ${i} handed out while still outstanding`);
          assert.ok(!reserved.includes(i), `index ${i} handed out while reserved`);
          return i;
        };
        for (const o of ops) {
          switch (o.kind) {
            case 'reserve': {
              const i = freshIndex(true);
              if (i >= 0) reserved.push(i);
              break;
            }
            case 'claim': {
              if (reserved.length === 0) break;
              const [i] = reserved.splice(o.pick % reserved.length, 1);
              rb.claim(i!);
              packets.push([i!]);
              break;
            }
            case 'release': {
              if (reserved.length === 0) {
                assert.equal(rb.release(0), false, 'nothing reserved: nothing to release');
                break;
              }
              const [i] = reserved.splice(o.pick % reserved.length, 1);
              assert.equal(rb.release(i!), true);
              assert.equal(rb.release(i!), false, 'released twice');
              break;
            }
            case 'chain-reserved': {
              if (reserved.length === 0 || packets.length === 0) break;
              const [i] = reserved.splice(o.pick % reserved.length, 1);
              const p = packets[o.into % packets.length]!;
              rb.chain(p.at(-1)!, i!);
              p.push(i!);
              break;
            }
            case 'forge-reserved': {
              // The guest never saw a reserved sub-allocation: a completion or free naming it changes nothing.
              if (reserved.length === 0) break;
              const i = reserved[o.pick % reserved.length]!;
              const id = rb.transactionIdFor(i);
              assert.equal(rb.complete(id % 2 ** 32, Math.floor(id / 2 ** 32)), false, 'a completion cannot free a reserved sub-allocation');
              assert.equal(rb.free(i), false);
              break;
            }
            case 'alloc': {
              const i = freshIndex();
              if (i >= 0) packets.push([i]);
              break;
            }
            case 'chain': {
              if (packets.length === 0) break;
              const p = packets[o.pick % packets.length]!;
              const i = freshIndex();
              if (i < 0) break;
              rb.chain(p.at(-1)!, i);
              p.push(i);
              break;
            }
            case 'free-head': {
              if (packets.length === 0) break;
              const k = o.pick % packets.length;
              const before = rb.freeCount;
              assert.equal(rb.free(packets[k]![0]!), true, 'a head frees');
              assert.equal(rb.freeCount, before + packets[k]!.length, 'every chained member came back');
              packets.splice(k, 1);
              break;
            }
            case 'free-member': {
              const chained = packets.filter((p) => p.length > 1);
              if (chained.length === 0) break;
              const p = chained[o.pick % chained.length]!;
              const member = p[1 + (o.at % (p.length - 1))]!;
              const before = rb.freeCount;
              assert.equal(rb.free(member), false, 'a chained member is not a packet');
              assert.equal(rb.freeCount, before, 'nothing freed');
              break;
            }
            case 'free-any': {
              const k = Number.isInteger(o.index) ? packets.findIndex((p) => p[0] === o.index) : -1;
              assert.equal(rb.free(o.index), k >= 0, `free(${o.index})`);
              if (k >= 0) packets.splice(k, 1);
              break;
            }
            case 'complete': {
              // A completion carries the transaction id the host gave the packet's first sub-allocation.
              if (packets.length === 0) break;
              const k = o.pick % packets.length;
              const id = rb.transactionIdFor(packets[k]![0]!);
              const low = id % 2 ** 32;
              const high = Math.floor(id / 2 ** 32);
              assert.equal(rb.complete(low, o.wrongGeneration ? high + 1 : high), !o.wrongGeneration);
              if (!o.wrongGeneration) {
                packets.splice(k, 1);
                assert.equal(rb.complete(low, high), false, 'a second completion of the same packet is stale');
              }
              break;
            }
          }
          check(o.kind);
        }
        // Draining the allocator yields exactly the indices not out, each once.
        const rest = new Set<number>();
        for (let i = rb.allocate(); i >= 0; i = rb.allocate()) {
          assert.ok(!rest.has(i), `index ${i} twice on the free stack`);
          rest.add(i);
        }
        for (let i = 0; i < count; i++) assert.equal(rest.has(i), owner(i) < 0 && !reserved.includes(i), `index ${i} free iff not out`);
      }),
      { numRuns: 300 },
    );
  });

  // The host sizes its pause threshold and its ring reservation from this count; if it
  // undercounts, deliverCoalesced runs out of sub-allocations halfway through a segment.
  test('coalescedFragmentCount: 40 fragments for the largest segment at 1728, one for what fits one sub-allocation', () => {
    assert.equal(MAX_COALESCED_FRAME, 65553);
    // First fragment: 1728 - 44 (RNDIS PACKET) - 48 (id, checksum, hash) = 1636 bytes; later: 1728 - 44 - 16 = 1668.
    assert.equal(coalescedFragmentCount(65553, 1728), 1 + Math.ceil((65553 - 1636) / 1668));
    assert.equal(coalescedFragmentCount(65553, 1728), 40);
    assert.equal(coalescedFragmentCount(1636, 1728), 1);
    assert.equal(coalescedFragmentCount(1637, 1728), 2);
    assert.equal(coalescedFragmentCount(1636 + 1668, 1728), 2);
    assert.equal(coalescedFragmentCount(1636 + 1668 + 1, 1728), 3);
  });
});

describe('NetVSP bring-up (Linux order)', () => {
  test('INIT, NDIS config/version, buffers, RNDIS INIT and the OIDs of spec 2.6', async () => {
    const rig = makeRig({ maxQueues: 4 });
    assert.equal(rig.device.classId, NETVSC_CLASS_ID);
    assert.equal(rig.device.name, 'network');
    await nvspBringUp(rig);
    const init = new Uint8Array(24);
    encodeRndisInitialize(init, 0, 7, 0x4000);
    const ic = await control(rig, init);
    assert.equal(ic.kind, 'initialize-complete');
    if (ic.kind === 'initialize-complete') {
      assert.equal(ic.requestId, 7);
      assert.equal(ic.status, 0);
      assert.equal(ic.majorVersion, 1);
      assert.equal(ic.maxPacketsPerMessage, 8);
      assert.equal(ic.packetAlignmentFactor, 3);
    }
    const frame = await queryRaw(rig, Oid.GEN_MAXIMUM_FRAME_SIZE);
    assert.equal(frame.status, 0);
    assert.deepEqual([...frame.info], [...u32Bytes(1500)]);
    const mac = await queryRaw(rig, Oid['802_3_PERMANENT_ADDRESS']);
    assert.equal(mac.status, 0);
    assert.deepEqual([...mac.info], [...MAC]);
    const name = await queryRaw(rig, Oid.GEN_FRIENDLY_NAME);
    assert.notEqual(name.status, 0, 'friendly name is optional and fails');
    const header = Uint8Array.from([0xa7, 3, 156, 0]);
    const caps = await queryRaw(rig, Oid.TCP_OFFLOAD_HARDWARE_CAPABILITIES, header);
    assert.equal(caps.status, 0);
    assert.equal(caps.info.length, 156);
    assert.equal(caps.info[0], 0xa7);
    assert.equal(caps.info[1], 3);
    assert.equal(u32(caps.info, 8) & 0x14, 0x14, 'TCPv4 TX checksum');
    assert.equal(u32(caps.info, 80) & 2, 2, 'LSOv2 IPv4');
    const params = new Uint8Array(28);
    encodeNdisOffloadParameters(params, 0, {
      ipv4Checksum: 1, tcpIpv4Checksum: 4, udpIpv4Checksum: 4, tcpIpv6Checksum: 4, udpIpv6Checksum: 4, lsoV1: 0, ipsecV1: 0,
      lsoV2Ipv4: 2, lsoV2Ipv6: 2, tcpConnectionIpv4: 0, tcpConnectionIpv6: 0, flags: 0, ipsecV2: 0, ipsecV2Ipv4: 0, rscIpv4: 0, rscIpv6: 0,
      encapsulatedPacketTaskOffload: 0, encapsulationTypes: 0,
    });
    assert.equal(await set(rig, Oid.TCP_OFFLOAD_PARAMETERS, params), 0);
    const media = await queryRaw(rig, Oid.GEN_MEDIA_CONNECT_STATUS);
    assert.deepEqual([...media.info], [0, 0, 0, 0]);
    const speed = await queryRaw(rig, Oid.GEN_LINK_SPEED);
    assert.equal(u32(speed.info, 0), 100_000_000);
    const rss = await queryRaw(rig, Oid.GEN_RECEIVE_SCALE_CAPABILITIES, Uint8Array.from([0x88, 2, 18, 0]));
    assert.equal(rss.status, 0);
    assert.equal(rss.info.length, 18);
    assert.equal(rss.info[0], 0x88);
    assert.equal(u32(rss.info, 12), 4, 'receive queues');
    const unknown = await queryRaw(rig, 0x00020101);
    assert.equal(unknown.status, NdisStatus.InvalidOid);
    assert.equal(await set(rig, Oid.GEN_CURRENT_PACKET_FILTER, u32Bytes(0x0b)), 0);
    assert.equal(rig.guest.failures.length, 0);
  });
});

/** QUERY returning the raw information bytes. */
async function queryRaw(rig: Rig, oid: number, info?: Uint8Array): Promise<{ status: number; info: Uint8Array }> {
  const b = new Uint8Array(28 + (info?.length ?? 0));
  const id = requestId++;
  encodeRndisQuery(b, 0, id, oid, info);
  const others: Packet[] = [];
  await request(rig, rig.guest, rndisPkt(1), gpaHeader([guestBytes(b, 8)]), others);
  const packet = others.shift() ?? (await rig.guest.next('an RNDIS answer'));
  const r = readTransferPage(rig, packet);
  completeReceive(rig.guest, r.transactionId);
  const m = decodeRndisMessage(r.message, 0, r.message.length, 'to-guest');
  if ('isRndisError' in m || m.kind !== 'query-complete') throw new Error(`not a QUERY_CMPLT: ${JSON.stringify(m)}`);
  assert.equal(m.requestId, id);
  assert.ok(r.message.length <= 4148);
  return { status: m.status, info: r.message.slice(m.infoOffset, m.infoOffset + m.infoLength) };
}

describe('NetVSP transmit', () => {
  test('one frame from a send-buffer section with a TCP checksum PPI', async () => {
    const rig = makeRig();
    await bringUp(rig);
    const frame = tcpFrame();
    const msg = rndisData(frame, [[PpiType.TcpIpChecksum, txChecksumInfo(TxChecksum.IsIpv4 | TxChecksum.Tcp, 34)]]);
    memory.bytes.set(msg, rig.sendBase + 2 * 6144);
    const c = await request(rig, rig.guest, rndisPkt(0, 2, msg.length));
    assert.equal(u32(c, 0), NvspMessageType.SendRndisPacketComplete);
    assert.equal(u32(c, 4), NvspStatus.Success);
    assert.equal(rig.backend.sent.length, 1);
    const s = rig.backend.sent[0]!;
    assert.deepEqual([...s.frame], [...frame]);
    assert.equal(s.offload.needsChecksum, true);
    assert.equal(s.offload.checksumStart, 34);
    assert.equal(s.offload.checksumOffset, 16);
    assert.equal(s.offload.gso, 'none');
    const st = rig.device.stats().channels[0]!;
    assert.equal(st.txFrames, 1);
    assert.equal(st.txBytes, frame.length);
  });

  test('a section holding several RNDIS packets (batched, padded) sends each', async () => {
    const rig = makeRig();
    await bringUp(rig);
    const a = rndisData(tcpFrame({ payload: 10 }));
    const b = rndisData(tcpFrame({ payload: 20 }));
    const pad = (x: Uint8Array) => {
      const n = (x.length + 7) & ~7;
      const y = new Uint8Array(n);
      y.set(x);
      put32(y, 4, n);
      return y;
    };
    const pa = pad(a);
    const section = new Uint8Array(pa.length + b.length);
    section.set(pa);
    section.set(b, pa.length);
    memory.bytes.set(section, rig.sendBase);
    const c = await request(rig, rig.guest, rndisPkt(0, 0, section.length));
    assert.equal(u32(c, 4), NvspStatus.Success);
    assert.equal(rig.backend.sent.length, 2);
  });

  test('GPA-direct LSOv2 frame: setGso tcpv4 with the IP total length, header checksum and pseudo sum fixed', async () => {
    const rig = makeRig();
    await bringUp(rig);
    const frame = tcpFrame({ payload: 4000, zeroLength: true });
    // netvsc's pseudo-header sum without the length.
    const pseudo0 = foldSum(pseudoHeaderSumIpv4(frame, 14, 6, 0));
    frame[14 + 20 + 16] = pseudo0 >> 8;
    frame[14 + 20 + 17] = pseudo0 & 0xff;
    const msg = rndisData(frame, [[PpiType.TcpLargeSend, lsoV2Info(1448, 34, LsoIpVersion.Ipv4)]]);
    const c = await request(rig, rig.guest, rndisPkt(0), gpaHeader([guestBytes(msg, 3000)]));
    assert.equal(u32(c, 4), NvspStatus.Success);
    const s = rig.backend.sent[0]!;
    assert.equal(s.offload.gso, 'tcpv4');
    assert.equal(s.offload.gsoSize, 1448);
    assert.equal(s.offload.needsChecksum, true);
    assert.equal(s.offload.checksumStart, 34);
    assert.equal(s.offload.headerLength, 54);
    const ipLength = (s.frame[16]! << 8) | s.frame[17]!;
    assert.equal(ipLength, frame.length - 14);
    assert.ok(verifyIpv4HeaderChecksum(s.frame, 14, 20));
    const expected = foldSum(pseudoHeaderSumIpv4(s.frame, 14, 6, frame.length - 34));
    assert.equal((s.frame[50]! << 8) | s.frame[51]!, expected);
    // Only the headers were copied and fixed; the payload went from guest RAM in place.
    assert.ok(s.inPlace, 'a large GPA-direct frame goes to the backend in place');
    assert.deepEqual(s.frame.subarray(54), frame.subarray(54));
    void onesSum;
  });

  // The in-place way must send exactly what the copying way sends: the same frame
  // (headers fixed up the same), the same offload. 40 padding PPIs push the frame past
  // the copied 512 bytes, which forces the copying way for the second send.
  test('fast-check: a large frame sent in place equals the same frame sent the copying way', async () => {
    const rig = makeRig();
    await bringUp(rig);
    const padding: [number, number][] = Array.from({ length: 40 }, () => [PpiType.ShortPacketPadInfo, 0]);
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 2100, max: 60000 }), fc.integer({ min: 0, max: 4095 }), fc.constantFrom('none', 'checksum', 'lso'), fc.integer(), async (payload, pageOffset, kind, seed) => {
        const frame = tcpFrame({ payload, zeroLength: kind === 'lso' });
        for (let i = 54; i < frame.length; i++) frame[i] = (seed + i * 31) & 0xff;
        const ppis: [number, number][] =
          kind === 'lso' ? [[PpiType.TcpLargeSend, lsoV2Info(1448, 34, LsoIpVersion.Ipv4)]] : kind === 'checksum' ? [[PpiType.TcpIpChecksum, txChecksumInfo(TxChecksum.IsIpv4 | TxChecksum.Tcp, 34)]] : [];
        const before = rig.backend.sent.length;
        const a = await request(rig, rig.guest, rndisPkt(0), gpaHeader([guestBytes(rndisData(frame, ppis), pageOffset)]));
        const b = await request(rig, rig.guest, rndisPkt(0), gpaHeader([guestBytes(rndisData(frame, [...padding, ...ppis]), pageOffset)]));
        assert.equal(u32(a, 4), NvspStatus.Success);
        assert.equal(u32(b, 4), NvspStatus.Success);
        const [inPlace, copied] = rig.backend.sent.slice(before);
        assert.ok(inPlace!.inPlace && !copied!.inPlace);
        assert.deepEqual(inPlace!.frame, copied!.frame);
        assert.deepEqual({ ...inPlace!.offload }, { ...copied!.offload });
        rig.backend.sent.length = 0;
      }),
      { numRuns: 40 },
    );
  });

  // In place needs the frame's headers within the bytes copied for parsing (512); PPIs
  // that push the frame past them, or a VLAN tag to insert, take the copying way, with
  // the same result.
  test('GPA-direct frames whose headers lie past the copied bytes, or that need a VLAN tag, are copied whole and still right', async () => {
    const rig = makeRig();
    await bringUp(rig);
    const frame = tcpFrame({ payload: 6000 });
    const padding: [number, number][] = Array.from({ length: 40 }, () => [PpiType.ShortPacketPadInfo, 0]);
    const c1 = await request(rig, rig.guest, rndisPkt(0), gpaHeader([guestBytes(rndisData(frame, padding), 100)]));
    assert.equal(u32(c1, 4), NvspStatus.Success);
    assert.equal(rig.backend.sent[0]!.inPlace, false);
    assert.deepEqual(rig.backend.sent[0]!.frame, frame);
    const c2 = await request(rig, rig.guest, rndisPkt(0), gpaHeader([guestBytes(rndisData(frame, [[PpiType.Ieee8021Q, 5]]), 100)]));
    assert.equal(u32(c2, 4), NvspStatus.Success);
    const tagged = rig.backend.sent[1]!;
    assert.equal(tagged.inPlace, false);
    assert.equal(tagged.frame.length, frame.length + 4);
    assert.deepEqual([tagged.frame[12], tagged.frame[13]], [0x81, 0x00]);
    assert.deepEqual(tagged.frame.subarray(16), frame.subarray(12));
    // A plain large frame on the same channel still goes in place afterwards.
    const c3 = await request(rig, rig.guest, rndisPkt(0), gpaHeader([guestBytes(rndisData(frame), 3000)]));
    assert.equal(u32(c3, 4), NvspStatus.Success);
    assert.ok(rig.backend.sent[2]!.inPlace);
    assert.deepEqual(rig.backend.sent[2]!.frame, frame);
  });

  test('mixed shape: RNDIS header in the section, frame bytes in GPA-direct pages', async () => {
    const rig = makeRig();
    await bringUp(rig);
    const frame = tcpFrame({ payload: 200 });
    const msg = rndisData(frame);
    memory.bytes.set(msg.subarray(0, 44), rig.sendBase + 6144);
    const c = await request(rig, rig.guest, rndisPkt(0, 1, 44), gpaHeader([guestBytes(msg.subarray(44), 4090)]));
    assert.equal(u32(c, 4), NvspStatus.Success);
    assert.deepEqual([...rig.backend.sent[0]!.frame], [...frame]);
  });

  test('a VLAN PPI puts the 802.1Q tag back into the frame', async () => {
    const rig = makeRig();
    await bringUp(rig);
    const frame = tcpFrame();
    const msg = rndisData(frame, [[PpiType.Ieee8021Q, (5 << 4) | 3]]);
    const c = await request(rig, rig.guest, rndisPkt(0), gpaHeader([guestBytes(msg)]));
    assert.equal(u32(c, 4), NvspStatus.Success);
    const sent = rig.backend.sent[0]!.frame;
    assert.equal(sent.length, frame.length + 4);
    assert.deepEqual([...sent.subarray(12, 16)], [0x81, 0x00, 0x60, 0x05]);
  });

  test('backend backpressure: the packet waits and is sent once, then completed', async () => {
    const rig = makeRig();
    await bringUp(rig);
    rig.backend.refuse = 3;
    const msg = rndisData(tcpFrame());
    const c = await request(rig, rig.guest, rndisPkt(0), gpaHeader([guestBytes(msg)]));
    assert.equal(u32(c, 4), NvspStatus.Success);
    assert.equal(rig.backend.sent.length, 1);
  });
});

describe('NetVSP receive', () => {
  test('a frame from the backend lands in a sub-allocation with a checksum PPI; completion frees it', async () => {
    const rig = makeRig();
    await bringUp(rig);
    const free = rig.device.stats().receiveBufferFree;
    const frame = tcpFrame({ payload: 100 });
    rig.backend.inject([frame], (o) => (o.checksumValid = true));
    const r = await receive(rig, rig.guest, false);
    assert.equal(r.channelType, 0);
    const m = decodeRndisMessage(r.message, 0, r.message.length, 'to-guest');
    if ('isRndisError' in m || m.kind !== 'packet') throw new Error('not a PACKET');
    assert.deepEqual([...r.message.subarray(m.dataOffset, m.dataOffset + m.dataLength)], [...frame]);
    const info = new PacketInfo();
    assert.equal(decodePacketInfo(r.message, m.ppiOffset, m.ppiLength, info), null);
    assert.ok(info.hasChecksum);
    assert.equal(info.checksum & (RxChecksum.TcpSucceeded | RxChecksum.IpSucceeded), RxChecksum.TcpSucceeded | RxChecksum.IpSucceeded);
    assert.equal(info.hasHash, false, 'no hash PPI without RSS');
    assert.equal(rig.device.stats().receiveBufferFree, free - 1);
    completeReceive(rig.guest, r.transactionId);
    await waitFor(() => rig.device.stats().receiveBufferFree === free, 'the sub-allocation to be freed');
    assert.equal(rig.device.stats().channels[0]!.rxFrames, 1);
  });

  test('a partial checksum from the host is finished before the guest sees it', async () => {
    const rig = makeRig();
    await bringUp(rig);
    const frame = tcpFrame({ payload: 51 });
    const pseudo = foldSum(pseudoHeaderSumIpv4(frame, 14, 6, frame.length - 34));
    frame[50] = pseudo >> 8;
    frame[51] = pseudo & 0xff;
    rig.backend.inject([frame], (o) => o.setChecksum(34, 16));
    const r = await receive(rig);
    const m = decodeRndisMessage(r.message, 0, r.message.length, 'to-guest');
    if ('isRndisError' in m || m.kind !== 'packet') throw new Error('not a PACKET');
    const got = r.message.subarray(m.dataOffset, m.dataOffset + m.dataLength);
    const parsed = new ParsedPacket();
    parsePacket(got, 0, got.length, parsed);
    assert.equal(foldSum(onesSum(got, 34, got.length - 34, pseudoHeaderSumIpv4(got, 14, 6, got.length - 34))), 0xffff, 'valid TCP checksum');
  });

  test('no sub-allocation free: the backend is paused, frames beyond are dropped and counted, completions resume it', async () => {
    const rig = makeRig();
    await bringUp(rig, 2); // 8 KiB: 4 sub-allocations; RNDIS answers used and returned some
    await waitFor(() => rig.device.stats().receiveBufferFree === 4, 'all sub-allocations free');
    rig.backend.inject([1, 2, 3, 4, 5, 6].map((i) => tcpFrame({ sport: i })));
    assert.equal(rig.backend.paused, true);
    const held: Received[] = [];
    for (let i = 0; i < 4; i++) held.push(await receive(rig, rig.guest, false));
    assert.equal(rig.device.stats().nic.rxNoBuffer, 2);
    for (const r of held) completeReceive(rig.guest, r.transactionId);
    await waitFor(() => !rig.backend.paused, 'receive to resume');
  });

  test('a GSO frame from the host arrives as MTU-sized segments with good checksums', async () => {
    const rig = makeRig();
    await bringUp(rig);
    const frame = tcpFrame({ payload: 4000 });
    rig.backend.inject([frame], (o) => o.setChecksum(34, 16).setGso('tcpv4', 1448, 54));
    let bytes = 0;
    for (let i = 0; i < 3; i++) {
      const r = await receive(rig);
      const m = decodeRndisMessage(r.message, 0, r.message.length, 'to-guest');
      if ('isRndisError' in m || m.kind !== 'packet') throw new Error('not a PACKET');
      const got = r.message.subarray(m.dataOffset, m.dataOffset + m.dataLength);
      assert.ok(got.length <= 1514);
      assert.ok(verifyIpv4HeaderChecksum(got, 14, 20));
      assert.equal(foldSum(onesSum(got, 34, got.length - 34, pseudoHeaderSumIpv4(got, 14, 6, got.length - 34))), 0xffff);
      bytes += got.length - 54;
    }
    assert.equal(bytes, 4000);
  });

  test('nothing is indicated before the packet filter is set', async () => {
    const rig = makeRig();
    await nvspBringUp(rig);
    rig.backend.inject([tcpFrame()]);
    assert.equal(rig.device.stats().nic.rxNotReady, 1);
    await new Promise((r) => setTimeout(r, 10));
    assert.equal(rig.guest.take(), null);
  });
});

// ---- RSC toward the guest ----

/** What Linux's NDIS config says at NVSP 6.1: ieee8021q | sriov | teaming | RSC. */
const NDIS_CAPS_WITH_RSC = 0x08 | 0x04 | 0x20 | 0x80;

/**
 * An Ethernet (optionally 802.1Q-tagged) / IPv4 or IPv6 / TCP frame with `payload` bytes,
 * shaped as a backend hands over a GSO frame: the IP length field as the sender left it
 * (`ipLength`, default 0, which the host must rewrite), the TCP checksum field holding
 * the pseudo-header sum (NEEDS_CSUM).
 */
function gsoFrame(o: { v6?: boolean; payload: number; vlan?: boolean; ipLength?: number; sport?: number }): Uint8Array {
  const l3 = o.vlan ? 18 : 14;
  const ipHeader = o.v6 ? 40 : 20;
  const l4 = l3 + ipHeader;
  const f = new Uint8Array(l4 + 20 + o.payload);
  f.set([0x00, 0x15, 0x5d, 0x09, 0x09, 0x09], 0);
  f.set(MAC, 6);
  const type = o.v6 ? 0x86dd : 0x0800;
  if (o.vlan) f.set([0x81, 0x00, 0x00, 0x07], 12);
  f[l3 - 2] = type >> 8;
  f[l3 - 1] = type & 0xff;
  const ipLength = o.ipLength ?? 0;
  if (o.v6) {
    f[l3] = 0x60;
    f[l3 + 4] = ipLength >> 8;
    f[l3 + 5] = ipLength & 0xff;
    f[l3 + 6] = 6;
    f[l3 + 7] = 64;
    f.set([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], l3 + 8);
    f.set([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2], l3 + 24);
  } else {
    f[l3] = 0x45;
    f[l3 + 2] = ipLength >> 8;
    f[l3 + 3] = ipLength & 0xff;
    f[l3 + 8] = 64;
    f[l3 + 9] = 6;
    f.set([10, 0, 0, 1, 10, 0, 0, 2], l3 + 12);
  }
  const sport = o.sport ?? 40000;
  f[l4] = sport >> 8;
  f[l4 + 1] = sport & 0xff;
  f[l4 + 2] = 0x14; // port 5201
  f[l4 + 3] = 0x51;
  f[l4 + 12] = 0x50;
  f[l4 + 13] = 0x10;
  const tcpLength = 20 + o.payload;
  const pseudo = foldSum(o.v6 ? pseudoHeaderSumIpv6(f, l3, 6, tcpLength) : pseudoHeaderSumIpv4(f, l3, 6, tcpLength));
  f[l4 + 16] = pseudo >> 8;
  f[l4 + 17] = pseudo & 0xff;
  for (let i = 0; i < o.payload; i++) f[l4 + 20 + i] = (i * 13 + (i >> 8)) & 0xff;
  return f;
}

/** The frame as the guest must see it joined: the IP header describing the whole segment. */
function wholeSegment(frame: Uint8Array, v6 = false, l3 = 14): Uint8Array {
  const w = frame.slice();
  const ipLength = w.length - l3;
  if (v6) {
    w[l3 + 4] = (ipLength - 40) >> 8;
    w[l3 + 5] = (ipLength - 40) & 0xff;
  } else {
    w[l3 + 2] = ipLength >> 8;
    w[l3 + 3] = ipLength & 0xff;
    fillIpv4HeaderChecksum(w, l3, 20);
  }
  return w;
}

/** Injects a GSO frame from the backend as a TAP hands one over (partial checksum, gso_size 1448). */
function injectGso(rig: Rig, frame: Uint8Array, v6 = false, l3 = 14): void {
  const l4 = l3 + (v6 ? 40 : 20);
  rig.backend.inject([frame], (o) => o.setChecksum(l4, 16).setGso(v6 ? 'tcpv6' : 'tcpv4', 1448, l4 + 20));
}

/** An NDIS_OFFLOAD_PARAMETERS SET with only the RSC fields (what Linux's LRO toggle sends); other fields 0 = no change. */
/** A rig whose guest is up with RSC on for both IP versions (frames are read in place), its SETs completed. */
async function coalescingRig(): Promise<Rig> {
  const rig = makeRig();
  await bringUp(rig);
  await turnOnRsc(rig, 2, 2);
  return rig;
}

/** RSS on as Linux sets it (its hash types, Microsoft's key, every table entry queue 0): received segments carry a hash PPI. */
async function enableRss(rig: Rig): Promise<void> {
  const on = new Uint8Array(40 + 64 + 40);
  encodeRssParameters(on, 0, 0, LINUX_RSS_HASH_INFO, new Array(16).fill(0), [...MICROSOFT_RSS_KEY]);
  assert.equal(await set(rig, Oid.GEN_RECEIVE_SCALE_PARAMETERS, on), NdisStatus.Success);
}

/** Sets the RSC offload parameters, which must succeed, and waits for the host to read the completions. */
async function turnOnRsc(rig: Rig, v4: number, v6: number): Promise<void> {
  assert.equal(await setRsc(rig, v4, v6), NdisStatus.Success);
  await waitFor(() => rig.guest.consumed, 'the host to read the completions');
}

async function setRsc(rig: Rig, v4: number, v6: number): Promise<number> {
  const b = new Uint8Array(28);
  encodeNdisOffloadParameters(b, 0, {
    ipv4Checksum: 0, tcpIpv4Checksum: 0, udpIpv4Checksum: 0, tcpIpv6Checksum: 0, udpIpv6Checksum: 0, lsoV1: 0, ipsecV1: 0,
    lsoV2Ipv4: 0, lsoV2Ipv6: 0, tcpConnectionIpv4: 0, tcpConnectionIpv6: 0, flags: 0, ipsecV2: 0, ipsecV2Ipv4: 0,
    rscIpv4: v4, rscIpv6: v6, encapsulatedPacketTaskOffload: 0, encapsulationTypes: 0,
  });
  return set(rig, Oid.TCP_OFFLOAD_PARAMETERS, b);
}

interface Fragment {
  /** The sub-allocation the range names. */
  index: number;
  info: PacketInfo;
  data: Uint8Array;
}

/** A transfer-page packet of RNDIS data messages, each range checked to lie in one sub-allocation of its own. */
function readFragments(rig: Rig, p: Packet): Fragment[] {
  assert.equal(p.type, PacketType.DataUsingTransferPages);
  assert.equal(p.flags & 1, 1, 'completion requested');
  assert.equal(u32(p.payload, 0), NvspMessageType.SendRndisPacket);
  assert.equal(u32(p.payload, 4), 0, 'data channel');
  const h = new TransferPageHeader();
  assert.equal(decodeTransferPageHeader(p.header, 0, p.header.length, h), 0);
  assert.equal(h.pageSetId, 0xcafe);
  const out: Fragment[] = [];
  const covered = new Set<number>();
  for (let i = 0; i < h.count; i++) {
    const r = h.ranges[i]!;
    assert.equal(r.byteOffset % rig.subAllocSize, 0, `range ${i} starts a sub-allocation`);
    assert.ok(r.byteOffset + r.byteCount <= rig.receiveBytes);
    // Linux drops a range longer than the sub-allocation size ("Packet too big").
    assert.ok(r.byteCount <= rig.subAllocSize, `range ${i} (${r.byteCount} bytes) fits one sub-allocation`);
    const k = r.byteOffset / rig.subAllocSize;
    assert.ok(!covered.has(k), `sub-allocation ${k} in two ranges`);
    covered.add(k);
    const msg = memory.bytes.slice(rig.receiveBase + r.byteOffset, rig.receiveBase + r.byteOffset + r.byteCount);
    const m = decodeRndisMessage(msg, 0, msg.length, 'to-guest');
    if ('isRndisError' in m || m.kind !== 'packet') throw new Error(`range ${i} is not an RNDIS PACKET`);
    const info = new PacketInfo();
    assert.equal(decodePacketInfo(msg, m.ppiOffset, m.ppiLength, info), null, `range ${i} PPIs decode`);
    out.push({ index: r.byteOffset / rig.subAllocSize, info, data: msg.slice(m.dataOffset, m.dataOffset + m.dataLength) });
  }
  assert.equal(new Set(out.map((f) => f.index)).size, out.length, 'no sub-allocation named twice');
  return out;
}

/** Injects one frame (a GSO segment when `gso`), reads what the guest got and completes it. */
async function receiveFragments(rig: Rig, frame: Uint8Array, gso: boolean): Promise<Fragment[]> {
  if (gso) injectGso(rig, frame);
  else rig.backend.inject([frame]);
  const p = await rig.guest.next('the frame');
  const fragments = readFragments(rig, p);
  completeReceive(rig.guest, p.transactionId);
  await waitFor(() => rig.guest.consumed, 'the host to read the completion');
  return fragments;
}

function join(fragments: Fragment[]): Uint8Array {
  const out = new Uint8Array(fragments.reduce((n, f) => n + f.data.length, 0));
  let at = 0;
  for (const f of fragments) {
    out.set(f.data, at);
    at += f.data.length;
  }
  return out;
}

/** A whole segment as the guest gets it: one range when it was read in place, else PKTINFO_ID fragments (copied). */
function assertWholeSegment(fragments: Fragment[]): void {
  const one = fragments[0]!.info;
  if (fragments.length > 1) assertFragmentIds(fragments);
  // One range: a plain packet, or (copied, short) a single fragment that is first and last.
  else if (one.hasPacketId) assert.equal(one.packetIdFlags & (PacketInfoIdFlag.SubAllocation | PacketInfoIdFlag.FirstFragment | PacketInfoIdFlag.LastFragment), PacketInfoIdFlag.SubAllocation | PacketInfoIdFlag.FirstFragment | PacketInfoIdFlag.LastFragment, 'a lone fragment is sub-allocation, first and last');
}

/** The PKTINFO_ID rules Linux's rndis_filter_receive_data relies on: sub-allocation on all, first on the first only, last on the last only, one id. */
function assertFragmentIds(fragments: Fragment[]): void {
  assert.ok(fragments.length >= 2, 'a coalesced segment spans sub-allocations');
  const id = fragments[0]!.info.packetId;
  fragments.forEach((f, i) => {
    assert.ok(f.info.hasPacketId, `fragment ${i} has PKTINFO_ID`);
    assert.equal(f.info.packetIdVersion, 1);
    assert.equal(f.info.packetIdFlags & PacketInfoIdFlag.SubAllocation, PacketInfoIdFlag.SubAllocation, `fragment ${i}: sub-allocation`);
    assert.equal((f.info.packetIdFlags & PacketInfoIdFlag.FirstFragment) !== 0, i === 0, `fragment ${i}: first flag`);
    assert.equal((f.info.packetIdFlags & PacketInfoIdFlag.LastFragment) !== 0, i === fragments.length - 1, `fragment ${i}: last flag`);
    assert.equal(f.info.packetId, id, `fragment ${i}: same pkt_id`);
    if (i > 0) assert.ok(!f.info.hasChecksum && !f.info.hasHash, `fragment ${i}: later fragments carry the id only`);
  });
}

/** The next transfer-page packet, one coalesced segment: its fragments, their ids checked. */
async function nextCoalesced(rig: Rig): Promise<{ p: Packet; fragments: Fragment[] }> {
  const p = await rig.guest.next('the coalesced segment');
  const fragments = readFragments(rig, p);
  assertFragmentIds(fragments);
  return { p, fragments };
}

/** MTU-sized segments, one single-range transfer-page packet each, until `payload` TCP bytes came: returns how many. */
async function receiveSegments(rig: Rig, payload: number, v6 = false): Promise<number> {
  const headers = 14 + (v6 ? 40 : 20) + 20;
  let bytes = 0;
  let n = 0;
  while (bytes < payload) {
    const r = await receive(rig);
    const m = decodeRndisMessage(r.message, 0, r.message.length, 'to-guest');
    if ('isRndisError' in m || m.kind !== 'packet') throw new Error('not a PACKET');
    const info = new PacketInfo();
    assert.equal(decodePacketInfo(r.message, m.ppiOffset, m.ppiLength, info), null);
    assert.equal(info.hasPacketId, false, 'a segment is no RSC fragment');
    assert.ok(m.dataLength <= 1514, `segment of ${m.dataLength} bytes fits the MTU`);
    bytes += m.dataLength - headers;
    n++;
  }
  assert.equal(bytes, payload);
  return n;
}

describe('NetVSP receive segment coalescing (RSC)', () => {
  // The feature itself: a guest that negotiated NVSP 6.1, said it can take RSC and
  // turned it on must get a 64 KiB TCP segment as ONE transfer-page packet of fragments
  // that Linux's rndis_filter_receive_data can join (it drops a segment that spans
  // packets or whose PKTINFO_ID flags are off), with an IP header Linux accepts for the
  // whole segment, and one completion must give every sub-allocation back (a leak here
  // starves the receive buffer after a few hundred segments).
  // Two ways to the guest, the same packet: a backend that reads into the receive buffer
  // (the TAP) leaves the segment at the fragment offsets of sub-allocations held for the
  // read; one that hands over its own buffer has it copied there. Either way PKTINFO_ID
  // fragments of one sub-allocation each, as Hyper-V sends them (Linux drops a range
  // longer than the sub-allocation size).
  for (const inPlace of [true, false]) {
    test(`a 64 KiB TCP/IPv4 GSO frame arrives whole (${inPlace ? 'read in place' : 'copied'}): one packet, PKTINFO_ID fragments, fixed IP header, one completion frees all`, async () => {
      const rig = await coalescingRig();
      if (!inPlace) rig.backend.target = null;
      const free = rig.device.stats().receiveBufferFree;
      const frame = gsoFrame({ payload: 65535 - 40 });
      injectGso(rig, frame);
      assert.equal(rig.backend.injectedInPlace, inPlace ? 1 : 0);
      const { p, fragments } = await nextCoalesced(rig);
      assert.equal(rig.guest.take(), null, 'exactly one transfer-page packet');
      assert.equal(fragments.length, coalescedFragmentCount(frame.length, rig.subAllocSize));
      const held = fragments.length;
      assert.ok(fragments.every((f) => f.data.length > 0));
      const first = fragments[0]!.info;
      assert.ok(first.hasChecksum, 'the first fragment carries the checksum verdict');
      assert.equal(first.checksum & (RxChecksum.TcpSucceeded | RxChecksum.IpSucceeded), RxChecksum.TcpSucceeded | RxChecksum.IpSucceeded);
      assert.equal(first.checksum & (RxChecksum.TcpFailed | RxChecksum.IpFailed), 0);
      assert.equal(first.hasHash, false, 'no hash PPI without RSS');
      const joined = join(fragments);
      const want = wholeSegment(frame);
      assert.equal(joined.length, frame.length);
      assert.equal((joined[16]! << 8) | joined[17]!, 65535, 'IPv4 total length = the whole IP packet');
      assert.ok(verifyIpv4HeaderChecksum(joined, 14, 20), 'valid IPv4 header checksum');
      assert.ok(Buffer.from(joined).equals(Buffer.from(want)), 'the joined payloads are the frame');
      assert.equal(rig.device.stats().receiveBufferFree, free - held);
      const ch = rig.device.stats().channels[0]!;
      assert.equal(ch.rxCoalesced, 1);
      assert.equal(ch.rxFrames, 1);
      // A forged completion naming a sub-allocation in the middle of the packet frees nothing.
      const generation = p.transactionId >> 32n;
      const bad = ch.badCompletions;
      const middle = fragments[5]!.index;
      completeReceive(rig.guest, (generation << 32n) | BigInt(middle));
      await waitFor(() => rig.device.stats().channels[0]!.badCompletions === bad + 1, 'the forged completion to be refused');
      assert.equal(rig.device.stats().receiveBufferFree, free - held);
      // The real one frees the whole chain.
      completeReceive(rig.guest, p.transactionId);
      await waitFor(() => rig.device.stats().receiveBufferFree === free, 'every sub-allocation of the segment to be freed');
      // Once only: the same completion again is stale.
      completeReceive(rig.guest, p.transactionId);
      await waitFor(() => rig.device.stats().channels[0]!.badCompletions === bad + 2, 'the repeated completion to be refused');
      assert.equal(rig.device.stats().receiveBufferFree, free);
      assert.equal(rig.device.stats().nic.rxBadGso, 0);
      assert.equal(rig.guest.failures.length, 0);
    });
  }

  // A backend that reads into the receive buffer (the TAP) and one that hands over its
  // own buffer (copied) must give the guest the same packet: same fragments, same PPIs,
  // same bytes; and a frame that is not a segment arrives as a plain frame either way.
  test('fast-check: frames and segments read in place equal the same ones copied', async () => {
    const rig = await coalescingRig();
    const target = rig.backend.target;
    assert.ok(target !== null, 'the NIC offered a receive target');
    const receiveOnce = async (frame: Uint8Array, gso: boolean, inPlace: boolean) => {
      rig.backend.target = inPlace ? target : null;
      const fragments = await receiveFragments(rig, frame, gso);
      if (gso) assertWholeSegment(fragments);
      else assert.equal(fragments.length, 1, 'a frame is one range either way');
      return { bytes: Buffer.from(join(fragments)), checksum: fragments[0]!.info.checksum, hash: fragments[0]!.info.hasHash };
    };
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 60, max: 65535 - 40 }), fc.boolean(), async (payload, gso) => {
        const frame = gso ? gsoFrame({ payload, sport: payload & 0xffff }) : tcpFrame({ payload: payload % 1400 });
        const a = await receiveOnce(frame.slice(), gso, true);
        const b = await receiveOnce(frame.slice(), gso, false);
        assert.deepEqual(a, b);
      }),
      { numRuns: 30 },
    );
    rig.backend.target = target;
    assert.ok(rig.backend.injectedInPlace >= 30);
    assert.equal(rig.device.stats().nic.rxJoined, 0, 'every frame read in place was sent from where it lay');
    assert.equal(rig.guest.failures.length, 0);
  });

  // Every read from a TAP batch ends in EAGAIN; the room it offered then stands for the
  // next read instead of being given back and taken again. A frame takes only the
  // sub-allocations it filled; the guest's completions bring the buffer back to exactly
  // the standing room; turning RSC off gives that back too.
  test('the receive room stands between reads: nothing is reserved again for a read that brought nothing, and nothing leaks', async () => {
    const rig = await coalescingRig();
    const target = rig.backend.target!;
    const rb = rig.device.nic.receiveBuffer!;
    const need = coalescedFragmentCount(MAX_COALESCED_FRAME, rb.subAllocSize);
    const room = target.next()!;
    assert.ok(room !== null && room.count === need, 'a segment\'s worth of fragments');
    const version = room.version;
    assert.equal(rb.freeCount, rb.count - need, 'the room is reserved');
    for (let i = 0; i < 50; i++) {
      target.unused(); // the read found nothing
      assert.equal(target.next(), room);
      assert.equal(room.version, version, 'an untouched room is not rebuilt');
    }
    assert.equal(rb.freeCount, rb.count - need);
    const receive = async (frame: Uint8Array, gso: boolean) => (await receiveFragments(rig, frame, gso)).length;
    assert.equal(await receive(tcpFrame({ payload: 40 }), false), 1);
    assert.equal(await receive(gsoFrame({ payload: 30000 }), true), coalescedFragmentCount(14 + 20 + 20 + 30000, rb.subAllocSize));
    assert.equal(await receive(tcpFrame({ payload: 1000 }), false), 1);
    assert.equal(rig.backend.injectedInPlace, 3);
    // After the last read the room was topped up on the next one: only it is out.
    assert.equal(target.next()!.count, need);
    assert.equal(rb.freeCount, rb.count - need, 'every completed frame came back; only the room is reserved');
    assert.equal(rig.device.stats().nic.rxJoined, 0);
    // RSC off: frames are copied again, and the room goes back to the guest's buffer.
    await turnOnRsc(rig, 1, 1);
    assert.equal(target.next(), null);
    assert.equal(rb.freeCount, rb.count, 'the room was given back');
    assert.equal(rig.guest.failures.length, 0);
  });

  // Frames read in one batch from the TAP go as ONE transfer-page packet with a range per
  // frame (as Hyper-V batches them; Linux walks the ranges and completes the packet once),
  // up to 40 ranges a packet. The one completion must free every frame's sub-allocations,
  // and a completion naming a later frame (a chain member) must free nothing.
  test('frames read in one batch share a transfer-page packet (40 ranges at most); one completion frees them all', async () => {
    const rig = await coalescingRig();
    const free = rig.device.stats().receiveBufferFree;
    const frames = Array.from({ length: 45 }, (_, i) => tcpFrame({ payload: 20 + i * 30, sport: 1000 + i }));
    rig.backend.inject(frames);
    assert.equal(rig.backend.injectedInPlace, 45);
    const first = await rig.guest.next('the first packet');
    const second = await rig.guest.next('the second packet');
    assert.equal(rig.guest.take(), null, 'two packets for 45 frames');
    const a = readFragments(rig, first);
    const b = readFragments(rig, second);
    assert.deepEqual([a.length, b.length], [40, 5]);
    [...a, ...b].forEach((f, i) => assert.ok(Buffer.from(f.data).equals(Buffer.from(frames[i]!)), `frame ${i} intact, in order`));
    assert.ok(rig.device.stats().receiveBufferFree <= free - 45);
    const ch = rig.device.stats().channels[0]!;
    assert.equal(ch.rxFrames, 45);
    const bad = ch.badCompletions;
    completeReceive(rig.guest, ((first.transactionId >> 32n) << 32n) | BigInt(a[3]!.index));
    await waitFor(() => rig.device.stats().channels[0]!.badCompletions === bad + 1, 'the completion naming a later frame to be refused');
    completeReceive(rig.guest, first.transactionId);
    completeReceive(rig.guest, second.transactionId);
    await waitFor(() => rig.device.stats().receiveBufferFree === free, 'every frame\'s sub-allocations back');
    assert.equal(rig.guest.failures.length, 0);
  });

  // The RSS hash goes on the first fragment only (Linux applies the first fragment's PPIs
  // to the segment), and with three PPIs there coalescedFragmentCount is exact: this is
  // the count the host reserves ring space and pauses the backend for, on the largest
  // segment it accepts (65535-byte IP packet behind a VLAN tag = 65553 bytes).
  test('with RSS the first fragment carries the hash; a 65553-byte tagged segment takes coalescedFragmentCount(65553, 1728) = 40 fragments', async () => {
    const rig = makeRig();
    // A buffer too small for 128 larger sections keeps Hyper-V's 1728: the most fragments.
    await bringUp(rig, 48);
    await enableRss(rig);
    await turnOnRsc(rig, 2, 0);
    assert.equal(rig.subAllocSize, 1728);
    const frame = gsoFrame({ payload: 65535 - 40, vlan: true });
    assert.equal(frame.length, MAX_COALESCED_FRAME);
    injectGso(rig, frame, false, 18);
    const { p, fragments } = await nextCoalesced(rig);
    assert.equal(rig.guest.take(), null, 'exactly one transfer-page packet');
    assert.equal(fragments.length, coalescedFragmentCount(65553, 1728));
    assert.equal(fragments.length, 40);
    const want = wholeSegment(frame, false, 18);
    assert.ok(Buffer.from(join(fragments)).equals(Buffer.from(want)));
    const parsed = new ParsedPacket();
    parsePacket(want, 0, want.length, parsed);
    const hash = new ToeplitzHash().hashPacket(want, 0, parsed, LINUX_RSS_HASH_INFO) >>> 0;
    assert.ok(fragments[0]!.info.hasHash, 'the first fragment carries the hash');
    assert.equal(fragments[0]!.info.hash, hash);
    completeReceive(rig.guest, p.transactionId);
  });

  // A guest that announced RSC in its NDIS config gets 16 KiB sub-allocations when its
  // buffer holds 128 of them (Linux takes any size from its minimum MTU up), so the
  // largest segment is 5 fragments instead of 40; one that did not keeps 1728.
  test('a 2 MiB buffer of a guest that takes RSC is cut into 16 KiB sub-allocations: the largest segment takes 5 fragments', async () => {
    const rig = makeRig();
    await bringUp(rig, 512);
    assert.equal(rig.subAllocSize, 16384);
    await turnOnRsc(rig, 2, 0);
    const frame = gsoFrame({ payload: 65535 - 40, vlan: true });
    injectGso(rig, frame, false, 18);
    const { p, fragments } = await nextCoalesced(rig);
    assert.equal(fragments.length, coalescedFragmentCount(MAX_COALESCED_FRAME, 16384));
    assert.equal(fragments.length, 5);
    assert.ok(Buffer.from(join(fragments)).equals(Buffer.from(wholeSegment(frame, false, 18))));
    completeReceive(rig.guest, p.transactionId);

    const plain = makeRig();
    await bringUp(plain, 512, 0x08 | 0x04 | 0x20);
    assert.equal(plain.subAllocSize, 1728, 'no RSC in the NDIS config: one frame per sub-allocation');
  });

  // The host parses a segment's headers from a copy of the first fragment's head; headers
  // longer than that copy must be parsed again from the whole fragment, not from stale
  // bytes of the last segment's copy.
  test('a segment whose headers run past the copied head (a 600-byte IPv6 extension header) is parsed whole and coalesced', async () => {
    const rig = makeRig();
    await bringUp(rig, 512);
    // With RSS the first fragment carries the hash of the ports the host parsed.
    await enableRss(rig);
    await turnOnRsc(rig, 2, 2);
    const take = async (frame: Uint8Array, l4: number) => {
      rig.backend.inject([frame], (o) => o.setChecksum(l4, 16).setGso('tcpv6', 1448, l4 + 20));
      const { p, fragments } = await nextCoalesced(rig);
      completeReceive(rig.guest, p.transactionId);
      return fragments;
    };
    // First a plain segment, so the copy holds another frame's bytes.
    const plain = gsoFrame({ v6: true, payload: 40000, sport: 1111 });
    assert.equal((await take(plain, 54)).length, coalescedFragmentCount(plain.length, 16384));
    const base = gsoFrame({ v6: true, payload: 40000, sport: 2222 });
    const ext = new Uint8Array(600);
    ext[0] = 6; // TCP follows
    ext[1] = 600 / 8 - 1;
    for (let at = 2, i = 0; i < 3; i++) {
      const n = [255, 255, 82][i]!; // PadN options fill it
      ext[at] = 1;
      ext[at + 1] = n;
      at += 2 + n;
    }
    const frame = new Uint8Array(base.length + ext.length);
    frame.set(base.subarray(0, 54), 0);
    frame[14 + 6] = 60; // destination options
    frame.set(ext, 54);
    frame.set(base.subarray(54), 54 + ext.length);
    const fragments = await take(frame, 54 + ext.length);
    assert.equal(fragments.length, coalescedFragmentCount(frame.length, 16384));
    const want = wholeSegment(frame, true, 14);
    assert.ok(Buffer.from(join(fragments)).equals(Buffer.from(want)), 'the segment arrives whole');
    // Parsed from stale bytes, its TCP header looked malformed and the frame was copied.
    assert.equal(rig.device.stats().nic.rxJoined, 0, 'sent from where it was read');
    const parsed = new ParsedPacket();
    parsePacket(want, 0, want.length, parsed);
    assert.equal(parsed.srcPort, 2222);
    assert.equal(fragments[0]!.info.hash, new ToeplitzHash().hashPacket(want, 0, parsed, LINUX_RSS_HASH_INFO) >>> 0, 'hashed on this frame\'s ports');
  });

  // Any segment length must come out as the fragments its layout needs, each with at
  // least one byte (a count that disagreed with the layout once left an empty last
  // fragment).
  test('no fragment is empty, whatever the segment length (without RSS)', async () => {
    const rig = await coalescingRig();
    // The data sits at fixed offsets (room for id, checksum and hash PPIs in the first
    // fragment, the id in the others), so a backend can read a segment in place before
    // its PPIs are known; without RSS the first fragment's hash room stays unused.
    const firstData = rig.subAllocSize - 44 - 48;
    const laterData = rig.subAllocSize - 44 - 16;
    const target = rig.backend.target;
    // Lengths at the edges of a fragment, both ways of reading (in place and copied).
    for (const length of [1514 + 1, firstData + 1, 1636 + 1668 + 1, 1636 + 1668 * 30 + 1, 1636 + 1668 * 30 + 16, 1652 + 1668 * 30, 1652 + 1668 * 30 + 1, 65549]) {
      await waitFor(() => rig.guest.consumed, 'the host to read the completions');
      const frame = gsoFrame({ payload: length - 54, sport: length & 0xffff });
      rig.backend.target = null; // copied: the fragment layout
      injectGso(rig, frame);
      rig.backend.target = target;
      const p = await rig.guest.next(`the segment of ${length} bytes`);
      const fragments = readFragments(rig, p);
      const needed = 1 + Math.ceil(Math.max(0, length - firstData) / laterData);
      assert.deepEqual(
        { length, fragments: fragments.length, empty: fragments.filter((f) => f.data.length === 0).length },
        { length, fragments: needed, empty: 0 },
      );
      assert.ok(Buffer.from(join(fragments)).equals(Buffer.from(wholeSegment(frame))));
      completeReceive(rig.guest, p.transactionId);
      // Read in place, the same fragments.
      await waitFor(() => rig.guest.consumed, 'the host to read the completion');
      injectGso(rig, frame);
      const q = await rig.guest.next(`the segment of ${length} bytes, in place`);
      const inPlace = readFragments(rig, q);
      assert.equal(inPlace.length, needed);
      assert.ok(Buffer.from(join(inPlace)).equals(Buffer.from(wholeSegment(frame))));
      completeReceive(rig.guest, q.transactionId);
    }
  });

  // Coalescing is opt-in: a guest that never turned RSC on (Linux with LRO off), turned
  // it off again, or did not say it can take RSC in its NDIS config would drop (or
  // mis-handle) fragments it does not expect. They get MTU segments as before. A SET
  // with 0 ("no change", what Linux sends for fields it is not changing) keeps RSC on.
  test('RSC off, turned off again (1), or never offered by the guest: MTU segments; a SET with 0 keeps it on', async () => {
    const payload = 65535 - 40;
    const rig = makeRig();
    await bringUp(rig);
    // Never turned on.
    injectGso(rig, gsoFrame({ payload }));
    assert.equal(await receiveSegments(rig, payload), Math.ceil(payload / 1448));
    // On, then a SET with every field 0: still on.
    assert.equal(await setRsc(rig, 2, 2), NdisStatus.Success);
    assert.equal(await setRsc(rig, 0, 0), NdisStatus.Success);
    injectGso(rig, gsoFrame({ payload }));
    const p = await rig.guest.next('the coalesced segment');
    assertWholeSegment(readFragments(rig, p));
    completeReceive(rig.guest, p.transactionId);
    // Off (1 = disabled): segments again.
    assert.equal(await setRsc(rig, 1, 1), NdisStatus.Success);
    injectGso(rig, gsoFrame({ payload }));
    assert.equal(await receiveSegments(rig, payload), Math.ceil(payload / 1448));
    assert.equal(rig.device.stats().channels[0]!.rxCoalesced, 1);

    // A guest whose NDIS config lacks the RSC capability bit, even if it sets RSC on.
    const noCap = makeRig();
    await bringUp(noCap, 64, NDIS_CAPS_WITH_RSC & ~0x80);
    assert.equal(await setRsc(noCap, 2, 2), NdisStatus.Success);
    injectGso(noCap, gsoFrame({ payload }));
    assert.equal(await receiveSegments(noCap, payload), Math.ceil(payload / 1448));
    assert.equal(noCap.device.stats().channels[0]!.rxCoalesced, 0);
  });

  // RSC is per IP version: a guest that turned it on for IPv4 only must get IPv6
  // segments cut, and the IPv6 path (payload length, no header checksum) must be right
  // when it is on.
  test('TCP/IPv6: segmented with only IPv4 RSC on; whole, with the payload length fixed, once IPv6 RSC is on', async () => {
    const payload = 30000;
    const rig = makeRig();
    await bringUp(rig);
    assert.equal(await setRsc(rig, 2, 0), NdisStatus.Success);
    const frame = gsoFrame({ v6: true, payload });
    injectGso(rig, frame, true);
    assert.equal(await receiveSegments(rig, payload, true), Math.ceil(payload / 1448));
    assert.equal(rig.device.stats().channels[0]!.rxCoalesced, 0);
    assert.equal(await setRsc(rig, 0, 2), NdisStatus.Success);
    injectGso(rig, frame, true);
    const p = await rig.guest.next('the coalesced IPv6 segment');
    assert.equal(rig.guest.take(), null, 'exactly one transfer-page packet');
    const fragments = readFragments(rig, p);
    assertWholeSegment(fragments);
    const joined = join(fragments);
    assert.equal((joined[18]! << 8) | joined[19]!, 20 + payload, 'IPv6 payload length = TCP header + data');
    assert.ok(Buffer.from(joined).equals(Buffer.from(wholeSegment(frame, true))));
    const first = fragments[0]!.info;
    assert.equal(first.checksum & RxChecksum.TcpSucceeded, RxChecksum.TcpSucceeded);
    assert.equal(first.checksum & RxChecksum.IpSucceeded, 0, 'IPv6 has no header checksum to vouch for');
    completeReceive(rig.guest, p.transactionId);
  });

  // The IPv4 total length is 16 bits: an untagged frame of more than 65549 bytes holds an
  // IP packet longer than 65535, which no IPv4 header can describe. Coalescing it would
  // write the length modulo 65536 (the guest's IP layer then drops a packet claiming to
  // be 3 bytes long); it must be refused or cut instead.
  test('an untagged TCP/IPv4 GSO frame whose IP packet exceeds 65535 bytes is never sent whole with a wrapped length', async () => {
    const rig = await coalescingRig();
    const frame = gsoFrame({ payload: MAX_COALESCED_FRAME - 54 }); // 65553 bytes: a 65539-byte IP packet
    injectGso(rig, frame);
    await new Promise((r) => setTimeout(r, 20));
    let p: Packet | null;
    while ((p = rig.guest.take()) !== null) {
      const joined = join(readFragments(rig, p));
      completeReceive(rig.guest, p.transactionId);
      assert.equal((joined[16]! << 8) | joined[17]!, joined.length - 14, `a ${joined.length}-byte frame whose IPv4 total length is ${(joined[16]! << 8) | joined[17]!}`);
    }
  });
});

describe('NetVSP interrupts and MTU', () => {
  test('the guest is interrupted once per batch, only when its ring was empty and unmasked', async () => {
    const rig = makeRig();
    await bringUp(rig);
    const inbound = rig.guest.open.outgoing;
    const before = rig.guest.hostSignals;
    Atomics.store(inbound.header, RingWord.InterruptMask, 1);
    rig.backend.inject([1, 2, 3].map((i) => tcpFrame({ sport: i })));
    for (let i = 0; i < 3; i++) await receive(rig);
    assert.equal(rig.guest.hostSignals, before, 'masked: no interrupt');
    Atomics.store(inbound.header, RingWord.InterruptMask, 0);
    await waitFor(() => rig.guest.consumed, 'completions read');
    const unmasked = rig.guest.hostSignals;
    rig.backend.inject([4, 5, 6].map((i) => tcpFrame({ sport: i })));
    for (let i = 0; i < 3; i++) await receive(rig);
    assert.equal(rig.guest.hostSignals, unmasked + 1, 'one interrupt for the batch');
  });

  test('MTU 9000: sub-allocations hold a whole jumbo frame, which arrives intact', async () => {
    const rig = makeRig({ mtu: 9000 });
    await bringUp(rig, 256);
    assert.ok(rig.subAllocSize >= 44 + 32 + 9014);
    const frame = tcpFrame({ payload: 9000 - 40 });
    rig.backend.inject([frame]);
    const r = await receive(rig);
    const m = decodeRndisMessage(r.message, 0, r.message.length, 'to-guest');
    if ('isRndisError' in m || m.kind !== 'packet') throw new Error('not a PACKET');
    assert.equal(m.dataLength, frame.length);
    const max = await queryRaw(rig, Oid.GEN_MAXIMUM_FRAME_SIZE);
    assert.equal(u32(max.info, 0), 9000);
  });
});

describe('NetVSP link state', () => {
  test('link down / up from the host become MEDIA_DISCONNECT / MEDIA_CONNECT indications', async () => {
    const rig = makeRig();
    await bringUp(rig);
    rig.device.setLinkUp(false);
    const down = await receive(rig);
    assert.equal(down.channelType, 1);
    assert.equal(u32(down.message, 0), RndisMessageType.IndicateStatus);
    assert.equal(u32(down.message, 8), NdisStatus.MediaDisconnect);
    const media = await queryRaw(rig, Oid.GEN_MEDIA_CONNECT_STATUS);
    assert.equal(u32(media.info, 0), 1);
    // Link down: guest frames are dropped (and still completed).
    const c = await request(rig, rig.guest, rndisPkt(0), gpaHeader([guestBytes(rndisData(tcpFrame()))]));
    assert.equal(u32(c, 4), NvspStatus.Success);
    assert.equal(rig.backend.sent.length, 0);
    rig.device.setLinkUp(true);
    const up = await receive(rig);
    assert.equal(u32(up.message, 8), NdisStatus.MediaConnect);
  });
});

describe('NetVSP vRSS', () => {
  test('two channels: subchannel grant, offer, RSS table spreads flows by Toeplitz hash with a hash PPI', async () => {
    const rig = makeRig({ maxQueues: 2 });
    await bringUp(rig);
    const sc = await request(rig, rig.guest, nvsp(NvspMessageType.Subchannel, 1, 5));
    assert.equal(u32(sc, 4), NvspStatus.Success);
    assert.equal(u32(sc, 8), 1, 'granted one (maxQueues - 1)');
    assert.deepEqual(rig.offered, [1]);
    const sub = new FakeGuestChannel(1, rig.gpadls);
    rigs.at(-1)!.guests.push(sub);
    assert.equal(rig.device.open(sub.open), 0);
    // Disable, then enable with table[i] = i % 2 (what Linux sends).
    const table = Array.from({ length: 16 }, (_, i) => i % 2);
    const off = new Uint8Array(40);
    encodeRssParameters(off, 0, RssParameterFlag.DisableRss, LINUX_RSS_HASH_INFO, [], []);
    assert.equal(await set(rig, Oid.GEN_RECEIVE_SCALE_PARAMETERS, off), 0);
    const on = new Uint8Array(40 + 64 + 40);
    encodeRssParameters(on, 0, 0, LINUX_RSS_HASH_INFO, table, [...MICROSOFT_RSS_KEY]);
    assert.equal(await set(rig, Oid.GEN_RECEIVE_SCALE_PARAMETERS, on), 0);
    const hasher = new ToeplitzHash();
    const parsed = new ParsedPacket();
    const frames = Array.from({ length: 16 }, (_, i) => tcpFrame({ sport: 1000 + i * 13 }));
    const expected = frames.map((f) => {
      parsePacket(f, 0, f.length, parsed);
      const h = hasher.hashPacket(f, 0, parsed, LINUX_RSS_HASH_INFO);
      return { hash: h >>> 0, channel: table[h % 16]! };
    });
    assert.ok(expected.some((e) => e.channel === 0) && expected.some((e) => e.channel === 1), 'the flows cover both channels');
    rig.backend.inject(frames);
    const guests = [rig.guest, sub];
    for (const [i, f] of frames.entries()) {
      const g = guests[expected[i]!.channel]!;
      const r = await receive(rig, g);
      const m = decodeRndisMessage(r.message, 0, r.message.length, 'to-guest');
      if ('isRndisError' in m || m.kind !== 'packet') throw new Error('not a PACKET');
      assert.deepEqual([...r.message.subarray(m.dataOffset, m.dataOffset + m.dataLength)], [...f], `frame ${i} on channel ${expected[i]!.channel}`);
      const info = new PacketInfo();
      assert.equal(decodePacketInfo(r.message, m.ppiOffset, m.ppiLength, info), null);
      assert.ok(info.hasHash);
      assert.equal(info.hash, expected[i]!.hash);
    }
    const stats = rig.device.stats().channels;
    assert.equal(stats[0]!.rxFrames + stats[1]!.rxFrames, 16);
    assert.ok(stats[1]!.rxFrames > 0);
    // The sub-channel carries transmit too.
    const c = await request(rig, sub, rndisPkt(0), gpaHeader([guestBytes(rndisData(tcpFrame()))]));
    assert.equal(u32(c, 4), NvspStatus.Success);
    assert.equal(rig.device.stats().channels[1]!.txFrames, 1);
  });
});

describe('NetVSP against a hostile guest', () => {
  test('out-of-range section, bad PPI length, pages outside RAM: failure statuses, nothing sent', async () => {
    const rig = makeRig();
    await bringUp(rig);
    const bad1 = await request(rig, rig.guest, rndisPkt(0, 9999, 100));
    assert.equal(u32(bad1, 0), NvspMessageType.SendRndisPacketComplete);
    assert.notEqual(u32(bad1, 4), NvspStatus.Success);
    const big = await request(rig, rig.guest, rndisPkt(0, 0, 7000));
    assert.notEqual(u32(big, 4), NvspStatus.Success);
    // A PPI whose size runs past the PPI area (Linux would loop forever on such a record).
    const msg = rndisData(tcpFrame(), [[PpiType.TcpIpChecksum, 0]]);
    put32(msg, 44, 64);
    const bad2 = await request(rig, rig.guest, rndisPkt(0), gpaHeader([guestBytes(msg)]));
    assert.equal(u32(bad2, 4), NvspStatus.InvalidRndisPacket);
    const outside = await request(rig, rig.guest, rndisPkt(0), gpaHeader([{ byteCount: 100, byteOffset: 0, pfns: [RAM_PAGES + 5] }]));
    assert.equal(u32(outside, 4), NvspStatus.InvalidRndisPacket);
    const wrongCount = gpaHeader([{ byteCount: 100, byteOffset: 0, pfns: [20] }]);
    put32(wrongCount, 8, 9000); // byte_count says 3 pages, the list has 1: the range overruns the header
    const bad3 = await request(rig, rig.guest, rndisPkt(0), wrongCount);
    assert.equal(u32(bad3, 4), NvspStatus.InvalidRndisPacket);
    assert.equal(rig.backend.sent.length, 0);
    // Second buffers, sub-channels on v-unsupported or non-primary requests are refused.
    const again = await request(rig, rig.guest, nvsp(NvspMessageType.SendReceiveBuffer, 0x100, 0xcafe));
    assert.equal(u32(again, 4), NvspStatus.Fail);
    // Still serving.
    const ok = await request(rig, rig.guest, rndisPkt(0), gpaHeader([guestBytes(rndisData(tcpFrame()))]));
    assert.equal(u32(ok, 4), NvspStatus.Success);
    assert.equal(rig.guest.failures.length, 0);
  });

  test('forged and stale receive completions are ignored', async () => {
    const rig = makeRig();
    await bringUp(rig);
    const free = rig.device.stats().receiveBufferFree;
    completeReceive(rig.guest, 12345n);
    completeReceive(rig.guest, (1n << 60n) + 3n);
    await waitFor(() => rig.device.stats().channels[0]!.badCompletions === 2, 'the bad completions to be counted');
    assert.equal(rig.device.stats().receiveBufferFree, free);
  });

  test('fast-check: random NVSP messages and random RNDIS bytes get answers, never a throw, and the NIC keeps serving', async () => {
    const rig = makeRig({ maxQueues: 2 });
    await bringUp(rig);
    const types = [0, 1, 2, 100, 101, 102, 103, 104, 105, 106, 107, 108, 125, 128, 129, 131, 133, 134, 135, 999, 0xffffffff];
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...types),
        fc.uint8Array({ minLength: 0, maxLength: 36 }),
        fc.boolean(),
        async (type, body, viaGpa) => {
          const payload = new Uint8Array(4 + body.length);
          put32(payload, 0, type);
          payload.set(body, 4);
          // Never revoke the live buffers here, and keep SEND_RNDIS_PKT pointing at real data.
          if (type === 103 || type === 106) return;
          const header = viaGpa ? gpaHeader([guestBytes(body.length > 0 ? body : Uint8Array.of(1))]) : null;
          const reply = await request(rig, rig.guest, payload.length === 0 ? Uint8Array.of(0) : payload, header);
          assert.ok(reply.length >= 8);
        },
      ),
      { numRuns: 150 },
    );
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 1, maxLength: 300 }), fc.integer({ min: 0, max: 3 }), async (bytes, kind) => {
        // Random bytes, sometimes with a plausible RNDIS header in front.
        const b = Uint8Array.from(bytes);
        if (kind > 0 && b.length >= 8) {
          put32(b, 0, [1, 4, 5][kind - 1]!);
          put32(b, 4, b.length);
        }
        const reply = await request(rig, rig.guest, rndisPkt(kind === 0 ? 0 : 1), gpaHeader([guestBytes(b)]));
        assert.equal(u32(reply, 0), NvspMessageType.SendRndisPacketComplete);
        // Answers to accidental valid control messages: complete them so the buffer never runs dry.
        let p: Packet | null;
        while ((p = rig.guest.take()) !== null) if (p.type === PacketType.DataUsingTransferPages) completeReceive(rig.guest, p.transactionId);
      }),
      { numRuns: 150 },
    );
    // Large random packets reach the in-place way (one RNDIS PACKET of 2 KiB or more in GPA-direct pages).
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 2048, maxLength: 9000 }), fc.integer({ min: 0, max: 4095 }), fc.boolean(), async (bytes, pageOffset, packet) => {
        const b = Uint8Array.from(bytes);
        if (packet) {
          put32(b, 0, 1);
          put32(b, 4, b.length);
        }
        const reply = await request(rig, rig.guest, rndisPkt(0), gpaHeader([guestBytes(b, pageOffset)]));
        assert.equal(u32(reply, 0), NvspMessageType.SendRndisPacketComplete);
        let p: Packet | null;
        while ((p = rig.guest.take()) !== null) if (p.type === PacketType.DataUsingTransferPages) completeReceive(rig.guest, p.transactionId);
      }),
      { numRuns: 100 },
    );
    assert.equal(rig.guest.failures.length, 0);
    // Still a working NIC.
    const c = await request(rig, rig.guest, rndisPkt(0), gpaHeader([guestBytes(rndisData(tcpFrame()))]));
    assert.equal(u32(c, 4), NvspStatus.Success);
    const before = rig.backend.sent.length;
    assert.ok(before >= 1);
  });

  test('close and reopen: the session resets and the bring-up works again', async () => {
    const rig = makeRig();
    await bringUp(rig);
    rig.device.close(rig.guest.open);
    assert.equal(rig.device.stats().nvspVersion, 0);
    const guest = new FakeGuestChannel(0, rig.gpadls);
    rigs.at(-1)!.guests.push(guest);
    assert.equal(rig.device.open(guest.open), 0);
    rig.guest = guest;
    await bringUp(rig);
    rig.backend.inject([tcpFrame()]);
    const r = await receive(rig);
    assert.equal(r.channelType, 0);
  });
});

