/**
 * `lazy-pages bench --criu`: `criu lazy-pages` and `lazy-pages daemon` side by side on a real
 * restore, as a user would run them. A program (prog.c) fills SIZE of private anonymous memory with
 * a known pattern and is dumped by the real CRIU; `criu restore --lazy-pages` brings it back in a
 * new pid namespace, served by one daemon or the other, interleaved run by run (CRIU, ours, CRIU,
 * ours, ...) so that the noise of the machine hits both alike; medians are reported.
 *
 * Local: one plain dump restored run after run (pages from pages-*.img). Remote: before every run a
 * fresh `criu dump --lazy-pages` serves the pages over loopback, both daemons use --page-server,
 * and ours also runs with --no-background to give its fault latency alone (issue #8).
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { UserError } from '../../errors.js';
import { Checkpoint, PAGE_SIZE, pageStats } from '../../images/index.js';
import { histogramOf, histogramsDoc, mergeHistograms, type Histogram } from '../histogram.js';
import { writeLatencyPlot } from '../plot.js';
import { BENCH_SCHEMA_VERSION } from '../results-json.js';
import { compile, packageRoot } from './compile.js';
import { checkTargets, floorMedians, FloorReference, formatFloor, type FloorSample } from './floor-reference.js';
import { lazyDump, plainDump, waitGone } from './dump.js';
import { locateCriu, type CriuBinary } from './locate-criu.js';
import { BenchFailure, startProgram, type ProgramSpec } from './program.js';
import { raisePipeMaxSize, withProcs, type Procs, type Tracked } from './procs.js';
import { throwawayTlsArgs } from './pki.js';
import { formatTable, machine, mediansOf, ratios, remoteFault, writeJson, type ReportContext } from './report.js';
import { restoreRun, type DaemonKind, type Measured, type RunResult, type RunSetup } from './restore-run.js';

export interface CriuBenchOptions {
  /** --criu value: a path, or '' to find one ($CRIU, then ../shared/criu/build.sh). */
  criu: string;
  size: number;
  touches: number;
  runs: number;
  tree: boolean;
  remote: boolean;
  /** Remote only: the page-server link over TLS (a throw-away CA). */
  tls?: boolean;
  criuV4: boolean;
  /** Local only: record a working set on a first restore, then also restore with it. */
  workingSet: boolean;
  json?: string;
  /** Write the touch latency CDFs here as SVG. */
  plot?: string;
}

const PATTERN_SEED = 0x5eed;

interface Plan {
  daemon: DaemonKind;
  background: boolean;
  /** Ours with the working set recorded on the first restore. */
  workingSet?: boolean;
}

async function lazyBytesOf(imagesDir: string): Promise<number> {
  const ck = await Checkpoint.open(imagesDir);
  return ck.processes.reduce((n, p) => n + Number(pageStats(p).lazyPages), 0) * PAGE_SIZE;
}

function describe(r: RunResult): string {
  const f = (x: number | null, d = 0) => (x === null ? '—' : x.toFixed(d));
  return (
    `all in ${r.allInS.toFixed(3)} s, touches ${r.touchTotalMs.toFixed(0)} ms (p50 ${r.touchP50Us.toFixed(1)} µs, p99 ${r.touchP99Us.toFixed(1)} µs; ` +
    `${r.touchFaults} faulted, p50 ${r.faultP50Us.toFixed(1)} µs), ` +
    `read ${r.fullReadMs.toFixed(0)} ms, CPU ${r.daemonCpuS.toFixed(2)} s, RSS ${r.daemonPeakRssMiB.toFixed(0)} MiB (anon ${r.daemonAnonRssMiB.toFixed(0)}), ` +
    `faults ${r.programFaults}, on demand ${f(r.pagesOnDemand)}, wrong words ${r.wrongWords}`
  );
}

