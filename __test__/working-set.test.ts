/** The working-set file and its recorder, on a real CRIU checkpoint (no restore: see criu-working-set). */
import test from 'ava';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { layoutFingerprint, matchWorkingSet, readWorkingSet, WorkingSetRecorder, writeWorkingSet } from '../ts/daemon/working-set.js';
import { Checkpoint, PAGE_SIZE } from '../ts/images/index.js';
import { fixturesDir, tempDir } from './helpers/common.js';

const P = PAGE_SIZE;

test('the recorder keeps first-touch order, merges pages touched one after the other, counts a page once, and stops after --record-for', async (t) => {
  const ck = await Checkpoint.open(join(fixturesDir, 'single-anon'));
  const image = ck.processes[0]!;
  const base = Number(image.lazyRanges[0]!.start);
  const r = new WorkingSetRecorder(50);
  r.attach(image, 0);
  r.served(image.pid, base + 5 * P, P, 1); // first
  r.served(image.pid, base + 6 * P, 2 * P, 2); // right after it: one range
  r.served(image.pid, base, P, 3); // elsewhere: a new range
  r.served(image.pid, base + 6 * P, P, 4); // again (a forked child): nothing new
  r.served(image.pid, base + 20 * P, P, 60); // after --record-for: not recorded
  r.served(image.pid + 1, base, P, 5); // a pid not attached: ignored
  const ws = r.result();
  t.deepEqual(ws.processes, [
    {
      pid: image.pid,
      layout: layoutFingerprint(image),
      ranges: [
        { start: BigInt(base + 5 * P), pages: 3, firstTouchMs: 1 },
        { start: BigInt(base), pages: 1, firstTouchMs: 3 },
      ],
    },
  ]);
});

test('a working set survives its file; it matches its checkpoint and nothing else, naming why', async (t) => {
  const ck = await Checkpoint.open(join(fixturesDir, 'single-anon'));
  const other = await Checkpoint.open(join(fixturesDir, 'mremap'));
  const image = ck.processes[0]!;
  const first = image.lazyRanges.find((l) => l.end - l.start >= BigInt(2 * P))!;
  const start = first.start;
  const dir = tempDir(t, 'lazy-ws-');
  const file = join(dir, 'ws.json');
  writeWorkingSet(file, { processes: [{ pid: image.pid, layout: layoutFingerprint(image), ranges: [{ start, pages: 2, firstTouchMs: 1.5 }] }] });
  const back = readWorkingSet(file);
  t.deepEqual(back.processes[0]!.ranges, [{ start, pages: 2, firstTouchMs: 1.5 }]);
  t.deepEqual(matchWorkingSet(back, image), { ranges: back.processes[0]!.ranges });
  // Another checkpoint: its pid is not in the file, or its layout differs.
  const o = other.processes[0]!;
  t.regex(JSON.stringify(matchWorkingSet(back, o)), /is not in it|layout differs/);
  const moved = { processes: [{ ...back.processes[0]!, pid: o.pid }] };
  t.regex((matchWorkingSet(moved, o) as { why: string }).why, /memory layout differs/);
  // Ranges outside the lazy memory of the right layout.
  const outside = { processes: [{ ...back.processes[0]!, ranges: [{ start: 0x1000n, pages: 1, firstTouchMs: 0 }] }] };
  t.regex((matchWorkingSet(outside, image) as { why: string }).why, /range 0x1000\+1 pages is not lazy memory/);
  // The file: versioned, its errors name the field.
  const raw = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  t.is(raw.format, 'lazy-pages-working-set');
  t.is(raw.version, 1);
  writeFileSync(file, JSON.stringify({ ...raw, version: 2 }));
  t.throws(() => readWorkingSet(file), { message: /ws\.json: version: / });
  writeFileSync(file, JSON.stringify({ ...raw, processes: [{ pid: 1, layout: 'x', pages: 1, ranges: [['0xZZ', 1, 0]]}] }));
  t.throws(() => readWorkingSet(file), { message: /processes\.0\.ranges\.0\.0: an address like/ });
});
