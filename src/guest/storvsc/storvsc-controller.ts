// One storvsc host adapter (a SCSI controller offer), as Linux's storvsc_drv.c drives it:
// open the primary channel, run the init handshake, ask for sub-channels, then carry SCSI
// requests on every open channel. Requests are identified by a tag (transaction id =
// tag + 1, like blk-mq's unique tag + 1); per-tag state is preallocated, the submit path
// allocates nothing and creates no Promise, and packets written in one JS turn are
// published with one signal per ring (Linux's commit_rqs).
import type { GuestMemory } from '../../memory/guest-memory.js';
import { PAGE_SIZE } from '../../memory/page.js';
import { PACKET_FLAG_COMPLETION_REQUESTED, PacketType } from '../../vmbus/packet.js';
import type { PacketView } from '../../vmbus/ring/ring-reader.js';
import {
  INIT_TRANSACTION_ID,
  LINUX_VERSION_ORDER,
  REQUEST_COMPLETION_FLAG,
  RESET_TRANSACTION_ID,
  SrbStatus,
  STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL,
  VMSCSI_REQUEST_SIZE,
  VMSCSI_SENSE_BYTES,
  VSTOR_PACKET_SIZE,
  VstorField,
  VstorOperation,
  encodeProtocolVersion,
  encodeSubChannelCount,
  encodeVstorHeader,
  decodeVstorPacket,
  VstorPacket,
} from '../../devices/storvsp/storvsp-protocol.js';
import type { GuestChannel } from '../guest-channel.js';
import type { PageAllocator } from '../page-allocator.js';
import { BlockOp, type GuestBlockRequest } from './guest-block-device.js';
import * as cdbs from './scsi-cdb.js';
import { Errno, parseSense, SenseKey, senseToErrno, type SenseData } from './scsi-replies.js';

/** Linux's default storvsc ring (storvsc_ringbuffer_size module parameter): 128 KiB each way. */
export const STORVSC_RING_BYTES = 128 * 1024;
/** Linux waits this long for each init step and each SCSI command (storvsc_timeout, sd's 180 s). */
export const STORVSC_DEFAULT_TIMEOUT_MS = 180_000;
/** Default completion polling after a batch (see StorvscControllerOptions.pollMicros). */
export const STORVSC_DEFAULT_POLL_MICROS = 100;
/** Our cap on max_transfer_bytes: bounds the per-request page list whatever the host says. */
export const STORVSC_MAX_TRANSFER_CAP = 2 * 1024 * 1024;
/** Retries of a command the midlayer would retry (UNIT ATTENTION, BUSY, error without sense). */
const MAX_RETRIES = 5;
/** Bytes of open user data Linux passes (vmstorage_channel_properties), zero padded to 120. */
const OPEN_USER_DATA_BYTES = 120;

const SRB_FLAGS_QUEUE_ACTION_ENABLE = 0x02;
const SRB_FLAGS_DISABLE_SYNCH_TRANSFER = 0x08;
const SRB_FLAGS_DATA_IN = 0x40;
const SRB_FLAGS_DATA_OUT = 0x80;
const SRB_FLAGS_NO_QUEUE_FREEZE = 0x100;
const SP_UNTAGGED = 0xff;
const SRB_SIMPLE_TAG_REQUEST = 0x20;
/** vmscsi_request.data_in. */
export const DataIn = { Write: 0, Read: 1, None: 2 } as const;
/** time_out_value Linux puts in every SRB (seconds). */
const SRB_TIMEOUT_SECONDS = 60;

const SLOT_FREE = 0;
const SLOT_BUSY = 1;
/** Timed out and completed to its owner; the tag stays out of use until the host answers it. */
const SLOT_ABANDONED = 2;

const Errno_EOPNOTSUPP = 95;

/** What the midlayer learns from one SCSI command (the scan and sd setup use it). */
export class CommandResult {
  /** 0, or -errno when the command never got a SCSI answer (-ETIMEDOUT, -ENODEV, -EIO). */
  error = 0;
  srbStatus = 0;
  scsiStatus = 0;
  /** data_transfer_length of the reply (0 unless the SRB status is SUCCESS or DATA_OVERRUN). */
  transferred = 0;
  readonly sense = new Uint8Array(VMSCSI_SENSE_BYTES);
  /** Bytes of valid sense (only with CHECK CONDITION and autosense valid). */
  senseLength = 0;

  get good(): boolean {
    const srb = this.srbStatus & 0x3f;
    return this.error === 0 && (srb === SrbStatus.Success || srb === SrbStatus.DataOverrun) && this.scsiStatus === 0;
  }

  senseData(): SenseData | null {
    const s: SenseData = { key: 0, asc: 0, ascq: 0 };
    return this.senseLength > 0 && parseSense(this.sense, this.senseLength, s) ? s : null;
  }
}

