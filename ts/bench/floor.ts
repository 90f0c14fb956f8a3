/**
 * The physical floor: bench/floor.c, a minimal C userfaultfd handler. Our numbers are
 * reported as ratios to it, measured in the same run, because the machine is shared and noisy.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../package-root.js';

const repoRoot = packageRoot;

/** Where floor.c is looked for when --floor is not given. */
export const DEFAULT_FLOOR_SOURCE = join(repoRoot, 'bench', 'floor.c');

/**
 * The floor's raw latencies: floor.c prints only percentiles of its timed touches, computed after
 * it sorts them with qsort(). Built from source, floor.c is compiled unchanged with its qsort
 * renamed to this function (-Dqsort=...), which first writes the array it is given (the latencies,
 * u64 ns each, as restore-sim --latencies does) to $LAZY_PAGES_FLOOR_LATENCIES, then sorts it with
 * the real qsort. A floor given as a built binary has no tap: no floor histogram then.
 */
const TAP_SOURCE = `#undef qsort
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
void lazy_pages_floor_qsort(void *base, size_t n, size_t size, int (*cmp)(const void *, const void *)) {
    const char *f = getenv("LAZY_PAGES_FLOOR_LATENCIES");
    if (f && *f && size == sizeof(uint64_t)) {
        FILE *o = fopen(f, "ab");
        if (o) {
            fwrite(base, size, n, o);
            fclose(o);
        }
    }
    qsort(base, n, size, cmp);
}
`;

/** One floor latency run: percentiles in µs and, when the floor was built with its tap, every sample (µs). */
export interface FloorLatency {
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  faultsPerSec: number;
  samplesUs?: Float64Array;
}

export class Floor {
  private constructor(
    private readonly bin: string,
    private readonly dir: string,
    /** Built with the latency tap (TAP_SOURCE). */
    readonly tapped: boolean,
  ) {}

  /** Build floor.c (or use a built binary) and generate its 64 MiB image. Undefined when not found. */
  static prepare(source = DEFAULT_FLOOR_SOURCE): Floor | undefined {
    if (!existsSync(source)) return undefined;
    const dir = join(tmpdir(), `lazy-pages-floor-${process.pid}`);
    mkdirSync(dir, { recursive: true });
    let bin = source;
    const tapped = source.endsWith('.c');
    if (tapped) {
      bin = join(dir, 'floor');
      const tap = join(dir, 'latency-tap.c');
      writeFileSync(tap, TAP_SOURCE);
      execFileSync('gcc', ['-O2', '-pthread', '-Dqsort=lazy_pages_floor_qsort', '-o', bin, source, tap], { stdio: 'pipe' });
    }
    execFileSync(bin, ['gen', '-i', join(dir, 'floor-pages.img')], { stdio: 'pipe' });
    return new Floor(bin, dir, tapped);
  }

  /** One `floor run` with the given arguments; returns the parsed key=value fields of each R line. */
  run(args: string[], env?: NodeJS.ProcessEnv): Record<string, number>[] {
    const out = execFileSync(this.bin, ['run', ...args, '-i', join(this.dir, 'floor-pages.img')], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 120_000,
      env: env ?? process.env,
    });
    return out
      .split('\n')
      .filter((l) => l.startsWith('R '))
      .map((l) => {
        const rec: Record<string, number> = {};
        for (const kv of l.split(' ').slice(1)) {
          const [k, v] = kv.split('=');
          const n = Number(v);
          if (!Number.isNaN(n)) rec[k] = n;
        }
        return rec;
      });
  }

  /** Per-fault latency (µs) of one run: `-t lat -H proc -w poll -o ORDER`; with the tap, every sample too. */
  latency(order: 'rand' | 'seq'): FloorLatency {
    const tapFile = join(this.dir, 'latencies.bin');
    rmSync(tapFile, { force: true });
    const env = this.tapped ? { ...process.env, LAZY_PAGES_FLOOR_LATENCIES: tapFile } : undefined;
    const [r] = this.run(['-t', 'lat', '-H', 'proc', '-w', 'poll', '-o', order, '-n', '1'], env);
    const res: FloorLatency = { p50: r.p50, p90: r.p90, p99: r.p99, p999: r.p999, faultsPerSec: r.faults_per_s };
    if (this.tapped && existsSync(tapFile)) {
      res.samplesUs = nsToUs(readFileSync(tapFile));
      rmSync(tapFile, { force: true });
    }
    return res;
  }

  /**
   * Bulk copy rate (GB/s) of one run: `-t bulk -H proc -c 2097152` over `bytes` (the same size as
   * ours: on this VM a copy into memory never touched before is much slower than into reused memory,
   * so a 64 MiB floor against a 1 GiB drain would not be a fair ratio).
   */
  bulk(bytes = 64 << 20): number {
    return this.bulkRun(bytes).gbs;
  }

  /** One bulk run (as `bulk`): its rate and how long the copy took. */
  bulkRun(bytes: number): { gbs: number; seconds: number } {
    const pages = Math.floor(bytes / 4096);
    const img = this.image(pages);
    const out = execFileSync(this.bin, ['run', '-t', 'bulk', '-H', 'proc', '-c', '2097152', '-n', '1', '-N', String(pages), '-i', img], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 120_000,
    });
    const gbs = / gbs=([\d.]+)/.exec(out);
    const ms = / bulk_ms=([\d.]+)/.exec(out);
    if (!gbs || !ms) throw new Error(`floor bulk printed no rate: ${out}`);
    return { gbs: Number(gbs[1]), seconds: Number(ms[1]) / 1000 };
  }

  /** A page image of `pages` pages for `floor run -N pages` (generated once). */
  private image(pages: number): string {
    const img = join(this.dir, `floor-pages-${pages}.img`);
    if (!existsSync(img)) execFileSync(this.bin, ['gen', '-N', String(pages), '-i', img], { stdio: 'pipe' });
    return img;
  }

  /** Remove the floor's images. */
  cleanup(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Raw latencies (u64 ns each, little-endian: restore-sim --latencies, the floor's tap) in µs. */
export function nsToUs(raw: Buffer): Float64Array {
  const n = Math.floor(raw.length / 8);
  const us = new Float64Array(n);
  for (let i = 0; i < n; i++) us[i] = Number(raw.readBigUInt64LE(i * 8)) / 1000;
  return us;
}

/** Median of a list of numbers. */
export function median(xs: number[]): number {
  const s = xs.slice().sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}
