/**
 * Drive the restore simulator (crates/restore-sim): it plays `criu restore --lazy-pages` for a
 * checkpoint against a daemon, runs a workload in every restored process, verifies every byte and
 * reports as JSON. Used by `lazy-pages demo`, `lazy-pages bench` and the end-to-end tests.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { UserError } from '../errors.js';
import { findNativeExecutable } from '../native/executables.js';
import type { SimLayout } from './layout.js';


/**
 * Path of the simulator binary: $LAZY_PAGES_SIM, else next to the addon (the platform package of an
 * npm install, or native/ of a source checkout after `npm run build:sim`).
 */
export function simulatorPath(): string {
  const env = process.env.LAZY_PAGES_SIM;
  if (env) {
    if (!existsSync(env)) throw new UserError('ENOSIM', `the restore simulator LAZY_PAGES_SIM=${env} does not exist`);
    return env;
  }
  const { path, tried } = findNativeExecutable('restore-sim');
  if (!path) {
    throw new UserError(
      'ENOSIM',
      `the restore simulator is not installed (looked in ${tried.join(', ')}): ` +
        'install the platform package with lazy-pages, or run `npm run build:sim` in a source checkout',
    );
  }
  return path;
}

export interface SimLatency {
  count: number;
  min: number;
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  max: number;
  mean: number;
}

export interface SimProcessResult {
  pid: number;
  ok: boolean;
  touched?: number;
  verifiedPages?: number;
  badPages?: number;
  firstBad?: { addr: string; expected: string; got: string };
  killedBySignal?: number;
  latencyNs?: SimLatency;
  steps?: unknown[];
}

export interface SimReport {
  ok: boolean;
  processes: SimProcessResult[];
  handoverOrder?: number[];
  elapsedMs?: number;
}

export interface SimRun {
  pid: number;
  /** Resolves with the exit code, the parsed report (when one was printed) and stderr. */
  result: Promise<{ code: number | null; signal: NodeJS.Signals | null; report?: SimReport; stderr: string }>;
  kill(): void;
  /** SIGTERM (the simulator then kills every restored process), SIGKILL after 2 s; resolves when it has exited. */
  stop(): Promise<void>;
}

/** Start the simulator on a layout with extra arguments (workload, order, ...). */
export function startSimulator(layout: SimLayout, args: string[], opts: { latencies?: string } = {}): SimRun {
  const dir = mkdtempSync(join(tmpdir(), 'lazy-sim-'));
  const layoutFile = join(dir, 'layout.json');
  writeFileSync(layoutFile, JSON.stringify(layout));
  const extra = opts.latencies ? ['--latencies', opts.latencies] : [];
  const child = spawn(simulatorPath(), ['--layout', layoutFile, ...args, ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (b) => (out += b));
  child.stderr.on('data', (b) => (err += b));
  const result = new Promise<{ code: number | null; signal: NodeJS.Signals | null; report?: SimReport; stderr: string }>((res) => {
    child.once('close', (code, signal) => {
      rmSync(dir, { recursive: true, force: true });
      let report: SimReport | undefined;
      try {
        report = out.trim() ? (JSON.parse(out) as SimReport) : undefined;
      } catch {
        report = undefined;
      }
      res({ code, signal, report, stderr: err });
    });
  });
  return {
    pid: child.pid ?? -1,
    result,
    kill: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 2000);
        await result;
        clearTimeout(t);
      }
    },
  };
}
