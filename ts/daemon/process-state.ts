/**
 * One restored process as the daemon sees it: CRIU's `lazy_pages_info`, without global state.
 *
 * It knows which lazy pages are still owed (by image address, in a PageSet), where they live now
 * (LiveMap), and turns both into the translation table the native core serves faults from. Every
 * non-cooperative event is applied here, in the order the kernel delivered it; the native side
 * keeps the process paused until the next table is installed, so it never serves a stale table.
 */
import { PAGE_SIZE, type ProcessImage } from '../images/index.js';
import type { TableEntry } from '../native/index.js';
import { LiveMap, type Piece } from './livemap.js';
import { ImageIndex, PageSet } from './pageset.js';

const PAGE = BigInt(PAGE_SIZE);

export type ProcessStatus = 'serving' | 'done' | 'lost';

/** Counters reported per process. */
export interface ProcessCounters {
  /** Pages copied because the process faulted on them. */
  onDemandPages: number;
  /** Zero pages installed for faults outside any lazy range (holes, mremap growth). */
  zeroPages: number;
  /** Pages copied by the background transfer. */
  backgroundPages: number;
  /** Bytes copied, on demand and background. */
  bytes: number;
  /** Requests that had to be retried (EAGAIN, ENOENT, stale after an event). */
  retries: number;
}

/** A chunk of owed pages the background transfer can request next. */
export interface BackgroundChunk {
  firstPage: number;
  pages: number;
  live: bigint;
  image: bigint;
  range: number;
}

export class ProcessState {
  /** Image id (the virtual pid CRIU sent), shared by forked children. */
  readonly pid: number;
  /** The native core's id for this process's uffd. */
  readonly procId: number;
  readonly image: ProcessImage;
  readonly index: ImageIndex;
  readonly pages: PageSet;
  readonly live: LiveMap;
  /** Generation of the last table installed in the native core. */
  gen = 0;
  /**
   * Layout events (fork, remap, remove, unmap) of this process applied so far. Passed with every
   * table: the native core keeps the process paused while it has read more than this.
   */
  eventsApplied = 0;
  status: ProcessStatus = 'serving';
  /** Parent's procId for a forked child. */
  readonly parent?: number;
  readonly counters: ProcessCounters = { onDemandPages: 0, zeroPages: 0, backgroundPages: 0, bytes: 0, retries: 0 };
  readonly startedAt = performance.now();
  doneAt?: number;
  /** Where the background scan continues (segment index, then dense page). */
  private cursorSeg = 0;
  /** Where in the cursor's segment the scan goes on (a dense page index; -1: from its start). */
  private cursorPage = -1;
  inflightRequests = 0;
  /** Of those, the working set's. */
  inflightPriority = 0;

  private constructor(pid: number, procId: number, image: ProcessImage, index: ImageIndex, pages: PageSet, live: LiveMap, parent?: number) {
    this.pid = pid;
    this.procId = procId;
    this.image = image;
    this.index = index;
    this.pages = pages;
    this.live = live;
    this.parent = parent;
  }

  /**
   * State of a freshly handed-over process: every lazy page owed, live == image. With `remote`, every
   * lazy page comes from the page server, as with `criu lazy-pages --page-server`, even where the
   * images dir has a copy.
   */
  static attach(procId: number, image: ProcessImage, opts: { remote?: boolean } = {}): ProcessState {
    const ranges = opts.remote ? image.lazyRanges.map((r) => ({ ...r, location: { kind: 'remote' as const } })) : image.lazyRanges;
    const index = new ImageIndex(ranges, new Set(image.vmas.map((v) => v.start)));
    const live = new LiveMap(index.ranges.map((r, i) => ({ liveStart: r.start, liveEnd: r.end, imageStart: r.start, range: i })));
    return new ProcessState(image.pid, procId, image, index, new PageSet(index), live);
  }

  /** FORK: the child is owed what the parent is still owed (in-flight pages included), at the same live addresses. */
  fork(childProcId: number): ProcessState {
    return new ProcessState(this.pid, childProcId, this.image, this.index, new PageSet(this.index, this.pages), this.live.clone(), this.procId);
  }

