// The reference guest's disks as files on the host: a FUSE server on /dev/fuse (no
// libfuse) that shows each GuestBlockDevice as DIR/lun<N>, so real tools (mkfs.ext4,
// e2fsck, fio, cmp) drive I/O through the whole VMBus storage path.
//
// Zero copy: every buffer the kernel reads requests into is a run of guest pages, laid
// out so a WRITE's payload starts on a page boundary. The payload is therefore already in
// guest RAM and goes to the device by its guest-physical address; a READ lands in the
// same pages and the reply is writev(out_header, those pages). Only metadata replies
// (attributes, directory entries) are composed, and they too are written in the slot's
// own guest pages, never on the JS heap.
//
// Concurrency: `queueDepth` slots, each owning its buffers and pooled block requests, so
// fio with iodepth > 1 keeps several requests at the device while the next one is read.
// The /dev/fuse fd is non-blocking and read until EAGAIN whenever the guest's Poller says
// it is readable; with every slot busy it is taken off the Poller (a level-triggered fd
// nobody drains would spin) and read again as soon as a slot frees.
//
// Why FOPEN_DIRECT_IO: every read and write goes to the server at the caller's size, and
// the kernel keeps no page cache for these files. That makes the file coherent with the
// disk at all times (cmp after fio, a guest-side change, a re-added disk: nothing stale),
// lets O_DIRECT (fio --direct=1) and libaio work with FUSE_ASYNC_DIO so iodepth reaches
// the device, and mkfs/e2fsck, which use pread/pwrite, work unchanged. The cost: no
// readahead or caching for small buffered reads, and no shared mmap of the files.
import path from 'node:path';
import fs from 'node:fs';
import type { GuestMemory } from '../../memory/guest-memory.js';
import { PAGE_SIZE } from '../../memory/page.js';
import type { Poller } from '../../sys/epoll.js';
import { Errno } from '../../sys/errors.js';
import { FuseDevice, isFuseMountPoint, tryDetachMount } from '../../sys/fuse-device.js';
import { IovecList } from '../../sys/iovec.js';
import type { PageAllocator } from '../page-allocator.js';
import { BlockOp, type GuestBlockDevice, type GuestBlockRequest } from '../storvsc/guest-block-device.js';
import {
  decodeAccessIn,
  decodeFallocateIn,
  decodeForgetIn,
  decodeInHeader,
  decodeInitIn,
  decodeIoIn,
  decodeLeadingFh,
  decodeName,
  decodeOpenIn,
  decodeSetattrIn,
  DirentType,
  encodeAttrOut,
  encodeDirent,
  encodeEntryOut,
  encodeInitOut,
  encodeOpenOut,
  encodeOutHeader,
  encodeStatfsOut,
  encodeWriteOut,
  ENTRY_OUT_BYTES,
  ATTR_OUT_BYTES,
  FallocateMode,
  FileType,
  FLUSH_IN_BYTES,
  FopenFlag,
  forEachBatchForget,
  FSYNC_IN_BYTES,
  FUSE_ROOT_ID,
  FuseOpcode,
  HeaderStatus,
  IN_HEADER_BYTES,
  INIT_OUT_BYTES,
  InitFlag,
  InitVerdict,
  negotiateInit,
  newAttr,
  newInHeader,
  newIoIn,
  OPEN_OUT_BYTES,
  OUT_HEADER_BYTES,
  RELEASE_IN_BYTES,
  SetattrValid,
  STATFS_OUT_BYTES,
  WRITE_IN_BYTES,
  WRITE_OUT_BYTES,
  type FallocateIn,
  type FuseAttr,
  type InitIn,
  type InitOut,
  type OpenIn,
  type SetattrIn,
  type Validity,
} from './fuse-protocol.js';

export interface DiskFileServerContext {
  memory: GuestMemory;
  allocator: PageAllocator;
  poller: Poller;
  log?: (m: string) => void;
  /** Largest READ/WRITE payload (bytes, a multiple of 4096, at most 1 MiB). Default 256 KiB. */
  maxIo?: number;
  /** Requests served at once (each holds maxIo + 5 pages of guest RAM). Default 16. */
  queueDepth?: number;
}

const DEFAULT_MAX_IO = 256 * 1024;
const MAX_MAX_IO = 1024 * 1024;
const DEFAULT_QUEUE_DEPTH = 16;
const MAX_BLOCK_BYTES = PAGE_SIZE;
/** in_header + write_in: a WRITE's payload starts this far into the request. */
const WRITE_PAYLOAD_OFFSET = IN_HEADER_BYTES + WRITE_IN_BYTES;
/** Spare pages after the payload area: an unaligned READ covers up to two extra blocks. */
const READ_SLACK_PAGES = 2;
/** Slot layout: header page, payload pages, read slack, head bounce, tail bounce. */
const EXTRA_PAGES_PER_SLOT = 1 + READ_SLACK_PAGES + 2;
/** How long unmount waits for requests still at the device before closing anyway. */
const UNMOUNT_DRAIN_MS = 10_000;

/**
 * Names are never cached (0 s), so add() and remove() show at once without notifying the
 * kernel (an inval-entry notify written from this thread could deadlock against a LOOKUP
 * that holds the directory lock while waiting for us). Attributes never change while a
 * disk is present, so they may be cached briefly.
 */
const ENTRY_VALID: Validity = { seconds: 0, nanoseconds: 0 };
const ATTR_VALID: Validity = { seconds: 1, nanoseconds: 0 };
const O_ACCMODE = 3;
const O_RDONLY = 0;
const W_OK = 2;

const E = {
  EAGAIN: Errno.EAGAIN,
  EINTR: Errno.EINTR,
  ENODEV: Errno.ENODEV,
  ENOENT: Errno.ENOENT,
  EIO: Errno.EIO,
  EINVAL: Errno.EINVAL,
  ENOSYS: Errno.ENOSYS,
  EROFS: Errno.EROFS,
  ENOSPC: Errno.ENOSPC,
  EOPNOTSUPP: Errno.EOPNOTSUPP,
  EBADF: Errno.EBADF,
  EISDIR: Errno.EISDIR,
  ENOTDIR: Errno.ENOTDIR,
  EPERM: Errno.EPERM,
  EPROTO: Errno.EPROTO,
  ECONNABORTED: Errno.ECONNABORTED,
} as const;

