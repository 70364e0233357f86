// The TAP backend end to end against the real kernel. Each test makes its own network
// namespace, creates a TAP here, moves it into the namespace (the fd keeps working: it
// belongs to the device, not to a namespace) and gives it 10.77.N.1/24. On our side of
// the TAP a tiny host written in this file plays 10.77.N.2: it answers ARP and ICMP echo,
// and speaks just enough TCP (handshake, in-order data, ACK, FIN) for the kernel in the
// namespace to send it TSO frames and to accept one from it. Every frame goes through the
// virtio-net header path in both directions.
//
// The backend is driven by a Poller on this thread's event loop, so everything that talks
// through the TAP (ping, node clients) runs asynchronously (runInNetns).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomInt } from 'node:crypto';
import { describe, test, type TestContext } from 'node:test';
import { type PacketOffload, PacketOffload as Offload } from '../src/backends/net/net-backend.js';
import { TapBackend } from '../src/backends/net/tap-backend.js';
import { Poller } from '../src/sys/epoll.js';
import { IovecList } from '../src/sys/iovec.js';
import { mapAnonymous, viewOf } from '../src/sys/memfd.js';
import { IFF_MULTI_QUEUE, IFF_NO_PI, IFF_TAP, IFF_VNET_HDR, tunFeatures } from '../src/sys/tun.js';
import { addAddress, createNetns, deleteNetns, linkInfo, moveLinkToNetns, netnsExists, netnsUnavailableReason, runInNetns, setLinkUp, uniqueName } from '../src/sys/netns.js';

const unavailable = netnsUnavailableReason();
if (unavailable) console.error(`\n*** tap-backend tests SKIPPED: ${unavailable}; the TAP backend is NOT tested here ***\n`);

const HOST_MAC = Uint8Array.from([0x02, 0x00, 0x00, 0x77, 0x00, 0x02]);
const SINK_PORT = 5001;
const SOURCE_PORT = 5002;
const ETH = 14;

function hasProgram(name: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** The byte at stream offset i of the test payloads. */
function patternByte(i: number): number {
  return (i * 31 + (i >>> 10)) & 0xff;
}

function pattern(length: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = patternByte(i);
  return b;
}

// ---- checksums (RFC 1071) ----

function sum16(bytes: Uint8Array, start: number, end: number, initial = 0): number {
  let sum = initial;
  let i = start;
  for (; i + 1 < end; i += 2) sum += (bytes[i]! << 8) | bytes[i + 1]!;
  if (i < end) sum += bytes[i]! << 8;
  return sum;
}

function fold(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
}

function pseudoHeaderSum(bytes: Uint8Array, ip: number, protocol: number, l4Length: number): number {
  return sum16(bytes, ip + 12, ip + 20) + protocol + l4Length;
}

const u16 = (b: Uint8Array, o: number): number => (b[o]! << 8) | b[o + 1]!;
const u32 = (b: Uint8Array, o: number): number => ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;
function put16(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >>> 8) & 0xff;
  b[o + 1] = v & 0xff;
}
function put32(b: Uint8Array, o: number, v: number): void {
  put16(b, o, (v >>> 16) & 0xffff);
  put16(b, o + 2, v & 0xffff);
}

interface ReceivedFrame {
  length: number;
  gso: string;
  gsoSize: number;
  headerLength: number;
  needsChecksum: boolean;
  checksumStart: number;
  checksumOffset: number;
  payload: number;
}

interface TcpConnection {
  peerMac: Uint8Array;
  peerIp: Uint8Array;
  peerPort: number;
  localPort: number;
  /** Next byte we expect from the peer. */
  receiveNext: number;
  /** Our next sequence number. */
  sendNext: number;
  established: boolean;
  finished: boolean;
}

/**
 * 10.77.N.2 on our side of the TAP. Replies are built in one native buffer (so they can go
 * out as an IovecList, the zero-copy shape NetVSP will use) and sent before the handler
 * returns, so the buffer is never shared by two frames in flight.
 */
