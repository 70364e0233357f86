// The disk-file FUSE server: the FUSE ABI codec (property tests), then a real mount on
// /dev/fuse over fake guest disks: mkfs.ext4 + e2fsck, fio with verification, unaligned
// I/O through node:fs, read-only disks, hole punching, remove() and unmount.
//
// The server runs on this thread's event loop, so everything that touches the mount is
// asynchronous (fs.promises, execFile): a synchronous call would wait for a reply this
// very thread has to write.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { DiskFileServer, type FuseChannel } from '../src/guest/fuse/disk-file-server.js';
import {
  decodeAttr,
  decodeDirents,
  decodeFallocateIn,
  decodeInHeader,
  decodeInitIn,
  decodeInitOut,
  decodeIoIn,
  decodeName,
  decodeSetattrIn,
  direntBytes,
  encodeAttr,
  encodeDirent,
  encodeInHeader,
  encodeInitOut,
  encodeIoIn,
  forEachBatchForget,
  FUSE_SERVER_MINOR,
  FuseOpcode,
  HeaderStatus,
  IN_HEADER_BYTES,
  InitFlag,
  InitVerdict,
  negotiateInit,
  newAttr,
  newInHeader,
  newIoIn,
  readU64,
  writeU64,
  type InitOut,
} from '../src/guest/fuse/fuse-protocol.js';
import { PageAllocator } from '../src/guest/page-allocator.js';
import { BlockOp, type GuestBlockDevice, type GuestBlockRequest } from '../src/guest/storvsc/guest-block-device.js';
import { GuestMemory } from '../src/memory/guest-memory.js';
import { Poller } from '../src/sys/epoll.js';
import { Errno } from '../src/sys/errors.js';
import { EventFd } from '../src/sys/eventfd.js';
import type { IovecList } from '../src/sys/iovec.js';
import { FuseDevice, isFuseMountPoint, listMounts, tryDetachMount } from '../src/sys/fuse-device.js';

const MiB = 1 << 20;

