// The VMBus ring in one thread: packets round-trip byte-exact across wraparound on
// single, double and mixed mappings; signals follow the empty -> non-empty rule exactly;
// pending_send_sz wakes the writer exactly at the crossing; hostile indices and
// descriptors end in RingCorruptError, never in another exception or a stray access.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import fc from 'fast-check';
import { GuestMemory, PageMapping } from '../src/memory/guest-memory.js';
import { PAGE_SIZE } from '../src/memory/page.js';
import { PACKET_FLAG_COMPLETION_REQUESTED, PacketType } from '../src/vmbus/packet.js';
import { RingCorruptError } from '../src/vmbus/ring/ring-errors.js';
import { initRingHeader, RING_HEADER_SIZE, ringMemoryFromBuffer, RingMemory, RingWord } from '../src/vmbus/ring/ring-memory.js';
import { RingReader } from '../src/vmbus/ring/ring-reader.js';
import { ringPacketBytes, RingWriter, WriteResult } from '../src/vmbus/ring/ring-writer.js';
import { RingWriteBatch } from '../src/vmbus/ring/ring-write-batch.js';

const guest = GuestMemory.create(128 * PAGE_SIZE, 'ring-test');
after(() => guest.close());

type Layout = 'shared-single' | 'memfd-double' | 'memfd-mixed';

/** One ring as the writer and the reader see it (possibly two different mappings of the same pages). */
interface TestRing {
  writerMem: RingMemory;
  readerMem: RingMemory;
  size: number;
  release(): void;
}

function makeRing(layout: Layout, dataPages: number, pfnOrder: readonly number[] = []): TestRing {
  const ringBytes = (dataPages + 1) * PAGE_SIZE;
  if (layout === 'shared-single') {
    const mem = ringMemoryFromBuffer(new SharedArrayBuffer(ringBytes), 0, ringBytes, false);
    initRingHeader(mem);
    return { writerMem: mem, readerMem: mem, size: mem.dataSize, release() {} };
  }
  // Guest pages in a scrambled order, as a GPADL may list them.
  const pfns = pfnOrder.length === dataPages + 1 ? [...pfnOrder] : Array.from({ length: dataPages + 1 }, (_, i) => i);
  const mappings: PageMapping[] = [];
  const double = guest.mapPages(pfns, 1);
  mappings.push(double);
  const readerMem = ringMemoryFromBuffer(double.buffer, 0, ringBytes, true);
  let writerMem = readerMem;
  if (layout === 'memfd-mixed') {
    // The writer sees the same pages through a single mapping: it must split at the seam.
    const single = guest.mapPages(pfns);
    mappings.push(single);
    writerMem = ringMemoryFromBuffer(single.buffer, 0, ringBytes, false);
  }
  initRingHeader(readerMem);
  return {
    writerMem,
    readerMem,
    size: readerMem.dataSize,
    release() {
      for (const m of mappings) m.release();
    },
  };
}

/** Deterministic payload bytes for packet `seed`. */
function fillPattern(target: Uint8Array, seed: number): void {
  let x = (seed * 2654435761) >>> 0;
  for (let i = 0; i < target.length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    target[i] = x >>> 24;
  }
}

function pattern(length: number, seed: number): Uint8Array {
  const b = new Uint8Array(length);
  fillPattern(b, seed);
  return b;
}

/** Bytes [offset, offset + length) of a ring's data area, across the seam if needed. */
function ringBytesAt(mem: RingMemory, offset: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = mem.data[(offset + i) % mem.dataSize]!;
  return out;
}

function u32At(mem: RingMemory, offset: number): number {
  const b = ringBytesAt(mem, offset, 4);
  return (b[0]! | (b[1]! << 8) | (b[2]! << 16) | (b[3]! << 24)) >>> 0;
}

/** Puts both indices at `at` (a multiple of 8) so a run starts anywhere in the ring. */
function startAt(mem: RingMemory, at: number): void {
  Atomics.store(mem.header, RingWord.WriteIndex, at);
  Atomics.store(mem.header, RingWord.ReadIndex, at);
}

interface Sent {
  type: number;
  flags: number;
  id: bigint;
  header: Uint8Array;
  payload: Uint8Array;
}

