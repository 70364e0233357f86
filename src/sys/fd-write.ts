// Blocking, complete writes to a file descriptor from any thread. A vCPU worker that
// prints guest console output cannot use process.stdout: in a worker it is a stream
// relayed through the main thread, which may itself be busy or blocked. write(2) on the
// fd goes straight to the terminal or pipe.
import { Errno, SysError } from './errors.js';
import { errno, libc } from './libc.js';

const fn = {
  write: libc.func('intptr_t write(int fd, const uint8_t *buf, size_t count)'),
  poll: libc.func('int poll(_Inout_ uint8_t *fds, unsigned long nfds, int timeout)'),
} as const;

const POLLOUT = 0x004;
/** How long one poll waits for room before trying again (a reader may have gone quiet, not away). */
const POLL_TIMEOUT_MS = 100;

/**
 * Writes all of `bytes` to `fd`, in order. Partial writes continue where they stopped;
 * EINTR retries; EAGAIN (the fd is non-blocking, as Node leaves pipes and TTYs it shares)
 * waits in poll(2) until the fd is writable. Any other error throws a SysError (EPIPE when
 * the reader is gone).
 */
export function writeAllSync(fd: number, bytes: Uint8Array): void {
  let done = 0;
  let pollfd: Uint8Array | null = null;
  while (done < bytes.length) {
    const rest = bytes.subarray(done);
    const n = Number(fn.write(fd, rest, rest.length));
    if (n > 0) {
      done += n;
      continue;
    }
    if (n === 0) throw new SysError('write', Errno.EIO);
    const e = errno();
    if (e === Errno.EINTR) continue;
    if (e !== Errno.EAGAIN) throw new SysError('write', e);
    pollfd ??= new Uint8Array(8);
    waitWritable(fd, pollfd);
  }
}

/** struct pollfd { int fd; short events; short revents; } */
function waitWritable(fd: number, pollfd: Uint8Array): void {
  const view = new DataView(pollfd.buffer, pollfd.byteOffset, pollfd.byteLength);
  view.setInt32(0, fd, true);
  view.setInt16(4, POLLOUT, true);
  view.setInt16(6, 0, true);
  const r = fn.poll(pollfd, 1, POLL_TIMEOUT_MS) as number;
  // EINTR and timeouts both just lead back to write(), which tells the truth; POLLERR or
  // POLLHUP in revents also lead there, and write() then reports the error itself.
  if (r === -1 && errno() !== Errno.EINTR) throw new SysError('poll', errno());
}