interface ToolResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a program without blocking this thread (which serves the mount it uses). */
function run(file: string, args: string[], timeoutMs = 60_000): Promise<ToolResult> {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: timeoutMs, maxBuffer: 16 << 20 }, (error, stdout, stderr) => {
      const code = error ? (typeof (error as { code?: unknown }).code === 'number' ? (error as { code: number }).code : -1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function mountedAt(dir: string): boolean {
  return fs
    .readFileSync('/proc/self/mounts', 'utf8')
    .split('\n')
    .some((line) => line.split(' ')[1] === dir);
}

// ---- a fake guest disk over guest memory ----

interface FakeDiskOptions {
  name: string;
  sizeBytes: number;
  blockBytes?: number;
  readOnly?: boolean;
  discard?: boolean;
}

/**
 * A GuestBlockDevice that keeps its blocks in a Uint8Array and copies to and from guest
 * RAM at the request's gpa on a later turn (setImmediate), as a real disk completes
 * asynchronously. It checks what the contract promises: aligned, in-range requests with
 * buffers inside guest RAM; anything else is recorded and fails with -EIO.
 */
class FakeDisk implements GuestBlockDevice {
  readonly name: string;
  readonly channel = 0;
  readonly target = 0;
  readonly lun: number;
  readonly sizeBytes: number;
  readonly blockBytes: number;
  readonly readOnly: boolean;
  readonly writeCache = true;
  readonly fua = false;
  readonly discard: boolean;
  present = true;
  readonly data: Uint8Array;
  readonly violations: string[] = [];
  readonly ops: string[] = [];
  readonly counts = { read: 0, write: 0, flush: 0, discard: 0 };
  inFlight = 0;
  maxInFlight = 0;
  /** While set, writes are parked here instead of completing. */
  holdWrites = false;
  private readonly held: (() => void)[] = [];

  constructor(private readonly memory: GuestMemory, options: FakeDiskOptions) {
    this.name = options.name;
    this.lun = Number(options.name.replace(/\D/g, '')) || 0;
    this.sizeBytes = options.sizeBytes;
    this.blockBytes = options.blockBytes ?? 512;
    this.readOnly = options.readOnly ?? false;
    this.discard = options.discard ?? false;
    this.data = new Uint8Array(options.sizeBytes);
  }

  get heldWrites(): number {
    return this.held.length;
  }

  /** Lets the oldest parked write complete. */
  releaseOne(): void {
    this.held.shift()?.();
  }

  releaseWrites(): void {
    this.holdWrites = false;
    for (const go of this.held.splice(0)) go();
  }

  submit(request: GuestBlockRequest): void {
    // Capture now: the request object is the caller's and is reused after done().
    const { op, offset, length, gpa } = request;
    const done = request.done;
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    const finish = (result: number): void => {
      this.inFlight--;
      done(result);
    };
    const problem = this.check(op, offset, length, gpa);
    if (problem) {
      this.violations.push(problem);
      setImmediate(() => finish(-Errno.EIO));
      return;
    }
    const complete = (): void => {
      switch (op) {
        case BlockOp.Read:
          this.counts.read++;
          this.memory.bytes.set(this.data.subarray(offset, offset + length), gpa);
          break;
        case BlockOp.Write:
          this.counts.write++;
          this.data.set(this.memory.bytes.subarray(gpa, gpa + length), offset);
          break;
        case BlockOp.Discard:
          this.counts.discard++;
          this.data.fill(0, offset, offset + length);
          break;
        case BlockOp.Flush:
          this.counts.flush++;
          break;
      }
      this.ops.push(`${['read', 'write', 'flush', 'discard'][op]}:${offset}+${length}`);
      finish(this.present ? 0 : -Errno.ENODEV);
    };
    if (op === BlockOp.Write && this.holdWrites) this.held.push(() => setImmediate(complete));
    else setImmediate(complete);
  }

  private check(op: BlockOp, offset: number, length: number, gpa: number): string | null {
    if (op === BlockOp.Flush) return length === 0 ? null : `flush with length ${length}`;
    if (op === BlockOp.Discard && !this.discard) return 'discard on a disk without discard';
    if (op === BlockOp.Write && this.readOnly) return 'write to a read-only disk';
    if (offset % this.blockBytes !== 0 || length % this.blockBytes !== 0 || length <= 0) return `unaligned ${op} ${offset}+${length}`;
    if (offset + length > this.sizeBytes) return `${op} past the end: ${offset}+${length}`;
    if (op !== BlockOp.Discard && !this.memory.contains(gpa, length)) return `buffer outside guest RAM: ${gpa}+${length}`;
    return null;
  }
}

// ---- codec property tests ----

describe('FUSE protocol codec', () => {
  test('decodeInHeader never throws and classifies every length', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 96 }), fc.nat(200), (raw, available) => {
        const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
        const h = newInHeader();
        const avail = Math.min(available, raw.length);
        const status = decodeInHeader(view, 0, avail, h);
        if (avail < IN_HEADER_BYTES) assert.equal(status, HeaderStatus.Truncated);
        else assert.equal(status, h.len === avail ? HeaderStatus.Ok : HeaderStatus.LengthMismatch);
      }),
    );
  });

  test('in header round-trips and the request id is echoed bit for bit', () => {
    fc.assert(
      fc.property(
        fc.record({
          len: fc.integer({ min: 40, max: 0xffffffff }),
          opcode: fc.nat(0xffffffff),
          uniqueLow: fc.nat(0xffffffff),
          uniqueHigh: fc.nat(0xffffffff),
          nodeid: fc.nat(Number.MAX_SAFE_INTEGER),
          uid: fc.nat(0xffffffff),
          gid: fc.nat(0xffffffff),
          pid: fc.nat(0xffffffff),
        }),
        (header) => {
          const view = new DataView(new ArrayBuffer(IN_HEADER_BYTES));
          encodeInHeader(view, 0, header);
          const out = newInHeader();
          decodeInHeader(view, 0, header.len, out);
          assert.deepEqual(out, { ...header });
        },
      ),
    );
  });

  test('u64 fields above 2^53 decode as -1, never as a rounded number', () => {
    fc.assert(
      fc.property(fc.bigUint64Array({ minLength: 1, maxLength: 1 }), ([value]) => {
        const view = new DataView(new ArrayBuffer(8));
        view.setBigUint64(0, value!, true);
        const n = readU64(view, 0);
        if (value! <= BigInt(Number.MAX_SAFE_INTEGER)) assert.equal(BigInt(n), value);
        else assert.equal(n, -1);
      }),
    );
    fc.assert(
      fc.property(fc.nat(Number.MAX_SAFE_INTEGER), (value) => {
        const view = new DataView(new ArrayBuffer(8));
        writeU64(view, 0, value);
        assert.equal(view.getBigUint64(0, true), BigInt(value));
      }),
    );
  });

  test('op decoders refuse short arguments and never throw on any bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 128 }), (raw) => {
        const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
        const n = raw.length;
        assert.equal(decodeIoIn(view, 0, n, newIoIn()), n >= 40);
        assert.equal(decodeSetattrIn(view, 0, n, { valid: 0, size: 0 }), n >= 88);
        assert.equal(decodeFallocateIn(view, 0, n, { fh: 0, offset: 0, length: 0, mode: 0 }), n >= 32);
        assert.equal(decodeInitIn(view, 0, n, { major: 0, minor: 0, maxReadahead: 0, flags: 0, flags2: 0 }), n >= 16);
        let visited = 0;
        const count = forEachBatchForget(view, 0, n, () => visited++);
        assert.equal(count, visited);
        assert.ok(8 + count * 16 <= Math.max(n, 8));
        const name = decodeName(raw, 0, n);
        if (name !== null) {
          assert.ok(name.length >= 1 && name.length <= 255);
          assert.equal(raw[name.length], 0);
        }
      }),
    );
  });

  test('read/write args round-trip', () => {
    fc.assert(
      fc.property(fc.record({ fh: fc.nat(Number.MAX_SAFE_INTEGER), offset: fc.nat(Number.MAX_SAFE_INTEGER), size: fc.nat(0xffffffff), flags: fc.nat(0xffffffff) }), (io) => {
        const view = new DataView(new ArrayBuffer(40));
        encodeIoIn(view, 0, io);
        const out = newIoIn();
        assert.ok(decodeIoIn(view, 0, 40, out));
        assert.deepEqual(out, { ...io });
      }),
    );
  });

  test('INIT negotiation grants only what both sides want and stays within the buffers', () => {
    const wishes = { maxIo: 256 * 1024, flags: InitFlag.ASYNC_READ | InitFlag.ASYNC_DIO | InitFlag.MAX_PAGES | InitFlag.BIG_WRITES, maxBackground: 64 };
    fc.assert(
      fc.property(
        fc.record({ major: fc.nat(10), minor: fc.nat(60), maxReadahead: fc.nat(0xffffffff), flags: fc.nat(0xffffffff), flags2: fc.nat(0xffffffff) }),
        fc.integer({ min: 2, max: 256 }),
        (offer, pages) => {
          const out: InitOut = { major: 0, minor: 0, maxReadahead: 0, flags: 0, maxBackground: 0, congestionThreshold: 0, maxWrite: 0, timeGran: 0, maxPages: 0, flags2: 0 };
          const w = { ...wishes, maxIo: pages * 4096 };
          const verdict = negotiateInit(offer, w, out);
          if (offer.major > 7) return assert.equal(verdict, InitVerdict.AnswerMajorOnly);
          if (offer.major < 7 || offer.minor < 12) return assert.equal(verdict, InitVerdict.Unsupported);
          assert.equal(verdict, InitVerdict.Ok);
          assert.equal(out.major, 7);
          assert.equal(out.minor, Math.min(offer.minor, FUSE_SERVER_MINOR));
          assert.equal(out.flags & ~offer.flags, 0, 'a flag the kernel did not offer');
          assert.equal(out.flags & ~w.flags, 0, 'a flag the server did not want');
          assert.ok(out.maxWrite >= 4096 && out.maxWrite <= w.maxIo);
          assert.ok(out.maxReadahead <= offer.maxReadahead);
          assert.ok(out.maxBackground >= 1 && out.congestionThreshold <= out.maxBackground);
          const view = new DataView(new ArrayBuffer(64));
          encodeInitOut(view, 0, out);
          const back = { ...out };
          decodeInitOut(view, 0, back);
          assert.deepEqual(back, out);
        },
      ),
    );
  });

  test('attributes round-trip', () => {
    fc.assert(
      fc.property(
        fc.record({
          ino: fc.nat(Number.MAX_SAFE_INTEGER),
          size: fc.nat(Number.MAX_SAFE_INTEGER),
          blocks: fc.nat(Number.MAX_SAFE_INTEGER),
          timeSeconds: fc.nat(Number.MAX_SAFE_INTEGER),
          timeNanoseconds: fc.nat(999_999_999),
          mode: fc.nat(0xffffffff),
          nlink: fc.nat(0xffffffff),
          uid: fc.nat(0xffffffff),
          gid: fc.nat(0xffffffff),
          blksize: fc.nat(0xffffffff),
        }),
        (attr) => {
          const view = new DataView(new ArrayBuffer(88));
          encodeAttr(view, 0, attr);
          const out = newAttr();
          decodeAttr(view, 0, out);
          assert.deepEqual(out, { ...attr });
        },
      ),
    );
  });

  test('directory entries are 8-byte aligned, never overflow and parse back', () => {
    const name = fc.stringMatching(/^[A-Za-z0-9._-]{1,40}$/);
    fc.assert(
      fc.property(fc.array(name, { maxLength: 20 }), fc.nat(1024), (names, capacity) => {
        const bytes = new Uint8Array(capacity + 64).fill(0xee);
        const view = new DataView(bytes.buffer);
        let used = 0;
        let written = 0;
        for (const [i, n] of names.entries()) {
          const size = encodeDirent(view, bytes, used, capacity - used, i + 10, i + 1, 8, n);
          if (size === 0) {
            assert.ok(direntBytes(n.length) > capacity - used);
            break;
          }
          assert.equal(size % 8, 0);
          used += size;
          written++;
        }
        assert.ok(used <= capacity);
        assert.ok(bytes.subarray(capacity).every((b) => b === 0xee), 'wrote past the capacity');
        const back = decodeDirents(view, bytes, 0, used);
        assert.deepEqual(
          back.map((d) => d.name),
          names.slice(0, written),
        );
        back.forEach((d, i) => assert.equal(d.nextOffset, i + 1));
      }),
    );
  });
});

