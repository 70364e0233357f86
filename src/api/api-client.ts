// Talks to a running VM's control API.
import net from 'node:net';
import type { ApiReply, ApiRequest } from './api-protocol.js';

export function callApi(socketPath: string, request: ApiRequest, timeoutMs = 10_000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(socketPath);
    let buffer = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no answer from ${socketPath} within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.setEncoding('utf8');
    socket.on('connect', () => socket.write(`${JSON.stringify(request)}\n`));
    socket.on('data', (chunk: string) => {
      buffer += chunk;
      const newline = buffer.indexOf('\n');
      if (newline < 0) return;
      clearTimeout(timer);
      socket.end();
      const reply = JSON.parse(buffer.slice(0, newline)) as ApiReply;
      if (reply.ok) resolve(reply.result);
      else reject(new Error(reply.error));
    });
    socket.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(e.code === 'ENOENT' || e.code === 'ECONNREFUSED' ? new Error(`no VM is running at ${socketPath} (start one with 'enlighten run', or pass --name/--api-socket)`) : e);
    });
  });
}
