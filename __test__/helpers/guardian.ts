/**
 * Killing the daemon mid-restore: `lazy-pages daemon` as a child process (so a test can SIGKILL it),
 * its guardian found by pid, and the restore simulator against it. Every process started here
 * (daemon, guardian, simulator and its restored processes) is SIGKILLed by pid in teardown.
 */
import type { ExecutionContext } from 'ava';
import type { ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

import type { Checkpoint } from '../../ts/images/index.js';
import type { SimRun } from '../../ts/sim/run.js';
import { startCliDaemon, startSim as startCliSim } from './cli.js';

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The pid of the guardian started by daemon `daemonPid` (its command line names the daemon). */
export function guardianOf(daemonPid: number): number | undefined {
  const want = `lazy-pages-guardian\0--daemon-pid\0${daemonPid}\0`;
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      if (readFileSync(`/proc/${e}/cmdline`, 'utf8').includes(want)) return Number(e);
    } catch {
      /* gone meanwhile */
    }
  }
  return undefined;
}

/** Is `pid` a live (not zombie) process? */
export function alive(pid: number): boolean {
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return st.slice(st.lastIndexOf(')') + 2, st.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/** Waits until `cond` holds, at most `ms`; returns whether it did. */
export async function until(cond: () => boolean, ms: number, step = 20): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (cond()) return true;
    await sleep(step);
  }
  return cond();
}

/** SIGKILL `pid` in teardown if it is still `what` (checked by `still`, so a reused pid is spared). */
export function killInTeardown(t: ExecutionContext, pid: number, still: () => boolean): void {
  t.teardown(() => {
    if (!still()) return;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  });
}

export interface DaemonProc {
  child: ChildProcess;
  pid: number;
  guardian: number;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stderr(): string;
}

/**
 * `lazy-pages daemon -D ck -W wd --no-background -v4` (plus `args`), ready (its --status-fd byte
 * came) and with its guardian found. `node` are extra node options (e.g. `--import` a test hook);
 * `sh` runs it through `sh -c '<sh>; exec node …'` (the pid stays the daemon's).
 */
export async function startDaemon(
  t: ExecutionContext,
  ck: Checkpoint,
  wd: string,
  o: { args?: string[]; node?: string[]; sh?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<DaemonProc> {
  const d = startCliDaemon(t, ['-D', ck.dir, '-W', wd, '--no-background', '-v4', ...(o.args ?? [])], { node: o.node, sh: o.sh, env: o.env });
  await d.ready;
  // The guardian is started before the socket listens, so before the ready byte.
  const guardian = guardianOf(d.pid);
  if (guardian === undefined) throw new Error(`no guardian process names daemon ${d.pid}`);
  killInTeardown(t, guardian, () => guardianOf(d.pid) === guardian);
  return { child: d.child, pid: d.pid, guardian, exited: d.exited, stderr: d.stderr };
}

/** The simulator restoring `ck` against the daemon in `wd` (40 s limit); it and its processes die in teardown. */
export function startSim(t: ExecutionContext, ck: Checkpoint, wd: string, args: string[]): SimRun {
  return startCliSim(t, ck, wd, args, 40);
}

/** Every process of a finished simulator run either verified every byte or was SIGKILLed; none read a wrong byte. */
export function noneReadAWrongByte(r: Awaited<SimRun['result']>): { ok: boolean; killed: number; completed: number; why: string } {
  const procs = r.report?.processes ?? [];
  let killed = 0;
  let completed = 0;
  const bad: string[] = [];
  for (const p of procs) {
    if ((p.badPages ?? 0) > 0) bad.push(`pid ${p.pid} read ${p.badPages} wrong pages (first ${JSON.stringify(p.firstBad)})`);
    else if (p.killedBySignal === 9) killed++;
    else if (p.ok) completed++;
    else bad.push(`pid ${p.pid} neither completed nor was SIGKILLed: ${JSON.stringify(p)}`);
  }
  // Exit 1 is a wrong byte or a failed workload; 4 a timeout (a process left blocked for ever).
  if (r.code === 1 || r.code === 4) bad.push(`simulator exit ${r.code}: ${r.stderr.trim()}`);
  return { ok: bad.length === 0, killed, completed, why: bad.join('; ') };
}
