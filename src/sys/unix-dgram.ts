// Unix datagram sockets: the wire of the VM-to-VM switch. A datagram keeps frame
// boundaries, needs no host network set-up, and two sockets connected to each other form
// a private link that nobody else can inject into (a connected receiver refuses datagrams
// from anyone but its peer).
//
// One kernel detail shapes how the switch uses them: a datagram queued on a receiver
// counts against `net.unix.max_dgram_qlen` (10 by default, per namespace) unless the
// receiver is connected back to the sender; then only the sender's SO_SNDBUF bounds what
// is in flight. So the hub gives every VM its own socket and both ends connect to each
// other.
//
// Data-path calls (send, sendmsg, sendmmsg, recv, recvmmsg) take native addresses as
// plain numbers and return -errno, because EAGAIN is the normal answer of a non-blocking
// socket; set-up calls throw SysError.
import fs from 'node:fs';
import { Errno, SysError } from './errors.js';
import type { IovecList } from './iovec.js';
import { errno, libc, raw, viewOf } from './libc.js';
import { mapAnonymous, munmap } from './memfd.js';

const AF_UNIX = 1;
const AF_UNSPEC = 0;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_SNDBUF = 7;
const SO_RCVBUF = 8;
const SO_SNDBUFFORCE = 32;
const SO_RCVBUFFORCE = 33;
/** recvmmsg/recvmsg msg_flags: the datagram was longer than the buffer (the rest is lost). */
export const MSG_TRUNC = 0x20;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;

/** struct sockaddr_un: sa_family_t + 108 bytes of path. */
export const SOCKADDR_UN_BYTES = 110;
const SUN_PATH_BYTES = 108;
/** struct msghdr on x86-64 (pointers and size_t are 8 bytes; namelen is padded). */
const MSGHDR_BYTES = 56;
/** struct mmsghdr: msghdr + unsigned msg_len, padded to 8. */
export const MMSGHDR_BYTES = 64;
const IOVEC_BYTES = 16;
const TWO_32 = 2 ** 32;

const sys = {
  socket: libc.func('int socket(int domain, int type, int protocol)'),
  bind: libc.func('int bind(int fd, const uint8_t *addr, uint32_t len)'),
  connect: libc.func('int connect(int fd, const uint8_t *addr, uint32_t len)'),
  getsockname: libc.func('int getsockname(int fd, _Inout_ uint8_t *addr, _Inout_ uint8_t *len)'),
  setsockopt: libc.func('int setsockopt(int fd, int level, int name, const uint8_t *value, uint32_t len)'),
  getsockopt: libc.func('int getsockopt(int fd, int level, int name, _Inout_ uint8_t *value, _Inout_ uint8_t *len)'),
  send: libc.func('intptr_t send(int fd, uintptr_t buf, size_t length, int flags)'),
  sendto: libc.func('intptr_t sendto(int fd, uintptr_t buf, size_t length, int flags, uintptr_t addr, uint32_t addrlen)'),
  recv: libc.func('intptr_t recv(int fd, uintptr_t buf, size_t length, int flags)'),
  sendmsg: libc.func('intptr_t sendmsg(int fd, uintptr_t msg, int flags)'),
  sendmmsg: libc.func('int sendmmsg(int fd, uintptr_t vec, unsigned int vlen, int flags)'),
  recvmmsg: libc.func('int recvmmsg(int fd, uintptr_t vec, unsigned int vlen, int flags, uintptr_t timeout)'),
  // The return value (dst) is ignored: declaring it void keeps koffi from building a pointer object per call.
  memcpy: libc.func('void memcpy(uintptr_t dst, uintptr_t src, size_t length)'),
} as const;

/** Copies native memory (guest pages into a staging buffer) without a JS view per call. */
export function nativeCopy(dst: number, src: number, length: number): void {
  if (length > 0) sys.memcpy(dst, src, length);
}

