// A fixed-size open-addressing map from connection id to eventfd, in shared memory: the
// host writes it, the guest's HvSignalEvent reads it without a round trip to the host.
import { SIGNAL_TABLE_ENTRIES } from './shared-layout.js';

const EMPTY = 0;
const TOMBSTONE = -1;

export class SignalTable {
  private readonly words: Int32Array;

  constructor(readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(SIGNAL_TABLE_ENTRIES * 8)) {
    this.words = new Int32Array(buffer);
  }

  /** The eventfd for connectionId, or -1. */
  lookup(connectionId: number): number {
    const key = keyOf(connectionId);
    if (key === EMPTY) return -1;
    for (let i = 0, slot = home(connectionId); i < SIGNAL_TABLE_ENTRIES; i++, slot = (slot + 1) % SIGNAL_TABLE_ENTRIES) {
      const k = Atomics.load(this.words, slot * 2);
      if (k === EMPTY) return -1;
      if (k === key) return Atomics.load(this.words, slot * 2 + 1);
    }
    return -1;
  }

  set(connectionId: number, fd: number): void {
    const key = keyOf(connectionId);
    if (key === EMPTY) throw new RangeError(`connection id ${connectionId} cannot be held in the signal table`);
    let free = -1;
    for (let i = 0, slot = home(connectionId); i < SIGNAL_TABLE_ENTRIES; i++, slot = (slot + 1) % SIGNAL_TABLE_ENTRIES) {
      const k = Atomics.load(this.words, slot * 2);
      if (k === key) {
        Atomics.store(this.words, slot * 2 + 1, fd);
        return;
      }
      if (k === TOMBSTONE && free < 0) free = slot;
      if (k === EMPTY) {
        if (free < 0) free = slot;
        break;
      }
    }
    if (free < 0) throw new Error('signal table full');
    // fd before key: a reader that sees the key sees its fd.
    Atomics.store(this.words, free * 2 + 1, fd);
    Atomics.store(this.words, free * 2, key);
  }

  delete(connectionId: number): void {
    const key = keyOf(connectionId);
    if (key === EMPTY) return;
    for (let i = 0, slot = home(connectionId); i < SIGNAL_TABLE_ENTRIES; i++, slot = (slot + 1) % SIGNAL_TABLE_ENTRIES) {
      const k = Atomics.load(this.words, slot * 2);
      if (k === EMPTY) return;
      if (k === key) {
        Atomics.store(this.words, slot * 2, TOMBSTONE);
        return;
      }
    }
  }
}

/**
 * The stored key of a connection id (id + 1), or EMPTY for an id the table cannot hold: the
 * guest chooses the id of HvSignalEvent, and one that mapped onto EMPTY or TOMBSTONE (or
 * wrapped past int32) would match a free or deleted entry and hand out a stale fd.
 * Real connection ids use bits 0-23 only.
 */
function keyOf(connectionId: number): number {
  return Number.isInteger(connectionId) && connectionId >= 0 && connectionId < 0x7fffffff ? connectionId + 1 : EMPTY;
}

function home(connectionId: number): number {
  return (connectionId >>> 0) % SIGNAL_TABLE_ENTRIES;
}
