// Signals aimed at one thread, the way a vCPU thread blocked in KVM_RUN is woken: KVM_RUN
// returns EINTR when a signal with a handler arrives. Without a handler the default action
// of SIGUSR2 would kill the whole process, so the handler must exist before the first kick.
import { isMainThread } from 'node:worker_threads';
import { check, libc, raw } from './libc.js';

/** SIGUSR2: Node leaves it free (the inspector takes SIGUSR1). */
export const KICK_SIGNAL = 12;

const sys = {
  tgkill: libc.func('int tgkill(int tgid, int tid, int sig)'),
} as const;

/** The kernel thread id of the calling thread (what signalThread targets). */
export function currentThreadId(): number {
  return Number(raw.gettid() as number | bigint);
}

/** Sends `signal` to one thread of this process. */
export function signalThread(tid: number, signal: number): void {
  check('tgkill', sys.tgkill(raw.getpid() as number, tid, signal) as number);
}

let kickHandlerInstalled = false;
const ignoreKick = (): void => {};

/**
 * Gives KICK_SIGNAL a handler that does nothing. Signal dispositions are per process, so
 * one call from the main thread covers every vCPU worker (Node does not install signal
 * handlers for listeners added in a worker, hence the main-thread rule). Node's listener
 * handle is unreferenced: it never keeps the process alive. Idempotent.
 */
export function installKickHandler(): void {
  if (kickHandlerInstalled) return;
  if (!isMainThread) throw new Error('installKickHandler() must run on the main thread (signal handlers are per process and Node installs them only there)');
  process.on('SIGUSR2', ignoreKick);
  kickHandlerInstalled = true;
}
