/**
 * Local pages: the native core copies them straight out of the mmapped pages files, for a
 * background chunk, and for a working set preloaded before anything is handed over.
 */
import { PAGE_SIZE, type ProcessImage } from '../../images/index.js';
import type { PageImages } from '../page-images.js';
import type { BackgroundChunk, ProcessState } from '../process-state.js';
import type { WorkingSetRange } from '../working-set.js';
import type { TransportHost } from './remote.js';

const PAGE = BigInt(PAGE_SIZE);

export class LocalPages {
  constructor(
    private readonly host: TransportHost,
    private readonly images: PageImages,
  ) {}

  /** Copy a background chunk (already marked in flight) from `file` at `fileOffset`. */
  copy(st: ProcessState, c: BackgroundChunk, file: string, fileOffset: bigint, priority: boolean): void {
    if (priority) st.inflightPriority++;
    const reqId = this.host.submit({ st, firstPage: c.firstPage, pages: c.pages, priority });
    this.host.loop.copy(st.procId, reqId, st.gen, this.images.id(file), fileOffset, c.live, BigInt(c.pages) * PAGE, false);
  }

  /**
   * The working set of each process it fits, handed to the native loop before anything is handed
   * over: it is copied the moment each task's uffd arrives (see EventLoop.preload), by image address
   * (live == image until the task runs), from the pages files (a page server's pages come later).
   */
  preload(fitting: readonly { image: ProcessImage; ranges: readonly WorkingSetRange[] }[]): void {
    for (const { image, ranges } of fitting) {
      const byFile = new Map<string, { offsets: number[]; dsts: number[]; lens: number[] }>();
      for (const r of ranges) {
        let at = r.start;
        const end = r.start + BigInt(r.pages) * PAGE;
        // A recorded run may span adjacent lazy ranges (and so files or offsets): cut it at each.
        for (const l of image.lazyRanges) {
          if (l.end <= at || l.start >= end) continue;
          const to = end < l.end ? end : l.end;
          if (l.location.kind === 'file') {
            const f = byFile.get(l.location.file) ?? { offsets: [], dsts: [], lens: [] };
            f.offsets.push(Number(l.location.offset + (at - l.start)));
            f.dsts.push(Number(at));
            f.lens.push(Number(to - at));
            byFile.set(l.location.file, f);
          }
          at = to;
          if (at >= end) break;
        }
      }
      for (const [file, f] of byFile) {
        this.host.loop.preload(image.pid, this.images.id(file), Float64Array.from(f.offsets), Float64Array.from(f.dsts), Float64Array.from(f.lens));
      }
    }
  }
}
