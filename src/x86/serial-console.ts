// The host end of the guest's serial line: what the UART transmits goes to a file
// descriptor (the terminal, by default) and, on a terminal, what the user types goes to
// the UART, in raw mode so that Ctrl-C, arrows and tab reach the guest's shell.
//
// Output is written with write(2) on the fd (writeAllSync), not through process.stdout,
// so the transmit hook works the same in a vCPU worker thread as on the main thread. It is
// batched: one system call per line, per 256 bytes or per flush(), not per byte.
//
// The escape sequence is QEMU's: Ctrl-A then x stops the VM, Ctrl-A Ctrl-A sends one
// Ctrl-A; Ctrl-A followed by anything else sends both bytes.
import { writeAllSync } from '../sys/fd-write.js';

/** Where typed input goes: Uart16550.receive, which takes what fits and says how much. */
export interface SerialInputSink {
  receive(bytes: Uint8Array): number;
}

/** process.stdin, or a stand-in for tests. */
export interface SerialInputStream {
  readonly isTTY?: boolean;
  setRawMode?(mode: boolean): unknown;
  on(event: 'data', listener: (chunk: Buffer | string) => void): unknown;
  off(event: 'data', listener: (chunk: Buffer | string) => void): unknown;
  pause(): unknown;
  resume(): unknown;
}

export interface SerialConsoleOptions {
  /** Where output goes; stdout (1) by default. */
  outputFd?: number;
  /**
   * 'stdin' reads the input stream; 'none' reads nothing. By default input is read only
   * when the stream is a terminal (so a piped stdin is left to whoever else wants it).
   */
  input?: 'stdin' | 'none';
  /** The input stream; process.stdin by default. */
  inputStream?: SerialInputStream;
  /** Receives input; required when input is read. */
  sink?: SerialInputSink;
  /** Ctrl-A x on a terminal. */
  onStop?: () => void;
  /** How long a partial line may wait in the buffer when the event loop runs; 0 disables the timer. */
  flushDelayMs?: number;
}

export const ESCAPE_BYTE = 0x01; // Ctrl-A
const STOP_KEYS = new Set([0x78, 0x58]); // x, X
const NEWLINE = 0x0a;
const CARRIAGE_RETURN = 0x0d;
const OUTPUT_BATCH = 256;
/** A guest that never sends a newline still gets its text to line listeners, in pieces this big. */
export const MAX_LINE_BYTES = 4096;
/** While the guest's receive buffer is full, input waits and retries this often. */
const RETRY_MS = 5;
const DEFAULT_FLUSH_DELAY_MS = 20;

export class SerialConsole {
  private readonly fd: number;
  private readonly out = new Uint8Array(OUTPUT_BATCH);
  private outLength = 0;
  private flushTimer: NodeJS.Timeout | null = null;
  private readonly flushDelayMs: number;

  private readonly lineListeners: Array<(line: string) => void> = [];
  private line = new Uint8Array(256);
  private lineLength = 0;
  private readonly decoder = new TextDecoder('utf-8');

  private readonly stream: SerialInputStream | null = null;
  private readonly sink: SerialInputSink | null = null;
  private readonly onStop: (() => void) | null;
  private readonly escapes: boolean;
  private rawMode = false;
  private afterEscape = false;
  /** Input the UART had no room for yet, oldest first. */
  private readonly backlog: Uint8Array[] = [];
  private retryTimer: NodeJS.Timeout | null = null;
  private closed = false;
  private readonly onData = (chunk: Buffer | string): void => this.handleInput(typeof chunk === 'string' ? Buffer.from(chunk, 'latin1') : chunk);
  private readonly restoreAtExit = (): void => this.restoreTerminal();

  constructor(options: SerialConsoleOptions = {}) {
    this.fd = options.outputFd ?? 1;
    this.flushDelayMs = options.flushDelayMs ?? DEFAULT_FLUSH_DELAY_MS;
    this.onStop = options.onStop ?? null;
    const wanted = options.input;
    if (wanted === 'none') {
      this.escapes = false;
      return;
    }
    const stream = options.inputStream ?? process.stdin;
    const tty = stream.isTTY === true;
    if (wanted === undefined && !tty) {
      this.escapes = false;
      return;
    }
    if (options.sink === undefined) throw new TypeError('SerialConsole: reading input needs a sink (the UART)');
    this.stream = stream;
    this.sink = options.sink;
    // Escapes only from a person at a terminal: piped input is passed through untouched.
    this.escapes = tty;
    if (tty && stream.setRawMode !== undefined) {
      stream.setRawMode(true);
      this.rawMode = true;
      // Also when the process dies of an exception: the user's shell must not be left raw.
      process.once('exit', this.restoreAtExit);
    }
    stream.on('data', this.onData);
    stream.resume();
  }

