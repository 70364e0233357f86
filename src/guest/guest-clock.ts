// The reference guest's clocks: the Hyper-V reference counter (100 ns ticks since the
// partition started, what a real guest reads from HV_X64_MSR_TIME_REF_COUNT or the TSC
// page) and a settable wall clock. Setting the wall clock only moves this object's own
// offset — the reference guest never touches the real system clock.

export interface GuestClock {
  /** The partition reference counter, 100 ns units. Monotonic. */
  referenceCounter(): bigint;
  /** The guest's wall clock, Unix nanoseconds. */
  now(): bigint;
  /** Steps the guest's wall clock (what settimeofday does in a real guest). */
  setTime(unixNs: bigint): void;
}

export interface ManualGuestClockOptions {
  /** Reference counter at creation, 100 ns units (default 0). */
  readonly referenceCounter?: bigint;
  /** Wall clock at creation, Unix ns (default 0, i.e. 1970 — a guest that has not been told the time). */
  readonly now?: bigint;
}

/** A clock that moves only when told to: for tests and deterministic runs. */
export class ManualGuestClock implements GuestClock {
  #elapsedNs: bigint;
  #wallAtZeroNs: bigint;
  #steps = 0;

  constructor(options: ManualGuestClockOptions = {}) {
    this.#elapsedNs = (options.referenceCounter ?? 0n) * 100n;
    this.#wallAtZeroNs = (options.now ?? 0n) - this.#elapsedNs;
  }

  referenceCounter(): bigint {
    return this.#elapsedNs / 100n;
  }

  now(): bigint {
    return this.#wallAtZeroNs + this.#elapsedNs;
  }

  setTime(unixNs: bigint): void {
    this.#wallAtZeroNs = unixNs - this.#elapsedNs;
    this.#steps++;
  }

  /** Lets `ns` nanoseconds pass: both the reference counter and the wall clock move. */
  advance(ns: bigint): void {
    if (ns < 0n) throw new RangeError('time does not run backwards');
    this.#elapsedNs += ns;
  }

  /** How many times setTime() was called. */
  get steps(): number {
    return this.#steps;
  }
}

export interface OffsetGuestClockOptions {
  /** The partition reference counter (default: process.hrtime since this clock was made, in 100 ns units). */
  readonly referenceCounter?: () => bigint;
  /** The real clock the guest's wall clock is an offset from, Unix ns (default Date.now()). */
  readonly realTime?: () => bigint;
}

/** A live clock: real time plus an offset that setTime() adjusts. */
export class OffsetGuestClock implements GuestClock {
  readonly #referenceCounter: () => bigint;
  readonly #realTime: () => bigint;
  #offsetNs = 0n;

  constructor(options: OffsetGuestClockOptions = {}) {
    const start = process.hrtime.bigint();
    this.#referenceCounter = options.referenceCounter ?? (() => (process.hrtime.bigint() - start) / 100n);
    this.#realTime = options.realTime ?? (() => BigInt(Date.now()) * 1_000_000n);
  }

  referenceCounter(): bigint {
    return this.#referenceCounter();
  }

  now(): bigint {
    return this.#realTime() + this.#offsetNs;
  }

  setTime(unixNs: bigint): void {
    this.#offsetNs = unixNs - this.#realTime();
  }

  /** How far the guest's wall clock is from the real one. */
  get offsetNs(): bigint {
    return this.#offsetNs;
  }
}
