// Device-side batching of outgoing packets: everything a device writes to a channel's
// host-to-guest ring during one turn of the event loop is published with one write-index
// update and at most one signal, and only if the guest asked to be interrupted.
//
// A device may also publish every `publishEvery` packets (counted with wrote()). A disk
// completes a queue's worth of requests at once (a virtio disk answers 32 reads in one
// interrupt); publishing them as one batch makes the guest wait for all 32 before it
// can resubmit any, so the disk sits idle while both sides take turns. Published in
// pieces, the guest resubmits the first ones while the device writes the rest.
import { WRITE_SIGNAL, type RingWriter } from './ring-writer.js';

export class RingWriteBatch {
  private writer: RingWriter | null = null;
  /** Packets staged since the batch (or its last piece) was published. */
  private staged = 0;
  private readonly endBound = () => this.end();

  /**
   * `signal` interrupts the guest; `fail` takes a corrupt-ring error from the publish;
   * `published` runs after each successful publish (a device's follow-up work).
   */
  constructor(
    private readonly signal: () => void,
    private readonly fail: (e: unknown) => void,
    private readonly published: () => void = () => {},
    /** Publish after this many wrote() calls without waiting for the turn to end; 0: only at the end. */
    private readonly publishEvery = 0,
  ) {}

  /** Starts staging writes to `writer` unless a batch is open; it ends by itself after this turn. */
  begin(writer: RingWriter | null): void {
    if (this.writer !== null || writer === null) return;
    writer.beginBatch();
    this.writer = writer;
    queueMicrotask(this.endBound);
  }

  /** Counts one packet written inside the batch; publishes the batch when publishEvery are staged. */
  wrote(): void {
    if (this.writer !== null && this.publishEvery > 0 && ++this.staged >= this.publishEvery) this.end();
  }

  /** Publishes the staged writes now and signals the guest if it needs it. */
  end(): void {
    const writer = this.writer;
    if (writer === null) return;
    this.writer = null;
    this.staged = 0;
    try {
      if (writer.endBatch() === WRITE_SIGNAL) this.signal();
    } catch (e) {
      this.fail(e);
      return;
    }
    this.published();
  }

  /** Forgets an open batch without publishing: the ring is going away. */
  drop(): void {
    this.writer = null;
    this.staged = 0;
  }
}