export async function runCriuBench(o: CriuBenchOptions, say: (s: string) => void): Promise<void> {
  if (process.getuid?.() !== 0) throw new UserError('EPERM', 'bench --criu: run as root (criu dump and criu restore need it)');
  const criu = locateCriu(o.criu);
  const oursBin = join(packageRoot, 'bin', 'lazy-pages.js');
  if (!existsSync(join(packageRoot, 'dist', 'cli', 'main.js'))) throw new UserError('ENODIST', 'bench --criu: dist/ is not built (npm run build:ts)');
  const spec: ProgramSpec = { bin: compile('prog.c'), shape: o.tree ? 'tree' : 'single', size: o.size, touches: o.touches, patternSeed: PATTERN_SEED };
  const rusage = compile('rusage.c');
  const sizeMiB = o.size / (1 << 20);
  const ctx: ReportContext = {
    title:
      `CRIU ${criu.version} vs lazy-pages, ${o.remote ? `remote: \`criu dump --lazy-pages\` as the page server over loopback${o.tls ? ', over TLS' : ''}` : 'local: pages from pages-*.img'}, ` +
      `${o.tree ? 'a 3-process tree' : 'one process'}, ${sizeMiB} MiB, ${o.touches} touches`,
    sizeMiB,
    touches: o.touches,
    runs: o.runs,
    remote: o.remote,
    tree: o.tree,
  };
  say(`criu: ${criu.path} (${criu.version}, from ${criu.from}); ours: ${process.execPath} ${oursBin}`);
  say(`${ctx.title}, ${o.runs} run${o.runs === 1 ? '' : 's'} of each daemon, interleaved${o.criuV4 ? '; criu lazy-pages runs at -v4 to count its pages' : ''}`);

  if (o.workingSet && o.remote) throw new UserError('EOPTION', 'bench --criu --working-set: only the local variant (not with --remote)');
  if (o.tls && !o.remote) throw new UserError('EOPTION', 'bench --criu --tls: only with --remote (TLS is the page-server link)');
  const plans: Plan[] = [
    { daemon: 'criu', background: true },
    { daemon: 'ours', background: true },
    ...(o.remote ? [{ daemon: 'ours', background: false } as Plan] : []),
    ...(o.workingSet ? [{ daemon: 'ours', background: true, workingSet: true } as Plan] : []),
  ];
  const runs: RunResult[] = [];
  /** Per plan (label): the touch and fault latency histogram of each of its runs. */
  const hists = new Map<string, { touch: Histogram[]; fault: Histogram[] }>(plans.map((p) => [label(p), { touch: [], fault: [] }]));
  const failures: { run: number; daemon: DaemonKind; background: boolean; error: string }[] = [];
  let lazyBytes = 0;
  let work = '';
  const floorSamples: FloorSample[] = [];
  await withProcs(async (procs) => {
    work = mkdtempSync(join(tmpdir(), 'lazy-pages-bench-criu-'));
    let keep = false;
    // the logs of a failed run stay for a look (the page images go)
    procs.onCleanup(() => (keep ? dropPageImages(work) : rmSync(work, { recursive: true, force: true })));
    try {
      await measure(procs, work);
    } catch (e) {
      if (!(e instanceof BenchFailure)) throw e;
      keep = true;
      throw new BenchFailure(`${e.detail} [logs kept in ${work}]`);
    }
    keep = failures.length > 0;
  });

  /** One run; a failure is reported at once, recorded, and the other runs go on. */
  async function attempt(i: number, p: Plan, run: () => Promise<Measured>): Promise<void> {
    try {
      const { result: r, touchUs, faultUs } = await run();
      runs.push(r);
      hists.get(label(p))!.touch.push(histogramOf(touchUs));
      hists.get(label(p))!.fault.push(histogramOf(faultUs));
      say(`run ${i + 1}/${o.runs} ${label(p).padEnd(22)} ${describe(r)}`);
    } catch (e) {
      if (!(e instanceof BenchFailure)) throw e;
      failures.push({ run: i + 1, daemon: p.daemon, background: p.background, error: e.detail });
      say(`run ${i + 1}/${o.runs} ${label(p).padEnd(22)} FAILED: ${e.detail}`);
    }
  }

  async function measure(procs: Procs, work: string): Promise<void> {
    const base = (imagesDir: string, programDir: string): RunSetup => ({
      criu: criu.path,
      rusage,
      oursCmd: [process.execPath, oursBin],
      imagesDir,
      programDir,
      shape: spec.shape,
      lazyBytes,
      timeoutMs: 60_000 + (o.size / (4 << 20)) * 1000,
      criuV4: o.criuV4,
    });
    if (!o.remote) {
      const programDir = join(work, 'program');
      const imagesDir = join(work, 'images');
      mkdirSync(programDir);
      mkdirSync(imagesDir);
      const prog = await startProgram(procs, spec, programDir);
      await plainDump(procs, criu.path, prog, imagesDir);
      lazyBytes = await lazyBytesOf(imagesDir);
      say(`dumped: ${(lazyBytes / 2 ** 20).toFixed(1)} MiB of lazy pages`);
      // With --working-set: one restore by ours records it (not measured), and every run touches the
      // pages of that restore's seed, as repeated restores of one checkpoint would. It records without
      // the background, so that every page the program touched is in it in first-touch order (with
      // the background on, the pages it happened to bring in first would be missing).
      const wsFile = join(work, 'working-set.json');
      if (o.workingSet) {
        const rec = await restoreRun(procs, base(imagesDir, programDir), {
          daemon: 'ours',
          background: false,
          touchSeed: 1,
          workDir: join(work, 'record'),
          oursArgs: ['--record-working-set', wsFile],
        });
        say(`working set recorded on a first restore: ${rec.result.pagesOnDemand ?? '?'} pages on demand (${wsFile})`);
      }
      // The floor (bench/floor.c), measured between rounds so that it sees the same machine.
      const floor = FloorReference.prepare(rusage, work, o.size);
      procs.onCleanup(() => floor?.cleanup());
      if (!floor) say('floor: bench/floor.c not found; no floor reference');
      for (let i = 0; i < o.runs; i++) {
        if (floor) {
          const f = floor.sample(process.execPath, oursBin);
          floorSamples.push(f);
          say(`run ${i + 1}/${o.runs} ${'floor'.padEnd(22)} fault p50 ${f.faultP50Us.toFixed(1)} µs, p99 ${f.faultP99Us.toFixed(1)} µs; copy of ${sizeMiB} MiB ${f.copyS.toFixed(3)} s; node start CPU ${f.nodeStartCpuS.toFixed(3)} s`);
        }
        for (const p of plans) {
          await attempt(i, p, () =>
            restoreRun(procs, base(imagesDir, programDir), {
              ...p,
              touchSeed: o.workingSet ? 1 : i + 1,
              workDir: join(work, `run-${i}-${label(p).replace(/\W+/g, '-')}`),
              ...(p.workingSet ? { oursArgs: ['--working-set', wsFile] } : {}),
            }),
          );
        }
      }
    } else {
      raisePipeMaxSize(procs);
      const tlsArgs = o.tls ? throwawayTlsArgs(work) : [];
      for (let i = 0; i < o.runs; i++) {
        for (const p of plans) {
          const dir = join(work, `run-${i}-${label(p).replace(/\W+/g, '-')}`);
          await attempt(i, p, () => remoteRun(procs, criu, spec, dir, base, p, i + 1, (b) => (lazyBytes = b), tlsArgs));
        }
      }
    }
  }

  const pick = (d: DaemonKind, bg: boolean, ws = false) => runs.filter((r) => r.daemon === d && r.background === bg && r.workingSet === ws);
  const medians = {
    criu: mediansOf(pick('criu', true)),
    ours: mediansOf(pick('ours', true)),
    ...(o.remote ? { oursNoBackground: mediansOf(pick('ours', false)) } : {}),
    ...(o.workingSet ? { oursWorkingSet: mediansOf(pick('ours', true, true)) } : {}),
  };
  say('');
  say(formatTable(ctx, medians.criu, medians.ours, medians.oursNoBackground, medians.oursWorkingSet));
  const rf = medians.oursNoBackground ? remoteFault(medians.ours, medians.oursNoBackground) : undefined;
  if (rf) {
    say('');
    say(`remote fault p50 of ours (touches that faulted; CRIU's lazy dump as the server): alone (--no-background) ${rf.aloneP50Us.toFixed(1)} µs, ` +
      `during the background stream ${rf.duringBackgroundP50Us.toFixed(1)} µs: ${rf.ratio.toFixed(2)}× (issue #8 target ≤ 2×: ${rf.met ? 'met' : 'MISSED'})`);
  }
  const fm = floorMedians(floorSamples);
  const targets = fm ? checkTargets(medians.criu, medians.ours, fm, sizeMiB, o.touches) : undefined;
  if (fm && targets) {
    say('');
    say(formatFloor(fm, targets, sizeMiB, floorSamples.length));
  }
  say(`(every word of every run checked: ${runs.reduce((n, r) => n + r.wrongWords, 0)} wrong${failures.length ? `; ${failures.length} run(s) FAILED and are not in the medians` : ''})`);
  const seriesOf = (metric: 'touch' | 'fault') =>
    Object.fromEntries(
      plans.map((p) => [
        p.daemon === 'criu' ? 'criu' : p.workingSet ? 'oursWorkingSet' : p.background ? 'ours' : 'oursNoBackground',
        { label: label(p), runs: hists.get(label(p))![metric] },
      ]),
    );
  if (o.json) {
    writeJson(o.json, {
      schemaVersion: BENCH_SCHEMA_VERSION,
      date: new Date().toISOString(),
      machine: machine(),
      criu,
      ours: { node: process.execPath, bin: oursBin },
      options: o,
      variant: { where: o.remote ? 'remote' : 'local', shape: spec.shape, sizeBytes: o.size, touches: o.touches, lazyBytes },
      runs,
      medians,
      ratios: ratios(medians.ours, medians.criu),
      ...(medians.oursWorkingSet ? { workingSetRatios: ratios(medians.oursWorkingSet, medians.criu) } : {}),
      remoteFault: rf,
      ...(fm && targets
        ? { floor: { samples: floorSamples.map(({ latUs: _, ...rest }) => rest), medians: { ...fm, latUs: undefined }, targets } }
        : {}),
      failures,
      histograms: histogramsDoc({
        touch: { about: 'every timed first touch of the restored program (touches that found their page already in too), all processes', series: seriesOf('touch') },
        fault: { about: 'the timed first touches that faulted (their page was not in yet)', series: seriesOf('fault') },
      }),
    });
    say(`results written to ${o.json}`);
  }
  if (o.plot) {
    await writeLatencyPlot(o.plot, {
      title: `lazy-pages bench --criu: first-touch latency, CRIU ${criu.version} vs lazy-pages`,
      subtitle: [
        `${o.remote ? 'remote: pages from `criu dump --lazy-pages` over loopback' : 'local: pages from pages-*.img'}, ${o.tree ? 'a 3-process tree' : 'one process'}`,
        `${sizeMiB} MiB, ${o.touches} random first touches per run (those that found their page in too)`,
        `${o.runs} run${o.runs === 1 ? '' : 's'} of each daemon, merged; the CDF of the histograms in the JSON`,
      ],
      what: 'first touches',
      series: Object.values(seriesOf('touch'))
        .filter((s) => s.runs.length > 0)
        .map((s) => ({ label: s.label, hist: mergeHistograms(s.runs) })),
    });
    say(`plot written to ${o.plot}`);
  }
  if (failures.length) {
    const f = failures[0];
    throw new BenchFailure(`${failures.length} of ${runs.length + failures.length} runs FAILED; first (run ${f.run}, ${label(f)}): ${f.error} [logs kept in ${work}]`);
  }
}

