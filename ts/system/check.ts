/**
 * `lazy-pages check`: what this kernel and this user can do, as `criu check --feature uffd-noncoop`
 * does for CRIU: userfaultfd and who may use it, each uffd feature a lazy restore needs, the limits a
 * restore meets (pid_max, pipe size), the pid namespace, and a criu binary if one is found. Each
 * item says ok, warn (works, with a caveat) or fail (a lazy restore cannot be served here).
 */
import { accessSync, constants, readFileSync, readlinkSync } from 'node:fs';
import { release } from 'node:os';
import { delimiter, join } from 'node:path';

import { criuVersion } from '../bench/criu/locate-criu.js';
import { uffdProbe } from '../native/index.js';

export type Level = 'ok' | 'warn' | 'fail' | 'info';

export interface CheckItem {
  /** Stable identifier (for scripts reading --json). */
  id: string;
  level: Level;
  /** One line. */
  summary: string;
  /** What to do about it, when something is off. */
  hint?: string;
}

export interface CheckReport {
  schemaVersion: 1;
  /** True unless some item failed: a lazy restore can be served here. */
  ok: boolean;
  verdict: string;
  items: CheckItem[];
}

/** UFFD_FEATURE_* bits, by name (Linux uAPI). */
export const UFFD_FEATURES: readonly [bigint, string][] = [
  [0x1n, 'PAGEFAULT_FLAG_WP'],
  [0x2n, 'EVENT_FORK'],
  [0x4n, 'EVENT_REMAP'],
  [0x8n, 'EVENT_REMOVE'],
  [0x10n, 'MISSING_HUGETLBFS'],
  [0x20n, 'MISSING_SHMEM'],
  [0x40n, 'EVENT_UNMAP'],
  [0x80n, 'SIGBUS'],
  [0x100n, 'THREAD_ID'],
  [0x200n, 'MINOR_HUGETLBFS'],
  [0x400n, 'MINOR_SHMEM'],
  [0x800n, 'EXACT_ADDRESS'],
  [0x1000n, 'WP_HUGETLBFS_SHMEM'],
  [0x2000n, 'WP_UNPOPULATED'],
  [0x4000n, 'POISON'],
  [0x8000n, 'WP_ASYNC'],
  [0x10000n, 'MOVE'],
];

const featureNames = (bits: bigint) => UFFD_FEATURES.filter(([b]) => (bits & b) !== 0n).map(([, n]) => n);

const ERRNO: Record<number, string> = { 1: 'EPERM', 22: 'EINVAL', 38: 'ENOSYS', 24: 'EMFILE', 12: 'ENOMEM' };

