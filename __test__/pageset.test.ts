/**
 * PageSet (which lazy pages a process is still owed, which are in flight) kept as runs: the same
 * answers as the byte maps it replaced, on thousands of random operations, in O(runs) memory.
 */
import test from 'ava';

import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Checkpoint, PE_LAZY } from '../ts/images/index.js';
import { SYNTH_BASE_ADDR, prng } from '../ts/images/synth.js';
import { ProcessState } from '../ts/daemon/process-state.js';
import { ImageIndex, PageSet } from '../ts/daemon/pageset.js';
import { RunSet } from '../ts/daemon/runset.js';
import { hugeVmaCheckpoint } from './images-helpers.js';

const P = 4096n;

/** The byte-map PageSet this project used before (verbatim semantics): the model to compare with. */
class BytePageSet {
  readonly left: Uint8Array;
  readonly flying: Uint8Array;
  leftCount: number;
  private hint = 0;
  constructor(total: number, from?: BytePageSet) {
    if (from) {
      this.left = from.left.slice();
      this.flying = new Uint8Array(total);
      this.leftCount = from.leftCount;
    } else {
      this.left = new Uint8Array(total).fill(1);
      this.flying = new Uint8Array(total);
      this.leftCount = total;
    }
  }
  get remaining(): number {
    return this.leftCount;
  }
  isLeft(page: number): boolean {
    return this.left[page] === 1;
  }
  isFlying(page: number): boolean {
    return this.flying[page] === 1;
  }
  settle(first: number, n: number): number {
    let settled = 0;
    const end = Math.min(first + n, this.left.length);
    for (let p = Math.max(first, 0); p < end; p++) {
      if (this.left[p] === 1) {
        this.left[p] = 0;
        settled++;
      }
      this.flying[p] = 0;
    }
    this.leftCount -= settled;
    return settled;
  }
  fly(first: number, n: number): void {
    this.flying.fill(1, first, first + n);
  }
  land(first: number, n: number): void {
    this.flying.fill(0, first, first + n);
    if (first < this.hint) this.hint = first;
  }
  nextRun(from: number, to: number, max: number, overSettled = false): [number, number] | undefined {
    const left = this.left;
    const flying = this.flying;
    const fromHint = from <= this.hint;
    let p = fromHint ? this.hint : from;
    while (p < to && (left[p] === 0 || flying[p] === 1)) p++;
    if (fromHint) this.hint = p;
    if (p >= to) return undefined;
    const start = p;
    const limit = Math.min(to, start + max);
    if (overSettled) {
      while (p < limit && flying[p] === 0) p++;
      while (p > start + 1 && left[p - 1] === 0) p--;
    } else {
      while (p < limit && left[p] === 1 && flying[p] === 0) p++;
    }
    return [start, p - start];
  }
}

const indexOf = (pages: number) => new ImageIndex([{ start: 0x10000000n, end: 0x10000000n + BigInt(pages) * P, location: { kind: 'remote' } }]);

/** Runs of a RunSet are sorted, non-empty, disjoint and never touch; `size` is their total. */
function checkRuns(t: import('ava').ExecutionContext, s: RunSet): void {
  const runs = s.toArray();
  let total = 0;
  for (let i = 0; i < runs.length; i++) {
    const [a, b] = runs[i]!;
    if (!(a < b)) t.fail(`empty run [${a}, ${b})`);
    if (i > 0 && !(runs[i - 1]![1] < a)) t.fail(`runs ${i - 1} and ${i} overlap or touch`);
    total += b - a;
  }
  t.is(s.size, total);
  t.is(s.runs, runs.length);
}

