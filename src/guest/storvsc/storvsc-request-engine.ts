// The per-tag request engine of one storvsc adapter. Requests are identified by a tag
// (transaction id = tag + 1, like blk-mq's unique tag + 1); per-tag state is preallocated,
// the submit path allocates nothing and creates no Promise, and packets written in one JS
// turn are published with one signal per ring (Linux's commit_rqs). Completions are mapped
// to errno the way the SCSI midlayer does (with its retries), and commands that outlive the
// timeout fail with -ETIMEDOUT and reset the bus.
import type { GuestMemory } from '../../memory/guest-memory.js';
import { PAGE_SIZE } from '../../memory/page.js';
import { PACKET_FLAG_COMPLETION_REQUESTED, PacketType } from '../../vmbus/packet.js';
import {
  REQUEST_COMPLETION_FLAG,
  RESET_TRANSACTION_ID,
  SrbStatus,
  VMSCSI_SENSE_BYTES,
  VSTOR_PACKET_SIZE,
  VstorField,
  VstorOperation,
  encodeVstorHeader,
} from '../../devices/storvsp/storvsp-protocol.js';
import type { GuestChannel } from '../guest-channel.js';
import { BlockOp, type GuestBlockRequest } from './guest-block-device.js';
import { CommandResult, DataIn, type ScsiTarget } from './scsi-command.js';
import * as cdbs from './scsi-cdb.js';
import { Errno, parseSense, SenseKey, senseToErrno, type SenseData } from './scsi-replies.js';
import { encodeExecuteSrb, GpaDirectHeader, readU32 } from './srb-packet.js';
import type { StorvscControllerOptions } from './storvsc-controller.js';

/** Retries of a command the midlayer would retry (UNIT ATTENTION, BUSY, error without sense). */
const MAX_RETRIES = 5;

const SLOT_FREE = 0;
const SLOT_BUSY = 1;
/** Timed out and completed to its owner; the tag stays out of use until the host answers it. */
const SLOT_ABANDONED = 2;

const Errno_EOPNOTSUPP = 95;

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

/** An open channel the engine sends on; `batched` while it holds unpublished packets (`staged` of them). */
export interface OpenRing {
  channel: GuestChannel;
  batched: boolean;
  staged: number;
}

/**
 * Commands published every this many per ring, not only when the JS turn ends: a burst
 * of resubmissions (the answer to a burst of completions) reaches the host in pieces,
 * so the disk gets the first ones while the rest are still being written.
 */
const COMMANDS_PER_PUBLISH = 4;

export class RequestEngine {
  readonly stats = { commands: 0, completions: 0, retries: 0, timeouts: 0, resets: 0, dropped: 0, unsolicited: 0 };
  /** Set by stop(): no new commands, no timer. */
  closed = false;

  private readonly memory: GuestMemory;
  private readonly options: StorvscControllerOptions;
  /** The controller's open channels, primary first (shared, updated in place by the controller). */
  private readonly rings: OpenRing[];
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
  private readonly gpaHeader = new GpaDirectHeader();
  private readonly senseScratch: SenseData = { key: 0, asc: 0, ascq: 0 };
  private resetInFlight = false;
  // Timeouts: a coarse tick instead of a timer per request.
  private tick = 0;
  private timer: NodeJS.Timeout | null = null;
  private tickMs = 1000;
  private timeoutTicks = 1;
  private readonly pollMs: number;

  constructor(options: StorvscControllerOptions, rings: OpenRing[], ioTimeoutMs: number, pollMicros: number) {
    this.options = options;
    this.memory = options.memory;
    this.rings = rings;
    this.setIoTimeout(ioTimeoutMs);
    this.pollMs = Math.max(0, pollMicros) / 1000;
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
    this.tickMs = Math.max(5, Math.min(1000, Math.floor(ms / 8)));
    this.timeoutTicks = Math.max(1, Math.ceil(ms / this.tickMs));
    if (this.timer !== null) {
      clearInterval(this.timer);
      this.timer = null;
      this.armTimer();
    }
  }

  get outstanding(): number {
    return this.busy;
  }

  /** Sizes the GPA-direct header for the negotiated max_transfer_bytes. */
  sizeEncoding(maxTransferBytes: number): void {
    this.gpaHeader.size(maxTransferBytes);
  }

  // ---- receive ----

  /** The host answered RESET_BUS. */
  onResetReply(): void {
    this.resetInFlight = false;
  }

  /** A whole vstor_packet answering request `tag` (transaction id - 1). */
  onReply(tag: number, payload: Uint8Array): void {
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
    const p = this.packet;
    encodeExecuteSrb(p, this.options.portNumber, job.target!, slot.cdb, slot.cdbLength, slot.dataIn, slot.length);

    const rings = this.rings;
    if (rings.length === 0) return false;
    const ring = rings[slot.tag % rings.length]!;
    const rc = ring.channel.ring;
    if (rc === null) return false;
    if (!ring.batched) {
      ring.batched = true;
      ring.staged = 0;
      rc.beginBatch();
      this.scheduleTick();
    }
    slot.issuedTick = this.tick;
    this.stats.commands++;
    const sent = slot.length === 0
      ? rc.send(p, slot.tag + 1, PacketType.DataInband, PACKET_FLAG_COMPLETION_REQUESTED)
      : rc.send(p, slot.tag + 1, PacketType.DataUsingGpaDirect, PACKET_FLAG_COMPLETION_REQUESTED, this.gpaHeader.describe(slot.gpa, slot.length));
    if (++ring.staged >= COMMANDS_PER_PUBLISH) {
      // Publish this piece; the batch goes on (and still ends with the turn).
      ring.staged = 0;
      rc.endBatch();
      rc.beginBatch();
    }
    return sent;
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
    this.options.keepAwake?.();
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
    const ring = this.options.primary.ring;
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

  /** Controller removal, first step: accept nothing new and stop the timeout tick. */
  stop(): void {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** Controller removal, once the channels are closed: fail everything outstanding with -ENODEV. */
  failAll(): void {
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
