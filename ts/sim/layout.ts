/**
 * The restore simulator's input, made from a real checkpoint: which VMAs to map (the lazy ones, at
 * their image addresses), which eager pages to put in before the hand-over (as `criu restore` does),
 * and what every lazy byte must read after the restore (the pages file's bytes, or zero in holes).
 * Schema: crates/restore-sim/LAYOUT.md.
 */
import type { Checkpoint, ProcessImage } from '../images/index.js';

const hex = (v: bigint) => `0x${v.toString(16)}`;
const PROT_READ = 1;

export interface SimLayout {
  workDir: string;
  processes: {
    pid: number;
    ppid: number;
    zombie: boolean;
    vmas: { start: string; end: string; prot: number; lazy: boolean }[];
    eager: { start: string; end: string; file: string; offset: number }[];
    expect: ({ start: string; end: string; kind: 'file'; file: string; offset: number } | { start: string; end: string; kind: 'zero' })[];
  }[];
}

function processLayout(p: ProcessImage) {
  const lazyVmas = p.vmas.filter((v) => v.lazy);
  const inLazyVma = (start: bigint, end: bigint) => lazyVmas.some((v) => v.start <= start && end <= v.end);
  return {
    pid: p.pid,
    ppid: p.ppid,
    zombie: p.state === 'zombie',
    // A VMA nobody may read (a PROT_NONE guard) is mapped but not registered or verified: it has no pages.
    vmas: lazyVmas.map((v) => ({ start: hex(v.start), end: hex(v.end), prot: v.prot, lazy: (v.prot & PROT_READ) !== 0 })),
    eager: p.eagerRanges
      .filter((r) => r.location.kind === 'file' && inLazyVma(r.start, r.end))
      .map((r) => ({
        start: hex(r.start),
        end: hex(r.end),
        file: (r.location as { file: string }).file,
        offset: Number((r.location as { offset: bigint }).offset),
      })),
    expect: p.lazyRanges.map((r) =>
      r.location.kind === 'file'
        ? { start: hex(r.start), end: hex(r.end), kind: 'file' as const, file: r.location.file, offset: Number(r.location.offset) }
        : { start: hex(r.start), end: hex(r.end), kind: 'zero' as const },
    ),
  };
}

/** The simulator layout for restoring `ck` against a daemon listening in `workDir`. */
export function layoutFor(ck: Checkpoint, workDir: string): SimLayout {
  return { workDir, processes: ck.processes.map(processLayout) };
}
