// What the server answers to each FUSE opcode: the request is decoded from the slot's
// pages, metadata replies (attributes, directory entries) are composed in the slot's own
// guest pages, never on the JS heap, and data requests are handed to the block machinery.
//
// Why FOPEN_DIRECT_IO: every read and write goes to the server at the caller's size, and
// the kernel keeps no page cache for these files. That makes the file coherent with the
// disk at all times (cmp after fio, a guest-side change, a re-added disk: nothing stale),
// lets O_DIRECT (fio --direct=1) and libaio work with FUSE_ASYNC_DIO so iodepth reaches
// the device, and mkfs/e2fsck, which use pread/pwrite, work unchanged. The cost: no
// readahead or caching for small buffered reads, and no shared mmap of the files.
import { PAGE_SIZE } from '../../memory/page.js';
import { Errno } from '../../sys/errors.js';
import type { BlockIo } from './block-io.js';
import type { DiskDirectory, DiskNode, OpenFile } from './disk-directory.js';
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
  encodeStatfsOut,
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
  RELEASE_IN_BYTES,
  SetattrValid,
  STATFS_OUT_BYTES,
  WRITE_IN_BYTES,
  type FallocateIn,
  type FuseAttr,
  type InitIn,
  type InitOut,
  type OpenIn,
  type SetattrIn,
  type Validity,
} from './fuse-protocol.js';
import type { RequestLoop } from './request-loop.js';
import { Kind, type Slot } from './request-slot.js';

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

export class RequestHandlers {
  readonly uid = process.getuid?.() ?? 0;
  readonly gid = process.getgid?.() ?? 0;
  private readonly mountTime = Math.floor(Date.now() / 1000);
  private initialized = false;

  // Scratch objects for decoding, reused by every request.
  private readonly header = newInHeader();
  private readonly ioIn = newIoIn();
  private readonly openIn: OpenIn = { flags: 0 };
  private readonly setattrIn: SetattrIn = { valid: 0, size: 0 };
  private readonly fallocateIn: FallocateIn = { fh: 0, offset: 0, length: 0, mode: 0 };
  private readonly initIn: InitIn = { major: 0, minor: 0, maxReadahead: 0, flags: 0, flags2: 0 };
  private readonly initOut: InitOut = { major: 0, minor: 0, maxReadahead: 0, flags: 0, maxBackground: 0, congestionThreshold: 0, maxWrite: 0, timeGran: 0, maxPages: 0, flags2: 0 };
  private readonly attr: FuseAttr = newAttr();
  private readonly forgetOne = (nodeid: number, nlookup: number): void => this.directory.forget(nodeid, nlookup);

  constructor(
    private readonly view: DataView,
    private readonly bytes: Uint8Array,
    private readonly maxIo: number,
    private readonly directory: DiskDirectory,
    private readonly loop: RequestLoop,
    private readonly blockIo: BlockIo,
    private readonly log: (m: string) => void,
  ) {}

  // ---- dispatch ----

