// How long a VM may take to stop once asked: the guest gets a bounded grace period after a
// shutdown request, and without one it may run for as long as it likes.

/**
 * Resolves with `exit` once the guest stops; once `shuttingDown()` turns true, waits at
 * most `graceMs` more and then resolves with `late` instead.
 */
export async function exitWithGrace<T>(exit: Promise<T>, shuttingDown: () => boolean, graceMs: number, late: () => T): Promise<T> {
  for (;;) {
    const tick = new Promise<null>((resolve) => setTimeout(() => resolve(null), 500).unref());
    const first = await Promise.race([exit, tick]);
    if (first !== null) return first;
    if (shuttingDown()) {
      const result = await Promise.race([exit, new Promise<null>((resolve) => setTimeout(() => resolve(null), graceMs).unref())]);
      return result ?? late();
    }
  }
}