/** The server's side of a FUSE connection: /dev/fuse (FuseDevice), or a scripted kernel in tests. */
export interface FuseChannel {
  /** Polled for readability. */
  readonly fd: number;
  /** One request into [address, address+length) (host addresses); its length, or -errno (-EAGAIN when none). */
  read(address: number, length: number): number;
  /** One reply gathered from the iovecs; bytes written, or -errno. */
  writev(iov: IovecList): number;
  close(): void;
}

/** What a slot is doing with the device. */
const Kind = { None: 0, Read: 1, Write: 2, Punch: 3, Flush: 4 } as const;
type Kind = (typeof Kind)[keyof typeof Kind];
/** Why a slot is parked instead of at the device. */
const Wait = { None: 0, BlockLock: 1, WriteBarrier: 2 } as const;
type Wait = (typeof Wait)[keyof typeof Wait];
const Role = { Head: 0, Tail: 1, Middle: 2 } as const;
type Role = (typeof Role)[keyof typeof Role];

/** One disk in the directory. Node ids are never reused, so a stale kernel inode can never reach a new disk. */
class DiskNode {
  nlookup = 0;
  openCount = 0;
  removed = false;

  constructor(
    readonly nodeid: number,
    readonly name: string,
    readonly device: GuestBlockDevice,
  ) {}
}

interface OpenFile {
  node: DiskNode;
  writable: boolean;
}

/** A block request owned by a slot, reused for every request the slot makes. */
class SlotRequest implements GuestBlockRequest {
  op: BlockOp = BlockOp.Read;
  offset = 0;
  length = 0;
  gpa = 0;
  fua = false;
  readonly done: (result: number) => void;

  constructor(slot: Slot, role: Role, onDone: (slot: Slot, role: Role, result: number) => void) {
    // One closure per pooled request, made once: devices may call done() unbound.
    this.done = (result) => onDone(slot, role, result);
  }
}

/** One request in service: its guest pages, its pooled block requests and its progress. */
class Slot {
  /** The reply's fuse_out_header is composed here (page 0, start). */
  readonly headerGpa: number;
  /** The kernel's request is read here, so that a WRITE payload starts at dataGpa. */
  readonly requestGpa: number;
  /** Payload pages: WRITE data arrives here, READ data and metadata replies are built here. */
  readonly dataGpa: number;
  /** Bytes offered to read(): the request area through the read slack (always above FUSE_MIN_READ_BUFFER). */
  readonly readLength: number;
  readonly headBounceGpa: number;
  readonly tailBounceGpa: number;
  readonly head: SlotRequest;
  readonly tail: SlotRequest;
  readonly middle: SlotRequest;

  busy = false;
  uniqueLow = 0;
  uniqueHigh = 0;
  kind: Kind = Kind.None;
  wait: Wait = Wait.None;
  node: DiskNode | null = null;
  /** Device requests outstanding, and how many of them are edge-block reads. */
  pending = 0;
  edgeReads = 0;
  /** First failure among this request's device requests (0 or -errno). */
  error = 0;
  // The byte range asked for, and for reads the part of the data area that answers it.
  offset = 0;
  length = 0;
  payloadGpa = 0;
  replyGpa = 0;
  // Write-like requests (WRITE, punch): edges needing read-modify-write, the aligned middle.
  headBlock = -1;
  tailBlock = -1;
  middleOffset = 0;
  middleLength = 0;
  /** Registered in the write set (waiting or at the device). */
  writeActive = false;
  writeSeq = 0;
  lockStart = 0;
  lockEnd = 0;
  rmw = false;
  /** A flush waits for writes to its device numbered up to this. */
  barrierSeq = 0;

  constructor(readonly index: number, readonly firstPfn: number, readonly pageCount: number, maxIo: number, onDone: (slot: Slot, role: Role, result: number) => void) {
    const base = firstPfn * PAGE_SIZE;
    this.headerGpa = base;
    this.dataGpa = base + PAGE_SIZE;
    this.requestGpa = this.dataGpa - WRITE_PAYLOAD_OFFSET;
    this.readLength = WRITE_PAYLOAD_OFFSET + maxIo + READ_SLACK_PAGES * PAGE_SIZE;
    this.headBounceGpa = this.dataGpa + maxIo + READ_SLACK_PAGES * PAGE_SIZE;
    this.tailBounceGpa = this.headBounceGpa + PAGE_SIZE;
    this.head = new SlotRequest(this, Role.Head, onDone);
    this.tail = new SlotRequest(this, Role.Tail, onDone);
    this.middle = new SlotRequest(this, Role.Middle, onDone);
  }
}

/** Mount points of servers in this thread, detached if the thread exits without unmount(). */
const liveMounts = new Set<string>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const mountPoint of liveMounts) {
      try {
        tryDetachMount(mountPoint);
      } catch {
        // nothing more can be done while exiting
      }
    }
  });
}

export class DiskFileServer {
  /** Where the disks show; null for a server on a connection of the caller's (serve()). */
  readonly mountPoint: string | null;
  private readonly view: DataView;
  private readonly bytes: Uint8Array;
  private readonly hostBase: number;
  private readonly allocator: PageAllocator;
  private readonly poller: Poller;
  private readonly log: (m: string) => void;
  private readonly fuse: FuseChannel;
  private readonly maxIo: number;
  private readonly slots: Slot[] = [];
  private readonly freeSlots: number[] = [];
  /** Replies are written synchronously, one at a time: one iovec list serves every slot. */
  private readonly iov = new IovecList(2);
  private busyCount = 0;

  private readonly nodesById = new Map<number, DiskNode>();
  private readonly nodesByName = new Map<string, DiskNode>();
  private nextNodeId = FUSE_ROOT_ID + 1;
  private readonly openFiles = new Map<number, OpenFile>();
  private nextFh = 1;

