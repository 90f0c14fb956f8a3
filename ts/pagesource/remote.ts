/**
 * The destination side of the page-server protocol: fetches lazy pages from a page server
 * (ours or `criu dump --lazy-pages`). Requests are pipelined and replies are checked strictly in
 * order. Faults jump the queue: urgent fetches use their own connection, so a page fault never
 * waits behind megabytes of background data already queued on the first one.
 */
import net from 'node:net';
import tls from 'node:tls';
import { UserError } from '../errors.js';
import { checkServerName, loadTls, type TlsFiles } from '../pageserver/tls.js';
import {
  GET_REPLY_CMD, MAX_NR_PAGES, PS_HEADER_SIZE, PS_PAGE_SIZE, PS_PAGE_SIZE_N, encodeClose, encodeGet, hex, readHeader,
} from './protocol.js';

export interface RemoteOptions {
  address: string;
  port: number;
  tls?: TlsFiles;
  /** A connect, or a request with no byte of progress, taking longer than this fails the source (default 10 s). */
  timeoutMs?: number;
  /** Called once, with the error that failed the source (every pending fetch rejects with it too). */
  onError?: (e: UserError) => void;
  /** Background (non-urgent) bytes requested but not yet received before further fetches queue locally (default 16 MiB). */
  backgroundWindowBytes?: number;
}

interface Fetch {
  pid: number;
  vaddr: bigint;
  pages: number;
  /** Allocated on the first data that cannot be handed out without copying. */
  buf?: Buffer;
  receivedPages: number;
  resolve: (b: Buffer) => void;
  reject: (e: Error) => void;
}

/** One GET on the wire (a fetch may need several when the server replies short). */
type Wire = { kind: 'get'; f: Fetch; vaddr: bigint; pages: number; page0: number } | { kind: 'close'; resolve: () => void };

const bytes = (pages: number) => pages * PS_PAGE_SIZE;

/** One TCP (or TLS) connection and the in-order replies expected on it. */
class Lane {
  private readonly fifo: Wire[] = [];
  private readonly hdr = Buffer.alloc(PS_HEADER_SIZE);
  private hdrHave = 0;
  /** The GET whose data is arriving, and how many of its reply's bytes are still to come. */
  private cur?: { w: Extract<Wire, { kind: 'get' }>; replyPages: number; left: number };
  private status?: { buf: Buffer; have: number };
  lastProgress = Date.now();
  inFlightBytes = 0;
  closing = false;

  /** Reused receive buffer for headers and small replies when reading with `onread`. */
  private readonly scratch = Buffer.allocUnsafe(64 * 1024);
  /** The chunk being parsed may be handed out as a view (false for the reused scratch buffer). */
  private ownChunk = true;

  constructor(
    readonly name: string,
    private readonly socket: net.Socket,
    /** The socket reads through `readTarget()` / `received()` (plain TCP) instead of 'data' events (TLS). */
    private readonly direct: boolean,
    private readonly fail: (why: string) => void,
    /** Called when background bytes come in, so more queued fetches can go out. */
    private readonly onReceived: () => void,
  ) {
    socket.setNoDelay(true);
    if (!this.direct) {
      socket.on('data', (c: Buffer) => this.received(c, c.length, true));
    }
    socket.on('error', (e: NodeJS.ErrnoException) => fail(`${name} connection: ${e.code ?? e.message}`));
    socket.on('close', () => {
      if (!(this.closing && this.fifo.length === 0)) {
        const n = this.fifo.length;
        fail(`the server closed the ${name} connection${n ? ` with ${n} request(s) unanswered` : ''}${this.cur ? ' in the middle of a reply' : ''}`);
      }
    });
    // The socket may have died between connecting and getting these listeners.
    if (socket.destroyed) queueMicrotask(() => fail(`the ${name} connection closed right after connecting`));
  }

  get pending(): number {
    return this.fifo.length;
  }

  send(f: Fetch, vaddr: bigint, pages: number, page0: number): void {
    if (this.fifo.length === 0) this.lastProgress = Date.now();
    this.fifo.push({ kind: 'get', f, vaddr, pages, page0 });
    this.inFlightBytes += bytes(pages);
    this.socket.write(encodeGet(f.pid, vaddr, pages));
  }

  sendClose(): Promise<void> {
    this.closing = true;
    return new Promise((resolve) => {
      if (this.fifo.length === 0) this.lastProgress = Date.now();
      this.fifo.push({ kind: 'close', resolve });
      this.socket.write(encodeClose());
    });
  }

