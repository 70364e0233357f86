// The two ends of one ring in two threads, as in production: each thread maps the same
// memfd pages itself (the writer through a single mapping, so it splits packets at the
// seam; the reader through a double mapping), and they wake each other only through
// eventfds waited on with a blocking epoll. Two million packets of random sizes must
// arrive complete, uncorrupted and in order, including a phase where the reader is slow
// and the writer sleeps on pending_send_sz until the reader's signal wakes it.
//
// This file is also the workers' script: the main thread runs the test, a worker runs
// the role named in its workerData.
import assert from 'node:assert/strict';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { Epoll } from '../src/sys/epoll.js';
import { EventFd } from '../src/sys/eventfd.js';
import { GuestMemory, GuestMemoryHandle } from '../src/memory/guest-memory.js';
import { PAGE_SIZE } from '../src/memory/page.js';
import { PACKET_FLAG_COMPLETION_REQUESTED, PacketType } from '../src/vmbus/packet.js';
import { initRingHeader, ringMemoryFromBuffer } from '../src/vmbus/ring/ring-memory.js';
import { RingReader } from '../src/vmbus/ring/ring-reader.js';
import { RingWriter, WriteResult } from '../src/vmbus/ring/ring-writer.js';

const PACKETS = 2_000_000;
const DATA_PAGES = 16; // 64 KiB of ring data
const SEED = 0x5eed_1234;
const POOL_SIZE = 1 << 17;
const MAX_PAYLOAD = 12 * 1024;
/** Packets [SLOW_FROM, SLOW_TO): the reader naps, so the writer must block on pending_send_sz. */
const SLOW_FROM = 600_000;
const SLOW_TO = 640_000;
const SLOW_EVERY = 50;
const SLOW_NAP_MS = 1;
/** Packets from here on are written in batches. */
const BATCH_FROM = 1_200_000;
const BATCH_SIZE = 24;
/** A sleeping side that hears nothing for this long has lost a wake-up. */
const WAKE_TIMEOUT_MS = 10_000;

interface Setup {
  role: 'writer' | 'reader';
  memory: GuestMemoryHandle;
  pfns: number[];
  dataReadyFd: number;
  spaceReadyFd: number;
  control: SharedArrayBuffer;
}

interface Stats {
  packets: number;
  signals: number;
  sleeps: number;
  slowPhaseSleeps: number;
  wrapped: number;
}

/** xorshift32: the writer and the reader draw the same sequence. */
class Rng {
  constructor(private state: number) {}
  next(): number {
    let x = this.state;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.state = x >>> 0;
    return this.state;
  }
}

/** Packet i's payload size and where in the pool its bytes come from. */
function drawPacket(rng: Rng, out: { size: number; from: number }): void {
  const r = rng.next();
  const kind = r & 15;
  const n = rng.next();
  // Mostly small, some medium, a few large (up to a fifth of the ring), some empty.
  out.size = kind === 0 ? 0 : kind < 11 ? n % 257 : kind < 15 ? n % 2049 : n % (MAX_PAYLOAD + 1);
  // 8-aligned like the payload in the ring, so the reader can compare whole words.
  out.from = (rng.next() % (POOL_SIZE - MAX_PAYLOAD)) & ~7;
}

function makePool(): Uint8Array {
  const pool = new Uint8Array(POOL_SIZE);
  const rng = new Rng(SEED ^ 0xa5a5a5a5);
  for (let i = 0; i < POOL_SIZE; i++) pool[i] = rng.next() & 0xff;
  return pool;
}

const ABORT = 0;

function waitOrAbort(epoll: Epoll, fd: EventFd, control: Int32Array, what: string): void {
  const ready = epoll.wait(WAKE_TIMEOUT_MS);
  if (Atomics.load(control, ABORT) !== 0) throw new Error('aborted');
  if (ready.length === 0) throw new Error(`${what}: no signal for ${WAKE_TIMEOUT_MS} ms (lost wake-up)`);
  fd.drain();
}