test('RunSet: add/remove/has/nextIn/nextOut/lastIn agree with a byte map (block splits included)', (t) => {
  for (const [seed, total, maxLen] of [[1, 64, 8], [2, 3000, 3], [3, 5000, 40], [4, 20000, 2]] as const) {
    const rand = prng(seed);
    const int = (n: number) => Math.floor(rand() * n);
    const model = new Uint8Array(total);
    const s = new RunSet();
    for (let op = 0; op < 6000; op++) {
      const a = int(total);
      const b = Math.min(total, a + 1 + int(maxLen));
      if (rand() < 0.55) {
        let want = 0;
        for (let p = a; p < b; p++) if (!model[p]) (model[p] = 1), want++;
        if (s.add(a, b) !== want) t.fail(`seed ${seed} op ${op}: add(${a}, ${b}) count`);
      } else {
        let want = 0;
        for (let p = a; p < b; p++) if (model[p]) (model[p] = 0), want++;
        if (s.remove(a, b) !== want) t.fail(`seed ${seed} op ${op}: remove(${a}, ${b}) count`);
      }
      if (op % 97 === 0) {
        checkRuns(t, s);
        for (let k = 0; k < 20; k++) {
          const p = int(total);
          if (s.has(p) !== (model[p] === 1)) t.fail(`has(${p})`);
          let ni = p;
          while (ni < total && !model[ni]) ni++;
          t.is(s.nextIn(p), ni < total ? ni : Infinity);
          let no = p;
          while (no < total && model[no]) no++;
          t.is(s.nextOut(p), no);
          let li = p;
          while (li >= 0 && !model[li]) li--;
          t.is(s.lastIn(p), li >= 0 ? li : -Infinity);
        }
      }
    }
    checkRuns(t, s);
    t.log(`seed ${seed}: ${s.runs} runs at the end`);
  }
});

test('RunSet: a clone is independent of its source', (t) => {
  const a = RunSet.range(0, 100);
  a.remove(10, 20);
  const b = a.clone();
  a.remove(0, 100);
  t.is(a.size, 0);
  t.is(b.size, 90);
  t.deepEqual(b.toArray(), [[0, 10], [20, 100]]);
});

test('PageSet answers exactly as the byte maps did over thousands of random operations (forks included)', (t) => {
  let checks = 0;
  for (const [seed, total] of [[11, 1], [12, 7], [13, 64], [14, 300], [15, 1000], [16, 4096]] as const) {
    const rand = prng(seed);
    const int = (n: number) => Math.floor(rand() * n);
    const idx = indexOf(total);
    let pairs: { a: PageSet; m: BytePageSet }[] = [{ a: new PageSet(idx), m: new BytePageSet(total) }];
    const span = () => {
      // Mostly short requests (faults, chunks), sometimes long ones, sometimes running past the end.
      const first = int(total);
      const n = rand() < 0.8 ? 1 + int(8) : 1 + int(total);
      return [first, n] as const;
    };
    for (let op = 0; op < 5000; op++) {
      const { a, m } = pairs[int(pairs.length)]!;
      const r = rand();
      const where = `total ${total} seed ${seed} op ${op}`;
      if (r < 0.2) {
        const [f, n] = span();
        if (a.settle(f, n) !== m.settle(f, n)) t.fail(`${where}: settle(${f}, ${n})`);
      } else if (r < 0.4) {
        const [f, n] = span();
        a.fly(f, n);
        m.fly(f, n);
      } else if (r < 0.55) {
        const [f, n] = span();
        a.land(f, n);
        m.land(f, n);
      } else if (r < 0.95) {
        const from = rand() < 0.5 ? 0 : int(total + 1);
        const to = rand() < 0.5 ? total : from + int(total - from + 1);
        const max = rand() < 0.1 ? 0 : 1 + int(rand() < 0.5 ? 8 : 2 * total);
        const over = rand() < 0.5;
        const got = a.nextRun(from, to, max, over);
        const want = m.nextRun(from, to, max, over);
        t.deepEqual(got, want, `${where}: nextRun(${from}, ${to}, ${max}, ${over})`);
        checks++;
        // What the daemon does with a run: request it, then mostly install it, sometimes retry.
        if (got && got[1] > 0 && rand() < 0.7) {
          a.fly(got[0], got[1]);
          m.fly(got[0], got[1]);
        }
      } else if (r < 0.97 && pairs.length < 6) {
        pairs.push({ a: new PageSet(idx, a), m: new BytePageSet(total, m) });
      } else if (pairs.length > 1) {
        pairs = pairs.filter((p) => p.a !== a);
      }
      if (a.remaining !== m.remaining) t.fail(`${where}: remaining ${a.remaining} != ${m.remaining}`);
      if (op % 50 === 0) {
        for (let p = 0; p < Math.min(total, 256); p++) {
          const q = total <= 256 ? p : int(total);
          if (a.isLeft(q) !== m.isLeft(q) || a.isFlying(q) !== m.isFlying(q)) t.fail(`${where}: page ${q} state`);
        }
      }
    }
    // Drain every survivor the way the daemon's background does, and compare every step.
    for (const { a, m } of pairs) {
      for (let guard = 0; guard < 4 * total + 10; guard++) {
        const over = guard % 2 === 0;
        const got = a.nextRun(0, total, 16, over);
        t.deepEqual(got, m.nextRun(0, total, 16, over));
        if (!got) {
          // Only in-flight pages are left: they land, and are asked for again.
          if (a.remaining === 0) break;
          a.land(0, total);
          m.land(0, total);
          continue;
        }
        a.fly(got[0], got[1]);
        m.fly(got[0], got[1]);
        t.is(a.settle(got[0], got[1]), m.settle(got[0], got[1]));
      }
      t.is(a.remaining, 0);
      t.is(m.remaining, 0);
    }
  }
  t.true(checks > 10000);
});

