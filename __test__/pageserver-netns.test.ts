/**
 * A real two-host shape: the page-server CLI runs in one network namespace, the client in another,
 * joined by a veth pair (10.199.x.0/30). Traffic stays inside the namespaces the test creates,
 * and both are deleted in teardown.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { hasIp, makeNetnsPair, repoRoot, startCliServer, synthCheckpoint } from './helpers/netns.js';
import { killOnTeardown } from './helpers/common.js';
import { skipUnless } from './helpers/skip.js';

/** Runs a client script inside `ns`; resolves with its JSON line. The process is killed by pid in teardown. */
function clientIn(t: import('ava').ExecutionContext, ns: string, o: { address: string; port: number; dir: string }): Promise<Record<string, unknown>> {
  const script = `
    import { Checkpoint } from ${JSON.stringify(join(repoRoot, 'ts/images/index.ts'))};
    import { PageServerClient } from ${JSON.stringify(join(repoRoot, 'ts/native/index.ts'))};
    import { expectedPages } from ${JSON.stringify(join(repoRoot, '__test__/helpers/netns.ts'))};
    const [address, port, dir] = process.argv.slice(1);
    const out = { bytes: 0, mismatches: 0, urgent: 0 };
    try {
      const ck = await Checkpoint.open(dir);
      const src = await PageServerClient.connect({ address, port: Number(port), timeoutMs: 5000 });
      for (const p of ck.processes) {
        for (const r of p.lazyRanges) {
          const pages = Number((r.end - r.start) / 4096n);
          const [all, first] = await src.fetchAll([{ pid: p.pid, vaddr: r.start, pages }, { pid: p.pid, vaddr: r.start, pages: 1, urgent: true }]);
          out.bytes += all.length;
          out.urgent += first.length;
          if (!all.equals(expectedPages(p, r.start, pages)) || !first.equals(all.subarray(0, 4096))) out.mismatches++;
        }
      }
      await src.close();
      console.log(JSON.stringify({ ok: true, ...out }));
    } catch (e) {
      console.log(JSON.stringify({ ok: false, error: e.message, code: e.code }));
    }`;
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, '--import', 'tsx', '--input-type=module', '-e', script, '--', o.address, String(o.port), o.dir], {
    cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'],
  });
  killOnTeardown(t, child);
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  return new Promise((resolve, reject) => child.once('close', (code) => {
    const line = out.trim().split('\n').pop();
    try {
      resolve(JSON.parse(line ?? ''));
    } catch {
      reject(new Error(`client in ${ns} exited ${code}: ${err.trim() || out.trim()}`));
    }
  }));
}

const netnsTest = skipUnless(hasIp(), 'no ip(8) (iproute2)', test.serial);

netnsTest('page server in one namespace, client in another, over a veth pair', async (t) => {
  const ck = await synthCheckpoint(t, { size: 8 << 20, vmas: 3, procs: 2 });
  const net = makeNetnsPair(t);
  const srv = startCliServer(t, ['-D', ck.dir, '--address', net.addr1, '--port', '0', '--sessions', '1'], ['ip', 'netns', 'exec', net.ns1]);
  const port = await srv.port;
  const r = await clientIn(t, net.ns2, { address: net.addr1, port, dir: ck.dir });
  t.true(r.ok, String(r.error));
  t.is(r.mismatches, 0);
  t.is(r.bytes, 2 * (8 << 20));
  const end = await srv.exit;
  t.is(end.code, 0, end.stderr);
});

netnsTest('by default the page server listens on 127.0.0.1 only: another namespace cannot reach it', async (t) => {
  const ck = await synthCheckpoint(t, { size: 1 << 20, vmas: 1 });
  const net = makeNetnsPair(t);
  const srv = startCliServer(t, ['-D', ck.dir, '--port', '0'], ['ip', 'netns', 'exec', net.ns1]);
  const port = await srv.port;
  const r = await clientIn(t, net.ns2, { address: net.addr1, port, dir: ck.dir });
  t.false(r.ok);
  t.is(r.code, 'EPAGESERVER');
  t.regex(String(r.error), new RegExp(`^page server ${net.addr1.replace(/\./g, '\\.')}:${port}: cannot connect: .*(refused|ECONNREFUSED)`));
  // SIGTERM ends the server cleanly.
  srv.child.kill('SIGTERM');
  const end = await srv.exit;
  t.is(end.code, 0, end.stderr);
});
