// Path 3 of bench/network: the whole enlighten path. An `enlighten run` process (the
// process partition) with NetVSP's TAP backend in the host namespace and the reference
// guest's NIC surfaced as a TAP in the guest namespace:
// G's kernel -> TAP -> reference netvsc -> VMBus -> NetVSP -> TAP -> H's kernel.
import os from 'node:os';
import path from 'node:path';
import fs from 'node:fs';
import { spawn } from 'node:child_process';
import { uniqueName } from '../src/sys/netns.js';
import { configureLink, type EnlightenPathStarter } from './net-namespaces.js';

const BIN = new URL('../../bin/enlighten.js', import.meta.url).pathname;

export const startEnlightenPath: EnlightenPathStarter = async (guest, host) => {
  const hostTap = uniqueName('enbh');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'enlighten-bench-net-'));
  const child = spawn(process.execPath, [BIN, 'run', '--events', 'json', '--api-socket', path.join(dir, 'api.sock'), '--cpus', '2', '--net', `tap=${hostTap},netns=${host.netns}`, '--expose-nics', guest.netns], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, UV_THREADPOOL_SIZE: '16' },
  });
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  const guestTap = await new Promise<string>((resolve, reject) => {
    let buffer = '';
    const timer = setTimeout(() => reject(new Error('the VM reported no NIC within 30 s')), 30_000);
    child.stdout!.on('data', (d: Buffer) => {
      buffer += d.toString();
      for (const line of buffer.split('\n')) {
        if (!line.startsWith('{"event":"nic"')) continue;
        clearTimeout(timer);
        resolve(String((JSON.parse(line) as { name: string }).name));
      }
    });
    child.once('exit', () => reject(new Error('the VM exited before reporting its NIC')));
  });
  configureLink(host, hostTap);
  configureLink(guest, guestTap);
  return async () => {
    child.kill('SIGTERM');
    await exited;
    fs.rmSync(dir, { recursive: true, force: true });
  };
};
