// The raw-file disk end to end against real files: sparse creation, data landing at the
// right offsets (direct and buffered paths), FUA and flush, discard freeing blocks, the
// read-only contract, image locking, refused images, hostile requests answered with
// -errno, short transfers, the zero-fill discard fallback, and a property test against
// the file's own bytes.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';
import fc from 'fast-check';
import type { BlockBackend, BlockIo } from '../src/backends/block/block-backend.js';
import { SyncFileIo, type FileIo, type FileIoDone } from '../src/backends/block/file-io.js';
import { ImageInUseError, lockImage } from '../src/backends/block/image-lock.js';
import { openRawDisk, RawDiskError, type RawDisk, type RawDiskOptions } from '../src/backends/block/raw-disk.js';
import { GuestMemory } from '../src/memory/guest-memory.js';
import { Poller } from '../src/sys/epoll.js';
import { Errno } from '../src/sys/errors.js';
import { closeFile, O_RDONLY, O_RDWR, openFile } from '../src/sys/file.js';
import { IovecList } from '../src/sys/iovec.js';
import { submitBlockIo } from './support/block-io.js';

const KiB = 1024;
const MiB = 1024 * KiB;
let dir = '';
let memory: GuestMemory;
let base = 0;
let poller: Poller;
const open: RawDisk[] = [];

before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'enlighten-raw-'));
  memory = GuestMemory.create(32 * MiB);
  base = Number(memory.base);
  poller = new Poller();
});

afterEach(async () => {
  for (const disk of open.splice(0)) await disk.close().catch(() => undefined);
});

after(async () => {
  await poller.stop();
  fs.rmSync(dir, { recursive: true, force: true });
  memory.close();
});

let fileCounter = 0;
function imagePath(): string {
  return path.join(dir, `disk-${fileCounter++}.img`);
}

async function openDisk(file: string, options: Partial<RawDiskOptions> = {}): Promise<RawDisk> {
  const disk = await openRawDisk(file, { poller, ...options });
  open.push(disk);
  return disk;
}

async function closeDisk(disk: RawDisk): Promise<void> {
  open.splice(open.indexOf(disk), 1);
  await disk.close();
}

class TestIo implements BlockIo {
  offset = 0;
  length = 0;
  readonly iov = new IovecList(64);
  readonly memory = memory;
  fua = false;
  tag: unknown = null;
}

/** Runs one request and resolves with its result; checks it completes exactly once and never inside the call. */
function run(disk: BlockBackend, op: 'read' | 'write' | 'flush' | 'discard', setup: Partial<Pick<BlockIo, 'offset' | 'length' | 'fua'>> & { gpa?: number } = {}): Promise<number> {
  const io = new TestIo();
  io.offset = setup.offset ?? 0;
  io.length = setup.length ?? 0;
  io.fua = setup.fua ?? false;
  if (setup.gpa !== undefined && (op === 'read' || op === 'write')) io.iov.push(base + setup.gpa, io.length);
  return submit(disk, op, io);
}

const submit = submitBlockIo;

