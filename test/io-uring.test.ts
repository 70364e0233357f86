// io_uring and the FileIo engines: vectored reads and writes between guest RAM (a memfd
// mapping) and a temp file, many in flight, fsync and fallocate, SQ-full back-pressure,
// errors as -errno results, and UringFileIo/SyncFileIo agreeing with the file's bytes.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { SyncFileIo, UringFileIo, type FileIo, type FileIoDone } from '../src/backends/block/file-io.js';
import { GuestMemory } from '../src/memory/guest-memory.js';
import { Poller } from '../src/sys/epoll.js';
import { Errno } from '../src/sys/errors.js';
import { closeFile, O_RDONLY, O_RDWR, openFile } from '../src/sys/file.js';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, IoUring, RWF_DSYNC, type IoUringSink } from '../src/sys/io-uring.js';
import { IovecList } from '../src/sys/iovec.js';

const MiB = 1024 * 1024;
/** Completions after which a reissuing loop must have let a 20 ms timer run. */
const STARVED = 200_000;
let dir = '';
let memory: GuestMemory;
let base = 0;

before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'enlighten-uring-'));
  memory = GuestMemory.create(16 * MiB);
  base = Number(memory.base);
});

after(() => {
  fs.rmSync(dir, { recursive: true, force: true });
  memory.close();
});

function tempFile(name: string, bytes: number | Buffer): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, typeof bytes === 'number' ? Buffer.alloc(bytes) : bytes);
  return file;
}

function ringFds(): number {
  let n = 0;
  for (const name of fs.readdirSync('/proc/self/fd')) {
    try {
      if (fs.readlinkSync(`/proc/self/fd/${name}`) === 'anon_inode:[io_uring]') n++;
    } catch {
      // gone already
    }
  }
  return n;
}

/** Collects completions by user data. */
class Collector implements IoUringSink, FileIoDone {
  readonly results = new Map<number, number>();
  ioDone(userData: number, result: number): void {
    assert.ok(!this.results.has(userData), `user data ${userData} completed twice`);
    this.results.set(userData, result);
  }
  fileIoDone(token: number, result: number): void {
    this.ioDone(token, result);
  }
}

