// One-off block requests for the control plane (tests, CLI): copy the caller's bytes into
// freshly allocated guest pages, submit, and copy back. Copies are fine here; the data
// path (benchmarks, FUSE) submits GuestBlockRequests on its own buffers instead.
import type { GuestMemory } from '../../memory/guest-memory.js';
import { PAGE_SIZE } from '../../memory/page.js';
import type { PageAllocator } from '../page-allocator.js';
import { BlockOp, type GuestBlockDevice } from './guest-block-device.js';
import { Errno } from './scsi-replies.js';

/** Largest single control-plane transfer (the pages come from the guest's RAM). */
export const MAX_CONTROL_IO_BYTES = 16 * 1024 * 1024;

export interface DiskIoResult {
  result: number;
  data?: Uint8Array;
}

export async function diskRequest(
  device: GuestBlockDevice,
  memory: GuestMemory,
  allocator: PageAllocator,
  op: BlockOp,
  offset: number,
  length: number,
  options: { data?: Uint8Array; fua?: boolean } = {},
): Promise<DiskIoResult> {
  const moves = op === BlockOp.Read || op === BlockOp.Write;
  if (moves && (!Number.isSafeInteger(length) || length <= 0 || length > MAX_CONTROL_IO_BYTES)) throw new RangeError(`length must be 1..${MAX_CONTROL_IO_BYTES}`);
  const pages = moves ? Math.ceil(length / PAGE_SIZE) : 0;
  const pfn = pages > 0 ? allocator.allocContiguous(pages) : 0;
  const gpa = pfn * PAGE_SIZE;
  if (op === BlockOp.Write) memory.bytes.set(options.data!.subarray(0, length), gpa);
  let keepPages = false;
  try {
    const result = await new Promise<number>((resolve) =>
      device.submit({ op, offset, length, gpa, fua: options.fua ?? false, done: resolve }),
    );
    // A timed-out request may still be answered by the host into these pages: leave them.
    if (result === -Errno.ETIMEDOUT) keepPages = true;
    if (op === BlockOp.Read && result === 0) return { result, data: memory.bytes.slice(gpa, gpa + length) };
    return { result };
  } finally {
    if (pages > 0 && !keepPages) allocator.freeRun(pfn, pages);
  }
}