class TinyHost {
  readonly txAddress: number;
  readonly tx: Uint8Array;
  readonly iov = new IovecList(8);
  readonly offload = new Offload();
  readonly frames: ReceivedFrame[] = [];
  readonly sinkData: Buffer;
  sinkReceived = 0;
  sinkDone: Promise<void>;
  private sinkResolve!: () => void;
  readonly connections = new Map<number, TcpConnection>();
  icmpEchoes = 0;
  arpReplies = 0;
  ipId = 1;

  constructor(
    readonly backend: TapBackend,
    readonly ip: Uint8Array,
    sinkLength: number,
    readonly sourcePayload: Buffer,
  ) {
    const bytes = 128 * 1024;
    this.txAddress = Number(mapAnonymous(bytes));
    this.tx = new Uint8Array(viewOf(BigInt(this.txAddress), bytes));
    this.sinkData = Buffer.alloc(sinkLength);
    this.sinkDone = new Promise((resolve) => (this.sinkResolve = resolve));
  }

  readonly receive = (frame: Uint8Array, length: number, offload: PacketOffload): void => {
    if (length < ETH) return;
    const type = u16(frame, 12);
    if (type === 0x0806) this.arp(frame, length);
    else if (type === 0x0800) this.ipv4(frame, length, offload);
  };

  private arp(f: Uint8Array, length: number): void {
    if (length < ETH + 28 || u16(f, ETH) !== 1 || u16(f, ETH + 2) !== 0x0800 || u16(f, ETH + 6) !== 1) return;
    if (!this.isOurIp(f, ETH + 24)) return;
    // Sent as a JS view: the copying send() path.
    const reply = new Uint8Array(ETH + 28);
    reply.set(f.subarray(6, 12), 0);
    reply.set(HOST_MAC, 6);
    put16(reply, 12, 0x0806);
    put16(reply, ETH, 1);
    put16(reply, ETH + 2, 0x0800);
    reply[ETH + 4] = 6;
    reply[ETH + 5] = 4;
    put16(reply, ETH + 6, 2);
    reply.set(HOST_MAC, ETH + 8);
    reply.set(this.ip, ETH + 14);
    reply.set(f.subarray(ETH + 8, ETH + 14), ETH + 18);
    reply.set(f.subarray(ETH + 14, ETH + 18), ETH + 24);
    assert.equal(this.backend.send(reply), true);
    this.arpReplies++;
  }

  private isOurIp(b: Uint8Array, o: number): boolean {
    return b[o] === this.ip[0] && b[o + 1] === this.ip[1] && b[o + 2] === this.ip[2] && b[o + 3] === this.ip[3];
  }

  private ipv4(f: Uint8Array, length: number, offload: PacketOffload): void {
    if (length < ETH + 20 || f[ETH]! >> 4 !== 4) return;
    const ihl = (f[ETH]! & 0xf) * 4;
    const total = u16(f, ETH + 2);
    if (ihl < 20 || ETH + total > length || total < ihl) return;
    if (!this.isOurIp(f, ETH + 16)) return;
    const protocol = f[ETH + 9];
    if (protocol === 1) this.icmp(f, ihl, total);
    else if (protocol === 6) this.tcp(f, length, ihl, total, offload);
  }

  private icmp(f: Uint8Array, ihl: number, total: number): void {
    const icmp = ETH + ihl;
    if (f[icmp] !== 8) return;
    const tx = this.tx;
    tx.set(f.subarray(0, ETH + total), 0);
    tx.set(f.subarray(6, 12), 0);
    tx.set(HOST_MAC, 6);
    tx.set(f.subarray(ETH + 16, ETH + 20), ETH + 12);
    tx.set(f.subarray(ETH + 12, ETH + 16), ETH + 16);
    tx[ETH + 8] = 64;
    this.ipChecksum(ihl);
    tx[icmp] = 0;
    put16(tx, icmp + 2, 0);
    put16(tx, icmp + 2, ~fold(sum16(tx, icmp, ETH + total)) & 0xffff);
    // Headers and payload as two segments: the gathering writev path.
    this.iov.clear();
    this.iov.push(this.txAddress, icmp + 8);
    this.iov.push(this.txAddress + icmp + 8, ETH + total - icmp - 8);
    assert.equal(this.backend.send(this.iov), true);
    this.icmpEchoes++;
  }

