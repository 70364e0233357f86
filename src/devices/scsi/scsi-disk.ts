// A SCSI direct-access logical unit over a BlockBackend: what Linux's scan and sd send
// (INQUIRY + VPD, READ CAPACITY, MODE SENSE, READ/WRITE, SYNCHRONIZE CACHE, UNMAP, ...)
// answered with the bytes sd checks, and every guest-supplied CDB field validated. Emulated
// commands complete synchronously; I/O completes from the backend's completion, through a
// pooled request, without allocating. Nothing thrown inside escapes execute(): an internal
// failure becomes HARDWARE ERROR / INTERNAL TARGET FAILURE.
import { Errno } from '../../sys/errors.js';
import type { BlockBackend, BlockDone, BlockIo } from '../../backends/block/block-backend.js';
import { buildReadCapacity10, buildReadCapacity16, type CapacityShape } from './scsi-capacity.js';
import { BlockCdb, allocationLength, be32, be64, cdbLengthOfGroup, decodeBlockCdb, parameterListLength, unmapDescriptorCount, UNMAP_DESCRIPTOR_BYTES, UNMAP_HEADER_BYTES } from './scsi-cdb.js';
import { DataDirection, ScsiStatus, type ScsiCommand, type ScsiLogicalUnit } from './scsi-command.js';
import { copyFromDataBuffer, copyToDataBuffer } from './scsi-data-buffer.js';
import { DiskRequest, DiskRequestPool, RequestKind } from './scsi-disk-request.js';
import { buildStandardInquiry, VpdPages, type BlockLimits } from './scsi-inquiry.js';
import { buildModeSense, MAX_MODE_SENSE_BYTES, modeSelectChangesNothing, type ModeState } from './scsi-mode-pages.js';
import { Asc, Peripheral, ScsiOp, SenseKey, ServiceAction } from './scsi-opcodes.js';
import { FIXED_SENSE_BYTES, setCheckCondition, setGood, writeFixedSense } from './scsi-sense.js';

export interface ScsiDiskOptions {
  /** Largest READ/WRITE in bytes (VPD 0xB0 MAXIMUM TRANSFER LENGTH). Default 1 MiB. */
  readonly maxTransferBytes?: number;
  /** Commands in flight to the backend at once; beyond it TASK SET FULL. Default 256. */
  readonly maxInFlight?: number;
  /** Largest UNMAP (all descriptors together) and WRITE SAME, in bytes. Default 1 GiB. */
  readonly maxUnmapBytes?: number;
  /** UNMAP block descriptors per command (VPD 0xB0). Default 16; Linux sends 1. */
  readonly maxUnmapDescriptors?: number;
}

const DEFAULT_MAX_TRANSFER_BYTES = 1 << 20;
const DEFAULT_MAX_IN_FLIGHT = 256;
const DEFAULT_MAX_UNMAP_BYTES = 1 << 30;
const DEFAULT_MAX_UNMAP_DESCRIPTORS = 16;
const PAGE_BYTES = 4096;
/** Largest MODE SELECT parameter list looked at (a header plus a few caching pages). */
const MODE_SELECT_MAX_BYTES = 512;

/** Opcodes this unit implements: anything else is INVALID COMMAND OPERATION CODE. */
const SUPPORTED = new Uint8Array(256);
for (const op of Object.values(ScsiOp)) SUPPORTED[op] = 1;
// REPORT LUNS belongs to the target (ScsiTargetLuns), not to one unit.
SUPPORTED[ScsiOp.ReportLuns] = 0;

function checkOption(name: string, value: number, min: number, max: number): number {
  if (!Number.isSafeInteger(value) || value < min || value > max) throw new RangeError(`ScsiDisk option ${name} = ${value} is outside ${min}..${max}`);
  return value;
}

