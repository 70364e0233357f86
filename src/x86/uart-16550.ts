// A 16550A UART as Linux's 8250 driver probes and drives it (drivers/tty/serial/8250/
// 8250_port.c): autoconfig must classify it as PORT_16550A, the THRE interrupt must behave
// like a real chip's so interrupt-driven transmit never stalls, and the IRQ pin is gated by
// MCR OUT2 as on PCs.
//
// Several threads drive one UART: every vCPU worker handles the guest's port I/O and the
// main thread feeds keyboard input. So the registers live in a SharedArrayBuffer, each
// thread builds its own Uart16550 over it, and a tiny spin lock guards them. Hooks never run
// under the lock: a hook may block (a write to a slow terminal) and must not stall the
// other threads' register accesses.
//
// Transmit is instant: a byte written to THR is handed to the host at once, so LSR always
// reads THRE|TEMT and a transmit FIFO is never modelled.

/** Register offsets from the base port. DLAB (LCR bit 7) turns 0 and 1 into the divisor latch. */
export const UartRegister = {
  /** Read: receive buffer (RBR). Write: transmit holding register (THR). DLAB: divisor low (DLL). */
  Data: 0,
  /** Interrupt enable (IER). DLAB: divisor high (DLM). */
  InterruptEnable: 1,
  /** Read: interrupt identification (IIR). Write: FIFO control (FCR). */
  InterruptIdFifoControl: 2,
  LineControl: 3,
  ModemControl: 4,
  LineStatus: 5,
  ModemStatus: 6,
  Scratch: 7,
} as const;

export const IER_RX_DATA = 0x01;
export const IER_THR_EMPTY = 0x02;
export const IER_LINE_STATUS = 0x04;
export const IER_MODEM_STATUS = 0x08;
/** A 16550A implements only the low four IER bits; Linux's XScale probe checks bit 6 reads 0. */
const IER_MASK = 0x0f;

/** IIR interrupt identification values (bits 0-3), highest priority first. */
export const IIR_NO_INTERRUPT = 0x01;
export const IIR_LINE_STATUS = 0x06;
export const IIR_RX_DATA = 0x04;
/** Data below the FIFO trigger level: a real chip reports it after four character times. */
export const IIR_RX_TIMEOUT = 0x0c;
export const IIR_THR_EMPTY = 0x02;
export const IIR_MODEM_STATUS = 0x00;
/** IIR bits 6-7 read 11 with FIFOs enabled: the mark of a 16550A (a 16550 reads 10). */
export const IIR_FIFOS_ENABLED = 0xc0;

export const FCR_ENABLE_FIFO = 0x01;
export const FCR_CLEAR_RX = 0x02;
export const FCR_CLEAR_TX = 0x04;
/** Bits a 16550A keeps: enable, DMA mode select, RX trigger level. */
const FCR_KEPT = 0xc9;

export const LCR_DLAB = 0x80;

export const MCR_DTR = 0x01;
export const MCR_RTS = 0x02;
export const MCR_OUT1 = 0x04;
/** On PCs OUT2 enables the buffer between the UART's interrupt pin and the PIC/IOAPIC. */
export const MCR_OUT2 = 0x08;
export const MCR_LOOPBACK = 0x10;
const MCR_MASK = 0x1f;

export const LSR_DATA_READY = 0x01;
export const LSR_OVERRUN = 0x02;
export const LSR_PARITY_ERROR = 0x04;
export const LSR_FRAMING_ERROR = 0x08;
export const LSR_BREAK = 0x10;
export const LSR_THR_EMPTY = 0x20;
export const LSR_TRANSMITTER_EMPTY = 0x40;

export const MSR_DELTA_CTS = 0x01;
export const MSR_DELTA_DSR = 0x02;
export const MSR_TRAILING_EDGE_RI = 0x04;
export const MSR_DELTA_DCD = 0x08;
export const MSR_CTS = 0x10;
export const MSR_DSR = 0x20;
export const MSR_RI = 0x40;
export const MSR_DCD = 0x80;
/** What the host end of the line presents outside loopback: a terminal that is connected and ready. */
const MSR_LINE_CONNECTED = MSR_DCD | MSR_DSR | MSR_CTS;

