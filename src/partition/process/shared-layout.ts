// The shared memory between the host and the reference guest's thread that stands in for
// the hypervisor's own transport: a hypercall mailbox, per-VP pending interrupt vectors,
// and the connection-id to eventfd table that lets HvSignalEvent bypass the host thread.

/** Mailbox words (Int32Array over a SharedArrayBuffer). */
export const Mailbox = {
  State: 0, // 0 idle, 1 request posted, 2 answered
  Op: 1,
  Vp: 2,
  Arg: 3, // MSR number or connection id
  ValueLo: 4,
  ValueHi: 5,
  MessageType: 6,
  PayloadSize: 7,
  Status: 8,
  ResultLo: 9,
  ResultHi: 10,
  PayloadByteOffset: 64,
  Bytes: 64 + 256,
} as const;

export const MailboxState = { Idle: 0, Request: 1, Answered: 2 } as const;

export const HypercallOp = {
  WriteMsr: 1,
  ReadMsr: 2,
  PostMessage: 3,
  SignalEvent: 4,
} as const;

/** Status words of MSR accesses, beside the HvStatus of hypercalls. */
export const MsrStatus = { Ok: 0, GeneralProtection: 1 } as const;

/** 256 vector bits per VP. */
export const VECTOR_WORDS_PER_VP = 8;

/** Signal table: pairs of (connection id + 1, fd); 0 marks a free entry. */
export const SIGNAL_TABLE_ENTRIES = 4096;

export interface ProcessPartitionShared {
  memoryFd: number;
  memorySize: number;
  vpCount: number;
  mailbox: SharedArrayBuffer;
  doorbellFd: number;
  interruptFds: number[];
  pendingVectors: SharedArrayBuffer;
  signalTable: SharedArrayBuffer;
  /** process.hrtime.bigint() at partition start, for the shared reference counter. */
  epochNs: bigint;
}

export function referenceTimeSince(epochNs: bigint): bigint {
  return (process.hrtime.bigint() - epochNs) / 100n;
}
