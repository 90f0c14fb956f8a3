/**
 * The bench's plot: the latency distributions of its series (ours, the floor; CRIU's daemon with
 * --criu) as one SVG panel of CDFs over a log latency axis, drawn by Vega (https://vega.github.io)
 * from the histograms the JSON holds (histogram.ts).
 *
 * Vega is loaded only when a plot is written, and then in a worker thread (plot-render.ts): the CLI
 * runs from one CommonJS bundle in a vm.Script (scripts/bundle-cli.mjs, bin/load-bundle.cjs), where
 * an import() has no loader, and Vega (an ES module graph with top-level await) cannot be
 * require()d. Vega stays out of the bundle (external there), so `lazy-pages --help` and the daemon
 * never load it. From the TypeScript sources (tests) it is imported in process instead: a worker
 * there would not get tsx's loader (Node 20).
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';

import { fromSources, packageRoot } from '../package-root.js';
import { BINS_PER_DECADE, cdfPoints, EDGES_US, type Histogram } from './histogram.js';
import type { RenderRequest } from './plot-render.js';

export interface PlotSeries {
  /** The name in the legend. */
  label: string;
  hist: Pick<Histogram, 'samples' | 'underflow' | 'counts'>;
}

export interface LatencyPlot {
  title: string;
  /** Lines under the title (short ones: the SVG is as wide as Vega guesses the longest is, without a canvas to measure text). */
  subtitle?: string[];
  /** What one sample is, for the y axis: "faults", "first touches". */
  what: string;
  series: PlotSeries[];
}

/** Bins of empty margin kept around the data on the latency axis. */
const MARGIN_BINS = 2;

/** The Vega spec of the plot: one line mark per series (a group per series, from a facet). */
export function latencyPlotSpec(p: LatencyPlot): Record<string, unknown> {
  // each series is named in the legend with its number of samples
  const series = p.series
    .filter((s) => cdfPoints(s.hist).length > 0)
    .map((s) => ({ ...s, label: `${s.label} (${s.hist.samples.toLocaleString('en')})` }));
  const rows = series.flatMap((s) => cdfPoints(s.hist).map((pt) => ({ series: s.label, us: pt.us, fraction: pt.fraction })));
  // the latency axis spans the bins that hold samples (and a little margin), whole decades when that is near
  const idx = (us: number) => EDGES_US.indexOf(us);
  const lo = rows.length ? Math.max(0, Math.min(...rows.map((r) => idx(r.us))) - MARGIN_BINS) : 0;
  const hi = rows.length ? Math.min(EDGES_US.length - 1, Math.max(...rows.map((r) => idx(r.us))) + MARGIN_BINS) : EDGES_US.length - 1;
  // the domain is made whole decades (nice); ticks at 1, 2 and 5 of each
  const decades = EDGES_US.filter((e, i) => i % BINS_PER_DECADE === 0 && e >= EDGES_US[lo] / 10 && e <= EDGES_US[hi]);
  const ticks = decades.flatMap((d) => [d, 2 * d, 5 * d].map((x) => Number(x.toPrecision(4))));
  return {
    $schema: 'https://vega.github.io/schema/vega/v6.json',
    description: `${p.title}: CDF of the latency per series`,
    width: 640,
    height: 360,
    padding: 10,
    background: 'white',
    title: { text: p.title, ...(p.subtitle ? { subtitle: p.subtitle } : {}), anchor: 'start' },
    data: [{ name: 'cdf', values: rows }],
    scales: [
      { name: 'x', type: 'log', domain: [EDGES_US[lo], EDGES_US[hi]], range: 'width', nice: true },
      { name: 'y', type: 'linear', domain: [0, 1], range: 'height' },
      { name: 'color', type: 'ordinal', domain: series.map((s) => s.label), range: 'category' },
    ],
    axes: [
      {
        orient: 'bottom',
        scale: 'x',
        title: 'latency (log scale)',
        grid: true,
        values: ticks,
        labelOverlap: false,
        // a label at each decade, in ns, µs, ms or s
        encode: {
          labels: {
            update: {
              text: {
                signal:
                  "abs(log(datum.value) / LN10 - round(log(datum.value) / LN10)) > 0.01 ? '' : " +
                  "datum.value < 1 ? format(datum.value * 1000, '~g') + ' ns' : datum.value < 1000 ? format(datum.value, '~g') + ' µs' : " +
                  "datum.value < 1e6 ? format(datum.value / 1000, '~g') + ' ms' : format(datum.value / 1e6, '~g') + ' s'",
              },
            },
          },
        },
      },
      { orient: 'left', scale: 'y', title: `fraction of ${p.what} at or below`, grid: true, format: '%', tickCount: 10 },
    ],
    legends: [
      {
        stroke: 'color',
        orient: 'bottom-right',
        symbolType: 'stroke',
        symbolStrokeWidth: 2,
        fillColor: 'white',
        padding: 6,
        labelLimit: 400,
        titleLimit: 400,
        title: `series (${p.what})`,
      },
    ],
    marks: [
      {
        type: 'group',
        name: 'series',
        from: { facet: { name: 'points', data: 'cdf', groupby: 'series' } },
        marks: [
          {
            type: 'line',
            name: 'cdf-line',
            from: { data: 'points' },
            encode: {
              enter: {
                x: { scale: 'x', field: 'us' },
                y: { scale: 'y', field: 'fraction' },
                stroke: { scale: 'color', field: 'series' },
                strokeWidth: { value: 2 },
                interpolate: { value: 'linear' },
                description: { signal: "'CDF of ' + datum.series" },
              },
            },
          },
        ],
      },
    ],
  };
}

/** Renders a Vega spec to SVG text (see the top of this file for where). */
export async function renderSvg(spec: Record<string, unknown>): Promise<string> {
  if (fromSources) return (await import('./plot-render.js')).vegaToSvg(spec);
  return new Promise((resolve, reject) => {
    const w = new Worker(join(packageRoot, 'dist', 'bench', 'plot-render.js'), { workerData: { lazyPagesPlot: spec } satisfies RenderRequest });
    let svg: string | undefined;
    w.once('message', (m: string) => (svg = m));
    w.once('error', reject);
    w.once('exit', (code) => (svg !== undefined ? resolve(svg) : reject(new Error(`the plot renderer exited (${code}) without a plot`))));
  });
}

/** Writes the plot as SVG to `file`. */
export async function writeLatencyPlot(file: string, p: LatencyPlot): Promise<void> {
  writeFileSync(file, await renderSvg(latencyPlotSpec(p)));
}

/** The plot's path: --plot FILE, else with --json FILE.json the same path with .svg; none with --no-plot. */
export function plotPath(plot: string | boolean | undefined, json: string | undefined): string | undefined {
  if (plot === false) return undefined;
  if (typeof plot === 'string' && plot !== '') return plot;
  if (json === undefined) return undefined;
  return json.endsWith('.json') ? `${json.slice(0, -'.json'.length)}.svg` : `${json}.svg`;
}
