// A VHDX image as a BlockBackend. Each request is cut at payload-block boundaries into
// pieces; a piece in a present block is one readv/writev at the file offset the BAT gives,
// a piece in an absent block reads as zeros or, written, allocates the block at the end
// of the file. Requests are pooled slots indexed by their FileIo token, with their own
// iovec list for the current piece, so the steady state allocates nothing per request.
//
// Block allocation keeps the file consistent across a crash: the data goes to fresh space
// past the old end of the file (which reads as zeros), is made durable, and only then is
// the BAT entry written, so a BAT entry never points at garbage. Writes that meet a block
// whose allocation is in flight wait for it instead of allocating it again.
import fs from 'node:fs';
import type { BlockBackend, BlockDone, BlockIo, DiskInfo } from '../block-backend.js';
import type { FileIo, FileIoDone } from '../file-io.js';
import { lockImage, type ImageLock } from '../image-lock.js';
import { Errno } from '../../../sys/errors.js';
import { IovecList } from '../../../sys/iovec.js';
import {
  batEntryOffset, batIndexOfBlock, encodeBatEntry, MiB, PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_ZERO, payloadReadsAsZero,
} from './vhdx-format.js';
import { loadVhdxImage, type VhdxImage } from './vhdx-image.js';
import { writeAt } from './vhdx-sync-io.js';

/** The most iovecs one preadv/pwritev takes (Linux UIO_MAXIOV). */
const IOV_MAX = 1024;

export interface OpenVhdxOptions {
  readOnly?: boolean;
  fileIo: FileIo;
}

/** Opens a VHDX image (fixed or dynamic; not differencing). Errors say what is wrong with the file. */
export async function openVhdxDisk(path: string, options: OpenVhdxOptions): Promise<VhdxDisk> {
  const readOnly = options.readOnly ?? false;
  const fd = fs.openSync(path, readOnly ? 'r' : 'r+');
  let lock: ImageLock | undefined;
  try {
    lock = lockImage(fd, path, readOnly ? 'shared' : 'exclusive');
    const image = loadVhdxImage(fd, readOnly);
    return new VhdxDisk(path, image, options.fileIo, lock);
  } catch (error) {
    lock?.release();
    fs.closeSync(fd);
    if (error instanceof Error && error.name === 'VhdxFormatError') error.message = `${path}: ${error.message}`;
    throw error;
  }
}

const enum Op {
  Read,
  Write,
  Flush,
  Discard,
}

/** What the slot is waiting for from FileIo. */
const enum Step {
  Idle,
  /** readv/writev of a piece in a present block. */
  Data,
  /** writev of the first piece into a block being allocated. */
  AllocData,
  /** fdatasync between the new block's data and its BAT entry. */
  AllocSync,
  /** fdatasync at the end of a FUA write that wrote BAT entries. */
  FinalSync,
  Flush,
  Punch,
}

/** One block allocation in flight, and the requests queued behind it. */
class Allocation {
  block = 0;
  fileOffset = 0;
  readonly waiters: Slot[] = [];
}

class Slot {
  op = Op.Read;
  step = Step.Idle;
  io: BlockIo | undefined;
  done: BlockDone | undefined;
  /** Bytes of the request finished so far. */
  position = 0;
  pieceLength = 0;
  allocation: Allocation | undefined;
  /** A FUA write that changed the BAT needs a final fdatasync. */
  syncAtEnd = false;
  result = 0;
  /** The range of the punch in flight (written as zeros if the filesystem cannot punch). */
  punchOffset = 0;
  punchLength = 0;
  piece: IovecList;
  /** Bound once: completing from inside read()/write() is deferred to a microtask through it. */
  readonly deferredFinish: () => void;
  submitting = false;

  constructor(readonly token: number, finish: (slot: Slot) => void) {
    this.piece = new IovecList(64);
    this.deferredFinish = () => finish(this);
  }
}

