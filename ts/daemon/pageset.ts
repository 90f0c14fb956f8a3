/**
 * Which lazy pages of one process are still owed to it, by IMAGE address.
 *
 * Every lazy page of a checkpointed process gets a dense index (its place in the process's sorted
 * lazy image ranges). Two sets of runs over those indexes record what is left to transfer and what
 * is in flight. Identity by image address is what keeps this correct across mremap: the kernel moves
 * pages between LIVE addresses, but the data a page needs never changes its image address.
 *
 * A fork copies the runs (the child is owed everything the parent still is, in-flight pages
 * included: CRIU re-queues those for the child too).
 */
import { PAGE_SIZE, type DataLocation, type PageRange } from '../images/index.js';
import { RunSet } from './runset.js';

const PAGE = BigInt(PAGE_SIZE);

/** One immutable lazy image range with the index of its first page. */
export interface IndexedRange {
  readonly start: bigint;
  readonly end: bigint;
  readonly location: DataLocation;
  readonly firstPage: number;
  readonly pages: number;
}

/** The immutable index of a process's lazy image ranges (shared by a process and its forks). */
export class ImageIndex {
  readonly ranges: readonly IndexedRange[];
  readonly totalPages: number;

  /**
   * @param lazyRanges the process's lazy ranges, sorted (CRIU writes at most 256 pages per entry)
   * @param vmaStarts start addresses of its VMAs: adjacent ranges are merged into one (so one
   *   request can cover them) only where no VMA begins, because one UFFDIO_COPY cannot cross VMAs
   */
  constructor(lazyRanges: readonly PageRange[], vmaStarts: ReadonlySet<bigint> = new Set()) {
    const out: IndexedRange[] = [];
    let next = 0;
    let prevEnd = -1n;
    for (const r of lazyRanges) {
      if (r.start < prevEnd) throw new Error(`lazy ranges overlap or are unsorted at 0x${r.start.toString(16)}`);
      const pages = Number((r.end - r.start) / PAGE);
      if (pages <= 0) continue;
      const last = out[out.length - 1];
      if (last && last.end === r.start && !vmaStarts.has(r.start) && continues(last, r)) {
        out[out.length - 1] = { ...last, end: r.end, pages: last.pages + pages };
      } else {
        out.push({ start: r.start, end: r.end, location: r.location, firstPage: next, pages });
      }
      next += pages;
      prevEnd = r.end;
    }
    this.ranges = out;
    this.totalPages = next;
    this.startsN = Float64Array.from(out, (r) => Number(r.start));
    this.endsN = Float64Array.from(out, (r) => Number(r.end));
  }

  /** The ranges' bounds as plain numbers (user addresses are below 2^53): the fault path's facts come so. */
  private readonly startsN: Float64Array;
  private readonly endsN: Float64Array;

  /**
   * Calls `f(firstPage, pages)` for the lazy pages of image bytes [addr, addr+len) (plain numbers,
   * page-aligned), range by range: O(log n) to find the first, gaps skipped whole.
   */
  forPagesIn(addr: number, len: number, f: (firstPage: number, pages: number) => void): void {
    const stop = addr + len;
    const ends = this.endsN;
    let lo = 0;
    let hi = ends.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (ends[mid]! > addr) hi = mid;
      else lo = mid + 1;
    }
    for (let ri = lo; ri < ends.length; ri++) {
      const s = this.startsN[ri]!;
      if (s >= stop) break;
      const a = addr > s ? addr : s;
      const e = stop < ends[ri]! ? stop : ends[ri]!;
      f(this.ranges[ri]!.firstPage + (a - s) / PAGE_SIZE, (e - a) / PAGE_SIZE);
    }
  }

  /** Index of the range holding image address `addr`, or -1. O(log n). */
  rangeOf(addr: bigint): number {
    let lo = 0;
    let hi = this.ranges.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const r = this.ranges[mid];
      if (addr < r.start) hi = mid - 1;
      else if (addr >= r.end) lo = mid + 1;
      else return mid;
    }
    return -1;
  }

  /** Dense page index of image address `addr`, or -1 when it is not a lazy page. */
  pageOf(addr: bigint): number {
    const i = this.rangeOf(addr);
    if (i < 0) return -1;
    const r = this.ranges[i];
    return r.firstPage + Number((addr - r.start) / PAGE);
  }

  /** Image address of dense page index `page` (anywhere in the index). */
  addrOfPage(page: number): bigint {
    let lo = 0;
    let hi = this.ranges.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.ranges[mid].firstPage <= page) lo = mid;
      else hi = mid - 1;
    }
    return this.addrOf(lo, page);
  }

  /** Image address of dense page index `page` within range `ri`. */
  addrOf(ri: number, page: number): bigint {
    const r = this.ranges[ri];
    return r.start + BigInt(page - r.firstPage) * PAGE;
  }
}

