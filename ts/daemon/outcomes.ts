/**
 * How each process ends for the daemon (done, exited, or lost: killed first) and what is reported of
 * it, in progress events while it is served and in its report when it ends.
 */
import { PAGE_SIZE } from '../images/index.js';
import type { DaemonContext } from './context.js';
import type { ProcessReport } from './events.js';
import type { Kills } from './kills.js';
import type { ProcessState } from './process-state.js';

export class Outcomes {
  /** Every process that ended, in the order it ended: the summary's `processes`. */
  readonly reports: ProcessReport[] = [];
  private readonly lastProgress = new Map<number, number>();

  constructor(
    private readonly ctx: DaemonContext,
    private readonly kills: Kills,
  ) {}

  /** A progress event for `st`, at most every 100 ms (and always once nothing is left). */
  progress(st: ProcessState): void {
    const now = performance.now();
    if (now - (this.lastProgress.get(st.procId) ?? 0) < 100 && st.remaining > 0) return;
    this.lastProgress.set(st.procId, now);
    this.ctx.emit({
      type: 'progress',
      pid: st.pid,
      remainingPages: st.remaining,
      totalPages: st.index.totalPages,
      bytes: st.counters.bytes,
    });
  }

  private report(st: ProcessState, outcome: ProcessReport['outcome']): ProcessReport {
    st.doneAt ??= performance.now();
    const parent = st.parent === undefined ? undefined : this.ctx.states.get(st.parent);
    const r: ProcessReport = {
      pid: st.pid,
      ...(parent ? { forkedFrom: parent.pid } : {}),
      outcome,
      timeToDoneMs: st.elapsedMs(),
      ...st.counters,
    };
    this.reports.push(r);
    return r;
  }

  processDone(st: ProcessState, outcome: 'done' | 'exited'): void {
    const loop = this.ctx.loop;
    st.status = 'done';
    this.kills.forget(st.procId);
    // A process that exits as soon as it has read everything leaves background copies whose
    // completions come after its end (and are not counted then): take what the native core copied
    // for it, which is exact, for the pages not served on demand.
    let copied: number | undefined;
    try {
      copied = loop.stats(st.procId).copyPages;
    } catch {
      /* the loop no longer knows it (closed): keep what the completions said */
    }
    const c = st.counters;
    if (copied !== undefined) c.backgroundPages = Math.max(c.backgroundPages, copied - c.onDemandPages);
    c.bytes = Math.max(c.bytes, (c.onDemandPages + c.backgroundPages) * PAGE_SIZE);
    // Nothing is owed any more: closing the uffd now is safe (holes and growth read zeros from the kernel).
    loop.removeProcess(st.procId);
    this.ctx.emit({ type: 'process-done', report: this.report(st, outcome) });
  }

  exited(st: ProcessState): void {
    if (st.status !== 'serving') return;
    // Its last pages may be reported in the same batch as its exit (served facts travel in batches):
    // a process that had every page before it exited is done, not cut short.
    this.processDone(st, st.remaining === 0 ? 'done' : 'exited');
  }

  /** The daemon cannot serve this process any more: kill it BEFORE its uffd closes, and say why. */
  lose(st: ProcessState, reason: string): void {
    if (st.status !== 'serving') return;
    st.status = 'lost';
    const killed = this.kills.kill(st);
    this.ctx.loop.removeProcess(st.procId);
    this.report(st, 'lost');
    this.ctx.emit({ type: 'process-lost', pid: st.pid, reason, killed });
  }
}
