// storvsc_channel_init: the init handshake on the primary channel. Init steps go out one at
// a time under the reserved transaction id U64_MAX - 2; the protocol version falls back
// through Linux's list until the host accepts one, and QUERY_PROPERTIES gives the transfer
// limit and whether sub-channels may be asked for.
import { PAGE_SIZE } from '../../memory/page.js';
import { PACKET_FLAG_COMPLETION_REQUESTED, PacketType } from '../../vmbus/packet.js';
import {
  INIT_TRANSACTION_ID,
  LINUX_VERSION_ORDER,
  REQUEST_COMPLETION_FLAG,
  STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL,
  VSTOR_PACKET_SIZE,
  VstorOperation,
  encodeProtocolVersion,
  encodeSubChannelCount,
  encodeVstorHeader,
  decodeVstorPacket,
  VstorPacket,
} from '../../devices/storvsp/storvsp-protocol.js';
import type { GuestChannel } from '../guest-channel.js';

/** Our cap on max_transfer_bytes: bounds the per-request page list whatever the host says. */
export const STORVSC_MAX_TRANSFER_CAP = 2 * 1024 * 1024;

/** What the handshake settles (StorvscController exposes these fields). */
export interface NegotiatedChannel {
  /** Negotiated vstor protocol version (major << 8 | minor), 0 before the handshake. */
  version: number;
  maxTransferBytes: number;
  maxChannelCount: number;
  multiChannel: boolean;
  /** Sub-channels asked for (0 when not multi-channel). */
  subChannelsRequested: number;
}

/** The init-step requests on the primary channel: at most one outstanding, each with a timeout. */
export class InitRequests {
  private pending: { resolve: (reply: VstorPacket) => void; reject: (e: Error) => void; timer: NodeJS.Timeout } | null = null;

  constructor(
    private readonly primary: GuestChannel,
    private readonly timeoutMs: number,
  ) {}

  /** An init-step request on the primary (transaction id U64_MAX - 2); resolves with the reply. */
  request(operation: number, what: string, fill?: (p: Uint8Array) => void): Promise<VstorPacket> {
    if (this.pending) return Promise.reject(new Error(`${what}: another init request is outstanding`));
    const p = new Uint8Array(VSTOR_PACKET_SIZE);
    encodeVstorHeader(p, 0, operation, REQUEST_COMPLETION_FLAG, 0);
    fill?.(p);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending = null;
        reject(new Error(`${what}: no reply from the host within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.pending = { resolve, reject, timer };
      if (!this.primary.ring?.send(p, INIT_TRANSACTION_ID, PacketType.DataInband, PACKET_FLAG_COMPLETION_REQUESTED)) {
        clearTimeout(timer);
        this.pending = null;
        reject(new Error(`${what}: the channel cannot send`));
      }
    });
  }

  /** An init step that must be answered COMPLETE_IO with status 0 (storvsc_execute_vstor_op). */
  async step(operation: number, what: string, fill?: (p: Uint8Array) => void): Promise<VstorPacket> {
    const reply = await this.request(operation, what, fill);
    if (reply.status !== 0) throw new Error(`${what} failed: status 0x${reply.status.toString(16)}`);
    return reply;
  }

  /** A reply under the init transaction id; false when no init request was waiting for it. */
  onReply(payload: Uint8Array): boolean {
    const pending = this.pending;
    if (!pending) return false;
    this.pending = null;
    clearTimeout(pending.timer);
    const reply = new VstorPacket();
    decodeVstorPacket(payload, 0, payload.length, reply);
    if (reply.operation !== VstorOperation.CompleteIo) pending.reject(new Error(`init step answered with operation ${reply.operation}, not COMPLETE_IO`));
    else pending.resolve(reply);
    return true;
  }

  /** Fails the outstanding init request, if any (controller removal). */
  cancel(reason: string): void {
    if (!this.pending) return;
    clearTimeout(this.pending.timer);
    this.pending.reject(new Error(reason));
    this.pending = null;
  }
}

/**
 * Runs the init sequence on the (open) primary and records what it settles in `negotiated`
 * as it goes. `onTransferLimit` runs once max_transfer_bytes is known, before
 * END_INITIALIZATION, so per-request buffers can be sized to it.
 */
export async function storvscChannelInit(init: InitRequests, vpCount: number, negotiated: NegotiatedChannel, onTransferLimit: () => void): Promise<void> {
  await init.step(VstorOperation.BeginInitialization, 'BEGIN_INITIALIZATION');
  for (const version of LINUX_VERSION_ORDER) {
    const reply = await init.request(VstorOperation.QueryProtocolVersion, 'QUERY_PROTOCOL_VERSION', (p) => encodeProtocolVersion(p, 0, version));
    if (reply.status === 0) {
      negotiated.version = version;
      break;
    }
  }
  if (negotiated.version === 0) throw new Error('Obsolete Hyper-V version: the host refused vstor protocols 6.2, 6.0 and 5.1');
  const props = await init.step(VstorOperation.QueryProperties, 'QUERY_PROPERTIES');
  negotiated.maxChannelCount = props.maxChannelCount;
  negotiated.multiChannel = (props.propertiesFlags & STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL) !== 0;
  // storvsc_probe: round down to pages; a zero limit leaves the block layer's minimum (4 KiB).
  const rounded = Math.floor(props.maxTransferBytes / PAGE_SIZE) * PAGE_SIZE;
  negotiated.maxTransferBytes = Math.min(STORVSC_MAX_TRANSFER_CAP, Math.max(PAGE_SIZE, rounded));
  onTransferLimit();
  await init.step(VstorOperation.EndInitialization, 'END_INITIALIZATION');
  if (negotiated.multiChannel) {
    const count = Math.min(vpCount - 1, negotiated.maxChannelCount);
    if (count > 0) {
      negotiated.subChannelsRequested = count;
      await init.step(VstorOperation.CreateSubChannels, 'CREATE_SUB_CHANNELS', (p) => encodeSubChannelCount(p, 0, count));
    }
  }
}
