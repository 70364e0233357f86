// TAP devices (/dev/net/tun): a virtual Ethernet link whose far end is a file descriptor.
// enlighten opens them with a virtio-net header in front of every frame (IFF_VNET_HDR), so
// checksum offload and TCP segmentation pass between a guest and the host kernel as
// metadata instead of being done in JavaScript. Data-path calls (read, readv, writev)
// return -errno, because EAGAIN is the normal "nothing more now" answer of a non-blocking
// fd; set-up calls throw SysError.
import { Errno, SysError } from './errors.js';
import type { IovecList } from './iovec.js';
import { errno, libc, raw } from './libc.js';

// <linux/if_tun.h>. ioctl numbers are _IOW/_IOR('T', nr, int): 'T' = 0x54, size 4.
const TUNSETIFF = 0x400454ca;
const TUNSETPERSIST = 0x400454cb;
const TUNGETFEATURES = 0x800454cf;
const TUNSETOFFLOAD = 0x400454d0;
const TUNSETVNETHDRSZ = 0x400454d8;
const TUNSETCARRIER = 0x400454e2;
// <linux/sockios.h>. The tun fd itself answers the hardware-address pair; MTU and flags
// need a socket (and act in the socket's network namespace).
const SIOCGIFFLAGS = 0x8913;
const SIOCSIFFLAGS = 0x8914;
const SIOCGIFMTU = 0x8921;
const SIOCSIFMTU = 0x8922;
const SIOCSIFHWADDR = 0x8924;
const SIOCGIFHWADDR = 0x8927;

export const IFF_TUN = 0x0001;
export const IFF_TAP = 0x0002;
export const IFF_MULTI_QUEUE = 0x0100;
export const IFF_NO_PI = 0x1000;
export const IFF_VNET_HDR = 0x4000;
const IFF_UP = 0x1;
const ARPHRD_ETHER = 1;

/** TUNSETOFFLOAD bits: what the kernel may hand us unfinished (partial checksums, GSO frames). */
export const TUN_F_CSUM = 0x01;
export const TUN_F_TSO4 = 0x02;
export const TUN_F_TSO6 = 0x04;
export const TUN_F_TSO_ECN = 0x08;
export const TUN_F_UFO = 0x10;
export const TUN_F_USO4 = 0x20;
export const TUN_F_USO6 = 0x40;

/** Kernel interface names are at most 15 bytes plus the NUL (IFNAMSIZ). */
export const IFNAMSIZ = 16;
const IFREQ_BYTES = 40;

const O_RDWR = 0o2;
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
const AF_INET = 2;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;

// Buffers are uintptr_t: the data path passes plain numbers, never a BigInt or a JS array.
const sys = {
  open: libc.func('int open(const char *path, int flags)'),
  socket: libc.func('int socket(int domain, int type, int protocol)'),
  ioctlValue: libc.func('int ioctl(int fd, unsigned long request, unsigned long value)'),
  ioctlBuffer: libc.func('int ioctl(int fd, unsigned long request, _Inout_ uint8_t *arg)'),
  read: libc.func('intptr_t read(int fd, uintptr_t buf, size_t count)'),
  write: libc.func('intptr_t write(int fd, uintptr_t buf, size_t count)'),
  readv: libc.func('intptr_t readv(int fd, uintptr_t iov, int iovcnt)'),
  writev: libc.func('intptr_t writev(int fd, uintptr_t iov, int iovcnt)'),
} as const;

export interface TapOpenOptions {
  /** Interface name (<= 15 bytes); empty or absent lets the kernel pick tapN. An existing TAP of that name is attached to. */
  name?: string;
  /** IFF_MULTI_QUEUE: every open() of the same name adds a queue (one fd per queue). */
  multiQueue?: boolean;
  /** Bytes of virtio-net header before each frame: 12 (virtio_net_hdr_v1, the default) or 10 (legacy); 0 opens without IFF_VNET_HDR. */
  vnetHeaderSize?: 0 | 10 | 12;
  /** TUN_F_* bits the kernel may use when handing us frames; default CSUM | TSO4 | TSO6. Needs a vnet header. */
  offloads?: number;
}