  get remaining(): number {
    return this.pages.remaining;
  }

  /** The native core installed [image, image+len) for this process; returns how many pages were owed. */
  settleImage(image: bigint, len: bigint): number {
    return this.settleImageAt(Number(image), Number(len));
  }

  /** The same in plain numbers, as the fault path's facts come (see `ImageIndex.forPagesIn`). */
  settleImageAt(image: number, len: number): number {
    let settled = 0;
    this.index.forPagesIn(image, len, (first, n) => (settled += this.pages.settle(first, n)));
    return settled;
  }

  /** Pieces cut from the live map are gone for this process: nothing is owed for them any more. */
  private forget(pieces: Piece[]): void {
    for (const p of pieces) this.settleImage(p.imageStart, p.liveEnd - p.liveStart);
  }

  private readonly noents = new Map<number, number>();

  /** Count an ENOENT for a request starting at dense page `first`; events reset the counts. */
  noteNoent(first: number): number {
    const n = (this.noents.get(first) ?? 0) + 1;
    this.noents.set(first, n);
    return n;
  }

  /** REMAP: move live addresses, keep image addresses; growth reads zeros (it is in no segment). */
  applyRemap(from: bigint, to: bigint, len: bigint): void {
    this.forget(this.live.remap(from, to, len));
    this.cursorSeg = 0;
    this.cursorPage = -1;
    this.noents.clear();
  }

  /** UNMAP / REMOVE: the memory is gone (or must read zeros from now on). */
  applyDrop(start: bigint, end: bigint): void {
    this.forget(this.live.cut(start, end));
    this.cursorSeg = 0;
    this.cursorPage = -1;
    this.noents.clear();
  }

  /**
   * A fault was served on demand: the background goes on right after it (the program's next touches
   * are likely near; CRIU resets its chunk too). What the scan skips is taken up when it wraps.
   */
  noteFault(live: bigint): void {
    const segs = this.live.segments;
    for (let i = 0; i < segs.length; i++) {
      const s = segs[i];
      if (s.liveEnd > live) {
        this.cursorSeg = i;
        this.cursorPage = -1;
        if (live >= s.liveStart) {
          const r = this.index.ranges[s.range];
          this.cursorPage = r.firstPage + Number((s.imageStart - r.start + (live - s.liveStart)) / PAGE) + 1;
        }
        return;
      }
    }
  }

  /**
   * The translation table for the native core: one entry per live segment. Served pages may still be
   * covered (they are present, so they never fault again); what matters is that no owed page is missing.
   */
  table(imageIdOf: (file: string) => number): TableEntry[] {
    return this.live.segments.map((s): TableEntry => {
      const r = this.index.ranges[s.range];
      if (r.location.kind === 'file') {
        const fileOffset = r.location.offset + (s.imageStart - r.start);
        return { liveStart: s.liveStart, liveEnd: s.liveEnd, imageStart: s.imageStart, kind: 'file', imageId: imageIdOf(r.location.file), fileOffset };
      }
      // The native page-server client needs the image pid to ask for the page.
      return { liveStart: s.liveStart, liveEnd: s.liveEnd, imageStart: s.imageStart, kind: 'remote', imagePid: this.pid };
    });
  }

  /** Dense page ranges to request one page at a time (a chunk there failed with ENOENT). */
  private readonly narrowed: [number, number][] = [];

  /** Request the pages [first, first+n) one by one from now on. */
  narrow(first: number, n: number): void {
    this.narrowed.push([first, first + n]);
  }

  /** Recorded working-set runs to install before anything else (image addresses, first-touch order). */
  private priority: { start: bigint; pages: number }[] = [];
  private priorityAt = 0;

  /** Install these runs first, in this order (a working set recorded on an earlier restore). */
  prioritize(runs: readonly { start: bigint; pages: number }[]): void {
    this.priority = runs.map((r) => ({ start: r.start, pages: r.pages }));
    this.priorityAt = 0;
  }

