// One storvsc host adapter (a SCSI controller offer), as Linux's storvsc_drv.c drives it:
// open the primary channel, run the init handshake (storvsc-handshake.ts), ask for
// sub-channels, then carry SCSI requests on every open channel (storvsc-request-engine.ts).
// The controller owns the channels and routes what arrives on them: init replies to the
// handshake, request completions and the reset answer to the engine, the host's own
// messages to the driver.
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { PacketView } from '../../vmbus/ring/ring-reader.js';
import { VSTOR_PACKET_SIZE, VstorOperation } from '../../devices/storvsp/storvsp-protocol.js';
import type { GuestChannel } from '../guest-channel.js';
import type { PageAllocator } from '../page-allocator.js';
import type { GuestBlockRequest } from './guest-block-device.js';
import type { CommandResult, ScsiTarget } from './scsi-command.js';
import { readU32 } from './srb-packet.js';
import { InitRequests, storvscChannelInit } from './storvsc-handshake.js';
import { RequestEngine, type OpenRing } from './storvsc-request-engine.js';

export { CommandResult, DataIn, type ScsiTarget } from './scsi-command.js';
export { STORVSC_MAX_TRANSFER_CAP } from './storvsc-handshake.js';

/** Linux's default storvsc ring (storvsc_ringbuffer_size module parameter): 128 KiB each way. */
export const STORVSC_RING_BYTES = 128 * 1024;
/** Linux waits this long for each init step and each SCSI command (storvsc_timeout, sd's 180 s). */
export const STORVSC_DEFAULT_TIMEOUT_MS = 180_000;
/**
 * Default completion polling after a batch (see StorvscControllerOptions.pollMicros): off.
 * Linux's storvsc has no poll queues either. On a 2-core host the spin takes the CPU the
 * host's StorVSP thread needs: 4k QD32 reads were 9-18% faster without it in 4 of 4
 * interleaved pairs (2026-11-27), and QD1 was no better with it (3.1k-5.1k IOPS both ways).
 */
export const STORVSC_DEFAULT_POLL_MICROS = 0;
/** Bytes of open user data Linux passes (vmstorage_channel_properties), zero padded to 120. */
const OPEN_USER_DATA_BYTES = 120;

export interface StorvscControllerOptions {
  primary: GuestChannel;
  memory: GuestMemory;
  allocator: PageAllocator;
  vpCount: number;
  /** Host number (vm_srb->port_number). */
  portNumber: number;
  initTimeoutMs?: number;
  ioTimeoutMs?: number;
  /** Tags (outstanding commands) of this adapter. */
  maxOutstanding?: number;
  /**
   * After publishing a batch with commands outstanding, watch the rings this long for
   * completions before going back to waiting for an interrupt (blk-mq's hybrid polling).
   * Each avoided interrupt saves two thread wake-ups in the process partition, which
   * dominate the latency of small I/O. 0 turns it off.
   */
  pollMicros?: number;
  /** Called when work is queued for the next turn of the event loop (see Poller.keepAwake). */
  keepAwake?: () => void;
  log: (message: string) => void;
  /** Unsolicited ENUMERATE_BUS / REMOVE_DEVICE: rescan (storvsc_host_scan). */
  onBusChange: () => void;
  /** A command got INVALID_LUN: the LUN is gone (storvsc_remove_lun). */
  onInvalidLun: (target: ScsiTarget) => void;
  /** UNIT ATTENTION 2A/09: capacity changed; re-read it (storvsc's rescan of the LUN). */
  onCapacityChanged: (target: ScsiTarget) => void;
}

export class StorvscController {
  readonly primary: GuestChannel;
  /** Negotiated vstor protocol version (major << 8 | minor), 0 before the handshake. */
  version = 0;
  maxTransferBytes = 0;
  maxChannelCount = 0;
  multiChannel = false;
  /** Sub-channels asked for (0 when not multi-channel). */
  subChannelsRequested = 0;
  readonly stats: RequestEngine['stats'];

  private readonly options: StorvscControllerOptions;
  /** Open channels, primary first; the engine sends on the same array. */
  private readonly rings: OpenRing[] = [];
  private readonly requests: RequestEngine;
  // Control requests (init handshake).
  private readonly init: InitRequests;

  constructor(options: StorvscControllerOptions) {
    this.options = options;
    this.primary = options.primary;
    this.init = new InitRequests(options.primary, options.initTimeoutMs ?? STORVSC_DEFAULT_TIMEOUT_MS);
    this.requests = new RequestEngine(options, this.rings, options.ioTimeoutMs ?? STORVSC_DEFAULT_TIMEOUT_MS, options.pollMicros ?? STORVSC_DEFAULT_POLL_MICROS);
    this.stats = this.requests.stats;
  }