/** sockaddr_un bytes for a filesystem path (throws when the path does not fit sun_path). */
export function unixAddress(path: string): Buffer {
  const bytes = Buffer.byteLength(path);
  if (bytes === 0 || bytes >= SUN_PATH_BYTES) throw new RangeError(`unix socket path '${path}' must be 1..${SUN_PATH_BYTES - 1} bytes`);
  const addr = Buffer.alloc(2 + bytes + 1);
  addr.writeUInt16LE(AF_UNIX, 0);
  addr.write(path, 2);
  return addr;
}

/**
 * A socket address kept in native memory so the data path can hand it to sendto/sendmmsg
 * by address. The bytes are exactly what getsockname/recvfrom reported (a path, or an
 * abstract autobind name that starts with a NUL).
 */
export class NativeSocketAddress {
  readonly address: bigint;
  readonly addressNumber: number;
  readonly length: number;
  readonly bytes: Uint8Array;

  constructor(bytes: Uint8Array) {
    if (bytes.length < 2 || bytes.length > SOCKADDR_UN_BYTES) throw new RangeError(`socket address of ${bytes.length} bytes`);
    this.address = mapAnonymous(4096);
    this.addressNumber = Number(this.address);
    this.length = bytes.length;
    this.bytes = new Uint8Array(viewOf(this.address, bytes.length));
    this.bytes.set(bytes);
  }

  equals(other: Uint8Array, length = other.length): boolean {
    if (length !== this.length) return false;
    for (let i = 0; i < length; i++) if (other[i] !== this.bytes[i]) return false;
    return true;
  }

  release(): void {
    munmap(this.address, 4096);
  }
}

/**
 * A native `struct mmsghdr[]` with one iovec and one sockaddr slot per entry, for
 * sendmmsg/recvmmsg: many datagrams per system call. Allocated once and refilled.
 */
export class MessageVector {
  readonly capacity: number;
  readonly address: bigint;
  readonly addressNumber: number;
  private readonly bytes: number;
  private readonly words: Uint32Array;
  private readonly iovAddress: number;
  private readonly nameAddress: number;