  private ipChecksum(ihl: number): void {
    put16(this.tx, ETH + 10, 0);
    put16(this.tx, ETH + 10, ~fold(sum16(this.tx, ETH, ETH + ihl)) & 0xffff);
  }

  private tcp(f: Uint8Array, length: number, ihl: number, total: number, offload: PacketOffload): void {
    const t = ETH + ihl;
    const sport = u16(f, t);
    const dport = u16(f, t + 2);
    if (dport !== SINK_PORT && dport !== SOURCE_PORT) return;
    const seq = u32(f, t + 4);
    const flags = f[t + 13]!;
    const dataStart = t + (f[t + 12]! >> 4) * 4;
    const payload = ETH + total - dataStart;
    this.frames.push({
      length,
      gso: offload.gso,
      gsoSize: offload.gsoSize,
      headerLength: offload.headerLength,
      needsChecksum: offload.needsChecksum,
      checksumStart: offload.checksumStart,
      checksumOffset: offload.checksumOffset,
      payload,
    });
    const SYN = 0x02;
    const FIN = 0x01;
    const RST = 0x04;
    if (flags & RST) return;
    if (flags & SYN) {
      const c: TcpConnection = {
        peerMac: f.slice(6, 12),
        peerIp: f.slice(ETH + 12, ETH + 16),
        peerPort: sport,
        localPort: dport,
        receiveNext: (seq + 1) >>> 0,
        sendNext: 1_000_000,
        established: false,
        finished: false,
      };
      this.connections.set(dport, c);
      this.sendTcp(c, 0x12, true);
      c.sendNext = (c.sendNext + 1) >>> 0;
      return;
    }
    const c = this.connections.get(dport);
    if (!c || c.peerPort !== sport) return;
    if (seq !== c.receiveNext) {
      this.sendTcp(c, 0x10); // out of order: repeat where we are
      return;
    }
    if (payload > 0 && dport === SINK_PORT) {
      const offset = this.sinkReceived; // in order: seq === receiveNext
      if (offset + payload <= this.sinkData.length) this.sinkData.set(f.subarray(dataStart, dataStart + payload), offset);
      this.sinkReceived += payload;
    }
    c.receiveNext = (c.receiveNext + payload) >>> 0;
    if (flags & FIN) {
      c.receiveNext = (c.receiveNext + 1) >>> 0;
      if (!c.finished) {
        // Our FIN goes with the ACK of theirs.
        this.sendTcp(c, 0x11);
        c.sendNext = (c.sendNext + 1) >>> 0;
        c.finished = true;
        if (dport === SINK_PORT) this.sinkResolve();
      } else this.sendTcp(c, 0x10);
      return;
    }
    if (payload > 0) this.sendTcp(c, 0x10);
    if (!c.established) {
      c.established = true;
      if (dport === SOURCE_PORT) this.sendSourcePayload(c);
    }
  }