/** The receive buffer: far more than a 16550A's 16 bytes, so pasted input flows without the host waiting on each interrupt. */
export const UART_RX_BUFFER_SIZE = 4096;

// Layout of the shared state: Int32 cells, then the receive ring's bytes.
const LOCK = 0;
const IER = 1;
const LCR = 2;
const MCR = 3;
const SCR = 4;
const DLL = 5;
const DLM = 6;
const FCR = 7;
/** Sticky LSR error bits, cleared by reading LSR. */
const LINE_ERRORS = 8;
/** MSR bits 0-3, accumulated until MSR is read. */
const MSR_DELTAS = 9;
/** THRE interrupt pending (the chip's internal latch: armed by an empty THR, cleared by IIR reads and THR writes). */
const THRE_PENDING = 10;
const RX_HEAD = 11;
const RX_COUNT = 12;
/** What RBR reads when the buffer is empty: the last byte read, as on a real chip. */
const LAST_RBR = 13;
/** The IRQ level the registers call for, and how many times it has risen. */
const IRQ_WANTED = 14;
const IRQ_RISES = 15;
/** What the hooks have last been told, and whether some thread is telling them right now. */
const IRQ_REPORTED = 16;
const IRQ_REPORTED_RISES = 17;
const IRQ_REPORTING = 18;
/** A cell nobody notifies: the spin lock naps on it with a timeout. */
const NAP = 19;
const OVERRUNS = 20;
const MAGIC = 31;
const HEADER_CELLS = 32;
const MAGIC_VALUE = 0x16550a;
const RX_OFFSET = HEADER_CELLS * 4;
const STATE_BYTES = RX_OFFSET + UART_RX_BUFFER_SIZE;

/** Spins before the lock starts napping: the holder was probably descheduled (two cores, several threads). */
const SPINS_BEFORE_NAP = 2048;
const NAP_MS = 0.05;

const RX_TRIGGER_LEVELS = [1, 4, 8, 14] as const;

export interface UartHooks {
  /** A byte left the UART. Called outside the lock, in the thread whose THR write sent it, in order. */
  transmit(byte: number): void;
  /**
   * Drive the interrupt line. Called outside the lock; calls from all threads' instances
   * are serialised and the last one always carries the current level, so every instance's
   * hook must drive the same line. A re-raise while high is reported as false then true,
   * so an edge-triggered input sees a new edge.
   */
  setIrq(level: boolean): void;
}

export class Uart16550 {
  private readonly cells: Int32Array;
  private readonly rx: Uint8Array;
  private readonly hooks: UartHooks;

  /** Fresh state for one UART, as after reset: 9600 baud divisor, interrupts off, line connected. */
  static createState(): SharedArrayBuffer {
    const state = new SharedArrayBuffer(STATE_BYTES);
    const cells = new Int32Array(state, 0, HEADER_CELLS);
    cells[DLL] = 12; // 115200 / 12 = 9600 baud, the PC default
    cells[MAGIC] = MAGIC_VALUE;
    return state;
  }

  constructor(state: SharedArrayBuffer, hooks: UartHooks) {
    if (!(state instanceof SharedArrayBuffer) || state.byteLength !== STATE_BYTES) {
      throw new TypeError('Uart16550 needs the SharedArrayBuffer made by Uart16550.createState()');
    }
    this.cells = new Int32Array(state, 0, HEADER_CELLS);
    if (Atomics.load(this.cells, MAGIC) !== MAGIC_VALUE) throw new TypeError('not a Uart16550 state buffer');
    this.rx = new Uint8Array(state, RX_OFFSET, UART_RX_BUFFER_SIZE);
    this.hooks = hooks;
  }

  /** A guest read of base+offset (one byte). Never throws for guest input: an unknown offset reads 0xff like an empty bus. */
  read(offset: number): number {
    if (!isRegisterOffset(offset)) return 0xff;
    this.lock();
    let value: number;
    try {
      value = this.readLocked(offset);
    } finally {
      this.unlockAndReport();
    }
    return value;
  }

