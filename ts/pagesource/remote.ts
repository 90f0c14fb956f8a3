/**
 * The destination side of the page-server protocol: fetches lazy pages from a page server
 * (ours, `criu page-server --lazy-pages` or `criu dump --lazy-pages`). Requests are pipelined and
 * replies are checked strictly in order.
 *
 * Everything goes over ONE connection: CRIU's page servers accept exactly one connection, serve
 * it and exit when it closes (a second connect is refused, and closing the first ends the
 * session). Replies come strictly in order, so a fault's GET waits behind whatever background
 * data was asked for before it. That is bounded here: background fetches are cut into GETs of
 * `pieceBytes` and at most `backgroundWindowBytes` of them are on the wire at once; the rest wait
 * locally. A fault's GET goes out at once, behind at most that window.
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
  /**
   * A connect taking longer than this fails the source, and so does a reply not complete this long
   * after it became the next one due (default 10 s): a server trickling a byte at a time cannot hold
   * a fault forever.
   */
  timeoutMs?: number;
  /** Called once, with the error that failed the source (every pending fetch rejects with it too). */
  onError?: (e: UserError) => void;
  /**
   * Background bytes asked for and not yet received, beyond which further background GETs wait
   * locally (default 128 KiB: two pieces). A fault's reply waits behind at most this much data.
   */
  backgroundWindowBytes?: number;
  /** Largest background GET (default 64 KiB): bigger background fetches are asked for in pieces. */
  pieceBytes?: number;
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

/**
 * One GET on the wire: a fetch needs several when it is cut into pieces or the server replies
 * short. `page0` is where its pages go in the fetch's buffer.
 */
type Get = { kind: 'get'; f: Fetch; vaddr: bigint; pages: number; page0: number; urgent: boolean };
type Wire = Get | { kind: 'close'; resolve: () => void };

const bytes = (pages: number) => pages * PS_PAGE_SIZE;

/** The TCP (or TLS) connection and the in-order replies expected on it. */
class Link {
  private readonly fifo: Wire[] = [];
  private readonly hdr = Buffer.alloc(PS_HEADER_SIZE);
  private hdrHave = 0;
  /** The GET whose data is arriving, and how many of its reply's bytes are still to come. */
  private cur?: { w: Get; replyPages: number; left: number };
  private status?: { buf: Buffer; have: number };
  /** Last byte received (or request sent with nothing pending). */
  lastProgress = Date.now();
  /** When the reply now due (the head of the fifo) became due: it must be complete within the timeout. */
  frontSince = Date.now();
  /** Background bytes asked for and not yet received (the window the source keeps bounded). */
  backgroundBytes = 0;
  closing = false;

  /** Reused receive buffer for headers and small replies when reading with `onread`. */
  private readonly scratch = Buffer.allocUnsafe(64 * 1024);
  /** The chunk being parsed may be handed out as a view (false for the reused scratch buffer). */
  private ownChunk = true;
  /** The server has sent at least one byte (of a reply). */
  private answered = false;

  constructor(
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
    socket.on('error', (e: NodeJS.ErrnoException) => fail(`connection: ${e.code ?? e.message}`));
    socket.on('close', () => {
      if (!(this.closing && this.fifo.length === 0)) {
        const n = this.fifo.length;
        fail(`the server closed the connection${n ? ` with ${n} request(s) unanswered` : ''}${this.cur ? ' in the middle of a reply' : ''}${this.refusedHint()}`);
      }
    });
    // The socket may have died between connecting and getting these listeners.
    if (socket.destroyed) queueMicrotask(() => fail('the connection closed right after connecting'));
  }

  get pending(): number {
    return this.fifo.length;
  }

  /**
   * A TLS 1.3 client finishes its handshake before the server has checked the client's
   * certificate, so a refusal shows up only as the server hanging up before answering anything.
   */
  private refusedHint(): string {
    if (this.direct || this.answered) return '';
    return ' before answering anything: it may have refused our certificate (--tls-cert; CRIU\'s page server also ' +
      'checks the client certificate\'s name against its own --address unless it runs with --tls-no-cn-verify)';
  }