  constructor(capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > 4096) throw new RangeError(`message vector capacity ${capacity} out of range`);
    this.capacity = capacity;
    const raw = capacity * (MMSGHDR_BYTES + IOVEC_BYTES + 112);
    this.bytes = Math.ceil(raw / 4096) * 4096;
    this.address = mapAnonymous(this.bytes);
    this.addressNumber = Number(this.address);
    this.words = new Uint32Array(viewOf(this.address, this.bytes));
    this.iovAddress = this.addressNumber + capacity * MMSGHDR_BYTES;
    this.nameAddress = this.iovAddress + capacity * IOVEC_BYTES;
  }

  /** Address of entry `index` (sendmmsg/recvmmsg from the middle). */
  entryAddress(index: number): number {
    return this.addressNumber + index * MMSGHDR_BYTES;
  }

  /** Entry `index` carries one buffer [base, base+length); `withName` points msg_name at the entry's own sockaddr slot (for recvmmsg to fill). */
  setBuffer(index: number, base: number, length: number, withName = false): void {
    const w = this.words;
    const iov = this.iovAddress + index * IOVEC_BYTES;
    const iw = (this.capacity * MMSGHDR_BYTES + index * IOVEC_BYTES) / 4;
    w[iw] = base % TWO_32;
    w[iw + 1] = Math.floor(base / TWO_32);
    w[iw + 2] = length % TWO_32;
    w[iw + 3] = Math.floor(length / TWO_32);
    const m = (index * MMSGHDR_BYTES) / 4;
    if (withName) {
      const name = this.nameAddress + index * 112;
      w[m] = name % TWO_32;
      w[m + 1] = Math.floor(name / TWO_32);
      w[m + 2] = SOCKADDR_UN_BYTES;
    } else {
      w[m] = 0;
      w[m + 1] = 0;
      w[m + 2] = 0;
    }
    w[m + 3] = 0;
    w[m + 4] = iov % TWO_32;
    w[m + 5] = Math.floor(iov / TWO_32);
    w[m + 6] = 1; // msg_iovlen
    w[m + 7] = 0;
    w[m + 8] = 0; // msg_control
    w[m + 9] = 0;
    w[m + 10] = 0; // msg_controllen
    w[m + 11] = 0;
    w[m + 12] = 0; // msg_flags
    w[m + 14] = 0; // msg_len
  }

  /** Points entry `index` at a destination address (sendmmsg on an unconnected socket). */
  setName(index: number, name: NativeSocketAddress | null): void {
    const w = this.words;
    const m = (index * MMSGHDR_BYTES) / 4;
    if (name === null) {
      w[m] = 0;
      w[m + 1] = 0;
      w[m + 2] = 0;
      return;
    }
    w[m] = name.addressNumber % TWO_32;
    w[m + 1] = Math.floor(name.addressNumber / TWO_32);
    w[m + 2] = name.length;
  }

  /** Before each recvmmsg: msg_namelen is in/out, so give every named entry its full slot again. */
  resetNameLengths(count: number): void {
    const w = this.words;
    for (let i = 0; i < count; i++) {
      const m = (i * MMSGHDR_BYTES) / 4;
      if (w[m] !== 0 || w[m + 1] !== 0) w[m + 2] = SOCKADDR_UN_BYTES;
      w[m + 12] = 0;
    }
  }

  /** Bytes received into (or sent from) entry `index` by the last call. */
  messageLength(index: number): number {
    return this.words[(index * MMSGHDR_BYTES) / 4 + 14]!;
  }

  /** msg_flags of entry `index` after recvmmsg (MSG_TRUNC: it did not fit). */
  messageFlags(index: number): number {
    return this.words[(index * MMSGHDR_BYTES) / 4 + 12]!;
  }

  /** The sender's address length of entry `index` after recvmmsg (0 or 2: an unbound sender). */
  nameLength(index: number): number {
    return this.words[(index * MMSGHDR_BYTES) / 4 + 2]!;
  }

  /** The sender's address bytes of entry `index` (a view; valid until the next call). */
  nameView(index: number): Uint8Array {
    const offset = this.capacity * (MMSGHDR_BYTES + IOVEC_BYTES) + index * 112;
    return new Uint8Array(this.words.buffer, offset, SOCKADDR_UN_BYTES);
  }

  release(): void {
    munmap(this.address, this.bytes);
  }
}

export interface UnixDatagramOptions {
  /** SO_SNDBUF in bytes (the kernel doubles it and caps it at net.core.wmem_max unless root forces it). */
  sendBuffer?: number;
  receiveBuffer?: number;
}

/** A non-blocking, close-on-exec AF_UNIX SOCK_DGRAM socket. */
export class UnixDatagramSocket {
  readonly fd: number;
  /** The filesystem path bound by bind(), unlinked again by close(). */
  private boundPath: string | null = null;
  private closed = false;
  /** A native message header for sendmsg with a caller's iovecs. */
  private readonly msgAddress: bigint;
  private readonly msgWords: Uint32Array;

  private constructor(fd: number) {
    this.fd = fd;
    this.msgAddress = mapAnonymous(4096);
    this.msgWords = new Uint32Array(viewOf(this.msgAddress, MSGHDR_BYTES));
  }