export class ScsiDisk implements ScsiLogicalUnit, BlockDone {
  readonly blockBytes: number;
  readonly limits: BlockLimits;
  private readonly physicalExponent: number;
  private readonly maxUnmapDescriptors: number;
  private readonly standardInquiry: Uint8Array;
  private readonly vpd: VpdPages;
  private readonly pool: DiskRequestPool;
  /** iovec entries per request. */
  private readonly iovCapacity: number;
  /** Answers of emulated commands are built here, then copied to the guest. */
  private readonly scratch = new Uint8Array(PAGE_BYTES);
  private readonly unmapList: Uint8Array;
  private readonly block = new BlockCdb();
  private capacityChanged = false;

  constructor(
    readonly backend: BlockBackend,
    options: ScsiDiskOptions = {},
  ) {
    const info = backend.info;
    const blockBytes = info.logicalBlockBytes;
    if (blockBytes !== 512 && blockBytes !== 4096) throw new RangeError(`logical block size ${blockBytes} is not 512 or 4096`);
    const ratio = info.physicalBlockBytes / blockBytes;
    if (!Number.isInteger(ratio) || ratio < 1 || ratio > 1 << 15 || (ratio & (ratio - 1)) !== 0) {
      throw new RangeError(`physical block size ${info.physicalBlockBytes} is not a power-of-two multiple of ${blockBytes}`);
    }
    this.blockBytes = blockBytes;
    this.physicalExponent = Math.log2(ratio);

    const maxTransferBytes = checkOption('maxTransferBytes', options.maxTransferBytes ?? DEFAULT_MAX_TRANSFER_BYTES, PAGE_BYTES, 65534 * PAGE_BYTES);
    if (maxTransferBytes % PAGE_BYTES !== 0) throw new RangeError(`ScsiDisk option maxTransferBytes = ${maxTransferBytes} is not a multiple of ${PAGE_BYTES}`);
    const maxInFlight = checkOption('maxInFlight', options.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT, 1, 65536);
    const maxUnmapBytes = checkOption('maxUnmapBytes', options.maxUnmapBytes ?? DEFAULT_MAX_UNMAP_BYTES, blockBytes, Number.MAX_SAFE_INTEGER);
    this.maxUnmapDescriptors = checkOption('maxUnmapDescriptors', options.maxUnmapDescriptors ?? DEFAULT_MAX_UNMAP_DESCRIPTORS, 1, 4096);

    const largeBlocks = Math.min(0xffffffff, Math.floor(maxUnmapBytes / blockBytes));
    this.limits = {
      maxTransferBlocks: maxTransferBytes / blockBytes,
      optimalGranularityBlocks: ratio,
      maxUnmapBlocks: info.discard ? largeBlocks : 0,
      maxUnmapDescriptors: info.discard ? this.maxUnmapDescriptors : 0,
      unmapGranularityBlocks: ratio,
      maxWriteSameBlocks: largeBlocks,
    };
    this.standardInquiry = buildStandardInquiry(Peripheral.DirectAccessDisk);
    this.vpd = new VpdPages({ serial: info.serial, discard: info.discard, limits: this.limits });
    this.unmapList = new Uint8Array(UNMAP_HEADER_BYTES + UNMAP_DESCRIPTOR_BYTES * this.maxUnmapDescriptors);
    // A buffer of maxTransferBytes starting mid-page spans one more page than it fills; one
    // spare entry on top.
    this.iovCapacity = maxTransferBytes / PAGE_BYTES + 2;
    this.pool = new DiskRequestPool(this, maxInFlight, this.iovCapacity, this.maxUnmapDescriptors);
  }

  /** Commands currently waiting on the backend. */
  get inFlight(): number {
    return this.pool.inFlight;
  }

  /** The capacity in logical blocks, as the backend reports it now. */
  get capacityBlocks(): number {
    const size = this.backend.info.sizeBytes;
    return Number.isSafeInteger(size) && size > 0 ? Math.floor(size / this.blockBytes) : 0;
  }

  /**
   * The disk was resized: the next command (other than INQUIRY and REQUEST SENSE) gets
   * UNIT ATTENTION, CAPACITY DATA HAS CHANGED, once, so the guest re-reads the capacity.
   */
  notifyCapacityChanged(): void {
    this.capacityChanged = true;
  }

