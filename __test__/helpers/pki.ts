/**
 * A throw-away PKI made with the openssl CLI: a CA, a server cert for 127.0.0.1, a wrong-name cert, one
 * named 127.0.0.1 by its subject CN only (no subjectAltName, as many CRIU setups make them), clients.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const hasOpenssl = spawnSync('sh', ['-c', 'command -v openssl'], { stdio: 'ignore' }).status === 0;

export interface Pki {
  ca: string;
  server: { cert: string; key: string };
  wrongName: { cert: string; key: string };
  cnOnly: { cert: string; key: string };
  /** CN 127.0.0.1, but a subjectAltName naming another host: GnuTLS ignores such a CN. */
  cnButSanElsewhere: { cert: string; key: string };
  client: { cert: string; key: string };
  otherCaClient: { cert: string; key: string };
}

export function makePki(dir: string): Pki {
  const ssl = (...a: string[]) => execFileSync('openssl', a, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  const ca = (name: string) => ssl('req', '-x509', ...ec, '-keyout', `${name}.key`, '-out', `${name}.pem`, '-subj', `/CN=${name}`, '-days', '2');
  const leaf = (name: string, cn: string, caName: string, san?: string) => {
    ssl('req', '-new', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`);
    const ext = join(dir, `${name}.ext`);
    writeFileSync(ext, san ? `subjectAltName=${san}\n` : 'basicConstraints=CA:FALSE\n');
    ssl('x509', '-req', '-in', `${name}.csr`, '-CA', `${caName}.pem`, '-CAkey', `${caName}.key`, '-CAcreateserial', '-out', `${name}.pem`, '-days', '2', '-extfile', ext);
    return { cert: join(dir, `${name}.pem`), key: join(dir, `${name}.key`) };
  };
  ca('ca');
  ca('other-ca');
  return {
    ca: join(dir, 'ca.pem'),
    server: leaf('server', '127.0.0.1', 'ca', 'IP:127.0.0.1'),
    wrongName: leaf('wrong', 'wrong.example', 'ca', 'DNS:wrong.example'),
    cnOnly: leaf('cn-only', '127.0.0.1', 'ca'),
    cnButSanElsewhere: leaf('cn-san-elsewhere', '127.0.0.1', 'ca', 'DNS:elsewhere.example'),
    client: leaf('client', 'lazy-pages-client', 'ca'),
    otherCaClient: leaf('intruder', 'intruder', 'other-ca'),
  };
}