/** The addressing and per-device state a request needs (StorvscDisk implements it). */
export interface ScsiTarget {
  readonly channel: number;
  readonly target: number;
  readonly lun: number;
  /** Tagged queueing (INQUIRY CmdQue): selects the SRB queue fields Linux sets. */
  tagged: boolean;
  present: boolean;
  sizeBytes: number;
  blockBytes: number;
  discard: boolean;
  /** Largest data chunk per command (max_transfer_bytes and VPD B0 limits). */
  maxChunkBytes: number;
  /** Largest UNMAP descriptor, in blocks. */
  maxUnmapBlocks: number;
  writeCache: boolean;
  fua: boolean;
  use16: boolean;
  /** The last sense seen on this device (CHECK CONDITION with autosense). */
  readonly lastSense: SenseData;
}

const JobKind = { Block: 0, Command: 1 } as const;

/** One upper-layer request: a block request (possibly split) or a single internal command. */
class Job {
  kind: number = JobKind.Block;
  target: ScsiTarget | null = null;
  request: GuestBlockRequest | null = null;
  op: number = BlockOp.Read;
  fua = false;
  /** Emulate FUA with a flush after the write (write cache on, DPOFUA off), like blk-flush. */
  postFlush = false;
  start = 0;
  next = 0;
  end = 0;
  gpa = 0;
  inflight = 0;
  result = 0;
  waiting = false;
  // Internal command:
  readonly cdb = new Uint8Array(16);
  cdbLength = 0;
  dataIn: number = DataIn.None;
  length = 0;
  commandResult: CommandResult | null = null;
  resolve: ((r: CommandResult) => void) | null = null;
}

class Slot {
  state = SLOT_FREE;
  job: Job | null = null;
  issuedTick = 0;
  retries = 0;
  // What was sent (kept for retries).
  readonly cdb = new Uint8Array(16);
  cdbLength = 0;
  dataIn: number = DataIn.None;
  gpa = 0;
  length = 0;
  /** Guest page holding this tag's UNMAP parameter list (allocated on first discard), or -1. */
  unmapPfn = -1;
  constructor(readonly tag: number) {}
}

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
  log: (message: string) => void;
  /** Unsolicited ENUMERATE_BUS / REMOVE_DEVICE: rescan (storvsc_host_scan). */
  onBusChange: () => void;
  /** A command got INVALID_LUN: the LUN is gone (storvsc_remove_lun). */
  onInvalidLun: (target: ScsiTarget) => void;
  /** UNIT ATTENTION 2A/09: capacity changed; re-read it (storvsc's rescan of the LUN). */
  onCapacityChanged: (target: ScsiTarget) => void;
}

interface OpenRing {
  channel: GuestChannel;
  batched: boolean;
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
  readonly stats = { commands: 0, completions: 0, retries: 0, timeouts: 0, resets: 0, dropped: 0, unsolicited: 0 };

  private readonly memory: GuestMemory;
  private readonly options: StorvscControllerOptions;
  private readonly initTimeoutMs: number;
  private ioTimeoutMs: number;
  private readonly rings: OpenRing[] = [];
  private readonly slots: Slot[] = [];
  /** Free tags, used round-robin (FIFO) so consecutive requests spread over the channels. */
  private readonly freeTags: Int32Array;
  private freeHead = 0;
  private freeCount = 0;
  private busy = 0;
  private readonly jobPool: Job[] = [];
  private readonly waitingJobs: Job[] = [];
  private waitingHead = 0;
  private readonly deferred: Job[] = [];
  private tickScheduled = false;
  private readonly onTickBound = () => this.onTick();
  // Encoding scratch.
  private readonly packet = new Uint8Array(VSTOR_PACKET_SIZE);
  private gpaHeader = new Uint8Array(16);
  private gpaHeaderViews: Uint8Array[] = [];
  private readonly senseScratch: SenseData = { key: 0, asc: 0, ascq: 0 };
  // Control requests (init handshake).
  private control: { resolve: (reply: VstorPacket) => void; reject: (e: Error) => void; timer: NodeJS.Timeout } | null = null;
  private resetInFlight = false;
  // Timeouts: a coarse tick instead of a timer per request.
  private tick = 0;
  private timer: NodeJS.Timeout | null = null;
  private tickMs = 1000;
  private timeoutTicks = 1;
  private closed = false;
  private readonly pollMs: number;