describe('openRawDisk', () => {
  test('creates a sparse image of the asked size and describes it', async () => {
    const file = imagePath();
    const disk = await openDisk(file, { create: { sizeBytes: 64 * MiB } });
    const st = fs.statSync(file);
    assert.equal(st.size, 64 * MiB);
    assert.ok(st.blocks <= 8, `sparse: ${st.blocks} blocks allocated`);
    assert.equal(disk.info.sizeBytes, 64 * MiB);
    assert.equal(disk.info.logicalBlockBytes, 512);
    assert.ok(disk.info.physicalBlockBytes >= 512 && disk.info.physicalBlockBytes % 512 === 0);
    assert.equal(disk.info.readOnly, false);
    assert.equal(disk.info.writeCache, true);
    assert.equal(disk.info.discard, true);
    assert.match(disk.info.serial, /^[0-9A-F]{20}$/);
    const serial = disk.info.serial;
    await closeDisk(disk);
    const again = await openDisk(file, { readOnly: true });
    assert.equal(again.info.serial, serial, 'the same image keeps its serial');
    const other = imagePath();
    const disk2 = await openDisk(other, { create: { sizeBytes: MiB } });
    assert.notEqual(disk2.info.serial, serial);
  });

  test('refuses an image whose size is not a whole number of blocks, naming the size', async () => {
    const file = imagePath();
    fs.writeFileSync(file, Buffer.alloc(1000));
    await assert.rejects(openDisk(file), (e: unknown) => e instanceof RawDiskError && /1000 bytes, not a multiple of the 512-byte/.test(e.message) && e.message.includes(file));
    fs.writeFileSync(file, Buffer.alloc(3 * 512));
    await assert.rejects(openDisk(file, { logicalBlockBytes: 4096 }), /not a multiple of the 4096-byte/);
    fs.writeFileSync(file, Buffer.alloc(0));
    await assert.rejects(openDisk(file), /is empty/);
    // Nothing was left locked: a correct size opens fine.
    fs.writeFileSync(file, Buffer.alloc(4096));
    await openDisk(file, { logicalBlockBytes: 4096 });
  });

  test('clear errors for a missing image, an existing one on create, a directory, bad sizes', async () => {
    await assert.rejects(openDisk(path.join(dir, 'nope.img')), /does not exist/);
    const file = imagePath();
    fs.writeFileSync(file, Buffer.from('precious'));
    await assert.rejects(openDisk(file, { create: { sizeBytes: MiB } }), /already exists/);
    assert.equal(fs.readFileSync(file, 'latin1'), 'precious', 'an existing file is never clobbered');
    await assert.rejects(openDisk(dir), /directory/);
    await assert.rejects(openDisk(imagePath(), { create: { sizeBytes: 1000 } }), /positive multiple of 512/);
    await assert.rejects(openDisk(imagePath(), { create: { sizeBytes: MiB }, readOnly: true }), /read-only/);
    await assert.rejects(openDisk(imagePath(), { logicalBlockBytes: 1024 as 512 }), /512 or 4096/);
  });

  test('a second read-write opener is refused with the image named; readers share; closing unlocks', async () => {
    const file = imagePath();
    const writer = await openDisk(file, { create: { sizeBytes: MiB } });
    await assert.rejects(openDisk(file), (e: unknown) => e instanceof ImageInUseError && e.message.includes(file) && /in use/.test(e.message));
    await assert.rejects(openDisk(file, { readOnly: true }), ImageInUseError, 'no reader while someone writes');
    await closeDisk(writer);
    const r1 = await openDisk(file, { readOnly: true });
    const r2 = await openDisk(file, { readOnly: true });
    await assert.rejects(openDisk(file), ImageInUseError, 'no writer while someone reads');
    await closeDisk(r1);
    await closeDisk(r2);
    await openDisk(file);
  });
});

