// The reference guest's netvsc against a scripted host (a fake NetVSP that answers NVSP and
// RNDIS the way Hyper-V does, through the receive buffer in guest RAM), the TX PPI encoders,
// and NicTap with a real TAP in a namespace this test creates.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import fc from 'fast-check';
import { GuestMemory } from '../src/memory/guest-memory.js';
import { PAGE_SIZE } from '../src/memory/page.js';
import { PageAllocator } from '../src/guest/page-allocator.js';
import { PacketType, encodeTransferPageHeader, transferPageHeaderSize } from '../src/vmbus/packet.js';
import { NvspDecoder, NvspStatus, encodeNvspMessage, encodeRndisPacketMessage, isNvspError, type NvspMessage } from '../src/devices/netvsp/nvsp-protocol.js';
import { RndisDecoder, RndisError, encodeRndisInitializeComplete, encodeRndisQueryComplete, encodeRndisSetComplete, encodeRndisPacketHeader, encodeRndisIndicateStatus, NdisStatus } from '../src/devices/netvsp/rndis-protocol.js';
import { Oid, oidName } from '../src/devices/netvsp/rndis-oids.js';
import { checksumLsoAndRscOffload, decodeNdisOffloadParameters, encodeNdisOffload, ndisOffloadSizeFor, encodeRssCapabilities, NdisObjectError, type NdisOffloadParameters } from '../src/devices/netvsp/ndis-offload.js';
import { PacketInfoIdFlag, PpiType, RxChecksum, lsoMss, lsoTcpHeaderOffset, lsoIpVersion, txChecksumHeaderOffset, writePacketIdPpi, writeU32Ppi } from '../src/devices/netvsp/per-packet-info.js';
import { PacketOffload } from '../src/backends/net/net-backend.js';
import { fillIpv4HeaderChecksum, finishChecksum, onesSum } from '../src/backends/net/inet-checksum.js';
import { NetvscNic } from '../src/guest/netvsc/netvsc-driver.js';
import { encodeTxPpis, NVSP_RSC_MAX } from '../src/guest/netvsc/netvsc-datapath.js';
import type { NetvscPort } from '../src/guest/netvsc/netvsc-handshake.js';
import { NicTap } from '../src/guest/netvsc/nic-tap.js';
import { Poller } from '../src/sys/epoll.js';
import { addAddress, createNetns, deleteNetns, netnsUnavailableReason, runInNetns, uniqueName } from '../src/sys/netns.js';
import { PacketView } from '../src/vmbus/ring/ring-reader.js';

/**
 * Delivers one packet to the NIC as its ring would: a PacketView, the header and the
 * payload where they lie in larger arrays (at offsets other than 0, as in a ring).
 */
function deliver(nic: NetvscNic, queue: number, type: number, txLow: number, txHigh: number, header: Uint8Array, payload: Uint8Array): void {
  const view = new PacketView();
  view.type = type;
  view.transactionIdLow = txLow;
  view.transactionIdHigh = txHigh;
  const ring = new Uint8Array(header.length + 24);
  ring.set(header, 16);
  view.headerOffset = 16;
  view.headerLength = header.length;
  const bytes = new Uint8Array(payload.length + 16);
  bytes.set(payload, 8);
  nic.onPacket(queue, view, ring, bytes, 8, payload.length);
}

const MAC = Uint8Array.from([0x00, 0x15, 0x5d, 0x01, 0x02, 0x03]);
const memories: GuestMemory[] = [];
after(() => { for (const m of memories) m.close(); });

interface Sent { queue: number; type: number; txid: number; payload: Uint8Array; header: Uint8Array | null }

/** A scripted NetVSP: answers on a later microtask, like a host reading the ring. */
class FakeHost {
  readonly memory = GuestMemory.create(48 << 20);
  readonly allocator = new PageAllocator(1, this.memory.pageCount - 1);
  readonly sent: Sent[] = [];
  readonly nvspLog: string[] = [];
  readonly rndisLog: string[] = [];
  /** Every NDIS_OFFLOAD_PARAMETERS the guest set, decoded. */
  readonly offloadSets: NdisOffloadParameters[] = [];
  readonly frames: Uint8Array[] = [];
  readonly completions: { txid: number; status: number }[] = [];
  readonly gpadls = new Map<number, number[]>();
  nic!: NetvscNic;
  rxPfns: number[] = [];
  rxSlot = 0;
  nextTp = 1000;
  acceptVersion = 0x50000;
  rssQueues = 2;
  grant = 1;
  onFrame: ((frame: Uint8Array) => void) | null = null;
  private readonly nvsp = new NvspDecoder();
  private readonly rndis = new RndisDecoder();
  private readonly subAlloc = 1728;

  constructor() {
    memories.push(this.memory);
  }

  port(queue: number): NetvscPort {
    return {
      send: (payload, txid, type, _flags, header) => {
        const s: Sent = { queue, type, txid, payload: payload.slice(), header: header ? header.slice() : null };
        this.sent.push(s);
        queueMicrotask(() => this.handle(s));
        return true;
      },
    };
  }

  createNic(options: ConstructorParameters<typeof NetvscNic>[6] = {}): NetvscNic {
    let handle = 1;
    this.nic = new NetvscNic('eth0', this.port(0), {
      establish: async (pfns) => { const h = handle++; this.gpadls.set(h, [...pfns]); return h; },
      teardown: async (h) => { this.gpadls.delete(h); },
    }, this.memory, this.allocator, 4, { initTimeoutMs: 2000, ...options });
    return this.nic;
  }

  private reply(m: NvspMessage, txid: number, size = 40): void {
    const b = new Uint8Array(size);
    encodeNvspMessage(m, b, 0, size);
    deliver(this.nic, 0, PacketType.Completion, txid % 2 ** 32, Math.floor(txid / 2 ** 32), new Uint8Array(0), b);
  }

