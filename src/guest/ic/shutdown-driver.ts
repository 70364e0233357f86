// Reference-guest shutdown driver, after shutdown_onchannelcallback in Linux's hv_util.c:
// flags 0/1 shut down, 2/3 restart (S_OK), 4/5 hibernate (S_OK only when the guest can
// hibernate, else E_FAIL), anything else E_FAIL. The answer is sent first and the action
// (here: the onShutdown hook) runs afterwards, as the kernel schedules its work item only
// after vmbus_sendpacket.

import type { IcLog, IcTransport } from '../../devices/ic/ic-transport.js';
import { IC_BODY_OFFSET, IC_SERVICES, IcMsgType, IcStatus, setIcStatus } from '../../devices/ic/ic-protocol.js';
import type { IcHeader } from '../../devices/ic/ic-protocol.js';
import { SHUTDOWN_BODY_SIZE, decodeShutdownBody, shutdownKindFromFlags } from '../../devices/ic/shutdown-protocol.js';
import type { ShutdownKind } from '../../devices/ic/shutdown-protocol.js';
import { IcGuestDriver, UTIL_RECV_BUFFER_SIZE } from './ic-guest-driver.js';

export interface ShutdownDriverOptions {
  /** Runs after the answer went out: the guest's orderly power-off, reboot or hibernate. */
  readonly onShutdown?: (kind: ShutdownKind) => void;
  /** hv_is_hibernation_supported(): false by default, as on a guest without a swap-backed resume device. */
  readonly hibernationSupported?: boolean;
  readonly log?: IcLog;
}

export class ShutdownDriver extends IcGuestDriver {
  readonly #onShutdown: ((kind: ShutdownKind) => void) | undefined;
  readonly #hibernationSupported: boolean;

  constructor(transport: IcTransport, options: ShutdownDriverOptions = {}) {
    const desc = IC_SERVICES.shutdown;
    super(transport, {
      name: desc.name,
      frameworkVersions: desc.frameworkVersions,
      messageVersions: desc.messageVersions,
      maxPacketSize: UTIL_RECV_BUFFER_SIZE,
      log: options.log,
    });
    this.#onShutdown = options.onShutdown;
    this.#hibernationSupported = options.hibernationSupported ?? false;
  }

  protected handleMessage(packet: Uint8Array, header: IcHeader, transactionId: bigint): boolean {
    if (header.msgType !== IcMsgType.SHUTDOWN) {
      this.log(`message type ${header.msgType} answered with E_FAIL`);
      setIcStatus(packet, IcStatus.E_FAIL);
      return true;
    }
    const msg = decodeShutdownBody(packet.subarray(IC_BODY_OFFSET));
    if (msg === undefined) {
      this.log(`dropped a shutdown request of ${packet.length} bytes: needs ${IC_BODY_OFFSET + SHUTDOWN_BODY_SIZE}`);
      return false;
    }
    let kind = shutdownKindFromFlags(msg.flags);
    if (kind === 'hibernate' && !this.#hibernationSupported) {
      this.log('hibernation requested but not supported: E_FAIL');
      kind = undefined;
    } else if (kind === undefined) {
      this.log(`invalid shutdown flags 0x${msg.flags.toString(16)}: E_FAIL`);
    }
    setIcStatus(packet, kind === undefined ? IcStatus.E_FAIL : IcStatus.S_OK);
    this.reply(packet, transactionId);
    if (kind !== undefined) {
      this.log(`${kind} request accepted`);
      try {
        this.#onShutdown?.(kind);
      } catch (err) {
        this.log(`onShutdown failed: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
    return false; // already answered
  }
}
