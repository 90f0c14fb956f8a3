/**
 * The guardian with the real CRIU 4.2: `criu restore --lazy-pages` into a new pid namespace (as
 * containers are restored), our daemon SIGKILLed while the restored program is reading its lazy
 * memory. The guardian must SIGKILL the restored task before its userfaultfd closes: the program
 * never finishes, and never reads a zero where its data was.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';

import { awaitRestore, criuDump, criuRestore, criuTest, startOurDaemon, startProgram, tailOf, tempDir } from './helpers/criu.js';
import { alive, guardianOf, killInTeardown, sleep, until } from './helpers/guardian.js';

criuTest('real CRIU, pid namespace: our daemon SIGKILLed mid-restore, the restored task is SIGKILLed by the guardian (never runs on zeros)', async (t) => {
  const dir = tempDir(t, 'lazy-criu-guardian-');
  // 64 MiB, every byte checked after 2000 timed random touches: seconds of faults with no background.
  const prog = await startProgram(t, dir, 'random-touch', ['64', '2000']);
  const images = join(dir, 'images');
  const workDir = join(dir, 'work');
  await criuDump(t, prog, images);
  const d = await startOurDaemon(t, images, workDir, { extraArgs: ['--no-background'] });
  const guardian = guardianOf(d.proc.pid);
  t.truthy(guardian, 'the daemon started a guardian');
  killInTeardown(t, guardian!, () => guardianOf(d.proc.pid) === guardian);
  const restore = criuRestore(t, images, workDir);
  t.true(await until(() => /restore finished/.test(d.logText()), 30_000), `the restore did not finish its hand-over${tailOf(d.log)}`);
  t.regex(d.logText(), /attached/, tailOf(d.log));
  // The restored program starts reading its memory; the daemon dies while it does.
  prog.go();
  await sleep(150);
  const before = prog.result();
  d.proc.child.kill('SIGKILL');
  const out = await awaitRestore(prog, restore, [d.log], 30_000);
  const guardianWords = d.proc.stderr().trim();
  t.is(before, undefined, `the program had already finished before the daemon was killed: make it slower\n${out.diag}`);
  t.notRegex(prog.errText(), /wrong word/, `the restored program ran on after the daemon died and read zeros\n${guardianWords}\n${out.diag}`);
  t.false(existsSync(join(prog.ctl, 'result')), `the restored program ran to its end after the daemon died\n${guardianWords}\n${out.diag}`);
  t.truthy(out.restoreExit, `criu restore (waiting for the restored task) did not end: the task was not killed\n${out.diag}`);
  t.regex(guardianWords, /lazy-pages guardian \(pid \d+\): the daemon \(pid \d+\) (died|is gone) with 1 process\(es\) still owed pages: SIGKILLed pid \d+/, out.diag);
  t.true(await until(() => !alive(guardian!), 5000), 'the guardian exits once it has acted');
  t.log(guardianWords);
}, { serial: true });

const ROUNDS = Number(process.env.GUARDIAN_CRIU_ROUNDS ?? 100);

criuTest(`real CRIU chaos: ${ROUNDS} lazy restores, our daemon SIGKILLed at a random moment; every task completes verified or is SIGKILLed`, async (t) => {
  t.timeout(ROUNDS * 20_000);
  const outcomes: Record<string, number> = {};
  for (let i = 0; i < ROUNDS; i++) {
    const dir = tempDir(t, 'lazy-criu-chaos-');
    const prog = await startProgram(t, dir, 'random-touch', ['32', '1000']);
    const images = join(dir, 'images');
    const workDir = join(dir, 'work');
    await criuDump(t, prog, images);
    const d = await startOurDaemon(t, images, workDir, { extraArgs: ['--no-background'] });
    const guardian = guardianOf(d.proc.pid)!;
    killInTeardown(t, guardian, () => guardianOf(d.proc.pid) === guardian);
    const restore = criuRestore(t, images, workDir);
    // One round in three kills during CRIU's restore and hand-over, the others while the program reads.
    const early = i % 3 === 0;
    const delay = Math.floor(Math.random() * (early ? 400 : 1200));
    if (early) {
      await sleep(delay);
    } else {
      await until(() => /restore finished/.test(d.logText()), 30_000);
      prog.go();
      await sleep(delay);
    }
    d.proc.child.kill('SIGKILL');
    // A task that survived would now run (told to go) and show what it reads.
    await restore.proc.exitWithin(15_000);
    prog.go();
    const out = await awaitRestore(prog, restore, [d.log], 20_000);
    const what = `round ${i} (${early ? 'during the restore' : 'while reading'}, ${delay} ms)`;
    t.notRegex(prog.errText(), /wrong word/, `${what}: a restored task read zeros\n${d.proc.stderr()}\n${out.diag}`);
    const result = prog.result();
    t.true(result === undefined || result[0] === 'ok', `${what}: ${out.diag}`);
    t.truthy(out.restoreExit, `${what}: criu restore did not end (a task left blocked?)\n${out.diag}`);
    t.true(await until(() => !alive(guardian), 15_000), `${what}: the guardian did not exit`);
    const o = result ? 'completed' : /SIGKILLed pid/.test(d.proc.stderr()) ? 'killed by the guardian' : 'restore failed, nothing ran';
    outcomes[o] = (outcomes[o] ?? 0) + 1;
  }
  t.log(JSON.stringify(outcomes));
}, { serial: true });
