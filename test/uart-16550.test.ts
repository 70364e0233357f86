// The COM1 console: the 16550A register model as Linux's 8250 driver probes and drives
// it (autoconfig, startup's THRE tests, interrupt-driven transmit and receive over an
// edge-triggered line), interrupt priorities and acknowledgement, several threads sharing
// one UART, the host console (batched output, line tap, raw-mode input with the Ctrl-A
// escapes and backpressure, terminal restored even when the process dies of an
// exception) and writeAllSync.
//
// This file is also the workers' script: the main thread runs the tests, a worker runs
// the role named in its workerData.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { writeAllSync } from '../src/sys/fd-write.js';
import { SerialConsole, MAX_LINE_BYTES, type SerialInputStream } from '../src/x86/serial-console.js';
import {
  FCR_CLEAR_RX,
  FCR_ENABLE_FIFO,
  IER_LINE_STATUS,
  IER_MODEM_STATUS,
  IER_RX_DATA,
  IER_THR_EMPTY,
  IIR_LINE_STATUS,
  IIR_MODEM_STATUS,
  IIR_NO_INTERRUPT,
  IIR_RX_DATA,
  IIR_RX_TIMEOUT,
  IIR_THR_EMPTY,
  LCR_DLAB,
  LSR_DATA_READY,
  LSR_OVERRUN,
  LSR_THR_EMPTY,
  LSR_TRANSMITTER_EMPTY,
  MCR_DTR,
  MCR_LOOPBACK,
  MCR_OUT1,
  MCR_OUT2,
  MCR_RTS,
  MSR_DELTA_CTS,
  MSR_DELTA_DCD,
  MSR_DELTA_DSR,
  MSR_TRAILING_EDGE_RI,
  UART_RX_BUFFER_SIZE,
  Uart16550,
  UartRegister as R,
} from '../src/x86/uart-16550.js';

// ---------------------------------------------------------------------------------------
// Worker roles (run when this file is loaded as a worker).

interface WorkerSetup {
  role: 'writer' | 'loop-writer' | 'reader' | 'fd-writer';
  state: SharedArrayBuffer;
  /** [0]: the line level the last setIrq call (any thread) left; [1]: setIrq calls. */
  line: SharedArrayBuffer;
  id: number;
  count: number;
  fd: number;
}

/** Byte i of writer `id`'s stream: distinct per writer, so a byte can be traced to its sender. */
function writerByte(id: number, i: number): number {
  return ((i * 7 + id * 101) & 0x7f) | (id << 7);
}

function lineHooks(line: SharedArrayBuffer, transmit: (byte: number) => void) {
  const cells = new Int32Array(line);
  return {
    transmit,
    setIrq(level: boolean) {
      Atomics.store(cells, 0, level ? 1 : 0);
      Atomics.add(cells, 1, 1);
    },
  };
}

function runWorker(setup: WorkerSetup): unknown {
  if (setup.role === 'fd-writer') {
    const chunk = new TextEncoder().encode(`worker ${setup.id} line\n`);
    for (let i = 0; i < setup.count; i++) writeAllSync(setup.fd, chunk);
    return null;
  }
  const sent: number[] = [];
  const uart = new Uart16550(setup.state, lineHooks(setup.line, (b) => sent.push(b)));
  if (setup.role === 'loop-writer') {
    // Loopback: every THR write lands in the shared receive buffer, so both writers and
    // the reader modify the same ring indices; only the lock keeps them consistent.
    const deadline = Date.now() + 20_000;
    for (let i = 0; i < setup.count; i++) {
      // A guest would wait for the line; this one waits for the reader.
      while (uart.pendingInput > UART_RX_BUFFER_SIZE - 16) if (Date.now() > deadline) throw new Error(`writer stalled at byte ${i}: the buffer never drained`);
      uart.write(R.Data, writerByte(setup.id, i));
    }
    return null;
  }
  if (setup.role === 'writer') {
    for (let i = 0; i < setup.count; i++) {
      uart.write(R.Data, writerByte(setup.id, i));
      // Register traffic around the data: IER toggles move THRE and the IRQ line; the
      // reads must stay consistent while the other threads do the same.
      if (i % 3 === 0) uart.write(R.InterruptEnable, (i & 4) !== 0 ? IER_RX_DATA | IER_THR_EMPTY : IER_RX_DATA);
      const lsr = uart.read(R.LineStatus);
      if ((lsr & (LSR_THR_EMPTY | LSR_TRANSMITTER_EMPTY)) !== (LSR_THR_EMPTY | LSR_TRANSMITTER_EMPTY)) throw new Error(`LSR ${lsr} lost THRE/TEMT`);
      const iir = uart.read(R.InterruptIdFifoControl);
      if ((iir & 0x30) !== 0 || (iir & 0xc0) !== 0xc0) throw new Error(`IIR ${iir} is corrupt`);
    }
    return Uint8Array.from(sent);
  }
  // reader: drains RBR as the guest's 8250 rx_chars does, until it has `count` bytes.
  const got = new Uint8Array(setup.count);
  let n = 0;
  const deadline = Date.now() + 20_000;
  while (n < setup.count) {
    if ((uart.read(R.LineStatus) & LSR_DATA_READY) !== 0) got[n++] = uart.read(R.Data);
    else if (Date.now() > deadline) throw new Error(`reader timed out after ${n} bytes`);
  }
  return got;
}

if (!isMainThread) {
  try {
    parentPort!.postMessage({ result: runWorker(workerData as WorkerSetup) });
  } catch (e) {
    parentPort!.postMessage({ error: String((e as Error)?.stack ?? e) });
  }
} else {
  await mainThreadTests();
}

// ---------------------------------------------------------------------------------------
// Helpers for the main thread.

interface Recorder {
  uart: Uart16550;
  sent: number[];
  irq: boolean[];
  /** The line as an edge-triggered IOAPIC input sees it. */
  level: boolean;
  edges: number;
}

function makeUart(state = Uart16550.createState()): Recorder {
  const r: Recorder = { uart: null as unknown as Uart16550, sent: [], irq: [], level: false, edges: 0 };
  r.uart = new Uart16550(state, {
    transmit: (b) => r.sent.push(b),
    setIrq: (level) => {
      r.irq.push(level);
      if (level && !r.level) r.edges++;
      r.level = level;
    },
  });
  return r;
}