/** One queue of a TAP device: a non-blocking, close-on-exec fd. */
export class TapDevice {
  readonly fd: number;
  readonly name: string;
  readonly vnetHeaderSize: number;
  private closed = false;

  private constructor(fd: number, name: string, vnetHeaderSize: number) {
    this.fd = fd;
    this.name = name;
    this.vnetHeaderSize = vnetHeaderSize;
  }

  static open(options: TapOpenOptions = {}): TapDevice {
    const vnetHeaderSize = options.vnetHeaderSize ?? 12;
    const name = options.name ?? '';
    if (Buffer.byteLength(name) >= IFNAMSIZ) throw new RangeError(`interface name '${name}' is longer than ${IFNAMSIZ - 1} bytes`);
    const fd = sys.open('/dev/net/tun', O_RDWR | O_NONBLOCK | O_CLOEXEC) as number;
    if (fd === -1) throw new SysError('open(/dev/net/tun)', errno());
    try {
      const ifr = ifreq(name);
      let flags = IFF_TAP | IFF_NO_PI;
      if (vnetHeaderSize > 0) flags |= IFF_VNET_HDR;
      if (options.multiQueue) flags |= IFF_MULTI_QUEUE;
      ifr.writeUInt16LE(flags, IFNAMSIZ);
      ioctlBuffer(fd, TUNSETIFF, ifr, 'TUNSETIFF');
      // The kernel writes back the name it chose (tapN when we gave none).
      const end = ifr.indexOf(0);
      const tap = new TapDevice(fd, ifr.toString('latin1', 0, end < 0 || end > IFNAMSIZ ? IFNAMSIZ : end), vnetHeaderSize);
      if (vnetHeaderSize > 0) {
        // The default is 10 (no num_buffers); 12 matches virtio_net_hdr_v1, the layout
        // a mergeable-buffers virtio device and our codec use.
        const size = Buffer.alloc(4);
        size.writeInt32LE(vnetHeaderSize, 0);
        ioctlBuffer(fd, TUNSETVNETHDRSZ, size, 'TUNSETVNETHDRSZ');
        tap.setOffload(options.offloads ?? TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6);
      }
      return tap;
    } catch (e) {
      raw.close(fd);
      throw e;
    }
  }

  /**
   * Which TUN_F_* work the kernel may leave to us in frames we read (it raises the
   * device's features accordingly): TSO needs CSUM. Frames we write may use any offload
   * regardless of this.
   */
  setOffload(flags: number): void {
    if ((sys.ioctlValue(this.fd, TUNSETOFFLOAD, flags) as number) === -1) throw new SysError('ioctl(TUNSETOFFLOAD)', errno());
  }

  /** Carrier on/off: the link in whichever namespace holds the TAP shows NO-CARRIER while off. */
  setCarrier(up: boolean): void {
    const value = Buffer.alloc(4);
    value.writeInt32LE(up ? 1 : 0, 0);
    ioctlBuffer(this.fd, TUNSETCARRIER, value, 'TUNSETCARRIER');
  }

  /** Keep the device after the last fd closes (for tests that hand a TAP to another process). */
  setPersist(persist: boolean): void {
    if ((sys.ioctlValue(this.fd, TUNSETPERSIST, persist ? 1 : 0) as number) === -1) throw new SysError('ioctl(TUNSETPERSIST)', errno());
  }

  /** The TAP interface's own MAC address (the host side of the link, not a guest's). */
  macAddress(): Uint8Array {
    const ifr = ifreq(this.name);
    ioctlBuffer(this.fd, SIOCGIFHWADDR, ifr, 'SIOCGIFHWADDR');
    return new Uint8Array(ifr.subarray(IFNAMSIZ + 2, IFNAMSIZ + 8));
  }

  setMacAddress(mac: Uint8Array): void {
    if (mac.length !== 6) throw new RangeError('a MAC address is 6 bytes');
    const ifr = ifreq(this.name);
    ifr.writeUInt16LE(ARPHRD_ETHER, IFNAMSIZ);
    ifr.set(mac, IFNAMSIZ + 2);
    ioctlBuffer(this.fd, SIOCSIFHWADDR, ifr, 'SIOCSIFHWADDR');
  }

