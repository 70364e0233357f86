// What every host-side integration service does the same way: offer versions with a
// NEGOTIATE request when the channel opens, check the guest's answer, then run
// request/response transactions matched by the VMBus transaction id (Linux echoes the
// request id of the packet it answers). Guest input is never trusted: anything malformed
// or unexpected is logged and dropped, and nothing escapes onPacket as an exception.

import type { IcLog, IcTransport } from './ic-transport.js';
import { silentLog } from './ic-transport.js';
import {
  IC_BODY_OFFSET,
  IC_REQUEST_FLAGS,
  IcFlags,
  IcMsgType,
  decodeIcHeader,
  encodeIcMessage,
  encodeNegotiate,
  formatVersion,
  icVersion,
  versionsEqual,
} from './ic-protocol.js';
import type { IcHeader, IcVersion } from './ic-protocol.js';

export type IcServiceState = 'idle' | 'negotiating' | 'ready' | 'failed' | 'closed';

export interface IcVersions {
  readonly frameworkVersion: IcVersion;
  readonly messageVersion: IcVersion;
}

/** A guest's answer to one of our requests. `body` is a private copy. */
export interface IcResponse {
  readonly header: IcHeader;
  readonly body: Uint8Array;
}

/** Raised when the guest does not answer a request in time. */
export class IcTimeoutError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'IcTimeoutError';
  }
}

export interface IcServiceParams {
  /** Prefix for log lines and errors ("heartbeat", "kvp", ...). */
  readonly name: string;
  readonly frameworkVersions: readonly IcVersion[];
  readonly messageVersions: readonly IcVersion[];
  readonly log?: IcLog | undefined;
}

interface PendingTransaction {
  readonly msgType: number;
  readonly complete: (response: IcResponse) => void;
}

export abstract class IcHostService {
  protected readonly log: IcLog;
  protected readonly name: string;
  readonly #transport: IcTransport;
  readonly #frameworkVersions: readonly IcVersion[];
  readonly #messageVersions: readonly IcVersion[];
  #state: IcServiceState = 'idle';
  #versions: IcVersions | undefined;
  #failure: Error | undefined;
  #nextTransactionId = 1n;
  #negotiateTransactionId: bigint | undefined;
  readonly #pending = new Map<bigint, PendingTransaction>();
  readonly #aborts = new Set<(err: Error) => void>();
  readonly #readyWaiters: Array<{ resolve: (v: IcVersions) => void; reject: (e: Error) => void }> = [];

  protected constructor(transport: IcTransport, params: IcServiceParams) {
    this.#transport = transport;
    this.name = params.name;
    this.#frameworkVersions = params.frameworkVersions;
    this.#messageVersions = params.messageVersions;
    const log = params.log ?? silentLog;
    this.log = (msg) => log(`${params.name}: ${msg}`);
  }

  get state(): IcServiceState {
    return this.#state;
  }

  /** The negotiated versions, once the guest has answered NEGOTIATE with a match. */
  get versions(): IcVersions | undefined {
    return this.#versions;
  }

  /** Called once the channel is open: sends NEGOTIATE, the first message on every IC channel. */
  start(): void {
    if (this.#state !== 'idle') {
      this.log(`start() in state ${this.#state} ignored`);
      return;
    }
    this.#state = 'negotiating';
    this.#negotiateTransactionId = this.#send(encodeNegotiate(this.#frameworkVersions, this.#messageVersions));
  }

