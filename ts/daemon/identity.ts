/**
 * Which process, as this daemon sees it, is the restored task that handed over its userfaultfd?
 *
 * CRIU sends the task's pid as the restored tree's pid namespace numbers it (the pid in the images).
 * For a plain `criu restore` that is its real pid; for a container (`unshare --pid --fork criu
 * restore`, or any runtime that restores into a new pid namespace) the same number names, in the
 * daemon's namespace, an unrelated process or none. So the task is looked up among the descendants
 * of the restorer (its pid from SO_PEERCRED, which the kernel translates into our namespace) by the
 * innermost pid of `NSpid` in /proc/PID/status. Killing or watching the wrong process would be far
 * worse than not being able to, so the one found is trusted only if it has the task's lazy VMAs at
 * their addresses, still registered with a userfaultfd for missing pages (`um` in smaps' VmFlags).
 */
import { readdirSync, readFileSync } from 'node:fs';

import type { ProcessImage } from '../images/index.js';

export function ownsLazyVmas(pid: number, image: ProcessImage): boolean {
  const want = image.vmas.filter((v) => v.lazy && (v.prot & 1) !== 0);
  if (want.length === 0) return false;
  let smaps: string;
  try {
    smaps = readFileSync(`/proc/${pid}/smaps`, 'utf8');
  } catch {
    return false;
  }
  const registered = new Set<string>();
  let current: string | undefined;
  for (const line of smaps.split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
    if (m) {
      current = m[1];
      continue;
    }
    if (current && line.startsWith('VmFlags:') && / um\b/.test(line)) registered.add(current);
  }
  return want.some((v) => registered.has(v.start.toString(16)));
}

/**
 * The pid in this namespace of the task the restorer `restorer` calls `nsPid`, confirmed by its lazy
 * VMAs; undefined if no such descendant is found (the restorer's own pid is never the answer).
 */
export function resolveTask(nsPid: number, restorer: number, image: ProcessImage): number | undefined {
  const found = descendantWithNsPid(nsPid, restorer);
  return found !== undefined && ownsLazyVmas(found, image) ? found : undefined;
}

/** The innermost pid of `pid` (last field of NSpid in /proc/PID/status), or undefined. */
export function innermostPid(pid: number): number | undefined {
  try {
    const m = /^NSpid:\s*(.*)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    const ids = m?.[1]?.trim().split(/\s+/).map(Number) ?? [];
    return ids.length > 0 ? ids[ids.length - 1] : undefined;
  } catch {
    return undefined;
  }
}

/** Children of every thread of `pid` (pids in this namespace). */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      for (const w of readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').split(/\s+/)) if (w) out.push(Number(w));
    } catch {
      /* the thread exited meanwhile */
    }
  }
  return out;
}

/**
 * Breadth-first over the restorer's descendants: the one whose innermost pid is `nsPid`. In the
 * restorer's own namespace that is simply the pid itself (NSpid has one field); the walk is bounded.
 */
export function descendantWithNsPid(nsPid: number, restorer: number): number | undefined {
  if (restorer <= 1 || nsPid <= 0) return undefined;
  const queue = childrenOf(restorer);
  const seen = new Set<number>([restorer, process.pid]);
  for (let i = 0; i < queue.length && i < 100_000; i++) {
    const pid = queue[i]!;
    if (seen.has(pid)) continue;
    seen.add(pid);
    if (innermostPid(pid) === nsPid) return pid;
    queue.push(...childrenOf(pid));
  }
  return undefined;
}

/** Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat), or undefined. */
export function startTicks(pid: number | 'self'): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(rest[19]);
  } catch {
    return undefined;
  }
}

/**
 * Could `pid` be a task restored for this daemon? Restored tasks are created after the daemon
 * started (`criu restore --lazy-pages` needs the daemon listening), so a process that is older than
 * the daemon is certainly not one: it is never killed, whatever pid a restorer claims.
 */
export function youngerThanUs(pid: number): boolean {
  const self = startTicks('self');
  const them = startTicks(pid);
  return self !== undefined && them !== undefined && them >= self;
}

/** Parent pid of `pid` (field 4 of /proc/PID/stat), or undefined. */
function parentOf(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return undefined;
  }
}

/**
 * Does `pid` descend from `ancestor` (the restorer, from SO_PEERCRED)? The restorer forks every task
 * it restores, so a task it names in a failed hand-over is killed only if this holds: a pid that the
 * restorer got wrong, or garbage that parses as a pid, never hits an unrelated process (or us).
 */
export function descendsFrom(pid: number, ancestor: number): boolean {
  if (ancestor <= 1 || pid === process.pid || pid === ancestor) return false;
  let p: number | undefined = pid;
  for (let depth = 0; depth < 64 && p !== undefined && p > 1; depth++) {
    p = parentOf(p);
    if (p === ancestor) return true;
  }
  return false;
}

/** SIGKILL a pid; false when there is no such process. */
export function killQuietly(pid: number): boolean {
  try {
    process.kill(pid, 'SIGKILL');
    return true;
  } catch {
    return false;
  }
}

/**
 * The pid of the child a process just forked. The kernel's FORK message carries only the child's
 * uffd, but the parent is still blocked in fork() until we read it, so its newest unknown child in
 * /proc/<pid>/task/<tid>/children is the one. Used only to be able to kill that child later.
 */
export function findNewChild(parentPid: number | undefined, known: Set<number>): number | undefined {
  if (parentPid === undefined) return undefined;
  const found: number[] = [];
  try {
    for (const tid of readdirSync(`/proc/${parentPid}/task`)) {
      const text = readFileSync(`/proc/${parentPid}/task/${tid}/children`, 'utf8');
      for (const w of text.split(/\s+/)) if (w && !known.has(Number(w))) found.push(Number(w));
    }
  } catch {
    return undefined;
  }
  return found.length === 1 ? found[0] : undefined;
}

/**
 * Is a live socket listening at `path`? Read from /proc/net/unix (the listening flag is
 * __SO_ACCEPTCON, 0x10000) rather than by connecting: a connection would look like a restorer to
 * the daemon that owns it (CRIU's would then fail its restore).
 */
export function someoneListensOn(path: string): boolean {
  let table: string;
  try {
    table = readFileSync('/proc/net/unix', 'utf8');
  } catch {
    return false;
  }
  for (const line of table.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length >= 8 && f.slice(7).join(' ') === path && (parseInt(f[3], 16) & 0x10000) !== 0) return true;
  }
  return false;
}