/** Removes the pages-*.img files under `dir` (hundreds of MiB), keeping the logs. */
function dropPageImages(dir: string): void {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) dropPageImages(p);
    else if (/^pages-\d+\.img$/.test(e.name)) rmSync(p, { force: true });
  }
}

function label(p: Plan): string {
  return p.daemon === 'criu' ? 'criu lazy-pages' : p.workingSet ? 'lazy-pages + working set' : p.background ? 'lazy-pages daemon' : 'lazy-pages, no bg';
}

/** A remote run: a fresh program, its lazy dump serving the pages, one restore, the dump's exit. */
async function remoteRun(
  procs: Procs,
  criu: CriuBinary,
  spec: ProgramSpec,
  dir: string,
  setup: (imagesDir: string, programDir: string) => RunSetup,
  p: Plan,
  touchSeed: number,
  gotLazyBytes: (b: number) => void,
  tlsArgs: string[],
): Promise<Measured> {
  const programDir = join(dir, 'program');
  const imagesDir = join(dir, 'images');
  mkdirSync(programDir, { recursive: true });
  mkdirSync(imagesDir);
  const prog = await startProgram(procs, spec, programDir);
  let dump: Tracked | undefined;
  try {
    const lazy = await lazyDump(procs, criu.path, prog, imagesDir, tlsArgs);
    dump = lazy.dump;
    const lazyBytes = await lazyBytesOf(imagesDir);
    gotLazyBytes(lazyBytes);
    const r = await restoreRun(procs, { ...setup(imagesDir, programDir), lazyBytes }, { ...p, touchSeed, workDir: join(dir, 'work'), pageServer: { address: '127.0.0.1', port: lazy.port, args: tlsArgs } });
    await waitGone(dump, 30_000, 'criu dump --lazy-pages did not exit after the restore had every page');
    rmSync(dir, { recursive: true, force: true }); // a failed run's logs stay
    return r;
  } finally {
    if (dump) await procs.stop(dump);
    await procs.stop(prog.main);
  }
}