/** Reads one packet and checks it against what was sent, the padding and the trailer. */
function expectPacket(reader: RingReader, mem: RingMemory, sent: Sent): void {
  const p = reader.peek();
  assert.ok(p, 'a packet is available');
  assert.equal(p.type, sent.type);
  assert.equal(p.flags, sent.flags);
  assert.equal(p.transactionId, sent.id);
  assert.equal(p.headerLength, sent.header.length);
  const padded = (sent.payload.length + 7) & ~7;
  assert.equal(p.payloadLength, padded);
  assert.equal(p.totalBytes, ringPacketBytes(sent.header.length + sent.payload.length));
  const header = new Uint8Array(p.headerLength);
  assert.equal(reader.copyHeader(header), header.length);
  assert.deepEqual(header, sent.header);
  const payload = new Uint8Array(p.payloadLength);
  assert.equal(reader.copyPayload(payload), payload.length);
  assert.deepEqual(payload.subarray(0, sent.payload.length), sent.payload);
  assert.ok(payload.subarray(sent.payload.length).every((b) => b === 0), 'padding is zero');
  if (mem.doubleMapped) {
    // Zero-copy view: contiguous even across the end of the data area.
    assert.deepEqual(mem.data.subarray(p.payloadOffset, p.payloadOffset + sent.payload.length), sent.payload);
  }
  // Trailer: lower half 0, upper half the write index the packet started at.
  const trailer = p.start + p.len8 * 8;
  assert.equal(u32At(mem, trailer), 0);
  assert.equal(u32At(mem, trailer + 4), p.start);
  reader.next();
}

const layouts: Layout[] = ['shared-single', 'memfd-double', 'memfd-mixed'];

const opArb = (maxBody: number) =>
  fc.oneof(
    {
      weight: 3,
      arbitrary: fc.record({
        kind: fc.constant('write' as const),
        header8: fc.integer({ min: 0, max: 4 }),
        payload: fc.oneof(fc.integer({ min: 0, max: 64 }), fc.integer({ min: 0, max: maxBody }), fc.integer({ min: Math.max(0, maxBody - 40), max: maxBody })),
        zeroCopy: fc.boolean(),
        completion: fc.boolean(),
        id: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
      }),
    },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('read' as const), count: fc.integer({ min: 1, max: 4 }) }) },
  );