  /** A guest write of base+offset (the low byte of value). */
  write(offset: number, value: number): void {
    if (!isRegisterOffset(offset)) return;
    this.lock();
    let sent = -1;
    try {
      sent = this.writeLocked(offset, value & 0xff);
    } finally {
      this.unlockAndReport();
    }
    if (sent >= 0) this.hooks.transmit(sent);
  }

  /**
   * Host input for the guest. Takes as many bytes as the receive buffer has room for and
   * returns that count: the caller keeps the rest and tries again later. Loopback mode
   * disconnects the serial input, so nothing is taken then.
   */
  receive(bytes: Uint8Array): number {
    this.lock();
    let taken = 0;
    try {
      const c = this.cells;
      if ((c[MCR]! & MCR_LOOPBACK) === 0) {
        taken = Math.min(bytes.length, UART_RX_BUFFER_SIZE - c[RX_COUNT]!);
        for (let i = 0; i < taken; i++) this.pushRxLocked(bytes[i]!);
      }
    } finally {
      this.unlockAndReport();
    }
    return taken;
  }

  /** Bytes the guest has not read yet. */
  get pendingInput(): number {
    return Atomics.load(this.cells, RX_COUNT);
  }

  /** Bytes lost because the guest let the receive buffer overflow (loopback only: host input waits instead). */
  get overruns(): number {
    return Atomics.load(this.cells, OVERRUNS);
  }

  private readLocked(offset: number): number {
    const c = this.cells;
    const dlab = (c[LCR]! & LCR_DLAB) !== 0;
    switch (offset) {
      case UartRegister.Data: {
        if (dlab) return c[DLL]!;
        if (c[RX_COUNT]! > 0) {
          const head = c[RX_HEAD]!;
          c[LAST_RBR] = this.rx[head]!;
          c[RX_HEAD] = (head + 1) % UART_RX_BUFFER_SIZE;
          c[RX_COUNT] = c[RX_COUNT]! - 1;
        }
        return c[LAST_RBR]!;
      }
      case UartRegister.InterruptEnable:
        return dlab ? c[DLM]! : c[IER]!;
      case UartRegister.InterruptIdFifoControl: {
        const id = this.interruptIdLocked();
        // Reading IIR acknowledges a THRE interrupt, but only when IIR reported it: a
        // higher-priority source hides it and it stays pending.
        if (id === IIR_THR_EMPTY) c[THRE_PENDING] = 0;
        return id | ((c[FCR]! & FCR_ENABLE_FIFO) !== 0 ? IIR_FIFOS_ENABLED : 0);
      }
      case UartRegister.LineControl:
        return c[LCR]!;
      case UartRegister.ModemControl:
        return c[MCR]!;
      case UartRegister.LineStatus: {
        const value = (c[RX_COUNT]! > 0 ? LSR_DATA_READY : 0) | c[LINE_ERRORS]! | LSR_THR_EMPTY | LSR_TRANSMITTER_EMPTY;
        c[LINE_ERRORS] = 0;
        return value;
      }
      case UartRegister.ModemStatus: {
        const value = modemStatus(c[MCR]!) | c[MSR_DELTAS]!;
        c[MSR_DELTAS] = 0;
        return value;
      }
      default:
        return c[SCR]!;
    }
  }