  /** One frame (vnet header first) into [address, address+length): its length, or -errno (-EAGAIN: none queued). */
  read(address: number, length: number): number {
    const n = sys.read(this.fd, address, length) as number;
    return n === -1 ? -errno() : n;
  }

  /** One frame scattered over the iovecs in use: its length or -errno. */
  readv(iov: IovecList): number {
    const n = sys.readv(this.fd, iov.addressNumber, iov.count) as number;
    return n === -1 ? -errno() : n;
  }

  /** One frame (vnet header first) from [address, address+length): bytes written or -errno. */
  write(address: number, length: number): number {
    const n = sys.write(this.fd, address, length) as number;
    return n === -1 ? -errno() : n;
  }

  /** One frame gathered from the iovecs in use (the first holding the vnet header): bytes written or -errno. */
  writev(iov: IovecList): number {
    const n = sys.writev(this.fd, iov.addressNumber, iov.count) as number;
    return n === -1 ? -errno() : n;
  }

  /** Closing the last queue's fd removes a non-persistent TAP from whatever namespace holds it. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if ((raw.close(this.fd) as number) === -1) throw new SysError(`close(${this.name})`, errno());
  }
}

/** TUNGETFEATURES: the IFF_* flags this kernel's tun driver supports. */
export function tunFeatures(): number {
  const fd = sys.open('/dev/net/tun', O_RDWR | O_CLOEXEC) as number;
  if (fd === -1) throw new SysError('open(/dev/net/tun)', errno());
  try {
    const out = Buffer.alloc(4);
    ioctlBuffer(fd, TUNGETFEATURES, out, 'TUNGETFEATURES');
    return out.readUInt32LE(0);
  } finally {
    raw.close(fd);
  }
}

/** Sets an interface's MTU, in the calling thread's network namespace (SIOCSIFMTU). */
export function setInterfaceMtu(name: string, mtu: number): void {
  withSocket((s) => {
    const ifr = ifreq(name);
    ifr.writeInt32LE(mtu, IFNAMSIZ);
    ioctlBuffer(s, SIOCSIFMTU, ifr, `SIOCSIFMTU(${name})`);
  });
}

export function interfaceMtu(name: string): number {
  return withSocket((s) => {
    const ifr = ifreq(name);
    ioctlBuffer(s, SIOCGIFMTU, ifr, `SIOCGIFMTU(${name})`);
    return ifr.readInt32LE(IFNAMSIZ);
  });
}

/** Brings an interface administratively up or down, in the calling thread's network namespace. */
export function setInterfaceUp(name: string, up: boolean): void {
  withSocket((s) => {
    const ifr = ifreq(name);
    ioctlBuffer(s, SIOCGIFFLAGS, ifr, `SIOCGIFFLAGS(${name})`);
    const flags = ifr.readUInt16LE(IFNAMSIZ);
    ifr.writeUInt16LE(up ? flags | IFF_UP : flags & ~IFF_UP, IFNAMSIZ);
    ioctlBuffer(s, SIOCSIFFLAGS, ifr, `SIOCSIFFLAGS(${name})`);
  });
}

function withSocket<T>(body: (fd: number) => T): T {
  const s = sys.socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0) as number;
  if (s === -1) throw new SysError('socket(AF_INET)', errno());
  try {
    return body(s);
  } finally {
    raw.close(s);
  }
}

/** A zeroed struct ifreq with ifr_name filled in. */
function ifreq(name: string): Buffer {
  const ifr = Buffer.alloc(IFREQ_BYTES);
  if (Buffer.byteLength(name) >= IFNAMSIZ) throw new RangeError(`interface name '${name}' is longer than ${IFNAMSIZ - 1} bytes`);
  ifr.write(name, 0, 'latin1');
  return ifr;
}

function ioctlBuffer(fd: number, request: number, arg: Uint8Array, name: string): void {
  if ((sys.ioctlBuffer(fd, request, arg) as number) === -1) {
    const e = errno();
    throw new SysError(`ioctl(${name})`, e === 0 ? Errno.EIO : e);
  }
}
