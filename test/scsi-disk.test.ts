// The SCSI disk as Linux's scan and sd see it: INQUIRY and VPD bytes, READ CAPACITY with
// the provisioning bits, MODE SENSE flags, READ/WRITE through a real memory disk, UNMAP and
// WRITE SAME turned into the right backend calls, every error mapped to the sense Linux
// acts on, unit attention after a resize, the LUN map's answers for absent LUNs, and a fuzz
// run of random CDBs that must complete exactly once without touching memory outside the
// buffer they were given.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import fc from 'fast-check';
import type { BlockBackend, BlockDone, BlockIo, DiskInfo } from '../src/backends/block/block-backend.js';
import { MemoryDisk } from '../src/backends/block/memory-disk.js';
import { GuestMemory } from '../src/memory/guest-memory.js';
import { DataDirection, ScsiStatus, type ScsiCommand } from '../src/devices/scsi/scsi-command.js';
import { ScsiDisk, type ScsiDiskOptions } from '../src/devices/scsi/scsi-disk.js';
import { naaIdentifier } from '../src/devices/scsi/scsi-inquiry.js';
import { ScsiTargetLuns } from '../src/devices/scsi/scsi-lun-map.js';
import { IovecList } from '../src/sys/iovec.js';
import { Errno } from '../src/sys/errors.js';

const MiB = 1 << 20;
const memory = GuestMemory.create(8 * MiB, 'scsi-disk-test');
after(() => memory.close());
const base = Number(memory.base);

// ---- test doubles -------------------------------------------------------------------

class TestCommand implements ScsiCommand {
  readonly cdb = new Uint8Array(16);
  cdbLength = 0;
  dataDirection: DataDirection = DataDirection.None;
  readonly data = new IovecList(2048);
  scsiStatus = -1;
  readonly sense = new Uint8Array(20);
  senseLength = -1;
  bytesTransferred = -1;
  completions = 0;
  readonly memory = memory;

  /** Sets the CDB (its length is the array's) and, optionally, the buffer. */
  set(cdb: number[], direction: DataDirection = DataDirection.None, gpa = 0, length = 0, segment = 4096): this {
    this.cdb.fill(0);
    this.cdb.set(cdb);
    this.cdbLength = cdb.length;
    this.dataDirection = direction;
    this.data.clear();
    // Segments end on `segment` boundaries of guest-physical addresses, like page lists.
    let at = gpa;
    let left = length;
    while (left > 0) {
      const take = Math.min(left, segment - (at % segment));
      assert.ok(this.data.push(base + at, take));
      at += take;
      left -= take;
    }
    this.scsiStatus = -1;
    this.senseLength = -1;
    this.bytesTransferred = -1;
    this.completions = 0;
    this.sense.fill(0xee);
    return this;
  }

  complete(): void {
    this.completions++;
  }

  get senseKey(): number {
    return this.sense[2]! & 0x0f;
  }

  /** ASC << 8 | ASCQ. */
  get asc(): number {
    return (this.sense[12]! << 8) | this.sense[13]!;
  }
}

type Op = 'read' | 'write' | 'flush' | 'discard';

interface Call {
  op: Op;
  offset: number;
  length: number;
  fua: boolean;
  iovBytes: number;
  segments: number;
}

/**
 * A backend that records calls and answers with chosen results: synchronously (inside the
 * call) or when the test says so. Read/write move no data.
 */
class FakeBackend implements BlockBackend {
  info: DiskInfo;
  readonly calls: Call[] = [];
  results: Partial<Record<Op, number>> = {};
  deferred = false;
  throwOn: Op | null = null;
  private readonly pending: { io: BlockIo; done: BlockDone; result: number }[] = [];

  constructor(info: Partial<DiskInfo> = {}) {
    this.info = { sizeBytes: 64 * MiB, logicalBlockBytes: 512, physicalBlockBytes: 4096, readOnly: false, discard: true, writeCache: true, serial: 'FAKE-SERIAL-1', ...info };
  }

  read(io: BlockIo, done: BlockDone): void {
    this.handle('read', io, done, io.length);
  }
  write(io: BlockIo, done: BlockDone): void {
    this.handle('write', io, done, io.length);
  }
  flush(io: BlockIo, done: BlockDone): void {
    this.handle('flush', io, done, 0);
  }
  discard(io: BlockIo, done: BlockDone): void {
    this.handle('discard', io, done, 0);
  }
  async close(): Promise<void> {}

  get pendingCount(): number {
    return this.pending.length;
  }

  /** Completes every deferred request, in order. */
  completeAll(): void {
    while (this.pending.length > 0) {
      const p = this.pending.shift()!;
      p.done.blockDone(p.io, p.result);
    }
  }

  private handle(op: Op, io: BlockIo, done: BlockDone, success: number): void {
    let segments = 0;
    for (let i = 0; i < io.iov.count; i++) segments++;
    this.calls.push({ op, offset: io.offset, length: io.length, fua: io.fua, iovBytes: io.iov.byteLength, segments });
    if (this.throwOn === op) throw new Error(`backend ${op} exploded`);
    const result = this.results[op] ?? success;
    if (this.deferred) this.pending.push({ io, done, result });
    else done.blockDone(io, result);
  }
}

/** Runs a command and waits (macrotasks) until it completed. */
async function run(unit: { execute(c: ScsiCommand): void }, command: TestCommand): Promise<TestCommand> {
  unit.execute(command);
  for (let i = 0; i < 1000 && command.completions === 0; i++) await new Promise<void>((resolve) => setImmediate(resolve));
  assert.equal(command.completions, 1, 'the command completes exactly once');
  return command;
}

function assertGood(command: TestCommand, bytes?: number): void {
  assert.equal(command.scsiStatus, ScsiStatus.Good, `status GOOD (sense key ${command.senseKey}, asc ${command.asc.toString(16)})`);
  assert.equal(command.senseLength, 0);
  if (bytes !== undefined) assert.equal(command.bytesTransferred, bytes);
}

function assertCheck(command: TestCommand, senseKey: number, asc: number): void {
  assert.equal(command.scsiStatus, ScsiStatus.CheckCondition);
  assert.equal(command.senseLength, 18);
  assert.equal(command.sense[0], 0x70, 'fixed format, current error');
  assert.equal(command.sense[7], 10, 'additional sense length');
  assert.equal(command.senseKey, senseKey, 'sense key');
  assert.equal(command.asc.toString(16), asc.toString(16), 'ASC/ASCQ');
  assert.equal(command.bytesTransferred, 0);
}

const ILLEGAL = 0x05;
const INVALID_FIELD = 0x2400;
const INVALID_OPCODE = 0x2000;
const LBA_OUT_OF_RANGE = 0x2100;
const INVALID_PARAM = 0x2600;

/** Guest RAM layout: answers land at OUT, parameter lists come from IN, payload at DATA. */
const OUT = 0x10000;
const IN = 0x20000;
const DATA = 0x100000;

function guest(gpa: number, length: number): Uint8Array {
  return memory.bytes.slice(gpa, gpa + length);
}

function be32(bytes: Uint8Array, at: number): number {
  return new DataView(bytes.buffer, bytes.byteOffset).getUint32(at);
}

function ascii(bytes: Uint8Array, from: number, to: number): string {
  return String.fromCharCode(...bytes.subarray(from, to));
}