test('in-flight pages of the parent are owed to a forked child, and not in flight there', (t) => {
  const a = new PageSet(indexOf(16));
  a.fly(4, 4);
  a.settle(0, 2);
  const c = new PageSet(a.index, a);
  t.true(a.isFlying(5));
  t.false(c.isFlying(5));
  t.true(c.isLeft(5));
  t.is(c.remaining, 14);
  t.deepEqual(a.nextRun(0, 16, 100), [2, 2]);
  t.deepEqual(c.nextRun(0, 16, 100), [2, 14]);
  // overSettled: runs over settled pages, stops before in-flight ones, never ends on a settled page.
  a.land(4, 4);
  a.settle(3, 1);
  a.fly(9, 1);
  a.settle(7, 2);
  t.deepEqual(a.nextRun(0, 16, 100, true), [2, 5]);
  t.deepEqual(a.nextRun(0, 16, 100, false), [2, 1]);
});

test('a process with 2^29 lazy pages costs O(ranges) memory (fork included)', async (t) => {
  // The attack's checkpoint (a 34-byte pagemap, 2^29 lazy pages in a 2 TiB VMA), opened as if this
  // machine could back it (by default Checkpoint.open refuses it: images-bad.test.ts). The byte maps
  // took 2 bytes a page here: 1 GiB at hand-over, 512 MiB more per fork.
  const dir = mkdtempSync(path.join(os.tmpdir(), 'lp-2tib-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const pages = 2 ** 29;
  await hugeVmaCheckpoint(dir, { pid: 1_150_000, vmaPages: BigInt(pages), entries: [{ vaddr: SYNTH_BASE_ADDR, nr: BigInt(pages), flags: PE_LAZY }] });
  const ck = await Checkpoint.open(dir, { maxProcessMemory: 4n << 40n });
  const before = process.memoryUsage().rss;
  const st = ProcessState.attach(1, ck.processes[0]!);
  t.is(st.remaining, pages);
  // 1000 random faults, and a background chunk in flight.
  const rand = prng(7);
  const faulted = new Set<number>();
  for (let i = 0; i < 1000; i++) {
    const p = Math.floor(rand() * pages);
    faulted.add(p);
    st.settleImage(SYNTH_BASE_ADDR + BigInt(p) * P, P);
  }
  const c = st.nextChunk(256)!;
  st.pages.fly(c.firstPage, c.pages);
  const children = Array.from({ length: 16 }, (_, i) => st.fork(2 + i));
  const grew = process.memoryUsage().rss - before;
  t.is(st.remaining, pages - faulted.size);
  t.true(st.pages.runs <= faulted.size + 2, `${st.pages.runs} runs`);
  for (const ch of children) {
    t.is(ch.remaining, st.remaining);
    t.true(ch.pages.runs <= faulted.size + 1);
  }
  t.log(`RSS grew ${(grew / 2 ** 20).toFixed(1)} MiB for a 2^29-page process and 16 forks (${st.pages.runs} runs each)`);
  t.true(grew < 64 * 2 ** 20, `RSS grew ${grew} bytes`);
  // Everything still works at that size: the child's first chunk is the parent's in-flight one.
  t.deepEqual(children[0]!.nextChunk(256), { ...c });
  children[0]!.applyDrop(SYNTH_BASE_ADDR, SYNTH_BASE_ADDR + BigInt(pages) * P);
  t.is(children[0]!.remaining, 0);
  t.is(children[1]!.remaining, pages - faulted.size);
});

test('above 2^32 pages: a process the machine could back is served in O(ranges), no "Invalid typed array length"', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'lp-16tib-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const pages = 2 ** 32 + 1;
  await hugeVmaCheckpoint(dir, { pid: 1_150_001, vmaPages: 1n << 33n, entries: [{ vaddr: SYNTH_BASE_ADDR, nr: BigInt(pages), flags: PE_LAZY }] });
  const ck = await Checkpoint.open(dir, { maxProcessMemory: 1n << 60n });
  const st = ProcessState.attach(1, ck.processes[0]!);
  const child = st.fork(2);
  t.is(st.remaining, pages);
  t.is(child.settleImage(SYNTH_BASE_ADDR + BigInt(pages - 1) * P, P), 1);
  t.is(child.remaining, pages - 1);
  t.deepEqual(child.nextChunk(256), { firstPage: 0, pages: 256, live: SYNTH_BASE_ADDR, image: SYNTH_BASE_ADDR, range: 0 });
  t.is(st.pages.runs + child.pages.runs, 2);
});

test('nextRun and settle on a 1 GiB process (262144 pages) after 10k random faults stay fast', (t) => {
  const pages = 262144;
  const idx = indexOf(pages);
  const s = new PageSet(idx);
  const rand = prng(42);
  const t0 = performance.now();
  for (let i = 0; i < 10_000; i++) s.settle(Math.floor(rand() * pages), 1);
  const t1 = performance.now();
  const fragmented = s.runs;
  // A background drain as the daemon runs it locally: 256-page chunks over settled pages, a queue of 8.
  let chunks = 0;
  const queue: [number, number][] = [];
  let tNext = 0;
  let tSettle = 0;
  for (;;) {
    while (queue.length < 8) {
      const a = performance.now();
      const c = s.nextRun(0, pages, 256, true);
      tNext += performance.now() - a;
      if (!c) break;
      s.fly(c[0], c[1]);
      queue.push(c);
      chunks++;
    }
    const c = queue.shift();
    if (!c) break;
    const a = performance.now();
    s.settle(c[0], c[1]);
    tSettle += performance.now() - a;
  }
  t.is(s.remaining, 0);
  // The same drain without overSettled (remote chunks): one run per owed fragment.
  const r = new PageSet(idx);
  const rand2 = prng(42);
  for (let i = 0; i < 10_000; i++) r.settle(Math.floor(rand2() * pages), 1);
  const t2 = performance.now();
  let remoteChunks = 0;
  for (let c = r.nextRun(0, pages, 256); c; c = r.nextRun(0, pages, 256)) {
    r.fly(c[0], c[1]);
    r.settle(c[0], c[1]);
    remoteChunks++;
  }
  const t3 = performance.now();
  t.is(r.remaining, 0);
  t.log(`10k random faults (settle 1 page each): ${(t1 - t0).toFixed(1)} ms, ${((t1 - t0) * 1000 / 10_000).toFixed(2)} us each, ${fragmented} runs after`);
  t.log(`local drain: ${chunks} chunks, nextRun ${(tNext * 1000 / chunks).toFixed(2)} us each, settle ${(tSettle * 1000 / chunks).toFixed(2)} us each`);
  t.log(`remote drain: ${remoteChunks} chunks (nextRun + fly + settle) ${((t3 - t2) * 1000 / remoteChunks).toFixed(2)} us each, ${(t3 - t2).toFixed(1)} ms in all`);
  // Generous bounds (a shared 2-core VM): O(pages) per call would be ~100x these.
  t.true(t1 - t0 < 1000);
  t.true(tNext + tSettle < 1000);
  t.true(t3 - t2 < 2000);
});
