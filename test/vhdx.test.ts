// The VHDX backend against qemu-img 7.2: images qemu creates (fixed, dynamic, with and
// without ZERO block states) take random writes through BlockIo (also into absent blocks
// and concurrently into one absent block), read back, stay clean for `qemu-img check` and
// compare equal to a raw copy given the same writes; images createVhdx makes pass
// `qemu-img check`/`info` and qemu reads back what enlighten wrote; read-only opens write
// nothing; discard frees blocks; a hand-written log is replayed (and agrees with qemu's
// own replay) or overlaid read-only; corrupted images fail cleanly at open; a BAT entry
// outside the file fails only its own requests.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import type { BlockBackend, BlockDone, BlockIo } from '../src/backends/block/block-backend.js';
import { SyncFileIo, UringFileIo, type FileIo, type FileIoDone } from '../src/backends/block/file-io.js';
import { createVhdx } from '../src/backends/block/vhdx/vhdx-create.js';
import { openVhdxDisk, type VhdxDisk } from '../src/backends/block/vhdx/vhdx-disk.js';
import {
  batIndexOfBlock, decodeHeader, decodeRegionTable, encodeHeader, HEADER1_OFFSET, HEADER2_OFFSET, HEADER_BYTES, MiB, PAYLOAD_BLOCK_ZERO,
  REGION_TABLE1_OFFSET, REGION_TABLE_BYTES, viewOf, ZERO_GUID,
} from '../src/backends/block/vhdx/vhdx-format.js';
import { encodeLogEntry } from '../src/backends/block/vhdx/vhdx-log.js';
import { GuestMemory } from '../src/memory/guest-memory.js';
import { Poller } from '../src/sys/epoll.js';
import { IovecList } from '../src/sys/iovec.js';
import { pattern, runTool, scratchDir, sha256File } from './support/storage.js';

const MEMORY_BYTES = 64 * MiB;
const memory = GuestMemory.create(MEMORY_BYTES, 'vhdx-test');
const dir = scratchDir('vhdx');
after(() => {
  fs.rmSync(dir, { recursive: true, force: true });
  memory.close();
});

// Both engines run the data path: io_uring (production) and blocking calls (fallback).
const poller = new Poller();
const syncIo = new SyncFileIo();
const uringIo = new UringFileIo(poller, 64);
const fileIo: FileIo = syncIo;
after(async () => {
  syncIo.close();
  uringIo.close();
  await poller.stop();
});

/** SyncFileIo on a filesystem that cannot punch holes: discard must write zeros instead. */
class NoPunchFileIo implements FileIo {
  readv(fd: number, iov: IovecList, offset: number, token: number, done: FileIoDone): void {
    syncIo.readv(fd, iov, offset, token, done);
  }
  writev(fd: number, iov: IovecList, offset: number, token: number, done: FileIoDone, dsync?: boolean): void {
    syncIo.writev(fd, iov, offset, token, done, dsync);
  }
  fdatasync(fd: number, token: number, done: FileIoDone): void {
    syncIo.fdatasync(fd, token, done);
  }
  punchHole(_fd: number, _offset: number, _length: number, token: number, done: FileIoDone): void {
    setImmediate(() => done.fileIoDone(token, -95));
  }
  close(): void {}
}

// ---- Driving BlockIo ----

const PAGE = 4096;
/** Guest memory is handed out in per-request areas; a bump allocator is enough for a test. */
let nextArea = 0;
function area(bytes: number): number {
  const size = Math.ceil(bytes / PAGE) * PAGE;
  if (nextArea + size > MEMORY_BYTES) nextArea = 0;
  const gpa = nextArea;
  nextArea += size;
  return gpa;
}

class Driver implements BlockDone {
  private readonly waiting = new Map<BlockIo, (result: number) => void>();
  blockDone(io: BlockIo, result: number): void {
    const resolve = this.waiting.get(io);
    assert.ok(resolve, 'completion for an unknown request');
    this.waiting.delete(io);
    resolve(result);
  }

  /** Submits one request whose buffer is `gpa..gpa+length`, scattered as its pages in reverse order. */
  submit(disk: BlockBackend, op: 'read' | 'write' | 'flush' | 'discard', offset: number, length: number, gpa = 0, fua = false): Promise<number> {
    const iov = new IovecList(Math.max(1, Math.ceil(length / PAGE)));
    if (op === 'read' || op === 'write') {
      const pages: Array<[number, number]> = [];
      for (let at = 0; at < length; at += PAGE) pages.push([at, Math.min(PAGE, length - at)]);
      // The iovecs list the guest range in order, but split at pages: a piece boundary
      // inside the request then falls mid-list.
      for (const [at, len] of pages) iov.push(Number(memory.base) + gpa + at, len);
    }
    const io: BlockIo = { offset, length, iov, memory, fua, tag: undefined };
    return new Promise((resolve) => {
      this.waiting.set(io, resolve);
      disk[op](io, this);
    });
  }
}
const driver = new Driver();

async function writeBytes(disk: BlockBackend, offset: number, data: Uint8Array, fua = false): Promise<void> {
  const gpa = area(data.length);
  memory.bytes.set(data, gpa);
  assert.equal(await driver.submit(disk, 'write', offset, data.length, gpa, fua), data.length);
}

