/** The per-process state machine on its own: live vs image addresses through every event. */
import test from 'ava';

import type { PageRange, ProcessImage } from '../ts/images/index.js';
import { LiveMap } from '../ts/daemon/livemap.js';
import { ImageIndex, PageSet } from '../ts/daemon/pageset.js';
import { ProcessState } from '../ts/daemon/process-state.js';

const P = 4096n;
const file = '/x/pages-1.img';

function image(ranges: [bigint, bigint][], vmas: [bigint, bigint][] = ranges): ProcessImage {
  let off = 0n;
  const lazyRanges: PageRange[] = ranges.map(([s, e]) => {
    const r: PageRange = { start: s, end: e, location: { kind: 'file', file, offset: off } };
    off += e - s;
    return r;
  });
  return {
    pid: 100,
    ppid: 0,
    pgid: 100,
    sid: 100,
    threads: [100],
    state: 'alive',
    vmas: vmas.map(([start, end]) => ({ start, end, pgoff: 0n, shmid: 0n, prot: 3, flags: 0x22, status: 0x201, madv: 0n, lazy: true })),
    pagesId: 1,
    lazyRanges,
    eagerRanges: [],
    lookup: () => ({ kind: 'zero' }),
    lazyBytes: off,
  } as unknown as ProcessImage;
}

const table = (st: ProcessState) => st.table(() => 7);

test('adjacent CRIU entries in one VMA merge into one range; a VMA boundary keeps them apart', (t) => {
  const idx = new ImageIndex(
    [
      { start: 0x1000n, end: 0x3000n, location: { kind: 'file', file, offset: 0n } },
      { start: 0x3000n, end: 0x5000n, location: { kind: 'file', file, offset: 0x2000n } },
      { start: 0x5000n, end: 0x6000n, location: { kind: 'file', file, offset: 0x4000n } },
    ],
    new Set([0x1000n, 0x5000n]),
  );
  t.is(idx.ranges.length, 2);
  t.is(idx.ranges[0].pages, 4);
  t.is(idx.pageOf(0x5000n), 4);
  t.is(idx.pageOf(0x6000n), -1);
});

test('served pages are settled by image address, once', (t) => {
  const st = ProcessState.attach(1, image([[0x10000n, 0x20000n]]));
  t.is(st.remaining, 16);
  t.is(st.settleImage(0x11000n, 2n * P), 2);
  t.is(st.settleImage(0x11000n, 2n * P), 0);
  t.is(st.remaining, 14);
});

test('remap moves live addresses and keeps image addresses (the seed patch)', (t) => {
  const st = ProcessState.attach(1, image([[0x10000n, 0x20000n]]));
  st.applyRemap(0x14000n, 0x90000n, 0x4000n);
  t.deepEqual(table(st), [
    { liveStart: 0x10000n, liveEnd: 0x14000n, imageStart: 0x10000n, kind: 'file', imageId: 7, fileOffset: 0n },
    { liveStart: 0x18000n, liveEnd: 0x20000n, imageStart: 0x18000n, kind: 'file', imageId: 7, fileOffset: 0x8000n },
    { liveStart: 0x90000n, liveEnd: 0x94000n, imageStart: 0x14000n, kind: 'file', imageId: 7, fileOffset: 0x4000n },
  ]);
  // a fault at the new place is served from the old image address
  t.is(st.live.find(0x91000n)?.imageStart, 0x14000n);
  t.is(st.live.find(0x15000n), undefined);
});

test('swapping two maps through a scratch address (three MREMAP_FIXED) makes the data follow the maps', (t) => {
  const st = ProcessState.attach(1, image([[0x10000n, 0x12000n], [0x20000n, 0x22000n]], [[0x10000n, 0x12000n], [0x20000n, 0x22000n]]));
  st.applyRemap(0x10000n, 0x50000n, 0x2000n); // A -> scratch
  st.applyRemap(0x20000n, 0x10000n, 0x2000n); // B -> A's place
  st.applyRemap(0x50000n, 0x20000n, 0x2000n); // scratch -> B's place
  t.is(st.live.find(0x10000n)?.imageStart, 0x20000n);
  t.is(st.live.find(0x21000n)?.imageStart, 0x10000n + 0x1000n - 0x1000n);
  t.is(st.remaining, 4);
});

