// The storage command line and crash safety: `enlighten run --disk ... --expose-disks`
// as a separate process, written through its FUSE file, then killed with SIGKILL:
// everything flushed before the kill is in the image.
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { detachMount, pattern, runTool, scratchDir, sparseImage, waitForFile } from './support/storage.js';

const BIN = fileURLToPath(new URL('../../bin/enlighten.js', import.meta.url));
const MiB = 1 << 20;
const BLOCK = 4096;

interface Running {
  child: ChildProcess;
  events: Record<string, unknown>[];
  waitFor(predicate: (e: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
}

function startEnlighten(args: string[]): Running {
  const child = spawn(process.execPath, [BIN, 'run', '--events', 'json', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const events: Record<string, unknown>[] = [];
  const waiters: { predicate: (e: Record<string, unknown>) => boolean; resolve: (e: Record<string, unknown>) => void }[] = [];
  readline.createInterface({ input: child.stdout! }).on('line', (line) => {
    let event: Record<string, unknown>;
    try {
      event = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return;
    }
    events.push(event);
    for (const w of [...waiters]) if (w.predicate(event)) w.resolve(event);
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const waitFor = (predicate: (e: Record<string, unknown>) => boolean, timeoutMs = 30_000) =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      const seen = events.find(predicate);
      if (seen) return resolve(seen);
      const timer = setTimeout(() => reject(new Error(`no matching event in ${timeoutMs} ms; events ${JSON.stringify(events)}; stderr ${stderr}`)), timeoutMs);
      waiters.push({ predicate, resolve: (e) => (clearTimeout(timer), resolve(e)) });
    });
  return { child, events, waitFor };
}

function exited(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once('exit', (code) => resolve(code)));
}

describe('enlighten run with disks', { concurrency: false, timeout: 300_000 }, () => {
  const dirs: string[] = [];
  const mounts: string[] = [];
  after(async () => {
    for (const m of mounts) await detachMount(m);
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  });

  it('reports each disk the guest found as a JSON event', async () => {
    const run = startEnlighten(['--disk', 'memory:8M', '--disk', 'memory:4M,readonly', '--stop-when', 'ready', '--name', `disks-${process.pid}`]);
    const first = await run.waitFor((e) => e.event === 'disk' && e.lun === 0);
    const second = await run.waitFor((e) => e.event === 'disk' && e.lun === 1);
    assert.equal(first.bytes, 8 * MiB);
    assert.equal(second.bytes, 4 * MiB);
    assert.equal(second.readOnly, true);
    assert.equal(await exited(run.child), 0);
  });

  it('rejects a malformed --disk with exit code 2 and one line on stderr', async () => {
    const result = await runTool(process.execPath, [BIN, 'run', '--disk', 'x.img,format=qcow2']);
    assert.equal(result.code, 2);
    assert.match(result.stderr, /unknown format 'qcow2'/);
    const missing = await runTool(process.execPath, [BIN, 'run', '--disk', '/nonexistent/disk.img', '--stop-when', 'ready', '--name', `missing-${process.pid}`]);
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr, /nonexistent\/disk\.img/);
  });

  it('a second VM cannot open the same image read-write', async () => {
    const dir = scratchDir('lock');
    dirs.push(dir);
    const image = sparseImage(dir, 'shared.raw', 8 * MiB);
    const first = startEnlighten(['--disk', image, '--name', `lock1-${process.pid}`]);
    try {
      await first.waitFor((e) => e.event === 'ready');
      const second = await runTool(process.execPath, [BIN, 'run', '--disk', image, '--stop-when', 'ready', '--name', `lock2-${process.pid}`], 60_000);
      assert.notEqual(second.code, 0);
      assert.match(second.stderr, /in use|locked/i);
    } finally {
      first.child.kill('SIGTERM');
      await exited(first.child);
    }
  });

  it('after kill -9 of the host process every block flushed before it reads back from the image', async () => {
    const dir = scratchDir('crash');
    dirs.push(dir);
    const mnt = path.join(dir, 'disks');
    fs.mkdirSync(mnt);
    mounts.push(mnt);
    const sizeBytes = 64 * MiB;
    const image = sparseImage(dir, 'crash.raw', sizeBytes);
    const run = startEnlighten(['--disk', image, '--expose-disks', mnt, '--name', `crash-${process.pid}`]);
    const flushed: number[] = [];
    try {
      await run.waitFor((e) => e.event === 'disk');
      const file = path.join(mnt, 'lun0');
      await waitForFile(file);
      const handle = await fs.promises.open(file, 'r+');
      // Distinct blocks in a shuffled order, so each flushed block has exactly one expected value.
      const blocks = Array.from({ length: sizeBytes / BLOCK }, (_, i) => i);
      for (let i = blocks.length - 1; i > 0; i--) {
        const j = (i * 48271) % (i + 1);
        [blocks[i], blocks[j]] = [blocks[j]!, blocks[i]!];
      }
      let written: number[] = [];
      for (let i = 0; i < 620; i++) {
        const block = blocks[i]!;
        await handle.write(pattern(block + 1, BLOCK), 0, BLOCK, block * BLOCK);
        written.push(block);
        if (i % 50 === 49) {
          await handle.sync();
          flushed.push(...written);
          written = [];
        }
      }
      // Unflushed writes are in flight or cached when the host dies: they may or may not land.
      run.child.kill('SIGKILL');
      await exited(run.child);
      await handle.close().catch(() => {});
    } finally {
      if (run.child.exitCode === null && run.child.signalCode === null) run.child.kill('SIGKILL');
      await detachMount(mnt);
    }
    assert.equal(flushed.length, 600);
    assert.equal(fs.statSync(image).size, sizeBytes, 'the image was not truncated');
    const fd = fs.openSync(image, 'r');
    try {
      const got = Buffer.alloc(BLOCK);
      for (const block of flushed) {
        fs.readSync(fd, got, 0, BLOCK, block * BLOCK);
        assert.deepEqual(got, Buffer.from(pattern(block + 1, BLOCK)), `flushed block ${block} is not in the image`);
      }
    } finally {
      fs.closeSync(fd);
    }
  });
});
