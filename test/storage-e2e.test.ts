// Storage end to end: the reference guest's storvsc against StorVSP over VMBus in a
// process partition, with real images and real tools (mkfs.ext4, e2fsck, fio, qemu-img)
// on the guest's disks surfaced as FUSE files.
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { createTestVm, type TestVm } from './support/process-vm.js';
import { detachMount, pattern, runTool, scratchDir, sha256File, sparseImage, waitForFile } from './support/storage.js';
import type { GuestReport } from '../src/guest/reference-guest.js';
import { MemoryDisk } from '../src/backends/block/memory-disk.js';
import { FaultyDisk } from '../src/backends/block/faulty-disk.js';
import { createVhdx } from '../src/backends/block/vhdx/vhdx-create.js';

const EIO = 5;
const EROFS = 30;
const MiB = 1 << 20;

type DiskReport = Extract<GuestReport, { event: 'disk' }>;

async function bootWithDisks(vmOptions: Parameters<typeof createTestVm>[0], attach: (t: TestVm) => Promise<void>, expectDisks: number): Promise<TestVm> {
  const t = createTestVm({ withStorage: true, memoryBytes: 128 * MiB, replyTimeoutMs: 20_000, ...vmOptions });
  await attach(t);
  await t.vm.start();
  for (let lun = 0; lun < expectDisks; lun++) await t.waitForReport((r) => r.event === 'disk' && r.lun === lun, 20_000);
  return t;
}

function diskReport(t: TestVm, lun: number): DiskReport {
  return t.reports.find((r): r is DiskReport => r.event === 'disk' && r.lun === lun)!;
}

async function guestWrite(t: TestVm, lun: number, offset: number, data: Uint8Array, fua = false): Promise<number> {
  return (await t.vm.request({ op: 'disk-write', lun, offset, data, fua })) as number;
}

async function guestRead(t: TestVm, lun: number, offset: number, length: number): Promise<{ result: number; data?: Uint8Array }> {
  return (await t.vm.request({ op: 'disk-read', lun, offset, length })) as { result: number; data?: Uint8Array };
}

