// The default guest image: pinned packages fetched with apt-get and verified, reused from
// the cache without apt, clear errors, and an initramfs the kernel can boot (/init,
// busybox, the Hyper-V modules; extra packages with the libraries they load).
// Uses the real cache (~/.cache/enlighten or $ENLIGHTEN_CACHE) so repeated runs are fast.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { cacheDir } from '../src/guest-image/cache-dir.js';
import { buildInitramfs } from '../src/guest-image/initramfs-builder.js';
import { initScript } from '../src/guest-image/init-script.js';
import { defaultRunner, fetchPackage, PackageFetchError, sha256File, type CommandRunner } from '../src/guest-image/package-fetch.js';
import { BUSYBOX, KERNELS } from '../src/guest-image/pinned-packages.js';

const hasApt = spawnSync('apt-get', ['--version']).status === 0;
const hasCpio = spawnSync('cpio', ['--version']).status === 0;
const noApt = 'apt-get is not available on this host: the default guest image is NOT tested';

function countingRunner(): { runner: CommandRunner; calls: string[] } {
  const calls: string[] = [];
  return { calls, runner: (cmd, args, o) => (calls.push(`${cmd} ${args.join(' ')}`), defaultRunner(cmd, args, o)) };
}

test('cache directory: $ENLIGHTEN_CACHE, else $XDG_CACHE_HOME/enlighten, else ~/.cache/enlighten', () => {
  assert.equal(cacheDir({ ENLIGHTEN_CACHE: '/x/y', XDG_CACHE_HOME: '/c' }), '/x/y');
  assert.equal(cacheDir({ XDG_CACHE_HOME: '/c' }), '/c/enlighten');
  assert.equal(cacheDir({ ENLIGHTEN_CACHE: '', XDG_CACHE_HOME: 'relative' }), path.join(os.homedir(), '.cache', 'enlighten'));
});

test('fetch the pinned 6.1 kernel and busybox: SHA256 verified; a second fetch runs no apt at all', async (t) => {
  if (!hasApt) return t.skip(noApt);
  for (const pkg of [KERNELS['6.1'], BUSYBOX]) {
    const first = await fetchPackage(pkg);
    assert.equal(await sha256File(first), pkg.sha256);
    assert.equal(fs.statSync(first).size, pkg.size);
    const { runner, calls } = countingRunner();
    const second = await fetchPackage(pkg, { runner });
    assert.equal(second, first);
    assert.deepEqual(calls, [], 'cached and verified: apt was not run');
  }
});

test('a download whose SHA256 differs from the pin is deleted and refused', async (t) => {
  if (!hasApt) return t.skip(noApt);
  const cache = fs.mkdtempSync(path.join(os.tmpdir(), 'enl-cache-'));
  const wrong = { ...BUSYBOX, sha256: '0'.repeat(64) };
  await assert.rejects(fetchPackage(wrong, { cache }), (e: Error) => e instanceof PackageFetchError && e.kind === 'hash-mismatch' && e.message.includes(BUSYBOX.sha256));
  assert.deepEqual(fs.readdirSync(path.join(cache, 'debs')), [], 'nothing left behind');
});

test('clear errors: no apt-get, unknown package or version, archive unreachable', async (t) => {
  const cache = fs.mkdtempSync(path.join(os.tmpdir(), 'enl-cache-'));
  const missing: CommandRunner = () => Promise.reject(Object.assign(new Error('spawn apt-get ENOENT'), { code: 'ENOENT' }));
  await assert.rejects(fetchPackage(BUSYBOX, { cache, runner: missing }), (e: Error) => e instanceof PackageFetchError && e.kind === 'no-apt' && /apt-get.*--kernel\/--initrd/.test(e.message));
  const offline: CommandRunner = async () => ({
    code: 100,
    stdout: '',
    stderr: `E: Failed to fetch http://deb.debian.org/debian/pool/main/b/busybox/x.deb  Temporary failure resolving 'deb.debian.org'\n`,
  });
  await assert.rejects(fetchPackage(BUSYBOX, { cache, runner: offline }), (e: Error) => e instanceof PackageFetchError && e.kind === 'offline' && e.message.includes(cache));
  await assert.rejects(fetchPackage({ name: '-o', version: '1' }, { cache }), (e: Error) => e instanceof PackageFetchError && e.kind === 'bad-name');
  if (!hasApt) return t.skip(noApt);
  await assert.rejects(
    fetchPackage({ ...BUSYBOX, version: '1:0.0.0-0' }, { cache }),
    (e: Error) => e instanceof PackageFetchError && e.kind === 'not-found' && e.message.includes('busybox-static=1:0.0.0-0') && e.message.includes('pinned-packages.ts'),
  );
  await assert.rejects(fetchPackage({ name: 'enlighten-no-such-package' }, { cache }), (e: Error) => e instanceof PackageFetchError && e.kind === 'not-found' && e.message.includes('enlighten-no-such-package'));
});

