// The reference guest's storvsc driver against the real StorVSP (process partition:
// guest thread, VMBus server, rings in guest RAM), plus a scripted fake controller for
// what a well-behaved host never does (refused versions, short or wrong replies, lost
// completions), and property tests of the reply decoders.
import assert from 'node:assert/strict';
import { afterEach, describe, test } from 'node:test';
import fc from 'fast-check';
import { MemoryDisk } from '../src/backends/block/memory-disk.js';
import type { BlockBackend } from '../src/backends/block/block-backend.js';
import type { ScsiCommand, ScsiLogicalUnit } from '../src/devices/scsi/scsi-command.js';
import { ScsiDisk } from '../src/devices/scsi/scsi-disk.js';
import { StorvspDevice, type StorvspOptions } from '../src/devices/storvsp/storvsp-device.js';
import type { GuestReport } from '../src/guest/reference-guest.js';
import { ProcessVm } from '../src/vm/process-vm.js';
import type { DiskListEntry, DiskReadResult, DiskSense } from '../src/partition/process/guest-control.js';
import { FaultyDisk } from '../src/backends/block/faulty-disk.js';
import type { Poller } from '../src/sys/epoll.js';
import { PacketType } from '../src/vmbus/packet.js';
import { RingChannel } from '../src/vmbus/ring-channel.js';
import type { OpenChannel, VmbusDevice } from '../src/vmbus/server/vmbus-device.js';
import {
  encodeChannelProperties,
  encodeVstorHeader,
  NtStatus,
  STORVSC_SCSI_CLASS_ID,
  VstorField,
  VstorOperation,
} from '../src/devices/storvsp/storvsp-protocol.js';
import * as replies from '../src/guest/storvsc/scsi-replies.js';
import * as cdb from '../src/guest/storvsc/scsi-cdb.js';
import { waitForVmReport } from './support/process-vm.js';
import { GuestMemory } from '../src/memory/guest-memory.js';
import { PageAllocator } from '../src/guest/page-allocator.js';
import type { GuestChannel } from '../src/guest/guest-channel.js';
import { RequestEngine, type OpenRing } from '../src/guest/storvsc/storvsc-request-engine.js';
import type { StorvscControllerOptions } from '../src/guest/storvsc/storvsc-controller.js';
import type { ScsiTarget } from '../src/guest/storvsc/scsi-command.js';
import { BlockOp } from '../src/guest/storvsc/guest-block-device.js';

type DiskReport = Extract<GuestReport, { event: 'disk' }>;

interface StorageVm {
  vm: ProcessVm;
  device: StorvspDevice;
  reports: GuestReport[];
  logs: string[];
  /** CDBs the disks received, per LUN, as hex opcode lists. */
  cdbs: Map<number, number[][]>;
  waitFor(predicate: (r: GuestReport) => boolean, timeoutMs?: number): Promise<GuestReport>;
}

// Every VM holds blocking epoll waits on the libuv pool (host and guest pollers): stop
// each one when its test ends, or a few live VMs exhaust the pool and everything stalls.
const vms: ProcessVm[] = [];
afterEach(async () => {
  for (const vm of vms.splice(0)) await vm.stop().catch(() => {});
});

/** A logical unit that records every CDB and can hold commands back (a host that loses them). */
class RecordingUnit implements ScsiLogicalUnit {
  hold: ((cdb: Uint8Array) => boolean) | null = null;
  readonly held: ScsiCommand[] = [];
  constructor(private readonly inner: ScsiLogicalUnit, private readonly log: number[][]) {}
  execute(command: ScsiCommand): void {
    this.log.push([...command.cdb.subarray(0, command.cdbLength)]);
    if (this.hold?.(command.cdb)) {
      this.held.push(command);
      return;
    }
    this.inner.execute(command);
  }
  release(): void {
    for (const c of this.held.splice(0)) this.inner.execute(c);
  }
}

async function startVm(options: { cpus?: number; memoryBytes?: number; disks?: [number, BlockBackend][]; storvsp?: Partial<StorvspOptions> } = {}): Promise<StorageVm & { units: RecordingUnit[] }> {
  const reports: GuestReport[] = [];
  const logs: string[] = [];
  const cdbs = new Map<number, number[][]>();
  const units: RecordingUnit[] = [];
  let device: StorvspDevice | null = null;
  let nextLun = 0;
  const lunOrder: number[] = [];
  const vm = new ProcessVm({
    memoryBytes: options.memoryBytes ?? 64 << 20,
    cpus: options.cpus ?? 2,
    replyTimeoutMs: 5000,
    guestDrivers: ['storvsc'],
    log: (m) => logs.push(m),
    devices: (context) => {
      device = new StorvspDevice({
        poller: context.poller,
        offerSubchannel: (d, i) => context.server.addSubchannel(d, i),
        maxSubchannels: (options.cpus ?? 2) - 1,
        log: (m) => logs.push(m),
        createUnit: (backend, o) => {
          const lun = lunOrder[nextLun++] ?? -1;
          const log: number[][] = [];
          cdbs.set(lun, log);
          const unit = new RecordingUnit(new ScsiDisk(backend, o), log);
          units[lun] = unit;
          return unit;
        },
        ...options.storvsp,
      });
      return [device];
    },
  });
  vms.push(vm);
  vm.on('report', (r) => reports.push(r));
  for (const [lun, backend] of options.disks ?? []) {
    lunOrder.push(lun);
    device!.addDisk(lun, backend);
  }
  const waitFor = (predicate: (r: GuestReport) => boolean, timeoutMs = 5000) =>
    waitForVmReport(vm, reports, predicate, timeoutMs, () => `\nlogs: ${logs.slice(-8).join('\n')}`);
  const addLun = (lun: number, backend: BlockBackend) => {
    lunOrder[nextLun] = lun;
    device!.addDisk(lun, backend);
  };
  await vm.start();
  return Object.assign({ vm, device: device!, reports, logs, cdbs, units, waitFor }, { addLun });
}

