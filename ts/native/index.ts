/**
 * The native core (crates/uffd-native) behind a documented, typed facade.
 * This folder is the only importer of the generated binding: everything else uses these classes.
 *
 * Conventions: addresses are `bigint`, byte counts and file offsets are `number`; every error thrown by the
 * binding becomes a {@link NativeError} whose `code` is the binding's stable code (e.g. `ENOTUFFD`).
 */
import { UserError } from '../errors.js';
import { closeSync } from 'node:fs';

import { binding } from './binding.js';
import type * as Raw from '../../native/binding.js';

/** Version of the loaded native addon. */
export function nativeVersion(): string {
  return binding.nativeVersion();
}

/**
 * An error from the native core that a user can act on. Codes include `EPERM_UFFD` (no permission to create a
 * userfaultfd), `EUFFD_FEATURES` (kernel too old), `ENOTUFFD` (an fd that is not a userfaultfd), `EBADF`,
 * `EBADIMAGE` (a pages image that cannot be mapped, or a read outside it), `EHANDOVER` (restorer protocol error), `ESOCKET`
 * (cannot create lazy-pages.socket), `ETABLE` (invalid translation table), `ENOID`, `EINVALARG`,
 * `EPAGESERVER` (cannot connect to a page server; the message names address:port), `EGUARDIAN` (the
 * guardian process cannot be started).
 */
/** What userfaultfd offers this process: its UFFD_FEATURE_* bits, or the errno that refused it. */
export interface UffdProbe {
  features?: bigint;
  errno?: number;
  /** The features a lazy-pages uffd needs. */
  required: bigint;
}

/** Makes a userfaultfd (closed at once) and asks the kernel what it offers (see `lazy-pages check`). */
export function uffdProbe(): UffdProbe {
  const r = binding.uffdProbe();
  return { ...(r.features !== undefined && r.features !== null ? { features: r.features } : {}), ...(typeof r.errno === 'number' ? { errno: r.errno } : {}), required: r.required };
}

export class NativeError extends UserError {
  override name = 'NativeError';
}

/** Runs a binding call, turning its errors (which carry a string `code`) into {@link NativeError}. */
function call<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw toNativeError(e);
  }
}

function toNativeError(e: unknown): NativeError {
  if (e instanceof NativeError) return e;
  const err = e as { code?: unknown; message?: unknown };
  const code = typeof err?.code === 'string' && err.code !== '' ? err.code : 'ENATIVE';
  const message = typeof err?.message === 'string' ? err.message : String(e);
  return new NativeError(code, message, { cause: e });
}

/** Result of a COPY or ZEROPAGE, a union on `status`: `again` carries the bytes placed before the kernel asked to retry. */
export type CopyOutcome = Raw.CopyOutcome;

/** A read-only mapping of a raw pages file (`pages-<id>.img`). An empty file is valid. */
export class PageImage {
  /** @internal */
  readonly raw: Raw.PageImage;
  private constructor(raw: Raw.PageImage) {
    this.raw = raw;
  }
  /** Maps `path` read-only; throws `EBADIMAGE` naming the path if it cannot. */
  static open(path: string): PageImage {
    return new PageImage(call(() => binding.PageImage.open(path)));
  }
  /** File size in bytes. */
  get length(): number {
    return call(() => this.raw.length);
  }
  /** A copy of `len` bytes at `offset`; throws `EBADIMAGE` (naming path, offset, length, size) outside the file. */
  read(offset: number, len: number): Buffer {
    return call(() => this.raw.read(offset, len));
  }
  /** Drops this handle (an EventLoop that uses the image keeps its own reference). */
  close(): void {
    this.raw.close();
  }
}

/** Options of COPY/ZEROPAGE. */
export interface CopyOptions {
  /** Do not wake the faulting thread (wake a whole range later with {@link Uffd.wake}). */
  dontWake?: boolean;
}