// ---- the mounted server ----

describe('DiskFileServer on /dev/fuse', () => {
  const memory = GuestMemory.create(64 * MiB);
  const allocator = new PageAllocator(1, memory.pageCount - 1);
  const logs: string[] = [];
  let poller: Poller;
  let dir: string;
  let server: DiskFileServer | undefined;
  const disks = new Map<string, FakeDisk>();

  function disk(options: FakeDiskOptions): FakeDisk {
    const d = new FakeDisk(memory, options);
    disks.set(options.name, d);
    return d;
  }

  const lun0 = disk({ name: 'lun0', sizeBytes: 32 * MiB, discard: true }); // mkfs, punch
  const lun1 = disk({ name: 'lun1', sizeBytes: 1 * MiB, readOnly: true });
  const lun2 = disk({ name: 'lun2', sizeBytes: 8 * MiB, blockBytes: 4096 }); // unaligned I/O, no discard
  const lun3 = disk({ name: 'lun3', sizeBytes: 32 * MiB, blockBytes: 4096 }); // fio
  const lun4 = disk({ name: 'lun4', sizeBytes: 1 * MiB }); // remove()

  before(() => {
    poller = new Poller((e) => logs.push(`poller: ${String(e)}`));
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'enlighten-fuse-'));
    lun1.data.set(randomBytes(lun1.sizeBytes));
    server = DiskFileServer.mount(dir, { memory, allocator, poller, log: (m) => logs.push(m) });
    for (const d of disks.values()) server.add(d);
  });

  after(async () => {
    try {
      await server?.unmount();
    } finally {
      await poller.stop();
      // Belt and braces: should unmount() have failed, never leave the mount behind.
      while (isFuseMountPoint(dir)) tryDetachMount(dir);
      try {
        fs.rmdirSync(dir);
      } catch {
        // left for the reboot if something still holds it
      }
    }
  });

  function file(name: string): string {
    return path.join(dir, name);
  }

  function noViolations(): void {
    for (const d of disks.values()) assert.deepEqual(d.violations, [], `${d.name} saw malformed requests`);
  }

  test('the directory lists the disks with their sizes and modes', async () => {
    assert.ok(isFuseMountPoint(dir));
    const names = (await fs.promises.readdir(dir)).sort();
    assert.deepEqual(names, ['lun0', 'lun1', 'lun2', 'lun3', 'lun4']);
    const s0 = await fs.promises.stat(file('lun0'));
    assert.ok(s0.isFile());
    assert.equal(s0.size, 32 * MiB);
    assert.equal(s0.mode & 0o777, 0o644);
    const s1 = await fs.promises.stat(file('lun1'));
    assert.equal(s1.mode & 0o777, 0o444);
    assert.equal(s1.size, MiB);
    const root = await fs.promises.stat(dir);
    assert.ok(root.isDirectory());
    await assert.rejects(fs.promises.stat(file('lun9')), { code: 'ENOENT' });
    await assert.rejects(fs.promises.writeFile(file('new-file'), 'x'), { code: 'EPERM' });
    await assert.rejects(fs.promises.unlink(file('lun0')), { code: 'EPERM' });
  });

  test('a read-only disk reads its bytes and refuses writes', async () => {
    await assert.rejects(fs.promises.open(file('lun1'), 'r+'), { code: 'EROFS' });
    await assert.rejects(fs.promises.open(file('lun1'), 'w'), (e: NodeJS.ErrnoException) => e.code === 'EROFS' || e.code === 'EINVAL');
    const content = await fs.promises.readFile(file('lun1'));
    assert.ok(Buffer.from(lun1.data).equals(content));
    assert.equal(lun1.counts.write, 0);
  });

  test('unaligned pwrite/pread round-trip and land on the disk', async () => {
    const fh = await fs.promises.open(file('lun2'), 'r+');
    try {
      const cases: [number, number][] = [
        [0, 1],
        [1, 4094],
        [4095, 2],
        [100, 5000],
        [12_345, 70_000],
        [8192, 4096],
        [1_000_001, 300 * 1024], // larger than the 256 KiB requests: split by the kernel
        [lun2.sizeBytes - 3, 3],
      ];
      for (const [offset, length] of cases) {
        const data = randomBytes(length);
        const { bytesWritten } = await fh.write(data, 0, length, offset);
        assert.equal(bytesWritten, length);
        assert.ok(Buffer.from(lun2.data.subarray(offset, offset + length)).equals(data), `disk bytes at ${offset}+${length}`);
        const back = Buffer.alloc(length);
        const { bytesRead } = await fh.read(back, 0, length, offset);
        assert.equal(bytesRead, length);
        assert.ok(back.equals(data), `read back at ${offset}+${length}`);
      }
      // Neighbouring bytes of a partial block survive its read-modify-write.
      lun2.data.fill(0x5a, 40_960, 45_056);
      await fh.write(Buffer.from([1, 2, 3]), 0, 3, 42_000);
      assert.deepEqual([...lun2.data.subarray(41_998, 42_005)], [0x5a, 0x5a, 1, 2, 3, 0x5a, 0x5a]);
      // Across the end: cut short like a block device; at the end: ENOSPC.
      const { bytesWritten } = await fh.write(Buffer.alloc(200, 7), 0, 200, lun2.sizeBytes - 100);
      assert.equal(bytesWritten, 100);
      await assert.rejects(fh.write(Buffer.alloc(10), 0, 10, lun2.sizeBytes), { code: 'ENOSPC' });
      const { bytesRead } = await fh.read(Buffer.alloc(64), 0, 64, lun2.sizeBytes - 10);
      assert.equal(bytesRead, 10);
    } finally {
      await fh.close();
    }
    noViolations();
  });

  test('concurrent unaligned writes into one block all survive (read-modify-write is serialised)', async () => {
    const handles = await Promise.all(Array.from({ length: 8 }, () => fs.promises.open(file('lun2'), 'r+')));
    try {
      const base = 2 * MiB;
      lun2.data.fill(0, base, base + 8192);
      // 16 writes of 300 bytes that share blocks but not bytes, all in flight at once.
      const pieces = Array.from({ length: 16 }, (_, i) => ({ offset: base + 17 + i * 500, data: randomBytes(300) }));
      await Promise.all(pieces.map((p, i) => handles[i % handles.length]!.write(p.data, 0, p.data.length, p.offset)));
      for (const p of pieces) assert.ok(Buffer.from(lun2.data.subarray(p.offset, p.offset + 300)).equals(p.data), `piece at ${p.offset} lost`);
    } finally {
      await Promise.all(handles.map((h) => h.close()));
    }
    noViolations();
  });

  test('truncate to the same size is accepted, any other size refused', async () => {
    await fs.promises.truncate(file('lun2'), lun2.sizeBytes);
    await assert.rejects(fs.promises.truncate(file('lun2'), 0), { code: 'EINVAL' });
    await assert.rejects(fs.promises.truncate(file('lun2'), lun2.sizeBytes + 4096), { code: 'EINVAL' });
    assert.equal((await fs.promises.stat(file('lun2'))).size, lun2.sizeBytes);
  });

  test('fsync reaches the device as a flush after the writes before it', async () => {
    const fh = await fs.promises.open(file('lun2'), 'r+');
    try {
      const flushes = lun2.counts.flush;
      lun2.ops.length = 0;
      lun2.holdWrites = true;
      const write = fh.write(Buffer.alloc(4096, 9), 0, 4096, 3 * MiB);
      while (lun2.heldWrites === 0) await sleep(2);
      const sync = fh.sync();
      await sleep(50);
      assert.equal(lun2.counts.flush, flushes, 'flushed while a write was at the device');
      lun2.releaseWrites();
      await write;
      await sync;
      assert.equal(lun2.counts.flush, flushes + 1);
      assert.deepEqual(lun2.ops, [`write:${3 * MiB}+4096`, 'flush:0+0']);
    } finally {
      lun2.releaseWrites();
      await fh.close();
    }
  });

  test('punching a hole discards the aligned part and zeroes the edges; no discard, no punch', async () => {
    lun0.data.fill(0xab, 0, 64 * 1024);
    const r = await run('fallocate', ['-p', '-o', '1000', '-l', '20000', file('lun0')]);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(lun0.data.subarray(1000, 21_000).every((b) => b === 0), 'hole not zero');
    assert.equal(lun0.data[999], 0xab);
    assert.equal(lun0.data[21_000], 0xab);
    assert.ok(lun0.counts.discard >= 1);
    const refused = await run('fallocate', ['-p', '-o', '0', '-l', '8192', file('lun2')]);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /unsupported|not supported/i);
    noViolations();
  });

  test('mkfs.ext4 then e2fsck -f -n find a clean file system, and the file is the disk', async () => {
    const mkfs = await run('mkfs.ext4', ['-F', '-q', file('lun0')]);
    assert.equal(mkfs.code, 0, `mkfs.ext4: ${mkfs.stderr}`);
    const fsck = await run('e2fsck', ['-f', '-n', file('lun0')]);
    assert.equal(fsck.code, 0, `e2fsck: ${fsck.stdout}${fsck.stderr}`);
    const content = await fs.promises.readFile(file('lun0'));
    assert.ok(Buffer.from(lun0.data).equals(content), 'file contents differ from the disk');
    assert.ok(lun0.counts.flush >= 1, 'mkfs never flushed');
    noViolations();
  });

  test('fio randrw, iodepth 16, two jobs, O_DIRECT, crc32c verification', async () => {
    const r = await run('fio', [
      '--name=v',
      `--filename=${file('lun3')}`,
      '--rw=randrw',
      '--bs=4k',
      '--iodepth=16',
      '--ioengine=libaio',
      '--direct=1',
      '--size=16M',
      '--offset_increment=16M',
      '--numjobs=2',
      '--verify=crc32c',
      '--verify_fatal=1',
      // No verify-state files in the working directory.
      '--verify_state_save=0',
      '--group_reporting',
    ]);
    assert.equal(r.code, 0, `fio: ${r.stdout}\n${r.stderr}`);
    assert.doesNotMatch(r.stdout + r.stderr, /verify: bad|crc32c: verify failed|err= *[1-9]/);
    assert.ok(lun3.maxInFlight > 1, `requests never overlapped at the device (max ${lun3.maxInFlight})`);
    // cmp, a separate process reading the file afresh, sees exactly the disk's bytes.
    const image = path.join(os.tmpdir(), `enlighten-fuse-lun3-${process.pid}.img`);
    try {
      await fs.promises.writeFile(image, lun3.data);
      const cmp = await run('cmp', [image, file('lun3')]);
      assert.equal(cmp.code, 0, `cmp: ${cmp.stdout}${cmp.stderr}`);
    } finally {
      await fs.promises.rm(image, { force: true });
    }
    noViolations();
  });

  test('remove() takes the file away and open handles fail with ENODEV', async () => {
    const fh = await fs.promises.open(file('lun4'), 'r+');
    try {
      await fh.write(Buffer.from('before'), 0, 6, 0);
      server!.remove('lun4');
      assert.ok(!(await fs.promises.readdir(dir)).includes('lun4'));
      await assert.rejects(fs.promises.stat(file('lun4')), { code: 'ENOENT' });
      await assert.rejects(fh.read(Buffer.alloc(16), 0, 16, 0), { code: 'ENODEV' });
      await assert.rejects(fh.write(Buffer.from('after'), 0, 5, 0), { code: 'ENODEV' });
      assert.equal(Buffer.from(lun4.data.subarray(0, 6)).toString(), 'before');
    } finally {
      await fh.close().catch(() => {});
    }
  });

  test('unmount waits, detaches and leaves no mount behind', async () => {
    const fh = await fs.promises.open(file('lun2'), 'r');
    await server!.unmount();
    assert.ok(!mountedAt(dir), 'still in /proc/self/mounts');
    assert.ok(!isFuseMountPoint(dir));
    // A handle opened before the unmount fails instead of hanging.
    await assert.rejects(fh.read(Buffer.alloc(16), 0, 16, 0));
    await fh.close().catch(() => {});
    assert.deepEqual(
      logs.filter((m) => !m.startsWith('fuse: detaching')),
      [],
    );
  });
});