  private handle(s: Sent): void {
    if (s.type === PacketType.Completion) {
      this.completions.push({ txid: s.txid, status: new DataView(s.payload.buffer).getUint32(4, true) });
      return;
    }
    const m = this.nvsp.decode(s.payload, 'to-host');
    if (isNvspError(m)) throw new Error(`guest sent a bad NVSP message: ${m.reason}`);
    if (m.kind !== 'rndis-packet') this.nvspLog.push(m.kind === 'init' ? `init 0x${m.maxVersion.toString(16)}` : m.kind);
    switch (m.kind) {
      case 'init':
        return this.reply({ kind: 'init-complete', negotiatedVersion: 0xffffffff, maxMdlChainLength: 34, status: m.maxVersion === this.acceptVersion ? NvspStatus.Success : NvspStatus.Fail }, s.txid, 28);
      case 'receive-buffer':
        this.rxPfns = this.gpadls.get(m.gpadlHandle)!;
        return this.reply({ kind: 'receive-buffer-complete', status: 1, numSections: 1, sectionOffset: 0, subAllocSize: this.subAlloc, numSubAllocs: Math.floor(this.rxPfns.length * PAGE_SIZE / this.subAlloc), endOffset: 0 }, s.txid, 28);
      case 'send-buffer':
        return this.reply({ kind: 'send-buffer-complete', status: 1, sectionSize: 6144 }, s.txid);
      case 'subchannel-request':
        this.reply({ kind: 'subchannel-complete', status: 1, count: this.grant }, s.txid);
        setTimeout(() => { for (let i = 1; i <= this.grant; i++) this.nic.addQueue(i, this.port(i)); }, 5);
        return;
      case 'rndis-packet': {
        const bytes = this.rndisBytes(s, m.sectionIndex, m.sectionSize);
        if (m.channelType === 1) this.control(bytes);
        else {
          const p = this.rndis.decode(bytes, 0, bytes.length, 'to-host');
          if (p instanceof RndisError || p.kind !== 'packet') throw new Error('bad data packet');
          this.frames.push(bytes.slice(p.dataOffset, p.dataOffset + p.dataLength));
          this.lastPpi = bytes.slice(p.ppiOffset, p.ppiOffset + p.ppiLength);
          this.onFrame?.(bytes.slice(p.dataOffset, p.dataOffset + p.dataLength));
        }
        const c = new Uint8Array(40);
        encodeNvspMessage({ kind: 'rndis-packet-complete', status: 1 }, c, 0);
        const complete = () => deliver(this.nic, s.queue, PacketType.Completion, s.txid, 0, new Uint8Array(0), c);
        if (this.holdDataCompletions && m.channelType !== 1) this.heldCompletions.push(complete);
        else complete();
        return;
      }
      default:
    }
  }
  lastPpi = new Uint8Array(0);
  /** Keep data send completions back (a busy host) until releaseCompletions(). */
  holdDataCompletions = false;
  readonly heldCompletions: (() => void)[] = [];
  releaseCompletions(n = this.heldCompletions.length): void {
    for (const c of this.heldCompletions.splice(0, n)) c();
  }

  private rndisBytes(s: Sent, section: number, size: number): Uint8Array {
    if (section !== 0xffffffff) {
      const base = this.nic.session!.send.firstPfn * PAGE_SIZE + section * 6144;
      return this.memory.bytes.slice(base, base + size);
    }
    const h = new DataView(s.header!.buffer);
    assert.equal(h.getUint32(4, true), 1, 'one GPA range');
    const len = h.getUint32(8, true);
    const off = h.getUint32(12, true);
    const out = new Uint8Array(len);
    for (let done = 0, i = 0; done < len; i++) {
      const pfn = h.getUint32(16 + 8 * i, true);
      const start = i === 0 ? off : 0;
      const n = Math.min(PAGE_SIZE - start, len - done);
      out.set(this.memory.bytes.subarray(pfn * PAGE_SIZE + start, pfn * PAGE_SIZE + start + n), done);
      done += n;
    }
    return out;
  }

  private control(bytes: Uint8Array): void {
    const m = this.rndis.decode(bytes, 0, bytes.length, 'to-host');
    if (m instanceof RndisError) throw new Error(`bad RNDIS control: ${m.reason}`);
    const out = new Uint8Array(1024);
    let n = 0;
    if (m.kind === 'initialize') {
      this.rndisLog.push('initialize');
      n = encodeRndisInitializeComplete(out, 0, { requestId: m.requestId, status: 0, maxPacketsPerMessage: 8, maxTransferSize: 0xefffffff, packetAlignmentFactor: 3 });
    } else if (m.kind === 'query') {
      this.rndisLog.push(`query ${oidName(m.oid)}`);
      const v = this.nic.session!.version;
      let info: Uint8Array | null = null;
      if (m.oid === Oid.GEN_MAXIMUM_FRAME_SIZE) info = u32(1500);
      else if (m.oid === Oid['802_3_PERMANENT_ADDRESS']) info = MAC;
      else if (m.oid === Oid.TCP_OFFLOAD_HARDWARE_CAPABILITIES) { info = new Uint8Array(ndisOffloadSizeFor(v)); encodeNdisOffload(info, 0, checksumLsoAndRscOffload(), info.length); }
      else if (m.oid === Oid.GEN_MEDIA_CONNECT_STATUS) info = u32(0);
      else if (m.oid === Oid.GEN_LINK_SPEED) info = u32(100_000_000);
      else if (m.oid === Oid.GEN_RECEIVE_SCALE_CAPABILITIES) { info = new Uint8Array(18); encodeRssCapabilities(info, 0, { capabilities: 0x301, numInterruptMessages: 1, numReceiveQueues: this.rssQueues, numIndirectionEntries: 128 }); }
      n = info ? encodeRndisQueryComplete(out, 0, m.requestId, 0, info) : encodeRndisQueryComplete(out, 0, m.requestId, NdisStatus.NotSupported);
    } else if (m.kind === 'set') {
      this.rndisLog.push(`set ${oidName(m.oid)}`);
      if (m.oid === Oid.TCP_OFFLOAD_PARAMETERS) {
        const p = decodeNdisOffloadParameters(bytes, m.infoOffset, m.infoLength);
        if (p instanceof NdisObjectError) throw new Error(`bad offload parameters: ${p.reason}`);
        this.offloadSets.push(p);
      }
      n = encodeRndisSetComplete(out, 0, m.requestId, 0);
    } else return;
    this.deliver(out.subarray(0, n), 1);
  }

