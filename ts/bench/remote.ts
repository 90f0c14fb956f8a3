/**
 * Remote lazy pages over loopback: background throughput of the page-server client, and how long
 * a fault (urgent single-page fetch) takes alone and while a background stream is running.
 * The server runs in a child process so that client and server do not share one event loop.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Checkpoint, writeSyntheticCheckpoint, type PageRange } from '../images/index.js';
import { RemotePageSource } from '../pagesource/remote.js';

export interface RemoteBenchOptions {
  /** Checkpoint size (default 1 GiB); ignored when `imagesDir` is given. */
  sizeBytes?: number;
  /** Use this checkpoint instead of writing a synthetic one. */
  imagesDir?: string;
  /** Background runs; the median is reported (default 3). */
  runs?: number;
  /** Pages per background fetch (default 256 = 1 MiB) and fetches kept in flight (default 16). */
  chunkPages?: number;
  inFlight?: number;
  /** Urgent single-page fetches per latency measurement (default 2000). */
  urgentSamples?: number;
  log?: (line: string) => void;
}

export interface RemoteBenchResult {
  bytes: number;
  backgroundMBps: number[];
  backgroundMedianMBps: number;
  /** Microseconds. */
  urgentAlone: { p50: number; p99: number };
  urgentUnderLoad: { p50: number; p99: number };
  /** The same single-page fetch sent on the background connection under load: what the urgent lane saves. */
  sameLaneUnderLoad: { p50: number; p99: number };
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};
const summary = (xs: number[]) => ({ p50: Math.round(pct(xs, 50) * 10) / 10, p99: Math.round(pct(xs, 99) * 10) / 10 });

/** Every lazy page of the checkpoint as (pid, range) work items cut into `chunk`-page fetches. */
function chunks(ck: Checkpoint, chunk: number): { pid: number; vaddr: bigint; pages: number }[] {
  const out: { pid: number; vaddr: bigint; pages: number }[] = [];
  for (const p of ck.processes) {
    for (const r of p.lazyRanges as PageRange[]) {
      for (let a = r.start; a < r.end; a += BigInt(chunk) * 4096n) {
        const left = Number((r.end - a) / 4096n);
        out.push({ pid: p.pid, vaddr: a, pages: Math.min(chunk, left) });
      }
    }
  }
  return out;
}

/** Starts the page server in a child process; resolves with its port and a kill function. */
export async function serverProcess(imagesDir: string): Promise<{ port: number; stop: () => void }> {
  const mod = new URL('../pageserver/index.js', import.meta.url).href;
  const code = `import { startPageServer } from ${JSON.stringify(mod)};
    const s = await startPageServer({ imagesDir: process.argv[1] });
    process.stdout.write('port ' + s.port + '\\n');
    process.on('SIGTERM', () => s.close().then(() => process.exit(0)));`;
  const child = spawn(process.execPath, [...process.execArgv, '--input-type=module', '-e', code, '--', imagesDir], { stdio: ['ignore', 'pipe', 'inherit'] });
  const stop = () => {
    if (child.exitCode === null && child.pid) process.kill(child.pid, 'SIGKILL');
  };
  try {
    const port = await new Promise<number>((resolve, reject) => {
      let out = '';
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /port (\d+)/.exec(out);
        if (m) resolve(Number(m[1]));
      });
      child.once('exit', (c) => reject(new Error(`bench page server exited with ${c} before listening`)));
    });
    return { port, stop };
  } catch (e) {
    stop();
    throw e;
  }
}

/** Runs `work` items with at most `inFlight` outstanding; resolves when all are done or `stop()` says so. */
async function stream(src: RemotePageSource, work: { pid: number; vaddr: bigint; pages: number }[], inFlight: number, stop = () => false): Promise<number> {
  let next = 0;
  let bytes = 0;
  const lane = async () => {
    while (next < work.length && !stop()) {
      const w = work[next++]!;
      const b = await src.fetch(w.pid, w.vaddr, w.pages, false);
      bytes += b.length; // not `bytes += await …`: that reads `bytes` before the await and loses concurrent sums
    }
  };
  await Promise.all(Array.from({ length: inFlight }, lane));
  return bytes;
}

async function urgentLatencies(src: RemotePageSource, pages: { pid: number; vaddr: bigint }[], n: number, urgent: boolean): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const pg = pages[(i * 7919) % pages.length]!;
    const t0 = process.hrtime.bigint();
    await src.fetch(pg.pid, pg.vaddr, 1, urgent);
    out.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
  return out;
}

export async function benchRemote(o: RemoteBenchOptions = {}): Promise<RemoteBenchResult> {
  const log = o.log ?? (() => undefined);
  const tmp = o.imagesDir ? undefined : mkdtempSync(join(tmpdir(), 'lazy-bench-remote-'));
  try {
    const dir = o.imagesDir ?? tmp!;
    if (!o.imagesDir) {
      log(`writing a ${((o.sizeBytes ?? 2 ** 30) / 2 ** 20).toFixed(0)} MiB synthetic checkpoint`);
      await writeSyntheticCheckpoint({ out: dir, size: BigInt(o.sizeBytes ?? 2 ** 30), vmas: 1 });
    }
    const ck = await Checkpoint.open(dir);
    const work = chunks(ck, o.chunkPages ?? 256);
    const single = chunks(ck, 1);
    const inFlight = o.inFlight ?? 16;
    const samples = o.urgentSamples ?? 2000;
    const server = await serverProcess(dir);
    try {
      const mbps: number[] = [];
      let total = 0;
      for (let i = 0; i < (o.runs ?? 3); i++) {
        const src = await RemotePageSource.connect({ address: '127.0.0.1', port: server.port });
        const t0 = performance.now();
        total = await stream(src, work, inFlight);
        const s = (performance.now() - t0) / 1000;
        await src.close();
        mbps.push(total / 1e6 / s);
        log(`background run ${i + 1}: ${(total / 2 ** 20).toFixed(0)} MiB in ${s.toFixed(2)} s = ${mbps[i]!.toFixed(0)} MB/s`);
      }

      const src = await RemotePageSource.connect({ address: '127.0.0.1', port: server.port });
      try {
        const alone = await urgentLatencies(src, single, samples, true);
        let stop = false;
        // Loop the background stream until the latency samples are taken.
        const bg = (async () => {
          while (!stop) await stream(src, work, inFlight, () => stop);
        })();
        await new Promise((r) => setTimeout(r, 50));
        const loaded = await urgentLatencies(src, single, samples, true);
        const sameLane = await urgentLatencies(src, single, Math.min(200, samples), false);
        stop = true;
        await bg;
        const r: RemoteBenchResult = {
          bytes: total,
          backgroundMBps: mbps.map((x) => Math.round(x)),
          backgroundMedianMBps: Math.round(pct(mbps, 50)),
          urgentAlone: summary(alone),
          urgentUnderLoad: summary(loaded),
          sameLaneUnderLoad: summary(sameLane),
        };
        log(`urgent 4 KiB fetch alone: p50 ${r.urgentAlone.p50} µs, p99 ${r.urgentAlone.p99} µs`);
        log(`urgent 4 KiB fetch during background: p50 ${r.urgentUnderLoad.p50} µs, p99 ${r.urgentUnderLoad.p99} µs`);
        log(`same fetch on the background connection: p50 ${r.sameLaneUnderLoad.p50} µs, p99 ${r.sameLaneUnderLoad.p99} µs`);
        return r;
      } finally {
        await src.close().catch(() => undefined);
      }
    } finally {
      server.stop();
    }
  } finally {
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  }
}
