// epoll, in two shapes: a blocking wait for threads that do nothing else (ring workers,
// benchmarks), and a Poller that waits on libuv's thread pool so a thread's event loop
// stays free (the main thread's control plane, the reference guest's interrupt line).
import { EventFd } from './eventfd.js';
import { Errno, SysError } from './errors.js';
import { check, errno, raw } from './libc.js';

const EPOLL_CLOEXEC = 0o2000000;
const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;
export const EPOLLIN = 0x001;
const EVENT_SIZE = 12; // struct epoll_event is packed on x86-64: u32 events, u64 data

/**
 * The tokens of the fds one wait found ready: `count` entries of `tokens`, written in
 * place by each wait, so a wake-up allocates nothing (emptying and refilling an array
 * would give it a new backing store every time).
 */
export class ReadyTokens {
  count = 0;
  readonly tokens: Float64Array;

  constructor(capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`ReadyTokens capacity ${capacity} must be a positive integer`);
    this.tokens = new Float64Array(capacity);
  }

  toArray(): number[] {
    return Array.from(this.tokens.subarray(0, this.count));
  }
}

export class Epoll {
  readonly fd: number;
  private readonly ctlEvent = Buffer.alloc(EVENT_SIZE);
  private readonly events: Buffer;
  private closed = false;
  /** What waitAsync hands its callback, reused so a wake-up allocates nothing. */
  private readonly asyncReady: ReadyTokens;
  private readonly scratch: ReadyTokens;

  constructor(readonly maxEvents = 64) {
    this.fd = check('epoll_create1', raw.epoll_create1(EPOLL_CLOEXEC) as number);
    this.events = Buffer.alloc(EVENT_SIZE * maxEvents);
    this.asyncReady = new ReadyTokens(maxEvents);
    this.scratch = new ReadyTokens(maxEvents);
  }

  /** Watches fd for readability; `token` comes back from wait(). */
  add(fd: number, token: number, events = EPOLLIN): void {
    if (!Number.isSafeInteger(token) || token < 0) throw new RangeError(`epoll token ${token} is not a safe non-negative integer`);
    this.ctlEvent.writeUInt32LE(events, 0);
    this.ctlEvent.writeBigUInt64LE(BigInt(token), 4);
    check('epoll_ctl(ADD)', raw.epoll_ctl(this.fd, EPOLL_CTL_ADD, fd, this.ctlEvent) as number);
  }

  remove(fd: number): void {
    check('epoll_ctl(DEL)', raw.epoll_ctl(this.fd, EPOLL_CTL_DEL, fd, null) as number);
  }

  /** Blocks up to timeoutMs (-1: forever); returns the tokens of ready fds (an array: for callers off the data path). */
  wait(timeoutMs: number, out: number[] = []): number[] {
    const ready = this.scratch;
    out.length = 0;
    this.waitInto(timeoutMs, ready);
    for (let i = 0; i < ready.count; i++) out.push(ready.tokens[i]!);
    return out;
  }

  /** Blocks up to timeoutMs (-1: forever); the ready fds' tokens go into `into`. Returns their count. */
  waitInto(timeoutMs: number, into: ReadyTokens): number {
    const n = raw.epoll_wait(this.fd, this.events, Math.min(this.maxEvents, into.tokens.length), timeoutMs) as number;
    if (n === -1) {
      into.count = 0;
      if (errno() === Errno.EINTR) return 0;
      throw new SysError('epoll_wait', errno());
    }
    for (let i = 0; i < n; i++) into.tokens[i] = this.tokenAt(i);
    into.count = n;
    return n;
  }

  /** The token of ready event i, read as two words: a BigInt per event would be an allocation per wake-up. */
  private tokenAt(i: number): number {
    const at = i * EVENT_SIZE + 4;
    return this.events.readUInt32LE(at) + this.events.readUInt32LE(at + 4) * 0x1_0000_0000;
  }

