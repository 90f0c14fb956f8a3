/**
 * The guardian (issue 10, item 1): whatever ends the daemon mid-restore, every restored process still
 * owed pages is SIGKILLed before its userfaultfd can close; none runs on, reading zeros where its pages
 * were. The daemon runs as `lazy-pages daemon` in a child process so that it can be killed for real;
 * the restore simulator verifies every byte each restored process reads.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { startLazyPagesDaemon } from '../ts/daemon/daemon.js';
import type { Checkpoint } from '../ts/images/index.js';
import { repoRoot, restore, simFailure, synth, tempDir } from './helpers/e2e.js';
import { alive, guardianOf, killInTeardown, noneReadAWrongByte, sleep, startDaemon, startSim, until } from './helpers/guardian.js';

// One at a time: each test times a kill against a restore in progress on a 2-core machine.
const serial = test.serial;

/** 2 processes x 2 VMAs, 128 MiB each: a --no-background restore touching every page takes seconds. */
const SIZE = 128 << 20;
const TOUCH_ALL = ['--workload', 'touch-all', '--order', 'rand'];

/** Waits until every process of `ck` is attached and the restore runs (restore finished), then a bit more. */
async function midRestore(stderr: () => string, ck: Checkpoint, ms = 150): Promise<void> {
  const n = ck.processes.length;
  const ok = await until(() => (stderr().match(/attached/g) ?? []).length >= n && /restore finished/.test(stderr()), 20_000);
  if (!ok) throw new Error(`the restore did not start: ${stderr()}`);
  await sleep(ms);
}

/** Kill the daemon mid-restore by `how`, then check every process was SIGKILLed and the guardian left. */
async function killMidRestore(
  t: import('ava').ExecutionContext,
  how: (d: Awaited<ReturnType<typeof startDaemon>>) => void,
  o: Parameters<typeof startDaemon>[3] = {},
): Promise<void> {
  const ck = await synth(t, { size: SIZE, vmas: 2, procs: 2 });
  let attempt = 0;
  for (;;) {
    attempt++;
    const wd = tempDir(t);
    const d = await startDaemon(t, ck, wd, o);
    const sim = startSim(t, ck, wd, TOUCH_ALL);
    await midRestore(d.stderr, ck);
    how(d);
    const [r, ex] = await Promise.all([sim.result, d.exited]);
    const v = noneReadAWrongByte(r);
    t.true(v.ok, `${v.why} (stderr: ${r.stderr.trim()})`);
    if (r.code === 0 && v.killed === 0 && attempt < 3) {
      // On a loaded machine the test's own wait can outlast the whole restore (seen in CI): both
      // processes completed, verified, before the daemon died (it may then even have exited 0, its
      // work done), so there was nothing to kill. Again.
      t.log(`attempt ${attempt}: the restore completed before the daemon died; once more`);
      continue;
    }
    t.not(ex.code, 0, `the daemon must have died, not finished: ${JSON.stringify(ex)}`);
    await checkKilled(t, r, v, d, ck);
    return;
  }
}

async function checkKilled(
  t: import('ava').ExecutionContext,
  r: Awaited<ReturnType<typeof startSim>['result']>,
  v: ReturnType<typeof noneReadAWrongByte>,
  d: Awaited<ReturnType<typeof startDaemon>>,
  ck: Checkpoint,
): Promise<void> {
  // Mid-restore: the processes still owed pages are SIGKILLed (on a loaded machine one may have
  // finished, verified, before the daemon died: then it must not have been touched).
  t.is(r.code, 3, `mid-restore, the restored processes are SIGKILLed (simulator exit 3): ${r.stderr}`);
  t.true(v.killed >= 1 && v.killed + v.completed === ck.processes.length, JSON.stringify(r.report));
  t.true(await until(() => !alive(d.guardian), 5000), 'the guardian exits once it has acted');
  // Its report goes to the daemon's stderr (inherited): who was killed, and why.
  const report = new RegExp(`lazy-pages guardian \\(pid \\d+\\): the daemon \\(pid \\d+\\) (died|is gone) with ${v.killed} process\\(es\\) still owed pages: SIGKILLed pid`);
  t.true(await until(() => report.test(d.stderr()), 2000), d.stderr().split('\n').filter((l) => !/pages on demand/.test(l)).join('\n').slice(-3000));
}

