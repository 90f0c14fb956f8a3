// Real-kernel tests of the hand-over socket and direct uffd ioctls, against the C test peer.
import test, { type ExecutionContext } from 'ava';
import { openSync, closeSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { HandoverListener, NativeError, PageImage, Uffd, type HandoverEvent } from '../ts/native/index.js';
import { Collector, PAGE, Peer, fnv, patternImage, tempDir } from './native-helpers.js';

const BASE = 0x5a0000000000n;

async function handOver(t: ExecutionContext, base: bigint, pages: number) {
  const dir = tempDir(t);
  const events = new Collector<HandoverEvent>();
  const listener = HandoverListener.listen(dir, events.push);
  t.teardown(() => listener.close());
  const peer = new Peer(t, [listener.path, base.toString(16), String(pages)]);
  const task = await events.waitFor((e): e is Extract<HandoverEvent, { type: 'task' }> => e.type === 'task');
  await events.waitFor((e) => e.type === 'finished');
  t.teardown(() => task.uffd.close());
  t.regex(await peer.next(), /^ready \d+$/);
  return { dir, events, listener, peer, task };
}

test('hand-over over the real socket delivers connected, the task uffd and finished', async (t) => {
  const { events, peer, task } = await handOver(t, BASE, 4);
  t.deepEqual(
    events.all.map((e) => e.type),
    ['connected', 'task', 'finished'],
  );
  t.is(task.pid, peer.pid);
  t.true(task.uffd.fd >= 0);
});

test('COPY from an mmapped image arrives byte for byte; a second COPY is EEXIST; ZEROPAGE reads zeros', async (t) => {
  const base = BASE + 0x100000n;
  const { peer, task, dir } = await handOver(t, base, 4);
  const data = patternImage(3);
  const path = join(dir, 'pages-1.img');
  writeFileSync(path, data);
  const img = PageImage.open(path);
  t.is(img.length, 3 * PAGE);
  t.deepEqual(task.uffd.copyFromImage(img, PAGE, base, 2 * PAGE), { status: 'ok', bytes: 2 * PAGE });
  t.is(await peer.cmd('sum 0'), `sum 0 ${fnv(data.subarray(PAGE, 2 * PAGE))}`);
  const hex = await peer.cmd('hex 1');
  t.is(hex, `hex ${data.subarray(2 * PAGE, 3 * PAGE).toString('hex')}`);
  t.deepEqual(task.uffd.copyFromImage(img, 0, base, PAGE), { status: 'exists' });
  t.deepEqual(task.uffd.zeropage(base + 2n * BigInt(PAGE), PAGE), { status: 'ok', bytes: PAGE });
  t.is(await peer.cmd('sum 2'), `sum 2 ${fnv(new Uint8Array(PAGE))}`);
  const buf = Buffer.alloc(PAGE, 0xab);
  t.deepEqual(task.uffd.copyFromBuffer(buf, base + 3n * BigInt(PAGE)), { status: 'ok', bytes: PAGE });
  t.is(await peer.cmd('sum 3'), `sum 3 ${fnv(buf)}`);
  // Out of range: typed error naming the file, offset and size.
  const err = t.throws(() => task.uffd.copyFromImage(img, 2 * PAGE, base, 2 * PAGE), { instanceOf: NativeError });
  t.is(err?.code, 'EBADIMAGE');
  t.true(err?.message.includes(path) && err.message.includes(String(3 * PAGE)));
  img.close();
});

test('adopting a non-uffd fd and reading outside an image are typed errors', (t) => {
  const fd = openSync('/dev/null', 'r');
  t.teardown(() => closeSync(fd));
  const e = t.throws(() => Uffd.adopt(fd), { instanceOf: NativeError });
  t.is(e?.code, 'ENOTUFFD');
  t.regex(e?.message ?? '', /\/dev\/null/);
  const dir = tempDir(t);
  const path = join(dir, 'pages-2.img');
  writeFileSync(path, Buffer.alloc(PAGE));
  const img = PageImage.open(path);
  const r = t.throws(() => img.read(PAGE - 8, 16), { instanceOf: NativeError });
  t.is(r?.code, 'EBADIMAGE');
  t.is(img.read(0, 8).length, 8);
  const empty = join(dir, 'pages-3.img');
  writeFileSync(empty, '');
  t.is(PageImage.open(empty).length, 0);
  t.is(t.throws(() => PageImage.open(join(dir, 'missing.img')), { instanceOf: NativeError })?.code, 'EBADIMAGE');
});

test('a truncated hand-over (2 bytes, then close) is a typed error', async (t) => {
  const dir = tempDir(t);
  const events = new Collector<HandoverEvent>();
  const listener = HandoverListener.listen(dir, events.push);
  t.teardown(() => listener.close());
  new Peer(t, [listener.path, 'truncated']);
  const e = await events.waitFor((x): x is Extract<HandoverEvent, { type: 'error' }> => x.type === 'error');
  t.is(e.code, 'EHANDOVER');
  t.regex(e.message, /2 of 4 bytes/);
});

test('a pid message without an fd is a typed error', async (t) => {
  const dir = tempDir(t);
  const events = new Collector<HandoverEvent>();
  const listener = HandoverListener.listen(dir, events.push);
  t.teardown(() => listener.close());
  new Peer(t, [listener.path, 'nofd']);
  const e = await events.waitFor((x): x is Extract<HandoverEvent, { type: 'error' }> => x.type === 'error');
  t.is(e.code, 'EHANDOVER');
  t.regex(e.message, /no file descriptor/);
});

test('a non-socket file where the socket goes is refused, naming the path', (t) => {
  const dir = tempDir(t);
  writeFileSync(join(dir, 'lazy-pages.socket'), 'x');
  const e = t.throws(() => HandoverListener.listen(dir, () => {}), { instanceOf: NativeError });
  t.is(e?.code, 'ESOCKET');
  t.true(e?.message.includes(dir));
});
