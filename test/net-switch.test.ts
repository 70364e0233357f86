// The VM-to-VM switch: a hub and SwitchBackends in one process, talking over real unix
// datagram sockets. Proves learning and forwarding (unicast only to the learned port,
// floods to all others), software segmentation of a 60 KB GSO frame and completion of
// partial checksums (every segment verifies), forgetting ports that vanish (crash, BYE,
// silence), backpressure (send() says false, a partly sent burst finishes later), and
// rejoining a restarted hub. The control-message decoder gets fuzzed. Last, a real-kernel
// test: two namespaces, each with a TAP relayed to a switch port, ping each other.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomInt } from 'node:crypto';
import { describe, test, type TestContext } from 'node:test';
import fc from 'fast-check';
import { foldSum, L4Checksum, pseudoHeaderSumIpv4, verifyIpv4HeaderChecksum, verifyL4Checksum } from '../src/backends/net/inet-checksum.js';
import { PacketOffload } from '../src/backends/net/net-backend.js';
import {
  decodeSwitchControl,
  encodeSwitchControl,
  NetSwitchHub,
  SWITCH_CONTROL_BYTES,
  SwitchControlError,
  SwitchControlMessage,
  SwitchMessageType,
} from '../src/backends/net/net-switch-hub.js';
import { PacketKind, parsePacket, ParsedPacket } from '../src/backends/net/packet-parse.js';
import { SwitchBackend } from '../src/backends/net/switch-backend.js';
import { runSwitch } from '../src/cli/switch-command.js';
import { TapBackend } from '../src/backends/net/tap-backend.js';
import { Poller } from '../src/sys/epoll.js';
import { IovecList } from '../src/sys/iovec.js';
import { mapAnonymous, munmap, viewOf } from '../src/sys/memfd.js';
import { addAddress, createNetns, deleteNetns, moveLinkToNetns, netnsExists, netnsUnavailableReason, runInNetns, setLinkUp, uniqueName } from '../src/sys/netns.js';
import { MessageVector, NativeSocketAddress, UnixDatagramSocket, unixAddress } from '../src/sys/unix-dgram.js';
import { iperf3Client } from './support/iperf3.js';

const BROADCAST = Uint8Array.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
const mac = (n: number): Uint8Array => Uint8Array.from([0x02, 0, 0, 0, 0x5a, n]);

function until(condition: () => boolean, what: string, timeoutMs = 3000): Promise<void> {
  const start = Date.now();
  return new Promise((resolve, reject) => {
    const check = (): void => {
      if (condition()) resolve();
      else if (Date.now() - start > timeoutMs) reject(new Error(`timed out waiting for ${what}`));
      else setTimeout(check, 5);
    };
    check();
  });
}

const settle = (ms = 60): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** An Ethernet frame with a recognisable payload (byte 14 = tag). */
function ethFrame(dst: Uint8Array, src: Uint8Array, tag: number, length = 64): Uint8Array {
  const f = new Uint8Array(length);
  f.set(dst, 0);
  f.set(src, 6);
  f[12] = 0x88;
  f[13] = 0xb5; // local experimental ethertype
  f[14] = tag;
  return f;
}

/** IPv4 + TCP frame; the TCP checksum field holds what a GSO/CHECKSUM_PARTIAL sender leaves (pseudo-header sum). */
function tcpFrame(dst: Uint8Array, src: Uint8Array, payload: Uint8Array, seq = 1000): Uint8Array {
  const l3 = 14;
  const l4 = 34;
  const headerLength = 54;
  const f = new Uint8Array(headerLength + payload.length);
  const v = new DataView(f.buffer);
  f.set(dst, 0);
  f.set(src, 6);
  v.setUint16(12, 0x0800);
  f[l3] = 0x45;
  v.setUint16(l3 + 2, f.length - l3);
  v.setUint16(l3 + 4, 0x1234);
  v.setUint16(l3 + 6, 0x4000);
  f[l3 + 8] = 64;
  f[l3 + 9] = 6;
  f.set([10, 9, 0, 1, 10, 9, 0, 2], l3 + 12);
  v.setUint16(l4, 40000);
  v.setUint16(l4 + 2, 5201);
  v.setUint32(l4 + 4, seq);
  v.setUint32(l4 + 8, 77);
  f[l4 + 12] = 5 << 4;
  f[l4 + 13] = 0x18; // PSH|ACK
  v.setUint16(l4 + 14, 1000);
  v.setUint16(l4 + 16, foldSum(pseudoHeaderSumIpv4(f, l3, 6, f.length - l4)));
  f.set(payload, headerLength);
  return f;
}