describe('storage through VMBus with real tools', { concurrency: false, timeout: 600_000 }, () => {
  const dirs: string[] = [];
  const mounts: string[] = [];
  after(async () => {
    for (const m of mounts) await detachMount(m);
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  });
  const scratch = (name: string) => {
    const d = scratchDir(name);
    dirs.push(d);
    return d;
  };

  it('mkfs.ext4, e2fsck and fio verify on the FUSE file of a raw disk; the image then holds the same bytes', async () => {
    const dir = scratch('fs');
    const mnt = path.join(dir, 'disks');
    fs.mkdirSync(mnt);
    mounts.push(mnt);
    const image = sparseImage(dir, 'disk.raw', 256 * MiB);
    const t = await bootWithDisks({ guestExposeDisks: mnt }, async (t) => void (await t.storage.attach({ path: image, readOnly: false })), 1);
    try {
      const file = path.join(mnt, 'lun0');
      await waitForFile(file);
      assert.equal(fs.statSync(file).size, 256 * MiB);
      const mkfs = await runTool('mkfs.ext4', ['-F', '-q', file]);
      assert.equal(mkfs.code, 0, mkfs.stderr);
      const fsck = await runTool('e2fsck', ['-f', '-n', file]);
      assert.equal(fsck.code, 0, fsck.stdout + fsck.stderr);
      // fio on a region past what mkfs wrote matters little: verify covers its own writes.
      const fio = await runTool('fio', [
        '--name=verify', `--filename=${file}`, '--rw=randrw', '--bs=4k', '--iodepth=32', '--ioengine=libaio', '--direct=1',
        '--numjobs=3', '--size=24M', '--offset=128M', '--offset_increment=32M', '--verify=crc32c', '--verify_fatal=1',
        '--do_verify=1', '--verify_state_save=0', '--group_reporting', '--output-format=json',
      ], 300_000);
      assert.equal(fio.code, 0, fio.stderr.slice(0, 2000));
      const job = (JSON.parse(fio.stdout.slice(fio.stdout.indexOf('{'))) as { jobs: { error: number; read: { io_bytes: number }; write: { io_bytes: number } }[] }).jobs[0]!;
      assert.equal(job.error, 0);
      assert.ok(job.write.io_bytes > 0 && job.read.io_bytes > 0);
      const throughGuest = await sha256File(file);
      await t.vm.request({ op: 'disk-flush', lun: 0 });
      await t.vm.stop();
      await t.storage.close();
      assert.equal(await sha256File(image), throughGuest, 'the backing image differs from what the guest read');
    } finally {
      await t.vm.stop();
      await t.storage.close().catch(() => {});
    }
  });

  it('reads and writes VHDX images made by qemu-img (fixed and dynamic); qemu-img check and compare agree', async () => {
    const dir = scratch('vhdx');
    for (const subformat of ['fixed', 'dynamic']) {
      const vhdx = path.join(dir, `${subformat}.vhdx`);
      const raw = path.join(dir, `${subformat}.raw`);
      const created = await runTool('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', `subformat=${subformat}`, vhdx, '64M']);
      assert.equal(created.code, 0, created.stderr);
      assert.equal((await runTool('qemu-img', ['convert', '-O', 'raw', vhdx, raw])).code, 0);
      const t = await bootWithDisks({}, async (t) => void (await t.storage.attach({ path: vhdx, readOnly: false })), 1);
      try {
        assert.equal(diskReport(t, 0).bytes, 64 * MiB);
        const rawFd = fs.openSync(raw, 'r+');
        try {
          for (let i = 0; i < 24; i++) {
            const offset = ((i * 7919) % 60) * MiB + (i % 4) * 4096 * 3;
            const data = pattern(i + 1, 4096 * (1 + (i % 16)));
            assert.equal(await guestWrite(t, 0, offset, data), 0);
            fs.writeSync(rawFd, data, 0, data.length, offset);
            const back = await guestRead(t, 0, offset, data.length);
            assert.equal(back.result, 0);
            assert.deepEqual(Buffer.from(back.data!), Buffer.from(data));
          }
        } finally {
          fs.closeSync(rawFd);
        }
        assert.equal(await t.vm.request({ op: 'disk-flush', lun: 0 }), 0);
      } finally {
        await t.vm.stop();
        await t.storage.close();
      }
      const check = await runTool('qemu-img', ['check', '-f', 'vhdx', vhdx]);
      assert.equal(check.code, 0, `${subformat}: ${check.stdout}${check.stderr}`);
      const compare = await runTool('qemu-img', ['compare', '-f', 'vhdx', '-F', 'raw', vhdx, raw]);
      assert.equal(compare.code, 0, `${subformat}: ${compare.stdout}${compare.stderr}`);
      assert.match(compare.stdout, /identical/);
    }
  });

  it('an image enlighten creates passes qemu-img check and holds what the guest wrote', async () => {
    const dir = scratch('vhdx-new');
    for (const type of ['fixed', 'dynamic'] as const) {
      const vhdx = path.join(dir, `${type}.vhdx`);
      await createVhdx(vhdx, { sizeBytes: 32 * MiB, type });
      const t = await bootWithDisks({}, async (t) => void (await t.storage.attach({ path: vhdx, readOnly: false })), 1);
      const data = pattern(99, 64 * 1024);
      try {
        assert.equal(await guestWrite(t, 0, 5 * MiB, data), 0);
        assert.equal(await t.vm.request({ op: 'disk-flush', lun: 0 }), 0);
      } finally {
        await t.vm.stop();
        await t.storage.close();
      }
      const check = await runTool('qemu-img', ['check', '-f', 'vhdx', vhdx]);
      assert.equal(check.code, 0, `${type}: ${check.stdout}${check.stderr}`);
      const info = JSON.parse((await runTool('qemu-img', ['info', '--output=json', vhdx])).stdout) as { 'virtual-size': number };
      assert.equal(info['virtual-size'], 32 * MiB);
      const raw = path.join(dir, `${type}.raw`);
      assert.equal((await runTool('qemu-img', ['convert', '-O', 'raw', vhdx, raw])).code, 0);
      const back = Buffer.alloc(data.length);
      const fd = fs.openSync(raw, 'r');
      fs.readSync(fd, back, 0, back.length, 5 * MiB);
      fs.closeSync(fd);
      assert.deepEqual(back, Buffer.from(data));
    }
  });

  it('a read-only disk fails writes in the guest and the image stays unchanged', async () => {
    const dir = scratch('ro');
    const image = sparseImage(dir, 'ro.raw', 16 * MiB);
    fs.writeFileSync(image, pattern(7, 16 * MiB));
    const before = await sha256File(image);
    const t = await bootWithDisks({}, async (t) => void (await t.storage.attach({ path: image, readOnly: true })), 1);
    try {
      assert.equal(diskReport(t, 0).readOnly, true);
      assert.equal(await guestWrite(t, 0, 0, new Uint8Array(4096)), -EROFS);
      const read = await guestRead(t, 0, 4096, 4096);
      assert.equal(read.result, 0);
      assert.deepEqual(Buffer.from(read.data!), Buffer.from(pattern(7, 16 * MiB).subarray(4096, 8192)));
    } finally {
      await t.vm.stop();
      await t.storage.close();
    }
    assert.equal(await sha256File(image), before);
  });

  it('discard punches holes: the allocated size of a raw image drops', async () => {
    const dir = scratch('discard');
    const image = sparseImage(dir, 'thin.raw', 64 * MiB);
    const t = await bootWithDisks({}, async (t) => void (await t.storage.attach({ path: image, readOnly: false })), 1);
    try {
      assert.equal(diskReport(t, 0).discard, true);
      for (let i = 0; i < 16; i++) assert.equal(await guestWrite(t, 0, 8 * MiB + i * MiB, pattern(i, MiB)), 0);
      assert.equal(await t.vm.request({ op: 'disk-flush', lun: 0 }), 0);
      const full = fs.statSync(image).blocks * 512;
      assert.ok(full >= 16 * MiB, `image holds ${full} bytes after writing 16 MiB`);
      assert.equal(await t.vm.request({ op: 'disk-discard', lun: 0, offset: 8 * MiB, length: 16 * MiB }), 0);
      const thin = fs.statSync(image).blocks * 512;
      assert.ok(thin <= full - 15 * MiB, `allocated ${full} -> ${thin} bytes`);
      const read = await guestRead(t, 0, 9 * MiB, 4096);
      assert.deepEqual(Buffer.from(read.data!), Buffer.alloc(4096));
    } finally {
      await t.vm.stop();
      await t.storage.close();
    }
  });

  it('hot-add and hot-remove while running are seen by the guest', async () => {
    const t = await bootWithDisks({}, async (t) => void (await t.storage.attach({ path: 'memory:8M', readOnly: false })), 1);
    try {
      const added = await t.storage.attach({ path: 'memory:16M', readOnly: false });
      assert.equal(added.lun, 1);
      const report = (await t.waitForReport((r) => r.event === 'disk' && r.lun === 1, 20_000)) as DiskReport;
      assert.equal(report.bytes, 16 * MiB);
      assert.equal(await guestWrite(t, 1, 0, pattern(3, 8192)), 0);
      await t.storage.detach(1);
      await t.waitForReport((r) => r.event === 'disk-removed' && r.lun === 1, 20_000);
      const list = (await t.vm.request({ op: 'disk-list' })) as { lun: number }[];
      assert.deepEqual(list.map((d) => d.lun), [0]);
      assert.equal(await guestWrite(t, 0, 0, pattern(4, 4096)), 0, 'the remaining disk keeps working');
    } finally {
      await t.vm.stop();
      await t.storage.close();
    }
  });

  it('fault injection: the guest sees SCSI errors on the failing LUN while the other LUN keeps serving', async () => {
    let faulty: FaultyDisk | null = null;
    const t = await bootWithDisks({}, async (t) => {
      faulty = new FaultyDisk(new MemoryDisk({ sizeBytes: 8 * MiB }), [{ op: 'read', offset: [MiB, 2 * MiB], errno: EIO }]);
      t.storage.attachBackend(faulty, 'faulty');
      await t.storage.attach({ path: 'memory:8M', readOnly: false });
    }, 2);
    try {
      assert.equal((await guestRead(t, 0, 0, 4096)).result, 0);
      assert.equal((await guestRead(t, 0, MiB + 4096, 4096)).result, -EIO);
      const sense = (await t.vm.request({ op: 'disk-sense', lun: 0 })) as { key: number; asc: number };
      assert.equal(sense.key, 0x03, 'MEDIUM ERROR');
      assert.equal(sense.asc, 0x11, 'UNRECOVERED READ ERROR');
      assert.equal(await guestWrite(t, 1, MiB, pattern(5, 4096)), 0);
      assert.deepEqual(Buffer.from((await guestRead(t, 1, MiB, 4096)).data!), Buffer.from(pattern(5, 4096)));
      assert.equal((await guestRead(t, 0, 3 * MiB, 4096)).result, 0, 'the faulty LUN still serves other blocks');
    } finally {
      await t.vm.stop();
      await t.storage.close();
    }
    assert.ok(faulty);
  });
});

