/**
 * `lazy-pages bench --criu` end to end, small: a real `criu dump` and two real lazy restores (CRIU's
 * daemon and ours), every word checked. Needs root, gcc and CRIU ($CRIU or ../shared/criu/build.sh):
 * without them it is skipped with a notice, except with CI=true, where it fails (helpers/criu.ts).
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { criuBin, criuTest, lazyPagesBin } from './helpers/criu.js';

criuTest('bench --criu (16 MiB, 256 touches, 1 run): sane numbers, zero wrong words, nothing left behind', (t) => {
  const out = mkdtempSync(join(tmpdir(), 'bench-criu-test-'));
  t.teardown(() => rmSync(out, { recursive: true, force: true }));
  const json = join(out, 'r.json');
  const before = new Set(readdirSync(tmpdir()).filter((f) => f.startsWith('lazy-pages-bench-criu-')));
  const r = spawnSync(process.execPath, [lazyPagesBin, 'bench', '--criu', criuBin(), '--size', '16M', '--touches', '256', '--runs', '1', '--json', json], {
    encoding: 'utf8',
    timeout: 150_000,
    killSignal: 'SIGINT', // the bench's own handler then kills everything it started
  });
  t.is(r.status, 0, `${r.stdout}\n${r.stderr}`);
  t.regex(r.stdout, /\| measure .*`criu lazy-pages`.*`lazy-pages daemon`.*ours \/ CRIU/);
  t.regex(r.stdout, /every word of every run checked: 0 wrong/);

  const res = JSON.parse(readFileSync(json, 'utf8'));
  t.is(res.variant.where, 'local');
  const lazyPages = res.variant.lazyBytes / 4096;
  t.true(lazyPages >= 4096, `lazy pages ${lazyPages}`);
  t.deepEqual(res.runs.map((x: { daemon: string }) => x.daemon), ['criu', 'ours']);
  for (const run of res.runs) {
    const ctx = JSON.stringify(run);
    t.is(run.wrongWords, 0, ctx);
    t.is(run.touches, 256, ctx);
    t.true(run.allInS > 0 && run.allInS < 60, ctx);
    t.true(run.resumeS > 0 && run.resumeS <= run.allInS + 1, ctx);
    t.true(run.touchP50Us > 0 && run.touchP50Us <= run.touchP99Us && run.touchP99Us <= run.touchP999Us && run.touchP999Us <= run.touchMaxUs, ctx);
    t.true(run.touchTotalMs > 0 && run.touchTotalMs < 30_000, ctx);
    t.true(run.touchFaults >= 0 && run.touchFaults <= 256, ctx);
    t.true(run.fullReadMs > 0, ctx);
    t.true(run.rateMiBs > 0, ctx);
    t.true(run.daemonCpuS > 0 && run.daemonCpuS < 60, ctx);
    t.true(run.daemonPeakRssMiB > 1 && run.daemonPeakRssMiB < 4096, ctx);
    t.true(run.programFaults >= run.touchFaults, ctx);
  }
  const ours = res.runs[1];
  t.true(ours.pagesOnDemand + ours.pagesBackground >= 4096 && ours.pagesOnDemand + ours.pagesBackground <= lazyPages, JSON.stringify(ours));
  t.is(res.runs[0].pagesOnDemand, null); // CRIU's count needs --criu-v4
  t.is(typeof res.medians.ours.allInS, 'number');
  t.is(typeof res.ratios.allInS, 'number');
  t.is(res.medians.ours.wrongWords + res.medians.criu.wrongWords, 0);
  // the floor (bench/floor.c) measured in the same run, and the issue #9 targets set against it
  t.regex(r.stdout, /the floor on this machine, same run/);
  t.true(res.floor.medians.faultP50Us > 0 && res.floor.medians.faultP50Us <= res.floor.medians.faultP99Us, JSON.stringify(res.floor.medians));
  t.true(res.floor.medians.copyS > 0 && res.floor.medians.nodeStartCpuS > 0, JSON.stringify(res.floor.medians));
  t.is(res.floor.targets.length, 4);
  for (const c of res.floor.targets) {
    t.true(c.limit > 0 && c.floorNeeds >= 0 && c.belowFloor === c.limit < c.floorNeeds, JSON.stringify(c));
  }
  // its work dir is gone (so no process of it can still hold files there)
  t.deepEqual(readdirSync(tmpdir()).filter((f) => f.startsWith('lazy-pages-bench-criu-') && !before.has(f)), []);
});
