// What the device tests (StorVSP, NetVSP) share when they drive a device over fake
// channels: guest pages handed out in order and a polling wait. No side effects on import
// (the test runner loads this file too).

/**
 * Hands out guest page numbers in order from page 16 up, wrapping around at `ramPages`;
 * tests never free them (RAM is plenty for what one test holds at a time).
 */
export function pageCursor(ramPages: number): (n: number) => number {
  let next = 16;
  return (n) => {
    if (next + n > ramPages) next = 16;
    const first = next;
    next += n;
    return first;
  };
}

/** Resolves once cond() holds; rejects after timeoutMs. */
export async function waitFor(cond: () => boolean, what: string, timeoutMs = 3000): Promise<void> {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}