test('unmap and remove drop what they cover: nothing is owed there any more', (t) => {
  const st = ProcessState.attach(1, image([[0x10000n, 0x20000n]]));
  st.applyDrop(0x12000n, 0x14000n);
  t.is(st.remaining, 14);
  t.is(table(st).length, 2);
  t.is(st.live.find(0x13000n), undefined);
});

test('fork copies what is owed, in-flight pages included, and the two then diverge', (t) => {
  const st = ProcessState.attach(1, image([[0x10000n, 0x20000n]]));
  const c = st.nextChunk(4)!;
  st.pages.fly(c.firstPage, c.pages);
  st.settleImage(0x1f000n, P);
  const child = st.fork(2);
  t.is(child.remaining, 15);
  t.is(child.parent, 1);
  t.deepEqual(child.nextChunk(4), { firstPage: 0, pages: 4, live: 0x10000n, image: 0x10000n, range: 0 });
  child.applyDrop(0x10000n, 0x20000n);
  t.is(child.remaining, 0);
  t.is(st.remaining, 15);
});

test('background chunks skip in-flight and settled pages and stay inside one segment', (t) => {
  const st = ProcessState.attach(1, image([[0x10000n, 0x20000n]]));
  st.settleImage(0x10000n, 2n * P);
  const a = st.nextChunk(4)!;
  t.is(a.live, 0x12000n);
  t.is(a.pages, 4);
  st.pages.fly(a.firstPage, a.pages);
  const b = st.nextChunk(100)!;
  t.is(b.live, 0x16000n);
  t.is(b.pages, 10);
  st.applyRemap(0x18000n, 0x80000n, 0x8000n);
  st.pages.land(a.firstPage, a.pages);
  const chunks: bigint[] = [];
  for (let ch = st.nextChunk(100); ch; ch = st.nextChunk(100)) {
    chunks.push(ch.live);
    st.pages.fly(ch.firstPage, ch.pages);
  }
  t.deepEqual(chunks.sort((x, y) => (x < y ? -1 : 1)), [0x12000n, 0x80000n]);
});

test('after a fault the background goes on right after it; what it skipped comes when the scan wraps', (t) => {
  // 16 pages in one VMA, another VMA of 4 pages after it.
  const st = ProcessState.attach(1, image([[0x10000n, 0x20000n], [0x30000n, 0x34000n]]));
  const first = st.nextChunk(2)!;
  t.is(first.live, 0x10000n);
  st.pages.fly(first.firstPage, first.pages);
  // A fault at page 9 of the first VMA (served, settled): the next chunk starts at page 10.
  st.settleImage(0x19000n, P);
  st.noteFault(0x19000n);
  const order: bigint[] = [];
  for (let ch = st.nextChunk(4); ch; ch = st.nextChunk(4)) {
    order.push(ch.live);
    st.pages.fly(ch.firstPage, ch.pages);
  }
  // Pages 10-13, 14-15, then the other VMA, then back to what was skipped (2-5, 6-8).
  t.deepEqual(order, [0x1a000n, 0x1e000n, 0x30000n, 0x12000n, 0x16000n]);
});

test('regression: a page set copied for a fork does not share bytes with its parent', (t) => {
  const idx = new ImageIndex([{ start: 0n, end: 8n * P, location: { kind: 'remote' } }]);
  const a = new PageSet(idx);
  const b = new PageSet(idx, a);
  a.settle(0, 8);
  t.is(b.remaining, 8);
});

test('live map cut splits segments that straddle either edge', (t) => {
  const m = new LiveMap([{ liveStart: 0n, liveEnd: 10n * P, imageStart: 100n * P, range: 0 }]);
  const cut = m.cut(2n * P, 5n * P);
  t.deepEqual(cut, [{ liveStart: 2n * P, liveEnd: 5n * P, imageStart: 102n * P, range: 0 }]);
  t.deepEqual(
    m.segments.map((s) => [s.liveStart / P, s.liveEnd / P, s.imageStart / P]),
    [
      [0n, 2n, 100n],
      [5n, 10n, 105n],
    ],
  );
});