async function readBytes(disk: BlockBackend, offset: number, length: number): Promise<Uint8Array> {
  const gpa = area(length);
  memory.bytes.fill(0xa5, gpa, gpa + length);
  assert.equal(await driver.submit(disk, 'read', offset, length, gpa), length);
  return memory.bytes.slice(gpa, gpa + length);
}

async function qemu(...args: string[]): Promise<string> {
  const result = await runTool('qemu-img', args);
  assert.equal(result.code, 0, `qemu-img ${args.join(' ')} failed: ${result.stderr}`);
  return result.stdout;
}

function sameBytes(actual: Uint8Array, expected: Uint8Array, what: string): void {
  if (Buffer.compare(Buffer.from(actual), Buffer.from(expected)) !== 0) assert.fail(`${what}: contents differ`);
}

/** A seeded generator so failures reproduce. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 2 ** 32;
  };
}

interface Write {
  offset: number;
  data: Uint8Array;
}

/** Random writes over the disk: mostly small, some across a block boundary, some large. */
function randomWrites(seed: number, sizeBytes: number, blockBytes: number, count: number): Write[] {
  const random = rng(seed);
  const writes: Write[] = [];
  for (let i = 0; i < count; i++) {
    const kind = random();
    let length = kind < 0.6 ? (1 + Math.floor(random() * 16)) * 512 : kind < 0.9 ? (1 + Math.floor(random() * 64)) * 4096 : blockBytes + 8192;
    length = Math.min(length, sizeBytes);
    let offset = Math.floor((random() * (sizeBytes - length)) / 512) * 512;
    if (kind >= 0.8 && kind < 0.9) {
      // Straddle a block boundary.
      const boundary = (1 + Math.floor(random() * (sizeBytes / blockBytes - 1))) * blockBytes;
      offset = Math.max(0, Math.min(sizeBytes - length, boundary - 2048));
    }
    writes.push({ offset, data: pattern(seed * 1000 + i, length) });
  }
  return writes;
}

/** Writes through enlighten (in batches of concurrent requests), mirrors them into a raw file, checks each by reading back. */
async function exerciseImage(image: string, raw: string, writes: Write[], io: FileIo = fileIo): Promise<void> {
  const disk = await openVhdxDisk(image, { fileIo: io });
  try {
    const rawFd = fs.openSync(raw, 'r+');
    try {
      for (let i = 0; i < writes.length; i += 4) {
        const batch = writes.slice(i, i + 4);
        // Overlapping writes in one batch would race: only batch disjoint ones.
        const disjoint = batch.every((a, j) => batch.every((b, k) => j === k || a.offset + a.data.length <= b.offset || b.offset + b.data.length <= a.offset));
        if (disjoint) await Promise.all(batch.map((w) => writeBytes(disk, w.offset, w.data)));
        else for (const w of batch) await writeBytes(disk, w.offset, w.data);
        for (const w of batch) fs.writeSync(rawFd, w.data, 0, w.data.length, w.offset);
      }
      for (const w of writes.slice(-8)) {
        const expected = Buffer.alloc(w.data.length);
        fs.readSync(rawFd, expected, 0, w.data.length, w.offset);
        sameBytes(await readBytes(disk, w.offset, w.data.length), expected, `read back at ${w.offset}`);
      }
    } finally {
      fs.closeSync(rawFd);
    }
    assert.equal(await driver.submit(disk, 'flush', 0, 0), 0);
    assert.equal(disk.stats.errors, 0);
  } finally {
    await disk.close();
  }
}

async function checkAndCompare(image: string, raw: string): Promise<void> {
  const check = await runTool('qemu-img', ['check', '-f', 'vhdx', image]);
  assert.equal(check.code, 0, `qemu-img check: ${check.stdout}${check.stderr}`);
  const compare = await runTool('qemu-img', ['compare', '-f', 'vhdx', '-F', 'raw', image, raw]);
  assert.equal(compare.code, 0, `qemu-img compare: ${compare.stdout}${compare.stderr}`);
}

