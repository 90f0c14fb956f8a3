// Real-kernel, real-socket tests of the native page-server client inside the EventLoop: the C test peer faults,
// our TS page server (or a small misbehaving fake) answers, and the loop thread serves faults and background
// fetches without JS.
import test, { type ExecutionContext } from 'ava';
import net from 'node:net';
import { join } from 'node:path';
import { writeSyntheticCheckpoint, fillPatternPage } from '../ts/images/index.js';
import { startPageServer, type PageServerOptions } from '../ts/pageserver/index.js';
import { NativeError, type NativeEvent } from '../ts/native/index.js';
import { PAGE, fnv, handedOverPeer, servedSoFar } from './native-helpers.js';

const P = BigInt(PAGE);
/** Where writeSyntheticCheckpoint puts the first VMA. */
const IMAGE_BASE = 0x100000000n;
type Ev<K extends NativeEvent['type']> = Extract<NativeEvent, { type: K }>;
const is =
  <K extends NativeEvent['type']>(type: K) =>
  (e: NativeEvent): e is Ev<K> =>
    e.type === type;
const doneOf = (reqId: number) => (e: NativeEvent): e is Ev<'done'> => e.type === 'done' && e.reqId === reqId;

/** The bytes the synthetic checkpoint holds at image address `addr` (process 0: no XOR). */
function imagePage(addr: bigint): Buffer {
  const b = Buffer.alloc(PAGE);
  fillPatternPage(b, addr, 0n);
  return b;
}

let nextBase = 0x5c0000000000n;

/** A peer with `pages` registered pages, handed over through the real socket, added to a fresh loop. */
async function peerAndLoop(t: ExecutionContext, pages = 8) {
  const base = nextBase;
  nextBase += 0x100000000n;
  const { dir, peer, loop, events, procId } = await handedOverPeer(t, base, pages);
  return { base, peer, loop, events, procId, dir };
}

/** Our page server over a synthetic checkpoint of `pages` pages, closed at teardown. */
async function pageServer(t: ExecutionContext, dir: string, pages: number, opts: Partial<PageServerOptions> = {}) {
  const images = join(dir, 'images');
  const { pids } = await writeSyntheticCheckpoint({ out: images, size: pages * PAGE });
  const server = await startPageServer({ imagesDir: images, address: '127.0.0.1', port: 0, ...opts });
  t.teardown(() => server.close());
  return { server, pid: pids[0]! };
}

/** A fake server: `onGet(header, socket, index)` for each 32-byte request received. */
async function fakeServer(t: ExecutionContext, onGet: (h: Buffer, s: net.Socket, i: number) => void) {
  const sockets = new Set<net.Socket>();
  const srv = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined);
    let pending = Buffer.alloc(0);
    let i = 0;
    s.on('data', (d: Buffer) => {
      pending = Buffer.concat([pending, d]);
      while (pending.length >= 32) {
        const h = pending.subarray(0, 32);
        pending = pending.subarray(32);
        onGet(Buffer.from(h), s, i++);
      }
    });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    srv.close();
  });
  return (srv.address() as net.AddressInfo).port;
}

function replyHeader(pages: number, vaddr: bigint, pid: bigint): Buffer {
  const b = Buffer.alloc(32);
  b.writeUInt32LE(0x00040006, 0);
  b.writeBigUInt64LE(BigInt(pages), 8);
  b.writeBigUInt64LE(vaddr, 16);
  b.writeBigUInt64LE(pid, 24);
  return b;
}

const remoteTable = (base: bigint, pages: number, pid: number) => [
  { liveStart: base, liveEnd: base + BigInt(pages) * P, imageStart: IMAGE_BASE, kind: 'remote' as const, imagePid: pid },
];

test('remote faults are fetched and served by the loop thread (reported as served, never forwarded)', async (t) => {
  const { base, peer, loop, events, procId, dir } = await peerAndLoop(t);
  const { server, pid } = await pageServer(t, dir, 8);
  loop.connectPageServer(server.address, server.port, 5000);
  loop.installTable(procId, 1, remoteTable(base, 8, pid));
  for (const i of [3, 0, 7, 4]) {
    t.is(await peer.cmd(`sum ${i}`), `sum ${i} ${fnv(imagePage(IMAGE_BASE + BigInt(i) * P))}`);
  }
  // Served facts come in batches (each at most 2 ms late): wait for all four, by image address.
  const at = (i: number) => Number(IMAGE_BASE) + i * PAGE;
  await events.waitFor(() => servedSoFar(events.all, procId).runs.reduce((n, [a, b]) => n + b - a, 0) === 4 * PAGE);
  const served = servedSoFar(events.all, procId);
  t.deepEqual(served.runs, [[at(0), at(1)], [at(3), at(5)], [at(7), at(8)]]);
  t.is(served.last, base + 4n * P);
  t.false(events.all.some(is('pagefault')), 'no fault went to JS');
  const st = loop.stats(procId);
  t.is(st.forwarded, 0);
  t.is(st.copyPages, 4);
  const src = loop.sourceStats();
  t.true(src.connected);
  t.is(src.faultsServed, 4);
  t.is(src.faultBytes, 4 * PAGE);
  t.is(src.requests, 4);
});