describe('RawDisk I/O', () => {
  for (const variant of ['io_uring', 'io_uring, buffered only', 'SyncFileIo'] as const) {
    test(`${variant}: writes land at their offsets and read back, aligned and unaligned buffers`, async () => {
      const file = imagePath();
      const options: Partial<RawDiskOptions> = { create: { sizeBytes: 8 * MiB } };
      if (variant === 'SyncFileIo') options.fileIo = new SyncFileIo();
      if (variant === 'io_uring, buffered only') options.direct = false;
      const disk = await openDisk(file, options);
      if (variant === 'io_uring, buffered only') assert.equal(disk.directAlign, 0);
      const data = crypto.randomBytes(64 * KiB);
      memory.bytes.set(data, 0x10000); // page aligned: the direct path where it exists
      memory.bytes.set(data, 0x30000 + 3); // odd address: always the buffered path
      assert.equal(await run(disk, 'write', { offset: MiB, length: data.length, gpa: 0x10000 }), data.length);
      assert.equal(await run(disk, 'write', { offset: 3 * MiB + 512, length: data.length, gpa: 0x30003, fua: true }), data.length);
      assert.equal(await run(disk, 'flush'), 0);
      const bytes = fs.readFileSync(file);
      assert.ok(bytes.subarray(MiB, MiB + data.length).equals(data));
      assert.ok(bytes.subarray(3 * MiB + 512, 3 * MiB + 512 + data.length).equals(data));
      assert.ok(bytes.subarray(0, MiB).every((b) => b === 0));

      memory.bytes.fill(0, 0x50000, 0x80000);
      assert.equal(await run(disk, 'read', { offset: 3 * MiB + 512, length: data.length, gpa: 0x50000 }), data.length);
      assert.ok(Buffer.from(memory.bytes.subarray(0x50000, 0x50000 + data.length)).equals(data));
      assert.equal(await run(disk, 'read', { offset: MiB, length: data.length, gpa: 0x60000 + 5 }), data.length);
      assert.ok(Buffer.from(memory.bytes.subarray(0x60005, 0x60005 + data.length)).equals(data));
      assert.equal(disk.stats.reads, 2);
      assert.equal(disk.stats.writes, 2);
      assert.equal(disk.stats.flushes, 1);
      assert.equal(disk.stats.errors, 0);
    });
  }

  test('O_DIRECT is used where the filesystem allows it (ext4/xfs)', async (t) => {
    const disk = await openDisk(imagePath(), { create: { sizeBytes: MiB } });
    const type = fs.statfsSync(dir).type;
    const EXT4 = 0xef53;
    const XFS = 0x58465342;
    if (type === EXT4 || type === XFS) assert.ok(disk.directAlign === 512 || disk.directAlign === 4096, `alignment ${disk.directAlign}`);
    else t.diagnostic(`filesystem 0x${type.toString(16)}: O_DIRECT alignment ${disk.directAlign}`);
    const buffered = await openDisk(imagePath(), { create: { sizeBytes: MiB }, direct: false });
    assert.equal(buffered.directAlign, 0);
  });

  test('discard punches a hole: st_blocks drops, the range reads zero, the size stays', async () => {
    const file = imagePath();
    const disk = await openDisk(file, { create: { sizeBytes: 8 * MiB } });
    memory.bytes.set(crypto.randomBytes(4 * MiB), 0x100000);
    assert.equal(await run(disk, 'write', { offset: 0, length: 4 * MiB, gpa: 0x100000 }), 4 * MiB);
    assert.equal(await run(disk, 'flush'), 0);
    const before = fs.statSync(file).blocks;
    assert.ok(before >= (4 * MiB) / 512);
    assert.equal(await run(disk, 'discard', { offset: MiB, length: 2 * MiB }), 0);
    const st = fs.statSync(file);
    assert.ok(st.blocks <= before - (2 * MiB) / 512, `blocks ${before} -> ${st.blocks}`);
    assert.equal(st.size, 8 * MiB);
    memory.bytes.fill(0xff, 0x600000, 0x600000 + 2 * MiB);
    assert.equal(await run(disk, 'read', { offset: MiB, length: 2 * MiB, gpa: 0x600000 }), 2 * MiB);
    assert.ok(memory.bytes.subarray(0x600000, 0x600000 + 2 * MiB).every((b) => b === 0));
    assert.equal(disk.stats.discards, 1);
  });

  test('where holes cannot be punched, discard writes zeros instead', async () => {
    // A FileIo that says EOPNOTSUPP to hole punching, like a filesystem without it.
    class NoPunch extends SyncFileIo {
      punches = 0;
      override punchHole(fd: number, offset: number, length: number, token: number, done: FileIoDone): void {
        this.punches++;
        queueMicrotask(() => done.fileIoDone(token, -Errno.EOPNOTSUPP));
      }
    }
    const fileIo = new NoPunch();
    const file = imagePath();
    const disk = await openDisk(file, { create: { sizeBytes: 4 * MiB }, fileIo });
    memory.bytes.set(crypto.randomBytes(4 * MiB), 0x100000);
    assert.equal(await run(disk, 'write', { offset: 0, length: 4 * MiB, gpa: 0x100000 }), 4 * MiB);
    assert.equal(await run(disk, 'discard', { offset: 512, length: 2 * MiB + 1024 }), 0); // more than one zero chunk
    assert.equal(await run(disk, 'discard', { offset: 3 * MiB, length: 4096 }), 0);
    assert.equal(fileIo.punches, 1, 'after the first refusal it stops asking');
    const bytes = fs.readFileSync(file);
    assert.ok(bytes.subarray(512, 512 + 2 * MiB + 1024).every((b) => b === 0));
    assert.ok(bytes.subarray(3 * MiB, 3 * MiB + 4096).every((b) => b === 0));
    assert.ok(bytes.subarray(0, 512).equals(Buffer.from(memory.bytes.subarray(0x100000, 0x100000 + 512))), 'before the range untouched');
    const after = 512 + 2 * MiB + 1024;
    assert.ok(bytes.subarray(after, after + 512).equals(Buffer.from(memory.bytes.subarray(0x100000 + after, 0x100000 + after + 512))), 'after the range untouched');
  });

  test('read-only: writes and discards get -EROFS and the file is untouched; reads and flush work', async () => {
    const file = imagePath();
    const content = crypto.randomBytes(MiB);
    fs.writeFileSync(file, content);
    const mtime = fs.statSync(file).mtimeMs;
    const disk = await openDisk(file, { readOnly: true });
    assert.equal(disk.info.readOnly, true);
    assert.equal(disk.info.discard, false);
    memory.bytes.fill(0x5a, 0x10000, 0x20000);
    assert.equal(await run(disk, 'write', { offset: 0, length: 0x10000, gpa: 0x10000 }), -Errno.EROFS);
    assert.equal(await run(disk, 'write', { offset: 4096, length: 4096, gpa: 0x10000, fua: true }), -Errno.EROFS);
    assert.equal(await run(disk, 'discard', { offset: 0, length: MiB }), -Errno.EROFS);
    assert.equal(await run(disk, 'flush'), 0);
    assert.equal(await run(disk, 'read', { offset: 8192, length: 4096, gpa: 0x20000 }), 4096);
    assert.ok(Buffer.from(memory.bytes.subarray(0x20000, 0x21000)).equals(content.subarray(8192, 12288)));
    await closeDisk(disk);
    assert.ok(fs.readFileSync(file).equals(content));
    assert.equal(fs.statSync(file).mtimeMs, mtime);
    assert.equal(disk.stats.errors, 3);
  });

  test('hostile requests get -EINVAL / -EFAULT and never touch the file or memory outside guest RAM', async () => {
    const file = imagePath();
    const disk = await openDisk(file, { create: { sizeBytes: MiB } });
    assert.equal(await run(disk, 'read', { offset: MiB, length: 512, gpa: 0 }), -Errno.EINVAL, 'past the end');
    assert.equal(await run(disk, 'read', { offset: MiB - 512, length: 1024, gpa: 0 }), -Errno.EINVAL, 'straddles the end');
    assert.equal(await run(disk, 'write', { offset: 100, length: 512, gpa: 0 }), -Errno.EINVAL, 'misaligned offset');
    assert.equal(await run(disk, 'write', { offset: 0, length: 100, gpa: 0 }), -Errno.EINVAL, 'partial block');
    assert.equal(await run(disk, 'read', { offset: -512, length: 512, gpa: 0 }), -Errno.EINVAL, 'negative');
    assert.equal(await run(disk, 'discard', { offset: 0, length: 2 * MiB }), -Errno.EINVAL);
    assert.equal(await run(disk, 'read', { offset: Number.MAX_SAFE_INTEGER, length: 512, gpa: 0 }), -Errno.EINVAL);
    const io = new TestIo();
    io.length = 1024;
    io.iov.push(base + 0, 512); // byteLength 512 != length 1024
    assert.equal(await submit(disk, 'read', io), -Errno.EINVAL);
    io.iov.clear();
    io.iov.push(base + memory.size - 512, 1024); // runs off the end of guest RAM
    assert.equal(await submit(disk, 'read', io), -Errno.EFAULT);
    io.iov.clear();
    io.iov.push(4096, 1024); // not guest RAM at all
    assert.equal(await submit(disk, 'write', io), -Errno.EFAULT);
    assert.ok(fs.readFileSync(file).every((b) => b === 0));
    assert.equal(disk.stats.errors, 10);
  });

  test('4096-byte logical blocks refuse 512-byte granular requests', async () => {
    const disk = await openDisk(imagePath(), { create: { sizeBytes: MiB }, logicalBlockBytes: 4096 });
    assert.equal(disk.info.logicalBlockBytes, 4096);
    assert.equal(disk.info.physicalBlockBytes % 4096, 0);
    assert.equal(await run(disk, 'read', { offset: 512, length: 4096, gpa: 0 }), -Errno.EINVAL);
    assert.equal(await run(disk, 'read', { offset: 4096, length: 512, gpa: 0 }), -Errno.EINVAL);
    assert.equal(await run(disk, 'read', { offset: 4096, length: 4096, gpa: 0 }), 4096);
  });

  test('an image truncated behind its back: reads past the new end fail with -EIO after the short part', async () => {
    const file = imagePath();
    const disk = await openDisk(file, { create: { sizeBytes: MiB } });
    fs.truncateSync(file, 512 * KiB);
    assert.equal(await run(disk, 'read', { offset: 768 * KiB, length: 4096, gpa: 0 }), -Errno.EIO);
    assert.equal(await run(disk, 'read', { offset: 256 * KiB, length: 512 * KiB, gpa: 0x100000 }), -Errno.EIO);
    assert.equal(await run(disk, 'read', { offset: 0, length: 4096, gpa: 0 }), 4096);
  });

  test('a request with more segments than one system call takes is split and still lands whole', async () => {
    const file = imagePath();
    const disk = await openDisk(file, { create: { sizeBytes: 4 * MiB } });
    const segments = 2500; // > UIO_MAXIOV (1024): three system calls
    const io = { ...new TestIo(), iov: new IovecList(segments) } as BlockIo;
    const data = crypto.randomBytes(segments * 512);
    for (let i = 0; i < segments; i++) {
      // Every other 512-byte piece of guest RAM, so no two segments are adjacent.
      const gpa = 0x400000 + i * 1024;
      memory.bytes.set(data.subarray(i * 512, (i + 1) * 512), gpa);
      io.iov.push(base + gpa, 512);
    }
    io.offset = 8192;
    io.length = data.length;
    assert.equal(await submit(disk, 'write', io), data.length);
    assert.ok(fs.readFileSync(file).subarray(8192, 8192 + data.length).equals(data));
    for (let i = 0; i < segments; i++) memory.bytes.fill(0, 0x400000 + i * 1024, 0x400000 + i * 1024 + 512);
    assert.equal(await submit(disk, 'read', io), data.length);
    for (let i = 0; i < segments; i++) {
      assert.ok(Buffer.from(memory.bytes.subarray(0x400000 + i * 1024, 0x400000 + i * 1024 + 512)).equals(data.subarray(i * 512, (i + 1) * 512)), `segment ${i}`);
    }
  });

  test('256 requests in flight at once all complete; close waits for them', async () => {
    const file = imagePath();
    const disk = await openDisk(file, { create: { sizeBytes: 16 * MiB } });
    const data = crypto.randomBytes(256 * 4096);
    memory.bytes.set(data, 0x800000);
    const writes: Promise<number>[] = [];
    for (let i = 0; i < 256; i++) writes.push(run(disk, 'write', { offset: i * 8192, length: 4096, gpa: 0x800000 + i * 4096, fua: i % 16 === 0 }));
    assert.deepEqual(await Promise.all(writes), Array(256).fill(4096));
    const reads: Promise<number>[] = [];
    for (let i = 0; i < 256; i++) reads.push(run(disk, 'read', { offset: i * 8192, length: 4096, gpa: 0xa00000 + i * 4096 }));
    assert.ok(disk.inFlightCount > 0);
    let closed = false;
    const closing = closeDisk(disk).then(() => (closed = true));
    const results = await Promise.all(reads);
    assert.deepEqual(results, Array(256).fill(4096));
    await closing;
    assert.ok(closed);
    assert.ok(Buffer.from(memory.bytes.subarray(0xa00000, 0xa00000 + data.length)).equals(data));
    assert.equal(await run(disk, 'read', { offset: 0, length: 4096, gpa: 0 }), -Errno.ECANCELED, 'after close');
    assert.equal(await run(disk, 'flush'), -Errno.ECANCELED);
  });

  test('property: random writes (any block, any buffer alignment, several segments) read back identical via the file', async () => {
    const size = 4 * MiB;
    const file = imagePath();
    const disk = await openDisk(file, { create: { sizeBytes: size } });
    const model = Buffer.alloc(size);
    const io = new TestIo();
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 0, max: size / 512 - 1 }),
        fc.array(fc.integer({ min: 1, max: 40 }), { minLength: 1, maxLength: 6 }),
        fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 4095 })),
        fc.boolean(),
        async (block, segmentBlocks, memOffset, fua) => {
          io.offset = block * 512;
          io.iov.clear();
          io.fua = fua;
          let total = 0;
          let gpa = 0x1000000 + memOffset;
          for (const n of segmentBlocks) {
            const len = Math.min(n * 512, size - io.offset - total);
            if (len <= 0) break;
            io.iov.push(base + gpa, len);
            gpa += len + (memOffset === 0 ? 4096 : 0);
            total += len;
          }
          io.length = total;
          const data = crypto.randomBytes(total);
          let k = 0;
          for (let i = 0; i < io.iov.count; i++) {
            memory.bytes.set(data.subarray(k, k + io.iov.lengthAt(i)), io.iov.addressAt(i) - base);
            k += io.iov.lengthAt(i);
          }
          data.copy(model, io.offset);
          assert.equal(await submit(disk, 'write', io), total);
          assert.ok(fs.readFileSync(file).equals(model));
          // And back through the disk into other pages.
          const back = new TestIo();
          back.offset = io.offset;
          back.length = total;
          back.iov.push(base + 0x1800000, total);
          assert.equal(await submit(disk, 'read', back), total);
          assert.ok(Buffer.from(memory.bytes.subarray(0x1800000, 0x1800000 + total)).equals(data));
        },
      ),
      { numRuns: 100 },
    );
  });
});