/** IPv4 + UDP frame with a partial checksum (pseudo-header sum in the field). */
function udpFrame(dst: Uint8Array, src: Uint8Array, payload: Uint8Array): Uint8Array {
  const f = new Uint8Array(42 + payload.length);
  const v = new DataView(f.buffer);
  f.set(dst, 0);
  f.set(src, 6);
  v.setUint16(12, 0x0800);
  f[14] = 0x45;
  v.setUint16(16, f.length - 14);
  f[22] = 64;
  f[23] = 17;
  f.set([10, 9, 0, 1, 10, 9, 0, 2], 26);
  let sum = 0;
  for (let i = 14; i < 34; i += 2) sum += (f[i]! << 8) | f[i + 1]!;
  v.setUint16(24, ~foldSum(sum) & 0xffff);
  v.setUint16(34, 5353);
  v.setUint16(36, 5354);
  v.setUint16(38, 8 + payload.length);
  v.setUint16(40, foldSum(pseudoHeaderSumIpv4(f, 14, 17, 8 + payload.length)));
  f.set(payload, 42);
  return f;
}

interface Station {
  backend: SwitchBackend;
  mac: Uint8Array;
  received: Uint8Array[];
}

interface Fixture {
  dir: string;
  path: string;
  poller: Poller;
  hub: NetSwitchHub;
  stations: Station[];
  errors: unknown[];
}

async function withSwitch(
  t: TestContext,
  body: (f: Fixture) => Promise<void>,
  options: { stations?: number; keepaliveMs?: number; hub?: Partial<Parameters<typeof NetSwitchHub.start>[0]>; sendBuffer?: number } = {},
): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'enl-switch-'));
  const socketPath = path.join(dir, 'hub.sock');
  const errors: unknown[] = [];
  const poller = new Poller((e) => errors.push(e));
  const hub = NetSwitchHub.start({ path: socketPath, poller, ...options.hub });
  const f: Fixture = { dir, path: socketPath, poller, hub, stations: [], errors };
  try {
    for (let i = 0; i < (options.stations ?? 3); i++) {
      const station: Station = { backend: undefined as unknown as SwitchBackend, mac: mac(i + 1), received: [] };
      station.backend = SwitchBackend.open({ path: socketPath, poller, keepaliveMs: options.keepaliveMs ?? 5000, sendBuffer: options.sendBuffer });
      station.backend.onReceive((frame, length) => station.received.push(frame.slice(0, length)));
      f.stations.push(station);
    }
    await until(() => f.stations.every((s) => s.backend.joined) && hub.portCount === f.stations.length, 'every station to join');
    await body(f);
    assert.deepEqual(errors, []);
  } finally {
    for (const s of f.stations) s.backend.close();
    f.hub.close();
    await poller.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  void t;
}

function clearReceived(f: Fixture): void {
  for (const s of f.stations) s.received.length = 0;
}

describe('switch control messages', () => {
  test('encode/decode round trip', () => {
    const buf = new Uint8Array(SWITCH_CONTROL_BYTES);
    const out = new SwitchControlMessage();
    for (const type of [SwitchMessageType.Hello, SwitchMessageType.Welcome, SwitchMessageType.Bye]) {
      encodeSwitchControl(type, 1518, buf);
      assert.equal(decodeSwitchControl(buf, 0, buf.length, out), SwitchControlError.None);
      assert.equal(out.type, type);
      assert.equal(out.maxFrame, 1518);
    }
    assert.equal(decodeSwitchControl(buf, 0, 11, out), SwitchControlError.BadLength);
    assert.equal(decodeSwitchControl(buf, 4, 12, out), SwitchControlError.BadLength);
    const bad = buf.slice();
    bad[0] = 0;
    assert.equal(decodeSwitchControl(bad, 0, 12, out), SwitchControlError.BadMagic);
    const version = buf.slice();
    version[4] = 9;
    assert.equal(decodeSwitchControl(version, 0, 12, out), SwitchControlError.UnsupportedVersion);
    const type = buf.slice();
    type[5] = 7;
    assert.equal(decodeSwitchControl(type, 0, 12, out), SwitchControlError.UnknownType);
    encodeSwitchControl(SwitchMessageType.Hello, 3, buf);
    assert.equal(decodeSwitchControl(buf, 0, 12, out), SwitchControlError.BadMaxFrame);
  });

  test('fuzz: arbitrary bytes never throw and only well-formed messages decode', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 40 }), fc.integer({ min: -4, max: 44 }), fc.integer({ min: -4, max: 44 }), (bytes, offset, length) => {
        const out = new SwitchControlMessage();
        const r = decodeSwitchControl(bytes, offset, length, out);
        if (r === SwitchControlError.None) {
          assert.equal(length, SWITCH_CONTROL_BYTES);
          assert.ok(offset >= 0 && offset + length <= bytes.length);
          assert.ok(out.maxFrame >= 14);
        }
      }),
      { numRuns: 3000 },
    );
  });

  test('fuzz: a valid message with any field flipped still decodes to a typed result', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 11 }), fc.integer({ min: 0, max: 255 }), (at, value) => {
        const buf = new Uint8Array(12);
        encodeSwitchControl(SwitchMessageType.Hello, 1518, buf);
        buf[at] = value;
        const r = decodeSwitchControl(buf, 0, 12, new SwitchControlMessage());
        assert.ok(Object.values(SwitchControlError).includes(r));
      }),
    );
  });
});