function runWorkerRole(setup: WorkerSetup): Promise<unknown> {
  const worker = new Worker(new URL(import.meta.url), { workerData: setup });
  return new Promise((resolve, reject) => {
    worker.once('message', (m: { result?: unknown; error?: string }) => (m.error !== undefined ? reject(new Error(`${setup.role} ${setup.id}: ${m.error}`)) : resolve(m.result)));
    worker.once('error', reject);
  });
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * Linux's probe of a legacy 8250 port, in the order 8250_port.c does it: autoconfig()
 * (IER test, loopback test, FIFO/IIR classification, autoconfig_16550a's variant probes),
 * then serial8250_do_startup()'s THRE re-assertion test and TX-enable test.
 */
function linuxProbe(u: Uart16550): { type: string; bugThre: boolean; bugTxen: boolean } {
  // autoconfig(): IER must keep its low nibble and nothing more.
  const scratch = u.read(R.InterruptEnable);
  u.write(R.InterruptEnable, 0);
  const scratch2 = u.read(R.InterruptEnable) & 0x0f;
  u.write(R.InterruptEnable, 0x0f);
  const scratch3 = u.read(R.InterruptEnable) & 0x0f;
  u.write(R.InterruptEnable, scratch);
  if (scratch2 !== 0 || scratch3 !== 0x0f) return { type: 'none (IER test)', bugThre: false, bugTxen: false };
  const saveMcr = u.read(R.ModemControl);
  const saveLcr = u.read(R.LineControl);
  // Loopback: MCR = LOOP | OUT2 | RTS must read back as DCD | CTS.
  u.write(R.ModemControl, MCR_LOOPBACK | 0x0a);
  const status1 = u.read(R.ModemStatus) & 0xf0;
  u.write(R.ModemControl, saveMcr);
  if (status1 !== 0x90) return { type: `none (loopback MSR ${status1.toString(16)})`, bugThre: false, bugTxen: false };
  // EFR off (LCR 0xBF is "configuration mode B"), then FIFOs on and IIR bits 6-7 classify.
  u.write(R.LineControl, 0xbf);
  u.write(2, 0);
  u.write(R.LineControl, 0);
  u.write(R.InterruptIdFifoControl, FCR_ENABLE_FIFO);
  const iir = u.read(R.InterruptIdFifoControl);
  let type: string;
  switch (iir >> 6) {
    case 0:
      type = '8250/16450';
      break;
    case 1:
      type = 'unknown';
      break;
    case 2:
      type = '16550';
      break;
    default:
      type = autoconfig16550a(u);
  }
  u.write(R.LineControl, saveLcr);
  // Reset the port: MCR back, FIFOs cleared, RX read, interrupts off.
  u.write(R.ModemControl, saveMcr);
  clearFifos(u);
  u.read(R.Data);
  u.write(R.InterruptEnable, 0);

  // serial8250_do_startup()
  clearFifos(u);
  u.read(R.LineStatus);
  u.read(R.Data);
  u.read(R.InterruptIdFifoControl);
  u.read(R.ModemStatus);
  if (u.read(R.LineStatus) === 0xff) return { type: 'none (LSR 0xff)', bugThre: false, bugTxen: false };
  u.write(R.LineControl, 0x03); // 8N1
  // THRE must be re-asserted each time ETBEI is enabled while the transmitter is idle.
  u.write(R.InterruptEnable, IER_THR_EMPTY);
  const iir1 = u.read(R.InterruptIdFifoControl);
  u.write(R.InterruptEnable, 0);
  u.write(R.InterruptEnable, IER_THR_EMPTY);
  const iir2 = u.read(R.InterruptIdFifoControl);
  u.write(R.InterruptEnable, 0);
  const bugThre = (iir1 & IIR_NO_INTERRUPT) === 0 && (iir2 & IIR_NO_INTERRUPT) !== 0;
  // mctrl: DTR | RTS from the tty, OUT2 because the port has an IRQ.
  u.write(R.ModemControl, MCR_DTR | MCR_RTS | MCR_OUT2);
  // "Do a quick test to see if we receive an interrupt when we enable the TX irq."
  u.write(R.InterruptEnable, IER_THR_EMPTY);
  const lsr = u.read(R.LineStatus);
  const iir3 = u.read(R.InterruptIdFifoControl);
  u.write(R.InterruptEnable, 0);
  const bugTxen = (lsr & LSR_TRANSMITTER_EMPTY) !== 0 && (iir3 & IIR_NO_INTERRUPT) !== 0;
  u.read(R.LineStatus);
  u.read(R.Data);
  u.read(R.InterruptIdFifoControl);
  u.read(R.ModemStatus);
  u.write(R.InterruptEnable, IER_LINE_STATUS | IER_RX_DATA);
  return { type, bugThre, bugTxen };
}

/** autoconfig_16550a(): rule out the chips that share the 16550A's IIR signature. */
function autoconfig16550a(u: Uart16550): string {
  // ST16C650V1: EFR visible with LCR = 0x80.
  u.write(R.LineControl, 0x80);
  if (u.read(2) === 0) {
    u.write(2, 0xa8);
    if (u.read(2) !== 0) return 'ST16C650V1';
  }
  // Other EFR chips: EFR visible with LCR = 0xBF.
  u.write(R.LineControl, 0xbf);
  if (u.read(2) === 0) return 'EFR UART (16650/16750/16850)';
  // National SuperIO: the LOOP bit mirrored in EXCR1 (bank 2, LCR 0xE0).
  u.write(R.LineControl, 0);
  const mcr = u.read(R.ModemControl);
  u.write(R.LineControl, 0xe0);
  let excr1 = u.read(2);
  if (((excr1 ^ mcr) & MCR_LOOPBACK) === 0) {
    u.write(R.LineControl, 0);
    u.write(R.ModemControl, mcr ^ MCR_LOOPBACK);
    u.write(R.LineControl, 0xe0);
    excr1 = u.read(2);
    u.write(R.LineControl, 0);
    u.write(R.ModemControl, mcr);
    if (((excr1 ^ mcr) & MCR_LOOPBACK) !== 0) return 'NS16550A';
  }
  // TI16750: IIR bit 5 (64-byte FIFO) with DLAB set only.
  u.write(R.LineControl, 0);
  u.write(R.InterruptIdFifoControl, FCR_ENABLE_FIFO | 0x20);
  const s1 = u.read(R.InterruptIdFifoControl) & 0xe0;
  u.write(R.InterruptIdFifoControl, FCR_ENABLE_FIFO);
  u.write(R.LineControl, 0x80);
  u.write(R.InterruptIdFifoControl, FCR_ENABLE_FIFO | 0x20);
  const s2 = u.read(R.InterruptIdFifoControl) & 0xe0;
  u.write(R.InterruptIdFifoControl, FCR_ENABLE_FIFO);
  u.write(R.LineControl, 0);
  if (s1 === 0xc0 && s2 === 0xe0) return 'TI16750';
  // XScale: IER bit 6 (UUE) sticks.
  const ier = u.read(R.InterruptEnable);
  u.write(R.InterruptEnable, ier & ~0x40);
  if ((u.read(R.InterruptEnable) & 0x40) === 0) {
    u.write(R.InterruptEnable, ier | 0x40);
    if ((u.read(R.InterruptEnable) & 0x40) !== 0) return 'XScale';
  }
  u.write(R.InterruptEnable, ier);
  return '16550A';
}

/** serial8250_clear_fifos() */
function clearFifos(u: Uart16550): void {
  u.write(R.InterruptIdFifoControl, FCR_ENABLE_FIFO);
  u.write(R.InterruptIdFifoControl, FCR_ENABLE_FIFO | FCR_CLEAR_RX | 0x04);
  u.write(R.InterruptIdFifoControl, 0);
}

/**
 * serial8250_interrupt(): what the guest runs for each edge on IRQ 4. It calls the port's
 * handler until IIR reports nothing pending, so the line is low when it returns and the
 * next source makes a fresh edge (ISA interrupts are edge-triggered). Returns the passes.
 */
function linuxInterrupt(u: Uart16550, txQueue: number[], received: number[]): number {
  const PASS_LIMIT = 512; // beyond it Linux logs "too much work for irq"
  let passes = 0;
  while (passes < PASS_LIMIT && linuxHandleIrq(u, txQueue, received)) passes++;
  assert.ok(passes < PASS_LIMIT, 'too much work for irq');
  return passes;
}

/**
 * serial8250_handle_irq(): IIR, then LSR; receive while DR (at most 256), transmit up to
 * 16 bytes when THRE and ETBEI, and drop ETBEI once the transmit queue is empty (__stop_tx).
 */
function linuxHandleIrq(u: Uart16550, txQueue: number[], received: number[]): boolean {
  const iir = u.read(R.InterruptIdFifoControl);
  if ((iir & IIR_NO_INTERRUPT) !== 0) return false;
  let lsr = u.read(R.LineStatus);
  for (let n = 0; (lsr & LSR_DATA_READY) !== 0 && n < 256; n++) {
    received.push(u.read(R.Data));
    lsr = u.read(R.LineStatus);
  }
  u.read(R.ModemStatus);
  const ier = u.read(R.InterruptEnable);
  if ((lsr & LSR_THR_EMPTY) !== 0 && (ier & IER_THR_EMPTY) !== 0) {
    for (let count = 16; count > 0 && txQueue.length > 0; count--) u.write(R.Data, txQueue.shift()!);
    if (txQueue.length === 0) u.write(R.InterruptEnable, ier & ~IER_THR_EMPTY);
  }
  return true;
}

/** A stand-in for process.stdin on a terminal. */
class FakeTty extends PassThrough implements SerialInputStream {
  readonly isTTY: boolean;
  readonly rawModes: boolean[] = [];
  constructor(tty = true) {
    super();
    this.isTTY = tty;
  }
  setRawMode(mode: boolean): this {
    this.rawModes.push(mode);
    return this;
  }
}

function tempFile(): { fd: number; file: string; read(): Buffer; dispose(): void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uart-test-'));
  const file = path.join(dir, 'out');
  const fd = fs.openSync(file, 'w+');
  return {
    fd,
    file,
    read: () => fs.readFileSync(file),
    dispose: () => {
      fs.closeSync(fd);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function until(condition: () => boolean, what: string, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

// ---------------------------------------------------------------------------------------

async function mainThreadTests(): Promise<void> {
  const { describe, test } = await import('node:test');
  const fc = (await import('fast-check')).default;

  describe('Uart16550 registers', () => {
    test('reset state: THR empty, no interrupt, no FIFOs, line connected, 9600 baud divisor', () => {
      const { uart, irq } = makeUart();
      assert.equal(uart.read(R.LineStatus), LSR_THR_EMPTY | LSR_TRANSMITTER_EMPTY);
      assert.equal(uart.read(R.InterruptIdFifoControl), IIR_NO_INTERRUPT);
      assert.equal(uart.read(R.ModemStatus), 0xb0);
      assert.equal(uart.read(R.InterruptEnable), 0);
      assert.equal(uart.read(R.LineControl), 0);
      assert.equal(uart.read(R.ModemControl), 0);
      uart.write(R.LineControl, LCR_DLAB);
      assert.equal(uart.read(R.Data), 12);
      assert.equal(uart.read(R.InterruptEnable), 0);
      assert.deepEqual(irq, [], 'nothing reported while nothing is pending');
    });

    test('scratch register, and DLAB switches offsets 0 and 1 to the divisor latch', () => {
      const { uart, sent } = makeUart();
      uart.write(R.Scratch, 0xa5);
      assert.equal(uart.read(R.Scratch), 0xa5);
      uart.write(R.Scratch, 0x15a); // only the low byte of a port write counts
      assert.equal(uart.read(R.Scratch), 0x5a);
      uart.write(R.InterruptEnable, 0x05);
      uart.write(R.LineControl, LCR_DLAB | 0x03);
      uart.write(R.Data, 0x01); // DLL, not THR
      uart.write(R.InterruptEnable, 0x00); // DLM, not IER
      assert.deepEqual(sent, [], 'a DLL write transmits nothing');
      assert.equal(uart.read(R.Data), 0x01);
      assert.equal(uart.read(R.InterruptEnable), 0x00);
      uart.write(R.LineControl, 0x03);
      assert.equal(uart.read(R.InterruptEnable), 0x05, 'IER kept while DLAB hid it');
      assert.equal(uart.read(R.LineControl), 0x03);
      uart.write(R.Data, 0x41);
      assert.deepEqual(sent, [0x41]);
    });

    test("Linux's autoconfig finds a 16550A, and startup sets no THRE/TXEN bug workarounds", () => {
      const r = makeUart();
      const result = linuxProbe(r.uart);
      assert.deepEqual(result, { type: '16550A', bugThre: false, bugTxen: false });
      // Until OUT2 was set, THRE was pending many times but the PC gate kept the line low.
      assert.ok(r.irq.includes(true), 'the TXEN test raised the line once OUT2 was on');
      assert.equal(r.level, false, 'and it ended low with ETBEI off');
      assert.equal(r.uart.read(R.ModemControl), MCR_DTR | MCR_RTS | MCR_OUT2);
    });

    test('loopback: MSR mirrors MCR (RTS>CTS, DTR>DSR, OUT1>RI, OUT2>DCD) with deltas, THR loops to RBR', () => {
      const { uart, sent } = makeUart();
      uart.read(R.ModemStatus);
      uart.write(R.ModemControl, MCR_LOOPBACK);
      assert.equal(uart.read(R.ModemStatus), MSR_DELTA_CTS | MSR_DELTA_DSR | MSR_DELTA_DCD, 'all three inputs dropped');
      uart.write(R.ModemControl, MCR_LOOPBACK | MCR_RTS);
      assert.equal(uart.read(R.ModemStatus), 0x10 | MSR_DELTA_CTS);
      uart.write(R.ModemControl, MCR_LOOPBACK | MCR_DTR);
      assert.equal(uart.read(R.ModemStatus), 0x20 | MSR_DELTA_CTS | MSR_DELTA_DSR);
      uart.write(R.ModemControl, MCR_LOOPBACK | MCR_OUT1);
      assert.equal(uart.read(R.ModemStatus), 0x40 | MSR_DELTA_DSR);
      uart.write(R.ModemControl, MCR_LOOPBACK | MCR_OUT2);
      assert.equal(uart.read(R.ModemStatus), 0x80 | MSR_TRAILING_EDGE_RI | MSR_DELTA_DCD, 'RI reports its trailing edge');
      assert.equal(uart.read(R.ModemStatus), 0x80, 'reading MSR cleared the deltas');
      uart.write(R.Data, 0x5a);
      assert.deepEqual(sent, [], 'nothing leaves the chip in loopback');
      assert.equal(uart.read(R.LineStatus) & LSR_DATA_READY, LSR_DATA_READY);
      assert.equal(uart.read(R.Data), 0x5a);
      assert.equal(uart.receive(Uint8Array.of(1, 2, 3)), 0, 'the serial input is disconnected in loopback');
      uart.write(R.ModemControl, 0);
      assert.equal(uart.receive(Uint8Array.of(1, 2, 3)), 3);
    });

    test('LSR: DR while data, THRE|TEMT always, overrun sticky until LSR is read', () => {
      const { uart } = makeUart();
      uart.write(R.ModemControl, MCR_LOOPBACK);
      for (let i = 0; i < UART_RX_BUFFER_SIZE; i++) uart.write(R.Data, i & 0xff);
      assert.equal(uart.overruns, 0);
      uart.write(R.Data, 0xee);
      assert.equal(uart.overruns, 1);
      assert.equal(uart.read(R.LineStatus), LSR_DATA_READY | LSR_OVERRUN | LSR_THR_EMPTY | LSR_TRANSMITTER_EMPTY);
      assert.equal(uart.read(R.LineStatus), LSR_DATA_READY | LSR_THR_EMPTY | LSR_TRANSMITTER_EMPTY, 'reading LSR cleared OE');
      for (let i = 0; i < UART_RX_BUFFER_SIZE; i++) assert.equal(uart.read(R.Data), i & 0xff);
      assert.equal(uart.read(R.LineStatus), LSR_THR_EMPTY | LSR_TRANSMITTER_EMPTY);
      assert.equal(uart.read(R.Data), (UART_RX_BUFFER_SIZE - 1) & 0xff, 'an empty RBR reads the last byte again');
    });

    test('receive: takes what fits in the 4 KiB buffer, in order; FCR clears it', () => {
      const { uart } = makeUart();
      const data = Uint8Array.from({ length: UART_RX_BUFFER_SIZE + 100 }, (_, i) => (i * 13) & 0xff);
      assert.equal(uart.receive(data), UART_RX_BUFFER_SIZE);
      assert.equal(uart.receive(data), 0, 'full');
      assert.equal(uart.pendingInput, UART_RX_BUFFER_SIZE);
      for (let i = 0; i < 10; i++) assert.equal(uart.read(R.Data), data[i]);
      assert.equal(uart.receive(data.subarray(UART_RX_BUFFER_SIZE)), 10, 'room for exactly the ten bytes read');
      for (let i = 10; i < UART_RX_BUFFER_SIZE + 10; i++) assert.equal(uart.read(R.Data), data[i], `byte ${i}`);
      assert.equal(uart.pendingInput, 0);
      uart.receive(data.subarray(0, 50));
      uart.write(R.InterruptIdFifoControl, FCR_ENABLE_FIFO); // enabling FIFOs clears them
      assert.equal(uart.pendingInput, 0);
      uart.receive(data.subarray(0, 50));
      uart.write(R.InterruptIdFifoControl, FCR_ENABLE_FIFO | 0x80); // no clear bit: kept
      assert.equal(uart.pendingInput, 50);
      uart.write(R.InterruptIdFifoControl, FCR_ENABLE_FIFO | FCR_CLEAR_RX);
      assert.equal(uart.pendingInput, 0);
    });

    test('hostile offsets and values never throw and touch nothing', () => {
      const { uart, sent } = makeUart();
      for (const offset of [-1, 8, 0x3f8, 1.5, Number.NaN, Infinity]) {
        assert.equal(uart.read(offset), 0xff);
        uart.write(offset, 0x41);
      }
      assert.deepEqual(sent, []);
      uart.write(R.InterruptEnable, 0xff);
      assert.equal(uart.read(R.InterruptEnable), 0x0f, 'only the four IER bits a 16550A has');
      uart.write(R.ModemControl, 0xff);
      assert.equal(uart.read(R.ModemControl), 0x1f);
      assert.throws(() => new Uart16550(new SharedArrayBuffer(16), { transmit() {}, setIrq() {} }), TypeError);
      assert.throws(() => new Uart16550(new SharedArrayBuffer(Uart16550.createState().byteLength), { transmit() {}, setIrq() {} }), /not a Uart16550 state/);
    });
  });

  describe('Uart16550 interrupts', () => {
    test('THRE: pending when ETBEI is enabled with THR empty, acknowledged by an IIR read, re-armed by a THR write or an IER re-enable', () => {
      const { uart } = makeUart();
      uart.write(R.InterruptEnable, IER_THR_EMPTY);
      assert.equal(uart.read(R.InterruptIdFifoControl), IIR_THR_EMPTY);
      assert.equal(uart.read(R.InterruptIdFifoControl), IIR_NO_INTERRUPT, 'the IIR read acknowledged it');
      uart.write(R.InterruptEnable, IER_THR_EMPTY);
      assert.equal(uart.read(R.InterruptIdFifoControl), IIR_NO_INTERRUPT, 'rewriting the same IER is no rising edge');
      uart.write(R.Data, 0x41);
      assert.equal(uart.read(R.InterruptIdFifoControl), IIR_THR_EMPTY, 'the instant transmitter emptied THR again');
      uart.write(R.InterruptEnable, 0);
      uart.write(R.InterruptEnable, IER_THR_EMPTY);
      assert.equal(uart.read(R.InterruptIdFifoControl), IIR_THR_EMPTY, 'enabling ETBEI re-arms it');
      uart.write(R.InterruptEnable, IER_THR_EMPTY | IER_RX_DATA);
      assert.equal(uart.read(R.InterruptIdFifoControl), IIR_NO_INTERRUPT, 'adding ERBFI leaves the acknowledged THRE alone');
    });

    test('priorities: line status > received data > THRE > modem status, each cleared its own way', () => {
      const { uart } = makeUart();
      uart.write(R.ModemControl, MCR_LOOPBACK);
      for (let i = 0; i <= UART_RX_BUFFER_SIZE; i++) uart.write(R.Data, 0x30); // one past full: overrun
      uart.write(R.ModemControl, MCR_LOOPBACK | MCR_RTS); // a CTS delta
      uart.write(R.InterruptEnable, IER_RX_DATA | IER_THR_EMPTY | IER_LINE_STATUS | IER_MODEM_STATUS);
      assert.equal(uart.read(R.InterruptIdFifoControl), IIR_LINE_STATUS);
      assert.equal(uart.read(R.InterruptIdFifoControl), IIR_LINE_STATUS, 'IIR reads do not clear line status');
      uart.read(R.LineStatus);
      assert.equal(uart.read(R.InterruptIdFifoControl), IIR_RX_DATA);
      while (uart.read(R.LineStatus) & LSR_DATA_READY) uart.read(R.Data);
      assert.equal(uart.read(R.InterruptIdFifoControl), IIR_THR_EMPTY, 'THRE, kept pending while hidden by higher sources');
      assert.equal(uart.read(R.InterruptIdFifoControl), IIR_MODEM_STATUS);
      uart.read(R.ModemStatus);
      assert.equal(uart.read(R.InterruptIdFifoControl), IIR_NO_INTERRUPT);
    });

    test('with FIFOs on, IIR bits 6-7 read 11, and data below the trigger level reports a character timeout', () => {
      const { uart } = makeUart();
      uart.write(R.InterruptIdFifoControl, FCR_ENABLE_FIFO | 0x80); // trigger at 8 bytes
      uart.write(R.InterruptEnable, IER_RX_DATA);
      assert.equal(uart.read(R.InterruptIdFifoControl), 0xc0 | IIR_NO_INTERRUPT);
      uart.receive(new Uint8Array(7));
      assert.equal(uart.read(R.InterruptIdFifoControl), 0xc0 | IIR_RX_TIMEOUT);
      uart.receive(new Uint8Array(1));
      assert.equal(uart.read(R.InterruptIdFifoControl), 0xc0 | IIR_RX_DATA);
      uart.write(R.InterruptIdFifoControl, 0);
      assert.equal(uart.read(R.InterruptIdFifoControl), IIR_NO_INTERRUPT, 'disabling FIFOs cleared them');
    });

    test('the IRQ output: any enabled pending source, gated by OUT2 and by loopback; reported only on change', () => {
      const r = makeUart();
      const { uart } = r;
      uart.write(R.InterruptEnable, IER_RX_DATA);
      uart.receive(Uint8Array.of(1));
      assert.deepEqual(r.irq, [], 'OUT2 off: the PC gate holds the line low');
      uart.write(R.ModemControl, MCR_OUT2);
      assert.deepEqual(r.irq, [true]);
      uart.receive(Uint8Array.of(2));
      uart.read(R.InterruptIdFifoControl);
      assert.deepEqual(r.irq, [true], 'no report while the level stays');
      uart.read(R.Data);
      assert.deepEqual(r.irq, [true]);
      uart.read(R.Data);
      assert.deepEqual(r.irq, [true, false], 'the last byte read drops it');
      uart.receive(Uint8Array.of(3));
      uart.write(R.ModemControl, MCR_OUT2 | MCR_LOOPBACK);
      assert.deepEqual(r.irq, [true, false, true, false], 'loopback disconnects OUT2 from the pin');
      uart.write(R.ModemControl, MCR_OUT2);
      uart.write(R.InterruptEnable, 0);
      assert.deepEqual(r.irq, [true, false, true, false, true, false], 'IER masks it');
    });

    test('interrupt-driven transmit and receive as Linux does them, over an edge-triggered line, lose nothing', () => {
      const r = makeUart();
      const { uart } = r;
      linuxProbe(uart);
      uart.write(R.InterruptIdFifoControl, FCR_ENABLE_FIFO | 0x80);
      const message = Array.from({ length: 3000 }, (_, i) => 0x20 + (i % 90));
      const input = Uint8Array.from({ length: 5000 }, (_, i) => i & 0xff);
      const txQueue = [...message];
      const received: number[] = [];
      let fed = 0;
      // start_tx: enable ETBEI; every later byte goes out from the interrupt handler.
      uart.write(R.InterruptEnable, uart.read(R.InterruptEnable) | IER_THR_EMPTY);
      let rounds = 0;
      let serviced = 0;
      let interrupts = 0;
      while ((txQueue.length > 0 || received.length < input.length) && rounds < 100_000) {
        if (fed < input.length) fed += uart.receive(input.subarray(fed, Math.min(input.length, fed + 700)));
        // The IOAPIC latched an edge: the guest runs the handler once per edge. Without a
        // new edge it runs nothing, so a line left high would stall everything here.
        if (r.edges > serviced) {
          serviced = r.edges;
          interrupts++;
          linuxInterrupt(uart, txQueue, received);
          assert.equal(r.level, false, 'the handler returns with the line low');
        }
        rounds++;
      }
      assert.ok(interrupts >= Math.ceil(input.length / 700), `one interrupt per input burst at least (${interrupts})`);
      assert.deepEqual(r.sent, message, 'every byte transmitted, in order');
      assert.deepEqual(Uint8Array.from(received), input, 'every byte received, in order');
      assert.equal(uart.read(R.InterruptEnable) & IER_THR_EMPTY, 0, 'transmit stopped when the queue emptied');
      assert.equal(r.level, false, 'the line ends low');
    });

    test('a line that goes low and high again between reports is pulsed, so an edge-triggered input sees the second rise', () => {
      // Thread A is inside setIrq (the reporter) while others lower and raise the level: A's
      // loop must end with a fresh edge, not a silent "still high".
      const state = Uart16550.createState();
      const calls: boolean[] = [];
      let other: Uart16550 | null = null;
      let once = true;
      const reporter = new Uart16550(state, {
        transmit() {},
        setIrq(level) {
          calls.push(level);
          if (level && once) {
            once = false;
            // While "A" reports the rise, "B" drains the byte (low) and new input arrives (high).
            other!.read(R.Data);
            other!.receive(Uint8Array.of(9));
          }
        },
      });
      other = new Uart16550(state, { transmit() {}, setIrq: (level) => calls.push(level) });
      reporter.write(R.InterruptEnable, IER_RX_DATA);
      reporter.write(R.ModemControl, MCR_OUT2);
      reporter.receive(Uint8Array.of(1));
      assert.deepEqual(calls, [true, false, true], 'B left the reporting to A, which pulsed the line');
    });

    test('a setIrq hook that throws does not wedge the line: the next access reports again', () => {
      const state = Uart16550.createState();
      const calls: boolean[] = [];
      let fail = true;
      const uart = new Uart16550(state, {
        transmit() {},
        setIrq(level) {
          if (fail) throw new Error('ioctl failed');
          calls.push(level);
        },
      });
      uart.write(R.InterruptEnable, IER_RX_DATA);
      uart.write(R.ModemControl, MCR_OUT2);
      assert.throws(() => uart.receive(Uint8Array.of(1)), /ioctl failed/);
      fail = false;
      uart.read(R.Scratch);
      assert.deepEqual(calls, [true]);
    });

    test('property: random register traffic keeps every register a byte, LSR THRE|TEMT, sane IIR, and the line at the level IIR implies', () => {
      const op = fc.oneof(
        fc.record({ kind: fc.constant('read' as const), offset: fc.integer({ min: 0, max: 7 }) }),
        fc.record({ kind: fc.constant('write' as const), offset: fc.integer({ min: 0, max: 7 }), value: fc.integer({ min: 0, max: 0xff }) }),
        fc.record({ kind: fc.constant('receive' as const), length: fc.integer({ min: 0, max: 40 }) }),
      );
      fc.assert(
        fc.property(fc.array(op, { maxLength: 200 }), (ops) => {
          const r = makeUart();
          const { uart } = r;
          for (const o of ops) {
            if (o.kind === 'read') {
              const v = uart.read(o.offset);
              assert.ok(Number.isInteger(v) && v >= 0 && v <= 0xff);
              if (o.offset === R.LineStatus) assert.equal(v & 0x60, 0x60, 'DLAB does not cover LSR');
              if (o.offset === R.InterruptIdFifoControl) {
                assert.equal(v & 0x30, 0, 'IIR bits 4-5 are 0 on a 16550A');
                assert.ok((v & 0xc0) === 0 || (v & 0xc0) === 0xc0);
                assert.ok([1, 6, 4, 0xc, 2, 0].includes(v & 0x0f));
              }
            } else if (o.kind === 'write') uart.write(o.offset, o.value);
            else uart.receive(new Uint8Array(o.length));
          }
          // The reported line against what the registers say (the IIR read is the last access).
          const mcr = uart.read(R.ModemControl);
          const line = r.level;
          const pending = (uart.read(R.InterruptIdFifoControl) & IIR_NO_INTERRUPT) === 0;
          assert.equal(line, pending && (mcr & (MCR_OUT2 | MCR_LOOPBACK)) === MCR_OUT2);
          for (let i = 1; i < r.irq.length; i++) assert.notEqual(r.irq[i], r.irq[i - 1], 'single-threaded reports alternate');
        }),
        { numRuns: 300, seed: 16550 },
      );
    });
  });

  describe('Uart16550 across threads', () => {
    test('two vCPU threads transmit through their own instances while a third reads what the main thread feeds: nothing lost or corrupted, line consistent', { timeout: 120_000 }, async () => {
      const state = Uart16550.createState();
      const line = new SharedArrayBuffer(8);
      const main = new Uart16550(state, lineHooks(line, () => assert.fail('the main thread only receives')));
      main.write(R.ModemControl, MCR_OUT2);
      main.write(R.InterruptIdFifoControl, FCR_ENABLE_FIFO);
      const COUNT = 20_000;
      const INPUT = 50_000;
      const input = Uint8Array.from({ length: INPUT }, (_, i) => (i * 31 + (i >> 8)) & 0xff);
      const base = { state, line, fd: -1 };
      const writers = [1, 0].map((id) => runWorkerRole({ ...base, role: 'writer', id, count: COUNT }));
      const reader = runWorkerRole({ ...base, role: 'reader', id: 2, count: INPUT });
      let fed = 0;
      const started = Date.now();
      while (fed < INPUT) {
        fed += main.receive(input.subarray(fed, Math.min(INPUT, fed + 512)));
        if (Date.now() - started > 60_000) assert.fail(`feeding stalled at ${fed}`);
        await sleep(0);
      }
      const [w0, w1, got] = (await Promise.all([...writers, reader])) as Uint8Array[];
      const seconds = (Date.now() - started) / 1000;
      for (const [id, sent] of [[1, w0!], [0, w1!]] as const) {
        assert.equal(sent.length, COUNT, `writer ${id} transmitted every byte`);
        for (let i = 0; i < COUNT; i++) if (sent[i] !== writerByte(id, i)) assert.fail(`writer ${id} byte ${i}: ${sent[i]} != ${writerByte(id, i)}`);
      }
      assert.deepEqual(got, input, 'the reader got the input in order');
      const cells = new Int32Array(line);
      const level = Atomics.load(cells, 0) === 1;
      const pending = (main.read(R.InterruptIdFifoControl) & IIR_NO_INTERRUPT) === 0;
      assert.equal(level, pending, 'the last setIrq from any thread matches the registers');
      console.log(`# ${2 * COUNT} bytes out and ${INPUT} in across 4 threads in ${seconds.toFixed(2)} s, ${Atomics.load(cells, 1)} setIrq calls`);
    });

    test('loopback: two threads write into one receive buffer that a third drains: every byte once, each writer in order', { timeout: 120_000 }, async () => {
      const state = Uart16550.createState();
      const line = new SharedArrayBuffer(8);
      const main = new Uart16550(state, lineHooks(line, () => assert.fail('nothing leaves the chip in loopback')));
      main.write(R.ModemControl, MCR_LOOPBACK);
      const COUNT = 40_000;
      const base = { state, line, fd: -1 };
      const started = Date.now();
      const results = await Promise.all([
        runWorkerRole({ ...base, role: 'loop-writer', id: 0, count: COUNT }),
        runWorkerRole({ ...base, role: 'loop-writer', id: 1, count: COUNT }),
        runWorkerRole({ ...base, role: 'reader', id: 2, count: 2 * COUNT }),
      ]);
      const got = results[2] as Uint8Array;
      assert.equal(main.overruns, 0);
      assert.equal(main.pendingInput, 0, 'nothing left over: no byte was duplicated');
      for (const id of [0, 1]) {
        const mine = got.filter((b) => b >> 7 === id);
        assert.equal(mine.length, COUNT, `writer ${id}: every byte arrived once`);
        for (let i = 0; i < COUNT; i++) if (mine[i] !== writerByte(id, i)) assert.fail(`writer ${id} byte ${i}: ${mine[i]} != ${writerByte(id, i)}`);
      }
      console.log(`# ${2 * COUNT} loopback bytes through one ring across 3 threads in ${((Date.now() - started) / 1000).toFixed(2)} s`);
    });
  });

  describe('SerialConsole', () => {
    test('output is batched: written at a newline, at 256 bytes, at flush() and at close()', () => {
      const out = tempFile();
      try {
        const console_ = new SerialConsole({ outputFd: out.fd, input: 'none', flushDelayMs: 0 });
        for (const b of new TextEncoder().encode('hello')) console_.transmit(b);
        assert.equal(out.read().length, 0, 'a partial line waits');
        console_.transmit(0x0a);
        assert.equal(out.read().toString(), 'hello\n');
        for (let i = 0; i < 255; i++) console_.transmit(0x61);
        assert.equal(out.read().length, 6);
        console_.transmit(0x62);
        assert.equal(out.read().length, 6 + 256, 'a full batch goes out without a newline');
        console_.transmit(0x63);
        console_.flush();
        assert.equal(out.read().length, 6 + 257);
        console_.transmit(0x64);
        console_.close();
        console_.close();
        assert.equal(out.read().toString(), `hello\n${'a'.repeat(255)}bcd`);
      } finally {
        out.dispose();
      }
    });

    test('a partial line (a shell prompt) is flushed by the idle timer when the event loop runs', async () => {
      const out = tempFile();
      try {
        const console_ = new SerialConsole({ outputFd: out.fd, input: 'none', flushDelayMs: 5 });
        for (const b of new TextEncoder().encode('# ')) console_.transmit(b);
        await until(() => out.read().toString() === '# ', 'the prompt');
        console_.close();
      } finally {
        out.dispose();
      }
    });

    test('onLine: complete lines without CR/LF, UTF-8, long lines in pieces, unsubscribe', () => {
      const out = tempFile();
      try {
        const console_ = new SerialConsole({ outputFd: out.fd, input: 'none', flushDelayMs: 0 });
        const send = (s: string | Uint8Array) => {
          for (const b of typeof s === 'string' ? new TextEncoder().encode(s) : s) console_.transmit(b);
        };
        send('before any listener\n');
        const lines: string[] = [];
        const off = console_.onLine((l) => lines.push(l));
        send('ENLIGHTEN-READY\r\nsecond line: é ✓\n\nhalf');
        assert.deepEqual(lines, ['ENLIGHTEN-READY', 'second line: é ✓', '']);
        send(' done\n');
        assert.equal(lines.at(-1), 'half done');
        send(new Uint8Array(MAX_LINE_BYTES + 10).fill(0x78));
        send('\n');
        assert.deepEqual(lines.slice(-2).map((l) => l.length), [MAX_LINE_BYTES, 10], 'a guest that never ends a line cannot grow the buffer');
        off();
        send('after\n');
        assert.equal(lines.at(-1), 'x'.repeat(10));
        console_.close();
        assert.ok(out.read().toString().startsWith('before any listener\nENLIGHTEN-READY\r\n'), 'the tap does not change the output');
      } finally {
        out.dispose();
      }
    });

    test('TTY input: raw mode, bytes into the UART, Ctrl-A Ctrl-A sends Ctrl-A, Ctrl-A x stops, terminal restored', async () => {
      const tty = new FakeTty();
      const r = makeUart();
      let stops = 0;
      const console_ = new SerialConsole({ outputFd: 1, inputStream: tty, sink: r.uart, onStop: () => stops++, flushDelayMs: 0 });
      assert.deepEqual(tty.rawModes, [true]);
      assert.ok(process.listeners('exit').length > 0);
      tty.write(Buffer.from('ls\r\x03'));
      tty.write(Buffer.from([0x01]));
      tty.write(Buffer.from([0x01, 0x62])); // an escape split across chunks: Ctrl-A | Ctrl-A is one literal Ctrl-A, then "b"
      tty.write(Buffer.from([0x01, 0x71])); // Ctrl-A q: not an escape, both bytes go through
      await until(() => r.uart.pendingInput === 8, 'input in the UART');
      const got: number[] = [];
      while (r.uart.read(R.LineStatus) & LSR_DATA_READY) got.push(r.uart.read(R.Data));
      assert.deepEqual(got, [0x6c, 0x73, 0x0d, 0x03, 0x01, 0x62, 0x01, 0x71]);
      tty.write(Buffer.from([0x7a, 0x01, 0x78, 0x79]));
      await until(() => stops === 1, 'the stop escape');
      assert.deepEqual(tty.rawModes, [true, false], 'the terminal is restored before the VM stops');
      assert.equal(r.uart.read(R.Data), 0x7a, 'bytes before the escape went in');
      assert.equal(r.uart.pendingInput, 0, 'bytes after it did not');
      console_.close();
      assert.deepEqual(tty.rawModes, [true, false], 'restored once');
    });

    test('input waits while the UART is full (backpressure) and arrives complete and in order', async () => {
      const tty = new FakeTty();
      const r = makeUart();
      const console_ = new SerialConsole({ outputFd: 1, inputStream: tty, sink: r.uart, flushDelayMs: 0 });
      const total = UART_RX_BUFFER_SIZE * 3 + 123;
      const data = Uint8Array.from({ length: total }, (_, i) => 0x20 + (i % 90)); // no Ctrl-A
      tty.write(Buffer.from(data));
      const got: number[] = [];
      await until(() => {
        // A slow guest: a few hundred bytes per poll.
        for (let n = 0; n < 300 && r.uart.read(R.LineStatus) & LSR_DATA_READY; n++) got.push(r.uart.read(R.Data));
        return got.length === total;
      }, 'all input', 10_000);
      assert.deepEqual(Uint8Array.from(got), data);
      console_.close();
    });

    test('not a TTY: no input unless asked; when asked, piped bytes pass through untouched, no raw mode', async () => {
      const pipe = new FakeTty(false);
      const r = makeUart();
      const idle = new SerialConsole({ outputFd: 1, inputStream: pipe, sink: r.uart });
      pipe.write(Buffer.from('ignored'));
      await sleep(20);
      assert.equal(r.uart.pendingInput, 0, 'a piped stdin is not read by default');
      idle.close();
      const pipe2 = new FakeTty(false);
      let stops = 0;
      const asked = new SerialConsole({ outputFd: 1, input: 'stdin', inputStream: pipe2, sink: r.uart, onStop: () => stops++ });
      pipe2.write(Buffer.from([0x41, 0x01, 0x78, 0x42]));
      await until(() => r.uart.pendingInput === 4, 'piped input');
      assert.equal(stops, 0);
      assert.deepEqual(pipe2.rawModes, []);
      asked.close();
      assert.throws(() => new SerialConsole({ input: 'stdin', inputStream: new FakeTty() }), /needs a sink/);
    });

    test('the terminal is restored when the process dies of an uncaught exception', () => {
      const module = new URL('../src/x86/serial-console.js', import.meta.url).href;
      const script = `
        import { PassThrough } from 'node:stream';
        import fs from 'node:fs';
        import { SerialConsole } from ${JSON.stringify(module)};
        const tty = new PassThrough();
        tty.isTTY = true;
        tty.setRawMode = (mode) => fs.writeSync(2, 'raw:' + mode + '\\n');
        new SerialConsole({ inputStream: tty, sink: { receive: (b) => b.length } });
        setTimeout(() => { throw new Error('boom'); }, 10);
      `;
      let stderr = '';
      try {
        execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', stdio: ['ignore', 'ignore', 'pipe'] });
        assert.fail('the child should have died');
      } catch (e) {
        stderr = String((e as { stderr?: string }).stderr ?? '');
      }
      assert.match(stderr, /raw:true\n[\s\S]*boom[\s\S]*raw:false|raw:true\n[\s\S]*raw:false[\s\S]*boom/);
    });
  });

  describe('writeAllSync', () => {
    test('1 MiB through a 64 KiB non-blocking pipe: partial writes and EAGAIN waits, every byte in order', async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fd-write-'));
      try {
        const fifo = path.join(dir, 'fifo');
        const sink = path.join(dir, 'sink');
        execFileSync('mkfifo', [fifo]);
        // O_RDWR never blocks on a FIFO; O_NONBLOCK makes a full pipe answer EAGAIN.
        const fd = fs.openSync(fifo, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
        const sinkFd = fs.openSync(sink, 'w');
        const cat = spawn('sh', ['-c', `sleep 0.2; exec cat "${fifo}"`], { stdio: ['ignore', sinkFd, 'inherit'] });
        const exited = new Promise<number | null>((resolve) => cat.once('exit', resolve));
        const data = Uint8Array.from({ length: 1 << 20 }, (_, i) => (i ^ (i >> 9)) & 0xff);
        writeAllSync(fd, data.subarray(0, 1000)); // fits: one write
        writeAllSync(fd, data.subarray(1000)); // does not: waits for cat, who starts 0.2 s late
        fs.closeSync(fd);
        assert.equal(await exited, 0);
        fs.closeSync(sinkFd);
        assert.ok(Buffer.from(data).equals(fs.readFileSync(sink)), 'the reader got every byte in order');
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });

    test('errors are SysErrors; an empty write does nothing', () => {
      writeAllSync(987_654, new Uint8Array(0));
      assert.throws(() => writeAllSync(987_654, Uint8Array.of(1)), (e: Error & { code?: string; call?: string }) => e.name === 'SysError' && e.code === 'EBADF' && e.call === 'write');
    });

    test('works from worker threads, which cannot use process.stdout directly', async () => {
      const out = tempFile();
      try {
        const base = { state: Uart16550.createState(), line: new SharedArrayBuffer(8), fd: out.fd, count: 500 };
        await Promise.all([0, 1].map((id) => runWorkerRole({ ...base, role: 'fd-writer', id })));
        const lines = out.read().toString().split('\n').filter((l) => l !== '');
        assert.equal(lines.length, 1000);
        assert.equal(lines.filter((l) => l === 'worker 0 line').length, 500);
        assert.equal(lines.filter((l) => l === 'worker 1 line').length, 500);
      } finally {
        out.dispose();
      }
    });
  });
}
