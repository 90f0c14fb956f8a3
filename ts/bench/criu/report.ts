/**
 * The report of `lazy-pages bench --criu`: medians per daemon, ours / CRIU per measure, a table for
 * people and everything (every run, the medians) as JSON.
 */
import { cpus, hostname, release } from 'node:os';

import { median } from '../floor.js';
import { writeResults } from '../results-json.js';
import type { RunResult } from './restore-run.js';

type NumKey = { [K in keyof RunResult]: RunResult[K] extends number | null ? K : never }[keyof RunResult];

interface Row {
  key: NumKey;
  label: (c: ReportContext) => string;
  unit: string;
  digits: number;
}

export interface ReportContext {
  title: string;
  sizeMiB: number;
  touches: number;
  runs: number;
  remote: boolean;
  tree: boolean;
}

const ROWS: Row[] = [
  { key: 'allInS', label: () => 'restore start → all pages in (daemon exit)', unit: 's', digits: 3 },
  { key: 'resumeS', label: () => 'restore start → program resumed', unit: 's', digits: 3 },
  { key: 'workingSetInS', label: () => 'restore start → working set installed', unit: 's', digits: 3 },
  { key: 'touchTotalMs', label: (c) => `${c.touches} random first touches, total`, unit: 'ms', digits: 1 },
  { key: 'touchP50Us', label: () => 'touch p50', unit: 'µs', digits: 1 },
  { key: 'touchP99Us', label: () => 'touch p99', unit: 'µs', digits: 1 },
  { key: 'touchP999Us', label: () => 'touch p99.9', unit: 'µs', digits: 1 },
  { key: 'touchFaults', label: () => 'touches that faulted (page not in yet)', unit: '', digits: 0 },
  { key: 'faultP50Us', label: () => 'fault p50 (touches that faulted)', unit: 'µs', digits: 1 },
  { key: 'faultP99Us', label: () => 'fault p99 (touches that faulted)', unit: 'µs', digits: 1 },
  { key: 'fullReadMs', label: (c) => (c.tree ? `full read + check, slowest of 3 (${Math.floor(c.sizeMiB / 3)} MiB each)` : `full read + check of ${c.sizeMiB} MiB`), unit: 'ms', digits: 1 },
  { key: 'rateMiBs', label: () => 'rate (lazy MiB ÷ restore start → all in)', unit: 'MiB/s', digits: 0 },
  { key: 'daemonCpuS', label: () => 'daemon CPU (user + sys, whole life)', unit: 's', digits: 3 },
  { key: 'daemonPeakRssMiB', label: () => 'daemon peak RSS', unit: 'MiB', digits: 1 },
  { key: 'daemonAnonRssMiB', label: () => 'daemon peak anonymous RSS', unit: 'MiB', digits: 1 },
  { key: 'programFaults', label: () => 'program faults after resume (touches + read)', unit: '', digits: 0 },
  { key: 'pagesOnDemand', label: () => "pages on demand (daemon's count)", unit: '', digits: 0 },
  { key: 'pagesBackground', label: () => "pages in background (daemon's count)", unit: '', digits: 0 },
  { key: 'wrongWords', label: () => 'wrong words (every run)', unit: '', digits: 0 },
];

export type Medians = Partial<Record<NumKey, number | null>>;

/** Median of each measure over runs (null when no run has it). wrongWords is the sum, not a median. */
export function mediansOf(runs: RunResult[]): Medians {
  const m: Medians = {};
  for (const { key } of ROWS) {
    const xs = runs.map((r) => r[key]).filter((x): x is number => typeof x === 'number' && Number.isFinite(x));
    m[key] = key === 'wrongWords' ? xs.reduce((a, b) => a + b, 0) : xs.length ? median(xs) : null;
  }
  return m;
}

export function ratios(ours: Medians, criu: Medians): Medians {
  const r: Medians = {};
  for (const { key } of ROWS) {
    const a = ours[key];
    const b = criu[key];
    r[key] = typeof a === 'number' && typeof b === 'number' && b !== 0 && key !== 'wrongWords' ? a / b : null;
  }
  return r;
}

const fmt = (v: number | null | undefined, digits: number, unit: string) =>
  typeof v === 'number' ? `${v.toLocaleString('en', { minimumFractionDigits: digits, maximumFractionDigits: digits })}${unit ? ` ${unit}` : ''}` : '—';

/** The table: one row per measure; columns CRIU, ours (and ours without background, remote), ours / CRIU. */
export function formatTable(c: ReportContext, criu: Medians, ours: Medians, oursAlone?: Medians, oursWs?: Medians): string {
  const r = ratios(ours, criu);
  const rw = oursWs ? ratios(oursWs, criu) : undefined;
  const x = (v: unknown) => (typeof v === 'number' ? `${v.toFixed(2)}×` : '—');
  const head = [
    'measure',
    '`criu lazy-pages`',
    '`lazy-pages daemon`',
    ...(oursAlone ? ['ours, --no-background'] : []),
    'ours / CRIU',
    ...(oursWs ? ['ours + working set', 'with working set / CRIU'] : []),
  ];
  const rows = ROWS.map((row) => [
    row.label(c),
    fmt(criu[row.key], row.digits, row.unit),
    fmt(ours[row.key], row.digits, row.unit),
    ...(oursAlone ? [fmt(oursAlone[row.key], row.digits, row.unit)] : []),
    x(r[row.key]),
    ...(oursWs && rw ? [fmt(oursWs[row.key], row.digits, row.unit), x(rw[row.key])] : []),
  ]);
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((x) => x[i].length)));
  const line = (cells: string[]) => `| ${cells.map((x, i) => (i === 0 ? x.padEnd(w[i]) : x.padStart(w[i]))).join(' | ')} |`;
  return [
    `${c.title} (medians of ${c.runs} run${c.runs === 1 ? '' : 's'})`,
    line(head),
    `|${w.map((n, i) => (i === 0 ? '-'.repeat(n + 2) : `${'-'.repeat(n + 1)}:`)).join('|')}|`,
    ...rows.map(line),
  ].join('\n');
}

/**
 * Remote fault latency of ours alone (--no-background) vs during the background stream (issue #8:
 * ≤ 2×): the p50 of the touches that faulted (with the background on, many touches find their
 * page already in and would hide the faults in a plain touch p50).
 */
export function remoteFault(ours: Medians, oursAlone: Medians): { aloneP50Us: number; duringBackgroundP50Us: number; ratio: number; target: number; met: boolean } | undefined {
  const a = oursAlone.faultP50Us;
  const b = ours.faultP50Us;
  if (typeof a !== 'number' || typeof b !== 'number') return undefined;
  return { aloneP50Us: a, duringBackgroundP50Us: b, ratio: b / a, target: 2, met: b / a <= 2 };
}

export function machine(): Record<string, unknown> {
  return { host: hostname(), kernel: release(), cpus: cpus().length, cpuModel: cpus()[0]?.model, node: process.version };
}

export function writeJson(file: string, data: unknown): void {
  writeResults(file, data);
}
