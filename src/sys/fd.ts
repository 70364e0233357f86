import { check, raw } from './libc.js';

export function closeFd(fd: number): void {
  check('close', raw.close(fd) as number);
}