describe('stale mounts', () => {
  test('mount() detaches a dead FUSE mount left at the directory', async () => {
    const memory = GuestMemory.create(8 * MiB);
    const allocator = new PageAllocator(1, memory.pageCount - 1);
    const poller = new Poller();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'enlighten-fuse-stale-'));
    let server: DiskFileServer | undefined;
    try {
      // A dead run: a FUSE mount whose server closed /dev/fuse without unmounting.
      const dead = FuseDevice.open();
      dead.mount(dir, 'rootmode=40000,user_id=0,group_id=0');
      dead.close();
      assert.ok(isFuseMountPoint(dir));
      await assert.rejects(fs.promises.stat(dir), { code: 'ENOTCONN' });
      server = DiskFileServer.mount(dir, { memory, allocator, poller, maxIo: 64 * 1024, queueDepth: 2 });
      assert.equal(listMounts().filter((m) => m.mountPoint === dir).length, 1);
      server.add(new FakeDisk(memory, { name: 'lun0', sizeBytes: MiB }));
      assert.deepEqual(await fs.promises.readdir(dir), ['lun0']);
    } finally {
      await server?.unmount();
      await poller.stop();
      while (isFuseMountPoint(dir)) tryDetachMount(dir);
      fs.rmdirSync(dir);
    }
    assert.ok(!mountedAt(dir));
  });
});

