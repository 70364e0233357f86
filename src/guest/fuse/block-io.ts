// A slot's requests at the disk: whole-block reads, writes and punches whose unaligned
// edges are read-modify-written through bounce pages, the ordering between overlapping
// writes, and flushes that wait for the writes that came before them.
import { Errno } from '../../sys/errors.js';
import { BlockOp } from '../storvsc/guest-block-device.js';
import type { DiskNode } from './disk-directory.js';
import type { RequestLoop } from './request-loop.js';
import { Kind, Role, Wait, type Slot, type SlotRequest } from './request-slot.js';

export class BlockIo {
  /** Numbers write-like requests in arrival order, for overlap ordering and flush barriers. */
  private writeSeq = 0;
  /** The completion every slot's pooled block requests report to. */
  readonly onDeviceDone = (slot: Slot, role: Role, result: number): void => this.deviceDone(slot, role, result);

  constructor(
    /** Every slot (the loop's array): the write set is the slots with writeActive. */
    private readonly slots: readonly Slot[],
    private readonly bytes: Uint8Array,
    private readonly loop: RequestLoop,
    private readonly log: (m: string) => void,
  ) {}

  /** Answers [offset, end) of `node`, which the caller has clamped to the disk. */
  beginRead(slot: Slot, node: DiskNode, offset: number, end: number): void {
    const block = node.device.blockBytes;
    // Read the aligned blocks covering the range into the data area and answer with the
    // part asked for: unaligned reads need no bounce buffer and no copy.
    const first = offset - (offset % block);
    const last = Math.ceil(end / block) * block;
    slot.kind = Kind.Read;
    slot.node = node;
    slot.error = 0;
    slot.pending = 0;
    slot.replyGpa = slot.dataGpa + (offset - first);
    slot.length = end - offset;
    this.submit(slot, slot.middle, BlockOp.Read, first, last - first, slot.dataGpa);
  }

  /**
   * WRITE and punch-hole: the aligned middle goes to the device directly (the payload's
   * own pages, or a discard); an unaligned head or tail block is read into a bounce page,
   * patched (payload copied in guest RAM, or zeroed) and written back. Writes touching a
   * block another write is read-modify-writing wait their turn, in arrival order.
   */
  beginWriteLike(slot: Slot, node: DiskNode, kind: Kind, offset: number, length: number, payloadGpa: number): void {
    const block = node.device.blockBytes;
    const end = offset + length;
    slot.kind = kind;
    slot.node = node;
    slot.offset = offset;
    slot.length = length;
    slot.payloadGpa = payloadGpa;
    const alignedStart = Math.ceil(offset / block) * block;
    const alignedEnd = end - (end % block);
    slot.headBlock = offset % block !== 0 ? offset - (offset % block) : -1;
    slot.tailBlock = end % block !== 0 ? alignedEnd : -1;
    if (slot.headBlock !== -1 && slot.headBlock === slot.tailBlock) slot.tailBlock = -1;
    slot.middleOffset = alignedStart;
    slot.middleLength = alignedEnd > alignedStart ? alignedEnd - alignedStart : 0;
    slot.rmw = slot.headBlock !== -1 || slot.tailBlock !== -1;
    slot.lockStart = offset - (offset % block);
    slot.lockEnd = Math.ceil(end / block) * block;
    slot.writeSeq = ++this.writeSeq;
    slot.writeActive = true;
    if (this.blockedByWrite(slot)) {
      slot.wait = Wait.BlockLock;
      return;
    }
    this.startWriteLike(slot);
  }

  /** An earlier write to the same device overlaps this one's blocks, and one of them is a read-modify-write. */
  private blockedByWrite(slot: Slot): boolean {
    const device = slot.node!.device;
    for (const other of this.slots) {
      if (other === slot || !other.writeActive || other.writeSeq > slot.writeSeq || other.node!.device !== device) continue;
      if (!(other.rmw || slot.rmw)) continue;
      if (other.lockStart < slot.lockEnd && slot.lockStart < other.lockEnd) return true;
    }
    return false;
  }

  private startWriteLike(slot: Slot): void {
    slot.wait = Wait.None;
    slot.error = 0;
    slot.pending = 0;
    slot.edgeReads = 0;
    const block = slot.node!.device.blockBytes;
    if (slot.headBlock !== -1) {
      slot.edgeReads++;
      this.submit(slot, slot.head, BlockOp.Read, slot.headBlock, block, slot.headBounceGpa);
    }
    if (slot.tailBlock !== -1) {
      slot.edgeReads++;
      this.submit(slot, slot.tail, BlockOp.Read, slot.tailBlock, block, slot.tailBounceGpa);
    }
    if (slot.middleLength > 0) {
      if (slot.kind === Kind.Write) {
        this.submit(slot, slot.middle, BlockOp.Write, slot.middleOffset, slot.middleLength, slot.payloadGpa + (slot.middleOffset - slot.offset));
      } else {
        this.submit(slot, slot.middle, BlockOp.Discard, slot.middleOffset, slot.middleLength, 0);
      }
    }
  }

