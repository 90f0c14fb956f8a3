/**
 * Sorted, non-overlapping page ranges with their data location, searchable in O(log n).
 * CRIU rescans the whole pagemap on every fault; a daemon serving millions of pages cannot.
 */
import { PAGE_SIZE_N } from './constants.js';

export type DataLocation =
  | { kind: 'file'; file: string /* absolute path of a pages-N.img */; offset: bigint }
  | { kind: 'remote' }
  | { kind: 'zero' };

export interface PageRange {
  /** Image addresses, page aligned, end exclusive. */
  start: bigint;
  end: bigint;
  /** Location of the page at `start`; for 'file' page start+k*4096 is at offset + k*4096. */
  location: DataLocation;
}

const ZERO: DataLocation = Object.freeze({ kind: 'zero' });
const REMOTE: DataLocation = Object.freeze({ kind: 'remote' });
export const zeroLocation = (): DataLocation => ZERO;
export const remoteLocation = (): DataLocation => REMOTE;

/** Immutable index over ranges that must already be sorted and non-overlapping. */
export class PageIndex {
  // Parallel typed arrays: a binary search touches two BigUint64Arrays instead of chasing objects.
  private readonly starts: BigUint64Array;
  private readonly ends: BigUint64Array;
  private readonly ranges: PageRange[];

  constructor(ranges: PageRange[]) {
    this.ranges = ranges;
    this.starts = new BigUint64Array(ranges.length);
    this.ends = new BigUint64Array(ranges.length);
    for (let i = 0; i < ranges.length; i++) {
      this.starts[i] = ranges[i]!.start;
      this.ends[i] = ranges[i]!.end;
    }
  }

  get size(): number {
    return this.ranges.length;
  }

  /** Index of the range containing `addr`, or -1. */
  find(addr: bigint): number {
    const starts = this.starts;
    let lo = 0;
    let hi = starts.length - 1;
    let hit = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (starts[mid]! <= addr) {
        hit = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return hit >= 0 && addr < this.ends[hit]! ? hit : -1;
  }

  /** Where the data of the page containing `addr` is; 'zero' when no range covers it. */
  lookup(addr: bigint): DataLocation {
    const i = this.find(addr);
    if (i < 0) return ZERO;
    const r = this.ranges[i]!;
    if (r.location.kind !== 'file') return r.location;
    const page = addr - (addr % PAGE_SIZE_N);
    return { kind: 'file', file: r.location.file, offset: r.location.offset + (page - r.start) };
  }

  /**
   * The parts of [start, end) covered by ranges, clipped, with their locations adjusted to the
   * clipped start. Gaps are left out.
   */
  slice(start: bigint, end: bigint): PageRange[] {
    const out: PageRange[] = [];
    let i = this.find(start);
    if (i < 0) {
      // First range starting after `start`.
      let lo = 0;
      let hi = this.starts.length;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (this.starts[mid]! <= start) lo = mid + 1;
        else hi = mid;
      }
      i = lo;
    }
    for (; i < this.ranges.length && this.starts[i]! < end; i++) {
      const r = this.ranges[i]!;
      out.push(clip(r, r.start > start ? r.start : start, r.end < end ? r.end : end));
    }
    return out;
  }
}

/** The part [s, e) of range r. */
export function clip(r: PageRange, s: bigint, e: bigint): PageRange {
  if (s === r.start && e === r.end) return r;
  const loc = r.location.kind === 'file'
    ? { kind: 'file' as const, file: r.location.file, offset: r.location.offset + (s - r.start) }
    : r.location;
  return { start: s, end: e, location: loc };
}
