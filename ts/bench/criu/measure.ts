/**
 * What each daemon cost and did, read after it exited: CPU and peak RSS from the rusage wrapper
 * (rusage.c: fork + exec + wait4), and its page counts from its own log.
 */
import { existsSync, readFileSync } from 'node:fs';

export interface DaemonUsage {
  exitCode: number;
  signal: number;
  userS: number;
  sysS: number;
  maxRssMiB: number;
  /** Peak anonymous RSS (sampled every 2 ms), MiB. */
  anonRssMiB: number;
  /** CLOCK_MONOTONIC when the daemon was reaped (the clock of process.hrtime). */
  endNs: bigint;
}

/** Parses the line rusage.c writes. Undefined if the wrapper wrote none (it was killed). */
export function readUsage(file: string): DaemonUsage | undefined {
  if (!existsSync(file)) return undefined;
  const kv = Object.fromEntries(
    readFileSync(file, 'utf8')
      .trim()
      .split(/\s+/)
      .map((p) => p.split('=') as [string, string]),
  );
  return {
    exitCode: Number(kv.exit),
    signal: Number(kv.signal),
    userS: Number(kv.utime_us) / 1e6,
    sysS: Number(kv.stime_us) / 1e6,
    maxRssMiB: Number(kv.maxrss_kb) / 1024,
    anonRssMiB: Number(kv.anon_kb) / 1024,
    endNs: BigInt(kv.end_ns),
  };
}

export interface PageCounts {
  onDemand: number;
  background: number;
}

/**
 * Ours: the per-process lines of `lazy-pages daemon` (-v2, the default):
 * "pid N: done in T ms: A pages on demand, B in background, Z zero pages, ...", summed over processes.
 */
export function oursPageCounts(log: string): PageCounts | undefined {
  let onDemand = 0;
  let background = 0;
  let n = 0;
  for (const m of log.matchAll(/: (\d+) pages on demand, (\d+) in background/g)) {
    onDemand += Number(m[1]);
    background += Number(m[2]);
    n++;
  }
  return n ? { onDemand, background } : undefined;
}

/**
 * CRIU, only with `criu lazy-pages -v4` (it slows CRIU's fault path: off unless --criu-v4): each
 * "#PF at" line is a fault it served with a one-page copy; "UFFD transferred pages: (C/T)" per
 * process is all it copied, so background = C - faults. (A fault already covered by a request in
 * flight is logged but copies nothing: a slight overcount of on-demand pages, remote only.)
 */
export function criuPageCounts(log: string): PageCounts | undefined {
  const faults = (log.match(/#PF at 0x/g) ?? []).length;
  let copied = 0;
  let n = 0;
  for (const m of log.matchAll(/UFFD transferred pages: \((\d+)\/(\d+)\)/g)) {
    copied += Number(m[1]);
    n++;
  }
  return n ? { onDemand: faults, background: Math.max(0, copied - faults) } : undefined;
}