  /** One RNDIS message into the next receive section, as a transfer-page packet. */
  deliver(message: Uint8Array, channelType: number, queue = 0): number {
    const slot = this.rxSlot++ % 64;
    const base = this.rxPfns[0]! * PAGE_SIZE;
    this.memory.bytes.set(message, base + slot * this.subAlloc);
    const header = new Uint8Array(16);
    encodeTransferPageHeader(0xcafe, false, [{ byteCount: message.length, byteOffset: slot * this.subAlloc }], header, 0);
    const payload = new Uint8Array(28);
    encodeRndisPacketMessage(payload, 0, channelType, 0xffffffff, 0, 28);
    const txid = this.nextTp++;
    deliver(this.nic, queue, PacketType.DataUsingTransferPages, txid, 0, header, payload);
    return txid;
  }

  /**
   * Several RNDIS messages in ONE transfer-page packet (as NetVSP sends an RSC segment),
   * each in a sub-allocation of its own past the control slots; a range given as
   * {byteCount, byteOffset} is named as it is (a hostile one).
   */
  deliverPacket(messages: (Uint8Array | { byteCount: number; byteOffset: number })[], queue = 0): number {
    const base = this.rxPfns[0]! * PAGE_SIZE;
    const ranges = messages.map((m, i) => {
      if (!(m instanceof Uint8Array)) return m;
      const slot = 64 + i;
      assert.ok(m.length <= this.subAlloc && (slot + 1) * this.subAlloc <= this.rxPfns.length * PAGE_SIZE);
      this.memory.bytes.set(m, base + slot * this.subAlloc);
      return { byteCount: m.length, byteOffset: slot * this.subAlloc };
    });
    const header = new Uint8Array(transferPageHeaderSize(ranges.length));
    encodeTransferPageHeader(0xcafe, false, ranges, header, 0);
    const payload = new Uint8Array(28);
    encodeRndisPacketMessage(payload, 0, 0, 0xffffffff, 0, 28);
    const txid = this.nextTp++;
    deliver(this.nic, queue, PacketType.DataUsingTransferPages, txid, 0, header, payload);
    return txid;
  }

  /** A data frame with an RX checksum PPI. */
  deliverFrame(frame: Uint8Array, rxChecksum: number | null, queue = 0): number {
    const msg = new Uint8Array(44 + 16 + frame.length);
    const ppi = rxChecksum === null ? 0 : writeU32Ppi(msg, 44, PpiType.TcpIpChecksum, rxChecksum);
    encodeRndisPacketHeader(msg, 0, ppi, frame.length);
    msg.set(frame, 44 + ppi);
    return this.deliver(msg.subarray(0, 44 + ppi + frame.length), 0, queue);
  }
}

function u32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v, true);
  return b;
}

