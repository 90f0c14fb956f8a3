/**
 * Remote pages through the TypeScript page-server client (used for TLS, which goes through Node's
 * `tls`): the client fetches, the native core copies. Plain-TCP page servers are served by the
 * native client instead, which keeps faults off the JS event loop altogether.
 */
import { PAGE_SIZE } from '../images/index.js';
import type { EventLoop } from '../native/index.js';
import type { RemotePageSource } from '../pagesource/remote.js';
import type { BackgroundChunk, ProcessState } from './process-state.js';
import type { RemoteTransport, TransportHost } from './transport/remote.js';

const PAGE = BigInt(PAGE_SIZE);

export class TsRemote implements RemoteTransport {
  private readonly loop: EventLoop;

  constructor(
    private readonly source: RemotePageSource,
    private readonly host: TransportHost,
  ) {
    this.loop = host.loop;
  }

  /**
   * A fault in a remote range: its GET goes on the wire at once (behind at most the source's
   * small background window, never behind queued background fetches), then the page is copied in.
   */
  fault(st: ProcessState, address: bigint): void {
    const live = address - (address % PAGE);
    const seg = st.live.find(live);
    const image = seg ? seg.imageStart + (live - seg.liveStart) : -1n;
    const page = seg ? st.index.pageOf(image) : -1;
    if (page < 0 || !st.pages.isLeft(page)) {
      // Not ours to fill (the table said remote, but the state has moved on): the thread faults again.
      this.loop.wake(st.procId, live, PAGE);
      return;
    }
    // Another thread already faulted here: the copy for the first fault wakes every waiter.
    if (st.faulting.has(page)) return;
    st.faulting.add(page);
    st.noteFault(live);
    // The layout this fault was resolved against: if an event changes it while the page is on the
    // wire, the native core refuses the copy as stale (and the thread is woken to fault again).
    const gen = st.gen;
    st.inflightRequests++; // the fetch
    this.source.fetch(st.pid, image, 1, true).then(
      (buf) =>
        this.host.guard(() => {
          st.inflightRequests--;
          st.faulting.delete(page);
          if (st.status !== 'serving') return;
          const reqId = this.host.submit({ st, firstPage: page, pages: 1, urgent: { live } });
          st.inflightRequests++;
          this.loop.copyBuffer(st.procId, reqId, gen, buf, live, true);
        }),
      () => undefined, // the source failed: its onError ends everything
    );
  }

  /**
   * A background chunk (already marked in flight): fetch it, then copy it to wherever it lives when
   * it arrives. Its copies are not priority requests (a working set is queued whole here).
   */
  background(st: ProcessState, c: BackgroundChunk): void {
    const { firstPage, pages, image } = c;
    this.source.fetch(st.pid, image, pages, false).then(
      (buf) =>
        this.host.guard(() => {
          st.inflightRequests--;
          if (st.status !== 'serving') return;
          const end = image + BigInt(pages) * PAGE;
          const covered = new Uint8Array(pages);
          for (const seg of st.live.segments) {
            const segEnd = seg.imageStart + (seg.liveEnd - seg.liveStart);
            const a = seg.imageStart > image ? seg.imageStart : image;
            const b = segEnd < end ? segEnd : end;
            if (a >= b) continue;
            const k = Number((a - image) / PAGE);
            const n = Number((b - a) / PAGE);
            covered.fill(1, k, k + n);
            const reqId = this.host.submit({ st, firstPage: firstPage + k, pages: n });
            st.inflightRequests++;
            const live = seg.liveStart + (a - seg.imageStart);
            this.loop.copyBuffer(st.procId, reqId, st.gen, buf.subarray(k * PAGE_SIZE, (k + n) * PAGE_SIZE), live, false);
          }
          // Pages no segment holds any more were unmapped meanwhile (and settled then): just land them.
          for (let k = 0; k < pages; k++) if (!covered[k]) st.pages.land(firstPage + k, 1);
          this.host.pump();
        }),
      () => undefined, // the source failed: its onError ends everything
    );
  }

  /** End the session with CLOSE (best effort: the daemon is shutting down). */
  close(): void {
    void this.source.close().catch(() => undefined);
  }
}
