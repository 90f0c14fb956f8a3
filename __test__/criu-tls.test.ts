/**
 * The real CRIU 4.2 over TLS (`--tls` with X.509 mutual authentication on both ends): post-copy
 * migrations whose lazy pages travel encrypted, every byte checked by the restored program.
 *   - `criu page-server --lazy-pages --tls` (a plain dump dir) -> `lazy-pages daemon --tls`;
 *   - `criu dump --lazy-pages --tls` (the frozen task serves itself) -> `lazy-pages daemon --tls`;
 *   - `lazy-pages page-server --tls` -> CRIU's own `criu lazy-pages --tls`, including a restore whose
 *     first fault comes late (CRIU's client crashes if the server sends anything unasked);
 *   - `lazy-pages page-server --tls --sessions 1` -> `lazy-pages daemon --tls`: one restore is one
 *     connection, as CRIU's page servers require.
 * The destination restores from its own copy of the images, into a new pid namespace. CRIU comes
 * from $CRIU or ../shared/criu/build.sh (see helpers/criu.ts for skip vs fail).
 */
import type { ExecutionContext } from 'ava';
import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { assertRun, criuTest, lazyRestore, onDemandPages, scenarios, tempDir, type LazyRestoreOptions, type LazyRestoreRun } from './helpers/criu.js';
import { makePki, type Pki } from './helpers/pki.js';

const sc = scenarios('small');

/** CRIU's TLS options for one end. */
function tlsArgs(pki: Pki, id: { cert: string; key: string }): string[] {
  return ['--tls', '--tls-cacert', pki.ca, '--tls-cert', id.cert, '--tls-key', id.key];
}

/**
 * Both ends' TLS options. Everyone on loopback is 127.0.0.1, so every party presents the certificate
 * for 127.0.0.1: CRIU's page servers check the CLIENT's certificate name against their own
 * --address too (criu/tls.c verifies the peer against opts.addr on both sides).
 */
function tlsPair(t: ExecutionContext): { server: string[]; client: string[] } {
  const pki = makePki(tempDir(t, 'lazy-criu-pki-'));
  return { server: tlsArgs(pki, pki.server), client: tlsArgs(pki, pki.server) };
}

function logPages(t: ExecutionContext, r: LazyRestoreRun): void {
  const p = onDemandPages(r.daemonLog);
  t.true(p.onDemand > 0, `no page was fetched on demand\n${r.diag}`);
  t.log(`our daemon: ${p.onDemand} pages on demand, ${p.background} in background, ${p.processes} processes`);
}

for (const s of Object.values(sc)) {
  criuTest(`TLS: criu page-server --lazy-pages --tls -> lazy-pages daemon --tls (one connection): ${s.title}`, async (t) => {
    const tls = tlsPair(t);
    const o: LazyRestoreOptions = { scenario: s, source: 'criu-page-server', daemon: 'ours', pageServerArgs: tls.server, daemonArgs: tls.client };
    const r = await lazyRestore(t, o);
    assertRun(t, o, r);
    logPages(t, r);
  }, { serial: true });
}

for (const s of Object.values(sc)) {
  criuTest(`TLS: criu dump --lazy-pages --tls -> lazy-pages daemon --tls: ${s.title}`, async (t) => {
    const tls = tlsPair(t);
    const o: LazyRestoreOptions = { scenario: s, source: 'criu-lazy-dump', daemon: 'ours', dumpArgs: tls.server, daemonArgs: tls.client };
    const r = await lazyRestore(t, o);
    assertRun(t, o, r);
    logPages(t, r);
  }, { serial: true });
}

for (const s of Object.values(sc)) {
  criuTest(`TLS: lazy-pages page-server --tls -> criu lazy-pages --tls (header and data in records of their own): ${s.title}`, async (t) => {
    const tls = tlsPair(t);
    const o: LazyRestoreOptions = { scenario: s, source: 'our-page-server', daemon: 'criu', pageServerArgs: tls.server, daemonArgs: tls.client };
    const r = await lazyRestore(t, o);
    assertRun(t, o, r);
  }, { serial: true });
}

criuTest('TLS regression: criu lazy-pages --tls survives a first fault long after the handshake (our server sends nothing unasked)', async (t) => {
  // CRIU's daemon hits BUG_ON(list_empty(&async_reads)) (criu/page-xfer.c) if its page-server socket
  // turns readable before it has asked for anything, e.g. with TLS 1.3 session tickets, which
  // OpenSSL servers send right after the handshake. Make the first fault come late: no rseq area
  // for the restorer to touch (glibc registers one in a lazy page), and a pause before the tasks
  // resume, well after `criu lazy-pages` has connected.
  const dir = tempDir(t, 'lazy-criu-late-');
  const script = join(dir, 'late-first-fault.sh');
  writeFileSync(script, '#!/bin/sh\n[ "$CRTOOLS_SCRIPT_ACTION" = post-restore ] && sleep 0.5\nexit 0\n');
  chmodSync(script, 0o755);
  const tls = tlsPair(t);
  const o: LazyRestoreOptions = {
    scenario: sc.random, source: 'our-page-server', daemon: 'criu',
    pageServerArgs: tls.server, daemonArgs: tls.client, restoreArgs: ['--action-script', script],
  };
  // The program (and everything else this restore starts) runs without glibc's rseq registration.
  const before = process.env.GLIBC_TUNABLES;
  process.env.GLIBC_TUNABLES = 'glibc.pthread.rseq=0';
  let r: LazyRestoreRun;
  try {
    r = await lazyRestore(t, o);
  } finally {
    if (before === undefined) delete process.env.GLIBC_TUNABLES;
    else process.env.GLIBC_TUNABLES = before;
  }
  t.notRegex(r.daemonLog, /BUG at /, r.diag);
  assertRun(t, o, r);
}, { serial: true });

criuTest('TLS: lazy-pages page-server --tls --sessions 1 serves one whole lazy-pages daemon --tls restore (one connection)', async (t) => {
  const tls = tlsPair(t);
  const o: LazyRestoreOptions = {
    scenario: sc.tree, source: 'our-page-server', daemon: 'ours',
    pageServerArgs: [...tls.server, '--sessions', '1'], daemonArgs: tls.client,
  };
  const r = await lazyRestore(t, o);
  assertRun(t, o, r);
  logPages(t, r);
  // The server stops listening once its one session has started: a second connection would have
  // been refused and the restore would have failed.
  t.regex(r.sourceText, /session 1 from .* ended \(close\)/, r.diag);
  t.notRegex(r.sourceText, /session 2 /, r.diag);
  t.regex(r.sourceText, /stopped after 1 session\(s\)/, r.diag);
}, { serial: true });