function waitAll(ring: IoUring, sink: Collector, count: number): void {
  while (sink.results.size < count) {
    ring.wait(1);
    ring.reap(sink);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function until(condition: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(1);
  }
}

describe('IoUring', () => {
  test('create maps the rings, registers an eventfd, and close releases the ring fd', () => {
    const before = ringFds();
    const ring = IoUring.create(8);
    assert.equal(ring.sqEntries, 8);
    assert.equal(ring.cqEntries, 16);
    assert.equal(ringFds(), before + 1);
    ring.close();
    ring.close(); // idempotent
    assert.equal(ringFds(), before);
  });

  test('entries are validated', () => {
    assert.throws(() => IoUring.create(0), RangeError);
    assert.throws(() => IoUring.create(1.5), RangeError);
    assert.throws(() => IoUring.create(1 << 20), RangeError);
  });

  test('writev from guest RAM, then readv into other guest pages, round-trips the bytes', () => {
    const file = tempFile('rw', MiB);
    const fd = openFile(file, O_RDWR);
    const ring = IoUring.create(8);
    try {
      const pattern = crypto.randomBytes(3 * 4096 + 100);
      memory.bytes.set(pattern, 0x10000);
      // Three segments, one crossing a page boundary at an odd offset.
      const out = new IovecList(4);
      out.push(base + 0x10000, 4096);
      out.push(base + 0x11000, 2 * 4096 + 50);
      out.push(base + 0x13000 + 50, 50);
      const sink = new Collector();
      assert.ok(ring.prepWritev(fd, out, 8192, 1));
      assert.equal(ring.pending, 1);
      assert.equal(ring.submit(), 1);
      assert.equal(ring.pending, 0);
      waitAll(ring, sink, 1);
      assert.equal(sink.results.get(1), pattern.length);
      assert.deepEqual(fs.readFileSync(file).subarray(8192, 8192 + pattern.length), pattern);

      const into = new IovecList(2);
      into.push(base + 0x40000 + 7, 1000);
      into.push(base + 0x50000, pattern.length - 1000);
      assert.ok(ring.prepReadv(fd, into, 8192, 0xfffffffe));
      ring.submit();
      waitAll(ring, sink, 2);
      assert.equal(sink.results.get(0xfffffffe), pattern.length, 'user data keeps all 32 bits');
      assert.deepEqual(Buffer.from(memory.bytes.subarray(0x40000 + 7, 0x40000 + 7 + 1000)), pattern.subarray(0, 1000));
      assert.deepEqual(Buffer.from(memory.bytes.subarray(0x50000, 0x50000 + pattern.length - 1000)), pattern.subarray(1000));
    } finally {
      ring.close();
      closeFile(fd);
    }
  });

  test('64 reads in flight complete through the Poller with the right data each', async () => {
    const content = crypto.randomBytes(4 * MiB);
    const file = tempFile('qd64', content);
    const fd = openFile(file, O_RDONLY);
    const ring = IoUring.create(64);
    const poller = new Poller();
    try {
      const sink = new Collector();
      poller.add(ring.completionFd.fd, () => {
        ring.completionFd.drain();
        ring.reap(sink);
      });
      const lists: IovecList[] = [];
      const offsets: number[] = [];
      for (let i = 0; i < 64; i++) {
        const iov = new IovecList(1);
        iov.push(base + 0x100000 + i * 8192, 8192);
        lists.push(iov);
        offsets.push(((i * 37) % 512) * 8192);
        assert.ok(ring.prepReadv(fd, iov, offsets[i]!, i));
      }
      assert.equal(ring.sqSpace, 0);
      assert.equal(ring.prepReadv(fd, lists[0]!, 0, 99), false, 'the 65th SQE does not fit');
      assert.equal(ring.submit(), 64);
      await until(() => sink.results.size === 64, '64 completions');
      for (let i = 0; i < 64; i++) {
        assert.equal(sink.results.get(i), 8192);
        const got = memory.bytes.subarray(0x100000 + i * 8192, 0x100000 + (i + 1) * 8192);
        assert.ok(Buffer.from(got).equals(content.subarray(offsets[i]!, offsets[i]! + 8192)), `read ${i}`);
      }
    } finally {
      await poller.stop();
      ring.close();
      closeFile(fd);
    }
  });

  test('a full SQ refuses more until submit frees it', () => {
    const file = tempFile('full', 4096);
    const fd = openFile(file, O_RDONLY);
    const ring = IoUring.create(4);
    try {
      const sink = new Collector();
      for (let i = 0; i < 4; i++) assert.ok(ring.prepFsync(fd, i, true));
      assert.equal(ring.prepFsync(fd, 4, true), false);
      assert.equal(ring.submit(), 4);
      assert.ok(ring.prepFsync(fd, 4, true), 'space again after the kernel took the SQEs');
      ring.submit();
      waitAll(ring, sink, 5);
      for (let i = 0; i < 5; i++) assert.equal(sink.results.get(i), 0);
    } finally {
      ring.close();
      closeFile(fd);
    }
  });

  test('fsync, datasync, RWF_DSYNC writes and a NOP complete with 0 / bytes', () => {
    const file = tempFile('sync', 64 * 1024);
    const fd = openFile(file, O_RDWR);
    const ring = IoUring.create(8);
    try {
      const sink = new Collector();
      memory.bytes.fill(0xab, 0x20000, 0x21000);
      const iov = new IovecList(1);
      iov.push(base + 0x20000, 4096);
      ring.prepWritev(fd, iov, 4096, 1, RWF_DSYNC);
      ring.prepFsync(fd, 2, false);
      ring.prepFsync(fd, 3, true);
      ring.prepNop(4);
      ring.submit();
      waitAll(ring, sink, 4);
      assert.deepEqual([...sink.results.entries()].sort((a, b) => a[0] - b[0]), [[1, 4096], [2, 0], [3, 0], [4, 0]]);
      assert.ok(fs.readFileSync(file).subarray(4096, 8192).every((b) => b === 0xab));
    } finally {
      ring.close();
      closeFile(fd);
    }
  });

  test('fallocate punches a hole: the range reads zero and st_blocks drops, size kept', () => {
    const file = tempFile('punch', crypto.randomBytes(4 * MiB));
    const fd = openFile(file, O_RDWR);
    const ring = IoUring.create(4);
    try {
      const blocksBefore = fs.statSync(file).blocks;
      const sink = new Collector();
      ring.prepFallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, MiB, 2 * MiB, 7);
      ring.submit();
      waitAll(ring, sink, 1);
      assert.equal(sink.results.get(7), 0);
      const st = fs.statSync(file);
      assert.equal(st.size, 4 * MiB);
      assert.ok(st.blocks <= blocksBefore - (2 * MiB) / 512, `blocks ${blocksBefore} -> ${st.blocks}`);
      assert.ok(fs.readFileSync(file).subarray(MiB, 3 * MiB).every((b) => b === 0));
    } finally {
      ring.close();
      closeFile(fd);
    }
  });

  test('failures come back as -errno results, not exceptions', () => {
    const file = tempFile('errors', 8192);
    const fd = openFile(file, O_RDONLY);
    const ring = IoUring.create(8);
    try {
      const sink = new Collector();
      const iov = new IovecList(1);
      iov.push(base + 0x30000, 4096);
      ring.prepWritev(fd, iov, 0, 1); // read-only fd
      ring.prepReadv(987_654, iov, 0, 2); // not an fd
      ring.prepFallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096, 3); // read-only fd
      const bad = new IovecList(1);
      bad.push(4096, 4096); // unmapped address
      ring.prepReadv(fd, bad, 0, 4);
      ring.submit();
      waitAll(ring, sink, 4);
      assert.equal(sink.results.get(1), -Errno.EBADF);
      assert.equal(sink.results.get(2), -Errno.EBADF);
      assert.equal(sink.results.get(3), -Errno.EBADF);
      assert.equal(sink.results.get(4), -Errno.EFAULT);
    } finally {
      ring.close();
      closeFile(fd);
    }
  });

  test('reap with a limit delivers at most that many and leaves the rest in the CQ', () => {
    const ring = IoUring.create(8);
    try {
      for (let i = 1; i <= 5; i++) assert.ok(ring.prepNop(i));
      assert.equal(ring.submit(), 5);
      while (ring.ready < 5) ring.wait(1);
      const sink = new Collector();
      assert.equal(ring.reap(sink, 2), 2);
      assert.equal(ring.ready, 3);
      assert.equal(ring.reap(sink, 0), 0);
      assert.equal(ring.reap(sink), 3);
      assert.deepEqual([...sink.results.keys()].sort(), [1, 2, 3, 4, 5]);
    } finally {
      ring.close();
    }
  });

  test('a closed ring refuses to prepare and submits nothing', () => {
    const ring = IoUring.create(2);
    ring.close();
    assert.throws(() => ring.prepNop(1), /closed/);
    assert.equal(ring.submit(), 0);
    assert.equal(ring.reap(new Collector()), 0);
  });
});

