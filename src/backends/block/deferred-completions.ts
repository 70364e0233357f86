// Completions delivered on a later microtask, in order, without allocating per request:
// parallel arrays reused from one batch to the next. Backends use it to answer a request
// that needs no I/O (errors, memory copies, injected faults) never from inside the call.

export class DeferredCompletions<Subject, Sink> {
  private readonly subjects: Array<Subject | null> = [];
  private readonly sinks: Array<Sink | null> = [];
  private readonly results: number[] = [];
  private count = 0;
  private scheduled = false;
  private readonly runBound = (): void => this.run();

  /** deliver: how one completion reaches its sink (one function per queue, not per request). */
  constructor(private readonly deliver: (sink: Sink, subject: Subject, result: number) => void) {}

  get pending(): number {
    return this.count;
  }

  push(subject: Subject, sink: Sink, result: number): void {
    const i = this.count++;
    this.subjects[i] = subject;
    this.sinks[i] = sink;
    this.results[i] = result;
    if (!this.scheduled) {
      this.scheduled = true;
      queueMicrotask(this.runBound);
    }
  }

  private run(): void {
    // Deliver only this batch: completions pushed by the callbacks wait for the next turn
    // of the event loop (setImmediate), or a caller that reissues on every completion
    // would keep the microtask queue busy forever and starve timers and other I/O.
    const end = this.count;
    for (let i = 0; i < end; i++) {
      const subject = this.subjects[i]!;
      const sink = this.sinks[i]!;
      this.subjects[i] = null;
      this.sinks[i] = null;
      this.deliver(sink, subject, this.results[i]!);
    }
    const rest = this.count - end;
    for (let i = 0; i < rest; i++) {
      this.subjects[i] = this.subjects[end + i]!;
      this.sinks[i] = this.sinks[end + i]!;
      this.results[i] = this.results[end + i]!;
      this.subjects[end + i] = null;
      this.sinks[end + i] = null;
    }
    this.count = rest;
    if (rest > 0) setImmediate(this.runBound);
    else this.scheduled = false;
  }
}
