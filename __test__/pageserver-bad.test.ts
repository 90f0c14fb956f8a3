/**
 * Bad input on both sides, over real sockets. Against our server: raw clients send crafted bytes;
 * each must end only its own session with a typed reason while a second client is still served.
 * Against our (native) client: fake servers (raw net.Server) misbehave; the pending fetches must reject
 * with a UserError naming the server, within the timeout, and the client must stay failed.
 */
import test, { type ExecutionContext } from 'ava';
import net from 'node:net';
import { UserError } from '../ts/errors.js';
import { startPageServer, type PageServer, type PageServerEvent } from '../ts/pageserver/index.js';
import { PageServerClient } from '../ts/native/index.js';
import { GET_REPLY_CMD, PS_IOV, encodeHeader, encodeGet, readHeader } from './helpers/wire.js';
import type { Checkpoint } from '../ts/images/index.js';
import { expectedPages, synthCheckpoint } from './helpers/netns.js';

type Ended = Extract<PageServerEvent, { type: 'session-ended' }>;

async function serverWithLog(t: ExecutionContext, ck: Checkpoint, o: { stallTimeoutMs?: number } = {}) {
  const ended: Ended[] = [];
  const waiters: ((e: Ended) => void)[] = [];
  const srv = await startPageServer({
    imagesDir: ck.dir,
    stallTimeoutMs: o.stallTimeoutMs,
    onEvent: (e) => {
      if (e.type !== 'session-ended') return;
      const w = waiters.shift();
      if (w) w(e);
      else ended.push(e);
    },
  });
  t.teardown(() => srv.close());
  const nextEnd = () => (ended.length ? Promise.resolve(ended.shift()!) : new Promise<Ended>((r) => waiters.push(r)));
  return { srv, nextEnd };
}

function rawClient(t: ExecutionContext, port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => resolve(s));
    s.on('error', reject);
    t.teardown(() => void s.destroy());
  });
}

/** A good client after a bad one: the server must still serve. */
async function stillServes(t: ExecutionContext, srv: PageServer, ck: Checkpoint): Promise<void> {
  const p = ck.processes[0]!;
  const src = await PageServerClient.connect({ address: '127.0.0.1', port: srv.port, timeoutMs: 5000 });
  try {
    const b = await src.fetch(p.pid, p.vmas[0]!.start, 8, false);
    t.true(b.equals(expectedPages(p, p.vmas[0]!.start, 8)), 'a later client is still served');
  } finally {
    await src.close();
  }
}

const header = (cmd: number, nrPages: bigint, vaddr: bigint, dstId: bigint) => encodeHeader({ cmd, nrPages, vaddr, dstId });

const cases: { name: string; bytes: (ck: Checkpoint) => Buffer; reason: Ended['reason']; detail: RegExp; answered?: number }[] = [
  {
    name: 'a truncated header',
    bytes: () => Buffer.alloc(20, 7),
    reason: 'malformed-header',
    detail: /20 of 32 bytes at stream offset 0/,
  },
  {
    name: 'an unknown command',
    bytes: (ck) => header(0x99, 1n, ck.processes[0]!.vmas[0]!.start, BigInt(ck.processes[0]!.pid)),
    reason: 'unknown-command',
    detail: /unknown page-server command 0x99/,
  },
  {
    name: 'nr_pages = 2^63',
    bytes: (ck) => header(PS_IOV.GET, 1n << 63n, ck.processes[0]!.vmas[0]!.start, BigInt(ck.processes[0]!.pid)),
    reason: 'bad-request',
    detail: /nr_pages 9223372036854775808 is outside/,
  },
  {
    name: 'nr_pages = 0',
    bytes: (ck) => header(PS_IOV.GET, 0n, ck.processes[0]!.vmas[0]!.start, BigInt(ck.processes[0]!.pid)),
    reason: 'bad-request',
    detail: /nr_pages 0/,
  },
  {
    name: 'an unaligned address',
    bytes: (ck) => header(PS_IOV.GET, 1n, ck.processes[0]!.vmas[0]!.start + 12n, BigInt(ck.processes[0]!.pid)),
    reason: 'bad-request',
    detail: /not page aligned/,
  },
  {
    name: 'an address outside every lazy range',
    bytes: (ck) => encodeGet(ck.processes[0]!.pid, 0x7000000000n, 1),
    reason: 'no-such-pages',
    detail: /at 0x7000000000: no lazy page/,
  },
  {
    name: 'an unknown pid',
    bytes: (ck) => encodeGet(ck.processes[0]!.pid + 77, ck.processes[0]!.vmas[0]!.start, 1),
    reason: 'unknown-pid',
    detail: /not in this checkpoint/,
  },
  {
    name: 'a command that is not part of a lazy session (OPEN2)',
    bytes: () => header(PS_IOV.OPEN2, 0n, 0n, 1n),
    reason: 'unsupported-command',
    detail: /OPEN2/,
  },
  {
    name: 'a good GET followed by garbage: the good one is answered first',
    bytes: (ck) => Buffer.concat([encodeGet(ck.processes[0]!.pid, ck.processes[0]!.vmas[0]!.start, 1), Buffer.alloc(32, 0xff)]),
    reason: 'unknown-command',
    detail: /0xffffffff at stream offset 32/,
    answered: 32 + 4096,
  },
];