  /** Every fetch waiting on this lane (for rejection when the source fails). */
  fetches(): Fetch[] {
    return this.fifo.flatMap((w) => (w.kind === 'get' ? [w.f] : []));
  }

  destroy(): void {
    this.closing = true;
    this.fifo.length = 0;
    this.socket.destroy();
  }

  /**
   * Where the kernel should put the next bytes (plain TCP, `onread`): straight into the fetch's
   * own Buffer while a reply's data is arriving, so big replies are never copied in user space;
   * otherwise the scratch buffer, parsed and copied like a 'data' chunk.
   */
  readTarget(): Buffer {
    const c = this.cur;
    if (!c || c.left < 16 * 1024) return this.scratch;
    const f = c.w.f;
    f.buf ??= Buffer.allocUnsafe(bytes(f.pages));
    const at = bytes(c.w.page0 + c.replyPages) - c.left;
    return f.buf.subarray(at, at + c.left);
  }

  /** `n` bytes arrived in `buf` (a 'data' chunk we own, the scratch buffer, or a readTarget() view). */
  received(buf: Buffer, n: number, own: boolean): void {
    try {
      const c = this.cur;
      if (c && buf !== this.scratch && own === false) {
        // Landed in place inside the fetch's Buffer.
        this.lastProgress = Date.now();
        c.left -= n;
        if (c.left === 0) this.endReply(c.w.f.buf!);
        return;
      }
      this.ownChunk = own;
      this.onData(n === buf.length ? buf : buf.subarray(0, n));
    } catch (e) {
      this.fail((e as Error).message);
    }
  }

  private onData(chunk: Buffer): void {
    this.lastProgress = Date.now();
    let i = 0;
    while (i < chunk.length) {
      if (this.cur) i = this.takeData(chunk, i);
      else if (this.status) i = this.takeStatus(chunk, i);
      else {
        const head = this.fifo[0];
        if (!head) throw new Error(`${this.name} connection: the server sent ${chunk.length - i} byte(s) nobody asked for`);
        if (head.kind === 'close') {
          this.status = { buf: Buffer.alloc(4), have: 0 };
          continue;
        }
        const take = Math.min(PS_HEADER_SIZE - this.hdrHave, chunk.length - i);
        chunk.copy(this.hdr, this.hdrHave, i, i + take);
        this.hdrHave += take;
        i += take;
        if (this.hdrHave < PS_HEADER_SIZE) break;
        this.hdrHave = 0;
        this.startReply(head);
      }
    }
  }

  /** Checks a reply header against the GET it answers: command, address, pid, length. */
  private startReply(w: Extract<Wire, { kind: 'get' }>): void {
    const h = readHeader(this.hdr);
    const asked = `GET pid ${w.f.pid} ${hex(w.vaddr)} x${w.pages}`;
    if (h.cmd >>> 0 !== GET_REPLY_CMD) throw new Error(`wrong reply header for ${asked}: cmd ${hex(h.cmd >>> 0)}, expected ${hex(GET_REPLY_CMD)}`);
    if (h.vaddr !== w.vaddr) throw new Error(`reply for the wrong address: ${hex(h.vaddr)} answering ${asked}`);
    if (h.dstId !== BigInt(w.f.pid)) throw new Error(`reply for the wrong pid: ${h.dstId} answering ${asked}`);
    if (h.nrPages === 0n || h.nrPages > BigInt(w.pages)) throw new Error(`reply of ${h.nrPages} page(s) answering ${asked}`);
    const n = Number(h.nrPages);
    this.cur = { w, replyPages: n, left: bytes(n) };
  }

  private takeData(chunk: Buffer, i: number): number {
    const c = this.cur!;
    const f = c.w.f;
    const avail = chunk.length - i;
    // The whole fetch answered by one reply lying inside this chunk: hand out a view, no copy.
    if (this.ownChunk && !f.buf && c.left === bytes(f.pages) && avail >= c.left) {
      const view = chunk.subarray(i, i + c.left);
      this.endReply(view);
      return i + view.length;
    }
    f.buf ??= Buffer.allocUnsafe(bytes(f.pages));
    const take = Math.min(c.left, avail);
    const at = bytes(c.w.page0 + c.replyPages) - c.left;
    chunk.copy(f.buf, at, i, i + take);
    c.left -= take;
    if (c.left === 0) this.endReply(f.buf);
    return i + take;
  }

