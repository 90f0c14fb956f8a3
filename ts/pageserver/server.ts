/**
 * The source-side page server: serves the lazy pages of an images dir over CRIU's page-server
 * protocol to any number of clients, at once and one after another (CRIU's serves one restore
 * and exits), over plain TCP or TLS. A bad client ends its own session; the server keeps serving
 * the others. The serving is native (native-engine.ts); this module owns the options and the policy.
 *
 * Who may connect and for how long (enforced natively): `allow` networks, total and per-peer
 * connection caps (a connection refused is closed at accept, before anything it sent is read), an
 * idle timeout, and a warning when plain TCP listens beyond loopback unrestricted.
 */
import { UserError } from '../errors.js';
import type { TlsFiles } from '../native/index.js';
import type { PageServerEvent, PageServerEventHandler } from './events.js';
import type { PageServer } from './handle.js';
import { DEFAULT_IDLE_TIMEOUT_MS, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_PEER, isLoopback, peerName } from './limits.js';
import { startNativeEngine } from './native-engine.js';

export type { PageServer } from './handle.js';

export interface PageServerOptions {
  imagesDir: string;
  /** Default 127.0.0.1: a page server is only reachable from elsewhere when asked to be. */
  address?: string;
  /** 0 (default) = an ephemeral port; the real one is in the result. */
  port?: number;
  /** Stop accepting after this many sessions and resolve `done` once they have ended. */
  sessions?: number;
  /**
   * TLS with X.509 mutual authentication, as CRIU's `--tls` (TLS 1.2, forward-secret AEAD suites: CRIU's
   * lazy-pages daemon crashes on the session tickets a TLS 1.3 server may send after the handshake). A
   * client must present a certificate signed by `cacert`. A handshake must finish within the idle timeout
   * (at most 2 minutes); a failed one is a `session-ended` event with reason `tls-handshake-failed`.
   */
  tls?: TlsFiles;
  onEvent?: PageServerEventHandler;
  /** A client that reads nothing of a pending reply for this long loses its session (default 30 s). */
  stallTimeoutMs?: number;
  /** Largest reply in pages (default: no limit below the protocol's 2^20): longer GETs get short replies. */
  maxReplyPages?: number;
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
  const count = (v: number | undefined, dflt: number, flag: string) => {
    const n = v ?? dflt;
    if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new UserError('EOPTION', `${flag} must be a whole number ≥ 0 (0 = no limit; got ${v})`);
    return n;
  };
  const maxConnections = count(opts.maxConnections, DEFAULT_MAX_CONNECTIONS, '--max-connections');
  const maxPerPeer = count(opts.maxPerPeer, DEFAULT_MAX_PER_PEER, '--max-per-peer');
  const idleTimeoutMs = opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
  if (!(idleTimeoutMs >= 0 && idleTimeoutMs <= 0xffffffff)) throw new UserError('EOPTION', `--idle-timeout must be 0 (never) or a number of ms (got ${idleTimeoutMs})`);
  const allow = opts.allow ?? [];
  const srv = await startNativeEngine({
    imagesDir: opts.imagesDir, host, port, sessions: limit, emit,
    stallTimeoutMs: Math.min(Math.max(1, Math.round(opts.stallTimeoutMs ?? 30_000)), 0x7fffffff),
    maxReplyPages: Math.min(opts.maxReplyPages ?? Number.MAX_SAFE_INTEGER, 1 << 20),
    maxConnections, maxPerPeer, idleTimeoutMs: Math.round(idleTimeoutMs), allow, tls: opts.tls,
  });
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
}
