/**
 * Which real process to SIGKILL for each process the daemon serves, and killing it when it cannot
 * be served any more (before its uffd closes, so it never reads zeros where its data was).
 *
 * A process is killed only once it is verifiably found (identity.ts): a task handed over by its pid
 * in the restored tree's namespace among the restorer's descendants and by its lazy VMAs, a forked
 * child among its parent's children. Each is remembered with its start time, so a pid reused by
 * another process since is never killed.
 */
import type { EventLoop } from '../native/index.js';
import type { ProcessImage } from '../images/index.js';
import type { DaemonContext } from './context.js';
import { descendantWithNsPid, descendsFrom, findNewChild, killQuietly, ownsLazyVmas, resolveTask, startTicks, youngerThanUs } from './identity.js';
import type { ProcessState } from './process-state.js';

/** A task not found at "restore finished" is looked for again this many times, this far apart. */
const IDENTIFY_RETRIES = 10;
const IDENTIFY_RETRY_MS = 50;

export class Kills {
  /**
   * Real pid to kill for each native procId (image pid, or the pid found for a forked child), with
   * its start time: a pid reused by another process since is never killed.
   */
  private readonly killPid = new Map<number, { pid: number; start: number | undefined }>();
  /** Tasks handed over whose process could not be identified yet (see identify()). */
  private readonly unidentified = new Set<number>();
  /** The restorer's pid (SO_PEERCRED): tasks it names are its descendants. */
  restorerPid = 0;
  private childSearchPending = false;

  constructor(private readonly ctx: DaemonContext) {}

  private get loop(): EventLoop {
    return this.ctx.loop;
  }

  private knownPids(): Set<number> {
    return new Set([...this.killPid.values()].map((k) => k.pid));
  }

  private remember(procId: number, pid: number): void {
    this.killPid.set(procId, { pid, start: startTicks(pid) });
  }

  /**
   * The real pid of a task the restorer hands over, if it can be confirmed now. CRIU hands a task's
   * uffd over before it has moved its lazy VMAs into place and registered them, so this may fail;
   * such a task is looked for again at "restore finished" (see track() and identify()).
   */
  find(nsPid: number, image: ProcessImage): number | undefined {
    return resolveTask(nsPid, this.restorerPid, image);
  }

  /** A task handed over and added to the loop as `procId`, with what find() said. */
  track(procId: number, real: number | undefined): void {
    if (real !== undefined) this.remember(procId, real);
    else this.unidentified.add(procId);
  }

  /** Nothing is owed to it any more: it is not to be killed. */
  forget(procId: number): void {
    this.killPid.delete(procId);
  }

  /**
   * At "restore finished" every task has its lazy VMAs in place and registered: find the tasks that
   * could not be identified at their hand-over, and watch them (their exit ends their transfer).
   */
  identify(attempt = 0): void {
    for (const procId of [...this.unidentified]) {
      const st = this.ctx.states.get(procId);
      if (!st || st.status !== 'serving') {
        // Done or gone already (a short-lived program can finish before this runs): nothing to watch.
        this.unidentified.delete(procId);
        continue;
      }
      const real = resolveTask(st.pid, this.restorerPid, st.image);
      if (real === undefined) {
        // It may be exiting right now (its VMAs going), which its uffd will report: look again a few
        // times before saying it cannot be killed.
        if (attempt < IDENTIFY_RETRIES) continue;
        this.unidentified.delete(procId);
        this.ctx.emit({
          type: 'warning',
          message: `pid ${st.pid}: no descendant of the restorer (pid ${this.restorerPid}) has this pid in its namespace ` +
            'with the task\'s lazy VMAs registered: it cannot be killed if the restore fails',
        });
        continue;
      }
      this.unidentified.delete(procId);
      this.remember(procId, real);
      this.loop.watchPid(procId, real);
    }
    const childrenLeft = this.identifyChildren();
    if ((this.unidentified.size > 0 || childrenLeft) && !this.ctx.ended && attempt < IDENTIFY_RETRIES) {
      setTimeout(() => this.ctx.guard(() => this.identify(attempt + 1)), IDENTIFY_RETRY_MS).unref();
    }
  }

