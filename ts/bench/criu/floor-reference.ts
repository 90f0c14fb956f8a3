/**
 * The physical floor beside `bench --criu` (local): what a minimal C userfaultfd handler
 * (bench/floor.c, nothing else running) does on this machine in the same run, and what issue #9's
 * targets ask against it.
 *
 * Why: the targets are ratios to CRIU's daemon, and CRIU's numbers move with the machine. Some of
 * them ask for less than any handler can give here: a touch that faults costs at least one fault
 * round trip (the floor's latency), and every page costs its UFFDIO_COPY (the floor's copy time and
 * CPU). Printing both in one run shows which targets are a matter of our daemon and which of the
 * machine, instead of leaving it to argument.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';

import { Floor, median } from '../floor.js';
import type { Medians } from './report.js';

/** One floor measurement, taken between two rounds of restores. */
export interface FloorSample {
  /** Fault round trip of the floor (µs): random order, a handler process polling its uffd. */
  faultP50Us: number;
  faultP99Us: number;
  /** UFFDIO_COPY of the whole size into fresh memory, one handler thread, in 2 MiB pieces: that
   * thread copies all along, so this is also the CPU the copy takes (the floor's own CPU count also
   * has its program side, which waits by polling, so it is not used). */
  copyS: number;
  /** CPU of `node bin/lazy-pages.js --version`: Node's start and our CLI's load, before any work. */
  nodeStartCpuS: number;
  /** Every fault latency of the floor's run (µs), when the floor was built with its tap. */
  latUs?: Float64Array;
}

export type FloorMedians = { [K in Exclude<keyof FloorSample, 'latUs'>]: number } & { latUs?: Float64Array };

/** Measures the floor at `bytes`, under the rusage wrapper for CPU. */
export class FloorReference {
  private constructor(
    private readonly floor: Floor,
    private readonly rusage: string,
    private readonly dir: string,
    private readonly bytes: number,
  ) {}

  static prepare(rusage: string, dir: string, bytes: number): FloorReference | undefined {
    const floor = Floor.prepare();
    return floor ? new FloorReference(floor, rusage, dir, bytes) : undefined;
  }

  sample(node: string, oursBin: string): FloorSample {
    const lat = this.floor.latency('rand');
    const copy = this.floor.bulkRun(this.bytes);
    return { faultP50Us: lat.p50, faultP99Us: lat.p99, copyS: copy.seconds, nodeStartCpuS: this.cpuOf([node, oursBin, '--version']), latUs: lat.samplesUs };
  }

  /** CPU (user + sys, s) of running `cmd` to its end, from the rusage wrapper. */
  private cpuOf(cmd: string[]): number {
    const usage = join(this.dir, 'floor.rusage');
    rmSync(usage, { force: true });
    execFileSync(this.rusage, [usage, ...cmd], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 120_000 });
    const rec = Object.fromEntries(
      readFileSync(usage, 'utf8')
        .trim()
        .split(/\s+/)
        .map((kv) => kv.split('=') as [string, string]),
    );
    return (Number(rec.utime_us) + Number(rec.stime_us)) / 1e6;
  }

  cleanup(): void {
    this.floor.cleanup();
  }
}

export function floorMedians(samples: FloorSample[]): FloorMedians | undefined {
  if (samples.length === 0) return undefined;
  const m = (k: Exclude<keyof FloorSample, 'latUs'>) => median(samples.map((s) => s[k]));
  const lat = samples.flatMap((s) => (s.latUs ? [...s.latUs] : []));
  return {
    faultP50Us: m('faultP50Us'),
    faultP99Us: m('faultP99Us'),
    copyS: m('copyS'),
    nodeStartCpuS: m('nodeStartCpuS'),
    ...(lat.length ? { latUs: Float64Array.from(lat).sort() } : {}),
  };
}

/** One target of issue #9 set beside what the floor alone needs for it. */
export interface TargetCheck {
  target: string;
  /** The target as an absolute number (ratio × CRIU's median). */
  limit: number;
  /** What the floor alone needs for it (a lower bound for any daemon on this machine). */
  floorNeeds: number;
  unit: string;
  /** Is the target below the floor's bound (out of reach for any handler here)? */
  belowFloor: boolean;
  how: string;
}

/**
 * The local targets against the floor. The bounds are generous to the daemon: they assume a
 * daemon as cheap as the floor, doing nothing else, with the background at the floor's full copy
 * rate from the moment the program resumes, and faults that never wait behind it.
 */
