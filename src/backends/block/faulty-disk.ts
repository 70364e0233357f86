// A disk that fails on purpose: wraps another backend and answers chosen requests with
// an errno instead of passing them on, so tests can drive the SCSI target's and the
// guest's error paths (medium errors, a full disk, a failing cache flush). The rules can
// be changed while the disk is in use.
import type { BlockBackend, BlockDone, BlockIo, DiskInfo } from './block-backend.js';
import { BlockCompletionQueue } from './memory-disk.js';

export type FaultOp = 'read' | 'write' | 'flush' | 'discard' | 'any';

export interface FaultRule {
  /** Which requests: one kind, or 'any'. */
  op: FaultOp;
  /**
   * Byte range [from, to) on the disk: the rule hits requests that overlap it. Without
   * it every request of that kind is hit; flushes have no range, so only rules without
   * an offset hit them.
   */
  offset?: [number, number];
  /** The error to complete with (positive, e.g. EIO = 5, ENOSPC = 28). */
  errno: number;
  /** How many requests to fail before the rule stops hitting; default: forever. Counts down. */
  times?: number;
}

export class FaultyDisk implements BlockBackend {
  /** The active rules, checked in order; the first match wins. Replace or edit at will. */
  rules: FaultRule[];
  /** Requests failed by a rule. */
  injected = 0;
  private readonly completions = new BlockCompletionQueue();

  constructor(readonly inner: BlockBackend, rules: FaultRule[] = []) {
    this.rules = rules;
  }

  get info(): DiskInfo {
    return this.inner.info;
  }

  get stats(): BlockBackend['stats'] {
    return this.inner.stats;
  }

  /** Replaces the rules. */
  setRules(rules: FaultRule[]): void {
    this.rules = rules;
  }

  addRule(rule: FaultRule): void {
    this.rules.push(rule);
  }

  clearRules(): void {
    this.rules = [];
  }

  read(io: BlockIo, done: BlockDone): void {
    if (!this.inject('read', io, true, done)) this.inner.read(io, done);
  }

  write(io: BlockIo, done: BlockDone): void {
    if (!this.inject('write', io, true, done)) this.inner.write(io, done);
  }

  flush(io: BlockIo, done: BlockDone): void {
    if (!this.inject('flush', io, false, done)) this.inner.flush(io, done);
  }

  discard(io: BlockIo, done: BlockDone): void {
    if (!this.inject('discard', io, true, done)) this.inner.discard(io, done);
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  /** Completes io with the first matching rule's errno; false when no rule hits. */
  private inject(op: FaultOp, io: BlockIo, ranged: boolean, done: BlockDone): boolean {
    const rules = this.rules;
    for (let i = 0; i < rules.length; i++) {
      const rule = rules[i]!;
      if (rule.op !== op && rule.op !== 'any') continue;
      if (rule.times !== undefined && rule.times <= 0) continue;
      if (rule.offset !== undefined) {
        if (!ranged) continue;
        const [from, to] = rule.offset;
        // Overlap of [io.offset, io.offset + max(length, 1)) with [from, to): a
        // zero-length request still has a position.
        const end = io.offset + Math.max(io.length, 1);
        if (!(io.offset < to && end > from)) continue;
      }
      if (rule.times !== undefined) rule.times--;
      this.injected++;
      this.completions.push(io, done, -Math.abs(rule.errno));
      return true;
    }
    return false;
  }
}