/** An owned userfaultfd. Closing it unregisters its ranges: the process then reads ZEROS where data was missing. */
export class Uffd {
  /** @internal */
  readonly raw: Raw.Uffd;
  private constructor(raw: Raw.Uffd) {
    this.raw = raw;
  }
  /** A new userfaultfd with EVENT_FORK|REMAP|REMOVE|UNMAP; `EPERM_UFFD` / `EUFFD_FEATURES` say what to fix. */
  static create(): Uffd {
    return new Uffd(call(() => binding.Uffd.create()));
  }
  /** Takes ownership of `fd` (e.g. received from the restorer) after checking it is a userfaultfd (`ENOTUFFD`). */
  static adopt(fd: number): Uffd {
    return new Uffd(call(() => binding.Uffd.adopt(fd)));
  }
  /** The fd number, or -1 once closed or handed to an {@link EventLoop}. */
  get fd(): number {
    return this.raw.fd;
  }
  /** UFFDIO_REGISTER in MISSING mode; returns the ioctl mask the kernel allows on the range. */
  register(start: bigint, len: bigint): bigint {
    return call(() => this.raw.register(start, len));
  }
  /** UFFDIO_UNREGISTER: later faults in the range are served by the kernel (zeros). */
  unregister(start: bigint, len: bigint): void {
    call(() => this.raw.unregister(start, len));
  }
  /** UFFDIO_WAKE: threads blocked in the range resume (and re-fault if the page is still missing). */
  wake(start: bigint, len: bigint): void {
    call(() => this.raw.wake(start, len));
  }
  /** UFFDIO_COPY `len` bytes of `image` at `fileOffset` to `dst` (zero-copy from the mapping). */
  copyFromImage(image: PageImage, fileOffset: number, dst: bigint, len: number, opts: CopyOptions = {}): CopyOutcome {
    return call(() => this.raw.copyFromImage(image.raw, fileOffset, dst, len, opts.dontWake ?? false));
  }
  /** UFFDIO_COPY of `buf` to `dst`. */
  copyFromBuffer(buf: Buffer, dst: bigint, opts: CopyOptions = {}): CopyOutcome {
    return call(() => this.raw.copyFromBuffer(buf, dst, opts.dontWake ?? false));
  }
  /** UFFDIO_ZEROPAGE over `dst..dst+len`. */
  zeropage(dst: bigint, len: number, opts: CopyOptions = {}): CopyOutcome {
    return call(() => this.raw.zeropage(dst, len, opts.dontWake ?? false));
  }
  /** Closes the fd. */
  close(): void {
    this.raw.close();
  }
}

/**
 * Events of the hand-over socket, in the order the restorer produces them: the generated union
 * (`Raw.HandoverEvent`, typed by napi-rs from the Rust enum), except that a task's received fd is
 * already adopted as a {@link Uffd}.
 * - `connected`: the restorer connected; `pid` is its pid (SO_PEERCRED), 0 when unknown.
 * - `task`: a live task; `uffd` is already adopted and owned by the receiver of the event.
 * - `zombie`: a dead task (nothing to serve).
 * - `finished`: "restore finished": background transfer may start.
 * - `error`: a fatal protocol error (e.g. `EHANDOVER` hang-up before "finished", `ENOTUFFD`); `pid`
 *   names the task whose hand-over went wrong, when one did.
 * - `refused`: a connection closed unheard (a second restorer, or a peer of another user).
 */
export type HandoverEvent = Exclude<Raw.HandoverEvent, { type: 'task' }> | { type: 'task'; pid: number; uffd: Uffd };

/** The facade's event for a raw one: a task's fd adopted (or closed, and the task reported as an error). */
function toHandoverEvent(r: Raw.HandoverEvent): HandoverEvent {
  if (r.type !== 'task') return r;
  try {
    return { type: 'task', pid: r.pid, uffd: Uffd.adopt(r.fd) };
  } catch (e) {
    // Not adopted: close it here, nobody else will.
    try {
      closeSync(r.fd);
    } catch {
      /* already closed */
    }
    const ne = toNativeError(e);
    return { type: 'error', code: ne.code, message: `task ${r.pid}: ${ne.message}`, pid: r.pid };
  }
}

