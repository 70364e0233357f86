// Where enlighten keeps what it downloads and builds (Debian packages, their extracted
// trees, initramfs images): one directory, so a second run works offline and a user can
// delete it all with one command.
import os from 'node:os';
import path from 'node:path';

/** $ENLIGHTEN_CACHE, else $XDG_CACHE_HOME/enlighten, else ~/.cache/enlighten. */
export function cacheDir(env: NodeJS.ProcessEnv = process.env): string {
  // An empty variable counts as unset, as the XDG base directory spec asks.
  if (env.ENLIGHTEN_CACHE) return path.resolve(env.ENLIGHTEN_CACHE);
  if (env.XDG_CACHE_HOME && path.isAbsolute(env.XDG_CACHE_HOME)) return path.join(env.XDG_CACHE_HOME, 'enlighten');
  return path.join(os.homedir(), '.cache', 'enlighten');
}

/** A subdirectory of the cache (debs, extract, initramfs). */
export function cachePath(sub: string, env: NodeJS.ProcessEnv = process.env): string {
  return path.join(cacheDir(env), sub);
}
