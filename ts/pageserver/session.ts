/**
 * One client connection of the page server: reads GET/CLOSE headers, answers them strictly in
 * order, streams page data with backpressure, and ends the session with a typed reason on any
 * bad input. Nothing here can take the server down: every failure ends this session only.
 */
import type { Socket } from 'node:net';
import {
  HeaderDecoder, PS_IOV, PS_PAGE_SIZE, PS_PAGE_SIZE_N, ProtocolError, checkRequest, commandName, commandOf,
  encodeGetReply, encodeStatus, hex, type PsHeader,
} from '../pagesource/protocol.js';
import type { Catalog } from './catalog.js';
import type { SessionEndReason } from './events.js';
import type { PageReader } from './page-reader.js';
import { recordWriter, streamWriter, type ReplyWriter } from './reply-writer.js';

export interface SessionOptions {
  /** A reply the client does not read for this long ends the session (ms). */
  stallTimeoutMs: number;
  /** Largest piece of page data read and written at once: bounds memory per session. */
  chunkBytes: number;
  /** Requests queued beyond this pause reading from the socket (pipelining is bounded, not unlimited). */
  maxQueued: number;
  /** Largest reply in pages; longer GETs are answered short and the client asks again. */
  maxReplyPages: number;
  /**
   * Frame replies for a TLS client that reads record by record (CRIU's): every header and every
   * data piece in TLS records of its own (see reply-writer.ts).
   */
  tlsRecords?: boolean;
  /**
   * A session with nothing in progress and no request for this long ends ('client-idle'); 0 or
   * absent = never. The first bytes of a header do not count: a byte now and then keeps nothing open.
   */
  idleTimeoutMs?: number;
}

export interface SessionEnd {
  reason: SessionEndReason;
  detail: string;
  ok: boolean;
  requests: number;
  pagesSent: number;
}

/** Ends caused by a bad request: earlier replies are still delivered before the connection closes. */
const GRACEFUL = new Set<SessionEndReason>(['malformed-header', 'unknown-command', 'unsupported-command', 'bad-request', 'unknown-pid', 'no-such-pages']);

class EndSession extends Error {
  constructor(readonly reason: SessionEndReason, readonly detail: string, readonly ok = false) {
    super(detail);
  }
}

export class Session {
  private readonly decoder = new HeaderDecoder();
  private readonly queue: (PsHeader | EndSession)[] = [];
  /** A bad header was queued: read nothing more. */
  private poisoned = false;
  private busy = false;
  private ended = false;
  private requests = 0;
  private pagesSent = 0;
  /** Rejects a pending write wait when the socket goes away. */
  private onGone?: (e: EndSession) => void;
  private idleTimer?: NodeJS.Timeout;
  private readonly out: ReplyWriter;
  readonly done: Promise<SessionEnd>;
  private resolveDone!: (e: SessionEnd) => void;

  constructor(
    private readonly socket: Socket,
    private readonly catalog: Catalog,
    private readonly reader: PageReader,
    private readonly o: SessionOptions,
  ) {
    this.done = new Promise((r) => (this.resolveDone = r));
    const wait = this.wait.bind(this);
    this.out = o.tlsRecords ? recordWriter(socket, wait) : streamWriter(socket, wait);
    socket.setNoDelay(true);
    socket.on('data', (c: Buffer) => this.onData(c));
    socket.on('error', () => {
      /* 'close' follows and decides the reason */
    });
    socket.on('end', () => {
      if (this.decoder.pending > 0) {
        this.finish(new EndSession('malformed-header', `connection ended inside a header: ${this.decoder.pending} of 32 bytes at stream offset ${this.decoder.offset}`));
      }
    });
    socket.on('close', () => {
      const pending = this.busy || this.queue.length > 0;
      const e = pending
        ? new EndSession('client-disconnected-mid-reply', 'the client went away before its replies were sent')
        : new EndSession('client-disconnected', 'the client disconnected without CLOSE', true);
      this.onGone?.(e);
      this.finish(e);
    });
    this.armIdle();
  }

