// Serves the control API of a running VM on a unix socket.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { ApiReply, ApiRequest } from './api-protocol.js';

export type ApiHandler = (request: ApiRequest) => Promise<unknown>;

const MAX_LINE = 64 * 1024;

export async function startApiServer(socketPath: string, handler: ApiHandler): Promise<net.Server> {
  fs.mkdirSync(path.dirname(socketPath), { recursive: true, mode: 0o700 });
  await removeStaleSocket(socketPath);
  const server = net.createServer((socket) => {
    let buffer = '';
    socket.setEncoding('utf8');
    socket.on('error', () => {});
    socket.on('data', (chunk: string) => {
      buffer += chunk;
      if (buffer.length > MAX_LINE) return void socket.destroy();
      let newline: number;
      while ((newline = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        void answer(line).then((reply) => socket.write(`${JSON.stringify(reply)}\n`));
      }
    });
  });
  async function answer(line: string): Promise<ApiReply> {
    try {
      const request = JSON.parse(line) as ApiRequest;
      return { ok: true, result: await handler(request) };
    } catch (e) {
      return { ok: false, error: (e as Error).message };
    }
  }
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => resolve());
  });
  fs.chmodSync(socketPath, 0o600);
  return server;
}

/** A socket file left by a VM that died is removed; one that answers belongs to a live VM. */
async function removeStaleSocket(socketPath: string): Promise<void> {
  if (!fs.existsSync(socketPath)) return;
  const alive = await new Promise<boolean>((resolve) => {
    const probe = net.connect(socketPath, () => {
      probe.destroy();
      resolve(true);
    });
    probe.on('error', () => resolve(false));
  });
  if (alive) throw new Error(`another VM is already listening on ${socketPath}; pick another --name`);
  fs.unlinkSync(socketPath);
}
