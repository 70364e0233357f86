// The reference guest's physical page allocator: hands out runs of guest pages for SynIC
// pages, rings and buffers, like the kernel's page allocator does for hv_vmbus.
import { PAGE_SIZE } from '../memory/page.js';

export class OutOfGuestMemory extends Error {
  constructor(pages: number) {
    super(`guest is out of memory: no run of ${pages} free pages`);
    this.name = 'OutOfGuestMemory';
  }
}

export class PageAllocator {
  private readonly used: Uint8Array;
  private next = 0;

  /** Manages pages [firstPage, firstPage + pageCount). */
  constructor(private readonly firstPage: number, readonly pageCount: number) {
    this.used = new Uint8Array(pageCount);
  }

  get freePages(): number {
    let n = 0;
    for (const u of this.used) if (u === 0) n++;
    return n;
  }

  /** Allocates `count` physically contiguous pages; returns the first PFN. */
  allocContiguous(count: number): number {
    if (!Number.isInteger(count) || count <= 0 || count > this.pageCount) throw new OutOfGuestMemory(count);
    for (let tries = 0; tries < 2; tries++) {
      let run = 0;
      for (let i = this.next; i < this.pageCount; i++) {
        run = this.used[i] ? 0 : run + 1;
        if (run === count) {
          const start = i - count + 1;
          this.used.fill(1, start, i + 1);
          this.next = i + 1;
          return this.firstPage + start;
        }
      }
      this.next = 0;
    }
    throw new OutOfGuestMemory(count);
  }

  /** Allocates `count` pages, not necessarily contiguous (what vmalloc'd buffers look like). */
  allocScattered(count: number): number[] {
    const pfns: number[] = [];
    for (let i = 0; i < this.pageCount && pfns.length < count; i++) {
      if (!this.used[i]) {
        this.used[i] = 1;
        pfns.push(this.firstPage + i);
      }
    }
    if (pfns.length < count) {
      this.free(pfns);
      throw new OutOfGuestMemory(count);
    }
    return pfns;
  }

  free(pfns: readonly number[]): void {
    for (const pfn of pfns) {
      const i = pfn - this.firstPage;
      if (i < 0 || i >= this.pageCount || !this.used[i]) throw new Error(`freeing page ${pfn}, which is not allocated`);
      this.used[i] = 0;
    }
  }

  freeRun(first: number, count: number): void {
    this.free(Array.from({ length: count }, (_, i) => first + i));
  }

  static gpa(pfn: number): number {
    return pfn * PAGE_SIZE;
  }
}