describe('round trip', () => {
  for (const layout of layouts) {
    test(`random packets across wraparound (${layout})`, () => {
      fc.assert(
        fc.property(
          fc.integer({ min: 1, max: 6 }).chain((dataPages) =>
            fc.record({
              dataPages: fc.constant(dataPages),
              order: fc.shuffledSubarray(Array.from({ length: 64 }, (_, i) => i), { minLength: dataPages + 1, maxLength: dataPages + 1 }),
              start: fc.integer({ min: 0, max: (dataPages * PAGE_SIZE) / 8 - 1 }),
              ops: fc.array(opArb(dataPages * PAGE_SIZE - 64), { minLength: 1, maxLength: 60 }),
            }),
          ),
          ({ dataPages, order, start, ops }) => {
            const ring = makeRing(layout, dataPages, order);
            try {
              startAt(ring.readerMem, start * 8);
              const writer = new RingWriter(ring.writerMem);
              const reader = new RingReader(ring.readerMem);
              const queue: Sent[] = [];
              let inFlight = 0; // bytes the writer cannot reuse: written, read_index not yet past them
              let consumed = 0; // read locally, not yet committed
              let seq = 0;
              const drainOne = () => {
                const sent = queue.shift()!;
                expectPacket(reader, ring.readerMem, sent);
                consumed += ringPacketBytes(sent.header.length + sent.payload.length);
              };
              const commit = () => {
                reader.commit();
                inFlight -= consumed;
                consumed = 0;
              };
              for (const op of ops) {
                if (op.kind === 'read') {
                  for (let i = 0; i < op.count && queue.length > 0; i++) drainOne();
                  commit();
                  continue;
                }
                const header = pattern(op.header8 * 8, ++seq);
                const payloadLength = Math.max(0, Math.min(op.payload, ring.size - 32 - header.length));
                const payload = pattern(payloadLength, ++seq);
                const sent: Sent = {
                  type: op.header8 > 0 ? PacketType.DataUsingGpaDirect : PacketType.DataInband,
                  flags: op.completion ? PACKET_FLAG_COMPLETION_REQUESTED : 0,
                  id: op.id,
                  header,
                  payload,
                };
                const bytes = ringPacketBytes(header.length + payload.length);
                const fits = ring.size - inFlight > bytes;
                assert.equal(writer.canWrite(bytes), fits);
                let result: WriteResult;
                if (op.zeroCopy) {
                  const at = writer.reserve(sent.type, sent.flags, sent.id, header.length + payload.length, header.length);
                  assert.equal(at >= 0, fits);
                  if (at < 0) continue;
                  writer.target.set(header, at);
                  writer.target.set(payload, at + header.length);
                  result = writer.commit();
                } else {
                  result = writer.tryWrite(sent.type, sent.flags, sent.id, header.length ? header : null, payload.length ? payload : null);
                }
                assert.equal(result !== WriteResult.FULL, fits, `fits=${fits} free=${ring.size - inFlight} packet=${bytes}`);
                if (result === WriteResult.FULL) continue;
                queue.push(sent);
                inFlight += bytes;
                assert.equal(writer.free(), ring.size - inFlight);
              }
              while (queue.length > 0) drainOne();
              assert.equal(reader.peek(), null);
              commit();
              assert.equal(writer.free(), ring.size);
              assert.equal(Atomics.load(ring.readerMem.header, RingWord.ReadIndex), Atomics.load(ring.readerMem.header, RingWord.WriteIndex));
            } finally {
              ring.release();
            }
          },
        ),
        { numRuns: 150 },
      );
    });
  }

  test('number and bigint transaction ids encode the same u64', () => {
    const ring = makeRing('shared-single', 1);
    const writer = new RingWriter(ring.writerMem);
    const reader = new RingReader(ring.readerMem);
    for (const id of [0, 1, 0xffff_ffff, 0x1_0000_0000, Number.MAX_SAFE_INTEGER]) {
      assert.notEqual(writer.tryWrite(PacketType.DataInband, 0, id, null, null), WriteResult.FULL);
      const p = reader.peek()!;
      assert.equal(p.transactionId, BigInt(id));
      assert.equal(p.transactionIdLow, id >>> 0);
      assert.equal(p.transactionIdHigh, Math.floor(id / 2 ** 32));
      assert.equal(p.payloadLength, 0);
      reader.next();
    }
    writer.tryWrite(PacketType.Completion, 0, (1n << 64n) - 3n, null, null);
    assert.equal(reader.peek()!.transactionId, (1n << 64n) - 3n);
  });

  test('the largest packet fills all but 8 bytes; one byte more can never fit', () => {
    const ring = makeRing('shared-single', 2);
    const writer = new RingWriter(ring.writerMem);
    const reader = new RingReader(ring.readerMem);
    const max = ring.size - 8 - 8 - 16; // size - trailer - the 8 bytes that keep full != empty - descriptor
    assert.equal(writer.packetBytes(max), ring.size - 8);
    assert.equal(writer.tryWrite(PacketType.DataInband, 0, 1n, null, pattern(max, 1)), WriteResult.WRITTEN_SIGNAL);
    assert.equal(writer.free(), 8);
    assert.equal(writer.tryWrite(PacketType.DataInband, 0, 2n, null, null), WriteResult.FULL);
    expectPacket(reader, ring.readerMem, { type: PacketType.DataInband, flags: 0, id: 1n, header: new Uint8Array(0), payload: pattern(max, 1) });
    reader.commit();
    assert.throws(() => writer.tryWrite(PacketType.DataInband, 0, 3n, null, new Uint8Array(max + 1)), RangeError);
    assert.throws(() => writer.tryWrite(PacketType.DataInband, 0, 3n, new Uint8Array(4), null), RangeError);
  });

  test('single-mapped reserve across the seam stages the body and copies it in two pieces', () => {
    const ring = makeRing('shared-single', 1);
    startAt(ring.readerMem, ring.size - 24);
    const writer = new RingWriter(ring.writerMem);
    const reader = new RingReader(ring.readerMem);
    const payload = pattern(100, 7);
    const at = writer.reserve(PacketType.DataInband, 0, 9n, payload.length);
    assert.notEqual(writer.target, ring.writerMem.data, 'scratch buffer');
    writer.target.set(payload, at);
    assert.equal(writer.commit(), WriteResult.WRITTEN_SIGNAL);
    assert.equal(writer.target, ring.writerMem.data);
    const p = reader.peek()!;
    assert.equal(p.contiguous, false);
    expectPacket(reader, ring.readerMem, { type: PacketType.DataInband, flags: 0, id: 9n, header: new Uint8Array(0), payload });
  });

  test('ringMemoryFromBuffer checks its arguments; initRingHeader sets an empty ring with the flow-control feature', () => {
    assert.throws(() => ringMemoryFromBuffer(new ArrayBuffer(8192), 4, 8192, false), RangeError);
    assert.throws(() => ringMemoryFromBuffer(new ArrayBuffer(8192), 0, 4096, false), RangeError);
    assert.throws(() => ringMemoryFromBuffer(new ArrayBuffer(8192), 0, 8192, true), RangeError);
    const buffer = new ArrayBuffer(3 * PAGE_SIZE);
    const mem = ringMemoryFromBuffer(buffer, 0, 3 * PAGE_SIZE, false);
    assert.equal(mem.dataSize, 2 * PAGE_SIZE);
    assert.equal(mem.data.byteOffset, RING_HEADER_SIZE);
    mem.header.fill(-1);
    initRingHeader(mem);
    assert.deepEqual([...mem.header.subarray(0, 4)], [0, 0, 0, 0]);
    assert.equal(mem.header[RingWord.FeatureBits], 1);
  });
});

