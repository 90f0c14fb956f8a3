/**
 * Page server ↔ client over real loopback sockets, on synthetic checkpoints: every fetched page
 * must equal the bytes at its offset in the pages file.
 */
import test from 'ava';
import { startPageServer, type PageServerEvent } from '../ts/pageserver/index.js';
import { PageServerClient, type PageAsk } from '../ts/native/index.js';
import { expectedPages, startCliServer, synthCheckpoint } from './helpers/netns.js';

test('small and big fetches return the pages file bytes; urgent and background mixed', async (t) => {
  const ck = await synthCheckpoint(t, { size: 6 << 20, vmas: 3, procs: 2 });
  const events: PageServerEvent[] = [];
  const srv = await startPageServer({ imagesDir: ck.dir, onEvent: (e) => events.push(e) });
  t.teardown(() => srv.close());
  t.is(srv.address, '127.0.0.1', 'binds loopback unless told otherwise');
  t.true(srv.port > 0);
  const src = await PageServerClient.connect({ address: '127.0.0.1', port: srv.port });
  t.teardown(() => src.close().catch(() => undefined));

  for (const p of ck.processes) {
    for (const v of p.vmas) {
      const pages = Number((v.end - v.start) / 4096n);
      // Pipelined on the one connection: a big background fetch, two faults' pages, another fetch.
      const [whole, one, last, mid] = (await src.fetchAll([
        { pid: p.pid, vaddr: v.start, pages },
        { pid: p.pid, vaddr: v.start, pages: 1, urgent: true },
        { pid: p.pid, vaddr: v.end - 4096n, pages: 1, urgent: true },
        { pid: p.pid, vaddr: v.start + 4096n * 7n, pages: 300 },
      ])) as [Buffer, Buffer, Buffer, Buffer];
      t.is(whole.length, pages * 4096);
      t.true(whole.equals(expectedPages(p, v.start, pages)), `pid ${p.pid} VMA ${v.start.toString(16)}`);
      t.true(one.equals(expectedPages(p, v.start, 1)));
      t.true(last.equals(expectedPages(p, v.end - 4096n, 1)));
      t.true(mid.equals(expectedPages(p, v.start + 4096n * 7n, 300)));
    }
  }
  await src.close();
  await srv.close();
  const ended = events.filter((e) => e.type === 'session-ended');
  t.is(ended.length, 1, 'one source = one connection (CRIU\'s page servers accept no second one)');
  t.true(ended.every((e) => e.type === 'session-ended' && e.reason === 'close' && e.ok));
});

test('short replies: the client asks again for the rest, in order, with other requests pipelined', async (t) => {
  const ck = await synthCheckpoint(t, { size: 2 << 20, vmas: 1 });
  // Replies of at most 3 pages force follow-up GETs behind other pipelined requests.
  const srv = await startPageServer({ imagesDir: ck.dir, maxReplyPages: 3 });
  t.teardown(() => srv.close());
  const src = await PageServerClient.connect({ address: '127.0.0.1', port: srv.port });
  t.teardown(() => src.close().catch(() => undefined));
  const p = ck.processes[0]!;
  const base = p.vmas[0]!.start;
  const asks = [[0, 10], [20, 1], [30, 7], [100, 64], [5, 3], [200, 2]] as const;
  const got = await src.fetchAll(asks.map(([at, n], i) => ({ pid: p.pid, vaddr: base + BigInt(at) * 4096n, pages: n, urgent: i % 2 === 1 && n === 1 })));
  for (const [i, [at, n]] of asks.entries()) t.true(got[i]!.equals(expectedPages(p, base + BigInt(at) * 4096n, n)), `ask ${at}+${n}`);
  await src.close();
});

test('four clients at once, then many sessions in a row, on one server', async (t) => {
  const ck = await synthCheckpoint(t, { size: 4 << 20, vmas: 2, procs: 2 });
  const srv = await startPageServer({ imagesDir: ck.dir });
  t.teardown(() => srv.close());
  const one = async (k: number) => {
    const src = await PageServerClient.connect({ address: '127.0.0.1', port: srv.port });
    try {
      const p = ck.processes[k % 2]!;
      const v = p.vmas[k % p.vmas.length]!;
      const pages = Number((v.end - v.start) / 4096n);
      const jobs: PageAsk[] = [];
      for (let at = 0; at < pages; at += 37) {
        const n = Math.min(37, pages - at);
        jobs.push({ pid: p.pid, vaddr: v.start + BigInt(at) * 4096n, pages: n, urgent: at % 3 === 0 && n === 1 });
      }
      const bufs = await src.fetchAll(jobs);
      t.true(Buffer.concat(bufs).equals(expectedPages(p, v.start, pages)), `client ${k}`);
    } finally {
      await src.close();
    }
  };
  await Promise.all([0, 1, 2, 3].map(one));
  for (let k = 0; k < 12; k++) await one(k);
  await new Promise((r) => setTimeout(r, 20));
  t.is(srv.sessions, 16);
  t.is(srv.active, 0);
});

test('CLI: --port 0 prints the real port; --sessions N serves N sessions and exits 0', async (t) => {
  const ck = await synthCheckpoint(t, { size: 1 << 20, vmas: 1 });
  const cli = startCliServer(t, ['-D', ck.dir, '--port', '0', '--sessions', '2']);
  const port = await cli.port;
  const p = ck.processes[0]!;
  for (let i = 0; i < 2; i++) {
    const src = await PageServerClient.connect({ address: '127.0.0.1', port });
    const b = await src.fetch(p.pid, p.vmas[0]!.start, 16, false);
    t.true(b.equals(expectedPages(p, p.vmas[0]!.start, 16)));
    await src.close();
  }
  const end = await cli.exit;
  t.is(end.code, 0, end.stderr);
  t.regex(end.stderr, /stopped after 2 session/);
});

test('CLI: bad options and a bad images dir give one line and exit 1', async (t) => {
  const bad = startCliServer(t, ['-D', '/nonexistent/dir', '--port', '0']);
  const e1 = await bad.exit;
  t.is(e1.code, 1);
  t.regex(e1.stderr, /^lazy-pages: .*\/nonexistent\/dir/);
  t.is(e1.stderr.trim().split('\n').length, 1);
  const ck = await synthCheckpoint(t, { size: 65536, vmas: 1 });
  const e2 = await startCliServer(t, ['-D', ck.dir, '--port', '70000']).exit;
  t.is(e2.code, 1);
  t.regex(e2.stderr, /--port/);
  const e3 = await startCliServer(t, ['-D', ck.dir, '--port', '0', '--tls', '--tls-cert', '/nonexistent/cert.pem', '--tls-cacert', '/nonexistent/ca.pem']).exit;
  t.is(e3.code, 1);
  t.regex(e3.stderr, /--tls-cacert \/nonexistent\/ca.pem: cannot read/);
});