  static create(options: UnixDatagramOptions = {}): UnixDatagramSocket {
    const fd = sys.socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0) as number;
    if (fd === -1) throw new SysError('socket(AF_UNIX, SOCK_DGRAM)', errno());
    let socket: UnixDatagramSocket;
    try {
      socket = new UnixDatagramSocket(fd);
    } catch (e) {
      raw.close(fd);
      throw e;
    }
    try {
      if (options.sendBuffer !== undefined) socket.setSendBufferSize(options.sendBuffer);
      if (options.receiveBuffer !== undefined) socket.setReceiveBufferSize(options.receiveBuffer);
    } catch (e) {
      socket.close();
      throw e;
    }
    return socket;
  }

  /** Binds to a filesystem path (EADDRINUSE when the file exists); close() unlinks it. */
  bind(path: string): void {
    const addr = unixAddress(path);
    if ((sys.bind(this.fd, addr, addr.length) as number) === -1) throw new SysError(`bind(${path})`, errno());
    this.boundPath = path;
  }

  /** Lets the kernel pick a unique abstract name (no file to clean up), so peers can answer us. */
  autobind(): void {
    const addr = Buffer.alloc(2);
    addr.writeUInt16LE(AF_UNIX, 0);
    if ((sys.bind(this.fd, addr, 2) as number) === -1) throw new SysError('bind(autobind)', errno());
  }

  /** Our own address bytes (getsockname). */
  localAddress(): Uint8Array {
    const addr = Buffer.alloc(SOCKADDR_UN_BYTES);
    const len = Buffer.alloc(4);
    len.writeUInt32LE(SOCKADDR_UN_BYTES, 0);
    if ((sys.getsockname(this.fd, addr, len) as number) === -1) throw new SysError('getsockname', errno());
    return new Uint8Array(addr.subarray(0, Math.min(len.readUInt32LE(0), SOCKADDR_UN_BYTES)));
  }

  /** Connects to a path: throws SysError (ENOENT: nothing there, ECONNREFUSED: a stale socket file). */
  connect(path: string): void {
    const addr = unixAddress(path);
    if ((sys.connect(this.fd, addr, addr.length) as number) === -1) throw new SysError(`connect(${path})`, errno());
  }

  /** Connects to raw address bytes (a peer's address from recvmmsg); returns 0 or -errno. */
  connectAddress(addr: Uint8Array): number {
    return (sys.connect(this.fd, addr, addr.length) as number) === -1 ? -errno() : 0;
  }

  /** Breaks the connection (AF_UNSPEC), so datagrams from anyone are accepted again. */
  disconnect(): void {
    const addr = Buffer.alloc(2);
    addr.writeUInt16LE(AF_UNSPEC, 0);
    sys.connect(this.fd, addr, 2);
  }

  setSendBufferSize(bytes: number): void {
    this.setBuffer(SO_SNDBUF, SO_SNDBUFFORCE, bytes, 'SO_SNDBUF');
  }

  setReceiveBufferSize(bytes: number): void {
    this.setBuffer(SO_RCVBUF, SO_RCVBUFFORCE, bytes, 'SO_RCVBUF');
  }

  /** The effective SO_SNDBUF (what the kernel made of the request). */
  sendBufferSize(): number {
    return this.getInt(SO_SNDBUF, 'SO_SNDBUF');
  }

  receiveBufferSize(): number {
    return this.getInt(SO_RCVBUF, 'SO_RCVBUF');
  }

  /** One datagram from [address, address+length) to the connected peer: bytes sent or -errno. */
  send(address: number, length: number): number {
    const n = sys.send(this.fd, address, length, MSG_DONTWAIT | MSG_NOSIGNAL) as number;
    return n === -1 ? -errno() : n;
  }

  /** One datagram to an explicit address: bytes sent or -errno. */
  sendTo(address: number, length: number, to: NativeSocketAddress): number {
    const n = sys.sendto(this.fd, address, length, MSG_DONTWAIT | MSG_NOSIGNAL, to.addressNumber, to.length) as number;
    return n === -1 ? -errno() : n;
  }

  /** One datagram gathered from the iovecs in use (zero-copy from guest pages): bytes sent or -errno. */
  sendIovecs(iov: IovecList): number {
    const w = this.msgWords;
    w.fill(0);
    const a = iov.addressNumber;
    w[4] = a % TWO_32;
    w[5] = Math.floor(a / TWO_32);
    w[6] = iov.count;
    const n = sys.sendmsg(this.fd, Number(this.msgAddress), MSG_DONTWAIT | MSG_NOSIGNAL) as number;
    return n === -1 ? -errno() : n;
  }

  /** Entries [start, start+count) of a vector as datagrams: how many were sent, or -errno when none was. */
  sendMany(vector: MessageVector, start: number, count: number): number {
    if (count <= 0) return 0;
    const n = sys.sendmmsg(this.fd, vector.entryAddress(start), count, MSG_DONTWAIT | MSG_NOSIGNAL) as number;
    return n === -1 ? -errno() : n;
  }

  /** One datagram into [address, address+length): its length (truncated to length) or -errno. */
  recv(address: number, length: number): number {
    const n = sys.recv(this.fd, address, length, MSG_DONTWAIT) as number;
    return n === -1 ? -errno() : n;
  }

  /** Up to `count` datagrams into the vector's entries: how many, or -errno (-EAGAIN: none queued). */
  receiveMany(vector: MessageVector, count: number): number {
    vector.resetNameLengths(count);
    const n = sys.recvmmsg(this.fd, vector.addressNumber, count, MSG_DONTWAIT, 0) as number;
    return n === -1 ? -errno() : n;
  }

  /** Closes the socket and unlinks the path it bound (unless told to leave it, as a crash would). Idempotent. */
  close(unlink = true): void {
    if (this.closed) return;
    this.closed = true;
    const result = raw.close(this.fd) as number;
    const closeErrno = result === -1 ? errno() : 0;
    munmap(this.msgAddress, 4096);
    if (unlink && this.boundPath !== null) {
      try {
        fs.unlinkSync(this.boundPath);
      } catch {
        // Already gone (someone cleaned up after us): nothing to do.
      }
    }
    if (closeErrno !== 0) throw new SysError('close(unix socket)', closeErrno);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private setBuffer(option: number, forceOption: number, bytes: number, name: string): void {
    if (!Number.isInteger(bytes) || bytes < 1 || bytes > 0x3fffffff) throw new RangeError(`${name} of ${bytes} bytes`);
    const value = Buffer.alloc(4);
    // The kernel doubles the value for its bookkeeping; ask for half so the result is `bytes`.
    value.writeInt32LE(Math.max(1, Math.floor(bytes / 2)), 0);
    // Root may exceed net.core.[wr]mem_max with the FORCE variant; anyone else gets the capped value.
    if ((sys.setsockopt(this.fd, SOL_SOCKET, forceOption, value, 4) as number) === 0) return;
    if ((sys.setsockopt(this.fd, SOL_SOCKET, option, value, 4) as number) === -1) throw new SysError(`setsockopt(${name})`, errno());
  }

  private getInt(option: number, name: string): number {
    const value = Buffer.alloc(4);
    const len = Buffer.alloc(4);
    len.writeUInt32LE(4, 0);
    if ((sys.getsockopt(this.fd, SOL_SOCKET, option, value, len) as number) === -1) throw new SysError(`getsockopt(${name})`, errno());
    return value.readInt32LE(0);
  }
}

/**
 * Is a live socket bound at `path`? False for no file and for a stale socket file left by
 * a process that died (connect says ECONNREFUSED); a server uses this to decide whether
 * it may unlink the file and bind again.
 */
export function unixSocketIsLive(path: string): boolean {
  const probe = UnixDatagramSocket.create();
  try {
    probe.connect(path);
    return true;
  } catch (e) {
    if (e instanceof SysError && (e.errno === Errno.ECONNREFUSED || e.errno === Errno.ENOENT)) return false;
    // A stream socket there (EPROTOTYPE) or no permission: something is alive or not ours.
    return true;
  } finally {
    probe.close();
  }
}