  /**
   * The per-command timeout from now on. Commands are checked on a coarse tick (an eighth
   * of the timeout, 5 ms .. 1 s) rather than by a timer each.
   */
  setIoTimeout(ms: number): void {
    this.requests.setIoTimeout(ms);
  }

  /** The VP each open channel interrupts, primary first. */
  channelVps(): number[] {
    return this.rings.map((r) => r.channel.targetVp);
  }

  get channelCount(): number {
    return this.rings.length;
  }

  get outstanding(): number {
    return this.requests.outstanding;
  }

  // ---- probe: open and handshake ----

  /** Opens the primary channel and runs storvsc_channel_init. */
  async start(): Promise<void> {
    await this.openRing(this.primary, 0);
    await storvscChannelInit(this.init, this.options.vpCount, this, () => this.requests.sizeEncoding(this.maxTransferBytes));
  }

  /** A sub-channel offer (storvsc_handle_sc_creation): open it on its own VP and use it for I/O. */
  async addSubchannel(sub: GuestChannel): Promise<void> {
    if (this.requests.closed) return;
    // Linux spreads channel interrupts over the CPUs (init_vp_index); sub-channel i gets VP i.
    await this.openRing(sub, sub.subChannelIndex % Math.max(1, this.options.vpCount));
    if (this.requests.closed) await sub.close().catch(() => {});
  }

  /** A sub-channel went away (rescind, unload): stop sending on it. */
  async removeSubchannel(sub: GuestChannel): Promise<void> {
    const i = this.rings.findIndex((r) => r.channel === sub);
    if (i > 0) this.rings.splice(i, 1);
    await sub.close();
  }

  private async openRing(channel: GuestChannel, targetVp: number): Promise<void> {
    const ring: OpenRing = { channel, batched: false, staged: 0 };
    await channel.open({
      sendRingBytes: STORVSC_RING_BYTES,
      receiveRingBytes: STORVSC_RING_BYTES,
      maxPacketBytes: 4096,
      userData: new Uint8Array(OPEN_USER_DATA_BYTES),
      targetVp,
      onPacket: (packet, payload) => this.onPacket(packet, payload),
    });
    if (channel === this.primary) this.rings.unshift(ring);
    else this.rings.push(ring);
  }

  // ---- receive ----

  private onPacket(packet: PacketView, payload: Uint8Array): void {
    const low = packet.transactionIdLow;
    const high = packet.transactionIdHigh;
    // storvsc_on_channel_callback: a request id of 0 is the host's own message and needs
    // only the operation field; everything else must be a whole vstor_packet.
    if (low === 0 && high === 0) return this.onUnsolicited(payload);
    if (payload.length < VSTOR_PACKET_SIZE) {
      this.stats.dropped++;
      this.options.log(`storvsc: reply of ${payload.length} bytes is shorter than a vstor_packet: dropped`);
      return;
    }
    if (high === 0xffffffff) {
      if (low === 0xfffffffd) {
        if (!this.init.onReply(payload)) this.stats.dropped++;
        return;
      }
      if (low === 0xfffffffc) return this.requests.onResetReply();
    }
    this.requests.onReply(high * 0x1_0000_0000 + low - 1, payload);
  }

  private onUnsolicited(payload: Uint8Array): void {
    if (payload.length < 4) return;
    const operation = readU32(payload, 0);
    this.stats.unsolicited++;
    if (operation === VstorOperation.EnumerateBus || operation === VstorOperation.RemoveDevice) {
      this.options.onBusChange();
      return;
    }
    // COMPLETE_IO / FCHBA_DATA with request id 0 are rejected, anything else ignored.
    this.options.log(`storvsc: unsolicited operation ${operation} ignored`);
  }

  // ---- requests ----

  /** Queues a block request for `target` (GuestBlockDevice.submit); done() is never called from here. */
  submitBlock(target: ScsiTarget, request: GuestBlockRequest): void {
    this.requests.submitBlock(target, request);
  }

  /** Sends one internal SCSI command (scan, sd setup, TEST UNIT READY); control path only. */
  command(target: ScsiTarget, build: (cdb: Uint8Array) => number, dataIn: number, gpa: number, length: number): Promise<CommandResult> {
    return this.requests.command(target, build, dataIn, gpa, length);
  }

  /** RESET_BUS (storvsc_host_reset_handler), request id U64_MAX - 3. */
  resetBus(pathId: number): void {
    this.requests.resetBus(pathId);
  }

  /** Fails every queued (not yet issued) request of a removed device with -ENODEV. */
  failQueued(target: ScsiTarget): void {
    this.requests.failQueued(target);
  }

  /** Controller removal: close every channel and fail everything outstanding with -ENODEV. */
  async close(): Promise<void> {
    if (this.requests.closed) return;
    this.requests.stop();
    this.init.cancel('the controller was removed');
    const rings = this.rings.splice(0);
    for (const ring of rings.reverse()) await ring.channel.close().catch(() => {});
    this.requests.failAll();
  }
}
