/**
 * One measured restore: the daemon (CRIU's or ours, under the rusage wrapper) listens, then
 * `unshare --pid --fork --mount-proc --kill-child criu restore --lazy-pages` restores the program in
 * a new pid namespace; the run ends when the daemon and the restore have both exited. Everything
 * the run reports comes from the program's own clock readings, the wrapper's wait4() and the logs.
 */
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { statusByte } from './dump.js';
import { criuPageCounts, oursPageCounts, readUsage } from './measure.js';
import { BenchFailure, clearResults, readResults, reason, tail, writeGo, type Shape } from './program.js';
import type { Procs, Tracked } from './procs.js';

export type DaemonKind = 'criu' | 'ours';

export interface RunSetup {
  criu: string;
  rusage: string;
  /** `node bin/lazy-pages.js`: argv before `daemon`. */
  oursCmd: string[];
  imagesDir: string;
  programDir: string;
  shape: Shape;
  /** Bytes the daemon has to deliver (lazy pages of the checkpoint). */
  lazyBytes: number;
  /** Give up after this long (then everything is killed). */
  timeoutMs: number;
  /** Run CRIU's daemon at -v4 to count its pages (slows it). */
  criuV4: boolean;
}

export interface RunSpec {
  daemon: DaemonKind;
  /** Ours with --no-background (the remote "fault alone" case). */
  background: boolean;
  /** `args`: more page-server options for both daemons (`--tls …`). */
  pageServer?: { address: string; port: number; args?: string[] };
  touchSeed: number;
  /** A fresh directory for the sockets and logs of this run. */
  workDir: string;
  /** More options for our daemon (--record-working-set F, --working-set F). */
  oursArgs?: string[];
  /** Ours restoring with a working set recorded earlier (reported as its own column). */
  workingSet?: boolean;
}

/** One run's numbers (times in the unit their name says). */
export interface RunResult {
  daemon: DaemonKind;
  background: boolean;
  /** Ours restoring with a working set recorded on an earlier restore. */
  workingSet: boolean;
  touchSeed: number;
  /** restore start → the daemon exited (every page in). */
  allInS: number;
  /** restore start → the working set installed (ours with --working-set; null otherwise). */
  workingSetInS: number | null;
  /** restore start → the program (first process) resumed. */
  resumeS: number;
  touches: number;
  /** Sum of the timed first touches, all processes. */
  touchTotalMs: number;
  touchP50Us: number;
  touchP99Us: number;
  touchP999Us: number;
  touchMaxUs: number;
  /** Touches whose load faulted (the page was not in yet), and their latency. */
  touchFaults: number;
  faultP50Us: number;
  faultP99Us: number;
  /** The slowest process's read-and-check of all its memory. */
  fullReadMs: number;
  /** Lazy bytes / allInS, in MiB/s. */
  rateMiBs: number;
  daemonCpuS: number;
  daemonUserS: number;
  daemonSysS: number;
  daemonPeakRssMiB: number;
  /** Peak anonymous RSS of the daemon's process (its heap, buffers; not its binary's file pages). */
  daemonAnonRssMiB: number;
  /** Page faults the program's region took after it resumed (touches + full read), all processes. */
  programFaults: number;
  /** The daemon's own count; null when it does not say (CRIU below -v4). */
  pagesOnDemand: number | null;
  pagesBackground: number | null;
  wrongWords: number;
  perProcess: Record<string, string>[];
}

/** A run's numbers and its raw samples (for the histograms: not in RunResult, which goes to the JSON as is). */
export interface Measured {
  result: RunResult;
  /** Every timed first touch, all processes, µs. */
  touchUs: Float64Array;
  /** The touches that faulted, µs. */
  faultUs: Float64Array;
}

/** CLOCK_REALTIME now, in ns (to the µs). */
function wallNs(): bigint {
  return BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000)) * 1000n;
}

/** p in [0,1] of sorted values, as the program computes it: s[floor(n*p)]. */
function pct(sorted: Float64Array, p: number): number {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] : NaN;
}