  /** Puts the request's part of an edge block into its bounce page (in guest RAM, no JS copy). */
  private patchEdge(slot: Slot, blockOffset: number, bounceGpa: number): void {
    const block = slot.node!.device.blockBytes;
    const from = Math.max(slot.offset, blockOffset);
    const to = Math.min(slot.offset + slot.length, blockOffset + block);
    const target = bounceGpa + (from - blockOffset);
    if (slot.kind === Kind.Write) {
      const source = slot.payloadGpa + (from - slot.offset);
      this.bytes.copyWithin(target, source, source + (to - from));
    } else {
      this.bytes.fill(0, target, target + (to - from));
    }
  }

  /** FSYNC, or FLUSH of a writable handle: a flush of `node`'s device after the writes before it. */
  beginFlush(slot: Slot, node: DiskNode): void {
    slot.kind = Kind.Flush;
    slot.node = node;
    slot.barrierSeq = this.writeSeq;
    if (this.blockedByBarrier(slot)) {
      slot.wait = Wait.WriteBarrier;
      return;
    }
    this.startFlush(slot);
  }

  /** A flush covers the writes that arrived before it: it waits for those still in flight. */
  private blockedByBarrier(slot: Slot): boolean {
    const device = slot.node!.device;
    for (const other of this.slots) {
      if (other.writeActive && other.writeSeq <= slot.barrierSeq && other.node!.device === device) return true;
    }
    return false;
  }

  private startFlush(slot: Slot): void {
    slot.wait = Wait.None;
    slot.error = 0;
    slot.pending = 0;
    this.submit(slot, slot.middle, BlockOp.Flush, 0, 0, 0);
  }

  private submit(slot: Slot, request: SlotRequest, op: BlockOp, offset: number, length: number, gpa: number): void {
    request.op = op;
    request.offset = offset;
    request.length = length;
    request.gpa = gpa;
    request.fua = false;
    slot.pending++;
    try {
      slot.node!.device.submit(request);
    } catch (e) {
      this.log(`fuse: ${slot.node!.name}: submit failed: ${String(e)}`);
      queueMicrotask(() => request.done(-Errno.EIO));
    }
  }

  private deviceDone(slot: Slot, role: Role, result: number): void {
    if (!slot.busy || slot.pending <= 0) {
      this.log(`fuse: completion for idle slot ${slot.index} ignored`);
      return;
    }
    slot.pending--;
    if (result !== 0 && slot.error === 0) slot.error = Number.isInteger(result) && result < 0 && result >= -4095 ? result : -Errno.EIO;
    switch (slot.kind) {
      case Kind.Read:
        if (slot.error !== 0) return this.loop.replyError(slot, slot.error);
        return this.loop.replyOk(slot, slot.replyGpa, slot.length);
      case Kind.Flush:
        return this.loop.replyError(slot, slot.error);
      case Kind.Write:
      case Kind.Punch:
        if (role !== Role.Middle && slot.edgeReads > 0) {
          slot.edgeReads--;
          if (slot.edgeReads === 0 && slot.error === 0) this.writeEdges(slot);
        }
        if (slot.pending === 0) this.finishWriteLike(slot);
        return;
      default:
        this.log(`fuse: completion for slot ${slot.index} in no known state`);
    }
  }

  private writeEdges(slot: Slot): void {
    const block = slot.node!.device.blockBytes;
    if (slot.headBlock !== -1) {
      this.patchEdge(slot, slot.headBlock, slot.headBounceGpa);
      this.submit(slot, slot.head, BlockOp.Write, slot.headBlock, block, slot.headBounceGpa);
    }
    if (slot.tailBlock !== -1) {
      this.patchEdge(slot, slot.tailBlock, slot.tailBounceGpa);
      this.submit(slot, slot.tail, BlockOp.Write, slot.tailBlock, block, slot.tailBounceGpa);
    }
  }

  private finishWriteLike(slot: Slot): void {
    slot.writeActive = false;
    const error = slot.error;
    if (error !== 0) this.loop.replyError(slot, error);
    else if (slot.kind === Kind.Write) this.loop.replyWritten(slot, slot.length);
    else this.loop.replyOk(slot, 0, 0);
    this.wakeWaiters();
  }

  /** A write finished: start the writes and flushes that were waiting for it. */
  private wakeWaiters(): void {
    for (const slot of this.slots) {
      if (slot.wait === Wait.BlockLock && !this.blockedByWrite(slot)) this.startWriteLike(slot);
      else if (slot.wait === Wait.WriteBarrier && !this.blockedByBarrier(slot)) this.startFlush(slot);
    }
  }
}