describe('storage across a VMBus unload', { timeout: 120_000 }, () => {
  it('after unload and reconnect the guest gets fresh sub-channels and the disk still works', async () => {
    const t = await bootWithDisks({ cpus: 2 }, async (t) => void (await t.storage.attach({ path: 'memory:8M', readOnly: false })), 1);
    try {
      const channels = async () => ((await t.vm.request({ op: 'storvsc-state' })) as { channels: number }[])[0]?.channels;
      assert.equal(await channels(), 2, 'primary and one sub-channel before the unload');
      for (const closeChannels of [true, false]) {
        await t.vm.request({ op: 'unload', closeChannels });
        assert.equal(t.vm.server.resources().openChannels, 0);
        // Like Hyper-V, the host drops sub-channels with the session: a kexec'd Linux would
        // never open stale offers, it asks with CREATE_SUB_CHANNELS and waits for new ones.
        assert.deepEqual(t.vm.server.channelInfo().filter((c) => c.name === 'scsi').map((c) => c.subChannelIndex), [0]);
        assert.equal(await t.vm.request({ op: 'boot' }), '5.3');
        const deadline = Date.now() + 10_000;
        while ((await channels()) !== 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
        assert.equal(await channels(), 2, `sub-channel back after unload (closeChannels ${closeChannels})`);
        assert.equal(await guestWrite(t, 0, 4096, pattern(11, 8192)), 0);
        assert.deepEqual(Buffer.from((await guestRead(t, 0, 4096, 8192)).data!), Buffer.from(pattern(11, 8192)));
      }
    } finally {
      await t.vm.stop();
      await t.storage.close();
    }
  });
});