describe('signalling', () => {
  const small = new Uint8Array(40);

  test('WRITTEN_SIGNAL exactly on empty -> non-empty with the mask clear', () => {
    const ring = makeRing('memfd-double', 1);
    try {
      const writer = new RingWriter(ring.writerMem);
      const reader = new RingReader(ring.readerMem);
      const write = () => writer.tryWrite(PacketType.DataInband, 0, 1n, null, small);
      const drain = () => {
        let n = 0;
        while (reader.peek()) {
          reader.next();
          n++;
        }
        reader.commit();
        return n;
      };
      assert.equal(write(), WriteResult.WRITTEN_SIGNAL);
      assert.equal(write(), WriteResult.WRITTEN);
      assert.equal(write(), WriteResult.WRITTEN);
      assert.equal(drain(), 3);
      assert.equal(write(), WriteResult.WRITTEN_SIGNAL);
      // Reading without committing: the writer still sees a non-empty ring.
      reader.peek();
      reader.next();
      assert.equal(write(), WriteResult.WRITTEN);
      assert.equal(drain(), 1);
      // Masked while draining: no signal, and unmask reports the packet that slipped in.
      reader.maskInterrupts();
      assert.equal(write(), WriteResult.WRITTEN);
      assert.equal(reader.unmaskInterrupts(), true);
      assert.equal(drain(), 1);
      assert.equal(reader.unmaskInterrupts(), false);
      assert.equal(write(), WriteResult.WRITTEN_SIGNAL);
      assert.equal(drain(), 1);
      // A batch signals once, against the index from before the batch.
      writer.beginBatch();
      for (let i = 0; i < 10; i++) assert.equal(write(), WriteResult.WRITTEN);
      assert.equal(reader.peek(), null, 'nothing published inside a batch');
      assert.equal(writer.endBatch(), WriteResult.WRITTEN_SIGNAL);
      writer.beginBatch();
      write();
      assert.equal(writer.endBatch(), WriteResult.WRITTEN, 'ring was not empty before this batch');
      assert.equal(drain(), 11);
      writer.beginBatch();
      assert.equal(writer.endBatch(), WriteResult.WRITTEN, 'empty batch');
      // Zero-copy writes follow the same rule.
      const at = writer.reserve(PacketType.DataInband, 0, 2n, 8);
      writer.target.fill(1, at, at + 8);
      assert.equal(writer.commit(), WriteResult.WRITTEN_SIGNAL);
    } finally {
      ring.release();
    }
  });

  test('random schedules: signal count matches the model and no wake-up is lost', () => {
    type Op =
      | { kind: 'write'; size: number }
      | { kind: 'read'; count: number }
      | { kind: 'mask' }
      | { kind: 'unmask' }
      | { kind: 'batch'; size: number; count: number };
    const op: fc.Arbitrary<Op> = fc.oneof(
      fc.record({ kind: fc.constant('write' as const), size: fc.integer({ min: 0, max: 900 }) }),
      fc.record({ kind: fc.constant('read' as const), count: fc.integer({ min: 1, max: 5 }) }),
      fc.record({ kind: fc.constant('mask' as const) }),
      fc.record({ kind: fc.constant('unmask' as const) }),
      fc.record({ kind: fc.constant('batch' as const), size: fc.integer({ min: 0, max: 300 }), count: fc.integer({ min: 0, max: 6 }) }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 80 }), fc.integer({ min: 0, max: 511 }), (ops, start) => {
        const ring = makeRing('shared-single', 1);
        startAt(ring.readerMem, start * 8);
        const writer = new RingWriter(ring.writerMem);
        const reader = new RingReader(ring.readerMem);
        // The model: the indices the other side sees, and the mask.
        let published = start * 8;
        let committedRead = start * 8;
        let masked = false;
        const sizes: number[] = [];
        let unread = 0; // packets written, not yet read locally
        let signals = 0;
        let expectedSignals = 0;
        // Liveness: a reader that sleeps whenever it is unmasked and sees nothing must be woken.
        let asleep = false;
        const onResult = (r: WriteResult, wrote: boolean, old: number) => {
          if (!wrote) return;
          if (!masked && committedRead === old) expectedSignals++;
          if (r === WriteResult.WRITTEN_SIGNAL) {
            signals++;
            asleep = false;
          }
        };
        const writeOne = (size: number): boolean => {
          const before = published;
          const r = writer.tryWrite(PacketType.DataInband, 0, 0n, null, size ? new Uint8Array(size) : null);
          if (r === WriteResult.FULL) return false;
          sizes.push(size);
          unread++;
          published = Atomics.load(ring.readerMem.header, RingWord.WriteIndex);
          onResult(r, true, before);
          return true;
        };
        for (const o of ops) {
          switch (o.kind) {
            case 'write':
              writeOne(o.size);
              break;
            case 'batch': {
              const before = published;
              writer.beginBatch();
              let n = 0;
              for (let i = 0; i < o.count; i++) {
                if (writer.tryWrite(PacketType.DataInband, 0, 0n, null, o.size ? new Uint8Array(o.size) : null) === WriteResult.FULL) break;
                sizes.push(o.size);
                unread++;
                n++;
              }
              const r = writer.endBatch();
              published = Atomics.load(ring.readerMem.header, RingWord.WriteIndex);
              assert.equal(r === WriteResult.WRITTEN_SIGNAL, n > 0 && !masked && committedRead === before);
              onResult(r, n > 0, before);
              break;
            }
            case 'read':
              for (let i = 0; i < o.count && unread > 0; i++) {
                assert.ok(reader.peek());
                reader.next();
                unread--;
              }
              reader.commit();
              committedRead = Atomics.load(ring.readerMem.header, RingWord.ReadIndex);
              asleep = unread === 0 && !masked;
              break;
            case 'mask':
              reader.maskInterrupts();
              masked = true;
              asleep = false;
              break;
            case 'unmask': {
              const present = reader.unmaskInterrupts();
              masked = false;
              assert.equal(present, unread > 0);
              if (!present) asleep = true;
              break;
            }
          }
          // A reader asleep with data in the ring and no signal coming is a lost wake-up.
          if (asleep) assert.equal(unread, 0, 'reader asleep with data pending and no signal');
        }
        assert.equal(signals, expectedSignals);
      }),
      { numRuns: 300 },
    );
  });
});

