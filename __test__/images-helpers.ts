// Shared helpers of the images-*.test.ts files (not a test file itself: ava only runs *.test.ts).
import { truncateSync, unlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { create, toBinary } from '@bufbuild/protobuf';
import { MAGIC, MAP_ANONYMOUS, MAP_PRIVATE, VMA_ANON_PRIVATE, VMA_AREA_REGULAR } from '../ts/images/constants.js';
import { MmEntrySchema, VmaEntrySchema } from '../ts/images/gen/criu/mm_pb.js';
import { PagemapEntrySchema, PagemapHeadSchema } from '../ts/images/gen/criu/pagemap_pb.js';
import { SYNTH_BASE_ADDR, writeSyntheticCheckpoint } from '../ts/images/synth.js';
import { encodeImage, encodeRecords } from '../ts/images/writer.js';

export { fixturesDir, repoRoot } from './helpers/common.js';
export const FIXTURES = ['single-anon', 'mremap', 'fork-tree', 'mixed-vmas', 'lazy-remote'] as const;

/**
 * A checkpoint of one process whose mm holds a single private anonymous VMA of `vmaPages` pages at
 * SYNTH_BASE_ADDR (2 TiB and more: the address space costs nothing) and whose pagemap is exactly
 * `entries`. `pagesBytes` makes pages-1.img a sparse file of that size; otherwise there is none (the
 * lazy-only case: data on a page server). Returns the pagemap path.
 */
export async function hugeVmaCheckpoint(out: string, o: {
  pid: number;
  vmaPages: bigint;
  entries: { vaddr: bigint; nr: bigint; flags: number }[];
  pagesBytes?: bigint;
}): Promise<string> {
  await writeSyntheticCheckpoint({ out, size: 4096, pidBase: o.pid });
  const mm = create(MmEntrySchema, {
    mmStartCode: 0n, mmEndCode: 0n, mmStartData: 0n, mmEndData: 0n, mmStartStack: 0n, mmStartBrk: 0n, mmBrk: 0n,
    mmArgStart: 0n, mmArgEnd: 0n, mmEnvStart: 0n, mmEnvEnd: 0n, exeFileId: 0,
    vmas: [create(VmaEntrySchema, {
      start: SYNTH_BASE_ADDR, end: SYNTH_BASE_ADDR + o.vmaPages * 4096n, pgoff: 0n, shmid: 0n, prot: 3,
      flags: MAP_PRIVATE | MAP_ANONYMOUS, status: VMA_AREA_REGULAR | VMA_ANON_PRIVATE, fd: -1n,
    })],
  });
  writeFileSync(path.join(out, `mm-${o.pid}.img`), encodeImage(MAGIC.mm, MmEntrySchema, [mm]));
  const pagemapFile = path.join(out, `pagemap-${o.pid}.img`);
  writeFileSync(pagemapFile, encodeRecords(MAGIC.pagemap, [
    toBinary(PagemapHeadSchema, create(PagemapHeadSchema, { pagesId: 1 })),
    ...o.entries.map((e) => toBinary(PagemapEntrySchema, create(PagemapEntrySchema, { vaddr: e.vaddr, compatNrPages: 0, flags: e.flags, nrPages: e.nr }))),
  ]));
  const pages = path.join(out, 'pages-1.img');
  unlinkSync(pages);
  if (o.pagesBytes !== undefined) {
    writeFileSync(pages, '');
    truncateSync(pages, Number(o.pagesBytes));
  }
  return pagemapFile;
}