  /** Nothing in progress: the idle clock starts (again). */
  private armIdle(): void {
    const ms = this.o.idleTimeoutMs ?? 0;
    if (ms <= 0 || this.ended) return;
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      if (!this.busy && this.queue.length === 0) this.finish(new EndSession('client-idle', `no request for ${ms} ms (--idle-timeout)`));
    }, ms);
    this.idleTimer.unref();
  }

  /** Ends the session from outside (server shutting down). */
  abort(reason: SessionEndReason, detail: string): void {
    const e = new EndSession(reason, detail);
    this.onGone?.(e);
    this.finish(e);
  }

  private onData(chunk: Buffer): void {
    if (this.ended || this.poisoned) return;
    for (const { header, offset } of this.decoder.push(chunk)) {
      clearTimeout(this.idleTimer);
      try {
        checkRequest(header, offset);
        this.queue.push(header);
      } catch (e) {
        // Requests before the bad header are still answered, in order; then the session ends.
        const pe = e as ProtocolError;
        this.queue.push(new EndSession(pe.kind === 'unknown-command' ? 'unknown-command' : 'bad-request', pe.message));
        this.poisoned = true;
        break;
      }
    }
    if (this.queue.length > this.o.maxQueued) this.socket.pause();
    void this.pump();
  }

  private async pump(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    let handled = false;
    try {
      while (!this.ended && this.queue.length > 0) {
        const h = this.queue.shift()!;
        if (h instanceof EndSession) throw h;
        if (this.socket.isPaused() && this.queue.length <= this.o.maxQueued / 2) this.socket.resume();
        this.requests++;
        handled = true;
        await this.handle(h);
        // Let other sessions in between big replies: another restore's fault must not wait until this
        // session's whole pipeline of background replies is written.
        if (h.nrPages > 1n) await this.yieldTurn();
      }
    } catch (e) {
      this.finish(e instanceof EndSession ? e : new EndSession('image-error', (e as Error).message));
    } finally {
      this.busy = false;
      // Bytes that completed no request (pump runs on every chunk) do not restart the idle clock.
      if (handled && this.queue.length === 0) this.armIdle();
    }
  }

  private async handle(h: PsHeader): Promise<void> {
    switch (commandOf(h.cmd)) {
      case PS_IOV.GET:
        return this.serveGet(h);
      case PS_IOV.CLOSE:
      case PS_IOV.FORCE_CLOSE:
        this.socket.end(encodeStatus(0));
        throw new EndSession('close', `client sent ${commandName(h.cmd)}`, true);
      default:
        throw new EndSession('unsupported-command', `command ${commandName(h.cmd)} is not part of a lazy-pages session (only GET and CLOSE are)`);
    }
  }

  private async serveGet(h: PsHeader): Promise<void> {
    const pid = Number(h.dstId);
    if (!this.catalog.hasPid(pid)) throw new EndSession('unknown-pid', `GET for pid ${pid}, which is not in this checkpoint`);
    const run = this.catalog.find(pid, h.vaddr);
    if (!run) throw new EndSession('no-such-pages', `GET for pid ${pid} at ${hex(h.vaddr)}: no lazy page with data here`);
    // Clamp at the end of the contiguous run: the client asks again for the rest (CRIU does the same).
    const avail = (run.end - h.vaddr) / PS_PAGE_SIZE_N;
    const pages = Math.min(Number(h.nrPages < avail ? h.nrPages : avail), this.o.maxReplyPages);
    const total = pages * PS_PAGE_SIZE;
    const offset = run.offset + (h.vaddr - run.start);
    const step = this.o.chunkBytes;
    const readAt = (done: number) => {
      const p = this.reader.read(run.file, offset + BigInt(done), Math.min(step, total - done));
      p.catch(() => undefined); // awaited below; never an unhandled rejection if we bail out first
      return p;
    };
    let next = readAt(0);
    let header: Buffer | undefined = encodeGetReply(pid, h.vaddr, pages);
    for (let done = 0; done < total;) {
      const buf = await next;
      if (this.ended) return;
      done += buf.length;
      // Read the next piece while this one is being sent: disk and socket work overlap.
      if (done < total) next = readAt(done);
      await this.out.write(header ? [header, buf] : [buf]);
      header = undefined;
      if (done < total) await this.yieldTurn(); // other sessions between pieces
    }
    this.pagesSent += pages;
  }

  /**
   * A turn of the event loop for other sessions. TLS replies already wait for every write to
   * complete (which lets the loop run), so they need none of their own.
   */
  private yieldTurn(): Promise<void> {
    return this.o.tlsRecords ? Promise.resolve() : new Promise<void>((r) => setImmediate(r));
  }

  /**
   * Waits for the socket (a 'drain', a write's completion): a client that reads nothing for the
   * stall timeout, a failed write or a hang-up ends the session.
   */
  private wait(what: string, arm: (done: (err?: Error | null) => void) => () => void): Promise<void> {
    return new Promise((resolve, reject) => {
      let disarm: () => void = () => undefined;
      const timer = setTimeout(() => {
        cleanup();
        reject(new EndSession('client-stalled', `the client read nothing for ${this.o.stallTimeoutMs} ms with a reply pending (waiting for ${what})`));
      }, this.o.stallTimeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        disarm();
        this.onGone = undefined;
      };
      this.onGone = (e) => {
        cleanup();
        reject(e);
      };
      disarm = arm((err) => {
        cleanup();
        if (err) reject(new EndSession('client-disconnected-mid-reply', `writing a reply failed: ${(err as NodeJS.ErrnoException).code ?? err.message}`));
        else resolve();
      });
    });
  }

  private finish(e: EndSession): void {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.idleTimer);
    this.queue.length = 0;
    if (GRACEFUL.has(e.reason)) {
      // Let replies already written reach the client, but never wait on it for long.
      this.socket.end();
      setTimeout(() => this.socket.destroy(), this.o.stallTimeoutMs).unref();
    } else if (!e.ok) this.socket.destroy();
    this.resolveDone({ reason: e.reason, detail: e.detail, ok: e.ok, requests: this.requests, pagesSent: this.pagesSent });
  }
}
