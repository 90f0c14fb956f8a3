/**
 * What the daemon's parts share, as an interface: the daemon (daemon.ts) implements it and hands it
 * to each part, so no part imports the daemon, and the arrows between modules go one way.
 */
import type { Checkpoint } from '../images/index.js';
import type { EventLoop } from '../native/index.js';
import type { DaemonEvent } from './events.js';
import type { ProcessState } from './process-state.js';
import type { WorkingSets } from './working-set.js';

export interface DaemonContext {
  readonly checkpoint: Checkpoint;
  readonly loop: EventLoop;
  /** Every process handed over or forked, by the native core's procId. */
  readonly states: Map<number, ProcessState>;
  readonly workingSets: WorkingSets;
  /** Lazy pages come from a page server (through either client), not from the pages files. */
  readonly remotePages: boolean;
  /** The restorer said "restore finished". */
  readonly finished: boolean;
  /** The daemon has ended (done or failed): nothing more is started. */
  readonly ended: boolean;
  emit(e: DaemonEvent): void;
  /** Run a handler; an unexpected error fails the restore safely instead of escaping into the event loop. */
  guard(fn: () => void): void;
  /** Fail the whole restore: every process still owed data is killed first, then the uffds close. */
  fail(err: Error): void;
  /** Install `st`'s translation table in the native core (after every change to its layout). */
  install(st: ProcessState): void;
  /** Queue background requests and finish the restore when nothing is owed any more. */
  pump(): void;
}