/** Receives CRIU's hand-over on `<workDir>/lazy-pages.socket` (one restorer; others are refused). */
export class HandoverListener {
  private raw: Raw.HandoverListener;
  private constructor(raw: Raw.HandoverListener) {
    this.raw = raw;
  }
  /**
   * Binds the socket (a stale socket is replaced; any other file there is an `ESOCKET` error) and reports events.
   * Keeps Node alive until "finished", an error, or {@link HandoverListener.close}. With `unpark`,
   * that loop's parked background requests ({@link EventLoop.park}) start the moment the restorer
   * says "restore finished", on the native hand-over thread, before JS hears of it.
   */
  static listen(workDir: string, onEvent: (ev: HandoverEvent) => void, unpark?: EventLoop): HandoverListener {
    const raw = call(() =>
      binding.HandoverListener.listen(workDir, (r) => onEvent(toHandoverEvent(r)), unpark?.raw),
    );
    return new HandoverListener(raw);
  }
  /** Socket path. */
  get path(): string {
    return this.raw.path;
  }
  /** Stops listening and unlinks the socket. Idempotent. */
  close(): void {
    this.raw.close();
  }
}

/** Completion status of a `copy`/`copyBuffer`/`zero` request. */
export type DoneStatus = `${Raw.DoneStatus}`;

/** Everything the event loop reports (delivered in batches). */
export type NativeEvent =
  /**
   * Pages the fast path served to one process since its previous report, in order: copied runs as
   * `images[i]` (image address) and `lens[i]` (bytes), contiguous pages merged; `zeroPages` holes
   * served with zeros; `live` is the live address of the last page. Typed arrays of plain numbers
   * (addresses are below 2^53): a storm of faults costs JS one event, not an object per fault.
   */
  | { type: 'served'; procId: number; live: bigint; images: Float64Array; lens: Float64Array; zeroPages: number }
  /** A fault in a `remote` range: TS must resolve it (e.g. `copyBuffer(..., urgent=true)`). */
  | { type: 'pagefault'; procId: number; address: bigint; flags: number; gen: number }
  /** The process forked; the child is already served as a PAUSED process `childProcId` (install a table). */
  | { type: 'fork'; procId: number; childProcId: number }
  | { type: 'remap'; procId: number; from: bigint; to: bigint; len: bigint }
  | { type: 'remove'; procId: number; start: bigint; end: bigint }
  | { type: 'unmap'; procId: number; start: bigint; end: bigint }
  /**
   * A request finished. `bytes` = bytes this request placed (EAGAIN partial counts included). Pages found
   * already present (EEXIST) are skipped page by page and not counted; `exists` = none was placed.
   * `stale` = the process was paused or its table generation changed.
   */
  | { type: 'done'; procId: number; reqId: number; status: DoneStatus; bytes: number; errno?: number; message?: string }
  /** The process exited (its pidfd became readable). */
  | { type: 'exit'; procId: number }
  /** The uffd can no longer be served (ESRCH, read error, hang-up). */
  | { type: 'gone'; procId: number; reason: string }
  | { type: 'error'; procId?: number; message: string }
  /**
   * The native page-server client failed (EOF, a wrong reply header, a stall longer than `timeoutMs`); the
   * message names address:port and what happened. The source is no longer used, its outstanding `fetch`es
   * complete as `error`, and faults waiting on it stay blocked: kill those processes. (`procId` is always
   * absent: it is declared so code that reads `ev.procId` on any event still type-checks.)
   */
  | { type: 'source-error'; procId?: undefined; message: string }
  /**
   * Every run preloaded for the task with checkpoint pid `pid` ({@link EventLoop.preload}) was
   * copied early: `bytes` placed (the rest was present), the last at `atMs` (ms since the Unix epoch).
   */
  | { type: 'early-done'; procId?: undefined; pid: number; bytes: number; atMs: number };

