/**
 * The C side of `lazy-pages bench --criu`: where prog.c (the program dumped and restored) and
 * rusage.c (the daemon's CPU and peak RSS) live, and their gcc builds, cached by source hash.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { UserError } from '../../errors.js';

export { packageRoot } from '../../package-root.js';
import { packageRoot } from '../../package-root.js';

/** The C sources ship in ts/bench/criu/ (package.json "files"); from dist/ and from ts/ alike. */
export function sourcePath(name: 'prog.c' | 'rusage.c'): string {
  return join(packageRoot, 'ts', 'bench', 'criu', name);
}

function cacheRoot(): string {
  return join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'lazy-pages', 'bench-criu');
}

/** gcc -O2 one source into the cache (once per source content); returns the binary's path. */
export function compile(name: 'prog.c' | 'rusage.c'): string {
  const src = sourcePath(name);
  if (!existsSync(src)) throw new UserError('ENOSOURCE', `bench --criu: ${src} is missing (is the package complete?)`);
  // prog.c includes progs.h (shared with the test programs): both make the key.
  const hash = createHash('sha256').update(readFileSync(src)).update(readFileSync(join(dirname(src), 'progs.h'))).digest('hex').slice(0, 16);
  const dir = join(cacheRoot(), hash);
  const bin = join(dir, name.replace(/\.c$/, ''));
  if (existsSync(bin)) return bin;
  mkdirSync(dir, { recursive: true });
  const tmp = `${bin}.${process.pid}.tmp`;
  try {
    execFileSync('gcc', ['-O2', '-Wall', '-o', tmp, src], { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: Buffer };
    if (err.code === 'ENOENT') throw new UserError('ENOGCC', 'bench --criu: gcc not found (it builds the benchmark program; apt-get install gcc)');
    throw new UserError('ENOGCC', `bench --criu: gcc failed on ${src}: ${err.stderr?.toString().trim().split('\n')[0] ?? err.message}`);
  }
  renameSync(tmp, bin);
  return bin;
}