describe('VHDX images made by qemu-img', () => {
  const variants: Array<{ name: string; options: string[] }> = [
    { name: 'dynamic', options: [] },
    { name: 'dynamic-no-zero-state', options: ['-o', 'block_state_zero=off'] },
    { name: 'fixed', options: ['-o', 'subformat=fixed'] },
    { name: 'fixed-no-zero-state', options: ['-o', 'subformat=fixed,block_state_zero=off'] },
    { name: 'dynamic-1m-blocks', options: ['-o', 'block_size=1M'] },
  ];
  const engines: Array<[string, FileIo]> = [['SyncFileIo', syncIo], ['UringFileIo', uringIo]];
  for (const [index, variant] of variants.entries()) {
    for (const [engineName, engine] of engines) {
      // Every variant on the production engine; the fallback engine on two of them.
      if (engine === syncIo && index > 1) continue;
      test(`${variant.name} (${engineName}): random writes read back, qemu-img check is clean, compare equals a raw copy`, async () => {
        const size = 48 * MiB;
        const name = `qemu-${variant.name}-${engineName}`;
        const image = path.join(dir, `${name}.vhdx`);
        const raw = path.join(dir, `${name}.raw`);
        await qemu('create', '-q', '-f', 'vhdx', ...variant.options, image, String(size));
        await qemu('convert', '-f', 'vhdx', '-O', 'raw', image, raw);
        const disk = await openVhdxDisk(image, { fileIo: engine, readOnly: true });
        const blockBytes = disk.blockSize;
        await disk.close();
        await exerciseImage(image, raw, randomWrites(index + 1, size, blockBytes, 60), engine);
        await checkAndCompare(image, raw);
        // A second session sees the same data (the BAT went to the file).
        const again = await openVhdxDisk(image, { fileIo: engine, readOnly: true });
        try {
          const expected = fs.readFileSync(raw);
          sameBytes(await readBytes(again, 0, 16 * MiB), expected.subarray(0, 16 * MiB), 'first 16 MiB after reopening');
        } finally {
          await again.close();
        }
        fs.rmSync(image);
        fs.rmSync(raw);
      });
    }
  }

  test('4096-byte logical sectors', async () => {
    const image = path.join(dir, 'created-4k.vhdx');
    await createVhdx(image, { sizeBytes: 32 * MiB, type: 'dynamic', logicalSectorBytes: 4096, blockBytes: 2 * MiB });
    const disk = await openVhdxDisk(image, { fileIo });
    try {
      assert.equal(disk.info.logicalBlockBytes, 4096);
      assert.equal(await driver.submit(disk, 'read', 512, 512, area(512)), -22, 'a 512-byte read on a 4K disk is refused');
      const data = pattern(77, 3 * 4096);
      await writeBytes(disk, 2 * MiB - 4096, data);
      sameBytes(await readBytes(disk, 2 * MiB - 4096, data.length), data, '4K read back');
    } finally {
      await disk.close();
    }
    // qemu 7.2 supports only 512-byte logical sectors in VHDX, so check by reopening.
    const again = await openVhdxDisk(image, { fileIo, readOnly: true });
    try {
      sameBytes(await readBytes(again, 2 * MiB - 4096, 3 * 4096), pattern(77, 3 * 4096), 'after reopening');
    } finally {
      await again.close();
    }
  });
});

describe('concurrent writes into one absent block', () => {
  for (const [engineName, engine] of [['SyncFileIo', syncIo], ['UringFileIo', uringIo]] as const) {
  test(`allocate the block once and keep every write (${engineName})`, async () => {
    const image = path.join(dir, `concurrent-${engineName}.vhdx`);
    await createVhdx(image, { sizeBytes: 16 * MiB, type: 'dynamic', blockBytes: 4 * MiB });
    const before = fs.statSync(image).size;
    const disk = await openVhdxDisk(image, { fileIo: engine });
    const writes = Array.from({ length: 16 }, (_, i) => ({ offset: 4 * MiB + i * 64 * 1024 + 512, data: pattern(500 + i, 8192) }));
    try {
      await Promise.all(writes.map((w) => writeBytes(disk, w.offset, w.data)));
      for (const w of writes) sameBytes(await readBytes(disk, w.offset, w.data.length), w.data, `write at ${w.offset}`);
      assert.deepEqual(await readBytes(disk, 4 * MiB, 512), new Uint8Array(512), 'the rest of the block reads as zeros');
    } finally {
      await disk.close();
    }
    assert.equal(fs.statSync(image).size, Math.ceil(before / MiB) * MiB + 4 * MiB, 'exactly one block was added to the file');
    const raw = path.join(dir, `concurrent-${engineName}.raw`);
    await qemu('convert', '-f', 'vhdx', '-O', 'raw', image, raw);
    const bytes = fs.readFileSync(raw);
    for (const w of writes) sameBytes(bytes.subarray(w.offset, w.offset + w.data.length), w.data, `qemu sees write at ${w.offset}`);
  });
  }
});