  /** Ethernet + IPv4 + TCP headers for connection c into tx; returns the TCP header offset. */
  private buildHeaders(c: TcpConnection, flags: number, payload: number, withOptions: boolean): { tcp: number; end: number } {
    const tx = this.tx;
    const tcpHeader = withOptions ? 28 : 20;
    tx.set(c.peerMac, 0);
    tx.set(HOST_MAC, 6);
    put16(tx, 12, 0x0800);
    const ip = ETH;
    tx[ip] = 0x45;
    tx[ip + 1] = 0;
    put16(tx, ip + 2, 20 + tcpHeader + payload);
    put16(tx, ip + 4, this.ipId++ & 0xffff);
    put16(tx, ip + 6, 0x4000); // DF
    tx[ip + 8] = 64;
    tx[ip + 9] = 6;
    tx.set(this.ip, ip + 12);
    tx.set(c.peerIp, ip + 16);
    this.ipChecksum(20);
    const t = ip + 20;
    put16(tx, t, c.localPort);
    put16(tx, t + 2, c.peerPort);
    put32(tx, t + 4, c.sendNext);
    put32(tx, t + 8, c.receiveNext);
    tx[t + 12] = (tcpHeader / 4) << 4;
    tx[t + 13] = flags;
    put16(tx, t + 14, 0xffff); // scaled by 2^7 below: an 8 MiB window
    put16(tx, t + 16, 0);
    put16(tx, t + 18, 0);
    if (withOptions) {
      // MSS 1460, NOP, window scale 7. No timestamps and no SACK: segments carry 1460 bytes.
      tx.set([2, 4, 0x05, 0xb4, 1, 3, 3, 7], t + 20);
    }
    return { tcp: t, end: t + tcpHeader };
  }

  private sendTcp(c: TcpConnection, flags: number, synAck = false): void {
    const { tcp, end } = this.buildHeaders(c, flags, 0, synAck);
    // Checksums in full here; the large send below uses the partial-checksum offload.
    put16(this.tx, tcp + 16, ~fold(sum16(this.tx, tcp, end, pseudoHeaderSum(this.tx, ETH, 6, end - tcp))) & 0xffff);
    this.iov.clear();
    this.iov.push(this.txAddress, end);
    assert.equal(this.backend.send(this.iov), true);
  }

  /** One TSO frame (GSO TCPv4, partial checksum) with the whole payload, then FIN. */
  private sendSourcePayload(c: TcpConnection): void {
    const data = this.sourcePayload;
    const { tcp, end } = this.buildHeaders(c, 0x18, data.length, false);
    this.tx.set(data, end);
    // CHECKSUM_PARTIAL convention: the field holds the (uncomplemented) pseudo-header sum.
    put16(this.tx, tcp + 16, fold(pseudoHeaderSum(this.tx, ETH, 6, end - tcp + data.length)));
    const offload = this.offload.clear().setChecksum(tcp, 16).setGso('tcpv4', 1460, end);
    this.iov.clear();
    this.iov.push(this.txAddress, end);
    const half = end + (data.length >> 1);
    this.iov.push(this.txAddress + end, half - end);
    this.iov.push(this.txAddress + half, end + data.length - half);
    assert.equal(this.backend.send(this.iov, offload), true);
    c.sendNext = (c.sendNext + data.length) >>> 0;
    this.sendTcp(c, 0x11);
    c.sendNext = (c.sendNext + 1) >>> 0;
    c.finished = true;
  }
}

interface Fixture {
  netns: string;
  tapName: string;
  subnet: number;
  peerIp: string;
  backend: TapBackend;
  poller: Poller;
  errors: unknown[];
}

/** A namespace holding a fresh TAP at 10.77.N.1/24, our backend on the other end; all removed afterwards. */
async function withTapNamespace(t: TestContext, body: (f: Fixture) => Promise<void>): Promise<void> {
  if (unavailable) {
    t.skip(`NOT TESTED: ${unavailable}`);
    return;
  }
  const netns = uniqueName('enltap');
  const tapName = uniqueName('entap');
  const subnet = randomInt(1, 255);
  const errors: unknown[] = [];
  const poller = new Poller((e) => errors.push(e));
  let backend: TapBackend | undefined;
  try {
    createNetns(netns);
    backend = TapBackend.open({ name: tapName, poller, mac: HOST_MAC });
    assert.equal(backend.name, tapName);
    moveLinkToNetns(tapName, netns);
    addAddress(tapName, `10.77.${subnet}.1/24`, netns);
    setLinkUp(tapName, true, netns);
    await body({ netns, tapName, subnet, peerIp: `10.77.${subnet}.2`, backend, poller, errors });
    assert.deepEqual(errors, []);
  } finally {
    backend?.close();
    await poller.stop();
    deleteNetns(netns);
    assert.equal(netnsExists(netns), false, `namespace ${netns} left behind`);
  }
}