/** Does `r` hold the data that follows `last` at the same source (same file, next offset; or both remote)? */
function continues(last: IndexedRange, r: PageRange): boolean {
  const a = last.location;
  const b = r.location;
  if (a.kind === 'remote' && b.kind === 'remote') return true;
  if (a.kind !== 'file' || b.kind !== 'file' || a.file !== b.file) return false;
  return a.offset + (last.end - last.start) === b.offset;
}

/**
 * Remaining / in-flight state of one process's lazy pages, as two sets of runs of dense pages:
 * memory O(runs), not O(pages) (a 2 TiB process costs what a 2 MiB one does until faults split its
 * runs), and a fork copies the runs, not a byte per page.
 *
 * Arguments are integer dense page indexes; ranges are clipped to [0, totalPages).
 */
export class PageSet {
  readonly index: ImageIndex;
  /** Pages whose data has not been confirmed installed in the process. */
  private readonly left: RunSet;
  /** Pages a request is queued or running for in the native core (settled pages may be in it too). */
  private readonly flying: RunSet;

  constructor(index: ImageIndex, from?: PageSet) {
    this.index = index;
    // In-flight pages of the parent are owed to the child: they are "left", not in flight, here.
    this.left = from ? from.left.clone() : RunSet.range(0, index.totalPages);
    this.flying = new RunSet();
  }

  /** Pages still owed (in flight included). */
  get remaining(): number {
    return this.left.size;
  }

  /** Runs the state is made of (what its memory is proportional to). */
  get runs(): number {
    return this.left.runs + this.flying.runs;
  }

  isLeft(page: number): boolean {
    return Number.isInteger(page) && this.left.has(page);
  }

  isFlying(page: number): boolean {
    return Number.isInteger(page) && this.flying.has(page);
  }

  /** Pages [first, first+n) are installed (or gone for good): nothing more is owed for them. */
  settle(first: number, n: number): number {
    const a = Math.max(first, 0);
    const b = Math.min(first + n, this.index.totalPages);
    if (!(a < b)) return 0;
    this.flying.remove(a, b);
    return this.left.remove(a, b);
  }

  /** Mark [first, first+n) as requested. */
  fly(first: number, n: number): void {
    this.flying.add(Math.max(first, 0), Math.min(first + n, this.index.totalPages));
  }

  /** A request for [first, first+n) ended without installing those pages: they are owed again. */
  land(first: number, n: number): void {
    this.flying.remove(Math.max(first, 0), Math.min(first + n, this.index.totalPages));
  }

  /**
   * The first run of owed, not-in-flight pages in dense pages [from, to), at most `max` long.
   * Returns [start, length] or undefined.
   *
   * With `overSettled` the run starts at an owed page but goes on over settled pages too (stopping
   * only at pages in flight): those are present in the process, so the native copy skips each with
   * one EEXIST, which costs far less than a request of its own. After random faults the owed pages
   * are fragmented into runs of a few pages, and one request per run made the background a JS round
   * trip per few pages. The run never ends on settled pages (its tail would be copied for nothing).
   *
   * O(log runs) per in-flight run skipped: settled pages are skipped a run at a time, never a page.
   */
  nextRun(from: number, to: number, max: number, overSettled = false): [number, number] | undefined {
    const left = this.left;
    const flying = this.flying;
    if (to > this.index.totalPages) to = this.index.totalPages;
    let p = from > 0 ? from : 0;
    for (;;) {
      p = left.nextIn(p);
      if (p >= to) return undefined;
      const q = flying.nextOut(p);
      if (q === p) break;
      p = q; // skip the whole in-flight run
    }
    const start = p;
    const limit = Math.min(to, start + max);
    if (limit <= start) return [start, 0];
    let end = Math.min(limit, flying.nextIn(start));
    if (overSettled) end = left.lastIn(end - 1) + 1; // start is owed: end > start
    else end = Math.min(end, left.nextOut(start));
    return [start, end - start];
  }
}
