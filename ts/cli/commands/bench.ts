/**
 * `lazy-pages bench` (and `npm run bench`): fault latency and background drain rate of a real
 * lazy restore, next to the floor (a minimal C userfaultfd handler) measured in the same run,
 * interleaved run by run so that machine noise hits both alike. Prints a table, writes JSON.
 *
 * `lazy-pages bench --criu [PATH]` (`npm run bench:criu`) runs only the comparison with CRIU's own
 * `criu lazy-pages` on real dumps and restores (ts/bench/criu/).
 *
 * Both keep the raw latency histograms in their JSON (ts/bench/histogram.ts) and can draw them as
 * an SVG plot (--plot; ts/bench/plot.ts).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { z } from 'zod';

import { DEFAULT_FLOOR_SOURCE, Floor, median } from '../../bench/floor.js';
import { runCriuBench } from '../../bench/criu/index.js';
import { histogramOf, histogramsDoc, mergeHistograms } from '../../bench/histogram.js';
import { benchImages } from '../../bench/images-bench.js';
import { lazyBulk, lazyLatency, type LatencyRun } from '../../bench/lazy.js';
import { serverProcess } from '../../bench/page-server-process.js';
import { plotPath, writeLatencyPlot } from '../../bench/plot.js';
import { BENCH_SCHEMA_VERSION, writeResults } from '../../bench/results-json.js';
import { Checkpoint, writeSyntheticCheckpoint } from '../../images/index.js';
import { parseSize, validate } from '../options.js';

const schema = z.object({
  size: z.number().int().min(1 << 20, 'must be at least 1M'),
  bulkSize: z.number().int().min(1 << 20, 'must be at least 1M'),
  order: z.enum(['rand', 'seq']),
  runs: z.number().int().min(1, 'must be at least 1').max(50, 'must be at most 50'),
  bulk: z.boolean(),
  floor: z.string().min(1),
  json: z.string().min(1).optional(),
  plot: z.string().min(1).optional(),
  remote: z.boolean(),
  chunk: z.number().int().min(4096).optional(),
});

const criuSchema = z.object({
  criu: z.string(),
  size: z.number().int().min(1 << 20, 'must be at least 1M'),
  touches: z.number({ error: 'must be a number' }).int('must be a whole number').min(1, 'must be at least 1'),
  runs: z.number({ error: 'must be a number' }).int().min(1, 'must be at least 1').max(50, 'must be at most 50'),
  tree: z.boolean(),
  remote: z.boolean(),
  tls: z.boolean(),
  criuV4: z.boolean(),
  workingSet: z.boolean(),
  json: z.string().min(1).optional(),
  plot: z.string().min(1).optional(),
});

export const benchCommand: CommandModule<object, Record<string, unknown>> = {
  command: 'bench',
  describe: 'measure per-fault latency and background GB/s against the floor, in the same run (--criu: against `criu lazy-pages` on real restores)',
  builder: (y: Argv) =>
    y
      .option('size', { type: 'string', describe: 'region restored for the latency test (default 64M); with --criu the memory of the program (default 512M)' })
      .option('bulk-size', { type: 'string', default: '1G', describe: 'checkpoint drained by the background test' })
      .option('order', { choices: ['rand', 'seq'], default: 'rand', describe: 'page touch order' })
      .option('runs', { type: 'number', default: 5, describe: 'runs of each test (medians are reported); with --criu runs of each daemon' })
      .option('bulk', { type: 'boolean', default: true, describe: 'also measure the background drain (--no-bulk to skip)' })
      .option('floor', { type: 'string', default: DEFAULT_FLOOR_SOURCE, describe: 'floor.c (or a built floor binary)' })
      .option('json', { type: 'string', describe: 'write the results here as JSON (schemaVersion 2), with the raw latency histograms under "histograms"' })
      .option('plot', {
        type: 'string',
        describe:
          'draw the latency distributions (CDFs of ours, the floor; with --criu of CRIU and ours) as an SVG plot here; ' +
          'with --json FILE.json and no --plot: FILE.svg next to it (--no-plot for none)',
      })
      .option('remote', { type: 'boolean', describe: 'also measure lazy pages from a page server over loopback (default; --no-remote to skip); with --criu: the remote variant instead of the local one' })
      .option('chunk', { type: 'number', describe: 'background request size in bytes' })
      .option('criu', { type: 'string', describe: 'compare with `criu lazy-pages` on real dumps and restores instead (PATH of criu, else $CRIU, else ../shared/criu/build.sh)' })
      .option('touches', { type: 'number', default: 8192, describe: 'with --criu: random pages the restored program touches first (each first touch timed)' })
      .option('tree', { type: 'boolean', default: false, describe: 'with --criu: a 3-process tree, the memory and the touches split among them' })
      .option('working-set', {
        type: 'boolean',
        default: false,
        describe:
          'with --criu (local): record a working set on one restore first, then restore with it too, side by side with CRIU ' +
          'and ours without it (every run then touches the same pages, as repeated restores of one checkpoint do)',
      })
      .option('tls', { type: 'boolean', default: false, describe: 'with --criu --remote: the page-server link over TLS on both ends (a throw-away CA made with openssl)' })
      .option('criu-v4', { type: 'boolean', default: false, describe: "with --criu: run criu lazy-pages at -v4 to count its pages on demand (slows CRIU's faults)" }),
  handler: async (argv) => {
    if (argv.criu !== undefined) {
      const o = validate(criuSchema, {
        criu: argv.criu,
        size: parseSize((argv.size as string | undefined) ?? '512M'),
        touches: argv.touches,
        runs: argv.runs,
        tree: argv.tree,
        remote: argv.remote ?? false,
        tls: argv.tls,
        criuV4: argv['criu-v4'],
        workingSet: argv['working-set'],
        json: argv.json,
        plot: plotPath(argv.plot as string | boolean | undefined, argv.json as string | undefined),
      });
      await runCriuBench(o, (s) => process.stdout.write(`${s}\n`));
      return;
    }
    const o = validate(schema, {
      ...argv,
      size: parseSize((argv.size as string | undefined) ?? '64M'),
      remote: argv.remote ?? true,
      bulkSize: parseSize(argv['bulk-size'] as string),
      plot: plotPath(argv.plot as string | boolean | undefined, argv.json as string | undefined),
    });
    await runBench(o);
  },
};

const pct = ['p50', 'p90', 'p99', 'p999'] as const;

async function runBench(o: z.infer<typeof schema>): Promise<void> {
  const say = (s: string) => process.stdout.write(`${s}\n`);
  const floor = Floor.prepare(o.floor);
  if (!floor) say(`note: no floor at ${o.floor}: ratios are not reported (pass --floor path/to/floor.c)`);
  else if (!floor.tapped) say(`note: the floor is a built binary (${o.floor}): its latencies are not in the histograms and the plot (pass --floor path/to/floor.c)`);
  const work = mkdtempSync(join(tmpdir(), 'lazy-pages-bench-'));
  const results: Record<string, unknown> = { schemaVersion: BENCH_SCHEMA_VERSION, date: new Date().toISOString(), options: o };
  let histograms: ReturnType<typeof latencyHistograms> | undefined;
  const idx = await benchImages();
  results.imageIndex = idx;
  say(
    `image index: ${idx.entries.toLocaleString('en')} pagemap entries indexed in ${idx.buildMs.toFixed(0)} ms; ` +
      `lookup ${idx.nsPerLookup.toFixed(0)} ns (binary search, O(log n); median of ${idx.runs} runs of ${idx.lookups.toLocaleString('en')})`,
  );
  try {
    // ---- latency: one process, one region, every page touched once, background off
    const latDir = join(work, 'lat');
    await writeSyntheticCheckpoint({ out: latDir, size: BigInt(o.size), vmas: 1, procs: 1 });
    const latCk = await Checkpoint.open(latDir);
    const ours: LatencyRun[] = [];
    const theirs: ReturnType<Floor['latency']>[] = [];
    for (let i = 0; i < o.runs; i++) {
      if (floor) theirs.push(floor.latency(o.order));
      ours.push(await lazyLatency(latCk, latDir, { order: o.order, seed: i + 1, samples: true }));
      say(
        `run ${i + 1}/${o.runs}: lazy-pages p50 ${ours[i].p50.toFixed(1)} µs p99 ${ours[i].p99.toFixed(1)} µs` +
          (floor ? ` | floor p50 ${theirs[i].p50.toFixed(1)} µs p99 ${theirs[i].p99.toFixed(1)} µs` : ''),
      );
    }
    const med = (xs: Record<string, number>[], k: string) => median(xs.map((x) => x[k]));
    const latency = {
      faults: ours[0].faults,
      lazyPages: Object.fromEntries([...pct, 'faultsPerSec'].map((k) => [k, med(ours as never, k)])),
      floor: floor ? Object.fromEntries([...pct, 'faultsPerSec'].map((k) => [k, med(theirs as never, k)])) : undefined,
    } as { faults: number; lazyPages: Record<string, number>; floor?: Record<string, number> };
    results.latency = latency;
    histograms = latencyHistograms(ours, theirs);

    say('');
    say(`per-fault latency, ${o.order} order, ${(o.size / (1 << 20)).toFixed(0)} MiB, 4 KiB pages, background off (median of ${o.runs} runs)`);
    say('             p50 µs    p90 µs    p99 µs  p99.9 µs   faults/s');
    const row = (name: string, r: Record<string, number>) =>
      say(`${name.padEnd(10)}${pct.map((k) => r[k].toFixed(1).padStart(10)).join('')}${r.faultsPerSec.toFixed(0).padStart(11)}`);
    row('lazy-pages', latency.lazyPages);
    if (latency.floor) {
      row('floor', latency.floor);
      const ratio = Object.fromEntries(pct.map((k) => [k, latency.lazyPages[k] / latency.floor![k]]));
      say(`${'ratio'.padEnd(10)}${pct.map((k) => `${ratio[k].toFixed(2)}×`.padStart(10)).join('')}`);
      results.latencyRatio = ratio;
      const p50ok = ratio.p50 <= 1.15;
      const p99ok = ratio.p99 <= 1.5;
      results.latencyTargets = { p50: { target: 1.15, ok: p50ok }, p99: { target: 1.5, ok: p99ok } };
      say(`targets: p50 ≤ 1.15× ${p50ok ? 'met' : 'MISSED'}, p99 ≤ 1.5× ${p99ok ? 'met' : 'MISSED'}`);
    }

    // ---- background drain
    if (o.bulk) {
      const bulkDir = join(work, 'bulk');
      await writeSyntheticCheckpoint({ out: bulkDir, size: BigInt(o.bulkSize), vmas: 4, procs: 1 });
      const bulkCk = await Checkpoint.open(bulkDir);
      const oursB: number[] = [];
      const floorB: number[] = [];
      const bulkRuns = o.runs;
      for (let i = 0; i < bulkRuns; i++) {
        if (floor) floorB.push(floor.bulk(o.bulkSize));
        const r = await lazyBulk(bulkCk, bulkDir, { chunkBytes: o.chunk });
        oursB.push(r.gbs);
        say(`bulk run ${i + 1}/${bulkRuns}: lazy-pages ${r.gbs.toFixed(2)} GB/s (${(r.bytes / 2 ** 20).toFixed(0)} MiB in ${r.ms.toFixed(0)} ms)` +
          (floor ? ` | floor ${floorB[i].toFixed(2)} GB/s` : ''));
      }
      const bulk = { lazyPagesGBs: median(oursB), floorGBs: floor ? median(floorB) : undefined };
      results.bulk = bulk;
      say('');
      say(`background drain of ${(o.bulkSize / 2 ** 30).toFixed(2)} GiB, floor over the same size (median of ${bulkRuns} runs): lazy-pages ${bulk.lazyPagesGBs.toFixed(2)} GB/s` +
        (bulk.floorGBs ? `, floor ${bulk.floorGBs.toFixed(2)} GB/s, ratio ${(bulk.lazyPagesGBs / bulk.floorGBs).toFixed(2)}× (target ≥ 0.8×: ${bulk.lazyPagesGBs / bulk.floorGBs >= 0.8 ? 'met' : 'MISSED'})` : ''));

      // ---- faults during the drain: what a real restore does (faults and background at once). Faults
      // alone and the drain alone both looked fine while a real restore ran 3x slower than CRIU's.
      const during: LatencyRun[] = [];
      for (let i = 0; i < o.runs; i++) {
        during.push(await lazyLatency(bulkCk, bulkDir, { order: 'rand', seed: 100 + i, count: 4000, background: true }));
        say(`faults during the drain, run ${i + 1}/${o.runs}: p50 ${during[i].p50.toFixed(1)} µs p99 ${during[i].p99.toFixed(1)} µs (${during[i].faults} of 4000 touches faulted)`);
      }
      const combined = {
        p50: median(during.map((x) => x.p50)),
        p99: median(during.map((x) => x.p99)),
        faulted: median(during.map((x) => x.faults)),
        ratioToAloneP50: 0,
      };
      combined.ratioToAloneP50 = combined.p50 / latency.lazyPages.p50;
      results.faultsDuringDrain = combined;
      say(
        `faults during the drain (4000 random touches of ${(o.bulkSize / 2 ** 30).toFixed(2)} GiB, background on; median of ${o.runs} runs): ` +
          `p50 ${combined.p50.toFixed(1)} µs, p99 ${combined.p99.toFixed(1)} µs = ${combined.ratioToAloneP50.toFixed(2)}× the p50 of faults alone ` +
          `(target ≤ 2×: ${combined.ratioToAloneP50 <= 2 ? 'met' : 'MISSED'}); ${combined.faulted.toFixed(0)} touches faulted`,
      );
    }
    if (o.remote) results.remote = await benchRemoteRestore(o, work, latency.lazyPages.p50, say);
  } finally {
    rmSync(work, { recursive: true, force: true });
    floor?.cleanup();
  }
  results.histograms = histograms?.doc;
  if (o.json) {
    writeResults(o.json, results);
    say(`results written to ${o.json}`);
  }
  if (o.plot && histograms) {
    await writeLatencyPlot(o.plot, {
      title: `lazy-pages bench: per-fault latency, ${o.order} order, background off`,
      subtitle: [
        `lazy-pages: ${(o.size / (1 << 20)).toFixed(0)} MiB restored by the simulator; floor: floor.c, 64 MiB`,
        `${o.runs} run${o.runs === 1 ? '' : 's'} of each, merged; the CDF of the histograms in the JSON`,
      ],
      what: 'faults',
      series: histograms.plot,
    });
    say(`plot written to ${o.plot}`);
  }
}

/**
 * The fault latency histograms of the latency test: ours (the simulator's every fault) and the
 * floor's (when it was built with its tap, floor.ts), each run and merged.
 */
