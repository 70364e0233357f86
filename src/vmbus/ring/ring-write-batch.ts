// Device-side batching of outgoing packets: everything a device writes to a channel's
// host-to-guest ring during one turn of the event loop is published with one write-index
// update and at most one signal, and only if the guest asked to be interrupted.
import { WRITE_SIGNAL, type RingWriter } from './ring-writer.js';

export class RingWriteBatch {
  private writer: RingWriter | null = null;
  private readonly endBound = () => this.end();

  /**
   * `signal` interrupts the guest; `fail` takes a corrupt-ring error from the publish;
   * `published` runs after each successful publish (a device's follow-up work).
   */
  constructor(
    private readonly signal: () => void,
    private readonly fail: (e: unknown) => void,
    private readonly published: () => void = () => {},
  ) {}

  /** Starts staging writes to `writer` unless a batch is open; it ends by itself after this turn. */
  begin(writer: RingWriter | null): void {
    if (this.writer !== null || writer === null) return;
    writer.beginBatch();
    this.writer = writer;
    queueMicrotask(this.endBound);
  }

  /** Publishes the staged writes now and signals the guest if it needs it. */
  end(): void {
    const writer = this.writer;
    if (writer === null) return;
    this.writer = null;
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
  }
}