async function until(check: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Ethernet + IPv4 + TCP frame with `payload` bytes of data. */
function tcpFrame(payload: number): Uint8Array {
  const f = new Uint8Array(14 + 20 + 20 + payload);
  const v = new DataView(f.buffer);
  f.set([2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]);
  v.setUint16(12, 0x0800);
  f[14] = 0x45; v.setUint16(16, 20 + 20 + payload); f[22] = 64; f[23] = 6;
  f.set([10, 0, 0, 1, 10, 0, 0, 2], 26);
  fillIpv4HeaderChecksum(f, 14, 20);
  v.setUint16(34, 1234); v.setUint16(36, 80); f[46] = 0x50;
  for (let i = 0; i < payload; i++) f[54 + i] = i & 0xff;
  return f;
}

describe('netvsc bring-up against a scripted host', () => {
  test('NVSP and RNDIS go in Linux order; sub-channels then RSS', async () => {
    const host = new FakeHost();
    const nic = host.createNic();
    await nic.start();
    assert.deepEqual(host.nvspLog, ['init 0x60001', 'init 0x60000', 'init 0x50000', 'ndis-config', 'ndis-version', 'receive-buffer', 'send-buffer']);
    // NDIS config: MTU + 14, ieee8021q | sriov | teaming at v5; NDIS 6.30.
    const cfg = host.sent.find((s) => new DataView(s.payload.buffer).getUint32(0, true) === 125)!;
    const cv = new DataView(cfg.payload.buffer);
    assert.equal(cv.getUint32(4, true), 1514);
    assert.equal(cv.getUint32(12, true), 0x08 | 0x04 | 0x20);
    const ver = host.sent.find((s) => new DataView(s.payload.buffer).getUint32(0, true) === 100)!;
    assert.deepEqual([new DataView(ver.payload.buffer).getUint32(4, true), new DataView(ver.payload.buffer).getUint32(8, true)], [6, 30]);
    assert.deepEqual(host.rndisLog, [
      'initialize',
      'query OID_GEN_MAXIMUM_FRAME_SIZE',
      'query OID_802_3_PERMANENT_ADDRESS',
      'query OID_GEN_FRIENDLY_NAME',
      'query OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES',
      'set OID_TCP_OFFLOAD_PARAMETERS',
      'query OID_GEN_MEDIA_CONNECT_STATUS',
      'query OID_GEN_LINK_SPEED',
      'query OID_GEN_RECEIVE_SCALE_CAPABILITIES',
      'set OID_GEN_CURRENT_PACKET_FILTER',
      // The host offers RSC: Linux's bring-up says RSC off, then LRO on asks for it.
      'set OID_TCP_OFFLOAD_PARAMETERS',
    ]);
    assert.deepEqual(host.offloadSets.map((p) => [p.rscIpv4, p.rscIpv6, p.tcpIpv4Checksum, p.lsoV2Ipv4]), [[1, 1, 4, 2], [2, 2, 0, 0]]);
    assert.ok(nic.info!.offloads.lro);
    assert.deepEqual([...nic.info!.mac], [...MAC]);
    assert.equal(nic.mtu, 1500);
    assert.equal(nic.linkUp, true);
    assert.ok(nic.info!.offloads.tso4 && nic.info!.offloads.tso6 && nic.info!.offloads.txChecksumUdp4);
    assert.equal(await nic.startSubchannels(), 2);
    assert.deepEqual(host.nvspLog.slice(7), ['subchannel-request']);
    assert.deepEqual(host.rndisLog.slice(11), ['set OID_GEN_RECEIVE_SCALE_PARAMETERS', 'set OID_GEN_RECEIVE_SCALE_PARAMETERS']);
    // Every control transfer-page packet was completed with status 1.
    assert.equal(host.completions.length, 13);
    assert.ok(host.completions.every((c) => c.status === 1));
    await nic.release(true);
    assert.equal(host.gpadls.size, 0);
  });

  test('an old host: version 2 gets NDIS 6.1 and the 22-byte offload parameters; v1 gets no NDIS config', async () => {
    const host = new FakeHost();
    host.acceptVersion = 0x30002;
    const nic = host.createNic();
    await nic.start();
    assert.deepEqual(host.nvspLog.slice(0, 7), ['init 0x60001', 'init 0x60000', 'init 0x50000', 'init 0x40000', 'init 0x30002', 'ndis-config', 'ndis-version']);
    assert.ok(!host.rndisLog.includes('query OID_GEN_LINK_SPEED'));
    assert.equal(await nic.startSubchannels(), 1);
    await nic.release(true);
    const v1 = new FakeHost();
    v1.acceptVersion = 0x2;
    const nic1 = v1.createNic();
    await nic1.start();
    assert.deepEqual(v1.nvspLog.slice(5, 8), ['init 0x2', 'ndis-version', 'receive-buffer']);
    await nic1.release(true);
  });

  test('a host that accepts no version fails the probe', async () => {
    const host = new FakeHost();
    host.acceptVersion = 0x12345;
    await assert.rejects(host.createNic().start(), /accepted no NVSP version/);
  });
});

describe('netvsc data path', () => {
  test('receive: frames with the RX checksum verdict; every packet completed; bad ranges fail', async () => {
    const host = new FakeHost();
    const nic = host.createNic();
    await nic.start();
    const got: { len: number; valid: boolean; first: number }[] = [];
    nic.onFrame = (_q, f, o, l, off) => got.push({ len: l, valid: off.checksumValid, first: f[o + 12]! });
    const before = host.completions.length;
    const t1 = host.deliverFrame(tcpFrame(100), RxChecksum.TcpSucceeded | RxChecksum.IpSucceeded);
    host.deliverFrame(tcpFrame(10), null);
    await until(() => host.completions.length === before + 2);
    assert.deepEqual(got, [{ len: 154, valid: true, first: 8 }, { len: 64, valid: false, first: 8 }]);
    assert.deepEqual(host.completions[before], { txid: t1, status: 1 });
    // A range outside the receive buffer: completed with status FAIL, nothing delivered.
    const header = new Uint8Array(16);
    encodeTransferPageHeader(0xcafe, false, [{ byteCount: 100, byteOffset: 0xfffff000 }], header, 0);
    const payload = new Uint8Array(28);
    encodeRndisPacketMessage(payload, 0, 0, 0xffffffff, 0, 28);
    deliver(nic, 0, PacketType.DataUsingTransferPages, 77, 0, header, payload);
    await until(() => host.completions.length === before + 3);
    assert.deepEqual(host.completions.at(-1), { txid: 77, status: 2 });
    assert.equal(got.length, 2);
    // Link indications.
    const links: boolean[] = [];
    nic.on('link', (up) => links.push(up));
    const ind = new Uint8Array(20);
    encodeRndisIndicateStatus(ind, 0, NdisStatus.MediaDisconnect);
    host.deliver(ind, 1);
    assert.deepEqual(links, [false]);
    await nic.release(true);
  });

  test('send: small frames through a section, large ones GPA-direct with an LSO PPI', async () => {
    const host = new FakeHost();
    const nic = host.createNic();
    await nic.start();
    const small = tcpFrame(200);
    assert.ok(nic.send(0, small, 0, small.length, new PacketOffload().setChecksum(34, 16)));
    await until(() => host.frames.length === 1);
    assert.deepEqual(host.frames[0], small);
    assert.equal(host.sent.at(-1)!.type, PacketType.DataInband);
    const big = tcpFrame(20000);
    const o = new PacketOffload().setChecksum(34, 16).setGso('tcpv4', 1448, 54);
    assert.ok(nic.send(0, big, 0, big.length, o));
    await until(() => host.frames.length === 2);
    const sentBig = host.sent.filter((s) => s.type === PacketType.DataUsingGpaDirect).at(-1)!;
    assert.ok(sentBig);
    assert.equal(host.frames[1]!.length, big.length);
    const lso = new DataView(host.lastPpi.buffer).getUint32(12, true);
    assert.equal(new DataView(host.lastPpi.buffer).getUint32(4, true), PpiType.TcpLargeSend);
    assert.deepEqual([lsoMss(lso), lsoTcpHeaderOffset(lso), lsoIpVersion(lso)], [1448, 34, 0]);
    // 11 RNDIS control requests (bring-up, packet filter, LRO) and the 2 frames, all completed.
    assert.equal(nic.datapath!.stats.txCompletions, 13);
    await nic.release(true);
  });
});

// ---- RSC fragments toward the reference guest ----

const F = PacketInfoIdFlag;
/** Largest coalesced frame the guest takes: a 65535-byte IP packet behind Ethernet and a VLAN tag. */
const MAX_SEGMENT = 65553;

/** One RNDIS PACKET as NetVSP sends a fragment: PKTINFO_ID, then (optionally) a checksum PPI, then the data. */
function fragment(data: Uint8Array, flags: number, id = 7, checksum: number | null = null): Uint8Array {
  const ppi = 16 + (checksum === null ? 0 : 16);
  const msg = new Uint8Array(44 + ppi + data.length);
  encodeRndisPacketHeader(msg, 0, ppi, data.length);
  writePacketIdPpi(msg, 44, flags, id);
  if (checksum !== null) writeU32Ppi(msg, 60, PpiType.TcpIpChecksum, checksum);
  msg.set(data, 44 + ppi);
  return msg;
}

/** A plain RNDIS PACKET (no PPIs): a frame that is no fragment. */
function plain(data: Uint8Array): Uint8Array {
  const msg = new Uint8Array(44 + data.length);
  encodeRndisPacketHeader(msg, 0, 0, data.length);
  msg.set(data, 44);
  return msg;
}

/** `frame` cut at `sizes` (cycled) into fragments flagged as NetVSP does; the first carries `checksum`. */
function cutFrame(frame: Uint8Array, sizes: number[], checksum: number | null, id = 7, laterChecksum: number | null = null): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let done = 0, i = 0; done < frame.length; i++) {
    const n = Math.min(sizes[i % sizes.length]!, frame.length - done);
    const first = done === 0;
    const last = done + n === frame.length;
    const flags = F.SubAllocation | (first ? F.FirstFragment : 0) | (last ? F.LastFragment : 0);
    out.push(fragment(frame.subarray(done, done + n), flags, id, first ? checksum : laterChecksum));
    done += n;
  }
  return out;
}

