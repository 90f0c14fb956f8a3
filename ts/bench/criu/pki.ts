/**
 * `bench --criu --remote --tls`: a throw-away CA and one certificate for 127.0.0.1, made with the openssl
 * CLI in the bench's work dir. Every party presents that certificate: on loopback every party is
 * 127.0.0.1, and CRIU's page servers check the client certificate's name against their own --address too.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { UserError } from '../../errors.js';

/** CRIU's TLS options for both ends (`--tls --tls-cacert … --tls-cert … --tls-key …`). */
export function throwawayTlsArgs(work: string): string[] {
  if (spawnSync('sh', ['-c', 'command -v openssl'], { stdio: 'ignore' }).status !== 0) {
    throw new UserError('EBENCH', 'bench --criu --tls: the openssl CLI is needed to make a throw-away CA (apt-get install openssl)');
  }
  const dir = join(work, 'pki');
  mkdirSync(dir, { recursive: true });
  const ssl = (...a: string[]) => execFileSync('openssl', a, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2'];
  ssl('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-subj', '/CN=lazy-pages bench CA');
  ssl('req', '-new', ...ec.filter((x) => x !== '-days' && x !== '2'), '-keyout', 'key.pem', '-out', 'cert.csr', '-subj', '/CN=127.0.0.1');
  writeFileSync(join(dir, 'cert.ext'), 'subjectAltName=IP:127.0.0.1\n');
  ssl('x509', '-req', '-in', 'cert.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'cert.pem', '-days', '2', '-extfile', 'cert.ext');
  return ['--tls', '--tls-cacert', join(dir, 'ca.pem'), '--tls-cert', join(dir, 'cert.pem'), '--tls-key', join(dir, 'key.pem')];
}
