/**
 * Requests to the native core (a copy from a pages file, a page-server fetch, a copy of a buffer)
 * and what their completions mean: which pages are settled, which are asked for again, and when a
 * process cannot be served any more.
 */
import { PAGE_SIZE } from '../images/index.js';
import type { NativeEvent } from '../native/index.js';
import type { DaemonContext } from './context.js';
import type { Outcomes } from './outcomes.js';
import type { ProcessState } from './process-state.js';


export interface Request {
  st: ProcessState;
  firstPage: number;
  pages: number;
  /** One of the working set's requests (counted apart: see BackgroundPump.queue). */
  priority?: boolean;
}

export class Requests {
  private readonly pending = new Map<number, Request>();
  private nextReq = 1;

  constructor(
    private readonly ctx: DaemonContext,
    private readonly outcomes: Outcomes,
  ) {}

  /** Record a request to the native core; its `done` event settles it. */
  submit(req: Request): number {
    const reqId = this.nextReq++;
    this.pending.set(reqId, req);
    return reqId;
  }

  /** The completion of a request for a process no longer served: nothing to settle. */
  drop(reqId: number): void {
    this.pending.delete(reqId);
  }

  completed(st: ProcessState, ev: Extract<NativeEvent, { type: 'done' }>): void {
    const req = this.pending.get(ev.reqId);
    if (!req) return;
    this.pending.delete(ev.reqId);
    st.inflightRequests--;
    if (req.priority) st.inflightPriority--;
    // `bytes` counts only pages this request placed: pages found present (a fault beat us to them)
    // are skipped by the native core and are settled all the same.
    const got = Math.min(req.pages, Math.floor(Number(ev.bytes) / PAGE_SIZE));
    // (Faults are served natively and reported as `served`: every request here is background.)
    st.counters.backgroundPages += got;
    st.counters.bytes += got * PAGE_SIZE;
    switch (ev.status) {
      case 'ok':
      case 'exists':
        st.pages.settle(req.firstPage, req.pages);
        break;
      case 'again':
      case 'noent':
      case 'stale':
        // Which pages made it is not known page by page: ask again for all of them; the ones that did
        // are skipped as present next time.
        st.pages.land(req.firstPage, req.pages);
        st.counters.retries++;
        if (ev.status === 'noent' && req.pages > 1) {
          // A VMA may have been split under the chunk without any uffd event (mprotect, mlock,
          // madvise(MADV_NOHUGEPAGE)…), and one UFFDIO_COPY cannot cross VMAs: go page by page.
          st.narrow(req.firstPage, req.pages);
          break;
        }
        if (ev.status === 'noent' && st.noteNoent(req.firstPage) > 8) {
          // The same pages keep failing with no layout change in between: the range is not registered
          // with the uffd, so the process would never fault on it and read zeros there. Do not let it.
          this.outcomes.lose(st, `cannot install pages at image address 0x${st.index.addrOfPage(req.firstPage).toString(16)}: ` +
            'ENOENT again and again (is the range registered with the userfaultfd?)');
          return;
        }
        break;
      case 'gone':
        this.outcomes.exited(st);
        return;
      default:
        this.outcomes.lose(st, `UFFDIO_COPY failed: ${ev.message ?? `errno ${ev.errno}`}`);
        return;
    }
    this.outcomes.progress(st);
  }
}
