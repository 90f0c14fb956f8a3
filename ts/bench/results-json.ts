/**
 * How the bench commands write their JSON: indented like JSON.stringify(x, null, 2), except that an
 * array of plain numbers (a histogram's edges and counts) stays on one line, so that a file with a
 * few hundred bins remains readable. The data is exactly JSON.stringify's.
 */
import { writeFileSync } from 'node:fs';

/** Version of the bench JSON layouts: 2 added `histograms` (the layouts before had no version). */
export const BENCH_SCHEMA_VERSION = 2;

export function formatResults(data: unknown): string {
  // Through JSON first: toJSON, undefined members dropped, NaN and Infinity as null, as JSON.stringify does.
  return pretty(JSON.parse(JSON.stringify(data) ?? 'null'), '');
}

function pretty(v: unknown, indent: string): string {
  if (v === null || typeof v !== 'object') return JSON.stringify(v);
  const inner = `${indent}  `;
  if (Array.isArray(v)) {
    if (v.length === 0) return '[]';
    if (v.every((x) => typeof x === 'number')) return `[${v.join(', ')}]`;
    return `[\n${v.map((x) => inner + pretty(x, inner)).join(',\n')}\n${indent}]`;
  }
  const entries = Object.entries(v);
  if (entries.length === 0) return '{}';
  return `{\n${entries.map(([k, x]) => `${inner}${JSON.stringify(k)}: ${pretty(x, inner)}`).join(',\n')}\n${indent}}`;
}

export function writeResults(file: string, data: unknown): void {
  writeFileSync(file, `${formatResults(data)}\n`);
}
