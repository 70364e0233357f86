// Starting an iperf3 client against a one-off server started a moment before. iperf3 3.12
// (Debian 12) with -J exits 0 when the connection is refused, its JSON holding only
// "error": a client that ran before the server listened looks like a success with no
// result. So the client is retried while the answer says the connection was refused.
import { runInNetns, type RunResult } from '../../src/sys/netns.js';

/** Runs `iperf3 <args>` in netns until it is not refused (or timeoutMs has passed); returns the last run. */
export async function iperf3Client(netns: string, args: readonly string[], timeoutMs = 10_000, runTimeoutMs = 60_000): Promise<RunResult> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await runInNetns(netns, ['iperf3', ...args], runTimeoutMs);
    if (!/connection refused/i.test(r.stdout + r.stderr) || Date.now() > deadline) return r;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