  /** The UART's transmit hook: one byte from the guest. */
  transmit(byte: number): void {
    this.out[this.outLength++] = byte;
    if (this.lineListeners.length !== 0) this.tapLine(byte);
    if (byte === NEWLINE || this.outLength === OUTPUT_BATCH) this.flush();
    else if (this.flushDelayMs > 0 && this.flushTimer === null) {
      // Only helps where the event loop runs; a worker blocked in KVM_RUN must call flush()
      // itself (on HLT or when the vCPU goes idle) so a prompt without a newline shows up.
      this.flushTimer = setTimeout(() => {
        this.flushTimer = null;
        this.flush();
      }, this.flushDelayMs);
      this.flushTimer.unref();
    }
  }

  /** Writes out what the guest sent since the last flush. */
  flush(): void {
    if (this.flushTimer !== null) {
      clearTimeout(this.flushTimer);
      this.flushTimer = null;
    }
    if (this.outLength === 0) return;
    const length = this.outLength;
    this.outLength = 0;
    writeAllSync(this.fd, this.out.subarray(0, length));
  }

  /**
   * Calls `listener` with each complete output line (without its newline or a trailing
   * CR, decoded as UTF-8), for the host to spot markers the guest prints. Until a listener
   * is added, output is not scanned at all. Returns a function that removes the listener.
   */
  onLine(listener: (line: string) => void): () => void {
    this.lineListeners.push(listener);
    return () => {
      const i = this.lineListeners.indexOf(listener);
      if (i >= 0) this.lineListeners.splice(i, 1);
      if (this.lineListeners.length === 0) this.lineLength = 0;
    };
  }

  /** Flushes output, stops reading input and restores the terminal. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.backlog.length = 0;
    try {
      if (this.stream !== null) {
        this.stream.off('data', this.onData);
        this.stream.pause();
      }
      this.restoreTerminal();
    } finally {
      this.flush();
    }
  }

  private restoreTerminal(): void {
    if (!this.rawMode) return;
    this.rawMode = false;
    process.off('exit', this.restoreAtExit);
    this.stream?.setRawMode?.(false);
  }

  private tapLine(byte: number): void {
    if (byte === NEWLINE) {
      let end = this.lineLength;
      if (end > 0 && this.line[end - 1] === CARRIAGE_RETURN) end--;
      this.emitLine(end);
      return;
    }
    if (this.lineLength === this.line.length) {
      if (this.line.length < MAX_LINE_BYTES) {
        const bigger = new Uint8Array(Math.min(this.line.length * 2, MAX_LINE_BYTES));
        bigger.set(this.line);
        this.line = bigger;
      } else this.emitLine(this.lineLength);
    }
    this.line[this.lineLength++] = byte;
  }

  private emitLine(end: number): void {
    const text = this.decoder.decode(this.line.subarray(0, end));
    this.lineLength = 0;
    for (const listener of [...this.lineListeners]) listener(text);
  }

  private handleInput(chunk: Uint8Array): void {
    if (this.closed) return;
    const bytes = this.escapes ? this.unescape(chunk) : chunk;
    if (this.closed || bytes.length === 0) return;
    // Copied: the stream may reuse its buffer once this handler returns.
    this.backlog.push(Uint8Array.from(bytes));
    this.deliver();
  }

  /** Strips the escape sequences out of a chunk of typed input, acting on them. */
  private unescape(chunk: Uint8Array): Uint8Array {
    const kept: number[] = [];
    for (const byte of chunk) {
      if (!this.afterEscape) {
        if (byte === ESCAPE_BYTE) this.afterEscape = true;
        else kept.push(byte);
        continue;
      }
      this.afterEscape = false;
      if (STOP_KEYS.has(byte)) {
        this.stop();
        return Uint8Array.from(kept);
      }
      if (byte !== ESCAPE_BYTE) kept.push(ESCAPE_BYTE);
      kept.push(byte);
    }
    return Uint8Array.from(kept);
  }

  private stop(): void {
    // The user asked to leave: give the terminal back before the VM's teardown prints anything.
    this.restoreTerminal();
    this.onStop?.();
  }

  /** Moves backlog into the UART; when it is full, pauses the stream and retries on a timer. */
  private deliver(): void {
    while (this.backlog.length !== 0) {
      const head = this.backlog[0]!;
      const taken = this.sink!.receive(head);
      if (taken === head.length) {
        this.backlog.shift();
        continue;
      }
      if (taken > 0) this.backlog[0] = head.subarray(taken);
      this.stream!.pause();
      if (this.retryTimer === null) {
        this.retryTimer = setTimeout(() => {
          this.retryTimer = null;
          if (!this.closed) this.deliver();
        }, RETRY_MS);
      }
      return;
    }
    this.stream!.resume();
  }
}
