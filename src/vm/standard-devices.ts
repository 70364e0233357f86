// The devices every VM gets: the four integration services Linux's hv_utils drives.
import { HeartbeatService, type HeartbeatServiceOptions } from '../devices/ic/heartbeat-service.js';
import { IcDevice } from '../devices/ic/ic-device.js';
import { IC_SERVICES } from '../devices/ic/ic-protocol.js';
import { KvpService } from '../devices/ic/kvp-service.js';
import { ShutdownService } from '../devices/ic/shutdown-service.js';
import { TimesyncService } from '../devices/ic/timesync-service.js';
import type { Poller } from '../sys/epoll.js';

export interface StandardDeviceOptions {
  poller: Poller;
  /** The partition reference counter, so time sync can speak version 4. */
  referenceTime: () => bigint;
  heartbeat?: HeartbeatServiceOptions;
  timesyncSampleIntervalMs?: number;
  kvpTimeoutMs?: number;
  log?: (message: string) => void;
}

export interface StandardDevices {
  heartbeat: IcDevice<HeartbeatService>;
  shutdown: IcDevice<ShutdownService>;
  timesync: IcDevice<TimesyncService>;
  kvp: IcDevice<KvpService>;
  all: IcDevice<HeartbeatService | ShutdownService | TimesyncService | KvpService>[];
}

export function createStandardDevices(options: StandardDeviceOptions): StandardDevices {
  const { poller } = options;
  const log = options.log ?? (() => {});
  const ids = (name: keyof typeof IC_SERVICES) => ({ name, classId: IC_SERVICES[name].classId, instanceId: IC_SERVICES[name].instanceId, poller, log });
  const heartbeat = new IcDevice({ ...ids('heartbeat'), create: (t) => new HeartbeatService(t, { log, ...options.heartbeat }) });
  const shutdown = new IcDevice({ ...ids('shutdown'), create: (t) => new ShutdownService(t, { log }) });
  const timesync = new IcDevice({
    ...ids('timesync'),
    create: (t) => new TimesyncService(t, { log, referenceCounter: options.referenceTime, sampleIntervalMs: options.timesyncSampleIntervalMs }),
  });
  const kvp = new IcDevice({ ...ids('kvp'), create: (t) => new KvpService(t, { log, timeoutMs: options.kvpTimeoutMs }) });
  return { heartbeat, shutdown, timesync, kvp, all: [heartbeat, shutdown, timesync, kvp] };
}