serial('daemon SIGKILLed mid-restore: every restored process still owed pages is SIGKILLed, none reads zeros', async (t) => {
  await killMidRestore(t, (d) => process.kill(d.pid, 'SIGKILL'));
});

serial('daemon dies of an uncaught exception mid-restore: every owed process is SIGKILLed', async (t) => {
  // A test-only hook, preloaded: SIGUSR2 makes the daemon throw from its event loop.
  const hook = join(tempDir(t), 'throw-on-sigusr2.mjs');
  writeFileSync(hook, "process.on('SIGUSR2', () => setImmediate(() => { throw new Error('test: an uncaught exception in the daemon'); }));\n");
  await killMidRestore(t, (d) => process.kill(d.pid, 'SIGUSR2'), { node: ['--import', hook] });
});

serial('daemon aborts (SIGABRT, as a native crash) mid-restore: every owed process is SIGKILLed', async (t) => {
  await killMidRestore(t, (d) => process.kill(d.pid, 'SIGABRT'), { sh: 'ulimit -c 0' });
});

serial('daemon killed after it received the uffds but before it served them (its JS thread busy): the tasks are SIGKILLed', async (t) => {
  // A test-only hook: SIGUSR2 blocks the daemon's JS thread for 3 s. The native hand-over thread still
  // receives every task's uffd (and hands a copy to the guardian at once), but none is served yet.
  const hook = join(tempDir(t), 'block-on-sigusr2.mjs');
  writeFileSync(hook, "process.on('SIGUSR2', () => { const end = Date.now() + 3000; while (Date.now() < end); });\n");
  const ck = await synth(t, { size: 8 << 20, vmas: 2, procs: 2 });
  const wd = tempDir(t);
  const d = await startDaemon(t, ck, wd, { node: ['--import', hook] });
  process.kill(d.pid, 'SIGUSR2');
  await sleep(200);
  const sim = startSim(t, ck, wd, TOUCH_ALL);
  await sleep(1200);
  t.false(/attached/.test(d.stderr()), 'nothing was attached yet');
  process.kill(d.pid, 'SIGKILL');
  const r = await sim.result;
  const v = noneReadAWrongByte(r);
  t.true(v.ok, `${v.why} (stderr: ${r.stderr.trim()})`);
  t.is(v.killed, ck.processes.length, JSON.stringify(r.report));
  t.true(await until(() => !alive(d.guardian), 5000));
  const found = /SIGKILLed pid \d+, \d+ .*\(2 of them found by their parent or the restorer: not identified by the daemon yet\)/;
  t.true(await until(() => found.test(d.stderr()), 2000), d.stderr());
});

serial('signals sent to the guardian (SIGTERM, SIGINT, SIGHUP, as to a process group) do not end it before it has acted', async (t) => {
  await killMidRestore(t, (d) => {
    for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGQUIT'] as const) process.kill(d.guardian, s);
    process.kill(d.pid, 'SIGKILL');
  });
});

serial('a normal completion leaves no guardian process behind (CLI)', async (t) => {
  const ck = await synth(t, { size: 4 << 20, vmas: 2, procs: 2 });
  const wd = tempDir(t);
  const d = await startDaemon(t, ck, wd);
  t.true(alive(d.guardian));
  const sim = startSim(t, ck, wd, ['--workload', 'touch-all']);
  const [r, ex] = await Promise.all([sim.result, d.exited]);
  t.is(r.code, 0, r.stderr);
  t.is(ex.code, 0, d.stderr());
  t.true(await until(() => !alive(d.guardian), 3000), 'the guardian exits with the daemon');
  t.is(guardianOf(d.pid), undefined);
});

