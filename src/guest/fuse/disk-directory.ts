// The directory the mount shows: one regular file per disk, the kernel's references to
// each (lookups and open handles), and when a removed disk may finally be forgotten.
import { PAGE_SIZE } from '../../memory/page.js';
import type { GuestBlockDevice } from '../storvsc/guest-block-device.js';
import { FUSE_ROOT_ID } from './fuse-protocol.js';

const MAX_BLOCK_BYTES = PAGE_SIZE;

/** One disk in the directory. Node ids are never reused, so a stale kernel inode can never reach a new disk. */
export class DiskNode {
  nlookup = 0;
  openCount = 0;
  removed = false;

  constructor(
    readonly nodeid: number,
    readonly name: string,
    readonly device: GuestBlockDevice,
  ) {}
}

export interface OpenFile {
  node: DiskNode;
  writable: boolean;
}

export class DiskDirectory {
  readonly nodesById = new Map<number, DiskNode>();
  /** The disks shown, in the order they were added (READDIR lists them so). */
  readonly nodesByName = new Map<string, DiskNode>();
  private nextNodeId = FUSE_ROOT_ID + 1;
  readonly openFiles = new Map<number, OpenFile>();
  private nextFh = 1;

  /** Shows `device` as <device.name>; throws if its name or geometry cannot be served. */
  add(device: GuestBlockDevice): void {
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

  /** The kernel dropped `nlookup` references to `nodeid` (FORGET, BATCH_FORGET). */
  forget(nodeid: number, nlookup: number): void {
    const node = this.nodesById.get(nodeid);
    if (!node || nlookup < 0) return;
    node.nlookup = Math.max(0, node.nlookup - nlookup);
    this.collect(node);
  }

  /** Registers an open handle on `node`; its fh. */
  open(node: DiskNode, writable: boolean): number {
    const fh = this.nextFh++;
    this.openFiles.set(fh, { node, writable });
    node.openCount++;
    return fh;
  }

  /** Forgets handle `fh` (RELEASE); unknown handles are ignored. */
  close(fh: number): void {
    const file = this.openFiles.get(fh);
    if (file) {
      this.openFiles.delete(fh);
      file.node.openCount--;
      this.collect(file.node);
    }
  }

  /** Drops a removed disk once the kernel holds no reference to it. */
  private collect(node: DiskNode): void {
    if (node.removed && node.nlookup === 0 && node.openCount === 0) this.nodesById.delete(node.nodeid);
  }

  /** The node for `nodeid`: null for the root, undefined when unknown. */
  nodeOf(nodeid: number): DiskNode | null | undefined {
    if (nodeid === FUSE_ROOT_ID) return null;
    return this.nodesById.get(nodeid);
  }
}