test('a background fetch lands the right bytes; short replies are followed up; present pages are skipped', async (t) => {
  const { base, peer, loop, events, procId, dir } = await peerAndLoop(t, 16);
  const { server, pid } = await pageServer(t, dir, 16, { maxReplyPages: 3 });
  loop.connectPageServer(server.address, server.port, 5000);
  loop.installTable(procId, 1, []); // holes: nothing faults remotely, the fetch does the work
  t.is(await peer.cmd('write 1 9'), 'ok'); // page 1 present before the fetch: EEXIST, skipped
  loop.setPieceBytes(2 * PAGE); // several pieces per fetch
  loop.fetch(procId, 11, 1, pid, IMAGE_BASE, 8, base);
  loop.fetch(procId, 12, 1, pid, IMAGE_BASE + 8n * P, 8, base + 8n * P);
  const d11 = await events.waitFor(doneOf(11));
  t.deepEqual(d11, { type: 'done', procId, reqId: 11, status: 'ok', bytes: 7 * PAGE });
  const d12 = await events.waitFor(doneOf(12));
  t.deepEqual(d12, { type: 'done', procId, reqId: 12, status: 'ok', bytes: 8 * PAGE });
  for (let i = 0; i < 16; i++) {
    const want = i === 1 ? Buffer.alloc(PAGE, 9) : imagePage(IMAGE_BASE + BigInt(i) * P);
    t.is(await peer.cmd(`sum ${i.toString(16)}`), `sum ${i.toString(16)} ${fnv(want)}`);
  }
  const src = loop.sourceStats();
  t.is(src.fetchBytes, 16 * PAGE);
  t.is(src.requests, 6, 'each 8-page fetch took 3 GETs (3 + 3 + 2 pages)');
  t.is(loop.stats(procId).zeroPages, 1, 'only the page written before the fetch (a hole then)');
});

test('a fetch for an old generation completes as stale; fetch without a page server is a typed error', async (t) => {
  const { base, loop, events, procId, dir } = await peerAndLoop(t);
  const bad = (f: () => void, code: string, re: RegExp) => {
    const e = t.throws(f, { instanceOf: NativeError });
    t.is(e?.code, code);
    t.regex(e?.message ?? '', re);
  };
  bad(() => loop.fetch(procId, 1, 1, 7, IMAGE_BASE, 1, base), 'EINVALARG', /no page server is connected/);
  const { server, pid } = await pageServer(t, dir, 8);
  loop.connectPageServer(server.address, server.port, 5000);
  bad(() => loop.connectPageServer(server.address, server.port, 5000), 'EINVALARG', /already connected/);
  bad(() => loop.fetch(procId, 1, 1, pid, IMAGE_BASE + 1n, 1, base), 'EINVALARG', /image: must be a multiple of 4096/);
  bad(() => loop.fetch(procId, 1, 1, 0, IMAGE_BASE, 1, base), 'EINVALARG', /imagePid/);
  bad(() => loop.fetch(procId, 1, 1, pid, IMAGE_BASE, 0, base), 'EINVALARG', /pages/);
  loop.installTable(procId, 2, []);
  loop.fetch(procId, 5, 1, pid, IMAGE_BASE, 4, base);
  t.is((await events.waitFor(doneOf(5))).status, 'stale');
});

