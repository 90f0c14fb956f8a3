// The synthetic writer: its images parse back into the same model and hold the pattern.
import test from 'ava';
import { mkdtempSync, rmSync, readFileSync, statSync, openSync, readSync, closeSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Checkpoint, PAGE_SIZE, checkPatternPage, fillPatternPage, patternWord, writeSyntheticCheckpoint } from '../ts/images/index.js';

function tmp(t: { teardown(fn: () => void): void }): string {
  const d = mkdtempSync(path.join(os.tmpdir(), 'lp-synth-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

test('patternWord matches the fixture formula, fillPatternPage matches patternWord', (t) => {
  t.is(patternWord(0n), (0x5deece66dn * 0x9e3779b97f4a7c15n) & ((1n << 64n) - 1n));
  const buf = new Uint8Array(PAGE_SIZE * 2);
  for (const [addr, xor] of [[0x100000000n, 0n], [0x7ffffffff000n, 1n << 56n], [0xffffffffff600000n, 0xdeadbeefcafef00dn]] as const) {
    fillPatternPage(buf, addr, xor, PAGE_SIZE);
    const dv = new DataView(buf.buffer, PAGE_SIZE);
    for (let k = 0; k < 512; k++) {
      if (dv.getBigUint64(k * 8, true) !== patternWord(addr + BigInt(k * 8), xor)) return t.fail(`word ${k} of ${addr.toString(16)}`);
    }
  }
  t.pass();
});

test('synth round trip: 3 processes, 3 VMAs, holes; model, ranges and data agree', async (t) => {
  const out = tmp(t);
  const { dir, pids } = await writeSyntheticCheckpoint({ out, size: 3 * 1024 * 1024 + 4096, vmas: 3, procs: 3, pidBase: 2_000_000, holes: 0.1, seed: 7 });
  t.deepEqual(pids, [2_000_000, 2_000_001, 2_000_002]);
  const synth = JSON.parse(readFileSync(path.join(dir, 'synth.json'), 'utf8'));
  t.deepEqual(synth, { pattern: 'criu-fixture', processes: [
    { pid: 2_000_000, xor: '0x0' }, { pid: 2_000_001, xor: '0x100000000000000' }, { pid: 2_000_002, xor: '0x200000000000000' }] });
  const c = await Checkpoint.open(dir);
  t.is(c.processes.length, 3);
  const page = Buffer.alloc(PAGE_SIZE);
  for (const [i, p] of c.processes.entries()) {
    t.is(p.ppid, i === 0 ? 0 : pids[0]!);
    t.is(p.state, 'alive');
    t.is(p.pagesId, i + 1);
    t.is(p.vmas.length, 3);
    t.true(p.vmas.every((v) => v.lazy && v.prot === 3));
    t.is(p.vmas[0]!.start, 0x100000000n);
    t.is(p.vmas[1]!.start, p.vmas[0]!.end + 4096n, 'one gap page between VMAs');
    const vmaPages = p.vmas.reduce((n, v) => n + (v.end - v.start) / 4096n, 0n);
    t.is(vmaPages, 769n);
    const lazyPages = p.lazyBytes / 4096n;
    t.true(lazyPages < vmaPages && lazyPages > (vmaPages * 8n) / 10n, `about 10% holes (${lazyPages}/${vmaPages})`);
    t.is(BigInt(statSync(path.join(dir, `pages-${i + 1}.img`)).size), p.lazyBytes);
    t.is(p.eagerRanges.length, 0);
    t.true(p.lazyRanges.every((r) => r.end - r.start <= 256n * 4096n));
    const xor = BigInt(i) << 56n;
    let holes = 0;
    const fd = openSync(path.join(dir, `pages-${i + 1}.img`), 'r');
    t.teardown(() => closeSync(fd));
    for (const v of p.vmas) {
      for (let a = v.start; a < v.end; a += 4096n) {
        const loc = p.lookup(a);
        if (loc.kind === 'zero') {
          holes++;
          continue;
        }
        if (loc.kind !== 'file') return t.fail(`page ${a.toString(16)} is ${loc.kind}`);
        readSync(fd, page, 0, PAGE_SIZE, Number(loc.offset));
        if (!checkPatternPage(page, a, xor)) return t.fail(`page ${a.toString(16)} of pid ${p.pid}`);
      }
    }
    t.is(BigInt(holes), vmaPages - lazyPages);
  }
});

test('synth --lazy-only writes PE_LAZY entries and no data: lookups say remote', async (t) => {
  const out = tmp(t);
  const { dir } = await writeSyntheticCheckpoint({ out, size: 2 * 1024 * 1024, vmas: 2, lazyOnly: true, pidBase: 1_500_000 });
  const c = await Checkpoint.open(dir);
  const p = c.processes[0]!;
  t.is(p.lazyBytes, 2n * 1024n * 1024n);
  t.true(p.lazyRanges.every((r) => r.location.kind === 'remote'));
  t.deepEqual(p.lookup(0x100000000n), { kind: 'remote' });
  t.throws(() => statSync(path.join(dir, 'pages-1.img')));
});

test('synth default pids are free, below kernel.pid_max, in its upper half (a restore can reuse them)', async (t) => {
  const { pids } = await writeSyntheticCheckpoint({ out: tmp(t), size: 4096, procs: 2 });
  const max = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8'));
  t.true(pids[0]! >= max / 2 && pids[1]! < max, `${pids} vs pid_max ${max}`);
  t.false(existsSync(`/proc/${pids[0]}`));
  t.is(pids[1], pids[0]! + 1);
});

test('synth refuses bad options and a dir that already holds images', async (t) => {
  const out = tmp(t);
  await t.throwsAsync(writeSyntheticCheckpoint({ out, size: 0 }), { message: /--size/ });
  await t.throwsAsync(writeSyntheticCheckpoint({ out, size: 4096, holes: 1.5 }), { message: /--holes/ });
  await writeSyntheticCheckpoint({ out, size: 4096, pidBase: 1_000_000 });
  await t.throwsAsync(writeSyntheticCheckpoint({ out, size: 4096 }), { message: /already holds images/ });
});

test('synth writes 256 MiB quickly', async (t) => {
  const t0 = performance.now();
  const { dir } = await writeSyntheticCheckpoint({ out: tmp(t), size: 256 * 1024 * 1024, vmas: 4, pidBase: 1_200_000 });
  const ms = performance.now() - t0;
  t.log(`256 MiB in ${ms.toFixed(0)} ms (${(256 / (ms / 1000)).toFixed(0)} MiB/s)`);
  t.true(ms < 20_000);
  const c = await Checkpoint.open(dir);
  t.is(c.processes[0]!.lazyBytes, 256n * 1024n * 1024n);
});