function u16(n: number): number[] {
  return [(n >>> 8) & 0xff, n & 0xff];
}
function u32(n: number): number[] {
  return [(n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff];
}
function u64(n: number): number[] {
  return [...u32(Math.floor(n / 2 ** 32)), ...u32(n % 2 ** 32)];
}

function inquiry(page: number | null, allocation: number): number[] {
  return [0x12, page === null ? 0 : 1, page ?? 0, ...u16(allocation), 0];
}

// ---- INQUIRY and VPD ---------------------------------------------------------------

describe('INQUIRY', () => {
  const backend = new FakeBackend();
  const disk = new ScsiDisk(backend);
  const c = new TestCommand();

  test('standard data: 36 bytes first, as the scan asks, then the full length it announces', async () => {
    memory.bytes.fill(0xaa, OUT, OUT + 256);
    await run(disk, c.set(inquiry(null, 36), DataDirection.FromDevice, OUT, 36));
    assertGood(c, 36);
    const d = guest(OUT, 40);
    assert.equal(d[0], 0x00, 'peripheral: connected direct-access disk');
    assert.equal(d[1], 0x00, 'not removable');
    assert.ok(d[2] === 0x05 || d[2] === 0x06, 'version SPC-3 or SPC-4');
    assert.equal(d[3], 0x02, 'response data format 2');
    assert.equal(d[7]! & 0x02, 0x02, 'CmdQue');
    assert.equal(ascii(d, 8, 16), 'Msft    ');
    assert.equal(ascii(d, 16, 32), 'Virtual Disk    ');
    assert.equal(ascii(d, 32, 36), '1.0 ');
    assert.deepEqual([...d.subarray(36, 40)], [0xaa, 0xaa, 0xaa, 0xaa], 'nothing past the allocation length');
    const full = d[4]! + 5;
    await run(disk, c.set(inquiry(null, full), DataDirection.FromDevice, OUT, 255));
    assertGood(c, full);
    assert.equal(guest(OUT, 1)[0], 0);
  });

  test('allocation length and buffer size both cut the answer', async () => {
    await run(disk, c.set(inquiry(null, 5), DataDirection.FromDevice, OUT, 255));
    assertGood(c, 5);
    await run(disk, c.set(inquiry(null, 255), DataDirection.FromDevice, OUT, 20));
    assertGood(c, 20);
    await run(disk, c.set(inquiry(null, 0), DataDirection.FromDevice, OUT, 255));
    assertGood(c, 0);
  });

  test('page 0x00 lists the implemented pages ascending and every listed page echoes its code', async () => {
    await run(disk, c.set(inquiry(0x00, 4), DataDirection.FromDevice, OUT, 255));
    assertGood(c, 4);
    const count = be32(guest(OUT, 4), 0) & 0xffff;
    await run(disk, c.set(inquiry(0x00, 4 + count), DataDirection.FromDevice, OUT, 255));
    const header = guest(OUT, 4 + count);
    assert.equal(header[1], 0x00);
    const pages = [...header.subarray(4)];
    assert.deepEqual(pages, [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
    for (const page of pages) {
      await run(disk, c.set(inquiry(page, 4), DataDirection.FromDevice, OUT, 4));
      assertGood(c, 4);
      const pageLength = (guest(OUT, 4)[2]! << 8) | guest(OUT, 4)[3]!;
      await run(disk, c.set(inquiry(page, 4 + pageLength), DataDirection.FromDevice, OUT, 4096));
      assertGood(c, 4 + pageLength);
      assert.equal(guest(OUT, 2)[1], page, `byte 1 of VPD page 0x${page.toString(16)} is its code`);
    }
  });

  test('0x80 is the serial; 0x83 has an NAA 6 designator from the serial and a T10 vendor id', async () => {
    await run(disk, c.set(inquiry(0x80, 255), DataDirection.FromDevice, OUT, 255));
    const serial = guest(OUT, c.bytesTransferred);
    assert.equal(ascii(serial, 4, serial.length), 'FAKE-SERIAL-1');
    await run(disk, c.set(inquiry(0x83, 255), DataDirection.FromDevice, OUT, 255));
    const page = guest(OUT, c.bytesTransferred);
    assert.equal(page[1], 0x83);
    assert.equal((page[2]! << 8) | page[3]!, page.length - 4);
    // Designator 1: binary, LU association, NAA, 16 bytes starting with nibble 6.
    assert.equal(page[4]! & 0x0f, 1);
    assert.equal(page[5]! & 0x3f, 0x03);
    assert.equal(page[7], 16);
    assert.equal(page[8]! >>> 4, 6);
    assert.deepEqual([...page.subarray(8, 24)], [...naaIdentifier('FAKE-SERIAL-1')]);
    assert.notDeepEqual([...naaIdentifier('FAKE-SERIAL-1')], [...naaIdentifier('FAKE-SERIAL-2')]);
    // Designator 2: ASCII, T10 vendor id "Msft    " + serial.
    assert.equal(page[24]! & 0x0f, 2);
    assert.equal(page[25]! & 0x0f, 1);
    assert.equal(ascii(page, 28, 28 + page[27]!), 'Msft    FAKE-SERIAL-1');
  });

  test('0xB0 block limits follow maxTransferBytes and discard; 0xB1 says non-rotational; 0xB2 says thin with LBPU', async () => {
    const small = new ScsiDisk(new FakeBackend(), { maxTransferBytes: 256 * 1024 });
    await run(small, c.set(inquiry(0xb0, 64), DataDirection.FromDevice, OUT, 64));
    let page = guest(OUT, 64);
    assert.equal((page[2]! << 8) | page[3]!, 0x3c);
    assert.equal(be32(page, 8), 512, 'max transfer: 256 KiB in 512-byte blocks');
    assert.ok(be32(page, 20) > 0, 'max unmap LBA count');
    assert.ok(be32(page, 24) > 0, 'max unmap descriptor count');
    assert.equal(be32(page, 28), 8, 'unmap granularity: one 4 KiB physical block');

    const thick = new ScsiDisk(new FakeBackend({ discard: false }));
    await run(thick, c.set(inquiry(0xb0, 64), DataDirection.FromDevice, OUT, 64));
    page = guest(OUT, 64);
    assert.equal(be32(page, 8), 2048, 'default max transfer 1 MiB');
    assert.equal(be32(page, 20), 0);
    assert.equal(be32(page, 24), 0);

    await run(disk, c.set(inquiry(0xb1, 64), DataDirection.FromDevice, OUT, 64));
    page = guest(OUT, 64);
    assert.equal((page[4]! << 8) | page[5]!, 1);

    await run(disk, c.set(inquiry(0xb2, 8), DataDirection.FromDevice, OUT, 8));
    page = guest(OUT, 8);
    assert.equal(page[1], 0xb2);
    assert.equal((page[2]! << 8) | page[3]!, 4);
    assert.equal(page[5]! & 0x80, 0x80, 'LBPU');
    assert.equal(page[6]! & 0x07, 2, 'thin provisioned');
    await run(thick, c.set(inquiry(0xb2, 8), DataDirection.FromDevice, OUT, 8));
    assert.equal(guest(OUT, 8)[5]! & 0x80, 0);
  });

  test('an unknown VPD page, a page code without EVPD and CMDDT are ILLEGAL REQUEST, nothing transferred', async () => {
    for (const cdb of [inquiry(0x89, 255), [0x12, 0, 0x80, 0, 255, 0], [0x12, 0x02, 0, 0, 255, 0]]) {
      await run(disk, c.set(cdb, DataDirection.FromDevice, OUT, 255));
      assertCheck(c, ILLEGAL, INVALID_FIELD);
    }
  });
});

// ---- capacity and mode pages --------------------------------------------------------

describe('READ CAPACITY', () => {
  const c = new TestCommand();

  test('(10) reports the last LBA and block size, 0xFFFFFFFF beyond 2^32 blocks', async () => {
    await run(new ScsiDisk(new FakeBackend({ sizeBytes: 64 * MiB })), c.set([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], DataDirection.FromDevice, OUT, 8));
    assertGood(c, 8);
    assert.equal(be32(guest(OUT, 8), 0), 64 * 2048 - 1);
    assert.equal(be32(guest(OUT, 8), 4), 512);
    await run(new ScsiDisk(new FakeBackend({ sizeBytes: 2 ** 33 * 512 })), c.set([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], DataDirection.FromDevice, OUT, 8));
    assert.equal(be32(guest(OUT, 8), 0), 0xffffffff);
    await run(new ScsiDisk(new FakeBackend()), c.set([0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0], DataDirection.FromDevice, OUT, 8));
    assertCheck(c, ILLEGAL, INVALID_FIELD);
  });

  test('(16): 64-bit last LBA, block size, physical exponent, LBPME and LBPRZ only with discard', async () => {
    const rc16 = [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, ...u32(32), 0, 0];
    await run(new ScsiDisk(new FakeBackend({ sizeBytes: 2 ** 33 * 512 })), c.set(rc16, DataDirection.FromDevice, OUT, 32));
    assertGood(c, 32);
    let d = guest(OUT, 32);
    assert.equal(be32(d, 0) * 2 ** 32 + be32(d, 4), 2 ** 33 - 1);
    assert.equal(be32(d, 8), 512);
    assert.equal(d[13]! & 0x0f, 3, '4096-byte physical blocks of 512-byte logical blocks');
    assert.equal(d[14]! & 0x80, 0x80, 'LBPME');
    assert.equal(d[14]! & 0x40, 0x40, 'LBPRZ');
    await run(new ScsiDisk(new FakeBackend({ discard: false, logicalBlockBytes: 4096 })), c.set(rc16, DataDirection.FromDevice, OUT, 32));
    d = guest(OUT, 32);
    assert.equal(be32(d, 8), 4096);
    assert.equal(d[13]! & 0x0f, 0);
    assert.equal(d[14]! & 0xc0, 0);
    // Allocation length cuts; another service action is refused.
    await run(new ScsiDisk(new FakeBackend()), c.set([0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, ...u32(12), 0, 0], DataDirection.FromDevice, OUT, 32));
    assertGood(c, 12);
    await run(new ScsiDisk(new FakeBackend()), c.set([0x9e, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, ...u32(32), 0, 0], DataDirection.FromDevice, OUT, 32));
    assertCheck(c, ILLEGAL, INVALID_FIELD);
  });
});

describe('MODE SENSE / MODE SELECT', () => {
  const c = new TestCommand();

  test('(6) page 0x3F alloc 4: the header with DPOFUA, and WP on a read-only disk', async () => {
    await run(new ScsiDisk(new FakeBackend()), c.set([0x1a, 0, 0x3f, 0, 4, 0], DataDirection.FromDevice, OUT, 4));
    assertGood(c, 4);
    let d = guest(OUT, 4);
    assert.equal(d[0], 4 + 20 - 1, 'mode data length');
    assert.equal(d[2], 0x10, 'DPOFUA, not write protected');
    assert.equal(d[3], 0, 'no block descriptors');
    await run(new ScsiDisk(new FakeBackend({ readOnly: true })), c.set([0x1a, 0x08, 0x3f, 0, 255, 0], DataDirection.FromDevice, OUT, 255));
    assertGood(c, 24);
    d = guest(OUT, 4);
    assert.equal(d[2], 0x90, 'WP and DPOFUA');
  });

  test('caching page 0x08: WCE from the backend, nothing changeable', async () => {
    await run(new ScsiDisk(new FakeBackend({ writeCache: true })), c.set([0x1a, 0, 0x08, 0, 255, 0], DataDirection.FromDevice, OUT, 255));
    assertGood(c, 24);
    let d = guest(OUT, 24);
    assert.equal(d[4], 0x08);
    assert.equal(d[5], 0x12);
    assert.equal(d[6]! & 0x05, 0x04, 'WCE=1, RCD=0');
    await run(new ScsiDisk(new FakeBackend({ writeCache: false })), c.set([0x1a, 0, 0x08, 0, 255, 0], DataDirection.FromDevice, OUT, 255));
    assert.equal(guest(OUT, 24)[6]! & 0x04, 0, 'WCE=0');
    await run(new ScsiDisk(new FakeBackend({ writeCache: true })), c.set([0x1a, 0, 0x48, 0, 255, 0], DataDirection.FromDevice, OUT, 255));
    assertGood(c, 24);
    assert.equal(guest(OUT, 24)[6], 0, 'changeable values: none');
    // MODE SENSE(10): 8-byte header, DSP at byte 3.
    await run(new ScsiDisk(new FakeBackend({ writeCache: true })), c.set([0x5a, 0, 0x08, 0, 0, 0, 0, ...u16(255), 0], DataDirection.FromDevice, OUT, 255));
    assertGood(c, 28);
    d = guest(OUT, 28);
    assert.equal((d[0]! << 8) | d[1]!, 26);
    assert.equal(d[3], 0x10);
    assert.equal((d[6]! << 8) | d[7]!, 0);
    assert.equal(d[8], 0x08);
    assert.equal(d[10]! & 0x04, 0x04);
  });

  test('an unsupported page is ILLEGAL REQUEST with 0 bytes (Linux reads MODE SENSE errors as successes)', async () => {
    await run(new ScsiDisk(new FakeBackend()), c.set([0x1a, 0, 0x1c, 0, 255, 0], DataDirection.FromDevice, OUT, 255));
    assertCheck(c, ILLEGAL, INVALID_FIELD);
    await run(new ScsiDisk(new FakeBackend()), c.set([0x1a, 0, 0x08, 0x01, 255, 0], DataDirection.FromDevice, OUT, 255));
    assertCheck(c, ILLEGAL, INVALID_FIELD);
  });

  test('MODE SELECT takes back an unchanged caching page and refuses a change', async () => {
    const disk = new ScsiDisk(new FakeBackend({ writeCache: true }));
    await run(disk, c.set([0x1a, 0, 0x08, 0, 255, 0], DataDirection.FromDevice, OUT, 255));
    const sensed = guest(OUT, 24);
    // What sd_store_cache_type sends: header zeroed (mode data length reserved), the page.
    const list = new Uint8Array(24);
    list.set(sensed.subarray(4), 4);
    memory.bytes.set(list, IN);
    await run(disk, c.set([0x15, 0x10, 0, 0, 24, 0], DataDirection.ToDevice, IN, 24));
    assertGood(c, 24);
    list[6] = 0; // WCE off
    memory.bytes.set(list, IN);
    await run(disk, c.set([0x15, 0x10, 0, 0, 24, 0], DataDirection.ToDevice, IN, 24));
    assertCheck(c, ILLEGAL, INVALID_PARAM);
    await run(disk, c.set([0x15, 0x00, 0, 0, 24, 0], DataDirection.ToDevice, IN, 24));
    assertCheck(c, ILLEGAL, INVALID_FIELD);
    await run(disk, c.set([0x15, 0x10, 0, 0, 0, 0]));
    assertGood(c, 0);
  });
});

// ---- I/O --------------------------------------------------------------------------

describe('READ / WRITE', () => {
  const c = new TestCommand();

  test('WRITE(10) then READ(16) moves the bytes through a memory disk, across page-split buffers', async () => {
    const backend = new MemoryDisk({ sizeBytes: 4 * MiB, serial: 'MEM-1' });
    const disk = new ScsiDisk(backend);
    const payload = new Uint8Array(8 * 512);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 7 + 3) & 0xff;
    // Start mid-page so the buffer is split at page boundaries.
    memory.bytes.set(payload, DATA + 0x300);
    await run(disk, c.set([0x2a, 0, ...u32(100), 0, ...u16(8), 0], DataDirection.ToDevice, DATA + 0x300, payload.length));
    assertGood(c, payload.length);
    assert.ok(c.data.count > 1);
    assert.deepEqual(backend.data.subarray(100 * 512, 108 * 512), Buffer.from(payload));
    memory.bytes.fill(0, DATA + 0x10000, DATA + 0x12000);
    await run(disk, c.set([0x88, 0, ...u64(100), ...u32(8), 0, 0], DataDirection.FromDevice, DATA + 0x10000, payload.length, 512));
    assertGood(c, payload.length);
    assert.deepEqual(guest(DATA + 0x10000, payload.length), payload);
    // READ(12) of the same.
    memory.bytes.fill(0, DATA + 0x10000, DATA + 0x12000);
    await run(disk, c.set([0xa8, 0, ...u32(100), ...u32(8), 0, 0], DataDirection.FromDevice, DATA + 0x10000, payload.length));
    assertGood(c, payload.length);
    assert.deepEqual(guest(DATA + 0x10000, payload.length), payload);
  });

  test('FUA reaches the backend; a larger buffer moves only the CDB length; length 0 touches nothing', async () => {
    const backend = new FakeBackend();
    const disk = new ScsiDisk(backend);
    await run(disk, c.set([0x2a, 0x08, ...u32(0), 0, ...u16(2), 0], DataDirection.ToDevice, DATA, 8192));
    assertGood(c, 1024);
    assert.deepEqual(backend.calls.at(-1), { op: 'write', offset: 0, length: 1024, fua: true, iovBytes: 1024, segments: 1 });
    await run(disk, c.set([0x8a, 0, ...u64(5), ...u32(1), 0, 0], DataDirection.ToDevice, DATA, 512));
    assert.equal(backend.calls.at(-1)!.fua, false);
    assert.equal(backend.calls.at(-1)!.offset, 5 * 512);
    const before = backend.calls.length;
    await run(disk, c.set([0x28, 0, ...u32(5), 0, 0, 0, 0], DataDirection.FromDevice, DATA, 0));
    assertGood(c, 0);
    assert.equal(backend.calls.length, before);
  });

  test('READ(6) / WRITE(6): 21-bit LBA, transfer length 0 means 256 blocks', async () => {
    const backend = new FakeBackend();
    const disk = new ScsiDisk(backend);
    await run(disk, c.set([0x08, 0x01, 0x02, 0x03, 0, 0], DataDirection.FromDevice, DATA, 256 * 512));
    assertGood(c, 256 * 512);
    assert.equal(backend.calls.at(-1)!.offset, 0x010203 * 512);
    assert.equal(backend.calls.at(-1)!.length, 256 * 512);
    await run(disk, c.set([0x0a, 0, 0, 0x10, 3, 0], DataDirection.ToDevice, DATA, 3 * 512));
    assertGood(c, 3 * 512);
    assert.equal(backend.calls.at(-1)!.op, 'write');
  });

  test('out of range, too long, short buffer, wrong direction, protection bits', async () => {
    const backend = new FakeBackend({ sizeBytes: MiB });
    const disk = new ScsiDisk(backend);
    const blocks = 2048;
    await run(disk, c.set([0x28, 0, ...u32(blocks - 1), 0, ...u16(2), 0], DataDirection.FromDevice, DATA, 1024));
    assertCheck(c, ILLEGAL, LBA_OUT_OF_RANGE);
    await run(disk, c.set([0x88, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, ...u32(1), 0, 0], DataDirection.FromDevice, DATA, 512));
    assertCheck(c, ILLEGAL, LBA_OUT_OF_RANGE);
    await run(disk, c.set([0x88, 0, ...u64(2 ** 53 - 1), ...u32(1), 0, 0], DataDirection.FromDevice, DATA, 512));
    assertCheck(c, ILLEGAL, LBA_OUT_OF_RANGE);
    await run(disk, c.set([0x28, 0, ...u32(blocks), 0, 0, 0, 0], DataDirection.FromDevice, DATA, 0));
    assertGood(c, 0); // length 0 at the end: nothing to check
    await run(disk, c.set([0x28, 0, ...u32(0), 0, ...u16(2049), 0], DataDirection.FromDevice, DATA, 2049 * 512));
    assertCheck(c, ILLEGAL, LBA_OUT_OF_RANGE);
    const big = new ScsiDisk(new FakeBackend());
    await run(big, c.set([0x28, 0, ...u32(0), 0, ...u16(2049), 0], DataDirection.FromDevice, DATA, 2049 * 512));
    assertCheck(c, ILLEGAL, INVALID_FIELD); // beyond the 1 MiB max transfer
    await run(disk, c.set([0x28, 0, ...u32(0), 0, ...u16(4), 0], DataDirection.FromDevice, DATA, 4 * 512 - 1));
    assertCheck(c, ILLEGAL, INVALID_FIELD);
    await run(disk, c.set([0x28, 0, ...u32(0), 0, ...u16(1), 0], DataDirection.ToDevice, DATA, 512));
    assertCheck(c, ILLEGAL, INVALID_FIELD);
    await run(disk, c.set([0x2a, 0x20, ...u32(0), 0, ...u16(1), 0], DataDirection.ToDevice, DATA, 512));
    assertCheck(c, ILLEGAL, INVALID_FIELD);
    // A CDB shorter than its opcode's group.
    await run(disk, c.set([0x28, 0, 0, 0, 0, 0]));
    assertCheck(c, ILLEGAL, INVALID_FIELD);
    assert.equal(backend.calls.length, 0, 'nothing reached the backend');
  });

  test('a read-only disk: DATA PROTECT / WRITE PROTECTED for WRITE, UNMAP and WRITE SAME; reads still work', async () => {
    const backend = new FakeBackend({ readOnly: true });
    const disk = new ScsiDisk(backend);
    for (const cdb of [
      [0x2a, 0, ...u32(0), 0, ...u16(1), 0],
      [0x8a, 0, ...u64(0), ...u32(1), 0, 0],
      [0x0a, 0, 0, 0, 1, 0],
      [0x42, 0, 0, 0, 0, 0, 0, ...u16(24), 0],
      [0x93, 0x08, ...u64(0), ...u32(8), 0, 0],
    ]) {
      await run(disk, c.set(cdb, DataDirection.ToDevice, DATA, 512));
      assertCheck(c, 0x07, 0x2700);
    }
    assert.equal(backend.calls.length, 0);
    await run(disk, c.set([0x28, 0, ...u32(0), 0, ...u16(1), 0], DataDirection.FromDevice, DATA, 512));
    assertGood(c, 512);
  });

  test('backend errors map to the sense Linux acts on', async () => {
    const backend = new FakeBackend();
    const disk = new ScsiDisk(backend);
    const read = [0x28, 0, ...u32(0), 0, ...u16(1), 0];
    const write = [0x2a, 0, ...u32(0), 0, ...u16(1), 0];
    const cases: [Op, number[], DataDirection, number, number, number][] = [
      ['read', read, DataDirection.FromDevice, -Errno.EIO, 0x03, 0x1100],
      ['write', write, DataDirection.ToDevice, -Errno.EIO, 0x03, 0x0c00],
      ['write', write, DataDirection.ToDevice, -Errno.ENOSPC, 0x07, 0x2707],
      ['write', write, DataDirection.ToDevice, -Errno.EROFS, 0x07, 0x2700],
      ['read', read, DataDirection.FromDevice, -Errno.EINVAL, 0x04, 0x4400],
      ['read', read, DataDirection.FromDevice, 100, 0x03, 0x1100], // short read
      ['flush', [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], DataDirection.None, -Errno.EIO, 0x03, 0x0c00],
    ];
    for (const [op, cdb, direction, result, key, asc] of cases) {
      for (const deferred of [false, true]) {
        backend.results = { [op]: result };
        backend.deferred = deferred;
        c.set(cdb, direction, DATA, 512);
        disk.execute(c);
        if (deferred) {
          assert.equal(c.completions, 0);
          backend.completeAll();
        }
        assert.equal(c.completions, 1);
        assertCheck(c, key, asc);
        assert.equal(disk.inFlight, 0);
      }
    }
  });

  test('SYNCHRONIZE CACHE (10) and (16) flush; VERIFY is GOOD without touching the backend', async () => {
    const backend = new FakeBackend();
    const disk = new ScsiDisk(backend);
    await run(disk, c.set([0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
    assertGood(c, 0);
    await run(disk, c.set([0x91, 0, ...u64(0), ...u32(0), 0, 0]));
    assertGood(c, 0);
    assert.deepEqual(backend.calls.map((x) => x.op), ['flush', 'flush']);
    await run(disk, c.set([0x35, 0, ...u32(2 ** 31), 0, 0, 0, 0]));
    assertCheck(c, ILLEGAL, LBA_OUT_OF_RANGE);
    await run(disk, c.set([0x2f, 0, ...u32(0), 0, ...u16(8), 0]));
    assertGood(c, 0);
    await run(disk, c.set([0x8f, 0x02, ...u64(0), ...u32(8), 0, 0]));
    assertCheck(c, ILLEGAL, INVALID_FIELD); // BYTCHK: no data to compare
    assert.equal(backend.calls.length, 2);
  });

  test('more commands than maxInFlight: TASK SET FULL, and the slot comes back on completion', async () => {
    const backend = new FakeBackend();
    backend.deferred = true;
    const disk = new ScsiDisk(backend, { maxInFlight: 2 });
    const commands = [new TestCommand(), new TestCommand(), new TestCommand()];
    for (const [i, cmd] of commands.entries()) {
      cmd.set([0x28, 0, ...u32(i), 0, ...u16(1), 0], DataDirection.FromDevice, DATA + i * 512, 512);
      disk.execute(cmd);
    }
    assert.equal(disk.inFlight, 2);
    assert.equal(commands[2]!.completions, 1);
    assert.equal(commands[2]!.scsiStatus, ScsiStatus.TaskSetFull);
    backend.completeAll();
    assertGood(commands[0]!, 512);
    assertGood(commands[1]!, 512);
    assert.equal(disk.inFlight, 0);
    disk.execute(commands[2]!.set([0x28, 0, 0, 0, 0, 2, 0, 0, 1, 0], DataDirection.FromDevice, DATA, 512));
    backend.completeAll();
    assertGood(commands[2]!, 512);
  });

  test('a backend that throws: HARDWARE ERROR, completed once, the request is never reused', async () => {
    const backend = new FakeBackend();
    const disk = new ScsiDisk(backend, { maxInFlight: 1 });
    backend.throwOn = 'read';
    await run(disk, c.set([0x28, 0, ...u32(0), 0, ...u16(1), 0], DataDirection.FromDevice, DATA, 512));
    assertCheck(c, 0x04, 0x4400);
    assert.equal(disk.inFlight, 0);
    backend.throwOn = null;
    await run(disk, c.set([0x28, 0, ...u32(0), 0, ...u16(1), 0], DataDirection.FromDevice, DATA, 512));
    assertGood(c, 512);
  });

  test('a second completion of the same request is ignored', () => {
    const backend = new FakeBackend();
    backend.deferred = true;
    const disk = new ScsiDisk(backend);
    disk.execute(c.set([0x28, 0, ...u32(0), 0, ...u16(1), 0], DataDirection.FromDevice, DATA, 512));
    let io: BlockIo | null = null;
    const sink = disk as BlockDone;
    const spy: BlockDone = { blockDone: (x) => (io = x) };
    // Steal the pending io to complete it twice.
    (backend as unknown as { pending: { io: BlockIo; done: BlockDone; result: number }[] }).pending[0]!.done = spy;
    backend.completeAll();
    sink.blockDone(io!, 512);
    sink.blockDone(io!, 512);
    assert.equal(c.completions, 1);
    assertGood(c, 512);
  });
});

// ---- UNMAP and WRITE SAME -------------------------------------------------------------

function unmapList(descriptors: [number, number][], extraHeader = 0): number {
  const list = new Uint8Array(8 + 16 * descriptors.length);
  const view = new DataView(list.buffer);
  view.setUint16(0, 6 + 16 * descriptors.length);
  view.setUint16(2, 16 * descriptors.length + extraHeader);
  for (const [i, [lba, count]] of descriptors.entries()) {
    view.setBigUint64(8 + 16 * i, BigInt(lba));
    view.setUint32(16 + 16 * i, count);
  }
  memory.bytes.set(list, IN);
  return list.length;
}

describe('UNMAP', () => {
  const c = new TestCommand();
  const unmap = (length: number): number[] => [0x42, 0, 0, 0, 0, 0, 0, ...u16(length), 0];

  test('each descriptor becomes one discard of its byte range, zero-length ones skipped', async () => {
    for (const deferred of [false, true]) {
      const backend = new FakeBackend();
      backend.deferred = deferred;
      const disk = new ScsiDisk(backend);
      const length = unmapList([
        [8, 16],
        [1000, 0],
        [4096, 2048],
      ]);
      disk.execute(c.set(unmap(length), DataDirection.ToDevice, IN, length));
      while (deferred && backend.pendingCount > 0) backend.completeAll();
      assert.equal(c.completions, 1);
      assertGood(c, length);
      assert.deepEqual(
        backend.calls.map((x) => [x.op, x.offset, x.length]),
        [
          ['discard', 8 * 512, 16 * 512],
          ['discard', 4096 * 512, 2048 * 512],
        ],
      );
    }
  });

  test('a memory disk reads zeros where UNMAP deallocated', async () => {
    const backend = new MemoryDisk({ sizeBytes: MiB, serial: 'MEM-2' });
    backend.data.fill(0x5a);
    const disk = new ScsiDisk(backend);
    const length = unmapList([[16, 8]]);
    await run(disk, c.set(unmap(length), DataDirection.ToDevice, IN, length));
    assertGood(c, length);
    assert.ok(backend.data.subarray(16 * 512, 24 * 512).every((b) => b === 0));
    assert.equal(backend.data[16 * 512 - 1], 0x5a);
    assert.equal(backend.data[24 * 512], 0x5a);
  });

  test('bad lists: out of range, too many descriptors, short header, descriptor length past the list, ANCHOR', async () => {
    const backend = new FakeBackend({ sizeBytes: MiB });
    const disk = new ScsiDisk(backend, { maxUnmapDescriptors: 2 });
    let length = unmapList([[2047, 2]]);
    await run(disk, c.set(unmap(length), DataDirection.ToDevice, IN, length));
    assertCheck(c, ILLEGAL, LBA_OUT_OF_RANGE);
    length = unmapList([
      [0, 1],
      [1, 1],
      [2, 1],
    ]);
    await run(disk, c.set(unmap(length), DataDirection.ToDevice, IN, length));
    assertCheck(c, ILLEGAL, INVALID_PARAM);
    await run(disk, c.set(unmap(6), DataDirection.ToDevice, IN, 6));
    assertCheck(c, ILLEGAL, 0x1a00);
    length = unmapList([[0, 1]], 16);
    await run(disk, c.set(unmap(length), DataDirection.ToDevice, IN, length));
    assertCheck(c, ILLEGAL, INVALID_PARAM);
    length = unmapList([[0, 1]]);
    await run(disk, c.set([0x42, 1, 0, 0, 0, 0, 0, ...u16(length), 0], DataDirection.ToDevice, IN, length));
    assertCheck(c, ILLEGAL, INVALID_FIELD);
    await run(disk, c.set(unmap(length), DataDirection.ToDevice, IN, length - 1));
    assertCheck(c, ILLEGAL, INVALID_FIELD); // buffer shorter than the parameter list
    const limited = new ScsiDisk(backend, { maxUnmapBytes: 4 * 512 });
    length = unmapList([[0, 5]]);
    await run(limited, c.set(unmap(length), DataDirection.ToDevice, IN, length));
    assertCheck(c, ILLEGAL, INVALID_PARAM);
    await run(disk, c.set(unmap(0)));
    assertGood(c, 0);
    assert.equal(backend.calls.length, 0);
    const thick = new ScsiDisk(new FakeBackend({ discard: false }));
    await run(thick, c.set(unmap(length), DataDirection.ToDevice, IN, length));
    assertCheck(c, ILLEGAL, INVALID_OPCODE);
  });
});

describe('WRITE SAME', () => {
  const c = new TestCommand();

  test('(16) with UNMAP and a zero block (what Linux sends) discards the range', async () => {
    const backend = new FakeBackend();
    const disk = new ScsiDisk(backend);
    memory.bytes.fill(0, DATA, DATA + 512);
    await run(disk, c.set([0x93, 0x08, ...u64(64), ...u32(128), 0, 0], DataDirection.ToDevice, DATA, 512));
    assertGood(c, 512);
    assert.deepEqual(backend.calls.map((x) => [x.op, x.offset, x.length]), [['discard', 64 * 512, 128 * 512]]);
    // NDOB + UNMAP: no buffer at all.
    await run(disk, c.set([0x93, 0x09, ...u64(64), ...u32(8), 0, 0]));
    assertGood(c, 0);
    assert.equal(backend.calls.at(-1)!.op, 'discard');
  });

  test('without UNMAP (or with a non-zero block) the block is written repeatedly', async () => {
    const backend = new MemoryDisk({ sizeBytes: 4 * MiB, serial: 'MEM-3' });
    const disk = new ScsiDisk(backend, { maxTransferBytes: 64 * 1024 });
    const block = new Uint8Array(512);
    for (let i = 0; i < 512; i++) block[i] = (i * 13 + 1) & 0xff;
    // The block straddles a page boundary: two segments per block.
    memory.bytes.set(block, DATA + 4096 - 100);
    // 700 blocks: several chunks of 64 KiB.
    await run(disk, c.set([0x41, 0, ...u32(10), 0, ...u16(700), 0], DataDirection.ToDevice, DATA + 4096 - 100, 512));
    assertGood(c, 512);
    for (let b = 10; b < 710; b++) assert.deepEqual(backend.data.subarray(b * 512, (b + 1) * 512), Buffer.from(block), `block ${b}`);
    assert.ok(backend.data.subarray(9 * 512, 10 * 512).every((x) => x === 0));
    assert.ok(backend.data.subarray(710 * 512, 711 * 512).every((x) => x === 0));
    // UNMAP bit but a non-zero block: it must read back as that block, so it is written.
    await run(disk, c.set([0x93, 0x08, ...u64(1000), ...u32(3), 0, 0], DataDirection.ToDevice, DATA + 4096 - 100, 512));
    assertGood(c, 512);
    assert.deepEqual(backend.data.subarray(1002 * 512, 1003 * 512), Buffer.from(block));
  });

  test('a long WRITE SAME on a backend that completes inside the call does not recurse', async () => {
    const backend = new FakeBackend({ sizeBytes: 4096 * MiB });
    const disk = new ScsiDisk(backend, { maxTransferBytes: 4096 });
    // 2^18 blocks, at most 3 per chunk (a 4 KiB transfer gets 3 iovec entries): ~87,000
    // synchronous completions, far deeper than the stack would allow if each recursed.
    await run(disk, c.set([0x93, 0, ...u64(0), ...u32(2 ** 18), 0, 0], DataDirection.ToDevice, DATA, 512));
    assertGood(c, 512);
    let next = 0;
    for (const call of backend.calls) {
      assert.equal(call.op, 'write');
      assert.equal(call.offset, next);
      assert.ok(call.length > 0 && call.length <= 4096);
      next += call.length;
    }
    assert.equal(next, 2 ** 18 * 512);
  });

  test('length 0 (WSNZ), too long, out of range, NDOB without UNMAP are refused', async () => {
    const backend = new FakeBackend({ sizeBytes: MiB });
    const disk = new ScsiDisk(backend);
    await run(disk, c.set([0x41, 0, ...u32(0), 0, 0, 0, 0], DataDirection.ToDevice, DATA, 512));
    assertCheck(c, ILLEGAL, INVALID_FIELD);
    await run(disk, c.set([0x93, 0, ...u64(0), ...u32(2 ** 31), 0, 0], DataDirection.ToDevice, DATA, 512));
    assertCheck(c, ILLEGAL, INVALID_FIELD);
    await run(disk, c.set([0x93, 0, ...u64(2040), ...u32(9), 0, 0], DataDirection.ToDevice, DATA, 512));
    assertCheck(c, ILLEGAL, LBA_OUT_OF_RANGE);
    await run(disk, c.set([0x93, 0x01, ...u64(0), ...u32(1), 0, 0]));
    assertCheck(c, ILLEGAL, INVALID_FIELD);
    await run(disk, c.set([0x93, 0, ...u64(0), ...u32(1), 0, 0], DataDirection.ToDevice, DATA, 511));
    assertCheck(c, ILLEGAL, INVALID_FIELD);
    assert.equal(backend.calls.length, 0);
  });
});

// ---- simple commands, unit attention, unknown opcodes --------------------------------

describe('other commands', () => {
  const c = new TestCommand();

  test('TEST UNIT READY, START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL are GOOD', async () => {
    const disk = new ScsiDisk(new FakeBackend());
    for (const cdb of [[0x00, 0, 0, 0, 0, 0], [0x1b, 1, 0, 0, 1, 0], [0x1e, 0, 0, 0, 1, 0]]) {
      await run(disk, c.set(cdb));
      assertGood(c, 0);
    }
  });

  test('REQUEST SENSE: NO SENSE, fixed format', async () => {
    const disk = new ScsiDisk(new FakeBackend());
    await run(disk, c.set([0x03, 0, 0, 0, 252, 0], DataDirection.FromDevice, OUT, 252));
    assertGood(c, 18);
    const d = guest(OUT, 18);
    assert.equal(d[0], 0x70);
    assert.equal(d[2], 0);
    assert.equal(d[7], 10);
    await run(disk, c.set([0x03, 1, 0, 0, 252, 0], DataDirection.FromDevice, OUT, 252));
    assertCheck(c, ILLEGAL, INVALID_FIELD);
  });

  test('unknown opcodes (ATA PASS-THROUGH, REPORT LUNS to the unit, vendor) are INVALID COMMAND OPERATION CODE', async () => {
    const disk = new ScsiDisk(new FakeBackend());
    for (const op of [0x85, 0xa1, 0xa0, 0x4d, 0xc0, 0xff, 0x7f, 0x9f]) {
      await run(disk, c.set([op, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
      assertCheck(c, ILLEGAL, INVALID_OPCODE);
    }
  });

  test('after notifyCapacityChanged the next command gets UNIT ATTENTION 2A/09 once; INQUIRY is exempt', async () => {
    const backend = new FakeBackend({ sizeBytes: MiB });
    const disk = new ScsiDisk(backend);
    backend.info = { ...backend.info, sizeBytes: 2 * MiB };
    disk.notifyCapacityChanged();
    await run(disk, c.set(inquiry(null, 36), DataDirection.FromDevice, OUT, 36));
    assertGood(c, 36);
    await run(disk, c.set([0x00, 0, 0, 0, 0, 0]));
    assertCheck(c, 0x06, 0x2a09);
    await run(disk, c.set([0x00, 0, 0, 0, 0, 0]));
    assertGood(c, 0);
    await run(disk, c.set([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], DataDirection.FromDevice, OUT, 8));
    assert.equal(be32(guest(OUT, 8), 0), 4095, 'the new capacity');
    // REQUEST SENSE reports (and clears) it instead.
    disk.notifyCapacityChanged();
    await run(disk, c.set([0x03, 0, 0, 0, 18, 0], DataDirection.FromDevice, OUT, 18));
    assertGood(c, 18);
    assert.equal(guest(OUT, 18)[2], 0x06);
    assert.equal(guest(OUT, 18)[12], 0x2a);
    await run(disk, c.set([0x00, 0, 0, 0, 0, 0]));
    assertGood(c, 0);
  });

  test('constructor refuses options and disks it cannot serve', () => {
    const bad: [Partial<DiskInfo>, ScsiDiskOptions][] = [
      [{ logicalBlockBytes: 1024 }, {}],
      [{ physicalBlockBytes: 1536 }, {}],
      [{}, { maxTransferBytes: 1000 }],
      [{}, { maxTransferBytes: 0 }],
      [{}, { maxInFlight: 0 }],
      [{}, { maxUnmapDescriptors: 1.5 }],
    ];
    for (const [info, options] of bad) assert.throws(() => new ScsiDisk(new FakeBackend(info), options), RangeError);
  });
});

// ---- the LUN map --------------------------------------------------------------------

describe('ScsiTargetLuns', () => {
  const c = new TestCommand();
  const reportLuns = (allocation: number, select = 0): number[] => [0xa0, 0, select, 0, 0, 0, ...u32(allocation), 0, 0];

  test('REPORT LUNS lists present LUNs in peripheral addressing, from any LUN, cut to the allocation length', async () => {
    const luns = new ScsiTargetLuns();
    luns.set(0, new ScsiDisk(new FakeBackend()));
    luns.set(3, new ScsiDisk(new FakeBackend()));
    assert.equal(luns.size, 2);
    for (const lun of [0, 7, 255]) {
      c.set(reportLuns(4096), DataDirection.FromDevice, OUT, 4096);
      assert.equal(luns.execute(lun, c), true);
      assert.equal(c.completions, 1);
      assertGood(c, 24);
      const d = guest(OUT, 24);
      assert.equal(be32(d, 0), 16);
      assert.deepEqual([...d.subarray(8, 16)], [0, 0, 0, 0, 0, 0, 0, 0]);
      assert.deepEqual([...d.subarray(16, 24)], [0, 3, 0, 0, 0, 0, 0, 0]);
    }
    c.set(reportLuns(12), DataDirection.FromDevice, OUT, 4096);
    luns.execute(0, c);
    assertGood(c, 12);
    c.set(reportLuns(4096, 1), DataDirection.FromDevice, OUT, 4096);
    luns.execute(0, c);
    assertGood(c, 8);
    assert.equal(be32(guest(OUT, 4), 0), 0, 'no well-known LUNs');
    c.set(reportLuns(4096, 0x10), DataDirection.FromDevice, OUT, 4096);
    luns.execute(0, c);
    assertCheck(c, ILLEGAL, INVALID_FIELD);
    luns.delete(0);
    c.set(reportLuns(4096), DataDirection.FromDevice, OUT, 4096);
    luns.execute(0, c);
    assertGood(c, 16);
    assert.equal(new ScsiTargetLuns().execute(0, c.set(reportLuns(4096), DataDirection.FromDevice, OUT, 4096)), true);
    assertGood(c, 8);
  });

  test('absent LUN: INQUIRY gets PQ 3 / type 0x1F and GOOD; VPD INQUIRY and anything else are left to the transport', async () => {
    const luns = new ScsiTargetLuns();
    luns.set(1, new ScsiDisk(new FakeBackend()));
    c.set(inquiry(null, 36), DataDirection.FromDevice, OUT, 96);
    assert.equal(luns.execute(0, c), true);
    assert.equal(c.completions, 1);
    assertGood(c, 36);
    assert.equal(guest(OUT, 1)[0], 0x7f);
    for (const cdb of [inquiry(0x00, 255), [0x00, 0, 0, 0, 0, 0], [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]]) {
      c.set(cdb, DataDirection.FromDevice, OUT, 255);
      assert.equal(luns.execute(2, c), false);
      assert.equal(c.completions, 0, 'not completed: the transport answers INVALID_LUN');
    }
    // A present LUN runs the unit.
    c.set(inquiry(null, 36), DataDirection.FromDevice, OUT, 96);
    assert.equal(luns.execute(1, c), true);
    assertGood(c, 36);
    assert.equal(guest(OUT, 1)[0], 0x00);
    assert.equal(luns.get(1.5), undefined);
    assert.equal(luns.get(-1), undefined);
    assert.equal(luns.get(256), undefined);
    assert.throws(() => luns.set(256, new ScsiDisk(new FakeBackend())), RangeError);
  });
});

// ---- fuzz ---------------------------------------------------------------------------

describe('fuzz', () => {
  const CANARY = 0xc5;
  const REGION = 0x200000;
  const REGION_BYTES = 0x40000;

  /** Opcodes the disk implements, so random CDBs get past the opcode check often. */
  const interesting = [0x00, 0x03, 0x08, 0x0a, 0x12, 0x15, 0x1a, 0x1b, 0x1e, 0x25, 0x28, 0x2a, 0x2f, 0x35, 0x41, 0x42, 0x55, 0x5a, 0x88, 0x8a, 0x8f, 0x91, 0x93, 0x9e, 0xa0, 0xa8, 0xaa, 0xaf];

  /** Where the last byte of the LBA and of the transfer length sit, per opcode. */
  const BLOCK_FIELDS: Record<number, [number, number]> = {
    0x08: [3, 4], 0x0a: [3, 4],
    0x28: [5, 8], 0x2a: [5, 8], 0x2f: [5, 8], 0x35: [5, 8], 0x41: [5, 8],
    0xa8: [5, 9], 0xaa: [5, 9], 0xaf: [5, 9],
    0x88: [9, 13], 0x8a: [9, 13], 0x8f: [9, 13], 0x91: [9, 13], 0x93: [9, 13],
  };

  const cdbArb = fc.record({
    op: fc.oneof(fc.constantFrom(...interesting), fc.integer({ min: 0, max: 255 })),
    rest: fc.uint8Array({ minLength: 15, maxLength: 15 }),
    smallLengths: fc.constantFrom(true, true, true, false),
    cdbLength: fc.oneof(fc.constantFrom(6, 10, 12, 16), fc.integer({ min: -2, max: 20 })),
    direction: fc.constantFrom(DataDirection.ToDevice, DataDirection.FromDevice, DataDirection.None),
    offset: fc.integer({ min: 0, max: 8192 }),
    length: fc.oneof(fc.integer({ min: 0, max: 4096 }), fc.integer({ min: 0, max: 128 * 1024 }), fc.constantFrom(512, 1024, 1536, 4096, 8192, 12288)),
    segment: fc.constantFrom(512, 4096, 100),
    deferred: fc.boolean(),
    result: fc.constantFrom<number | undefined>(undefined, undefined, -Errno.EIO, -Errno.ENOSPC, 7),
  });

  test('random CDBs never throw, complete exactly once and never write outside the buffer', async () => {
    const backends = [new FakeBackend({ sizeBytes: MiB }), new FakeBackend({ sizeBytes: MiB, readOnly: true, discard: false, logicalBlockBytes: 4096 })];
    const memoryDisk = new MemoryDisk({ sizeBytes: MiB, serial: 'FUZZ' });
    const disks = [...backends.map((b) => new ScsiDisk(b, { maxInFlight: 4 })), new ScsiDisk(memoryDisk)];
    const luns = new ScsiTargetLuns();
    luns.set(0, disks[0]!);
    const c = new TestCommand();
    const canaries = Buffer.alloc(REGION_BYTES, CANARY);
    const outcomes = { data: 0, good: 0, check: 0, busy: 0 };
    await fc.assert(
      fc.asyncProperty(cdbArb, fc.integer({ min: 0, max: 3 }), async (x, which) => {
        const cdb = [x.op, ...x.rest];
        let cdbLength = x.cdbLength;
        let direction: DataDirection = x.direction;
        if (x.smallLengths) {
          // Mostly-valid CDBs, so that commands pass validation and reach the backend or
          // answer with data: small LBAs and lengths, no protection bits, the group's CDB
          // length and the opcode's direction, a random allocation length.
          for (let i = 2; i < 16; i++) cdb[i] = 0;
          cdb[1] = cdb[1]! & 0x09;
          const alloc = x.rest[14]!;
          const lbaAndLength = BLOCK_FIELDS[x.op];
          if (lbaAndLength !== undefined) {
            cdb[lbaAndLength[0]] = x.rest[12]! & 0x0f;
            cdb[lbaAndLength[1]] = x.rest[13]! & 0x03;
          }
          if (x.op === 0x42 || x.op === 0x55) cdb[8] = alloc;
          if (x.op === 0x15) cdb[4] = alloc;
          if (x.op === 0x12) cdb[4] = alloc;
          if (x.op === 0x1a || x.op === 0x5a) cdb[2] = alloc & 1 ? 0x3f : 0x08;
          if (x.op === 0x1a) cdb[4] = alloc;
          if (x.op === 0x5a) cdb[8] = alloc;
          if (x.op === 0x9e) cdb[1] = 0x10;
          if (x.op === 0x9e || x.op === 0xa0) cdb[x.op === 0x9e ? 13 : 9] = alloc;
          cdbLength = [6, 10, 10, 16, 16, 12, 16, 16][x.op >>> 5]!;
          direction = [0x0a, 0x2a, 0x8a, 0xaa, 0x41, 0x93, 0x42, 0x15, 0x55].includes(x.op) ? DataDirection.ToDevice : DataDirection.FromDevice;
        }
        memory.bytes.fill(CANARY, REGION, REGION + REGION_BYTES);
        const start = REGION + 4096 + x.offset;
        const length = Math.min(x.length, REGION_BYTES - 2 * 4096 - x.offset);
        c.set([], direction, start, length, x.segment);
        c.cdb.set(cdb.slice(0, 16));
        c.cdbLength = cdbLength;
        // A READ may fill the buffer; snapshot outside it.
        for (const b of backends) {
          b.deferred = x.deferred;
          b.results = x.result === undefined ? {} : { read: x.result, write: x.result, flush: x.result, discard: x.result };
        }
        let answered = true;
        if (which === 3) answered = luns.execute(x.rest[0]! & 1, c);
        else disks[which]!.execute(c);
        for (const b of backends) while (b.pendingCount > 0) b.completeAll();
        for (let i = 0; i < 20 && c.completions === 0 && answered; i++) await new Promise<void>((resolve) => setImmediate(resolve));
        if (!answered) {
          assert.equal(c.completions, 0);
          return;
        }
        assert.equal(c.completions, 1);
        assert.ok([ScsiStatus.Good, ScsiStatus.CheckCondition, ScsiStatus.TaskSetFull].includes(c.scsiStatus as 0), `status ${c.scsiStatus}`);
        if (c.scsiStatus === ScsiStatus.CheckCondition) {
          assert.equal(c.senseLength, 18);
          assert.equal(c.sense[0], 0x70);
          assert.equal(c.bytesTransferred, 0);
        }
        assert.ok(Number.isInteger(c.bytesTransferred) && c.bytesTransferred >= 0 && c.bytesTransferred <= length);
        const ram = Buffer.from(memory.bytes.buffer, memory.bytes.byteOffset, memory.bytes.byteLength);
        assert.equal(ram.compare(canaries, 0, start - REGION, REGION, start), 0, 'bytes before the buffer are untouched');
        assert.equal(ram.compare(canaries, 0, REGION + REGION_BYTES - start - length, start + length, REGION + REGION_BYTES), 0, 'bytes after the buffer are untouched');
        outcomes[c.scsiStatus === ScsiStatus.Good ? (c.bytesTransferred > 0 ? 'data' : 'good') : c.scsiStatus === ScsiStatus.CheckCondition ? 'check' : 'busy']++;
      }),
      { numRuns: 6000 },
    );
    for (const disk of disks) assert.equal(disk.inFlight, 0);
    // The run must have exercised real work, not only rejections.
    assert.ok(outcomes.data > 100 && outcomes.good > 100 && outcomes.check > 100, JSON.stringify(outcomes));
    assert.ok(backends[0]!.calls.length > 50, `I/O reached the backend: ${backends.map((b) => b.calls.length)} ${JSON.stringify(outcomes)}`);
  });
});
