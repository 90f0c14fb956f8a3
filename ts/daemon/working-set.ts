/**
 * Working sets: the pages a restore of a checkpoint needed first, recorded once and installed first
 * the next time the same checkpoint is restored (REAP, FaaSnap: record the faults, prefetch them).
 *
 * The file (JSON, written atomically) names each process by its checkpoint pid and the fingerprint
 * of its memory layout, and lists the pages its restore served on demand as ranges of image
 * addresses in first-touch order, each with the time of its first touch. Image addresses do not
 * change when a restored process remaps or forks, so a recording holds across both. A file that
 * does not fit the checkpoint being restored (other pids, another layout, addresses outside its lazy
 * memory) is reported and ignored for that process: it can cost speed, never a wrong byte, because
 * the pages are still copied from the checkpoint being restored.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { z } from 'zod';

import { UserError } from '../errors.js';
import { PAGE_SIZE, type ProcessImage } from '../images/index.js';

export const WORKING_SET_FORMAT = 'lazy-pages-working-set';
export const WORKING_SET_VERSION = 1;

/** One recorded run: `pages` pages from image address `start`, first touched `firstTouchMs` after attach. */
export interface WorkingSetRange {
  start: bigint;
  pages: number;
  firstTouchMs: number;
}

export interface WorkingSetProcess {
  /** The process's pid in the checkpoint (pstree.img). */
  pid: number;
  /** {@link layoutFingerprint} of its memory when recorded. */
  layout: string;
  ranges: WorkingSetRange[];
}

export interface WorkingSet {
  processes: WorkingSetProcess[];
}

const hexAddr = z.string().regex(/^0x[0-9a-f]{1,16}$/, 'an address like "0x7f0000001000"');
const FileSchema = z.object({
  format: z.literal(WORKING_SET_FORMAT),
  version: z.literal(WORKING_SET_VERSION),
  pageSize: z.literal(PAGE_SIZE),
  processes: z.array(
    z.object({
      pid: z.number().int().positive(),
      layout: z.string().min(1),
      pages: z.number().int().nonnegative(),
      ranges: z.array(z.tuple([hexAddr, z.number().int().positive(), z.number().nonnegative()])),
    }),
  ),
});

/**
 * A process's memory layout as far as a working set depends on it: its VMAs and its lazy ranges
 * (where they start and end, not where their data is: a local and a remote restore of one
 * checkpoint share it).
 */
export function layoutFingerprint(image: ProcessImage): string {
  const h = createHash('sha256');
  for (const v of image.vmas) h.update(`v${v.start.toString(16)}-${v.end.toString(16)}:${v.flags}\n`);
  for (const r of image.lazyRanges) h.update(`l${r.start.toString(16)}-${r.end.toString(16)}\n`);
  return `sha256:${h.digest('hex')}`;
}

/** Parses a working-set file; anything wrong is one UserError naming the file and the field. */
export function readWorkingSet(file: string): WorkingSet {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new UserError('EWORKINGSET', `working set ${file}: cannot read it as JSON: ${(e as Error).message}`);
  }
  const r = FileSchema.safeParse(raw);
  if (!r.success) {
    const i = r.error.issues[0]!;
    throw new UserError('EWORKINGSET', `working set ${file}: ${i.path.join('.') || 'the file'}: ${i.message}`);
  }
  return {
    processes: r.data.processes.map((p) => ({
      pid: p.pid,
      layout: p.layout,
      ranges: p.ranges.map(([a, pages, t]) => ({ start: BigInt(a), pages, firstTouchMs: t })),
    })),
  };
}

