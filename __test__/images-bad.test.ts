// Every kind of bad image ends in one ImageError naming the file and offset (never a crash).
import test, { type ExecutionContext } from 'ava';
import { cpSync, mkdtempSync, rmSync, readFileSync, writeFileSync, truncateSync, unlinkSync, symlinkSync, appendFileSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { create, toBinary } from '@bufbuild/protobuf';
import { Checkpoint, ImageError, machineMemoryBytes, writeSyntheticCheckpoint, type CheckpointOptions } from '../ts/images/index.js';
import { MAGIC, PE_LAZY, PE_PARENT, PE_PRESENT } from '../ts/images/constants.js';
import { PagemapEntrySchema, PagemapHeadSchema } from '../ts/images/gen/criu/pagemap_pb.js';
import { encodeRecords } from '../ts/images/writer.js';
import { hugeVmaCheckpoint } from './images-helpers.js';

const PID = 1_100_000;
let base: string;

test.before(async () => {
  base = mkdtempSync(path.join(os.tmpdir(), 'lp-bad-base-'));
  await writeSyntheticCheckpoint({ out: base, size: 64 * 4096, vmas: 2, pidBase: PID });
});
test.after.always(() => rmSync(base, { recursive: true, force: true }));

function copy(t: ExecutionContext): string {
  const d = mkdtempSync(path.join(os.tmpdir(), 'lp-bad-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  cpSync(base, d, { recursive: true });
  return d;
}

async function bad(t: ExecutionContext, dir: string, file: RegExp, offset: number | undefined, msg: RegExp, opts?: CheckpointOptions): Promise<void> {
  const e = await t.throwsAsync(Checkpoint.open(dir, opts), { instanceOf: ImageError });
  if (!e) return;
  const err = e as ImageError;
  t.is(err.code, 'EBADIMAGE');
  t.regex(err.file, file);
  if (offset !== undefined) t.is(err.offset, offset);
  t.regex(err.message, msg);
  t.log(err.message);
}

const pagemap = (entries: { vaddr: bigint; nr: number; flags: number }[], pagesId = 1) => encodeRecords(MAGIC.pagemap, [
  toBinary(PagemapHeadSchema, create(PagemapHeadSchema, { pagesId })),
  ...entries.map((e) => toBinary(PagemapEntrySchema, create(PagemapEntrySchema, { vaddr: e.vaddr, compatNrPages: 0, flags: e.flags, nrPages: BigInt(e.nr) }))),
]);

test('the base image is good', async (t) => {
  const c = await Checkpoint.open(base);
  t.is(c.processes[0]!.lazyBytes, 64n * 4096n);
});

test('truncated file', async (t) => {
  const d = copy(t);
  const f = path.join(d, `pagemap-${PID}.img`);
  truncateSync(f, readFileSync(f).length - 3);
  await bad(t, d, /pagemap-/, undefined, /runs past the end|truncated/);
  truncateSync(f, 6);
  await bad(t, d, /pagemap-/, 4, /truncated: expected the image magic/);
});

test('wrong magic', async (t) => {
  const d = copy(t);
  const f = path.join(d, `mm-${PID}.img`);
  const b = readFileSync(f);
  b.writeUInt32LE(0x12345678, 4);
  writeFileSync(f, b);
  await bad(t, d, /mm-/, 4, /wrong image magic 0x12345678/);
  b.writeUInt32LE(0, 0);
  writeFileSync(f, b);
  await bad(t, d, /mm-/, 0, /not a CRIU image/);
});

test('entry size beyond the file', async (t) => {
  const d = copy(t);
  const f = path.join(d, 'pstree.img');
  const b = readFileSync(f);
  b.writeUInt32LE(0xfffffff0, 8);
  writeFileSync(f, b);
  await bad(t, d, /pstree\.img/, 8, /record size 4294967280 runs past the end/);
});

test('corrupt protobuf', async (t) => {
  const d = copy(t);
  const f = path.join(d, `core-${PID}.img`);
  const b = readFileSync(f);
  b.fill(0xff, 12);
  writeFileSync(f, b);
  await bad(t, d, /core-/, 8, /corrupt criu\.CoreEntry|CoreEntry/);
});

test('missing required field', async (t) => {
  const d = copy(t);
  // A pstree entry without pid (field 1).
  // (hand-encoded: protobuf-es refuses to encode a message with a required field unset)
  const rec = Uint8Array.of(0x10, 0x00, 0x18, 0x01, 0x20, 0x01);
  writeFileSync(path.join(d, 'pstree.img'), encodeRecords(MAGIC.pstree, [rec]));
  await bad(t, d, /pstree\.img/, 8, /lacks required field pid/);
});

test('pagemap out of order, overlapping', async (t) => {
  const d = copy(t);
  const f = path.join(d, `pagemap-${PID}.img`);
  writeFileSync(f, pagemap([{ vaddr: 0x100010000n, nr: 2, flags: PE_LAZY }, { vaddr: 0x100000000n, nr: 2, flags: PE_LAZY }]));
  await bad(t, d, /pagemap-/, undefined, /out of order or overlaps/);
  writeFileSync(f, pagemap([{ vaddr: 0x100000000n, nr: 4, flags: PE_LAZY }, { vaddr: 0x100002000n, nr: 2, flags: PE_LAZY }]));
  await bad(t, d, /pagemap-/, undefined, /overlaps the previous entry/);
});

test('pagemap page outside every VMA', async (t) => {
  const d = copy(t);
  writeFileSync(path.join(d, `pagemap-${PID}.img`), pagemap([{ vaddr: 0x100000000n, nr: 33, flags: PE_LAZY }]));
  unlinkSync(path.join(d, 'pages-1.img'));
  await bad(t, d, /pagemap-/, 14, /page 0x100020000 of pid \d+ lies in no VMA/);
});

test('pages file shorter or longer than the present entries need', async (t) => {
  const d = copy(t);
  const f = path.join(d, 'pages-1.img');
  truncateSync(f, 63 * 4096);
  await bad(t, d, /pages-1\.img/, 63 * 4096, /too short/);
  truncateSync(f, 64 * 4096);
  appendFileSync(f, Buffer.alloc(10));
  await bad(t, d, /pages-1\.img/, 64 * 4096, /too long/);
  unlinkSync(f);
  await bad(t, d, /pages-1\.img/, 0, /file is missing/);
});

test('a pstree pid with no mm or no pagemap', async (t) => {
  const d = copy(t);
  unlinkSync(path.join(d, `mm-${PID}.img`));
  await bad(t, d, new RegExp(`mm-${PID}`), 0, /file is missing/);
  const d2 = copy(t);
  unlinkSync(path.join(d2, `pagemap-${PID}.img`));
  await bad(t, d2, new RegExp(`pagemap-${PID}`), 0, /file is missing/);
});

test('PE_PARENT pages resolve through the parent chain (two levels)', async (t) => {
  const root = mkdtempSync(path.join(os.tmpdir(), 'lp-parent-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const grand = path.join(root, 'd0');
  cpSync(base, grand, { recursive: true });
  for (const name of ['d1', 'd2']) {
    const d = path.join(root, name);
    cpSync(base, d, { recursive: true });
    unlinkSync(path.join(d, 'pages-1.img'));
    // d1: all PE_PARENT; d2: first page present in d2 itself, the rest from the parent chain.
    if (name === 'd1') writeFileSync(path.join(d, `pagemap-${PID}.img`), pagemap([{ vaddr: 0x100000000n, nr: 32, flags: PE_PARENT | PE_LAZY }]));
    else {
      writeFileSync(path.join(d, `pagemap-${PID}.img`), pagemap([
        { vaddr: 0x100000000n, nr: 1, flags: PE_PRESENT | PE_LAZY }, { vaddr: 0x100001000n, nr: 31, flags: PE_PARENT | PE_LAZY }]));
      writeFileSync(path.join(d, 'pages-1.img'), Buffer.alloc(4096));
    }
    symlinkSync(name === 'd1' ? '../d0' : '../d1', path.join(d, 'parent'));
  }
  const c = await Checkpoint.open(path.join(root, 'd2'));
  const p = c.processes[0]!;
  t.deepEqual(p.lookup(0x100000000n), { kind: 'file', file: path.join(root, 'd2', 'pages-1.img'), offset: 0n });
  t.deepEqual(p.lookup(0x100005000n), { kind: 'file', file: path.join(root, 'd0', 'pages-1.img'), offset: 5n * 4096n });
  t.is(p.lazyBytes, 32n * 4096n);
  // Pages of the second VMA have no entry any more: zero.
  t.deepEqual(p.lookup(0x100021000n), { kind: 'zero' });
});

test('parent symlink loop', async (t) => {
  const d = copy(t);
  writeFileSync(path.join(d, `pagemap-${PID}.img`), pagemap([{ vaddr: 0x100000000n, nr: 1, flags: PE_PARENT }]));
  unlinkSync(path.join(d, 'pages-1.img'));
  symlinkSync('.', path.join(d, 'parent'));
  await bad(t, d, /parent$/, 0, /parent chain loops back/);
  // Two dirs pointing at each other.
  const root = mkdtempSync(path.join(os.tmpdir(), 'lp-loop-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  for (const [a, b] of [['a', 'b'], ['b', 'a']]) {
    cpSync(d, path.join(root, a!), { recursive: true, dereference: false });
    unlinkSync(path.join(root, a!, 'parent'));
    symlinkSync(`../${b}`, path.join(root, a!, 'parent'));
  }
  await bad(t, path.join(root, 'a'), /parent$/, 0, /parent chain loops back/);
});

test('PE_PARENT page missing in the parent, or no parent link', async (t) => {
  const d = copy(t);
  writeFileSync(path.join(d, `pagemap-${PID}.img`), pagemap([{ vaddr: 0x100000000n, nr: 1, flags: PE_PARENT }]));
  unlinkSync(path.join(d, 'pages-1.img'));
  await bad(t, d, /pagemap-/, 14, /has no parent link/);
  const p = mkdtempSync(path.join(os.tmpdir(), 'lp-emptyparent-'));
  t.teardown(() => rmSync(p, { recursive: true, force: true }));
  symlinkSync(p, path.join(d, 'parent'));
  await bad(t, d, /pagemap-/, 14, /parent dir .* has no pagemap/);
});

test('a path outside the images dir', async (t) => {
  const d = copy(t);
  const outside = mkdtempSync(path.join(os.tmpdir(), 'lp-outside-'));
  t.teardown(() => rmSync(outside, { recursive: true, force: true }));
  cpSync(path.join(d, 'pages-1.img'), path.join(outside, 'secret'));
  unlinkSync(path.join(d, 'pages-1.img'));
  symlinkSync(path.join(outside, 'secret'), path.join(d, 'pages-1.img'));
  await bad(t, d, /pages-1\.img/, 0, /symlink leads outside the images dir/);
});

test('not a directory, missing dir', async (t) => {
  await bad(t, '/nonexistent-images-dir', /nonexistent/, 0, /cannot be opened/);
  const d = copy(t);
  await bad(t, path.join(d, 'inventory.img'), /inventory/, 0, /not a directory/);
});

// ---- Bounded images (issue 10, item 5): a claim that no VMA, pages file or machine can back is refused.

const BASE = 0x100000000n;
const TiB = 1n << 40n;
const HUGE_PID = 1_100_100;

async function huge(t: ExecutionContext, o: Omit<Parameters<typeof hugeVmaCheckpoint>[1], 'pid'>): Promise<{ dir: string; pagemapFile: string }> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'lp-huge-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return { dir, pagemapFile: await hugeVmaCheckpoint(dir, { pid: HUGE_PID, ...o }) };
}

/** This machine's RAM + swap is the default bound; on a machine with more than `bytes`, test with a smaller one. */
function smallerThan(t: ExecutionContext, bytes: bigint): CheckpointOptions | undefined {
  if (machineMemoryBytes() < bytes) return undefined;
  t.log(`this machine has ${machineMemoryBytes()} bytes of RAM + swap: testing with a 1 GiB bound instead`);
  return { maxProcessMemory: 1n << 30n };
}

const MEMORY = /pages 0x100000000-0x\w+ of this entry \(\d+ pages\) take pid 1100100's dumped memory to .* more than (this machine could ever back for one process \(RAM \+ swap: .*\): it cannot be restored here|the 1 GiB per process allowed)/;

test('a 34-byte pagemap claiming 2^29 lazy pages in a 2 TiB VMA is refused naming the file', async (t) => {
  const { dir, pagemapFile } = await huge(t, { vmaPages: 1n << 29n, entries: [{ vaddr: BASE, nr: 1n << 29n, flags: PE_LAZY }] });
  t.is(statSync(pagemapFile).size, 34);
  await bad(t, dir, new RegExp(`pagemap-${HUGE_PID}\\.img$`), 14, MEMORY, smallerThan(t, 2n * TiB));
});

test('the same claim with a sparse 2 TiB pages file (PE_PRESENT|PE_LAZY) is refused too; with a short one, the pages file is named', async (t) => {
  const entries = [{ vaddr: BASE, nr: 1n << 29n, flags: PE_PRESENT | PE_LAZY }];
  const { dir } = await huge(t, { vmaPages: 1n << 29n, entries, pagesBytes: 2n * TiB });
  await bad(t, dir, new RegExp(`pagemap-${HUGE_PID}\\.img$`), 14, MEMORY, smallerThan(t, 2n * TiB));
  const { dir: d2 } = await huge(t, { vmaPages: 1n << 29n, entries, pagesBytes: 4096n });
  await bad(t, d2, /pages-1\.img$/, 4096, /pages file is 4096 bytes but .* needs exactly 2199023255552 \(536870912 present pages\): too short/);
});

test('above 2^32 pages: an ImageError, not "Invalid typed array length"', async (t) => {
  const nr = (1n << 32n) + 1n;
  const { dir } = await huge(t, { vmaPages: 1n << 33n, entries: [{ vaddr: BASE, nr, flags: PE_LAZY }] });
  await bad(t, dir, new RegExp(`pagemap-${HUGE_PID}\\.img$`), 14, MEMORY, smallerThan(t, 16n * TiB));
  // On a machine that could back it, it is a valid checkpoint (served in O(ranges): pageset.test.ts).
  const c = await Checkpoint.open(dir, { maxProcessMemory: 1n << 60n });
  t.is(c.processes[0]!.lazyBytes, nr * 4096n);
});

test('a huge VMA with a small number of lazy pages is accepted', async (t) => {
  const { dir } = await huge(t, {
    vmaPages: 1n << 29n,
    entries: [
      { vaddr: BASE, nr: 256n, flags: PE_LAZY },
      { vaddr: BASE + TiB, nr: 1n, flags: PE_LAZY },
      { vaddr: BASE + 2n * TiB - 10n * 4096n, nr: 10n, flags: PE_LAZY },
    ],
  });
  const c = await Checkpoint.open(dir);
  const p = c.processes[0]!;
  t.is(p.lazyBytes, 267n * 4096n);
  t.deepEqual(p.lazyRanges.map((r) => [r.start, r.end]), [
    [BASE, BASE + 256n * 4096n], [BASE + TiB, BASE + TiB + 4096n], [BASE + 2n * TiB - 10n * 4096n, BASE + 2n * TiB],
  ]);
});

test('a lazy entry reaching past its 2 TiB VMA is refused as lying in no VMA', async (t) => {
  const { dir } = await huge(t, { vmaPages: 1n << 29n, entries: [{ vaddr: BASE + 2n * TiB - 4096n, nr: 1n << 40n, flags: PE_LAZY }] });
  await bad(t, dir, /pagemap-/, 14, new RegExp(`page 0x${(BASE + 2n * TiB).toString(16)} of pid ${HUGE_PID} lies in no VMA`), { maxProcessMemory: 1n << 62n });
  await bad(t, dir, /pagemap-/, 14, /lies in no VMA/);
});

test('nr_pages so large the entry runs past 2^64, or a PE_PRESENT claim of 2^52 pages against an empty pages file', async (t) => {
  const { dir } = await huge(t, { vmaPages: 1n, entries: [{ vaddr: BASE, nr: (1n << 64n) - 1n, flags: PE_LAZY }] });
  await bad(t, dir, /pagemap-/, 14, /runs past the end of the address space/);
  const { dir: d2 } = await huge(t, { vmaPages: 1n, entries: [{ vaddr: 0n, nr: 1n << 52n, flags: PE_PRESENT | PE_LAZY }], pagesBytes: 0n });
  await bad(t, d2, /pages-1\.img$/, 0, /needs exactly 18446744073709551616 \(4503599627370496 present pages\): too short/);
});

test('the memory bound is per process, not per checkpoint (forks share pages copy-on-write)', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'lp-tree-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  await writeSyntheticCheckpoint({ out: dir, size: 64 * 4096, vmas: 2, procs: 3, pidBase: 1_100_200 });
  const c = await Checkpoint.open(dir, { maxProcessMemory: 64n * 4096n });
  t.is(c.processes.length, 3);
  await bad(t, dir, /pagemap-1100200\.img$/, undefined, /take pid 1100200's dumped memory to 256 KiB \(64 pages\), more than the 252 KiB per process allowed \(maxProcessMemory\)$/,
    { maxProcessMemory: 63n * 4096n });
});