function cpioList(file: string): string[] {
  const r = spawnSync('cpio', ['-t', '--quiet', '-F', file], { encoding: 'utf8', maxBuffer: 1 << 26 });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.trim().split('\n');
}

test('the 6.1 initramfs holds /init, busybox and the module closure; /init passes sh -n; a rebuild is a cache hit', async (t) => {
  if (!hasApt) return t.skip(noApt);
  if (!hasCpio) return t.skip('GNU cpio is not installed (apt-get install cpio): the initramfs contents are NOT checked');
  const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'enl-initrd-')), 'initrd.cpio');
  const built = await buildInitramfs({ kernel: '6.1', out });
  assert.equal(built.initramfsPath, out);
  assert.equal(built.kernelRelease, '6.1.0-50-cloud-amd64');
  assert.ok(fs.statSync(built.kernelPath).size > 1 << 20, 'the bzImage is there');
  const names = cpioList(out);
  for (const n of ['init', 'bin/busybox', 'bin/sh', 'dev/console']) assert.ok(names.includes(n), n);
  for (const m of built.modules) assert.ok(names.some((n) => n.endsWith(`/${m}.ko`)), `${m}.ko in the image`);
  assert.ok(built.modules.indexOf('hv_vmbus') < built.modules.indexOf('hv_storvsc'));

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'enl-initrd-x-'));
  assert.equal(spawnSync('cpio', ['-id', '--quiet', '-F', out], { cwd: dir }).status, 0);
  const init = fs.readFileSync(path.join(dir, 'init'), 'utf8');
  assert.equal(fs.statSync(path.join(dir, 'init')).mode & 0o111, 0o111, '/init is executable');
  const hostSh = spawnSync('sh', ['-n', path.join(dir, 'init')], { encoding: 'utf8' });
  assert.equal(hostSh.status, 0, hostSh.stderr);
  const busyboxSh = spawnSync(path.join(dir, 'bin/busybox'), ['sh', '-n', path.join(dir, 'init')], { encoding: 'utf8' });
  assert.equal(busyboxSh.status, 0, busyboxSh.stderr);
  // insmod order in /init is the dependency order.
  const loads = [...init.matchAll(/^load_module '([^']+)'/gm)].map((m) => m[1]);
  assert.deepEqual(loads, built.modules);

  const { runner, calls } = countingRunner();
  const again = await buildInitramfs({ kernel: '6.1', runner });
  assert.equal(again.cached, true);
  assert.deepEqual(calls, [], 'nothing fetched again');
});

test('/init: every marker is documented, the command comes from enlighten.cmd (base64), the guest powers off', () => {
  const init = initScript({ modules: [{ name: "we'ird", guestPath: 'lib/modules/x/a.ko' }] });
  for (const marker of ['ENLIGHTEN-GUEST-READY kernel=', 'ENLIGHTEN-EXIT', 'ENLIGHTEN-REPORT']) assert.ok(init.includes(marker), marker);
  for (const key of ['hyperv', 'vmbus-version', 'vmbus-devices', 'vmbus-device', 'cpus-online', 'cpu-count']) {
    assert.ok(init.includes(`report ${key} `), `reports ${key}`);
    const source = fs.readFileSync(new URL('../../src/guest-image/init-script.ts', import.meta.url), 'utf8');
    assert.ok(source.includes(`ENLIGHTEN-REPORT ${key}=`), `${key} is documented in init-script.ts`);
  }
  assert.ok(init.includes(`load_module 'we'\\''ird' '/lib/modules/x/a.ko'`), 'names are shell-quoted');
  assert.match(init, /enlighten\.cmd=\*\) cmd_b64=/);
  assert.match(init, /base64 -d/);
  assert.match(init, /setsid cttyhack sh/);
  assert.match(init.trimEnd(), /poweroff -f$/);
  assert.equal(spawnSync('sh', ['-n'], { input: init }).status, 0);
});

test('extra packages come with the shared libraries their binaries load (ethtool: libmnl, libc, ld.so)', async (t) => {
  if (!hasApt) return t.skip(noApt);
  if (!hasCpio) return t.skip('GNU cpio is not installed: extra packages NOT checked');
  const built = await buildInitramfs({ kernel: '6.1', packages: ['ethtool'] });
  const names = cpioList(built.initramfsPath);
  for (const n of ['sbin/ethtool', 'usr/lib/x86_64-linux-gnu/libmnl.so.0', 'lib/x86_64-linux-gnu/libc.so.6', 'lib64/ld-linux-x86-64.so.2']) assert.ok(names.includes(n), n);
  assert.ok(!names.some((n) => n.startsWith('usr/share/doc/')), 'no documentation');
  if (process.getuid?.() !== 0) return t.skip('not root: cannot chroot to run ethtool from the image');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'enl-initrd-x-'));
  assert.equal(spawnSync('cpio', ['-id', '--quiet', '-F', built.initramfsPath], { cwd: dir }).status, 0);
  // Only the image's own libraries are there to load: this proves the closure is complete.
  const r = spawnSync('chroot', [dir, '/sbin/ethtool', '--version'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^ethtool version/);
});
