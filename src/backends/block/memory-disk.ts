// A disk held in process memory: for tests, scratch LUNs and as the reference a file
// backend is checked against. Payload is copied in JS between guest RAM and a plain
// ArrayBuffer; requests complete on a later microtask, like a real asynchronous disk.
import type { BlockBackend, BlockDone, BlockIo, DiskInfo } from './block-backend.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import { Errno } from '../../sys/errors.js';
import { DeferredCompletions } from './deferred-completions.js';
import { checkBlockIo } from './block-io-check.js';

export interface MemoryDiskOptions {
  sizeBytes: number;
  logicalBlockBytes?: 512 | 4096;
  readOnly?: boolean;
  /** Default: a process-unique "MEMDISK-n". */
  serial?: string;
  /** Initial contents (copied), at most sizeBytes long. */
  contents?: Uint8Array;
}

export class MemoryDiskError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MemoryDiskError';
  }
}

/** Block completions delivered on a later microtask (errors, memory copies, injected faults). */
export class BlockCompletionQueue extends DeferredCompletions<BlockIo, BlockDone> {
  constructor() {
    super((sink, io, result) => sink.blockDone(io, result));
  }
}

let nextSerial = 1;

export class MemoryDisk implements BlockBackend {
  readonly info: DiskInfo;
  readonly stats = { reads: 0, writes: 0, flushes: 0, discards: 0, errors: 0 };
  /** The disk's bytes (tests inspect and seed them directly). */
  readonly data: Buffer;
  private readonly completions = new BlockCompletionQueue();
  private closed = false;
  // The last guest RAM seen, as a Buffer, so copies use Buffer.copy (no subarray objects).
  private ram: Buffer | null = null;
  private ramOf: GuestMemory | null = null;
  private ramBase = 0;

  constructor(options: MemoryDiskOptions) {
    const logical = options.logicalBlockBytes ?? 512;
    if (logical !== 512 && logical !== 4096) throw new MemoryDiskError(`logical block size must be 512 or 4096, got ${String(logical)}`);
    const size = options.sizeBytes;
    if (!Number.isSafeInteger(size) || size <= 0 || size % logical !== 0) {
      throw new MemoryDiskError(`memory disk size must be a positive multiple of ${logical} bytes, got ${String(size)}`);
    }
    try {
      this.data = Buffer.from(new ArrayBuffer(size));
    } catch {
      throw new MemoryDiskError(`cannot allocate a ${size}-byte memory disk`);
    }
    if (options.contents) {
      if (options.contents.length > size) throw new MemoryDiskError(`initial contents (${options.contents.length} bytes) exceed the disk size ${size}`);
      this.data.set(options.contents);
    }
    const readOnly = options.readOnly ?? false;
    this.info = {
      sizeBytes: size,
      logicalBlockBytes: logical,
      physicalBlockBytes: Math.max(logical, 4096),
      readOnly,
      discard: !readOnly,
      writeCache: false,
      serial: options.serial ?? `MEMDISK-${nextSerial++}`,
    };
  }

  read(io: BlockIo, done: BlockDone): void {
    this.stats.reads++;
    const error = this.check(io, true);
    if (error !== 0) return this.complete(io, done, error);
    this.copy(io, false);
    this.complete(io, done, io.length);
  }

  write(io: BlockIo, done: BlockDone): void {
    this.stats.writes++;
    if (this.info.readOnly) return this.complete(io, done, -Errno.EROFS);
    const error = this.check(io, true);
    if (error !== 0) return this.complete(io, done, error);
    this.copy(io, true);
    this.complete(io, done, io.length);
  }

  flush(io: BlockIo, done: BlockDone): void {
    this.stats.flushes++;
    this.complete(io, done, this.closed ? -Errno.ECANCELED : 0);
  }

  discard(io: BlockIo, done: BlockDone): void {
    this.stats.discards++;
    if (this.info.readOnly) return this.complete(io, done, -Errno.EROFS);
    const error = this.check(io, false);
    if (error !== 0) return this.complete(io, done, error);
    this.data.fill(0, io.offset, io.offset + io.length);
    this.complete(io, done, 0);
  }

  async close(): Promise<void> {
    this.closed = true;
    // Completions already queued run before a macrotask.
    while (this.completions.pending > 0) await new Promise<void>((resolve) => setImmediate(resolve));
  }

  private complete(io: BlockIo, done: BlockDone, result: number): void {
    if (result < 0) this.stats.errors++;
    this.completions.push(io, done, result);
  }

  /** 0 or -errno: the range lies on the disk in whole blocks and the buffers in guest RAM. */
  private check(io: BlockIo, withData: boolean): number {
    if (this.closed) return -Errno.ECANCELED;
    return checkBlockIo(io, this.info, withData);
  }

  private useRam(memory: GuestMemory): void {
    if (this.ramOf === memory) return;
    this.ramOf = memory;
    this.ramBase = Number(memory.base);
    this.ram = Buffer.from(memory.bytes.buffer, memory.bytes.byteOffset, memory.bytes.byteLength);
  }

  private copy(io: BlockIo, toDisk: boolean): void {
    this.useRam(io.memory);
    const ram = this.ram!;
    const iov = io.iov;
    let at = io.offset;
    for (let i = 0; i < iov.count; i++) {
      const gpa = iov.addressAt(i) - this.ramBase;
      const length = iov.lengthAt(i);
      if (toDisk) ram.copy(this.data, at, gpa, gpa + length);
      else this.data.copy(ram, gpa, at, at + length);
      at += length;
    }
  }
}
