/**
 * Writes a synthetic but complete CRIU images dir whose memory holds the fixtures' pattern, so
 * tests and benchmarks can make checkpoints of any size without running CRIU.
 */
import { mkdirSync, openSync, closeSync, writeSync, writeFileSync, readdirSync, readFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import { create, toBinary } from '@bufbuild/protobuf';
import { UserError } from '../errors.js';
import {
  MAGIC, MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE, PAGE_SIZE_N, PE_LAZY, PE_PRESENT, TASK_ALIVE, VMA_ANON_PRIVATE,
  VMA_AREA_REGULAR,
} from './constants.js';
import { hex } from './errors.js';
import { CoreEntrySchema, TaskCoreEntrySchema } from './gen/criu/core_pb.js';
import { InventoryEntrySchema } from './gen/criu/inventory_pb.js';
import { MmEntrySchema, VmaEntrySchema } from './gen/criu/mm_pb.js';
import { PagemapEntrySchema, PagemapHeadSchema } from './gen/criu/pagemap_pb.js';
import { PstreeEntrySchema } from './gen/criu/pstree_pb.js';
import { fillPatternPage } from './pattern.js';
import { encodeImage, encodeRecords } from './writer.js';

export interface SynthOptions {
  out: string;
  /** Bytes of private anonymous memory per process (rounded up to whole pages per VMA). */
  size: bigint | number;
  vmas?: number;
  procs?: number;
  pidBase?: number;
  /** Write PE_LAZY (2) entries and no page data, like `criu dump --lazy-pages`. */
  lazyOnly?: boolean;
  /** Fraction of pages (0..1) left out of the pagemap: they must read as zero. */
  holes?: number;
  seed?: number;
}

export const SYNTH_BASE_ADDR = 0x100000000n;
/** CRIU splits pagemap entries at page-pipe buffers; 256 pages is its usual chunk. */
const MAX_ENTRY_PAGES = 256;
/** Pages generated and written per write(): large writes keep 1 GiB in the seconds range. */
const CHUNK_PAGES = 1024;

/** Small seeded PRNG (mulberry32): synthetic images are reproducible from their seed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function badOption(msg: string): never {
  throw new UserError('EOPTION', msg);
}

/**
 * A run of `n` pids that no process uses now, in the upper half of this machine's pid range (the
 * simulator restores with the image pids, as `criu restore` does, so they must be free and below
 * kernel.pid_max; the lower half is where the kernel hands out new pids first).
 */
export function freePidBase(n: number): number {
  let max = 32768;
  try {
    max = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8').trim()) || max;
  } catch {
    /* not Linux: keep the default */
  }
  const lo = Math.floor(max / 2);
  for (let tries = 0; tries < 1000; tries++) {
    const base = lo + Math.floor(Math.random() * (max - lo - n - 1));
    let free = true;
    for (let i = 0; i < n && free; i++) free = !existsSync(`/proc/${base + i}`);
    if (free) return base;
  }
  return lo;
}

export async function writeSyntheticCheckpoint(opts: SynthOptions): Promise<{ dir: string; pids: number[] }> {
  const size = BigInt(opts.size);
  const nVmas = opts.vmas ?? 1;
  const nProcs = opts.procs ?? 1;
  const holes = opts.holes ?? 0;
  const seed = opts.seed ?? 1;
  if (size <= 0n) badOption(`--size must be positive (got ${size})`);
  if (!Number.isInteger(nVmas) || nVmas < 1 || nVmas > 65000) badOption(`--vmas must be an integer in 1..65000 (got ${nVmas})`);
  if (!Number.isInteger(nProcs) || nProcs < 1 || nProcs > 1000) badOption(`--procs must be an integer in 1..1000 (got ${nProcs})`);
  if (!(holes >= 0 && holes < 1)) badOption(`--holes must be a fraction in [0, 1) (got ${holes})`);
  const pidBase = opts.pidBase ?? freePidBase(nProcs);
  if (!Number.isInteger(pidBase) || pidBase < 1 || pidBase + nProcs > 0x400000) {
    badOption(`--pid-base must be an integer with pid-base + procs <= 4194304 (got ${pidBase})`);
  }
  const dir = path.resolve(opts.out);
  mkdirSync(dir, { recursive: true });
  if (readdirSync(dir).some((n) => n.endsWith('.img'))) badOption(`--out ${dir} already holds images: use an empty dir`);

  const pids = Array.from({ length: nProcs }, (_, i) => pidBase + i);
  const totalPages = (size + PAGE_SIZE_N - 1n) / PAGE_SIZE_N;
  // Spread pages over the VMAs; the first ones take the remainder.
  const vmaPages = Array.from({ length: nVmas }, (_, i) => totalPages / BigInt(nVmas) + (BigInt(i) < totalPages % BigInt(nVmas) ? 1n : 0n))
    .filter((n) => n > 0n);

  writeFileSync(path.join(dir, 'inventory.img'), encodeImage(MAGIC.inventory, InventoryEntrySchema,
    [create(InventoryEntrySchema, { imgVersion: 2, fdinfoPerId: true })]));
  writeFileSync(path.join(dir, 'pstree.img'), encodeImage(MAGIC.pstree, PstreeEntrySchema, pids.map((pid, i) =>
    create(PstreeEntrySchema, { pid, ppid: i === 0 ? 0 : pids[0]!, pgid: pids[0]!, sid: pids[0]!, threads: [pid] }))));

  const procs: { pid: number; xor: string }[] = [];
  for (const [i, pid] of pids.entries()) {
    const xor = BigInt(i) << 56n;
    procs.push({ pid, xor: hex(xor) });
    writeProcess(dir, pid, i + 1, xor, vmaPages, { lazyOnly: !!opts.lazyOnly, holes, rand: prng(seed + i) });
  }
  writeFileSync(path.join(dir, 'synth.json'), JSON.stringify({ pattern: 'criu-fixture', processes: procs }, null, 2) + '\n');
  return { dir, pids };
}

function writeProcess(dir: string, pid: number, pagesId: number, xor: bigint, vmaPages: bigint[],
  o: { lazyOnly: boolean; holes: number; rand: () => number }): void {
  const core = create(CoreEntrySchema, {
    mtype: 1,
    tc: create(TaskCoreEntrySchema, { taskState: TASK_ALIVE, exitCode: 0, personality: 0, flags: 0, comm: 'synth' }),
  });
  writeFileSync(path.join(dir, `core-${pid}.img`), encodeImage(MAGIC.core, CoreEntrySchema, [core]));

  // VMAs from 0x100000000 up, one unmapped page between neighbours so the kernel cannot merge them.
  const vmas: { start: bigint; end: bigint }[] = [];
  let at = SYNTH_BASE_ADDR;
  for (const n of vmaPages) {
    vmas.push({ start: at, end: at + n * PAGE_SIZE_N });
    at += (n + 1n) * PAGE_SIZE_N;
  }
  const mm = create(MmEntrySchema, {
    mmStartCode: 0n, mmEndCode: 0n, mmStartData: 0n, mmEndData: 0n, mmStartStack: 0n, mmStartBrk: 0n, mmBrk: 0n,
    mmArgStart: 0n, mmArgEnd: 0n, mmEnvStart: 0n, mmEnvEnd: 0n, exeFileId: 0,
    vmas: vmas.map((v) => create(VmaEntrySchema, {
      start: v.start, end: v.end, pgoff: 0n, shmid: 0n, prot: 3, flags: MAP_PRIVATE | MAP_ANONYMOUS,
      status: VMA_AREA_REGULAR | VMA_ANON_PRIVATE, fd: -1n,
    })),
  });
  writeFileSync(path.join(dir, `mm-${pid}.img`), encodeImage(MAGIC.mm, MmEntrySchema, [mm]));

  const flags = o.lazyOnly ? PE_LAZY : PE_LAZY | PE_PRESENT;
  const records: Uint8Array[] = [toBinary(PagemapHeadSchema, create(PagemapHeadSchema, { pagesId }))];
  const fd = o.lazyOnly ? -1 : openSync(path.join(dir, `pages-${pagesId}.img`), 'w');
  const chunk = Buffer.allocUnsafe(CHUNK_PAGES * PAGE_SIZE);
  let filled = 0;
  const flush = () => {
    if (filled > 0) writeSync(fd, chunk, 0, filled * PAGE_SIZE);
    filled = 0;
  };
  try {
    for (const v of vmas) {
      let runStart = -1n;
      let runLen = 0;
      const endRun = () => {
        if (runLen > 0) {
          records.push(toBinary(PagemapEntrySchema, create(PagemapEntrySchema, {
            vaddr: runStart, compatNrPages: 0, flags, nrPages: BigInt(runLen),
          })));
        }
        runLen = 0;
      };
      for (let a = v.start; a < v.end; a += PAGE_SIZE_N) {
        if (o.holes > 0 && o.rand() < o.holes) {
          endRun();
          continue;
        }
        if (runLen === 0) runStart = a;
        runLen++;
        if (fd >= 0) {
          fillPatternPage(chunk, a, xor, filled * PAGE_SIZE);
          if (++filled === CHUNK_PAGES) flush();
        }
        if (runLen === MAX_ENTRY_PAGES) endRun();
      }
      endRun();
    }
    if (fd >= 0) flush();
  } finally {
    if (fd >= 0) closeSync(fd);
  }
  writeFileSync(path.join(dir, `pagemap-${pid}.img`), encodeRecords(MAGIC.pagemap, records));
}
