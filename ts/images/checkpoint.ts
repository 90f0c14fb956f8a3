/**
 * A whole images dir: the process tree, each process's memory model, and shared memory.
 * Everything is validated up front, so the daemon never meets a bad image mid-migration.
 */
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { MAGIC, PAGE_SIZE_N, TASK_ALIVE, TASK_DEAD, TASK_STOPPED, TASK_ZOMBIE } from './constants.js';
import { ImageError, hex } from './errors.js';
import { decodeRecord, readImage, readImageBytes, splitRecords } from './framing.js';
import { CoreEntrySchema } from './gen/criu/core_pb.js';
import { InventoryEntrySchema } from './gen/criu/inventory_pb.js';
import { MmEntrySchema } from './gen/criu/mm_pb.js';
import { PstreeEntrySchema } from './gen/criu/pstree_pb.js';
import type { DataLocation, PageRange } from './page-index.js';
import { loadPagemap } from './pagemap.js';
import { ParentDir, resolvePagemap } from './parent.js';
import { memoryBound, type CheckpointOptions, type MemoryBound } from './limits.js';
import { imageFile, realDir, requireImageFile } from './paths.js';
import { buildProcess, pageStats, type ProcessImage, type TaskInfo, type TaskState } from './process.js';
import { toVmas, type Vma } from './vma.js';

export interface ShmemInfo {
  shmid: bigint;
  pagesId: number;
  entries: number;
  pages: number;
}

export class Checkpoint {
  private readonly byPid: Map<number, ProcessImage>;

  private constructor(
    readonly dir: string,
    readonly processes: ProcessImage[],
    readonly shmem: ShmemInfo[],
  ) {
    this.byPid = new Map(processes.map((p) => [p.pid, p]));
  }

  /**
   * Parses and checks every image of `dir` the daemon needs. Bad input throws one ImageError, and
   * so does a process claiming more memory than `opts.maxProcessMemory` (default: this machine's
   * RAM + swap, see limits.ts).
   */
  static async open(dir: string, opts: CheckpointOptions = {}): Promise<Checkpoint> {
    const real = realDir(dir);
    readInventory(real);
    const tasks = readPstree(real);
    const here = new ParentDir(real, [real]);
    const maxMemory = memoryBound(opts);
    const processes = tasks.map((t) => loadProcess(real, t, here, maxMemory));
    return new Checkpoint(real, processes, readShmem(real));
  }

  process(pid: number): ProcessImage | undefined {
    return this.byPid.get(pid);
  }

  /** The model as plain JSON: bigints become "0x…" strings. */
  /**
   * The model for `inspect --json` (schemaVersion 1): addresses and bit masks as "0x…" strings, counts,
   * byte sizes and file offsets as numbers (all below 2^53).
   */
  toJSON(): unknown {
    return {
      schemaVersion: 1,
      dir: this.dir,
      processes: this.processes.map((p) => {
        const s = pageStats(p);
        return {
          pid: p.pid, ppid: p.ppid, pgid: p.pgid, sid: p.sid, threads: p.threads, state: p.state, pagesId: p.pagesId,
          lazyBytes: Number(p.lazyBytes),
          pages: { vma: Number(s.vmaPages), lazy: Number(s.lazyPages), lazyRemote: Number(s.lazyRemotePages), eager: Number(s.eagerPages), zero: Number(s.zeroPages) },
          vmas: p.vmas.map(vmaJSON),
          lazyRanges: p.lazyRanges.map(rangeJSON),
          eagerRanges: p.eagerRanges.map(rangeJSON),
        };
      }),
      shmem: this.shmem.map((s) => ({ shmid: hex(s.shmid), pagesId: s.pagesId, entries: s.entries, pages: s.pages })),
    };
  }
}

function vmaJSON(v: Vma) {
  return { start: hex(v.start), end: hex(v.end), pgoff: Number(v.pgoff), shmid: hex(v.shmid), prot: v.prot, flags: hex(v.flags), status: hex(v.status), madv: hex(v.madv), lazy: v.lazy };
}

function locJSON(l: DataLocation) {
  return l.kind === 'file' ? { kind: 'file', file: l.file, offset: Number(l.offset) } : { kind: l.kind };
}

