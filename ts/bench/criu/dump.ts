/**
 * Checkpointing the program with the real CRIU: a plain `criu dump` (local variant: the pages go
 * to pages-*.img and one dump is restored run after run), or `criu dump --lazy-pages` (remote
 * variant: CRIU keeps the memory and serves it as the page server, over one TCP connection, then exits).
 */
import { once } from 'node:events';
import { createServer } from 'node:net';
import { join } from 'node:path';
import type { Readable } from 'node:stream';

import { BenchFailure, tail, type Started } from './program.js';
import type { Procs, Tracked } from './procs.js';

/** `criu dump -t PID -D dir`: the program is gone afterwards. */
export async function plainDump(procs: Procs, criu: string, prog: Started, imagesDir: string): Promise<void> {
  const log = join(imagesDir, 'dump.log');
  const d = procs.spawn('criu dump', criu, ['dump', '-t', String(prog.pids[0]), '-D', imagesDir, '-o', 'dump.log', '-v2'], {
    stdio: 'ignore', // its words go to dump.log
  });
  const timer = setTimeout(() => void procs.stop(d), 300_000);
  const ex = await d.exited.finally(() => clearTimeout(timer));
  if (ex.code !== 0) throw new BenchFailure(`criu dump failed (${ex.code ?? ex.signal}): ${tail(log, 3)}`);
  await waitGone(prog.main, 10_000, 'the dumped program is still running after criu dump');
}

export interface LazyDump {
  dump: Tracked;
  port: number;
}

/** A free TCP port on 127.0.0.1 (asked of the kernel, then released for CRIU to bind). */
async function freePort(): Promise<number> {
  const s = createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/**
 * `criu dump -t PID -D dir --lazy-pages --address 127.0.0.1 --port P [extra…]` (`--tls …`): resolves once CRIU has
 * written the images and listens (its --status-fd byte). The program stays frozen until the
 * pages are all served; then CRIU kills it and exits.
 */
export async function lazyDump(procs: Procs, criu: string, prog: Started, imagesDir: string, extra: string[] = []): Promise<LazyDump> {
  let lastErr = '';
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const dump = procs.spawn(
      'criu dump --lazy-pages',
      criu,
      ['dump', '-t', String(prog.pids[0]), '-D', imagesDir, '--lazy-pages', '--address', '127.0.0.1', '--port', String(port), '--status-fd', '3', '-o', 'dump.log', '-v2', ...extra],
      { stdio: ['ignore', 'ignore', 'ignore', 'pipe'] },
    );
    const ready = await statusByte(dump, 300_000);
    if (ready) return { dump, port };
    lastErr = tail(join(imagesDir, 'dump.log'), 3);
    if (!/bind|Address already in use/i.test(lastErr) || prog.main.exit) break; // only a lost port race is retried
  }
  throw new BenchFailure(`criu dump --lazy-pages failed: ${lastErr}`);
}

/** Waits for the one byte a CRIU-style --status-fd 3 writes; false if the process exits first. */
export async function statusByte(t: Tracked, timeoutMs: number): Promise<boolean> {
  const pipe = t.child.stdio[3] as Readable | undefined;
  if (!pipe) throw new Error(`${t.name}: no status pipe`);
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      new Promise<boolean>((res) => pipe.once('data', () => res(true))),
      t.exited.then(() => false, () => false),
      new Promise<boolean>((_, rej) => {
        timer = setTimeout(() => rej(new BenchFailure(`${t.name}: not ready after ${timeoutMs / 1000} s`)), timeoutMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
    pipe.destroy();
  }
}

/** Waits until `t` has exited, or fails with `what`. */
export async function waitGone(t: Tracked, timeoutMs: number, what: string): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    t.exited.catch(() => {}),
    new Promise((_, rej) => {
      timer = setTimeout(() => rej(new BenchFailure(what)), timeoutMs);
    }),
  ]).finally(() => clearTimeout(timer));
}
