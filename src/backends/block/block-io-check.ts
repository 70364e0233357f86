// The checks every backend makes before touching a request: its range is whole blocks
// on the disk, and every buffer lies in guest RAM (the kernel, or a JS copy, would
// otherwise read or write anywhere in this process).
import type { BlockIo, DiskInfo } from './block-backend.js';
import { Errno } from '../../sys/errors.js';

/** 0, or -EINVAL for a bad range or length, or -EFAULT for a buffer outside guest RAM. */
export function checkBlockIo(io: BlockIo, info: DiskInfo, withData: boolean): number {
  const { offset, length } = io;
  const block = info.logicalBlockBytes;
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) return -Errno.EINVAL;
  if (offset % block !== 0 || length % block !== 0 || offset + length > info.sizeBytes) return -Errno.EINVAL;
  if (!withData) return 0;
  const iov = io.iov;
  if (iov.byteLength !== length) return -Errno.EINVAL;
  const memory = io.memory;
  const base = Number(memory.base);
  for (let i = 0; i < iov.count; i++) {
    if (!memory.contains(iov.addressAt(i) - base, iov.lengthAt(i))) return -Errno.EFAULT;
  }
  return 0;
}
