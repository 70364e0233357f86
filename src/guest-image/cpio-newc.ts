// A writer for the "newc" cpio format (magic 070701), the one format the Linux kernel
// unpacks as an initramfs.
//
// Each entry is a 110-byte ASCII header (magic + 13 fields of 8 hex digits), the path and
// a NUL padded to a multiple of 4 bytes, then the data padded to 4. The archive ends with
// an entry named TRAILER!!!. uid, gid and mtime are always 0 and inode numbers count up
// from 1 in the order entries are added, so the same inputs give the same bytes.
//
// The kernel does not create missing parent directories, so the writer adds each parent
// (0755) the first time a path under it appears. Output streams to a file: a regular file
// entry can be a path on the host that is copied in chunks, never held whole in memory.
import fs from 'node:fs';

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;
const HEADER_SIZE = 110;
const FLUSH_AT = 1 << 20;
const TRAILER = 'TRAILER!!!';

export class CpioError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CpioError';
  }
}

/** A regular file's content: bytes, or a host file streamed into the archive. */
export type FileContent = Uint8Array | { hostPath: string };

function hex8(n: number): string {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new CpioError(`cpio field value ${n} does not fit in 32 bits`);
  return n.toString(16).padStart(8, '0');
}

const pad4 = (n: number) => (4 - (n % 4)) % 4;

/** "/usr//bin/./x" -> "usr/bin/x"; rejects empty names, '..' and NUL. */
export function normalizeArchivePath(p: string): string {
  if (p.includes('\0')) throw new CpioError(`archive path contains NUL: ${JSON.stringify(p)}`);
  const parts = p.split('/').filter((s) => s !== '' && s !== '.');
  if (parts.length === 0) throw new CpioError(`empty archive path: ${JSON.stringify(p)}`);
  if (parts.includes('..')) throw new CpioError(`archive path must not contain '..': ${p}`);
  return parts.join('/');
}

export class CpioNewcWriter {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private nextInode = 1;
  private readonly directories = new Set<string>();
  private readonly others = new Set<string>();
  private finished = false;

  private constructor(
    private readonly handle: fs.promises.FileHandle,
    readonly outputPath: string,
  ) {}

  /** Creates (truncates) `file` for writing. */
  static async create(file: string): Promise<CpioNewcWriter> {
    return new CpioNewcWriter(await fs.promises.open(file, 'w', 0o644), file);
  }

  async directory(path: string, mode = 0o755): Promise<void> {
    const name = normalizeArchivePath(path);
    if (this.directories.has(name)) return;
    if (this.others.has(name)) throw new CpioError(`${name} is already in the archive as a non-directory`);
    await this.parents(name);
    this.directories.add(name);
    this.header(name, S_IFDIR | (mode & 0o7777), 0, 2, 0, 0);
    await this.maybeFlush();
  }

  async file(path: string, content: FileContent, mode = 0o644): Promise<void> {
    const name = await this.claim(path);
    if (content instanceof Uint8Array) {
      this.header(name, S_IFREG | (mode & 0o7777), content.length, 1, 0, 0);
      this.push(Buffer.from(content.buffer, content.byteOffset, content.byteLength));
      this.push(Buffer.alloc(pad4(content.length)));
      await this.maybeFlush();
      return;
    }
    const source = await fs.promises.open(content.hostPath, 'r');
    try {
      const size = (await source.stat()).size;
      this.header(name, S_IFREG | (mode & 0o7777), size, 1, 0, 0);
      await this.flush();
      const chunk = Buffer.alloc(Math.min(FLUSH_AT, Math.max(size, 1)));
      let copied = 0;
      while (copied < size) {
        const { bytesRead } = await source.read(chunk, 0, Math.min(chunk.length, size - copied), copied);
        if (bytesRead === 0) throw new CpioError(`${content.hostPath} shrank while being archived`);
        await this.write(chunk.subarray(0, bytesRead));
        copied += bytesRead;
      }
      this.push(Buffer.alloc(pad4(size)));
    } finally {
      await source.close();
    }
  }

  async symlink(path: string, target: string): Promise<void> {
    const name = await this.claim(path);
    const data = Buffer.from(target, 'utf8');
    if (data.length === 0 || target.includes('\0')) throw new CpioError(`bad symlink target for ${name}: ${JSON.stringify(target)}`);
    this.header(name, S_IFLNK | 0o777, data.length, 1, 0, 0);
    this.push(data);
    this.push(Buffer.alloc(pad4(data.length)));
    await this.maybeFlush();
  }

  async device(path: string, kind: 'char' | 'block', major: number, minor: number, mode = 0o600): Promise<void> {
    const name = await this.claim(path);
    this.header(name, (kind === 'char' ? S_IFCHR : S_IFBLK) | (mode & 0o7777), 0, 1, major, minor);
    await this.maybeFlush();
  }

  /** Writes the trailer and closes the file. */
  async finish(): Promise<void> {
    if (this.finished) return;
    this.header(TRAILER, 0, 0, 1, 0, 0, 0);
    // Pad the archive to 512 bytes, as GNU cpio does, so tools reading in blocks see a clean end.
    const total = (await this.handle.stat()).size + this.pendingBytes;
    this.push(Buffer.alloc((512 - (total % 512)) % 512));
    await this.flush();
    this.finished = true;
    await this.handle.close();
  }

  /** Closes the file without finishing it (after an error; the caller deletes it). */
  async abort(): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    await this.handle.close();
  }

  private async claim(path: string): Promise<string> {
    if (this.finished) throw new CpioError('archive already finished');
    const name = normalizeArchivePath(path);
    if (name === TRAILER) throw new CpioError(`${TRAILER} is reserved`);
    if (this.directories.has(name) || this.others.has(name)) throw new CpioError(`${name} is already in the archive`);
    await this.parents(name);
    this.others.add(name);
    return name;
  }

  private async parents(name: string): Promise<void> {
    const parts = name.split('/');
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join('/');
      if (this.others.has(dir)) throw new CpioError(`${dir} is in the archive as a non-directory, so ${name} cannot be under it`);
      if (!this.directories.has(dir)) {
        this.directories.add(dir);
        this.header(dir, S_IFDIR | 0o755, 0, 2, 0, 0);
      }
    }
  }

  private header(name: string, mode: number, size: number, nlink: number, rdevMajor: number, rdevMinor: number, inode = this.nextInode++): void {
    const nameBytes = Buffer.from(`${name}\0`, 'utf8');
    const fields = [inode, mode, 0, 0, nlink, 0, size, 0, 0, rdevMajor, rdevMinor, nameBytes.length, 0];
    this.push(Buffer.from(`070701${fields.map(hex8).join('')}`, 'latin1'));
    this.push(nameBytes);
    this.push(Buffer.alloc(pad4(HEADER_SIZE + nameBytes.length)));
  }

  private push(b: Buffer): void {
    if (b.length === 0) return;
    this.pending.push(b);
    this.pendingBytes += b.length;
  }

  private async maybeFlush(): Promise<void> {
    if (this.pendingBytes >= FLUSH_AT) await this.flush();
  }

  private async flush(): Promise<void> {
    if (this.pendingBytes === 0) return;
    const data = Buffer.concat(this.pending, this.pendingBytes);
    this.pending = [];
    this.pendingBytes = 0;
    await this.write(data);
  }

  private async write(data: Uint8Array): Promise<void> {
    let done = 0;
    while (done < data.length) done += (await this.handle.write(data, done, data.length - done)).bytesWritten;
  }
}