  constructor(options: StorvscControllerOptions) {
    this.options = options;
    this.primary = options.primary;
    this.memory = options.memory;
    this.initTimeoutMs = options.initTimeoutMs ?? STORVSC_DEFAULT_TIMEOUT_MS;
    this.ioTimeoutMs = options.ioTimeoutMs ?? STORVSC_DEFAULT_TIMEOUT_MS;
    this.setIoTimeout(this.ioTimeoutMs);
    this.pollMs = Math.max(0, options.pollMicros ?? STORVSC_DEFAULT_POLL_MICROS) / 1000;
    const tags = options.maxOutstanding ?? 256;
    this.freeTags = new Int32Array(tags);
    for (let t = 0; t < tags; t++) {
      this.slots.push(new Slot(t));
      this.freeTags[t] = t;
    }
    this.freeCount = tags;
  }

  /**
   * The per-command timeout from now on. Commands are checked on a coarse tick (an eighth
   * of the timeout, 5 ms .. 1 s) rather than by a timer each.
   */
  setIoTimeout(ms: number): void {
    if (!Number.isFinite(ms) || ms <= 0) throw new RangeError('the I/O timeout must be a positive number of milliseconds');
    this.ioTimeoutMs = ms;
    this.tickMs = Math.max(5, Math.min(1000, Math.floor(ms / 8)));
    this.timeoutTicks = Math.max(1, Math.ceil(ms / this.tickMs));
    if (this.timer !== null) {
      clearInterval(this.timer);
      this.timer = null;
      this.armTimer();
    }
  }

  /** The VP each open channel interrupts, primary first. */
  channelVps(): number[] {
    return this.rings.map((r) => r.channel.targetVp);
  }

  get channelCount(): number {
    return this.rings.length;
  }

  get outstanding(): number {
    return this.busy;
  }

  // ---- probe: open and handshake ----

  /** Opens the primary channel and runs storvsc_channel_init. */
  async start(): Promise<void> {
    await this.openRing(this.primary, 0);
    await this.controlStep(VstorOperation.BeginInitialization, 'BEGIN_INITIALIZATION');
    for (const version of LINUX_VERSION_ORDER) {
      const reply = await this.controlRequest(VstorOperation.QueryProtocolVersion, 'QUERY_PROTOCOL_VERSION', (p) => encodeProtocolVersion(p, 0, version));
      if (reply.status === 0) {
        this.version = version;
        break;
      }
    }
    if (this.version === 0) throw new Error('Obsolete Hyper-V version: the host refused vstor protocols 6.2, 6.0 and 5.1');
    const props = await this.controlStep(VstorOperation.QueryProperties, 'QUERY_PROPERTIES');
    this.maxChannelCount = props.maxChannelCount;
    this.multiChannel = (props.propertiesFlags & STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL) !== 0;
    // storvsc_probe: round down to pages; a zero limit leaves the block layer's minimum (4 KiB).
    const rounded = Math.floor(props.maxTransferBytes / PAGE_SIZE) * PAGE_SIZE;
    this.maxTransferBytes = Math.min(STORVSC_MAX_TRANSFER_CAP, Math.max(PAGE_SIZE, rounded));
    this.sizeEncoding();
    await this.controlStep(VstorOperation.EndInitialization, 'END_INITIALIZATION');
    if (this.multiChannel) {
      const count = Math.min(this.options.vpCount - 1, this.maxChannelCount);
      if (count > 0) {
        this.subChannelsRequested = count;
        await this.controlStep(VstorOperation.CreateSubChannels, 'CREATE_SUB_CHANNELS', (p) => encodeSubChannelCount(p, 0, count));
      }
    }
  }

  /** A sub-channel offer (storvsc_handle_sc_creation): open it on its own VP and use it for I/O. */
  async addSubchannel(sub: GuestChannel): Promise<void> {
    if (this.closed) return;
    // Linux spreads channel interrupts over the CPUs (init_vp_index); sub-channel i gets VP i.
    await this.openRing(sub, sub.subChannelIndex % Math.max(1, this.options.vpCount));
    if (this.closed) await sub.close().catch(() => {});
  }

  /** A sub-channel went away (rescind, unload): stop sending on it. */
  async removeSubchannel(sub: GuestChannel): Promise<void> {
    const i = this.rings.findIndex((r) => r.channel === sub);
    if (i > 0) this.rings.splice(i, 1);
    await sub.close();
  }