/** Deterministic frame bytes (an Ethernet/IPv4 header would not matter: the datapath joins bytes). */
function patternFrame(length: number, seed: number): Uint8Array {
  const f = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    f[i] = x >>> 24;
  }
  return f;
}

interface GotFrame { bytes: Uint8Array; valid: boolean }

/** A started NIC whose received frames are copied out (the datapath reuses its buffers). */
async function rscNic(): Promise<{ host: FakeHost; nic: NetvscNic; got: GotFrame[] }> {
  const host = new FakeHost();
  const nic = host.createNic();
  await nic.start();
  const got: GotFrame[] = [];
  nic.onFrame = (_q, f, o, l, off) => got.push({ bytes: f.slice(o, o + l), valid: off.checksumValid });
  return { host, nic, got };
}

/** Delivers one transfer-page packet and waits for its completion status. */
async function packetStatus(host: FakeHost, ranges: (Uint8Array | { byteCount: number; byteOffset: number })[]): Promise<number> {
  const before = host.completions.length;
  const txid = host.deliverPacket(ranges);
  await until(() => host.completions.length === before + 1);
  const c = host.completions.at(-1)!;
  assert.equal(c.txid, txid);
  return c.status;
}

const GOOD = RxChecksum.TcpSucceeded | RxChecksum.IpSucceeded;

