// The reference guest's standard driver set: the hv_utils services and hv_storvsc, built
// by name (the modules a kernel would load).
import { IC_SERVICES } from '../devices/ic/ic-protocol.js';
import type { GuestWorkerOptions } from '../partition/process/guest-control.js';
import { OffsetGuestClock } from './guest-clock.js';
import { HeartbeatDriver } from './ic/heartbeat-driver.js';
import { IcVmbusDriver } from './ic/ic-vmbus-driver.js';
import { KvpDriver } from './ic/kvp-driver.js';
import { ShutdownDriver } from './ic/shutdown-driver.js';
import { TimesyncDriver } from './ic/timesync-driver.js';
import type { VmbusDriver } from './vmbus-driver.js';
import { StorvscDriver } from './storvsc/storvsc-driver.js';
import type { IcTransport } from '../devices/ic/ic-transport.js';
import type { Poller } from '../sys/epoll.js';
import { NetvscDriver } from './netvsc/netvsc-driver.js';
import { NicTap } from './netvsc/nic-tap.js';

export const STANDARD_GUEST_DRIVERS = ['heartbeat', 'shutdown', 'timesync', 'kvp', 'storvsc', 'netvsc'] as const;

export interface GuestDriverHooks {
  onShutdown: (kind: string) => void;
  referenceCounter: () => bigint;
  log?: (message: string) => void;
  /** The guest thread's event loop, for NICs surfaced as TAP devices. */
  poller?: Poller;
}

export interface GuestDriverSet {
  all: VmbusDriver[];
  clock: OffsetGuestClock;
  heartbeat: IcVmbusDriver<HeartbeatDriver> | null;
  kvp: IcVmbusDriver<KvpDriver> | null;
  timesync: IcVmbusDriver<TimesyncDriver> | null;
  storvsc: StorvscDriver | null;
  netvsc: NetvscDriver | null;
}

export function createGuestDrivers(options: GuestWorkerOptions, hooks: GuestDriverHooks): GuestDriverSet {
  const names = options.drivers ?? [...STANDARD_GUEST_DRIVERS];
  for (const name of names) {
    if (!(STANDARD_GUEST_DRIVERS as readonly string[]).includes(name)) throw new Error(`the reference guest has no driver '${name}'`);
  }
  const log = hooks.log;
  const clock = new OffsetGuestClock({ referenceCounter: hooks.referenceCounter });
  // A guest boots with whatever its RTC says; time sync is what corrects it.
  if (options.clockSkewMs) clock.setTime(clock.now() + BigInt(Math.trunc(options.clockSkewMs)) * 1_000_000n);
  const want = (name: string) => names.includes(name);
  const driver = <T extends HeartbeatDriver | ShutdownDriver | TimesyncDriver | KvpDriver>(name: keyof typeof IC_SERVICES, create: (transport: IcTransport) => T) =>
    new IcVmbusDriver<T>({ name, classId: IC_SERVICES[name].classId, create });
  const heartbeat = want('heartbeat') ? driver<HeartbeatDriver>('heartbeat', (t) => new HeartbeatDriver(t, { log })) : null;
  const shutdown = want('shutdown') ? driver<ShutdownDriver>('shutdown', (t) => new ShutdownDriver(t, { log, onShutdown: hooks.onShutdown })) : null;
  const timesync = want('timesync') ? driver<TimesyncDriver>('timesync', (t) => new TimesyncDriver(t, { log, clock })) : null;
  const kvp = want('kvp')
    ? driver<KvpDriver>('kvp', (t) => new KvpDriver(t, { log, info: { fullyQualifiedDomainName: options.hostname ?? 'enlighten-guest', osName: 'enlighten reference guest', processorArchitecture: 'x86_64' } }))
    : null;
  const poller = hooks.poller;
  // The request engine publishes its rings on the next turn: a guest thread waiting in its
  // own epoll_wait must not block through that turn.
  const storvsc = want('storvsc') ? new StorvscDriver({ ...options.storvsc, log, keepAwake: poller ? () => poller.keepAwake() : undefined }) : null;
  const exposeNics = options.exposeNics;
  const netvsc = want('netvsc')
    ? new NetvscDriver({
      ...options.netvsc,
      log,
      // Each NIC the guest brings up becomes a TAP in the namespace asked for, so the host
      // kernel's own stack and tools drive traffic through the whole path.
      onNic: exposeNics !== undefined && poller
        ? (nic) => {
          try {
            return new NicTap({ nic, poller, netns: exposeNics }).name;
          } catch (e) {
            log?.(`cannot surface ${nic.name} as a TAP in ${exposeNics}: ${(e as Error).message}`);
            return undefined;
          }
        }
        : undefined,
    })
    : null;
  const all = [heartbeat, shutdown, timesync, kvp, storvsc, netvsc].filter((d): d is NonNullable<typeof d> => d !== null) as VmbusDriver[];
  return { all, clock, heartbeat, kvp, timesync, storvsc, netvsc };
}