  /**
   * Puts one GET on the wire. CRIU's TLS server reads each header with one gnutls_record_recv of 32
   * bytes, which never returns more than one record's data: a header must not straddle two records.
   * Each write is one whole header, and when Node merges queued writes into one SSL_write, the
   * 16 KiB records it is cut into hold a whole number of 32-byte headers.
   */
  send(g: Omit<Get, 'kind'>): void {
    if (this.fifo.length === 0) this.lastProgress = this.frontSince = Date.now();
    this.fifo.push({ kind: 'get', ...g });
    if (!g.urgent) this.backgroundBytes += bytes(g.pages);
    this.socket.write(encodeGet(g.f.pid, g.vaddr, g.pages));
  }

  sendClose(): Promise<void> {
    this.closing = true;
    return new Promise((resolve) => {
      if (this.fifo.length === 0) this.lastProgress = this.frontSince = Date.now();
      this.fifo.push({ kind: 'close', resolve });
      this.socket.write(encodeClose());
    });
  }

  /** What the reply now due answers, for messages. */
  front(): string {
    const w = this.fifo[0];
    if (!w) return 'nothing';
    return w.kind === 'close' ? 'CLOSE' : `GET pid ${w.f.pid} ${hex(w.vaddr)} x${w.pages}`;
  }

  /** Every fetch waiting on this connection (for rejection when the source fails). */
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
    this.answered = true;
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
        if (!head) throw new Error(`the server sent ${chunk.length - i} byte(s) nobody asked for`);
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
  private startReply(w: Get): void {
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
    this.frontSince = Date.now();
    if (!w.urgent) this.backgroundBytes -= bytes(w.pages);
    const f = w.f;
    f.receivedPages += replyPages;
    if (replyPages < w.pages) {
      // A short reply (end of a contiguous range on the server): ask for the rest ourselves.
      const rest = BigInt(replyPages) * PS_PAGE_SIZE_N;
      this.send({ f, vaddr: w.vaddr + rest, pages: w.pages - replyPages, page0: w.page0 + replyPages, urgent: w.urgent });
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
      this.frontSince = Date.now();
      if (status !== 0) throw new Error(`the server answered CLOSE with status ${status}`);
      w.resolve();
    }
    return i + take;
  }
}

export class RemotePageSource {
  private failure?: UserError;
  /** Background GETs not yet on the wire (pieces of fetches), in the order they were asked for. */
  private readonly waiting: Omit<Get, 'kind'>[] = [];
  private readonly watchdog: NodeJS.Timeout;
  private closed = false;

  private constructor(
    readonly server: string,
    private readonly link: Link,
    private readonly o: Required<Pick<RemoteOptions, 'timeoutMs' | 'backgroundWindowBytes' | 'pieceBytes'>> & Pick<RemoteOptions, 'onError'>,
  ) {
    // One coarse timer instead of a timer per request: a stall or an overdue reply is noticed within
    // timeoutMs * 1.25.
    this.watchdog = setInterval(() => this.checkStall(), Math.max(10, Math.min(1000, o.timeoutMs / 4)));
    this.watchdog.unref();
  }

  /** Opens the connection; rejects with a UserError naming the server (and the option at fault). */
  static async connect(o: RemoteOptions): Promise<RemotePageSource> {
    const timeoutMs = o.timeoutMs ?? 10_000;
    const server = `${o.address}:${o.port}`;
    if (!Number.isInteger(o.port) || o.port < 1 || o.port > 65535) throw new UserError('EOPTION', `page server ${server}: port must be 1-65535`);
    const pieceBytes = o.pieceBytes ?? 64 << 10;
    const backgroundWindowBytes = o.backgroundWindowBytes ?? 2 * pieceBytes;
    if (!Number.isInteger(pieceBytes) || pieceBytes < PS_PAGE_SIZE || pieceBytes % PS_PAGE_SIZE !== 0) {
      throw new UserError('EOPTION', `page server ${server}: pieceBytes must be a positive multiple of ${PS_PAGE_SIZE} (got ${pieceBytes})`);
    }
    if (!(backgroundWindowBytes >= PS_PAGE_SIZE)) {
      throw new UserError('EOPTION', `page server ${server}: backgroundWindowBytes must be at least ${PS_PAGE_SIZE} (got ${backgroundWindowBytes})`);
    }
    const secure = o.tls ? loadTls(o.tls) : undefined;
    // Plain TCP reads through onread so reply data lands directly in the fetch Buffers; the hook
    // forwards to the Link, which exists only once the socket has connected.
    const hook = { link: undefined as Link | undefined };
    let socket: net.Socket;
    try {
      socket = await dial(o.address, o.port, timeoutMs, secure && { ...secure, noCnVerify: !!o.tls?.noCnVerify }, secure ? undefined : hook);
    } catch (e) {
      throw new UserError('EPAGESERVER', `page server ${server}: cannot connect: ${(e as Error).message}`);
    }
    let src: RemotePageSource | undefined;
    hook.link = new Link(socket, !secure, (why) => src?.fail(why), () => src?.pump());
    src = new RemotePageSource(server, hook.link, { timeoutMs, backgroundWindowBytes, pieceBytes, onError: o.onError });
    return src;
  }

