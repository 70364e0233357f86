// Host side of the heartbeat IC: once the guest has negotiated, send a sequence number
// every `intervalMs`; a live guest answers each with the number plus one. The answers are
// only a liveness signal (Hyper-V shows them as the VM's "heartbeat" status).

import type { IcLog, IcTransport } from './ic-transport.js';
import { IC_SERVICES, IcMsgType } from './ic-protocol.js';
import { IcHostService } from './ic-service.js';
import { decodeHeartbeatSequence, encodeHeartbeatBody, nextHeartbeatSequence } from './heartbeat-protocol.js';

export interface HeartbeatServiceOptions {
  /** Time between heartbeats (default 1000 ms). */
  readonly intervalMs?: number;
  /** Called with the guest's sequence number for every correct answer. */
  readonly onBeat?: (sequence: bigint) => void;
  readonly log?: IcLog;
}

export class HeartbeatService extends IcHostService {
  readonly #intervalMs: number;
  readonly #onBeat: ((sequence: bigint) => void) | undefined;
  #timer: NodeJS.Timeout | undefined;
  #nextSequence = 0n;
  #outstanding = false;
  #lastSequence: bigint | undefined;
  #beats = 0;

  constructor(transport: IcTransport, options: HeartbeatServiceOptions = {}) {
    const desc = IC_SERVICES.heartbeat;
    super(transport, {
      name: desc.name,
      frameworkVersions: desc.hostFrameworkVersions,
      messageVersions: desc.hostMessageVersions,
      log: options.log,
    });
    const interval = options.intervalMs ?? 1000;
    if (!Number.isFinite(interval) || interval <= 0) throw new RangeError(`intervalMs ${interval} must be positive`);
    this.#intervalMs = interval;
    this.#onBeat = options.onBeat;
  }

  /** The sequence number of the guest's latest correct answer. */
  get lastSequence(): bigint | undefined {
    return this.#lastSequence;
  }

  /** How many correct answers the guest has given. */
  get beats(): number {
    return this.#beats;
  }

  protected override onReady(): void {
    this.#beat();
    this.#timer = setInterval(() => this.#beat(), this.#intervalMs);
    this.#timer.unref();
  }

  protected override onClose(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #beat(): void {
    // One heartbeat in flight at a time: a guest that stops answering is not flooded.
    if (this.#outstanding) return;
    this.#outstanding = true;
    const sent = this.#nextSequence;
    this.#nextSequence = nextHeartbeatSequence(this.#nextSequence);
    this.transact(IcMsgType.HEARTBEAT, encodeHeartbeatBody(sent), this.#intervalMs * 3, false).then(
      (response) => {
        this.#outstanding = false;
        const answered = decodeHeartbeatSequence(response.body);
        if (answered === undefined) {
          this.log(`heartbeat answer of ${response.body.length} bytes has no sequence number`);
          return;
        }
        if (answered !== nextHeartbeatSequence(sent)) {
          this.log(`heartbeat ${sent} answered with ${answered}, expected ${nextHeartbeatSequence(sent)}`);
          return;
        }
        // Continue from the guest's number, so the counter is the guest's as much as ours.
        this.#nextSequence = answered;
        this.#lastSequence = answered;
        this.#beats++;
        try {
          this.#onBeat?.(answered);
        } catch (err) {
          this.log(`onBeat failed: ${err instanceof Error ? err.message : String(err)}`);
        }
      },
      (err: unknown) => {
        this.#outstanding = false;
        if (this.state !== 'closed') this.log(`heartbeat ${sent}: ${err instanceof Error ? err.message : String(err)}`);
      },
    );
  }
}
