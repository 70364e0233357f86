// Hypercall status codes (TLFS), as the guest sees them in RAX.
export const HvStatus = {
  Success: 0x0000,
  InvalidHypercallCode: 0x0002,
  InvalidHypercallInput: 0x0003,
  InvalidAlignment: 0x0004,
  InvalidParameter: 0x0005,
  AccessDenied: 0x0006,
  InvalidPortId: 0x0011,
  InvalidConnectionId: 0x0012,
  InsufficientBuffers: 0x0013,
} as const;
export type HvStatus = (typeof HvStatus)[keyof typeof HvStatus];