/** Writes until FULL; bounded so a broken fullness check fails instead of hanging. */
function fillUntilFull(writer: RingWriter, payload: Uint8Array): number {
  for (let n = 0; n < 1000; n++) {
    if (writer.tryWrite(PacketType.DataInband, 0, 0n, null, payload) === WriteResult.FULL) return n;
  }
  throw new Error('the ring never reported FULL');
}

describe('device write batches', () => {
  const small = new Uint8Array(40);
  const turnEnds = () => new Promise<void>((resolve) => setImmediate(resolve));
  /** Reads what is published, without committing: the writer still sees a non-empty ring. */
  const readPublished = (reader: RingReader) => {
    let n = 0;
    while (reader.peek()) {
      reader.next();
      n++;
    }
    return n;
  };

  test('publishEvery: every Nth write publishes (one signal for the first piece), the rest goes out when the turn ends', async () => {
    const ring = makeRing('memfd-double', 4);
    try {
      const writer = new RingWriter(ring.writerMem);
      const reader = new RingReader(ring.readerMem);
      let signals = 0;
      let publishes = 0;
      const batch = new RingWriteBatch(() => signals++, (e) => assert.fail(String(e)), () => publishes++, 4);
      const visible = () => readPublished(reader);
      for (let i = 1; i <= 10; i++) {
        batch.begin(writer);
        assert.equal(writer.tryWrite(PacketType.DataInband, 0, BigInt(i), null, small), WriteResult.WRITTEN);
        batch.wrote();
        if (i === 3) assert.equal(visible(), 0, 'nothing before the first piece is complete');
        if (i === 4) assert.equal(visible(), 4, 'the first four are published at the fourth write');
        if (i === 8) assert.equal(visible(), 4, 'the next four at the eighth');
      }
      assert.equal(visible(), 0, 'the last two wait for the end of the turn');
      assert.equal(signals, 1, 'only the first piece found the ring empty');
      await turnEnds();
      assert.equal(visible(), 2);
      assert.equal(publishes, 3);
      reader.commit();
    } finally {
      ring.release();
    }
  });

  test('publishEvery 0: one publish per turn whatever the count', async () => {
    const ring = makeRing('memfd-double', 4);
    try {
      const writer = new RingWriter(ring.writerMem);
      const reader = new RingReader(ring.readerMem);
      let signals = 0;
      const batch = new RingWriteBatch(() => signals++, (e) => assert.fail(String(e)));
      for (let i = 0; i < 20; i++) {
        batch.begin(writer);
        writer.tryWrite(PacketType.DataInband, 0, 1n, null, small);
        batch.wrote();
      }
      assert.equal(reader.peek(), null);
      await turnEnds();
      assert.equal(readPublished(reader), 20);
      assert.equal(signals, 1);
    } finally {
      ring.release();
    }
  });
});

