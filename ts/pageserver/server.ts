/**
 * The source-side page server: serves the lazy pages of an images dir over CRIU's page-server
 * protocol to any number of clients, at once and one after another (CRIU's serves one restore
 * and exits). A bad client ends its own session; the server keeps serving the others.
 *
 * Who may connect and for how long (limits.ts, the same rules in both engines): `allow` networks,
 * total and per-peer connection caps (a connection refused is closed at accept, before anything it
 * sent is read), an idle timeout, and a warning when plain TCP listens beyond loopback unrestricted.
 */
import net from 'node:net';
import tls from 'node:tls';
import { UserError } from '../errors.js';
import { Catalog } from './catalog.js';
import type { PageServerEvent, PageServerEventHandler } from './events.js';
import type { PageServer } from './handle.js';
import {
  DEFAULT_IDLE_TIMEOUT_MS, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_PEER, Gate, isLoopback, parseCidr, peerName, type Cidr,
} from './limits.js';
import { startNativeEngine } from './native-engine.js';
import { PageReader } from './page-reader.js';
import { Session, type SessionOptions } from './session.js';
import { loadTls, SERVER_TLS_PROTOCOL, type TlsFiles } from './tls.js';

export type { PageServer } from './handle.js';

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
  /**
   * Most connections open at once (default 64; 0 = no limit) and from one source IP (default 8):
   * a connection over either cap is closed at accept (a `refused` event) and disturbs no other.
   */
  maxConnections?: number;
  maxPerPeer?: number;
  /** A connection with nothing in progress and no request for this long is closed (default 10 min; 0 = never). */
  idleTimeoutMs?: number;
  /**
   * Only peers inside one of these networks (`10.0.0.0/24`, `fd00::/64`, a bare address = one host)
   * are served; others are closed at accept (a `refused` event). Empty or absent: everyone.
   */
  allow?: string[];
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
  const count = (v: number | undefined, dflt: number, flag: string) => {
    const n = v ?? dflt;
    if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new UserError('EOPTION', `${flag} must be a whole number ≥ 0 (0 = no limit; got ${v})`);
    return n;
  };
  const maxConnections = count(opts.maxConnections, DEFAULT_MAX_CONNECTIONS, '--max-connections');
  const maxPerPeer = count(opts.maxPerPeer, DEFAULT_MAX_PER_PEER, '--max-per-peer');
  const idleTimeoutMs = opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
  if (!(idleTimeoutMs >= 0 && idleTimeoutMs <= 0xffffffff)) throw new UserError('EOPTION', `--idle-timeout must be 0 (never) or a number of ms (got ${idleTimeoutMs})`);
  const allow = (opts.allow ?? []).map(parseCidr);
  const announce = (srv: PageServer): PageServer => {
    // Plain TCP authenticates nobody: on an address other machines can reach, the checkpoint's memory
    // goes to whoever connects first and asks.
    if (!opts.tls && allow.length === 0 && !isLoopback(srv.address)) {
      emit({
        type: 'warning',
        message: `plain TCP on ${peerName(srv.address, srv.port)} serves this checkpoint's memory to anyone who can connect; ` +
          'name who may connect with --allow CIDR, and use --tls (mutual X.509 authentication, encryption) across machines',
      });
    }
    return srv;
  };
  if (!opts.tls && opts.engine !== 'ts') {
    return announce(await startNativeEngine({
      imagesDir: opts.imagesDir, host, port, sessions: limit, emit,
      stallTimeoutMs: Math.min(Math.max(1, Math.round(opts.stallTimeoutMs ?? 30_000)), 0x7fffffff),
      maxReplyPages: Math.min(opts.maxReplyPages ?? Number.MAX_SAFE_INTEGER, 1 << 20),
      maxConnections, maxPerPeer, idleTimeoutMs: Math.round(idleTimeoutMs), allow: allow.map((c) => c.text),
    }));
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
    idleTimeoutMs,
  };
  const gate = new Gate(allow, maxConnections, maxPerPeer);

  const live = new Set<Session>();
  let started = 0;
  let ended = 0;
  let stopping = false;
  let resolveDone!: () => void;
  const done = new Promise<void>((r) => (resolveDone = r));

  const peerOf = (s: net.Socket) => peerName(s.remoteAddress, s.remotePort);
  /**
   * Every TCP connection first (for TLS: before its handshake): one over a cap or from outside --allow
   * is closed before anything it sent is read. Admitted ones count until their socket closes.
   */
  const refused = new WeakSet<net.Socket>();
  const admit = (raw: net.Socket): boolean => {
    const address = raw.remoteAddress;
    const no = stopping ? undefined : gate.admit(address ?? '?');
    if (stopping || no) {
      refused.add(raw);
      raw.destroy();
      if (no) emit({ type: 'refused', peer: peerOf(raw), ...no });
      return false;
    }
    raw.once('close', () => gate.leave(address ?? '?'));
    return true;
  };
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

  let server: net.Server;
  if (tlsCtx) {
    // A handshake is a request in progress for no longer than the idle timeout (Node's default is 120 s).
    const handshakeTimeout = idleTimeoutMs > 0 ? Math.min(idleTimeoutMs, 120_000) : 120_000;
    const t = tls.createServer({ ...tlsCtx, ...SERVER_TLS_PROTOCOL, requestCert: true, rejectUnauthorized: true, handshakeTimeout });
    // tls.Server wraps each TCP connection in its 'connection' listener (added by its constructor, so it
    // runs first); destroying the raw socket here ends the wrapper before any handshake byte is read.
    t.on('connection', admit);
    t.on('secureConnection', onConnection);
    t.on('tlsClientError', (err: Error, socket: tls.TLSSocket) => {
      const raw = (socket as unknown as { _parent?: net.Socket })._parent;
      if (!(raw && refused.has(raw))) {
        emit({ type: 'session-ended', session: 0, peer: peerOf(socket), reason: 'tls-handshake-failed', detail: err.message, ok: false, requests: 0, pagesSent: 0 });
      }
      socket.destroy();
    });
    server = t;
  } else {
    server = net.createServer((socket) => {
      if (admit(socket)) onConnection(socket);
    });
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => {
      void reader.close();
      reject(new UserError('ELISTEN', `page server: cannot listen on ${host}:${port}: ${e.code ?? e.message}`));
    });
    server.listen({ host, port }, resolve);
  });
  // After listen, errors come from accept(). libuv does not spin on EMFILE/ENFILE: it closes a spare fd,
  // accepts and closes the waiting connections, and reopens the spare. Say so, at most every 10 s.
  let lastAcceptError = 0;
  let acceptErrors = 0;
  server.on('error', (e: NodeJS.ErrnoException) => {
    acceptErrors++;
    const now = Date.now();
    if (now - lastAcceptError < 10_000) return;
    lastAcceptError = now;
    const more = acceptErrors > 1 ? ` (${acceptErrors} accept errors so far)` : '';
    const what = e.code === 'EMFILE' ? 'EMFILE (this process has no file descriptor left: ulimit -n)' : e.code ?? e.message;
    emit({ type: 'warning', message: `accept failed: ${what}: the connections waiting were closed${more}` });
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

  return announce({
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
  });
}