  execute(command: ScsiCommand): void {
    let finished: boolean;
    try {
      finished = this.run(command);
    } catch {
      setCheckCondition(command, SenseKey.HardwareError, Asc.InternalTargetFailure);
      finished = true;
    }
    if (finished) command.complete();
  }

  /** Returns true when the command's results are filled (complete it), false when pending. */
  private run(command: ScsiCommand): boolean {
    const cdb = command.cdb;
    const cdbLength = command.cdbLength;
    if (!Number.isInteger(cdbLength) || cdbLength < 1 || cdbLength > cdb.length) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
    const op = cdb[0]!;
    if (this.capacityChanged && op !== ScsiOp.Inquiry && op !== ScsiOp.RequestSense && op !== ScsiOp.ReportLuns) {
      this.capacityChanged = false;
      return this.fail(command, SenseKey.UnitAttention, Asc.CapacityDataHasChanged);
    }
    if (SUPPORTED[op] === 0) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidCommandOperationCode);
    if (cdbLength < cdbLengthOfGroup(op)) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);

    switch (op) {
      case ScsiOp.TestUnitReady:
      case ScsiOp.StartStopUnit:
      case ScsiOp.PreventAllowMediumRemoval:
        setGood(command, 0);
        return true;
      case ScsiOp.Inquiry:
        return this.inquiry(command);
      case ScsiOp.RequestSense:
        return this.requestSense(command);
      case ScsiOp.ReadCapacity10:
        return this.readCapacity10(command);
      case ScsiOp.ServiceActionIn16:
        return this.serviceActionIn(command);
      case ScsiOp.ModeSense6:
      case ScsiOp.ModeSense10:
        return this.modeSense(command);
      case ScsiOp.ModeSelect6:
      case ScsiOp.ModeSelect10:
        return this.modeSelect(command);
      case ScsiOp.Read6:
      case ScsiOp.Read10:
      case ScsiOp.Read12:
      case ScsiOp.Read16:
        return this.readWrite(command, false);
      case ScsiOp.Write6:
      case ScsiOp.Write10:
      case ScsiOp.Write12:
      case ScsiOp.Write16:
        return this.readWrite(command, true);
      case ScsiOp.Verify10:
      case ScsiOp.Verify12:
      case ScsiOp.Verify16:
        return this.verify(command);
      case ScsiOp.SynchronizeCache10:
      case ScsiOp.SynchronizeCache16:
        return this.synchronizeCache(command);
      case ScsiOp.Unmap:
        return this.unmap(command);
      case ScsiOp.WriteSame10:
      case ScsiOp.WriteSame16:
        return this.writeSame(command);
      default:
        return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidCommandOperationCode);
    }
  }

  private fail(command: ScsiCommand, senseKey: number, code: number): true {
    setCheckCondition(command, senseKey, code);
    return true;
  }

  /**
   * Sends `total` bytes of `answer` to the initiator, cut to the allocation length and the
   * buffer, and completes GOOD with what was moved.
   */
  private answer(command: ScsiCommand, answer: Uint8Array, total: number): true {
    const allocation = allocationLength(command.cdb);
    const copied = copyToDataBuffer(command.memory, command.data, answer, Math.min(total, allocation));
    if (copied < 0) return this.fail(command, SenseKey.HardwareError, Asc.InternalTargetFailure);
    setGood(command, copied);
    return true;
  }

  // ---- emulated commands ------------------------------------------------------------

  private inquiry(command: ScsiCommand): true {
    const cdb = command.cdb;
    const flags = cdb[1]!;
    if ((flags & 0xfe) !== 0) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb); // CMDDT and reserved bits
    if ((flags & 0x01) === 0) {
      if (cdb[2] !== 0) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
      return this.answer(command, this.standardInquiry, this.standardInquiry.length);
    }
    const page = this.vpd.page(cdb[2]!);
    if (page === undefined) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
    return this.answer(command, page, page.length);
  }

  private requestSense(command: ScsiCommand): true {
    if ((command.cdb[1]! & 0x01) !== 0) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb); // descriptor format: not supported
    // A pending unit attention is reported (and cleared) here; otherwise NO SENSE.
    const pending = this.capacityChanged;
    this.capacityChanged = false;
    const out = this.scratch;
    if (pending) writeFixedSense(out.subarray(0, FIXED_SENSE_BYTES), SenseKey.UnitAttention, Asc.CapacityDataHasChanged);
    else writeFixedSense(out.subarray(0, FIXED_SENSE_BYTES), SenseKey.NoSense, Asc.NoAdditionalSense);
    return this.answer(command, out, FIXED_SENSE_BYTES);
  }

  private capacityShape(): CapacityShape {
    return { blocks: this.capacityBlocks, logicalBlockBytes: this.blockBytes, physicalExponent: this.physicalExponent, discard: this.backend.info.discard };
  }

  private readCapacity10(command: ScsiCommand): true {
    const cdb = command.cdb;
    // Without PMI the LOGICAL BLOCK ADDRESS field must be 0.
    if ((cdb[8]! & 0x01) === 0 && be32(cdb, 2) !== 0) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
    return this.answer(command, this.scratch, buildReadCapacity10(this.scratch, this.capacityShape()));
  }

  private serviceActionIn(command: ScsiCommand): true {
    const cdb = command.cdb;
    if ((cdb[1]! & 0x1f) !== ServiceAction.ReadCapacity16) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
    if ((cdb[14]! & 0x01) === 0 && be64(cdb, 2) !== 0) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
    return this.answer(command, this.scratch, buildReadCapacity16(this.scratch, this.capacityShape()));
  }

  private modeState(): ModeState {
    const info = this.backend.info;
    return { readOnly: info.readOnly, writeCache: info.writeCache };
  }

  private modeSense(command: ScsiCommand): true {
    const total = buildModeSense(this.scratch, command.cdb, this.modeState());
    // Linux turns MODE SENSE errors into "success with N bytes": setCheckCondition leaves
    // bytesTransferred at 0 so that N is 0.
    if (total < 0) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
    if (total > MAX_MODE_SENSE_BYTES) return this.fail(command, SenseKey.HardwareError, Asc.InternalTargetFailure);
    return this.answer(command, this.scratch, total);
  }

  private modeSelect(command: ScsiCommand): true {
    const cdb = command.cdb;
    // PF = 0 would mean vendor-specific pages: only the SPC page format is understood.
    if ((cdb[1]! & 0x10) === 0) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
    const length = parameterListLength(cdb);
    if (length === 0) {
      setGood(command, 0);
      return true;
    }
    if (length > command.data.byteLength) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
    if (length > MODE_SELECT_MAX_BYTES) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInParameterList);
    const list = this.scratch;
    const copied = copyFromDataBuffer(command.memory, command.data, list, length);
    if (copied !== length) return this.fail(command, SenseKey.HardwareError, Asc.InternalTargetFailure);
    if (!modeSelectChangesNothing(list, length, cdb[0] === ScsiOp.ModeSelect10, this.modeState())) {
      return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInParameterList);
    }
    setGood(command, length);
    return true;
  }

  private verify(command: ScsiCommand): true {
    const block = this.block;
    if (!decodeBlockCdb(command.cdb, block)) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
    // Only medium verification (BYTCHK 0): there is nothing to compare against.
    if (block.byteCheck !== 0) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
    if (block.lba + block.blocks > this.capacityBlocks) return this.fail(command, SenseKey.IllegalRequest, Asc.LbaOutOfRange);
    setGood(command, 0);
    return true;
  }

  // ---- commands served by the backend -------------------------------------------------

  private readWrite(command: ScsiCommand, write: boolean): boolean {
    const block = this.block;
    if (!decodeBlockCdb(command.cdb, block)) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
    if (write && this.backend.info.readOnly) return this.fail(command, SenseKey.DataProtect, Asc.WriteProtected);
    if (block.lba + block.blocks > this.capacityBlocks) return this.fail(command, SenseKey.IllegalRequest, Asc.LbaOutOfRange);
    if (block.blocks === 0) {
      setGood(command, 0);
      return true;
    }
    if (block.blocks > this.limits.maxTransferBlocks) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
    const bytes = block.blocks * this.blockBytes;
    // A buffer smaller than the CDB's transfer length, or one whose direction contradicts
    // the opcode, is refused outright (Linux never sends either); a larger buffer is fine
    // and only the CDB's length moves.
    const direction = write ? DataDirection.ToDevice : DataDirection.FromDevice;
    if (command.dataDirection !== direction || command.data.byteLength < bytes) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
    const request = this.pool.acquire(command);
    if (request === null) return this.busy(command);
    if (!command.data.sliceInto(request.iov, 0, bytes)) {
      this.pool.release(request);
      return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
    }
    request.kind = write ? RequestKind.Write : RequestKind.Read;
    request.offset = block.lba * this.blockBytes;
    request.length = bytes;
    request.fua = block.fua;
    request.successBytes = bytes;
    return this.start(request);
  }

  private synchronizeCache(command: ScsiCommand): boolean {
    const block = this.block;
    if (!decodeBlockCdb(command.cdb, block)) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
    // NUMBER OF LOGICAL BLOCKS 0 means "to the end"; the whole cache is flushed either way.
    if (block.lba + block.blocks > this.capacityBlocks) return this.fail(command, SenseKey.IllegalRequest, Asc.LbaOutOfRange);
    const request = this.pool.acquire(command);
    if (request === null) return this.busy(command);
    request.kind = RequestKind.Flush;
    return this.start(request);
  }

  private unmap(command: ScsiCommand): boolean {
    const cdb = command.cdb;
    const info = this.backend.info;
    if (!info.discard) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidCommandOperationCode);
    if ((cdb[1]! & 0x01) !== 0) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb); // ANCHOR
    if (info.readOnly) return this.fail(command, SenseKey.DataProtect, Asc.WriteProtected);
    const length = parameterListLength(cdb);
    if (length === 0) {
      setGood(command, 0);
      return true;
    }
    if (length < UNMAP_HEADER_BYTES) return this.fail(command, SenseKey.IllegalRequest, Asc.ParameterListLengthError);
    if (length > command.data.byteLength || command.dataDirection !== DataDirection.ToDevice) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
    const list = this.unmapList;
    const want = Math.min(length, list.length);
    if (copyFromDataBuffer(command.memory, command.data, list, want) !== want) return this.fail(command, SenseKey.HardwareError, Asc.InternalTargetFailure);
    const count = unmapDescriptorCount(list, length);
    if (count < 0 || count > this.maxUnmapDescriptors) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInParameterList);

    const capacity = this.capacityBlocks;
    let total = 0;
    for (let i = 0; i < count; i++) {
      const at = UNMAP_HEADER_BYTES + i * UNMAP_DESCRIPTOR_BYTES;
      const lba = be64(list, at);
      const blocks = be32(list, at + 8);
      if (lba + blocks > capacity) return this.fail(command, SenseKey.IllegalRequest, Asc.LbaOutOfRange);
      total += blocks;
    }
    if (total > this.limits.maxUnmapBlocks) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInParameterList);
    if (total === 0) {
      setGood(command, length);
      return true;
    }

    const request = this.pool.acquire(command);
    if (request === null) return this.busy(command);
    request.kind = RequestKind.Unmap;
    for (let i = 0; i < count; i++) {
      const at = UNMAP_HEADER_BYTES + i * UNMAP_DESCRIPTOR_BYTES;
      const blocks = be32(list, at + 8);
      if (blocks === 0) continue;
      request.rangeOffsets[request.rangeCount] = be64(list, at) * this.blockBytes;
      request.rangeLengths[request.rangeCount] = blocks * this.blockBytes;
      request.rangeCount++;
    }
    request.offset = request.rangeOffsets[0]!;
    request.length = request.rangeLengths[0]!;
    request.successBytes = length;
    return this.start(request);
  }

  private writeSame(command: ScsiCommand): boolean {
    const block = this.block;
    const info = this.backend.info;
    if (!decodeBlockCdb(command.cdb, block)) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
    if (info.readOnly) return this.fail(command, SenseKey.DataProtect, Asc.WriteProtected);
    // WSNZ is set in VPD 0xB0: 0 ("to the end of the medium") is refused, as is anything
    // above MAXIMUM WRITE SAME LENGTH.
    if (block.blocks === 0 || block.blocks > this.limits.maxWriteSameBlocks) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
    if (block.lba + block.blocks > this.capacityBlocks) return this.fail(command, SenseKey.IllegalRequest, Asc.LbaOutOfRange);

    let zeros: boolean;
    if (block.noDataOut) {
      // NDOB: the block is all zeros. Without UNMAP there would be nothing to write from.
      if (!block.unmap || !info.discard) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
      zeros = true;
    } else {
      if (command.dataDirection !== DataDirection.ToDevice || command.data.byteLength < this.blockBytes) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);
      const copied = copyFromDataBuffer(command.memory, command.data, this.scratch, this.blockBytes);
      if (copied !== this.blockBytes) return this.fail(command, SenseKey.HardwareError, Asc.InternalTargetFailure);
      zeros = isZero(this.scratch, this.blockBytes);
    }

    // Unmapped blocks read as zeros (LBPRZ), so deallocating is only right for a zero block.
    const deallocate = block.unmap && info.discard && zeros;
    // Otherwise the block is written repeatedly: each copy takes as many iovec entries as
    // segments of the buffer the block spans.
    const segments = deallocate ? 0 : segmentsCovering(command, this.blockBytes);
    const perChunk = segments === 0 ? 0 : Math.min(Math.floor(this.iovCapacity / segments), this.limits.maxTransferBlocks);
    if (!deallocate && perChunk < 1) return this.fail(command, SenseKey.IllegalRequest, Asc.InvalidFieldInCdb);

    const request = this.pool.acquire(command);
    if (request === null) return this.busy(command);
    request.successBytes = block.noDataOut ? 0 : this.blockBytes;
    if (deallocate) {
      request.kind = RequestKind.Unmap;
      request.rangeOffsets[0] = block.lba * this.blockBytes;
      request.rangeLengths[0] = block.blocks * this.blockBytes;
      request.rangeCount = 1;
      request.offset = request.rangeOffsets[0]!;
      request.length = request.rangeLengths[0]!;
      return this.start(request);
    }
    request.kind = RequestKind.WriteSame;
    request.chunkBlocks = perChunk;
    request.nextOffset = block.lba * this.blockBytes;
    request.remainingBlocks = block.blocks;
    this.fillWriteSameChunk(request);
    return this.start(request);
  }

  /** Points the request's iovecs at the initiator's one block, repeated, for the next chunk. */
  private fillWriteSameChunk(request: DiskRequest): void {
    const data = request.command!.data;
    const blocks = Math.min(request.remainingBlocks, request.chunkBlocks);
    request.iov.clear();
    for (let b = 0; b < blocks; b++) {
      let left = this.blockBytes;
      for (let i = 0; i < data.count && left > 0; i++) {
        const take = Math.min(data.lengthAt(i), left);
        request.iov.push(data.addressAt(i), take);
        left -= take;
      }
    }
    request.offset = request.nextOffset;
    request.length = blocks * this.blockBytes;
    request.fua = false;
  }

  private busy(command: ScsiCommand): true {
    // Every request is in flight: the initiator retries later.
    command.scsiStatus = ScsiStatus.TaskSetFull;
    command.senseLength = 0;
    command.bytesTransferred = 0;
    return true;
  }

  // ---- the submit / complete loop -------------------------------------------------------

  /** Submits the request's first step; true when the command already finished (results set). */
  private start(request: DiskRequest): boolean {
    let finished: boolean;
    try {
      finished = this.pump(request);
    } catch {
      setCheckCondition(request.command!, SenseKey.HardwareError, Asc.InternalTargetFailure);
      finished = true;
    }
    if (!finished) return false;
    this.pool.release(request);
    return true;
  }

  /**
   * Issues steps until one stays pending (false) or the command is finished (true). A step
   * the backend completes inside the call is handled here, in a loop, not by recursion.
   */
  private pump(request: DiskRequest): boolean {
    for (;;) {
      request.completedDuringSubmit = false;
      request.submitting = true;
      try {
        this.issue(request);
      } catch {
        // The backend may still hold the request: retire it for good.
        request.submitting = false;
        this.pool.abandon(request);
        setCheckCondition(request.command!, SenseKey.HardwareError, Asc.InternalTargetFailure);
        return true;
      }
      request.submitting = false;
      if (!request.completedDuringSubmit) {
        request.waiting = true;
        return false;
      }
      if (this.advance(request, request.parkedResult)) return true;
    }
  }

  private issue(request: DiskRequest): void {
    switch (request.kind) {
      case RequestKind.Read:
        this.backend.read(request, this);
        return;
      case RequestKind.Write:
      case RequestKind.WriteSame:
        this.backend.write(request, this);
        return;
      case RequestKind.Flush:
        this.backend.flush(request, this);
        return;
      case RequestKind.Unmap:
        this.backend.discard(request, this);
        return;
    }
  }

  /** The backend's completion of one step. */
  blockDone(io: BlockIo, result: number): void {
    if (!(io instanceof DiskRequest) || io.owner !== this || io.command === null) return;
    const request = io;
    if (request.submitting) {
      request.completedDuringSubmit = true;
      request.parkedResult = result;
      return;
    }
    if (!request.waiting) return; // a second completion of the same step
    request.waiting = false;
    let finished: boolean;
    try {
      finished = this.advance(request, result) || this.pump(request);
    } catch {
      setCheckCondition(request.command!, SenseKey.HardwareError, Asc.InternalTargetFailure);
      finished = true;
    }
    if (finished) this.pool.release(request).complete();
  }

  /**
   * Takes one step's result: true when the command is finished (results set), false when
   * the request now describes the next step.
   */
  private advance(request: DiskRequest, result: number): boolean {
    const command = request.command!;
    const ok = Number.isSafeInteger(result) && result >= 0;
    if (!ok || ((request.kind === RequestKind.Read || request.kind === RequestKind.Write || request.kind === RequestKind.WriteSame) && result !== request.length)) {
      // A short read or write is an I/O error too: the range was checked against capacity.
      this.setBackendError(command, request.kind, ok ? -Errno.EIO : result);
      return true;
    }
    if (request.kind === RequestKind.Unmap) {
      request.rangeIndex++;
      if (request.rangeIndex < request.rangeCount) {
        request.offset = request.rangeOffsets[request.rangeIndex]!;
        request.length = request.rangeLengths[request.rangeIndex]!;
        return false;
      }
    } else if (request.kind === RequestKind.WriteSame) {
      request.remainingBlocks -= request.length / this.blockBytes;
      request.nextOffset += request.length;
      if (request.remainingBlocks > 0) {
        this.fillWriteSameChunk(request);
        return false;
      }
    }
    setGood(command, request.successBytes);
    return true;
  }

  private setBackendError(command: ScsiCommand, kind: RequestKind, result: number): void {
    const errno = -result;
    if (errno === Errno.EIO) {
      if (kind === RequestKind.Read) setCheckCondition(command, SenseKey.MediumError, Asc.UnrecoveredReadError);
      else setCheckCondition(command, SenseKey.MediumError, Asc.WriteError);
    } else if (errno === Errno.ENOSPC) {
      setCheckCondition(command, SenseKey.DataProtect, Asc.SpaceAllocationFailedWriteProtect);
    } else if (errno === Errno.EROFS) {
      setCheckCondition(command, SenseKey.DataProtect, Asc.WriteProtected);
    } else {
      setCheckCondition(command, SenseKey.HardwareError, Asc.InternalTargetFailure);
    }
  }
}

function isZero(bytes: Uint8Array, length: number): boolean {
  for (let i = 0; i < length; i++) if (bytes[i] !== 0) return false;
  return true;
}

/** How many segments of the command's buffer the first `bytes` bytes span (0: too short). */
function segmentsCovering(command: ScsiCommand, bytes: number): number {
  const data = command.data;
  let left = bytes;
  let segments = 0;
  for (let i = 0; i < data.count && left > 0; i++) {
    left -= Math.min(data.lengthAt(i), left);
    segments++;
  }
  return left === 0 ? segments : 0;
}
