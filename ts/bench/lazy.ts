/**
 * Our side of the benchmark: a real lazy restore of a synthetic checkpoint by the restore
 * simulator against the daemon, the same shape as the floor's test (one process, one region,
 * 4 KiB first touches). With `pageServer`, the pages come from a page server over loopback.
 */
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';

import { startLazyPagesDaemon } from '../daemon/daemon.js';
import type { Checkpoint } from '../images/index.js';
import { layoutFor } from '../sim/layout.js';
import { simulatorPath, startSimulator } from '../sim/run.js';
import { nsToUs } from './floor.js';

export interface LatencyRun {
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  faultsPerSec: number;
  faults: number;
  /** With `samples`: the latency of every fault, µs (as many as `faults`). */
  samplesUs?: Float64Array;
}

export interface LatencyOptions {
  order: 'rand' | 'seq';
  seed: number;
  /** Background transfer during the run (default off: every page is a fault). */
  background?: boolean;
  /** Touch only this many random pages (default: all). */
  count?: number;
  pageServer?: { address: string; port: number };
  pieceBytes?: number;
  /** Also return every fault's latency (the simulator's --latencies). */
  samples?: boolean;
}

/** One run of per-fault latency (µs) as the restored process sees it: time of each first touch. */
export async function lazyLatency(ck: Checkpoint, workDir: string, o: LatencyOptions): Promise<LatencyRun> {
  simulatorPath(); // before the daemon starts: a missing simulator must not leave it running (the bench hung)
  const d = await startLazyPagesDaemon({ imagesDir: ck.dir, workDir, background: o.background ?? false, pageServer: o.pageServer, pieceBytes: o.pieceBytes });
  const workload = o.count
    ? ['--workload', 'touch-random', '--count', String(o.count)]
    : ['--workload', 'touch-all'];
  const latFile = o.samples ? join(workDir, `latencies-${process.pid}-${o.seed}.bin`) : undefined;
  const sim = startSimulator(layoutFor(ck, workDir), [...workload, '--order', o.order, '--seed', String(o.seed)], { latencies: latFile });
  try {
    const res = await sim.result;
    const p = res.report?.processes[0];
    if (res.code !== 0 || !p?.latencyNs) throw new Error(`simulator failed (exit ${res.code}): ${res.stderr.trim()}`);
    const l = p.latencyNs;
    return {
      p50: l.p50 / 1000,
      p90: l.p90 / 1000,
      p99: l.p99 / 1000,
      p999: l.p999 / 1000,
      faultsPerSec: 1e9 / l.mean,
      faults: l.count,
      ...(latFile ? { samplesUs: nsToUs(readFileSync(latFile)) } : {}),
    };
  } finally {
    if (latFile) rmSync(latFile, { force: true });
    await sim.stop();
    await d.close('benchmark run ended');
    await gone(ck.processes.map((p) => p.pid));
  }
}

/** One run of the background drain: GB/s from "restore finished" to every page installed. */
export async function lazyBulk(
  ck: Checkpoint,
  workDir: string,
  o: { chunkBytes?: number; pieceBytes?: number; pageServer?: { address: string; port: number } } = {},
): Promise<{ gbs: number; bytes: number; ms: number }> {
  let t0 = 0;
  let t1 = 0;
  simulatorPath(); // before the daemon starts (see lazyLatency)
  const d = await startLazyPagesDaemon({
    imagesDir: ck.dir,
    workDir,
    chunkBytes: o.chunkBytes,
    pieceBytes: o.pieceBytes,
    pageServer: o.pageServer,
    onEvent: (e) => {
      if (e.type === 'restore-finished') t0 = performance.now();
      if (e.type === 'done') t1 = performance.now();
    },
  });
  const sim = startSimulator(layoutFor(ck, workDir), ['--workload', 'hold', '--timeout', '300']);
  try {
    const summary = await Promise.race([
      d.done,
      sim.result.then((r) => {
        throw new Error(`simulator ended before the transfer did (exit ${r.code}): ${r.stderr.trim()}`);
      }),
    ]);
    const bytes = summary.processes.reduce((a, p) => a + p.bytes, 0);
    const ms = t1 - t0;
    return { gbs: bytes / (ms / 1000) / 1e9, bytes, ms };
  } finally {
    await sim.stop();
    await d.close('benchmark run ended');
    await gone(ck.processes.map((p) => p.pid));
  }
}

/** Wait until none of `pids` exists (the next run restores the same pids). */
async function gone(pids: number[]): Promise<void> {
  for (let i = 0; i < 200 && pids.some((p) => existsSync(`/proc/${p}`)); i++) await new Promise((r) => setTimeout(r, 10));
}
