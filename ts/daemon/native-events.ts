/**
 * The native loop's reports, a batch at a time, applied to the processes: pages served on faults,
 * layout events (fork, mremap, munmap, madvise(DONTNEED)) that change where pages live, request
 * completions, exits. Every process whose layout changed gets its next table once the batch is done.
 *
 * This is the JS side of the fault path ('served' facts come here coalesced): it does no more per
 * event than settle the pages and count them.
 */
import { UserError } from '../errors.js';
import { PAGE_SIZE } from '../images/index.js';
import type { NativeEvent } from '../native/index.js';
import type { DaemonContext } from './context.js';
import type { Kills } from './kills.js';
import type { Outcomes } from './outcomes.js';
import type { ProcessState } from './process-state.js';
import type { Requests } from './requests.js';

export class NativeEvents {
  constructor(
    private readonly ctx: DaemonContext,
    private readonly requests: Requests,
    private readonly outcomes: Outcomes,
    private readonly kills: Kills,
  ) {}

  dispatch(batch: NativeEvent[]): void {
    const { states, loop, workingSets } = this.ctx;
    const dirty = new Set<ProcessState>();
    const served = new Map<ProcessState, { pages: number; zero: number; last: bigint }>();
    for (const ev of batch) {
      if (ev.type === 'source-error') {
        this.ctx.fail(new UserError('EPAGESERVER', ev.message));
        return;
      }
      if (ev.type === 'early-done') {
        this.ctx.emit({ type: 'working-set-installed', pid: ev.pid, pages: ev.bytes / PAGE_SIZE, atMs: ev.atMs });
        continue;
      }
      if (ev.type === 'error' && ev.procId === undefined) {
        this.ctx.emit({ type: 'warning', message: `native core: ${ev.message}` });
        continue;
      }
      const st = states.get(ev.procId!);
      if (!st || st.status !== 'serving') {
        if (ev.type === 'fork') this.orphanFork(st, ev.childProcId);
        if (ev.type === 'done') this.requests.drop(ev.reqId);
        continue;
      }
      switch (ev.type) {
        case 'served': {
          const s = served.get(st) ?? { pages: 0, zero: 0, last: ev.live };
          let bytes = 0;
          for (let i = 0; i < ev.images.length; i++) {
            st.settleImageAt(ev.images[i]!, ev.lens[i]!);
            bytes += ev.lens[i]!;
            if (workingSets.recording) workingSets.served(st.pid, ev.images[i]!, ev.lens[i]!);
          }
          const pages = bytes / PAGE_SIZE;
          st.counters.onDemandPages += pages;
          st.counters.bytes += bytes;
          st.counters.zeroPages += ev.zeroPages;
          s.pages += pages;
          s.zero += ev.zeroPages;
          s.last = ev.live;
          served.set(st, s);
          break;
        }
        case 'pagefault':
          // The native core forwards a fault only when it has no page-server client for a remote range;
          // the daemon connects one before anything is handed over, so nobody here could serve it. A
          // thread left waiting would hang for ever: the process is lost (killed), and says why.
          this.outcomes.lose(st, `native core: a fault at 0x${ev.address.toString(16)} of a remote range was forwarded, but no page-server client serves it`);
          break;
        case 'fork': {
          st.eventsApplied++;
          const child = st.fork(ev.childProcId);
          states.set(ev.childProcId, child);
          const childPid = this.kills.forked(st, ev.childProcId);
          dirty.add(st);
          dirty.add(child);
          this.ctx.emit({ type: 'fork', pid: st.pid, childPid });
          break;
        }
        case 'remap':
          st.eventsApplied++;
          st.applyRemap(ev.from, ev.to, ev.len);
          dirty.add(st);
          break;
        case 'remove':
          st.eventsApplied++;
          // CRIU unregisters the range so later reads get zeros from the kernel, then drops it.
          loop.unregister(st.procId, ev.start, ev.end - ev.start);
          st.applyDrop(ev.start, ev.end);
          dirty.add(st);
          break;
        case 'unmap':
          st.eventsApplied++;
          st.applyDrop(ev.start, ev.end);
          dirty.add(st);
          break;
        case 'done':
          this.requests.completed(st, ev);
          break;
        case 'exit':
        case 'gone':
          this.outcomes.exited(st);
          break;
        case 'error':
          this.outcomes.lose(st, `native core: ${ev.message}`);
          break;
      }
    }
    for (const st of dirty) if (st.status === 'serving') this.ctx.install(st);
    for (const [st, s] of served) {
      if (st.status === 'serving') st.noteFault(s.last);
      this.ctx.emit({ type: 'served', pid: st.pid, pages: s.pages, zeroPages: s.zero });
    }
    this.ctx.pump();
  }

  /**
   * A process we stopped serving forked before we noticed. If it was lost (still owed data), the
   * child is owed the same: kill it too before its uffd closes, when we can tell which it is.
   */
  private orphanFork(parent: ProcessState | undefined, childProcId: number): void {
    if (parent?.status === 'lost') {
      const killed = this.kills.killOrphan(parent);
      this.ctx.emit({ type: 'process-lost', pid: parent.pid, reason: 'its parent could not be served', killed });
    }
    this.ctx.loop.removeProcess(childProcId);
  }
}