  /** The error that failed this source, if any. */
  get error(): UserError | undefined {
    return this.failure;
  }

  /**
   * Exactly `pages` pages of process `pid` from image address `vaddr`. An urgent fetch (a fault)
   * goes on the wire at once; a background one is asked for in pieces within the bounded window.
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
      if (urgent) {
        this.link.send({ f, vaddr, pages, page0: 0, urgent: true });
        return;
      }
      const piece = this.o.pieceBytes / PS_PAGE_SIZE;
      for (let k = 0; k < pages; k += piece) {
        this.waiting.push({ f, vaddr: vaddr + BigInt(k) * PS_PAGE_SIZE_N, pages: Math.min(piece, pages - k), page0: k, urgent: false });
      }
      this.pump();
    });
  }

  /** Sends waiting background pieces while the window has room (always at least one on the wire). */
  private pump(): void {
    const link = this.link;
    while (this.waiting.length > 0 && !this.failure) {
      const g = this.waiting[0]!;
      if (link.backgroundBytes > 0 && link.backgroundBytes + bytes(g.pages) > this.o.backgroundWindowBytes) return;
      this.waiting.shift();
      link.send(g);
    }
  }

  /** Lets pending fetches finish, sends CLOSE and checks the status the server answers. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      while (!this.failure && (this.waiting.length > 0 || this.link.pending > 0)) {
        await new Promise((r) => setTimeout(r, 1));
      }
      if (this.failure) throw this.failure;
      await Promise.race([
        this.link.sendClose(),
        new Promise<never>((_, reject) => {
          const t = setInterval(() => this.failure && (clearInterval(t), reject(this.failure)), 5);
          t.unref();
        }),
      ]);
    } finally {
      clearInterval(this.watchdog);
      this.link.destroy();
    }
  }

  /**
   * Nothing received for the timeout, or the reply now due not complete within the timeout of
   * becoming due (bytes trickling in do not extend it).
   */
  private checkStall(): void {
    const link = this.link;
    if (link.pending === 0) return;
    const now = Date.now();
    if (now - link.lastProgress > this.o.timeoutMs) {
      this.fail(`no data for ${this.o.timeoutMs} ms with ${link.pending} request(s) pending`);
    } else if (now - link.frontSince > this.o.timeoutMs) {
      this.fail(`the reply to ${link.front()} is not complete ${this.o.timeoutMs} ms after it became due (the server sends too slowly)`);
    }
  }

  private fail(why: string): void {
    if (this.failure) return;
    const e = new UserError('EPAGESERVER', `page server ${this.server}: ${why}`);
    this.failure = e;
    clearInterval(this.watchdog);
    const victims = [...this.waiting.map((w) => w.f), ...this.link.fetches()];
    this.waiting.length = 0;
    this.link.destroy();
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
  secure?: { ca: Buffer; cert: Buffer; key: Buffer; crl?: Buffer; noCnVerify: boolean }, hook?: { link?: Link }): Promise<net.Socket> {
  // Bytes cannot arrive before the Link exists (we send first; the server never speaks first),
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
            buffer: () => hook.link?.readTarget() ?? early,
            callback: (n: number, buf: Uint8Array) => {
              hook.link?.received(buf as Buffer, n, buf === early ? true : false);
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
      // Keep an 'error' listener until the Link adds its own: an unhandled one would crash the process.
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
