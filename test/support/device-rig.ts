// What the device tests (StorVSP, NetVSP) share when they drive a device over fake
// channels: guest pages handed out in order, a polling wait, and the guest's end of an
// open channel. No side effects on import (the test runner loads this file too).
import assert from 'node:assert/strict';
import type { GuestMemory, PageMapping } from '../../src/memory/guest-memory.js';
import type { GpaRange } from '../../src/memory/gpa-range.js';
import { PAGE_SIZE } from '../../src/memory/page.js';
import { EventFd } from '../../src/sys/eventfd.js';
import { initRingHeader, ringMemoryFromBuffer, RingWord, type RingMemory } from '../../src/vmbus/ring/ring-memory.js';
import { RingReader } from '../../src/vmbus/ring/ring-reader.js';
import { RingWriter, WRITE_FULL, WRITE_SIGNAL } from '../../src/vmbus/ring/ring-writer.js';
import type { OpenChannel } from '../../src/vmbus/server/vmbus-device.js';

/**
 * Hands out guest page numbers in order from page 16 up, wrapping around at `ramPages`;
 * tests never free them (RAM is plenty for what one test holds at a time).
 */
export function pageCursor(ramPages: number): (n: number) => number {
  let next = 16;
  return (n) => {
    if (next + n > ramPages) next = 16;
    const first = next;
    next += n;
    return first;
  };
}

/** Resolves once cond() holds; rejects after timeoutMs. */
export async function waitFor(cond: () => boolean, what: string, timeoutMs = 3000): Promise<void> {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

/** A packet the device wrote to the guest's inbound ring, copied out. */
export interface HostPacket {
  type: number;
  flags: number;
  transactionId: bigint;
  payload: Uint8Array;
  header: Uint8Array;
}

export interface FakeGuestEndOptions {
  subChannelIndex?: number;
  /** Data pages of the guest-to-host ring and of the host-to-guest ring. */
  sendPages?: number;
  receivePages?: number;
  /** Map the rings twice over as the server does (packets never split); false: single mappings. */
  doubleMapped?: boolean;
  /** What OpenChannel.gpadl answers. */
  gpadls?: Map<number, GpaRange[]>;
}

/**
 * The guest's end of one open channel, for driving a device directly: rings in guest
 * RAM, a guest-signal eventfd, and an OpenChannel that counts the device's signals and
 * records its failures.
 */
export class FakeGuestEnd {
  readonly open: OpenChannel;
  readonly failures: string[] = [];
  hostSignals = 0;
  readonly writer: RingWriter;
  readonly reader: RingReader;
  readonly incoming: RingMemory;
  readonly outgoing: RingMemory;
  private readonly mappings: PageMapping[] = [];
  private readonly signal = EventFd.create();
  private readonly doubleMapped: boolean;

  constructor(private readonly memory: GuestMemory, private readonly allocPages: (n: number) => number, o: FakeGuestEndOptions = {}) {
    const subChannelIndex = o.subChannelIndex ?? 0;
    const gpadls = o.gpadls ?? new Map<number, GpaRange[]>();
    this.doubleMapped = o.doubleMapped ?? true;
    this.incoming = this.ring(o.sendPages ?? 8);
    this.outgoing = this.ring(o.receivePages ?? 8);
    this.writer = new RingWriter(this.incoming);
    this.reader = new RingReader(this.outgoing);
    const self = this;
    this.open = {
      relid: 1 + subChannelIndex,
      subChannelIndex,
      connectionId: 0x10000 + subChannelIndex,
      openId: 1,
      userData: new Uint8Array(120),
      incoming: this.incoming,
      outgoing: this.outgoing,
      guestSignal: this.signal,
      memory,
      targetVp: 0,
      gpadl: (id: number) => gpadls.get(id) ?? null,
      signalGuest() {
        self.hostSignals++;
      },
      fail(reason: string) {
        self.failures.push(reason);
      },
    };
  }

  private ring(dataPages: number): RingMemory {
    const pages = dataPages + 1;
    const first = this.allocPages(pages);
    const pfns = Array.from({ length: pages }, (_, i) => first + i);
    // A single mapping makes packets wrap at the end of the data area, which a device must handle too.
    const mapping = this.doubleMapped ? this.memory.mapPages(pfns, 1) : this.memory.mapPages(pfns);
    this.mappings.push(mapping);
    const mem = ringMemoryFromBuffer(mapping.buffer, 0, pages * PAGE_SIZE, this.doubleMapped);
    initRingHeader(mem);
    return mem;
  }

  /** Writes a packet the way the guest does, signalling only on the empty to non-empty edge. */
  send(type: number, transactionId: bigint | number, payload: Uint8Array, header: Uint8Array | null = null, flags = 1): void {
    const result = this.writer.tryWrite(type, flags, transactionId, header, payload);
    assert.notEqual(result, WRITE_FULL, 'guest ring full');
    if (result === WRITE_SIGNAL) this.signal.signal();
  }

  /** Signals the host regardless (what a guest does after freeing space the host waits for). */
  kick(): void {
    this.signal.signal();
  }

  /** Whether the host has consumed everything the guest wrote. */
  get consumed(): boolean {
    return Atomics.load(this.incoming.header, RingWord.ReadIndex) === Atomics.load(this.incoming.header, RingWord.WriteIndex);
  }

  /** The next packet from the host if one is there now, committed (signalling the host if it waits for room). */
  takePacket(): HostPacket | null {
    const view = this.reader.peek();
    if (view === null) return null;
    const payload = new Uint8Array(view.payloadLength);
    this.reader.copyPayload(payload);
    const header = new Uint8Array(view.headerLength);
    this.reader.copyHeader(header);
    const p: HostPacket = { type: view.type, flags: view.flags, transactionId: view.transactionId, payload, header };
    this.reader.next();
    if (this.reader.commit()) this.signal.signal();
    return p;
  }

  /** Waits until the host has written a packet. */
  async packetWaiting(what: string): Promise<void> {
    await waitFor(() => this.reader.peek() !== null, what);
  }

  release(): void {
    for (const m of this.mappings) m.release();
    this.signal.close();
  }
}
