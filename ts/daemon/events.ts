/** What a running daemon reports to its embedder: a discriminated union on `type`. */
import type { ProcessCounters } from './process-state.js';

/** Final numbers for one process. */
export interface ProcessReport extends ProcessCounters {
  pid: number;
  /** Image pid of the process this one was forked from, for processes born after the restore. */
  forkedFrom?: number;
  /** How the process ended for the daemon. */
  outcome: 'done' | 'exited' | 'lost';
  /** Milliseconds from hand-over to done. */
  timeToDoneMs: number;
}

export interface DaemonSummary {
  processes: ProcessReport[];
  elapsedMs: number;
}

export type DaemonEvent =
  /** The hand-over socket is bound and listening: the restorer may connect. */
  | { type: 'listening'; socket: string }
  /** A restored task handed over its userfaultfd. */
  | { type: 'attached'; pid: number; lazyPages: number }
  /** A zombie task was announced (no memory to serve). */
  | { type: 'zombie'; pid: number }
  /**
   * A working set recorded on an earlier restore fits this process: these pages are installed first,
   * in the order they were first touched then.
   */
  | { type: 'working-set'; pid: number; pages: number; ranges: number }
  /**
   * The working set of this process was installed (copied early, from its hand-over on: see
   * `workingSet`); `atMs` is when the last page went in, in ms since the Unix epoch.
   */
  | { type: 'working-set-installed'; pid: number; pages: number; atMs: number }
  /** The restorer said "restore finished": background transfer may start. */
  | { type: 'restore-finished' }
  /** A process forked after the restore; the child is served from the same images. */
  | { type: 'fork'; pid: number; childPid?: number }
  /** Pages installed because a process faulted on them (coalesced per native batch). */
  | { type: 'served'; pid: number; pages: number; zeroPages: number }
  /** Background transfer progress for one process. */
  | { type: 'progress'; pid: number; remainingPages: number; totalPages: number; bytes: number }
  /** Everything owed to the process is installed (or it exited). */
  | { type: 'process-done'; report: ProcessReport }
  /** The daemon could not serve the process any more: it was killed (SIGKILL) before its uffd was closed. */
  | { type: 'process-lost'; pid: number; reason: string; killed: boolean }
  /** A warning a user should see (the daemon goes on). */
  | { type: 'warning'; message: string }
  /** Every process is done: the daemon is shutting down with success. */
  | { type: 'done'; summary: DaemonSummary };