describe('netvsc RSC receive (fragments joined as rndis_filter_receive_data does)', () => {
  // The guest half of the feature: whatever way the host cuts a segment into
  // sub-allocations (any sizes that fit one), the stack must get the exact frame once,
  // with the first fragment's checksum verdict (Linux applies only the first fragment's
  // PPIs), and the host must be told Success so it frees the chain. A plain frame in the
  // same packet before the segment must pass through untouched.
  test('fast-check: any frame of 60..65553 bytes cut at random sizes arrives once, identical, with the first fragment\'s verdict', async () => {
    const { host, nic, got } = await rscNic();
    const stats = nic.datapath!.stats;
    const maxData = 1728 - 44 - 32; // a fragment with id and checksum PPIs in one sub-allocation
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 60, max: MAX_SEGMENT }),
        fc.integer(),
        fc.array(fc.integer({ min: 1, max: maxData }), { minLength: 1, maxLength: 12 }),
        fc.constantFrom<number | null>(GOOD, RxChecksum.UdpSucceeded | RxChecksum.IpSucceeded, RxChecksum.TcpFailed | RxChecksum.IpSucceeded, RxChecksum.IpSucceeded, null),
        fc.boolean(),
        fc.boolean(),
        async (length, seed, sizes, checksum, laterLie, prefix) => {
          const frame = patternFrame(length, seed);
          // Later fragments sometimes carry the opposite verdict: it must be ignored.
          const lie = laterLie ? (checksum !== null && (checksum & (RxChecksum.TcpSucceeded | RxChecksum.UdpSucceeded)) ? RxChecksum.TcpFailed : GOOD) : null;
          const fragments = cutFrame(frame, sizes, checksum, seed & 0xffff, lie);
          fc.pre(fragments.length <= NVSP_RSC_MAX);
          const small = patternFrame(64, seed + 1);
          got.length = 0;
          const coalesced = stats.rxCoalesced;
          const dropped = stats.rxCoalesceDropped;
          const status = await packetStatus(host, prefix ? [plain(small), ...fragments] : fragments);
          assert.equal(status, NvspStatus.Success);
          const want = prefix ? [small, frame] : [frame];
          assert.equal(got.length, want.length, 'the segment reaches the stack exactly once');
          want.forEach((w, i) => assert.ok(Buffer.from(got[i]!.bytes).equals(Buffer.from(w)), `frame ${i} identical`));
          const seg = got.at(-1)!;
          assert.equal(seg.valid, checksum !== null && (checksum & (RxChecksum.TcpSucceeded | RxChecksum.UdpSucceeded)) !== 0, 'the first fragment\'s verdict');
          assert.equal(stats.rxCoalesced, coalesced + 1);
          assert.equal(stats.rxCoalesceDropped, dropped);
        },
      ),
      { numRuns: 120 },
    );
    await nic.release(true);
  });

  // Linux's netvsc_receive (5.15 and later) copies each range into a buffer of the
  // announced sub-allocation size and drops a longer one ("Packet too big"), as it drops a
  // range that leaves the buffer: the packet completes with status Fail, nothing arrives.
  test('a range longer than the sub-allocation size, or past the buffer, fails and delivers nothing', async () => {
    const { host, nic, got } = await rscNic();
    const stats = nic.datapath!.stats;
    const base = host.rxPfns[0]! * PAGE_SIZE;
    const bufferBytes = host.rxPfns.length * PAGE_SIZE;
    const frame = patternFrame(30000, 3);
    const message = plain(frame);
    const at = 64 * 1728;
    host.memory.bytes.set(message, base + at);
    assert.equal(await packetStatus(host, [{ byteCount: message.length, byteOffset: at }]), NvspStatus.Fail);
    assert.equal(got.length, 0);
    assert.equal(stats.rxBadRanges, 1);
    assert.equal(await packetStatus(host, [{ byteCount: 1000, byteOffset: bufferBytes - 999 }]), NvspStatus.Fail);
    assert.equal(stats.rxBadRanges, 2);
    // One that fits a sub-allocation still passes.
    const small = plain(patternFrame(1500, 4));
    host.memory.bytes.set(small, base + at);
    assert.equal(await packetStatus(host, [{ byteCount: small.length, byteOffset: at }]), NvspStatus.Success);
    assert.equal(got.length, 1);
    await nic.release(true);
  });

  // A host (or a corrupted ring) can send fragments out of order. Linux drops a later
  // fragment that has no segment to join and a segment the packet ends in the middle
  // of, and never lets one run on into the next packet; doing otherwise hands the stack
  // a frame stitched from unrelated data. Each drop must make the completion status
  // Fail (the host counts it) and must not throw out of the ring handler.
  test('a later fragment without a first, or a segment the packet ends inside, is dropped with status Fail', async () => {
    const { host, nic, got } = await rscNic();
    const stats = nic.datapath!.stats;
    const a = patternFrame(3000, 1);
    const [first, middle] = cutFrame(a, [1000], GOOD);
    const last = cutFrame(a, [1000], GOOD).at(-1)!;

    // A last fragment with no first before it.
    let dropped = stats.rxCoalesceDropped;
    assert.equal(await packetStatus(host, [last]), NvspStatus.Fail);
    assert.equal(stats.rxCoalesceDropped, dropped + 1);
    // A middle fragment (neither flag) with no first.
    assert.equal(await packetStatus(host, [middle!]), NvspStatus.Fail);

    // First and middle, then the packet ends: the segment is dropped.
    dropped = stats.rxCoalesceDropped;
    assert.equal(await packetStatus(host, [first!, middle!]), NvspStatus.Fail);
    assert.ok(stats.rxCoalesceDropped > dropped, 'counted as dropped');
    // Its last fragment in the next packet has nothing to join.
    assert.equal(await packetStatus(host, [last]), NvspStatus.Fail);
    // A first fragment alone at the end of a packet.
    assert.equal(await packetStatus(host, [first!]), NvspStatus.Fail);
    assert.equal(got.length, 0, 'no frame from any of them');
    assert.equal(stats.rxCoalesced, 0);

    // A second first fragment restarts the segment (the earlier start is abandoned), as Linux does.
    const b = patternFrame(2500, 2);
    assert.equal(await packetStatus(host, [first!, ...cutFrame(b, [1200], GOOD)]), NvspStatus.Success);
    assert.equal(got.length, 1);
    assert.ok(Buffer.from(got[0]!.bytes).equals(Buffer.from(b)));
    await nic.release(true);
  });

  // rxCoalesceDropped is documented as "segments dropped unfinished or malformed": one
  // dropped segment must count once, or the statistic overstates losses.
  // (At 66e6765 onFragment counted the drop, returned false with the segment still
  // started, and dropCoalesced() counted it again: 2.)
  test('rxCoalesceDropped counts a segment the packet ends inside once', async () => {
    const { host, nic } = await rscNic();
    const stats = nic.datapath!.stats;
    const [first, middle] = cutFrame(patternFrame(3000, 1), [1000], GOOD);
    const dropped = stats.rxCoalesceDropped;
    assert.equal(await packetStatus(host, [first!, middle!]), NvspStatus.Fail);
    assert.equal(stats.rxCoalesceDropped, dropped + 1);
    await nic.release(true);
  });

  // A plain (non-fragment) frame ends whatever segment was being joined: otherwise the
  // segment's remaining fragments would be glued to data from before the plain frame.
  // The plain frame itself is delivered; the orphaned last fragment is dropped (Fail).
  test('a plain frame after a started segment resets it: the plain frame passes, the orphaned rest is dropped', async () => {
    const { host, nic, got } = await rscNic();
    const a = patternFrame(3000, 3);
    const [first, middle, last] = cutFrame(a, [1000], GOOD);
    const p = patternFrame(100, 4);
    assert.equal(await packetStatus(host, [first!, middle!, plain(p), last!]), NvspStatus.Fail);
    assert.equal(got.length, 1);
    assert.ok(Buffer.from(got[0]!.bytes).equals(Buffer.from(p)));
    // A PKTINFO_ID without the sub-allocation bit is no fragment either.
    got.length = 0;
    const q = patternFrame(90, 5);
    assert.equal(await packetStatus(host, [first!, fragment(q, F.FirstFragment), last!]), NvspStatus.Fail);
    assert.equal(got.length, 1);
    assert.ok(Buffer.from(got[0]!.bytes).equals(Buffer.from(q)));
    // The NIC still joins the next good segment.
    got.length = 0;
    assert.equal(await packetStatus(host, cutFrame(a, [1000], GOOD)), NvspStatus.Success);
    assert.equal(got.length, 1);
    assert.ok(Buffer.from(got[0]!.bytes).equals(Buffer.from(a)));
    await nic.release(true);
  });

  // The join buffer holds one 64 KiB IP packet with Ethernet and a VLAN tag, and Linux
  // stops at NVSP_RSC_MAX fragments: a host that sends more must not overrun either
  // bound. Exactly at each bound is still a good segment.
  test('limits: 65553 bytes and 562 fragments join; one byte or one fragment more is dropped with status Fail', async () => {
    const { host, nic, got } = await rscNic();
    assert.equal(NVSP_RSC_MAX, 562);
    const big = patternFrame(MAX_SEGMENT, 6);
    // 1652 bytes: what fits one sub-allocation after the header and two PPIs.
    assert.equal(await packetStatus(host, cutFrame(big, [1652], GOOD)), NvspStatus.Success);
    assert.equal(got.length, 1);
    assert.ok(Buffer.from(got[0]!.bytes).equals(Buffer.from(big)));
    got.length = 0;
    const tooBig = patternFrame(MAX_SEGMENT + 1, 7);
    assert.equal(await packetStatus(host, cutFrame(tooBig, [1652], GOOD)), NvspStatus.Fail);
    // Far too big: fragments keep coming after the overflow; none may be joined.
    assert.equal(await packetStatus(host, cutFrame(patternFrame(66720, 8), [1652], GOOD)), NvspStatus.Fail);
    assert.equal(got.length, 0);

    const many = patternFrame(NVSP_RSC_MAX * 100, 9);
    const manyFragments = cutFrame(many, [100], GOOD);
    assert.equal(manyFragments.length, NVSP_RSC_MAX);
    assert.equal(await packetStatus(host, manyFragments), NvspStatus.Success);
    assert.equal(got.length, 1);
    assert.ok(Buffer.from(got[0]!.bytes).equals(Buffer.from(many)));
    got.length = 0;
    const tooMany = cutFrame(patternFrame((NVSP_RSC_MAX + 1) * 100, 10), [100], GOOD);
    assert.equal(tooMany.length, NVSP_RSC_MAX + 1);
    assert.equal(await packetStatus(host, tooMany), NvspStatus.Fail);
    assert.equal(got.length, 0);
    await nic.release(true);
  });

  // A bad range (outside the receive buffer) or an undecodable message in the middle of
  // a segment breaks it: the fragments after it must not be joined to those before.
  test('a bad range or a malformed message inside a segment drops it', async () => {
    const { host, nic, got } = await rscNic();
    const [first, middle, last] = cutFrame(patternFrame(3000, 11), [1000], GOOD);
    assert.equal(await packetStatus(host, [first!, { byteCount: 100, byteOffset: 0xfffff000 }, middle!, last!]), NvspStatus.Fail);
    const garbage = Uint8Array.from({ length: 60 }, (_, i) => (i * 37) & 0xff);
    assert.equal(await packetStatus(host, [first!, garbage, middle!, last!]), NvspStatus.Fail);
    // A fragment whose PKTINFO_ID record is cut short.
    const short = fragment(patternFrame(10, 12), F.SubAllocation | F.LastFragment);
    new DataView(short.buffer).setUint32(44, 13, true); // record size: header + 1 byte
    assert.equal(await packetStatus(host, [first!, middle!, short]), NvspStatus.Fail);
    assert.equal(got.length, 0);
    await nic.release(true);
  });

  // The same rules under random abuse: random PKTINFO_ID flags, ids, sizes (empty ones
  // too) and plain frames mixed in. What reaches the stack and the completion status
  // must be what Linux's algorithm gives (a model of it below), and nothing may throw.
  test('fast-check: random fragment sequences give Linux\'s frames and status, never a throw', async () => {
    const { host, nic, got } = await rscNic();
    type Range = { plain: boolean; flags: number; data: Uint8Array };
    const range: fc.Arbitrary<Range> = fc.record({
      plain: fc.boolean(),
      flags: fc.integer({ min: 0, max: 7 }),
      data: fc.uint8Array({ minLength: 0, maxLength: 200 }),
    });
    /** rndis_filter_receive_data over one packet: the frames it hands up, and whether anything was dropped. */
    const model = (ranges: Range[]): { frames: Uint8Array[]; fail: boolean } => {
      const frames: Uint8Array[] = [];
      let fail = false;
      let parts: Uint8Array[] = [];
      let count = 0;
      ranges.forEach((r, i) => {
        if (r.plain || (r.flags & F.SubAllocation) === 0) {
          count = 0;
          frames.push(r.data);
          return;
        }
        if (r.flags & F.FirstFragment) {
          count = 0;
          parts = [];
        } else if (count === 0) {
          fail = true;
          return;
        }
        const more = (r.flags & F.LastFragment) === 0;
        if (more && i === ranges.length - 1) {
          fail = true;
          count = 0;
          return;
        }
        parts.push(r.data);
        count++;
        if (!more) {
          frames.push(Buffer.concat(parts));
          count = 0;
        }
      });
      return { frames, fail };
    };
    await fc.assert(
      fc.asyncProperty(fc.array(range, { minLength: 1, maxLength: 10 }), async (ranges) => {
        got.length = 0;
        const status = await packetStatus(host, ranges.map((r) => (r.plain ? plain(r.data) : fragment(r.data, r.flags, 3, GOOD))));
        const want = model(ranges);
        assert.equal(status, want.fail ? NvspStatus.Fail : NvspStatus.Success);
        assert.deepEqual(got.map((g) => Buffer.from(g.bytes).toString('hex')), want.frames.map((f) => Buffer.from(f).toString('hex')));
      }),
      { numRuns: 300 },
    );
    await nic.release(true);
  });
});

