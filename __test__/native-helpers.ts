// Shared helpers of the native tests: the C test peer (compiled once per test process), line I/O with it,
// the expected page contents and an event collector. Not a test file itself (no `.test.ts`).
import { execFileSync, spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ExecutionContext } from 'ava';
import { EventLoop, HandoverListener, type HandoverEvent, type NativeEvent } from '../ts/native/index.js';

const here = dirname(fileURLToPath(import.meta.url));
export const PAGE = 4096;

let peerPath: string | undefined;
/** Compiles crates/uffd-native/tests/peer.c with gcc -O2 into a temp dir (once). */
export function peerBinary(): string {
  if (!peerPath) {
    const dir = mkdtempSync(join(tmpdir(), 'uffd-peer-'));
    peerPath = join(dir, 'peer');
    execFileSync('gcc', ['-O2', '-o', peerPath, join(here, '..', 'crates', 'uffd-native', 'tests', 'peer.c')]);
    process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  }
  return peerPath;
}

/** A fresh temp dir removed at teardown. */
export function tempDir(t: ExecutionContext): string {
  const d = mkdtempSync(join(tmpdir(), 'uffd-test-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

/** A running peer, killed by pid at teardown. */
export class Peer {
  readonly child: ChildProcessWithoutNullStreams;
  private lines: string[] = [];
  private waiters: ((l: string) => void)[] = [];
  private buf = '';
  constructor(t: ExecutionContext, args: string[]) {
    this.child = spawn(peerBinary(), args);
    const pid = this.child.pid;
    t.teardown(() => {
      if (pid !== undefined) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }
    });
    this.child.stdout.setEncoding('utf8');
    this.child.stdout.on('data', (d: string) => {
      this.buf += d;
      let i: number;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 1);
        const w = this.waiters.shift();
        if (w) w(line);
        else this.lines.push(line);
      }
    });
  }
  get pid(): number {
    return this.child.pid ?? -1;
  }
  /** Next output line (rejects after `ms`). */
  next(ms = 5000): Promise<string> {
    const l = this.lines.shift();
    if (l !== undefined) return Promise.resolve(l);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('peer: no output line in time')), ms);
      this.waiters.push((line) => {
        clearTimeout(timer);
        resolve(line);
      });
    });
  }
  /** Sends a command and returns its reply line. */
  cmd(line: string, ms = 5000): Promise<string> {
    this.child.stdin.write(line + '\n');
    return this.next(ms);
  }
}

/** FNV-1a 64 of a page, as the peer prints it (16 hex digits). */
export function fnv(page: Uint8Array): string {
  let h = 0xcbf29ce484222325n;
  for (const b of page) {
    h ^= BigInt(b);
    h = (h * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return h.toString(16).padStart(16, '0');
}

/** Deterministic image content: page i byte j = (i * 31 + j * 7 + 1) & 0xff. */
export function patternImage(pages: number): Buffer {
  const b = Buffer.alloc(pages * PAGE);
  for (let i = 0; i < pages; i++) for (let j = 0; j < PAGE; j++) b[i * PAGE + j] = (i * 31 + j * 7 + 1) & 0xff;
  return b;
}

/** Collects events; `waitFor` resolves with the first (already seen or future) event matching `pred`. */
export class Collector<E> {
  readonly all: E[] = [];
  private waiters: { pred: (e: E) => boolean; resolve: (e: E) => void }[] = [];
  push = (e: E): void => {
    this.all.push(e);
    this.waiters = this.waiters.filter((w) => {
      if (w.pred(e)) {
        w.resolve(e);
        return false;
      }
      return true;
    });
  };
  waitFor<T extends E>(pred: (e: E) => e is T, ms?: number): Promise<T>;
  waitFor(pred: (e: E) => boolean, ms?: number): Promise<E>;
  waitFor(pred: (e: E) => boolean, ms = 5000): Promise<E> {
    const seen = this.all.find(pred);
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no matching event in ${ms} ms; got ${this.all.length}`)), ms);
      this.waiters.push({
        pred,
        resolve: (e) => {
          clearTimeout(timer);
          resolve(e);
        },
      });
    });
  }
}

/**
 * A C peer with `pages` registered pages at `base`, handed over through the real socket (as CRIU
 * does), and a fresh event loop that owns its uffd and collects every event. All closed in teardown.
 */
export async function handedOverPeer(t: ExecutionContext, base: bigint, pages: number) {
  const dir = tempDir(t);
  const hs = new Collector<HandoverEvent>();
  const listener = HandoverListener.listen(dir, hs.push);
  t.teardown(() => listener.close());
  const peer = new Peer(t, [listener.path, base.toString(16), String(pages)]);
  const task = await hs.waitFor((e): e is Extract<HandoverEvent, { type: 'task' }> => e.type === 'task');
  await peer.next();
  const events = new Collector<NativeEvent>();
  const loop = new EventLoop((batch) => batch.forEach(events.push));
  t.teardown(() => loop.close());
  const procId = loop.addProcess(task.uffd, task.pid);
  return { dir, peer, task, loop, events, procId };
}


/**
 * What `served` reports of one process said so far: copied image bytes merged into [start, end) runs,
 * zero pages, and the live address of the last page served.
 */
export function servedSoFar(events: readonly NativeEvent[], procId: number): { runs: [number, number][]; zeroPages: number; last?: bigint } {
  const spans: [number, number][] = [];
  let zeroPages = 0;
  let last: bigint | undefined;
  for (const e of events) {
    if (e.type !== 'served' || e.procId !== procId) continue;
    for (let i = 0; i < e.images.length; i++) spans.push([e.images[i]!, e.images[i]! + e.lens[i]!]);
    zeroPages += e.zeroPages;
    last = e.live;
  }
  spans.sort((a, b) => a[0] - b[0]);
  const runs: [number, number][] = [];
  for (const [a, b] of spans) {
    const r = runs[runs.length - 1];
    if (r && r[1] === a) r[1] = b;
    else runs.push([a, b]);
  }
  return { runs, zeroPages, last };
}
