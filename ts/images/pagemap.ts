/**
 * pagemap-*.img: the list of dumped pages of one address space (or shmem object) and where each
 * entry's data is. Normalises the legacy fields and checks the invariants CRIU relies on.
 */
import { statSync } from 'node:fs';
import { isFieldSet } from '@bufbuild/protobuf';
import { MAGIC, PAGE_SIZE_N, PE_LAZY, PE_PARENT, PE_PRESENT } from './constants.js';
import { ImageError, hex } from './errors.js';
import { decodeRecord, readImageBytes, splitRecords } from './framing.js';
import { PagemapEntrySchema, PagemapHeadSchema } from './gen/criu/pagemap_pb.js';
import { imageFile } from './paths.js';

export interface PagemapEntryInfo {
  start: bigint;
  end: bigint;
  /** PE_* bits after normalisation (in_parent folded into PE_PARENT, missing flags = PE_PRESENT). */
  flags: number;
  /** Offset in the pages file when PE_PRESENT. */
  fileOffset?: bigint;
  /** Byte offset of the record in the pagemap file, for error messages. */
  recOffset: number;
}

export interface Pagemap {
  file: string;
  pagesId: number;
  /** Absolute path of pages-<id>.img; undefined when no entry is PE_PRESENT and the file is absent. */
  pagesFile: string | undefined;
  entries: PagemapEntryInfo[];
  presentPages: bigint;
}

const MAX_ADDR = 1n << 64n;
const KNOWN_FLAGS = PE_PARENT | PE_LAZY | PE_PRESENT;

/** Loads `name` (a pagemap image) from the real dir `dir`; undefined when the file is absent. */
export function loadPagemap(dir: string, name: string): Pagemap | undefined {
  const file = imageFile(dir, name);
  if (!file) return undefined;
  const recs = splitRecords(file, readImageBytes(file), MAGIC.pagemap);
  if (recs.length === 0) throw new ImageError(file, 8, 'pagemap has no pagemap_head record');
  const head = decodeRecord(file, recs[0]!, PagemapHeadSchema);
  const entries: PagemapEntryInfo[] = [];
  let prevEnd = 0n;
  let present = 0n;
  for (let i = 1; i < recs.length; i++) {
    const rec = recs[i]!;
    const e = decodeRecord(file, rec, PagemapEntrySchema);
    const nr = isFieldSet(e, PagemapEntrySchema.field.nrPages) ? e.nrPages : BigInt(e.compatNrPages);
    let flags = isFieldSet(e, PagemapEntrySchema.field.flags) ? e.flags : PE_PRESENT;
    if (e.inParent) flags = (flags & ~PE_PRESENT) | PE_PARENT;
    const where = `pagemap entry ${hex(e.vaddr)}+${nr}`;
    if (flags & ~KNOWN_FLAGS) throw new ImageError(file, rec.offset, `${where} has unknown flags ${hex(flags)}`);
    if ((flags & (PE_PARENT | PE_PRESENT)) === (PE_PARENT | PE_PRESENT)) {
      throw new ImageError(file, rec.offset, `${where} is both PE_PARENT and PE_PRESENT`);
    }
    if ((flags & KNOWN_FLAGS) === 0) throw new ImageError(file, rec.offset, `${where} has no flags: its data is nowhere`);
    if (e.vaddr % PAGE_SIZE_N !== 0n) throw new ImageError(file, rec.offset, `${where} is not page aligned`);
    if (nr === 0n) throw new ImageError(file, rec.offset, `${where} has no pages`);
    const end = e.vaddr + nr * PAGE_SIZE_N;
    if (end > MAX_ADDR) throw new ImageError(file, rec.offset, `${where} runs past the end of the address space`);
    if (e.vaddr < prevEnd) {
      throw new ImageError(file, rec.offset, `${where} is out of order or overlaps the previous entry (ending at ${hex(prevEnd)})`);
    }
    prevEnd = end;
    const info: PagemapEntryInfo = { start: e.vaddr, end, flags, recOffset: rec.offset };
    if (flags & PE_PRESENT) {
      info.fileOffset = present * PAGE_SIZE_N;
      present += nr;
    }
    entries.push(info);
  }
  const pagesName = `pages-${head.pagesId}.img`;
  const pagesFile = imageFile(dir, pagesName);
  const want = present * PAGE_SIZE_N;
  if (!pagesFile) {
    if (present > 0n) throw new ImageError(`${dir}/${pagesName}`, 0, `file is missing; ${file} has ${present} present pages in it`);
  } else {
    const size = BigInt(statSync(pagesFile).size);
    if (size !== want) {
      const off = Number(size < want ? size : want);
      throw new ImageError(pagesFile, off,
        `pages file is ${size} bytes but ${file} needs exactly ${want} (${present} present pages): ${size < want ? 'too short' : 'too long'}`);
    }
  }
  return { file, pagesId: head.pagesId, pagesFile, entries, presentPages: present };
}