  dispatch(slot: Slot, n: number): void {
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
        this.loop.replyError(slot, -Errno.EIO);
      } else {
        this.log(`fuse: short request (${n} bytes) dropped`);
        this.loop.noReply(slot);
      }
      return;
    }
    slot.uniqueLow = h.uniqueLow;
    slot.uniqueHigh = h.uniqueHigh;
    if (status === HeaderStatus.LengthMismatch) {
      this.log(`fuse: request claims ${h.len} bytes, ${n} were read`);
      this.loop.replyError(slot, -Errno.EIO);
      return;
    }
    const args = at + IN_HEADER_BYTES;
    const argLength = n - IN_HEADER_BYTES;
    if (!this.initialized && h.opcode !== FuseOpcode.INIT) {
      this.loop.replyError(slot, -Errno.EIO);
      return;
    }
    switch (h.opcode) {
      case FuseOpcode.INIT:
        return this.init(slot, args, argLength);
      case FuseOpcode.LOOKUP:
        return this.lookup(slot, h.nodeid, args, argLength);
      case FuseOpcode.FORGET:
        this.directory.forget(h.nodeid, decodeForgetIn(view, args, argLength));
        return this.loop.noReply(slot);
      case FuseOpcode.BATCH_FORGET:
        forEachBatchForget(view, args, argLength, this.forgetOne);
        return this.loop.noReply(slot);
      case FuseOpcode.INTERRUPT:
        // Requests here finish quickly at the device; letting the interrupted one
        // complete normally is allowed by the protocol.
        return this.loop.noReply(slot);
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
        if (h.nodeid !== FUSE_ROOT_ID) return this.loop.replyError(slot, -Errno.ENOTDIR);
        encodeOpenOut(view, slot.dataGpa, 0, 0);
        return this.loop.replyOk(slot, slot.dataGpa, OPEN_OUT_BYTES);
      case FuseOpcode.READDIR:
        return this.readdir(slot, h.nodeid, args, argLength);
      case FuseOpcode.RELEASEDIR:
      case FuseOpcode.FSYNCDIR:
        return this.loop.replyOk(slot, 0, 0);
      case FuseOpcode.ACCESS:
        return this.access(slot, h.nodeid, decodeAccessIn(view, args, argLength));
      case FuseOpcode.DESTROY:
        return this.loop.replyOk(slot, 0, 0);
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
        return this.loop.replyError(slot, -Errno.EPERM);
      default:
        // LSEEK, xattrs, locks, ioctl, STATX...: ENOSYS makes the kernel use its generic path.
        return this.loop.replyError(slot, -Errno.ENOSYS);
    }
  }

  private init(slot: Slot, args: number, argLength: number): void {
    if (!decodeInitIn(this.view, args, argLength, this.initIn)) return this.loop.replyError(slot, -Errno.EINVAL);
    const wishes = {
      maxIo: this.maxIo,
      flags: InitFlag.ASYNC_READ | InitFlag.BIG_WRITES | InitFlag.ASYNC_DIO | InitFlag.MAX_PAGES | InitFlag.PARALLEL_DIROPS,
      maxBackground: this.loop.slots.length * 4,
    };
    const verdict = negotiateInit(this.initIn, wishes, this.initOut);
    if (verdict === InitVerdict.Unsupported) {
      this.log(`fuse: kernel protocol ${this.initIn.major}.${this.initIn.minor} is too old`);
      return this.loop.replyError(slot, -Errno.EPROTO);
    }
    encodeInitOut(this.view, slot.dataGpa, this.initOut);
    if (verdict === InitVerdict.Ok) this.initialized = true;
    this.loop.replyOk(slot, slot.dataGpa, INIT_OUT_BYTES);
  }

  // ---- the directory and its files' metadata ----

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
    if (parent !== FUSE_ROOT_ID) return this.loop.replyError(slot, -Errno.ENOTDIR);
    const name = decodeName(this.bytes, args, argLength);
    if (name === null) return this.loop.replyError(slot, -Errno.ENOENT);
    const node = this.directory.nodesByName.get(name);
    if (!node) return this.loop.replyError(slot, -Errno.ENOENT);
    node.nlookup++;
    this.fillAttr(node);
    encodeEntryOut(this.view, slot.dataGpa, node.nodeid, ENTRY_VALID, ATTR_VALID, this.attr);
    this.loop.replyOk(slot, slot.dataGpa, ENTRY_OUT_BYTES);
  }

  private getattr(slot: Slot, nodeid: number): void {
    const node = this.directory.nodeOf(nodeid);
    if (node === undefined) return this.loop.replyError(slot, -Errno.ENOENT);
    this.fillAttr(node);
    encodeAttrOut(this.view, slot.dataGpa, ATTR_VALID, this.attr);
    this.loop.replyOk(slot, slot.dataGpa, ATTR_OUT_BYTES);
  }

  private setattr(slot: Slot, nodeid: number, args: number, argLength: number): void {
    const node = this.directory.nodeOf(nodeid);
    if (node === undefined) return this.loop.replyError(slot, -Errno.ENOENT);
    const s = this.setattrIn;
    if (!decodeSetattrIn(this.view, args, argLength, s)) return this.loop.replyError(slot, -Errno.EINVAL);
    if (s.valid & (SetattrValid.MODE | SetattrValid.UID | SetattrValid.GID)) return this.loop.replyError(slot, -Errno.EPERM);
    if (s.valid & SetattrValid.SIZE) {
      if (node === null) return this.loop.replyError(slot, -Errno.EISDIR);
      // A disk's size is the guest's: only a truncate to the size it already has succeeds.
      if (s.size !== node.device.sizeBytes) return this.loop.replyError(slot, -Errno.EINVAL);
    }
    // Times (touch) are accepted and not kept: they always read as the mount time.
    this.fillAttr(node);
    encodeAttrOut(this.view, slot.dataGpa, ATTR_VALID, this.attr);
    this.loop.replyOk(slot, slot.dataGpa, ATTR_OUT_BYTES);
  }

  private open(slot: Slot, nodeid: number, args: number, argLength: number): void {
    const node = this.directory.nodeOf(nodeid);
    if (node === undefined) return this.loop.replyError(slot, -Errno.ENOENT);
    if (node === null) return this.loop.replyError(slot, -Errno.EISDIR);
    if (node.removed) return this.loop.replyError(slot, -Errno.ENOENT);
    if (!decodeOpenIn(this.view, args, argLength, this.openIn)) return this.loop.replyError(slot, -Errno.EINVAL);
    const writable = (this.openIn.flags & O_ACCMODE) !== O_RDONLY;
    if (writable && node.device.readOnly) return this.loop.replyError(slot, -Errno.EROFS);
    const fh = this.directory.open(node, writable);
    encodeOpenOut(this.view, slot.dataGpa, fh, FopenFlag.DIRECT_IO | FopenFlag.PARALLEL_DIRECT_WRITES);
    this.loop.replyOk(slot, slot.dataGpa, OPEN_OUT_BYTES);
  }

  private releaseFile(slot: Slot, fh: number): void {
    this.directory.close(fh);
    this.loop.replyOk(slot, 0, 0);
  }

  private statfs(slot: Slot): void {
    const nodesByName = this.directory.nodesByName;
    let bytes = 0;
    for (const node of nodesByName.values()) bytes += node.device.sizeBytes;
    encodeStatfsOut(this.view, slot.dataGpa, { blocks: Math.floor(bytes / PAGE_SIZE), bsize: PAGE_SIZE, files: nodesByName.size + 1, namelen: 255 });
    this.loop.replyOk(slot, slot.dataGpa, STATFS_OUT_BYTES);
  }

  private access(slot: Slot, nodeid: number, mask: number): void {
    const node = this.directory.nodeOf(nodeid);
    if (node === undefined) return this.loop.replyError(slot, -Errno.ENOENT);
    if (mask < 0) return this.loop.replyError(slot, -Errno.EINVAL);
    if (node !== null && (mask & W_OK) !== 0 && node.device.readOnly) return this.loop.replyError(slot, -Errno.EROFS);
    this.loop.replyOk(slot, 0, 0);
  }

  private readdir(slot: Slot, nodeid: number, args: number, argLength: number): void {
    if (nodeid !== FUSE_ROOT_ID) return this.loop.replyError(slot, -Errno.ENOTDIR);
    const io = this.ioIn;
    if (!decodeIoIn(this.view, args, argLength, io)) return this.loop.replyError(slot, -Errno.EINVAL);
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
        for (const node of this.directory.nodesByName.values()) if (!emit(node.nodeid, DirentType.DT_REG, node.name)) break;
      }
    }
    this.loop.replyOk(slot, slot.dataGpa, used);
  }

  // ---- the data path ----

  /** The open file behind `fh` for I/O, or a negative errno. */
  private fileFor(fh: number, forWrite: boolean): OpenFile | number {
    const file = fh < 0 ? undefined : this.directory.openFiles.get(fh);
    if (!file) return -Errno.EBADF;
    if (file.node.removed) return -Errno.ENODEV;
    if (forWrite && !file.writable) return -Errno.EBADF;
    return file;
  }

  private read(slot: Slot, args: number, argLength: number): void {
    const io = this.ioIn;
    if (!decodeIoIn(this.view, args, argLength, io)) return this.loop.replyError(slot, -Errno.EINVAL);
    const file = this.fileFor(io.fh, false);
    if (typeof file === 'number') return this.loop.replyError(slot, file);
    if (io.offset < 0 || io.size > this.maxIo) return this.loop.replyError(slot, -Errno.EINVAL);
    const size = file.node.device.sizeBytes;
    if (io.size === 0 || io.offset >= size) return this.loop.replyOk(slot, 0, 0);
    this.blockIo.beginRead(slot, file.node, io.offset, Math.min(io.offset + io.size, size));
  }

  private write(slot: Slot, args: number, argLength: number): void {
    const io = this.ioIn;
    if (!decodeIoIn(this.view, args, argLength, io)) return this.loop.replyError(slot, -Errno.EINVAL);
    if (argLength !== WRITE_IN_BYTES + io.size) return this.loop.replyError(slot, -Errno.EINVAL);
    const file = this.fileFor(io.fh, true);
    if (typeof file === 'number') return this.loop.replyError(slot, file);
    const device = file.node.device;
    if (device.readOnly) return this.loop.replyError(slot, -Errno.EROFS);
    if (io.offset < 0 || io.size > this.maxIo) return this.loop.replyError(slot, -Errno.EINVAL);
    if (io.size === 0) return this.loop.replyWritten(slot, 0);
    // As a block device does: nothing fits at or past the end; a write across it is cut short.
    if (io.offset >= device.sizeBytes) return this.loop.replyError(slot, -Errno.ENOSPC);
    const length = Math.min(io.size, device.sizeBytes - io.offset);
    this.blockIo.beginWriteLike(slot, file.node, Kind.Write, io.offset, length, args + WRITE_IN_BYTES);
  }

  private fallocate(slot: Slot, args: number, argLength: number): void {
    const f = this.fallocateIn;
    if (!decodeFallocateIn(this.view, args, argLength, f)) return this.loop.replyError(slot, -Errno.EINVAL);
    const file = this.fileFor(f.fh, true);
    if (typeof file === 'number') return this.loop.replyError(slot, file);
    const device = file.node.device;
    if (f.offset < 0 || f.length <= 0) return this.loop.replyError(slot, -Errno.EINVAL);
    if (f.mode === (FallocateMode.PUNCH_HOLE | FallocateMode.KEEP_SIZE)) {
      // A punched hole must read back as zeros: mke2fs treats a regular file's discard as
      // zeroing and skips wiping inode tables. The edges are zeroed here; the middle relies
      // on the device's discard reading back zeros (UNMAP on a host file punches a hole).
      // ZERO_RANGE is refused below, so mke2fs falls back to this punch or to writing zeros.
      if (!device.discard) return this.loop.replyError(slot, -Errno.EOPNOTSUPP);
      if (device.readOnly) return this.loop.replyError(slot, -Errno.EROFS);
      if (f.offset >= device.sizeBytes) return this.loop.replyOk(slot, 0, 0);
      const length = Math.min(f.length, device.sizeBytes - f.offset);
      return this.blockIo.beginWriteLike(slot, file.node, Kind.Punch, f.offset, length, 0);
    }
    if (f.mode === 0 || f.mode === FallocateMode.KEEP_SIZE) {
      // Every byte of a disk is already allocated; growing it is not possible.
      return this.loop.replyError(slot, f.offset + f.length <= device.sizeBytes ? 0 : -Errno.ENOSPC);
    }
    this.loop.replyError(slot, -Errno.EOPNOTSUPP);
  }

  private sync(slot: Slot, fh: number, explicit: boolean): void {
    const file = fh < 0 ? undefined : this.directory.openFiles.get(fh);
    if (!file) return this.loop.replyError(slot, -Errno.EBADF);
    // close() of a read-only handle has nothing to make durable.
    if (!explicit && (!file.writable || file.node.device.readOnly)) return this.loop.replyOk(slot, 0, 0);
    if (file.node.removed) return this.loop.replyError(slot, -Errno.ENODEV);
    this.blockIo.beginFlush(slot, file.node);
  }
}
