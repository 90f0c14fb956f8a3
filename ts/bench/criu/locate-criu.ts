/**
 * Which CRIU `lazy-pages bench --criu` compares against: the PATH given, else $CRIU, else what
 * ../shared/criu/build.sh (beside the package root, in this project's workspace) prints.
 */
import { execFileSync } from 'node:child_process';
import { accessSync, constants, existsSync } from 'node:fs';
import { join, resolve } from 'node:path';

import { UserError } from '../../errors.js';
import { packageRoot } from './compile.js';

export interface CriuBinary {
  path: string;
  /** How it was found: the option, $CRIU, or build.sh. */
  from: string;
  version: string;
}

/** `path --version`'s version ("4.2"), or undefined when it is not a working criu binary. */
export function criuVersion(path: string): string | undefined {
  try {
    accessSync(path, constants.X_OK);
    const out = execFileSync(path, ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 10_000 });
    return /Version:\s*(\S+)/.exec(out)?.[1] ?? out.trim().split('\n')[0];
  } catch {
    return undefined;
  }
}

/** `given`: the --criu value ('' when the flag has no path). Throws one line when there is none. */
export function locateCriu(given: string): CriuBinary {
  const tried: string[] = [];
  const check = (path: string, from: string): CriuBinary => {
    const v = criuVersion(path);
    if (!v) throw new UserError('ENOCRIU', `bench --criu: ${path} (${from}) is not a working criu binary (\`${path} --version\` failed)`);
    return { path, from, version: v };
  };
  if (given) return check(resolve(given), '--criu');
  if (process.env.CRIU) return check(resolve(process.env.CRIU), '$CRIU');
  const script = join(packageRoot, '..', 'shared', 'criu', 'build.sh');
  tried.push(script);
  if (existsSync(script)) {
    let out = '';
    try {
      out = execFileSync('bash', [script], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], timeout: 30 * 60_000 });
    } catch {
      throw new UserError('ENOCRIU', `bench --criu: ${script} failed (see above); pass --criu PATH or set CRIU`);
    }
    const path = out.trim().split('\n').pop() ?? '';
    if (path) return check(path, 'build.sh');
  }
  throw new UserError('ENOCRIU', `bench --criu: no CRIU found: pass --criu PATH or set CRIU=PATH (also tried ${tried.join(', ')})`);
}
