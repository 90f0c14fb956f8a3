// restore-sim end to end against its own Rust test peer (target/release/mini-daemon): real uffd,
// real processes with their image pids (clone3 set_tid), real page files. Run as root.
import test, { type ExecutionContext } from 'ava';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync, existsSync, readFileSync, rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const ROOT = resolve(import.meta.dirname, '..');
const SIM = join(ROOT, 'target/release/restore-sim');
const MINI = join(ROOT, 'target/release/mini-daemon');
const KiB = 1024;
const BASE = 0x2_0000_0000n;
const hex = (v: bigint) => '0x' + v.toString(16);

test.before(() => {
  const r = spawnSync('cargo', ['build', '--release', '-p', 'restore-sim'], { cwd: ROOT, stdio: 'inherit' });
  if (r.status !== 0) throw new Error('cargo build -p restore-sim failed');
});

/** Pids from a random high range (so clone3 set_tid can have them), skipping any in use. */
const usedPids = new Set<number>();
function freePids(n: number): number[] {
  const max = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8'));
  const out: number[] = [];
  while (out.length < n) {
    const p = Math.floor(max / 2 + Math.random() * (max / 2 - 100));
    if (!usedPids.has(p) && !existsSync(`/proc/${p}`)) {
      usedPids.add(p);
      out.push(p);
    }
  }
  return out;
}

/** Kills a pid only if it is still one of ours (comm restore-sim / mini-daemon), so a reused pid is safe. */
function killOurs(pid: number | undefined) {
  if (!pid) return;
  try {
    const comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
    if (comm === 'restore-sim' || comm === 'mini-daemon') process.kill(pid, 'SIGKILL');
  } catch {
    /* already gone */
  }
}

interface ProcSpec {
  pid: number;
  ppid: number;
  zombie?: boolean;
  vmas?: { start: bigint; len: number; prot?: number; lazy?: boolean }[];
  eager?: { start: bigint; end: bigint; file: string; offset: number }[];
  expect?: ({ start: bigint; end: bigint } & ({ kind: 'file'; file: string; offset: number } | { kind: 'pattern'; xor: bigint } | { kind: 'zero' }))[];
}

