// Requests in, replies out: reads FUSE requests from the channel into free slots and
// writes each reply from the slot's own guest pages, which frees the slot again.
//
// The /dev/fuse fd is non-blocking and read until EAGAIN whenever the guest's Poller says
// it is readable; with every slot busy it is taken off the Poller (a level-triggered fd
// nobody drains would spin) and read again as soon as a slot frees.
import type { Poller } from '../../sys/epoll.js';
import { Errno } from '../../sys/errors.js';
import { IovecList } from '../../sys/iovec.js';
import type { FuseChannel } from './disk-file-server.js';
import { encodeOutHeader, encodeWriteOut, OUT_HEADER_BYTES, WRITE_OUT_BYTES } from './fuse-protocol.js';
import { Kind, Wait, type Slot } from './request-slot.js';

export class RequestLoop {
  /** Every slot, by index; emptied once their pages are freed. */
  readonly slots: Slot[] = [];
  private readonly freeSlots: number[] = [];
  /** Replies are written synchronously, one at a time: one iovec list serves every slot. */
  private readonly iov = new IovecList(2);
  /** Slots holding a request (read and not yet answered). */
  busyCount = 0;
  state: 'running' | 'closing' | 'closed' = 'running';
  /** Called when the last busy slot frees while closing. */
  drained: (() => void) | null = null;
  private connectionLost = false;
  private pollToken = -1;
  private pumping = false;
  private readonly onReadable = (): void => this.pump();

  constructor(
    private readonly fuse: FuseChannel,
    private readonly view: DataView,
    private readonly hostBase: number,
    private readonly poller: Poller,
    private readonly log: (m: string) => void,
    /** Serves the request of `n` bytes just read into `slot`; it must answer through this loop. */
    private readonly dispatch: (slot: Slot, n: number) => void,
  ) {}

  addSlot(slot: Slot): void {
    this.slots.push(slot);
    this.freeSlots.push(slot.index);
  }

  // ---- reading requests ----

  watch(): void {
    if (this.pollToken !== -1 || this.state !== 'running' || this.connectionLost) return;
    this.pollToken = this.poller.add(this.fuse.fd, this.onReadable);
  }

  unwatch(): void {
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
          if (n === -Errno.EAGAIN) {
            this.watch();
            return;
          }
          if (n === -Errno.EINTR) continue;
          // ENODEV: unmounted or aborted from outside; ECONNABORTED likewise with ABORT_ERROR.
          if (n !== -Errno.ENODEV && n !== -Errno.ECONNABORTED) this.log(`fuse: read(/dev/fuse) failed: errno ${-n}`);
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

  replyError(slot: Slot, error: number): void {
    encodeOutHeader(this.view, slot.headerGpa, OUT_HEADER_BYTES, error, slot.uniqueLow, slot.uniqueHigh);
    this.send(slot, 0, 0);
  }

  /** Replies success with `length` bytes of payload at `gpa` (guest RAM). */
  replyOk(slot: Slot, gpa: number, length: number): void {
    encodeOutHeader(this.view, slot.headerGpa, OUT_HEADER_BYTES + length, 0, slot.uniqueLow, slot.uniqueHigh);
    this.send(slot, gpa, length);
  }

  replyWritten(slot: Slot, size: number): void {
    encodeWriteOut(this.view, slot.dataGpa, size);
    this.replyOk(slot, slot.dataGpa, WRITE_OUT_BYTES);
  }

  private send(slot: Slot, gpa: number, length: number): void {
    if (this.state !== 'closed') {
      const iov = this.iov;
      iov.clear();
      iov.push(this.hostBase + slot.headerGpa, OUT_HEADER_BYTES);
      if (length > 0) iov.push(this.hostBase + gpa, length);
      const n = this.fuse.writev(iov);
      // ENOENT: the request was interrupted and is gone; nothing to do.
      if (n < 0 && n !== -Errno.ENOENT) this.log(`fuse: reply to opcode of slot ${slot.index} failed: errno ${-n}`);
    }
    this.release(slot);
  }

  /** Releases a slot whose request takes no reply (FORGET, INTERRUPT). */
  noReply(slot: Slot): void {
    this.release(slot);
  }
}