describe('netvsc send backpressure', () => {
  // A TAP cannot un-read a frame: when the data path has no room, the frame must come
  // back untouched (its LSO headers not yet rewritten) so the reader can hold it and
  // send it when a completion frees room. Losing it instead cost TCP G->H 195,000
  // retransmitted segments in 6 s of bench:network.
  test('a frame refused for want of bounce buffers is unchanged, and goes out after onSendRoom', async () => {
    const host = new FakeHost();
    const nic = host.createNic();
    await nic.start();
    host.holdDataCompletions = true;
    const o = () => new PacketOffload().setChecksum(34, 16).setGso('tcpv4', 1448, 54);
    let accepted = 0;
    for (; accepted < 100; accepted++) {
      const f = tcpFrame(20000);
      if (!nic.send(0, f, 0, f.length, o())) break;
    }
    assert.equal(accepted, 32, 'every bounce buffer of the queue was used before a refusal');
    const refused = tcpFrame(20000);
    const before = refused.slice();
    const rooms: number[] = [];
    nic.onSendRoom = (q) => rooms.push(q);
    assert.equal(nic.send(0, refused, 0, refused.length, o()), false);
    assert.deepEqual(refused, before, 'a refused frame is not rewritten');
    nic.datapath!.flush();
    await until(() => host.heldCompletions.length === 32);
    assert.deepEqual(rooms, []);
    host.releaseCompletions(1);
    assert.deepEqual(rooms, [0]);
    assert.ok(nic.send(0, refused, 0, refused.length, o()));
    nic.datapath!.flush();
    await until(() => host.frames.length === 33);
    assert.equal(host.frames[32]!.length, before.length);
    assert.deepEqual(host.frames[32]!.subarray(54), before.subarray(54), 'the held frame arrived whole');
    host.holdDataCompletions = false;
    host.releaseCompletions();
    await nic.release(true);
  });
});

describe('netvsc sends from a reserved bounce buffer', () => {
  // The TAP surfacing reads each frame straight into a bounce buffer in guest RAM (as
  // Linux sends an skb's own pages): a large one goes GPA-direct from there with its RNDIS
  // header and PPIs written just before it, a small one is copied into a send section
  // and its bounce buffer returned at once.
  test('large frames go GPA-direct in place, small ones through a section; the buffers come back', async () => {
    const host = new FakeHost();
    const nic = host.createNic();
    await nic.start();
    const dp = nic.datapath!;
    const write = (bounce: number, frame: Uint8Array) => host.memory.bytes.set(frame, dp.bounceFrameAddress(0, bounce) - Number(host.memory.base));
    const big = tcpFrame(30000);
    const b1 = dp.reserve(0);
    assert.ok(b1 >= 0);
    write(b1, big);
    dp.sendReserved(0, b1, big.length, new PacketOffload().setChecksum(34, 16).setGso('tcpv4', 1448, 54));
    const small = tcpFrame(100);
    const b2 = dp.reserve(0);
    write(b2, small);
    dp.sendReserved(0, b2, small.length, new PacketOffload().setChecksum(34, 16));
    dp.flush();
    await until(() => host.frames.length === 2);
    assert.equal(host.frames[0]!.length, big.length);
    assert.deepEqual(host.frames[0]!.subarray(54), big.subarray(54));
    assert.deepEqual(host.frames[1], small);
    const kinds = host.sent.slice(-2).map((s) => s.type);
    assert.deepEqual(kinds, [PacketType.DataUsingGpaDirect, PacketType.DataInband]);
    assert.equal(dp.stats.txBounce, 1);
    assert.equal(dp.stats.txSection, 1);
    // Every bounce buffer is free again once the host completed: 32 can be reserved.
    await until(() => dp.stats.txCompletions >= 2 + 11);
    const taken: number[] = [];
    for (let b; (b = dp.reserve(0)) >= 0; ) taken.push(b);
    assert.equal(taken.length, 32);
    for (const b of taken) dp.returnReserved(0, b);
    await nic.release(true);
  });
});

