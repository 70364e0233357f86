// Reference-guest heartbeat driver, after heartbeat_onchannelcallback in Linux's
// hv_util.c: answer each heartbeat with seq_num + 1 in the same buffer; drop one too short
// to hold seq_num; answer any other message type with E_FAIL.

import type { IcLog, IcTransport } from '../../devices/ic/ic-transport.js';
import { IC_BODY_OFFSET, IC_SERVICES, IcMsgType, IcStatus, setIcStatus } from '../../devices/ic/ic-protocol.js';
import type { IcHeader } from '../../devices/ic/ic-protocol.js';
import { HEARTBEAT_MIN_BODY_SIZE, decodeHeartbeatSequence, incrementHeartbeatInPlace } from '../../devices/ic/heartbeat-protocol.js';
import { IcGuestDriver, UTIL_RECV_BUFFER_SIZE } from './ic-guest-driver.js';

export interface HeartbeatDriverOptions {
  readonly log?: IcLog;
}

export class HeartbeatDriver extends IcGuestDriver {
  #answered = 0;
  #lastSequence: bigint | undefined;

  constructor(transport: IcTransport, options: HeartbeatDriverOptions = {}) {
    const desc = IC_SERVICES.heartbeat;
    super(transport, {
      name: desc.name,
      frameworkVersions: desc.frameworkVersions,
      messageVersions: desc.messageVersions,
      maxPacketSize: UTIL_RECV_BUFFER_SIZE,
      log: options.log,
    });
  }

  /** Heartbeats answered so far. */
  get answered(): number {
    return this.#answered;
  }

  /** The sequence number of the latest heartbeat received (before adding one). */
  get lastSequence(): bigint | undefined {
    return this.#lastSequence;
  }

  protected handleMessage(packet: Uint8Array, header: IcHeader): boolean {
    if (header.msgType !== IcMsgType.HEARTBEAT) {
      this.log(`message type ${header.msgType} answered with E_FAIL`);
      setIcStatus(packet, IcStatus.E_FAIL);
      return true;
    }
    const body = packet.subarray(IC_BODY_OFFSET);
    if (body.length < HEARTBEAT_MIN_BODY_SIZE) {
      this.log(`dropped a heartbeat of ${packet.length} bytes: no room for seq_num`);
      return false;
    }
    this.#lastSequence = decodeHeartbeatSequence(body);
    incrementHeartbeatInPlace(body);
    this.#answered++;
    return true;
  }
}
