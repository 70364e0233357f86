// The memory disk (the reference store) and the fault-injecting wrapper: data round
// trips, discard, read-only, hostile requests, asynchronous completion, and fault rules
// matched by kind, byte range and count, changed while the disk is in use.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import type { BlockBackend, BlockDone, BlockIo } from '../src/backends/block/block-backend.js';
import { FaultyDisk } from '../src/backends/block/faulty-disk.js';
import { MemoryDisk, MemoryDiskError } from '../src/backends/block/memory-disk.js';
import { GuestMemory } from '../src/memory/guest-memory.js';
import { Errno } from '../src/sys/errors.js';
import { IovecList } from '../src/sys/iovec.js';
import { submitBlockIo } from './support/block-io.js';

const MiB = 1024 * 1024;
const EIO = Errno.EIO;
const ENOSPC = Errno.ENOSPC;
let memory: GuestMemory;
let base = 0;

before(() => {
  memory = GuestMemory.create(8 * MiB);
  base = Number(memory.base);
});

after(() => memory.close());

type Op = 'read' | 'write' | 'flush' | 'discard';

class TestIo implements BlockIo {
  offset = 0;
  length = 0;
  readonly iov = new IovecList(16);
  readonly memory = memory;
  fua = false;
  tag: unknown = null;
}

const submit = submitBlockIo;

function run(disk: BlockBackend, op: Op, offset = 0, length = 0, gpa = 0): Promise<number> {
  const io = new TestIo();
  io.offset = offset;
  io.length = length;
  if (op === 'read' || op === 'write') io.iov.push(base + gpa, length);
  return submit(disk, op, io);
}