function readTrim(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** This process's effective capabilities (CapEff of /proc/self/status). */
function capEff(): bigint | undefined {
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(readTrim('/proc/self/status') ?? '');
  return m ? BigInt(`0x${m[1]}`) : undefined;
}

const CAP_SYS_PTRACE = 19n;
const CAP_SYS_RESOURCE = 24n;

/** The criu binary to report: `criu` given, else $CRIU, else `criu` on the PATH. */
function findCriu(given?: string): string | undefined {
  const candidates = [given, process.env.CRIU, ...(process.env.PATH ?? '').split(delimiter).filter(Boolean).map((d) => join(d, 'criu'))];
  for (const c of candidates) {
    if (!c) continue;
    try {
      accessSync(c, constants.X_OK);
      return c;
    } catch {
      /* next */
    }
  }
  return undefined;
}

export interface CheckOptions {
  /** A criu binary to report on (else $CRIU, else the PATH). */
  criu?: string;
}

/** Runs every check. Never throws: what cannot be read is reported as such. */
export function checkSystem(o: CheckOptions = {}): CheckReport {
  const items: CheckItem[] = [];
  const uid = process.getuid?.() ?? -1;
  const caps = capEff();
  const hasCap = (c: bigint) => caps !== undefined && ((caps >> c) & 1n) === 1n;

  items.push({ id: 'kernel', level: 'info', summary: `kernel ${release()}, ${process.arch}` });
  items.push({
    id: 'user',
    level: 'info',
    summary: `uid ${uid}${uid === 0 ? ' (root)' : ''}; CAP_SYS_PTRACE ${hasCap(CAP_SYS_PTRACE) ? 'yes' : 'no'}`,
  });

  const unpriv = readTrim('/proc/sys/vm/unprivileged_userfaultfd');
  let p: ReturnType<typeof uffdProbe> | undefined;
  try {
    p = uffdProbe();
  } catch (e) {
    items.push({ id: 'native-addon', level: 'fail', summary: `native addon: ${(e as Error).message}` });
  }
  if (p === undefined) {
    // Reported above: without the addon nothing can be served (and userfaultfd not probed).
  } else if (p.features === undefined) {
    const name = ERRNO[p.errno ?? 0] ?? `errno ${p.errno}`;
    items.push({
      id: 'userfaultfd',
      level: 'fail',
      summary: `userfaultfd(2) refused: ${name}`,
      hint:
        p.errno === 1
          ? `run as root (or with CAP_SYS_PTRACE), or allow users: sysctl -w vm.unprivileged_userfaultfd=1 (now ${unpriv ?? 'unknown'})`
          : p.errno === 38
            ? 'this kernel has no userfaultfd (CONFIG_USERFAULTFD)'
            : undefined,
    });
  } else {
    items.push({ id: 'userfaultfd', level: 'ok', summary: `userfaultfd available to this user (vm.unprivileged_userfaultfd = ${unpriv ?? 'unknown'})` });
    const missing = featureNames(p.required & ~p.features);
    items.push(
      missing.length === 0
        ? { id: 'uffd-features', level: 'ok', summary: `non-cooperative events: ${featureNames(p.required).join(', ')}` }
        : {
            id: 'uffd-features',
            level: 'fail',
            summary: `missing uffd features: ${missing.join(', ')}`,
            hint: uid === 0 ? 'a newer kernel is needed (fork, mremap, madvise and munmap events)' : 'EVENT_FORK needs CAP_SYS_PTRACE: run as root',
          },
    );
    items.push({ id: 'uffd-offered', level: 'info', summary: `offered: ${featureNames(p.features).join(', ') || 'none'}` });
  }

  const pidMax = Number(readTrim('/proc/sys/kernel/pid_max'));
  if (Number.isFinite(pidMax)) {
    items.push(
      pidMax >= 4194304
        ? { id: 'pid-max', level: 'ok', summary: `kernel.pid_max = ${pidMax}` }
        : {
            id: 'pid-max',
            level: 'warn',
            summary: `kernel.pid_max = ${pidMax}: a restore that needs its checkpoint's pids may find one taken`,
            hint: 'sysctl -w kernel.pid_max=4194304',
          },
    );
  }

  const pipeMax = Number(readTrim('/proc/sys/fs/pipe-max-size'));
  if (Number.isFinite(pipeMax)) {
    const enough = pipeMax >= 4 << 20 || hasCap(CAP_SYS_RESOURCE);
    items.push({
      id: 'pipe-max-size',
      level: enough ? 'ok' : 'warn',
      summary: `fs.pipe-max-size = ${pipeMax}${hasCap(CAP_SYS_RESOURCE) ? ' (CAP_SYS_RESOURCE: larger pipes allowed)' : ''}`,
      ...(enough ? {} : { hint: '`criu dump --lazy-pages` and `criu page-server` need 4 MiB pipes: echo 4194304 > /proc/sys/fs/pipe-max-size' }),
    });
  }

  let ns = '';
  try {
    ns = readlinkSync('/proc/self/ns/pid');
  } catch {
    /* unknown */
  }
  const nsPids = /^NSpid:\s*(.*)$/m.exec(readTrim('/proc/self/status') ?? '')?.[1]?.trim().split(/\s+/) ?? [];
  items.push({
    id: 'pid-namespace',
    level: 'info',
    summary: `pid namespace ${ns || 'unknown'}${nsPids.length > 1 ? ` (nested ${nsPids.length - 1} deep: restored tasks in outer namespaces cannot be seen from here)` : ''}`,
  });

  const criu = findCriu(o.criu);
  if (criu) {
    const version = criuVersion(criu);
    items.push({ id: 'criu', level: 'info', summary: `criu: ${criu} (${version === undefined ? 'version unknown' : `Version: ${version}`})` });
  } else {
    items.push({ id: 'criu', level: 'info', summary: 'criu: none found ($CRIU, PATH); lazy-pages serves restores that criu runs' });
  }

  const failed = items.filter((i) => i.level === 'fail');
  const warned = items.filter((i) => i.level === 'warn');
  const ok = failed.length === 0;
  const verdict = ok
    ? `lazy-pages can serve lazy restores here${warned.length ? ` (${warned.length} warning${warned.length > 1 ? 's' : ''})` : ''}`
    : `lazy-pages cannot serve lazy restores here: ${failed.map((f) => f.summary).join('; ')}`;
  return { schemaVersion: 1, ok, verdict, items };
}

/** The report as a person reads it. */
export function formatCheck(r: CheckReport): string {
  const mark: Record<Level, string> = { ok: 'ok  ', warn: 'WARN', fail: 'FAIL', info: '    ' };
  const lines = r.items.map((i) => `${mark[i.level]} ${i.summary}${i.hint ? `\n       -> ${i.hint}` : ''}`);
  return `${lines.join('\n')}\n${r.ok ? 'verdict:' : 'VERDICT:'} ${r.verdict}\n`;
}
