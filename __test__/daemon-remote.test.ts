/**
 * Post-copy migration end to end: our page server (source side) serves the lazy pages, our daemon
 * (destination side) fetches them for real restored processes, every byte verified by the simulator.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { join } from 'node:path';

import { Checkpoint, writeSyntheticCheckpoint } from '../ts/images/index.js';
import { startPageServer } from '../ts/pageserver/index.js';
import { restore, simFailure, synth, tempDir } from './helpers/e2e.js';
import { hasIp, makeNetnsPair, repoRoot, startCliServer } from './helpers/netns.js';
import { hasOpenssl, makePki } from './helpers/pki.js';
import { skipUnless } from './helpers/skip.js';
import { layoutFor } from '../ts/sim/layout.js';
import { startSimulator } from '../ts/sim/run.js';

const MiB = 1 << 20;

test('loopback: faults fetched urgently, the rest streamed, every byte verified', async (t) => {
  const ck = await synth(t, { size: 8 * MiB, vmas: 2, procs: 2 });
  const srv = await startPageServer({ imagesDir: ck.dir, port: 0 });
  t.teardown(() => srv.close());
  const r = await restore(t, ck, ['--workload', 'touch-random', '--count', '64', '--then-verify-all', '--settle-ms', '1500'], {
    daemon: { pageServer: { address: srv.address, port: srv.port } },
  });
  t.is(r.sim.code, 0, simFailure(r));
  t.truthy(r.summary, simFailure(r));
  for (const p of r.summary!.processes) {
    t.true(p.onDemandPages > 0, JSON.stringify(p));
    t.true(p.backgroundPages > 0, JSON.stringify(p));
  }
});

test('regression: a lazy dump (no page data at the destination) is restored entirely from the page server', async (t) => {
  // The source keeps the pages (a normal dump); the destination copy has PE_LAZY entries only, as
  // `criu dump --lazy-pages` writes them. Same pids, same layout.
  const src = await synth(t, { size: 4 * MiB, vmas: 2, procs: 2, holes: 0.1 });
  const dst = tempDir(t, 'lazy-dst-');
  await writeSyntheticCheckpoint({ out: dst, size: BigInt(4 * MiB), vmas: 2, procs: 2, holes: 0.1, pidBase: src.processes[0].pid, lazyOnly: true });
  const dstCk = await Checkpoint.open(dst);
  t.true(dstCk.processes.every((p) => p.lazyRanges.every((r) => r.location.kind === 'remote')));
  let pagesSent = 0;
  const srv = await startPageServer({ imagesDir: src.dir, port: 0, onEvent: (e) => e.type === 'session-ended' && (pagesSent += e.pagesSent) });
  t.teardown(() => srv.close());
  // The simulator checks every byte against the source's pages.
  const r = await restore(t, dstCk, ['--workload', 'touch-random', '--count', '64', '--then-verify-all'], {
    daemon: { pageServer: { address: srv.address, port: srv.port } },
    layout: (l) => layoutFor(src, l.workDir),
  });
  t.is(r.sim.code, 0, simFailure(r));
  const lazyPages = src.processes.reduce((a, p) => a + Number(p.lazyBytes / 4096n), 0);
  for (let i = 0; i < 100 && pagesSent < lazyPages; i++) await new Promise((res) => setTimeout(res, 20));
  t.true(pagesSent >= lazyPages, `server sent ${pagesSent} pages for ${lazyPages} lazy pages`);
});

test('uffd-events with a remote page source, in parent and child', async (t) => {
  const ck = await synth(t, { size: 5 * MiB, vmas: 5 });
  const srv = await startPageServer({ imagesDir: ck.dir, port: 0 });
  t.teardown(() => srv.close());
  const r = await restore(t, ck, ['--workload', 'uffd-events'], { daemon: { pageServer: { address: srv.address, port: srv.port } } });
  t.is(r.sim.code, 0, simFailure(r));
});

test('one page server serves four restores of the same dump at once', async (t) => {
  const ck = await synth(t, { size: 4 * MiB, vmas: 2 });
  const srv = await startPageServer({ imagesDir: ck.dir, port: 0 });
  t.teardown(() => srv.close());
  // The same pids cannot be restored four times at once: --any-pid lets the kernel choose them.
  const runs = await Promise.all(
    [0, 1, 2, 3].map(() =>
      restore(t, ck, ['--workload', 'touch-random', '--count', '32', '--then-verify-all', '--any-pid'], {
        daemon: { pageServer: { address: srv.address, port: srv.port } },
      }),
    ),
  );
  for (const r of runs) t.is(r.sim.code, 0, simFailure(r));
  // Each daemon ends its sessions with CLOSE as it shuts down: give the server a moment to see them end.
  for (let i = 0; i < 100 && srv.sessions < 4; i++) await new Promise((res) => setTimeout(res, 20));
  t.true(srv.sessions >= 4, `sessions ended: ${srv.sessions}`);
});

skipUnless(hasOpenssl, 'no openssl CLI')('TLS with mutual authentication end to end', async (t) => {
  const ck = await synth(t, { size: 2 * MiB });
  const pki = makePki(tempDir(t, 'pki-'));
  const srv = await startPageServer({ imagesDir: ck.dir, port: 0, tls: { cacert: pki.ca, cert: pki.server.cert, key: pki.server.key } });
  t.teardown(() => srv.close());
  const r = await restore(t, ck, ['--workload', 'touch-random', '--count', '16', '--then-verify-all'], {
    daemon: { pageServer: { address: '127.0.0.1', port: srv.port, tls: { cacert: pki.ca, cert: pki.client.cert, key: pki.client.key } } },
  });
  t.is(r.sim.code, 0, simFailure(r));
});

test('the page server dies mid-transfer: the restore fails and every process is killed, none reads zeros', async (t) => {
  const ck = await synth(t, { size: 32 * MiB, vmas: 1, procs: 2 });
  const srv = await startPageServer({ imagesDir: ck.dir, port: 0 });
  let closed = false;
  t.teardown(() => (closed ? undefined : srv.close()));
  const r = await restore(t, ck, ['--workload', 'hold'], {
    daemon: {
      pageServer: { address: srv.address, port: srv.port, timeoutMs: 2000 },
      chunkBytes: 64 * 1024,
      remoteDepth: 1,
      onEvent: (e) => {
        if (e.type === 'progress' && !closed) {
          closed = true;
          void srv.close();
        }
      },
    },
  });
  t.truthy(r.daemonError, simFailure(r));
  t.regex(r.daemonError!.message, /page server/);
  t.true(r.sim.report?.processes.every((p) => p.killedBySignal === 9), simFailure(r));
});

skipUnless(hasIp(), 'no ip(8) (iproute2)', test.serial)('two hosts: page server in one network namespace, daemon in another, over a veth pair', async (t) => {
  const ck = await synth(t, { size: 8 * MiB, vmas: 2 });
  const ns = makeNetnsPair(t);
  const server = startCliServer(t, ['-D', ck.dir, '--address', ns.addr1, '--port', '0'], ['ip', 'netns', 'exec', ns.ns1]);
  const port = await server.port;
  const wd = tempDir(t, 'lazy-wd-');
  const daemon = spawn('ip', ['netns', 'exec', ns.ns2, process.execPath, '--import', 'tsx', join(repoRoot, 'ts/cli/run.ts'),
    'daemon', '-D', ck.dir, '-W', wd, '--page-server', '--address', ns.addr1, '--port', String(port), '--status-fd', '3'],
  { cwd: repoRoot, stdio: ['ignore', 'ignore', 'pipe', 'pipe'] });
  t.teardown(() => {
    if (daemon.exitCode === null && daemon.pid) process.kill(daemon.pid, 'SIGKILL');
  });
  let err = '';
  daemon.stderr!.on('data', (d) => (err += d));
  await new Promise<void>((res, rej) => {
    (daemon.stdio[3] as NodeJS.ReadableStream).once('data', () => res());
    daemon.once('exit', (c) => rej(new Error(`daemon exited ${c} before ready: ${err}`)));
  });
  const sim = startSimulator(layoutFor(ck, wd), ['--workload', 'touch-random', '--count', '64', '--then-verify-all', '--timeout', '100']);
  t.teardown(() => sim.kill());
  const [res, code] = await Promise.all([sim.result, new Promise<number | null>((r) => daemon.once('exit', r))]);
  t.is(res.code, 0, `${res.stderr} ${err}`);
  t.is(code, 0, err);
});