describe('MemoryDisk', () => {
  test('validates its geometry', () => {
    assert.throws(() => new MemoryDisk({ sizeBytes: 0 }), MemoryDiskError);
    assert.throws(() => new MemoryDisk({ sizeBytes: 1000 }), /multiple of 512/);
    assert.throws(() => new MemoryDisk({ sizeBytes: 512 * 3, logicalBlockBytes: 4096 }), /multiple of 4096/);
    assert.throws(() => new MemoryDisk({ sizeBytes: 4096, logicalBlockBytes: 1024 as 512 }), /512 or 4096/);
    assert.throws(() => new MemoryDisk({ sizeBytes: 4096, contents: new Uint8Array(8192) }), /exceed/);
    const disk = new MemoryDisk({ sizeBytes: MiB, serial: 'S1' });
    assert.deepEqual({ ...disk.info }, { sizeBytes: MiB, logicalBlockBytes: 512, physicalBlockBytes: 4096, readOnly: false, discard: true, writeCache: false, serial: 'S1' });
    assert.notEqual(new MemoryDisk({ sizeBytes: 4096 }).info.serial, new MemoryDisk({ sizeBytes: 4096 }).info.serial);
  });

  test('writes scatter from guest RAM, reads gather back; discard zeroes; flush succeeds', async () => {
    const disk = new MemoryDisk({ sizeBytes: MiB });
    const data = crypto.randomBytes(3 * 512);
    memory.bytes.set(data.subarray(0, 512), 0x1000 + 7);
    memory.bytes.set(data.subarray(512), 0x9000);
    const io = new TestIo();
    io.offset = 4096;
    io.length = data.length;
    io.iov.push(base + 0x1007, 512);
    io.iov.push(base + 0x9000, 1024);
    assert.equal(await submit(disk, 'write', io), data.length);
    assert.ok(disk.data.subarray(4096, 4096 + data.length).equals(data));
    assert.equal(await run(disk, 'read', 4096, data.length, 0x20000), data.length);
    assert.ok(Buffer.from(memory.bytes.subarray(0x20000, 0x20000 + data.length)).equals(data));
    assert.equal(await run(disk, 'discard', 4096, 512), 0);
    assert.ok(disk.data.subarray(4096, 4608).every((b) => b === 0));
    assert.ok(disk.data.subarray(4608, 4096 + data.length).equals(data.subarray(512)));
    assert.equal(await run(disk, 'flush'), 0);
    assert.deepEqual(disk.stats, { reads: 1, writes: 1, flushes: 1, discards: 1, errors: 0 });
  });

  test('read-only: -EROFS for writes and discards, contents unchanged', async () => {
    const contents = crypto.randomBytes(8192);
    const disk = new MemoryDisk({ sizeBytes: 8192, readOnly: true, contents });
    assert.equal(disk.info.discard, false);
    assert.equal(await run(disk, 'write', 0, 512, 0), -Errno.EROFS);
    assert.equal(await run(disk, 'discard', 0, 8192), -Errno.EROFS);
    assert.ok(disk.data.equals(contents));
    assert.equal(await run(disk, 'read', 512, 512, 0x3000), 512);
    assert.ok(Buffer.from(memory.bytes.subarray(0x3000, 0x3200)).equals(contents.subarray(512, 1024)));
    assert.equal(disk.stats.errors, 2);
  });

  test('hostile requests: -EINVAL for bad ranges, -EFAULT for buffers outside guest RAM', async () => {
    const disk = new MemoryDisk({ sizeBytes: 8192 });
    assert.equal(await run(disk, 'read', 8192, 512, 0), -Errno.EINVAL);
    assert.equal(await run(disk, 'read', 1, 512, 0), -Errno.EINVAL);
    assert.equal(await run(disk, 'write', 0, 100, 0), -Errno.EINVAL);
    assert.equal(await run(disk, 'discard', 4096, 8192), -Errno.EINVAL);
    assert.equal(await run(disk, 'read', NaN, 512, 0), -Errno.EINVAL);
    const io = new TestIo();
    io.length = 1024;
    io.iov.push(base + memory.size - 512, 1024);
    assert.equal(await submit(disk, 'read', io), -Errno.EFAULT);
    io.iov.clear();
    io.iov.push(base - 4096, 1024);
    assert.equal(await submit(disk, 'write', io), -Errno.EFAULT);
    io.iov.clear();
    io.iov.push(base, 512);
    assert.equal(await submit(disk, 'write', io), -Errno.EINVAL, 'length and iov disagree');
    assert.ok(disk.data.every((b) => b === 0));
  });

  test('close waits for queued completions; later requests get -ECANCELED', async () => {
    const disk = new MemoryDisk({ sizeBytes: 8192 });
    let completed = 0;
    const done: BlockDone = { blockDone: () => void completed++ };
    for (let i = 0; i < 10; i++) disk.flush(new TestIo(), done);
    assert.equal(completed, 0);
    await disk.close();
    assert.equal(completed, 10);
    assert.equal(await run(disk, 'read', 0, 512, 0), -Errno.ECANCELED);
  });

  test('a submitter that reissues on every completion does not starve timers', { timeout: 10_000 }, async () => {
    const disk = new MemoryDisk({ sizeBytes: 64 * 1024 });
    let completions = 0;
    let stop = false;
    let outstanding = 0;
    const done: BlockDone = {
      blockDone(io) {
        outstanding--;
        completions++;
        // Fail-safe: a starved event loop never runs the timer, so stop here instead of hanging.
        if (stop || completions >= 200_000) return;
        outstanding++;
        disk.read(io, done);
      },
    };
    for (let i = 0; i < 4; i++) {
      const io = new TestIo();
      io.length = 512;
      io.iov.push(base + i * 512, 512);
      outstanding++;
      disk.read(io, done);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
    stop = true;
    assert.ok(completions > 4);
    assert.ok(completions < 200_000, 'the timer only ran once the reads stopped');
    while (outstanding > 0) await new Promise((resolve) => setImmediate(resolve));
  });

  test('property: any sequence of writes and discards reads back like a byte-array model', async () => {
    const size = 64 * 1024;
    const disk = new MemoryDisk({ sizeBytes: size });
    const model = Buffer.alloc(size);
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ discard: fc.boolean(), block: fc.integer({ min: 0, max: size / 512 - 1 }), blocks: fc.integer({ min: 1, max: 16 }), gpa: fc.integer({ min: 0, max: MiB }) }), { minLength: 1, maxLength: 20 }),
        async (ops) => {
          for (const op of ops) {
            const offset = op.block * 512;
            const length = Math.min(op.blocks * 512, size - offset);
            if (op.discard) {
              assert.equal(await run(disk, 'discard', offset, length), 0);
              model.fill(0, offset, offset + length);
            } else {
              const data = crypto.randomBytes(length);
              memory.bytes.set(data, op.gpa);
              assert.equal(await run(disk, 'write', offset, length, op.gpa), length);
              data.copy(model, offset);
            }
          }
          assert.equal(await run(disk, 'read', 0, size, 2 * MiB), size);
          assert.ok(Buffer.from(memory.bytes.subarray(2 * MiB, 2 * MiB + size)).equals(model));
        },
      ),
      { numRuns: 50 },
    );
  });
});