describe('createVhdx', () => {
  for (const type of ['fixed', 'dynamic'] as const) {
    test(`${type}: qemu-img check is clean, info has the size, qemu reads what enlighten wrote`, async () => {
      const size = 40 * MiB + 512 * 3;
      const image = path.join(dir, `created-${type}.vhdx`);
      await createVhdx(image, { sizeBytes: size, type, blockBytes: 8 * MiB });
      const info = JSON.parse(await qemu('info', '--output=json', '-f', 'vhdx', image)) as { 'virtual-size': number; format: string; 'cluster-size'?: number };
      assert.equal(info['virtual-size'], size);
      assert.equal(info.format, 'vhdx');
      await qemu('check', '-f', 'vhdx', image);
      const raw = path.join(dir, `created-${type}.raw`);
      fs.closeSync(fs.openSync(raw, 'w'));
      fs.truncateSync(raw, size);
      const writes = randomWrites(type === 'fixed' ? 91 : 92, size, 8 * MiB, 40);
      writes.push({ offset: size - 1536, data: pattern(93, 1536) }); // the very end of a disk not a whole number of blocks
      await exerciseImage(image, raw, writes);
      await checkAndCompare(image, raw);
      const converted = path.join(dir, `created-${type}.converted`);
      await qemu('convert', '-f', 'vhdx', '-O', 'raw', image, converted);
      assert.equal(await sha256File(converted), await sha256File(raw));
    });
  }

  test('defaults follow qemu-img (block size by disk size) and refuse bad arguments', async () => {
    const image = path.join(dir, 'defaults.vhdx');
    await createVhdx(image, { sizeBytes: 2 * 1024 * MiB, type: 'dynamic' });
    const disk = await openVhdxDisk(image, { fileIo, readOnly: true });
    assert.equal(disk.blockSize, 16 * MiB);
    assert.equal(disk.info.sizeBytes, 2 * 1024 * MiB);
    assert.equal(disk.info.discard, false, 'read-only');
    await disk.close();
    await assert.rejects(createVhdx(image, { sizeBytes: MiB, type: 'dynamic' }), /EEXIST/, 'an existing file is not overwritten');
    await assert.rejects(createVhdx(path.join(dir, 'bad1.vhdx'), { sizeBytes: 1000, type: 'dynamic' }), RangeError);
    await assert.rejects(createVhdx(path.join(dir, 'bad2.vhdx'), { sizeBytes: MiB, type: 'dynamic', blockBytes: 3 * MiB }), RangeError);
    assert.equal(fs.existsSync(path.join(dir, 'bad1.vhdx')), false);
  });
});

describe('read-only and read-write opens', () => {
  test('a read-only open writes nothing and refuses writes and discards', async () => {
    const image = path.join(dir, 'readonly.vhdx');
    await createVhdx(image, { sizeBytes: 16 * MiB, type: 'dynamic', blockBytes: MiB });
    const rw = await openVhdxDisk(image, { fileIo });
    await writeBytes(rw, 0, pattern(1, 4096));
    await rw.close();
    const hash = await sha256File(image);
    const mtime = fs.statSync(image).mtimeMs;
    const disk = await openVhdxDisk(image, { fileIo, readOnly: true });
    try {
      assert.equal(disk.info.readOnly, true);
      sameBytes(await readBytes(disk, 0, 4096), pattern(1, 4096), 'read-only read');
      assert.equal(await driver.submit(disk, 'write', 0, 4096, area(4096)), -30);
      assert.equal(await driver.submit(disk, 'discard', 0, MiB), -30);
    } finally {
      await disk.close();
    }
    assert.equal(await sha256File(image), hash);
    assert.equal(fs.statSync(image).mtimeMs, mtime);
  });

  test('a read-write open advances the header sequence; the first write changes DataWriteGuid', async () => {
    const image = path.join(dir, 'headers.vhdx');
    await createVhdx(image, { sizeBytes: 16 * MiB, type: 'dynamic', blockBytes: MiB });
    const headers = () => {
      const fd = fs.openSync(image, 'r');
      try {
        const read = (offset: number) => {
          const b = Buffer.alloc(HEADER_BYTES);
          fs.readSync(fd, b, 0, HEADER_BYTES, offset);
          return decodeHeader(b)!;
        };
        const [a, b] = [read(HEADER1_OFFSET), read(HEADER2_OFFSET)];
        return a.sequenceNumber > b.sequenceNumber ? a : b;
      } finally {
        fs.closeSync(fd);
      }
    };
    const initial = headers();
    const disk = await openVhdxDisk(image, { fileIo });
    const opened = headers();
    assert.ok(opened.sequenceNumber > initial.sequenceNumber);
    assert.notEqual(opened.fileWriteGuid, initial.fileWriteGuid);
    assert.equal(opened.dataWriteGuid, initial.dataWriteGuid, 'no data changed yet');
    await writeBytes(disk, 0, pattern(2, 512));
    await disk.close();
    const written = headers();
    assert.notEqual(written.dataWriteGuid, initial.dataWriteGuid);
    assert.equal(written.fileWriteGuid, opened.fileWriteGuid, 'one FileWriteGuid per session');
    await qemu('check', '-f', 'vhdx', image);
  });

  test('a second read-write open of an image in use is refused', async () => {
    const image = path.join(dir, 'locked.vhdx');
    await createVhdx(image, { sizeBytes: 8 * MiB, type: 'dynamic', blockBytes: MiB });
    const disk = await openVhdxDisk(image, { fileIo });
    try {
      await assert.rejects(openVhdxDisk(image, { fileIo }), /in use/);
    } finally {
      await disk.close();
    }
  });

  test('close waits for requests in flight (FUA writes included) and may be called twice', async () => {
    const image = path.join(dir, 'close.vhdx');
    await createVhdx(image, { sizeBytes: 8 * MiB, type: 'dynamic', blockBytes: MiB });
    const disk = await openVhdxDisk(image, { fileIo: uringIo });
    const first = pattern(31, 64 * 1024);
    const second = pattern(32, 4096);
    const gpa1 = area(first.length);
    const gpa2 = area(second.length);
    memory.bytes.set(first, gpa1);
    memory.bytes.set(second, gpa2);
    const writes = [driver.submit(disk, 'write', 3 * MiB - 4096, first.length, gpa1, true), driver.submit(disk, 'write', 6 * MiB, second.length, gpa2, true)];
    const closes = [disk.close(), disk.close()];
    assert.deepEqual(await Promise.all(writes), [first.length, second.length]);
    await Promise.all(closes);
    const again = await openVhdxDisk(image, { fileIo, readOnly: true });
    try {
      sameBytes(await readBytes(again, 3 * MiB - 4096, first.length), first, 'FUA write across a block boundary');
      sameBytes(await readBytes(again, 6 * MiB, second.length), second, 'FUA write');
    } finally {
      await again.close();
    }
  });

  test('bad requests fail with EINVAL; after close requests fail with ENXIO', async () => {
    const image = path.join(dir, 'bad-requests.vhdx');
    await createVhdx(image, { sizeBytes: 8 * MiB, type: 'dynamic', blockBytes: MiB });
    const disk = await openVhdxDisk(image, { fileIo });
    assert.equal(await driver.submit(disk, 'read', 100, 512, area(512)), -22, 'unaligned offset');
    assert.equal(await driver.submit(disk, 'read', 8 * MiB - 512, 1024, area(1024)), -22, 'past the end');
    assert.equal(await driver.submit(disk, 'write', -512, 512, area(512)), -22, 'negative offset');
    assert.equal(await driver.submit(disk, 'discard', 8 * MiB, 512), -22, 'discard past the end');
    const io: BlockIo = { offset: 0, length: 4096, iov: new IovecList(1), memory, fua: false, tag: undefined };
    io.iov.push(Number(memory.base) + MEMORY_BYTES - 512, 4096); // runs off the end of guest RAM
    const result = await new Promise<number>((resolve) => disk.read(io, { blockDone: (_io, r) => resolve(r) }));
    assert.equal(result, -14, 'a buffer outside guest memory is refused, not zeroed');
    const sizeBefore = fs.statSync(image).size;
    for (const op of ['write', 'read'] as const) {
      const bad: BlockIo = { offset: 0, length: 4096, iov: new IovecList(2), memory, fua: false, tag: undefined };
      bad.iov.push(Number(memory.base), 2048);
      bad.iov.push(Number(memory.base) - 4096, 2048); // before guest RAM
      assert.equal(await new Promise<number>((resolve) => disk[op](bad, { blockDone: (_io, r) => resolve(r) })), -14, `${op} with a buffer outside guest RAM`);
    }
    assert.equal(fs.statSync(image).size, sizeBefore, 'a refused write allocates nothing');
    await disk.close();
    assert.equal(await driver.submit(disk, 'read', 0, 512, area(512)), -6);
  });
});