/** A FileIo that only records, for checking what RawDisk asks of it. */
class RecordingFileIo extends SyncFileIo {
  readonly calls: string[] = [];
  override writev(fd: number, iov: IovecList, fileOffset: number, token: number, done: FileIoDone, dsync = false): void {
    this.calls.push(`writev ${fileOffset} ${iov.byteLength} dsync=${dsync}`);
    super.writev(fd, iov, fileOffset, token, done, dsync);
  }
  override fdatasync(fd: number, token: number, done: FileIoDone): void {
    this.calls.push('fdatasync');
    super.fdatasync(fd, token, done);
  }
}

test('FUA becomes a RWF_DSYNC write and flush an fdatasync; a shared engine is left open on close', async () => {
  const fileIo: FileIo & { calls: string[] } = new RecordingFileIo();
  const disk = await openDisk(imagePath(), { create: { sizeBytes: MiB }, fileIo });
  assert.equal(await run(disk, 'write', { offset: 0, length: 4096, gpa: 0, fua: true }), 4096);
  assert.equal(await run(disk, 'write', { offset: 4096, length: 4096, gpa: 0 }), 4096);
  assert.equal(await run(disk, 'flush'), 0);
  assert.deepEqual(fileIo.calls, ['writev 0 4096 dsync=true', 'writev 4096 4096 dsync=false', 'fdatasync']);
  await closeDisk(disk);
  // Still usable by its owner.
  const other = await openDisk(imagePath(), { create: { sizeBytes: MiB }, fileIo });
  assert.equal(await run(other, 'write', { offset: 0, length: 512, gpa: 0 }), 512);
});