describe('FaultyDisk', () => {
  test('passes requests through when no rule matches', async () => {
    const inner = new MemoryDisk({ sizeBytes: MiB });
    const disk = new FaultyDisk(inner, [{ op: 'read', offset: [512 * 1024, MiB], errno: EIO }]);
    assert.equal(disk.info, inner.info);
    memory.bytes.fill(0x42, 0, 4096);
    assert.equal(await run(disk, 'write', 0, 4096, 0), 4096);
    assert.equal(await run(disk, 'read', 0, 4096, 0x10000), 4096);
    assert.equal(await run(disk, 'flush'), 0);
    assert.equal(disk.injected, 0);
    assert.equal(inner.stats.reads, 1);
    assert.ok(inner.data.subarray(0, 4096).every((b) => b === 0x42));
  });

  test('fails only the kind and byte range a rule names, with its errno', async () => {
    const inner = new MemoryDisk({ sizeBytes: MiB });
    const disk = new FaultyDisk(inner, [
      { op: 'read', offset: [65536, 131072], errno: EIO },
      { op: 'write', errno: ENOSPC, offset: [0, 512] },
    ]);
    assert.equal(await run(disk, 'read', 65536 - 512, 512, 0), 0 + 512, 'just below the range');
    assert.equal(await run(disk, 'read', 65536 - 512, 1024, 0), -EIO, 'overlapping its start');
    assert.equal(await run(disk, 'read', 131072 - 512, 4096, 0), -EIO, 'overlapping its end');
    assert.equal(await run(disk, 'read', 131072, 512, 0), 512, 'just past the range');
    assert.equal(await run(disk, 'write', 65536, 512, 0), 512, 'a write in the read rule range');
    assert.equal(await run(disk, 'write', 0, 512, 0), -ENOSPC);
    assert.equal(await run(disk, 'flush'), 0, 'flushes have no range: ranged rules never hit them');
    assert.equal(disk.injected, 3);
    assert.equal(inner.stats.writes, 1, 'failed requests never reach the inner disk');
  });

  test('times counts down; any matches every kind; rules change at run time', async () => {
    const inner = new MemoryDisk({ sizeBytes: MiB });
    const disk = new FaultyDisk(inner);
    assert.equal(await run(disk, 'flush'), 0);
    disk.addRule({ op: 'flush', errno: EIO, times: 2 });
    assert.equal(await run(disk, 'flush'), -EIO);
    assert.equal(await run(disk, 'flush'), -EIO);
    assert.equal(await run(disk, 'flush'), 0, 'exhausted after two');
    disk.setRules([{ op: 'any', errno: -ENOSPC }]);
    assert.equal(await run(disk, 'read', 0, 512, 0), -ENOSPC, 'errno given negative works too');
    assert.equal(await run(disk, 'write', 0, 512, 0), -ENOSPC);
    assert.equal(await run(disk, 'discard', 0, 512), -ENOSPC);
    assert.equal(await run(disk, 'flush'), -ENOSPC);
    disk.rules[0]!.op = 'discard';
    assert.equal(await run(disk, 'read', 0, 512, 0), 512);
    assert.equal(await run(disk, 'discard', 0, 512), -ENOSPC);
    disk.clearRules();
    assert.equal(await run(disk, 'discard', 0, 512), 0);
    assert.equal(disk.injected, 7);
    await disk.close();
    assert.equal(await run(inner, 'flush'), -Errno.ECANCELED, 'close reaches the inner disk');
  });
});
