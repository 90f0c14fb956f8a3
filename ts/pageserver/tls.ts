/**
 * TLS material for the page-server link, with CRIU's option names and default paths. Both ends
 * use X.509 mutual authentication: each presents a certificate signed by the CA the other trusts.
 */
import { existsSync, readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { UserError } from '../errors.js';

export interface TlsFiles {
  /** CA certificate(s) that signed the peer (`--tls-cacert`, default /etc/pki/CA/cacert.pem). */
  cacert?: string;
  /** Certificate revocation list (`--tls-cacrl`, default /etc/pki/CA/cacrl.pem, skipped if absent). */
  cacrl?: string;
  /** Our certificate (`--tls-cert`, default /etc/pki/criu/cert.pem). */
  cert?: string;
  /** Our private key (`--tls-key`, default /etc/pki/criu/private/key.pem). */
  key?: string;
  /** Client only: do not check the server certificate's name against the address (`--tls-no-cn-verify`). */
  noCnVerify?: boolean;
}

export const TLS_DEFAULTS = {
  cacert: '/etc/pki/CA/cacert.pem',
  cacrl: '/etc/pki/CA/cacrl.pem',
  cert: '/etc/pki/criu/cert.pem',
  key: '/etc/pki/criu/private/key.pem',
} as const;

function load(option: string, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (e) {
    throw new UserError('EOPTION', `${option} ${file}: cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/** The secure-context options common to both ends; unreadable files are named with their option. */
export function loadTls(t: TlsFiles): { ca: Buffer; cert: Buffer; key: Buffer; crl?: Buffer } {
  const crlPath = t.cacrl ?? TLS_DEFAULTS.cacrl;
  // CRIU treats a missing default CRL as "no CRL"; an explicitly named one must exist.
  const crl = t.cacrl !== undefined || existsSync(crlPath) ? load('--tls-cacrl', crlPath) : undefined;
  const o = {
    ca: load('--tls-cacert', t.cacert ?? TLS_DEFAULTS.cacert),
    cert: load('--tls-cert', t.cert ?? TLS_DEFAULTS.cert),
    key: load('--tls-key', t.key ?? TLS_DEFAULTS.key),
    crl,
  };
  try {
    tls.createSecureContext(o);
  } catch (e) {
    throw new UserError('EOPTION', `--tls-cert/--tls-key/--tls-cacert: the TLS files do not form a usable identity: ${(e as Error).message}`);
  }
  return o;
}

/**
 * What our page server's TLS must look like for CRIU's lazy-pages daemon (`criu lazy-pages --tls`).
 *
 * TLS 1.2 at most. A TLS 1.3 server sends NewSessionTicket records AFTER the handshake, unasked:
 * OpenSSL always does (two by default, and Node has no switch to send none), while a GnuTLS server
 * (CRIU's own page server) sends none unless gnutls_session_ticket_enable_server() was called,
 * which criu/tls.c never does. CRIU's client reads its page-server socket only in reply to its own
 * GETs: when epoll reports the socket readable with no GET outstanding, page_server_async_read (criu/page-xfer.c) hits
 * BUG_ON(list_empty(&async_reads)) and the daemon dies ("BUG at criu/page-xfer.c"). Tickets that
 * land before the first fault's GET (a restore that touches no lazy page for a millisecond after
 * the daemon has connected) therefore crash it. In TLS 1.2 a session ticket travels inside the
 * handshake, before the server's Finished, and nothing follows the handshake unasked.
 * The TLS 1.2 suites are limited to forward-secret AEAD ones (ECDHE with AES-GCM or ChaCha20),
 * all of which GnuTLS's default priority offers.
 */
export const SERVER_TLS_PROTOCOL = {
  minVersion: 'TLSv1.2',
  maxVersion: 'TLSv1.2',
  ciphers: [
    'ECDHE-ECDSA-AES256-GCM-SHA384', 'ECDHE-RSA-AES256-GCM-SHA384', 'ECDHE-ECDSA-CHACHA20-POLY1305',
    'ECDHE-RSA-CHACHA20-POLY1305', 'ECDHE-ECDSA-AES128-GCM-SHA256', 'ECDHE-RSA-AES128-GCM-SHA256',
  ].join(':'),
} as const satisfies tls.TlsOptions;

/**
 * The name check a client applies to the server certificate: the usual SAN/CN rules, plus (as
 * CRIU/GnuTLS do) a certificate whose CN equals the IP address we dialled.
 */
export function checkServerName(address: string, cert: tls.PeerCertificate): Error | undefined {
  const err = tls.checkServerIdentity(address, cert);
  if (!err) return undefined;
  if (net.isIP(address) && cert.subject?.CN === address) return undefined;
  return err;
}