function rangeJSON(r: PageRange) {
  return { start: hex(r.start), end: hex(r.end), location: locJSON(r.location) };
}

function readInventory(dir: string): void {
  const file = requireImageFile(dir, 'inventory.img', 'every CRIU images dir has one');
  const recs = readImage(file, MAGIC.inventory, InventoryEntrySchema);
  if (recs.length !== 1) throw new ImageError(file, 4, `expected one inventory record, found ${recs.length}`);
  const v = recs[0]!.msg.imgVersion;
  if (v !== 1 && v !== 2) throw new ImageError(file, recs[0]!.rec.offset, `unsupported img_version ${v} (CRIU writes 2)`);
}

function readPstree(dir: string): Omit<TaskInfo, 'state'>[] {
  const file = requireImageFile(dir, 'pstree.img', 'it lists the processes');
  const recs = readImage(file, MAGIC.pstree, PstreeEntrySchema);
  if (recs.length === 0) throw new ImageError(file, 8, 'pstree has no process');
  const seen = new Set<number>();
  return recs.map(({ rec, msg }) => {
    if (msg.pid === 0 || msg.pid > 0x7fffffff) throw new ImageError(file, rec.offset, `invalid pid ${msg.pid}`);
    if (seen.has(msg.pid)) throw new ImageError(file, rec.offset, `pid ${msg.pid} appears twice`);
    seen.add(msg.pid);
    return { pid: msg.pid, ppid: msg.ppid, pgid: msg.pgid, sid: msg.sid, threads: [...msg.threads] };
  });
}

function readState(dir: string, pid: number): TaskState {
  const file = requireImageFile(dir, `core-${pid}.img`, `pid ${pid} is in pstree.img`);
  const recs = splitRecords(file, readImageBytes(file), MAGIC.core);
  if (recs.length === 0) throw new ImageError(file, 8, 'core image has no core_entry');
  const core = decodeRecord(file, recs[0]!, CoreEntrySchema);
  if (!core.tc) throw new ImageError(file, recs[0]!.offset, 'core_entry has no tc (task_core_entry)');
  switch (core.tc.taskState) {
    case TASK_ALIVE: return 'alive';
    case TASK_STOPPED: return 'stopped';
    case TASK_ZOMBIE: return 'zombie';
    case TASK_DEAD: return 'dead';
    default: throw new ImageError(file, recs[0]!.offset, `unknown task_state ${core.tc.taskState}`);
  }
}

function loadProcess(dir: string, t: Omit<TaskInfo, 'state'>, here: ParentDir, maxMemory: MemoryBound): ProcessImage {
  const state = readState(dir, t.pid);
  const task: TaskInfo = { ...t, state };
  // Zombie/dead tasks have no memory: CRIU writes no mm or pagemap for them.
  if (state === 'zombie' || state === 'dead') return buildProcess(task, [], 0, []);
  const mmFile = requireImageFile(dir, `mm-${t.pid}.img`, `pid ${t.pid} is in pstree.img`);
  const mmRecs = readImage(mmFile, MAGIC.mm, MmEntrySchema);
  if (mmRecs.length !== 1) throw new ImageError(mmFile, 8, `expected one mm_entry, found ${mmRecs.length}`);
  const vmas = toVmas(mmFile, mmRecs[0]!.rec.offset, mmRecs[0]!.msg.vmas);
  const pm = loadPagemap(dir, `pagemap-${t.pid}.img`);
  if (!pm) throw new ImageError(path.join(dir, `pagemap-${t.pid}.img`), 0, `file is missing (pid ${t.pid} is in pstree.img)`);
  return buildProcess(task, vmas, pm.pagesId, resolvePagemap(pm, here, t.pid), maxMemory);
}

function readShmem(dir: string): ShmemInfo[] {
  const out: ShmemInfo[] = [];
  for (const name of readdirSync(dir).sort()) {
    const m = /^pagemap-shmem-(\d+)\.img$/.exec(name);
    if (!m || !imageFile(dir, name)) continue;
    const pm = loadPagemap(dir, name)!;
    const pages = pm.entries.reduce((n, e) => n + (e.end - e.start) / PAGE_SIZE_N, 0n);
    out.push({ shmid: BigInt(m[1]!), pagesId: pm.pagesId, entries: pm.entries.length, pages: Number(pages) });
  }
  return out;
}
