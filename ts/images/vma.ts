/** VMAs of mm-<pid>.img and which of them the daemon serves lazily (spec §3). */
import type { VmaEntry } from './gen/criu/mm_pb.js';
import {
  MAP_ANONYMOUS, MAP_HUGETLB, MAP_LOCKED, MAP_PRIVATE, VMA_AREA_VDSO, VMA_AREA_VSYSCALL, VMA_AREA_VVAR,
} from './constants.js';
import { ImageError, hex } from './errors.js';

/**
 * A VMA of the checkpoint: the fields of its mm-<pid>.img entry we use (written out rather than
 * picked from the generated VmaEntry, which is not part of the documented API), and whether it is lazy.
 */
export interface Vma {
  start: bigint;
  end: bigint;
  pgoff: bigint;
  shmid: bigint;
  prot: number;
  flags: number;
  status: number;
  madv: bigint;
  lazy: boolean;
}

/**
 * CRIU restores only private anonymous memory lazily: file pages come from the file, shared
 * memory is restored once for all sharers, locked/hugetlb memory cannot be registered, and
 * the vDSO/vvar/vsyscall pages belong to the kernel.
 */
export function isLazyVma(flags: number, status: number): boolean {
  const need = MAP_PRIVATE | MAP_ANONYMOUS;
  if ((flags & need) !== need) return false;
  if (flags & (MAP_LOCKED | MAP_HUGETLB)) return false;
  if (status & (VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL)) return false;
  return true;
}

const PAGE_MASK = 0xfffn;

/** Converts and validates the VMA list: page aligned, non-empty, ascending, non-overlapping. */
export function toVmas(file: string, offset: number, entries: VmaEntry[]): Vma[] {
  const out: Vma[] = [];
  let prevEnd = 0n;
  for (const [i, e] of entries.entries()) {
    const where = `vma ${i} ${hex(e.start)}-${hex(e.end)}`;
    if ((e.start & PAGE_MASK) !== 0n || (e.end & PAGE_MASK) !== 0n) throw new ImageError(file, offset, `${where} is not page aligned`);
    if (e.end <= e.start) throw new ImageError(file, offset, `${where} is empty or inverted`);
    if (e.start < prevEnd) throw new ImageError(file, offset, `${where} overlaps or precedes the previous VMA (VMAs must ascend)`);
    prevEnd = e.end;
    out.push({
      start: e.start, end: e.end, pgoff: e.pgoff, shmid: e.shmid, prot: e.prot, flags: e.flags, status: e.status,
      madv: e.madv, lazy: isLazyVma(e.flags, e.status),
    });
  }
  return out;
}

/** Index of the VMA containing `addr`, or -1 (binary search: VMAs ascend). */
export function findVma(vmas: Vma[], addr: bigint): number {
  let lo = 0;
  let hi = vmas.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const v = vmas[mid]!;
    if (addr < v.start) hi = mid - 1;
    else if (addr >= v.end) lo = mid + 1;
    else return mid;
  }
  return -1;
}
