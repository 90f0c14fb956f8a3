/**
 * The source-side page server: serves the lazy pages of an images dir over CRIU's page-server
 * protocol to any number of clients, at once and one after another (CRIU's serves one restore
 * and exits). A bad client ends its own session; the server keeps serving the others.
 */
import net from 'node:net';
import tls from 'node:tls';
import { UserError } from '../errors.js';
import { Catalog } from './catalog.js';
import type { PageServerEvent, PageServerEventHandler } from './events.js';
import { startNativeEngine } from './native-engine.js';
import { PageReader } from './page-reader.js';
import { Session, type SessionOptions } from './session.js';
import { loadTls, SERVER_TLS_PROTOCOL, type TlsFiles } from './tls.js';

export interface PageServerOptions {
  imagesDir: string;
  /** Default 127.0.0.1: a page server is only reachable from elsewhere when asked to be. */
  address?: string;
  /** 0 (default) = an ephemeral port; the real one is in the result. */
  port?: number;
  /** Stop accepting after this many sessions and resolve `done` once they have ended. */
  sessions?: number;
  tls?: TlsFiles;
  onEvent?: PageServerEventHandler;
  /** A client that reads nothing of a pending reply for this long loses its session (default 30 s). */
  stallTimeoutMs?: number;
  /** TS engine only: bytes read from a pages file and written per step (default 256 KiB). */
  chunkBytes?: number;
  /** Largest reply in pages (default: no limit below the protocol's 2^20): longer GETs get short replies. */
  maxReplyPages?: number;
  /**
   * Who serves plain TCP: 'native' (default: one native thread writes replies straight from the mapped pages
   * files, a fault's GET in tens of µs) or 'ts' (Node sockets). TLS is always served by the TS engine.
   */
  engine?: 'native' | 'ts';
}

export interface PageServer {
  address: string;
  port: number;
  /** Sessions that have ended so far. */
  readonly sessions: number;
  /** Sessions in progress. */
  readonly active: number;
  /** Resolves once the server has stopped (close(), or the --sessions limit reached and drained). */
  done: Promise<void>;
  close(): Promise<void>;
}

export async function startPageServer(opts: PageServerOptions): Promise<PageServer> {
  const limit = opts.sessions;
  if (limit !== undefined && (!Number.isInteger(limit) || limit < 1)) throw new UserError('EOPTION', `--sessions must be a positive integer (got ${limit})`);
  const port = opts.port ?? 0;
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new UserError('EOPTION', `--port must be 0-65535 (got ${port})`);
  const host = opts.address ?? '127.0.0.1';
  const emit = (e: PageServerEvent) => {
    try {
      opts.onEvent?.(e);
    } catch {
      /* a faulty listener must not break serving */
    }
  };
  if (opts.engine !== undefined && opts.engine !== 'native' && opts.engine !== 'ts') {
    throw new UserError('EOPTION', `engine must be 'native' or 'ts' (got ${String(opts.engine)})`);
  }
  if (!opts.tls && opts.engine !== 'ts') {
    return startNativeEngine({
      imagesDir: opts.imagesDir, host, port, sessions: limit, emit,
      stallTimeoutMs: Math.min(Math.max(1, Math.round(opts.stallTimeoutMs ?? 30_000)), 0x7fffffff),
      maxReplyPages: Math.min(opts.maxReplyPages ?? Number.MAX_SAFE_INTEGER, 1 << 20),
    });
  }
  const tlsCtx = opts.tls ? loadTls(opts.tls) : undefined;
  const catalog = await Catalog.open(opts.imagesDir);
  const reader = new PageReader();
  const sessionOpts: SessionOptions = {
    stallTimeoutMs: opts.stallTimeoutMs ?? 30_000,
    chunkBytes: opts.chunkBytes ?? 256 << 10,
    maxQueued: 1024,
    maxReplyPages: opts.maxReplyPages ?? Number.MAX_SAFE_INTEGER,
    tlsRecords: tlsCtx !== undefined,
  };

  const live = new Set<Session>();
  let started = 0;
  let ended = 0;
  let stopping = false;
  let resolveDone!: () => void;
  const done = new Promise<void>((r) => (resolveDone = r));

  const peerOf = (s: net.Socket) => `${s.remoteAddress}:${s.remotePort}`;
  const onConnection = (socket: net.Socket) => {
    if (stopping) {
      socket.destroy();
      return;
    }
    const id = ++started;
    const peer = peerOf(socket);
    const s = new Session(socket, catalog, reader, sessionOpts);
    live.add(s);
    emit({ type: 'session-started', session: id, peer });
    if (limit !== undefined && started >= limit) stopListening();
    void s.done.then((end) => {
      live.delete(s);
      ended++;
      emit({ type: 'session-ended', session: id, peer, ...end });
      if (stopping && live.size === 0) void finish();
    });
  };

  const server: net.Server = tlsCtx
    ? tls.createServer({ ...tlsCtx, ...SERVER_TLS_PROTOCOL, requestCert: true, rejectUnauthorized: true }, onConnection)
    : net.createServer(onConnection);
  server.on('tlsClientError', (err: Error, socket: tls.TLSSocket) => {
    emit({ type: 'session-ended', session: 0, peer: peerOf(socket), reason: 'tls-handshake-failed', detail: err.message, ok: false, requests: 0, pagesSent: 0 });
    socket.destroy();
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => {
      void reader.close();
      reject(new UserError('ELISTEN', `page server: cannot listen on ${host}:${port}: ${e.code ?? e.message}`));
    });
    server.listen({ host, port }, resolve);
  });
  server.on('error', () => {
    /* after listen, errors belong to single connections */
  });
  const addr = server.address() as net.AddressInfo;
  emit({ type: 'listening', address: addr.address, port: addr.port });

  let finishing: Promise<void> | undefined;
  function stopListening(): void {
    if (stopping) return;
    stopping = true;
    server.close();
  }
  function finish(): Promise<void> {
    finishing ??= (async () => {
      await reader.close();
      emit({ type: 'closed', sessions: ended });
      resolveDone();
    })();
    return finishing;
  }

  return {
    address: addr.address,
    port: addr.port,
    get sessions() {
      return ended;
    },
    get active() {
      return live.size;
    },
    done,
    async close() {
      stopListening();
      for (const s of [...live]) s.abort('server-closing', 'the page server is shutting down');
      // Sessions report their end asynchronously; wait for every one before closing files.
      while (live.size > 0) await new Promise((r) => setImmediate(r));
      await finish();
    },
  };
}
