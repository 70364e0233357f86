// StorVSP driven directly by a fake guest: real rings in guest RAM, a real eventfd and
// Poller, requests written with RingWriter the way storvsc writes them, completions read
// back with RingReader. Covers the handshake in Linux's order, sub-channels, data landing
// in guest memory, LUN routing, hot plug, resets, flow control, close/reopen, and a
// hostile guest (malformed packets get error completions; the channel keeps working).
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import fc from 'fast-check';
import { MemoryDisk } from '../src/backends/block/memory-disk.js';
import type { BlockBackend } from '../src/backends/block/block-backend.js';
import { GuestMemory } from '../src/memory/guest-memory.js';
import { PAGE_SIZE } from '../src/memory/page.js';
import { Poller } from '../src/sys/epoll.js';
import { encodeGpaDirectHeader, gpaDirectHeaderSize, PacketType } from '../src/vmbus/packet.js';
import { RingWord } from '../src/vmbus/ring/ring-memory.js';
import { ScsiStatus, type ScsiCommand, type ScsiLogicalUnit } from '../src/devices/scsi/scsi-command.js';
import { StorvspDevice, type StorvspOptions } from '../src/devices/storvsp/storvsp-device.js';
import {
  decodeVstorPacket,
  encodeSubChannelCount,
  encodeVmscsiRequest,
  encodeVstorHeader,
  INIT_TRANSACTION_ID,
  NtStatus,
  RESET_TRANSACTION_ID,
  SrbStatus,
  STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL,
  VmscsiRequest,
  VstorOperation,
  VstorPacket,
  VstorField,
} from '../src/devices/storvsp/storvsp-protocol.js';
import { FakeGuestEnd, pageCursor, waitFor } from './support/device-rig.js';

const RAM_PAGES = 4096; // 16 MiB
const memory = GuestMemory.create(RAM_PAGES * PAGE_SIZE, 'storvsp-test');
const poller = new Poller();
after(async () => {
  await poller.stop();
  memory.close();
});

const allocPages = pageCursor(RAM_PAGES);

interface Reply {
  type: number;
  flags: number;
  transactionId: bigint;
  length: number;
  bytes: Uint8Array;
  packet: VstorPacket;
}

/** The guest end of a StorVSP channel; packets from the host are decoded as vstor packets. */
class FakeGuestChannel extends FakeGuestEnd {
  constructor(subChannelIndex = 0, sendPages = 8, receivePages = 8, doubleMapped = true) {
    super(memory, allocPages, { subChannelIndex, sendPages, receivePages, doubleMapped });
  }

  /** The next packet from the host, waiting for it. */
  async next(what = 'a reply'): Promise<Reply> {
    await this.packetWaiting(what);
    return this.take()!;
  }

  /** The next packet if one is there now. */
  take(): Reply | null {
    const p = this.takePacket();
    if (p === null) return null;
    const packet = new VstorPacket();
    decodeVstorPacket(p.payload, 0, p.payload.length, packet);
    return { type: p.type, flags: p.flags, transactionId: p.transactionId, length: p.payload.length, bytes: p.payload, packet };
  }

  /** Waits until the host consumed every request, then returns what it answered. */
  async drainReplies(): Promise<Reply[]> {
    await waitFor(() => this.consumed, 'the host to consume the requests');
    const out: Reply[] = [];
    let r: Reply | null;
    while ((r = this.take()) !== null) out.push(r);
    return out;
  }
}

// ---- packet builders ----

function control(operation: number, fill?: (b: Uint8Array) => void): Uint8Array {
  const b = new Uint8Array(64);
  encodeVstorHeader(b, 0, operation, 1, 0);
  fill?.(b);
  return b;
}

function versionPacket(majorMinor: number): Uint8Array {
  return control(VstorOperation.QueryProtocolVersion, (b) => {
    b[VstorField.MajorMinor] = majorMinor & 0xff;
    b[VstorField.MajorMinor + 1] = majorMinor >> 8;
  });
}

interface SrbSpec {
  cdb: number[];
  lun?: number;
  path?: number;
  target?: number;
  dataIn?: number;
  length?: number;
  cdbLength?: number;
  srbLength?: number;
}

function srbPacket(spec: SrbSpec): Uint8Array {
  const b = new Uint8Array(64);
  encodeVstorHeader(b, 0, VstorOperation.ExecuteSrb, 1, 0);
  const srb = new VmscsiRequest();
  srb.length = spec.srbLength ?? 52;
  srb.pathId = spec.path ?? 0;
  srb.targetId = spec.target ?? 0;
  srb.lun = spec.lun ?? 0;
  srb.cdbLength = spec.cdbLength ?? spec.cdb.length;
  srb.senseInfoLength = 20;
  srb.dataIn = spec.dataIn ?? 2;
  srb.dataTransferLength = spec.length ?? 0;
  srb.cdbOrSense.set(spec.cdb.slice(0, 16));
  srb.srbFlags = 0x8;
  srb.timeOutValue = 60;
  encodeVmscsiRequest(b, 0, srb);
  return b;
}

function gpaHeader(ranges: { byteCount: number; byteOffset: number; pfns: number[] }[]): Uint8Array {
  const h = new Uint8Array(gpaDirectHeaderSize(ranges));
  encodeGpaDirectHeader(ranges, h, 0);
  return h;
}