  /** Returns the byte to transmit once the lock is released, or -1. */
  private writeLocked(offset: number, value: number): number {
    const c = this.cells;
    const dlab = (c[LCR]! & LCR_DLAB) !== 0;
    switch (offset) {
      case UartRegister.Data:
        if (dlab) {
          c[DLL] = value;
          return -1;
        }
        // The write empties-then-fills THR (dropping THRE) and the instant transmitter
        // empties it again, so THRE is pending afterwards: the next THRE interrupt that
        // Linux's interrupt-driven transmit waits for.
        c[THRE_PENDING] = 1;
        if ((c[MCR]! & MCR_LOOPBACK) !== 0) {
          if (c[RX_COUNT]! < UART_RX_BUFFER_SIZE) this.pushRxLocked(value);
          else {
            c[LINE_ERRORS] = c[LINE_ERRORS]! | LSR_OVERRUN;
            c[OVERRUNS] = c[OVERRUNS]! + 1;
          }
          return -1;
        }
        return value;
      case UartRegister.InterruptEnable: {
        if (dlab) {
          c[DLM] = value;
          return -1;
        }
        const ier = value & IER_MASK;
        // Enabling ETBEI with THR empty raises THRE even if an IIR read had acknowledged it:
        // Linux's startup test (and Windows) toggle IER to see it re-asserted. Disabling it
        // drops the latch, as QEMU does.
        if (((c[IER]! ^ ier) & IER_THR_EMPTY) !== 0) c[THRE_PENDING] = (ier & IER_THR_EMPTY) !== 0 ? 1 : 0;
        c[IER] = ier;
        return -1;
      }
      case UartRegister.InterruptIdFifoControl: {
        const enabling = value & FCR_ENABLE_FIFO;
        // Changing the FIFO enable bit clears the FIFOs; the other bits count only with it set.
        if (enabling !== (c[FCR]! & FCR_ENABLE_FIFO) || (enabling !== 0 && (value & FCR_CLEAR_RX) !== 0)) {
          c[RX_COUNT] = 0;
          c[RX_HEAD] = 0;
        }
        c[FCR] = enabling !== 0 ? value & FCR_KEPT : 0;
        return -1;
      }
      case UartRegister.LineControl:
        c[LCR] = value;
        return -1;
      case UartRegister.ModemControl: {
        const mcr = value & MCR_MASK;
        c[MSR_DELTAS] = c[MSR_DELTAS]! | modemDeltas(modemStatus(c[MCR]!), modemStatus(mcr));
        c[MCR] = mcr;
        return -1;
      }
      case UartRegister.LineStatus:
      case UartRegister.ModemStatus:
        // Factory-test writes on a real chip; nothing a driver relies on.
        return -1;
      default:
        c[SCR] = value;
        return -1;
    }
  }

  private pushRxLocked(byte: number): void {
    const c = this.cells;
    this.rx[(c[RX_HEAD]! + c[RX_COUNT]!) % UART_RX_BUFFER_SIZE] = byte;
    c[RX_COUNT] = c[RX_COUNT]! + 1;
  }

  /** The highest-priority enabled pending source, as IIR bits 0-3. */
  private interruptIdLocked(): number {
    const c = this.cells;
    const ier = c[IER]!;
    if ((ier & IER_LINE_STATUS) !== 0 && c[LINE_ERRORS]! !== 0) return IIR_LINE_STATUS;
    if ((ier & IER_RX_DATA) !== 0 && c[RX_COUNT]! > 0) {
      const fifo = c[FCR]!;
      if ((fifo & FCR_ENABLE_FIFO) !== 0 && c[RX_COUNT]! < RX_TRIGGER_LEVELS[fifo >> 6]!) return IIR_RX_TIMEOUT;
      return IIR_RX_DATA;
    }
    if ((ier & IER_THR_EMPTY) !== 0 && c[THRE_PENDING]! !== 0) return IIR_THR_EMPTY;
    if ((ier & IER_MODEM_STATUS) !== 0 && c[MSR_DELTAS]! !== 0) return IIR_MODEM_STATUS;
    return IIR_NO_INTERRUPT;
  }

  private lock(): void {
    const c = this.cells;
    if (Atomics.compareExchange(c, LOCK, 0, 1) === 0) return;
    for (let spins = 1; ; spins++) {
      if (Atomics.load(c, LOCK) === 0 && Atomics.compareExchange(c, LOCK, 0, 1) === 0) return;
      // With more threads than cores the holder may have been preempted inside its few
      // dozen instructions; napping lets it run instead of burning its time slice.
      if (spins % SPINS_BEFORE_NAP === 0) Atomics.wait(c, NAP, 0, NAP_MS);
    }
  }