  /**
   * Waits on the libuv thread pool; the calling thread's event loop keeps running. The
   * ReadyTokens are this Epoll's own, reused by the next waitAsync: read them in `done`.
   */
  waitAsync(timeoutMs: number, done: (error: Error | null, ready: ReadyTokens) => void): void {
    raw.epoll_wait.async(this.fd, this.events, this.maxEvents, timeoutMs, (err: unknown, n: number) => {
      const ready = this.asyncReady;
      ready.count = 0;
      if (err) return done(err as Error, ready);
      // n === -1: errno of a pool thread is not ours to read; EINTR is the only expected failure.
      for (let i = 0; i < n; i++) ready.tokens[i] = this.tokenAt(i);
      ready.count = Math.max(0, n);
      done(null, ready);
    });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    check('close', raw.close(this.fd) as number);
  }
}

/** Non-blocking checks for more ready fds after each wake-up before waiting on the pool again. */
const EAGER_ROUNDS = 4;

export interface PollerOptions {
  /**
   * Wait in this thread's own epoll_wait, up to this many ms at a time, between turns of
   * the event loop, instead of on the libuv thread pool: a wake-up then costs one thread
   * switch instead of two. For a thread that serves one VM's data path; its timers and
   * other I/O wait up to this long (50 ms once it has been idle for about 50 ms). One
   * Poller per thread may wait this way; another asking for it waits on the pool.
   */
  waitInThreadMs?: number;
}

/** The wait PollerOptions.waitInThreadMs users take: a timer or other I/O of the thread is late by at most this. */
export const IN_THREAD_WAIT_MS = 1;

/**
 * After this many in-thread turns without a ready fd (about 50 ms)... The block never
 * delays the Poller's own fds (epoll_wait returns as soon as one is ready), only the
 * thread's timers and its other I/O.
 */
const IDLE_TURNS = 50;
/** ...a turn blocks this long: timers and other I/O of an idle thread are late by at most this. */
const IDLE_WAIT_MS = 50;

/** Whether a Poller of this thread waits in it (module state is per thread). */
let threadWaitTaken = false;

/**
 * Calls a handler whenever one of its fds becomes readable, without blocking the event
 * loop. The handler must consume what made the fd readable (drain the eventfd).
 */
export class Poller {
  private readonly epoll = new Epoll();
  private readonly handlers = new Map<number, () => void>();
  private readonly fdOf = new Map<number, number>();
  private readonly wake = EventFd.create();
  private nextToken = 1;
  private running = false;
  private waiting = false;
  private stopped = false;
  private onIdle: (() => void) | null = null;
  private readonly ready = new ReadyTokens(64);
  /** Wake-ups through the thread pool or in the thread, and rounds that found fds ready without one. */
  readonly stats = { poolWakeups: 0, threadWakeups: 0, eagerRounds: 0 };
  /** ms per wait in this thread (see PollerOptions), or -1: wait on the pool. */
  private readonly inThreadMs: number;
  private immediate: NodeJS.Immediate | null = null;
  /** The last in-thread turn ran handlers: the next one only checks. */
  private busyTurn = false;
  /** In-thread turns in a row that found no fd ready. */
  private idleTurns = 0;

  constructor(private readonly onError: (error: unknown) => void = (e) => { throw e; }, options: PollerOptions = {}) {
    this.epoll.add(this.wake.fd, 0);
    const ms = options.waitInThreadMs;
    if (ms !== undefined && Number.isInteger(ms) && ms >= 0 && !threadWaitTaken) {
      threadWaitTaken = true;
      this.inThreadMs = ms;
    } else this.inThreadMs = -1;
  }

  /**
   * Work was queued for the next turn of the event loop (a setImmediate that publishes a
   * ring, say) by something other than this Poller's handlers: that turn must not block
   * in epoll_wait, or the work waits out the timeout. Nothing to do for a pool waiter.
   */
  keepAwake(): void {
    this.busyTurn = true;
    this.idleTurns = 0;
  }

