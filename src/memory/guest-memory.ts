// Guest RAM: one memfd, mapped by every thread that touches it, seen through zero-copy
// views. Every guest-supplied address goes through a bounds check here before use.
import { closeFd } from '../sys/fd.js';
import { mapShared, mapSharedAt, memfdCreate, mmap, MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_READ, PROT_WRITE, reserveAddressSpace, viewOf } from '../sys/memfd.js';
import { PAGE_SIZE } from './page.js';

export class GuestMemoryError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GuestMemoryError';
  }
}

/** What a thread needs to map the same guest RAM: pass this, never a view. */
export interface GuestMemoryHandle {
  fd: number;
  size: number;
}

export class GuestMemory {
  readonly fd: number;
  readonly size: number;
  readonly pageCount: number;
  readonly base: bigint;
  readonly bytes: Uint8Array;
  readonly view: DataView;
  /** The whole of RAM as 32-bit words, for Atomics on control words (index = gpa / 4). */
  readonly words: Int32Array;
  private readonly owner: boolean;
  private readonly spareMappings = new Map<number, bigint[]>();

  private constructor(fd: number, size: number, owner: boolean) {
    checkSize(size);
    this.fd = fd;
    this.size = size;
    this.pageCount = size / PAGE_SIZE;
    this.owner = owner;
    this.base = mapShared(fd, size);
    const buffer = viewOf(this.base, size);
    this.bytes = new Uint8Array(buffer);
    this.view = new DataView(buffer);
    this.words = new Int32Array(buffer);
  }

  /** Allocates RAM (zeroed) in a new memfd. It stays mapped for the life of the process. */
  static create(size: number, name = 'enlighten-guest-ram'): GuestMemory {
    checkSize(size); // before the memfd exists, so a refused size leaks no fd
    return new GuestMemory(memfdCreate(name, size), size, true);
  }

  /** Maps RAM that another thread created. */
  static attach(handle: GuestMemoryHandle): GuestMemory {
    return new GuestMemory(handle.fd, handle.size, false);
  }

  get handle(): GuestMemoryHandle {
    return { fd: this.fd, size: this.size };
  }

  contains(gpa: number, length: number): boolean {
    return Number.isSafeInteger(gpa) && Number.isSafeInteger(length) && gpa >= 0 && length >= 0 && gpa + length <= this.size;
  }

  containsPage(pfn: number): boolean {
    return Number.isSafeInteger(pfn) && pfn >= 0 && pfn < this.pageCount;
  }

  check(gpa: number, length: number): void {
    if (!this.contains(gpa, length)) {
      throw new GuestMemoryError(`guest range ${hex(gpa)}+${length} is outside guest RAM (${this.size} bytes)`);
    }
  }

  /** A zero-copy view of [gpa, gpa+length). */
  slice(gpa: number, length: number): Uint8Array {
    this.check(gpa, length);
    return this.bytes.subarray(gpa, gpa + length);
  }

  /** Index into `words` of a 4-byte-aligned guest address. */
  wordIndex(gpa: number): number {
    if ((gpa & 3) !== 0) throw new GuestMemoryError(`unaligned control word at ${hex(gpa)}`);
    this.check(gpa, 4);
    return gpa >>> 2;
  }

  /**
   * Maps guest pages into one contiguous range of this thread's address space, in the
   * order given (a GPADL's page list). With `repeatFrom`, the pages from that index on are
   * mapped a second time right after the first copy, so a ring's data area can be read
   * across its end without a seam (what Linux does with vmap for its own rings).
   */
  mapPages(pfns: readonly number[], repeatFrom?: number): PageMapping {
    for (const pfn of pfns) {
      if (!this.containsPage(pfn)) throw new GuestMemoryError(`page ${pfn} is outside guest RAM (${this.pageCount} pages)`);
    }
    if (pfns.length === 0) throw new GuestMemoryError('cannot map an empty page list');
    const order = repeatFrom === undefined ? [...pfns] : [...pfns, ...pfns.slice(repeatFrom)];
    const length = order.length * PAGE_SIZE;
    const address = this.takeSpare(length) ?? reserveAddressSpace(length);
    // One mmap per run of consecutive guest pages.
    let runStart = 0;
    for (let i = 1; i <= order.length; i++) {
      if (i === order.length || order[i] !== order[i - 1]! + 1) {
        mapSharedAt(address + BigInt(runStart * PAGE_SIZE), this.fd, (i - runStart) * PAGE_SIZE, order[runStart]! * PAGE_SIZE);
        runStart = i;
      }
    }
    return new PageMapping(this, address, length);
  }

  /** @internal Called by PageMapping.release. */
  recycle(address: bigint, length: number): void {
    // Replace the guest pages with private anonymous memory: a stale view can no longer
    // reach guest RAM (the guest may reuse those pages) and cannot fault either.
    mmap(address, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    const list = this.spareMappings.get(length) ?? [];
    list.push(address);
    this.spareMappings.set(length, list);
  }

  private takeSpare(length: number): bigint | undefined {
    return this.spareMappings.get(length)?.pop();
  }

  /** Closes the memfd if this thread created it. The mapping stays: views must never dangle. */
  close(): void {
    if (this.owner) closeFd(this.fd);
  }
}

/** A contiguous view of a list of guest pages. */
export class PageMapping {
  readonly buffer: ArrayBuffer;
  private released = false;

  constructor(private readonly memory: GuestMemory, readonly address: bigint, readonly length: number) {
    this.buffer = viewOf(address, length);
  }

  /** Detaches the view from guest RAM. Views taken from it read private zeroed memory afterwards. */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.memory.recycle(this.address, this.length);
  }
}

function checkSize(size: number): void {
  if (!Number.isSafeInteger(size) || size <= 0 || size % PAGE_SIZE !== 0) {
    throw new GuestMemoryError(`guest RAM size must be a positive multiple of ${PAGE_SIZE}, got ${size}`);
  }
}

function hex(n: number): string {
  return Number.isSafeInteger(n) ? `0x${n.toString(16)}` : String(n);
}