/**
 * The facade's names for the generated union (`Raw.LoopEvent`, typed by napi-rs from the Rust enum:
 * nothing to check here): `page-fault` is `pagefault`, its flags a number, a `done` with an errno
 * says so in `message`.
 */
export function toNativeEvent(r: Raw.LoopEvent): NativeEvent {
  switch (r.type) {
    case 'page-fault':
      return { type: 'pagefault', procId: r.procId, address: r.address, flags: Number(r.flags), gen: r.gen };
    case 'done':
      return r.errno === undefined
        ? { type: 'done', procId: r.procId, reqId: r.reqId, status: r.status, bytes: r.bytes }
        : { type: 'done', procId: r.procId, reqId: r.reqId, status: r.status, bytes: r.bytes, errno: r.errno, message: `errno ${r.errno}` };
    default:
      return r;
  }
}

/**
 * One range of a translation table: live addresses `liveStart..liveEnd` hold the image's pages from
 * `imageStart` on, and the data comes from
 * - `file`: image `imageId` ({@link EventLoop.addImage}) at `fileOffset` for `liveStart`, served by the fast path;
 * - `remote`: the page server. With one connected ({@link EventLoop.connectPageServer}) and `imagePid`
 *   (the process's pid in the images, a GET's dst_id) the loop thread fetches and serves it; otherwise
 *   the fault is forwarded as a `pagefault`.
 */
export type TableEntry = { liveStart: bigint; liveEnd: bigint; imageStart: bigint } & (
  | { kind: 'file'; imageId: number; fileOffset: number | bigint }
  | { kind: 'remote'; imagePid?: number }
);

/**
 * Packs entries into the binding's layout, the one defined (and exported) by
 * crates/uffd-native/src/table.rs: `TABLE_WORDS` u64 per entry, liveStart, liveEnd, imageStart, kind,
 * source (image id, or image pid), fileOffset. A table crosses napi as one typed array, not objects.
 */
export function packTable(entries: readonly TableEntry[]): BigUint64Array {
  const words = binding.TABLE_WORDS;
  const [file, remote] = [BigInt(binding.TABLE_KIND_FILE), BigInt(binding.TABLE_KIND_REMOTE)];
  const a = new BigUint64Array(entries.length * words);
  let o = 0;
  for (const e of entries) {
    a[o] = e.liveStart;
    a[o + 1] = e.liveEnd;
    a[o + 2] = e.imageStart;
    if (e.kind === 'file') {
      a[o + 3] = file;
      a[o + 4] = BigInt(e.imageId);
      a[o + 5] = BigInt(e.fileOffset);
    } else {
      a[o + 3] = remote;
      a[o + 4] = BigInt(e.imagePid ?? 0);
    }
    o += words;
  }
  return a;
}

/** Per-process counters of the event loop. */
export interface LoopStats {
  faults: number;
  copyPages: number;
  zeroPages: number;
  forwarded: number;
  /** Faults served by the background copy that held their page (it jumped there). */
  joined: number;
  bytes: number;
  paused: boolean;
  gen: number;
}

/** Counters of the native page-server client ({@link EventLoop.sourceStats}). */
export interface SourceStats {
  /** A page server is connected and has not failed. */
  connected: boolean;
  /** The last page server failed (a `source-error` was reported). */
  failed: boolean;
  /** Faults served from the page server by the loop thread (one page each). */
  faultsServed: number;
  faultBytes: number;
  /** Background reply bytes received for `fetch`. */
  fetchBytes: number;
  /** GET requests sent (follow-ups of short replies included). */
  requests: number;
}

/**
 * The fast path: one native thread serving the faults of every added process from its installed table.
 * All requests are executed by that thread in order with event reads (urgent requests first). Events arrive
 * in batches on `onEvents`; keeps Node alive until {@link EventLoop.close}.
 */
