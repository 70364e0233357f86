// What a guest reports through the crash MSRs when it panics (spec 1.4 step 6): Linux
// fills P0-P4 with the panic's error code, its guest OS id, RIP, RAX and RSP, then writes
// CRASH_CTL with the notify bit.

export interface GuestCrash {
  /** CRASH_P0..P4 as the guest left them. */
  p: bigint[];
  /** The guest's own crash text; only with the crash-message capability, which is not offered. */
  message?: string;
}

/** One line for the host's log: Linux's meaning of each parameter. */
export function describeGuestCrash(crash: GuestCrash): string {
  const hex = (v: bigint | undefined) => `0x${(v ?? 0n).toString(16)}`;
  const [code, osId, rip, rax, rsp] = crash.p;
  const text = `guest crashed: error code ${hex(code)}, guest OS id ${hex(osId)}, RIP ${hex(rip)}, RAX ${hex(rax)}, RSP ${hex(rsp)}`;
  return crash.message ? `${text}: ${crash.message}` : text;
}