function pattern(seed: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}


/** A MemoryDisk that says its writes are cached (so the guest sends SYNCHRONIZE CACHE). */
function writeBackDisk(sizeBytes: number): MemoryDisk {
  const inner = new MemoryDisk({ sizeBytes });
  return Object.assign(Object.create(inner) as MemoryDisk, { info: { ...inner.info, writeCache: true } });
}

type State = { version: number; maxTransferBytes: number; channels: number; channelVps: number[]; subChannelsRequested: number; stats: Record<string, number> }[];

/** Opcode, EVPD/page and allocation length of the scan commands, for comparing sequences. */
function describeCdb(c: number[]): string {
  switch (c[0]) {
    case 0x12: return c[1]! & 1 ? `VPD${c[2]!.toString(16)}/${(c[3]! << 8) | c[4]!}` : `INQ/${(c[3]! << 8) | c[4]!}`;
    case 0x1a: return `MS6-${c[2]!.toString(16)}/${c[4]}`;
    case 0x00: return 'TUR';
    case 0x9e: return `RC16/${c[13]}`;
    case 0x25: return 'RC10';
    default: return `op${c[0]!.toString(16)}`;
  }
}

describe('storvsc against StorVSP', () => {
  test('boot finds the disks with their sizes and reads back what it wrote', async () => {
    const t = await startVm({ disks: [[0, new MemoryDisk({ sizeBytes: 16 << 20 })], [1, new MemoryDisk({ sizeBytes: 8 << 20, logicalBlockBytes: 4096 })]] });
    const d0 = (await t.waitFor((r) => r.event === 'disk' && r.lun === 0)) as DiskReport;
    const d1 = (await t.waitFor((r) => r.event === 'disk' && r.lun === 1)) as DiskReport;
    assert.deepEqual([d0.name, d0.bytes, d0.blockBytes, d0.readOnly], ['lun0', 16 << 20, 512, false]);
    assert.deepEqual([d1.name, d1.bytes, d1.blockBytes], ['lun1', 8 << 20, 4096]);
    const list = (await t.vm.request({ op: 'disk-list' })) as DiskListEntry[];
    assert.deepEqual(list.map((d) => [d.lun, d.sizeBytes]).sort(), [[0, 16 << 20], [1, 8 << 20]]);
    for (const [lun, offset] of [[0, 4096 * 3 + 512], [1, 8192]] as const) {
      const data = pattern(lun + 7, 300 * 1024);
      assert.equal(await t.vm.request({ op: 'disk-write', lun, offset, data }), 0);
      const back = (await t.vm.request({ op: 'disk-read', lun, offset, length: data.length })) as DiskReadResult;
      assert.equal(back.result, 0);
      assert.ok(Buffer.from(back.data!).equals(Buffer.from(data)), `LUN ${lun} read back what was written`);
    }
    // Out of range and misaligned requests fail without reaching the host.
    const before = t.cdbs.get(0)!.length;
    assert.equal(((await t.vm.request({ op: 'disk-read', lun: 0, offset: (16 << 20) - 512, length: 1024 })) as DiskReadResult).result, -5);
    assert.equal(((await t.vm.request({ op: 'disk-read', lun: 0, offset: 100, length: 512 })) as DiskReadResult).result, -5);
    assert.equal(t.cdbs.get(0)!.length, before);
  });

  test('the scan sends what Linux sends, in its order, and the handshake picks 6.2 with sub-channels', async () => {
    const t = await startVm({ cpus: 3, disks: [[0, new MemoryDisk({ sizeBytes: 4 << 20 })]] });
    await t.waitFor((r) => r.event === 'disk' && r.lun === 0);
    const seq = t.cdbs.get(0)!.map(describeCdb);
    // INQUIRY 36 then full; VPD page 0 (header, whole), each listed page (header, whole); TUR; RC16; WP; caching page.
    assert.equal(seq[0], 'INQ/36');
    assert.ok(Number(/^INQ\/(\d+)$/.exec(seq[1]!)?.[1]) > 36, `second INQUIRY asks for the full length: ${seq[1]}`);
    assert.equal(seq[2], 'VPD0/4');
    assert.match(seq[3]!, /^VPD0\/\d+$/);
    const afterVpd = seq.indexOf('TUR');
    const pages = seq.slice(4, afterVpd);
    assert.ok(pages.length >= 2 && pages.length % 2 === 0, `listed pages read as header + whole: ${pages.join(' ')}`);
    for (let i = 0; i < pages.length; i += 2) {
      const [h, f] = [pages[i]!, pages[i + 1]!];
      assert.equal(h.split('/')[0], f.split('/')[0]);
      assert.match(h, /\/4$/);
    }
    assert.deepEqual(seq.slice(afterVpd, afterVpd + 4), ['TUR', 'RC16/32', 'MS6-3f/4', 'MS6-8/4']);
    const state = (await t.vm.request({ op: 'storvsc-state' })) as State;
    assert.equal(state[0]!.version, 0x0602);
    assert.equal(state[0]!.subChannelsRequested, 2);
    await until(async () => ((await t.vm.request({ op: 'storvsc-state' })) as State)[0]!.channels === 3);
    const now = ((await t.vm.request({ op: 'storvsc-state' })) as State)[0]!;
    assert.deepEqual([...now.channelVps].sort(), [0, 1, 2], 'each channel interrupts its own VP');
    const list = (await t.vm.request({ op: 'disk-list' })) as DiskListEntry[];
    assert.equal(list[0]!.channels, 3);
  });

  test('older hosts: the guest falls back to 6.0 and 5.1', async () => {
    for (const version of [0x0600, 0x0501]) {
      const t = await startVm({ storvsp: { maxProtocolVersion: version }, disks: [[0, new MemoryDisk({ sizeBytes: 1 << 20 })]] });
      await t.waitFor((r) => r.event === 'disk' && r.lun === 0);
      const state = (await t.vm.request({ op: 'storvsc-state' })) as State;
      assert.equal(state[0]!.version, version);
      await t.vm.stop();
    }
  });

  test('requests above max_transfer_bytes are split; I/O is spread over every channel', async () => {
    const t = await startVm({ cpus: 4, storvsp: { maxTransferBytes: 64 * 1024 }, disks: [[0, new MemoryDisk({ sizeBytes: 8 << 20 })]] });
    await t.waitFor((r) => r.event === 'disk' && r.lun === 0);
    await until(async () => ((await t.vm.request({ op: 'storvsc-state' })) as State)[0]!.channels === 4);
    const before = t.cdbs.get(0)!.length;
    const data = pattern(3, 200 * 1024);
    assert.equal(await t.vm.request({ op: 'disk-write', lun: 0, offset: 4096, data }), 0);
    // The chunks travel on different channels, so they may arrive in any order.
    const writes = t.cdbs.get(0)!.slice(before).map((c) => [c[0], (c[2]! << 24) | (c[3]! << 16) | (c[4]! << 8) | c[5]!, (c[7]! << 8) | c[8]!]);
    writes.sort((x, y) => x[1]! - y[1]!);
    assert.deepEqual(writes, [[0x2a, 8, 128], [0x2a, 136, 128], [0x2a, 264, 128], [0x2a, 392, 16]]);
    const back = (await t.vm.request({ op: 'disk-read', lun: 0, offset: 4096, length: data.length })) as DiskReadResult;
    assert.ok(Buffer.from(back.data!).equals(Buffer.from(data)));
    const bench = (await t.vm.request({ op: 'disk-bench', lun: 0, pattern: 'randread', blockBytes: 4096, queueDepth: 16, seconds: 0.3 })) as { ops: number; bytes: number; errors: number; seconds: number };
    assert.equal(bench.errors, 0);
    assert.ok(bench.ops > 100, `bench completed ${bench.ops} reads`);
    assert.equal(bench.bytes, bench.ops * 4096);
    const perChannel = t.device.channelCounters();
    assert.equal(perChannel.length, 4);
    for (const c of perChannel) assert.ok(c.requests > bench.ops / 8, `every channel carried requests: ${JSON.stringify(perChannel.map((x) => x.requests))}`);
  });

  test('a read-only disk: reported, writes fail with -EROFS and DATA PROTECT sense', async () => {
    const t = await startVm({ disks: [[0, new MemoryDisk({ sizeBytes: 1 << 20, readOnly: true })]] });
    const d = (await t.waitFor((r) => r.event === 'disk' && r.lun === 0)) as DiskReport;
    assert.equal(d.readOnly, true);
    assert.equal(d.discard, false);
    assert.equal(await t.vm.request({ op: 'disk-write', lun: 0, offset: 0, data: new Uint8Array(512) }), -30);
    const sense = (await t.vm.request({ op: 'disk-sense', lun: 0 })) as DiskSense;
    assert.equal(sense.key, 0x7);
    assert.equal(await t.vm.request({ op: 'disk-discard', lun: 0, offset: 0, length: 4096 }), -95);
  });

  test('backend errors map to -ENOSPC and -EIO with the sense kept', async () => {
    const faulty = new FaultyDisk(new MemoryDisk({ sizeBytes: 1 << 20 }));
    const t = await startVm({ disks: [[0, faulty]] });
    await t.waitFor((r) => r.event === 'disk' && r.lun === 0);
    faulty.setRules([{ op: 'write', errno: 28, times: 1 }, { op: 'read', errno: 5, times: 1 }]);
    assert.equal(await t.vm.request({ op: 'disk-write', lun: 0, offset: 0, data: new Uint8Array(4096) }), -28);
    assert.deepEqual(await t.vm.request({ op: 'disk-sense', lun: 0 }), { key: 7, asc: 0x27, ascq: 0x07 });
    assert.equal(((await t.vm.request({ op: 'disk-read', lun: 0, offset: 0, length: 4096 })) as DiskReadResult).result, -5);
    assert.equal(await t.vm.request({ op: 'disk-write', lun: 0, offset: 0, data: new Uint8Array(4096) }), 0);
  });

  test('flush sends SYNCHRONIZE CACHE only to a write-back disk; discard sends UNMAP and zeroes', async () => {
    const wb = writeBackDisk(1 << 20);
    const wt = new MemoryDisk({ sizeBytes: 1 << 20 });
    const t = await startVm({ disks: [[0, wb], [1, wt]] });
    const d0 = (await t.waitFor((r) => r.event === 'disk' && r.lun === 0)) as DiskReport;
    const d1 = (await t.waitFor((r) => r.event === 'disk' && r.lun === 1)) as DiskReport;
    assert.equal(d0.writeCache, true);
    assert.equal(d1.writeCache, false);
    assert.equal(await t.vm.request({ op: 'disk-flush', lun: 0 }), 0);
    assert.equal(await t.vm.request({ op: 'disk-flush', lun: 1 }), 0);
    assert.equal(t.cdbs.get(0)!.filter((c) => c[0] === 0x35).length, 1);
    assert.equal(t.cdbs.get(1)!.filter((c) => c[0] === 0x35).length, 0);
    // FUA write on a write-back disk with DPOFUA: the FUA bit is in the CDB.
    assert.equal(await t.vm.request({ op: 'disk-write', lun: 0, offset: 0, data: pattern(1, 4096), fua: true }), 0);
    const last = t.cdbs.get(0)!.at(-1)!;
    assert.equal(last[0], 0x2a);
    assert.equal(last[1]! & 0x08, d0.fua ? 0x08 : 0);
    // Discard.
    assert.equal(d1.discard, true);
    assert.equal(await t.vm.request({ op: 'disk-write', lun: 1, offset: 8192, data: pattern(2, 8192) }), 0);
    assert.equal(await t.vm.request({ op: 'disk-discard', lun: 1, offset: 8192, length: 8192 }), 0);
    assert.equal(t.cdbs.get(1)!.at(-1)![0], 0x42);
    const back = (await t.vm.request({ op: 'disk-read', lun: 1, offset: 8192, length: 8192 })) as DiskReadResult;
    assert.ok(back.data!.every((b) => b === 0));
  });

  test('power-off sends SYNCHRONIZE CACHE to write-back disks only, then reports them gone', async () => {
    const t = await startVm({ disks: [[0, writeBackDisk(1 << 20)], [1, new MemoryDisk({ sizeBytes: 1 << 20 })]] });
    await t.waitFor((r) => r.event === 'disk' && r.lun === 1);
    // The guest thread ends with the power-off, so the request itself gets no reply.
    await t.vm.request({ op: 'power-off', reason: 'test' }).catch(() => {});
    assert.equal((await t.vm.waitForExit()).code, 0);
    assert.deepEqual(t.cdbs.get(0)!.at(-1), [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert.equal(t.cdbs.get(1)!.filter((c) => c[0] === 0x35).length, 0);
    await t.waitFor((r) => r.event === 'power-off');
    assert.deepEqual(t.reports.filter((r) => r.event === 'disk-removed').map((r) => (r as { lun: number }).lun).sort(), [0, 1]);
  });

  test('hot add and hot remove while running', async () => {
    const t = await startVm({ disks: [[0, new MemoryDisk({ sizeBytes: 1 << 20 })], [1, new MemoryDisk({ sizeBytes: 2 << 20 })]] });
    await t.waitFor((r) => r.event === 'disk' && r.lun === 1);
    (t as unknown as { addLun: (lun: number, b: BlockBackend) => void }).addLun(5, new MemoryDisk({ sizeBytes: 3 << 20 }));
    const added = (await t.waitFor((r) => r.event === 'disk' && r.lun === 5)) as DiskReport;
    assert.equal(added.bytes, 3 << 20);
    await t.device.removeDisk(1);
    const removed = await t.waitFor((r) => r.event === 'disk-removed');
    assert.deepEqual(removed, { event: 'disk-removed', lun: 1, name: 'lun1' });
    const list = (await t.vm.request({ op: 'disk-list' })) as DiskListEntry[];
    assert.deepEqual(list.map((d) => d.lun).sort(), [0, 5]);
    await assert.rejects(t.vm.request({ op: 'disk-read', lun: 1, offset: 0, length: 512 }), /no disk at LUN 1/);
    assert.equal(await t.vm.request({ op: 'disk-write', lun: 5, offset: 0, data: pattern(5, 4096) }), 0);
    // Exactly one report per disk: a rescan does not announce known disks again.
    assert.equal(t.reports.filter((r) => r.event === 'disk' && r.lun === 0).length, 1);
  });

  test('a lost completion times out with -ETIMEDOUT, resets the bus, and a late answer is ignored', async () => {
    const t = await startVm({ disks: [[0, new MemoryDisk({ sizeBytes: 1 << 20 })]] });
    await t.waitFor((r) => r.event === 'disk' && r.lun === 0);
    await t.vm.request({ op: 'disk-timeout', ioTimeoutMs: 150 });
    const unit = t.units[0]!;
    unit.hold = (c) => c[0] === 0x28;
    const started = Date.now();
    const r = (await t.vm.request({ op: 'disk-read', lun: 0, offset: 0, length: 4096 })) as DiskReadResult;
    assert.equal(r.result, -110);
    assert.ok(Date.now() - started >= 140, 'not before the timeout');
    let state = ((await t.vm.request({ op: 'storvsc-state' })) as State)[0]!;
    assert.equal(state.stats.timeouts, 1);
    assert.equal(state.stats.resets, 1);
    unit.hold = null;
    unit.release();
    await until(async () => ((await t.vm.request({ op: 'storvsc-state' })) as State)[0]!.stats.completions >= state.stats.completions);
    const data = pattern(9, 4096);
    assert.equal(await t.vm.request({ op: 'disk-write', lun: 0, offset: 0, data }), 0);
    const back = (await t.vm.request({ op: 'disk-read', lun: 0, offset: 0, length: 4096 })) as DiskReadResult;
    assert.ok(Buffer.from(back.data!).equals(Buffer.from(data)));
    state = ((await t.vm.request({ op: 'storvsc-state' })) as State)[0]!;
    assert.equal(state.stats.timeouts, 1);
  });

  test('more requests than the ring holds wait for space and all complete', async () => {
    // One channel of 124 KiB: 240 writes of 256 KiB (65-page GPA lists, ~620 ring bytes each) overflow it.
    const disk = new MemoryDisk({ sizeBytes: 64 << 20 });
    const t = await startVm({ cpus: 1, memoryBytes: 160 << 20, disks: [[0, disk]] });
    await t.waitFor((r) => r.event === 'disk' && r.lun === 0);
    const r = (await t.vm.request({ op: 'disk-bench', lun: 0, pattern: 'write', blockBytes: 256 * 1024, queueDepth: 240, seconds: 0.3 })) as { ops: number; errors: number };
    assert.equal(r.errors, 0);
    assert.ok(r.ops >= 240, `${r.ops} writes`);
    const state = ((await t.vm.request({ op: 'storvsc-state' })) as State)[0]!;
    assert.equal(state.channels, 1);
    assert.equal(state.stats.timeouts, 0);
    const guestState = (await t.vm.request({ op: 'state' })) as { channels: { class: string; stats?: { backlogged: number } }[] };
    const scsi = guestState.channels.find((c) => c.class === STORVSC_SCSI_CLASS_ID)!;
    assert.ok(scsi.stats!.backlogged > 0, 'the ring did fill up');
  });

  test('disk-bench keeps the queue full and counts bytes', async () => {
    const t = await startVm({ disks: [[0, new MemoryDisk({ sizeBytes: 4 << 20 })]] });
    await t.waitFor((r) => r.event === 'disk' && r.lun === 0);
    for (const pattern of ['randwrite', 'read'] as const) {
      const r = (await t.vm.request({ op: 'disk-bench', lun: 0, pattern, blockBytes: 8192, queueDepth: 4, seconds: 0.2, span: 1 << 20 })) as { ops: number; bytes: number; errors: number; seconds: number };
      assert.equal(r.errors, 0);
      assert.ok(r.ops > 10);
      assert.equal(r.bytes, r.ops * 8192);
      assert.ok(r.seconds >= 0.2 && r.seconds < 5);
    }
    await assert.rejects(t.vm.request({ op: 'disk-bench', lun: 0, pattern: 'randread', blockBytes: 100, queueDepth: 4, seconds: 0.1 }), /multiple/);
  });

  test('disk-bench leaves its ramp out of the measurement, as fio ramp_time does', async () => {
    const t = await startVm({ disks: [[0, new MemoryDisk({ sizeBytes: 4 << 20 })]] });
    await t.waitFor((r) => r.event === 'disk' && r.lun === 0);
    const started = performance.now();
    const r = (await t.vm.request({ op: 'disk-bench', lun: 0, pattern: 'randread', blockBytes: 4096, queueDepth: 4, seconds: 0.2, rampSeconds: 0.4, span: 1 << 20 })) as { ops: number; bytes: number; errors: number; seconds: number };
    const wallSeconds = (performance.now() - started) / 1000;
    assert.equal(r.errors, 0);
    assert.ok(r.ops > 10);
    assert.ok(wallSeconds >= 0.6, `the ramp and the measured part both ran (${wallSeconds} s)`);
    assert.ok(r.seconds >= 0.2 && r.seconds <= wallSeconds - 0.4, `only the part after the ramp is measured (${r.seconds} of ${wallSeconds} s)`);
    await assert.rejects(t.vm.request({ op: 'disk-bench', lun: 0, pattern: 'randread', blockBytes: 4096, queueDepth: 4, seconds: 0.1, rampSeconds: -1 }), /rampSeconds/);
  });
});

async function until(condition: () => Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error('timed out waiting for a condition');
    await new Promise((r) => setTimeout(r, 10));
  }
}

// ---- a scripted controller: what a well-behaved StorVSP never does ----

interface Received {
  subChannel: number;
  type: number;
  transactionId: bigint;
  operation: number;
  packet: Uint8Array;
}

/** A SCSI controller offer whose answers a test scripts packet by packet. */
class ScriptedController implements VmbusDevice {
  readonly name = 'scsi';
  readonly classId = STORVSC_SCSI_CLASS_ID;
  readonly instanceId = '5e1f7a2c-3b9d-4c6e-8a41-0000000000ff';
  readonly received: Received[] = [];
  readonly opens: OpenChannel[] = [];
  private ring: RingChannel | null = null;
  private token = 0;

  constructor(private readonly poller: Poller, private readonly script: (r: Received, host: ScriptedController) => void) {}

  open(channel: OpenChannel): number {
    this.opens.push(channel);
    const ring = new RingChannel({
      incoming: channel.incoming,
      outgoing: channel.outgoing,
      notifyPeer: () => channel.signalGuest(),
      onPacket: (packet, payload) => {
        const vstor = payload.slice(packet.type === PacketType.DataUsingGpaDirect ? 0 : 0, payload.length);
        const r: Received = { subChannel: channel.subChannelIndex, type: packet.type, transactionId: packet.transactionId, operation: vstor.length >= 4 ? new DataView(vstor.buffer).getUint32(0, true) : -1, packet: vstor };
        this.received.push(r);
        this.script(r, this);
      },
      onCorrupt: (e) => channel.fail(e.message),
    });
    this.ring = ring;
    this.token = this.poller.add(channel.guestSignal.fd, () => {
      channel.guestSignal.drain();
      ring.onSignal();
    });
    return 0;
  }

  close(): void {
    this.poller.remove(this.token);
    this.ring?.shutdown();
    this.ring = null;
  }

  /** A completion (or any packet) with a vstor_packet of `length` bytes. */
  reply(transactionId: bigint, options: { operation?: number; status?: number; length?: number; type?: number; fill?: (p: Uint8Array) => void } = {}): void {
    const p = new Uint8Array(64);
    encodeVstorHeader(p, 0, options.operation ?? VstorOperation.CompleteIo, 0, options.status ?? 0);
    options.fill?.(p);
    this.ring!.send(p.subarray(0, options.length ?? 64), transactionId, options.type ?? PacketType.Completion, 0);
  }
}

const INIT_ID = 0xfffffffffffffffdn;

/** Answers like a minimal host: init steps succeed (versions per `accept`), every SRB finds nothing. */
function minimalHost(accept: (version: number) => boolean, props = { maxChannels: 0, flags: 0, maxTransfer: 0x40000 }) {
  return (r: Received, host: ScriptedController) => {
    if (r.transactionId === INIT_ID) {
      if (r.operation === VstorOperation.QueryProtocolVersion) {
        const version = r.packet[12]! | (r.packet[13]! << 8);
        host.reply(r.transactionId, { status: accept(version) ? 0 : NtStatus.RevisionMismatch });
      } else if (r.operation === VstorOperation.QueryProperties) {
        host.reply(r.transactionId, { fill: (p) => encodeChannelProperties(p, 0, props.maxChannels, props.flags, props.maxTransfer) });
      } else {
        host.reply(r.transactionId);
      }
      return;
    }
    // An SRB: success with no data (an empty INQUIRY: nothing at this address).
    if (r.operation === VstorOperation.ExecuteSrb) host.reply(r.transactionId, { fill: (p) => (p[VstorField.SrbStatus] = 0x01) });
  };
}

async function startScripted(script: (r: Received, host: ScriptedController) => void, cpus = 2) {
  let host: ScriptedController | null = null;
  const reports: GuestReport[] = [];
  const vm = new ProcessVm({
    memoryBytes: 64 << 20,
    cpus,
    replyTimeoutMs: 5000,
    guestDrivers: ['storvsc'],
    devices: (context) => {
      host = new ScriptedController(context.poller, script);
      return [host];
    },
  });
  vms.push(vm);
  vm.on('report', (r) => reports.push(r));
  await vm.start();
  return { vm, host: host!, reports };
}

const logs = (reports: GuestReport[]) => reports.filter((r): r is Extract<GuestReport, { event: 'log' }> => r.event === 'log').map((r) => r.message);

describe('storvsc against a scripted host', () => {
  test('handshake in Linux order with the init request id, then CREATE_SUB_CHANNELS min(VPs - 1, max)', async () => {
    const { vm, host } = await startScripted(minimalHost((v) => v === 0x0602, { maxChannels: 2, flags: 1, maxTransfer: 0x40000 }), 4);
    const init = host.received.filter((r) => r.transactionId === INIT_ID);
    assert.deepEqual(init.map((r) => r.operation), [7, 9, 10, 8, 13]);
    for (const r of init) {
      assert.equal(r.type, PacketType.DataInband);
      assert.equal(r.packet.length, 64);
      assert.equal(r.packet[4], 1, 'REQUEST_COMPLETION_FLAG');
    }
    assert.equal(init[4]!.packet[12]! | (init[4]!.packet[13]! << 8), 2);
    // Linux's ring (128 KiB each way, one header page) and 120 zero bytes of user data.
    const open = host.opens[0]!;
    assert.equal(open.incoming.dataSize, 128 * 1024 - 4096);
    assert.equal(open.outgoing.dataSize, 128 * 1024 - 4096);
    assert.deepEqual([...open.userData], new Array(120).fill(0));
    const state = ((await vm.request({ op: 'storvsc-state' })) as State)[0]!;
    assert.deepEqual([state.version, state.maxTransferBytes, state.subChannelsRequested], [0x0602, 0x40000, 2]);
  });

  test('the scan INQUIRes LUN 0 of paths 0..7 x targets 0..1 with the SRB fields Linux sets', async () => {
    const { host } = await startScripted(minimalHost(() => true));
    const srbs = host.received.filter((r) => r.operation === VstorOperation.ExecuteSrb);
    assert.equal(srbs.length, 16);
    assert.deepEqual(srbs.map((r) => [r.packet[VstorField.PathId], r.packet[VstorField.TargetId], r.packet[VstorField.Lun]]), Array.from({ length: 16 }, (_, i) => [i >> 1, i & 1, 0]));
    const ids = new Set<bigint>();
    for (const r of srbs) {
      const p = r.packet;
      assert.equal(r.type, PacketType.DataUsingGpaDirect);
      ids.add(r.transactionId);
      assert.ok(r.transactionId >= 1n && r.transactionId <= 256n, 'request id = tag + 1');
      assert.equal(p[VstorField.Flags], 1);
      assert.equal(p[VstorField.SrbLength], 52);
      assert.equal(p[VstorField.SenseInfoLength], 20);
      assert.equal(p[VstorField.DataIn], 1);
      assert.equal(p[VstorField.CdbLength], 6);
      assert.deepEqual([...p.subarray(28, 34)], [0x12, 0, 0, 0, 36, 0]);
      assert.equal(new DataView(p.buffer).getUint32(VstorField.DataTransferLength, true), 36);
      assert.equal(new DataView(p.buffer).getUint32(VstorField.SrbFlags, true), 0x48, 'untagged during the scan: disable sync transfer + data in');
      assert.equal(new DataView(p.buffer).getUint32(VstorField.TimeOutValue, true), 60);
    }
  });

  test('a refused version makes the guest try 6.2, 6.0, 5.1 in order, then give up', async () => {
    const { host, reports } = await startScripted(minimalHost(() => false));
    const versions = host.received.filter((r) => r.operation === VstorOperation.QueryProtocolVersion).map((r) => r.packet[12]! | (r.packet[13]! << 8));
    assert.deepEqual(versions, [0x0602, 0x0600, 0x0501]);
    assert.ok(!host.received.some((r) => r.operation === VstorOperation.EndInitialization));
    assert.ok(logs(reports).some((m) => /Obsolete Hyper-V version/.test(m)), logs(reports).join('\n'));
  });

  test('the first accepted version is used: 6.0 when 6.2 is refused', async () => {
    const { vm } = await startScripted(minimalHost((v) => v <= 0x0600));
    const state = ((await vm.request({ op: 'storvsc-state' })) as State)[0]!;
    assert.equal(state.version, 0x0600);
  });

  test('a reply shorter than a vstor_packet is dropped; a wrong operation fails the step', async () => {
    let shortSent = false;
    const base = minimalHost(() => true);
    const { vm } = await startScripted((r, host) => {
      if (r.operation === VstorOperation.BeginInitialization && !shortSent) {
        shortSent = true;
        host.reply(r.transactionId, { length: 40 }); // dropped by the guest
      }
      base(r, host);
    });
    const state = ((await vm.request({ op: 'storvsc-state' })) as State)[0]!;
    assert.equal(state.version, 0x0602, 'the handshake went on with the proper reply');
    assert.equal(state.stats.dropped, 1);
    await vm.stop();

    const bad = await startScripted((r, host) => {
      if (r.operation === VstorOperation.QueryProperties) host.reply(r.transactionId, { operation: VstorOperation.ExecuteSrb });
      else base(r, host);
    });
    assert.ok(logs(bad.reports).some((m) => /not COMPLETE_IO/.test(m)), logs(bad.reports).join('\n'));
    assert.ok(!bad.host.received.some((r) => r.operation === VstorOperation.EndInitialization));
  });

  test('ENUMERATE_BUS with request id 0 rescans; COMPLETE_IO with id 0 and unknown ids are ignored', async () => {
    const { vm, host } = await startScripted(minimalHost(() => true));
    const srbs = () => host.received.filter((r) => r.operation === VstorOperation.ExecuteSrb).length;
    assert.equal(srbs(), 16);
    host.reply(0n, { operation: VstorOperation.CompleteIo, type: PacketType.DataInband });
    host.reply(12345n, { operation: VstorOperation.CompleteIo });
    await until(async () => ((await vm.request({ op: 'storvsc-state' })) as State)[0]!.stats.dropped >= 1);
    assert.equal(srbs(), 16);
    // Only the operation field is needed (4 bytes).
    host.reply(0n, { operation: VstorOperation.EnumerateBus, type: PacketType.DataInband, length: 4 });
    await until(async () => srbs() === 32);
    host.reply(0n, { operation: VstorOperation.RemoveDevice, type: PacketType.DataInband });
    await until(async () => srbs() === 48);
  });
});

// ---- decoders and CDB builders ----

describe('SCSI reply decoders (hostile host)', () => {
  const anyReply = fc.tuple(fc.uint8Array({ maxLength: 300 }), fc.integer({ min: -10, max: 400 }));

  test('never throw and stay within what arrived', () => {
    fc.assert(
      fc.property(anyReply, fc.integer({ min: 0, max: 255 }), ([b, n], page) => {
        const inq = replies.parseInquiry(b, n);
        if (inq) assert.ok(inq.fullLength >= 5 && inq.fullLength <= 260 && inq.vendor.length <= 8 && inq.product.length <= 16);
        const len = replies.vpdPageLength(b, n, page);
        assert.ok(len === -1 || (len >= 4 && len <= 0xffff + 4));
        assert.ok(replies.parseSupportedVpdPages(b, n).length <= Math.max(0, Math.min(n, b.length) - 4));
        replies.parseBlockLimits(b, n);
        replies.parseProvisioning(b, n);
        replies.parseRotationRate(b, n);
        const luns = replies.parseReportLuns(b, n);
        if (luns) {
          assert.equal(new Set(luns.luns).size, luns.luns.length);
          for (const l of luns.luns) assert.ok(l >= 0 && l <= 255);
        }
        const c16 = replies.parseReadCapacity16(b, n);
        if (c16) assert.ok(Number.isSafeInteger(c16.lastLba) && c16.lastLba >= 0);
        replies.parseReadCapacity10(b, n);
        replies.parseModeSense6Header(b, n);
        const at = replies.findModePage(b, n, page & 0x3f, 3);
        assert.ok(at === -1 || at + 3 <= Math.min(n, b.length));
        const s = { key: 0, asc: 0, ascq: 0 };
        if (replies.parseSense(b, n, s)) assert.ok(s.key <= 15);
      }),
      { numRuns: 3000 },
    );
  });

  test('READ CAPACITY(16) and REPORT LUNS decode what a disk encodes', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 48 }), fc.constantFrom(512, 4096), fc.boolean(), (lastLba, blockBytes, lbpme) => {
        const b = new Uint8Array(32);
        const v = new DataView(b.buffer);
        v.setBigUint64(0, BigInt(lastLba));
        v.setUint32(8, blockBytes);
        b[14] = lbpme ? 0x80 : 0;
        assert.deepEqual(replies.parseReadCapacity16(b, 32), { lastLba, blockBytes, lbpme, lbprz: false });
      }),
    );
    fc.assert(
      fc.property(fc.uniqueArray(fc.integer({ min: 0, max: 300 }), { maxLength: 40 }), (luns) => {
        const b = new Uint8Array(8 + 8 * luns.length);
        new DataView(b.buffer).setUint32(0, 8 * luns.length);
        luns.forEach((l, i) => {
          b[8 + 8 * i] = l >> 8;
          b[9 + 8 * i] = l & 0xff;
        });
        assert.deepEqual(replies.parseReportLuns(b, b.length)!.luns, luns.filter((l) => l <= 255));
      }),
    );
  });

  test('sense maps to errno as the block layer reports it', () => {
    const fixed = (key: number, asc: number, ascq: number) => {
      const b = new Uint8Array(18);
      b[0] = 0x70;
      b[2] = key;
      b[12] = asc;
      b[13] = ascq;
      const s = { key: 0, asc: 0, ascq: 0 };
      assert.ok(replies.parseSense(b, 18, s));
      return replies.senseToErrno(s);
    };
    assert.equal(fixed(7, 0x27, 0x00), -30);
    assert.equal(fixed(7, 0x27, 0x07), -28);
    assert.equal(fixed(3, 0x11, 0x00), -5);
    const desc = new Uint8Array([0x72, 0x07, 0x27, 0x07]);
    const s = { key: 0, asc: 0, ascq: 0 };
    assert.ok(replies.parseSense(desc, 4, s));
    assert.deepEqual(s, { key: 7, asc: 0x27, ascq: 0x07 });
  });

  test('READ/WRITE CDBs carry LBA, count and FUA; the 16-byte form above 2^32 blocks', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 40 }), fc.integer({ min: 1, max: 0xffff }), fc.boolean(), fc.boolean(), (lba, blocks, write, fua) => {
        const c = new Uint8Array(16);
        const use16 = lba + blocks > 0xffffffff;
        const n = cdb.readWrite(c, write, lba, blocks, fua, use16);
        const v = new DataView(c.buffer);
        assert.equal(c[1]! & 0x08, fua ? 0x08 : 0);
        if (use16) {
          assert.deepEqual([n, c[0], Number(v.getBigUint64(2)), v.getUint32(10)], [16, write ? 0x8a : 0x88, lba, blocks]);
        } else {
          assert.deepEqual([n, c[0], v.getUint32(2), v.getUint16(7)], [10, write ? 0x2a : 0x28, lba, blocks]);
        }
      }),
    );
    const p = new Uint8Array(24);
    cdb.unmapParameters(p, 0, 0x1_0000_0001, 77);
    assert.deepEqual([...p.subarray(0, 4)], [0, 22, 0, 16]);
    assert.equal(Number(new DataView(p.buffer).getBigUint64(8)), 0x1_0000_0001);
    assert.equal(new DataView(p.buffer).getUint32(16), 77);
  });
});