export class EventLoop {
  /** @internal The generated handle (HandoverListener.listen hands it to the hand-over thread). */
  readonly raw: Raw.EventLoop;
  constructor(onEvents: (events: NativeEvent[]) => void) {
    this.raw = call(
      () =>
        new binding.EventLoop((batch) => {
          if (batch.length > 0) onEvents(batch.map(toNativeEvent));
        }),
    );
  }
  /** Shares an image with the loop; returns its id for tables and {@link EventLoop.copy}. */
  addImage(img: PageImage): number {
    return call(() => this.raw.addImage(img.raw));
  }
  /**
   * Takes ownership of `uffd` (its `fd` becomes -1) and serves it, PAUSED until the first table.
   * `pid > 0` also watches the process to report `exit`.
   */
  addProcess(uffd: Uffd, pid: number): number {
    return call(() => this.raw.addProcess(uffd.raw, pid));
  }
  /**
   * Installs a validated table (sorted, non-overlapping, page aligned: else `ETABLE`), sets `gen` and
   * resumes the process — unless the loop has already read more layout events (fork, remap, remove,
   * unmap) for it than the `applied` events this table reflects; then it stays paused until the next
   * install. Pass the number of layout events of this process applied so far (default: all of them,
   * for callers that install only between events, like tests).
   */
  installTable(procId: number, gen: number, entries: readonly TableEntry[], applied = 0xffffffff): void {
    const packed = packTable(entries);
    call(() => this.raw.installTable(procId, gen, packed, applied));
  }
  /**
   * Runs `fn`, whose requests are queued without waking the loop thread, then wakes it once: queueing
   * many requests (a pump) does not hand the CPU to the loop thread once per request.
   */
  batch<T>(fn: () => T): T {
    this.raw.hold();
    try {
      return fn();
    } finally {
      this.raw.release();
    }
  }
  /**
   * Runs to copy into the task with checkpoint pid `pid` the moment the restorer hands its uffd over,
   * before the task runs and before JS hears of it (the native hand-over thread passes the uffd to
   * the loop; a copy lands only in a range the restorer has registered, at its final address):
   * `lens[i]` bytes of image `imageId` at `offsets[i]` to address `dsts[i]`. Early copies stop at
   * "restore finished".
   */
  preload(pid: number, imageId: number, offsets: Float64Array, dsts: Float64Array, lens: Float64Array): void {
    call(() => this.raw.preload(pid, imageId, offsets, dsts, lens));
  }
  /**
   * Background requests from now on are queued natively but not run until "restore finished", when
   * the hand-over thread of a {@link HandoverListener} given this loop starts them.
   */
  park(): void {
    this.raw.park();
  }
  /** Copies `len` bytes of image `imageId` at `fileOffset` to `dst` in pieces; completes with `done`. */
  copy(
    procId: number,
    reqId: number,
    gen: number,
    imageId: number,
    fileOffset: number | bigint,
    dst: bigint,
    len: number | bigint,
    urgent: boolean,
  ): void {
    call(() => this.raw.copy(procId, reqId, gen, imageId, Number(fileOffset), dst, Number(len), urgent));
  }
  /** Copies `buf` (a whole number of pages) to `dst`; completes with `done`. */
  copyBuffer(procId: number, reqId: number, gen: number, buf: Buffer, dst: bigint, urgent: boolean): void {
    call(() => this.raw.copyBuffer(procId, reqId, gen, buf, dst, urgent));
  }
  /** Zero-fills `dst..dst+len`; completes with `done`. */
  zero(procId: number, reqId: number, gen: number, dst: bigint, len: number | bigint, urgent: boolean): void {
    call(() => this.raw.zero(procId, reqId, gen, dst, Number(len), urgent));
  }
  /** UFFDIO_WAKE on the loop thread (failures arrive as `error` events). */
  wake(procId: number, start: bigint, len: bigint): void {
    call(() => this.raw.wake(procId, start, len));
  }
  /** UFFDIO_UNREGISTER on the loop thread (for `remove`: later reads there see zeros). */
  unregister(procId: number, start: bigint, len: bigint): void {
    call(() => this.raw.unregister(procId, start, len));
  }
  /** Watches `pid` for exit (an `exit` event), for a forked child whose pid the caller found. */
  watchPid(procId: number, pid: number): void {
    call(() => this.raw.watchPid(procId, pid));
  }
  /** Pauses a process: its faults queue until the next {@link EventLoop.installTable}. */
  pause(procId: number): void {
    call(() => this.raw.pause(procId));
  }
  /**
   * Stops serving a process and closes its uffd. A closed uffd makes the process read ZEROS where pages are
   * still missing: when data is left, kill the process BEFORE calling this.
   */
  removeProcess(procId: number): void {
    call(() => this.raw.removeProcess(procId));
  }
  /** Counters of a process. */
  stats(procId: number): LoopStats {
    return call(() => this.raw.stats(procId));
  }
  /**
   * Connects the loop thread to a CRIU page server, over plain TCP or, with `tls`, TLS with mutual X.509
   * authentication (ONE connection, as CRIU's page servers accept): faults in `remote` table entries (with
   * `imagePid`) are then fetched and served without JS, and {@link EventLoop.fetch} works. Blocks for at
   * most `timeoutMs` to connect and as long for the TLS handshake; throws `EPAGESERVER` naming
   * address:port, or `EOPTION` naming a TLS file that cannot be used. `timeoutMs` also bounds how long a
   * reply may take once due before a `source-error`.
   */
  connectPageServer(address: string, port: number, timeoutMs = 10_000, tls?: TlsFiles): void {
    call(() => this.raw.connectPageServer(address, port, timeoutMs, tls));
  }
  /**
   * Background transfer: GETs `pages` pages of image process `imagePid` at image address `image` on the
   * page-server connection (cut into pieces, pipelined within the fetch window), then copies them to `dst` like `copy` (stale
   * gen → `stale`, pieces, EEXIST pages skipped); completes with `done` (`error` if the source fails first).
   */
  fetch(procId: number, reqId: number, gen: number, imagePid: number, image: bigint, pages: number, dst: bigint): void {
    call(() => this.raw.fetch(procId, reqId, gen, imagePid, image, pages, dst));
  }
  /**
   * Background bytes in flight on the connection before further pieces queue locally (default 128 KiB):
   * a fault's reply waits behind at most this much background data.
   */
  setFetchWindow(bytes: number): void {
    call(() => this.raw.setFetchWindow(bytes));
  }
  /** Counters of the page-server client. */
  sourceStats(): SourceStats {
    return call(() => this.raw.sourceStats());
  }
  /**
   * Size of one piece of a long copy while the processes fault, and once none has for 2 ms (rounded
   * down to pages, at least one page; defaults 1 MiB and 512 KiB; the quiet size is never below the
   * other). A fault waits for the piece being copied: small pieces while faults come, bigger ones
   * (fewer calls per byte) when they stop.
   */
  setPieceBytes(bytes: number, quietBytes?: number): void {
    call(() => this.raw.setPieceBytes(bytes, quietBytes));
  }
  /**
   * Stops the thread, closes every fd, releases the callback so Node can exit. Idempotent.
   * `complete`: every process served got all its pages, so the {@link Guardian} lets go of anything
   * the loop did not remove (a child forked by a complete parent, read after the end); otherwise
   * such a process stays owed, and is killed if the daemon dies or stops the guardian.
   */
  close(complete = false): void {
    this.raw.close(complete);
  }
}

