// Errors from the operating system, typed by errno so callers can tell EAGAIN from EBADF
// without parsing strings.
import os from 'node:os';

// Where two names share a number (EAGAIN/EWOULDBLOCK, ENOTSUP/EOPNOTSUPP) keep the first,
// the one Node itself reports.
const errnoNames = new Map<number, string>();
for (const [name, value] of Object.entries(os.constants.errno)) if (!errnoNames.has(value)) errnoNames.set(value, name);

export class SysError extends Error {
  readonly errno: number;
  readonly code: string;
  readonly call: string;

  constructor(call: string, errno: number) {
    const code = errnoNames.get(errno) ?? `E${errno}`;
    super(`${call} failed: ${code} (errno ${errno})`);
    this.name = 'SysError';
    this.errno = errno;
    this.code = code;
    this.call = call;
  }
}

export const Errno = os.constants.errno;
