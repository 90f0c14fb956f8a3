/**
 * End-to-end harness: a synthetic (or real) checkpoint, our daemon, and the restore simulator
 * playing `criu restore --lazy-pages` against it with real userfaultfds. Every process a test
 * starts is killed by pid in teardown, pass or fail.
 */
import type { ExecutionContext } from 'ava';
import { readFileSync } from 'node:fs';

import { startLazyPagesDaemon, type DaemonOptions, type LazyPagesDaemon } from '../../ts/daemon/daemon.js';
import type { DaemonEvent, DaemonSummary } from '../../ts/daemon/events.js';
import type { Checkpoint } from '../../ts/images/index.js';
import { tempDir } from './common.js';
import { layoutFor, type SimLayout } from '../../ts/sim/layout.js';
import { startSimulator, type SimReport } from '../../ts/sim/run.js';

export { fixturesDir, repoRoot, synth, tempDir } from './common.js';

export interface RestoreResult {
  summary?: DaemonSummary;
  daemonError?: Error;
  events: DaemonEvent[];
  sim: { code: number | null; report?: SimReport; stderr: string };
}

/** Restore `ck` lazily with our daemon and the simulator running `simArgs`; both are always ended. */
export async function restore(
  t: ExecutionContext,
  ck: Checkpoint,
  simArgs: string[],
  o: { daemon?: Partial<DaemonOptions>; layout?: (l: SimLayout) => SimLayout; during?: (d: LazyPagesDaemon, simPid: number) => void | Promise<void> } = {},
): Promise<RestoreResult> {
  const workDir = tempDir(t, 'lazy-wd-');
  const events: DaemonEvent[] = [];
  const d = await startLazyPagesDaemon({ imagesDir: ck.dir, workDir, onEvent: (e) => events.push(e), ...o.daemon });
  t.teardown(() => d.close('test ended'));
  let layout = layoutFor(ck, workDir);
  if (o.layout) layout = o.layout(layout);
  const sim = startSimulator(layout, ['--timeout', '100', ...simArgs]);
  t.teardown(() => {
    sim.kill();
    // Only processes the simulator made: a pid it could not get may belong to anyone (even ava).
    for (const p of layout.processes) if (isSimProcess(p.pid)) process.kill(p.pid, 'SIGKILL');
  });
  if (o.during) await o.during(d, sim.pid);
  let summary: DaemonSummary | undefined;
  let daemonError: Error | undefined;
  const [res] = await Promise.all([
    sim.result,
    d.done.then(
      (s) => (summary = s),
      (e: Error) => {
        daemonError = e;
      },
    ),
  ]);
  return { summary, daemonError, events, sim: res };
}

/** A readable failure message for a simulator run. */
export function simFailure(r: RestoreResult): string {
  return `sim exit ${r.sim.code}; stderr: ${r.sim.stderr.trim()}; daemon: ${r.daemonError?.message ?? 'ok'}; report: ${JSON.stringify(r.sim.report)?.slice(0, 2000)}`;
}

/** Is `pid` a process of the restore simulator (its command name)? */
export function isSimProcess(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim().startsWith('restore-sim');
  } catch {
    return false;
  }
}