describe('lockImage', () => {
  test('exclusive excludes everyone, shared excludes only writers, per open file (also within one process)', () => {
    const file = imagePath();
    fs.writeFileSync(file, Buffer.alloc(4096));
    const a = openFile(file, O_RDWR);
    const b = openFile(file, O_RDWR);
    const c = openFile(file, O_RDONLY);
    const d = openFile(file, O_RDONLY);
    try {
      const held = lockImage(a, file, 'exclusive');
      assert.equal(held.mode, 'exclusive');
      assert.throws(() => lockImage(b, file, 'exclusive'), (e: unknown) => e instanceof ImageInUseError && e.path === file && e.mode === 'exclusive');
      assert.throws(() => lockImage(c, file, 'shared'), (e: unknown) => e instanceof ImageInUseError && /read-write/.test(e.message));
      held.release();
      held.release(); // idempotent
      const r1 = lockImage(c, file, 'shared');
      const r2 = lockImage(d, file, 'shared');
      assert.throws(() => lockImage(b, file, 'exclusive'), ImageInUseError);
      r1.release();
      assert.throws(() => lockImage(b, file, 'exclusive'), ImageInUseError, 'one reader is enough to keep writers out');
      r2.release();
      lockImage(b, file, 'exclusive');
    } finally {
      for (const fd of [a, b, c, d]) closeFile(fd);
    }
  });

  test('closing the locked fd releases it; closing another fd of the file does not', () => {
    const file = imagePath();
    fs.writeFileSync(file, Buffer.alloc(4096));
    const a = openFile(file, O_RDWR);
    const other = openFile(file, O_RDONLY);
    lockImage(a, file, 'exclusive');
    closeFile(other); // a POSIX (non-OFD) lock would be lost here
    const b = openFile(file, O_RDWR);
    try {
      assert.throws(() => lockImage(b, file, 'exclusive'), ImageInUseError);
      closeFile(a);
      lockImage(b, file, 'exclusive');
    } finally {
      closeFile(b);
    }
  });
});

