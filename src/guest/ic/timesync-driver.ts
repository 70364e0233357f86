// Reference-guest time synchronization driver, after timesync_onchannelcallback,
// adj_guesttime and hv_set_host_time in Linux's hv_util.c.
//
// Every sample is kept as (host time, reference counter at receipt). With message
// versions above 3.0 the sample carries the reference counter the host read together
// with its time, and the host time is moved forward by how long the sample took to
// arrive; older versions use the counter at receipt, i.e. no correction.
//
// A SYNC sample schedules a deferred step of the guest clock (the kernel's work item).
// When that work runs it extrapolates the kept sample to "now" by the reference counter,
// and refuses to step when more than 600 s of reference time have passed since the
// sample was received — Linux's staleness rule (HOST_TIMESYNC_DELAY_THRESH, -ESTALE).
// Note what it is measured from: receipt, not the moment the host read its clock.

import type { IcLog, IcTransport } from '../../devices/ic/ic-transport.js';
import {
  IC_BODY_OFFSET,
  IC_SERVICES,
  IcMsgType,
  IcStatus,
  TIMESYNC_VERSION_3,
  compareVersions,
  setIcStatus,
} from '../../devices/ic/ic-protocol.js';
import type { IcHeader } from '../../devices/ic/ic-protocol.js';
import {
  TIMESYNC_STALE_THRESHOLD_NS,
  TIMESYNC_V3_BODY_SIZE,
  TIMESYNC_V4_MIN_BODY_SIZE,
  TimesyncFlags,
  decodeTimesyncV3,
  decodeTimesyncV4,
  filetimeToUnixNs,
} from '../../devices/ic/timesync-protocol.js';
import type { GuestClock } from '../guest-clock.js';
import { IcGuestDriver, UTIL_RECV_BUFFER_SIZE } from './ic-guest-driver.js';

const U64_MASK = (1n << 64n) - 1n;
const u64 = (x: bigint): bigint => x & U64_MASK;
const s64 = (x: bigint): bigint => BigInt.asIntN(64, x);

/** How far behind the host the guest must be before an implicit sync steps it (hv_implicit_sync). */
const IMPLICIT_SYNC_LAG_NS = 5_000_000_000n;

export interface TimesyncDriverOptions {
  readonly clock: GuestClock;
  /**
   * The module parameter `timesync_implicit`: also step on a SAMPLE when the guest is 5 s
   * or more behind the host. Off by default, as in Linux.
   */
  readonly implicitSync?: boolean;
  /**
   * Runs deferred work, the kernel's schedule_work (default setImmediate). Tests pass their
   * own to control when the clock step happens.
   */
  readonly schedule?: (work: () => void) => void;
  readonly log?: IcLog;
}

export interface TimesyncSample {
  /** Host time (FILETIME), already corrected to the moment of receipt. */
  readonly hostTime: bigint;
  /** The guest's reference counter at receipt. */
  readonly refTime: bigint;
}

export interface AdjustedHostTime {
  readonly unixNs: bigint;
  /** More than 600 s of reference time since the sample arrived (Linux returns -ESTALE). */
  readonly stale: boolean;
}

export class TimesyncDriver extends IcGuestDriver {
  readonly #clock: GuestClock;
  readonly #implicitSync: boolean;
  readonly #schedule: (work: () => void) => void;
  #sample: TimesyncSample | undefined;
  #workPending = false;
  #steps = 0;
  #samples = 0;

  constructor(transport: IcTransport, options: TimesyncDriverOptions) {
    const desc = IC_SERVICES.timesync;
    super(transport, {
      name: desc.name,
      frameworkVersions: desc.frameworkVersions,
      messageVersions: desc.messageVersions,
      maxPacketSize: UTIL_RECV_BUFFER_SIZE,
      log: options.log,
    });
    this.#clock = options.clock;
    this.#implicitSync = options.implicitSync ?? false;
    this.#schedule = options.schedule ?? ((work) => void setImmediate(work));
  }

