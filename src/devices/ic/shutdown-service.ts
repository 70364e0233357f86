// Host side of the shutdown IC: ask the guest to power off, restart or hibernate. The
// guest answers with a status first (S_OK when it will comply) and only then starts the
// operation, so the answer arrives before the channel goes away.

import type { IcLog, IcTransport } from './ic-transport.js';
import { IC_SERVICES, IcMsgType } from './ic-protocol.js';
import { IcHostService } from './ic-service.js';
import { SHTDN_REASON_FLAG_PLANNED, encodeShutdownBody, shutdownFlagsFor } from './shutdown-protocol.js';
import type { ShutdownKind } from './shutdown-protocol.js';

export type { ShutdownKind } from './shutdown-protocol.js';

export interface ShutdownServiceOptions {
  /** How long to wait for the guest's answer, negotiation included (default 30 s). */
  readonly responseTimeoutMs?: number;
  readonly log?: IcLog;
}

export interface ShutdownRequestOptions {
  /** Sets flag bit 0; Linux always behaves as if forced. */
  readonly force?: boolean;
  /** reason_code (default SHTDN_REASON_FLAG_PLANNED). */
  readonly reason?: number;
  /** display_message; Linux ignores it. */
  readonly message?: string;
  /** timeout_seconds (default 0); Linux ignores it. */
  readonly timeoutSeconds?: number;
}

export class ShutdownService extends IcHostService {
  readonly #timeoutMs: number;

  constructor(transport: IcTransport, options: ShutdownServiceOptions = {}) {
    const desc = IC_SERVICES.shutdown;
    super(transport, {
      name: desc.name,
      frameworkVersions: desc.hostFrameworkVersions,
      messageVersions: desc.hostMessageVersions,
      log: options.log,
    });
    this.#timeoutMs = options.responseTimeoutMs ?? 30_000;
  }

  /**
   * Sends one shutdown request and resolves with the guest's status (IcStatus.S_OK when it
   * complies; Linux answers E_FAIL for hibernate unless the guest can hibernate, and
   * kernels older than shutdown 3.1 also for restart). Rejects on timeout, failed
   * negotiation or close.
   */
  async request(kind: ShutdownKind, opts: ShutdownRequestOptions = {}): Promise<number> {
    const body = encodeShutdownBody({
      reasonCode: opts.reason ?? SHTDN_REASON_FLAG_PLANNED,
      timeoutSeconds: opts.timeoutSeconds ?? 0,
      flags: shutdownFlagsFor(kind, opts.force ?? false),
      message: opts.message ?? '',
    });
    const response = await this.transact(IcMsgType.SHUTDOWN, body, this.#timeoutMs);
    return response.header.status;
  }
}
