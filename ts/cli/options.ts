/**
 * Option validation at the CLI boundary: yargs parses, zod decides. A bad option becomes one line
 * naming the option, and exit code 1.
 */
import type { z } from 'zod';
import { UserError } from '../errors.js';

/** Validate parsed yargs options with a zod schema; the first problem becomes a UserError naming the option. */
export function validate<T extends z.ZodType>(schema: T, argv: unknown): z.infer<T> {
  const r = schema.safeParse(argv);
  if (r.success) return r.data;
  const issue = r.error.issues[0];
  const key = issue.path.map(String).join('.');
  const flag = key ? `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}` : 'options';
  // yargs turns a non-number given for a number option into NaN: zod's own words for that
  // ("expected number, received NaN") are not the user's.
  const expected = (issue as { expected?: string }).expected;
  const message = issue.code === 'invalid_type' && expected === 'number' ? 'must be a number' : issue.message;
  throw new UserError('EOPTION', `${flag}: ${message}`);
}

/** Parse a size like 64M, 1G, 4096, 2KiB into bytes. */
export function parseSize(v: string | number): number {
  if (typeof v === 'number') return v;
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?$/i.exec(v.trim());
  if (!m) throw new UserError('EOPTION', `not a size: ${JSON.stringify(v)} (use e.g. 4096, 64M, 1G)`);
  const mult = { '': 1, k: 1 << 10, m: 1 << 20, g: 1 << 30, t: 2 ** 40 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  return Math.round(Number(m[1]) * mult);
}