describe('flow control', () => {
  test('full ring: FULL, then the reader commit that frees enough space is the one that asks for a signal', () => {
    const ring = makeRing('memfd-double', 2);
    try {
      const writer = new RingWriter(ring.writerMem);
      const reader = new RingReader(ring.readerMem);
      const payload = new Uint8Array(1000);
      const bytes = writer.packetBytes(payload.length); // 1024
      let written = 0;
      while (written < 100 && writer.tryWrite(PacketType.DataInband, 0, BigInt(written), null, payload) !== WriteResult.FULL) written++;
      assert.equal(written, 7, '8 KiB ring holds 7 packets of 1024 bytes (never full)');
      assert.equal(writer.free(), ring.size - 7 * bytes);
      // Want room for three packets: needs free > 3 * 1024, i.e. three packets read.
      const want = 3 * bytes;
      assert.equal(writer.setPendingSend(want), false);
      assert.equal(ring.writerMem.header[RingWord.PendingSendSize], want);
      const signalledAt: number[] = [];
      for (let i = 0; i < 7; i++) {
        reader.peek();
        reader.next();
        if (reader.commit()) signalledAt.push(i);
      }
      // free after k reads = 1024 + 1024 k: > 3072 first at k = 3 (the third read, index 2).
      assert.deepEqual(signalledAt, [2]);
      assert.equal(writer.setPendingSend(want), true, 'space already there: do not sleep');
      writer.clearPendingSend();
      assert.equal(ring.writerMem.header[RingWord.PendingSendSize], 0);
      assert.notEqual(writer.tryWrite(PacketType.DataInband, 0, 0n, null, payload), WriteResult.FULL);
    } finally {
      ring.release();
    }
  });

  test('no signal without the feature bit, nor when pending_send_sz is 0', () => {
    const ring = makeRing('shared-single', 1);
    const writer = new RingWriter(ring.writerMem);
    const reader = new RingReader(ring.readerMem);
    const payload = new Uint8Array(500);
    fillUntilFull(writer, payload);
    reader.peek();
    reader.next();
    assert.equal(reader.commit(), false, 'pending_send_sz is 0');
    writer.setPendingSend(writer.packetBytes(payload.length));
    Atomics.store(ring.readerMem.header, RingWord.FeatureBits, 0);
    reader.peek();
    reader.next();
    assert.equal(reader.commit(), false, 'feature bit clear');
  });

  test('random fill levels and pending sizes: commit returns true iff free crosses pending_send_sz', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: 700 }), { minLength: 1, maxLength: 40 }),
        fc.integer({ min: 1, max: 4095 }),
        fc.array(fc.integer({ min: 1, max: 3 }), { maxLength: 40 }),
        fc.integer({ min: 0, max: 511 }),
        (sizes, pending, readCounts, start) => {
          const ring = makeRing('shared-single', 1);
          startAt(ring.readerMem, start * 8);
          const writer = new RingWriter(ring.writerMem);
          const reader = new RingReader(ring.readerMem);
          const inRing: number[] = [];
          for (const s of sizes) {
            if (writer.tryWrite(PacketType.DataInband, 0, 0n, null, s ? new Uint8Array(s) : null) === WriteResult.FULL) break;
            inRing.push(writer.packetBytes(s));
          }
          const used = () => inRing.reduce((a, b) => a + b, 0);
          assert.equal(writer.setPendingSend(pending), ring.size - used() > pending);
          for (const count of readCounts) {
            const before = ring.size - used();
            for (let i = 0; i < count && inRing.length > 0; i++) {
              reader.peek();
              reader.next();
              inRing.shift();
            }
            const afterFree = ring.size - used();
            const crossed = before !== afterFree && before <= pending && afterFree > pending;
            assert.equal(reader.commit(), crossed);
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  test('waitForSpace sleeps only while the ring is still too full', () => {
    const ring = makeRing('shared-single', 1);
    const writer = new RingWriter(ring.writerMem);
    const reader = new RingReader(ring.readerMem);
    const payload = new Uint8Array(1000);
    fillUntilFull(writer, payload);
    let sleeps = 0;
    writer.waitForSpace(writer.packetBytes(payload.length), () => {
      sleeps++;
      // The "other thread" frees one packet and signals.
      reader.peek();
      reader.next();
      assert.equal(reader.commit(), true);
    });
    assert.equal(sleeps, 1);
    assert.equal(ring.writerMem.header[RingWord.PendingSendSize], 0);
    assert.notEqual(writer.tryWrite(PacketType.DataInband, 0, 0n, null, payload), WriteResult.FULL);
  });
});

