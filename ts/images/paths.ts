/**
 * Opening files of an images dir safely: every image file must stay inside its dir after
 * symlinks are resolved, so a crafted image set cannot make the daemon read (and serve to a
 * restored process) arbitrary files of this host.
 */
import { realpathSync, statSync } from 'node:fs';
import path from 'node:path';
import { ImageError } from './errors.js';

/** Resolves the images dir itself (it may be reached through symlinks). */
export function realDir(dir: string): string {
  let real: string;
  try {
    real = realpathSync(dir);
  } catch (e) {
    throw new ImageError(dir, 0, `images dir cannot be opened (${(e as NodeJS.ErrnoException).code ?? e})`, { cause: e });
  }
  if (!statSync(real).isDirectory()) throw new ImageError(dir, 0, 'not a directory');
  return real;
}

/**
 * Absolute path of `name` inside `dir` (already real), or undefined when it does not exist.
 * Throws when the name, or a symlink it is, leads outside `dir`.
 */
export function imageFile(dir: string, name: string): string | undefined {
  const p = path.join(dir, name);
  if (path.dirname(p) !== dir) throw new ImageError(p, 0, 'path leads outside the images dir');
  let real: string;
  try {
    real = realpathSync(p);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    throw new ImageError(p, 0, `cannot open (${code ?? e})`, { cause: e });
  }
  if (path.dirname(real) !== dir) throw new ImageError(p, 0, `symlink leads outside the images dir (to ${real})`);
  return real;
}

/** Like imageFile, but the file must exist. */
export function requireImageFile(dir: string, name: string, why: string): string {
  const f = imageFile(dir, name);
  if (!f) throw new ImageError(path.join(dir, name), 0, `file is missing (${why})`);
  return f;
}