export function checkTargets(criu: Medians, ours: Medians, f: FloorMedians, sizeMiB: number, touches: number): TargetCheck[] {
  const num = (v: number | null | undefined) => (typeof v === 'number' ? v : NaN);
  const checks: TargetCheck[] = [];
  const add = (target: string, limit: number, floorNeeds: number, unit: string, how: string) =>
    checks.push({ target, limit, floorNeeds, unit, belowFloor: limit < floorNeeds, how });
  // The restore itself (CRIU's work until the program resumes) is not the daemon's: the faster resume of the two.
  const resume = Math.min(num(ours.resumeS), num(criu.resumeS));
  add(
    'restore start → all pages in ≤ 0.6× CRIU',
    0.6 * num(criu.allInS),
    resume + f.copyS,
    's',
    `the faster resume of the two (${resume.toFixed(3)} s) + the floor's copy of ${sizeMiB} MiB (${f.copyS.toFixed(3)} s)`,
  );
  // Touches: while the background runs at the floor's rate, the share of memory still missing at
  // time t is 1 - t/copyS; a touch at t faults with that probability and then costs the floor's
  // p50. Solving T = touches × p50 × (1 - T/(2·copyS)) for the total T (T < copyS).
  const perFault = f.faultP50Us / 1e6;
  const all = touches * perFault;
  const touchT = all / (1 + all / (2 * f.copyS));
  add(
    `${touches} random touches, total ≤ 0.3× CRIU`,
    0.3 * num(criu.touchTotalMs),
    touchT * 1000,
    'ms',
    `each touch faults unless the background (at the floor's rate from resume) got there first, and a fault costs the floor's p50 (${f.faultP50Us.toFixed(1)} µs)`,
  );
  // If a share s of the touches fault, the touch p99 is a faulted touch's latency at its
  // (1 - 0.01/s) quantile (s > 1%); for a daemon as fast as the floor, the floor's own quantile.
  const share = num(ours.touchFaults) / touches;
  const q = share > 0.01 ? 1 - 0.01 / share : 0;
  const lat = f.latUs;
  const p99Floor = q === 0 ? 0 : lat && lat.length ? lat[Math.min(lat.length - 1, Math.floor(q * lat.length))] : f.faultP50Us;
  add(
    'touch p99 ≤ 0.2× CRIU',
    0.2 * num(criu.touchP99Us),
    p99Floor,
    'µs',
    `${(share * 100).toFixed(0)}% of our touches faulted, so the touch p99 is a fault's latency at its ${(q * 100).toFixed(1)}th percentile; the floor's is ${p99Floor.toFixed(1)} µs`,
  );
  add(
    'daemon CPU ≤ 1.0× CRIU',
    num(criu.daemonCpuS),
    f.copyS + f.nodeStartCpuS,
    's',
    `the floor's copy of ${sizeMiB} MiB, one thread copying all along (${f.copyS.toFixed(3)} s) + Node's start with our CLI (${f.nodeStartCpuS.toFixed(3)} s), Node being the design's`,
  );
  return checks;
}

export function formatFloor(f: FloorMedians, checks: TargetCheck[], sizeMiB: number, runs: number): string {
  const n = (v: number, unit: string) => `${unit === 'µs' ? v.toFixed(1) : unit === 'ms' ? v.toFixed(0) : v.toFixed(3)} ${unit}`;
  return [
    `the floor on this machine, same run (bench/floor.c, a minimal C userfaultfd handler alone; medians of ${runs}):`,
    `  fault round trip p50 ${f.faultP50Us.toFixed(1)} µs, p99 ${f.faultP99Us.toFixed(1)} µs; UFFDIO_COPY of ${sizeMiB} MiB ${f.copyS.toFixed(3)} s; Node's start with our CLI ${f.nodeStartCpuS.toFixed(3)} s of CPU`,
    `issue #9's local targets against it (a daemon as cheap as the floor, its background at the floor's rate from resume):`,
    ...checks.map(
      (c) =>
        `  ${c.target} = ${n(c.limit, c.unit)}; the floor alone needs ${n(c.floorNeeds, c.unit)}: ${c.belowFloor ? 'below the floor, out of reach here' : 'above the floor'} (${c.how})`,
    ),
  ].join('\n');
}