for (const c of cases) {
  test.serial(`server: ${c.name} ends that session with a reason; others are still served`, async (t) => {
    const ck = await synthCheckpoint(t, { size: 1 << 20, vmas: 1 });
    const { srv, nextEnd } = await serverWithLog(t, ck);
    const s = await rawClient(t, srv.port);
    const closed = new Promise<void>((r) => s.on('close', () => r()));
    let received = 0;
    s.on('data', (d: Buffer) => (received += d.length));
    // Byte by byte: the server's decoder must not care how the stream is cut.
    const bytes = c.bytes(ck);
    for (let i = 0; i < bytes.length; i += 5) s.write(bytes.subarray(i, i + 5));
    if (c.reason === 'malformed-header') s.end();
    const e = await nextEnd();
    t.is(e.reason, c.reason);
    t.false(e.ok);
    t.regex(e.detail, c.detail);
    await closed;
    t.is(received, c.answered ?? 0, 'replies sent before the bad header, and nothing after');
    await stillServes(t, srv, ck);
  });
}

test.serial('server: a client that disconnects mid-reply ends only its session', async (t) => {
  const ck = await synthCheckpoint(t, { size: 32 << 20, vmas: 1 });
  const { srv, nextEnd } = await serverWithLog(t, ck);
  const s = await rawClient(t, srv.port);
  s.pause();
  s.write(encodeGet(ck.processes[0]!.pid, ck.processes[0]!.vmas[0]!.start, 8192));
  await new Promise((r) => setTimeout(r, 150));
  s.destroy();
  const e = await nextEnd();
  t.is(e.reason, 'client-disconnected-mid-reply');
  await stillServes(t, srv, ck);
});

test.serial('server: a client that never reads loses its session after the stall timeout', async (t) => {
  const ck = await synthCheckpoint(t, { size: 32 << 20, vmas: 1 });
  const { srv, nextEnd } = await serverWithLog(t, ck, { stallTimeoutMs: 300 });
  const s = await rawClient(t, srv.port);
  s.pause();
  const t0 = Date.now();
  s.write(encodeGet(ck.processes[0]!.pid, ck.processes[0]!.vmas[0]!.start, 8192));
  const e = await nextEnd();
  t.is(e.reason, 'client-stalled');
  t.regex(e.detail, /read nothing for 300 ms/);
  t.true(Date.now() - t0 < 3000);
  await stillServes(t, srv, ck);
});

