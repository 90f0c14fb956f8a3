/**
 * The real CRIU 4.2 in the tests: find or build it, compile the C test programs
 * (__test__/criu-progs), start one detached, dump it, and run every party of a lazy restore as a
 * user would: `criu dump [--lazy-pages]`, `criu page-server --lazy-pages`, `criu lazy-pages`,
 * `criu restore --lazy-pages` (in a new pid namespace, as containers are restored), and our
 * `lazy-pages daemon` / `lazy-pages page-server` CLI.
 *
 * CRIU comes from $CRIU, else from ../shared/criu/build.sh (built once, cached). When it cannot be
 * had, criuTest() registers the tests as skipped with a visible notice, or, when CI=true, as
 * failing with the reason: CI must not go green without them.
 *
 * Every process started here is SIGKILLed by pid in t.teardown on every exit path (a restore in its
 * pid namespace dies with that namespace's init, criu, which dies with `unshare --kill-child`).
 * The functions take extra CLI arguments so TLS tests can reuse them.
 */
import test, { type ExecutionContext, type ImplementationFn } from 'ava';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  closeSync,
  cpSync,
  existsSync,
  linkSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { Checkpoint } from '../../ts/images/index.js';
import { repoRoot, tempDir } from './common.js';

export { repoRoot, tempDir } from './common.js';

export const MiB = 1 << 20;
export const progsDir = join(repoRoot, '__test__', 'criu-progs');
export const lazyPagesBin = join(repoRoot, 'bin', 'lazy-pages.js');
/** What `criu dump --lazy-pages` and `criu page-server` need to set their pipes (F_SETPIPE_SZ). */
export const PIPE_MAX_SIZE = 4194304;

// ---------------------------------------------------------------------------------------------
// Finding CRIU
// ---------------------------------------------------------------------------------------------

export interface CriuAvailability {
  /** The criu binary, when everything the tests need is here. */
  bin?: string;
  /** Why the CRIU tests cannot run (when bin is undefined). */
  why?: string;
  version?: string;
}