describe('TX PPI encoders', () => {
  test('NEEDS_CSUM on TCP/IPv4 -> checksum PPI with the TCP header offset', () => {
    const f = tcpFrame(50);
    const out = new Uint8Array(64);
    const n = encodeTxPpis(f, 0, f.length, new PacketOffload().setChecksum(34, 16), out, 0);
    assert.equal(n, 16);
    const v = new DataView(out.buffer).getUint32(12, true);
    assert.equal(v & 0xf, 0x1 | 0x4);
    assert.equal(txChecksumHeaderOffset(v), 34);
  });
  test('GSO TCPv4 -> LSOv2 PPI; IP length and checksum zeroed, TCP checksum = pseudo header without length', () => {
    const f = tcpFrame(3000);
    const out = new Uint8Array(64);
    assert.equal(encodeTxPpis(f, 0, f.length, new PacketOffload().setChecksum(34, 16).setGso('tcpv4', 1000, 54), out, 0), 16);
    assert.deepEqual([f[16], f[17], f[24], f[25]], [0, 0, 0, 0]);
    const pseudo = (~finishChecksum(onesSum(f, 26, 8, 6))) & 0xffff;
    assert.equal((f[50]! << 8) | f[51]!, pseudo);
  });
  test('no offload -> no PPI; nonsense offloads never throw', () => {
    const f = tcpFrame(10);
    assert.equal(encodeTxPpis(f, 0, f.length, new PacketOffload(), new Uint8Array(64), 0), 0);
    fc.assert(fc.property(fc.uint8Array({ minLength: 0, maxLength: 200 }), fc.nat(300), fc.nat(300), fc.boolean(), (bytes, start, off, gso) => {
      const o = new PacketOffload().setChecksum(start, off);
      if (gso) o.setGso('tcpv4', 100, 0);
      const r = encodeTxPpis(bytes, 0, bytes.length, o, new Uint8Array(64), 0);
      return r === -1 || r === 0 || r === 16;
    }));
  });
  test('hostile transfer-page packets never throw and are always completed', async () => {
    const host = new FakeHost();
    const nic = host.createNic();
    await nic.start();
    nic.onFrame = () => {};
    const before = host.completions.length;
    let sent = 0;
    fc.assert(fc.property(fc.uint8Array({ maxLength: 64 }), fc.uint8Array({ maxLength: 64 }), (header, payload) => {
      deliver(nic, 0, PacketType.DataUsingTransferPages, 5, 0, header, payload);
      sent++;
    }), { numRuns: 200 });
    await until(() => host.completions.length === before + sent);
    await nic.release(true);
  });
});

describe('NicTap', () => {
  const unavailable = netnsUnavailableReason();
  test('a ping from the namespace is answered by a responder on the host side of the NIC', async (t) => {
    if (unavailable) {
      console.error(`NOT TESTED: NicTap needs namespaces: ${unavailable}`);
      t.skip(unavailable);
      return;
    }
    const host = new FakeHost();
    const nic = host.createNic();
    await nic.start();
    const ns = uniqueName('enlnv');
    const errors: unknown[] = [];
    const poller = new Poller((e) => errors.push(e));
    let tap: NicTap | null = null;
    try {
      createNetns(ns);
      tap = new NicTap({ nic, poller, netns: ns });
      addAddress(tap.name, '10.79.3.1/24', ns);
      const peerMac = [0x02, 0, 0, 0x79, 0, 2];
      // The responder: answers ARP for 10.79.3.2 and ICMP echo to it.
      host.onFrame = (f) => {
        const type = (f[12]! << 8) | f[13]!;
        if (type === 0x0806 && f[21] === 1 && f[38] === 10 && f[41] === 2) {
          const r = f.slice(0, 42);
          r.set(f.subarray(6, 12), 0); r.set(peerMac, 6);
          r[21] = 2;
          r.set(peerMac, 22); r.set(f.subarray(38, 42), 28); r.set(f.subarray(22, 32), 32);
          host.deliverFrame(r, null);
        } else if (type === 0x0800 && f[23] === 1 && f[34] === 8) {
          const r = f.slice();
          r.set(f.subarray(6, 12), 0); r.set(peerMac, 6);
          r.set(f.subarray(30, 34), 26); r.set(f.subarray(26, 30), 30);
          r[24] = 0; r[25] = 0; fillIpv4HeaderChecksum(r, 14, 20);
          r[34] = 0; r[36] = 0; r[37] = 0;
          const c = finishChecksum(onesSum(r, 34, r.length - 34));
          r[36] = c >> 8; r[37] = c & 0xff;
          host.deliverFrame(r, RxChecksum.IpSucceeded);
        }
      };
      const r = await runInNetns(ns, ['ping', '-c', '2', '-i', '0.2', '-W', '2', '10.79.3.2'], 15_000);
      assert.equal(r.code, 0, `ping failed: ${r.stdout}${r.stderr}`);
      const neigh = (await runInNetns(ns, ['ip', 'neigh', 'show', '10.79.3.2'])).stdout;
      assert.match(neigh, /02:00:00:79:00:02/);
      assert.ok(tap.stats.toTap >= 3 && tap.stats.fromTap >= 3);
      assert.deepEqual(errors, []);
    } finally {
      tap?.close();
      await poller.stop();
      deleteNetns(ns);
      await nic.release(true);
    }
  });
});