describe('unix datagram sockets', () => {
  test('a mutually connected pair is not limited by max_dgram_qlen (the reason for per-port sockets)', () => {
    const a = UnixDatagramSocket.create({ sendBuffer: 1 << 20 });
    const b = UnixDatagramSocket.create();
    const buffer = mapAnonymous(4096);
    try {
      a.autobind();
      b.autobind();
      assert.equal(a.connectAddress(b.localAddress()), 0);
      assert.equal(b.connectAddress(a.localAddress()), 0);
      let sent = 0;
      while (sent < 200 && a.send(Number(buffer), 100) === 100) sent++;
      const qlen = Number(fs.readFileSync('/proc/sys/net/unix/max_dgram_qlen', 'utf8'));
      assert.ok(sent > Math.min(qlen + 1, 199), `only ${sent} datagrams fit (max_dgram_qlen ${qlen})`);
      let read = 0;
      while (b.recv(Number(buffer), 4096) === 100) read++;
      assert.equal(read, sent);
    } finally {
      a.close();
      b.close();
      munmap(buffer, 4096);
    }
  });
});

describe('switch hub and backends (one process)', { concurrency: false }, () => {
  test('broadcast floods to all other ports; unicast after learning goes only to the learned port', async (t) => {
    await withSwitch(t, async (f) => {
      const [a, b, c] = f.stations as [Station, Station, Station];
      assert.equal(a.backend.send(ethFrame(BROADCAST, a.mac, 1)), true);
      await until(() => b.received.length === 1 && c.received.length === 1, 'the broadcast at B and C');
      await settle();
      assert.equal(a.received.length, 0, 'a flood never returns to its source');
      assert.equal(b.received[0]![14], 1);

      clearReceived(f);
      // A is learned now: B -> A goes to A alone (and teaches the hub B).
      b.backend.send(ethFrame(a.mac, b.mac, 2));
      await until(() => a.received.length === 1, 'the unicast at A');
      // C -> B: learned from the frame above.
      c.backend.send(ethFrame(b.mac, c.mac, 3));
      await until(() => b.received.length === 1, 'the unicast at B');
      // Unknown destination: flooded.
      a.backend.send(ethFrame(mac(99), a.mac, 4));
      await until(() => b.received.length === 2 && c.received.length === 1, 'the unknown unicast flooded');
      await settle();
      assert.deepEqual(a.received.map((x) => x[14]), [2]);
      assert.deepEqual(b.received.map((x) => x[14]), [3, 4]);
      assert.deepEqual(c.received.map((x) => x[14]), [4]);
      const table = new Map(f.hub.macTable().map((e) => [e.mac, e.port]));
      assert.equal(table.size, 3);
      // Multicast floods too and is never learned as a source.
      clearReceived(f);
      const multicast = Uint8Array.from([0x01, 0x00, 0x5e, 0, 0, 1]);
      c.backend.send(ethFrame(multicast, c.mac, 5));
      await until(() => a.received.length === 1 && b.received.length === 1, 'the multicast at A and B');
      assert.equal(f.hub.stats.unicast, 2);
      assert.equal(f.hub.stats.flooded, 3);
    });
  });

  test('a 60 KB GSO TCP frame (from guest pages, gathered) arrives as MTU-sized segments whose checksums verify', async (t) => {
    await withSwitch(t, async (f) => {
      const [a, b, c] = f.stations as [Station, Station, Station];
      b.backend.send(ethFrame(BROADCAST, b.mac, 0)); // teach the hub B
      await until(() => a.received.length === 1, 'B learned');
      clearReceived(f);

      const payload = new Uint8Array(60_000);
      for (let i = 0; i < payload.length; i++) payload[i] = (i * 7 + (i >> 9)) & 0xff;
      const frame = tcpFrame(b.mac, a.mac, payload, 0xfffff000); // the sequence number wraps on the way
      // Guest pages: native memory, three iovecs.
      const pages = mapAnonymous(128 * 1024);
      try {
        new Uint8Array(viewOf(pages, frame.length)).set(frame);
        const iov = new IovecList(4);
        const base = Number(pages);
        iov.push(base, 100);
        iov.push(base + 100, 30_000);
        iov.push(base + 30_100, frame.length - 30_100);
        const offload = new PacketOffload().setChecksum(34, 16).setGso('tcpv4', 1448, 54);
        assert.equal(a.backend.send(iov, offload), true);
        const expected = Math.ceil(60_000 / 1448);
        await until(() => b.received.length === expected, `${expected} segments at B`);
      } finally {
        munmap(pages, 128 * 1024);
      }
      await settle();
      assert.equal(c.received.length, 0, 'unicast segments do not flood');
      const parsed = new ParsedPacket();
      const reassembled = new Uint8Array(payload.length);
      let covered = 0;
      for (const seg of b.received) {
        assert.ok(seg.length <= 1514, `segment of ${seg.length} bytes exceeds the MTU`);
        assert.equal(parsePacket(seg, 0, seg.length, parsed), PacketKind.Tcp);
        assert.ok(verifyIpv4HeaderChecksum(seg, 14, 20));
        assert.equal(verifyL4Checksum(seg, 0, parsed), L4Checksum.Valid);
        const seq = new DataView(seg.buffer, seg.byteOffset).getUint32(38);
        const offset = (seq - 0xfffff000) >>> 0;
        reassembled.set(seg.subarray(54), offset);
        covered += seg.length - 54;
      }
      assert.equal(covered, payload.length);
      assert.deepEqual(reassembled, payload);
      assert.equal(a.backend.counters.segmented, 1);
      assert.equal(a.backend.stats.txFrames, 1, 'one guest frame, however many segments');
      assert.equal(a.backend.counters.segments, Math.ceil(60_000 / 1448));
    });
  });

  test('a large TCP frame without GSO is segmented too; oversized non-TCP frames are dropped and counted', async (t) => {
    await withSwitch(t, async (f) => {
      const [a, b] = f.stations as [Station, Station];
      b.backend.send(ethFrame(BROADCAST, b.mac, 0));
      await until(() => a.received.length === 1, 'B learned');
      clearReceived(f);
      const frame = tcpFrame(b.mac, a.mac, new Uint8Array(4000).fill(9));
      // A complete checksum already (no offload): segmentation recomputes it per segment.
      const parsed = new ParsedPacket();
      parsePacket(frame, 0, frame.length, parsed);
      assert.equal(a.backend.send(frame), true);
      await until(() => b.received.length === 3, '3 segments');
      for (const seg of b.received) {
        parsePacket(seg, 0, seg.length, parsed);
        assert.equal(verifyL4Checksum(seg, 0, parsed), L4Checksum.Valid);
      }
      const dropped = a.backend.stats.txDropped;
      assert.equal(a.backend.send(ethFrame(b.mac, a.mac, 1, 3000)), true);
      assert.equal(a.backend.stats.txDropped, dropped + 1);
      assert.equal(a.backend.send(new Uint8Array(10)), true, 'a runt is consumed');
      assert.equal(a.backend.stats.txDropped, dropped + 2);
    });
  });

  test('NEEDS_CSUM frames arrive with a correct checksum (JS view and gathered)', async (t) => {
    await withSwitch(t, async (f) => {
      const [a, b] = f.stations as [Station, Station];
      b.backend.send(ethFrame(BROADCAST, b.mac, 0));
      await until(() => a.received.length === 1, 'B learned');
      clearReceived(f);
      const udp = udpFrame(b.mac, a.mac, new Uint8Array(333).map((_, i) => i * 13));
      const tcp = tcpFrame(b.mac, a.mac, new Uint8Array(1000).map((_, i) => i));
      assert.equal(a.backend.send(udp, new PacketOffload().setChecksum(34, 6)), true);
      const pages = mapAnonymous(4096);
      try {
        new Uint8Array(viewOf(pages, tcp.length)).set(tcp);
        const iov = new IovecList(2);
        iov.push(Number(pages), 60);
        iov.push(Number(pages) + 60, tcp.length - 60);
        assert.equal(a.backend.send(iov, new PacketOffload().setChecksum(34, 16)), true);
        await until(() => b.received.length === 2, 'both frames');
      } finally {
        munmap(pages, 4096);
      }
      const parsed = new ParsedPacket();
      assert.equal(parsePacket(b.received[0]!, 0, b.received[0]!.length, parsed), PacketKind.Udp);
      assert.equal(verifyL4Checksum(b.received[0]!, 0, parsed), L4Checksum.Valid);
      assert.deepEqual(b.received[0]!.subarray(42), udp.subarray(42));
      assert.equal(parsePacket(b.received[1]!, 0, b.received[1]!.length, parsed), PacketKind.Tcp);
      assert.equal(verifyL4Checksum(b.received[1]!, 0, parsed), L4Checksum.Valid);
      assert.equal(a.backend.counters.checksummed, 2);
      // Without the offload the checksum field is left alone (it was a partial sum): proof the backend did the work.
      assert.notEqual(verifyL4Checksum(tcp, 0, (parsePacket(tcp, 0, tcp.length, parsed), parsed)), L4Checksum.Valid);
    });
  });

  test('a peer that disappears is forgotten: crash (send fails), BYE, silence', async (t) => {
    await withSwitch(
      t,
      async (f) => {
        const [a] = f.stations as [Station];
        const hello = mapAnonymous(4096);
        const hubAddress = new NativeSocketAddress(unixAddress(f.path));
        const joinRaw = async (): Promise<UnixDatagramSocket> => {
          const peer = UnixDatagramSocket.create();
          peer.autobind();
          encodeSwitchControl(SwitchMessageType.Hello, 1518, new Uint8Array(viewOf(hello, 12)));
          const before = f.hub.portCount;
          assert.equal(peer.sendTo(Number(hello), 12, hubAddress), 12);
          await until(() => f.hub.portCount === before + 1, 'the raw peer to join');
          return peer;
        };
        try {
          // Crash: the socket closes without BYE; the next flood finds it gone.
          const crashed = await joinRaw();
          assert.equal(f.hub.portCount, 4);
          crashed.close();
          a.backend.send(ethFrame(BROADCAST, a.mac, 1));
          await until(() => f.hub.portCount === 3, 'the crashed port to be forgotten');
          // Silence: a port that sends nothing ages out (the backends' keep-alives keep theirs).
          const silent = await joinRaw();
          await until(() => f.hub.portCount === 3, 'the silent port to age out', 3000);
          silent.close();
          assert.equal(f.stations.every((s) => s.backend.joined), true);
          // BYE: a backend that closes leaves at once, and its MACs with it.
          const c = f.stations.pop()!;
          c.backend.send(ethFrame(BROADCAST, c.mac, 2));
          await until(() => f.hub.macTable().some((e) => e.mac === '02:00:00:00:5a:03'), 'C learned');
          c.backend.close();
          await until(() => f.hub.portCount === 2, 'C to leave');
          assert.equal(f.hub.macTable().some((e) => e.mac === '02:00:00:00:5a:03'), false);
          assert.ok(f.hub.stats.leaves >= 3);
        } finally {
          munmap(hello, 4096);
          hubAddress.release();
        }
      },
      { keepaliveMs: 50, hub: { portTimeoutMs: 300 } },
    );
  });

  test('learned MACs age out and unicast floods again', async (t) => {
    await withSwitch(
      t,
      async (f) => {
        const [a, b, c] = f.stations as [Station, Station, Station];
        b.backend.send(ethFrame(BROADCAST, b.mac, 0));
        await until(() => a.received.length === 1, 'B learned');
        clearReceived(f);
        await settle(400);
        assert.equal(f.hub.macTable().length, 0);
        a.backend.send(ethFrame(b.mac, a.mac, 1));
        await until(() => b.received.length === 1 && c.received.length === 1, 'flooded after ageing');
      },
      { hub: { macAgeMs: 150 } },
    );
  });

  test('backpressure: send() returns false when the socket buffer is full; a partly sent GSO burst finishes later', async (t) => {
    await withSwitch(
      t,
      async (f) => {
        const [a, b] = f.stations as [Station, Station];
        b.backend.send(ethFrame(BROADCAST, b.mac, 0));
        await until(() => a.received.length === 1, 'B learned');
        clearReceived(f);
        // The hub runs on this thread, so nothing drains while we loop.
        const frame = ethFrame(b.mac, a.mac, 7, 1514);
        let accepted = 0;
        let refused = false;
        for (let i = 0; i < 100_000; i++) {
          if (!a.backend.send(frame)) {
            refused = true;
            break;
          }
          accepted++;
        }
        assert.ok(refused, 'send never reported backpressure');
        assert.ok(accepted > 5, `only ${accepted} frames fit`);
        assert.equal(a.backend.stats.txFrames, accepted, 'a refused frame is not counted as sent');
        assert.equal(a.backend.stats.txDropped, 0);
        await until(() => b.received.length === accepted, 'every accepted frame at B');
        assert.equal(a.backend.send(frame), true, 'room again once the hub drained');
        await until(() => b.received.length === accepted + 1, 'the last frame');
        clearReceived(f);

        // A 60 KB burst of 42 segments does not fit a 32 KiB buffer at once: what fits goes
        // now, the rest follows on the retry timer, in order, before any later frame.
        const payload = new Uint8Array(60_000).map((_, i) => i & 0xff);
        const gso = tcpFrame(b.mac, a.mac, payload, 5);
        assert.equal(a.backend.send(gso, new PacketOffload().setChecksum(34, 16).setGso('tcpv4', 1448, 54)), true);
        assert.equal(a.backend.send(ethFrame(b.mac, a.mac, 8, 100)), false, 'a new frame waits behind the unfinished burst');
        await until(() => b.received.length === 42, 'all 42 segments');
        const parsed = new ParsedPacket();
        let expectSeq = 5;
        for (const seg of b.received) {
          assert.equal(parsePacket(seg, 0, seg.length, parsed), PacketKind.Tcp);
          assert.equal(verifyL4Checksum(seg, 0, parsed), L4Checksum.Valid);
          assert.equal(new DataView(seg.buffer, seg.byteOffset).getUint32(38), expectSeq, 'segments in order');
          expectSeq += seg.length - 54;
        }
        assert.equal(expectSeq, 5 + 60_000);
      },
      { sendBuffer: 32 * 1024, stations: 2 },
    );
  });

  test('hub crash and restart: the backends rejoin with HELLO and traffic flows again', async (t) => {
    await withSwitch(
      t,
      async (f) => {
        assert.throws(() => NetSwitchHub.start({ path: f.path, poller: f.poller }), /already live/);
        f.hub.close({ unlink: false }); // a crash leaves the socket file behind
        assert.ok(fs.existsSync(f.path));
        f.hub = NetSwitchHub.start({ path: f.path, poller: f.poller }); // replaces the stale file
        await until(() => f.hub.portCount === 3 && f.stations.every((s) => s.backend.joined && s.backend.counters.joins === 2), 'every station to rejoin');
        const [a, b, c] = f.stations as [Station, Station, Station];
        assert.ok(a.backend.counters.hubLost >= 1);
        clearReceived(f);
        a.backend.send(ethFrame(BROADCAST, a.mac, 1));
        await until(() => b.received.length === 1 && c.received.length === 1, 'the broadcast through the new hub');
        b.backend.send(ethFrame(a.mac, b.mac, 2));
        await until(() => a.received.length === 1, 'unicast through the new hub');
      },
      { keepaliveMs: 40 },
    );
  });

  test('pauseReceive holds frames (even mid-batch) until resumeReceive; link down drops both ways', async (t) => {
    await withSwitch(
      t,
      async (f) => {
        const [a, b] = f.stations as [Station, Station];
        b.backend.send(ethFrame(BROADCAST, b.mac, 0));
        await until(() => a.received.length === 1, 'B learned');
        clearReceived(f);
        b.backend.pauseReceive();
        for (let i = 1; i <= 5; i++) a.backend.send(ethFrame(b.mac, a.mac, i));
        await settle(100);
        assert.equal(b.received.length, 0, 'nothing delivered while paused');
        // The handler pauses again after the first frame of the batch: the rest must wait, not vanish.
        let batches = 0;
        b.backend.onReceive(
          (frame, length) => {
            b.received.push(frame.slice(0, length));
            b.backend.pauseReceive();
          },
          () => batches++,
        );
        b.backend.resumeReceive();
        await until(() => b.received.length === 1, 'one frame');
        await settle(50);
        assert.equal(b.received.length, 1);
        for (let i = 2; i <= 5; i++) {
          b.backend.resumeReceive();
          await until(() => b.received.length === i, `frame ${i}`);
        }
        assert.deepEqual(b.received.map((x) => x[14]), [1, 2, 3, 4, 5]);
        assert.ok(batches >= 5);
        assert.equal(b.backend.stats.rxDropped, 0);
        b.backend.onReceive((frame, length) => b.received.push(frame.slice(0, length)));
        b.backend.resumeReceive();

        // Link down: sends are consumed and counted as dropped, arrivals are dropped.
        clearReceived(f);
        a.backend.setLinkUp(false);
        assert.equal(a.backend.send(ethFrame(b.mac, a.mac, 9)), true);
        assert.equal(a.backend.stats.txDropped, 1);
        b.backend.send(ethFrame(a.mac, b.mac, 10));
        await until(() => a.backend.stats.rxDropped === 1, 'the frame dropped at the down link');
        assert.equal(a.received.length, 0);
        a.backend.setLinkUp(true);
        b.backend.send(ethFrame(a.mac, b.mac, 11));
        await until(() => a.received.length === 1, 'traffic after link up');
      },
      { stations: 2 },
    );
  });

  test('runSwitch (enlighten switch) serves until told to stop and removes its socket', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'enl-switch-'));
    const socketPath = path.join(dir, 'cli.sock');
    const poller = new Poller();
    let stop!: () => void;
    const lines: string[] = [];
    const running = runSwitch({ path: socketPath, until: new Promise<void>((r) => (stop = r)), log: (l) => lines.push(l) });
    let backend: SwitchBackend | undefined;
    try {
      await until(() => fs.existsSync(socketPath), 'the socket');
      backend = SwitchBackend.open({ path: socketPath, poller });
      await until(() => backend!.joined, 'the join');
      stop();
      const stats = await running;
      assert.equal(stats.joins, 1);
      assert.equal(fs.existsSync(socketPath), false);
      assert.match(lines[0]!, /listening/);
    } finally {
      backend?.close();
      await poller.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('hostile datagrams at the join socket and at a port neither crash the hub nor stop traffic', async (t) => {
    await withSwitch(
      t,
      async (f) => {
        const [a, b] = f.stations as [Station, Station];
        const buffer = mapAnonymous(8192);
        const bytes = new Uint8Array(viewOf(buffer, 8192));
        const hubAddress = new NativeSocketAddress(unixAddress(f.path));
        const peer = UnixDatagramSocket.create();
        const vector = new MessageVector(1);
        try {
          peer.autobind();
          encodeSwitchControl(SwitchMessageType.Hello, 1518, bytes);
          peer.sendTo(Number(buffer), 12, hubAddress);
          // The WELCOME names our port socket; connect to it as a backend would.
          vector.setBuffer(0, Number(buffer), 8192, true);
          await until(() => peer.receiveMany(vector, 1) === 1, 'the WELCOME');
          assert.equal(peer.connectAddress(vector.nameView(0).slice(0, vector.nameLength(0))), 0);
          const samples = fc.sample(fc.uint8Array({ minLength: 0, maxLength: 3000 }), { numRuns: 400, seed: 42 });
          let i = 0;
          for (const sample of samples) {
            bytes.set(sample);
            // Half at the port (as frames or control), half at the join socket.
            if (i++ % 2 === 0) peer.send(Number(buffer), sample.length);
            else peer.sendTo(Number(buffer), sample.length, hubAddress);
            if (i % 50 === 0) await settle(5);
          }
          // Hostile MAC claims may move A's MAC to the peer's port; that is learning, not a failure.
          // Traffic between honest stations still flows once they speak again.
          await settle(100);
          clearReceived(f);
          a.backend.send(ethFrame(BROADCAST, a.mac, 1));
          await until(() => b.received.some((x) => x[14] === 1), 'the broadcast after the garbage');
          b.backend.send(ethFrame(a.mac, b.mac, 2));
          await until(() => a.received.some((x) => x[14] === 2), 'unicast after the garbage');
          assert.ok(f.hub.stats.dropped > 0);
        } finally {
          peer.close();
          vector.release();
          hubAddress.release();
          munmap(buffer, 8192);
        }
      },
      { stations: 2 },
    );
  });

  test('open() fails loudly when no hub is there', () => {
    const poller = new Poller();
    try {
      assert.throws(() => SwitchBackend.open({ path: path.join(os.tmpdir(), `enl-no-switch-${process.pid}.sock`), poller }), /ENOENT/);
    } finally {
      void poller.stop();
    }
  });
});

