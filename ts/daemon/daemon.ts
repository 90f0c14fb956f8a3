/**
 * The lazy-pages daemon as a library: `startLazyPagesDaemon()` is what `lazy-pages daemon` runs and
 * what an orchestrator embeds instead of `criu lazy-pages`.
 *
 * It listens on `<workDir>/lazy-pages.socket`, takes each restored task's userfaultfd as CRIU hands
 * it over, gives it to the native event loop (which serves faults from a translation table at once,
 * off the JS thread), applies every FORK/REMAP/UNMAP/REMOVE to the per-process state and re-installs
 * the table, and after "restore finished" streams the rest in the background. It resolves `done`
 * when every process has all its pages; it never closes a uffd while its process is still owed data
 * (such a process is SIGKILLed first, and the reason is reported).
 */
import { accessSync, constants as fsConstants, realpathSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';

import { UserError } from '../errors.js';
import { Checkpoint, PAGE_SIZE } from '../images/index.js';
import { EventLoop, Guardian, HandoverListener, PageImage, type HandoverEvent, type NativeEvent } from '../native/index.js';
import type { TlsFiles } from '../pageserver/tls.js';
import { RemotePageSource } from '../pagesource/remote.js';
import type { DaemonEvent, DaemonSummary, ProcessReport } from './events.js';
import { descendantWithNsPid, descendsFrom, findNewChild, killQuietly, ownsLazyVmas, resolveTask, someoneListensOn, startTicks, youngerThanUs } from './identity.js';
import { ProcessState } from './process-state.js';
import { TsRemote } from './ts-remote.js';
import { WorkingSets, type WorkingSetOptions } from './working-set.js';

const PAGE = BigInt(PAGE_SIZE);
export const SOCKET_NAME = 'lazy-pages.socket';
/** A task not found at "restore finished" is looked for again this many times, this far apart. */
const IDENTIFY_RETRIES = 10;
const IDENTIFY_RETRY_MS = 50;
/** After a bad task in the hand-over, how long the rest of it is still read (to kill those tasks too). */
const HANDOVER_DRAIN_MS = 1000;
/** Requests kept queued per process while a working set is installed (its runs are small). */
const WORKING_SET_DEPTH = 256;

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

export interface Request {
  st: ProcessState;
  firstPage: number;
  pages: number;
  /** A fault's page: on a retryable failure the faulting thread is woken to fault again. */
  urgent?: { live: bigint };
  /** One of the working set's requests (counted apart: see queueBackground). */
  priority?: boolean;
}

/** Start a lazy-pages daemon. Resolves once the socket listens (the restorer may connect). */
export async function startLazyPagesDaemon(opts: DaemonOptions): Promise<LazyPagesDaemon> {
  const imagesDir = resolve(opts.imagesDir);
  const workDir = resolve(opts.workDir ?? imagesDir);
  checkDir(imagesDir, 'images dir', false);
  checkDir(workDir, 'work dir', true);
  const socket = join(workDir, SOCKET_NAME);
  if (someoneListensOn(socket)) {
    // A stale socket file is replaced; a live one belongs to another daemon serving a restore now.
    throw new UserError('EBUSY', `${socket}: another lazy-pages daemon is listening there; use another work dir (-W)`);
  }
  const checkpoint = await Checkpoint.open(imagesDir);
  const remote = checkpoint.processes.filter((p) => p.lazyRanges.some((r) => r.location.kind === 'remote'));
  if (remote.length > 0 && !opts.pageServer) {
    throw new UserError(
      'EREMOTE',
      `${imagesDir} was dumped with --lazy-pages: the lazy pages of pid ${remote[0].pid} are only on the page server; ` +
        'pass --page-server --address A --port P',
    );
  }
  const ps = opts.pageServer;
  if (ps?.tls) {
    // TLS goes through Node's tls module: the TypeScript client fetches, the native core copies.
    let onError: (e: UserError) => void = () => undefined;
    const source = await RemotePageSource.connect({ ...ps, onError: (e) => onError(e) });
    const d = new Daemon(checkpoint, workDir, opts, source);
    onError = (e) => d.sourceFailed(e);
    d.start();
    return d;
  }
  const d = new Daemon(checkpoint, workDir, opts);
  if (ps) {
    // Plain TCP: the native event loop talks to the page server itself, so a remote fault is fetched
    // and installed without a trip through the JS event loop.
    try {
      d.connectNative(ps.address, ps.port, ps.timeoutMs ?? 10_000);
    } catch (e) {
      await d.close('the page server is unreachable');
      throw new UserError('EPAGESERVER', `page server ${ps.address}:${ps.port}: ${(e as Error).message}`);
    }
  }
  d.start();
  return d;
}

function checkDir(dir: string, what: string, writable: boolean): void {
  let st;
  try {
    st = statSync(dir);
  } catch {
    throw new UserError(what === 'work dir' ? 'EWORKDIR' : 'EIMAGESDIR', `${what} ${dir} does not exist`);
  }
  if (!st.isDirectory()) throw new UserError('EWORKDIR', `${what} ${dir} is not a directory`);
  if (!writable) return;
  try {
    accessSync(dir, fsConstants.W_OK | fsConstants.X_OK);
  } catch {
    throw new UserError('EWORKDIR', `${what} ${dir} is not writable: ${SOCKET_NAME} cannot be created there`);
  }
  checkWorkDirTrust(dir);
}

/**
 * The restorer trusts whatever listens at `<workDir>/lazy-pages.socket`. Whoever may rename or
 * replace entries in the work dir, or in a dir above it, could put their own socket there and write
 * their own bytes into the restored processes. So the work dir and each dir above it (symlinks
 * resolved) must be owned by root or the daemon's user, and not writable by group or others unless
 * sticky (a sticky dir, like /tmp, lets nobody remove or rename another user's entries).
 */
function checkWorkDirTrust(workDir: string): void {
  const me = process.geteuid?.() ?? 0;
  const real = realpathSync(workDir);
  let dir = real;
  for (;;) {
    const st = statSync(dir);
    const problem =
      st.uid !== 0 && st.uid !== me
        ? `is owned by uid ${st.uid} (it must be owned by root or the daemon's user, uid ${me})`
        : (st.mode & 0o022) !== 0 && (st.mode & 0o1000) === 0
          ? `is writable by ${(st.mode & 0o002) !== 0 ? 'others' : 'its group'} (mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')}) and not sticky`
          : undefined;
    if (problem) {
      const fix = st.uid !== 0 && st.uid !== me ? `chown root ${dir}` : `chmod go-w ${dir}`;
      throw new UserError(
        'EWORKDIR',
        `work dir ${workDir}: ${dir === real ? 'it' : `${dir} above it`} ${problem}: another user could replace ` +
          `${SOCKET_NAME} and feed the restored processes; fix it (\`${fix}\`) or use a private work dir (-W)`,
      );
    }
    const up = dirname(dir);
    if (up === dir) return;
    dir = up;
  }
}

class Daemon implements LazyPagesDaemon {
  readonly socketPath: string;
  readonly done: Promise<DaemonSummary>;
  private resolveDone!: (s: DaemonSummary) => void;
  private rejectDone!: (e: Error) => void;
  private readonly listeners = new Set<(e: DaemonEvent) => void>();
  private readonly loop: EventLoop;
  private listener?: HandoverListener;
  private readonly states = new Map<number, ProcessState>();
  /**
   * Real pid to kill for each native procId (image pid, or the pid found for a forked child), with
   * its start time: a pid reused by another process since is never killed.
   */
  private readonly killPid = new Map<number, { pid: number; start: number | undefined }>();
  private readonly reports: ProcessReport[] = [];
  private readonly images = new Map<string, number>();
  private readonly pageImages: PageImage[] = [];
  private readonly requests = new Map<number, Request>();
  private nextReq = 1;
  private finished = false;
  /** The restorer's pid (SO_PEERCRED): tasks it names are its descendants. */
  private restorerPid = 0;
  /** Tasks handed over whose process could not be identified yet (see identify()). */
  private readonly unidentified = new Set<number>();
  /** Set when the hand-over failed; tasks that still arrive are killed at once. */
  private handoverError?: UserError;
  private ended = false;
  private readonly startedAt = performance.now();
  private readonly background: boolean;
  private readonly chunkPages: number;
  private readonly queueDepth: number;
  private readonly lastProgress = new Map<number, number>();
  private readonly remoteDepth: number;
  /** Remote pages are fetched by the native page-server client. */
  private nativeRemote = false;
  /** The TypeScript page-server client path (TLS). */
  private readonly tsRemote?: TsRemote;
  private readonly useGuardian: boolean;
  guardianPid?: number;
  private readonly workingSets: WorkingSets;

  constructor(
    private readonly checkpoint: Checkpoint,
    private readonly workDir: string,
    opts: DaemonOptions,
    source?: RemotePageSource,
  ) {
    this.remoteDepth = Math.max(1, opts.remoteDepth ?? 8);
    this.socketPath = join(workDir, SOCKET_NAME);
    this.background = opts.background ?? true;
    this.chunkPages = Math.max(1, Math.floor((opts.chunkBytes ?? 4 << 20) / PAGE_SIZE));
    this.queueDepth = Math.max(1, opts.queueDepth ?? 8);
    this.useGuardian = opts.guardian ?? true;
    if (opts.onEvent) this.listeners.add(opts.onEvent);
    this.workingSets = new WorkingSets(opts, (message) => this.emit({ type: 'warning', message }));
    this.done = new Promise((res, rej) => {
      this.resolveDone = res;
      this.rejectDone = rej;
    });
    // An embedder that only awaits `done` later must not see an unhandled rejection meanwhile.
    this.done.catch(() => undefined);
    this.loop = new EventLoop((batch) => this.guard(() => this.onNative(batch)));
    if (source) {
      this.tsRemote = new TsRemote(source, this.loop, {
        submit: (req) => this.submit(req),
        guard: (fn) => this.guard(fn),
        pump: () => this.pump(),
      });
    }
    this.loop.setPieceBytes(opts.pieceBytes ?? 64 << 10);
  }

  /**
   * The working set of each process it fits, handed to the native loop before anything is handed
   * over: it is copied the moment each task's uffd arrives (see EventLoop.preload), by image address
   * (live == image until the task runs), from the pages files (a page server's pages come later).
   */
  private preloadWorkingSets(): void {
    if (this.tsRemote !== undefined || this.nativeRemote) return;
    for (const { image, ranges } of this.workingSets.fitting(this.checkpoint.processes)) {
      const byFile = new Map<string, { offsets: number[]; dsts: number[]; lens: number[] }>();
      for (const r of ranges) {
        let at = r.start;
        const end = r.start + BigInt(r.pages) * PAGE;
        // A recorded run may span adjacent lazy ranges (and so files or offsets): cut it at each.
        for (const l of image.lazyRanges) {
          if (l.end <= at || l.start >= end) continue;
          const to = end < l.end ? end : l.end;
          if (l.location.kind === 'file') {
            const f = byFile.get(l.location.file) ?? { offsets: [], dsts: [], lens: [] };
            f.offsets.push(Number(l.location.offset + (at - l.start)));
            f.dsts.push(Number(at));
            f.lens.push(Number(to - at));
            byFile.set(l.location.file, f);
          }
          at = to;
          if (at >= end) break;
        }
      }
      for (const [file, f] of byFile) {
        this.loop.preload(image.pid, this.imageId(file), Float64Array.from(f.offsets), Float64Array.from(f.dsts), Float64Array.from(f.lens));
      }
    }
  }

  start(): void {
    try {
      this.preloadWorkingSets();
      // Background requests queued before "restore finished" wait natively until the hand-over
      // thread reads it (HandoverListener.listen(..., this.loop) below).
      this.loop.park();
      // Before the socket listens: no uffd may arrive while nobody would act if we died.
      if (this.useGuardian) {
        try {
          this.guardianPid = Guardian.acquire();
        } catch (e) {
          throw new UserError(
            'EGUARDIAN',
            `${(e as Error).message}; the daemon does not serve a restore without it (it kills the restored ` +
              'processes if the daemon dies, before they can read zeros)',
            { cause: e },
          );
        }
      }
      this.listener = HandoverListener.listen(this.workDir, (ev) => {
        if (this.ended && ev.type === 'task') {
          // Still queued when the daemon ended: it must not run on zeros either (killed, then closed).
          this.killTask(ev.pid, 'the daemon had already stopped');
          ev.uffd.close();
          return;
        }
        this.guard(() => this.onHandover(ev));
      }, this.loop);
    } catch (e) {
      // Nothing was handed over yet: just release the native loop (it would keep Node alive).
      this.ended = true;
      this.teardown();
      throw e;
    }
    this.emit({ type: 'listening', socket: this.socketPath });
  }

  on(listener: (e: DaemonEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async close(reason = 'the daemon was stopped'): Promise<void> {
    if (this.ended) return;
    const owed = [...this.states.values()].filter((s) => s.status === 'serving');
    if (owed.length === 0 && this.finished) {
      this.finish();
      return;
    }
    this.fail(new UserError('ESTOPPED', reason));
  }

  /** The page server failed: nobody can be served any more. */
  sourceFailed(e: UserError): void {
    this.fail(e);
  }

  /** Lazy pages come from a page server through the native client (plain TCP). */
  connectNative(address: string, port: number, timeoutMs: number): void {
    this.loop.connectPageServer(address, port, timeoutMs);
    this.nativeRemote = true;
  }

  /**
   * Listeners are the embedder's code: one that throws must not stop the daemon half-way (close()
   * killing the first owed process, then the exception escaping before the next is killed and its
   * uffd closes on zeros). Its error becomes a warning to the other listeners.
   */
  private emit(e: DaemonEvent): void {
    for (const l of this.listeners) {
      try {
        l(e);
      } catch (err) {
        if (this.listenerErrorDepth > 0) continue;
        this.listenerErrorDepth++;
        try {
          this.emit({ type: 'warning', message: `an event listener threw on '${e.type}' (ignored): ${(err as Error)?.message ?? err}` });
        } finally {
          this.listenerErrorDepth--;
        }
      }
    }
  }
  /** Set while a listener's error is reported: a listener that throws on that warning too must not loop. */
  private listenerErrorDepth = 0;

  /** Run a handler; an unexpected error fails the restore safely instead of escaping into the event loop. */
  private guard(fn: () => void): void {
    if (this.ended) return;
    try {
      fn();
    } catch (e) {
      this.fail(e instanceof Error ? e : new Error(String(e)));
    }
  }

  private imageId(file: string): number {
    let id = this.images.get(file);
    if (id === undefined) {
      const img = PageImage.open(file);
      this.pageImages.push(img);
      id = this.loop.addImage(img);
      this.images.set(file, id);
    }
    return id;
  }

  // ---------------------------------------------------------------- hand-over

  private onHandover(ev: HandoverEvent): void {
    switch (ev.type) {
      case 'connected':
        this.restorerPid = ev.pid;
        return;
      case 'task': {
        if (this.handoverError) {
          // The restore has failed already: this task must not run on zeros either (killed, then closed).
          this.killTask(ev.pid, this.handoverError.message);
          ev.uffd.close();
          return;
        }
        const image = this.checkpoint.process(ev.pid);
        const dup = [...this.states.values()].some((s) => s.pid === ev.pid && s.parent === undefined);
        if (!image || dup) {
          const err = new UserError(
            'EHANDOVER',
            dup
              ? `the restorer handed over pid ${ev.pid} twice`
              : `the restorer handed over pid ${ev.pid}, which has no images in ${this.checkpoint.dir}`,
          );
          // We cannot serve it: it must not run on zeros. Kill it before its uffd closes.
          this.killTask(ev.pid, err.message);
          ev.uffd.close();
          this.handoverFailed(err);
          return;
        }
        // Watch and, if it comes to that, kill this task only once it is verifiably found: by its pid in
        // the restored tree's namespace among the restorer's descendants, and its lazy VMAs (identity.ts).
        // CRIU hands a task's uffd over before it has moved its lazy VMAs into place and registered them,
        // so this may fail now; it is tried again at "restore finished" (see identify()).
        const real = resolveTask(ev.pid, this.restorerPid, image);
        const procId = this.loop.addProcess(ev.uffd, real ?? 0);
        const st = ProcessState.attach(procId, image, { remote: this.tsRemote !== undefined || this.nativeRemote });
        this.states.set(procId, st);
        if (real !== undefined) this.killPid.set(procId, { pid: real, start: startTicks(real) });
        else this.unidentified.add(procId);
        this.install(st);
        this.emit({ type: 'attached', pid: ev.pid, lazyPages: st.index.totalPages });
        const first = this.workingSets.attach(image);
        if (first.length > 0) {
          // Local pages: the native loop installs them itself, preloaded at start (see
          // preloadWorkingSets); from a page server they are the first requests of the background.
          if (this.tsRemote !== undefined || this.nativeRemote) st.prioritize(first);
          this.emit({ type: 'working-set', pid: ev.pid, pages: first.reduce((n, r) => n + r.pages, 0), ranges: first.length });
        }
        if (this.tsRemote === undefined && !this.nativeRemote) {
          // The first background requests are queued natively now, parked (see start()), and the
          // hand-over thread starts them the moment the restorer says "restore finished": CRIU
          // resumes the tasks right after, and JS, busy or short of CPU, may hear of it tens of
          // milliseconds later. (Page-server fetches are not parked: they start at "finished".)
          this.loop.batch(() => this.queueBackground(st));
        }
        return;
      }
      case 'zombie':
        if (!this.checkpoint.process(ev.pid)) {
          this.emit({ type: 'warning', message: `zombie pid ${ev.pid} is not in ${this.checkpoint.dir}/pstree.img` });
        }
        this.emit({ type: 'zombie', pid: ev.pid });
        return;
      case 'finished': {
        if (this.handoverError) throw this.handoverError;
        this.finished = true;
        // The background (the working set first) is queued before anything else: the restored
        // program may run from now on, and each millisecond here is a fault it takes instead.
        this.pump();
        this.emit({ type: 'restore-finished' });
        this.listener?.close();
        this.listener = undefined;
        // Scanning /proc for the tasks not identified at hand-over takes milliseconds: after the pump.
        this.identify();
        return;
      }
      case 'refused':
        this.emit({ type: 'warning', message: ev.message });
        return;
      case 'error': {
        if (this.finished) {
          this.emit({ type: 'warning', message: ev.message });
          return;
        }
        const err = new UserError('EHANDOVER', `restore failed during the hand-over: ${ev.message}`);
        // The task named by the error lost its uffd (the restorer closed its own copy): kill it too.
        if (ev.pid !== undefined) this.killTask(ev.pid, err.message);
        // Without a pid the stream cannot be followed any further (a hang-up, garbage): fail now.
        if (ev.pid === undefined) throw this.handoverError ?? err;
        this.handoverFailed(err);
        return;
      }
    }
  }

  /**
   * SIGKILL a task the restorer named in a failed hand-over, and say so: only if it descends from the
   * restorer and is younger than the daemon (it cannot be checked against its uffd any more).
   */
  private killTask(pid: number, reason: string): void {
    // `pid` is numbered in the restored tree's namespace: find the descendant of the restorer it names.
    const real = descendantWithNsPid(pid, this.restorerPid);
    const killed = real !== undefined && descendsFrom(real, this.restorerPid) && youngerThanUs(real) && killQuietly(real);
    this.emit({ type: 'process-lost', pid, reason, killed });
  }

  /**
   * The hand-over failed but the stream is still readable: kill everything attached now, keep
   * reading for a moment so the tasks handed over after the bad one are killed too (instead of their
   * uffds vanishing unread with the connection), then fail.
   */
  private handoverFailed(err: UserError): void {
    if (this.handoverError) return;
    this.handoverError = err;
    for (const st of this.states.values()) if (st.status === 'serving') this.lose(st, err.message);
    setTimeout(() => this.fail(err), HANDOVER_DRAIN_MS).unref();
  }

  // ---------------------------------------------------------------- native events

  private onNative(batch: NativeEvent[]): void {
    const dirty = new Set<ProcessState>();
    const served = new Map<ProcessState, { pages: number; zero: number; last: bigint }>();
    for (const ev of batch) {
      if (ev.type === 'source-error') {
        this.fail(new UserError('EPAGESERVER', ev.message));
        return;
      }
      if (ev.type === 'early-done') {
        this.emit({ type: 'working-set-installed', pid: ev.pid, pages: ev.bytes / PAGE_SIZE, atMs: ev.atMs });
        continue;
      }
      if (ev.type === 'error' && ev.procId === undefined) {
        this.emit({ type: 'warning', message: `native core: ${ev.message}` });
        continue;
      }
      const st = this.states.get(ev.procId!);
      if (!st || st.status !== 'serving') {
        if (ev.type === 'fork') this.orphanFork(st, ev.childProcId);
        if (ev.type === 'done') this.requests.delete(ev.reqId);
        continue;
      }
      switch (ev.type) {
        case 'served': {
          const s = served.get(st) ?? { pages: 0, zero: 0, last: ev.live };
          let bytes = 0;
          for (let i = 0; i < ev.images.length; i++) {
            st.settleImageAt(ev.images[i]!, ev.lens[i]!);
            bytes += ev.lens[i]!;
            if (this.workingSets.recording) this.workingSets.served(st.pid, ev.images[i]!, ev.lens[i]!);
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
          // Only faults in remote ranges are forwarded: fetch the page urgently.
          this.tsRemote?.fault(st, ev.address);
          break;
        case 'fork': {
          st.eventsApplied++;
          const child = st.fork(ev.childProcId);
          this.states.set(ev.childProcId, child);
          const found = findNewChild(this.killPid.get(st.procId)?.pid, new Set([...this.killPid.values()].map((k) => k.pid)));
          const childPid = found !== undefined && ownsLazyVmas(found, st.image) ? found : undefined;
          if (childPid !== undefined) {
            this.killPid.set(ev.childProcId, { pid: childPid, start: startTicks(childPid) });
            this.loop.watchPid(ev.childProcId, childPid);
          } else if (this.killPid.has(st.procId)) {
            this.childSearch();
          }
          dirty.add(st);
          dirty.add(child);
          this.emit({ type: 'fork', pid: st.pid, childPid });
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
          this.loop.unregister(st.procId, ev.start, ev.end - ev.start);
          st.applyDrop(ev.start, ev.end);
          dirty.add(st);
          break;
        case 'unmap':
          st.eventsApplied++;
          st.applyDrop(ev.start, ev.end);
          dirty.add(st);
          break;
        case 'done':
          this.completed(st, ev);
          break;
        case 'exit':
        case 'gone':
          this.exited(st);
          break;
        case 'error':
          this.lose(st, `native core: ${ev.message}`);
          break;
      }
    }
    for (const st of dirty) if (st.status === 'serving') this.install(st);
    for (const [st, s] of served) {
      if (st.status === 'serving') st.noteFault(s.last);
      this.emit({ type: 'served', pid: st.pid, pages: s.pages, zeroPages: s.zero });
    }
    this.pump();
  }

  /**
   * At "restore finished" every task has its lazy VMAs in place and registered: find the tasks that
   * could not be identified at their hand-over, and watch them (their exit ends their transfer).
   */
  private identify(attempt = 0): void {
    for (const procId of [...this.unidentified]) {
      const st = this.states.get(procId);
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
        this.emit({
          type: 'warning',
          message: `pid ${st.pid}: no descendant of the restorer (pid ${this.restorerPid}) has this pid in its namespace ` +
            'with the task\'s lazy VMAs registered: it cannot be killed if the restore fails',
        });
        continue;
      }
      this.unidentified.delete(procId);
      this.killPid.set(procId, { pid: real, start: startTicks(real) });
      this.loop.watchPid(procId, real);
    }
    const childrenLeft = this.identifyChildren();
    if ((this.unidentified.size > 0 || childrenLeft) && !this.ended && attempt < IDENTIFY_RETRIES) {
      setTimeout(() => this.guard(() => this.identify(attempt + 1)), IDENTIFY_RETRY_MS).unref();
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
    for (const st of this.states.values()) {
      if (st.status !== 'serving' || st.parent === undefined || this.killPid.has(st.procId)) continue;
      const parentPid = this.killPid.get(st.parent)?.pid;
      if (parentPid === undefined) {
        left ||= this.unidentified.has(st.parent);
        continue;
      }
      const found = findNewChild(parentPid, new Set([...this.killPid.values()].map((k) => k.pid)));
      if (found !== undefined && ownsLazyVmas(found, st.image)) {
        this.killPid.set(st.procId, { pid: found, start: startTicks(found) });
        this.loop.watchPid(st.procId, found);
      } else {
        left = true;
      }
    }
    return left;
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
      this.guard(() => {
        if (this.identifyChildren() && attempt + 1 < IDENTIFY_RETRIES) this.childSearch(attempt + 1);
      });
    }, attempt === 0 ? 5 : IDENTIFY_RETRY_MS).unref();
  }
  private childSearchPending = false;

  /**
   * A process we stopped serving forked before we noticed. If it was lost (still owed data), the
   * child is owed the same: kill it too before its uffd closes, when we can tell which it is.
   */
  private orphanFork(parent: ProcessState | undefined, childProcId: number): void {
    if (parent?.status === 'lost') {
      const parentPid = this.killPid.get(parent.procId)?.pid;
      const found = findNewChild(parentPid, new Set([...this.killPid.values()].map((k) => k.pid)));
      const killed = found !== undefined && ownsLazyVmas(found, parent.image) && killQuietly(found);
      this.emit({ type: 'process-lost', pid: parent.pid, reason: 'its parent could not be served', killed });
    }
    this.loop.removeProcess(childProcId);
  }

  private install(st: ProcessState): void {
    st.gen++;
    this.loop.installTable(st.procId, st.gen, st.table((f) => this.imageId(f)), st.eventsApplied);
  }

  private completed(st: ProcessState, ev: Extract<NativeEvent, { type: 'done' }>): void {
    const req = this.requests.get(ev.reqId);
    if (!req) return;
    this.requests.delete(ev.reqId);
    st.inflightRequests--;
    if (req.priority) st.inflightPriority--;
    // `bytes` counts only pages this request placed: pages found present (a fault beat us to them)
    // are skipped by the native core and are settled all the same.
    const got = Math.min(req.pages, Math.floor(Number(ev.bytes) / PAGE_SIZE));
    if (req.urgent) {
      st.counters.onDemandPages += got;
      if (this.workingSets.recording) this.workingSets.served(st.pid, Number(st.index.addrOfPage(req.firstPage)), req.pages * PAGE_SIZE);
    }
    else st.counters.backgroundPages += got;
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
          this.lose(st, `cannot install pages at image address 0x${st.index.addrOfPage(req.firstPage).toString(16)}: ` +
            'ENOENT again and again (is the range registered with the userfaultfd?)');
          return;
        }
        // The layout changed under a fault's copy: wake the thread, it faults again where the page is now.
        if (req.urgent) this.loop.wake(st.procId, req.urgent.live, PAGE);
        break;
      case 'gone':
        this.exited(st);
        return;
      default:
        this.lose(st, `UFFDIO_COPY failed: ${ev.message ?? `errno ${ev.errno}`}`);
        return;
    }
    this.progress(st);
  }

  // ---------------------------------------------------------------- remote pages

  /** Record a request to the native core; its `done` event settles it. */
  private submit(req: Request): number {
    const reqId = this.nextReq++;
    this.requests.set(reqId, req);
    return reqId;
  }

  private progress(st: ProcessState): void {
    const now = performance.now();
    if (now - (this.lastProgress.get(st.procId) ?? 0) < 100 && st.remaining > 0) return;
    this.lastProgress.set(st.procId, now);
    this.emit({
      type: 'progress',
      pid: st.pid,
      remainingPages: st.remaining,
      totalPages: st.index.totalPages,
      bytes: st.counters.bytes,
    });
  }

  // ---------------------------------------------------------------- background and completion

  private pump(): void {
    if (this.ended) return;
    if (this.finished) this.loop.batch(() => this.pumpAll());
    this.maybeFinish();
  }

  /** Queue background requests for every process up to its depth; a process with nothing owed is done. */
  private pumpAll(): void {
    for (const st of this.states.values()) {
      if (st.status !== 'serving') continue;
      this.queueBackground(st);
      if (st.inflightRequests === 0 && (st.remaining === 0 || (this.background && !st.nextChunk(1)))) {
        if (st.remaining > 0) {
          this.emit({
            type: 'warning',
            message: `pid ${st.pid}: ${st.remaining} lazy pages are no longer mapped anywhere; nothing is owed for them`,
          });
        }
        this.processDone(st, 'done');
      }
    }
  }

  /** Queue `st`'s next background requests (its working set first) up to its depth. */
  private queueBackground(st: ProcessState): void {
    const remote = this.tsRemote !== undefined || this.nativeRemote;
    const depth = remote ? this.remoteDepth : this.queueDepth;
    // A working set is many small runs: keep more of them queued so the native loop never waits for JS.
    // It is installed with or without --no-background; the rest only with the background on.
    // The working set's requests have slots of their own: the rest of the background is queued behind
    // them at once, so the native loop goes on from the one to the other without waiting for JS.
    for (;;) {
      const prio = st.prioritizing;
      if (prio ? st.inflightPriority >= WORKING_SET_DEPTH : !this.background || st.inflightRequests - st.inflightPriority >= depth) break;
      // Local chunks run on over pages already present (skipped natively with EEXIST); remote
      // ones do not: those pages would cross the network again.
      const c = remote ? st.nextChunk(Math.min(this.chunkPages, 256)) : st.nextChunk(this.chunkPages, true);
      if (!c) break;
      const r = st.index.ranges[c.range];
      st.pages.fly(c.firstPage, c.pages);
      st.inflightRequests++;
      // (The TLS client's requests are counted by TsRemote; a working set there is queued whole.)
      if (prio && (r.location.kind === 'file' || this.nativeRemote)) st.inflightPriority++;
      if (r.location.kind === 'file') {
        const reqId = this.submit({ st, firstPage: c.firstPage, pages: c.pages, priority: prio });
        const fileOffset = r.location.offset + (c.image - r.start);
        this.loop.copy(st.procId, reqId, st.gen, this.imageId(r.location.file), fileOffset, c.live, BigInt(c.pages) * PAGE, false);
      } else if (this.nativeRemote) {
        const reqId = this.submit({ st, firstPage: c.firstPage, pages: c.pages, priority: prio });
        this.loop.fetch(st.procId, reqId, st.gen, st.pid, c.image, c.pages, c.live);
      } else {
        this.tsRemote!.background(st, c.firstPage, c.pages, c.image);
      }
    }
  }

  private report(st: ProcessState, outcome: ProcessReport['outcome']): ProcessReport {
    st.doneAt ??= performance.now();
    const parent = st.parent === undefined ? undefined : this.states.get(st.parent);
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

  private processDone(st: ProcessState, outcome: 'done' | 'exited'): void {
    st.status = 'done';
    this.killPid.delete(st.procId);
    // A process that exits as soon as it has read everything leaves background copies whose
    // completions come after its end (and are not counted then): take what the native core copied
    // for it, which is exact, for the pages not served on demand.
    let copied: number | undefined;
    try {
      copied = this.loop.stats(st.procId).copyPages;
    } catch {
      /* the loop no longer knows it (closed): keep what the completions said */
    }
    const c = st.counters;
    if (copied !== undefined) c.backgroundPages = Math.max(c.backgroundPages, copied - c.onDemandPages);
    c.bytes = Math.max(c.bytes, (c.onDemandPages + c.backgroundPages) * PAGE_SIZE);
    // Nothing is owed any more: closing the uffd now is safe (holes and growth read zeros from the kernel).
    this.loop.removeProcess(st.procId);
    this.emit({ type: 'process-done', report: this.report(st, outcome) });
  }

  private exited(st: ProcessState): void {
    if (st.status !== 'serving') return;
    // Its last pages may be reported in the same batch as its exit (served facts travel in batches):
    // a process that had every page before it exited is done, not cut short.
    this.processDone(st, st.remaining === 0 ? 'done' : 'exited');
  }

  /** The daemon cannot serve this process any more: kill it BEFORE its uffd closes, and say why. */
  private lose(st: ProcessState, reason: string): void {
    if (st.status !== 'serving') return;
    st.status = 'lost';
    const k = this.killPid.get(st.procId);
    let killed = k !== undefined && k.start !== undefined && startTicks(k.pid) === k.start && killQuietly(k.pid);
    if (k === undefined && this.unidentified.delete(st.procId)) {
      // Lost before "restore finished", while its VMAs were not yet in place to confirm it: kill it on the
      // same evidence as a task named in a failed hand-over (a younger descendant of the restorer).
      const real = descendantWithNsPid(st.pid, this.restorerPid);
      killed = real !== undefined && youngerThanUs(real) && killQuietly(real);
    }
    this.loop.removeProcess(st.procId);
    this.report(st, 'lost');
    this.emit({ type: 'process-lost', pid: st.pid, reason, killed });
  }

  private maybeFinish(): void {
    if (this.ended || !this.finished) return;
    for (const st of this.states.values()) if (st.status === 'serving') return;
    this.finish();
  }

  private finish(): void {
    this.ended = true;
    // Every process has all its pages: a child the loop added after that (forked by a complete
    // parent) is owed nothing either, and the guardian must not kill it.
    this.teardown(true);
    const summary: DaemonSummary = { processes: this.reports, elapsedMs: performance.now() - this.startedAt };
    this.emit({ type: 'done', summary });
    this.resolveDone(summary);
  }

  /** Fail the whole restore: every process still owed data is killed first, then the uffds close. */
  private fail(err: Error): void {
    if (this.ended) return;
    for (const st of this.states.values()) if (st.status === 'serving') this.lose(st, err.message);
    this.ended = true;
    this.teardown();
    this.rejectDone(err);
  }

  private teardown(complete = false): void {
    this.workingSets.save();
    this.tsRemote?.close();
    this.listener?.close();
    this.listener = undefined;
    this.loop.close(complete);
    for (const img of this.pageImages) img.close();
    // After the loop has released (or the daemon killed) every task: the guardian has nothing left to do.
    if (this.guardianPid !== undefined) {
      const pid = this.guardianPid;
      this.guardianPid = undefined;
      Guardian.release(pid);
    }
  }
}
