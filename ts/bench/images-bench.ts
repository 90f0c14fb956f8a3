/**
 * Page-lookup benchmark: index build time and lookup latency over a synthetic pagemap of
 * 1,000,000 entries (in memory). CRIU rescans its pagemap per fault; ours must stay O(log n).
 * Run alone: `npx tsx ts/bench/images-bench.ts`.
 */
import { pathToFileURL } from 'node:url';
import { PageIndex, type PageRange } from '../images/index.js';

export interface ImagesBenchResult {
  entries: number;
  buildMs: number;
  lookups: number;
  /** Median over runs of the mean time of one lookup. */
  nsPerLookup: number;
  runs: number;
}

export async function benchImages(opts: { entries?: number; lookups?: number; runs?: number } = {}): Promise<ImagesBenchResult> {
  const entries = opts.entries ?? 1_000_000;
  const lookups = opts.lookups ?? 200_000;
  const runs = opts.runs ?? 5;
  // Entries of 1..4 pages with a one-page hole after each, like a sparse heap; half are in the file.
  const ranges: PageRange[] = new Array(entries);
  let addr = 0x100000000n;
  let offset = 0n;
  for (let i = 0; i < entries; i++) {
    const len = BigInt(1 + (i % 4)) * 4096n;
    ranges[i] = { start: addr, end: addr + len, location: i % 2 ? { kind: 'remote' } : { kind: 'file', file: '/bench/pages-1.img', offset } };
    if (i % 2 === 0) offset += len;
    addr += len + 4096n;
  }
  const t0 = performance.now();
  const index = new PageIndex(ranges);
  const buildMs = performance.now() - t0;
  // Random addresses drawn up front so the loop times only lookups.
  const span = Number((addr - 0x100000000n) / 4096n);
  const probes = new BigUint64Array(lookups);
  let x = 12345;
  for (let i = 0; i < lookups; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    probes[i] = 0x100000000n + BigInt(x % span) * 4096n + 8n;
  }
  const perRun: number[] = [];
  let sink = 0;
  for (let r = 0; r < runs; r++) {
    const s = performance.now();
    for (let i = 0; i < lookups; i++) sink += index.lookup(probes[i]!).kind.length;
    perRun.push(((performance.now() - s) * 1e6) / lookups);
  }
  if (sink === 0) throw new Error('unreachable: keeps the lookups from being optimised away');
  perRun.sort((a, b) => a - b);
  return { entries, buildMs, lookups, nsPerLookup: perRun[runs >> 1]!, runs };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  // No top-level await: this module is also part of the CommonJS CLI bundle (scripts/bundle-cli.mjs).
  void benchImages().then((r) => {
    console.log(`page index: ${r.entries} entries built in ${r.buildMs.toFixed(1)} ms; lookup ${r.nsPerLookup.toFixed(0)} ns (median of ${r.runs} runs of ${r.lookups})`);
  });
}
