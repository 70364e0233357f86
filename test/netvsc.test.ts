// The reference guest's netvsc against a scripted host (a fake NetVSP that answers NVSP and
// RNDIS the way Hyper-V does, through the receive buffer in guest RAM), the TX PPI encoders,
// and NicTap with a real TAP in a namespace this test creates.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import fc from 'fast-check';
import { GuestMemory } from '../src/memory/guest-memory.js';
import { PAGE_SIZE } from '../src/memory/page.js';
import { PageAllocator } from '../src/guest/page-allocator.js';
import { PacketType, encodeTransferPageHeader } from '../src/vmbus/packet.js';
import { NvspDecoder, NvspStatus, encodeNvspMessage, encodeRndisPacketMessage, isNvspError, type NvspMessage } from '../src/devices/netvsp/nvsp-protocol.js';
import { RndisDecoder, RndisError, encodeRndisInitializeComplete, encodeRndisQueryComplete, encodeRndisSetComplete, encodeRndisPacketHeader, encodeRndisIndicateStatus, NdisStatus } from '../src/devices/netvsp/rndis-protocol.js';
import { Oid, oidName } from '../src/devices/netvsp/rndis-oids.js';
import { checksumAndLsoOffload, decodeNdisOffloadParameters, encodeNdisOffload, ndisOffloadSizeFor, encodeRssCapabilities, NdisObjectError, type NdisOffloadParameters } from '../src/devices/netvsp/ndis-offload.js';
import { PpiType, RxChecksum, lsoMss, lsoTcpHeaderOffset, lsoIpVersion, txChecksumHeaderOffset, writeU32Ppi } from '../src/devices/netvsp/per-packet-info.js';
import { PacketOffload } from '../src/backends/net/net-backend.js';
import { fillIpv4HeaderChecksum, finishChecksum, onesSum } from '../src/backends/net/inet-checksum.js';
import { NetvscNic } from '../src/guest/netvsc/netvsc-driver.js';
import { encodeTxPpis } from '../src/guest/netvsc/netvsc-datapath.js';
import type { NetvscPort } from '../src/guest/netvsc/netvsc-handshake.js';
import { NicTap } from '../src/guest/netvsc/nic-tap.js';
import { Poller } from '../src/sys/epoll.js';
import { addAddress, createNetns, deleteNetns, netnsUnavailableReason, runInNetns, uniqueName } from '../src/sys/netns.js';

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
    this.nic.onPacket(0, PacketType.Completion, txid % 2 ** 32, Math.floor(txid / 2 ** 32), new Uint8Array(0), b);
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
        this.nic.onPacket(s.queue, PacketType.Completion, s.txid, 0, new Uint8Array(0), c);
        return;
      }
      default:
    }
  }
  lastPpi = new Uint8Array(0);

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
      else if (m.oid === Oid.TCP_OFFLOAD_HARDWARE_CAPABILITIES) { info = new Uint8Array(ndisOffloadSizeFor(v)); encodeNdisOffload(info, 0, checksumAndLsoOffload(), info.length); }
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
    this.nic.onPacket(queue, PacketType.DataUsingTransferPages, txid, 0, header, payload);
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
    nic.onPacket(0, PacketType.DataUsingTransferPages, 77, 0, header, payload);
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
      nic.onPacket(0, PacketType.DataUsingTransferPages, 5, 0, header, payload);
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
