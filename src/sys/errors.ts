// Errors from the operating system, typed by errno so callers can tell EAGAIN from EBADF
// without parsing strings.
import os from 'node:os';

const errnoNames = new Map<number, string>(
  Object.entries(os.constants.errno).map(([name, value]) => [value, name]),
);

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