function hostFor(f: Fixture, sinkLength = 0, source: Buffer = Buffer.alloc(0)): TinyHost {
  const host = new TinyHost(f.backend, Uint8Array.from([10, 77, f.subnet, 2]), sinkLength, source);
  f.backend.onReceive(host.receive);
  return host;
}

describe('TAP backend (real kernel, own namespace)', { concurrency: false }, () => {
  test('ping from the namespace is answered by the TypeScript host through vnet headers', async (t) => {
    if (!hasProgram('ping')) {
      console.error('\n*** ping is not installed (apt-get install iputils-ping): the ping test is SKIPPED ***\n');
      t.skip('ping is not installed');
      return;
    }
    await withTapNamespace(t, async (f) => {
      const host = hostFor(f);
      const r = await runInNetns(f.netns, ['ping', '-c', '3', '-i', '0.2', '-W', '2', f.peerIp], 20_000);
      assert.equal(r.code, 0, `ping failed:\n${r.stdout}\n${r.stderr}`);
      assert.match(r.stdout, /3 packets transmitted, 3 received/);
      assert.ok(host.arpReplies >= 1);
      assert.equal(host.icmpEchoes, 3);
      assert.ok(f.backend.stats.rxFrames >= 4 && f.backend.stats.txFrames >= 4);
      assert.equal(f.backend.stats.txDropped, 0);
      // The kernel in the namespace learned our MAC from the ARP reply.
      const neigh = (await runInNetns(f.netns, ['ip', 'neigh', 'show', f.peerIp])).stdout;
      assert.match(neigh, /02:00:00:77:00:02/);
    });
  });

  test('a TCP stream from the namespace arrives as TSO frames (GSO TCPv4) with intact data', async (t) => {
    await withTapNamespace(t, async (f) => {
      const length = 300_000;
      const host = hostFor(f, length);
      const script = `const n=require('net');const b=Buffer.alloc(${length});for(let i=0;i<b.length;i++)b[i]=(i*31+(i>>>10))&255;` +
        `const s=n.connect({host:'${f.peerIp}',port:${SINK_PORT}},()=>s.end(b));s.on('data',()=>{});s.on('close',()=>process.exit(0));` +
        `s.on('error',e=>{console.error(e.message);process.exit(1)});setTimeout(()=>{console.error('timeout');process.exit(2)},15000);`;
      const client = runInNetns(f.netns, [process.execPath, '-e', script], 20_000);
      const r = await client;
      assert.equal(r.code, 0, `client failed: ${r.stderr}`);
      await Promise.race([host.sinkDone, new Promise((_, reject) => setTimeout(() => reject(new Error('no FIN')), 5000))]);
      assert.equal(host.sinkReceived, length);
      assert.ok(host.sinkData.equals(pattern(length)), 'stream content differs');
      const tso = host.frames.filter((fr) => fr.gso !== 'none');
      assert.ok(tso.length > 0, `no GSO frame among ${host.frames.length} frames: TSO did not reach us`);
      for (const fr of tso) {
        assert.equal(fr.gso, 'tcpv4');
        assert.equal(fr.gsoSize, 1460, 'segment size = the MSS we negotiated (no TCP options)');
        assert.ok(fr.payload > fr.gsoSize, 'a GSO frame carries more than one segment');
        assert.equal(fr.length, ETH + 20 + 20 + fr.payload);
        assert.ok(fr.needsChecksum);
        assert.equal(fr.checksumStart, ETH + 20);
        assert.equal(fr.checksumOffset, 16);
        assert.ok(fr.headerLength >= ETH + 40 && fr.headerLength <= fr.length);
      }
      console.log(`# ${tso.length} TSO frames of ${host.frames.length}; largest ${Math.max(...tso.map((x) => x.length))} bytes`);
    });
  });

  test('a TSO frame we send (GSO TCPv4, partial checksum) is accepted by the namespace', async (t) => {
    await withTapNamespace(t, async (f) => {
      const payload = pattern(40_000);
      hostFor(f, 0, payload);
      const script = `const n=require('net');const h=require('crypto').createHash('sha256');let len=0;` +
        `const s=n.connect({host:'${f.peerIp}',port:${SOURCE_PORT}});s.on('data',d=>{h.update(d);len+=d.length});` +
        `s.on('end',()=>{console.log(len+' '+h.digest('hex'));s.end();process.exit(0)});` +
        `s.on('error',e=>{console.error(e.message);process.exit(1)});setTimeout(()=>{console.error('timeout '+len);process.exit(2)},15000);`;
      const r = await runInNetns(f.netns, [process.execPath, '-e', script], 20_000);
      assert.equal(r.code, 0, `client failed: ${r.stderr}`);
      assert.equal(r.stdout.trim(), `${payload.length} ${createHash('sha256').update(payload).digest('hex')}`);
      assert.equal(f.backend.stats.txDropped, 0);
    });
  });

  test('carrier off/on from the host shows in the namespace; bad frames are dropped and counted', async (t) => {
    await withTapNamespace(t, async (f) => {
      f.backend.setLinkUp(false);
      assert.ok(linkInfo(f.tapName, f.netns).flags.includes('NO-CARRIER'));
      f.backend.setLinkUp(true);
      const link = linkInfo(f.tapName, f.netns);
      assert.ok(link.flags.includes('LOWER_UP'));
      // The tun fd answers for its device wherever the device lives.
      assert.equal([...f.backend.tap.macAddress()].map((b) => b.toString(16).padStart(2, '0')).join(':'), link.mac);
      const features = tunFeatures();
      assert.equal(features & (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE);

      const before = f.backend.stats.txDropped;
      assert.equal(f.backend.send(new Uint8Array(10)), true, 'a runt is consumed (dropped), not backpressure');
      const frame = new Uint8Array(60);
      frame.fill(0xff, 0, 6);
      const bad = new Offload().setChecksum(50, 16); // checksum field past the frame end
      assert.equal(f.backend.send(frame, bad), true);
      const gsoNoChecksum = new Offload().setGso('tcpv4', 1460, 54);
      assert.equal(f.backend.send(frame, gsoNoChecksum), true);
      assert.equal(f.backend.stats.txDropped, before + 3);

      const many = new IovecList(f.backend.maxSendSegments + 1);
      const address = Number(mapAnonymous(4096));
      for (let i = 0; i <= f.backend.maxSendSegments; i++) many.push(address, 1);
      assert.throws(() => f.backend.send(many), RangeError);

      // Pausing stops reads; resuming delivers what queued meanwhile.
      let received = 0;
      f.backend.onReceive(() => received++);
      f.backend.pauseReceive();
      await runInNetns(f.netns, ['ip', 'neigh', 'replace', f.peerIp, 'lladdr', '02:00:00:77:00:02', 'dev', f.tapName]);
      // A UDP datagram to our address: the namespace sends it straight out of the TAP.
      const send = `const d=require('dgram').createSocket('udp4');d.send('x',9,'${f.peerIp}',()=>d.close());`;
      assert.equal((await runInNetns(f.netns, [process.execPath, '-e', send])).code, 0);
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(received, 0);
      f.backend.resumeReceive();
      const deadline = Date.now() + 3000;
      while (received === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.ok(received >= 1, 'the queued frame arrived after resume');
    });
  });

  test('deleting the namespace under an open backend stops reading with an error (no spinning)', async (t) => {
    await withTapNamespace(t, async (f) => {
      let received = 0;
      f.backend.onReceive(() => received++);
      deleteNetns(f.netns);
      const deadline = Date.now() + 3000;
      while (f.backend.receiveError === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.notEqual(f.backend.receiveError, 0, 'the reader noticed the TAP is gone');
      console.log(`# read after the TAP was deleted: errno ${f.backend.receiveError}`);
      assert.equal(f.backend.send(new Uint8Array(60)), true, 'sends to a deleted TAP are dropped, not retried');
    });
  });
});