  /** True while working-set runs are still to be requested. */
  get prioritizing(): boolean {
    return this.priorityAt < this.priority.length;
  }

  /** The next owed, not-in-flight pages of the working set, cut at live segments; advances past what it returns. */
  private nextPriority(maxPages: number): BackgroundChunk | undefined {
    while (this.priorityAt < this.priority.length) {
      const w = this.priority[this.priorityAt]!;
      const first = this.index.pageOf(w.start);
      const run = first < 0 ? undefined : this.pages.nextRun(first, first + w.pages, maxPages);
      if (!run || run[1] === 0) {
        this.priorityAt++;
        continue;
      }
      const image = this.index.addrOfPage(run[0]);
      // Where that image address lives now (a remap moves it; an unmap leaves nothing owed there).
      const seg = this.live.segments.find((s) => s.imageStart <= image && image < s.imageStart + (s.liveEnd - s.liveStart));
      if (!seg) {
        this.priorityAt++;
        continue;
      }
      const pages = Math.min(run[1], Number((seg.imageStart + (seg.liveEnd - seg.liveStart) - image) / PAGE));
      const next = image + BigInt(pages) * PAGE;
      w.pages -= Number((next - w.start) / PAGE);
      w.start = next;
      if (w.pages <= 0) this.priorityAt++;
      return { firstPage: run[0], pages, live: seg.liveStart + (image - seg.imageStart), image, range: seg.range };
    }
    return undefined;
  }

  /**
   * Next owed, not-in-flight run of at most `maxPages`: the working set's first, then in live order
   * from the cursor.
   */
  nextChunk(maxPages: number, overSettled = false): BackgroundChunk | undefined {
    const chunk = this.nextPriority(maxPages) ?? this.nextRun(maxPages, overSettled);
    if (chunk && chunk.pages > 1 && this.narrowed.some(([a, b]) => chunk.firstPage < b && chunk.firstPage + chunk.pages > a)) {
      // Stop the chunk at the first narrowed page (or make it that one page).
      const cut = Math.min(...this.narrowed.filter(([a, b]) => chunk.firstPage < b && chunk.firstPage + chunk.pages > a).map(([a]) => a));
      chunk.pages = cut > chunk.firstPage ? cut - chunk.firstPage : 1;
    }
    return chunk;
  }

  private nextRun(maxPages: number, overSettled: boolean): BackgroundChunk | undefined {
    const segs = this.live.segments;
    const n = segs.length;
    // From the cursor to the end of its segment, the other segments in order, then the start of the
    // cursor's segment up to the cursor (k === n).
    for (let k = 0; k <= n && n > 0; k++) {
      const si = (this.cursorSeg + k) % n;
      const s = segs[si];
      const r = this.index.ranges[s.range];
      const first = r.firstPage + Number((s.imageStart - r.start) / PAGE);
      const count = Number((s.liveEnd - s.liveStart) / PAGE);
      let from = first;
      let to = first + count;
      const inside = this.cursorPage > first && this.cursorPage < to;
      if (k === 0 && inside) from = this.cursorPage;
      else if (k === n) {
        if (!inside) break;
        to = this.cursorPage;
      }
      const run = this.pages.nextRun(from, to, maxPages, overSettled);
      if (!run) continue;
      this.cursorSeg = si;
      this.cursorPage = run[0] + run[1];
      if (this.cursorPage >= first + count) {
        // The segment's end: on to the next one (this one's start is scanned when the cursor gets back).
        this.cursorSeg = (si + 1) % n;
        this.cursorPage = -1;
      }
      const off = BigInt(run[0] - first) * PAGE;
      return { firstPage: run[0], pages: run[1], live: s.liveStart + off, image: s.imageStart + off, range: s.range };
    }
    return undefined;
  }

  /** Seconds since attach (or until done). */
  elapsedMs(): number {
    return (this.doneAt ?? performance.now()) - this.startedAt;
  }
}