function latencyHistograms(ours: LatencyRun[], theirs: { samplesUs?: Float64Array }[]) {
  const runsOf = (xs: { samplesUs?: Float64Array }[]) => xs.flatMap((x) => (x.samplesUs ? [histogramOf(x.samplesUs)] : []));
  const series = {
    lazyPages: { label: 'lazy-pages', runs: runsOf(ours) },
    floor: { label: 'floor', runs: runsOf(theirs) },
  };
  return {
    doc: histogramsDoc({
      fault: { about: 'per-fault latency of the latency test (every page touched once, background off), as the faulting process timed it', series },
    }),
    plot: Object.values(series)
      .filter((s) => s.runs.length > 0)
      .map((s) => ({ label: s.label, hist: mergeHistograms(s.runs) })),
  };
}

/**
 * Lazy pages from a page server (a separate process, over loopback): per-fault latency with the
 * background transfer off and while it runs, and the background drain rate. Targets: fault p50 ≤ 2×
 * the local p50 of the same run (alone and under background), background ≥ 1 GB/s.
 */
async function benchRemoteRestore(o: z.infer<typeof schema>, work: string, localP50: number, say: (s: string) => void) {
  const dir = join(work, 'remote');
  await writeSyntheticCheckpoint({ out: dir, size: BigInt(o.bulk ? o.bulkSize : o.size), vmas: 4, procs: 1 });
  const ck = await Checkpoint.open(dir);
  const server = await serverProcess(dir);
  try {
    const ps = { address: '127.0.0.1', port: server.port };
    const runs = Math.min(o.runs, 3);
    const alone: LatencyRun[] = [];
    const loaded: LatencyRun[] = [];
    const bulk: number[] = [];
    for (let i = 0; i < runs; i++) {
      alone.push(await lazyLatency(ck, dir, { order: o.order, seed: i + 1, count: 4000, pageServer: ps }));
      loaded.push(await lazyLatency(ck, dir, { order: o.order, seed: i + 1, count: 4000, pageServer: ps, background: true }));
      if (o.bulk) bulk.push((await lazyBulk(ck, dir, { pageServer: ps })).gbs);
      say(
        `remote run ${i + 1}/${runs}: fault p50 ${alone[i].p50.toFixed(1)} µs alone, ${loaded[i].p50.toFixed(1)} µs during background` +
          (o.bulk ? `; background ${(bulk[i] * 1000).toFixed(0)} MB/s` : ''),
      );
    }
    const r = {
      faultAlone: { p50: median(alone.map((x) => x.p50)), p99: median(alone.map((x) => x.p99)) },
      faultDuringBackground: { p50: median(loaded.map((x) => x.p50)), p99: median(loaded.map((x) => x.p99)) },
      backgroundMBs: o.bulk ? median(bulk) * 1000 : undefined,
      ratioToLocalP50: 0,
      ratioToLocalP50DuringBackground: 0,
    };
    r.ratioToLocalP50 = r.faultAlone.p50 / localP50;
    r.ratioToLocalP50DuringBackground = r.faultDuringBackground.p50 / localP50;
    say('');
    say(`remote (page server over loopback, median of ${runs} runs):`);
    say(`  fault p50 ${r.faultAlone.p50.toFixed(1)} µs (p99 ${r.faultAlone.p99.toFixed(1)}) = ${r.ratioToLocalP50.toFixed(2)}× local p50 (target ≤ 2×: ${r.ratioToLocalP50 <= 2 ? 'met' : 'MISSED'})`);
    say(`  fault p50 during background ${r.faultDuringBackground.p50.toFixed(1)} µs (p99 ${r.faultDuringBackground.p99.toFixed(1)}) = ${r.ratioToLocalP50DuringBackground.toFixed(2)}× local p50 (target ≤ 2×: ${r.ratioToLocalP50DuringBackground <= 2 ? 'met' : 'MISSED'})`);
    if (r.backgroundMBs !== undefined) {
      say(`  background ${r.backgroundMBs.toFixed(0)} MB/s (target ≥ 1000 MB/s: ${r.backgroundMBs >= 1000 ? 'met' : 'MISSED'}; CRIU reports ≈110 MB/s)`);
    }
    return r;
  } finally {
    server.stop();
  }
}