/**
 * The guardian: a small process that outlives this one. While it runs, every userfaultfd the event
 * loops serve is duplicated to it (with a pidfd of its task) until the task is released
 * (`removeProcess`); if this process dies by any means (SIGKILL, the OOM killer, a panic, an
 * uncaught exception) it SIGKILLs the tasks still owed pages before their uffds can close, so none
 * reads zeros. One per process, shared by every daemon in it.
 */
export const Guardian = {
  /** Starts it, or counts one more user of the running one; returns its pid. Throws `EGUARDIAN`. */
  acquire(): number {
    return call(() => binding.guardianStart());
  },
  /**
   * One user of guardian `pid` (what {@link Guardian.acquire} returned) is done; the last one stops
   * it cleanly (a task never released is killed first, so release every task, or kill it, before
   * this). A guardian replaced since (it could not be reached) is not affected.
   */
  release(pid: number): void {
    binding.guardianStop(pid);
  },
};

/** Options of {@link NativePageServer.start}. */
export interface NativePageServerOptions {
  address: string;
  /** 0 = an ephemeral port (the real one is {@link NativePageServer.port}). */
  port: number;
  stallTimeoutMs: number;
  /** Largest reply in pages (clamped to 1..2^20). */
  maxReplyPages: number;
  /** Stop accepting after this many sessions; a `stopped` event follows once they have ended. */
  sessions?: number;
  /** Most connections at once, in total and from one source IP (0 = no limit): more are closed at accept. */
  maxConnections?: number;
  maxPerPeer?: number;
  /** A connection with nothing in progress and no request for this long is closed (0 = never). */
  idleTimeoutMs?: number;
  /** Only peers inside one of these networks (`ADDR/LEN`, IPv4 or IPv6) are served; empty = everyone. */
  allow?: string[];
  /** Serve over TLS (TLS 1.2, mutual X.509 authentication) with these files. */
  tls?: TlsFiles;
}