function writeLayout(t: ExecutionContext, procs: ProcSpec[]) {
  const dir = mkdtempSync(join(tmpdir(), 'sim-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const layout = {
    workDir: dir,
    processes: procs.map((p) => ({
      pid: p.pid,
      ppid: p.ppid,
      zombie: !!p.zombie,
      vmas: (p.vmas ?? []).map((v) => ({ start: hex(v.start), end: hex(v.start + BigInt(v.len)), prot: v.prot ?? 3, lazy: v.lazy ?? true })),
      eager: (p.eager ?? []).map((e) => ({ ...e, start: hex(e.start), end: hex(e.end) })),
      expect: (p.expect ?? []).map((e) => ({ ...e, start: hex(e.start), end: hex(e.end), ...('xor' in e ? { xor: hex(e.xor) } : {}) })),
    })),
  };
  const path = join(dir, 'layout.json');
  writeFileSync(path, JSON.stringify(layout));
  return { dir, path };
}

/** A two-process tree plus a zombie: file-backed, pattern and zero-filled lazy memory, one eager page. */
function standardTree(t: ExecutionContext) {
  const [a, b, z] = freePids(3);
  const dir0 = mkdtempSync(join(tmpdir(), 'sim-pages-'));
  t.teardown(() => rmSync(dir0, { recursive: true, force: true }));
  const pages = join(dir0, 'pages-1.img');
  writeFileSync(pages, randomBytes(64 * KiB));
  const procs: ProcSpec[] = [
    {
      pid: a, ppid: 0,
      vmas: [{ start: BASE, len: 64 * KiB }, { start: BASE + 0x100000n, len: 64 * KiB, prot: 1 }],
      eager: [{ start: BASE, end: BASE + 0x1000n, file: pages, offset: 0 }],
      expect: [
        { start: BASE, end: BASE + 0x8000n, kind: 'file', file: pages, offset: 0 },
        { start: BASE + 0x100000n, end: BASE + 0x108000n, kind: 'pattern', xor: 0n },
      ],
    },
    { pid: b, ppid: a, vmas: [{ start: BASE, len: 64 * KiB }], expect: [{ start: BASE, end: BASE + 0x10000n, kind: 'pattern', xor: 1n << 56n }] },
    { pid: z, ppid: a, zombie: true },
  ];
  return { procs, pids: [a, b, z], ...writeLayout(t, procs) };
}

function startDaemon(t: ExecutionContext, layout: string, extra: string[] = []) {
  const d = spawn(MINI, ['--layout', layout, ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => killOurs(d.pid));
  let out = '';
  let err = '';
  d.stdout!.on('data', (c) => (out += c));
  d.stderr!.on('data', (c) => (err += c));
  const listening = new Promise<void>((res, rej) => {
    const check = () => (out.includes('"listening"') ? res() : undefined);
    d.stdout!.on('data', check);
    d.on('exit', () => rej(new Error(`mini-daemon exited early: ${err}`)));
  });
  return { proc: d, listening, out: () => out, err: () => err };
}

interface SimResult { code: number | null; stdout: string; stderr: string; report: any }

function runSim(t: ExecutionContext, args: string[], onSpawn?: (c: ChildProcess) => void): Promise<SimResult> {
  const c = spawn(SIM, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => killOurs(c.pid));
  onSpawn?.(c);
  let stdout = '';
  let stderr = '';
  c.stdout!.on('data', (d) => (stdout += d));
  c.stderr!.on('data', (d) => (stderr += d));
  return new Promise((res) => {
    c.on('close', (code) => {
      let report: any;
      try { report = JSON.parse(stdout); } catch { report = undefined; }
      res({ code, stdout, stderr, report });
    });
  });
}

function killTree(t: ExecutionContext, pids: number[]) {
  t.teardown(() => pids.forEach(killOurs));
}

/** A fresh standard tree (its pids killed at the end) and a mini-daemon listening for it. */
async function treeWithDaemon(t: ExecutionContext, daemonArgs: string[] = []) {
  const { path, pids } = standardTree(t);
  killTree(t, pids);
  const d = startDaemon(t, path, daemonArgs);
  await d.listening;
  return { path, pids, d };
}

test('touch-all over a pstree with a zombie: CRIU hand-over bytes, every byte verified', async (t) => {
  const { path, pids, d } = await treeWithDaemon(t);
  const r = await runSim(t, ['--layout', path, '--workload', 'touch-all', '--order', 'rand', '--seed', '7', '--timeout', '30']);
  t.is(r.code, 0, r.stderr);
  t.true(r.report.ok);
  // The mini daemon checked pid/payload/SCM_RIGHTS/uffd-ness/finished; it printed the order it saw.
  const seen = JSON.parse(d.out().split('\n').find((l) => l.includes('"handover"'))!).order;
  t.deepEqual(seen, r.report.handoverOrder);
  t.true(seen.includes(-pids[2]), 'zombie sent as -pid');
  const [pa, pb] = r.report.processes;
  t.is(pa.pid, pids[0]);
  t.is(pa.verifiedPages, 32);
  t.is(pa.badPages, 0);
  // Only touches that really fault are timed; pages restored eagerly before the hand-over are not.
  t.is(pa.touched, 32);
  t.is(pa.latencyNs.count + (pa.presentTouches ?? 0), 32);
  t.true(pa.latencyNs.count > 0);
  t.is(pb.verifiedPages, 16);
  t.is(d.err(), '');
});

test('pstree and reverse hand-over orders are honoured', async (t) => {
  for (const order of ['pstree', 'reverse']) {
    const { path, pids } = await treeWithDaemon(t);
    const r = await runSim(t, ['--layout', path, '--workload', 'verify-all', '--order', order, '--timeout', '30']);
    t.is(r.code, 0, r.stderr);
    const want = [pids[0], pids[1], -pids[2]];
    t.deepEqual(r.report.handoverOrder, order === 'pstree' ? want : want.reverse());
  }
});

test('a corrupted page makes the sim exit 1 naming the address, expected and got', async (t) => {
  const bad = BASE + 0x3000n;
  const { path, d } = await treeWithDaemon(t, ['--corrupt', hex(bad)]);
  const r = await runSim(t, ['--layout', path, '--workload', 'touch-all', '--timeout', '30']);
  t.is(r.code, 1);
  t.false(r.report.ok);
  // Both processes map BASE; both see the corruption (byte 17 of the page).
  t.regex(r.stderr, new RegExp(`wrong byte at ${hex(bad + 17n)}: expected 0x[0-9a-f]{2}, got 0x[0-9a-f]{2}`));
  t.is(r.report.processes[0].firstBad.addr, hex(bad + 17n));
  t.is(r.report.processes[0].badPages, 1);
});

test('touch-random and exit-after touch only what they are told', async (t) => {
  const { path, d } = await treeWithDaemon(t);
  const r = await runSim(t, ['--layout', path, '--workload', 'exit-after', '--count', '3', '--timeout', '30']);
  t.is(r.code, 0, r.stderr);
  for (const p of r.report.processes.filter((p: any) => !p.zombie)) {
    t.is(p.touched, 3);
    t.is(p.verifiedPages, 3);
  }
  const s2 = await treeWithDaemon(t);
  const d2 = s2.d;
  const r2 = await runSim(t, ['--layout', s2.path, '--workload', 'touch-random', '--count', '5', '--then-verify-all', '--timeout', '30']);
  t.is(r2.code, 0, r2.stderr);
  t.is(r2.report.processes[0].touched, 5);
  t.is(r2.report.processes[0].verifiedPages, 5 + 32);
});

test('hold + SIGKILL from outside is reported as killed by signal 9 (exit 3)', async (t) => {
  const [a] = freePids(1);
  killTree(t, [a]);
  const { path } = writeLayout(t, [{ pid: a, ppid: 0, vmas: [{ start: BASE, len: 16 * KiB }] }]);
  const d = startDaemon(t, path);
  await d.listening;
  const done = runSim(t, ['--layout', path, '--workload', 'hold', '--timeout', '30']);
  // Wait for the hand-over to complete, then kill the restored process by its (image) pid.
  while (!d.out().includes('"handover"')) await new Promise((r) => setTimeout(r, 20));
  await new Promise((r) => setTimeout(r, 100));
  t.is(readFileSync(`/proc/${a}/comm`, 'utf8').trim(), 'restore-sim');
  process.kill(a, 'SIGKILL');
  const r = await done;
  t.is(r.code, 3, r.stderr);
  t.is(r.report.processes[0].killedBySignal, 9);
  t.false(r.report.processes[0].ok);
});

test('uffd-events: DONTNEED, mremap grow, swap through scratch, in parent and forked child', async (t) => {
  const [a] = freePids(1);
  killTree(t, [a]);
  const vmas = [0, 1, 2, 3, 4].map((i) => ({ start: BASE + BigInt(i) * 0x1000000n, len: 256 * KiB }));
  const expect = vmas.map((v, i) => ({ start: v.start, end: v.start + BigInt(v.len), kind: 'pattern' as const, xor: BigInt(i + 1) << 48n }));
  const { path } = writeLayout(t, [{ pid: a, ppid: 0, vmas, expect }]);
  const d = startDaemon(t, path);
  await d.listening;
  const r = await runSim(t, ['--layout', path, '--workload', 'uffd-events', '--timeout', '60']);
  t.is(r.code, 0, r.stderr + d.err());
  const steps = r.report.processes[0].steps as any[];
  const names = steps.map((s) => s.step);
  t.deepEqual(names, ['vmas', 'read-vma0', 'fork', 'madvise-dontneed-vma1', 'mremap-grow-vma2', 'swap-vma3-vma4', 'verify-all', 'child']);
  t.true(steps.find((s) => s.step === 'verify-all').ok);
  const child = steps.find((s) => s.step === 'child');
  t.true(child.ok);
  t.true(child.result.steps.find((s: any) => s.step === 'verify-all').ok);
});

test('fork-storm: children verify random pages, the parent verifies everything', async (t) => {
  const { path, d } = await treeWithDaemon(t);
  const r = await runSim(t, ['--layout', path, '--workload', 'fork-storm', '--count', '4', '--timeout', '30']);
  t.is(r.code, 0, r.stderr);
  t.is(r.report.processes[0].steps[0].failed, 0);
});

test('a pid in use gives a clear error naming it (exit 2)', async (t) => {
  const sleeper = spawn('sleep', ['30']);
  t.teardown(() => sleeper.kill('SIGKILL'));
  const { path } = writeLayout(t, [{ pid: sleeper.pid!, ppid: 0, vmas: [{ start: BASE, len: 4 * KiB }] }]);
  const d = startDaemon(t, path);
  await d.listening;
  const r = await runSim(t, ['--layout', path, '--timeout', '30']);
  t.is(r.code, 2);
  t.regex(r.stderr, new RegExp(`pid ${sleeper.pid} is already in use`));
  t.false(r.stderr.includes('panicked'));
});

test('--timeout kills every restored process and exits 4', async (t) => {
  const [a, b] = freePids(2);
  killTree(t, [a, b]);
  const { path } = writeLayout(t, [
    { pid: a, ppid: 0, vmas: [{ start: BASE, len: 4 * KiB }] },
    { pid: b, ppid: a, vmas: [{ start: BASE, len: 4 * KiB }] },
  ]);
  const d = startDaemon(t, path);
  await d.listening;
  const r = await runSim(t, ['--layout', path, '--workload', 'hold', '--timeout', '1']);
  t.is(r.code, 4);
  t.regex(r.stderr, /timeout/);
  t.true(r.report.timedOut);
  await new Promise((res) => setTimeout(res, 200));
  for (const p of [a, b]) t.false(existsSync(`/proc/${p}`), `pid ${p} left behind`);
});

test('setup errors are one clear line and exit 2: no daemon, bad layout, bad option', async (t) => {
  const [a] = freePids(1);
  const { path, dir } = writeLayout(t, [{ pid: a, ppid: 0, vmas: [{ start: BASE, len: 4 * KiB }] }]);
  const r = await runSim(t, ['--layout', path]);
  t.is(r.code, 2);
  t.regex(r.stderr, new RegExp(`connect to lazy-pages.socket in ${dir} failed`));

  const badPath = join(dir, 'bad.json');
  writeFileSync(badPath, JSON.stringify({ workDir: dir, processes: [{ pid: 1, ppid: 0, vmas: [{ start: '0x1001', end: '0x2000', prot: 3, lazy: true }] }] }));
  const r2 = await runSim(t, ['--layout', badPath]);
  t.is(r2.code, 2);
  t.regex(r2.stderr, /bad\.json: processes\[0\]\.vmas\[0\]: 0x1001-0x2000 is not page aligned/);

  const r3 = await runSim(t, ['--layout', path, '--workload', 'dance']);
  t.is(r3.code, 2);
  t.regex(r3.stderr, /--workload: unknown workload "dance"/);
});

test('--handover-only and --no-finish: the daemon sees exactly the hand-over, then a hang-up', async (t) => {
  const { path, d } = await treeWithDaemon(t);
  const r = await runSim(t, ['--layout', path, '--handover-only', '--timeout', '30']);
  t.is(r.code, 0, r.stderr);
  t.is(r.report.handoverOrder.length, 3);

  const s2 = await treeWithDaemon(t);
  const d2 = s2.d;
  const exited = new Promise<number | null>((res) => d2.proc.on('exit', (c) => res(c)));
  const r2 = await runSim(t, ['--layout', s2.path, '--no-finish', '--handover-only', '--timeout', '30']);
  t.is(r2.code, 0, r2.stderr);
  t.is(await exited, 3);
  t.regex(d2.err(), /hung up before "restore finished"/);
});

test('--send-bad-fd and --send-garbage are caught by a checking daemon', async (t) => {
  const { path, d } = await treeWithDaemon(t);
  const exited = new Promise<number | null>((res) => d.proc.on('exit', (c) => res(c)));
  await runSim(t, ['--layout', path, '--send-bad-fd', '--handover-only', '--timeout', '30']);
  t.is(await exited, 3);
  t.regex(d.err(), /not a userfaultfd/);

  const s2 = await treeWithDaemon(t);
  const d2 = s2.d;
  const exited2 = new Promise<number | null>((res) => d2.proc.on('exit', (c) => res(c)));
  await runSim(t, ['--layout', s2.path, '--send-garbage', '--handover-only', '--timeout', '30']);
  t.is(await exited2, 3);
  t.regex(d2.err(), /not in the pstree/);
});
