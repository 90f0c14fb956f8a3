/** `lazy-pages daemon` as CRIU users run it: options, readiness on --status-fd, -d, exit codes. */
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { layoutFor } from '../ts/sim/layout.js';
import { startSimulator } from '../ts/sim/run.js';
import { repoRoot, synth, tempDir } from './helpers/e2e.js';

const bin = join(repoRoot, 'bin', 'lazy-pages.js');
const cli = (args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 60_000 });

test('a wrong option is one line naming it, exit code 1', (t) => {
  for (const [args, re] of [
    [['daemon'], /--images-dir: is required/],
    [['daemon', '-D', '/nonexistent-dir'], /images dir \/nonexistent-dir does not exist/],
    [['daemon', '-D', '/tmp', '--port', 'x', '--page-server'], /--port: must be a number/],
    [['daemon', '-D', '/tmp', '--page-server'], /--port: is required with --page-server/],
    [['daemon', '-D', '/tmp', '--bogus'], /Unknown argument: bogus/],
    [['daemon', '-D', '/tmp', '-v9'], /--verbosity/],
    [['daemon', '-D', '/tmp', '-v', '9'], /--verbosity/],
    [['daemon', '-D', '/tmp', '--chunk', 'abc'], /^lazy-pages: --chunk: must be a number \(EOPTION\)$/m],
    [['daemonn', '-D', '/tmp'], /^lazy-pages: unknown command "daemonn" \(did you mean daemon\?\): see --help \(EOPTION\)$/m],
    [['zzzzzz'], /^lazy-pages: unknown command "zzzzzz": see --help \(EOPTION\)$/m],
  ] as const) {
    const r = cli([...args]);
    t.is(r.status, 1, `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, re);
    t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
    t.notRegex(r.stderr, /at .*\.js:\d+/);
  }
});

test('regression: -v N is the level N (as the README says), not a stray argument; --version prints the version', (t) => {
  const pkg = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as { version: string };
  const v = cli(['--version']);
  t.is(v.status, 0, v.stderr);
  t.is(v.stdout.trim(), pkg.version);
  // -v 4 reaches the option check of the images dir (the level was taken), where "4" once was "Unknown argument: 4".
  const r = cli(['daemon', '-v', '4', '-D', '/nonexistent-dir']);
  t.is(r.status, 1);
  t.regex(r.stderr, /images dir \/nonexistent-dir does not exist/);
});

test('-o with a relative name logs in the work dir, as CRIU does', async (t) => {
  const ck = await synth(t, { size: 1 << 20, vmas: 1 });
  const wd = tempDir(t);
  const d = spawn(process.execPath, [bin, 'daemon', '-D', ck.dir, '-W', wd, '--status-fd', '3', '-o', 'rel.log', '-v3'], {
    stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
    cwd: tempDir(t),
  });
  t.teardown(() => d.exitCode === null && d.signalCode === null && d.kill('SIGKILL'));
  await new Promise<void>((res, rej) => {
    (d.stdio[3] as NodeJS.ReadableStream).once('data', () => res());
    d.once('exit', (c) => rej(new Error(`daemon exited ${c}`)));
  });
  d.kill('SIGTERM');
  await new Promise((res) => d.once('exit', res));
  t.regex(readFileSync(join(wd, 'rel.log'), 'utf8'), /listening on/);
});

test('regression: --help wraps at words (the bundled help cut "criu lazy-pag es" in two)', (t) => {
  const r = cli(['--help']);
  t.is(r.status, 0, r.stderr);
  // Undo the wrapping (a line break and the indent that follows): every description reads whole.
  const flat = r.stdout.replace(/\n\s+/g, ' ');
  t.true(flat.includes('serve a restore lazily: the drop-in for `criu lazy-pages`'), r.stdout);
  t.true(flat.includes('serve the lazy pages of a checkpoint to remote lazy-pages daemons'), r.stdout);
});

test('--events writes every event as a JSON line, ending with "done" and its summary', async (t) => {
  const ck = await synth(t, { size: 2 << 20, vmas: 2, procs: 2 });
  const wd = tempDir(t);
  const d = spawn(process.execPath, [bin, 'daemon', '-D', ck.dir, '-W', wd, '--status-fd', '3', '--events', 'events.ndjson'], {
    stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
  });
  t.teardown(() => d.exitCode === null && d.signalCode === null && d.kill('SIGKILL'));
  const exited = new Promise<number | null>((r) => d.once('exit', r));
  await new Promise<void>((res, rej) => {
    (d.stdio[3] as NodeJS.ReadableStream).once('data', () => res());
    void exited.then((c) => rej(new Error(`daemon exited ${c} before it was ready`)));
  });
  const sim = startSimulator(layoutFor(ck, wd), ['--workload', 'touch-random', '--count', '20', '--then-verify-all', '--timeout', '60']);
  t.teardown(() => sim.kill());
  const [res, code] = await Promise.all([sim.result, exited]);
  t.is(res.code, 0, res.stderr);
  t.is(code, 0);
  const lines = readFileSync(join(wd, 'events.ndjson'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { type: string; time: string; [k: string]: unknown });
  t.true(lines.every((l) => typeof l.time === 'string' && !Number.isNaN(Date.parse(l.time))));
  const types = lines.map((l) => l.type);
  t.is(types[0], 'listening');
  t.is(types.filter((x) => x === 'attached').length, 2);
  t.true(types.includes('restore-finished'));
  t.is(types.filter((x) => x === 'process-done').length, 2);
  const last = lines[lines.length - 1]!;
  t.is(last.type, 'done');
  const summary = last.summary as { processes: { pid: number; outcome: string }[]; elapsedMs: number };
  t.deepEqual(summary.processes.map((p) => p.pid).sort(), ck.processes.map((p) => p.pid).sort());
  t.true(summary.processes.every((p) => p.outcome === 'done' || p.outcome === 'exited'));
  // An fd that is not open is refused up front, naming the option.
  const bad = cli(['daemon', '-D', ck.dir, '-W', wd, '--events', '97']);
  t.is(bad.status, 1);
  t.regex(bad.stderr, /^lazy-pages: --events 97: fd 97 is not open \(EOPTION\)$/m);
});

test('regression: demo and bench without the simulator exit 1 at once, naming it (they hung, with the daemon running)', (t) => {
  const env = { ...process.env, LAZY_PAGES_SIM: '/nonexistent/restore-sim' };
  const before = new Set(readdirSync(tmpdir()).filter((f) => f.startsWith('lazy-pages-demo-')));
  for (const args of [['demo'], ['bench', '--runs', '1', '--no-bulk', '--no-remote']]) {
    const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 60_000, env });
    t.is(r.status, 1, `${args[0]}: ${r.signal ?? ''} ${r.stderr}`);
    t.regex(r.stderr, /^lazy-pages: the restore simulator LAZY_PAGES_SIM=\/nonexistent\/restore-sim does not exist \(ENOSIM\)$/m);
  }
  t.deepEqual(readdirSync(tmpdir()).filter((f) => f.startsWith('lazy-pages-demo-') && !before.has(f)), [], 'no checkpoint left behind');
});

test('--help documents the CRIU options', (t) => {
  const r = cli(['daemon', '--help']);
  t.is(r.status, 0);
  for (const o of ['--images-dir', '--work-dir', '--page-server', '--address', '--port', '--daemon', '--pidfile', '--status-fd', '--log-file', '--tls']) {
    t.true(r.stdout.includes(o), o);
  }
});

test('a real restore through the CLI: ready byte on --status-fd, log file, exit 0', async (t) => {
  const ck = await synth(t, { size: 2 << 20, vmas: 2 });
  const wd = tempDir(t);
  const log = join(wd, 'daemon.log');
  const d = spawn(process.execPath, [bin, 'daemon', '-D', ck.dir, '-W', wd, '--status-fd', '3', '-o', log, '-v4'], {
    stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
  });
  t.teardown(() => {
    if (d.exitCode === null && d.pid) process.kill(d.pid, 'SIGKILL');
  });
  const exited = new Promise<number | null>((r) => d.once('exit', r));
  const byte = await new Promise<Buffer>((res, rej) => {
    (d.stdio[3] as NodeJS.ReadableStream).once('data', (b: Buffer) => res(b));
    void exited.then((c) => rej(new Error(`daemon exited ${c} before it was ready`)));
  });
  t.is(byte.length, 1);
  t.true(existsSync(join(wd, 'lazy-pages.socket')));
  const sim = startSimulator(layoutFor(ck, wd), ['--workload', 'touch-random', '--count', '20', '--then-verify-all', '--timeout', '60']);
  t.teardown(() => sim.kill());
  const [res, code] = await Promise.all([sim.result, exited]);
  t.is(res.code, 0, res.stderr);
  t.is(code, 0);
  const text = readFileSync(log, 'utf8');
  t.regex(text, /attached/);
  t.regex(text, /restore finished/);
  t.regex(text, /done: 1 processes/);
});

test('-d detaches once ready, prints the pid and writes --pidfile', async (t) => {
  const ck = await synth(t, { size: 1 << 20 });
  const wd = tempDir(t);
  const pidfile = join(wd, 'pid');
  const r = cli(['daemon', '-D', ck.dir, '-W', wd, '-d', '--pidfile', pidfile]);
  t.is(r.status, 0, r.stderr);
  const pid = Number(r.stdout.trim());
  t.teardown(() => {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  });
  t.true(pid > 0);
  t.is(Number(readFileSync(pidfile, 'utf8').trim()), pid);
  t.true(existsSync(`/proc/${pid}`));
  // SIGTERM before any restorer: the daemon stops and, with nobody attached, kills nothing.
  process.kill(pid, 'SIGTERM');
  for (let i = 0; i < 100 && existsSync(`/proc/${pid}`); i++) await new Promise((res) => setTimeout(res, 20));
  t.false(existsSync(`/proc/${pid}`) && !readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z'));
});