  /** Whether this Poller waits in its thread rather than on the pool. */
  get waitsInThread(): boolean {
    return this.inThreadMs >= 0;
  }

  /** Returns a token for remove(). */
  add(fd: number, handler: () => void): number {
    const token = this.nextToken++;
    this.handlers.set(token, handler);
    this.fdOf.set(token, fd);
    this.epoll.add(fd, token);
    this.start();
    return token;
  }

  remove(token: number): void {
    const fd = this.fdOf.get(token);
    if (fd === undefined) return;
    this.handlers.delete(token);
    this.fdOf.delete(token);
    this.epoll.remove(fd);
  }

  private start(): void {
    if (this.running || this.stopped) return;
    this.running = true;
    // In the thread: from the next turn, so add() never dispatches (or blocks) inside its caller.
    if (this.inThreadMs >= 0) this.immediate = setImmediate(this.turnInThread);
    else this.loop();
  }

  /** One turn of waiting in the thread: up to inThreadMs in epoll_wait, the handlers, then the rest of the event loop. */
  private readonly turnInThread = (): void => {
    this.immediate = null;
    if (this.stopped) return;
    // After a turn that ran handlers, do not block: what they started (a promise that
    // queues an immediate to publish a ring, say) runs after this turn, and would
    // otherwise wait for the block to time out.
    // A thread idle for a while (no fd ready for IDLE_TURNS turns) blocks longer, so an
    // idle VM costs almost nothing; the first event brings the short wait back.
    const ms = this.busyTurn ? 0 : this.idleTurns >= IDLE_TURNS ? Math.max(this.inThreadMs, IDLE_WAIT_MS) : this.inThreadMs;
    try {
      this.epoll.waitInto(ms, this.ready);
    } catch (e) {
      this.onError(e);
      this.ready.count = 0;
    }
    this.busyTurn = this.ready.count > 0;
    this.idleTurns = this.busyTurn ? 0 : this.idleTurns + 1;
    if (this.ready.count > 0) {
      this.stats.threadWakeups++;
      this.dispatchEagerly(this.ready);
    }
    if (!this.stopped) this.immediate = setImmediate(this.turnInThread);
  };

  private loop(): void {
    if (this.stopped) return;
    this.waiting = true;
    this.epoll.waitAsync(-1, (error, tokens) => {
      this.waiting = false;
      this.stats.poolWakeups++;
      if (error) this.onError(error);
      this.dispatchEagerly(tokens);
      if (this.stopped) {
        this.finish();
        return;
      }
      this.loop();
    });
  }

  /**
   * Runs the handlers of `tokens`, then takes whatever became ready while they ran
   * without another wait (through the pool: three thread wake-ups); a few rounds at
   * most, so timers and the rest of the event loop still get their turn.
   */
  private dispatchEagerly(tokens: ReadyTokens): void {
    this.dispatch(tokens);
    for (let round = 0; round < EAGER_ROUNDS && !this.stopped; round++) {
      if (this.epoll.waitInto(0, this.ready) === 0) break;
      this.stats.eagerRounds++;
      this.dispatch(this.ready);
    }
  }

  private dispatch(ready: ReadyTokens): void {
    const count = ready.count;
    for (let i = 0; i < count; i++) {
      const token = ready.tokens[i]!;
      if (token === 0) {
        this.wake.drain();
        continue;
      }
      const handler = this.handlers.get(token);
      if (!handler) continue;
      try {
        handler();
      } catch (e) {
        this.onError(e);
      }
    }
  }

  private finish(): void {
    this.epoll.close();
    this.wake.close();
    this.onIdle?.();
  }

  /** Stops waiting; resolves once the pool thread has returned and the fds are closed. */
  stop(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    this.stopped = true;
    if (this.inThreadMs >= 0) {
      if (this.immediate !== null) clearImmediate(this.immediate);
      this.immediate = null;
      threadWaitTaken = false;
    }
    if (!this.waiting) {
      this.finish();
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      this.onIdle = resolve;
      this.wake.signal();
    });
  }
}