for (const kind of ['UringFileIo', 'SyncFileIo'] as const) {
  describe(kind, () => {
    let poller: Poller;
    let io: FileIo;
    before(() => {
      poller = new Poller();
      io = kind === 'UringFileIo' ? new UringFileIo(poller, 8) : new SyncFileIo();
    });
    after(async () => {
      io.close();
      await poller.stop();
    });

    test('completes after the call returns, never inside it', async () => {
      const file = tempFile(`${kind}-async`, 8192);
      const fd = openFile(file, O_RDWR);
      try {
        const sink = new Collector();
        const iov = new IovecList(1);
        iov.push(base + 0x60000, 4096);
        io.readv(fd, iov, 0, 5, sink);
        assert.equal(sink.results.size, 0);
        await until(() => sink.results.size === 1, 'the read');
        assert.equal(sink.results.get(5), 4096);
      } finally {
        closeFile(fd);
      }
    });

    if (kind === 'UringFileIo') {
      test('a burst goes to the kernel in fours before the turn ends, the remainder when it ends', async () => {
        const file = tempFile(`${kind}-early`, 8 * 4096);
        const fd = openFile(file, O_RDWR);
        try {
          const ring = (io as UringFileIo).ring;
          const sink = new Collector();
          const pendingAfter: number[] = [];
          for (let i = 0; i < 6; i++) {
            const iov = new IovecList(1);
            iov.push(base + 0x70000 + i * 4096, 4096);
            io.readv(fd, iov, i * 4096, 100 + i, sink);
            pendingAfter.push(ring.pending);
          }
          assert.deepEqual(pendingAfter, [1, 2, 3, 0, 1, 2]);
          await until(() => sink.results.size === 6, 'the reads');
          assert.equal(ring.pending, 0);
          for (let i = 0; i < 6; i++) assert.equal(sink.results.get(100 + i), 4096);
        } finally {
          closeFile(fd);
        }
      });
    }

    test('300 random 4k writes then reads (more than the ring holds) match the file', async () => {
      const size = 2 * MiB;
      const file = tempFile(`${kind}-many`, size);
      const fd = openFile(file, O_RDWR);
      try {
        const count = 300;
        const expected = Buffer.alloc(size);
        const lists: IovecList[] = [];
        const sink = new Collector();
        // Distinct blocks so the final content does not depend on completion order.
        const blocks = [...Array(size / 4096).keys()].sort(() => Math.random() - 0.5).slice(0, count);
        for (let i = 0; i < count; i++) {
          const src = 0x200000 + i * 4096;
          const data = crypto.randomBytes(4096);
          memory.bytes.set(data, src);
          data.copy(expected, blocks[i]! * 4096);
          const iov = new IovecList(1);
          iov.push(base + src, 4096);
          lists.push(iov);
          io.writev(fd, iov, blocks[i]! * 4096, i, sink, i % 7 === 0);
        }
        await until(() => sink.results.size === count, 'writes');
        for (let i = 0; i < count; i++) assert.equal(sink.results.get(i), 4096);
        assert.ok(fs.readFileSync(file).equals(expected));

        const reads = new Collector();
        memory.bytes.fill(0, 0x200000, 0x200000 + count * 4096);
        for (let i = 0; i < count; i++) io.readv(fd, lists[i]!, blocks[i]! * 4096, 1000 + i, reads);
        io.fdatasync(fd, 9999, reads);
        await until(() => reads.results.size === count + 1, 'reads');
        assert.equal(reads.results.get(9999), 0);
        for (let i = 0; i < count; i++) {
          assert.equal(reads.results.get(1000 + i), 4096);
          const got = Buffer.from(memory.bytes.subarray(0x200000 + i * 4096, 0x200000 + (i + 1) * 4096));
          assert.ok(got.equals(expected.subarray(blocks[i]! * 4096, (blocks[i]! + 1) * 4096)), `block ${i}`);
        }
      } finally {
        closeFile(fd);
      }
    });

    test('punchHole zeroes the range and frees blocks; errors are -errno', async () => {
      const file = tempFile(`${kind}-punch`, crypto.randomBytes(MiB));
      const fd = openFile(file, O_RDWR);
      const ro = openFile(file, O_RDONLY);
      try {
        const sink = new Collector();
        const blocks = fs.statSync(file).blocks;
        io.punchHole(fd, 256 * 1024, 512 * 1024, 1, sink);
        io.punchHole(ro, 0, 4096, 2, sink);
        const iov = new IovecList(1);
        iov.push(base + 0x70000, 4096);
        io.writev(ro, iov, 0, 3, sink);
        await until(() => sink.results.size === 3, 'punches');
        assert.equal(sink.results.get(1), 0);
        assert.equal(sink.results.get(2), -Errno.EBADF);
        assert.equal(sink.results.get(3), -Errno.EBADF);
        assert.ok(fs.statSync(file).blocks <= blocks - 1024);
        assert.ok(fs.readFileSync(file).subarray(256 * 1024, 768 * 1024).every((b) => b === 0));
        assert.equal(fs.statSync(file).size, MiB);
      } finally {
        closeFile(fd);
        closeFile(ro);
      }
    });

    test('a caller that reissues on every completion does not starve timers', { timeout: 10_000 }, async () => {
      const file = tempFile(`${kind}-starve`, crypto.randomBytes(64 * 1024));
      fs.readFileSync(file); // in the page cache: reads complete inside the submit call
      const fd = openFile(file, O_RDONLY);
      try {
        let reads = 0;
        let stop = false;
        let outstanding = 0;
        const iovs: IovecList[] = [];
        const sink: FileIoDone = {
          fileIoDone(token, result) {
            outstanding--;
            assert.equal(result, 4096);
            reads++;
            // Fail-safe: a starved event loop never runs the timer, so stop here instead of hanging.
            if (stop || reads >= STARVED) return;
            outstanding++;
            io.readv(fd, iovs[token]!, (reads % 16) * 4096, token, sink);
          },
        };
        for (let i = 0; i < 8; i++) {
          const iov = new IovecList(1);
          iov.push(base + 0x500000 + i * 4096, 4096);
          iovs.push(iov);
          outstanding++;
          io.readv(fd, iov, 0, i, sink);
        }
        await sleep(20); // must fire although completions keep coming
        stop = true;
        assert.ok(reads < STARVED, 'the timer only ran once the reads stopped');
        assert.ok(reads > 8, `only ${reads} reads`);
        await until(() => outstanding === 0, 'the last reads');
      } finally {
        closeFile(fd);
      }
    });

    test('property: random vectored writes read back identical', async () => {
      const size = 256 * 1024;
      const file = tempFile(`${kind}-prop`, size);
      const fd = openFile(file, O_RDWR);
      const iov = new IovecList(8);
      try {
        const model = Buffer.alloc(size);
        await fc.assert(
          fc.asyncProperty(
            fc.integer({ min: 0, max: size - 1 }),
            fc.array(fc.integer({ min: 1, max: 5000 }), { minLength: 1, maxLength: 8 }),
            fc.integer({ min: 0, max: 4095 }),
            async (offset, segments, memOffset) => {
              iov.clear();
              let total = 0;
              let at = 0x400000 + memOffset;
              for (const s of segments) {
                const len = Math.min(s, size - offset - total);
                if (len <= 0) break;
                iov.push(base + at, len);
                at += len + 13; // gaps between segments in guest RAM
                total += len;
              }
              const data = crypto.randomBytes(total);
              let k = 0;
              for (let i = 0; i < iov.count; i++) {
                const gpa = iov.addressAt(i) - base;
                memory.bytes.set(data.subarray(k, k + iov.lengthAt(i)), gpa);
                k += iov.lengthAt(i);
              }
              data.copy(model, offset);
              const sink = new Collector();
              io.writev(fd, iov, offset, 1, sink);
              await until(() => sink.results.size === 1, 'write');
              assert.equal(sink.results.get(1), total);
              assert.ok(fs.readFileSync(file).equals(model));
            },
          ),
          { numRuns: 60 },
        );
      } finally {
        closeFile(fd);
      }
    });
  });
}

test('UringFileIo.close cancels operations that were still waiting for a slot', async () => {
  const poller = new Poller();
  const io = new UringFileIo(poller, 1); // 1 SQE, 2 CQEs: the third operation waits
  const file = tempFile('cancel', 4096);
  const fd = openFile(file, O_RDONLY);
  try {
    const sink = new Collector();
    for (let i = 0; i < 5; i++) io.fdatasync(fd, i, sink);
    assert.equal(io.inFlightCount, 2);
    io.close();
    await until(() => sink.results.size === 3, 'cancellations');
    for (let i = 2; i < 5; i++) assert.equal(sink.results.get(i), -Errno.ECANCELED);
    io.fdatasync(fd, 10, sink);
    await until(() => sink.results.has(10), 'after close');
    assert.equal(sink.results.get(10), -Errno.ECANCELED);
  } finally {
    closeFile(fd);
    await poller.stop();
  }
});
