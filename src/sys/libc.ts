// The one place where enlighten talks to libc. Every other layer calls the typed wrappers
// in this folder; nothing else loads koffi for system calls.
import koffi from 'koffi';
import { SysError } from './errors.js';

/** The C library, for the other files of this layer (src/sys) to declare their own calls. */
export const libc = koffi.load('libc.so.6');

export const raw = {
  memfd_create: libc.func('int memfd_create(const char *name, unsigned int flags)'),
  ftruncate: libc.func('int ftruncate(int fd, int64_t length)'),
  mmap: libc.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)'),
  munmap: libc.func('int munmap(void *addr, size_t length)'),
  close: libc.func('int close(int fd)'),
  eventfd: libc.func('int eventfd(unsigned int initval, int flags)'),
  read_u64: libc.func('intptr_t read(int fd, _Out_ uint64_t *value, size_t count)'),
  write_u64: libc.func('intptr_t write(int fd, _In_ uint64_t *value, size_t count)'),
  epoll_create1: libc.func('int epoll_create1(int flags)'),
  epoll_ctl: libc.func('int epoll_ctl(int epfd, int op, int fd, void *event)'),
  epoll_wait: libc.func('int epoll_wait(int epfd, void *events, int maxevents, int timeout)'),
  getpid: libc.func('int getpid()'),
  gettid: libc.func('long gettid()'),
} as const;

export function errno(): number {
  return koffi.errno();
}

/** Throws a SysError for a -1 return, otherwise returns the value. */
export function check<T extends number | bigint>(call: string, result: T): T {
  if (result === -1 || result === -1n) throw new SysError(call, errno());
  return result;
}

export const MAP_FAILED = 0xffffffffffffffffn;

/** The address a koffi pointer refers to, as a BigInt. */
export function addressOf(pointer: unknown): bigint {
  if (typeof pointer === 'bigint') return pointer;
  return koffi.address(pointer as object) as bigint;
}

/** A zero-copy ArrayBuffer over native memory. Never touch it after the memory is unmapped. */
export function viewOf(address: bigint, length: number): ArrayBuffer {
  return koffi.view(address as unknown as object, length) as ArrayBuffer;
}