  private initialized = false;
  private state: 'running' | 'closing' | 'closed' = 'running';
  private connectionLost = false;
  private pollToken = -1;
  private pumping = false;
  private writeSeq = 0;
  private drained: (() => void) | null = null;
  private unmounting: Promise<void> | null = null;
  private readonly mountTime = Math.floor(Date.now() / 1000);
  private readonly uid = process.getuid?.() ?? 0;
  private readonly gid = process.getgid?.() ?? 0;

  // Scratch objects for decoding, reused by every request.
  private readonly header = newInHeader();
  private readonly ioIn = newIoIn();
  private readonly openIn: OpenIn = { flags: 0 };
  private readonly setattrIn: SetattrIn = { valid: 0, size: 0 };
  private readonly fallocateIn: FallocateIn = { fh: 0, offset: 0, length: 0, mode: 0 };
  private readonly initIn: InitIn = { major: 0, minor: 0, maxReadahead: 0, flags: 0, flags2: 0 };
  private readonly initOut: InitOut = { major: 0, minor: 0, maxReadahead: 0, flags: 0, maxBackground: 0, congestionThreshold: 0, maxWrite: 0, timeGran: 0, maxPages: 0, flags2: 0 };
  private readonly attr: FuseAttr = newAttr();
  private readonly onReadable = (): void => this.pump();
  private readonly onDeviceDone = (slot: Slot, role: Role, result: number): void => this.deviceDone(slot, role, result);
  private readonly forgetOne = (nodeid: number, nlookup: number): void => this.forget(nodeid, nlookup);

  /**
   * Mounts an empty directory of disks on `directory`, which must exist. A FUSE mount
   * already there (a dead run's, whose server is gone) is detached first.
   */
  static mount(directory: string, context: DiskFileServerContext): DiskFileServer {
    const absolute = path.resolve(directory);
    // Resolve symlinks in the parent only: the directory itself may be a dead mount, and
    // touching it would fail with ENOTCONN (or hang, were its server alive in this thread).
    const mountPoint = path.join(fs.realpathSync(path.dirname(absolute)), path.basename(absolute));
    for (let i = 0; i < 16 && isFuseMountPoint(mountPoint); i++) {
      context.log?.(`fuse: detaching a stale FUSE mount at ${mountPoint}`);
      tryDetachMount(mountPoint);
    }
    if (!fs.statSync(mountPoint).isDirectory()) throw new Error(`${mountPoint} is not a directory`);
    const device = FuseDevice.open();
    return new DiskFileServer(context, device, mountPoint, (options) => device.mount(mountPoint, options));
  }

  /**
   * Serves a connection that is already set up, with no mount of its own: how tests speak
   * the protocol to the server directly (short, malformed and interrupted requests, and
   * orderings the kernel's own locking never produces).
   */
  static serve(channel: FuseChannel, context: DiskFileServerContext): DiskFileServer {
    return new DiskFileServer(context, channel, null, null);
  }

  private constructor(context: DiskFileServerContext, channel: FuseChannel, mountPoint: string | null, mount: ((options: string) => void) | null) {
    this.mountPoint = mountPoint;
    this.fuse = channel;
    this.view = context.memory.view;
    this.bytes = context.memory.bytes;
    this.hostBase = Number(context.memory.base);
    this.allocator = context.allocator;
    this.poller = context.poller;
    this.log = context.log ?? (() => {});
    const maxIo = context.maxIo ?? DEFAULT_MAX_IO;
    const queueDepth = context.queueDepth ?? DEFAULT_QUEUE_DEPTH;
    this.maxIo = maxIo;
    try {
      if (!Number.isInteger(maxIo) || maxIo < 2 * PAGE_SIZE || maxIo > MAX_MAX_IO || maxIo % PAGE_SIZE !== 0) {
        throw new RangeError(`maxIo must be a multiple of ${PAGE_SIZE} in [${2 * PAGE_SIZE}, ${MAX_MAX_IO}], got ${maxIo}`);
      }
      if (!Number.isInteger(queueDepth) || queueDepth < 1 || queueDepth > 256) throw new RangeError(`queueDepth must be in [1, 256], got ${queueDepth}`);
      const pagesPerSlot = maxIo / PAGE_SIZE + EXTRA_PAGES_PER_SLOT;
      for (let i = 0; i < queueDepth; i++) {
        const slot = new Slot(i, this.allocator.allocContiguous(pagesPerSlot), pagesPerSlot, maxIo, this.onDeviceDone);
        this.slots.push(slot);
        this.freeSlots.push(i);
      }
      // default_permissions: the kernel checks mode bits, so allow_other never lets an
      // unprivileged user write a 0644 disk. max_read bounds a READ to our buffers.
      mount?.(`rootmode=40000,user_id=${this.uid},group_id=${this.gid},allow_other,default_permissions,max_read=${maxIo}`);
    } catch (e) {
      channel.close();
      this.freePages();
      throw e;
    }
    if (mountPoint !== null) {
      installExitHook();
      liveMounts.add(mountPoint);
    }
    this.watch();
  }

  /** Shows `device` as mountPoint/<device.name>. */
  add(device: GuestBlockDevice): void {
    if (this.state !== 'running') throw new Error('fuse: the server is unmounting');
    const name = device.name;
    if (typeof name !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(name)) throw new Error(`fuse: unusable disk name ${JSON.stringify(name)}`);
    if (this.nodesByName.has(name)) throw new Error(`fuse: ${name} is already present`);
    const block = device.blockBytes;
    if (!Number.isInteger(block) || block < 512 || block > MAX_BLOCK_BYTES || (block & (block - 1)) !== 0) {
      throw new Error(`fuse: ${name} has block size ${block}; 512..${MAX_BLOCK_BYTES}, a power of two, is required`);
    }
    if (!Number.isSafeInteger(device.sizeBytes) || device.sizeBytes < 0 || device.sizeBytes % block !== 0) {
      throw new Error(`fuse: ${name} has size ${device.sizeBytes}, not a multiple of its ${block}-byte blocks`);
    }
    const node = new DiskNode(this.nextNodeId++, name, device);
    this.nodesById.set(node.nodeid, node);
    this.nodesByName.set(name, node);
  }