/** A fake page server: `reply` decides what each incoming header gets. */
async function fakeServer(t: ExecutionContext, reply: (s: net.Socket, h: ReturnType<typeof readHeader>) => void): Promise<number> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined);
    let acc = Buffer.alloc(0);
    s.on('data', (d: Buffer) => {
      acc = Buffer.concat([acc, d]);
      while (acc.length >= 32) {
        const h = readHeader(acc);
        acc = acc.subarray(32);
        if (!s.destroyed) reply(s, h);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return (server.address() as net.AddressInfo).port;
}

const okReply = (h: ReturnType<typeof readHeader>, o: Partial<{ cmd: number; vaddr: bigint; nrPages: bigint; dstId: bigint }> = {}) =>
  encodeHeader({ cmd: o.cmd ?? GET_REPLY_CMD, nrPages: o.nrPages ?? h.nrPages, vaddr: o.vaddr ?? h.vaddr, dstId: o.dstId ?? h.dstId });

const clientCases: { name: string; reply: (s: net.Socket, h: ReturnType<typeof readHeader>) => void; error: RegExp }[] = [
  {
    name: 'dies mid-transfer',
    reply: (s, h) => {
      s.write(okReply(h));
      s.write(Buffer.alloc(Number(h.nrPages) * 2048));
      setTimeout(() => s.destroy(), 20);
    },
    error: /closed the connection in the middle of a reply with 2 request\(s\) unanswered/,
  },
  {
    name: 'sends a wrong header',
    reply: (s, h) => s.write(okReply(h, { cmd: PS_IOV.ADD })),
    error: /reply command 0x1 for the GET of 0x10000 pid 4242, expected 0x40006/,
  },
  {
    name: 'replies for the wrong address',
    reply: (s, h) => s.write(Buffer.concat([okReply(h, { vaddr: h.vaddr + 4096n }), Buffer.alloc(Number(h.nrPages) * 4096)])),
    error: /reply for 0x11000 pid 4242, expected 0x10000 pid 4242/,
  },
  {
    name: 'replies for the wrong pid',
    reply: (s, h) => s.write(okReply(h, { dstId: 1n })),
    error: /reply for 0x10000 pid 1, expected 0x10000 pid 4242/,
  },
  {
    name: 'replies longer than asked',
    reply: (s, h) => s.write(okReply(h, { nrPages: h.nrPages + 1n })),
    error: /reply of 5 pages for the GET of 4 pages at 0x10000 pid 4242, expected 1\.\.4/,
  },
  {
    name: 'stalls',
    reply: () => undefined,
    error: /no complete reply for 300 ms \(2 request\(s\) outstanding\)/,
  },
];

for (const c of clientCases) {
  test(`client: a server that ${c.name} fails the source with a clear error`, async (t) => {
    const port = await fakeServer(t, c.reply);
    const src = await PageServerClient.connect({ address: '127.0.0.1', port, timeoutMs: 300 });
    t.teardown(() => src.close().catch(() => undefined));
    const t0 = Date.now();
    // A background fetch and a fault's page, pipelined on the one connection: both are pending when it fails.
    const e = await t.throwsAsync(src.fetchAll([{ pid: 4242, vaddr: 0x10000n, pages: 4 }, { pid: 4242, vaddr: 0x20000n, pages: 1, urgent: true }]), { instanceOf: UserError });
    t.regex(e!.message, new RegExp(`^page server 127\\.0\\.0\\.1:${port}: `));
    t.is((e as UserError).code, 'EPAGESERVER');
    t.regex(e!.message, c.error);
    t.true(Date.now() - t0 < 2000, 'within the timeout');
    const again = await t.throwsAsync(src.fetch(4242, 0x10000n, 1, true), { instanceOf: UserError }, 'a failed source stays failed');
    t.is(again!.message, e!.message);
  });
}

test('client: connection refused and a non-zero CLOSE status are UserErrors naming the server', async (t) => {
  const probe = net.createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  const free = (probe.address() as net.AddressInfo).port;
  await new Promise((r) => probe.close(r));
  await t.throwsAsync(PageServerClient.connect({ address: '127.0.0.1', port: free, timeoutMs: 1000 }), {
    instanceOf: UserError, message: new RegExp(`^page server 127\\.0\\.0\\.1:${free}: cannot connect: .*(refused|ECONNREFUSED)`),
  });
  const port = await fakeServer(t, (s, h) => {
    if ((h.cmd & 0xffff) === PS_IOV.CLOSE) s.end(Buffer.from([0xff, 0xff, 0xff, 0xff]));
  });
  const src = await PageServerClient.connect({ address: '127.0.0.1', port, timeoutMs: 1000 });
  await t.throwsAsync(src.close(), { instanceOf: UserError, message: /answered CLOSE with status -1/ });
});
