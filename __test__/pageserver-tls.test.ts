/**
 * TLS with X.509 mutual authentication, as CRIU's --tls: certificates are made per test run with
 * the openssl CLI (a CA, a server cert for 127.0.0.1, one with a wrong name, a client cert).
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import tls from 'node:tls';
import { UserError } from '../ts/errors.js';
import { startPageServer, type PageServerEvent } from '../ts/pageserver/index.js';
import { encodeGet } from '../ts/pagesource/protocol.js';
import { RemotePageSource } from '../ts/pagesource/remote.js';
import { expectedPages, synthCheckpoint, tempDir } from './helpers/netns.js';
import { hasOpenssl, makePki } from './helpers/pki.js';


const tlsTest = hasOpenssl ? test.serial : test.serial.skip;
if (!hasOpenssl) test('TLS tests need the openssl CLI (not found): skipped', (t) => t.pass());

tlsTest('mutual TLS: a client with a CA-signed cert is served; one without a cert or from another CA is refused', async (t) => {
  const pki = makePki(tempDir(t, 'ps-pki-'));
  const ck = await synthCheckpoint(t, { size: 2 << 20, vmas: 1 });
  const events: PageServerEvent[] = [];
  const srv = await startPageServer({ imagesDir: ck.dir, tls: { cacert: pki.ca, ...pki.server }, onEvent: (e) => events.push(e) });
  t.teardown(() => srv.close());
  const p = ck.processes[0]!;
  const v = p.vmas[0]!;
  const pages = Number((v.end - v.start) / 4096n);

  const src = await RemotePageSource.connect({ address: '127.0.0.1', port: srv.port, tls: { cacert: pki.ca, ...pki.client } });
  const [all, one] = await Promise.all([src.fetch(p.pid, v.start, pages, false), src.fetch(p.pid, v.start + 4096n, 1, true)]);
  t.true(all.equals(expectedPages(p, v.start, pages)));
  t.true(one.equals(expectedPages(p, v.start + 4096n, 1)));
  await src.close();

  // No client certificate at all: the server must refuse before sending any page.
  const got = await new Promise<{ bytes: number; error?: string }>((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port: srv.port, ca: readFileSync(pki.ca), checkServerIdentity: () => undefined });
    t.teardown(() => void s.destroy());
    let bytes = 0;
    let error: string | undefined;
    s.on('secureConnect', () => s.write(encodeGet(p.pid, v.start, 1)));
    s.on('data', (d: Buffer) => (bytes += d.length));
    s.on('error', (e) => (error = e.message));
    s.on('close', () => resolve({ bytes, error }));
  });
  t.is(got.bytes, 0, 'no page reaches a client without a certificate');

  // A certificate from a CA the server does not trust: also refused.
  const intruder = await RemotePageSource.connect({ address: '127.0.0.1', port: srv.port, timeoutMs: 3000, tls: { cacert: pki.ca, ...pki.otherCaClient } })
    .then((s) => s.fetch(p.pid, v.start, 1, true).finally(() => s.close().catch(() => undefined)))
    .then(() => 'served', (e: Error) => e);
  t.true(intruder instanceof UserError, `intruder must be refused, got ${String(intruder)}`);
  t.regex((intruder as Error).message, new RegExp(`^page server 127\\.0\\.0\\.1:${srv.port}: `));

  await new Promise((r) => setTimeout(r, 50));
  const refused = events.filter((e) => e.type === 'session-ended' && e.reason === 'tls-handshake-failed');
  t.true(refused.length >= 2, 'each refusal is reported as a typed event');
});

tlsTest('the client checks the server name against --address unless noCnVerify', async (t) => {
  const pki = makePki(tempDir(t, 'ps-pki-'));
  const ck = await synthCheckpoint(t, { size: 1 << 20, vmas: 1 });
  const srv = await startPageServer({ imagesDir: ck.dir, tls: { cacert: pki.ca, ...pki.wrongName } });
  t.teardown(() => srv.close());
  await t.throwsAsync(RemotePageSource.connect({ address: '127.0.0.1', port: srv.port, tls: { cacert: pki.ca, ...pki.client } }), {
    instanceOf: UserError,
    message: new RegExp(`^page server 127\\.0\\.0\\.1:${srv.port}: cannot connect: .*(IP: 127\\.0\\.0\\.1|altnames)`),
  });
  const p = ck.processes[0]!;
  const src = await RemotePageSource.connect({ address: '127.0.0.1', port: srv.port, tls: { cacert: pki.ca, ...pki.client, noCnVerify: true } });
  const b = await src.fetch(p.pid, p.vmas[0]!.start, 4, true);
  t.true(b.equals(expectedPages(p, p.vmas[0]!.start, 4)));
  await src.close();
});

tlsTest('missing TLS files are named by their option', async (t) => {
  const ck = await synthCheckpoint(t, { size: 65536, vmas: 1 });
  await t.throwsAsync(startPageServer({ imagesDir: ck.dir, tls: { cacert: '/nonexistent/ca.pem', cert: '/x', key: '/y' } }), {
    instanceOf: UserError, message: /^--tls-cacert \/nonexistent\/ca.pem: cannot read: ENOENT/,
  });
  await t.throwsAsync(RemotePageSource.connect({ address: '127.0.0.1', port: 1, tls: { cacert: '/etc/hostname', cert: '/nonexistent/c.pem', key: '/y' } }), {
    instanceOf: UserError, message: /^--tls-cert \/nonexistent\/c.pem: cannot read/,
  });
});