// ---- the protocol spoken directly: a scripted kernel on the server's connection ----

interface Reply {
  error: number;
  payload: Uint8Array;
}

/**
 * Plays the kernel's side of /dev/fuse without a mount: requests are queued here and the
 * server reads them (an eventfd stands in for the fd's readability); replies are parsed
 * back. Replies must be gathered from guest RAM (zero copy): anything else is recorded.
 */
class ScriptedKernel implements FuseChannel {
  private readonly wake = EventFd.create();
  readonly fd = this.wake.fd;
  private readonly queue: Uint8Array[] = [];
  private readonly hostBase: number;
  readonly replies = new Map<bigint, Reply>();
  readonly problems: string[] = [];
  private nextUnique = 2n;

  constructor(private readonly memory: GuestMemory) {
    this.hostBase = Number(memory.base);
  }

  /** Queues a request; returns its id. */
  send(opcode: number, nodeid: number, args: Uint8Array = new Uint8Array(0), options: { claimedLength?: number; cut?: number } = {}): bigint {
    const unique = this.nextUnique;
    this.nextUnique += 2n;
    const bytes = new Uint8Array(IN_HEADER_BYTES + args.length);
    const view = new DataView(bytes.buffer);
    view.setUint32(0, options.claimedLength ?? bytes.length, true);
    view.setUint32(4, opcode, true);
    view.setBigUint64(8, unique, true);
    view.setBigUint64(16, BigInt(nodeid), true);
    bytes.set(args, IN_HEADER_BYTES);
    this.sendRaw(options.cut === undefined ? bytes : bytes.subarray(0, options.cut));
    return unique;
  }