serial('a normal completion leaves no guardian process behind (library): it is shared while daemons run, stopped after', async (t) => {
  const ck = await synth(t, { size: 2 << 20, vmas: 2, procs: 1 });
  const other = await startLazyPagesDaemon({ imagesDir: ck.dir, workDir: tempDir(t) });
  t.teardown(() => other.close('test ended'));
  const g = other.guardianPid!;
  t.true(g > 0 && alive(g));
  killInTeardown(t, g, () => guardianOf(process.pid) === g);
  let seen: number | undefined;
  const r = await restore(t, ck, ['--workload', 'touch-all'], { during: (d) => void (seen = d.guardianPid) });
  t.is(r.sim.code, 0, simFailure(r));
  t.is(seen, g, 'daemons of one process share one guardian');
  t.true(alive(g), 'still in use by the other daemon');
  await other.close('test ended');
  t.true(await until(() => !alive(g), 3000), 'the last daemon to end stops it');
});

serial('guardian: false runs without one; a guardian that cannot start makes the daemon refuse to start', async (t) => {
  const ck = await synth(t, { size: 1 << 20 });
  const d = await startLazyPagesDaemon({ imagesDir: ck.dir, workDir: tempDir(t), guardian: false });
  t.teardown(() => d.close('test ended'));
  t.is(d.guardianPid, undefined);
  await d.close('test ended');
  // A daemon process whose guardian binary is broken: one line naming the problem, exit 1.
  const wd = tempDir(t);
  const child = spawn(process.execPath, [join(repoRoot, 'bin', 'lazy-pages.js'), 'daemon', '-D', ck.dir, '-W', wd], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, LAZY_PAGES_GUARDIAN: '/bin/false' },
  });
  killInTeardown(t, child.pid!, () => child.exitCode === null && child.signalCode === null);
  let err = '';
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const code = await new Promise<number | null>((r) => child.once('close', r));
  t.is(code, 1, err);
  t.regex(err, /cannot start the guardian process: "\/bin\/false".*the daemon does not serve a restore without it/);
});

serial('the guardian also runs from the addon under node (a published install ships no guardian binary)', async (t) => {
  await killMidRestore(t, (d) => process.kill(d.pid, 'SIGKILL'), { env: { ...process.env, LAZY_PAGES_GUARDIAN: 'node' } });
});

serial('control: without the guardian, the same SIGKILL leaves restored processes reading zeros (what the tests above catch)', async (t) => {
  const ck = await synth(t, { size: SIZE, vmas: 2, procs: 2 });
  const wd = tempDir(t);
  // The library in a child process, guardian: false, reporting attachment on stdout.
  const script =
    `import { startLazyPagesDaemon } from ${JSON.stringify(join(repoRoot, 'dist', 'index.js'))};\n` +
    `const d = await startLazyPagesDaemon({ imagesDir: ${JSON.stringify(ck.dir)}, workDir: ${JSON.stringify(wd)}, ` +
    `background: false, guardian: false, onEvent: (e) => process.stdout.write(e.type + '\\n') });\n` +
    'await d.done.catch(() => undefined);\n';
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  const pid = child.pid!;
  killInTeardown(t, pid, () => child.exitCode === null && child.signalCode === null);
  let out = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  t.true(await until(() => /listening/.test(out), 20_000), 'the daemon listens');
  const sim = startSim(t, ck, wd, TOUCH_ALL);
  await midRestore(() => out.replace(/restore-finished/, 'restore finished'), ck);
  process.kill(pid, 'SIGKILL');
  const r = await sim.result;
  const v = noneReadAWrongByte(r);
  t.false(v.ok, `expected wrong bytes without a guardian: ${JSON.stringify(r.report)}`);
  t.is(r.code, 1, r.stderr);
});