function be32(v: number): number[] {
  return [(v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff];
}
function read10(lba: number, blocks: number): number[] {
  return [0x28, 0, ...be32(lba), 0, (blocks >> 8) & 0xff, blocks & 0xff, 0];
}
function write10(lba: number, blocks: number): number[] {
  return [0x2a, 0, ...be32(lba), 0, (blocks >> 8) & 0xff, blocks & 0xff, 0];
}
const TEST_UNIT_READY = [0, 0, 0, 0, 0, 0];

/** A guest buffer of `bytes` starting `offset` into its first page, over scattered pages. */
function guestBuffer(bytes: number, offset = 0, scatter = true): { pfns: number[]; byteOffset: number; byteCount: number; gpaOf(i: number): number } {
  const pages = Math.ceil((offset + bytes) / PAGE_SIZE);
  const first = allocPages(pages * 2);
  // Every other page when scattering, so no two are physically consecutive.
  const pfns = Array.from({ length: pages }, (_, i) => first + (scatter ? 2 * i : i));
  return {
    pfns,
    byteOffset: offset,
    byteCount: bytes,
    gpaOf(i: number) {
      const at = offset + i;
      return pfns[Math.floor(at / PAGE_SIZE)]! * PAGE_SIZE + (at % PAGE_SIZE);
    },
  };
}

function fillBuffer(buf: ReturnType<typeof guestBuffer>, seed: number): Uint8Array {
  const expected = new Uint8Array(buf.byteCount);
  let x = seed >>> 0;
  for (let i = 0; i < buf.byteCount; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    expected[i] = x >>> 24;
    memory.bytes[buf.gpaOf(i)] = expected[i]!;
  }
  return expected;
}

function readBuffer(buf: ReturnType<typeof guestBuffer>): Uint8Array {
  const out = new Uint8Array(buf.byteCount);
  for (let i = 0; i < buf.byteCount; i++) out[i] = memory.bytes[buf.gpaOf(i)]!;
  return out;
}

// ---- a fake logical unit: 512-byte blocks in a JS array, READ/WRITE(10) and TEST UNIT READY ----

class FakeUnit implements ScsiLogicalUnit {
  readonly store: Uint8Array;
  /** When set, commands wait in `held` until released. */
  hold = false;
  readonly held: ScsiCommand[] = [];
  executed = 0;
  readonly opcodes: number[] = [];

  constructor(blocks = 2048) {
    this.store = new Uint8Array(blocks * 512);
  }

  execute(command: ScsiCommand): void {
    this.executed++;
    this.opcodes.push(command.cdb[0]!);
    if (this.hold) {
      this.held.push(command);
      return;
    }
    this.run(command);
    command.complete();
  }

  releaseAll(): void {
    const held = this.held.splice(0);
    for (const c of held) {
      this.run(c);
      c.complete();
    }
  }

  private run(c: ScsiCommand): void {
    const cdb = c.cdb;
    const op = cdb[0]!;
    if (op === 0x00) {
      c.scsiStatus = ScsiStatus.Good;
      return;
    }
    if (op === 0x28 || op === 0x2a) {
      const lba = ((cdb[2]! << 24) | (cdb[3]! << 16) | (cdb[4]! << 8) | cdb[5]!) >>> 0;
      const bytes = ((cdb[7]! << 8) | cdb[8]!) * 512;
      let disk = lba * 512;
      const base = Number(c.memory.base);
      let left = Math.min(bytes, c.data.byteLength);
      for (let i = 0; i < c.data.count && left > 0; i++) {
        const gpa = c.data.addressAt(i) - base;
        const n = Math.min(c.data.lengthAt(i), left);
        assert.ok(c.memory.contains(gpa, n), 'iovec outside guest RAM');
        if (op === 0x28) c.memory.bytes.set(this.store.subarray(disk, disk + n), gpa);
        else this.store.set(c.memory.bytes.subarray(gpa, gpa + n), disk);
        disk += n;
        left -= n;
      }
      c.scsiStatus = ScsiStatus.Good;
      c.bytesTransferred = bytes - left;
      return;
    }
    // Anything else: CHECK CONDITION, ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE.
    c.scsiStatus = ScsiStatus.CheckCondition;
    c.sense.fill(0, 0, 18);
    c.sense[0] = 0x70;
    c.sense[2] = 0x05;
    c.sense[7] = 10;
    c.sense[12] = 0x20;
    c.senseLength = 18;
    c.bytesTransferred = 0;
  }
}

class NullBackend implements BlockBackend {
  readonly info = { sizeBytes: 1 << 20, logicalBlockBytes: 512, physicalBlockBytes: 4096, readOnly: false, discard: false, writeCache: false, serial: 'fake' };
  read(): void {}
  write(): void {}
  flush(): void {}
  discard(): void {}
  async close(): Promise<void> {}
}

interface Rig {
  device: StorvspDevice;
  guest: FakeGuestChannel;
  offered: number[];
  logs: string[];
  units: Map<number, FakeUnit>;
  cleanup(): void;
}

const rigs: FakeGuestChannel[] = [];
after(() => {
  for (const g of rigs) g.release();
});

function makeRig(options: Partial<StorvspOptions> = {}, ring: { send?: number; receive?: number; doubleMapped?: boolean } = {}): Rig {
  const offered: number[] = [];
  const logs: string[] = [];
  const units = new Map<number, FakeUnit>();
  const device = new StorvspDevice({
    poller,
    offerSubchannel: (_d, index) => offered.push(index),
    createUnit: () => new FakeUnit(),
    log: (m) => logs.push(m),
    ...options,
  });
  const guest = new FakeGuestChannel(0, ring.send ?? 8, ring.receive ?? 8, ring.doubleMapped ?? true);
  rigs.push(guest);
  assert.equal(device.open(guest.open), 0);
  return {
    device,
    guest,
    offered,
    logs,
    units,
    cleanup() {
      device.close(guest.open);
    },
  };
}

async function request(guest: FakeGuestChannel, payload: Uint8Array, transactionId: bigint | number = INIT_TRANSACTION_ID, header: Uint8Array | null = null): Promise<Reply> {
  guest.send(header ? PacketType.DataUsingGpaDirect : PacketType.DataInband, transactionId, payload, header);
  const reply = await guest.next();
  assert.equal(reply.type, PacketType.Completion);
  assert.equal(reply.transactionId, BigInt(transactionId));
  assert.equal(reply.length, 64, 'replies are whole vstor_packets');
  assert.equal(reply.packet.operation, VstorOperation.CompleteIo);
  return reply;
}

async function initialize(guest: FakeGuestChannel): Promise<VstorPacket> {
  assert.equal((await request(guest, control(VstorOperation.BeginInitialization))).packet.status, 0);
  assert.equal((await request(guest, versionPacket(0x0602))).packet.status, 0);
  const props = await request(guest, control(VstorOperation.QueryProperties));
  assert.equal(props.packet.status, 0);
  assert.equal((await request(guest, control(VstorOperation.EndInitialization))).packet.status, 0);
  return props.packet;
}

let nextTid = 1;
async function srb(guest: FakeGuestChannel, spec: SrbSpec, buffer?: ReturnType<typeof guestBuffer>): Promise<Reply> {
  const header = buffer ? gpaHeader([{ byteCount: buffer.byteCount, byteOffset: buffer.byteOffset, pfns: buffer.pfns }]) : null;
  return request(guest, srbPacket({ length: buffer?.byteCount ?? 0, ...spec }), nextTid++, header);
}

// ---------------------------------------------------------------------------------------

describe('StorVSP initialization', () => {
  test('Linux order: begin, version 6.2, properties, end; replies echo the init id with full packets', async () => {
    const rig = makeRig({ maxSubchannels: 3 });
    try {
      const props = await initialize(rig.guest);
      assert.equal(props.maxTransferBytes, 0x100000);
      assert.equal(props.maxChannelCount, 3);
      assert.equal(props.propertiesFlags & STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL, STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL);
      assert.deepEqual(rig.guest.failures, []);
    } finally {
      rig.cleanup();
    }
  });

  test('properties without sub-channels clear the multi-channel flag and carry the configured max transfer', async () => {
    const rig = makeRig({ maxTransferBytes: 0x40000 });
    try {
      const props = await initialize(rig.guest);
      assert.equal(props.maxTransferBytes, 0x40000);
      assert.equal(props.maxChannelCount, 0);
      assert.equal(props.propertiesFlags & STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL, 0);
    } finally {
      rig.cleanup();
    }
  });

  test('version fallback: with a 6.0 maximum, 6.2 gets REVISION_MISMATCH and 6.0 is accepted', async () => {
    const rig = makeRig({ maxProtocolVersion: 0x0600 });
    try {
      const g = rig.guest;
      assert.equal((await request(g, control(VstorOperation.BeginInitialization))).packet.status, 0);
      assert.equal((await request(g, versionPacket(0x0602))).packet.status, NtStatus.RevisionMismatch);
      assert.equal((await request(g, versionPacket(0x0600))).packet.status, 0);
      assert.equal((await request(g, control(VstorOperation.QueryProperties))).packet.status, 0);
      assert.equal((await request(g, control(VstorOperation.EndInitialization))).packet.status, 0);
    } finally {
      rig.cleanup();
    }
  });

  test('unknown and pre-Win8 versions are rejected; 5.1 is accepted', async () => {
    const rig = makeRig();
    try {
      const g = rig.guest;
      await request(g, control(VstorOperation.BeginInitialization));
      for (const v of [0x0700, 0x0603, 0x0402, 0x0200, 0]) {
        assert.equal((await request(g, versionPacket(v))).packet.status, NtStatus.RevisionMismatch, `version 0x${v.toString(16)}`);
      }
      assert.equal((await request(g, versionPacket(0x0501))).packet.status, 0);
    } finally {
      rig.cleanup();
    }
  });

  test('out-of-order packets get INVALID_DEVICE_STATE, then the right order still works', async () => {
    const rig = makeRig({ maxSubchannels: 2 });
    try {
      const g = rig.guest;
      assert.equal((await request(g, control(VstorOperation.EndInitialization))).packet.status, NtStatus.InvalidDeviceState);
      assert.equal((await request(g, control(VstorOperation.QueryProperties))).packet.status, NtStatus.InvalidDeviceState);
      const early = await srb(g, { cdb: TEST_UNIT_READY });
      assert.equal(early.packet.status, NtStatus.InvalidDeviceState);
      assert.equal(early.packet.srb.srbStatus, SrbStatus.InvalidRequest);
      assert.equal((await request(g, control(VstorOperation.BeginInitialization))).packet.status, 0);
      assert.equal((await request(g, control(VstorOperation.BeginInitialization))).packet.status, NtStatus.InvalidDeviceState);
      assert.equal((await request(g, control(VstorOperation.EndInitialization))).packet.status, NtStatus.InvalidDeviceState);
      assert.equal((await request(g, versionPacket(0x0602))).packet.status, 0);
      assert.equal(
        (await request(g, control(VstorOperation.CreateSubChannels, (b) => encodeSubChannelCount(b, 0, 1)))).packet.status,
        NtStatus.InvalidDeviceState,
        'sub-channels only after END_INITIALIZATION',
      );
      assert.equal((await request(g, control(VstorOperation.QueryProperties))).packet.status, 0);
      assert.equal((await request(g, control(VstorOperation.EndInitialization))).packet.status, 0);
      assert.deepEqual(rig.offered, []);
    } finally {
      rig.cleanup();
    }
  });

  test('close and reopen (driver reload) restarts the handshake', async () => {
    const rig = makeRig();
    const again = new FakeGuestChannel(0);
    rigs.push(again);
    try {
      await initialize(rig.guest);
      rig.device.close(rig.guest.open);
      assert.equal(rig.device.counters(), null);
      assert.equal(rig.device.open(again.open), 0);
      const early = await srb(again, { cdb: TEST_UNIT_READY });
      assert.equal(early.packet.status, NtStatus.InvalidDeviceState);
      await initialize(again);
      rig.device.addDisk(0, new NullBackend());
      await again.next('ENUMERATE_BUS');
      const ok = await srb(again, { cdb: TEST_UNIT_READY });
      assert.equal(ok.packet.srb.srbStatus, SrbStatus.Success);
    } finally {
      rig.device.close(again.open);
    }
  });
});

describe('StorVSP sub-channels', () => {
  test('CREATE_SUB_CHANNELS offers indices not yet offered, within the advertised count; sub-channels serve I/O at once', async () => {
    const rig = makeRig({ maxSubchannels: 4 });
    const subs: FakeGuestChannel[] = [];
    try {
      const g = rig.guest;
      await initialize(g);
      const create = (n: number) => request(g, control(VstorOperation.CreateSubChannels, (b) => encodeSubChannelCount(b, 0, n)));
      assert.equal((await create(3)).packet.status, 0);
      assert.deepEqual(rig.offered, [1, 2, 3]);
      assert.equal((await create(4)).packet.status, 0);
      assert.deepEqual(rig.offered, [1, 2, 3, 4]);
      assert.equal((await create(2)).packet.status, 0);
      assert.deepEqual(rig.offered, [1, 2, 3, 4], 'nothing offered twice');
      assert.equal((await create(5)).packet.status, NtStatus.InvalidParameter);
      assert.equal((await create(0)).packet.status, NtStatus.InvalidParameter);

      rig.device.addDisk(0, new NullBackend());
      await g.next('ENUMERATE_BUS');
      for (let i = 1; i <= 2; i++) {
        const sub = new FakeGuestChannel(i);
        rigs.push(sub);
        subs.push(sub);
        assert.equal(rig.device.open(sub.open), 0);
      }
      // No handshake on a sub-channel; CREATE_SUB_CHANNELS there is refused.
      for (let k = 0; k < 3; k++) assert.equal((await srb(subs[0]!, { cdb: TEST_UNIT_READY })).packet.srb.srbStatus, SrbStatus.Success);
      for (let k = 0; k < 5; k++) assert.equal((await srb(subs[1]!, { cdb: TEST_UNIT_READY })).packet.srb.srbStatus, SrbStatus.Success);
      assert.equal(
        (await request(subs[0]!, control(VstorOperation.CreateSubChannels, (b) => encodeSubChannelCount(b, 0, 1)))).packet.status,
        NtStatus.InvalidDeviceState,
      );
      const per = rig.device.channelCounters();
      assert.deepEqual(per.map((c) => [c.subChannelIndex, c.requests]), [[0, 0], [1, 3], [2, 5]]);
      const total = rig.device.counters() as { packetsIn: number; requests: number } | null;
      assert.equal(total?.requests, 8);
      assert.equal(total?.packetsIn, per.reduce((n, c) => n + c.packetsIn, 0));
      // inspect shows one row per channel: each row gets that channel's own counters.
      for (const c of per) assert.deepEqual(rig.device.counters(c.subChannelIndex), { packetsIn: c.packetsIn, packetsOut: c.packetsOut, signalsIn: c.signalsIn, signalsOut: c.signalsOut, requests: c.requests });
      assert.equal(rig.device.counters(7), null, 'no such sub-channel');
    } finally {
      for (const s of subs) rig.device.close(s.open);
      rig.cleanup();
    }
  });
});

describe('StorVSP I/O', () => {
  test('WRITE then READ through GPA-direct buffers over scattered pages: data lands in guest memory', async () => {
    let unit: FakeUnit | null = null;
    const rig = makeRig({ createUnit: () => (unit = new FakeUnit()) });
    try {
      const g = rig.guest;
      await initialize(g);
      rig.device.addDisk(0, new NullBackend());
      const note = await g.next('ENUMERATE_BUS');
      assert.equal(note.type, PacketType.DataInband);
      const out = guestBuffer(3 * 4096 + 1024, 512);
      const expected = fillBuffer(out, 7);
      const w = await srb(g, { cdb: write10(10, out.byteCount / 512), dataIn: 0 }, out);
      assert.equal(w.packet.status, 0);
      assert.equal(w.packet.srb.srbStatus, SrbStatus.Success);
      assert.equal(w.packet.srb.scsiStatus, 0);
      assert.equal(w.packet.srb.dataTransferLength, out.byteCount);
      assert.deepEqual(unit!.store.subarray(10 * 512, 10 * 512 + out.byteCount), expected);

      const into = guestBuffer(out.byteCount, 0);
      const r = await srb(g, { cdb: read10(10, out.byteCount / 512), dataIn: 1 }, into);
      assert.equal(r.packet.srb.srbStatus, SrbStatus.Success);
      assert.equal(r.packet.srb.dataTransferLength, out.byteCount);
      assert.deepEqual(readBuffer(into), expected);
      // Consecutive pages merge into one iovec, scattered ones do not: both must read right.
      const contiguous = guestBuffer(8192, 100, false);
      const r2 = await srb(g, { cdb: read10(10, 16), dataIn: 1 }, contiguous);
      assert.equal(r2.packet.srb.dataTransferLength, 8192);
      assert.deepEqual(readBuffer(contiguous), expected.subarray(0, 8192));
    } finally {
      rig.cleanup();
    }
  });

  test('single-mapped rings: requests and replies that wrap at the end of the ring arrive intact', async () => {
    let unit: FakeUnit | null = null;
    const rig = makeRig({ createUnit: () => (unit = new FakeUnit()) }, { send: 1, receive: 1, doubleMapped: false });
    try {
      const g = rig.guest;
      await initialize(g);
      rig.device.addDisk(0, new NullBackend());
      await g.next('ENUMERATE_BUS');
      unit!.store.forEach((_, i, a) => (a[i] = (i * 7 + 3) & 0xff));
      // 4 KiB rings: dozens of ~120-byte GPA-direct packets wrap many times, some across the seam.
      for (let i = 0; i < 100; i++) {
        const lba = i % 50;
        const buf = guestBuffer(512 * (1 + (i % 3)), (i * 40) % 4000);
        const r = await srb(g, { cdb: read10(lba, 1 + (i % 3)), dataIn: 1 }, buf);
        assert.equal(r.packet.srb.srbStatus, SrbStatus.Success, `request ${i}`);
        assert.equal(r.packet.srb.dataTransferLength, buf.byteCount);
        assert.deepEqual(readBuffer(buf), unit!.store.subarray(lba * 512, lba * 512 + buf.byteCount), `data of request ${i}`);
      }
      assert.deepEqual(g.failures, []);
    } finally {
      rig.cleanup();
    }
  });

  test('CHECK CONDITION carries ERROR|AUTOSENSE_VALID, status 0x02, the sense and no data length', async () => {
    const rig = makeRig();
    try {
      const g = rig.guest;
      await initialize(g);
      rig.device.addDisk(0, new NullBackend());
      await g.next('ENUMERATE_BUS');
      const buf = guestBuffer(512);
      const r = await srb(g, { cdb: [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], dataIn: 1 }, buf);
      assert.equal(r.packet.srb.srbStatus, SrbStatus.Error | SrbStatus.AutosenseValid);
      assert.equal(r.packet.srb.scsiStatus, 0x02);
      assert.equal(r.packet.srb.senseInfoLength, 18);
      assert.equal(r.packet.srb.dataTransferLength, 0);
      assert.equal(r.packet.srb.cdbOrSense[0], 0x70);
      assert.equal(r.packet.srb.cdbOrSense[2], 0x05);
      assert.equal(r.packet.srb.cdbOrSense[12], 0x20);
    } finally {
      rig.cleanup();
    }
  });

  test('absent LUN: TEST UNIT READY gets INVALID_LUN, INQUIRY is answered with qualifier 3, other targets are empty', async () => {
    const rig = makeRig();
    try {
      const g = rig.guest;
      await initialize(g);
      const tur = await srb(g, { cdb: TEST_UNIT_READY, lun: 5 });
      assert.equal(tur.packet.srb.srbStatus, SrbStatus.InvalidLun);
      assert.equal(tur.packet.srb.lun, 5);
      const buf = guestBuffer(36);
      const inq = await srb(g, { cdb: [0x12, 0, 0, 0, 36, 0], lun: 3, path: 2, target: 1, dataIn: 1 }, buf);
      assert.equal(inq.packet.srb.srbStatus, SrbStatus.Success);
      assert.equal(inq.packet.srb.dataTransferLength, 36);
      assert.equal(memory.bytes[buf.gpaOf(0)], 0x7f);
      rig.device.addDisk(0, new NullBackend());
      await g.next('ENUMERATE_BUS');
      const report = guestBuffer(4096);
      const rl = await srb(g, { cdb: [0xa0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], dataIn: 1 }, report);
      assert.equal(rl.packet.srb.srbStatus, SrbStatus.Success);
      assert.equal(rl.packet.srb.dataTransferLength, 16);
      const other = await srb(g, { cdb: [0xa0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], target: 1, dataIn: 1 }, report);
      assert.equal(other.packet.srb.dataTransferLength, 8, 'an empty LUN list for target 1');
    } finally {
      rig.cleanup();
    }
  });

  test('resets complete with status 0, echoing the reset transaction id', async () => {
    const rig = makeRig();
    try {
      const g = rig.guest;
      await initialize(g);
      for (const op of [VstorOperation.ResetBus, VstorOperation.ResetLun, VstorOperation.ResetAdapter]) {
        const r = await request(g, control(op), RESET_TRANSACTION_ID);
        assert.equal(r.packet.status, 0);
      }
    } finally {
      rig.cleanup();
    }
  });

  test('a real ScsiDisk over a MemoryDisk: READ CAPACITY and a write/read round trip', async () => {
    const rig = makeRig({ createUnit: undefined });
    try {
      const g = rig.guest;
      await initialize(g);
      const disk = new MemoryDisk({ sizeBytes: 4 << 20 });
      rig.device.addDisk(0, disk);
      await g.next('ENUMERATE_BUS');
      const cap = guestBuffer(8);
      const rc = await srb(g, { cdb: [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], dataIn: 1 }, cap);
      assert.equal(rc.packet.srb.srbStatus, SrbStatus.Success);
      const lastLba = memory.view.getUint32(cap.gpaOf(0), false);
      assert.equal(lastLba, (4 << 20) / 512 - 1);
      const out = guestBuffer(8192, 0);
      const expected = fillBuffer(out, 99);
      const w = await srb(g, { cdb: write10(100, 16), dataIn: 0 }, out);
      assert.equal(w.packet.srb.srbStatus, SrbStatus.Success);
      assert.deepEqual(new Uint8Array(disk.data.subarray(100 * 512, 100 * 512 + 8192)), expected);
      const into = guestBuffer(8192, 2048);
      const r = await srb(g, { cdb: read10(100, 16), dataIn: 1 }, into);
      assert.equal(r.packet.srb.dataTransferLength, 8192);
      assert.deepEqual(readBuffer(into), expected);
      assert.deepEqual(rig.device.disks().map((d) => [d.lun, d.info.sizeBytes]), [[0, 4 << 20]]);
    } finally {
      rig.cleanup();
    }
  });
});

describe('StorVSP hot plug', () => {
  test('addDisk / removeDisk send ENUMERATE_BUS (in-band, id 0, no completion); a removed LUN answers INVALID_LUN', async () => {
    const rig = makeRig();
    try {
      const g = rig.guest;
      // Before the guest finished init nothing is sent.
      rig.device.addDisk(1, new NullBackend());
      await initialize(g);
      assert.equal(g.take(), null);
      rig.device.addDisk(0, new NullBackend());
      const note = await g.next('ENUMERATE_BUS');
      assert.equal(note.type, PacketType.DataInband);
      assert.equal(note.transactionId, 0n);
      assert.equal(note.flags & 1, 0);
      assert.equal(note.packet.operation, VstorOperation.EnumerateBus);
      assert.equal((await srb(g, { cdb: TEST_UNIT_READY, lun: 1 })).packet.srb.srbStatus, SrbStatus.Success);
      const backend = await rig.device.removeDisk(1);
      assert.ok(backend instanceof NullBackend);
      const gone = await g.next('ENUMERATE_BUS after remove');
      assert.equal(gone.packet.operation, VstorOperation.EnumerateBus);
      assert.equal((await srb(g, { cdb: TEST_UNIT_READY, lun: 1 })).packet.srb.srbStatus, SrbStatus.InvalidLun);
      assert.equal(await rig.device.removeDisk(1), undefined);
      assert.deepEqual(rig.device.disks().map((d) => d.lun), [0]);
    } finally {
      rig.cleanup();
    }
  });

  test('removeDisk waits for commands in flight, which complete normally', async () => {
    const unit = new FakeUnit();
    unit.hold = true;
    const rig = makeRig({ createUnit: () => unit });
    try {
      const g = rig.guest;
      await initialize(g);
      rig.device.addDisk(2, new NullBackend());
      await g.next('ENUMERATE_BUS');
      const buf = guestBuffer(4096);
      g.send(PacketType.DataUsingGpaDirect, 77, srbPacket({ cdb: read10(0, 8), lun: 2, dataIn: 1, length: 4096 }), gpaHeader([{ byteCount: 4096, byteOffset: 0, pfns: buf.pfns }]));
      await waitFor(() => unit.held.length === 1, 'the read to reach the unit');
      let removed: BlockBackend | undefined | null = null;
      const removing = rig.device.removeDisk(2).then((b) => (removed = b));
      const note = await g.next('ENUMERATE_BUS');
      assert.equal(note.packet.operation, VstorOperation.EnumerateBus);
      await new Promise((r) => setTimeout(r, 10));
      assert.equal(removed, null, 'still in flight');
      unit.hold = false;
      unit.releaseAll();
      const done = await g.next('the held read');
      assert.equal(done.transactionId, 77n);
      assert.equal(done.packet.srb.srbStatus, SrbStatus.Success);
      await removing;
      assert.ok(removed !== null && removed !== undefined);
    } finally {
      rig.cleanup();
    }
  });
});

describe('StorVSP flow control and lifetime', () => {
  test('completions beyond a full ring wait in the backlog and all arrive once the guest reads', async () => {
    // One data page out (about 46 completions fit), 16 pages in.
    const rig = makeRig({}, { send: 16, receive: 1 });
    try {
      const g = rig.guest;
      await initialize(g);
      rig.device.addDisk(0, new NullBackend());
      await g.next('ENUMERATE_BUS');
      const n = 150;
      for (let i = 0; i < n; i++) g.send(PacketType.DataInband, 1000 + i, srbPacket({ cdb: TEST_UNIT_READY }));
      const seen = new Set<bigint>();
      await waitFor(() => {
        let r: Reply | null;
        while ((r = g.take()) !== null) {
          assert.equal(r.packet.srb.srbStatus, SrbStatus.Success);
          assert.ok(!seen.has(r.transactionId), 'no completion twice');
          seen.add(r.transactionId);
        }
        return seen.size === n;
      }, 'every completion');
      for (let i = 0; i < n; i++) assert.ok(seen.has(BigInt(1000 + i)));
      assert.deepEqual(g.failures, []);
    } finally {
      rig.cleanup();
    }
  });

  test('more commands in flight than slots: the rest wait in the ring and are served as slots free', async () => {
    const unit = new FakeUnit();
    unit.hold = true;
    const rig = makeRig({ createUnit: () => unit }, { send: 32, receive: 32 });
    try {
      const g = rig.guest;
      await initialize(g);
      rig.device.addDisk(0, new NullBackend());
      await g.next('ENUMERATE_BUS');
      const n = 600;
      for (let i = 0; i < n; i++) g.send(PacketType.DataInband, 5000 + i, srbPacket({ cdb: TEST_UNIT_READY }));
      await waitFor(() => unit.held.length === 512, 'the pool to fill');
      await new Promise((r) => setTimeout(r, 10));
      assert.equal(unit.held.length, 512, 'no more than the pool holds');
      assert.equal(g.consumed, false);
      const seen = new Set<bigint>();
      await waitFor(() => {
        unit.releaseAll();
        let r: Reply | null;
        while ((r = g.take()) !== null) seen.add(r.transactionId);
        return seen.size === n;
      }, 'all completions');
    } finally {
      rig.cleanup();
    }
  });

  test('a command that never completes holds up nothing else: another LUN and a bus reset are still answered', async () => {
    const stuck = new FakeUnit();
    stuck.hold = true;
    const stuckBackend = new NullBackend();
    const rig = makeRig({ createUnit: (backend) => (backend === stuckBackend ? stuck : new FakeUnit()) });
    try {
      const g = rig.guest;
      await initialize(g);
      rig.device.addDisk(0, stuckBackend);
      await g.next('ENUMERATE_BUS');
      rig.device.addDisk(1, new NullBackend());
      await g.next('ENUMERATE_BUS');
      g.send(PacketType.DataInband, 900, srbPacket({ cdb: TEST_UNIT_READY, lun: 0 }));
      await waitFor(() => stuck.held.length === 1, 'the command to get stuck');
      // With a command in flight the host may keep the ring masked; it must still come back for these.
      for (let i = 0; i < 3; i++) {
        await new Promise((r) => setTimeout(r, 5));
        assert.equal((await srb(g, { cdb: TEST_UNIT_READY, lun: 1 })).packet.srb.srbStatus, SrbStatus.Success);
      }
      assert.equal((await request(g, control(VstorOperation.ResetBus), RESET_TRANSACTION_ID)).packet.status, 0);
      stuck.hold = false;
      stuck.releaseAll();
      const late = await g.next('the stuck command');
      assert.equal(late.transactionId, 900n);
    } finally {
      rig.cleanup();
    }
  });

  test('commands in flight at close complete into nothing; the reopened channel is unaffected', async () => {
    const unit = new FakeUnit();
    unit.hold = true;
    const rig = makeRig({ createUnit: () => unit });
    const again = new FakeGuestChannel(0);
    rigs.push(again);
    try {
      const g = rig.guest;
      await initialize(g);
      rig.device.addDisk(0, new NullBackend());
      await g.next('ENUMERATE_BUS');
      for (let i = 0; i < 4; i++) g.send(PacketType.DataInband, 300 + i, srbPacket({ cdb: TEST_UNIT_READY }));
      await waitFor(() => unit.held.length === 4, 'commands in flight');
      rig.device.close(g.open);
      const writeIndex = Atomics.load(g.outgoing.header, RingWord.WriteIndex);
      assert.equal(rig.device.open(again.open), 0);
      await initialize(again);
      unit.hold = false;
      unit.releaseAll();
      assert.equal(Atomics.load(g.outgoing.header, RingWord.WriteIndex), writeIndex, 'nothing written to the closed ring');
      assert.equal(again.take(), null, 'nor to the new one');
      assert.equal((await srb(again, { cdb: TEST_UNIT_READY })).packet.srb.srbStatus, SrbStatus.Success);
    } finally {
      rig.device.close(again.open);
    }
  });

  test('a corrupt ring fails the channel through OpenChannel.fail, without throwing', async () => {
    const rig = makeRig();
    try {
      const g = rig.guest;
      await initialize(g);
      Atomics.store(g.incoming.header, RingWord.WriteIndex, 12345); // not a multiple of 8
      g.kick();
      await waitFor(() => g.failures.length === 1, 'the channel to fail');
      assert.equal(rig.device.counters(), null, 'the device stopped serving it');
    } finally {
      rig.cleanup();
    }
  });
});

describe('StorVSP hostile guest', () => {
  async function readyRig(): Promise<Rig> {
    const rig = makeRig({ maxTransferBytes: 0x10000 });
    await initialize(rig.guest);
    rig.device.addDisk(0, new NullBackend());
    await rig.guest.next('ENUMERATE_BUS');
    return rig;
  }

  async function expectInvalid(rig: Rig, payload: Uint8Array, header: Uint8Array | null, what: string): Promise<void> {
    const r = await request(rig.guest, payload, nextTid++, header);
    assert.equal(r.packet.srb.srbStatus, SrbStatus.InvalidRequest, what);
    assert.equal(r.packet.status, NtStatus.InvalidParameter, what);
    assert.equal(r.packet.srb.dataTransferLength, 0, what);
  }

  test('malformed EXECUTE_SRB packets get INVALID_REQUEST and the channel keeps working', async () => {
    const rig = await readyRig();
    try {
      const buf = guestBuffer(8192, 0);
      const hdr = (byteCount: number, byteOffset = 0, pfns = buf.pfns.slice(0, Math.ceil((byteOffset + byteCount) / 4096))) =>
        gpaHeader([{ byteCount, byteOffset, pfns }]);
      const rd = (over: Partial<SrbSpec> = {}) => srbPacket({ cdb: read10(0, 16), dataIn: 1, length: 8192, ...over });
      await expectInvalid(rig, rd(), gpaHeader([
        { byteCount: 4096, byteOffset: 0, pfns: [buf.pfns[0]!] },
        { byteCount: 4096, byteOffset: 0, pfns: [buf.pfns[1]!] },
      ]), 'two ranges');
      await expectInvalid(rig, rd(), hdr(4096), 'byte_count != data_transfer_length');
      await expectInvalid(rig, rd(), gpaHeader([{ byteCount: 8192, byteOffset: 0, pfns: [buf.pfns[0]!, RAM_PAGES + 5] }]), 'page outside RAM');
      await expectInvalid(rig, rd(), gpaHeader([{ byteCount: 8192, byteOffset: 0, pfns: [buf.pfns[0]!, 2 ** 40] }]), 'huge page number');
      await expectInvalid(rig, rd({ cdbLength: 0 }), hdr(8192), 'cdb_length 0');
      await expectInvalid(rig, rd({ cdbLength: 17 }), hdr(8192), 'cdb_length 17');
      await expectInvalid(rig, rd({ cdbLength: 255 }), hdr(8192), 'cdb_length 255');
      await expectInvalid(rig, rd({ srbLength: 36 }), hdr(8192), 'pre-Win8 srb length');
      await expectInvalid(rig, rd({ dataIn: 3 }), hdr(8192), 'data_in 3');
      await expectInvalid(rig, rd({ dataIn: 2 }), hdr(8192), 'data_in 2 with a buffer');
      await expectInvalid(rig, rd({ path: 8 }), hdr(8192), 'path 8');
      await expectInvalid(rig, rd({ target: 2 }), hdr(8192), 'target 2');
      await expectInvalid(rig, rd({ lun: 255 }), hdr(8192), 'lun 255');
      await expectInvalid(rig, rd({ length: 0x11000 }), gpaHeader([{ byteCount: 0x11000, byteOffset: 0, pfns: Array.from({ length: 17 }, (_, i) => 100 + i) }]), 'beyond max transfer');
      await expectInvalid(rig, rd({ length: 100 }), gpaHeader([{ byteCount: 100, byteOffset: 5000, pfns: [buf.pfns[0]!, buf.pfns[1]!] }]), 'byte_offset past the first page');
      await expectInvalid(rig, rd({ length: 0 }), gpaHeader([{ byteCount: 0, byteOffset: 0, pfns: [] }]), 'GPA-direct without data');
      await expectInvalid(rig, srbPacket({ cdb: TEST_UNIT_READY, length: 512 }), null, 'in-band with a data length');
      // Header cut short: range count says 1, no range follows.
      const cut = new Uint8Array(8);
      cut[4] = 1;
      await expectInvalid(rig, rd(), cut, 'range header truncated');
      // Truncated vstor_packet (a pre-Win8 48-byte SRB).
      await expectInvalid(rig, rd().subarray(0, 48), hdr(8192), 'truncated packet');

      // The channel still works.
      const ok = await srb(rig.guest, { cdb: read10(0, 16), dataIn: 1 }, buf);
      assert.equal(ok.packet.srb.srbStatus, SrbStatus.Success);
      assert.deepEqual(rig.guest.failures, []);
    } finally {
      rig.cleanup();
    }
  });

  test('unknown operations, tiny packets and control ops in GPA-direct packets get error completions', async () => {
    const rig = await readyRig();
    try {
      const g = rig.guest;
      assert.equal((await request(g, control(99), 5)).packet.status, NtStatus.InvalidDeviceRequest);
      assert.equal((await request(g, control(VstorOperation.CompleteIo), 6)).packet.status, NtStatus.InvalidDeviceRequest);
      assert.equal((await request(g, new Uint8Array([3, 0]), 7)).packet.status, NtStatus.InvalidParameter);
      const buf = guestBuffer(4096);
      assert.equal(
        (await request(g, control(VstorOperation.BeginInitialization), 8, gpaHeader([{ byteCount: 4096, byteOffset: 0, pfns: buf.pfns }]))).packet.status,
        NtStatus.InvalidParameter,
      );
      // Packet types storvsc never sends are dropped without a reply.
      g.send(PacketType.Completion, 9, control(VstorOperation.BeginInitialization));
      assert.deepEqual(await g.drainReplies(), []);
      assert.equal((await srb(g, { cdb: TEST_UNIT_READY })).packet.srb.srbStatus, SrbStatus.Success);
      assert.deepEqual(g.failures, []);
    } finally {
      rig.cleanup();
    }
  });

  test('property: random payloads (in-band or GPA-direct) never throw and get at most one completion each', async () => {
    const rig = await readyRig();
    try {
      const g = rig.guest;
      const ops = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0, 0xffffffff];
      await fc.assert(
        fc.asyncProperty(
          fc.constantFrom(...ops),
          fc.uint8Array({ minLength: 0, maxLength: 80 }),
          fc.option(fc.uint8Array({ minLength: 0, maxLength: 64 }).map((h) => h.subarray(0, h.length & ~7)), { nil: null }),
          fc.option(fc.record({ pfn: fc.nat(RAM_PAGES + 8), count: fc.integer({ min: 0, max: 0x20000 }), offset: fc.nat(5000) }), { nil: null }),
          async (op, body, rawHeader, range) => {
            const payload = body.slice();
            if (payload.length >= 4) new DataView(payload.buffer).setUint32(0, op >>> 0, true);
            let header: Uint8Array | null = rawHeader;
            if (range !== null) {
              // A plausible single range around random values.
              const pages = Math.ceil((range.offset + range.count) / 4096);
              if (pages <= 40) header = gpaHeader([{ byteCount: range.count, byteOffset: range.offset, pfns: Array.from({ length: pages }, (_, i) => range.pfn + i) }]);
            }
            const tid = nextTid++;
            g.send(header !== null ? PacketType.DataUsingGpaDirect : PacketType.DataInband, tid, payload, header);
            const replies = await g.drainReplies();
            assert.ok(replies.length <= 1, `${replies.length} replies`);
            for (const r of replies) {
              assert.equal(r.transactionId, BigInt(tid));
              assert.equal(r.type, PacketType.Completion);
              assert.equal(r.length, 64);
            }
          },
        ),
        { numRuns: 300 },
      );
      assert.deepEqual(g.failures, []);
      assert.equal((await srb(g, { cdb: TEST_UNIT_READY })).packet.srb.srbStatus, SrbStatus.Success);
    } finally {
      rig.cleanup();
    }
  });
});
