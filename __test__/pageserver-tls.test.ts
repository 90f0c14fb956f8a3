/**
 * TLS with X.509 mutual authentication, as CRIU's --tls, on the native page server and the native client
 * (rustls): certificates are made per test run with the openssl CLI (a CA, a server cert for 127.0.0.1,
 * one with a wrong name, one named by its CN only, a client cert, one from another CA). Each failure mode
 * has its test: no client certificate, a client from another CA, a server from another CA, a wrong name
 * (and --tls-no-cn-verify), a CN-only certificate, unreadable and invalid PEM files.
 */
import test from 'ava';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import net from 'node:net';
import tls from 'node:tls';
import { UserError } from '../ts/errors.js';
import { PageServerClient } from '../ts/native/index.js';
import { startPageServer, type PageServerEvent } from '../ts/pageserver/index.js';
import { encodeGet } from './helpers/wire.js';
import { expectedPages, synthCheckpoint, tempDir } from './helpers/netns.js';
import { hasOpenssl, makePki } from './helpers/pki.js';
import { skipUnless } from './helpers/skip.js';


const tlsTest = skipUnless(hasOpenssl, 'no openssl CLI', test.serial);

tlsTest('mutual TLS: a client with a CA-signed cert is served; one without a cert or from another CA is refused', async (t) => {
  const pki = makePki(tempDir(t, 'ps-pki-'));
  const ck = await synthCheckpoint(t, { size: 2 << 20, vmas: 1 });
  const events: PageServerEvent[] = [];
  const srv = await startPageServer({ imagesDir: ck.dir, tls: { cacert: pki.ca, ...pki.server }, onEvent: (e) => events.push(e) });
  t.teardown(() => srv.close());
  const p = ck.processes[0]!;
  const v = p.vmas[0]!;
  const pages = Number((v.end - v.start) / 4096n);

  const src = await PageServerClient.connect({ address: '127.0.0.1', port: srv.port, tls: { cacert: pki.ca, ...pki.client } });
  const [all, one] = await src.fetchAll([{ pid: p.pid, vaddr: v.start, pages }, { pid: p.pid, vaddr: v.start + 4096n, pages: 1, urgent: true }]);
  t.true(all!.equals(expectedPages(p, v.start, pages)));
  t.true(one!.equals(expectedPages(p, v.start + 4096n, 1)));
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

  // A certificate from a CA the server does not trust: also refused (in the handshake: TLS 1.2).
  const intruder = await PageServerClient.connect({ address: '127.0.0.1', port: srv.port, timeoutMs: 3000, tls: { cacert: pki.ca, ...pki.otherCaClient } })
    .then((s) => s.fetch(p.pid, v.start, 1, true).finally(() => s.close().catch(() => undefined)))
    .then(() => 'served', (e: Error) => e);
  t.true(intruder instanceof UserError, `intruder must be refused, got ${String(intruder)}`);
  t.regex((intruder as Error).message, new RegExp(`^page server 127\\.0\\.0\\.1:${srv.port}: TLS handshake failed: the peer refused our certificate`));
  t.is((intruder as UserError).code, 'EPAGESERVER');

  for (let i = 0; i < 100 && events.filter((e) => e.type === 'session-ended' && e.reason === 'tls-handshake-failed').length < 2; i++) {
    await new Promise((r) => setTimeout(r, 20));
  }
  const refused = events.filter((e) => e.type === 'session-ended' && e.reason === 'tls-handshake-failed');
  t.true(refused.length >= 2, 'each refusal is reported as a typed event');
  for (const e of refused) {
    t.is(e.type === 'session-ended' && e.session, 0, 'a failed handshake is no session');
    t.regex(e.type === 'session-ended' ? e.detail : '', /certificate/);
  }
  t.is(events.filter((e) => e.type === 'session-started').length, 1, 'only the good client got a session');
});

tlsTest('the client checks the server name against --address unless noCnVerify', async (t) => {
  const pki = makePki(tempDir(t, 'ps-pki-'));
  const ck = await synthCheckpoint(t, { size: 1 << 20, vmas: 1 });
  const srv = await startPageServer({ imagesDir: ck.dir, tls: { cacert: pki.ca, ...pki.wrongName } });
  t.teardown(() => srv.close());
  await t.throwsAsync(PageServerClient.connect({ address: '127.0.0.1', port: srv.port, tls: { cacert: pki.ca, ...pki.client } }), {
    instanceOf: UserError,
    message: new RegExp(`^page server 127\\.0\\.0\\.1:${srv.port}: TLS handshake failed: the peer's certificate was refused: its name does not match: .*--tls-no-cn-verify`),
  });
  const p = ck.processes[0]!;
  const src = await PageServerClient.connect({ address: '127.0.0.1', port: srv.port, tls: { cacert: pki.ca, ...pki.client, noCnVerify: true } });
  const b = await src.fetch(p.pid, p.vmas[0]!.start, 4, true);
  t.true(b.equals(expectedPages(p, p.vmas[0]!.start, 4)));
  await src.close();
});

