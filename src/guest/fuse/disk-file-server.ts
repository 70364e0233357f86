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
//
// This file owns the mount and its lifecycle. The parts:
//   request-slot.ts      a slot's guest pages and pooled block requests
//   request-loop.ts      reading requests into free slots, writing replies, polling
//   request-handlers.ts  what each FUSE opcode does (and why FOPEN_DIRECT_IO)
//   block-io.ts          device reads, read-modify-write of edges, write and flush ordering
//   disk-directory.ts    the disks shown, their node ids and open handles
import path from 'node:path';
import fs from 'node:fs';
import type { GuestMemory } from '../../memory/guest-memory.js';
import { PAGE_SIZE } from '../../memory/page.js';
import type { Poller } from '../../sys/epoll.js';
import { FuseDevice, isFuseMountPoint, tryDetachMount } from '../../sys/fuse-device.js';
import type { IovecList } from '../../sys/iovec.js';
import type { PageAllocator } from '../page-allocator.js';
import type { GuestBlockDevice } from '../storvsc/guest-block-device.js';
import { BlockIo } from './block-io.js';
import { DiskDirectory } from './disk-directory.js';
import { RequestHandlers } from './request-handlers.js';
import { RequestLoop } from './request-loop.js';
import { EXTRA_PAGES_PER_SLOT, Slot } from './request-slot.js';

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
/** How long unmount waits for requests still at the device before closing anyway. */
const UNMOUNT_DRAIN_MS = 10_000;

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
  private readonly allocator: PageAllocator;
  private readonly log: (m: string) => void;
  private readonly fuse: FuseChannel;
  private readonly directory = new DiskDirectory();
  private readonly loop: RequestLoop;
  private readonly handlers: RequestHandlers;
  private unmounting: Promise<void> | null = null;

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
    const view = context.memory.view;
    const bytes = context.memory.bytes;
    this.allocator = context.allocator;
    this.log = context.log ?? (() => {});
    const maxIo = context.maxIo ?? DEFAULT_MAX_IO;
    const queueDepth = context.queueDepth ?? DEFAULT_QUEUE_DEPTH;
    this.loop = new RequestLoop(channel, view, Number(context.memory.base), context.poller, this.log, (slot, n) => this.handlers.dispatch(slot, n));
    const blockIo = new BlockIo(this.loop.slots, bytes, this.loop, this.log);
    this.handlers = new RequestHandlers(view, bytes, maxIo, this.directory, this.loop, blockIo, this.log);
    try {
      if (!Number.isInteger(maxIo) || maxIo < 2 * PAGE_SIZE || maxIo > MAX_MAX_IO || maxIo % PAGE_SIZE !== 0) {
        throw new RangeError(`maxIo must be a multiple of ${PAGE_SIZE} in [${2 * PAGE_SIZE}, ${MAX_MAX_IO}], got ${maxIo}`);
      }
      if (!Number.isInteger(queueDepth) || queueDepth < 1 || queueDepth > 256) throw new RangeError(`queueDepth must be in [1, 256], got ${queueDepth}`);
      const pagesPerSlot = maxIo / PAGE_SIZE + EXTRA_PAGES_PER_SLOT;
      for (let i = 0; i < queueDepth; i++) {
        this.loop.addSlot(new Slot(i, this.allocator.allocContiguous(pagesPerSlot), pagesPerSlot, maxIo, blockIo.onDeviceDone));
      }
      // default_permissions: the kernel checks mode bits, so allow_other never lets an
      // unprivileged user write a 0644 disk. max_read bounds a READ to our buffers.
      mount?.(`rootmode=40000,user_id=${this.handlers.uid},group_id=${this.handlers.gid},allow_other,default_permissions,max_read=${maxIo}`);
    } catch (e) {
      channel.close();
      this.freePages();
      throw e;
    }
    if (mountPoint !== null) {
      installExitHook();
      liveMounts.add(mountPoint);
    }
    this.loop.watch();
  }

  /** Shows `device` as mountPoint/<device.name>. */
  add(device: GuestBlockDevice): void {
    if (this.loop.state !== 'running') throw new Error('fuse: the server is unmounting');
    this.directory.add(device);
  }

  /** Takes the file away; handles still open get -ENODEV. */
  remove(name: string): void {
    this.directory.remove(name);
  }

  /** The names currently shown. */
  get names(): string[] {
    return [...this.directory.nodesByName.keys()];
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
    const loop = this.loop;
    loop.state = 'closing';
    try {
      loop.unwatch();
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
    if (loop.busyCount > 0) {
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve) => {
        loop.drained = resolve;
        timer = setTimeout(resolve, UNMOUNT_DRAIN_MS);
      });
      clearTimeout(timer);
      loop.drained = null;
      if (loop.busyCount > 0) this.log(`fuse: ${loop.busyCount} requests still at the device after ${UNMOUNT_DRAIN_MS} ms; closing anyway`);
    }
    loop.state = 'closed';
    this.fuse.close();
    this.freePages();
  }

  private freePages(): void {
    // Pages of a slot the device still holds stay allocated: the device may yet write them.
    const slots = this.loop.slots;
    for (const slot of slots) if (!slot.busy) this.allocator.freeRun(slot.firstPfn, slot.pageCount);
    slots.length = 0;
  }
}