describe('discard', () => {
  for (const [engineName, engine] of [['hole punching', syncIo], ['no hole punching', new NoPunchFileIo()]] as const) {
  test(`dynamic: whole blocks go back to ZERO in the BAT, partial ranges read as zeros (${engineName})`, async () => {
    const image = path.join(dir, `discard-${engineName.replace(/ /g, '-')}.vhdx`);
    await createVhdx(image, { sizeBytes: 16 * MiB, type: 'dynamic', blockBytes: MiB });
    const disk = await openVhdxDisk(image, { fileIo: engine });
    const raw = new Uint8Array(16 * MiB);
    try {
      assert.equal(disk.info.discard, true);
      const data = pattern(9, 4 * MiB);
      await writeBytes(disk, 2 * MiB, data);
      raw.set(data, 2 * MiB);
      // Blocks 3 and 4 whole, plus the last 64 KiB of block 2 and the first 4 KiB of block 5.
      assert.equal(await driver.submit(disk, 'discard', 3 * MiB - 65536, 2 * MiB + 65536 + 4096), 0);
      raw.fill(0, 3 * MiB - 65536, 5 * MiB + 4096);
      sameBytes(await readBytes(disk, 0, 16 * MiB), raw, 'after discard');
    } finally {
      await disk.close();
    }
    const fd = fs.openSync(image, 'r');
    try {
      const table = Buffer.alloc(REGION_TABLE_BYTES);
      fs.readSync(fd, table, 0, REGION_TABLE_BYTES, REGION_TABLE1_OFFSET);
      const bat = decodeRegionTable(table).bat;
      const entries = Buffer.alloc(16 * 8);
      fs.readSync(fd, entries, 0, entries.length, bat.fileOffset);
      const state = (block: number) => entries.readUInt32LE(batIndexOfBlock(block, 4096) * 8) & 7;
      assert.deepEqual([2, 3, 4, 5].map(state), [6, PAYLOAD_BLOCK_ZERO, PAYLOAD_BLOCK_ZERO, 6]);
    } finally {
      fs.closeSync(fd);
    }
    const rawFile = path.join(dir, `discard-${engineName.replace(/ /g, '-')}.raw`);
    fs.writeFileSync(rawFile, raw);
    await checkAndCompare(image, rawFile);
  });
  }

  test('fixed: discard zeroes the range but keeps every block allocated', async () => {
    const image = path.join(dir, 'discard-fixed.vhdx');
    await createVhdx(image, { sizeBytes: 8 * MiB, type: 'fixed', blockBytes: MiB });
    const disk = await openVhdxDisk(image, { fileIo });
    try {
      assert.equal(disk.info.discard, false);
      await writeBytes(disk, 0, pattern(10, 2 * MiB));
      assert.equal(await driver.submit(disk, 'discard', 0, MiB), 0);
      assert.deepEqual(await readBytes(disk, 0, MiB), new Uint8Array(MiB));
      sameBytes(await readBytes(disk, MiB, MiB), pattern(10, 2 * MiB).subarray(MiB), 'second block kept');
    } finally {
      await disk.close();
    }
    await qemu('check', '-f', 'vhdx', image);
  });
});

