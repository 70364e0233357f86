// Host side of the time synchronization IC: after negotiation send one SYNC sample (the
// guest steps its clock to it), then a SAMPLE every `sampleIntervalMs` (hints for the
// guest's PTP clock, /dev/ptp_hyperv). Version 4.0 samples carry the guest's reference
// counter read together with the host time, letting the guest correct for delivery delay;
// it is offered only when we can read that counter.

import type { IcLog, IcTransport } from './ic-transport.js';
import { IC_SERVICES, IcMsgType, IcStatus, TIMESYNC_VERSION_4, compareVersions, formatStatus, versionsEqual } from './ic-protocol.js';
import { IcHostService } from './ic-service.js';
import { TimesyncFlags, encodeTimesyncV3, encodeTimesyncV4, unixNsToFiletime } from './timesync-protocol.js';

export interface TimesyncServiceOptions {
  /** The host's wall clock, Unix nanoseconds (default: Date.now()). */
  readonly hostTime?: () => bigint;
  /**
   * The partition's reference time (100 ns units), the clock the guest reads from its
   * reference-time MSR / TSC page. Without it only versions up to 3.0 are offered.
   */
  readonly referenceCounter?: () => bigint;
  /** Time between SAMPLE messages (default 5000 ms, OpenVMM's period). */
  readonly sampleIntervalMs?: number;
  /** How long to wait for each answer (default 10 s). */
  readonly responseTimeoutMs?: number;
  readonly log?: IcLog;
}

export class TimesyncService extends IcHostService {
  readonly #hostTime: () => bigint;
  readonly #referenceCounter: (() => bigint) | undefined;
  readonly #sampleIntervalMs: number;
  readonly #timeoutMs: number;
  #timer: NodeJS.Timeout | undefined;
  #sent = 0;
  #answered = 0;

  constructor(transport: IcTransport, options: TimesyncServiceOptions = {}) {
    const desc = IC_SERVICES.timesync;
    const messageVersions =
      options.referenceCounter === undefined
        ? desc.hostMessageVersions.filter((v) => compareVersions(v, TIMESYNC_VERSION_4) < 0)
        : desc.hostMessageVersions;
    super(transport, {
      name: desc.name,
      frameworkVersions: desc.hostFrameworkVersions,
      messageVersions,
      log: options.log,
    });
    this.#hostTime = options.hostTime ?? (() => BigInt(Date.now()) * 1_000_000n);
    this.#referenceCounter = options.referenceCounter;
    const interval = options.sampleIntervalMs ?? 5000;
    if (!Number.isFinite(interval) || interval <= 0) throw new RangeError(`sampleIntervalMs ${interval} must be positive`);
    this.#sampleIntervalMs = interval;
    this.#timeoutMs = options.responseTimeoutMs ?? 10_000;
  }

  /** Samples sent so far (SYNC included). */
  get samplesSent(): number {
    return this.#sent;
  }

  /** Samples the guest answered with S_OK. */
  get samplesAnswered(): number {
    return this.#answered;
  }

  /** Sends a SYNC now (e.g. after the VM resumes), asking the guest to step its clock. */
  sync(): void {
    this.#send(TimesyncFlags.SYNC);
  }

  protected override onReady(): void {
    this.#send(TimesyncFlags.SYNC);
    this.#timer = setInterval(() => this.#send(TimesyncFlags.SAMPLE), this.#sampleIntervalMs);
    this.#timer.unref();
  }

  protected override onClose(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #send(flags: number): void {
    if (this.state === 'closed' || this.state === 'failed') return;
    // The body is built when the message goes out (after negotiation), so the sample is fresh.
    const body = (): Uint8Array => {
      const v4 = this.versions !== undefined && versionsEqual(this.versions.messageVersion, TIMESYNC_VERSION_4);
      if (v4 && this.#referenceCounter !== undefined) {
        // Read both clocks back to back: the guest trusts their pairing.
        const vmReferenceTime = this.#referenceCounter();
        const parentTime = unixNsToFiletime(this.#hostTime());
        return encodeTimesyncV4({ parentTime, vmReferenceTime, flags, leapFlags: 0, stratum: 0 });
      }
      return encodeTimesyncV3({ parentTime: unixNsToFiletime(this.#hostTime()), childTime: 0n, roundTripTime: 0n, flags });
    };
    this.whenReady().then(
      () => {
        this.#sent++;
        return this.transact(IcMsgType.TIMESYNC, body(), this.#timeoutMs, false).then((response) => {
          if (response.header.status === IcStatus.S_OK) this.#answered++;
          else this.log(`sample answered with status ${formatStatus(response.header.status)}`);
        });
      },
    ).catch((err: unknown) => {
      if (this.state !== 'closed') this.log(`sample: ${err instanceof Error ? err.message : String(err)}`);
    });
  }
}
