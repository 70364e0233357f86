// The code the host writes at the start of the guest's hypercall page (the GPFN the guest
// names in the HYPERCALL MSR). Linux reaches it with an indirect `call`, RCX = control
// word, RDX = input GPA or the fast input, R8 = output GPA; the code may clobber RCX, RDX,
// R8-R11 and flags and returns the result in RAX (spec 4.1).
//
// Two exits instead of vmcall: the fast HvSignalEvent (the guest's data-path doorbell)
// writes the connection id to SIGNAL_PORT, where an ioeventfd per connection id
// (datamatch) completes it inside the kernel; every other hypercall writes to
// HYPERCALL_PORT and is handled in userspace. Port I/O needs DX for the port number, so
// the slow path first moves the input GPA from RDX to R9.
import { HYPERCALL_PORT, SIGNAL_PORT } from '../x86/platform-ports.js';
import { FAST_SIGNAL_EVENT_CONTROL } from './hypercall-control.js';

/**
 * Where the userspace exit handlers find the hypercall's operands and put its answer.
 * At HYPERCALL_PORT: control in RCX, input (GPA or fast value) in R9, output GPA in R8;
 * the handler sets RAX. At SIGNAL_PORT without a matching ioeventfd: the connection id is
 * the 32-bit value written (EAX); the handler sets RCX to the status, which the page
 * copies into EAX.
 */
export const HypercallRegisters = {
  control: 'rcx',
  input: 'r9',
  output: 'r8',
  result: 'rax',
  unmatchedSignalStatus: 'rcx',
} as const;

function imm32(value: number): number[] {
  return [value & 0xff, (value >>> 8) & 0xff, (value >>> 16) & 0xff, (value >>> 24) & 0xff];
}

/** 0x1005D: positive and below 2^31, so cmp's sign-extended imm32 compares all 64 bits of RCX. */
const FAST_SIGNAL = Number(FAST_SIGNAL_EVENT_CONTROL);

// Fast HvSignalEvent: its exit must carry the connection id in the written value so one
// ioeventfd per connection can match it in the kernel.
const signalPath: number[][] = [
  [0x31, 0xc9], //                               xor ecx, ecx      ; status = success unless the host says otherwise
  [0x89, 0xd0], //                               mov eax, edx      ; connection id = low 32 bits of the fast input
  [0xba, ...imm32(SIGNAL_PORT)], //              mov edx, SIGNAL_PORT
  [0xef], //                                     out dx, eax       ; an ioeventfd with datamatch = connection id takes this in
  //                                                                 the kernel; without a match userspace sets RCX = status
  [0x89, 0xc8], //                               mov eax, ecx      ; result = status (upper RAX bits zeroed by the 32-bit mov)
  [0xc3], //                                     ret
];

const signalPathLength = signalPath.flat().length;

const dispatch: number[][] = [
  [0xf3, 0x0f, 0x1e, 0xfa], //                   endbr64           ; a valid indirect-call target under IBT (spec 1.6)
  [0x48, 0x81, 0xf9, ...imm32(FAST_SIGNAL)], //  cmp rcx, 0x1005D  ; fast HvSignalEvent? (imm32 sign-extended; positive)
  [0x75, signalPathLength], //                   jne slow          ; rel8 over the signal path
];

// Every other hypercall: userspace reads RCX, R9 and R8 and writes RAX.
const slowPath: number[][] = [
  [0x49, 0x89, 0xd1], //                         mov r9, rdx       ; keep the input: RDX is needed for the port number
  [0xba, ...imm32(HYPERCALL_PORT)], //           mov edx, HYPERCALL_PORT
  [0xef], //                                     out dx, eax       ; exits to userspace, which sets RAX
  [0xc3], //                                     ret
];

const CODE = Uint8Array.from([...dispatch, ...signalPath, ...slowPath].flat());

/** Offset of the slow path inside the code (the jne target). */
export const HYPERCALL_SLOW_PATH_OFFSET = dispatch.flat().length + signalPathLength;

/** The hypercall page code; a fresh copy each call. */
export function hypercallPageCode(): Uint8Array {
  return CODE.slice();
}