describe('hostile peer', () => {
  /** Runs fn; anything thrown must be a RingCorruptError. Returns whether it threw. */
  function corruptOrOk(fn: () => void): boolean {
    try {
      fn();
      return false;
    } catch (e) {
      if (e instanceof RingCorruptError) return true;
      throw e;
    }
  }

  test('garbage indices and descriptors: RingCorruptError or valid packets inside the data area', () => {
    let accepted = 0;
    let rejected = 0;
    fc.assert(
      fc.property(
        fc.boolean(),
        fc.oneof(fc.integer(), fc.integer({ min: 0, max: 8191 }), fc.integer({ min: 0, max: 1023 }).map((x) => x * 8)),
        fc.oneof(fc.integer(), fc.integer({ min: 0, max: 1023 }).map((x) => x * 8)),
        fc.uint8Array({ minLength: 64, maxLength: 64 }),
        fc.array(fc.tuple(fc.integer({ min: 0, max: 8191 }), fc.integer({ min: 0, max: 255 })), { maxLength: 64 }),
        fc.integer(),
        fc.option(fc.tuple(fc.integer({ min: 0, max: 4 }), fc.integer({ min: 0, max: 40 }))),
        (double, write, read, noise, pokes, pending, plausible) => {
          const ring = makeRing(double ? 'memfd-double' : 'shared-single', 2);
          try {
            const mem = ring.readerMem;
            // Garbage descriptors: random bytes around the read position and anywhere else.
            const r = ((read % mem.dataSize) + mem.dataSize) % mem.dataSize & ~7;
            for (let i = 0; i < noise.length; i++) mem.data[(r + i) % mem.dataSize] = noise[i]!;
            for (const [at, v] of pokes) mem.data[at % mem.dataSize] = v;
            if (plausible !== null) {
              // A descriptor that is nearly right, so some packets get accepted.
              const [extra, body] = plausible;
              const offset8 = 2 + extra;
              const words = new Uint32Array(mem.data.buffer, mem.data.byteOffset, mem.dataSize / 4);
              words[r / 4] = PacketType.DataInband | (offset8 << 16);
              words[((r + 4) % mem.dataSize) / 4] = offset8 + body;
            }
            Atomics.store(mem.header, RingWord.WriteIndex, write);
            Atomics.store(mem.header, RingWord.ReadIndex, read);
            Atomics.store(mem.header, RingWord.PendingSendSize, pending);
            const threw = corruptOrOk(() => {
              const reader = new RingReader(mem, { maxPacketBytes: 4096 });
              for (let step = 0; step < 20; step++) {
                const p = reader.peek();
                if (p === null) break;
                // Whatever was accepted lies inside the data area and inside the published bytes.
                assert.ok(p.len8 * 8 <= 4096);
                assert.ok(p.offset8 >= 2 && p.offset8 <= p.len8);
                assert.ok(p.start >= 0 && p.start < mem.dataSize && p.start % 8 === 0);
                const limit = mem.doubleMapped ? mem.data.length : mem.dataSize;
                for (const [o, l] of [[p.headerOffset, p.headerLength], [p.payloadOffset, p.payloadLength]] as const) {
                  assert.ok(o >= 0 && l >= 0 && o < limit);
                  if (mem.doubleMapped || p.contiguous) assert.ok(o + l <= limit);
                }
                const scratch = new Uint8Array(p.payloadLength);
                assert.equal(reader.copyPayload(scratch), p.payloadLength);
                reader.next();
                reader.commit();
                accepted++;
              }
              reader.unmaskInterrupts();
              reader.available();
            });
            if (threw) rejected++;
            // The writer against a hostile read_index. Its views cover exactly the data area,
            // so it cannot reach outside it; check it leaves the other side's words alone.
            const guard = ring.readerMem.header.slice();
            corruptOrOk(() => {
              const writer = new RingWriter(ring.writerMem);
              for (let i = 0; i < 10; i++) {
                writer.tryWrite(PacketType.DataInband, 0, 0n, null, new Uint8Array(i * 100));
                Atomics.store(mem.header, RingWord.ReadIndex, read + i * 8);
              }
            });
            const now = ring.readerMem.header;
            for (let i = 0; i < guard.length; i++) {
              if (i === RingWord.WriteIndex || i === RingWord.ReadIndex) continue;
              assert.equal(now[i], guard[i], `header word ${i} untouched`);
            }
          } finally {
            ring.release();
          }
        },
      ),
      { numRuns: 400 },
    );
    assert.ok(accepted > 0 && rejected > 0, `both outcomes exercised (${accepted} packets accepted, ${rejected} runs rejected)`);
  });

  test('specific corruptions are reported', () => {
    const ring = makeRing('shared-single', 1);
    const mem = ring.readerMem;
    const words = new Uint32Array(mem.data.buffer, mem.data.byteOffset, mem.dataSize / 4);
    const reader = () => new RingReader(mem, { maxPacketBytes: 1024 });
    const cases: [string, () => void][] = [
      ['write_index not a multiple of 8', () => Atomics.store(mem.header, RingWord.WriteIndex, 12)],
      ['write_index beyond the data', () => Atomics.store(mem.header, RingWord.WriteIndex, mem.dataSize)],
      ['write_index negative as i32', () => Atomics.store(mem.header, RingWord.WriteIndex, -8)],
      ['fewer bytes than a packet', () => Atomics.store(mem.header, RingWord.WriteIndex, 16)],
      ['offset8 < 2', () => { words[0] = 6 | (1 << 16); words[1] = 4; }],
      ['offset8 > len8', () => { words[0] = 6 | (5 << 16); words[1] = 4; }],
      ['len8 past the published bytes', () => { words[0] = 6 | (2 << 16); words[1] = 100; }],
      ['trailer past the published bytes', () => { words[0] = 6 | (2 << 16); words[1] = 8; }],
      ['len8 over the maximum packet size', () => { Atomics.store(mem.header, RingWord.WriteIndex, 2048); words[0] = 6 | (2 << 16); words[1] = 200; }],
    ];
    for (const [name, corrupt] of cases) {
      initRingHeader(mem);
      Atomics.store(mem.header, RingWord.WriteIndex, 64);
      words[0] = 6 | (2 << 16);
      words[1] = 7;
      corrupt();
      assert.throws(() => reader().peek(), RingCorruptError, name);
    }
    initRingHeader(mem);
    Atomics.store(mem.header, RingWord.ReadIndex, 4);
    assert.throws(() => new RingReader(mem), RingCorruptError);
    assert.throws(() => new RingWriter(mem), RingCorruptError);
    initRingHeader(mem);
    const writer = new RingWriter(mem);
    assert.equal(writer.tryWrite(PacketType.DataInband, 0, 0n, null, new Uint8Array(mem.dataSize - 64)), WriteResult.WRITTEN_SIGNAL);
    Atomics.store(mem.header, RingWord.ReadIndex, mem.dataSize + 8);
    assert.throws(() => writer.free(), RingCorruptError);
    // The cached read_index says "full": the reload finds garbage.
    assert.throws(() => writer.tryWrite(PacketType.DataInband, 0, 0n, null, new Uint8Array(100)), RingCorruptError);
  });
});
