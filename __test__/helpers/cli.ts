/**
 * `lazy-pages daemon` as a child process (the way CRIU users and logrotate meet it), and the restore
 * simulator against it. Every process started here is SIGKILLed by pid in teardown, pass or fail.
 */
import type { ExecutionContext } from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';

import type { Checkpoint } from '../../ts/images/index.js';
import { layoutFor } from '../../ts/sim/layout.js';
import { startSimulator, type SimRun } from '../../ts/sim/run.js';
import { isSimProcess, repoRoot } from './e2e.js';

export const bin = join(repoRoot, 'bin', 'lazy-pages.js');

export interface CliDaemon {
  child: ChildProcess;
  pid: number;
  /** Resolves when the daemon wrote its ready byte on --status-fd; rejects if it exited first. */
  ready: Promise<void>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Everything the daemon wrote on stderr so far (when stderr is 'pipe'). */
  stderr(): string;
}

/**
 * Start `lazy-pages daemon ARGS --status-fd 3`. `umask` runs it under that umask and `sh` after that
 * shell command (through sh, which execs node: the pid stays the same); `node` are extra node
 * options (e.g. `--import` a test hook); `stderr: 'pipe'` collects stderr.
 */
export function startCliDaemon(
  t: ExecutionContext,
  args: string[],
  o: { umask?: string; sh?: string; node?: string[]; env?: NodeJS.ProcessEnv; stderr?: 'pipe' | 'ignore' } = {},
): CliDaemon {
  const argv = [...(o.node ?? []), bin, 'daemon', ...args, '--status-fd', '3'];
  const stdio: ('ignore' | 'pipe')[] = ['ignore', 'ignore', o.stderr ?? 'pipe', 'pipe'];
  const env = o.env ?? process.env;
  const pre = [o.umask === undefined ? undefined : `umask ${o.umask}`, o.sh].filter((x) => x !== undefined);
  const child =
    pre.length === 0
      ? spawn(process.execPath, argv, { stdio, env })
      : spawn('sh', ['-c', `${pre.join(' && ')} && exec "$0" "$@"`, process.execPath, ...argv], { stdio, env });
  const pid = child.pid!;
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  });
  let err = '';
  child.stderr?.on('data', (b: Buffer) => (err += b.toString()));
  child.stderr?.on('error', () => undefined);
  // Resolved once it exited AND its stderr has been read to the end (or 2 s later: a guardian it left
  // may hold the pipe a while): 'exit' can come before the last bytes of stderr (seen in CI).
  const stderrEnded = new Promise<void>((r) => {
    if (!child.stderr) return r();
    child.stderr.once('end', () => r());
    child.stderr.once('close', () => r());
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
    child.once('exit', (code, signal) => {
      void Promise.race([stderrEnded, new Promise((res) => setTimeout(res, 2000))]).then(() => r({ code, signal }));
    }),
  );
  const ready = new Promise<void>((res, rej) => {
    (child.stdio[3] as NodeJS.ReadableStream).once('data', () => res());
    void exited.then(({ code, signal }) => rej(new Error(`daemon exited (${code ?? signal}) before it was ready: ${err}`)));
  });
  ready.catch(() => undefined);
  return { child, pid, ready, exited, stderr: () => err };
}

/** The simulator restoring `ck` against the daemon in `workDir`; it and every process it made are killed in teardown. */
export function startSim(t: ExecutionContext, ck: Checkpoint, workDir: string, args: string[], timeoutSecs = 60): SimRun {
  const layout = layoutFor(ck, workDir);
  const sim = startSimulator(layout, ['--timeout', String(timeoutSecs), ...args]);
  t.teardown(() => {
    sim.kill();
    for (const p of layout.processes) if (isSimProcess(p.pid)) process.kill(p.pid, 'SIGKILL');
  });
  return sim;
}

/** Poll `cond` every 20 ms until it holds; throws after `ms`. */
export async function waitFor(what: string, cond: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