let availability: CriuAvailability | undefined;

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function hasCommand(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

/** $CRIU, else ../shared/criu/build.sh (idempotent; builds once into ~/.cache/criu-4.2). Never throws. */
export function findCriu(): CriuAvailability {
  if (availability) return availability;
  availability = resolveCriu();
  return availability;
}

function resolveCriu(): CriuAvailability {
  if (process.getuid?.() !== 0) return { why: 'the CRIU tests need root' };
  for (const cmd of ['gcc', 'unshare', 'nsenter']) if (!hasCommand(cmd)) return { why: `${cmd} is not installed` };
  let bin = process.env.CRIU;
  if (!bin) {
    const script = join(repoRoot, '..', 'shared', 'criu', 'build.sh');
    if (!existsSync(script)) return { why: `no $CRIU and no ${script} to build it with` };
    // Two test files may start at once on a cold cache: one builds, the other waits for it.
    const unlock = lockSync('criu-build', 15 * 60_000);
    try {
      const r = spawnSync(script, [], { encoding: 'utf8', timeout: 15 * 60_000 });
      if (r.status !== 0) return { why: `${script} failed (${r.status ?? r.signal}): ${(r.stderr ?? '').trim().split('\n').slice(-5).join(' | ')}` };
      bin = r.stdout.trim().split('\n').pop();
    } finally {
      unlock();
    }
    if (!bin) return { why: `${script} printed no path` };
  }
  const v = spawnSync(bin, ['--version'], { encoding: 'utf8', timeout: 30_000 });
  if (v.status !== 0) return { why: `${bin} --version failed: ${v.error ? v.error.message : (v.stderr || `exit ${v.status}`).trim()}` };
  const check = spawnSync(bin, ['check', '--feature', 'uffd-noncoop'], { encoding: 'utf8', timeout: 30_000 });
  if (check.status !== 0) return { why: `${bin} check --feature uffd-noncoop: ${(check.stdout + check.stderr).trim()}` };
  return { bin, version: /Version:\s*(\S+)/.exec(v.stdout)?.[1] };
}

let noticeShown = false;

/**
 * Registers a test that needs CRIU. Without CRIU it is skipped with a notice (stderr, and the reason
 * in its title), or fails with the reason when CI=true.
 */
export function criuTest(title: string, fn: ImplementationFn<[]>, o: { serial?: boolean } = {}): void {
  const c = findCriu();
  const reg = o.serial ? test.serial : test;
  if (c.bin) {
    reg(title, fn);
    return;
  }
  // An explicit, stated opt-out (a CI job that cannot have CRIU, e.g. the musl containers) skips even
  // with CI=true; a CRIU that is merely missing does not.
  const optOut = process.env.LAZY_PAGES_NO_CRIU;
  if (process.env.CI === 'true' && !optOut) {
    reg(title, (t) => t.fail(`CRIU is required in CI (CI=true) but cannot be used: ${c.why}. Set CRIU=/path/to/criu or make ../shared/criu/build.sh work.`));
    return;
  }
  const why = optOut ? `LAZY_PAGES_NO_CRIU=${optOut}` : c.why;
  if (!noticeShown) {
    noticeShown = true;
    process.stderr.write(`\n  NOTICE: tests with the real CRIU are SKIPPED: ${why}\n  (set CRIU=/path/to/criu 4.x; with CI=true they fail instead)\n\n`);
  }
  test.skip(`${title} [no CRIU: ${why}]`, fn);
}

/** The criu binary (only inside a criuTest). */
export function criuBin(): string {
  const c = findCriu();
  if (!c.bin) throw new Error(`no CRIU: ${c.why}`);
  return c.bin;
}

// ---------------------------------------------------------------------------------------------
// Cross-process locks (ava runs test files in parallel workers)
// ---------------------------------------------------------------------------------------------

const lockRoot = join(tmpdir(), 'lazy-pages-criu-tests');

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** A mkdir mutex between processes; a lock whose owner died is broken. Returns the unlock function. */
function lockSync(name: string, timeoutMs = 30_000): () => void {
  mkdirSync(lockRoot, { recursive: true });
  const dir = join(lockRoot, `${name}.lock`);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      mkdirSync(dir);
      writeFileSync(join(dir, 'owner'), `${process.pid}`);
      return () => rmSync(dir, { recursive: true, force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    let owner = NaN;
    try {
      owner = Number(readFileSync(join(dir, 'owner'), 'utf8'));
    } catch {
      /* being created or removed */
    }
    if (Number.isFinite(owner) && owner > 0 && !pidAlive(owner)) rmSync(dir, { recursive: true, force: true });
    if (Date.now() > deadline) throw new Error(`could not take the lock ${dir} in ${timeoutMs} ms`);
    sleepSync(20);
  }
}

// ---------------------------------------------------------------------------------------------
// fs.pipe-max-size
// ---------------------------------------------------------------------------------------------

const PIPE_SYSCTL = '/proc/sys/fs/pipe-max-size';

/**
 * Raises fs.pipe-max-size to 4 MiB for this test (what `criu dump --lazy-pages` and
 * `criu page-server` need), and puts the old value back in teardown once no other test (of any
 * worker using this helper) still needs it. A value already large enough is left alone.
 */
export function raisePipeMaxSize(t: ExecutionContext): void {
  const dir = join(lockRoot, 'pipe-max-size');
  const holder = join(dir, `holder.${process.pid}.${Math.random().toString(36).slice(2)}`);
  const liveHolders = () =>
    readdirSync(dir).filter((f) => {
      const m = /^holder\.(\d+)\./.exec(f);
      if (!m) return false;
      if (pidAlive(Number(m[1]))) return true;
      rmSync(join(dir, f), { force: true });
      return false;
    });
  const unlock = lockSync('pipe-max-size');
  try {
    mkdirSync(dir, { recursive: true });
    const current = Number(readFileSync(PIPE_SYSCTL, 'utf8'));
    if (liveHolders().length === 0 && !existsSync(join(dir, 'orig'))) writeFileSync(join(dir, 'orig'), `${current}`);
    writeFileSync(holder, '');
    if (current < PIPE_MAX_SIZE) writeFileSync(PIPE_SYSCTL, `${PIPE_MAX_SIZE}`);
  } finally {
    unlock();
  }
  t.teardown(() => {
    const un = lockSync('pipe-max-size');
    try {
      rmSync(holder, { force: true });
      if (liveHolders().length > 0) return;
      const origFile = join(dir, 'orig');
      if (existsSync(origFile)) {
        const orig = Number(readFileSync(origFile, 'utf8'));
        if (Number.isFinite(orig) && orig > 0 && orig !== Number(readFileSync(PIPE_SYSCTL, 'utf8'))) writeFileSync(PIPE_SYSCTL, `${orig}`);
        unlinkSync(origFile);
      }
    } finally {
      un();
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

/** A TCP port free on 127.0.0.1 right now (the kernel's choice). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

export interface Proc {
  child: ChildProcess;
  pid: number;
  /** Settles when the process has exited (never rejects). */
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** stderr so far (when piped). */
  stderr: () => string;
  stdout: () => string;
  /** The exit within `ms`, or undefined if it is still running then. */
  exitWithin: (ms: number) => Promise<{ code: number | null; signal: NodeJS.Signals | null } | undefined>;
}

/** Kill `pid` with SIGKILL in teardown if it is still our child (never a recycled pid: `child` knows). */
export function killOnTeardown(t: ExecutionContext, child: ChildProcess): void {
  t.teardown(() => killNow(child));
}

/**
 * What a process that should have exited is doing, for the failure message: each thread (its own and
 * its children's: the guardian) with its state, wait channel and kernel stack. A daemon hang seen
 * once in CI could not be reproduced; this says next time where it waits.
 */
export function threadsOf(pid: number | undefined, depth = 0): string {
  if (!pid || depth > 2) return '';
  const read = (f: string) => {
    try {
      return readFileSync(f, 'utf8').trim();
    } catch {
      return '?';
    }
  };
  const out: string[] = [];
  let tids: string[] = [];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return `pid ${pid}: gone`;
  }
  for (const tid of tids) {
    const d = `/proc/${pid}/task/${tid}`;
    const state = /\) (\S)/.exec(read(`${d}/stat`))?.[1] ?? '?';
    const stack = read(`${d}/stack`).split('\n').slice(0, 6).map((l) => l.replace(/^\[<[0-9a-f]+>\] /, '')).join(' < ');
    out.push(`  ${pid}/${tid} ${read(`${d}/comm`)} ${state} wchan=${read(`${d}/wchan`)}: ${stack}`);
  }
  for (const c of read(`/proc/${pid}/task/${pid}/children`).split(/\s+/).filter((x) => /^\d+$/.test(x))) {
    out.push(threadsOf(Number(c), depth + 1));
  }
  return out.filter(Boolean).join('\n');
}

function killNow(child: ChildProcess): void {
  if (child.exitCode === null && child.signalCode === null && child.pid) {
    try {
      process.kill(child.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}

/**
 * Spawns argv (killed by pid in teardown). stdout/stderr are collected unless `stdio` says
 * otherwise; fd 3 can be a pipe (status fds).
 */
export function startProc(
  t: ExecutionContext,
  argv: string[],
  o: { cwd?: string; detached?: boolean; stdio?: ('pipe' | 'ignore' | number)[]; env?: NodeJS.ProcessEnv } = {},
): Proc {
  const child = spawn(argv[0]!, argv.slice(1), {
    cwd: o.cwd ?? repoRoot,
    detached: o.detached ?? false,
    stdio: o.stdio ?? ['ignore', 'pipe', 'pipe'],
    env: o.env ?? process.env,
  });
  killOnTeardown(t, child);
  let out = '';
  let err = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('error', (e) => {
      err += `spawn ${argv[0]}: ${e.message}\n`;
      resolve({ code: -1, signal: null });
    });
    child.once('close', (code, signal) => resolve({ code, signal }));
  });
  const exitWithin = async (ms: number) => {
    let timer: NodeJS.Timeout | undefined;
    const r = await Promise.race([exit, new Promise<undefined>((res) => (timer = setTimeout(() => res(undefined), ms)))]);
    clearTimeout(timer);
    return r;
  };
  return { child, pid: child.pid ?? -1, exit, stderr: () => err, stdout: () => out, exitWithin };
}

/** Resolves when fd 3 of `p` gets a byte (a --status-fd); rejects if it exits first or after `ms`. */
export function statusReady(p: Proc, what: string, ms = 60_000, log?: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const pipe = p.child.stdio[3] as NodeJS.ReadableStream | null;
    if (!pipe) return reject(new Error(`${what}: no status pipe`));
    const timer = setTimeout(() => reject(new Error(`${what}: not ready after ${ms} ms${tailOf(log)}`)), ms);
    pipe.once('data', () => {
      clearTimeout(timer);
      resolve();
    });
    void p.exit.then((e) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited (${e.code ?? e.signal}) before it was ready: ${p.stderr().trim()}${tailOf(log)}`));
    });
  });
}

/** The last lines of a log file, for failure messages ('' if none). */
export function tailOf(file: string | undefined, lines = 25): string {
  if (!file || !existsSync(file)) return '';
  const all = readFileSync(file, 'utf8').trimEnd().split('\n');
  return `\n--- ${file} (last ${Math.min(lines, all.length)} of ${all.length} lines):\n${all.slice(-lines).join('\n')}`;
}

/** Runs argv in network namespace `ns` (made by makeNetnsPair); only the network is switched. */
export function inNetns(ns: string | undefined, argv: string[]): string[] {
  return ns ? ['nsenter', `--net=/run/netns/${ns}`, '--', ...argv] : argv;
}

// ---------------------------------------------------------------------------------------------
// The C programs
// ---------------------------------------------------------------------------------------------

export type ProgName = 'random-touch' | 'uffd-events' | 'tree' | 'threads' | 'thp';

/**
 * Compiles __test__/criu-progs/NAME.c with gcc into a cache dir keyed by the sources' hash (the
 * binary must stay where it was between dump and restore, so it is never rebuilt in place).
 */
export function compileProg(name: ProgName): string {
  const src = join(progsDir, `${name}.c`);
  const h = createHash('sha256');
  for (const f of [src, join(progsDir, 'common.h'), join(progsDir, '..', '..', 'ts', 'bench', 'criu', 'progs.h')]) h.update(readFileSync(f));
  const dir = join(tmpdir(), 'lazy-pages-criu-progs', h.digest('hex').slice(0, 16));
  const out = join(dir, name);
  if (existsSync(out)) return out;
  mkdirSync(dir, { recursive: true });
  const tmp = `${out}.${process.pid}.tmp`;
  execFileSync('gcc', ['-O2', '-g', '-Wall', '-Wextra', '-pthread', '-o', tmp, src], { stdio: ['ignore', 'ignore', 'pipe'] });
  try {
    linkSync(tmp, out); // never replaces one another worker made meanwhile
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  } finally {
    unlinkSync(tmp);
  }
  return out;
}

export interface Program {
  /** The root pid of the program as started (what `criu dump -t` takes). */
  pid: number;
  proc: Proc;
  /** The control dir: ready, go, result. */
  ctl: string;
  out: string;
  err: string;
  /** Creates ctl/go: once restored, the program checks its memory. */
  go: () => void;
  /** The result file's lines, or undefined if there is none. */
  result: () => string[] | undefined;
  /** stderr of the program (the original and, appended, the restored one). */
  errText: () => string;
}

/**
 * Starts `prog` detached (its own session, stdin /dev/null, stdout/stderr to files, as
 * `setsid prog </dev/null >out 2>err &`) and waits until it has filled its memory ("ready").
 */
export async function startProgram(
  t: ExecutionContext,
  dir: string,
  name: ProgName,
  args: string[],
  o: { netns?: string; seed?: number; readyMs?: number } = {},
): Promise<Program> {
  const bin = compileProg(name);
  const ctl = join(dir, 'ctl');
  mkdirSync(ctl, { recursive: true });
  const out = join(dir, 'prog.out');
  const err = join(dir, 'prog.err');
  const outFd = openSync(out, 'w');
  const errFd = openSync(err, 'w');
  const seed = o.seed ?? Math.floor(Math.random() * 0xffffff) + 1;
  const proc = startProc(t, inNetns(o.netns, [bin, ctl, String(seed), ...args]), { cwd: dir, detached: true, stdio: ['ignore', outFd, errFd] });
  closeSync(outFd);
  closeSync(errFd);
  const errText = () => (existsSync(err) ? readFileSync(err, 'utf8') : '');
  const readyFile = join(ctl, 'ready');
  const deadline = Date.now() + (o.readyMs ?? 60_000);
  while (!existsSync(readyFile)) {
    if (proc.child.exitCode !== null || proc.child.signalCode !== null) throw new Error(`${name} exited before it was ready: ${errText()}`);
    if (Date.now() > deadline) throw new Error(`${name} not ready after ${o.readyMs ?? 60_000} ms: ${errText()}`);
    await new Promise((r) => setTimeout(r, 5));
  }
  const pid = Number(readFileSync(readyFile, 'utf8').trim().split('\n')[0]);
  if (pid !== proc.pid) throw new Error(`${name}: ready file names pid ${pid}, started ${proc.pid}`);
  return {
    pid,
    proc,
    ctl,
    out,
    err,
    go: () => writeFileSync(join(ctl, 'go'), ''),
    result: () => {
      const f = join(ctl, 'result');
      return existsSync(f) ? readFileSync(f, 'utf8').trimEnd().split('\n') : undefined;
    },
    errText,
  };
}

// ---------------------------------------------------------------------------------------------
// CRIU's side
// ---------------------------------------------------------------------------------------------

export interface Dump {
  proc: Proc;
  imagesDir: string;
  log: string;
}

/**
 * `criu dump -t PID -D imagesDir` (the task is killed after a plain dump), waited for. With
 * `lazy: {address, port}` it is `criu dump --lazy-pages --address A --port P`: it returns once the
 * dump is written and the page server listens (--status-fd); the process keeps serving, and exits
 * when its one connection closes.
 */
export async function criuDump(
  t: ExecutionContext,
  prog: Program,
  imagesDir: string,
  o: { lazy?: { address: string; port: number }; netns?: string; extraArgs?: string[]; timeoutMs?: number } = {},
): Promise<Dump> {
  mkdirSync(imagesDir, { recursive: true });
  const log = join(imagesDir, '..', `dump-${Date.now()}.log`);
  const args = ['dump', '-t', String(prog.pid), '-D', imagesDir, '-o', log, '-v4'];
  if (o.lazy) args.push('--lazy-pages', '--address', o.lazy.address, '--port', String(o.lazy.port), '--status-fd', '3');
  args.push(...(o.extraArgs ?? []));
  const proc = startProc(t, inNetns(o.netns, [criuBin(), ...args]), { stdio: ['ignore', 'pipe', 'pipe', 'pipe'] });
  // A lazy dump keeps the task frozen; if the dump dies, the task must not run on.
  t.teardown(() => killNow(prog.proc.child));
  if (o.lazy) {
    await statusReady(proc, 'criu dump --lazy-pages', o.timeoutMs ?? 60_000, log);
  } else {
    const e = await proc.exitWithin(o.timeoutMs ?? 60_000);
    if (!e || e.code !== 0) throw new Error(`criu dump ${e ? `exited ${e.code ?? e.signal}` : 'timed out'}: ${proc.stderr().trim()}${tailOf(log)}`);
  }
  return { proc, imagesDir, log };
}

/** Copies a dump dir (as to another host). */
export function copyImages(from: string, to: string): string {
  cpSync(from, to, { recursive: true });
  return to;
}

export interface Restore {
  proc: Proc;
  log: string;
}

/**
 * `unshare --pid --fork --kill-child --mount-proc criu restore -D IMG -W WORK --lazy-pages`: the
 * tree is restored into a new pid namespace (as containers are) with criu as its init; criu waits
 * for the root task. Killing unshare kills criu, and with it the whole namespace.
 */
export function criuRestore(
  t: ExecutionContext,
  imagesDir: string,
  workDir: string,
  o: { netns?: string; extraArgs?: string[]; log?: string } = {},
): Restore {
  const log = o.log ?? join(workDir, '..', 'restore.log');
  const argv = [
    'unshare', '--pid', '--fork', '--kill-child', '--mount-proc',
    criuBin(), 'restore', '-D', imagesDir, '-W', workDir, '--lazy-pages', '-o', log, '-v4', ...(o.extraArgs ?? []),
  ];
  const proc = startProc(t, inNetns(o.netns, argv));
  return { proc, log };
}

/** `criu page-server --lazy-pages -D DIR --address A --port P` (serves ONE connection, then exits). */
export async function criuPageServer(
  t: ExecutionContext,
  imagesDir: string,
  address: string,
  port: number,
  o: { netns?: string; extraArgs?: string[] } = {},
): Promise<{ proc: Proc; log: string }> {
  const log = join(imagesDir, '..', 'criu-page-server.log');
  const argv = [criuBin(), 'page-server', '--lazy-pages', '-D', imagesDir, '--address', address, '--port', String(port), '--status-fd', '3', '-o', log, '-v4', ...(o.extraArgs ?? [])];
  const proc = startProc(t, inNetns(o.netns, argv), { stdio: ['ignore', 'pipe', 'pipe', 'pipe'] });
  await statusReady(proc, 'criu page-server', 60_000, log);
  return { proc, log };
}

/** CRIU's own daemon: `criu lazy-pages -D DIR -W WORK [--page-server --address A --port P]`, listening. */
export async function criuLazyPages(
  t: ExecutionContext,
  imagesDir: string,
  workDir: string,
  o: { pageServer?: { address: string; port: number }; netns?: string; extraArgs?: string[] } = {},
): Promise<{ proc: Proc; log: string }> {
  mkdirSync(workDir, { recursive: true });
  const log = join(workDir, '..', 'criu-lazy-pages.log');
  const argv = [criuBin(), 'lazy-pages', '-D', imagesDir, '-W', workDir, '--status-fd', '3', '-o', log, '-v4'];
  if (o.pageServer) argv.push('--page-server', '--address', o.pageServer.address, '--port', String(o.pageServer.port));
  argv.push(...(o.extraArgs ?? []));
  const proc = startProc(t, inNetns(o.netns, argv), { stdio: ['ignore', 'pipe', 'pipe', 'pipe'] });
  await statusReady(proc, 'criu lazy-pages', 60_000, log);
  return { proc, log };
}

// ---------------------------------------------------------------------------------------------
// Our side (the CLI, as a user runs it)
// ---------------------------------------------------------------------------------------------

let distChecked = false;

/** bin/lazy-pages.js runs dist/: it must exist (npm run build:ts); a stale build is worth a notice. */
function checkDist(): void {
  if (distChecked) return;
  distChecked = true;
  const main = join(repoRoot, 'dist', 'cli', 'main.js');
  if (!existsSync(main)) throw new Error(`${main} is missing: run \`npm run build:ts\` first (bin/lazy-pages.js runs dist/)`);
  const newest = (dir: string): number =>
    readdirSync(dir, { withFileTypes: true }).reduce((m, e) => {
      const p = join(dir, e.name);
      return Math.max(m, e.isDirectory() ? newest(p) : e.name.endsWith('.ts') ? statSync(p).mtimeMs : 0);
    }, 0);
  if (newest(join(repoRoot, 'ts')) > statSync(main).mtimeMs + 1000) {
    process.stderr.write('  NOTICE: ts/ is newer than dist/: the CRIU tests run bin/lazy-pages.js (dist/); run `npm run build:ts`\n');
  }
}

export interface OurDaemon {
  proc: Proc;
  log: string;
  logText: () => string;
}

/** `lazy-pages daemon -D IMG -W WORK --status-fd 3 -o LOG -v3 ...extraArgs`, listening. */
export async function startOurDaemon(
  t: ExecutionContext,
  imagesDir: string,
  workDir: string,
  o: { extraArgs?: string[]; netns?: string; verbosity?: number } = {},
): Promise<OurDaemon> {
  checkDist();
  mkdirSync(workDir, { recursive: true });
  const log = join(workDir, '..', 'lazy-pages-daemon.log');
  const argv = [process.execPath, lazyPagesBin, 'daemon', '-D', imagesDir, '-W', workDir, '--status-fd', '3', '-o', log, `-v${o.verbosity ?? 3}`, ...(o.extraArgs ?? [])];
  const proc = startProc(t, inNetns(o.netns, argv), { stdio: ['ignore', 'pipe', 'pipe', 'pipe'] });
  await statusReady(proc, 'lazy-pages daemon', 60_000, log);
  return { proc, log, logText: () => (existsSync(log) ? readFileSync(log, 'utf8') : '') };
}

/** Our page server: `lazy-pages page-server -D DIR --address A --port P ...extraArgs`; resolves once it listens. */
export async function startOurPageServer(
  t: ExecutionContext,
  imagesDir: string,
  address: string,
  port: number,
  o: { extraArgs?: string[]; netns?: string } = {},
): Promise<{ proc: Proc; port: number }> {
  checkDist();
  const argv = [process.execPath, lazyPagesBin, 'page-server', '-D', imagesDir, '--address', address, '--port', String(port), '-v3', ...(o.extraArgs ?? [])];
  const proc = startProc(t, inNetns(o.netns, argv));
  const deadline = Date.now() + 60_000;
  for (;;) {
    const m = /listening on .*:(\d+)\n/.exec(proc.stdout());
    if (m) return { proc, port: Number(m[1]) };
    if (proc.child.exitCode !== null || proc.child.signalCode !== null || Date.now() > deadline) {
      throw new Error(`lazy-pages page-server did not start: ${proc.stderr().trim()}`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}

// ---------------------------------------------------------------------------------------------
// One lazy restore, checked
// ---------------------------------------------------------------------------------------------

export interface Outcome {
  restoreExit?: { code: number | null; signal: NodeJS.Signals | null };
  result?: string[];
  /** Everything useful for a failure message. */
  diag: string;
}

/**
 * Runs the restore, waits for it (criu restore waits for the root task, but does not pass on its
 * exit status: the program's result file says how it went) and collects the result.
 */
export async function awaitRestore(prog: Program, restore: Restore, logs: (string | undefined)[], timeoutMs = 120_000): Promise<Outcome> {
  const restoreExit = await restore.proc.exitWithin(timeoutMs);
  if (!restoreExit) killNow(restore.proc.child);
  const result = prog.result();
  const diag = () =>
    [
      `criu restore: ${restoreExit ? `exit ${restoreExit.code ?? restoreExit.signal}` : `still running after ${timeoutMs} ms (killed)`}`,
      `result: ${result ? result.join(' | ') : '(no result file)'}`,
      `program stderr: ${prog.errText().trim() || '(empty)'}`,
      restore.proc.stderr().trim() ? `restore stderr: ${restore.proc.stderr().trim()}` : '',
      tailOf(restore.log, 15),
      ...logs.map((l) => tailOf(l, 15)),
    ]
      .filter(Boolean)
      .join('\n');
  return { restoreExit, result, diag: diag() };
}

/** The key=value lines of a result. */
export function resultValues(result: string[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const l of result ?? []) {
    const m = /^(\w+)=(.*)$/.exec(l);
    if (m) out[m[1]] = m[2];
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Scenarios and a whole lazy restore, as a user runs it
// ---------------------------------------------------------------------------------------------

export interface Scenario {
  title: string;
  prog: ProgName;
  args: string[];
  /** Processes in the checkpoint. */
  procs: number;
  /** Processes by the end: a fork after the restore adds one, but a daemon only sees it if the parent
   * still had lazy pages then (a process with all its pages is done, its uffd closed). */
  maxProcs: number;
}

/** The scenarios, at sizes for local images; `small` ones for the remote modes. */
export function scenarios(size: 'local' | 'small' = 'local'): Record<'random' | 'events' | 'tree' | 'threads' | 'thp', Scenario> {
  const s = size === 'local';
  return {
    random: { title: `random touches (timed), then every byte of ${s ? 64 : 32} MiB`, prog: 'random-touch', args: [s ? '64' : '32', s ? '2000' : '500'], procs: 1, maxProcs: 1 },
    events: { title: 'uffd events (fork, DONTNEED, mremap grow, mremap swap) in parent and child', prog: 'uffd-events', args: [], procs: 1, maxProcs: 2 },
    tree: { title: 'a 3-process tree, each checking its own memory', prog: 'tree', args: [s ? '4' : '2'], procs: 3, maxProcs: 3 },
    threads: { title: '4 threads faulting at once', prog: 'threads', args: [s ? '32' : '16', '4'], procs: 1, maxProcs: 1 },
    thp: { title: 'a 2 MiB-aligned region with THP (write faults, memset rounds)', prog: 'thp', args: [s ? '16' : '8'], procs: 1, maxProcs: 1 },
  };
}

/** Where the lazy pages come from. */
export type PageSource =
  | 'local' // pages-*.img in the images dir
  | 'criu-lazy-dump' // `criu dump --lazy-pages --address --port`: the frozen task serves them
  | 'criu-page-server' // a plain dump served by `criu page-server --lazy-pages`
  | 'our-page-server'; // a plain dump served by `lazy-pages page-server`

export interface LazyRestoreOptions {
  scenario: Scenario;
  source: PageSource;
  /** Who receives the uffds: our `lazy-pages daemon` or CRIU's `criu lazy-pages`. */
  daemon: 'ours' | 'criu';
  /** Run the source side (program, dump, page server) in one network namespace and the destination in another, over a veth pair. */
  netns?: { src: string; dst: string; srcAddress: string };
  /** The address the page server listens on / the daemon connects to (default 127.0.0.1 or netns.srcAddress). */
  address?: string;
  daemonArgs?: string[];
  dumpArgs?: string[];
  pageServerArgs?: string[];
  restoreArgs?: string[];
}

export interface LazyRestoreRun {
  outcome: Outcome;
  daemonExit?: { code: number | null; signal: NodeJS.Signals | null };
  daemonLog: string;
  /** The page server's exit (CRIU's exit after its one connection; ours is stopped with SIGTERM). */
  sourceExit?: { code: number | null; signal: NodeJS.Signals | null };
  sourceText: string;
  diag: string;
  ms: number;
}

/**
 * One whole lazy restore of `scenario`: start the program, dump it, serve the pages, start the
 * daemon, `criu restore --lazy-pages` into a new pid namespace, wait for everything to end.
 */
export async function lazyRestore(t: ExecutionContext, o: LazyRestoreOptions): Promise<LazyRestoreRun> {
  const dir = tempDir(t, `lazy-criu-${o.scenario.prog}-`);
  const srcNs = o.netns?.src;
  const dstNs = o.netns?.dst;
  const address = o.address ?? o.netns?.srcAddress ?? '127.0.0.1';
  const remote = o.source !== 'local';
  if (o.source === 'criu-lazy-dump' || o.source === 'criu-page-server') raisePipeMaxSize(t);

  const srcImages = join(dir, 'src-images');
  // Any free port will do in a fresh namespace; on the host ask the kernel for one.
  let port = o.netns ? 20000 + Math.floor(Math.random() * 20000) : await freePort();
  let source: { proc: Proc; log?: string } | undefined;
  let prog!: Program;
  // Now and then CRIU writes a dump with no lazy page at all (seen once in CI on a plain dump of the
  // threads program: every page restored eagerly, nothing for a daemon to serve). That says nothing
  // of the daemon: dump again, once, saying so.
  for (let attempt = 1; ; attempt++) {
    rmSync(srcImages, { recursive: true, force: true });
    rmSync(join(dir, 'ctl'), { recursive: true, force: true });
    prog = await startProgram(t, dir, o.scenario.prog, o.scenario.args, { netns: srcNs });
    if (o.source === 'criu-lazy-dump') {
      const d = await criuDump(t, prog, srcImages, { lazy: { address, port }, netns: srcNs, extraArgs: o.dumpArgs });
      source = { proc: d.proc, log: d.log };
    } else {
      const d = await criuDump(t, prog, srcImages, { netns: srcNs, extraArgs: o.dumpArgs });
      source = { proc: d.proc, log: d.log };
    }
    const lazy = (await Checkpoint.open(srcImages)).processes.reduce((n, p) => n + p.lazyRanges.length, 0);
    if (lazy > 0 || attempt === 2) break;
    t.log(`criu dump wrote no lazy page (${o.scenario.prog}); dumping again`);
    if (o.source === 'criu-lazy-dump') killNow(source.proc.child);
    killNow(prog.proc.child);
    if (!o.netns) port = await freePort();
  }
  if (o.source === 'criu-page-server') {
    source = await criuPageServer(t, srcImages, address, port, { netns: srcNs, extraArgs: o.pageServerArgs });
  } else if (o.source === 'our-page-server') {
    const s = await startOurPageServer(t, srcImages, address, o.netns ? port : 0, { netns: srcNs, extraArgs: o.pageServerArgs });
    port = s.port;
    source = { proc: s.proc };
  }
  // The destination works on its own copy of the images, as on another host.
  const images = remote ? copyImages(srcImages, join(dir, 'dst-images')) : srcImages;
  const workDir = join(dir, 'work');
  mkdirSync(workDir, { recursive: true });
  prog.go();

  const t0 = performance.now();
  const psArgs = remote ? ['--page-server', '--address', address, '--port', String(port)] : [];
  let daemon: { proc: Proc; log: string };
  if (o.daemon === 'ours') {
    daemon = await startOurDaemon(t, images, workDir, { netns: dstNs, extraArgs: [...psArgs, ...(o.daemonArgs ?? [])] });
  } else {
    daemon = await criuLazyPages(t, images, workDir, {
      netns: dstNs,
      pageServer: remote ? { address, port } : undefined,
      extraArgs: o.daemonArgs,
    });
  }
  const restore = criuRestore(t, images, workDir, { netns: dstNs, extraArgs: o.restoreArgs });
  const outcome = await awaitRestore(prog, restore, [daemon.log, source?.log]);
  // The daemon ends once every process has all its pages (or has exited).
  const daemonExit = await daemon.proc.exitWithin(15_000);
  const ms = performance.now() - t0;
  let sourceExit: LazyRestoreRun['sourceExit'];
  if (o.source === 'criu-lazy-dump' || o.source === 'criu-page-server') {
    sourceExit = await source!.proc.exitWithin(15_000);
  } else if (o.source === 'our-page-server') {
    if (o.pageServerArgs?.includes('--sessions')) {
      // It stops by itself after its last session (a SIGTERM sent now could land while Node is tearing
      // down its signal handlers, and kill it by the default action: seen in CI).
      sourceExit = await source!.proc.exitWithin(10_000);
    } else {
      // Ours serves on until told; the daemon's CLOSE has ended the session by now.
      for (let i = 0; i < 100 && !/ended/.test(source!.proc.stderr()); i++) await new Promise((r) => setTimeout(r, 20));
      source!.proc.child.kill('SIGTERM');
      sourceExit = await source!.proc.exitWithin(10_000);
    }
  }
  const daemonLog = existsSync(daemon.log) ? readFileSync(daemon.log, 'utf8') : '';
  const sourceText = source?.log && existsSync(source.log) ? readFileSync(source.log, 'utf8') : (source?.proc.stderr() ?? '');
  const exitText = (e?: { code: number | null; signal: NodeJS.Signals | null }) => (e ? `exit ${e.code ?? e.signal}` : 'still running (killed)');
  const diag = [
    `${o.scenario.prog} ${o.scenario.args.join(' ')}; source ${o.source}${o.netns ? ' (netns)' : ''}; daemon ${o.daemon}; ${address}:${port}`,
    outcome.diag,
    `daemon: ${exitText(daemonExit)} ${daemon.proc.stderr().trim()}`,
    daemonExit ? '' : `its threads:\n${threadsOf(daemon.proc.child.pid)}`,
    source && o.source !== 'local' ? `page server: ${exitText(sourceExit)} ${source.proc.stderr().trim().split('\n').slice(-5).join(' | ')}` : '',
  ]
    .filter(Boolean)
    .join('\n');
  if (!daemonExit) killNow(daemon.proc.child);
  if (o.source !== 'local' && !sourceExit) killNow(source!.proc.child);
  return { outcome, daemonExit, daemonLog, sourceExit, sourceText, diag, ms };
}

/** Pages served on demand, per our daemon's per-process lines ("N pages on demand, M in background"). */
export function onDemandPages(daemonLog: string): { onDemand: number; background: number; processes: number } {
  let onDemand = 0;
  let background = 0;
  let processes = 0;
  for (const m of daemonLog.matchAll(/: (?:done|exited) in \d+ ms: (\d+) pages on demand, (\d+) in background/g)) {
    onDemand += Number(m[1]);
    background += Number(m[2]);
    processes++;
  }
  return { onDemand, background, processes };
}

/**
 * The checks every run must pass: criu restore exit 0, the program's "ok" (every byte of every
 * process right), the daemon exit 0 (ours: with every process accounted for), the page server's
 * clean end.
 */
export function assertRun(t: ExecutionContext, o: LazyRestoreOptions, r: LazyRestoreRun): void {
  t.is(r.outcome.restoreExit?.code, 0, `criu restore failed\n${r.diag}`);
  t.is(r.outcome.result?.[0], 'ok', `the restored program did not see its memory intact\n${r.diag}`);
  t.is(r.daemonExit?.code, 0, `the lazy-pages daemon did not exit 0\n${r.diag}`);
  if (o.daemon === 'ours') {
    const n = Number(/done: (\d+) processes/.exec(r.daemonLog)?.[1] ?? NaN);
    t.true(n >= o.scenario.procs && n <= o.scenario.maxProcs, `our daemon's summary names ${n} processes, not ${o.scenario.procs}..${o.scenario.maxProcs}\n${r.diag}`);
    t.notRegex(r.daemonLog, / lost: /, r.diag);
  }
  if (o.source === 'criu-lazy-dump' || o.source === 'criu-page-server') {
    t.is(r.sourceExit?.code, 0, `CRIU's page server did not end cleanly\n${r.diag}`);
  } else if (o.source === 'our-page-server') {
    t.regex(r.sourceText, /ended \(.*\): .*; \d+ request\(s\), [1-9]\d* page\(s\) sent/, `our page server sent no pages\n${r.diag}`);
    t.is(r.sourceExit?.code, 0, `our page server did not stop cleanly (by itself after --sessions, else on SIGTERM)\n${r.diag}`);
  }
  const v = resultValues(r.outcome.result);
  const info = Object.entries(v).map(([k, x]) => `${k}=${x}`).join(' ');
  t.log(`${(r.ms / 1000).toFixed(2)} s from daemon start to all done${info ? `; ${info}` : ''}`);
}