/** Why a native page-server session ended (of ts/pageserver/events.ts's `SessionEndReason`, all but TLS's). */
export type NativeSessionEndReason = `${Raw.SessionEndReason}`;
/** Why the native page server closed a connection at accept (ts/pageserver/events.ts's `RefusalReason`). */
export type NativeRefusalReason = `${Raw.RefusalReason}`;

/** A generated union with each napi string enum field (a const enum in TS) as its string literals. */
type WithLiterals<T> = T extends unknown ? { [K in keyof T]: T[K] extends infer V extends string ? `${V}` : T[K] } : never;

/**
 * What the native page-server engine reports, with the reasons and wording of ts/pageserver/events.ts:
 * the generated union (`Raw.PageServerEvent`, typed by napi-rs from the Rust enum).
 */
export type NativePageServerEvent = WithLiterals<Raw.PageServerEvent>;

/** A run of the native page server's catalog: image addresses `start..end` are at `fileOffset..` of `images[imageId]`. */
export interface CatalogRun {
  start: bigint;
  end: bigint;
  imageId: number;
  fileOffset: bigint;
}

/**
 * Packs catalog runs as crates/uffd-native/src/pageserver/catalog.rs defines them: `CATALOG_RUN_WORDS` u64
 * per run, start, end, imageId, fileOffset. The one packer.
 */
export function packCatalogRuns(runs: readonly CatalogRun[]): BigUint64Array {
  const words = binding.CATALOG_RUN_WORDS;
  const a = new BigUint64Array(runs.length * words);
  runs.forEach((r, i) => {
    const o = i * words;
    a[o] = r.start;
    a[o + 1] = r.end;
    a[o + 2] = BigInt(r.imageId);
    a[o + 3] = r.fileOffset;
  });
  return a;
}

/**
 * The native page server (plain TCP or TLS): one native thread serves every connection straight out of the
 * mmapped pages files. `catalog` gives, per image pid, its sorted runs, `images` the pages file of each
 * imageId. Throws `ELISTEN` (naming address:port) when it cannot listen.
 * Keeps Node alive until {@link NativePageServer.close}.
 */