test('connecting to a closed port throws EPAGESERVER naming address:port', async (t) => {
  const { loop } = await peerAndLoop(t);
  const port = await new Promise<number>((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
  const e = t.throws(() => loop.connectPageServer('127.0.0.1', port, 1000), { instanceOf: NativeError });
  t.is(e?.code, 'EPAGESERVER');
  t.regex(e?.message ?? '', new RegExp(`page server 127\\.0\\.0\\.1:${port}: cannot connect`));
  t.false(loop.sourceStats().connected);
});

test('a reply for the wrong page is a source-error naming server, page and pid; outstanding fetches fail', async (t) => {
  const { base, peer, loop, events, procId } = await peerAndLoop(t);
  const port = await fakeServer(t, (h, s) => {
    const vaddr = h.readBigUInt64LE(16);
    const pid = h.readBigUInt64LE(24);
    if (h.readBigUInt64LE(8) === 1n) s.write(Buffer.concat([replyHeader(1, vaddr - P, pid), Buffer.alloc(PAGE)]));
    // background GETs are never answered
  });
  loop.connectPageServer('127.0.0.1', port, 5000);
  loop.installTable(procId, 1, remoteTable(base, 8, 4242));
  loop.fetch(procId, 3, 1, 4242, IMAGE_BASE + 4n * P, 4, base + 4n * P);
  peer.child.stdin.write('sum 2\n'); // blocks: its page never comes (teardown kills the peer)
  const err = await events.waitFor(is('source-error'));
  t.is(
    err.message,
    // One connection: replies come in request order, so the wrong reply is checked against the
    // background GET sent first.
    `page server 127.0.0.1:${port}: reply for 0x${(IMAGE_BASE + P).toString(16)} pid 4242, expected 0x${(IMAGE_BASE + 4n * P).toString(16)} pid 4242`,
  );
  t.deepEqual(await events.waitFor(doneOf(3)), { type: 'done', procId, reqId: 3, status: 'error', bytes: 0 });
  const src = loop.sourceStats();
  t.true(src.failed);
  t.false(src.connected);
  t.throws(() => loop.fetch(procId, 4, 1, 4242, IMAGE_BASE, 1, base), { message: /page server failed/ });
});

test('a server that hangs up is a source-error', async (t) => {
  const { base, peer, loop, events, procId } = await peerAndLoop(t);
  const port = await fakeServer(t, (_h, s) => s.destroy());
  loop.connectPageServer('127.0.0.1', port, 5000);
  loop.installTable(procId, 1, remoteTable(base, 8, 77));
  peer.child.stdin.write('sum 0\n');
  const err = await events.waitFor(is('source-error'));
  t.regex(err.message, new RegExp(`^page server 127\\.0\\.0\\.1:${port}: (the server closed the connection with 1 request\\(s\\) unanswered|read failed: .*reset)`));
});

test('a server that stops answering is a source-error after timeoutMs', async (t) => {
  const { base, loop, events, procId } = await peerAndLoop(t);
  const port = await fakeServer(t, () => undefined);
  loop.connectPageServer('127.0.0.1', port, 300);
  loop.installTable(procId, 1, []);
  const t0 = Date.now();
  loop.fetch(procId, 8, 1, 77, IMAGE_BASE, 2, base);
  const err = await events.waitFor(is('source-error'), 5000);
  const took = Date.now() - t0;
  t.regex(err.message, new RegExp(`^page server 127\\.0\\.0\\.1:${port}: no complete reply for 300 ms \\(1 request\\(s\\) outstanding\\)$`));
  t.true(took >= 250 && took < 3000, `took ${took} ms`);
  t.is((await events.waitFor(doneOf(8))).status, 'error');
});

test('bulk: 64 MiB fetched over loopback with faults served meanwhile (rates logged)', async (t) => {
  const pages = 16384;
  const { base, peer, loop, events, procId, dir } = await peerAndLoop(t, pages);
  const { server, pid } = await pageServer(t, dir, pages);
  loop.connectPageServer(server.address, server.port, 10_000);
  loop.installTable(procId, 1, remoteTable(base, pages, pid));
  // fault latency alone (peer round trip: pipe + fault + GET + copy)
  const rtt = async (i: number) => {
    const t0 = process.hrtime.bigint();
    const line = await peer.cmd(`sum ${i.toString(16)}`);
    const us = Number(process.hrtime.bigint() - t0) / 1000;
    t.is(line, `sum ${i.toString(16)} ${fnv(imagePage(IMAGE_BASE + BigInt(i) * P))}`);
    return us;
  };
  const alone: number[] = [];
  for (let i = 0; i < 20; i++) alone.push(await rtt(i * 7 + 1));
  const chunk = 256;
  const t0 = process.hrtime.bigint();
  let req = 100;
  for (let p = 0; p < pages; p += chunk) loop.fetch(procId, req++, 1, pid, IMAGE_BASE + BigInt(p) * P, chunk, base + BigInt(p) * P);
  const during: number[] = [];
  for (let i = 0; i < 20; i++) during.push(await rtt(8000 + i * 13));
  const dones = [];
  for (let r = 100; r < req; r++) dones.push(await events.waitFor(doneOf(r), 30_000));
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  t.true(dones.every((d) => d.status === 'ok'), 'every fetch ok');
  const placed = dones.reduce((a, d) => a + d.bytes, 0);
  // Every page placed once: by a fault (the 20 first, and those during the transfer that the fetch had
  // not placed yet), by the piece of a fetch run for a fault that fell in it (both reported as served),
  // or by a fetch's completion.
  const servedBytes = () => servedSoFar(events.all, procId).runs.reduce((n, [a, b]) => n + b - a, 0);
  await events.waitFor(() => placed + servedBytes() >= pages * PAGE, 5000).catch(() => undefined);
  t.is(placed + servedBytes(), pages * PAGE, `placed ${placed / PAGE} pages, served ${servedBytes() / PAGE}`);
  t.true(placed <= (pages - 20) * PAGE, `placed ${placed / PAGE} pages`);
  for (const i of [0, 255, 256, 9999, pages - 1]) {
    t.is(await peer.cmd(`sum ${i.toString(16)}`), `sum ${i.toString(16)} ${fnv(imagePage(IMAGE_BASE + BigInt(i) * P))}`);
  }
  const med = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1]!;
  t.log(`64 MiB in ${secs.toFixed(3)} s = ${((pages * PAGE) / secs / 1e6).toFixed(0)} MB/s; fault round trip p50 alone ${med(alone).toFixed(0)} µs, during background ${med(during).toFixed(0)} µs`);
});