/** Writes `ws` to `file` atomically (a temp file in the same dir, then rename). */
export function writeWorkingSet(file: string, ws: WorkingSet): void {
  const body = {
    format: WORKING_SET_FORMAT,
    version: WORKING_SET_VERSION,
    pageSize: PAGE_SIZE,
    processes: ws.processes.map((p) => ({
      pid: p.pid,
      layout: p.layout,
      pages: p.ranges.reduce((n, r) => n + r.pages, 0),
      ranges: p.ranges.map((r) => [`0x${r.start.toString(16)}`, r.pages, Math.round(r.firstTouchMs * 1000) / 1000]),
    })),
  };
  const tmp = join(dirname(file), `.${basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    writeFileSync(tmp, `${JSON.stringify(body)}\n`, { flag: 'wx', mode: 0o644 });
    renameSync(tmp, file);
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch {
      /* never created */
    }
    throw new UserError('EWORKINGSET', `working set ${file}: cannot write it: ${(e as Error).message}`);
  }
}

/**
 * The recorded ranges of `image`'s process that can be replayed, or why none can: the file must name
 * this pid with this layout, and every range must lie in its lazy memory.
 */
export function matchWorkingSet(ws: WorkingSet, image: ProcessImage): { ranges: WorkingSetRange[] } | { why: string } {
  const p = ws.processes.find((x) => x.pid === image.pid);
  if (!p) return { why: `pid ${image.pid} is not in it` };
  if (p.layout !== layoutFingerprint(image)) return { why: `pid ${image.pid}: its memory layout differs from this checkpoint's` };
  const page = BigInt(PAGE_SIZE);
  for (const r of p.ranges) {
    const end = r.start + BigInt(r.pages) * page;
    if (r.start % page !== 0n || !lazyCovers(image, r.start, end)) return { why: `pid ${image.pid}: range 0x${r.start.toString(16)}+${r.pages} pages is not lazy memory of this checkpoint` };
  }
  return { ranges: p.ranges };
}

/** Do the lazy ranges of `image` (sorted, split at VMAs) cover [start, end) without a gap? */
function lazyCovers(image: ProcessImage, start: bigint, end: bigint): boolean {
  let at = start;
  for (const l of image.lazyRanges) {
    if (l.end <= at) continue;
    if (l.start > at) return false;
    at = l.end;
    if (at >= end) return true;
  }
  return false;
}

/**
 * Records, per checkpoint process, the pages served on demand in first-touch order. Adjacent pages
 * touched one after the other become one range; a page is recorded once (a forked child faulting on
 * a page its parent had already counts for nothing new).
 */
export class WorkingSetRecorder {
  private readonly procs = new Map<number, { layout: string; attachedAt: number; seen: Set<number>; ranges: WorkingSetRange[] }>();

  /** @param forMs record only this long after each process attached (undefined: until it is done). */
  constructor(private readonly forMs?: number) {}

  attach(image: ProcessImage, at = performance.now()): void {
    if (!this.procs.has(image.pid)) this.procs.set(image.pid, { layout: layoutFingerprint(image), attachedAt: at, seen: new Set(), ranges: [] });
  }

  /** `len` bytes at image address `image` (page aligned) of checkpoint process `pid` were served on demand. */
  served(pid: number, image: number, len: number, at = performance.now()): void {
    const p = this.procs.get(pid);
    if (!p) return;
    const t = at - p.attachedAt;
    if (this.forMs !== undefined && t > this.forMs) return;
    for (let a = image; a < image + len; a += PAGE_SIZE) {
      const pg = a / PAGE_SIZE;
      if (p.seen.has(pg)) continue;
      p.seen.add(pg);
      const last = p.ranges[p.ranges.length - 1];
      if (last && last.start + BigInt(last.pages * PAGE_SIZE) === BigInt(a)) last.pages++;
      else p.ranges.push({ start: BigInt(a), pages: 1, firstTouchMs: t });
    }
  }

  result(): WorkingSet {
    return { processes: [...this.procs].map(([pid, p]) => ({ pid, layout: p.layout, ranges: p.ranges })) };
  }
}

/** What the daemon does with working sets: record one, replay one, or both (see DaemonOptions). */
export interface WorkingSetOptions {
  /** Record the pages served on demand into this file, written when the daemon ends. */
  recordWorkingSet?: string;
  /** Record only the first this many seconds after each process attached. */
  recordForSeconds?: number;
  /** Install the pages this file recorded first, before the rest of the background transfer. */
  workingSet?: string;
}

/**
 * The daemon's working-set duties. A replay file that cannot be read, or does not fit a process,
 * is a warning and is ignored (it may cost speed, never correctness); a recording that cannot be
 * written is a warning too (the restore itself went well).
 */
export class WorkingSets {
  private readonly recorder?: WorkingSetRecorder;
  private readonly replay?: WorkingSet;
  private saved = false;

  constructor(
    private readonly opts: WorkingSetOptions,
    private readonly warn: (message: string) => void,
  ) {
    if (opts.recordWorkingSet) {
      this.recorder = new WorkingSetRecorder(opts.recordForSeconds === undefined ? undefined : opts.recordForSeconds * 1000);
    }
    if (opts.workingSet) {
      try {
        this.replay = readWorkingSet(opts.workingSet);
      } catch (e) {
        warn(`${(e as Error).message}: restoring without it`);
      }
    }
  }

  /** The replay file matched against each process once (at start, then again at its hand-over). */
  private readonly matches = new Map<ProcessImage, { ranges: WorkingSetRange[] } | { why: string }>();

  private match(image: ProcessImage): { ranges: WorkingSetRange[] } | { why: string } | undefined {
    if (!this.replay) return undefined;
    let m = this.matches.get(image);
    if (!m) this.matches.set(image, (m = matchWorkingSet(this.replay, image)));
    return m;
  }

  /**
   * The runs of each checkpoint process the replay file fits (said nothing of the others: `attach`
   * reports them), to preload before the hand-over.
   */
  fitting(images: readonly ProcessImage[]): { image: ProcessImage; ranges: WorkingSetRange[] }[] {
    const out: { image: ProcessImage; ranges: WorkingSetRange[] }[] = [];
    for (const image of images) {
      const m = this.match(image);
      if (m && !('why' in m)) out.push({ image, ranges: m.ranges });
    }
    return out;
  }

  /** A process was handed over: start recording it; returns the runs to install first, if any fit. */
  attach(image: ProcessImage): WorkingSetRange[] {
    this.recorder?.attach(image);
    const m = this.match(image);
    if (!m) return [];
    if ('why' in m) {
      this.warn(`working set ${this.opts.workingSet}: ${m.why}: ignored for it`);
      return [];
    }
    return m.ranges;
  }

  /** Pages of checkpoint process `pid` served on demand (image address and length, bytes). */
  served(pid: number, image: number, len: number): void {
    this.recorder?.served(pid, image, len);
  }

  get recording(): boolean {
    return this.recorder !== undefined;
  }

  /** Write the recording (once), if one was asked for. */
  save(): void {
    const file = this.opts.recordWorkingSet;
    if (!this.recorder || !file || this.saved) return;
    this.saved = true;
    try {
      writeWorkingSet(file, this.recorder.result());
    } catch (e) {
      this.warn((e as Error).message);
    }
  }
}
