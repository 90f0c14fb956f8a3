/**
 * The physical floor: bench/floor.c, a minimal C userfaultfd handler. Our numbers are
 * reported as ratios to it, measured in the same run, because the machine is shared and noisy.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../package-root.js';

const repoRoot = packageRoot;

/** Where floor.c is looked for when --floor is not given. */
export const DEFAULT_FLOOR_SOURCE = join(repoRoot, 'bench', 'floor.c');

export class Floor {
  private constructor(
    private readonly bin: string,
    private readonly dir: string,
  ) {}

  /** Build floor.c (or use a built binary) and generate its 64 MiB image. Undefined when not found. */
  static prepare(source = DEFAULT_FLOOR_SOURCE): Floor | undefined {
    if (!existsSync(source)) return undefined;
    const dir = join(tmpdir(), `lazy-pages-floor-${process.pid}`);
    mkdirSync(dir, { recursive: true });
    let bin = source;
    if (source.endsWith('.c')) {
      bin = join(dir, 'floor');
      execFileSync('gcc', ['-O2', '-pthread', '-o', bin, source], { stdio: 'pipe' });
    }
    execFileSync(bin, ['gen', '-i', join(dir, 'floor-pages.img')], { stdio: 'pipe' });
    return new Floor(bin, dir);
  }

  /** One `floor run` with the given arguments; returns the parsed key=value fields of each R line. */
  run(args: string[]): Record<string, number>[] {
    const out = execFileSync(this.bin, ['run', ...args, '-i', join(this.dir, 'floor-pages.img')], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 120_000,
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

  /** Per-fault latency (µs) of one run: `-t lat -H proc -w poll -o ORDER`. */
  latency(order: 'rand' | 'seq'): { p50: number; p90: number; p99: number; p999: number; faultsPerSec: number } {
    const [r] = this.run(['-t', 'lat', '-H', 'proc', '-w', 'poll', '-o', order, '-n', '1']);
    return { p50: r.p50, p90: r.p90, p99: r.p99, p999: r.p999, faultsPerSec: r.faults_per_s };
  }

  /**
   * Bulk copy rate (GB/s) of one run: `-t bulk -H proc -c 2097152` over `bytes` (the same size as
   * ours: on this VM a copy into memory never touched before is much slower than into reused memory,
   * so a 64 MiB floor against a 1 GiB drain would not be a fair ratio).
   */
  bulk(bytes = 64 << 20): number {
    const pages = Math.floor(bytes / 4096);
    const img = join(this.dir, `floor-pages-${pages}.img`);
    if (!existsSync(img)) execFileSync(this.bin, ['gen', '-N', String(pages), '-i', img], { stdio: 'pipe' });
    const out = execFileSync(this.bin, ['run', '-t', 'bulk', '-H', 'proc', '-c', '2097152', '-n', '1', '-N', String(pages), '-i', img], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 120_000,
    });
    const m = / gbs=([\d.]+)/.exec(out);
    if (!m) throw new Error(`floor bulk printed no rate: ${out}`);
    return Number(m[1]);
  }

  /** Remove the floor's images. */
  cleanup(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Median of a list of numbers. */
export function median(xs: number[]): number {
  const s = xs.slice().sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}
