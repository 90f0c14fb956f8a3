/** What every end-to-end test needs: the repo's paths, temp dirs and checkpoints removed in teardown,
 * and child processes killed by pid in teardown, pass or fail. */
import type { ExecutionContext } from 'ava';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { Checkpoint, writeSyntheticCheckpoint } from '../../ts/images/index.js';

export const repoRoot = join(import.meta.dirname ?? new URL('.', import.meta.url).pathname, '..', '..');
/** Real checkpoints written by CRIU 4.2, each with CRIU's JSON decode beside it (fixtures/criu-images/README.md). */
export const fixturesDir = join(repoRoot, 'fixtures', 'criu-images');

/** A temp dir removed in teardown. */
export function tempDir(t: ExecutionContext, prefix = 'lazy-e2e-'): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

/** A synthetic checkpoint with page data (PE_LAZY|PE_PRESENT) and free pids (a restore reuses them). */
export async function synth(t: ExecutionContext, o: { size: number; vmas?: number; procs?: number; holes?: number }): Promise<Checkpoint> {
  const dir = tempDir(t, 'lazy-ck-');
  await writeSyntheticCheckpoint({ out: dir, size: BigInt(o.size), vmas: o.vmas ?? 2, procs: o.procs ?? 1, holes: o.holes ?? 0 });
  return Checkpoint.open(dir);
}

/** SIGKILL `child` by pid in teardown unless it has exited. */
export function killOnTeardown(t: ExecutionContext, child: ChildProcess): void {
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null && child.pid) {
      try {
        process.kill(child.pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
  });
}
