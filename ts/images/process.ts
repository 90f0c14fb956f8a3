/**
 * One dumped process: its VMAs, its pages split into lazy (served by the daemon) and eager
 * (restored by the restorer), and a fast address lookup.
 */
import { PAGE_SIZE_N } from './constants.js';
import { ImageError, hex } from './errors.js';
import { formatBytes, type MemoryBound } from './limits.js';
import { PageIndex, clip, type DataLocation, type PageRange } from './page-index.js';
import type { ResolvedPiece } from './parent.js';
import { findVma, type Vma } from './vma.js';

export type TaskState = 'alive' | 'zombie' | 'stopped' | 'dead';

export interface TaskInfo {
  pid: number;
  ppid: number;
  pgid: number;
  sid: number;
  threads: number[];
  state: TaskState;
}

export interface ProcessImage extends TaskInfo {
  vmas: Vma[];
  pagesId: number;
  /** Sorted, non-overlapping, split at VMA boundaries, only inside lazy VMAs. */
  lazyRanges: PageRange[];
  /** Pages with data that are not lazy (restored eagerly by the restorer). */
  eagerRanges: PageRange[];
  /** O(log n): image address -> where its data is ('zero' if no pagemap entry covers it). */
  lookup(addr: bigint): DataLocation;
  lazyBytes: bigint;
}

/**
 * Builds the process model. `pieces` ascend and do not overlap (checked by the pagemap loader);
 * every page of them must lie in some VMA, and a piece may span adjacent VMAs, which is why
 * pieces are cut at every VMA end (one UFFDIO_COPY cannot cross VMAs). Together these mean a
 * process never claims more pages than its VMAs hold; `maxMemory` (bytes) bounds what it may
 * claim in all. O(pieces + VMAs), whatever the number of pages.
 */
export function buildProcess(task: TaskInfo, vmas: Vma[], pagesId: number, pieces: ResolvedPiece[], maxMemory?: MemoryBound): ProcessImage {
  const lazyRanges: PageRange[] = [];
  const eagerRanges: PageRange[] = [];
  const all: PageRange[] = [];
  let lazyBytes = 0n;
  let dataBytes = 0n;
  for (const p of pieces) {
    let at = p.start;
    let vi = findVma(vmas, at);
    while (at < p.end) {
      const v = vmas[vi];
      if (vi < 0 || !v || at < v.start) {
        throw new ImageError(p.file, p.recOffset, `pagemap page ${hex(at)} of pid ${task.pid} lies in no VMA of its mm image`);
      }
      const cut = v.end < p.end ? v.end : p.end;
      const r = clip(p, at, cut);
      const piece: PageRange = { start: r.start, end: r.end, location: r.location };
      if (p.lazy && v.lazy) {
        lazyRanges.push(piece);
        lazyBytes += piece.end - piece.start;
      } else eagerRanges.push(piece);
      all.push(piece);
      at = cut;
      vi++;
    }
    // Every page of the entry is in a VMA (and entries never overlap): now its size is known to be
    // real address space, check it against what this machine could ever hold (see limits.ts).
    dataBytes += p.end - p.start;
    if (maxMemory !== undefined && dataBytes > maxMemory.bytes) {
      throw new ImageError(p.file, p.recOffset,
        `pages ${hex(p.start)}-${hex(p.end)} of this entry (${(p.end - p.start) / PAGE_SIZE_N} pages) take pid ${task.pid}'s dumped memory ` +
        `to ${formatBytes(dataBytes)} (${dataBytes / PAGE_SIZE_N} pages), ${maxMemory.what}`);
    }
  }
  const index = new PageIndex(all);
  return {
    ...task, vmas, pagesId, lazyRanges, eagerRanges, lazyBytes,
    lookup: (addr: bigint) => index.lookup(addr),
  };
}

/** Page counts for reports (inspect): by kind of data, and VMA pages with no entry (read as zero). */
export function pageStats(p: ProcessImage): { vmaPages: bigint; lazyPages: bigint; lazyRemotePages: bigint; eagerPages: bigint; zeroPages: bigint } {
  const pages = (rs: PageRange[], pred: (r: PageRange) => boolean = () => true) =>
    rs.reduce((n, r) => (pred(r) ? n + (r.end - r.start) / PAGE_SIZE_N : n), 0n);
  const vmaPages = p.vmas.reduce((n, v) => n + (v.end - v.start) / PAGE_SIZE_N, 0n);
  const lazyPages = pages(p.lazyRanges);
  const eagerPages = pages(p.eagerRanges);
  return {
    vmaPages, lazyPages, eagerPages,
    lazyRemotePages: pages(p.lazyRanges, (r) => r.location.kind === 'remote'),
    zeroPages: vmaPages - lazyPages - eagerPages,
  };
}
