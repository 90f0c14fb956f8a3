/**
 * The benchmark program (prog.c) from the outside: start it so that CRIU can dump it, tell a
 * restored copy to go on, and read what it measured. Any wrong word fails the run, loudly.
 */
import { closeSync, existsSync, openSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { UserError } from '../../errors.js';
import type { Procs, Tracked } from './procs.js';

export type Shape = 'single' | 'tree';

export interface ProgramSpec {
  bin: string;
  shape: Shape;
  size: number;
  touches: number;
  patternSeed: number;
}

export interface Started {
  main: Tracked;
  /** Every pid of the tree, root first (what `ready` says). */
  pids: number[];
}

/** What one process of the restored program reported (result-ROLE), plus its raw touch latencies. */
export interface ProcessResult {
  role: number;
  fields: Record<string, string>;
  latUs: Float64Array;
  /** Per touch: 1 if that load faulted. */
  faulted: Uint8Array;
}

/** A run that went wrong (a wrong word, a daemon or CRIU failing, a timeout): one line, exit code 1. */
export class BenchFailure extends UserError {
  constructor(readonly detail: string) {
    super('EBENCH', `bench --criu: ${detail}`);
  }
}

/** The reason of any error, without the "bench --criu: " of a BenchFailure (to wrap it again). */
export function reason(e: unknown): string {
  return e instanceof BenchFailure ? e.detail : e instanceof Error ? e.message : String(e);
}

const roles = (shape: Shape) => (shape === 'tree' ? [0, 1, 2] : [0]);

async function until(cond: () => boolean, timeoutMs: number, what: string, died?: () => string | undefined): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    const why = died?.();
    if (why) throw new BenchFailure(`${what}: ${why}`);
    if (Date.now() > end) throw new BenchFailure(`${what}: timed out after ${(timeoutMs / 1000).toFixed(0)} s`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Starts the program in its own session (as `setsid prog </dev/null >out 2>err`) and waits until its memory holds the pattern. */
export async function startProgram(procs: Procs, spec: ProgramSpec, dir: string): Promise<Started> {
  const out = openSync(join(dir, 'out'), 'w');
  const err = openSync(join(dir, 'err'), 'w');
  let main: Tracked;
  try {
    main = procs.spawn('program', spec.bin, [dir, spec.shape, String(spec.size), String(spec.touches), String(spec.patternSeed)], {
      detached: true,
      stdio: ['ignore', out, err],
    });
  } finally {
    closeSync(out);
    closeSync(err);
  }
  const ready = join(dir, 'ready');
  const died = () => (main.exit ? `the program exited (${main.exit.code ?? main.exit.signal}): ${tail(join(dir, 'err'))}` : undefined);
  try {
    await until(() => existsSync(ready), 60_000 + (spec.size / (8 << 20)) * 1000, 'the program did not get ready', died);
  } catch (e) {
    await procs.stop(main, 0);
    throw e;
  }
  const pids = readFileSync(ready, 'utf8').trim().split(/\s+/).map(Number);
  for (const pid of pids.slice(1)) procs.adopt(pid);
  return { main, pids };
}

/** Lets a restored program go on, with the touch seed of this run (same seed for both daemons of a pair). */
export function writeGo(dir: string, touchSeed: number): void {
  // write + rename: the program polls for the name and reads it at once
  writeFileSync(join(dir, 'go.tmp'), `${touchSeed}\n`);
  renameSync(join(dir, 'go.tmp'), join(dir, 'go'));
}

/** Removes the results of an earlier restore (one dump is restored many times). */
export function clearResults(dir: string): void {
  for (const f of readdirSync(dir)) if (/^(result|lat-|faulted-)/.test(f)) rmSync(join(dir, f), { force: true });
}

/**
 * Reads every process's result; throws a BenchFailure on anything but a clean run: a process that
 * did not report, a wrong word, a result from before `notBeforeWallNs` (CLOCK_REALTIME: not the restored copy).
 */
export function readResults(dir: string, shape: Shape, notBeforeWallNs: bigint): ProcessResult[] {
  const res: ProcessResult[] = [];
  const problems: string[] = [];
  for (const role of roles(shape)) {
    const f = join(dir, `result-${role}`);
    if (!existsSync(f)) {
      problems.push(shape === 'tree' ? `process ${role} of the tree wrote no result` : 'the program wrote no result');
      continue;
    }
    const fields = Object.fromEntries(
      readFileSync(f, 'utf8')
        .split('\n')
        .filter((l) => l.includes('='))
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
    );
    if (BigInt(fields.resumed_wall_ns ?? '0') < notBeforeWallNs) problems.push(`process ${role}: its result predates the restore`);
    if (fields.wrong_words !== '0') problems.push(`process ${role} (pid ${fields.pid}): ${fields.wrong_words} WRONG WORDS, first: ${fields.first_wrong}`);
    const raw = readFileSync(join(dir, `lat-${role}.bin`));
    const latUs = new Float64Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
    const faulted = new Uint8Array(readFileSync(join(dir, `faulted-${role}.bin`)));
    if (latUs.length !== Number(fields.touches) || faulted.length !== latUs.length) problems.push(`process ${role}: ${latUs.length} latencies for ${fields.touches} touches`);
    res.push({ role, fields, latUs, faulted });
  }
  const root = join(dir, 'result');
  const verdict = existsSync(root) ? readFileSync(root, 'utf8').trim() : '(no result file)';
  if (verdict !== 'ok') problems.push(`the program's verdict: ${verdict}${tail(join(dir, 'err')) ? `; stderr: ${tail(join(dir, 'err'))}` : ''}`);
  if (problems.length) throw new BenchFailure(`the restored program failed: ${problems.join('; ')}`);
  return res;
}

/** The last non-empty line of a file ('' if none). */
export function tail(file: string, lines = 1): string {
  try {
    return readFileSync(file, 'utf8').trim().split('\n').slice(-lines).join(' | ');
  } catch {
    return '';
  }
}