  private endReply(data: Buffer): void {
    const { w, replyPages } = this.cur!;
    this.cur = undefined;
    this.fifo.shift();
    this.inFlightBytes -= bytes(w.pages);
    const f = w.f;
    f.receivedPages += replyPages;
    if (replyPages < w.pages) {
      // A short reply (end of a contiguous range on the server): ask for the rest ourselves.
      this.send(f, w.vaddr + BigInt(replyPages) * PS_PAGE_SIZE_N, w.pages - replyPages, w.page0 + replyPages);
    } else if (f.receivedPages === f.pages) f.resolve(f.buf ?? data);
    this.onReceived();
  }

  private takeStatus(chunk: Buffer, i: number): number {
    const s = this.status!;
    const take = Math.min(4 - s.have, chunk.length - i);
    chunk.copy(s.buf, s.have, i, i + take);
    s.have += take;
    if (s.have === 4) {
      const status = s.buf.readInt32LE(0);
      this.status = undefined;
      const w = this.fifo.shift() as Extract<Wire, { kind: 'close' }>;
      if (status !== 0) throw new Error(`the server answered CLOSE with status ${status}`);
      w.resolve();
    }
    return i + take;
  }
}

export class RemotePageSource {
  private failure?: UserError;
  private readonly waiting: { f: Fetch }[] = [];
  private readonly watchdog: NodeJS.Timeout;
  private closed = false;

  private constructor(
    readonly server: string,
    private readonly background: Lane,
    private readonly urgent: Lane,
    private readonly o: Required<Pick<RemoteOptions, 'timeoutMs' | 'backgroundWindowBytes'>> & Pick<RemoteOptions, 'onError'>,
  ) {
    // One coarse timer instead of a timer per request: a stall is noticed within timeoutMs * 1.25.
    this.watchdog = setInterval(() => this.checkStall(), Math.max(10, Math.min(1000, o.timeoutMs / 4)));
    this.watchdog.unref();
  }

  /** Opens both connections (background and urgent); rejects with a UserError naming the server. */
  static async connect(o: RemoteOptions): Promise<RemotePageSource> {
    const timeoutMs = o.timeoutMs ?? 10_000;
    const server = `${o.address}:${o.port}`;
    if (!Number.isInteger(o.port) || o.port < 1 || o.port > 65535) throw new UserError('EOPTION', `page server ${server}: port must be 1-65535`);
    const secure = o.tls ? loadTls(o.tls) : undefined;
    // Plain TCP reads through onread so reply data lands directly in the fetch Buffers; the
    // hooks forward to the Lane, which exists only once the socket has connected.
    const hooks = [{ lane: undefined as Lane | undefined }, { lane: undefined as Lane | undefined }];
    const open = (k: number) => dial(o.address, o.port, timeoutMs, secure && { ...secure, noCnVerify: !!o.tls?.noCnVerify }, secure ? undefined : hooks[k]);
    const sockets = await Promise.allSettled([open(0), open(1)]);
    const bad = sockets.find((s) => s.status === 'rejected');
    if (bad) {
      for (const s of sockets) if (s.status === 'fulfilled') s.value.destroy();
      throw new UserError('EPAGESERVER', `page server ${server}: cannot connect: ${(bad.reason as Error).message}`);
    }
    const [bg, ur] = sockets.map((s) => (s as PromiseFulfilledResult<net.Socket>).value) as [net.Socket, net.Socket];
    let src: RemotePageSource | undefined;
    const fail = (why: string) => src?.fail(why);
    const pump = () => src?.pump();
    const direct = !secure;
    hooks[0]!.lane = new Lane('background', bg, direct, fail, pump);
    hooks[1]!.lane = new Lane('urgent', ur, direct, fail, () => undefined);
    src = new RemotePageSource(server, hooks[0]!.lane, hooks[1]!.lane, {
      timeoutMs, backgroundWindowBytes: o.backgroundWindowBytes ?? 16 << 20, onError: o.onError,
    });
    return src;
  }

  /** The error that failed this source, if any. */
  get error(): UserError | undefined {
    return this.failure;
  }

