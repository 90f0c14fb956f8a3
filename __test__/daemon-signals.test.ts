/**
 * Issue 10, "lost pages when the daemon dies", the parts the daemon can handle itself: signals,
 * log and stderr write errors, and an embedder's listener that throws. Each test is named after the
 * attack; in each, every restored process is either verified byte for byte or was SIGKILLed, never
 * left running on zeros.
 */
import test from 'ava';
import { existsSync, readFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';

import type { DaemonEvent } from '../ts/daemon/events.js';
import { startCliDaemon, startSim, waitFor } from './helpers/cli.js';
import { restore, simFailure, synth, tempDir } from './helpers/e2e.js';

const MiB = 1 << 20;
const read = (f: string) => (existsSync(f) ? readFileSync(f, 'utf8') : '');

test('SIGHUP reopens the log and the restore completes', async (t) => {
  const ck = await synth(t, { size: 2 * MiB, vmas: 2 });
  const wd = tempDir(t);
  const log = join(wd, 'daemon.log');
  // No background transfer: the process is done only once its verification has faulted in every
  // page, after --settle-ms, which leaves time to rotate the log in the middle of the restore.
  const d = startCliDaemon(t, ['-D', ck.dir, '-W', wd, '-o', log, '-v4', '--no-background']);
  await d.ready;
  const sim = startSim(t, ck, wd, ['--workload', 'touch-random', '--count', '20', '--then-verify-all', '--settle-ms', '1500']);
  await waitFor('restore finished in the log', () => /restore finished/.test(read(log)));
  // What logrotate does: move the file away, then SIGHUP.
  renameSync(log, `${log}.1`);
  process.kill(d.pid, 'SIGHUP');
  await waitFor('a new log file', () => existsSync(log));
  const [res, exit] = await Promise.all([sim.result, d.exited]);
  t.is(res.code, 0, res.stderr);
  t.true(res.report?.processes.every((p) => p.ok && p.badPages === 0), JSON.stringify(res.report));
  t.deepEqual(exit, { code: 0, signal: null }, d.stderr());
  t.regex(read(`${log}.1`), /attached/);
  const fresh = read(log);
  t.regex(fresh, /SIGHUP: reopened/);
  t.regex(fresh, /done: 1 processes/);
  t.notRegex(read(`${log}.1`), /done: 1 processes/);
});

for (const sig of ['SIGTERM', 'SIGINT', 'SIGQUIT'] as const) {
  test(`${sig} kills owed processes`, async (t) => {
    const ck = await synth(t, { size: 2 * MiB, procs: 2 });
    const wd = tempDir(t);
    const log = join(wd, 'daemon.log');
    const d = startCliDaemon(t, ['-D', ck.dir, '-W', wd, '-o', log, '-v3', '--no-background']);
    await d.ready;
    // `hold` touches nothing: without background transfer both processes stay owed every lazy page.
    const sim = startSim(t, ck, wd, ['--workload', 'hold']);
    await waitFor('restore finished in the log', () => /restore finished/.test(read(log)));
    process.kill(d.pid, sig);
    const [res, exit] = await Promise.all([sim.result, d.exited]);
    t.is(exit.code, 1, d.stderr());
    const lines = d.stderr().trim().split('\n');
    t.is(lines.length, 1, d.stderr());
    t.regex(lines[0], new RegExp(`^lazy-pages: stopped by ${sig}: 2 of 2 processes still owed pages were killed with SIGKILL`));
    t.is(res.report?.processes.length, 2, simFailure({ sim: res, events: [] }));
    t.true(res.report!.processes.every((p) => p.killedBySignal === 9), JSON.stringify(res.report));
    const text = read(log);
    t.regex(text, new RegExp(`got ${sig}`));
    t.is(text.match(/lost: stopped by .*\(killed with SIGKILL\)/g)?.length, 2, text);
    t.regex(text, new RegExp(`stopped by ${sig}: 2 of 2`));
  });
}

test('EPIPE on stderr does not end the daemon', async (t) => {
  const ck = await synth(t, { size: 4 * MiB, vmas: 2, procs: 2 });
  const wd = tempDir(t);
  // -v4 logs every batch of faults: plenty of writes into a pipe nobody reads any more.
  const d = startCliDaemon(t, ['-D', ck.dir, '-W', wd, '-v4']);
  d.child.stderr!.destroy();
  await d.ready;
  const sim = startSim(t, ck, wd, ['--workload', 'touch-random', '--count', '50', '--then-verify-all']);
  const [res, exit] = await Promise.all([sim.result, d.exited]);
  t.is(res.code, 0, res.stderr);
  t.true(res.report?.processes.every((p) => p.ok && p.badPages === 0), JSON.stringify(res.report));
  t.deepEqual(exit, { code: 0, signal: null });
});

test('ENOSPC on -o /dev/full does not end the daemon', async (t) => {
  const ck = await synth(t, { size: 4 * MiB, vmas: 2, procs: 2 });
  const wd = tempDir(t);
  const d = startCliDaemon(t, ['-D', ck.dir, '-W', wd, '-o', '/dev/full', '-v4']);
  await d.ready;
  const sim = startSim(t, ck, wd, ['--workload', 'touch-random', '--count', '50', '--then-verify-all']);
  const [res, exit] = await Promise.all([sim.result, d.exited]);
  t.is(res.code, 0, res.stderr);
  t.true(res.report?.processes.every((p) => p.ok && p.badPages === 0), JSON.stringify(res.report));
  t.deepEqual(exit, { code: 0, signal: null }, d.stderr());
  // The broken log is reported once, on stderr, and nothing else goes wrong.
  t.is(d.stderr().match(/cannot write to -o \/dev\/full/g)?.length, 1, d.stderr());
});

test('a throwing listener during close() still kills every owed process', async (t) => {
  const ck = await synth(t, { size: 2 * MiB, procs: 3 });
  let thrown = 0;
  let closeResult: unknown = 'not called';
  const r = await restore(t, ck, ['--workload', 'hold'], {
    daemon: { background: false },
    during: async (d) => {
      await new Promise<void>((res) => d.on((e) => e.type === 'restore-finished' && res()));
      // The embedder's bug: it throws on every process it is told about, including while close() runs.
      d.on((e) => {
        if (e.type === 'process-lost') {
          thrown++;
          throw new Error('listener bug');
        }
      });
      closeResult = await d.close('the embedder stopped the restore').then(
        () => 'resolved',
        (e: Error) => `rejected: ${e.message}`,
      );
    },
  });
  t.is(closeResult, 'resolved');
  t.is(thrown, 3);
  const lost = r.events.filter((e): e is Extract<DaemonEvent, { type: 'process-lost' }> => e.type === 'process-lost');
  t.is(lost.length, 3);
  t.true(lost.every((e) => e.killed), JSON.stringify(lost));
  t.is(r.sim.report?.processes.length, 3, simFailure(r));
  t.true(r.sim.report!.processes.every((p) => p.killedBySignal === 9), simFailure(r));
  t.regex(r.daemonError?.message ?? '', /the embedder stopped the restore/);
  t.true(r.events.some((e) => e.type === 'warning' && /an event listener threw on 'process-lost' \(ignored\): listener bug/.test(e.message)));
});

test('a throwing listener does not fail a restore', async (t) => {
  const ck = await synth(t, { size: 2 * MiB, procs: 2 });
  const r = await restore(t, ck, ['--workload', 'touch-random', '--count', '20', '--then-verify-all'], {
    during: (d) => {
      d.on(() => {
        throw new Error('listener bug');
      });
    },
  });
  t.truthy(r.summary, simFailure(r));
  t.is(r.sim.code, 0, simFailure(r));
  t.true(r.sim.report!.processes.every((p) => p.ok), simFailure(r));
});
