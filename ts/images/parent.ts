/**
 * PE_PARENT pages: their data is in an older dump reached through the `parent` symlink of the
 * images dir (criu dump --prev-images-dir), possibly several levels up.
 */
import { realpathSync, statSync } from 'node:fs';
import path from 'node:path';
import { PE_LAZY, PE_PARENT, PE_PRESENT } from './constants.js';
import { ImageError, hex } from './errors.js';
import { PageIndex, remoteLocation, type PageRange } from './page-index.js';
import { loadPagemap, type Pagemap } from './pagemap.js';

/** A range of a pagemap with its data resolved and whether CRIU marked it lazy. */
export interface ResolvedPiece extends PageRange {
  lazy: boolean;
  /** Pagemap record it came from, for error messages. */
  file: string;
  recOffset: number;
}

const MAX_DEPTH = 64;

/** One images dir of a parent chain; `chain` holds the real paths from the newest dir on. */
export class ParentDir {
  private readonly cache = new Map<number, PageIndex>();
  private parentDir: ParentDir | null | undefined;

  constructor(readonly dir: string, private readonly chain: string[]) {}

  /** The parent of this dir, or null when it has no `parent` link. */
  parent(): ParentDir | null {
    if (this.parentDir !== undefined) return this.parentDir;
    const link = path.join(this.dir, 'parent');
    let real: string;
    try {
      real = realpathSync(link);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') {
        this.parentDir = null;
        return null;
      }
      // ELOOP: a symlink cycle the kernel already detected.
      throw new ImageError(link, 0, `parent link cannot be followed (${code ?? e})`, { cause: e });
    }
    if (!statSync(real).isDirectory()) throw new ImageError(link, 0, `parent link does not lead to a directory (${real})`);
    if (this.chain.includes(real)) throw new ImageError(link, 0, `parent chain loops back to ${real}`);
    if (this.chain.length >= MAX_DEPTH) throw new ImageError(link, 0, `parent chain deeper than ${MAX_DEPTH} dirs`);
    this.parentDir = new ParentDir(real, [...this.chain, real]);
    return this.parentDir;
  }

  /** All pages of image id `pid` in this dir, resolved down the chain (cached). */
  pagesOf(pid: number, askedBy: string, askedAt: number): PageIndex {
    let idx = this.cache.get(pid);
    if (!idx) {
      const pm = loadPagemap(this.dir, `pagemap-${pid}.img`);
      if (!pm) throw new ImageError(askedBy, askedAt, `PE_PARENT pages, but the parent dir ${this.dir} has no pagemap-${pid}.img`);
      idx = new PageIndex(resolvePagemap(pm, this, pid));
      this.cache.set(pid, idx);
    }
    return idx;
  }
}

/** Turns pagemap entries into ranges with a concrete data location, following PE_PARENT. */
export function resolvePagemap(pm: Pagemap, here: ParentDir, pid: number): ResolvedPiece[] {
  const out: ResolvedPiece[] = [];
  for (const e of pm.entries) {
    const lazy = (e.flags & PE_LAZY) !== 0;
    const base = { lazy, file: pm.file, recOffset: e.recOffset };
    if (e.flags & PE_PRESENT) {
      out.push({ start: e.start, end: e.end, location: { kind: 'file', file: pm.pagesFile!, offset: e.fileOffset! }, ...base });
    } else if (e.flags & PE_PARENT) {
      const parent = here.parent();
      if (!parent) throw new ImageError(pm.file, e.recOffset, `entry ${hex(e.start)} is PE_PARENT but ${here.dir} has no parent link`);
      let at = e.start;
      for (const p of parent.pagesOf(pid, pm.file, e.recOffset).slice(e.start, e.end)) {
        // A parent page may itself be lazy-only (remote) or a hole (zero): both are refused,
        // since CRIU's restorer would find no data for it either.
        if (p.start !== at || p.location.kind !== 'file') break;
        out.push({ ...p, ...base });
        at = p.end;
      }
      if (at !== e.end) {
        throw new ImageError(pm.file, e.recOffset, `PE_PARENT page ${hex(at)} has no data in the parent images (${parent.dir})`);
      }
    } else {
      out.push({ start: e.start, end: e.end, location: remoteLocation(), ...base });
    }
  }
  return out;
}