export class VhdxDisk implements BlockBackend, FileIoDone {
  readonly info: DiskInfo;
  readonly stats = { reads: 0, writes: 0, flushes: 0, discards: 0, errors: 0 };
  readonly path: string;
  private readonly fd: number;
  private readonly blockBytes: number;
  private readonly chunkRatio: number;
  private readonly sectorBytes: number;
  private readonly fixed: boolean;
  /** Where the next allocated block may start (grows with every allocation). */
  private fileEnd: number;
  private readonly slots: Slot[] = [];
  private readonly freeSlots: Slot[] = [];
  private readonly allocations = new Map<number, Allocation>();
  private readonly freeAllocations: Allocation[] = [];
  private readonly batEntry = new Uint8Array(8);
  private readonly batEntryView = new DataView(this.batEntry.buffer);
  private active = 0;
  private closing = false;
  private closePromise: Promise<void> | undefined;
  private idle: (() => void) | undefined;
  private dataChanged = false;
  private readonly finishSlot = (slot: Slot): void => this.finish(slot);

  constructor(path: string, private readonly image: VhdxImage, private readonly fileIo: FileIo, private readonly lock: ImageLock) {
    const p = image.parameters;
    this.path = path;
    this.fd = image.fd;
    this.blockBytes = p.blockBytes;
    this.chunkRatio = image.geometry.chunkRatio;
    this.sectorBytes = p.logicalSectorBytes;
    this.fixed = p.leaveBlocksAllocated;
    this.fileEnd = image.fileBytes;
    this.info = {
      sizeBytes: p.virtualDiskBytes,
      logicalBlockBytes: p.logicalSectorBytes,
      physicalBlockBytes: Math.max(p.physicalSectorBytes, p.logicalSectorBytes),
      readOnly: image.readOnly,
      discard: !image.readOnly && !this.fixed,
      writeCache: true,
      serial: p.page83Guid.replace(/-/g, ''),
    };
  }

  /** How the log was handled at open: nothing to do, replayed into the file, or overlaid in memory (read-only). */
  get logState(): VhdxImage['log'] {
    return this.image.log;
  }

  get blockSize(): number {
    return this.blockBytes;
  }

  read(io: BlockIo, done: BlockDone): void {
    this.stats.reads++;
    this.start(Op.Read, io, done);
  }

  write(io: BlockIo, done: BlockDone): void {
    this.stats.writes++;
    this.start(Op.Write, io, done);
  }

  flush(io: BlockIo, done: BlockDone): void {
    this.stats.flushes++;
    this.start(Op.Flush, io, done);
  }

  discard(io: BlockIo, done: BlockDone): void {
    this.stats.discards++;
    this.start(Op.Discard, io, done);
  }

  close(): Promise<void> {
    this.closePromise ??= this.closeOnce();
    return this.closePromise;
  }

  private async closeOnce(): Promise<void> {
    this.closing = true;
    if (this.active > 0) await new Promise<void>((resolve) => (this.idle = resolve));
    try {
      if (!this.image.readOnly) fs.fdatasyncSync(this.fd);
    } finally {
      this.lock.release();
      fs.closeSync(this.fd);
    }
  }

  // ---- Request lifecycle ----

  private start(op: Op, io: BlockIo, done: BlockDone): void {
    const slot = this.freeSlots.pop() ?? this.newSlot();
    this.active++;
    slot.op = op;
    slot.io = io;
    slot.done = done;
    slot.position = 0;
    slot.pieceLength = 0;
    slot.syncAtEnd = false;
    slot.allocation = undefined;
    slot.step = Step.Idle;
    slot.submitting = true;
    const problem = this.validate(op, io);
    if (problem !== 0) this.complete(slot, problem);
    else if (op === Op.Flush) {
      slot.step = Step.Flush;
      this.fileIo.fdatasync(this.fd, slot.token, this);
    } else {
      if (io.iov.count > slot.piece.capacity) slot.piece = new IovecList(Math.min(65536, Math.max(io.iov.count, slot.piece.capacity * 2)));
      if ((op === Op.Write || op === Op.Discard) && !this.noteDataChange()) this.complete(slot, -Errno.EIO);
      else this.advance(slot);
    }
    slot.submitting = false;
  }

  private newSlot(): Slot {
    const slot = new Slot(this.slots.length, this.finishSlot);
    this.slots.push(slot);
    return slot;
  }

