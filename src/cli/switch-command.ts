// `enlighten switch PATH`: runs a VM-to-VM switch hub at PATH until SIGINT/SIGTERM. VMs
// join it with `--net switch=PATH`; no host network set-up and no root needed.
import type { Command } from 'commander';
import { NetSwitchHub, SWITCH_MAX_FRAME_LIMIT } from '../backends/net/net-switch-hub.js';
import { Poller } from '../sys/epoll.js';
import { UsageError } from './usage-error.js';

export interface SwitchRunOptions {
  path: string;
  maxFrameBytes?: number;
  macAgeMs?: number;
  /** Prints a line per join/leave when given. */
  log?: (line: string) => void;
  /** Resolves when the hub should stop (default: SIGINT or SIGTERM). */
  until?: Promise<void>;
}

/** Runs a hub until `until` (or a signal); returns its final statistics. */
export async function runSwitch(o: SwitchRunOptions): Promise<NetSwitchHub['stats']> {
  // A failure in one datagram's handling is reported, not fatal: the other VMs keep their switch.
  const poller = new Poller((e) => (o.log ?? ((line: string) => process.stderr.write(`${line}\n`)))(`switch: ${(e as Error)?.message ?? String(e)}`));
  let hub: NetSwitchHub;
  try {
    hub = NetSwitchHub.start({ path: o.path, poller, maxFrameBytes: o.maxFrameBytes, macAgeMs: o.macAgeMs });
  } catch (e) {
    await poller.stop();
    throw e;
  }
  o.log?.(`switch listening at ${o.path}`);
  let stopSignals: () => void = () => {};
  const until =
    o.until ??
    new Promise<void>((resolve) => {
      const onSignal = (): void => resolve();
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
      stopSignals = () => {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      };
    });
  // Report joins and leaves by watching the counters: the hub itself stays silent.
  let joins = 0;
  let leaves = 0;
  const watch = setInterval(() => {
    if (hub.stats.joins !== joins || hub.stats.leaves !== leaves) {
      joins = hub.stats.joins;
      leaves = hub.stats.leaves;
      o.log?.(`ports: ${hub.portCount} (joined ${joins}, left ${leaves})`);
    }
  }, 1000);
  watch.unref();
  try {
    await until;
  } finally {
    clearInterval(watch);
    stopSignals();
    hub.close();
    await poller.stop();
  }
  return hub.stats;
}

export function addSwitchCommand(program: Command): void {
  program
    .command('switch')
    .description('run a VM-to-VM Ethernet switch on a unix datagram socket at PATH (VMs join with --net switch=PATH) until SIGINT/SIGTERM')
    .argument('<path>', 'socket path to create (a stale socket left by a dead switch is replaced)')
    .option('--max-frame <bytes>', 'largest Ethernet frame forwarded', '16384')
    .option('--mac-age <seconds>', 'forget a MAC address not seen for this long', '300')
    .option('-v, --verbose', 'print the final statistics on exit')
    .action(async (path: string, options: { maxFrame: string; macAge: string; verbose?: boolean }) => {
      const maxFrame = Number(options.maxFrame);
      if (!/^\d+$/.test(options.maxFrame) || maxFrame < 64 || maxFrame > SWITCH_MAX_FRAME_LIMIT) {
        throw new UsageError(`--max-frame must be a whole number from 64 to ${SWITCH_MAX_FRAME_LIMIT}, not '${options.maxFrame}'`);
      }
      const macAge = Number(options.macAge);
      if (!/^\d+(\.\d+)?$/.test(options.macAge) || !(macAge > 0)) throw new UsageError(`--mac-age must be a positive number of seconds, not '${options.macAge}'`);
      const stats = await runSwitch({
        path,
        maxFrameBytes: maxFrame,
        macAgeMs: macAge * 1000,
        log: (line) => process.stderr.write(`${line}\n`),
      });
      if (options.verbose) process.stderr.write(`switch stopped: ${JSON.stringify(stats)}\n`);
    });
}