function runWriter(s: Setup): Stats {
  const memory = GuestMemory.attach(s.memory);
  const mapping = memory.mapPages(s.pfns);
  const writer = new RingWriter(ringMemoryFromBuffer(mapping.buffer, 0, s.pfns.length * PAGE_SIZE, false));
  const dataReady = EventFd.fromFd(s.dataReadyFd);
  const spaceReady = EventFd.fromFd(s.spaceReadyFd);
  const control = new Int32Array(s.control);
  const epoll = new Epoll(4);
  epoll.add(spaceReady.fd, 1);
  const pool = makePool();
  const rng = new Rng(SEED);
  const draw = { size: 0, from: 0 };
  const stats: Stats = { packets: 0, signals: 0, sleeps: 0, slowPhaseSleeps: 0, wrapped: 0 };
  let seq = 0;
  const signal = (r: WriteResult) => {
    if (r === WriteResult.WRITTEN_SIGNAL) {
      stats.signals++;
      dataReady.signal();
    }
  };
  const sleep = () => {
    stats.sleeps++;
    if (seq >= SLOW_FROM && seq < SLOW_TO) stats.slowPhaseSleeps++;
    waitOrAbort(epoll, spaceReady, control, 'writer');
  };
  let inBatch = 0;
  for (seq = 0; seq < PACKETS; seq++) {
    drawPacket(rng, draw);
    const payload = pool.subarray(draw.from, draw.from + draw.size);
    const flags = seq & 1 ? PACKET_FLAG_COMPLETION_REQUESTED : 0;
    if (seq >= BATCH_FROM && inBatch === 0) writer.beginBatch();
    for (;;) {
      let r: WriteResult;
      if (seq % 3 === 0) {
        r = writer.tryWrite(PacketType.DataInband, flags, seq, null, payload);
      } else {
        const at = writer.reserve(PacketType.DataInband, flags, seq, draw.size);
        if (at < 0) {
          r = WriteResult.FULL;
        } else {
          if (writer.target !== writer.mem.data) stats.wrapped++;
          writer.target.set(payload, at);
          r = writer.commit();
        }
      }
      if (r !== WriteResult.FULL) {
        signal(r);
        break;
      }
      // Full: publish what the batch holds (the reader cannot free space it cannot see), then block.
      if (seq >= BATCH_FROM) {
        signal(writer.endBatch());
        inBatch = 0;
        writer.beginBatch();
      }
      writer.waitForSpace(writer.packetBytes(draw.size), sleep);
    }
    if (seq >= BATCH_FROM && ++inBatch === BATCH_SIZE) {
      signal(writer.endBatch());
      inBatch = 0;
    }
    stats.packets++;
  }
  if (inBatch > 0) signal(writer.endBatch());
  epoll.close();
  return stats;
}

function runReader(s: Setup): Stats {
  const memory = GuestMemory.attach(s.memory);
  const mapping = memory.mapPages(s.pfns, 1);
  const mem = ringMemoryFromBuffer(mapping.buffer, 0, s.pfns.length * PAGE_SIZE, true);
  const reader = new RingReader(mem, { maxPacketBytes: MAX_PAYLOAD + 64 });
  const dataReady = EventFd.fromFd(s.dataReadyFd);
  const spaceReady = EventFd.fromFd(s.spaceReadyFd);
  const control = new Int32Array(s.control);
  const nap = new Int32Array(new SharedArrayBuffer(4));
  const epoll = new Epoll(4);
  epoll.add(dataReady.fd, 1);
  const pool = makePool();
  const rng = new Rng(SEED);
  const draw = { size: 0, from: 0 };
  const data = mem.data;
  const data32 = new Uint32Array(data.buffer, data.byteOffset, data.length >>> 2);
  const pool32 = new Uint32Array(pool.buffer);
  const stats: Stats = { packets: 0, signals: 0, sleeps: 0, slowPhaseSleeps: 0, wrapped: 0 };
  let seq = 0;
  const commit = () => {
    if (reader.commit()) {
      stats.signals++;
      spaceReady.signal();
    }
  };
  while (seq < PACKETS) {
    let p;
    while ((p = reader.peek()) !== null) {
      drawPacket(rng, draw);
      if (p.type !== PacketType.DataInband || p.transactionIdLow !== seq || p.transactionIdHigh !== 0 || p.flags !== (seq & 1)) {
        throw new Error(`packet ${seq}: got type ${p.type} id ${p.transactionId} flags ${p.flags}`);
      }
      if (p.payloadLength !== ((draw.size + 7) & ~7)) throw new Error(`packet ${seq}: ${p.payloadLength} bytes, expected ${draw.size} padded`);
      const at = p.payloadOffset;
      const words = draw.size >>> 2;
      for (let i = 0, a = at >>> 2, b = draw.from >>> 2; i < words; i++) {
        if (data32[a + i] !== pool32[b + i]) throw new Error(`packet ${seq}: word ${i} of ${draw.size} bytes differs`);
      }
      for (let i = words * 4; i < draw.size; i++) {
        if (data[at + i] !== pool[draw.from + i]) throw new Error(`packet ${seq}: byte ${i} of ${draw.size} differs`);
      }
      for (let i = draw.size; i < p.payloadLength; i++) {
        if (data[at + i] !== 0) throw new Error(`packet ${seq}: padding byte ${i} is not zero`);
      }
      reader.next();
      seq++;
      stats.packets++;
      // Keep read_index current so the writer keeps seeing space.
      if ((seq & 15) === 0) commit();
      if (seq >= SLOW_FROM && seq < SLOW_TO && seq % SLOW_EVERY === 0) {
        commit();
        Atomics.wait(nap, 0, 0, SLOW_NAP_MS);
      }
    }
    commit();
    if (seq >= PACKETS) break;
    // Drained: unmask, and sleep only if nothing slipped in meanwhile.
    if (reader.unmaskInterrupts()) {
      reader.maskInterrupts();
      continue;
    }
    stats.sleeps++;
    waitOrAbort(epoll, dataReady, control, 'reader');
    reader.maskInterrupts();
  }
  if (reader.peek() !== null) throw new Error('a packet beyond the last one');
  epoll.close();
  return stats;
}

