// `enlighten inspect`: each channel of a running VM with its ring fill and packet and
// signal rates (sampled twice, `--interval` apart), once or live with --watch.
import { callApi } from '../api/api-client.js';
import type { ChannelStatus, VmStatus } from '../api/api-protocol.js';

export interface InspectOptions {
  socketPath: string;
  watch: boolean;
  intervalMs: number;
  json: boolean;
}

export async function inspectCommand(options: InspectOptions): Promise<number> {
  let before = (await callApi(options.socketPath, { op: 'inspect' })) as VmStatus;
  do {
    await new Promise((resolve) => setTimeout(resolve, options.intervalMs));
    const after = (await callApi(options.socketPath, { op: 'inspect' })) as VmStatus;
    const seconds = Math.max(0.001, (after.uptimeMs - before.uptimeMs) / 1000);
    if (options.json) process.stdout.write(`${JSON.stringify({ ...after, intervalSeconds: seconds })}\n`);
    else {
      if (options.watch && process.stdout.isTTY) process.stdout.write('\x1b[2J\x1b[H');
      process.stdout.write(render(before, after, seconds));
    }
    before = after;
  } while (options.watch);
  return 0;
}

function render(before: VmStatus, after: VmStatus, seconds: number): string {
  const old = new Map(before.channels.map((c) => [c.relid, c]));
  const rate = (c: ChannelStatus, key: 'packetsIn' | 'packetsOut' | 'signalsIn' | 'signalsOut') => {
    const previous = old.get(c.relid);
    return previous ? ((c[key] - previous[key]) / seconds).toFixed(1) : '-';
  };
  const fill = (f: number | null) => (f === null ? '-' : `${(f * 100).toFixed(1)}%`);
  const rows = [['relid', 'name', 'class', 'state', 'vp', 'in fill', 'out fill', 'pkts in/s', 'pkts out/s', 'sig in/s', 'sig out/s']];
  for (const c of after.channels) {
    rows.push([String(c.relid), c.name, c.class, c.state, String(c.targetVp), fill(c.incomingFill), fill(c.outgoingFill), rate(c, 'packetsIn'), rate(c, 'packetsOut'), rate(c, 'signalsIn'), rate(c, 'signalsOut')]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const lines = rows.map((r) => r.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd());
  return `${after.backend} VM, VMBus ${after.vmbusVersion ?? '(not connected)'}, ${after.cpus} CPUs, ${after.memoryBytes / 2 ** 20} MiB\n${lines.join('\n')}\n`;
}