  /** The latest sample, as the PTP clock would use it. */
  get lastSample(): TimesyncSample | undefined {
    return this.#sample;
  }

  /** Samples received (SYNC and SAMPLE). */
  get samples(): number {
    return this.#samples;
  }

  /** Times the guest clock was stepped. */
  get steps(): number {
    return this.#steps;
  }

  /** hv_get_adj_host_time: the latest sample extrapolated to now by the reference counter. */
  getAdjustedHostTime(): AdjustedHostTime | undefined {
    const sample = this.#sample;
    if (sample === undefined) return undefined;
    const elapsed = u64(this.#clock.referenceCounter() - sample.refTime);
    const stale = u64(elapsed * 100n) > TIMESYNC_STALE_THRESHOLD_NS;
    return { unixNs: filetimeToUnixNs(u64(sample.hostTime + elapsed)), stale };
  }

  protected handleMessage(packet: Uint8Array, header: IcHeader): boolean {
    if (header.msgType !== IcMsgType.TIMESYNC) {
      this.log(`message type ${header.msgType} answered with E_FAIL`);
      setIcStatus(packet, IcStatus.E_FAIL);
      return true;
    }
    const body = packet.subarray(IC_BODY_OFFSET);
    // Linux picks the layout by the negotiated version (0 before any negotiation).
    const negotiated = this.negotiation?.messageVersion;
    if (negotiated !== undefined && compareVersions(negotiated, TIMESYNC_VERSION_3) > 0) {
      const msg = decodeTimesyncV4(body);
      if (msg === undefined) {
        this.log(`dropped a v4 sample of ${packet.length} bytes: needs ${IC_BODY_OFFSET + TIMESYNC_V4_MIN_BODY_SIZE}`);
        return false;
      }
      this.#adjust(msg.parentTime, msg.vmReferenceTime, msg.flags);
    } else {
      const msg = decodeTimesyncV3(body);
      if (msg === undefined) {
        this.log(`dropped a v3 sample of ${packet.length} bytes: needs ${IC_BODY_OFFSET + TIMESYNC_V3_BODY_SIZE}`);
        return false;
      }
      this.#adjust(msg.parentTime, this.#clock.referenceCounter(), msg.flags);
    }
    return true;
  }

  /** adj_guesttime: keep the sample corrected to receipt, and schedule a step on SYNC. */
  #adjust(hostTime: bigint, refTime: bigint, flags: number): void {
    const now = this.#clock.referenceCounter();
    this.#sample = { hostTime: u64(hostTime + (now - refTime)), refTime: now };
    this.#samples++;
    const sync = (flags & TimesyncFlags.SYNC) !== 0;
    if (sync || (this.#implicitSync && this.#guestIsBehind(this.#sample.hostTime))) this.#scheduleStep();
  }

  #guestIsBehind(hostTime: bigint): boolean {
    return s64(filetimeToUnixNs(hostTime)) >= this.#clock.now() + IMPLICIT_SYNC_LAG_NS;
  }

  #scheduleStep(): void {
    // A work item that is already queued is not queued twice; it uses the latest sample.
    if (this.#workPending) return;
    this.#workPending = true;
    this.#schedule(() => {
      this.#workPending = false;
      if (this.closed) return;
      this.#step();
    });
  }

  /** hv_set_host_time: step unless stale. */
  #step(): void {
    const adjusted = this.getAdjustedHostTime();
    if (adjusted === undefined) return;
    if (adjusted.stale) {
      this.log('time sample is more than 600 s old by reference time; clock not stepped');
      return;
    }
    const unixNs = s64(adjusted.unixNs);
    if (unixNs < 0n) {
      this.log(`host time ${unixNs} ns is before 1970; clock not stepped`);
      return;
    }
    this.#clock.setTime(unixNs);
    this.#steps++;
  }
}
