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
 *
 * This module is the daemon's life: start, "restore finished", done, failure, close. Its parts:
 * handover.ts (what the restorer sends), native-events.ts (what the native loop reports),
 * requests.ts (what a completion means), transport/ (the background and where pages come from),
 * kills.ts (whom to kill), outcomes.ts (how each process ends), all sharing context.ts.
 */
import { join, resolve } from 'node:path';

import { UserError } from '../errors.js';
import { Checkpoint } from '../images/index.js';
import { EventLoop, Guardian, HandoverListener } from '../native/index.js';
import type { DaemonContext } from './context.js';
import { Emitter } from './emitter.js';
import type { DaemonEvent, DaemonSummary } from './events.js';
import { HandoverHandling } from './handover.js';
import { someoneListensOn } from './identity.js';
import { Kills } from './kills.js';
import { NativeEvents } from './native-events.js';
import { backgroundSettings, type DaemonOptions, type LazyPagesDaemon } from './options.js';
import { Outcomes } from './outcomes.js';
import { PageImages } from './page-images.js';
import type { ProcessState } from './process-state.js';
import { Requests } from './requests.js';
import { LocalPages } from './transport/local.js';
import { NativeRemote } from './transport/native-remote.js';
import { BackgroundPump } from './transport/pump.js';
import type { RemoteTransport, RemoteTransportFactory, TransportHost } from './transport/remote.js';
import { checkDir, SOCKET_NAME } from './work-dir.js';
import { WorkingSets } from './working-set.js';

export { SOCKET_NAME } from './work-dir.js';
export type { DaemonOptions, LazyPagesDaemon } from './options.js';

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
  if (!ps) {
    const d = new Daemon(checkpoint, workDir, opts);
    d.start();
    return d;
  }
  // The native event loop talks to the page server itself (TLS included), so a remote fault is fetched
  // and installed without a trip through the JS event loop.
  let native!: NativeRemote;
  const d = new Daemon(checkpoint, workDir, opts, (host) => (native = new NativeRemote(host)));
  try {
    native.connect(ps.address, ps.port, ps.timeoutMs ?? 10_000, ps.tls);
  } catch (e) {
    await d.close('the page server is unreachable');
    // A TLS file that cannot be used is the option's fault (EOPTION, naming it), not the server's.
    if (e instanceof UserError && e.code === 'EOPTION') throw new UserError('EOPTION', e.message);
    const m = (e as Error).message;
    throw new UserError('EPAGESERVER', m.startsWith('page server ') ? m : `page server ${ps.address}:${ps.port}: ${m}`);
  }
  d.start();
  return d;
}

class Daemon implements LazyPagesDaemon, DaemonContext {
  readonly socketPath: string;
  readonly done: Promise<DaemonSummary>;
  private resolveDone!: (s: DaemonSummary) => void;
  private rejectDone!: (e: Error) => void;
  private readonly emitter = new Emitter();
  readonly loop: EventLoop;
  private listener?: HandoverListener;
  readonly states = new Map<number, ProcessState>();
  finished = false;
  ended = false;
  private readonly startedAt = performance.now();
  private readonly useGuardian: boolean;
  guardianPid?: number;
  readonly workingSets: WorkingSets;
  private readonly images: PageImages;
  private readonly kills: Kills;
  private readonly outcomes: Outcomes;
  private readonly requests: Requests;
  /** Where remote pages come from; undefined when every lazy page is in the pages files. */
  private readonly remote?: RemoteTransport;
  readonly remotePages: boolean;
  private readonly local: LocalPages;
  private readonly background: BackgroundPump;
  private readonly handover: HandoverHandling;
  private readonly nativeEvents: NativeEvents;

  constructor(
    readonly checkpoint: Checkpoint,
    private readonly workDir: string,
    opts: DaemonOptions,
    remote?: RemoteTransportFactory,
  ) {
    this.socketPath = join(workDir, SOCKET_NAME);
    this.useGuardian = opts.guardian ?? true;
    if (opts.onEvent) this.emitter.on(opts.onEvent);
    this.workingSets = new WorkingSets(opts, (message) => this.emit({ type: 'warning', message }));
    this.done = new Promise((res, rej) => {
      this.resolveDone = res;
      this.rejectDone = rej;
    });
    // An embedder that only awaits `done` later must not see an unhandled rejection meanwhile.
    this.done.catch(() => undefined);
    this.loop = new EventLoop((batch) => this.guard(() => this.nativeEvents.dispatch(batch)));
    this.images = new PageImages(this.loop);
    this.kills = new Kills(this);
    this.outcomes = new Outcomes(this, this.kills);
    this.requests = new Requests(this, this.outcomes);
    const host: TransportHost = {
      loop: this.loop,
      submit: (req) => this.requests.submit(req),
      guard: (fn) => this.guard(fn),
      pump: () => this.pump(),
    };
    this.remote = remote?.(host);
    this.remotePages = this.remote !== undefined;
    this.local = new LocalPages(host, this.images);
    this.background = new BackgroundPump(this, backgroundSettings(opts), this.outcomes, this.local, this.remote);
    this.handover = new HandoverHandling(this, this.kills, this.outcomes, this.background, () => this.restoreFinished());
    this.nativeEvents = new NativeEvents(this, this.requests, this.outcomes, this.kills);
    this.loop.setPieceBytes(opts.pieceBytes ?? 64 << 10);
  }

  start(): void {
    try {
      if (!this.remotePages) this.local.preload(this.workingSets.fitting(this.checkpoint.processes));
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
          this.handover.killTask(ev.pid, 'the daemon had already stopped');
          ev.uffd.close();
          return;
        }
        this.guard(() => this.handover.handle(ev));
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
    return this.emitter.on(listener);
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

  emit(e: DaemonEvent): void {
    this.emitter.emit(e);
  }

  guard(fn: () => void): void {
    if (this.ended) return;
    try {
      fn();
    } catch (e) {
      this.fail(e instanceof Error ? e : new Error(String(e)));
    }
  }

  install(st: ProcessState): void {
    st.gen++;
    this.loop.installTable(st.procId, st.gen, st.table((f) => this.images.id(f)), st.eventsApplied);
  }

  /** The restorer said "restore finished" (the hand-over went well). */
  private restoreFinished(): void {
    this.finished = true;
    // The background (the working set first) is queued before anything else: the restored
    // program may run from now on, and each millisecond here is a fault it takes instead.
    this.pump();
    this.emit({ type: 'restore-finished' });
    this.listener?.close();
    this.listener = undefined;
    // Scanning /proc for the tasks not identified at hand-over takes milliseconds: after the pump.
    this.kills.identify();
  }

  pump(): void {
    if (this.ended) return;
    if (this.finished) this.loop.batch(() => this.background.all());
    this.maybeFinish();
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
    const summary: DaemonSummary = { processes: this.outcomes.reports, elapsedMs: performance.now() - this.startedAt };
    this.emit({ type: 'done', summary });
    this.resolveDone(summary);
  }

  fail(err: Error): void {
    if (this.ended) return;
    for (const st of this.states.values()) if (st.status === 'serving') this.outcomes.lose(st, err.message);
    this.ended = true;
    this.teardown();
    this.rejectDone(err);
  }

  private teardown(complete = false): void {
    this.workingSets.save();
    this.remote?.close();
    this.listener?.close();
    this.listener = undefined;
    this.loop.close(complete);
    this.images.close();
    // After the loop has released (or the daemon killed) every task: the guardian has nothing left to do.
    if (this.guardianPid !== undefined) {
      const pid = this.guardianPid;
      this.guardianPid = undefined;
      Guardian.release(pid);
    }
  }
}