tlsTest('a certificate named by its subject CN only is accepted for that address (as GnuTLS does), not for another', async (t) => {
  const pki = makePki(tempDir(t, 'ps-pki-'));
  const ck = await synthCheckpoint(t, { size: 1 << 20, vmas: 1 });
  const srv = await startPageServer({ imagesDir: ck.dir, tls: { cacert: pki.ca, ...pki.cnOnly } });
  t.teardown(() => srv.close());
  const p = ck.processes[0]!;
  const src = await PageServerClient.connect({ address: '127.0.0.1', port: srv.port, tls: { cacert: pki.ca, ...pki.client } });
  t.true((await src.fetch(p.pid, p.vmas[0]!.start, 2, true)).equals(expectedPages(p, p.vmas[0]!.start, 2)));
  await src.close();
  await t.throwsAsync(PageServerClient.connect({ address: 'localhost', port: srv.port, tls: { cacert: pki.ca, ...pki.client } }), {
    instanceOf: UserError, message: /TLS handshake failed: the peer's certificate was refused: its name does not match/,
  });
});

tlsTest('regression: a CN equal to the address does not name the server when a subjectAltName names another host (as GnuTLS)', async (t) => {
  const pki = makePki(tempDir(t, 'ps-pki-'));
  const ck = await synthCheckpoint(t, { size: 1 << 20, vmas: 1 });
  const srv = await startPageServer({ imagesDir: ck.dir, tls: { cacert: pki.ca, ...pki.cnButSanElsewhere } });
  t.teardown(() => srv.close());
  await t.throwsAsync(PageServerClient.connect({ address: '127.0.0.1', port: srv.port, tls: { cacert: pki.ca, ...pki.client } }), {
    instanceOf: UserError, message: /TLS handshake failed: the peer's certificate was refused: its name does not match/,
  });
  // --tls-no-cn-verify still takes it (the CA signed it).
  const src = await PageServerClient.connect({ address: '127.0.0.1', port: srv.port, tls: { cacert: pki.ca, ...pki.client, noCnVerify: true } });
  const p = ck.processes[0]!;
  t.true((await src.fetch(p.pid, p.vmas[0]!.start, 1, true)).equals(expectedPages(p, p.vmas[0]!.start, 1)));
  await src.close();
});

tlsTest('a server whose certificate another CA signed is refused by the client', async (t) => {
  const pki = makePki(tempDir(t, 'ps-pki-'));
  const ck = await synthCheckpoint(t, { size: 1 << 20, vmas: 1 });
  const srv = await startPageServer({ imagesDir: ck.dir, tls: { cacert: pki.ca, ...pki.server } });
  t.teardown(() => srv.close());
  // The client trusts only the other CA.
  await t.throwsAsync(PageServerClient.connect({ address: '127.0.0.1', port: srv.port, tls: { ...pki.client, cacert: join(dirname(pki.ca), 'other-ca.pem') } }), {
    instanceOf: UserError, message: new RegExp(`^page server 127\\.0\\.0\\.1:${srv.port}: TLS handshake failed: the peer's certificate was refused: it is not signed by the CA of --tls-cacert`),
  });
});

/**
 * A TCP relay between a client and our server that cuts the server's byte stream into TLS records
 * (5-byte header: type, version, length), so a test can see how replies are framed on the wire.
 */
async function recordTap(t: import('ava').ExecutionContext, serverPort: number): Promise<{ port: number; records: { type: number; len: number }[] }> {
  const records: { type: number; len: number }[] = [];
  const sockets = new Set<net.Socket>();
  const relay = net.createServer((down) => {
    const up = net.connect(serverPort, '127.0.0.1');
    for (const s of [down, up]) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => (down.destroy(), up.destroy()));
    }
    down.pipe(up);
    let acc = Buffer.alloc(0);
    up.on('data', (d: Buffer) => {
      acc = Buffer.concat([acc, d]);
      while (acc.length >= 5 && acc.length >= 5 + acc.readUInt16BE(3)) {
        records.push({ type: acc[0]!, len: acc.readUInt16BE(3) });
        acc = acc.subarray(5 + acc.readUInt16BE(3));
      }
      down.write(d); // forwarded only once counted: the client never sees a record the tap missed
    });
  });
  await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    relay.close();
  });
  return { port: (relay.address() as net.AddressInfo).port, records };
}

