// What Linux's hv_utils callbacks share (drivers/hv/hv_util.c, hv_kvp.c): read the packet
// into the driver's own receive buffer, drop it if it is empty, too large for that buffer
// or shorter than the two headers, answer NEGOTIATE with vmbus_prep_negotiate_resp, hand
// everything else to the service, and send the answer back in the same buffer, at the
// received length, with flags TRANSACTION|RESPONSE and the request's transaction id.
//
// Like Linux, the drivers look at neither the pipe header nor the REQUEST flag nor the
// versions in the icmsg header of a request.

import type { IcLog, IcTransport } from '../../devices/ic/ic-transport.js';
import { silentLog } from '../../devices/ic/ic-transport.js';
import {
  IC_BODY_OFFSET,
  IC_RESPONSE_FLAGS,
  IcMsgType,
  decodeIcHeader,
  formatVersion,
  prepareNegotiateResponse,
  setIcFlags,
} from '../../devices/ic/ic-protocol.js';
import type { IcHeader, IcVersion } from '../../devices/ic/ic-protocol.js';

/** vmbus_recvpacket's buffer for heartbeat, shutdown and timesync: one page. */
export const UTIL_RECV_BUFFER_SIZE = 4096;

export interface IcGuestNegotiation {
  /** Whether a framework and a message version matched (counts 1/1 in the answer). */
  readonly matched: boolean;
  readonly frameworkVersion: IcVersion;
  /** What the kernel records as the service version, even when nothing matched. */
  readonly messageVersion: IcVersion;
}

export interface IcGuestDriverParams {
  readonly name: string;
  readonly frameworkVersions: readonly IcVersion[];
  readonly messageVersions: readonly IcVersion[];
  /** Packets larger than this are dropped (Linux cannot read them into its buffer). */
  readonly maxPacketSize: number;
  readonly log?: IcLog | undefined;
}

export abstract class IcGuestDriver {
  protected readonly log: IcLog;
  readonly #transport: IcTransport;
  readonly #params: IcGuestDriverParams;
  #negotiation: IcGuestNegotiation | undefined;
  #closed = false;

  protected constructor(transport: IcTransport, params: IcGuestDriverParams) {
    this.#transport = transport;
    this.#params = params;
    const log = params.log ?? silentLog;
    this.log = (msg) => log(`${params.name} (guest): ${msg}`);
  }

  /** The outcome of the latest NEGOTIATE, as the kernel recorded it. */
  get negotiation(): IcGuestNegotiation | undefined {
    return this.#negotiation;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** One in-band packet from the host; `payload` may alias a ring and is copied first. */
  onPacket(payload: Uint8Array, transactionId: bigint): void {
    try {
      this.#receive(payload, transactionId);
    } catch (err) {
      this.log(`packet handling failed: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  close(): void {
    this.#closed = true;
    this.onClose();
  }

  /** Hook for close(). */
  protected onClose(): void {}

  /**
   * Handles a non-NEGOTIATE message in `packet` (the driver's own copy, exactly as long as
   * what was received). Returns true to send `packet` back as the answer.
   */
  protected abstract handleMessage(packet: Uint8Array, header: IcHeader, transactionId: bigint): boolean;

  /** Sends `packet` back as the answer: flags TRANSACTION|RESPONSE, same length, same transaction id. */
  protected reply(packet: Uint8Array, transactionId: bigint): void {
    if (this.#closed) return;
    setIcFlags(packet, IC_RESPONSE_FLAGS);
    this.#transport.send(packet, transactionId);
  }

  #receive(payload: Uint8Array, transactionId: bigint): void {
    if (this.#closed) return;
    if (payload.length === 0) return;
    if (payload.length > this.#params.maxPacketSize) {
      this.log(`dropped a ${payload.length}-byte packet: larger than the ${this.#params.maxPacketSize}-byte receive buffer`);
      return;
    }
    if (payload.length < IC_BODY_OFFSET) {
      this.log(`dropped a ${payload.length}-byte packet: shorter than the ${IC_BODY_OFFSET}-byte headers`);
      return;
    }
    const packet = payload.slice();
    const header = decodeIcHeader(packet);
    if (header === undefined) return;
    if (header.msgType === IcMsgType.NEGOTIATE) {
      const outcome = prepareNegotiateResponse(packet, this.#params.frameworkVersions, this.#params.messageVersions);
      if (outcome === undefined) {
        this.log(`NEGOTIATE of ${packet.length} bytes cannot hold the version counts; answered unchanged`);
      } else {
        this.#negotiation = outcome;
        if (outcome.matched) {
          this.log(`negotiated framework ${formatVersion(outcome.frameworkVersion)}, message ${formatVersion(outcome.messageVersion)}`);
        } else {
          this.log('no common version with the host; answered with counts 0/0');
        }
      }
      this.reply(packet, transactionId);
      return;
    }
    if (this.handleMessage(packet, header, transactionId)) this.reply(packet, transactionId);
  }
}
