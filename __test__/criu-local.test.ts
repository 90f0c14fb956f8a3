/**
 * The real CRIU 4.2 with our daemon, local images: a C program fills its memory with a known
 * pattern, `criu dump` checkpoints it, `lazy-pages daemon` serves `criu restore --lazy-pages` (into a
 * new pid namespace, as containers are restored), and the restored program checks every byte.
 * CRIU comes from $CRIU or ../shared/criu/build.sh; see helpers/criu.ts for skip vs fail.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';

import {
  assertRun,
  awaitRestore,
  criuDump,
  criuRestore,
  criuTest,
  lazyRestore,
  onDemandPages,
  scenarios,
  startOurDaemon,
  startProgram,
  tailOf,
  tempDir,
  type LazyRestoreOptions,
} from './helpers/criu.js';

const sc = scenarios('local');

for (const s of Object.values(sc)) {
  criuTest(`local images: ${s.title}`, async (t) => {
    const o: LazyRestoreOptions = { scenario: s, source: 'local', daemon: 'ours' };
    const r = await lazyRestore(t, o);
    assertRun(t, o, r);
    const pages = onDemandPages(r.daemonLog);
    t.true(pages.onDemand > 0, `no page was served on demand: nothing was lazy?\n${r.diag}`);
    t.log(`our daemon: ${pages.onDemand} pages on demand, ${pages.background} in background, ${pages.processes} processes`);
  }, { serial: true });
}

criuTest('local images, --no-background: every uffd event meets still-lazy pages; the daemon ends with the tree', async (t) => {
  const o: LazyRestoreOptions = { scenario: sc.events, source: 'local', daemon: 'ours', daemonArgs: ['--no-background'] };
  const r = await lazyRestore(t, o);
  assertRun(t, o, r);
  const pages = onDemandPages(r.daemonLog);
  t.is(pages.background, 0, r.diag);
  t.is(pages.processes, 2, `parent and forked child should both be served\n${r.diag}`);
}, { serial: true });

criuTest('the daemon finds every restored task in its pid namespace (it can kill them if it must)', async (t) => {
  const o: LazyRestoreOptions = { scenario: sc.tree, source: 'local', daemon: 'ours' };
  const r = await lazyRestore(t, o);
  assertRun(t, o, r);
  t.notRegex(r.daemonLog, /cannot be killed/, `the daemon could not identify the restored tasks\n${r.diag}`);
}, { serial: true });

criuTest('the daemon stopped mid-restore kills the restored tree before closing its uffds (no run on zeros)', async (t) => {
  const dir = tempDir(t, 'lazy-criu-stop-');
  const prog = await startProgram(t, dir, 'random-touch', ['16', '100']);
  const images = join(dir, 'images');
  const workDir = join(dir, 'work');
  await criuDump(t, prog, images);
  // No background transfer: the pages stay lazy until touched; no "go" yet: the restored program
  // only polls for it (its data, heap included, is still owed).
  const d = await startOurDaemon(t, images, workDir, { extraArgs: ['--no-background'] });
  const restore = criuRestore(t, images, workDir);
  for (let i = 0; i < 500 && !/restore finished/.test(d.logText()); i++) await new Promise((res) => setTimeout(res, 20));
  t.regex(d.logText(), /restore finished/, tailOf(d.log));
  d.proc.child.kill('SIGTERM');
  const dExit = await d.proc.exitWithin(20_000);
  t.truthy(dExit, `the daemon did not stop on SIGTERM${tailOf(d.log)}`);
  const words = `daemon ${dExit ? `exit ${dExit.code ?? dExit.signal}` : 'running'}; its last words: ${d.logText().trim().split('\n').slice(-2).join(' | ')}`;
  // The tree must be gone now: criu restore (waiting for it) ends without the program doing anything.
  const gone = await restore.proc.exitWithin(10_000);
  // Then let a survivor show what it would have read (zeros where its data was).
  prog.go();
  const out = await awaitRestore(prog, restore, [d.log], 20_000);
  t.truthy(gone, `the restored program was still alive 10 s after the daemon stopped (${words})\n${out.diag}`);
  t.notRegex(prog.errText(), /wrong word/, `the restored program ran on after the daemon stopped and read zeros (${words})\n${out.diag}`);
  t.false(existsSync(join(prog.ctl, 'result')), `the restored program ran on after the daemon stopped: ${out.diag}`);
  t.log(words);
}, { serial: true });
