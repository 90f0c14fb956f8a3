/**
 * Where the native programs that ship with the addon are: `restore-sim` (the restore simulator
 * behind `demo` and `bench`) and `lazy-pages-guardian`. They sit next to the addon: in `native/` of
 * a source checkout (`npm run build` copies them there), or in the platform package npm installed
 * (lazy-pages-linux-x64-gnu, ...), which carries all three.
 */
import { accessSync, constants } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

import { packageRoot } from '../package-root.js';

const PLATFORMS = ['linux-x64-gnu', 'linux-x64-musl', 'linux-arm64-gnu', 'linux-arm64-musl'];

/** The directories a native program may be in, in the order they are tried. */
export function nativeDirs(): string[] {
  const dirs = [join(packageRoot, 'native')];
  const req = createRequire(join(packageRoot, 'package.json'));
  for (const p of PLATFORMS) {
    try {
      dirs.push(dirname(req.resolve(`lazy-pages-${p}/package.json`)));
    } catch {
      /* not installed: another platform's package */
    }
  }
  dirs.push(join(packageRoot, 'target', 'release'));
  return dirs;
}

/** The first executable `name` in {@link nativeDirs}, or undefined with the places looked at. */
export function findNativeExecutable(name: string): { path?: string; tried: string[] } {
  const tried = nativeDirs().map((d) => join(d, name));
  for (const p of tried) {
    try {
      accessSync(p, constants.X_OK);
      return { path: p, tried };
    } catch {
      /* next */
    }
  }
  return { tried };
}
