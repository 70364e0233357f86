// memfd-backed shared memory and mappings of it. Guest RAM is a memfd so every thread
// (and, later, every process) can map the same pages.
import { check, MAP_FAILED, raw, viewOf } from './libc.js';
import { SysError } from './errors.js';
import { errno } from './libc.js';

const MFD_CLOEXEC = 1;
export const PROT_NONE = 0;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_FIXED = 0x10;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;

export function memfdCreate(name: string, size: number): number {
  const fd = check('memfd_create', raw.memfd_create(name, MFD_CLOEXEC) as number);
  check('ftruncate', raw.ftruncate(fd, size) as number);
  return fd;
}

export function mmap(address: bigint, length: number, prot: number, flags: number, fd: number, offset: number): bigint {
  const p = raw.mmap(address === 0n ? null : address, length, prot, flags, fd, offset) as bigint;
  if (p === MAP_FAILED || p === -1n) throw new SysError('mmap', errno());
  return p;
}

export function munmap(address: bigint, length: number): void {
  check('munmap', raw.munmap(address, length) as number);
}

/** Maps length bytes of fd at offset, shared, read-write; returns the address. */
export function mapShared(fd: number, length: number, offset = 0): bigint {
  return mmap(0n, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset);
}

/** Reserves address space with no access, to be filled by MAP_FIXED mappings. */
export function reserveAddressSpace(length: number): bigint {
  return mmap(0n, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
}

/** Maps fd's pages [offset, offset+length) at exactly `address` (inside a reservation). */
export function mapSharedAt(address: bigint, fd: number, length: number, offset: number): void {
  mmap(address, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, offset);
}

export { viewOf };

/** Private zeroed read-write memory (native buffers the kernel reads: iovecs, io_uring rings). */
export function mapAnonymous(length: number): bigint {
  return mmap(0n, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
}

/** Unmaps the memory of owners that were garbage collected (see mapAnonymousOwned). */
const unmapWhenCollected = new FinalizationRegistry<{ address: bigint; length: number }>(({ address, length }) => {
  // A failed munmap leaves the pages mapped: a leak, not a fault, and nothing to tell.
  raw.munmap(address, length);
});

/**
 * mapAnonymous for a native buffer that lives exactly as long as `owner`: unmapped once
 * owner has been garbage collected, so objects made and dropped while a VM runs (a
 * hot-removed NIC's channels, a disk's request slots) give their pages back. Only for
 * memory whose address and views never leave owner, and that the kernel uses only
 * during a call owner makes (an iovec array is copied in at submission).
 */
export function mapAnonymousOwned(owner: object, length: number): bigint {
  const address = mapAnonymous(length);
  unmapWhenCollected.register(owner, { address, length });
  return address;
}