export class NativePageServer {
  private constructor(private readonly raw: Raw.NativePageServer, private readonly onEvents: (events: NativePageServerEvent[]) => void) {}

  static start(
    opts: NativePageServerOptions,
    catalog: { pid: number; runs: readonly CatalogRun[] }[],
    images: string[],
    onEvents: (events: NativePageServerEvent[]) => void,
  ): NativePageServer {
    const deliver = (batch: NativePageServerEvent[]) => {
      if (batch.length > 0) onEvents(batch);
    };
    const packed = catalog.map(({ pid, runs }) => ({ pid, runs: packCatalogRuns(runs) }));
    const raw = call(() => binding.NativePageServer.start({ ...opts }, packed, images, deliver));
    return new NativePageServer(raw, onEvents);
  }

  get address(): string {
    return this.raw.address;
  }

  get port(): number {
    return this.raw.port;
  }

  /** Ends every session (`server-closing`), stops the thread; the last events are delivered before it returns. Idempotent. */
  close(): void {
    const rest: NativePageServerEvent[] = this.raw.close();
    if (rest.length > 0) this.onEvents(rest);
  }
}

/**
 * CRIU's TLS files (`--tls-cacert`, `--tls-cacrl`, `--tls-cert`, `--tls-key`); an absent one is CRIU's
 * default path (/etc/pki/CA/cacert.pem, /etc/pki/CA/cacrl.pem if it exists, /etc/pki/criu/cert.pem,
 * /etc/pki/criu/private/key.pem). The native core reads and checks them: a bad one is an `EOPTION` error
 * naming its option and file.
 */
export interface TlsFiles {
  cacert?: string;
  /** A CRL named here must exist; the default one is skipped when absent. */
  cacrl?: string;
  cert?: string;
  key?: string;
  /** Client only: do not check the server certificate's name against the address (`--tls-no-cn-verify`). */
  noCnVerify?: boolean;
}

/** Pages to fetch: `pages` pages of image process `pid` from image address `vaddr`; `urgent`: as a fault's GET. */
export interface PageAsk {
  pid: number;
  vaddr: bigint;
  pages: number;
  urgent?: boolean;
}

function outcome(o: Raw.RawClientOutcome): Buffer[] {
  if (o.code !== undefined && o.code !== null) throw new NativeError(o.code, o.message ?? o.code);
  return o.pages ?? [];
}

/**
 * The native page-server client on its own (the event loop's client, without the loop): one connection,
 * plain TCP or TLS, pipelined fetches that resolve with the page bytes, CLOSE. For tools and tests that
 * check a page server; every call runs on a worker thread. Errors are `NativeError`s: `EPAGESERVER` naming
 * the server and the reason (the client then stays failed), `EOPTION` for a bad TLS file.
 */
export class PageServerClient {
  private constructor(private readonly raw: Raw.PageServerClient) {}

  /** Connects within `timeoutMs` (default 10 s; also the TLS handshake's limit, and each reply's once due). */
  static async connect(o: { address: string; port: number; timeoutMs?: number; tls?: TlsFiles }): Promise<PageServerClient> {
    const raw = call(() => new binding.PageServerClient(o.address, o.port, o.timeoutMs ?? 10_000, o.tls));
    outcome(await raw.connect());
    return new PageServerClient(raw);
  }

  /** The bytes of every ask, in order, fetched over the one connection at once. */
  async fetchAll(asks: PageAsk[]): Promise<Buffer[]> {
    return outcome(await this.raw.fetch(asks));
  }

  /** `pages` pages of `pid` from `vaddr`. */
  async fetch(pid: number, vaddr: bigint, pages: number, urgent = false): Promise<Buffer> {
    const [b] = await this.fetchAll([{ pid, vaddr, pages, urgent }]);
    return b!;
  }

  /** Sends CLOSE; a non-zero status from the server is an error. */
  async close(): Promise<void> {
    outcome(await this.raw.close());
  }
}