describe('request engine publishing', () => {
  test('a burst of commands is published in fours, the rest when the turn ends', async () => {
    const memory = GuestMemory.create(1 << 20, 'engine-publish');
    try {
      const events: string[] = [];
      const ring = {
        send: () => (events.push('send'), true),
        beginBatch: () => events.push('begin'),
        endBatch: () => events.push('publish'),
        reader: { maskInterrupts() {}, available: () => 0 },
        onSignal() {},
      };
      const channel = { ring } as unknown as GuestChannel;
      const rings: OpenRing[] = [{ channel, batched: false, staged: 0 }];
      const options = {
        primary: channel, memory, allocator: new PageAllocator(16, 240), vpCount: 1, portNumber: 0, pollMicros: 0,
        log: () => {}, onBusChange: () => {}, onInvalidLun: () => {}, onCapacityChanged: () => {},
      } satisfies StorvscControllerOptions;
      const engine = new RequestEngine(options, rings, 30_000, 0);
      const target: ScsiTarget = {
        channel: 0, target: 0, lun: 0, tagged: true, present: true, sizeBytes: 1 << 20, blockBytes: 512, discard: false,
        maxChunkBytes: 1 << 18, maxUnmapBlocks: 0, writeCache: false, fua: false, use16: false, lastSense: { key: 0, asc: 0, ascq: 0 },
      };
      for (let i = 0; i < 10; i++) engine.submitBlock(target, { op: BlockOp.Read, offset: i * 4096, length: 4096, gpa: 0x20000 + i * 4096, fua: false, done: () => {} });
      const sends = () => events.filter((e) => e === 'send').length;
      const publishes = () => events.filter((e) => e === 'publish').length;
      assert.equal(sends(), 10);
      assert.equal(publishes(), 2, 'after the 4th and the 8th');
      assert.deepEqual(events.slice(0, 6), ['begin', 'send', 'send', 'send', 'send', 'publish']);
      await new Promise((resolve) => setImmediate(resolve));
      assert.equal(publishes(), 3, 'the last two at the end of the turn');
      engine.stop();
    } finally {
      memory.close();
    }
  });
});
