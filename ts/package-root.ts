/**
 * The package's root directory: the nearest directory above this module whose package.json is
 * lazy-pages'. Found by walking up rather than by a fixed `../..`, so the same answer holds for the
 * TypeScript sources (tests), the compiled dist/ tree and the bundled CLI (dist/cli.bundle.cjs).
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const packageRoot: string = (() => {
  let d = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pj = join(d, 'package.json');
    if (existsSync(pj)) {
      try {
        if ((JSON.parse(readFileSync(pj, 'utf8')) as { name?: string }).name === 'lazy-pages') return d;
      } catch {
        /* not ours */
      }
    }
    const up = dirname(d);
    if (up === d) throw new Error(`lazy-pages: cannot find the package root above ${fileURLToPath(import.meta.url)}`);
    d = up;
  }
})();

/** True when running from the TypeScript sources (tests under tsx), false from dist/ or the bundle. */
export const fromSources: boolean = import.meta.url.endsWith('.ts');
