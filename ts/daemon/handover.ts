/**
 * What the restorer sends on `lazy-pages.socket`, as the native hand-over thread reports it: each
 * task's userfaultfd (attached to the native loop and served at once), zombies, "restore finished",
 * and a hand-over that fails (every task it named is killed before its uffd can close).
 */
import { UserError } from '../errors.js';
import type { HandoverEvent } from '../native/index.js';
import type { DaemonContext } from './context.js';
import type { Kills } from './kills.js';
import type { Outcomes } from './outcomes.js';
import { ProcessState } from './process-state.js';
import type { BackgroundPump } from './transport/pump.js';

/** After a bad task in the hand-over, how long the rest of it is still read (to kill those tasks too). */
const HANDOVER_DRAIN_MS = 1000;

export class HandoverHandling {
  /** Set when the hand-over failed; tasks that still arrive are killed at once. */
  private error?: UserError;

  constructor(
    private readonly ctx: DaemonContext,
    private readonly kills: Kills,
    private readonly outcomes: Outcomes,
    private readonly pump: BackgroundPump,
    /** The restorer said "restore finished" (and the hand-over went well). */
    private readonly restoreFinished: () => void,
  ) {}

  handle(ev: HandoverEvent): void {
    const ctx = this.ctx;
    switch (ev.type) {
      case 'connected':
        this.kills.restorerPid = ev.pid;
        return;
      case 'task': {
        if (this.error) {
          // The restore has failed already: this task must not run on zeros either (killed, then closed).
          this.killTask(ev.pid, this.error.message);
          ev.uffd.close();
          return;
        }
        const image = ctx.checkpoint.process(ev.pid);
        const dup = [...ctx.states.values()].some((s) => s.pid === ev.pid && s.parent === undefined);
        if (!image || dup) {
          const err = new UserError(
            'EHANDOVER',
            dup
              ? `the restorer handed over pid ${ev.pid} twice`
              : `the restorer handed over pid ${ev.pid}, which has no images in ${ctx.checkpoint.dir}`,
          );
          // We cannot serve it: it must not run on zeros. Kill it before its uffd closes.
          this.killTask(ev.pid, err.message);
          ev.uffd.close();
          this.failed(err);
          return;
        }
        // Watch and, if it comes to that, kill this task only once it is verifiably found (kills.ts).
        const real = this.kills.find(ev.pid, image);
        const procId = ctx.loop.addProcess(ev.uffd, real ?? 0);
        const st = ProcessState.attach(procId, image, { remote: ctx.remotePages });
        ctx.states.set(procId, st);
        this.kills.track(procId, real);
        ctx.install(st);
        ctx.emit({ type: 'attached', pid: ev.pid, lazyPages: st.index.totalPages });
        const first = ctx.workingSets.attach(image);
        if (first.length > 0) {
          // Local pages: the native loop installs them itself, preloaded at start (see
          // LocalPages.preload); from a page server they are the first requests of the background.
          if (ctx.remotePages) st.prioritize(first);
          ctx.emit({ type: 'working-set', pid: ev.pid, pages: first.reduce((n, r) => n + r.pages, 0), ranges: first.length });
        }
        if (!ctx.remotePages) {
          // The first background requests are queued natively now, parked (see Daemon.start()), and the
          // hand-over thread starts them the moment the restorer says "restore finished": CRIU
          // resumes the tasks right after, and JS, busy or short of CPU, may hear of it tens of
          // milliseconds later. (Page-server fetches are not parked: they start at "finished".)
          ctx.loop.batch(() => this.pump.queue(st));
        }
        return;
      }
      case 'zombie':
        if (!ctx.checkpoint.process(ev.pid)) {
          ctx.emit({ type: 'warning', message: `zombie pid ${ev.pid} is not in ${ctx.checkpoint.dir}/pstree.img` });
        }
        ctx.emit({ type: 'zombie', pid: ev.pid });
        return;
      case 'finished':
        if (this.error) throw this.error;
        this.restoreFinished();
        return;
      case 'refused':
        ctx.emit({ type: 'warning', message: ev.message });
        return;
      case 'error': {
        if (ctx.finished) {
          ctx.emit({ type: 'warning', message: ev.message });
          return;
        }
        const err = new UserError('EHANDOVER', `restore failed during the hand-over: ${ev.message}`);
        // The task named by the error lost its uffd (the restorer closed its own copy): kill it too.
        if (ev.pid !== undefined) this.killTask(ev.pid, err.message);
        // Without a pid the stream cannot be followed any further (a hang-up, garbage): fail now.
        if (ev.pid === undefined) throw this.error ?? err;
        this.failed(err);
        return;
      }
    }
  }

  /** SIGKILL a task the restorer named (when it checks out: see Kills.killTask), and say so. */
  killTask(pid: number, reason: string): void {
    const killed = this.kills.killTask(pid);
    this.ctx.emit({ type: 'process-lost', pid, reason, killed });
  }

  /**
   * The hand-over failed but the stream is still readable: kill everything attached now, keep
   * reading for a moment so the tasks handed over after the bad one are killed too (instead of their
   * uffds vanishing unread with the connection), then fail.
   */
  private failed(err: UserError): void {
    if (this.error) return;
    this.error = err;
    for (const st of this.ctx.states.values()) if (st.status === 'serving') this.outcomes.lose(st, err.message);
    setTimeout(() => this.ctx.fail(err), HANDOVER_DRAIN_MS).unref();
  }
}
