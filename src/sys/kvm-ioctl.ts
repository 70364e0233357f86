// The system calls of the KVM layer: open, the ioctl shapes KVM uses, and the mapping of
// a vCPU's kvm_run area. ioctl is variadic in C; each shape gets its own fixed prototype
// (the third argument travels in a register either way on x86-64), so koffi never takes
// its slower variadic path on the vCPU exit loop.
import { Errno, SysError } from './errors.js';
import { errno, libc } from './libc.js';
import { mapShared, munmap } from './memfd.js';

/** _IO(KVMIO, 0x80); src/kvm/kvm-constants.ts has the rest of the KVM numbers. */
const KVM_RUN = 0xae80;
const O_RDWR = 0o2;
const O_CLOEXEC = 0o2000000;

const sys = {
  open: libc.func('int open(const char *path, int flags)'),
  // "No argument" still passes 0: the register would otherwise hold garbage, and some
  // requests check it (KVM_RUN fails with EINVAL when its argument is not 0).
  ioctlInt: libc.func('int ioctl(int fd, unsigned long request, unsigned long value)'),
  // A Uint8Array passed for `void *` reaches the kernel as a pointer to its bytes, and the
  // kernel's writes land in the caller's buffer (test/kvm-layer.test.ts reads registers so).
  ioctlBuffer: libc.func('int ioctl(int fd, unsigned long request, void *arg)'),
} as const;

/** Opens a device node read-write, close-on-exec. The error names the path. */
export function openDevice(path: string): number {
  const fd = sys.open(path, O_RDWR | O_CLOEXEC) as number;
  if (fd === -1) throw new SysError(`open(${path})`, errno());
  return fd;
}

function checked(name: string, result: number): number {
  if (result === -1) throw new SysError(`ioctl(${name})`, errno());
  return result;
}

/** An ioctl without an argument (KVM_GET_API_VERSION, KVM_CREATE_IRQCHIP, ...). */
export function ioctlNone(fd: number, request: number, name = requestName(request)): number {
  return checked(name, sys.ioctlInt(fd, request, 0) as number);
}

/** An ioctl whose argument is a plain integer (KVM_CHECK_EXTENSION, KVM_CREATE_VCPU, ...). */
export function ioctlInt(fd: number, request: number, value: number | bigint, name = requestName(request)): number {
  return checked(name, sys.ioctlInt(fd, request, value) as number);
}

/** An ioctl whose argument points at a struct: the kernel reads and/or writes `buf` in place. */
export function ioctlBuffer(fd: number, request: number, buf: Uint8Array, name = requestName(request)): number {
  return checked(name, sys.ioctlBuffer(fd, request, buf) as number);
}

/**
 * KVM_RUN. A kick (a signal to the thread, or immediate_exit) ends it with EINTR, and
 * KVM may ask for a retry with EAGAIN: both are part of the exit loop, so they come back
 * as -errno instead of an exception. Every other failure throws.
 */
export function ioctlRun(fd: number, request = KVM_RUN): number {
  const result = sys.ioctlInt(fd, request, 0) as number;
  if (result !== -1) return result;
  const e = errno();
  if (e === Errno.EINTR || e === Errno.EAGAIN) return -e;
  throw new SysError('ioctl(KVM_RUN)', e);
}

/** Maps a vCPU's kvm_run area (shared with the kernel, read-write) in the calling thread. */
export function mapRunArea(vcpuFd: number, size: number): { address: bigint } {
  return { address: mapShared(vcpuFd, size, 0) };
}

export function unmapRunArea(address: bigint, size: number): void {
  munmap(address, size);
}

// Request numbers are registered with their names by src/kvm/kvm-constants.ts so an error
// says "ioctl(KVM_SET_SREGS) failed" rather than a number. Unknown ones print in hex.
const requestNames = new Map<number, string>();

export function nameRequest(request: number, name: string): void {
  requestNames.set(request, name);
}

function requestName(request: number): string {
  return requestNames.get(request) ?? `0x${request.toString(16)}`;
}