export async function restoreRun(procs: Procs, s: RunSetup, r: RunSpec): Promise<Measured> {
  mkdirSync(r.workDir, { recursive: true });
  clearResults(s.programDir);
  writeGo(s.programDir, r.touchSeed);
  const usageFile = join(r.workDir, 'daemon.rusage');
  const log = join(r.workDir, 'lazy-pages.log');
  const ps = r.pageServer ? ['--page-server', '--address', r.pageServer.address, '--port', String(r.pageServer.port), ...(r.pageServer.args ?? [])] : [];
  const daemonArgv =
    r.daemon === 'criu'
      ? [s.criu, 'lazy-pages', '-D', s.imagesDir, '-W', r.workDir, '--status-fd', '3', '-o', 'lazy-pages.log', s.criuV4 ? '-v4' : '-v2', ...ps]
      : [...s.oursCmd, 'daemon', '-D', s.imagesDir, '-W', r.workDir, '--status-fd', '3', '-o', log, ...(r.background ? [] : ['--no-background']), ...ps, ...(r.oursArgs ?? [])];
  const daemon = procs.spawn(`${r.daemon === 'criu' ? 'criu lazy-pages' : 'lazy-pages daemon'}`, s.rusage, [usageFile, ...daemonArgv], {
    stdio: ['ignore', 'ignore', 'ignore', 'pipe'],
  });
  let restore: Tracked | undefined;
  try {
    return await measured();
  } finally {
    // on every way out of this run (a failure too) none of its processes outlives it
    await procs.stop(daemon, 500);
    if (restore) await procs.stop(restore, 500);
  }

  async function measured(): Promise<Measured> {
    const daemonFailed = (what: string) =>
      new BenchFailure(`${daemon.name} ${what}: ${tail(log, 3) || '(no log)'}`);
    if (!(await statusByte(daemon, 60_000))) throw daemonFailed(`exited (${daemon.exit?.code ?? daemon.exit?.signal}) before it listened`);

    const t0 = process.hrtime.bigint(); // CLOCK_MONOTONIC, as the rusage wrapper's end_ns
    const t0Wall = wallNs(); // CLOCK_REALTIME, as the program's instants (it lives in a time namespace)
    const rst = (restore = procs.spawn('criu restore', 'unshare', ['--pid', '--fork', '--mount-proc', '--kill-child', s.criu, 'restore', '-D', s.imagesDir, '-W', r.workDir, '--lazy-pages', '-o', 'restore.log', '-v2'], {
      stdio: ['ignore', 'ignore', 'pipe'],
    }));
    let restoreErr = '';
    rst.child.stderr!.on('data', (d: Buffer) => (restoreErr = (restoreErr + d.toString()).slice(-2000)));

    try {
      await allExit([daemon, rst], s.timeoutMs, procs, daemon.name);
    } catch (e) {
      const verdict = tail(join(s.programDir, 'result'));
      const prog = verdict ? ` (the restored program had finished: ${verdict})` : ' (the restored program had not finished)';
      throw new BenchFailure(`${reason(e)}${prog}; daemon log: ${tail(log, 2) || '-'}; restore.log: ${tail(join(r.workDir, 'restore.log'), 2) || restoreErr.trim() || '-'}`);
    }
    const usage = readUsage(usageFile);
    const restoreFailed = () =>
      // criu restore's exit code is not the program's; a nonzero one is CRIU failing to restore
      new BenchFailure(`criu restore exited ${rst.exit?.code ?? rst.exit?.signal}: ${tail(join(r.workDir, 'restore.log'), 3) || restoreErr.trim()}`);
    let procsRes;
    try {
      procsRes = readResults(s.programDir, s.shape, t0Wall - 1_000_000n); // the program's own verdict first: it says most
    } catch (e) {
      if (!usage || usage.exitCode !== 0) throw daemonFailed(`exited ${usage ? usage.exitCode : '(no rusage record)'}; ${reason(e)}`);
      if (rst.exit?.code !== 0) throw new BenchFailure(`${restoreFailed().detail}; ${reason(e)}`);
      throw e;
    }
    if (!usage) throw daemonFailed('left no rusage record');
    if (usage.exitCode !== 0) throw daemonFailed(`exited ${usage.exitCode >= 0 ? usage.exitCode : `on signal ${usage.signal}`}`);
    if (rst.exit?.code !== 0) throw restoreFailed();

    const all = new Float64Array(procsRes.reduce((n, p) => n + p.latUs.length, 0));
    let off = 0;
    for (const p of procsRes) {
      all.set(p.latUs, off);
      off += p.latUs.length;
    }
    const touchTotalMs = all.reduce((a, b) => a + b, 0) / 1000;
    const faulting = Float64Array.from(procsRes.flatMap((p) => [...p.latUs].filter((_, i) => p.faulted[i]))).sort();
    all.sort();
    const num = (k: string) => procsRes.map((p) => Number(p.fields[k]));
    const allInS = Number(usage.endNs - t0) / 1e9;
    const resumedWallNs = procsRes.map((p) => BigInt(p.fields.resumed_wall_ns)).reduce((a, b) => (a < b ? a : b));
    const logText = (() => {
      try {
        return readFileSync(log, 'utf8');
      } catch {
        return '';
      }
    })();
    const counts = r.daemon === 'criu' ? (s.criuV4 ? criuPageCounts(logText) : undefined) : oursPageCounts(logText);
    // Ours with a working set says when each process's was installed (wall clock, ms): the last one.
    const wsAt = [...logText.matchAll(/working set installed, \d+ pages copied early \(at ([\d.]+) ms since the epoch\)/g)].map((m) => Number(m[1]));
    const result: RunResult = {
      daemon: r.daemon,
      background: r.background,
      workingSet: r.workingSet ?? false,
      touchSeed: r.touchSeed,
      allInS,
      resumeS: Number(resumedWallNs - t0Wall) / 1e9,
      workingSetInS: wsAt.length ? (Math.max(...wsAt) - Number(t0Wall / 1000000n)) / 1000 : null,
      touches: all.length,
      touchTotalMs,
      touchP50Us: pct(all, 0.5),
      touchP99Us: pct(all, 0.99),
      touchP999Us: pct(all, 0.999),
      touchMaxUs: all.length ? all[all.length - 1] : NaN,
      touchFaults: faulting.length,
      faultP50Us: pct(faulting, 0.5),
      faultP99Us: pct(faulting, 0.99),
      fullReadMs: Math.max(...num('full_read_ms')),
      rateMiBs: s.lazyBytes / (1 << 20) / allInS,
      daemonCpuS: usage.userS + usage.sysS,
      daemonUserS: usage.userS,
      daemonSysS: usage.sysS,
      daemonPeakRssMiB: usage.maxRssMiB,
      daemonAnonRssMiB: usage.anonRssMiB,
      programFaults: num('touch_faults').reduce((a, b) => a + b, 0) + num('read_faults').reduce((a, b) => a + b, 0),
      pagesOnDemand: counts?.onDemand ?? null,
      pagesBackground: counts?.background ?? null,
      wrongWords: num('wrong_words').reduce((a, b) => a + b, 0),
      perProcess: procsRes.map((p) => p.fields),
    };
    return { result, touchUs: all, faultUs: faulting };
  }
}