  private async openRing(channel: GuestChannel, targetVp: number): Promise<void> {
    const ring: OpenRing = { channel, batched: false };
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

  /** An init-step request on the primary (transaction id U64_MAX - 2); resolves with the reply. */
  private controlRequest(operation: number, what: string, fill?: (p: Uint8Array) => void): Promise<VstorPacket> {
    if (this.control) return Promise.reject(new Error(`${what}: another init request is outstanding`));
    const p = new Uint8Array(VSTOR_PACKET_SIZE);
    encodeVstorHeader(p, 0, operation, REQUEST_COMPLETION_FLAG, 0);
    fill?.(p);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.control = null;
        reject(new Error(`${what}: no reply from the host within ${this.initTimeoutMs} ms`));
      }, this.initTimeoutMs);
      this.control = { resolve, reject, timer };
      if (!this.primary.ring?.send(p, INIT_TRANSACTION_ID, PacketType.DataInband, PACKET_FLAG_COMPLETION_REQUESTED)) {
        clearTimeout(timer);
        this.control = null;
        reject(new Error(`${what}: the channel cannot send`));
      }
    });
  }

  /** An init step that must be answered COMPLETE_IO with status 0 (storvsc_execute_vstor_op). */
  private async controlStep(operation: number, what: string, fill?: (p: Uint8Array) => void): Promise<VstorPacket> {
    const reply = await this.controlRequest(operation, what, fill);
    if (reply.status !== 0) throw new Error(`${what} failed: status 0x${reply.status.toString(16)}`);
    return reply;
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
      if (low === 0xfffffffd) return this.onControlReply(payload);
      if (low === 0xfffffffc) {
        this.resetInFlight = false;
        return;
      }
    }
    const tag = high * 0x1_0000_0000 + low - 1;
    const slot = tag < this.slots.length ? this.slots[tag]! : undefined;
    if (slot === undefined || slot.state === SLOT_FREE) {
      this.stats.dropped++;
      this.options.log(`storvsc: completion for unknown request id ${tag + 1}: dropped`);
      return;
    }
    if (slot.state === SLOT_ABANDONED) {
      // Its owner already got -ETIMEDOUT: a late answer only frees the tag.
      this.releaseSlot(slot);
      this.pump();
      return;
    }
    // storvsc_on_receive ignores anything but COMPLETE_IO for a request: it stays pending.
    if (readU32(payload, VstorField.Operation) !== VstorOperation.CompleteIo) {
      this.stats.dropped++;
      return;
    }
    this.stats.completions++;
    this.onCompletion(slot, payload);
  }

  private onControlReply(payload: Uint8Array): void {
    const control = this.control;
    if (!control) {
      this.stats.dropped++;
      return;
    }
    this.control = null;
    clearTimeout(control.timer);
    const reply = new VstorPacket();
    decodeVstorPacket(payload, 0, payload.length, reply);
    if (reply.operation !== VstorOperation.CompleteIo) control.reject(new Error(`init step answered with operation ${reply.operation}, not COMPLETE_IO`));
    else control.resolve(reply);
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

  private onCompletion(slot: Slot, payload: Uint8Array): void {
    const srb = payload[VstorField.SrbStatus]!;
    const scsi = payload[VstorField.ScsiStatus]!;
    const code = srb & 0x3f;
    const ok = code === SrbStatus.Success || code === SrbStatus.DataOverrun;
    // Linux forces the transferred length to 0 on any other SRB status.
    const transferred = ok ? readU32(payload, VstorField.DataTransferLength) : 0;
    const job = slot.job!;
    const target = job.target;
    // Sense reaches the midlayer only with CHECK CONDITION and autosense valid.
    let senseLength = 0;
    if (scsi === 0x02 && (srb & SrbStatus.AutosenseValid) !== 0) {
      senseLength = Math.min(payload[VstorField.SenseInfoLength]!, VMSCSI_SENSE_BYTES);
      if (target && parseSense(payload.subarray(VstorField.CdbOrSense, VstorField.CdbOrSense + senseLength), senseLength, this.senseScratch)) {
        target.lastSense.key = this.senseScratch.key;
        target.lastSense.asc = this.senseScratch.asc;
        target.lastSense.ascq = this.senseScratch.ascq;
      } else if (!target) {
        parseSense(payload.subarray(VstorField.CdbOrSense, VstorField.CdbOrSense + senseLength), senseLength, this.senseScratch);
      }
    }

    if (job.kind === JobKind.Command) {
      const op = slot.cdb[0]!;
      // storvsc_on_io_completion: INQUIRY and MODE SENSE answers are forced to success.
      const forced = op === cdbs.ScsiOp.Inquiry || op === cdbs.ScsiOp.ModeSense6 || op === 0x5a;
      const r = job.commandResult!;
      r.error = 0;
      r.srbStatus = forced ? SrbStatus.Success : srb;
      r.scsiStatus = forced ? 0 : scsi;
      r.transferred = Math.min(forced ? readU32(payload, VstorField.DataTransferLength) : transferred, slot.length);
      r.senseLength = forced ? 0 : senseLength;
      r.sense.fill(0);
      if (!forced && senseLength > 0) r.sense.set(payload.subarray(VstorField.CdbOrSense, VstorField.CdbOrSense + senseLength));
      if (!forced && code === SrbStatus.InvalidLun && target) this.options.onInvalidLun(target);
      this.finishSlot(slot, 0);
      return;
    }

    // A block request chunk.
    let result = 0;
    if (ok && scsi === 0) {
      if (slot.dataIn !== DataIn.None && transferred !== slot.length) result = -Errno.EIO;
    } else if (code === SrbStatus.InvalidLun) {
      result = -Errno.ENODEV;
      if (target) this.options.onInvalidLun(target);
    } else if (scsi === 0x02 && senseLength > 0) {
      const s = this.senseScratch;
      if (s.key === SenseKey.UnitAttention) {
        if (s.asc === 0x2a && s.ascq === 0x09 && target) this.options.onCapacityChanged(target);
        if (this.retry(slot)) return;
        result = -Errno.EIO;
      } else {
        result = senseToErrno(s);
      }
    } else if (scsi === 0x08 || scsi === 0x28 || ((code === SrbStatus.Error || code === SrbStatus.Aborted || code === SrbStatus.InvalidRequest) && senseLength === 0)) {
      // BUSY / TASK SET FULL, or DID_ERROR: the midlayer retries a few times.
      if (this.retry(slot)) return;
      result = -Errno.EIO;
    } else {
      result = -Errno.EIO;
    }
    this.finishSlot(slot, result);
  }

  private retry(slot: Slot): boolean {
    if (slot.retries >= MAX_RETRIES || !slot.job?.target?.present) return false;
    slot.retries++;
    this.stats.retries++;
    if (!this.send(slot)) return false;
    return true;
  }

  // ---- submit ----

  /** Queues a block request for `target` (GuestBlockDevice.submit); done() is never called from here. */
  submitBlock(target: ScsiTarget, request: GuestBlockRequest): void {
    const job = this.takeJob();
    job.kind = JobKind.Block;
    job.target = target;
    job.request = request;
    job.op = request.op;
    job.result = 0;
    job.inflight = 0;
    job.start = request.offset;
    job.next = request.offset;
    job.end = request.offset + request.length;
    job.gpa = request.gpa;
    job.fua = false;
    job.postFlush = false;
    const error = this.validate(target, request);
    if (error !== 0) return this.failJob(job, error);
    if (job.op === BlockOp.Flush) {
      // Nothing to flush on a write-through disk (the block layer never sends it).
      if (!target.writeCache) return this.failJob(job, 0);
      job.end = job.next + 1; // one command
    } else if (job.op === BlockOp.Write && request.fua && target.writeCache) {
      // FUA on a write-back disk: in the CDB when DPOFUA, else a flush afterwards.
      if (target.fua) job.fua = true;
      else job.postFlush = true;
    }
    this.dispatch(job);
  }

  /** Sends one internal SCSI command (scan, sd setup, TEST UNIT READY); control path only. */
  command(target: ScsiTarget, build: (cdb: Uint8Array) => number, dataIn: number, gpa: number, length: number): Promise<CommandResult> {
    return new Promise((resolve) => {
      const job = this.takeJob();
      job.kind = JobKind.Command;
      job.target = target;
      job.request = null;
      job.cdbLength = build(job.cdb);
      job.dataIn = dataIn;
      job.gpa = gpa;
      job.length = length;
      job.next = 0;
      job.end = 1;
      job.inflight = 0;
      job.result = 0;
      job.commandResult = new CommandResult();
      job.resolve = resolve;
      if (this.closed) return this.failJob(job, -Errno.ENODEV);
      this.dispatch(job);
    });
  }

  private validate(target: ScsiTarget, r: GuestBlockRequest): number {
    if (this.closed || !target.present) return -Errno.ENODEV;
    if (r.op === BlockOp.Flush) return 0;
    if (r.op !== BlockOp.Read && r.op !== BlockOp.Write && r.op !== BlockOp.Discard) return -Errno.EIO;
    const bs = target.blockBytes;
    if (!Number.isSafeInteger(r.offset) || !Number.isSafeInteger(r.length) || r.offset < 0 || r.length <= 0 || r.offset % bs !== 0 || r.length % bs !== 0 || r.offset + r.length > target.sizeBytes) return -Errno.EIO;
    if (r.op === BlockOp.Discard) return target.discard ? 0 : -Errno_EOPNOTSUPP;
    if (!this.memory.contains(r.gpa, r.length)) return -Errno.EIO;
    return 0;
  }

  /** Issues as many of the job's commands as there are free tags; the rest wait. */
  private dispatch(job: Job): void {
    while (job.next < job.end) {
      if (this.freeCount === 0) {
        if (!job.waiting) {
          job.waiting = true;
          this.waitingJobs.push(job);
        }
        return;
      }
      const slot = this.takeSlot();
      slot.job = job;
      slot.retries = 0;
      this.fill(slot, job);
      job.inflight++;
      if (!this.send(slot)) {
        // The ring is broken or its backlog full: fail the request, later (never inside submit).
        this.releaseSlot(slot);
        job.inflight--;
        if (job.result === 0) job.result = -Errno.EIO;
        job.next = job.end;
        if (job.inflight === 0) {
          this.deferred.push(job);
          this.scheduleTick();
        }
        return;
      }
    }
  }

  /** Builds the command for the job's next chunk into the slot. */
  private fill(slot: Slot, job: Job): void {
    if (job.kind === JobKind.Command) {
      slot.cdb.set(job.cdb);
      slot.cdbLength = job.cdbLength;
      slot.dataIn = job.dataIn;
      slot.gpa = job.gpa;
      slot.length = job.length;
      job.next = job.end;
      return;
    }
    const t = job.target!;
    const bs = t.blockBytes;
    switch (job.op) {
      case BlockOp.Read:
      case BlockOp.Write: {
        const bytes = Math.min(job.end - job.next, t.maxChunkBytes);
        const write = job.op === BlockOp.Write;
        slot.cdbLength = cdbs.readWrite(slot.cdb, write, job.next / bs, bytes / bs, job.fua, t.use16);
        slot.dataIn = write ? DataIn.Write : DataIn.Read;
        slot.gpa = job.gpa + (job.next - job.start);
        slot.length = bytes;
        job.next += bytes;
        return;
      }
      case BlockOp.Flush:
        slot.cdbLength = cdbs.synchronizeCache10(slot.cdb);
        slot.dataIn = DataIn.None;
        slot.gpa = 0;
        slot.length = 0;
        job.next = job.end;
        return;
      case BlockOp.Discard: {
        const bytes = Math.min(job.end - job.next, t.maxUnmapBlocks * bs);
        if (slot.unmapPfn < 0) {
          // Once per tag; a discard-free workload never allocates these pages.
          slot.unmapPfn = this.options.allocator.allocContiguous(1);
        }
        const gpa = slot.unmapPfn * PAGE_SIZE;
        cdbs.unmapParameters(this.memory.bytes, gpa, job.next / bs, bytes / bs);
        slot.cdbLength = cdbs.unmap(slot.cdb);
        slot.dataIn = DataIn.Write;
        slot.gpa = gpa;
        slot.length = cdbs.UNMAP_PARAMETER_BYTES;
        job.next += bytes;
        return;
      }
    }
  }

  /** Encodes the slot's command and writes it to its ring (GPA-direct when it moves data). */
  private send(slot: Slot): boolean {
    const job = slot.job!;
    const t = job.target!;
    const p = this.packet;
    p.fill(0);
    writeU32(p, VstorField.Operation, VstorOperation.ExecuteSrb);
    writeU32(p, VstorField.Flags, REQUEST_COMPLETION_FLAG);
    p[VstorField.SrbLength] = VMSCSI_REQUEST_SIZE;
    p[VstorField.PortNumber] = this.options.portNumber & 0xff;
    p[VstorField.PathId] = t.channel;
    p[VstorField.TargetId] = t.target;
    p[VstorField.Lun] = t.lun;
    p[VstorField.CdbLength] = slot.cdbLength;
    p[VstorField.SenseInfoLength] = VMSCSI_SENSE_BYTES;
    p[VstorField.DataIn] = slot.dataIn;
    writeU32(p, VstorField.DataTransferLength, slot.length);
    for (let i = 0; i < slot.cdbLength; i++) p[VstorField.CdbOrSense + i] = slot.cdb[i]!;
    let flags = SRB_FLAGS_DISABLE_SYNCH_TRANSFER;
    if (t.tagged) {
      flags |= SRB_FLAGS_QUEUE_ACTION_ENABLE | SRB_FLAGS_NO_QUEUE_FREEZE;
      p[VstorField.QueueTag] = SP_UNTAGGED;
      p[VstorField.QueueAction] = SRB_SIMPLE_TAG_REQUEST;
    }
    if (slot.dataIn === DataIn.Read) flags |= SRB_FLAGS_DATA_IN;
    else if (slot.dataIn === DataIn.Write) flags |= SRB_FLAGS_DATA_OUT;
    writeU32(p, VstorField.SrbFlags, flags);
    writeU32(p, VstorField.TimeOutValue, SRB_TIMEOUT_SECONDS);

    const rings = this.rings;
    if (rings.length === 0) return false;
    const ring = rings[slot.tag % rings.length]!;
    const rc = ring.channel.ring;
    if (rc === null) return false;
    if (!ring.batched) {
      ring.batched = true;
      rc.beginBatch();
      this.scheduleTick();
    }
    slot.issuedTick = this.tick;
    this.stats.commands++;
    if (slot.length === 0) return rc.send(p, slot.tag + 1, PacketType.DataInband, PACKET_FLAG_COMPLETION_REQUESTED);
    // One range: byte_count, byte_offset into the first page, then every page (contiguous buffer).
    const offset = slot.gpa % PAGE_SIZE;
    const first = (slot.gpa - offset) / PAGE_SIZE;
    const pages = Math.ceil((offset + slot.length) / PAGE_SIZE);
    const h = this.gpaHeaderViews[pages] ?? this.headerView(pages);
    writeU32(h, 8, slot.length);
    writeU32(h, 12, offset);
    for (let i = 0; i < pages; i++) {
      const pfn = first + i;
      writeU32(h, 16 + i * 8, pfn >>> 0);
      writeU32(h, 20 + i * 8, Math.floor(pfn / 0x1_0000_0000));
    }
    return rc.send(p, slot.tag + 1, PacketType.DataUsingGpaDirect, PACKET_FLAG_COMPLETION_REQUESTED, h);
  }

  private sizeEncoding(): void {
    const maxPages = Math.ceil((PAGE_SIZE - 1 + this.maxTransferBytes) / PAGE_SIZE) + 1;
    this.gpaHeader = new Uint8Array(16 + 8 * maxPages);
    writeU32(this.gpaHeader, 0, 0);
    writeU32(this.gpaHeader, 4, 1); // range count
    this.gpaHeaderViews = [];
  }

  private headerView(pages: number): Uint8Array {
    if (16 + 8 * pages > this.gpaHeader.length) {
      // A command larger than the negotiated limit (internal buffers): grow once.
      const grown = new Uint8Array(16 + 8 * pages);
      grown.set(this.gpaHeader.subarray(0, 8));
      this.gpaHeader = grown;
      this.gpaHeaderViews = [];
    }
    const view = this.gpaHeader.subarray(0, 16 + 8 * pages);
    this.gpaHeaderViews[pages] = view;
    return view;
  }

  // ---- completion plumbing ----

  private finishSlot(slot: Slot, result: number): void {
    const job = slot.job!;
    this.releaseSlot(slot);
    this.finishChunk(job, result);
    this.pump();
  }

  private finishChunk(job: Job, result: number): void {
    job.inflight--;
    if (result !== 0 && job.result === 0) {
      job.result = result;
      job.next = job.end; // issue nothing more of a failed request
    }
    if (job.inflight > 0 || job.next < job.end) return;
    if (job.kind === JobKind.Block && job.postFlush && job.result === 0) {
      job.postFlush = false;
      job.op = BlockOp.Flush;
      job.next = 0;
      job.end = 1;
      this.dispatch(job);
      return;
    }
    this.completeJob(job);
  }

  private completeJob(job: Job): void {
    if (job.kind === JobKind.Command) {
      const r = job.commandResult!;
      if (job.result !== 0) r.error = job.result;
      const resolve = job.resolve!;
      this.recycleJob(job);
      resolve(r);
      return;
    }
    const request = job.request!;
    const result = job.result;
    this.recycleJob(job);
    request.done(result);
  }

  /** Completes a job from a later microtask (done() must never run inside submit()). */
  private failJob(job: Job, result: number): void {
    job.result = result;
    job.next = job.end;
    this.deferred.push(job);
    this.scheduleTick();
  }

  private scheduleTick(): void {
    if (this.tickScheduled) return;
    this.tickScheduled = true;
    setImmediate(this.onTickBound);
  }

  /** End of a JS turn's submissions: deferred completions, then publish each ring's batch once. */
  private onTick(): void {
    this.tickScheduled = false;
    while (this.deferred.length > 0) {
      const job = this.deferred.shift()!;
      if (job.inflight === 0) this.completeJob(job);
    }
    for (const ring of this.rings) {
      if (!ring.batched) continue;
      ring.batched = false;
      ring.channel.ring?.endBatch();
    }
    if (this.busy > 0) {
      this.armTimer();
      if (this.pollMs > 0) this.poll();
    }
  }

  /**
   * Spins up to pollMs for a completion with the rings' interrupts masked (the host need
   * not signal while we look), then drains every ring, which unmasks them and re-checks,
   * so nothing that lands meanwhile waits for a signal that never comes.
   */
  private poll(): void {
    const rings = this.rings;
    for (const r of rings) r.channel.ring?.reader.maskInterrupts();
    const until = performance.now() + this.pollMs;
    spin: do {
      for (const r of rings) {
        const rc = r.channel.ring;
        if (rc !== null && rc.reader.available() > 0) break spin;
      }
    } while (performance.now() < until);
    for (const r of rings) r.channel.ring?.onSignal();
  }

  /** Free tags appeared: start waiting jobs. */
  private pump(): void {
    while (this.freeCount > 0 && this.waitingHead < this.waitingJobs.length) {
      const job = this.waitingJobs[this.waitingHead]!;
      job.waiting = false;
      this.waitingHead++;
      this.dispatch(job);
      if (job.waiting) {
        // Still short of tags: keep it at the head.
        this.waitingHead--;
        this.waitingJobs[this.waitingHead] = job;
        break;
      }
    }
    if (this.waitingHead === this.waitingJobs.length) {
      this.waitingJobs.length = 0;
      this.waitingHead = 0;
    }
  }

  private takeSlot(): Slot {
    const tag = this.freeTags[this.freeHead]!;
    this.freeHead = (this.freeHead + 1) % this.freeTags.length;
    this.freeCount--;
    this.busy++;
    const slot = this.slots[tag]!;
    slot.state = SLOT_BUSY;
    return slot;
  }

  private releaseSlot(slot: Slot): void {
    if (slot.state === SLOT_BUSY) this.busy--;
    slot.state = SLOT_FREE;
    slot.job = null;
    const n = this.freeTags.length;
    this.freeTags[(this.freeHead + this.freeCount) % n] = slot.tag;
    this.freeCount++;
  }

  private takeJob(): Job {
    return this.jobPool.pop() ?? new Job();
  }

  private recycleJob(job: Job): void {
    job.request = null;
    job.target = null;
    job.resolve = null;
    job.commandResult = null;
    job.waiting = false;
    this.jobPool.push(job);
  }

  // ---- timeouts and resets ----

  private armTimer(): void {
    if (this.timer !== null || this.closed) return;
    this.timer = setInterval(() => this.onTimerTick(), this.tickMs);
    this.timer.unref();
  }

  private onTimerTick(): void {
    this.tick++;
    if (this.busy === 0) {
      clearInterval(this.timer!);
      this.timer = null;
      return;
    }
    let expired = false;
    for (const slot of this.slots) {
      if (slot.state !== SLOT_BUSY || this.tick - slot.issuedTick <= this.timeoutTicks) continue;
      // The midlayer's timeout: fail the command, then the error handler resets the bus.
      expired = true;
      this.stats.timeouts++;
      const job = slot.job!;
      slot.state = SLOT_ABANDONED;
      slot.job = null;
      this.busy--;
      this.finishChunk(job, -Errno.ETIMEDOUT);
    }
    if (expired) {
      this.resetBus(0);
      this.pump();
    }
  }

  /** RESET_BUS (storvsc_host_reset_handler), request id U64_MAX - 3. */
  resetBus(pathId: number): void {
    if (this.resetInFlight) return;
    const ring = this.primary.ring;
    if (!ring) return;
    const p = new Uint8Array(VSTOR_PACKET_SIZE);
    encodeVstorHeader(p, 0, VstorOperation.ResetBus, REQUEST_COMPLETION_FLAG, 0);
    p[VstorField.PathId] = pathId;
    this.resetInFlight = true;
    this.stats.resets++;
    ring.send(p, RESET_TRANSACTION_ID, PacketType.DataInband, PACKET_FLAG_COMPLETION_REQUESTED);
  }

  /** Fails every queued (not yet issued) request of a removed device with -ENODEV. */
  failQueued(target: ScsiTarget): void {
    const keep: Job[] = [];
    for (let i = this.waitingHead; i < this.waitingJobs.length; i++) {
      const job = this.waitingJobs[i]!;
      if (job.target !== target) {
        keep.push(job);
        continue;
      }
      job.waiting = false;
      if (job.result === 0) job.result = -Errno.ENODEV;
      job.next = job.end;
      if (job.inflight === 0) this.deferred.push(job);
    }
    this.waitingJobs.length = 0;
    this.waitingHead = 0;
    this.waitingJobs.push(...keep);
    this.scheduleTick();
  }

  /** Controller removal: close every channel and fail everything outstanding with -ENODEV. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.control) {
      clearTimeout(this.control.timer);
      this.control.reject(new Error('the controller was removed'));
      this.control = null;
    }
    const rings = this.rings.splice(0);
    for (const ring of rings.reverse()) await ring.channel.close().catch(() => {});
    for (const slot of this.slots) {
      if (slot.state === SLOT_BUSY) {
        const job = slot.job!;
        this.releaseSlot(slot);
        this.finishChunk(job, -Errno.ENODEV);
      } else if (slot.state === SLOT_ABANDONED) {
        this.releaseSlot(slot);
      }
      if (slot.unmapPfn >= 0) {
        this.options.allocator.free([slot.unmapPfn]);
        slot.unmapPfn = -1;
      }
    }
    for (const job of this.waitingJobs.slice(this.waitingHead)) {
      job.result = job.result || -Errno.ENODEV;
      job.next = job.end;
      if (job.inflight === 0) this.deferred.push(job);
    }
    this.waitingJobs.length = 0;
    this.waitingHead = 0;
    this.scheduleTick();
  }
}

function readU32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

function writeU32(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
  b[o + 2] = (v >>> 16) & 0xff;
  b[o + 3] = (v >>> 24) & 0xff;
}
