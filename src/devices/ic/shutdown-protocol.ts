// Shutdown IC body (`struct shutdown_msg_data`, packed, 2060 bytes): u32 reason_code @0,
// u32 timeout_seconds @4, u32 flags @8, u8 display_message[2048] @12. Linux ignores
// everything but `flags` and refuses (no reply at all) a packet shorter than the whole
// structure, so the host always sends all 2060 bytes.

export const SHUTDOWN_BODY_SIZE = 2060;
export const SHUTDOWN_MESSAGE_OFFSET = 12;
export const SHUTDOWN_MESSAGE_SIZE = 2048;

/** `flags` bits (OpenVMM's ShutdownFlags). Linux switches on the whole value: 0/1, 2/3, 4/5. */
export const ShutdownFlags = {
  FORCE: 1,
  RESTART: 2,
  HIBERNATE: 4,
} as const;

/** SHTDN_REASON_FLAG_PLANNED, the reason OpenVMM sends. */
export const SHTDN_REASON_FLAG_PLANNED = 0x80000000;

export type ShutdownKind = 'shutdown' | 'restart' | 'hibernate';

export interface ShutdownMessage {
  readonly reasonCode: number;
  readonly timeoutSeconds: number;
  readonly flags: number;
  /** Text shown to a Windows user; Linux never reads it. */
  readonly message: string;
}

/** The `flags` value for a request (force adds bit 0). */
export function shutdownFlagsFor(kind: ShutdownKind, force: boolean): number {
  const base = kind === 'restart' ? ShutdownFlags.RESTART : kind === 'hibernate' ? ShutdownFlags.HIBERNATE : 0;
  return base | (force ? ShutdownFlags.FORCE : 0);
}

/**
 * How Linux reads `flags`: 0/1 shut down, 2/3 restart, 4/5 hibernate; any other value is
 * an invalid request (E_FAIL). Bit 0 ("force") does not change the action.
 */
export function shutdownKindFromFlags(flags: number): ShutdownKind | undefined {
  switch (flags >>> 0) {
    case 0:
    case 1:
      return 'shutdown';
    case 2:
    case 3:
      return 'restart';
    case 4:
    case 5:
      return 'hibernate';
    default:
      return undefined;
  }
}

/**
 * Encodes the body. The display message is written as NUL-terminated UTF-16LE and cut to
 * fit (its encoding is not documented anywhere we could check; Linux ignores it and
 * OpenVMM sends zeros).
 */
export function encodeShutdownBody(msg: ShutdownMessage): Uint8Array {
  const body = new Uint8Array(SHUTDOWN_BODY_SIZE);
  const view = new DataView(body.buffer);
  view.setUint32(0, msg.reasonCode >>> 0, true);
  view.setUint32(4, msg.timeoutSeconds >>> 0, true);
  view.setUint32(8, msg.flags >>> 0, true);
  const maxUnits = SHUTDOWN_MESSAGE_SIZE / 2 - 1; // keep room for the terminating NUL
  const units = Math.min(msg.message.length, maxUnits);
  for (let i = 0; i < units; i++) view.setUint16(SHUTDOWN_MESSAGE_OFFSET + 2 * i, msg.message.charCodeAt(i), true);
  return body;
}

/** Decodes a body, or undefined when it is shorter than the 2060 bytes Linux insists on. */
export function decodeShutdownBody(body: Uint8Array): ShutdownMessage | undefined {
  if (body.length < SHUTDOWN_BODY_SIZE) return undefined;
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  let message = '';
  for (let i = 0; i < SHUTDOWN_MESSAGE_SIZE / 2; i++) {
    const unit = view.getUint16(SHUTDOWN_MESSAGE_OFFSET + 2 * i, true);
    if (unit === 0) break;
    message += String.fromCharCode(unit);
  }
  return {
    reasonCode: view.getUint32(0, true),
    timeoutSeconds: view.getUint32(4, true),
    flags: view.getUint32(8, true),
    message,
  };
}