// ---- The log ----

interface ImageLayout {
  batOffset: number;
  logOffset: number;
  logLength: number;
}

function layoutOf(image: string): ImageLayout {
  const fd = fs.openSync(image, 'r');
  try {
    const table = Buffer.alloc(REGION_TABLE_BYTES);
    fs.readSync(fd, table, 0, REGION_TABLE_BYTES, REGION_TABLE1_OFFSET);
    const header = Buffer.alloc(HEADER_BYTES);
    fs.readSync(fd, header, 0, HEADER_BYTES, HEADER2_OFFSET);
    const h = decodeHeader(header)!;
    return { batOffset: decodeRegionTable(table).bat.fileOffset, logOffset: h.logOffset, logLength: h.logLength };
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Makes a "crashed" image: block 1's data is in the file but its BAT entry only in the
 * log (two entries: the first zeroes a BAT sector, the second writes it), as a writer
 * that died between its log write and its metadata write leaves it. Returns the data.
 */
function crashAfterLogWrite(image: string, logPosition: number): Uint8Array {
  const layout = layoutOf(image);
  const fd = fs.openSync(image, 'r+');
  try {
    const size = fs.fstatSync(fd).size;
    const blockOffset = Math.ceil(size / MiB) * MiB;
    const data = pattern(4242, MiB);
    fs.writeSync(fd, data, 0, data.length, blockOffset);
    // The BAT's first sector as it should become: block 1 present at blockOffset.
    const sector = Buffer.alloc(4096);
    fs.readSync(fd, sector, 0, 4096, layout.batOffset);
    sector.writeUInt32LE(((blockOffset / MiB) % 4096 << 20 | 6) >>> 0, 8);
    sector.writeUInt32LE(Math.floor(blockOffset / MiB / 4096), 12);
    const logGuid = '6c0a3f4e-1d2b-4c5a-9e8f-0123456789ab';
    const fileEnd = blockOffset + MiB;
    const first = encodeLogEntry({ sequenceNumber: 41n, tail: logPosition, logGuid, flushedFileOffset: fileEnd, lastFileOffset: fileEnd, writes: [{ fileOffset: layout.batOffset, length: 4096 }] });
    const second = encodeLogEntry({
      sequenceNumber: 42n, tail: logPosition, logGuid, flushedFileOffset: fileEnd, lastFileOffset: fileEnd,
      writes: [{ fileOffset: layout.batOffset, length: 4096, data: new Uint8Array(sector) }],
    });
    // Stale garbage and an entry of another log GUID elsewhere in the log must be ignored.
    const stale = encodeLogEntry({ sequenceNumber: 99n, tail: 0, logGuid: '11111111-2222-3333-4444-555555555555', flushedFileOffset: 0, lastFileOffset: 0, writes: [{ fileOffset: 3 * MiB, length: 4096 }] });
    const log = new Uint8Array(layout.logLength);
    log.set(stale, (logPosition + 65536) % layout.logLength);
    const entries = new Uint8Array(first.length + second.length);
    entries.set(first, 0);
    entries.set(second, first.length);
    // Place the entries so that they wrap around the end of the log when logPosition is near it.
    for (let i = 0; i < entries.length; i += 4096) log.set(entries.subarray(i, i + 4096), (logPosition + i) % layout.logLength);
    fs.writeSync(fd, log, 0, log.length, layout.logOffset);
    // Point the current header at the log.
    const header = Buffer.alloc(HEADER_BYTES);
    fs.readSync(fd, header, 0, HEADER_BYTES, HEADER2_OFFSET);
    const h = decodeHeader(header)!;
    fs.writeSync(fd, encodeHeader({ ...h, sequenceNumber: h.sequenceNumber + 5n, logGuid }), 0, HEADER_BYTES, HEADER1_OFFSET);
    return data;
  } finally {
    fs.closeSync(fd);
  }
}

describe('log replay', () => {
  for (const position of [0, 1 * MiB - 4096]) {
    test(`a read-write open replays the log (entries at ${position}) and clears LogGuid; qemu agrees`, async () => {
      const image = path.join(dir, `log-${position}.vhdx`);
      await createVhdx(image, { sizeBytes: 8 * MiB, type: 'dynamic', blockBytes: MiB });
      const data = crashAfterLogWrite(image, position);
      const qemuCopy = path.join(dir, `log-${position}-qemu.vhdx`);
      fs.copyFileSync(image, qemuCopy);

      const disk = await openVhdxDisk(image, { fileIo });
      try {
        assert.equal(disk.logState, 'replayed');
        sameBytes(await readBytes(disk, MiB, MiB), data, 'block 1 after replay');
        assert.deepEqual(await readBytes(disk, 0, 4096), new Uint8Array(4096));
      } finally {
        await disk.close();
      }
      const header = Buffer.alloc(HEADER_BYTES);
      const fd = fs.openSync(image, 'r');
      const current = [HEADER1_OFFSET, HEADER2_OFFSET].map((offset) => {
        fs.readSync(fd, header, 0, HEADER_BYTES, offset);
        return decodeHeader(header)!;
      });
      fs.closeSync(fd);
      assert.deepEqual(current.map((h) => h.logGuid), [ZERO_GUID, ZERO_GUID]);
      await qemu('check', '-f', 'vhdx', image);

      // qemu replays the same log on its own (check -r all opens read-write): same result.
      await qemu('check', '-r', 'all', '-f', 'vhdx', qemuCopy);
      const ours = path.join(dir, `log-${position}.raw`);
      const theirs = path.join(dir, `log-${position}-qemu.raw`);
      await qemu('convert', '-f', 'vhdx', '-O', 'raw', image, ours);
      await qemu('convert', '-f', 'vhdx', '-O', 'raw', qemuCopy, theirs);
      assert.equal(await sha256File(ours), await sha256File(theirs));
    });
  }

  test('a read-only open overlays the log in memory and writes nothing', async () => {
    const image = path.join(dir, 'log-readonly.vhdx');
    await createVhdx(image, { sizeBytes: 8 * MiB, type: 'dynamic', blockBytes: MiB });
    const data = crashAfterLogWrite(image, 8192);
    const hash = await sha256File(image);
    const disk = await openVhdxDisk(image, { fileIo, readOnly: true });
    try {
      assert.equal(disk.logState, 'overlaid');
      sameBytes(await readBytes(disk, MiB, MiB), data, 'block 1 through the overlay');
    } finally {
      await disk.close();
    }
    assert.equal(await sha256File(image), hash);
    // qemu refuses such an image read-only; enlighten's read-write open then fixes it for qemu too.
    const refused = await runTool('qemu-img', ['convert', '-f', 'vhdx', '-O', 'raw', image, path.join(dir, 'log-readonly.raw')]);
    assert.notEqual(refused.code, 0);
    await (await openVhdxDisk(image, { fileIo })).close();
    await qemu('convert', '-f', 'vhdx', '-O', 'raw', image, path.join(dir, 'log-readonly.raw'));
  });

  test('a log entry with a bad checksum is not replayed', async () => {
    const image = path.join(dir, 'log-bad.vhdx');
    await createVhdx(image, { sizeBytes: 8 * MiB, type: 'dynamic', blockBytes: MiB });
    crashAfterLogWrite(image, 0);
    const layout = layoutOf(image);
    const fd = fs.openSync(image, 'r+');
    // Flip a byte in the second entry's data sector: its checksum fails, so the active
    // sequence is only the first entry (which zeroes the BAT sector).
    fs.writeSync(fd, Buffer.from([0x5a]), 0, 1, layout.logOffset + 4096 + 4096 + 100);
    fs.closeSync(fd);
    const disk = await openVhdxDisk(image, { fileIo });
    try {
      assert.equal(disk.logState, 'replayed');
      assert.deepEqual(await readBytes(disk, MiB, 4096), new Uint8Array(4096));
    } finally {
      await disk.close();
    }
    await qemu('check', '-f', 'vhdx', image);
  });
});

// ---- Damaged images ----

describe('damaged images', () => {
  let pristine: Buffer;
  let layout: ImageLayout;
  const template = path.join(dir, 'fuzz-template.vhdx');
  before(async () => {
    await createVhdx(template, { sizeBytes: 64 * MiB, type: 'dynamic', blockBytes: MiB });
    const disk = await openVhdxDisk(template, { fileIo });
    for (let block = 0; block < 64; block += 7) await writeBytes(disk, block * MiB, pattern(block, 4096));
    await disk.close();
    pristine = fs.readFileSync(template);
    layout = layoutOf(template);
  });

  test('random corruption of headers, region table, metadata and BAT: open fails cleanly or the disk works', async () => {
    const target = path.join(dir, 'fuzz.vhdx');
    const metadataOffset = layout.batOffset + MiB;
    const areas = [
      [0, 8], [HEADER1_OFFSET, 96], [HEADER2_OFFSET, 96], [REGION_TABLE1_OFFSET, 96], [REGION_TABLE1_OFFSET + 65536, 96],
      [layout.logOffset, 4096], [layout.batOffset, 64 * 8 + 64], [metadataOffset, 32 * 6], [metadataOffset + 65536, 40],
    ] as const;
    let opened = 0;
    let refused = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ area: fc.nat(areas.length - 1), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }), { minLength: 1, maxLength: 8 }),
        fc.boolean(),
        async (edits, fixChecksums) => {
          const bytes = Buffer.from(pristine.subarray(0, metadataOffset + 2 * 65536));
          for (const edit of edits) {
            const [start, length] = areas[edit.area]!;
            bytes[start + (edit.at % length)] = edit.value;
          }
          // Resealing the checksums lets corruption reach the decoders behind them.
          if (fixChecksums) {
            for (const offset of [HEADER1_OFFSET, HEADER2_OFFSET]) resealAt(bytes, offset, HEADER_BYTES);
            for (const offset of [REGION_TABLE1_OFFSET, REGION_TABLE1_OFFSET + 65536]) resealAt(bytes, offset, REGION_TABLE_BYTES);
          }
          // Copy the template, then overwrite only the structures (the payload stays as it was).
          fs.copyFileSync(template, target);
          const fd = fs.openSync(target, 'r+');
          for (const [start, length] of [[0, REGION_TABLE1_OFFSET + 2 * REGION_TABLE_BYTES], [layout.logOffset, 4096], [layout.batOffset, 4096], [metadataOffset, 2 * 65536]] as const) {
            fs.writeSync(fd, bytes, start, length, start);
          }
          fs.closeSync(fd);
          let disk: VhdxDisk;
          try {
            disk = await openVhdxDisk(target, { fileIo, readOnly: true });
          } catch (error) {
            assert.ok(error instanceof Error, 'open fails with an Error');
            assert.ok(/VhdxFormatError|SysError/.test(error.name), `unexpected ${error.name}: ${error.message}`);
            refused++;
            return;
          }
          opened++;
          try {
            // Every request completes (data or -EIO), nothing throws.
            for (const offset of [0, 7 * MiB, disk.info.sizeBytes - 4096]) {
              const result = await driver.submit(disk, 'read', offset, 4096, area(4096));
              assert.ok(result === 4096 || result === -5, `read result ${result}`);
            }
          } finally {
            await disk.close();
          }
        },
      ),
      { numRuns: 200, seed: 20261127 },
    );
    assert.ok(refused > 0 && opened > 0, `both outcomes happen (opened ${opened}, refused ${refused})`);
  });

  test('a BAT entry pointing outside the file fails its own requests with EIO', async () => {
    const target = path.join(dir, 'bat-outside.vhdx');
    const bytes = Buffer.from(pristine);
    // Block 7 (present) now claims to live 1 TiB into the file.
    const at = layout.batOffset + batIndexOfBlock(7, 4096) * 8;
    bytes.writeUInt32LE(((1024 * 1024) % 4096 << 20 | 6) >>> 0, at);
    bytes.writeUInt32LE(Math.floor((1024 * 1024) / 4096), at + 4);
    fs.writeFileSync(target, bytes);
    const disk = await openVhdxDisk(target, { fileIo });
    try {
      assert.equal(await driver.submit(disk, 'read', 7 * MiB, 4096, area(4096)), -5);
      assert.equal(await driver.submit(disk, 'write', 7 * MiB, 4096, area(4096)), -5);
      sameBytes(await readBytes(disk, 14 * MiB, 4096), pattern(14, 4096), 'other blocks still read');
      assert.equal(await driver.submit(disk, 'read', 6 * MiB, 2 * MiB, area(2 * MiB)), -5, 'a request spanning the bad block fails');
    } finally {
      await disk.close();
    }
  });

  test('a BAT entry pointing into the BAT itself is refused at open', async () => {
    const target = path.join(dir, 'bat-self.vhdx');
    const bytes = Buffer.from(pristine);
    const at = layout.batOffset + batIndexOfBlock(7, 4096) * 8;
    bytes.writeUInt32LE(((layout.batOffset / MiB) << 20 | 6) >>> 0, at);
    bytes.writeUInt32LE(0, at + 4);
    fs.writeFileSync(target, bytes);
    await assert.rejects(openVhdxDisk(target, { fileIo }), /image's own structures/);
  });

  test('a differencing disk is refused with a clear error', async () => {
    const base = path.join(dir, 'base.vhdx');
    const child = path.join(dir, 'child.vhdx');
    await createVhdx(base, { sizeBytes: 8 * MiB, type: 'dynamic' });
    const metadataOffset = layoutOf(base).batOffset + MiB;
    const bytes = fs.readFileSync(base);
    // Set HasParent in the file parameters item (the first item, at 64 KiB into the region).
    bytes.writeUInt32LE(2, metadataOffset + 65536 + 4);
    fs.writeFileSync(child, bytes);
    await assert.rejects(openVhdxDisk(child, { fileIo }), /differencing/);
  });

  test('a file that is not VHDX is refused', async () => {
    const target = path.join(dir, 'not-vhdx.img');
    fs.writeFileSync(target, Buffer.alloc(2 * MiB));
    await assert.rejects(openVhdxDisk(target, { fileIo, readOnly: true }), /signature/);
    fs.writeFileSync(target, Buffer.from('vhdxfile'));
    await assert.rejects(openVhdxDisk(target, { fileIo, readOnly: true }), /too small/);
  });
});

function resealAt(bytes: Buffer, offset: number, length: number): void {
  const block = new Uint8Array(bytes.buffer, bytes.byteOffset + offset, length);
  const view = viewOf(block);
  view.setUint32(4, 0, true);
  view.setUint32(4, crc(block), true);
}

function crc(bytes: Uint8Array): number {
  // Independent of the implementation under test: bitwise CRC-32C.
  let c = 0xffffffff;
  for (const b of bytes) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}

