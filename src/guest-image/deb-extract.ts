// Unpack a .deb's files (not its maintainer scripts) with dpkg-deb, once.
//
// The tree is unpacked into a temporary sibling and renamed into place with a stamp file
// last, so a crash mid-extraction leaves nothing that looks finished; a second call with
// the stamp present returns at once.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const STAMP = '.enlighten-extracted';

export class DebExtractError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DebExtractError';
  }
}

function dpkgDeb(args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('dpkg-deb', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    child.on('error', (e: NodeJS.ErrnoException) =>
      reject(e.code === 'ENOENT' ? new DebExtractError("unpacking the guest's packages needs dpkg-deb (Debian's dpkg), not found on this host") : e),
    );
    child.on('close', (code) => (code === 0 ? resolve() : reject(new DebExtractError(`dpkg-deb ${args.join(' ')} failed: ${stderr.trim() || `status ${code}`}`))));
  });
}

/** Unpack debPath's files into destDir (created); returns destDir. Idempotent via a stamp file holding the .deb's name. */
export async function extractDeb(debPath: string, destDir: string): Promise<string> {
  const stamp = path.join(destDir, STAMP);
  const want = path.basename(debPath);
  try {
    if ((await fs.promises.readFile(stamp, 'utf8')).trim() === want) return destDir;
  } catch {
    // not extracted yet
  }
  await fs.promises.mkdir(path.dirname(destDir), { recursive: true });
  const staging = await fs.promises.mkdtemp(`${destDir}.partial-`);
  try {
    await dpkgDeb(['-x', debPath, staging]);
    await fs.promises.writeFile(path.join(staging, STAMP), `${want}\n`);
    await fs.promises.rm(destDir, { recursive: true, force: true });
    await fs.promises.rename(staging, destDir);
  } catch (e) {
    await fs.promises.rm(staging, { recursive: true, force: true });
    throw e;
  }
  return destDir;
}

/** True for the stamp file extractDeb adds (so callers copying the tree can skip it). */
export function isExtractStamp(name: string): boolean {
  return name === STAMP;
}
