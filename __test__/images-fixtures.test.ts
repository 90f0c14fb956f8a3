// Parses CRIU 4.2's own images and checks the model against crit's JSON decodes and the pattern.
import test from 'ava';
import { openSync, readSync, closeSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { Checkpoint, PAGE_SIZE, checkPatternPage, type DataLocation } from '../ts/images/index.js';
import { FIXTURES, fixturesDir } from './images-helpers.js';

const json = (dir: string, name: string) => JSON.parse(readFileSync(path.join(dir, name), 'utf8'));

const BITS: Record<string, number> = {
  PROT_READ: 1, PROT_WRITE: 2, PROT_EXEC: 4, MAP_SHARED: 1, MAP_PRIVATE: 2, MAP_ANON: 0x20, MAP_GROWSDOWN: 0x100,
  VMA_AREA_REGULAR: 1, VMA_AREA_STACK: 2, VMA_AREA_VSYSCALL: 4, VMA_AREA_VDSO: 8, VMA_AREA_HEAP: 32,
  VMA_FILE_PRIVATE: 64, VMA_FILE_SHARED: 128, VMA_ANON_SHARED: 256, VMA_ANON_PRIVATE: 512, VMA_AREA_VVAR: 4096,
  VMA_AREA_MEMFD: 1 << 14, PE_PARENT: 1, PE_LAZY: 2, PE_PRESENT: 4,
};
/** crit prints bit sets as "A | B"; an empty string is 0. */
const bits = (s: string) => s.split('|').map((x) => x.trim()).filter(Boolean).reduce((n, x) => {
  if (!(x in BITS)) throw new Error(`unknown flag name ${x}`);
  return n | BITS[x]!;
}, 0);

function sameLocation(a: DataLocation, b: DataLocation): boolean {
  if (a.kind !== b.kind) return false;
  return a.kind !== 'file' || (b.kind === 'file' && a.file === b.file && a.offset === b.offset);
}

for (const name of FIXTURES) {
  const dir = path.join(fixturesDir, name);

  test(`${name}: processes, VMAs and pagemaps agree with crit's JSON`, async (t) => {
    const c = await Checkpoint.open(dir);
    const pstree = json(dir, 'pstree.json').entries;
    t.deepEqual(c.processes.map((p) => ({ pid: p.pid, ppid: p.ppid, pgid: p.pgid, sid: p.sid, threads: p.threads })), pstree);
    for (const p of c.processes) {
      const core = json(dir, `core-${p.pid}.json`).entries[0];
      t.is(core.tc.task_state, 'Alive');
      t.is(p.state, 'alive');
      const vmas = json(dir, `mm-${p.pid}.json`).entries[0].vmas;
      t.is(p.vmas.length, vmas.length);
      vmas.forEach((v: Record<string, string | number>, i: number) => {
        const m = p.vmas[i]!;
        t.is(m.start, BigInt(v.start!), `vma ${i} start`);
        t.is(m.end, BigInt(v.end!));
        t.is(m.pgoff, BigInt(v.pgoff!));
        t.is(m.shmid, BigInt(v.shmid!));
        t.is(m.prot, bits(v.prot as string));
        t.is(m.flags, bits(v.flags as string));
        t.is(m.status, bits(v.status as string));
        t.is(m.madv, BigInt(v.madv ?? 0));
        const lazy = m.flags === 0x22 || m.flags === 0x122 ? (m.status & (4 | 8 | 4096)) === 0 : false;
        t.is(m.lazy, lazy, `vma ${v.start} lazy flag`);
      });

      // Every page of every crit pagemap entry must look up to the location computed from the JSON.
      const [head, ...entries] = json(dir, `pagemap-${p.pid}.json`).entries;
      t.is(p.pagesId, head.pages_id);
      const pagesFile = path.join(c.dir, `pages-${head.pages_id}.img`);
      let offset = 0n;
      let lazyPages = 0n;
      let covered = 0n;
      for (const e of entries) {
        const f = bits(e.flags);
        const start = BigInt(e.vaddr);
        for (let k = 0n; k < BigInt(e.nr_pages); k++) {
          const want: DataLocation = f & 4 ? { kind: 'file', file: pagesFile, offset: offset + k * 4096n } : { kind: 'remote' };
          const got = p.lookup(start + k * 4096n + 123n);
          if (!sameLocation(got, want)) t.fail(`page ${(start + k * 4096n).toString(16)}: ${JSON.stringify(got, (_, x) => typeof x === 'bigint' ? x.toString(16) : x)}`);
          const vma = p.vmas.find((v) => v.start <= start + k * 4096n && start + k * 4096n < v.end)!;
          if (f & 2 && vma.lazy) lazyPages++;
        }
        covered += BigInt(e.nr_pages);
        if (f & 4) offset += BigInt(e.nr_pages) * 4096n;
      }
      t.is(p.lazyBytes, lazyPages * 4096n);
      const rangePages = [...p.lazyRanges, ...p.eagerRanges].reduce((n, r) => n + (r.end - r.start) / 4096n, 0n);
      t.is(rangePages, covered, 'lazy + eager ranges cover exactly the pagemap');
      // Ranges ascend, do not overlap and never cross a VMA boundary.
      for (const rs of [p.lazyRanges, p.eagerRanges]) {
        for (let i = 0; i < rs.length; i++) {
          const r = rs[i]!;
          if (i > 0) t.true(rs[i - 1]!.end <= r.start);
          const v = p.vmas.find((v) => v.start <= r.start && r.start < v.end)!;
          t.true(r.end <= v.end, `range ${r.start.toString(16)} stays in its VMA`);
          if (rs === p.lazyRanges) t.true(v.lazy);
        }
      }
      // Addresses with no entry read as zero (the first page of the address space, the vsyscall page).
      t.deepEqual(p.lookup(0n), { kind: 'zero' });
      t.deepEqual(p.lookup(0xffffffffff600000n), { kind: 'zero' });
    }
    const shmemFiles = readdirSync(dir).filter((f) => /^pagemap-shmem-\d+\.json$/.test(f));
    t.is(c.shmem.length, shmemFiles.length);
    for (const f of shmemFiles) {
      const [head, ...entries] = json(dir, f).entries;
      const s = c.shmem.find((s) => `pagemap-shmem-${s.shmid}.json` === f)!;
      t.is(s.pagesId, head.pages_id);
      t.is(s.entries, entries.length);
      t.is(s.pages, entries.reduce((n: number, e: { nr_pages: number }) => n + e.nr_pages, 0));
    }
  });

  test(`${name}: every lazy region page reads the pattern through the lookup`, async (t) => {
    const c = await Checkpoint.open(dir);
    const regions = readFileSync(path.join(dir, 'regions.txt'), 'utf8').trim().split('\n').map((l) => {
      const [, pid, rname, start, end, xor, stride] = l.split(/\s+/);
      return { pid: Number(pid), name: rname!, start: BigInt(start!), end: BigInt(end!), xor: BigInt(xor!), stride: Number(stride) };
    });
    const page = Buffer.alloc(PAGE_SIZE);
    let checked = 0;
    let remote = 0;
    for (const r of regions) {
      const p = c.process(r.pid);
      t.truthy(p, `pid ${r.pid} of regions.txt`);
      if (!p) continue;
      for (let a = r.start; a < r.end; a += 4096n) {
        const inLazy = p.lazyRanges.some((lr) => lr.start <= a && a < lr.end);
        if (!inLazy) continue;
        const loc = p.lookup(a);
        if (name === 'lazy-remote') {
          t.is(loc.kind, 'remote');
          remote++;
          continue;
        }
        if (loc.kind !== 'file') {
          t.fail(`${r.name} page ${a.toString(16)} is ${loc.kind}`);
          continue;
        }
        const fd = openSync(loc.file, 'r');
        try {
          t.is(readSync(fd, page, 0, PAGE_SIZE, Number(loc.offset)), PAGE_SIZE);
        } finally {
          closeSync(fd);
        }
        if (!checkPatternPage(page, a, r.xor)) t.fail(`${r.name} page ${a.toString(16)} does not hold the pattern`);
        checked++;
      }
    }
    if (name === 'lazy-remote') t.is(remote, 1024 + 64);
    else t.true(checked > 0);
    t.log(`${checked} pages matched the pattern, ${remote} remote`);
  });
}
