/**
 * `lazy-pages bench --json --plot` end to end, small (4 MiB, 2 runs, no drain, no page server): the
 * raw latency histograms in the JSON add up to the samples the bench took, and the SVG plot is
 * well-formed SVG with one line per series. Needs root and the restore simulator (as the bench does).
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { plotPath } from '../ts/bench/plot.js';
import { simulatorPath } from '../ts/sim/run.js';
import { bin } from './helpers/cli.js';
import { skipUnless } from './helpers/skip.js';

const simBuilt = (() => {
  try {
    simulatorPath();
    return true;
  } catch {
    return false;
  }
})();
const root = process.getuid?.() === 0;
const why = !root ? 'needs root' : !simBuilt ? 'needs the restore simulator (npm run build:sim)' : '';
const benchTest = skipUnless(why === '', why);

interface XmlElement {
  name: string;
  attrs: Record<string, string>;
  children: XmlElement[];
}

/** A strict little XML parser (well-formedness: one root, balanced tags, quoted attributes, known entities). */
function parseXml(text: string): XmlElement {
  const top: XmlElement = { name: '#document', attrs: {}, children: [] };
  const stack = [top];
  const token = /<!--[\s\S]*?-->|<\?[\s\S]*?\?>|<(\/?)([A-Za-z_][\w:.-]*)((?:\s+[A-Za-z_][\w:.-]*\s*=\s*(?:"[^"<]*"|'[^'<]*'))*)\s*(\/?)>|([^<]+)/gy;
  let m: RegExpExecArray | null;
  let at = 0;
  while (at < text.length) {
    token.lastIndex = at;
    m = token.exec(text);
    if (!m) throw new Error(`not XML at offset ${at}: ${JSON.stringify(text.slice(at, at + 60))}`);
    at = token.lastIndex;
    const [all, close, name, attrText, selfClose, chars] = m;
    if (chars !== undefined) {
      if (/&(?!(?:amp|lt|gt|quot|apos|#\d+|#x[\da-fA-F]+);)/.test(chars)) throw new Error(`bad entity in ${JSON.stringify(chars.slice(0, 60))}`);
      if (stack.length === 1 && chars.trim()) throw new Error('text outside the root element');
      continue;
    }
    if (!name) continue; // comment or processing instruction
    if (close) {
      const open = stack.pop()!;
      if (open.name !== name || stack.length === 0) throw new Error(`</${name}> closes <${open.name}>`);
      continue;
    }
    const attrs: Record<string, string> = {};
    for (const a of attrText.matchAll(/([A-Za-z_][\w:.-]*)\s*=\s*(?:"([^"]*)"|'([^']*)')/g)) {
      if (a[1] in attrs) throw new Error(`duplicate attribute ${a[1]} in ${all.slice(0, 80)}`);
      attrs[a[1]] = a[2] ?? a[3];
    }
    const el: XmlElement = { name, attrs, children: [] };
    if (stack.length === 1 && top.children.length) throw new Error('a second root element');
    stack[stack.length - 1].children.push(el);
    if (!selfClose) stack.push(el);
  }
  if (stack.length !== 1) throw new Error(`<${stack[stack.length - 1].name}> not closed`);
  if (top.children.length !== 1) throw new Error('no root element');
  return top.children[0];
}

function* walk(e: XmlElement): Generator<XmlElement> {
  yield e;
  for (const c of e.children) yield* walk(c);
}

const classes = (e: XmlElement) => (e.attrs.class ?? '').split(/\s+/);

interface SeriesDoc {
  label: string;
  samples: number;
  underflow: number;
  overflow: number;
  minUs: number;
  maxUs: number;
  counts: number[];
  runs: { samples: number; underflow: number; overflow: number; counts: number[] }[];
}

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

benchTest('bench --json --plot (4 MiB, 2 runs): histograms sum to the samples taken; the SVG has one CDF line per series', (t) => {
  const out = mkdtempSync(join(tmpdir(), 'bench-plot-test-'));
  t.teardown(() => rmSync(out, { recursive: true, force: true }));
  const json = join(out, 'results.json');
  const svgFile = join(out, 'latency.svg');
  const runs = 2;
  const r = spawnSync(
    process.execPath,
    [bin, 'bench', '--runs', String(runs), '--size', '4M', '--no-bulk', '--no-remote', '--json', json, '--plot', svgFile],
    { encoding: 'utf8', timeout: 150_000, killSignal: 'SIGINT' },
  );
  t.is(r.status, 0, `${r.stdout}\n${r.stderr}`);
  t.regex(r.stdout, new RegExp(`plot written to ${svgFile.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
  t.false(existsSync(join(out, 'results.svg')), 'an explicit --plot replaces the default path');

  // ---- the JSON's histograms
  const res = JSON.parse(readFileSync(json, 'utf8'));
  t.is(res.schemaVersion, 2);
  const h = res.histograms;
  t.is(h.unit, 'us');
  const edges: number[] = h.edges;
  t.true(edges.length > 10);
  for (let i = 1; i < edges.length; i++) t.true(edges[i] > edges[i - 1], `edges increase at ${i}`);
  const series: Record<string, SeriesDoc> = h.fault.series;
  // ours always; the floor when the bench found one (it then reports its percentiles too)
  t.deepEqual(Object.keys(series), res.latency.floor ? ['lazyPages', 'floor'] : ['lazyPages']);
  for (const [name, s] of Object.entries(series)) {
    const ctx = `${name}: ${JSON.stringify({ ...s, runs: s.runs.length })}`;
    t.is(s.counts.length, edges.length - 1, ctx);
    t.true(s.counts.every((c) => Number.isInteger(c) && c >= 0), ctx);
    t.is(sum(s.counts) + s.underflow + s.overflow, s.samples, ctx);
    t.true(s.samples > 0, ctx);
    t.is(s.runs.length, runs, ctx);
    for (const run of s.runs) t.is(sum(run.counts) + run.underflow + run.overflow, run.samples, ctx);
    t.is(sum(s.runs.map((x) => x.samples)), s.samples, ctx);
    t.deepEqual(s.counts, s.counts.map((_, i) => sum(s.runs.map((x) => x.counts[i]))), ctx);
    // every sample in the bin its value falls in: the smallest and the largest sample bound the non-empty bins
    const first = s.counts.findIndex((c) => c > 0);
    const last = s.counts.length - 1 - [...s.counts].reverse().findIndex((c) => c > 0);
    t.true(s.minUs >= edges[first] && s.minUs < edges[first + 1], ctx);
    t.true(s.maxUs >= edges[last] && s.maxUs < edges[last + 1], ctx);
    const p = name === 'lazyPages' ? res.latency.lazyPages : res.latency.floor;
    t.true(p.p50 >= s.minUs && p.p50 <= s.maxUs, ctx);
  }
  // ours: one sample per fault the simulator counted, in every run (every page faults: background off)
  for (const run of series.lazyPages.runs) t.is(run.samples, res.latency.faults);

  // ---- the SVG
  const svgText = readFileSync(svgFile, 'utf8');
  const svg = parseXml(svgText);
  t.is(svg.name, 'svg');
  t.is(svg.attrs.xmlns, 'http://www.w3.org/2000/svg');
  t.true(Number(svg.attrs.width) > 0 && Number(svg.attrs.height) > 0);
  const lineGroups = [...walk(svg)].filter((e) => e.name === 'g' && classes(e).includes('mark-line'));
  t.is(lineGroups.length, Object.keys(series).length, 'one line mark group per series');
  const labels = Object.values(series).map((s) => s.label);
  for (const [i, g] of lineGroups.entries()) {
    const paths = g.children.filter((c) => c.name === 'path');
    t.is(paths.length, 1, `one path in line group ${i}`);
    t.regex(paths[0].attrs.d ?? '', /^M[\d.,-]+(L[\d.,-]+)+$/, `a drawn line ${i}`);
    t.is(paths[0].attrs['aria-label'], `CDF of ${labels[i]} (${series[Object.keys(series)[i]].samples.toLocaleString('en')})`);
  }
  const legendLabels = [...walk(svg)].filter((e) => e.name === 'g' && classes(e).includes('role-legend-label'));
  t.is(legendLabels.length, labels.length, 'a legend entry per series');
});

test('the plot goes next to --json by default, to --plot when given, nowhere with --no-plot', (t) => {
  t.is(plotPath(undefined, 'out/bench.json'), 'out/bench.svg');
  t.is(plotPath(undefined, 'results'), 'results.svg');
  t.is(plotPath('x.svg', 'out/bench.json'), 'x.svg');
  t.is(plotPath('x.svg', undefined), 'x.svg');
  t.is(plotPath(false, 'out/bench.json'), undefined);
  t.is(plotPath(undefined, undefined), undefined);
});