  /** Resolves with the negotiated versions; rejects if negotiation fails or the service closes first. */
  whenReady(): Promise<IcVersions> {
    if (this.#state === 'ready' && this.#versions !== undefined) return Promise.resolve(this.#versions);
    if (this.#state === 'failed' || this.#state === 'closed') {
      return Promise.reject(this.#failure ?? new Error(`${this.name}: service is ${this.#state}`));
    }
    return new Promise((resolve, reject) => this.#readyWaiters.push({ resolve, reject }));
  }

  /** One in-band packet from the guest. `payload` may alias a ring: whatever is kept is copied. */
  onPacket(payload: Uint8Array, transactionId: bigint): void {
    try {
      this.#dispatch(payload, transactionId);
    } catch (err) {
      this.log(`packet handling failed: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  /** Stops timers and fails whatever is still waiting. Further packets are ignored. */
  close(): void {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    this.#failure = new Error(`${this.name}: service closed`);
    this.#rejectWaiters(this.#failure);
    for (const abort of [...this.#aborts]) abort(this.#failure);
    this.#pending.clear();
    this.onClose();
  }

  /** Hook: the guest agreed on versions (start periodic work here). */
  protected onReady(_versions: IcVersions): void {}

  /** Hook: close() was called (stop timers here). */
  protected onClose(): void {}

  /**
   * Sends one request once negotiation is done and resolves with the guest's answer. The
   * timeout covers the wait for negotiation too, so a guest that never answers anything
   * cannot hang the caller. A request someone awaits keeps the process alive until it
   * settles; background traffic (heartbeats, time samples) passes `keepAlive: false`.
   */
  protected transact(msgType: number, body: Uint8Array, timeoutMs: number, keepAlive = true): Promise<IcResponse> {
    return new Promise<IcResponse>((resolve, reject) => {
      let transactionId: bigint | undefined;
      let settled = false;
      const finish = (settle: () => void): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.#aborts.delete(abort);
        if (transactionId !== undefined) this.#pending.delete(transactionId);
        settle();
      };
      const abort = (err: Error): void => finish(() => reject(err));
      const timer = setTimeout(
        () => abort(new IcTimeoutError(`${this.name}: no answer within ${timeoutMs} ms`)),
        timeoutMs,
      );
      if (!keepAlive) timer.unref();
      this.#aborts.add(abort);

      this.whenReady().then(
        (versions) => {
          if (settled) return;
          const packet = encodeIcMessage(
            { frameworkVersion: versions.frameworkVersion, messageVersion: versions.messageVersion, msgType, flags: IC_REQUEST_FLAGS },
            body,
          );
          transactionId = this.#send(packet);
          this.#pending.set(transactionId, { msgType, complete: (response) => finish(() => resolve(response)) });
        },
        abort,
      );
    });
  }

  #send(packet: Uint8Array): bigint {
    const transactionId = this.#nextTransactionId++;
    this.#transport.send(packet, transactionId);
    return transactionId;
  }

  #dispatch(payload: Uint8Array, transactionId: bigint): void {
    if (this.#state === 'closed') return;
    const header = decodeIcHeader(payload);
    if (header === undefined) {
      this.log(`dropped a ${payload.length}-byte packet: shorter than the ${IC_BODY_OFFSET}-byte headers`);
      return;
    }
    if ((header.flags & IcFlags.RESPONSE) === 0) {
      this.log(`dropped message type ${header.msgType} without the RESPONSE flag (flags 0x${header.flags.toString(16)})`);
      return;
    }
    if (this.#state === 'negotiating' && transactionId === this.#negotiateTransactionId) {
      this.#onNegotiateResponse(header, payload);
      return;
    }
    const pending = this.#pending.get(transactionId);
    if (pending === undefined) {
      this.log(`dropped an answer with unknown transaction id ${transactionId}`);
      return;
    }
    if (header.msgType !== pending.msgType) {
      this.log(`dropped an answer of type ${header.msgType} to a type-${pending.msgType} request`);
      return;
    }
    pending.complete({ header, body: payload.slice(IC_BODY_OFFSET) });
  }

  #onNegotiateResponse(header: IcHeader, payload: Uint8Array): void {
    if (header.msgType !== IcMsgType.NEGOTIATE) {
      this.#fail(`answer to NEGOTIATE has message type ${header.msgType}`);
      return;
    }
    const body = payload.subarray(IC_BODY_OFFSET);
    if (body.length < 4) {
      this.#fail(`negotiate answer body of ${body.length} bytes has no counts`);
      return;
    }
    const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
    const fwCount = view.getUint16(0, true);
    const msgCount = view.getUint16(2, true);
    if (fwCount === 0 && msgCount === 0) {
      this.#fail('the guest supports none of the offered versions');
      return;
    }
    if (fwCount !== 1 || msgCount !== 1) {
      this.#fail(`negotiate answer has counts ${fwCount}/${msgCount}, expected 1/1`);
      return;
    }
    if (body.length < 16) {
      this.#fail(`negotiate answer body of ${body.length} bytes cannot hold two versions`);
      return;
    }
    const frameworkVersion = icVersion(view.getUint16(8, true), view.getUint16(10, true));
    const messageVersion = icVersion(view.getUint16(12, true), view.getUint16(14, true));
    if (!this.#frameworkVersions.some((v) => versionsEqual(v, frameworkVersion))) {
      this.#fail(`the guest chose framework version ${formatVersion(frameworkVersion)}, which was not offered`);
      return;
    }
    if (!this.#messageVersions.some((v) => versionsEqual(v, messageVersion))) {
      this.#fail(`the guest chose message version ${formatVersion(messageVersion)}, which was not offered`);
      return;
    }
    const versions: IcVersions = Object.freeze({ frameworkVersion, messageVersion });
    this.#versions = versions;
    this.#state = 'ready';
    this.log(`negotiated framework ${formatVersion(frameworkVersion)}, message ${formatVersion(messageVersion)}`);
    for (const waiter of this.#readyWaiters.splice(0)) waiter.resolve(versions);
    try {
      this.onReady(versions);
    } catch (err) {
      this.log(`onReady failed: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  #fail(reason: string): void {
    this.log(`negotiation failed: ${reason}`);
    this.#state = 'failed';
    this.#failure = new Error(`${this.name}: negotiation failed: ${reason}`);
    this.#rejectWaiters(this.#failure);
  }

  #rejectWaiters(err: Error): void {
    for (const waiter of this.#readyWaiters.splice(0)) waiter.reject(err);
  }
}
