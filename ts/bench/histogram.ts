/**
 * Raw latency histograms for the bench JSON (`histograms` key) and its plot: log-spaced bins of
 * 10 ns .. 1 s, ten per decade, the same edges for every series and every bench so that files can
 * be compared and merged by adding counts.
 *
 * In the JSON (schemaVersion 2):
 *
 *   histograms: {
 *     about, unit: "us", binsPerDecade: 10,
 *     edges: [0.01, 0.01259, ..., 1000000],      // 81 edges, 80 bins
 *     <metric>: {                                // "fault" (bench), "touch" and "fault" (bench --criu)
 *       about,
 *       series: {
 *         <name>: {                              // lazyPages, floor; criu, ours, oursNoBackground
 *           label, samples, underflow, overflow, minUs, maxUs,
 *           counts: [...80],                     // merged over runs
 *           runs: [{ samples, underflow, overflow, counts }, ...],
 *         }, ...
 *       }
 *     }, ...
 *   }
 *
 * counts[i] is the number of samples x with edges[i] <= x < edges[i+1]; underflow counts x <
 * edges[0], overflow x >= the last edge, so that samples = sum(counts) + underflow + overflow.
 */

/** Lowest edge, µs (10 ns: below the resolution of the clocks the samples come from). */
export const LOWEST_US = 0.01;
/** Bins per decade. */
export const BINS_PER_DECADE = 10;
/** Decades covered: 10 ns .. 1 s. */
export const DECADES = 8;

/** The bin edges in µs, rounded to 4 significant digits (binning uses these very values). */
export const EDGES_US: readonly number[] = Object.freeze(
  Array.from({ length: DECADES * BINS_PER_DECADE + 1 }, (_, k) => Number((LOWEST_US * 10 ** (k / BINS_PER_DECADE)).toPrecision(4))),
);

export interface Histogram {
  samples: number;
  underflow: number;
  overflow: number;
  counts: number[];
  /** Smallest and largest sample, µs (null when there is none). */
  minUs: number | null;
  maxUs: number | null;
}

/** Index of the bin of `x` µs: -1 below the first edge, counts.length at or above the last. */
function binOf(x: number): number {
  const e = EDGES_US;
  if (!(x >= e[0])) return -1; // NaN too (never seen: counted as underflow rather than lost)
  if (x >= e[e.length - 1]) return e.length - 1;
  let lo = 0;
  let hi = e.length - 1; // e[lo] <= x < e[hi]
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (e[mid] <= x) lo = mid;
    else hi = mid;
  }
  return lo;
}

/** The histogram of samples in µs. */
export function histogramOf(samplesUs: ArrayLike<number>): Histogram {
  const h: Histogram = { samples: samplesUs.length, underflow: 0, overflow: 0, counts: new Array<number>(EDGES_US.length - 1).fill(0), minUs: null, maxUs: null };
  for (let i = 0; i < samplesUs.length; i++) {
    const x = samplesUs[i];
    const b = binOf(x);
    if (b < 0) h.underflow++;
    else if (b >= h.counts.length) h.overflow++;
    else h.counts[b]++;
    if (h.minUs === null || x < h.minUs) h.minUs = x;
    if (h.maxUs === null || x > h.maxUs) h.maxUs = x;
  }
  return h;
}

/** The sum of histograms (of the same edges). */
export function mergeHistograms(hs: Histogram[]): Histogram {
  const m: Histogram = { samples: 0, underflow: 0, overflow: 0, counts: new Array<number>(EDGES_US.length - 1).fill(0), minUs: null, maxUs: null };
  for (const h of hs) {
    m.samples += h.samples;
    m.underflow += h.underflow;
    m.overflow += h.overflow;
    h.counts.forEach((c, i) => (m.counts[i] += c));
    if (h.minUs !== null && (m.minUs === null || h.minUs < m.minUs)) m.minUs = h.minUs;
    if (h.maxUs !== null && (m.maxUs === null || h.maxUs > m.maxUs)) m.maxUs = h.maxUs;
  }
  return m;
}

/** One series of a metric: its runs, merged, with a label for the plot. */
export interface Series {
  label: string;
  runs: Histogram[];
}

export interface SeriesDoc extends Histogram {
  label: string;
  runs: Omit<Histogram, 'minUs' | 'maxUs'>[];
}

export interface MetricDoc {
  about: string;
  series: Record<string, SeriesDoc>;
}

/** The `histograms` value of a bench JSON: the shared edges and, per metric, every series merged and per run. */
export function histogramsDoc(metrics: Record<string, { about: string; series: Record<string, Series> }>): Record<string, unknown> {
  const doc: Record<string, unknown> = {
    about:
      'latency histograms: counts[i] = samples x with edges[i] <= x < edges[i+1] (x in unit); underflow: x < edges[0]; ' +
      'overflow: x >= the last edge; samples = sum(counts) + underflow + overflow. Per series: merged over its runs, and each run in runs.',
    unit: 'us',
    binsPerDecade: BINS_PER_DECADE,
    edges: EDGES_US,
  };
  for (const [name, m] of Object.entries(metrics)) {
    const series: Record<string, SeriesDoc> = {};
    for (const [key, s] of Object.entries(m.series)) {
      if (!s.runs.length) continue;
      series[key] = {
        label: s.label,
        ...mergeHistograms(s.runs),
        runs: s.runs.map(({ samples, underflow, overflow, counts }) => ({ samples, underflow, overflow, counts })),
      };
    }
    doc[name] = { about: m.about, series } satisfies MetricDoc;
  }
  return doc;
}

/**
 * The empirical CDF of a histogram at the bin edges, for the plot: at the lower edge of the first
 * non-empty bin the fraction below it (the underflow), then at each upper edge the fraction below
 * that edge, up to the last non-empty bin. Empty when there are no samples in the bins.
 */
export function cdfPoints(h: Pick<Histogram, 'samples' | 'underflow' | 'counts'>): { us: number; fraction: number }[] {
  const first = h.counts.findIndex((c) => c > 0);
  if (first < 0 || h.samples === 0) return [];
  let last = h.counts.length - 1;
  while (h.counts[last] === 0) last--;
  let below = h.underflow;
  const pts = [{ us: EDGES_US[first], fraction: below / h.samples }];
  for (let i = first; i <= last; i++) {
    below += h.counts[i];
    pts.push({ us: EDGES_US[i + 1], fraction: below / h.samples });
  }
  return pts;
}