  /** Takes the file away; handles still open get -ENODEV. */
  remove(name: string): void {
    const node = this.nodesByName.get(name);
    if (!node) return;
    node.removed = true;
    this.nodesByName.delete(name);
    this.collect(node);
  }

  /** The names currently shown. */
  get names(): string[] {
    return [...this.nodesByName.keys()];
  }

  /**
   * Detaches the mount (MNT_DETACH: nothing new can find it), lets requests already at
   * the device finish and answers them, then closes /dev/fuse, which fails whatever the
   * kernel still queues with ENOTCONN, so no process is left hanging on the mount.
   */
  unmount(): Promise<void> {
    this.unmounting ??= this.shutdown();
    return this.unmounting;
  }

  private async shutdown(): Promise<void> {
    this.state = 'closing';
    try {
      this.unwatch();
    } catch (e) {
      // The Poller may already be stopped; the fd is closed below either way.
      this.log(`fuse: ${String(e)}`);
    }
    if (this.mountPoint !== null) {
      try {
        tryDetachMount(this.mountPoint);
      } catch (e) {
        this.log(`fuse: detaching ${this.mountPoint}: ${String(e)}`);
      }
      liveMounts.delete(this.mountPoint);
    }
    if (this.busyCount > 0) {
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve) => {
        this.drained = resolve;
        timer = setTimeout(resolve, UNMOUNT_DRAIN_MS);
      });
      clearTimeout(timer);
      this.drained = null;
      if (this.busyCount > 0) this.log(`fuse: ${this.busyCount} requests still at the device after ${UNMOUNT_DRAIN_MS} ms; closing anyway`);
    }
    this.state = 'closed';
    this.fuse.close();
    this.freePages();
  }

  private freePages(): void {
    // Pages of a slot the device still holds stay allocated: the device may yet write them.
    for (const slot of this.slots) if (!slot.busy) this.allocator.freeRun(slot.firstPfn, slot.pageCount);
    this.slots.length = 0;
  }

  // ---- reading requests ----

  private watch(): void {
    if (this.pollToken !== -1 || this.state !== 'running' || this.connectionLost) return;
    this.pollToken = this.poller.add(this.fuse.fd, this.onReadable);
  }

  private unwatch(): void {
    if (this.pollToken === -1) return;
    this.poller.remove(this.pollToken);
    this.pollToken = -1;
  }

  /** Reads requests until the kernel has none (EAGAIN) or every slot is busy. */
  private pump(): void {
    if (this.pumping || this.state !== 'running' || this.connectionLost) return;
    this.pumping = true;
    try {
      while (this.freeSlots.length > 0) {
        const slot = this.slots[this.freeSlots[this.freeSlots.length - 1]!]!;
        const n = this.fuse.read(this.hostBase + slot.requestGpa, slot.readLength);
        if (n < 0) {
          if (n === -E.EAGAIN) {
            this.watch();
            return;
          }
          if (n === -E.EINTR) continue;
          // ENODEV: unmounted or aborted from outside; ECONNABORTED likewise with ABORT_ERROR.
          if (n !== -E.ENODEV && n !== -E.ECONNABORTED) this.log(`fuse: read(/dev/fuse) failed: errno ${-n}`);
          this.connectionLost = true;
          this.unwatch();
          return;
        }
        this.freeSlots.pop();
        slot.busy = true;
        this.busyCount++;
        this.dispatch(slot, n);
      }
      // Every slot is busy: stop polling (the fd stays readable) until one frees.
      this.unwatch();
    } catch (e) {
      this.log(`fuse: ${String(e)}`);
    } finally {
      this.pumping = false;
    }
  }

  private release(slot: Slot): void {
    slot.busy = false;
    slot.node = null;
    slot.kind = Kind.None;
    slot.wait = Wait.None;
    this.freeSlots.push(slot.index);
    this.busyCount--;
    if (this.state === 'closing') {
      if (this.busyCount === 0) this.drained?.();
      return;
    }
    if (this.pollToken === -1 && !this.pumping) this.pump();
  }

  // ---- replies ----

  private replyError(slot: Slot, error: number): void {
    encodeOutHeader(this.view, slot.headerGpa, OUT_HEADER_BYTES, error, slot.uniqueLow, slot.uniqueHigh);
    this.send(slot, 0, 0);
  }

  /** Replies success with `length` bytes of payload at `gpa` (guest RAM). */
  private replyOk(slot: Slot, gpa: number, length: number): void {
    encodeOutHeader(this.view, slot.headerGpa, OUT_HEADER_BYTES + length, 0, slot.uniqueLow, slot.uniqueHigh);
    this.send(slot, gpa, length);
  }

  private send(slot: Slot, gpa: number, length: number): void {
    if (this.state !== 'closed') {
      const iov = this.iov;
      iov.clear();
      iov.push(this.hostBase + slot.headerGpa, OUT_HEADER_BYTES);
      if (length > 0) iov.push(this.hostBase + gpa, length);
      const n = this.fuse.writev(iov);
      // ENOENT: the request was interrupted and is gone; nothing to do.
      if (n < 0 && n !== -E.ENOENT) this.log(`fuse: reply to opcode of slot ${slot.index} failed: errno ${-n}`);
    }
    this.release(slot);
  }

  /** Releases a slot whose request takes no reply (FORGET, INTERRUPT). */
  private noReply(slot: Slot): void {
    this.release(slot);
  }

  // ---- dispatch ----

  private dispatch(slot: Slot, n: number): void {
    const view = this.view;
    const at = slot.requestGpa;
    const h = this.header;
    const status = decodeInHeader(view, at, n, h);
    if (status === HeaderStatus.Truncated) {
      // Not even a header: answer if the request id at least is there.
      if (n >= 16) {
        slot.uniqueLow = view.getUint32(at + 8, true);
        slot.uniqueHigh = view.getUint32(at + 12, true);
        this.log(`fuse: short request (${n} bytes)`);
        this.replyError(slot, -E.EIO);
      } else {
        this.log(`fuse: short request (${n} bytes) dropped`);
        this.noReply(slot);
      }
      return;
    }
    slot.uniqueLow = h.uniqueLow;
    slot.uniqueHigh = h.uniqueHigh;
    if (status === HeaderStatus.LengthMismatch) {
      this.log(`fuse: request claims ${h.len} bytes, ${n} were read`);
      this.replyError(slot, -E.EIO);
      return;
    }
    const args = at + IN_HEADER_BYTES;
    const argLength = n - IN_HEADER_BYTES;
    if (!this.initialized && h.opcode !== FuseOpcode.INIT) {
      this.replyError(slot, -E.EIO);
      return;
    }
    switch (h.opcode) {
      case FuseOpcode.INIT:
        return this.init(slot, args, argLength);
      case FuseOpcode.LOOKUP:
        return this.lookup(slot, h.nodeid, args, argLength);
      case FuseOpcode.FORGET:
        this.forget(h.nodeid, decodeForgetIn(view, args, argLength));
        return this.noReply(slot);
      case FuseOpcode.BATCH_FORGET:
        forEachBatchForget(view, args, argLength, this.forgetOne);
        return this.noReply(slot);
      case FuseOpcode.INTERRUPT:
        // Requests here finish quickly at the device; letting the interrupted one
        // complete normally is allowed by the protocol.
        return this.noReply(slot);
      case FuseOpcode.GETATTR:
        return this.getattr(slot, h.nodeid);
      case FuseOpcode.SETATTR:
        return this.setattr(slot, h.nodeid, args, argLength);
      case FuseOpcode.OPEN:
        return this.open(slot, h.nodeid, args, argLength);
      case FuseOpcode.READ:
        return this.read(slot, args, argLength);
      case FuseOpcode.WRITE:
        return this.write(slot, args, argLength);
      case FuseOpcode.FALLOCATE:
        return this.fallocate(slot, args, argLength);
      case FuseOpcode.FSYNC:
        return this.sync(slot, decodeLeadingFh(view, args, argLength, FSYNC_IN_BYTES), true);
      case FuseOpcode.FLUSH:
        return this.sync(slot, decodeLeadingFh(view, args, argLength, FLUSH_IN_BYTES), false);
      case FuseOpcode.RELEASE:
        return this.releaseFile(slot, decodeLeadingFh(view, args, argLength, RELEASE_IN_BYTES));
      case FuseOpcode.STATFS:
        return this.statfs(slot);
      case FuseOpcode.OPENDIR:
        if (h.nodeid !== FUSE_ROOT_ID) return this.replyError(slot, -E.ENOTDIR);
        encodeOpenOut(view, slot.dataGpa, 0, 0);
        return this.replyOk(slot, slot.dataGpa, OPEN_OUT_BYTES);
      case FuseOpcode.READDIR:
        return this.readdir(slot, h.nodeid, args, argLength);
      case FuseOpcode.RELEASEDIR:
      case FuseOpcode.FSYNCDIR:
        return this.replyOk(slot, 0, 0);
      case FuseOpcode.ACCESS:
        return this.access(slot, h.nodeid, decodeAccessIn(view, args, argLength));
      case FuseOpcode.DESTROY:
        return this.replyOk(slot, 0, 0);
      case FuseOpcode.CREATE:
      case FuseOpcode.MKNOD:
      case FuseOpcode.MKDIR:
      case FuseOpcode.SYMLINK:
      case FuseOpcode.LINK:
      case FuseOpcode.UNLINK:
      case FuseOpcode.RMDIR:
      case FuseOpcode.RENAME:
      case FuseOpcode.RENAME2:
      case FuseOpcode.TMPFILE:
        // The directory is the guest's set of disks: nothing is created, renamed or deleted here.
        return this.replyError(slot, -E.EPERM);
      default:
        // LSEEK, xattrs, locks, ioctl, STATX...: ENOSYS makes the kernel use its generic path.
        return this.replyError(slot, -E.ENOSYS);
    }
  }

  private init(slot: Slot, args: number, argLength: number): void {
    if (!decodeInitIn(this.view, args, argLength, this.initIn)) return this.replyError(slot, -E.EINVAL);
    const wishes = {
      maxIo: this.maxIo,
      flags: InitFlag.ASYNC_READ | InitFlag.BIG_WRITES | InitFlag.ASYNC_DIO | InitFlag.MAX_PAGES | InitFlag.PARALLEL_DIROPS,
      maxBackground: this.slots.length * 4,
    };
    const verdict = negotiateInit(this.initIn, wishes, this.initOut);
    if (verdict === InitVerdict.Unsupported) {
      this.log(`fuse: kernel protocol ${this.initIn.major}.${this.initIn.minor} is too old`);
      return this.replyError(slot, -E.EPROTO);
    }
    encodeInitOut(this.view, slot.dataGpa, this.initOut);
    if (verdict === InitVerdict.Ok) this.initialized = true;
    this.replyOk(slot, slot.dataGpa, INIT_OUT_BYTES);
  }

  private fillAttr(node: DiskNode | null): void {
    const a = this.attr;
    a.timeSeconds = this.mountTime;
    a.timeNanoseconds = 0;
    a.uid = this.uid;
    a.gid = this.gid;
    a.blksize = PAGE_SIZE;
    if (node === null) {
      a.ino = FUSE_ROOT_ID;
      a.size = 0;
      a.blocks = 0;
      a.mode = FileType.S_IFDIR | 0o755;
      a.nlink = 2;
    } else {
      const device = node.device;
      a.ino = node.nodeid;
      a.size = device.sizeBytes;
      a.blocks = Math.ceil(device.sizeBytes / 512);
      a.mode = FileType.S_IFREG | (device.readOnly ? 0o444 : 0o644);
      a.nlink = node.removed ? 0 : 1;
    }
  }

  private lookup(slot: Slot, parent: number, args: number, argLength: number): void {
    if (parent !== FUSE_ROOT_ID) return this.replyError(slot, -E.ENOTDIR);
    const name = decodeName(this.bytes, args, argLength);
    if (name === null) return this.replyError(slot, -E.ENOENT);
    const node = this.nodesByName.get(name);
    if (!node) return this.replyError(slot, -E.ENOENT);
    node.nlookup++;
    this.fillAttr(node);
    encodeEntryOut(this.view, slot.dataGpa, node.nodeid, ENTRY_VALID, ATTR_VALID, this.attr);
    this.replyOk(slot, slot.dataGpa, ENTRY_OUT_BYTES);
  }

  private forget(nodeid: number, nlookup: number): void {
    const node = this.nodesById.get(nodeid);
    if (!node || nlookup < 0) return;
    node.nlookup = Math.max(0, node.nlookup - nlookup);
    this.collect(node);
  }

  /** Drops a removed disk once the kernel holds no reference to it. */
  private collect(node: DiskNode): void {
    if (node.removed && node.nlookup === 0 && node.openCount === 0) this.nodesById.delete(node.nodeid);
  }

  /** The node for `nodeid`: null for the root, undefined when unknown. */
  private nodeOf(nodeid: number): DiskNode | null | undefined {
    if (nodeid === FUSE_ROOT_ID) return null;
    return this.nodesById.get(nodeid);
  }

  private getattr(slot: Slot, nodeid: number): void {
    const node = this.nodeOf(nodeid);
    if (node === undefined) return this.replyError(slot, -E.ENOENT);
    this.fillAttr(node);
    encodeAttrOut(this.view, slot.dataGpa, ATTR_VALID, this.attr);
    this.replyOk(slot, slot.dataGpa, ATTR_OUT_BYTES);
  }

  private setattr(slot: Slot, nodeid: number, args: number, argLength: number): void {
    const node = this.nodeOf(nodeid);
    if (node === undefined) return this.replyError(slot, -E.ENOENT);
    const s = this.setattrIn;
    if (!decodeSetattrIn(this.view, args, argLength, s)) return this.replyError(slot, -E.EINVAL);
    if (s.valid & (SetattrValid.MODE | SetattrValid.UID | SetattrValid.GID)) return this.replyError(slot, -E.EPERM);
    if (s.valid & SetattrValid.SIZE) {
      if (node === null) return this.replyError(slot, -E.EISDIR);
      // A disk's size is the guest's: only a truncate to the size it already has succeeds.
      if (s.size !== node.device.sizeBytes) return this.replyError(slot, -E.EINVAL);
    }
    // Times (touch) are accepted and not kept: they always read as the mount time.
    this.fillAttr(node);
    encodeAttrOut(this.view, slot.dataGpa, ATTR_VALID, this.attr);
    this.replyOk(slot, slot.dataGpa, ATTR_OUT_BYTES);
  }

  private open(slot: Slot, nodeid: number, args: number, argLength: number): void {
    const node = this.nodeOf(nodeid);
    if (node === undefined) return this.replyError(slot, -E.ENOENT);
    if (node === null) return this.replyError(slot, -E.EISDIR);
    if (node.removed) return this.replyError(slot, -E.ENOENT);
    if (!decodeOpenIn(this.view, args, argLength, this.openIn)) return this.replyError(slot, -E.EINVAL);
    const writable = (this.openIn.flags & O_ACCMODE) !== O_RDONLY;
    if (writable && node.device.readOnly) return this.replyError(slot, -E.EROFS);
    const fh = this.nextFh++;
    this.openFiles.set(fh, { node, writable });
    node.openCount++;
    encodeOpenOut(this.view, slot.dataGpa, fh, FopenFlag.DIRECT_IO | FopenFlag.PARALLEL_DIRECT_WRITES);
    this.replyOk(slot, slot.dataGpa, OPEN_OUT_BYTES);
  }

  private releaseFile(slot: Slot, fh: number): void {
    const file = this.openFiles.get(fh);
    if (file) {
      this.openFiles.delete(fh);
      file.node.openCount--;
      this.collect(file.node);
    }
    this.replyOk(slot, 0, 0);
  }

  private statfs(slot: Slot): void {
    let bytes = 0;
    for (const node of this.nodesByName.values()) bytes += node.device.sizeBytes;
    encodeStatfsOut(this.view, slot.dataGpa, { blocks: Math.floor(bytes / PAGE_SIZE), bsize: PAGE_SIZE, files: this.nodesByName.size + 1, namelen: 255 });
    this.replyOk(slot, slot.dataGpa, STATFS_OUT_BYTES);
  }

  private access(slot: Slot, nodeid: number, mask: number): void {
    const node = this.nodeOf(nodeid);
    if (node === undefined) return this.replyError(slot, -E.ENOENT);
    if (mask < 0) return this.replyError(slot, -E.EINVAL);
    if (node !== null && (mask & W_OK) !== 0 && node.device.readOnly) return this.replyError(slot, -E.EROFS);
    this.replyOk(slot, 0, 0);
  }

  private readdir(slot: Slot, nodeid: number, args: number, argLength: number): void {
    if (nodeid !== FUSE_ROOT_ID) return this.replyError(slot, -E.ENOTDIR);
    const io = this.ioIn;
    if (!decodeIoIn(this.view, args, argLength, io)) return this.replyError(slot, -E.EINVAL);
    const capacity = Math.min(io.size, this.maxIo);
    // Entry i is ".", "..", then the disks in the order they were added; its offset is i + 1.
    let used = 0;
    let index = 0;
    if (io.offset >= 0) {
      const emit = (ino: number, type: number, name: string): boolean => {
        if (index++ < io.offset) return true;
        const size = encodeDirent(this.view, this.bytes, slot.dataGpa + used, capacity - used, ino, index, type, name);
        used += size;
        return size > 0;
      };
      if (emit(FUSE_ROOT_ID, DirentType.DT_DIR, '.') && emit(FUSE_ROOT_ID, DirentType.DT_DIR, '..')) {
        for (const node of this.nodesByName.values()) if (!emit(node.nodeid, DirentType.DT_REG, node.name)) break;
      }
    }
    this.replyOk(slot, slot.dataGpa, used);
  }

  // ---- the data path ----

  /** The open file behind `fh` for I/O, or a negative errno. */
  private fileFor(fh: number, forWrite: boolean): OpenFile | number {
    const file = fh < 0 ? undefined : this.openFiles.get(fh);
    if (!file) return -E.EBADF;
    if (file.node.removed) return -E.ENODEV;
    if (forWrite && !file.writable) return -E.EBADF;
    return file;
  }

  private read(slot: Slot, args: number, argLength: number): void {
    const io = this.ioIn;
    if (!decodeIoIn(this.view, args, argLength, io)) return this.replyError(slot, -E.EINVAL);
    const file = this.fileFor(io.fh, false);
    if (typeof file === 'number') return this.replyError(slot, file);
    if (io.offset < 0 || io.size > this.maxIo) return this.replyError(slot, -E.EINVAL);
    const device = file.node.device;
    const size = device.sizeBytes;
    if (io.size === 0 || io.offset >= size) return this.replyOk(slot, 0, 0);
    const block = device.blockBytes;
    const end = Math.min(io.offset + io.size, size);
    // Read the aligned blocks covering the range into the data area and answer with the
    // part asked for: unaligned reads need no bounce buffer and no copy.
    const first = io.offset - (io.offset % block);
    const last = Math.ceil(end / block) * block;
    slot.kind = Kind.Read;
    slot.node = file.node;
    slot.error = 0;
    slot.pending = 0;
    slot.replyGpa = slot.dataGpa + (io.offset - first);
    slot.length = end - io.offset;
    this.submit(slot, slot.middle, BlockOp.Read, first, last - first, slot.dataGpa);
  }

  private write(slot: Slot, args: number, argLength: number): void {
    const io = this.ioIn;
    if (!decodeIoIn(this.view, args, argLength, io)) return this.replyError(slot, -E.EINVAL);
    if (argLength !== WRITE_IN_BYTES + io.size) return this.replyError(slot, -E.EINVAL);
    const file = this.fileFor(io.fh, true);
    if (typeof file === 'number') return this.replyError(slot, file);
    const device = file.node.device;
    if (device.readOnly) return this.replyError(slot, -E.EROFS);
    if (io.offset < 0 || io.size > this.maxIo) return this.replyError(slot, -E.EINVAL);
    if (io.size === 0) return this.replyWritten(slot, 0);
    // As a block device does: nothing fits at or past the end; a write across it is cut short.
    if (io.offset >= device.sizeBytes) return this.replyError(slot, -E.ENOSPC);
    const length = Math.min(io.size, device.sizeBytes - io.offset);
    this.beginWriteLike(slot, file.node, Kind.Write, io.offset, length, args + WRITE_IN_BYTES);
  }

  private fallocate(slot: Slot, args: number, argLength: number): void {
    const f = this.fallocateIn;
    if (!decodeFallocateIn(this.view, args, argLength, f)) return this.replyError(slot, -E.EINVAL);
    const file = this.fileFor(f.fh, true);
    if (typeof file === 'number') return this.replyError(slot, file);
    const device = file.node.device;
    if (f.offset < 0 || f.length <= 0) return this.replyError(slot, -E.EINVAL);
    if (f.mode === (FallocateMode.PUNCH_HOLE | FallocateMode.KEEP_SIZE)) {
      // A punched hole must read back as zeros: mke2fs treats a regular file's discard as
      // zeroing and skips wiping inode tables. The edges are zeroed here; the middle relies
      // on the device's discard reading back zeros (UNMAP on a host file punches a hole).
      // ZERO_RANGE is refused below, so mke2fs falls back to this punch or to writing zeros.
      if (!device.discard) return this.replyError(slot, -E.EOPNOTSUPP);
      if (device.readOnly) return this.replyError(slot, -E.EROFS);
      if (f.offset >= device.sizeBytes) return this.replyOk(slot, 0, 0);
      const length = Math.min(f.length, device.sizeBytes - f.offset);
      return this.beginWriteLike(slot, file.node, Kind.Punch, f.offset, length, 0);
    }
    if (f.mode === 0 || f.mode === FallocateMode.KEEP_SIZE) {
      // Every byte of a disk is already allocated; growing it is not possible.
      return this.replyError(slot, f.offset + f.length <= device.sizeBytes ? 0 : -E.ENOSPC);
    }
    this.replyError(slot, -E.EOPNOTSUPP);
  }

  /**
   * WRITE and punch-hole: the aligned middle goes to the device directly (the payload's
   * own pages, or a discard); an unaligned head or tail block is read into a bounce page,
   * patched (payload copied in guest RAM, or zeroed) and written back. Writes touching a
   * block another write is read-modify-writing wait their turn, in arrival order.
   */
  private beginWriteLike(slot: Slot, node: DiskNode, kind: Kind, offset: number, length: number, payloadGpa: number): void {
    const block = node.device.blockBytes;
    const end = offset + length;
    slot.kind = kind;
    slot.node = node;
    slot.offset = offset;
    slot.length = length;
    slot.payloadGpa = payloadGpa;
    const alignedStart = Math.ceil(offset / block) * block;
    const alignedEnd = end - (end % block);
    slot.headBlock = offset % block !== 0 ? offset - (offset % block) : -1;
    slot.tailBlock = end % block !== 0 ? alignedEnd : -1;
    if (slot.headBlock !== -1 && slot.headBlock === slot.tailBlock) slot.tailBlock = -1;
    slot.middleOffset = alignedStart;
    slot.middleLength = alignedEnd > alignedStart ? alignedEnd - alignedStart : 0;
    slot.rmw = slot.headBlock !== -1 || slot.tailBlock !== -1;
    slot.lockStart = offset - (offset % block);
    slot.lockEnd = Math.ceil(end / block) * block;
    slot.writeSeq = ++this.writeSeq;
    slot.writeActive = true;
    if (this.blockedByWrite(slot)) {
      slot.wait = Wait.BlockLock;
      return;
    }
    this.startWriteLike(slot);
  }

  /** An earlier write to the same device overlaps this one's blocks, and one of them is a read-modify-write. */
  private blockedByWrite(slot: Slot): boolean {
    const device = slot.node!.device;
    for (const other of this.slots) {
      if (other === slot || !other.writeActive || other.writeSeq > slot.writeSeq || other.node!.device !== device) continue;
      if (!(other.rmw || slot.rmw)) continue;
      if (other.lockStart < slot.lockEnd && slot.lockStart < other.lockEnd) return true;
    }
    return false;
  }

  private startWriteLike(slot: Slot): void {
    slot.wait = Wait.None;
    slot.error = 0;
    slot.pending = 0;
    slot.edgeReads = 0;
    const block = slot.node!.device.blockBytes;
    if (slot.headBlock !== -1) {
      slot.edgeReads++;
      this.submit(slot, slot.head, BlockOp.Read, slot.headBlock, block, slot.headBounceGpa);
    }
    if (slot.tailBlock !== -1) {
      slot.edgeReads++;
      this.submit(slot, slot.tail, BlockOp.Read, slot.tailBlock, block, slot.tailBounceGpa);
    }
    if (slot.middleLength > 0) {
      if (slot.kind === Kind.Write) {
        this.submit(slot, slot.middle, BlockOp.Write, slot.middleOffset, slot.middleLength, slot.payloadGpa + (slot.middleOffset - slot.offset));
      } else {
        this.submit(slot, slot.middle, BlockOp.Discard, slot.middleOffset, slot.middleLength, 0);
      }
    }
  }

  /** Puts the request's part of an edge block into its bounce page (in guest RAM, no JS copy). */
  private patchEdge(slot: Slot, blockOffset: number, bounceGpa: number): void {
    const block = slot.node!.device.blockBytes;
    const from = Math.max(slot.offset, blockOffset);
    const to = Math.min(slot.offset + slot.length, blockOffset + block);
    const target = bounceGpa + (from - blockOffset);
    if (slot.kind === Kind.Write) {
      const source = slot.payloadGpa + (from - slot.offset);
      this.bytes.copyWithin(target, source, source + (to - from));
    } else {
      this.bytes.fill(0, target, target + (to - from));
    }
  }

  private sync(slot: Slot, fh: number, explicit: boolean): void {
    const file = fh < 0 ? undefined : this.openFiles.get(fh);
    if (!file) return this.replyError(slot, -E.EBADF);
    // close() of a read-only handle has nothing to make durable.
    if (!explicit && (!file.writable || file.node.device.readOnly)) return this.replyOk(slot, 0, 0);
    if (file.node.removed) return this.replyError(slot, -E.ENODEV);
    slot.kind = Kind.Flush;
    slot.node = file.node;
    slot.barrierSeq = this.writeSeq;
    if (this.blockedByBarrier(slot)) {
      slot.wait = Wait.WriteBarrier;
      return;
    }
    this.startFlush(slot);
  }

  /** A flush covers the writes that arrived before it: it waits for those still in flight. */
  private blockedByBarrier(slot: Slot): boolean {
    const device = slot.node!.device;
    for (const other of this.slots) {
      if (other.writeActive && other.writeSeq <= slot.barrierSeq && other.node!.device === device) return true;
    }
    return false;
  }

  private startFlush(slot: Slot): void {
    slot.wait = Wait.None;
    slot.error = 0;
    slot.pending = 0;
    this.submit(slot, slot.middle, BlockOp.Flush, 0, 0, 0);
  }

  private submit(slot: Slot, request: SlotRequest, op: BlockOp, offset: number, length: number, gpa: number): void {
    request.op = op;
    request.offset = offset;
    request.length = length;
    request.gpa = gpa;
    request.fua = false;
    slot.pending++;
    try {
      slot.node!.device.submit(request);
    } catch (e) {
      this.log(`fuse: ${slot.node!.name}: submit failed: ${String(e)}`);
      queueMicrotask(() => request.done(-E.EIO));
    }
  }

  private deviceDone(slot: Slot, role: Role, result: number): void {
    if (!slot.busy || slot.pending <= 0) {
      this.log(`fuse: completion for idle slot ${slot.index} ignored`);
      return;
    }
    slot.pending--;
    if (result !== 0 && slot.error === 0) slot.error = Number.isInteger(result) && result < 0 && result >= -4095 ? result : -E.EIO;
    switch (slot.kind) {
      case Kind.Read:
        if (slot.error !== 0) return this.replyError(slot, slot.error);
        return this.replyOk(slot, slot.replyGpa, slot.length);
      case Kind.Flush:
        return this.replyError(slot, slot.error);
      case Kind.Write:
      case Kind.Punch:
        if (role !== Role.Middle && slot.edgeReads > 0) {
          slot.edgeReads--;
          if (slot.edgeReads === 0 && slot.error === 0) this.writeEdges(slot);
        }
        if (slot.pending === 0) this.finishWriteLike(slot);
        return;
      default:
        this.log(`fuse: completion for slot ${slot.index} in no known state`);
    }
  }

  private writeEdges(slot: Slot): void {
    const block = slot.node!.device.blockBytes;
    if (slot.headBlock !== -1) {
      this.patchEdge(slot, slot.headBlock, slot.headBounceGpa);
      this.submit(slot, slot.head, BlockOp.Write, slot.headBlock, block, slot.headBounceGpa);
    }
    if (slot.tailBlock !== -1) {
      this.patchEdge(slot, slot.tailBlock, slot.tailBounceGpa);
      this.submit(slot, slot.tail, BlockOp.Write, slot.tailBlock, block, slot.tailBounceGpa);
    }
  }

  private finishWriteLike(slot: Slot): void {
    slot.writeActive = false;
    const error = slot.error;
    if (error !== 0) this.replyError(slot, error);
    else if (slot.kind === Kind.Write) this.replyWritten(slot, slot.length);
    else this.replyOk(slot, 0, 0);
    this.wakeWaiters();
  }

  private replyWritten(slot: Slot, size: number): void {
    encodeWriteOut(this.view, slot.dataGpa, size);
    this.replyOk(slot, slot.dataGpa, WRITE_OUT_BYTES);
  }

  /** A write finished: start the writes and flushes that were waiting for it. */
  private wakeWaiters(): void {
    for (const slot of this.slots) {
      if (slot.wait === Wait.BlockLock && !this.blockedByWrite(slot)) this.startWriteLike(slot);
      else if (slot.wait === Wait.WriteBarrier && !this.blockedByBarrier(slot)) this.startFlush(slot);
    }
  }
}
