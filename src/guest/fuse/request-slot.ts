// A request slot: the guest pages one FUSE request is read into, answered from and
// bounced through, with the pooled block requests it makes and its progress at the device.
//
// Zero copy: the kernel reads the request into the slot's pages laid out so a WRITE's
// payload starts on a page boundary (dataGpa), so the payload goes to the device by its
// guest-physical address; a READ lands in the same pages and the reply is
// writev(out_header, those pages).
import { PAGE_SIZE } from '../../memory/page.js';
import { BlockOp, type GuestBlockRequest } from '../storvsc/guest-block-device.js';
import type { DiskNode } from './disk-directory.js';
import { IN_HEADER_BYTES, WRITE_IN_BYTES } from './fuse-protocol.js';

/** in_header + write_in: a WRITE's payload starts this far into the request. */
const WRITE_PAYLOAD_OFFSET = IN_HEADER_BYTES + WRITE_IN_BYTES;
/** Spare pages after the payload area: an unaligned READ covers up to two extra blocks. */
const READ_SLACK_PAGES = 2;
/** Slot layout: header page, payload pages, read slack, head bounce, tail bounce. */
export const EXTRA_PAGES_PER_SLOT = 1 + READ_SLACK_PAGES + 2;

/** What a slot is doing with the device. */
export const Kind = { None: 0, Read: 1, Write: 2, Punch: 3, Flush: 4 } as const;
export type Kind = (typeof Kind)[keyof typeof Kind];
/** Why a slot is parked instead of at the device. */
export const Wait = { None: 0, BlockLock: 1, WriteBarrier: 2 } as const;
export type Wait = (typeof Wait)[keyof typeof Wait];
export const Role = { Head: 0, Tail: 1, Middle: 2 } as const;
export type Role = (typeof Role)[keyof typeof Role];

/** A block request owned by a slot, reused for every request the slot makes. */
export class SlotRequest implements GuestBlockRequest {
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
export class Slot {
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
