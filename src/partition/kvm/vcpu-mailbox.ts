// How a vCPU thread asks the main thread to handle what needs partition-wide state: the
// synthetic MSRs (SynIC, hypercall page, reference TSC page) and the slow hypercalls. These
// are control-plane events (a few per VMBus message), so one blocking round trip each is
// fine: the vCPU thread writes its request into its own slot of a shared buffer, rings the
// doorbell eventfd and waits on the slot; the main thread answers and notifies.
//
// Layout: one 128-byte slot per vCPU. Int32 words 0..15 hold the state machine and small
// fields; BigInt64 words 8..15 (bytes 64..127) hold 64-bit operands and the result.

export const VcpuRequestOp = {
  ReadMsr: 1,
  WriteMsr: 2,
  Hypercall: 3,
} as const;
export type VcpuRequestOp = (typeof VcpuRequestOp)[keyof typeof VcpuRequestOp];

export const SlotState = { Idle: 0, Request: 1, Answered: 2 } as const;

const SLOT_BYTES = 128;
const SLOT_WORDS32 = SLOT_BYTES / 4;
const SLOT_WORDS64 = SLOT_BYTES / 8;

// Int32 word indices inside a slot.
const W_STATE = 0;
const W_OP = 1;
const W_MSR = 2;
/** 1 when an MSR access must fault (#GP). */
const W_FAULT = 3;
// BigInt64 word indices inside a slot (bytes 64..127).
const Q_A = 8;
const Q_B = 9;
const Q_C = 10;
const Q_RESULT = 11;

export interface VcpuRequest {
  vp: number;
  op: VcpuRequestOp;
  msr: number;
  /** WriteMsr: the value. Hypercall: control, input, output. */
  a: bigint;
  b: bigint;
  c: bigint;
}

export interface VcpuAnswer {
  /** ReadMsr: the value; Hypercall: RAX. */
  result: bigint;
  /** MSR accesses: true when the guest must get #GP. */
  fault: boolean;
}

export class VcpuMailbox {
  readonly buffer: SharedArrayBuffer;
  private readonly words: Int32Array;
  private readonly quads: BigInt64Array;

  constructor(bufferOrVcpuCount: SharedArrayBuffer | number) {
    this.buffer = typeof bufferOrVcpuCount === 'number' ? new SharedArrayBuffer(bufferOrVcpuCount * SLOT_BYTES) : bufferOrVcpuCount;
    this.words = new Int32Array(this.buffer);
    this.quads = new BigInt64Array(this.buffer);
  }

  get vcpuCount(): number {
    return this.buffer.byteLength / SLOT_BYTES;
  }

  /** vCPU side: posts a request and blocks until the main thread answers. `ring` wakes it. */
  call(vp: number, op: VcpuRequestOp, msr: number, a: bigint, b: bigint, c: bigint, ring: () => void): VcpuAnswer {
    const w = vp * SLOT_WORDS32;
    const q = vp * SLOT_WORDS64;
    this.words[w + W_OP] = op;
    this.words[w + W_MSR] = msr | 0;
    this.words[w + W_FAULT] = 0;
    this.quads[q + Q_A] = a;
    this.quads[q + Q_B] = b;
    this.quads[q + Q_C] = c;
    Atomics.store(this.words, w + W_STATE, SlotState.Request);
    ring();
    while (Atomics.load(this.words, w + W_STATE) === SlotState.Request) {
      Atomics.wait(this.words, w + W_STATE, SlotState.Request, 1000);
    }
    const answer = { result: BigInt.asUintN(64, this.quads[q + Q_RESULT]!), fault: this.words[w + W_FAULT] !== 0 };
    Atomics.store(this.words, w + W_STATE, SlotState.Idle);
    return answer;
  }

  /** Main side: each pending request in turn, answered by `handle`. */
  serve(handle: (request: VcpuRequest) => VcpuAnswer): number {
    let served = 0;
    for (let vp = 0; vp < this.vcpuCount; vp++) {
      const w = vp * SLOT_WORDS32;
      if (Atomics.load(this.words, w + W_STATE) !== SlotState.Request) continue;
      const q = vp * SLOT_WORDS64;
      const request: VcpuRequest = {
        vp,
        op: this.words[w + W_OP] as VcpuRequestOp,
        msr: this.words[w + W_MSR]! >>> 0,
        a: BigInt.asUintN(64, this.quads[q + Q_A]!),
        b: BigInt.asUintN(64, this.quads[q + Q_B]!),
        c: BigInt.asUintN(64, this.quads[q + Q_C]!),
      };
      const answer = handle(request);
      this.quads[q + Q_RESULT] = BigInt.asIntN(64, answer.result);
      this.words[w + W_FAULT] = answer.fault ? 1 : 0;
      Atomics.store(this.words, w + W_STATE, SlotState.Answered);
      Atomics.notify(this.words, w + W_STATE);
      served++;
    }
    return served;
  }
}