  /**
   * Forked children not identified yet: a child is found among its parent's children, which is
   * possible only once the parent is identified, and once the kernel has linked the child in (the
   * fork event is read before that, so a child looked for at once may not be there yet). True while
   * some child may still be found.
   */
  private identifyChildren(): boolean {
    let left = false;
    for (const st of this.ctx.states.values()) {
      if (st.status !== 'serving' || st.parent === undefined || this.killPid.has(st.procId)) continue;
      const parentPid = this.killPid.get(st.parent)?.pid;
      if (parentPid === undefined) {
        left ||= this.unidentified.has(st.parent);
        continue;
      }
      const found = findNewChild(parentPid, this.knownPids());
      if (found !== undefined && ownsLazyVmas(found, st.image)) {
        this.remember(st.procId, found);
        this.loop.watchPid(st.procId, found);
      } else {
        left = true;
      }
    }
    return left;
  }

  /**
   * `parent` forked the child the loop calls `childProcId`: find and watch it. Returns its pid, or
   * undefined if it is not found now (then it is looked for again a few times).
   */
  forked(parent: ProcessState, childProcId: number): number | undefined {
    const found = findNewChild(this.killPid.get(parent.procId)?.pid, this.knownPids());
    const childPid = found !== undefined && ownsLazyVmas(found, parent.image) ? found : undefined;
    if (childPid !== undefined) {
      this.remember(childProcId, childPid);
      this.loop.watchPid(childProcId, childPid);
    } else if (this.killPid.has(parent.procId)) {
      this.childSearch();
    }
    return childPid;
  }

  /**
   * Regression (a child forked after "restore finished" was never watched when the kernel had not
   * linked it to its parent yet as the fork event was handled: without background transfer its exit
   * went unnoticed): look for such children again, a few times.
   */
  private childSearch(attempt = 0): void {
    if (this.childSearchPending && attempt === 0) return;
    this.childSearchPending = true;
    setTimeout(() => {
      this.childSearchPending = false;
      this.ctx.guard(() => {
        if (this.identifyChildren() && attempt + 1 < IDENTIFY_RETRIES) this.childSearch(attempt + 1);
      });
    }, attempt === 0 ? 5 : IDENTIFY_RETRY_MS).unref();
  }

  /**
   * A lost process (still owed data) forked before we noticed: the child is owed the same. Kill it
   * too before its uffd closes, when we can tell which it is; true if it was killed.
   */
  killOrphan(parent: ProcessState): boolean {
    const parentPid = this.killPid.get(parent.procId)?.pid;
    const found = findNewChild(parentPid, this.knownPids());
    return found !== undefined && ownsLazyVmas(found, parent.image) && killQuietly(found);
  }

  /** SIGKILL the process of `st`, which cannot be served any more; true if it was killed. */
  kill(st: ProcessState): boolean {
    const k = this.killPid.get(st.procId);
    let killed = k !== undefined && k.start !== undefined && startTicks(k.pid) === k.start && killQuietly(k.pid);
    if (k === undefined && this.unidentified.delete(st.procId)) {
      // Lost before "restore finished", while its VMAs were not yet in place to confirm it: kill it on the
      // same evidence as a task named in a failed hand-over (a younger descendant of the restorer).
      const real = descendantWithNsPid(st.pid, this.restorerPid);
      killed = real !== undefined && youngerThanUs(real) && killQuietly(real);
    }
    return killed;
  }

  /**
   * SIGKILL a task the restorer named in a failed hand-over: only if it descends from the restorer
   * and is younger than the daemon (it cannot be checked against its uffd any more). True if killed.
   */
  killTask(pid: number): boolean {
    // `pid` is numbered in the restored tree's namespace: find the descendant of the restorer it names.
    const real = descendantWithNsPid(pid, this.restorerPid);
    return real !== undefined && descendsFrom(real, this.restorerPid) && youngerThanUs(real) && killQuietly(real);
  }
}