/**
 * Waits for every process to exit. Past the timeout, or 5 s after one of them failed (a daemon that
 * gave up leaves a restore hanging on a fault), or 10 s after the restore ended (the program has
 * exited: a daemon must notice and exit too), the rest are stopped and the run fails.
 */
async function allExit(ts: Tracked[], timeoutMs: number, procs: Procs, who: string): Promise<void> {
  const timers: NodeJS.Timeout[] = [];
  const fail = new Promise<never>((_, rej) => {
    timers.push(setTimeout(() => rej(new BenchFailure(`the restore served by ${who} did not finish in ${(timeoutMs / 1000).toFixed(0)} s`)), timeoutMs));
    for (const t of ts) {
      void t.exited.then((x) => {
        const graceS = x.code !== 0 ? 5 : t.name === 'criu restore' ? 10 : undefined;
        if (graceS === undefined) return;
        timers.push(
          setTimeout(() => {
            const left = ts.filter((o) => !o.exit).map((o) => o.name);
            rej(new BenchFailure(`${t.name} ${x.code === 0 ? 'ended' : `failed (${x.code ?? x.signal})`} but ${left.join(', ')} did not exit within ${graceS} s after`));
          }, graceS * 1000),
        );
      }, () => {});
    }
  });
  fail.catch(() => {});
  try {
    await Promise.race([Promise.all(ts.map((t) => t.exited)), fail]);
  } catch (e) {
    await Promise.all(ts.map((t) => procs.stop(t, 500)));
    throw e;
  } finally {
    for (const t of timers) clearTimeout(t);
  }
}
