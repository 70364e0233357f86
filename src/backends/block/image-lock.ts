// Keeps two VMs (or a VM and an image tool that honours locks) from corrupting one disk
// image: a read-write opener takes an exclusive lock, read-only openers a shared one.
// Locks are open-file-description locks (F_OFD_SETLK): they conflict between two opens in
// one process too, and closing some other fd of the file does not drop them, unlike
// classic POSIX record locks. Where OFD locks are unavailable, flock() does the same job.
import { Errno } from '../../sys/errors.js';
import { F_RDLCK, F_UNLCK, F_WRLCK, flock, LOCK_EX, LOCK_NB, LOCK_SH, LOCK_UN, ofdSetLock } from '../../sys/file.js';

export type ImageLockMode = 'shared' | 'exclusive';

/** The image is locked by someone else; says which image and what to do. */
export class ImageInUseError extends Error {
  readonly code = 'EIMAGEINUSE';
  constructor(readonly path: string, readonly mode: ImageLockMode) {
    super(
      mode === 'exclusive'
        ? `disk image '${path}' is in use: another VM or process has it open (locked); stop it first, or open the image read-only if the other user only reads it`
        : `disk image '${path}' is in use: another VM or process has it open read-write (locked); stop it first`,
    );
    this.name = 'ImageInUseError';
  }
}

/** The system refused the lock for another reason than contention. */
export class ImageLockError extends Error {
  constructor(readonly path: string, readonly errno: number) {
    super(`cannot lock disk image '${path}': errno ${errno}`);
    this.name = 'ImageLockError';
  }
}

export interface ImageLock {
  readonly path: string;
  readonly mode: ImageLockMode;
  /** Drops the lock (closing the fd does too). Idempotent. */
  release(): void;
}

/**
 * Locks the whole image open at fd: exclusive for read-write use (fd must be writable),
 * shared for read-only use. Throws ImageInUseError when another open holds a
 * conflicting lock.
 */
export function lockImage(fd: number, path: string, mode: ImageLockMode): ImageLock {
  const r = ofdSetLock(fd, mode === 'exclusive' ? F_WRLCK : F_RDLCK);
  if (r === 0) return new HeldLock(fd, path, mode, 'ofd');
  if (r === -Errno.EAGAIN || r === -Errno.EACCES) throw new ImageInUseError(path, mode);
  if (r !== -Errno.EINVAL && r !== -Errno.ENOLCK && r !== -Errno.EOPNOTSUPP) throw new ImageLockError(path, -r);
  // No OFD locks on this kernel or filesystem: flock locks are per open file description as well.
  const f = flock(fd, (mode === 'exclusive' ? LOCK_EX : LOCK_SH) | LOCK_NB);
  if (f === 0) return new HeldLock(fd, path, mode, 'flock');
  if (f === -Errno.EWOULDBLOCK || f === -Errno.EAGAIN) throw new ImageInUseError(path, mode);
  throw new ImageLockError(path, -f);
}

class HeldLock implements ImageLock {
  private held = true;

  constructor(private readonly fd: number, readonly path: string, readonly mode: ImageLockMode, private readonly kind: 'ofd' | 'flock') {}

  release(): void {
    if (!this.held) return;
    this.held = false;
    if (this.kind === 'ofd') ofdSetLock(this.fd, F_UNLCK);
    else flock(this.fd, LOCK_UN);
  }
}