  /** 0, or the -errno the request fails with. */
  private validate(op: Op, io: BlockIo): number {
    if (this.closing) return -Errno.ENXIO;
    if (this.image.readOnly && (op === Op.Write || op === Op.Discard)) return -Errno.EROFS;
    if (op === Op.Flush) return 0;
    const { offset, length } = io;
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) return -Errno.EINVAL;
    if (offset % this.sectorBytes !== 0 || length % this.sectorBytes !== 0 || offset + length > this.info.sizeBytes) return -Errno.EINVAL;
    if ((op === Op.Read || op === Op.Write) && io.iov.byteLength !== length) return -Errno.EINVAL;
    return 0;
  }

  /**
   * Before the first change a reader of the file could see, the header gets a new
   * DataWriteGuid (spec 2.2.2). False if the header could not be written.
   */
  private noteDataChange(): boolean {
    if (this.dataChanged) return true;
    try {
      this.image.headers.update({ newDataWriteGuid: true });
      this.dataChanged = true;
      return true;
    } catch {
      return false;
    }
  }

  private complete(slot: Slot, result: number): void {
    slot.result = result;
    slot.step = Step.Idle;
    if (slot.submitting) queueMicrotask(slot.deferredFinish);
    else this.finish(slot);
  }

  private finish(slot: Slot): void {
    const io = slot.io!;
    const done = slot.done!;
    const result = slot.result;
    slot.io = undefined;
    slot.done = undefined;
    this.freeSlots.push(slot);
    this.active--;
    if (result < 0) this.stats.errors++;
    done.blockDone(io, result);
    if (this.active === 0 && this.idle) {
      const idle = this.idle;
      this.idle = undefined;
      idle();
    }
  }

  // ---- BAT ----

  private entryLow(block: number): number {
    return this.image.batView.getUint32(batIndexOfBlock(block, this.chunkRatio) * 8, true);
  }

  private blockOffset(block: number): number {
    const at = batIndexOfBlock(block, this.chunkRatio) * 8;
    return batEntryOffset(this.image.batView.getUint32(at, true), this.image.batView.getUint32(at + 4, true));
  }

  /** Writes one BAT entry to the file and the in-memory BAT. Throws if the file write fails. */
  private setEntry(block: number, state: number, fileOffset: number): void {
    const { low, high } = encodeBatEntry(state, fileOffset);
    const index = batIndexOfBlock(block, this.chunkRatio);
    this.batEntryView.setUint32(0, low, true);
    this.batEntryView.setUint32(4, high, true);
    writeAt(this.fd, this.batEntry, this.image.regions.bat.fileOffset + index * 8);
    this.image.batView.setUint32(index * 8, low, true);
    this.image.batView.setUint32(index * 8 + 4, high, true);
  }

  /** Bytes of `block` inside the virtual disk (the last block may be partly outside). */
  private usedBytes(block: number): number {
    return Math.min(this.blockBytes, this.info.sizeBytes - block * this.blockBytes);
  }

  // ---- Data path ----

  /** Issues the next piece of a read, write or discard, or completes the request. */
  private advance(slot: Slot): void {
    const io = slot.io!;
    while (slot.position < io.length) {
      const diskOffset = io.offset + slot.position;
      const block = Math.floor(diskOffset / this.blockBytes);
      const inBlock = diskOffset - block * this.blockBytes;
      const length = Math.min(this.blockBytes - inBlock, io.length - slot.position);
      const state = this.entryLow(block) & 7;
      if (slot.op === Op.Discard) {
        if (this.discardPiece(slot, block, inBlock, length, state)) return;
        slot.position += length;
        continue;
      }
      if (this.image.badBlocks.size > 0 && this.image.badBlocks.has(block)) return this.complete(slot, -Errno.EIO);
      if (state === PAYLOAD_BLOCK_FULLY_PRESENT) {
        const fileOffset = this.blockOffset(block) + inBlock;
        if (fileOffset + length > this.fileEnd) return this.complete(slot, -Errno.EIO);
        const sliced = this.slicePiece(slot, length);
        if (sliced < 0) return this.complete(slot, sliced);
        slot.step = Step.Data;
        slot.pieceLength = sliced;
        if (slot.op === Op.Read) this.fileIo.readv(this.fd, slot.piece, fileOffset, slot.token, this);
        else this.fileIo.writev(this.fd, slot.piece, fileOffset, slot.token, this, io.fua);
        return;
      }
      if (!payloadReadsAsZero(state)) return this.complete(slot, -Errno.EIO); // PARTIALLY_PRESENT or a reserved state
      if (slot.op === Op.Read) {
        const problem = this.zeroGuest(slot, length);
        if (problem !== 0) return this.complete(slot, problem);
        slot.position += length;
        continue;
      }
      // A write to an absent block.
      const pending = this.allocations.get(block);
      if (pending) {
        pending.waiters.push(slot);
        return;
      }
      return this.allocate(slot, block, inBlock, length);
    }
    if (slot.syncAtEnd) {
      slot.syncAtEnd = false;
      slot.step = Step.FinalSync;
      this.fileIo.fdatasync(this.fd, slot.token, this);
      return;
    }
    this.complete(slot, slot.op === Op.Discard ? 0 : io.length);
  }

  /**
   * Fills slot.piece with the next `length` bytes of the request, cut short at IOV_MAX
   * segments (preadv/pwritev refuse more), every segment inside guest RAM. Returns the
   * bytes it holds, or -errno.
   */
  private slicePiece(slot: Slot, length: number): number {
    const io = slot.io!;
    const piece = slot.piece;
    if (!io.iov.sliceInto(piece, slot.position, length)) return -Errno.EINVAL;
    let bytes = length;
    if (piece.count > IOV_MAX) {
      bytes = 0;
      for (let i = 0; i < IOV_MAX; i++) bytes += piece.lengthAt(i);
      if (!io.iov.sliceInto(piece, slot.position, bytes)) return -Errno.EINVAL;
    }
    // The kernel would move data to or from any address: only guest RAM may be named.
    const base = Number(io.memory.base);
    for (let i = 0; i < piece.count; i++) {
      if (!io.memory.contains(piece.addressAt(i) - base, piece.lengthAt(i))) return -Errno.EFAULT;
    }
    return bytes;
  }

  /** Zeros the guest buffers of the current piece (a read of an absent block). 0 or -errno. */
  private zeroGuest(slot: Slot, length: number): number {
    const io = slot.io!;
    if (!io.iov.sliceInto(slot.piece, slot.position, length)) return -Errno.EINVAL;
    const memory = io.memory;
    const base = Number(memory.base);
    for (let i = 0; i < slot.piece.count; i++) {
      const gpa = slot.piece.addressAt(i) - base;
      const bytes = slot.piece.lengthAt(i);
      if (!memory.contains(gpa, bytes)) return -Errno.EFAULT;
      memory.bytes.fill(0, gpa, gpa + bytes);
    }
    return 0;
  }

  /** Reserves space for `block` at the (1 MiB aligned) end of the file and writes the piece into it. */
  private allocate(slot: Slot, block: number, inBlock: number, length: number): void {
    const sliced = this.slicePiece(slot, length);
    if (sliced < 0) return this.complete(slot, sliced);
    const fileOffset = Math.ceil(this.fileEnd / MiB) * MiB;
    const end = fileOffset + this.blockBytes;
    try {
      // Extending the file makes the new block read as zeros around the piece written.
      fs.ftruncateSync(this.fd, end);
    } catch {
      return this.complete(slot, -Errno.EIO);
    }
    this.fileEnd = end;
    const allocation = this.freeAllocations.pop() ?? new Allocation();
    allocation.block = block;
    allocation.fileOffset = fileOffset;
    this.allocations.set(block, allocation);
    slot.allocation = allocation;
    slot.step = Step.AllocData;
    slot.pieceLength = sliced;
    this.fileIo.writev(this.fd, slot.piece, fileOffset + inBlock, slot.token, this);
  }

  /** Ends an allocation: the waiters retry their piece (now a present block) or fail with it. */
  private endAllocation(slot: Slot, error: number): void {
    const allocation = slot.allocation!;
    slot.allocation = undefined;
    this.allocations.delete(allocation.block);
    const waiters = allocation.waiters;
    for (let i = 0; i < waiters.length; i++) {
      const waiter = waiters[i]!;
      if (error < 0) this.complete(waiter, error);
      else this.advance(waiter);
    }
    waiters.length = 0;
    this.freeAllocations.push(allocation);
  }

  /**
   * One block's part of a discard. A fully covered present block of a dynamic disk goes
   * back to ZERO in the BAT and its space is punched out; a partly covered present block
   * (or any block of a fixed disk) has the range punched so that it reads as zeros.
   * Returns true when a punch is in flight.
   */
  private discardPiece(slot: Slot, block: number, inBlock: number, length: number, state: number): boolean {
    if (state !== PAYLOAD_BLOCK_FULLY_PRESENT || this.image.badBlocks.has(block)) {
      if (this.image.badBlocks.has(block) && !this.fixed && inBlock === 0 && length >= this.usedBytes(block)) this.forgetBlock(block);
      return false;
    }
    const blockOffset = this.blockOffset(block);
    let punchOffset = blockOffset + inBlock;
    let punchLength = length;
    if (!this.fixed && inBlock === 0 && length >= this.usedBytes(block)) {
      try {
        this.setEntry(block, PAYLOAD_BLOCK_ZERO, 0);
      } catch {
        this.complete(slot, -Errno.EIO);
        return true;
      }
      punchOffset = blockOffset;
      punchLength = this.blockBytes;
    }
    slot.step = Step.Punch;
    slot.pieceLength = length;
    slot.result = 0;
    slot.punchOffset = punchOffset;
    slot.punchLength = punchLength;
    this.fileIo.punchHole(this.fd, punchOffset, punchLength, slot.token, this);
    return true;
  }

  private forgetBlock(block: number): void {
    try {
      this.setEntry(block, PAYLOAD_BLOCK_ZERO, 0);
      this.image.badBlocks.delete(block);
    } catch {
      // The entry stays as it was; its requests keep failing with EIO.
    }
  }

  fileIoDone(token: number, result: number): void {
    const slot = this.slots[token];
    if (!slot || slot.io === undefined) return;
    switch (slot.step) {
      case Step.Data:
        if (result !== slot.pieceLength) return this.complete(slot, result < 0 ? result : -Errno.EIO);
        slot.position += slot.pieceLength;
        return this.advance(slot);
      case Step.AllocData:
        if (result !== slot.pieceLength) {
          const error = result < 0 ? result : -Errno.EIO;
          this.endAllocation(slot, error);
          return this.complete(slot, error);
        }
        slot.step = Step.AllocSync;
        return this.fileIo.fdatasync(this.fd, slot.token, this);
      case Step.AllocSync: {
        if (result < 0) {
          this.endAllocation(slot, result);
          return this.complete(slot, result);
        }
        const allocation = slot.allocation!;
        try {
          this.setEntry(allocation.block, PAYLOAD_BLOCK_FULLY_PRESENT, allocation.fileOffset);
        } catch {
          this.endAllocation(slot, -Errno.EIO);
          return this.complete(slot, -Errno.EIO);
        }
        if (slot.io.fua) slot.syncAtEnd = true;
        slot.position += slot.pieceLength;
        this.endAllocation(slot, 0);
        return this.advance(slot);
      }
      case Step.FinalSync:
      case Step.Flush:
        return this.complete(slot, result < 0 ? result : slot.op === Op.Flush ? 0 : slot.io.length);
      case Step.Punch:
        if (result < 0) {
          // No hole punching here (some filesystems): write the zeros instead.
          if (!this.writeZeros(slot.punchOffset, slot.punchLength)) return this.complete(slot, -Errno.EIO);
        }
        slot.position += slot.pieceLength;
        return this.advance(slot);
      default:
        return;
    }
  }

  private writeZeros(offset: number, length: number): boolean {
    try {
      const zeros = new Uint8Array(Math.min(length, MiB));
      for (let done = 0; done < length; done += zeros.length) writeAt(this.fd, zeros.subarray(0, Math.min(zeros.length, length - done)), offset + done);
      return true;
    } catch {
      return false;
    }
  }
}