  sendRaw(bytes: Uint8Array): void {
    this.queue.push(bytes);
    this.wake.signal();
  }

  read(address: number, length: number): number {
    const next = this.queue.shift();
    if (!next) {
      this.wake.drain();
      return -Errno.EAGAIN;
    }
    if (next.length > length) {
      this.problems.push(`server offered ${length} bytes for a ${next.length}-byte request`);
      return -Errno.EINVAL;
    }
    const at = address - this.hostBase;
    if (!this.memory.contains(at, length)) this.problems.push('request buffer outside guest RAM');
    this.memory.bytes.set(next, at);
    return next.length;
  }

  writev(iov: IovecList): number {
    const parts: Uint8Array[] = [];
    for (let i = 0; i < iov.count; i++) {
      const at = iov.addressAt(i) - this.hostBase;
      const length = iov.lengthAt(i);
      if (!this.memory.contains(at, length)) {
        this.problems.push('reply gathered from outside guest RAM');
        return -Errno.EFAULT;
      }
      parts.push(this.memory.bytes.slice(at, at + length));
    }
    const all = Buffer.concat(parts);
    const view = new DataView(all.buffer, all.byteOffset, all.byteLength);
    if (all.length < 16 || view.getUint32(0, true) !== all.length) {
      this.problems.push(`reply length field ${all.length >= 4 ? view.getUint32(0, true) : '?'} for ${all.length} bytes`);
      return -Errno.EINVAL;
    }
    const unique = view.getBigUint64(8, true);
    const error = view.getInt32(4, true);
    if (this.replies.has(unique)) this.problems.push(`second reply to ${unique}`);
    if (error > 0 || error < -4095 || (error !== 0 && all.length !== 16)) this.problems.push(`malformed error reply ${error}`);
    this.replies.set(unique, { error, payload: new Uint8Array(all.subarray(16)) });
    return all.length;
  }

  close(): void {
    this.wake.close();
  }

  async reply(unique: bigint, timeoutMs = 3000): Promise<Reply> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const r = this.replies.get(unique);
      if (r) return r;
      if (Date.now() > deadline) assert.fail(`no reply to request ${unique}`);
      await sleep(1);
    }
  }
}

function args(...fields: [kind: 'u32' | 'u64', value: number][]): Uint8Array {
  const size = fields.reduce((n, [kind]) => n + (kind === 'u32' ? 4 : 8), 0);
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  let at = 0;
  for (const [kind, value] of fields) {
    if (kind === 'u32') view.setUint32(at, value >>> 0, true);
    else view.setBigUint64(at, BigInt(value), true);
    at += kind === 'u32' ? 4 : 8;
  }
  return out;
}

const initArgs = (major = 7, minor = 44, flags = InitFlag.ASYNC_READ | InitFlag.ASYNC_DIO | InitFlag.MAX_PAGES | InitFlag.BIG_WRITES | InitFlag.WRITEBACK_CACHE) =>
  args(['u32', major], ['u32', minor], ['u32', 128 * 1024], ['u32', flags]);
const ioArgs = (fh: number, offset: number, size: number) => args(['u64', fh], ['u64', offset], ['u32', size], ['u32', 0], ['u64', 0], ['u32', 0], ['u32', 0]);
const nameArgs = (name: string) => new Uint8Array(Buffer.from(`${name}\0`, 'latin1'));

