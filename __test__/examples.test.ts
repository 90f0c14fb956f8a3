/** The examples/ folder runs: an orchestrator embedding the library restores a real CRIU checkpoint. */
import { existsSync } from 'node:fs';
import { join } from 'node:path';

import { repoRoot, tempDir } from './helpers/common.js';
import { criuDump, criuTest, findCriu, startProc, startProgram } from './helpers/criu.js';

criuTest('examples/orchestrator.mjs: the library serves `criu restore --lazy-pages` in a pid namespace; every byte verified', async (t) => {
  const dir = tempDir(t, 'lazy-example-');
  const prog = await startProgram(t, dir, 'random-touch', ['16', '100']);
  const images = join(dir, 'images');
  await criuDump(t, prog, images);
  prog.go(); // once restored, the program touches, then reads and checks all its memory
  const work = join(dir, 'work');
  const p = startProc(t, [process.execPath, join(repoRoot, 'examples', 'orchestrator.mjs'), images, work, findCriu().bin!], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exit = await p.exitWithin(120_000);
  const out = `${p.stdout()}\n${p.stderr()}`;
  t.is(exit?.code, 0, out);
  t.regex(p.stdout(), /^attached pid \d+ \(\d+ lazy pages\)$/m, out);
  t.regex(p.stdout(), /^restore finished/m, out);
  t.regex(p.stdout(), /^done: 1 process\(es\)/m, out);
  let result: string[] | undefined;
  for (let i = 0; i < 300 && !(result = prog.result()); i++) await new Promise((r) => setTimeout(r, 100));
  t.is(result?.[0], 'ok', `the restored program's verdict: ${result?.join(' ')} ${prog.errText()}`);
  t.true(existsSync(join(work, 'restore.log')));
  t.log(p.stdout().trim());
});
