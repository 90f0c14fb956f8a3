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
 * The name check a client applies to the server certificate: the usual SAN/CN rules, plus (as
 * CRIU/GnuTLS do) a certificate whose CN equals the IP address we dialled.
 */
export function checkServerName(address: string, cert: tls.PeerCertificate): Error | undefined {
  const err = tls.checkServerIdentity(address, cert);
  if (!err) return undefined;
  if (net.isIP(address) && cert.subject?.CN === address) return undefined;
  return err;
}