describe('DiskFileServer protocol handling (scripted kernel)', () => {
  const memory = GuestMemory.create(16 * MiB);
  const allocator = new PageAllocator(1, memory.pageCount - 1);
  const MAX_IO = 64 * 1024;
  let poller: Poller;

  before(() => {
    poller = new Poller();
  });

  after(async () => {
    await poller.stop();
  });

  async function start(options: { init?: boolean } = {}): Promise<{ kernel: ScriptedKernel; server: DiskFileServer; disk: FakeDisk; logs: string[] }> {
    const kernel = new ScriptedKernel(memory);
    const logs: string[] = [];
    const server = DiskFileServer.serve(kernel, { memory, allocator, poller, maxIo: MAX_IO, queueDepth: 4, log: (m) => logs.push(m) });
    const disk = new FakeDisk(memory, { name: 'lun0', sizeBytes: 4 * MiB, blockBytes: 512, discard: true });
    server.add(disk);
    if (options.init !== false) assert.equal((await kernel.reply(kernel.send(FuseOpcode.INIT, 0, initArgs()))).error, 0);
    return { kernel, server, disk, logs };
  }

  async function openLun0(kernel: ScriptedKernel): Promise<{ nodeid: number; fh: number }> {
    const entry = await kernel.reply(kernel.send(FuseOpcode.LOOKUP, 1, nameArgs('lun0')));
    assert.equal(entry.error, 0);
    const nodeid = Number(new DataView(entry.payload.buffer).getBigUint64(0, true));
    const opened = await kernel.reply(kernel.send(FuseOpcode.OPEN, nodeid, args(['u32', 2], ['u32', 0])));
    assert.equal(opened.error, 0);
    const view = new DataView(opened.payload.buffer);
    assert.equal(view.getUint32(8, true) & 1, 1, 'FOPEN_DIRECT_IO');
    return { nodeid, fh: Number(view.getBigUint64(0, true)) };
  }

  test('INIT: at most 7.31, max_write within the buffers, only flags the kernel offered', async () => {
    const { kernel, server } = await start({ init: false });
    try {
      assert.equal((await kernel.reply(kernel.send(FuseOpcode.GETATTR, 1, args(['u32', 0], ['u32', 0], ['u64', 0])))).error, -Errno.EIO, 'served before INIT');
      assert.equal((await kernel.reply(kernel.send(FuseOpcode.INIT, 0, initArgs(6, 1)))).error, -Errno.EPROTO);
      const r = await kernel.reply(kernel.send(FuseOpcode.INIT, 0, initArgs()));
      assert.equal(r.error, 0);
      assert.equal(r.payload.length, 64);
      const out: InitOut = { major: 0, minor: 0, maxReadahead: 0, flags: 0, maxBackground: 0, congestionThreshold: 0, maxWrite: 0, timeGran: 0, maxPages: 0, flags2: 0 };
      decodeInitOut(new DataView(r.payload.buffer), 0, out);
      assert.equal(out.major, 7);
      assert.equal(out.minor, FUSE_SERVER_MINOR);
      assert.equal(out.maxWrite, MAX_IO);
      assert.equal(out.maxPages, MAX_IO / 4096);
      assert.ok(out.flags & InitFlag.ASYNC_DIO);
      assert.equal(out.flags & InitFlag.WRITEBACK_CACHE, 0, 'writeback cache would defeat coherence');
      assert.deepEqual(kernel.problems, []);
    } finally {
      await server.unmount();
    }
  });

  test('malformed and unknown requests get errors, and the server keeps serving', async () => {
    const { kernel, server, disk, logs } = await start();
    try {
      const { fh } = await openLun0(kernel);
      const getattr = () => kernel.send(FuseOpcode.GETATTR, 1, args(['u32', 0], ['u32', 0], ['u64', 0]));
      const expect = async (unique: bigint, error: number, what: string) => assert.equal((await kernel.reply(unique)).error, error, what);
      await expect(kernel.send(9999, 1), -Errno.ENOSYS, 'unknown opcode');
      await expect(kernel.send(FuseOpcode.LSEEK, 2, args(['u64', fh], ['u64', 0], ['u32', 3], ['u32', 0])), -Errno.ENOSYS, 'lseek');
      await expect(kernel.send(FuseOpcode.GETATTR, 1, new Uint8Array(16), { claimedLength: 200 }), -Errno.EIO, 'length field disagrees');
      await expect(kernel.send(FuseOpcode.GETATTR, 1, new Uint8Array(0), { cut: 20 }), -Errno.EIO, 'shorter than a header');
      kernel.sendRaw(new Uint8Array(10)); // not even a request id: dropped
      await expect(getattr(), 0, 'still serving after a dropped request');
      const write = ioArgs(fh, 0, 4096);
      await expect(kernel.send(FuseOpcode.WRITE, 2, Buffer.concat([write, new Uint8Array(100)])), -Errno.EINVAL, 'payload shorter than size');
      await expect(kernel.send(FuseOpcode.READ, 2, ioArgs(fh, 0, MAX_IO + 4096)), -Errno.EINVAL, 'read above max_read');
      await expect(kernel.send(FuseOpcode.READ, 2, ioArgs(fh + 1000, 0, 4096)), -Errno.EBADF, 'unknown fh');
      await expect(kernel.send(FuseOpcode.READ, 2, ioArgs(fh, 2 ** 60, 4096)), -Errno.EINVAL, 'offset beyond 2^53');
      await expect(kernel.send(FuseOpcode.READ, 2, ioArgs(fh, 0, 4096).subarray(0, 20)), -Errno.EINVAL, 'short read_in');
      await expect(kernel.send(FuseOpcode.LOOKUP, 1, new Uint8Array([0x6c, 0x75, 0x6e])), -Errno.ENOENT, 'unterminated name');
      await expect(kernel.send(FuseOpcode.OPEN, 2, new Uint8Array(2)), -Errno.EINVAL, 'short open_in');
      await expect(kernel.send(FuseOpcode.GETATTR, 77, args(['u32', 0], ['u32', 0], ['u64', 0])), -Errno.ENOENT, 'unknown node');
      await expect(kernel.send(FuseOpcode.CREATE, 1, args(['u32', 0o100], ['u32', 0o644], ['u32', 0], ['u32', 0])), -Errno.EPERM, 'create');
      await expect(kernel.send(FuseOpcode.FALLOCATE, 2, args(['u64', fh], ['u64', 0], ['u64', 4096], ['u32', 0x10], ['u32', 0])), -Errno.EOPNOTSUPP, 'zero range');
      // INTERRUPT and FORGET take no reply; the request after them does.
      kernel.send(FuseOpcode.INTERRUPT, 0, args(['u64', 2]));
      kernel.send(FuseOpcode.FORGET, 2, args(['u64', 1]));
      kernel.send(FuseOpcode.BATCH_FORGET, 0, args(['u32', 1000], ['u32', 0], ['u64', 2], ['u64', 0]));
      const before = kernel.replies.size;
      await expect(getattr(), 0, 'after no-reply requests');
      assert.equal(kernel.replies.size, before + 1);
      assert.deepEqual(disk.violations, []);
      assert.deepEqual(kernel.problems, []);
      assert.ok(logs.every((m) => !/TypeError|RangeError/.test(m)), logs.join('\n'));
    } finally {
      await server.unmount();
    }
  });

  test('FSYNC waits for the writes before it that are still at the device, not for later ones', async () => {
    const { kernel, server, disk } = await start();
    try {
      const { fh } = await openLun0(kernel);
      disk.holdWrites = true;
      const first = kernel.send(FuseOpcode.WRITE, 2, Buffer.concat([ioArgs(fh, 0, 4096), new Uint8Array(4096).fill(1)]));
      while (disk.heldWrites < 1) await sleep(1);
      const fsync = kernel.send(FuseOpcode.FSYNC, 2, args(['u64', fh], ['u32', 0], ['u32', 0]));
      const later = kernel.send(FuseOpcode.WRITE, 2, Buffer.concat([ioArgs(fh, 8192, 4096), new Uint8Array(4096).fill(2)]));
      while (disk.heldWrites < 2) await sleep(1);
      await sleep(20);
      assert.equal(disk.counts.flush, 0, 'flushed before the earlier write completed');
      assert.ok(!kernel.replies.has(fsync));
      disk.releaseOne(); // the first write only
      assert.equal((await kernel.reply(first)).error, 0);
      assert.equal((await kernel.reply(fsync)).error, 0, 'fsync held back by a later write');
      assert.equal(disk.counts.flush, 1);
      assert.ok(!kernel.replies.has(later));
      disk.releaseWrites();
      assert.equal((await kernel.reply(later)).error, 0);
      assert.deepEqual(disk.ops, ['write:0+4096', 'flush:0+0', 'write:8192+4096']);
    } finally {
      disk.releaseWrites();
      await server.unmount();
    }
  });

  test('unmount waits for requests at the device and answers them', async () => {
    const { kernel, server, disk } = await start();
    const { fh } = await openLun0(kernel);
    disk.holdWrites = true;
    const write = kernel.send(FuseOpcode.WRITE, 2, Buffer.concat([ioArgs(fh, 512, 100), new Uint8Array(100).fill(3)]));
    while (disk.heldWrites < 1) await sleep(1);
    const done = server.unmount();
    let finished = false;
    void done.then(() => (finished = true));
    await sleep(20);
    assert.ok(!finished, 'unmount did not wait for the write');
    disk.releaseWrites();
    await done;
    assert.equal((await kernel.reply(write)).error, 0);
    assert.ok(disk.data.subarray(512, 612).every((b) => b === 3));
  });

  test('fuzz: random requests never crash the server, get one reply at most, and reach the disk well formed', async () => {
    const { kernel, server, disk, logs } = await start();
    try {
      const { nodeid, fh } = await openLun0(kernel);
      const noReply = new Set<number>([FuseOpcode.FORGET, FuseOpcode.BATCH_FORGET, FuseOpcode.INTERRUPT]);
      const opcode = fc.oneof(
        fc.constantFrom(...Object.values(FuseOpcode).filter((op) => op !== FuseOpcode.INIT && op !== FuseOpcode.RELEASE)),
        fc.nat(0xffffffff),
      );
      const request = fc.record({
        opcode,
        nodeid: fc.oneof(fc.constant(1), fc.constant(nodeid), fc.nat(Number.MAX_SAFE_INTEGER)),
        body: fc.oneof(
          // Well-formed READ/WRITE-shaped arguments around the disk's edges.
          fc.record({ fh: fc.oneof(fc.constant(fh), fc.nat(1 << 20)), offset: fc.oneof(fc.nat(4 * MiB + 8192), fc.nat(Number.MAX_SAFE_INTEGER)), size: fc.nat(MAX_IO + 8192), extra: fc.nat(64) }).map(
            ({ fh: f, offset, size, extra }) => Buffer.concat([ioArgs(f, offset, size), new Uint8Array(Math.max(0, Math.min(size, MAX_IO) + extra - 32))]),
          ),
          fc.uint8Array({ maxLength: 256 }),
        ),
      });
      await fc.assert(
        fc.asyncProperty(fc.array(request, { minLength: 1, maxLength: 12 }), async (requests) => {
          const expected: bigint[] = [];
          for (const r of requests) {
            const unique = kernel.send(r.opcode, r.nodeid, r.body);
            if (!noReply.has(r.opcode)) expected.push(unique);
          }
          for (const unique of expected) await kernel.reply(unique);
          assert.deepEqual(kernel.problems, []);
          assert.deepEqual(disk.violations, []);
        }),
        { numRuns: 60 },
      );
      assert.ok(logs.every((m) => !/TypeError|RangeError|Error:/.test(m)), logs.join('\n'));
    } finally {
      disk.releaseWrites();
      await server.unmount();
    }
  });
});