tlsTest('replies are framed as CRIU reads them: header and data in TLS records of their own, nothing unasked after the handshake', async (t) => {
  // CRIU's client reads a reply with one gnutls_record_recv per epoll wake-up: 32 bytes of header,
  // then the data. What a record holds beyond that stays inside GnuTLS, invisible to epoll: a
  // header sharing a record with its data (or data with the next header) hangs CRIU for good. And
  // any record it did not ask for (TLS 1.3 session tickets) crashes it (BUG_ON, criu/page-xfer.c).
  const pki = makePki(tempDir(t, 'ps-pki-'));
  const ck = await synthCheckpoint(t, { size: 2 << 20, vmas: 1 });
  const srv = await startPageServer({ imagesDir: ck.dir, tls: { cacert: pki.ca, ...pki.server } });
  t.teardown(() => srv.close());
  const tap = await recordTap(t, srv.port);
  const s = tls.connect({ host: '127.0.0.1', port: tap.port, ca: readFileSync(pki.ca), cert: readFileSync(pki.client.cert), key: readFileSync(pki.client.key), checkServerIdentity: () => undefined });
  t.teardown(() => void s.destroy());
  s.on('error', () => undefined);
  await new Promise<void>((r) => s.once('secureConnect', () => r()));
  t.is(s.getProtocol(), 'TLSv1.2', 'TLS 1.3 servers send session tickets after the handshake, unasked');
  const handshake = tap.records.length;
  await new Promise((r) => setTimeout(r, 200));
  t.is(tap.records.length, handshake, 'no record arrives before the first GET');

  // Plaintext bytes per application-data record: the record minus the AEAD's explicit nonce and tag.
  const overhead = /CHACHA20/.test(s.getCipher().name) ? 16 : 24;
  const p = ck.processes[0]!;
  const v = p.vmas[0]!.start;
  const asks = [1, 20, 1, 3];
  const want = asks.reduce((a, n) => a + 32 + n * 4096, 0);
  let got = 0;
  const all = new Promise<void>((r) => s.on('data', (d: Buffer) => (got += d.length) >= want && r()));
  s.write(encodeGet(p.pid, v, 1)); // alone first: a fault
  await new Promise((r) => setTimeout(r, 50));
  for (const [i, n] of asks.slice(1).entries()) s.write(encodeGet(p.pid, v + BigInt(i + 1) * 4096n, n)); // pipelined
  await all;
  const plain = tap.records.slice(handshake).map((r) => {
    t.is(r.type, 23, 'application data only');
    return r.len - overhead;
  });
  // Each reply: one record holding exactly the 32-byte header, then records that add up exactly to its data.
  let k = 0;
  for (const n of asks) {
    t.is(plain[k++], 32, `reply for ${n} page(s): the header is a record of its own (records ${JSON.stringify(plain)})`);
    let data = 0;
    while (data < n * 4096 && k < plain.length) data += plain[k++]!;
    t.is(data, n * 4096, `reply for ${n} page(s): its data ends on a record boundary (records ${JSON.stringify(plain)})`);
  }
  t.is(k, plain.length);
});

tlsTest('unreadable and invalid TLS files are named by their option (EOPTION)', async (t) => {
  const ck = await synthCheckpoint(t, { size: 65536, vmas: 1 });
  await t.throwsAsync(startPageServer({ imagesDir: ck.dir, tls: { cacert: '/nonexistent/ca.pem', cert: '/x', key: '/y' } }), {
    instanceOf: UserError, message: /^--tls-cacert \/nonexistent\/ca.pem: cannot read: ENOENT/,
  });
  await t.throwsAsync(PageServerClient.connect({ address: '127.0.0.1', port: 1, tls: { cacert: '/etc/hostname', cert: '/nonexistent/c.pem', key: '/y' } }), {
    instanceOf: UserError, message: /^--tls-cert \/nonexistent\/c.pem: cannot read/,
  });
  const pki = makePki(tempDir(t, 'ps-pki-'));
  const dir = tempDir(t, 'ps-badpem-');
  const garbage = join(dir, 'garbage.pem');
  writeFileSync(garbage, 'this is no certificate\n');
  const broken = join(dir, 'broken.pem');
  writeFileSync(broken, '-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n');
  const cases: [Parameters<typeof startPageServer>[0]['tls'], RegExp][] = [
    [{ cacert: garbage, ...pki.server }, new RegExp(`^--tls-cacert ${garbage}: no certificate in it`)],
    [{ cacert: pki.ca, cert: broken, key: pki.server.key }, new RegExp(`^--tls-cert ${broken}: not valid PEM`)],
    [{ cacert: pki.ca, cert: pki.server.cert, key: garbage }, new RegExp(`^--tls-key ${garbage}: no private key in it`)],
    [{ cacert: pki.ca, cert: pki.server.cert, key: pki.client.key }, /^--tls-cert\/--tls-key\/--tls-cacert: the TLS files do not form a usable identity/],
    [{ cacert: pki.ca, ...pki.server, cacrl: join(dir, 'missing.crl') }, new RegExp(`^--tls-cacrl ${dir}/missing.crl: cannot read: ENOENT`)],
  ];
  for (const [files, message] of cases) {
    const e = await t.throwsAsync(startPageServer({ imagesDir: ck.dir, tls: files }), { instanceOf: UserError, message });
    t.is(e?.code, 'EOPTION');
    await t.throwsAsync(PageServerClient.connect({ address: '127.0.0.1', port: 1, tls: files }), { instanceOf: UserError, message });
  }
});