// ---- real kernel: two namespaces joined through the switch ----

const unavailable = netnsUnavailableReason();
if (unavailable) console.error(`\n*** net-switch real-kernel test SKIPPED: ${unavailable} ***\n`);

function hasProgram(name: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

describe('switch with real kernels (two namespaces, TAP <-> switch relays)', { concurrency: false }, () => {
  test('ping between the namespaces crosses the switch', async (t) => {
    if (unavailable) {
      t.skip(`NOT TESTED: ${unavailable}`);
      return;
    }
    if (!hasProgram('ping')) {
      console.error('\n*** ping is not installed: the switch ping test is SKIPPED ***\n');
      t.skip('ping is not installed');
      return;
    }
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'enl-switch-'));
    const socketPath = path.join(dir, 'hub.sock');
    const errors: unknown[] = [];
    const poller = new Poller((e) => errors.push(e));
    const subnet = randomInt(1, 255);
    const sides = [0, 1].map((i) => ({ netns: uniqueName('enlsw'), tap: uniqueName('ensw'), ip: `10.78.${subnet}.${i + 1}` }));
    let hub: NetSwitchHub | undefined;
    const backends: Array<{ close(): void }> = [];
    try {
      hub = NetSwitchHub.start({ path: socketPath, poller });
      for (const side of sides) {
        createNetns(side.netns);
        const tap = TapBackend.open({ name: side.tap, poller });
        backends.push(tap);
        const port = SwitchBackend.open({ path: socketPath, poller });
        backends.push(port);
        // The relay a VM would be: kernel frames (with their offloads) to the switch and back.
        tap.onReceive((frame, length, offload) => port.send(frame.subarray(0, length), offload));
        port.onReceive((frame, length) => tap.send(frame.subarray(0, length)));
        moveLinkToNetns(side.tap, side.netns);
        addAddress(side.tap, `${side.ip}/24`, side.netns);
        setLinkUp(side.tap, true, side.netns);
      }
      await until(() => hub!.portCount === 2, 'both relays to join');
      const r = await runInNetns(sides[0]!.netns, ['ping', '-c', '3', '-i', '0.2', '-W', '2', sides[1]!.ip], 20_000);
      assert.equal(r.code, 0, `ping failed:\n${r.stdout}\n${r.stderr}`);
      assert.match(r.stdout, /3 packets transmitted, 3 received/);
      assert.ok(hub.stats.unicast >= 6, 'echo requests and replies went by learned MAC');
      if (hasProgram('iperf3')) {
        // TCP through the switch: the kernel hands the TAP TSO frames; the switch backend segments them.
        const server = runInNetns(sides[1]!.netns, ['iperf3', '-s', '-1', '-B', sides[1]!.ip], 30_000);
        await settle(500);
        const client = await iperf3Client(sides[0]!.netns, ['-c', sides[1]!.ip, '-t', '1', '-J'], 10_000, 30_000);
        await server;
        assert.equal(client.code, 0, `iperf3 failed:\n${client.stdout.slice(-2000)}\n${client.stderr}`);
        const result = JSON.parse(client.stdout) as { end: { sum_received: { bytes: number; bits_per_second: number } } };
        console.error(`switch iperf3: ${(result.end.sum_received.bits_per_second / 1e6).toFixed(0)} Mbit/s`);
        assert.ok(result.end.sum_received.bytes > 1_000_000, 'iperf3 moved at least 1 MB');
      } else {
        console.error('\n*** iperf3 is not installed: the TCP part of the switch test is SKIPPED ***\n');
      }
      assert.deepEqual(errors, []);
    } finally {
      for (const b of backends.reverse()) b.close();
      hub?.close();
      await poller.stop();
      for (const side of sides) {
        deleteNetns(side.netns);
        assert.equal(netnsExists(side.netns), false);
      }
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
