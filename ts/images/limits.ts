/**
 * How much dumped memory one process of a checkpoint may claim.
 *
 * Every page a pagemap gives data for (lazy or not, in the pages file, a parent dump or on a page
 * server) is installed in the restored process, and lazy-pages transfers every lazy page before it
 * is done: the process must hold all of them at once, in RAM or swap. A process that claims more
 * than this machine's RAM plus swap cannot be restored here, whatever the images say, and nothing
 * else bounds a lazy-only claim (its data is on a page server): a 34-byte pagemap can claim 2 TiB.
 *
 * The bound is per process, not per checkpoint: forked processes share pages copy-on-write, and
 * CRIU dumps each process's pages in full, so a tree's pagemaps may well add up to more than the
 * source machine ever had.
 */
import { readFileSync } from 'node:fs';
import os from 'node:os';

/** Options of `Checkpoint.open`. */
export interface CheckpointOptions {
  /**
   * Most bytes of dumped memory (pages with data, lazy or not) one process may claim. Default: what
   * this machine could ever back, MemTotal + SwapTotal of /proc/meminfo.
   */
  maxProcessMemory?: bigint;
}

/** The bound applied to each process, and how an error states it. */
export interface MemoryBound {
  bytes: bigint;
  /** Ends the error message: "more than …". */
  what: string;
}

/** The bound `Checkpoint.open` applies for `opts`. */
export function memoryBound(opts: CheckpointOptions): MemoryBound {
  if (opts.maxProcessMemory !== undefined) {
    const bytes = opts.maxProcessMemory;
    return { bytes, what: `more than the ${formatBytes(bytes)} per process allowed (maxProcessMemory)` };
  }
  const bytes = machineMemoryBytes();
  return { bytes, what: `more than this machine could ever back for one process (RAM + swap: ${formatBytes(bytes)}): it cannot be restored here` };
}

/** MemTotal + SwapTotal in bytes (os.totalmem() when /proc/meminfo cannot be read). */
export function machineMemoryBytes(): bigint {
  try {
    const text = readFileSync('/proc/meminfo', 'utf8');
    const kb = (name: string) => {
      const m = new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text);
      return m ? BigInt(m[1]!) * 1024n : undefined;
    };
    const mem = kb('MemTotal');
    if (mem !== undefined) return mem + (kb('SwapTotal') ?? 0n);
  } catch {
    /* not Linux, or /proc is not mounted: fall back */
  }
  return BigInt(os.totalmem());
}

/** 2199023255552n -> "2 TiB", 25276063744n -> "23.5 GiB". */
export function formatBytes(n: bigint): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];
  let u = 0;
  let v = Number(n);
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} bytes` : `${Number.isInteger(v) ? v : v.toFixed(1)} ${units[u]}`;
}