  /**
   * Recomputes the IRQ the registers call for, releases the lock and, if the line must
   * change and no other thread is already changing it, changes it: in a loop, because
   * other threads may move the wanted level while this one is in the hook. Serialising the
   * reports this way means the line always ends at the level the registers last asked for,
   * which separate unordered setIrq calls from several threads could not promise.
   */
  private unlockAndReport(): void {
    const c = this.cells;
    const gated = (c[MCR]! & (MCR_OUT2 | MCR_LOOPBACK)) !== MCR_OUT2;
    const wanted = !gated && this.interruptIdLocked() !== IIR_NO_INTERRUPT ? 1 : 0;
    if (wanted === 1 && c[IRQ_WANTED] === 0) c[IRQ_RISES] = (c[IRQ_RISES]! + 1) | 0;
    c[IRQ_WANTED] = wanted;
    if (c[IRQ_REPORTING] !== 0 || !this.reportDueLocked()) {
      Atomics.store(c, LOCK, 0);
      return;
    }
    c[IRQ_REPORTING] = 1;
    let held = true;
    try {
      for (;;) {
        const level = c[IRQ_WANTED]!;
        // The level went down and up again since the last report while the line stayed high.
        const pulse = level === 1 && c[IRQ_REPORTED] === 1 && c[IRQ_REPORTED_RISES] !== c[IRQ_RISES];
        c[IRQ_REPORTED] = level;
        c[IRQ_REPORTED_RISES] = c[IRQ_RISES]!;
        Atomics.store(c, LOCK, 0);
        held = false;
        if (pulse) this.hooks.setIrq(false);
        this.hooks.setIrq(level === 1);
        this.lock();
        held = true;
        if (!this.reportDueLocked()) break;
      }
    } finally {
      // Also when a hook threw, so that the next access reports again instead of the line
      // sticking; what this thread last told the hook is then unknown, so report it again.
      if (!held) {
        this.lock();
        c[IRQ_REPORTED] = -1;
      }
      c[IRQ_REPORTING] = 0;
      Atomics.store(c, LOCK, 0);
    }
  }

  private reportDueLocked(): boolean {
    const c = this.cells;
    if (c[IRQ_WANTED] !== c[IRQ_REPORTED]) return true;
    return c[IRQ_WANTED] === 1 && c[IRQ_REPORTED_RISES] !== c[IRQ_RISES];
  }
}

function isRegisterOffset(offset: number): boolean {
  return Number.isInteger(offset) && offset >= 0 && offset <= 7;
}

/**
 * MSR bits 4-7. In loopback the modem outputs feed the inputs inside the chip (RTS to CTS,
 * DTR to DSR, OUT1 to RI, OUT2 to DCD): Linux's autoconfig writes MCR = LOOP|OUT2|RTS and
 * expects DCD|CTS back. Otherwise the host end is a terminal that is always there.
 */
function modemStatus(mcr: number): number {
  if ((mcr & MCR_LOOPBACK) === 0) return MSR_LINE_CONNECTED;
  return (
    ((mcr & MCR_RTS) !== 0 ? MSR_CTS : 0) |
    ((mcr & MCR_DTR) !== 0 ? MSR_DSR : 0) |
    ((mcr & MCR_OUT1) !== 0 ? MSR_RI : 0) |
    ((mcr & MCR_OUT2) !== 0 ? MSR_DCD : 0)
  );
}

function modemDeltas(before: number, after: number): number {
  const changed = before ^ after;
  return (
    ((changed & MSR_CTS) !== 0 ? MSR_DELTA_CTS : 0) |
    ((changed & MSR_DSR) !== 0 ? MSR_DELTA_DSR : 0) |
    // RI reports only its trailing edge (1 to 0).
    ((before & MSR_RI) !== 0 && (after & MSR_RI) === 0 ? MSR_TRAILING_EDGE_RI : 0) |
    ((changed & MSR_DCD) !== 0 ? MSR_DELTA_DCD : 0)
  );
}
