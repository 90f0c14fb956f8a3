/**
 * What a page server can serve: per pid, the lazy pages whose data is in this images dir (or a
 * parent dir), merged into maximal runs that are contiguous both in memory and in one pages file.
 * Lazy pages with no data here (`remote`) are not served. The native server looks runs up (catalog.rs).
 */
import { Checkpoint, type PageRange } from '../images/index.js';

export interface ServableRun {
  start: bigint;
  end: bigint;
  file: string;
  /** File offset of the page at `start`. */
  offset: bigint;
}

export class Catalog {
  private constructor(private readonly byPid: Map<number, { runs: ServableRun[] }>, readonly pages: bigint) {}

  static async open(imagesDir: string): Promise<Catalog> {
    // No bound on a process's memory by this machine's RAM + swap (Checkpoint.open's default): a page
    // server only reads pages from files to the network, never backs a process's memory, and a storage
    // host may well serve the checkpoint of a process bigger than itself. 2^64 is the whole address space.
    const ck = await Checkpoint.open(imagesDir, { maxProcessMemory: 1n << 64n });
    const byPid = new Map<number, { runs: ServableRun[] }>();
    let pages = 0n;
    for (const p of ck.processes) {
      const runs = mergeRuns(p.lazyRanges);
      for (const r of runs) pages += (r.end - r.start) / 4096n;
      byPid.set(p.pid, { runs });
    }
    return new Catalog(byPid, pages);
  }

  get pids(): number[] {
    return [...this.byPid.keys()];
  }

  /** Every servable run of `pid`, sorted by image address. */
  runs(pid: number): readonly ServableRun[] {
    return this.byPid.get(pid)?.runs ?? [];
  }
}

/**
 * CRIU's pagemap splits memory into entries of ≤ 256 pages; serving those one by one would
 * turn a 1 GiB background transfer into thousands of short replies. Adjacent entries that are
 * also adjacent in the same file are one run.
 */
function mergeRuns(ranges: PageRange[]): ServableRun[] {
  const out: ServableRun[] = [];
  for (const r of ranges) {
    if (r.location.kind !== 'file') continue;
    const last = out[out.length - 1];
    if (last && last.end === r.start && last.file === r.location.file && last.offset + (last.end - last.start) === r.location.offset) {
      last.end = r.end;
    } else out.push({ start: r.start, end: r.end, file: r.location.file, offset: r.location.offset });
  }
  return out;
}
