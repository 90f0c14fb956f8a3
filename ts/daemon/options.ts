/** What an embedder passes to `startLazyPagesDaemon()`, what it gets back, and each option's default. */
import { PAGE_SIZE } from '../images/index.js';
import type { TlsFiles } from '../native/index.js';
import type { DaemonEvent, DaemonSummary } from './events.js';
import type { WorkingSetOptions } from './working-set.js';

export interface DaemonOptions extends WorkingSetOptions {
  /** The checkpoint (`criu dump -D`). */
  imagesDir: string;
  /** Where `lazy-pages.socket` is created; CRIU's default is the images dir. */
  workDir?: string;
  /** Stream the pages nobody faulted on after "restore finished" (default true). */
  background?: boolean;
  /** Largest background request, bytes (default 4 MiB). */
  chunkBytes?: number;
  /**
   * Largest piece of a background copy (or page-server read) done between two looks at pending
   * faults (default 64 KiB): a fault waits at most one piece behind the background transfer.
   * Measured here: 64 KiB keeps the local drain rate of 1 MiB pieces and cuts remote fault p50 during
   * a background stream by several times.
   */
  pieceBytes?: number;
  /**
   * Background requests kept queued in the native core per process (default 8, up to 32 MiB): the
   * native loop must never run dry while the JS thread is busy or descheduled (it runs below the loop
   * thread), or a program reading its memory overtakes the transfer and faults page by page.
   */
  queueDepth?: number;
  /**
   * Fetch lazy pages from a page server (`criu dump --lazy-pages`, `criu page-server --lazy-pages` or
   * `lazy-pages page-server`) instead of the images dir's pages files.
   */
  pageServer?: { address: string; port: number; tls?: TlsFiles; timeoutMs?: number };
  /** Remote background requests kept in flight per process (default 8). */
  remoteDepth?: number;
  /** Called for every daemon event, synchronously, on the JS thread. */
  onEvent?: (e: DaemonEvent) => void;
  /**
   * Run the guardian (default true): a small process that holds a duplicate of every owed uffd and
   * SIGKILLs the owed processes if this daemon dies by any means (SIGKILL, OOM, a crash), before
   * their uffds can close. The daemon refuses to start (`EGUARDIAN`) if it cannot start it. `false`
   * runs without: then a daemon that dies leaves its processes reading zeros where pages were owed.
   */
  guardian?: boolean;
}

export interface LazyPagesDaemon {
  /** Absolute path of the hand-over socket. */
  readonly socketPath: string;
  /** Resolves when every process is done; rejects (a UserError) when the restore failed. */
  readonly done: Promise<DaemonSummary>;
  /** Subscribe to events; returns an unsubscribe function. */
  on(listener: (e: DaemonEvent) => void): () => void;
  /** Stop now. Processes still owed pages are SIGKILLed first: none is left to read zeros. */
  close(reason?: string): Promise<void>;
  /** Pid of the guardian process watching this daemon (undefined with `guardian: false`). */
  readonly guardianPid?: number;
}

/** The background transfer's options with their defaults applied. */
export interface BackgroundSettings {
  /** Stream what nobody faulted on after "restore finished" (a working set is installed either way). */
  readonly background: boolean;
  /** Largest local background request, in pages. */
  readonly chunkPages: number;
  /** Local requests kept queued in the native core per process. */
  readonly queueDepth: number;
  /** Remote requests kept in flight per process. */
  readonly remoteDepth: number;
}

export function backgroundSettings(opts: DaemonOptions): BackgroundSettings {
  return {
    background: opts.background ?? true,
    chunkPages: Math.max(1, Math.floor((opts.chunkBytes ?? 4 << 20) / PAGE_SIZE)),
    queueDepth: Math.max(1, opts.queueDepth ?? 8),
    remoteDepth: Math.max(1, opts.remoteDepth ?? 8),
  };
}