test('another process (a second VM) cannot open a locked image read-write; it gets a clear error', async () => {
  const file = imagePath();
  const disk = await openDisk(file, { create: { sizeBytes: MiB } });
  const module = new URL('../src/backends/block/raw-disk.js', import.meta.url).href;
  const poller = new URL('../src/sys/epoll.js', import.meta.url).href;
  const script = `
    const { openRawDisk } = await import(${JSON.stringify(module)});
    const { Poller } = await import(${JSON.stringify(poller)});
    const poller = new Poller();
    for (const readOnly of [false, true]) {
      try { const d = await openRawDisk(process.argv[1], { poller, readOnly }); await d.close(); console.log('opened'); }
      catch (e) { console.log(e.name + ': ' + e.message); }
    }
    await poller.stop();`;
  const child = spawnSync(process.execPath, ['--input-type=module', '-e', script, file], { encoding: 'utf8', timeout: 20_000 });
  assert.equal(child.status, 0, child.stderr);
  const lines = child.stdout.trim().split('\n');
  assert.equal(lines.length, 2);
  for (const line of lines) assert.match(line, /^ImageInUseError: disk image '.*' is in use/);
  assert.ok(lines[0]!.includes(file));
  await closeDisk(disk);
  const again = spawnSync(process.execPath, ['--input-type=module', '-e', script, file], { encoding: 'utf8', timeout: 20_000 });
  assert.deepEqual(again.stdout.trim().split('\n'), ['opened', 'opened'], again.stderr);
});
