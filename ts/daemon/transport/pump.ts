/**
 * The background transfer: keeps each process's queue of requests in the native core full (its
 * working set first, then whatever nobody faulted on), and sends each chunk to the transport of its
 * range: the pages files (local.ts) or a page server (remote.ts).
 */
import type { DaemonContext } from '../context.js';
import type { BackgroundSettings } from '../options.js';
import type { Outcomes } from '../outcomes.js';
import type { ProcessState } from '../process-state.js';
import type { LocalPages } from './local.js';
import type { RemoteTransport } from './remote.js';

/** Requests kept queued per process while a working set is installed (its runs are small). */
const WORKING_SET_DEPTH = 256;

export class BackgroundPump {
  constructor(
    private readonly ctx: DaemonContext,
    private readonly settings: BackgroundSettings,
    private readonly outcomes: Outcomes,
    private readonly local: LocalPages,
    private readonly remote: RemoteTransport | undefined,
  ) {}

  /** Queue background requests for every process up to its depth; a process with nothing owed is done. */
  all(): void {
    for (const st of this.ctx.states.values()) {
      if (st.status !== 'serving') continue;
      this.queue(st);
      if (st.inflightRequests === 0 && (st.remaining === 0 || (this.settings.background && !st.nextChunk(1)))) {
        if (st.remaining > 0) {
          this.ctx.emit({
            type: 'warning',
            message: `pid ${st.pid}: ${st.remaining} lazy pages are no longer mapped anywhere; nothing is owed for them`,
          });
        }
        this.outcomes.processDone(st, 'done');
      }
    }
  }

  /** Queue `st`'s next background requests (its working set first) up to its depth. */
  queue(st: ProcessState): void {
    const { background, chunkPages } = this.settings;
    const remote = this.remote !== undefined;
    const depth = remote ? this.settings.remoteDepth : this.settings.queueDepth;
    // A working set is many small runs: keep more of them queued so the native loop never waits for JS.
    // It is installed with or without --no-background; the rest only with the background on.
    // The working set's requests have slots of their own: the rest of the background is queued behind
    // them at once, so the native loop goes on from the one to the other without waiting for JS.
    for (;;) {
      const prio = st.prioritizing;
      if (prio ? st.inflightPriority >= WORKING_SET_DEPTH : !background || st.inflightRequests - st.inflightPriority >= depth) break;
      // Local chunks run on over pages already present (skipped natively with EEXIST); remote
      // ones do not: those pages would cross the network again.
      const c = remote ? st.nextChunk(Math.min(chunkPages, 256)) : st.nextChunk(chunkPages, true);
      if (!c) break;
      const r = st.index.ranges[c.range];
      st.pages.fly(c.firstPage, c.pages);
      st.inflightRequests++;
      if (r.location.kind === 'file') this.local.copy(st, c, r.location.file, r.location.offset + (c.image - r.start), prio);
      else this.remote!.background(st, c, prio);
    }
  }
}