  /**
   * Exactly `pages` pages of process `pid` from image address `vaddr`. Urgent fetches (faults)
   * go on their own connection; background ones are pipelined within a bounded window.
   */
  fetch(pid: number, vaddr: bigint, pages: number, urgent: boolean): Promise<Buffer> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new UserError('EPAGESERVER', `page server ${this.server}: fetch after close()`));
    if (!Number.isInteger(pages) || pages < 1 || pages > MAX_NR_PAGES) {
      return Promise.reject(new UserError('EINVAL', `page server ${this.server}: fetch of ${pages} pages (must be 1..${MAX_NR_PAGES})`));
    }
    if (vaddr < 0n || vaddr % PS_PAGE_SIZE_N !== 0n) {
      return Promise.reject(new UserError('EINVAL', `page server ${this.server}: fetch address ${hex(vaddr)} is not page aligned`));
    }
    return new Promise<Buffer>((resolve, reject) => {
      const f: Fetch = { pid, vaddr, pages, receivedPages: 0, resolve, reject };
      if (urgent) this.urgent.send(f, vaddr, pages, 0);
      else {
        this.waiting.push({ f });
        this.pump();
      }
    });
  }

  /** Sends queued background fetches while the window has room (always at least one). */
  private pump(): void {
    while (this.waiting.length > 0 && !this.failure) {
      const { f } = this.waiting[0]!;
      const lane = this.background;
      if (lane.inFlightBytes > 0 && lane.inFlightBytes + bytes(f.pages) > this.o.backgroundWindowBytes) return;
      this.waiting.shift();
      lane.send(f, f.vaddr, f.pages, 0);
    }
  }

  /** Lets pending fetches finish, sends CLOSE on both connections and checks the status. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      while (!this.failure && (this.waiting.length > 0 || this.background.pending > 0 || this.urgent.pending > 0)) {
        await new Promise((r) => setTimeout(r, 1));
      }
      if (this.failure) throw this.failure;
      await Promise.race([
        Promise.all([this.background.sendClose(), this.urgent.sendClose()]),
        new Promise<never>((_, reject) => {
          const t = setInterval(() => this.failure && (clearInterval(t), reject(this.failure)), 5);
          t.unref();
        }),
      ]);
    } finally {
      clearInterval(this.watchdog);
      this.background.destroy();
      this.urgent.destroy();
    }
  }

  private checkStall(): void {
    const now = Date.now();
    for (const lane of [this.background, this.urgent]) {
      if (lane.pending > 0 && now - lane.lastProgress > this.o.timeoutMs) {
        this.fail(`no data for ${this.o.timeoutMs} ms on the ${lane.name} connection with ${lane.pending} request(s) pending`);
        return;
      }
    }
  }

  private fail(why: string): void {
    if (this.failure) return;
    const e = new UserError('EPAGESERVER', `page server ${this.server}: ${why}`);
    this.failure = e;
    clearInterval(this.watchdog);
    const victims = [...this.waiting.map((w) => w.f), ...this.background.fetches(), ...this.urgent.fetches()];
    this.waiting.length = 0;
    this.background.destroy();
    this.urgent.destroy();
    for (const f of new Set(victims)) f.reject(e);
    try {
      this.o.onError?.(e);
    } catch {
      /* the caller's handler must not hide the failure */
    }
  }
}

/** One connected socket (TLS when `secure`), or an error once `timeoutMs` passes. */
function dial(address: string, port: number, timeoutMs: number,
  secure?: { ca: Buffer; cert: Buffer; key: Buffer; crl?: Buffer; noCnVerify: boolean }, hook?: { lane?: Lane }): Promise<net.Socket> {
  // Bytes cannot arrive before the Lane exists (we send first; the server never speaks first),
  // but a stray early byte must still not be lost or crash: it lands in a throwaway buffer.
  const early = Buffer.allocUnsafe(4096);
  return new Promise((resolve, reject) => {
    const s: net.Socket = secure
      ? tls.connect({
        host: address, port, ca: secure.ca, cert: secure.cert, key: secure.key, crl: secure.crl,
        servername: net.isIP(address) ? undefined : address,
        checkServerIdentity: (_host, cert) => (secure.noCnVerify ? undefined : checkServerName(address, cert)),
      })
      : net.connect({
        host: address, port,
        ...(hook && {
          onread: {
            buffer: () => hook.lane?.readTarget() ?? early,
            callback: (n: number, buf: Uint8Array) => {
              hook.lane?.received(buf as Buffer, n, buf === early ? true : false);
              return true;
            },
          },
        }),
      });
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`no connection after ${timeoutMs} ms`));
    }, timeoutMs);
    s.once(secure ? 'secureConnect' : 'connect', () => {
      clearTimeout(timer);
      s.removeAllListeners('error');
      // Keep an 'error' listener until the Lane adds its own: an unhandled one would crash the process.
      s.on('error', () => undefined);
      resolve(s);
    });
    s.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      s.destroy();
      reject(new Error(e.code && !e.message.includes(e.code) ? `${e.code}: ${e.message}` : e.message));
    });
  });
}