if (!isMainThread) {
  const setup = workerData as Setup;
  try {
    const stats = setup.role === 'writer' ? runWriter(setup) : runReader(setup);
    parentPort!.postMessage({ stats });
  } catch (e) {
    parentPort!.postMessage({ error: String((e as Error)?.stack ?? e) });
  }
} else {
  // Imported here only: the workers run no tests.
  const { test } = await import('node:test');

  test('two threads: 2,000,000 random packets through one ring, no loss, corruption or reordering', { timeout: 120_000 }, async () => {
    const memory = GuestMemory.create(64 * PAGE_SIZE, 'ring-threads');
    const dataReady = EventFd.create();
    const spaceReady = EventFd.create();
    const control = new SharedArrayBuffer(4);
    // The ring's pages in a scrambled order, as a GPADL may list them.
    const pfns = [40, 3, 17, 9, 22, 5, 31, 12, 8, 27, 2, 60, 44, 19, 50, 36, 11];
    assert.equal(pfns.length, DATA_PAGES + 1);
    const init = memory.mapPages(pfns);
    initRingHeader(ringMemoryFromBuffer(init.buffer, 0, pfns.length * PAGE_SIZE, false));
    init.release();

    const started = performance.now();
    const run = (role: Setup['role']) => {
      const setup: Setup = { role, memory: memory.handle, pfns, dataReadyFd: dataReady.fd, spaceReadyFd: spaceReady.fd, control };
      const worker = new Worker(new URL(import.meta.url), { workerData: setup });
      return new Promise<Stats>((resolve, reject) => {
        worker.once('message', (m: { stats?: Stats; error?: string }) => {
          if (m.error !== undefined) {
            // Wake the other side so it exits instead of waiting out its timeout.
            Atomics.store(new Int32Array(control), ABORT, 1);
            dataReady.signal();
            spaceReady.signal();
            reject(new Error(`${role}: ${m.error}`));
          } else resolve(m.stats!);
        });
        worker.once('error', reject);
      });
    };
    try {
      const [writer, reader] = await Promise.all([run('writer'), run('reader')]);
      const seconds = (performance.now() - started) / 1000;
      console.log(
        `# ${PACKETS} packets in ${seconds.toFixed(2)} s (${Math.round(PACKETS / seconds / 1000)} k/s); ` +
          `writer: ${writer.signals} signals, ${writer.sleeps} sleeps (${writer.slowPhaseSleeps} in the slow phase), ${writer.wrapped} staged wraps; ` +
          `reader: ${reader.signals} signals, ${reader.sleeps} sleeps`,
      );
      assert.equal(writer.packets, PACKETS);
      assert.equal(reader.packets, PACKETS);
      // The slow phase made the writer block on pending_send_sz, and only the reader's
      // signals (the eventfd it waits on) woke it: a lost wake-up would have timed out.
      assert.ok(writer.slowPhaseSleeps > 0, 'the writer blocked while the reader was slow');
      assert.ok(reader.signals >= writer.sleeps, "every writer sleep ended with a reader signal");
      assert.ok(writer.wrapped > 0, 'single-mapped zero-copy writes crossed the seam');
    } finally {
      dataReady.close();
      spaceReady.close();
      memory.close();
    }
  });
}
