/** CRIU's TLS options (`--tls`, `--tls-cacert`, …), shared by `daemon --page-server` and `page-server`. */
import type { Argv } from 'yargs';
import { z } from 'zod';

import type { TlsFiles } from '../native/index.js';

/** zod fields of the TLS options (spread into a command's schema). */
export const tlsFields = {
  tls: z.boolean().default(false),
  tlsCacert: z.string().min(1).optional(),
  tlsCacrl: z.string().min(1).optional(),
  tlsCert: z.string().min(1).optional(),
  tlsKey: z.string().min(1).optional(),
  tlsNoCnVerify: z.boolean().default(false),
};

type TlsOptions = { tls: boolean; tlsCacert?: string; tlsCacrl?: string; tlsCert?: string; tlsKey?: string; tlsNoCnVerify: boolean };

/** Declare the TLS options for `side` (the daemon is the client, the page server the server). */
export function tlsYargs<T>(y: Argv<T>, side: 'client' | 'server'): Argv<T> {
  const we = side === 'client' ? 'our' : 'server';
  return y
    .option('tls', { type: 'boolean', describe: 'TLS with X.509 mutual authentication' })
    .option('tls-cacert', { type: 'string', describe: 'CA certificate (default /etc/pki/CA/cacert.pem)' })
    .option('tls-cacrl', { type: 'string', describe: 'CA revocation list (default /etc/pki/CA/cacrl.pem if present)' })
    .option('tls-cert', { type: 'string', describe: `${we} certificate (default /etc/pki/criu/cert.pem)` })
    .option('tls-key', { type: 'string', describe: `${we} private key (default /etc/pki/criu/private/key.pem)` })
    .option('tls-no-cn-verify', {
      type: 'boolean',
      describe: side === 'client' ? "do not check the server certificate's name against --address" : 'accepted for CRIU compatibility (the client checks names)',
    }) as Argv<T>;
}

/** The TLS files to use, or undefined for plain TCP (any --tls-* option implies --tls). */
export function tlsFiles(o: TlsOptions): TlsFiles | undefined {
  const given = [o.tlsCacert, o.tlsCacrl, o.tlsCert, o.tlsKey].some((v) => v !== undefined);
  if (!o.tls && !given) return undefined;
  return { cacert: o.tlsCacert, cacrl: o.tlsCacrl, cert: o.tlsCert, key: o.tlsKey, noCnVerify: o.tlsNoCnVerify };
}
