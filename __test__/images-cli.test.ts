// The built CLI (`npm run build:ts` first): inspect on every fixture, synth, and clean errors.
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FIXTURES, fixturesDir, repoRoot } from './images-helpers.js';

const bin = path.join(repoRoot, 'bin', 'lazy-pages.js');

/** Runs the CLI; the child is killed by pid if the test ends first. */
function run(t: ExecutionContext, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    t.teardown(() => {
      if (child.exitCode === null && child.signalCode === null && child.pid) {
        try { process.kill(child.pid, 'SIGKILL'); } catch { /* already gone */ }
      }
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

test.before(() => {
  if (!existsSync(path.join(repoRoot, 'dist', 'cli', 'commands', 'inspect.js'))) throw new Error('run `npm run build:ts` first');
});

for (const name of FIXTURES) {
  test(`inspect ${name}: human summary and --json`, async (t) => {
    const dir = path.join(fixturesDir, name);
    const h = await run(t, ['inspect', '-D', dir]);
    t.is(h.code, 0, h.stderr);
    t.regex(h.stdout, /pid \d+ \(ppid \d+/);
    t.regex(h.stdout, /lazy: +\d+ pages/);
    t.regex(h.stdout, /LAZY/);
    const j = await run(t, ['inspect', '-D', dir, '--json']);
    t.is(j.code, 0, j.stderr);
    const model = JSON.parse(j.stdout);
    t.is(model.schemaVersion, 1);
    t.true(model.processes.length >= 1);
    t.regex(model.processes[0].vmas[0].start, /^0x[0-9a-f]+$/);
    // Counts and bytes are numbers: lazy bytes are the lazy pages' size.
    t.is(typeof model.processes[0].lazyBytes, 'number');
    t.is(model.processes[0].lazyBytes, model.processes[0].pages.lazy * 4096);
    const fileRange = model.processes.flatMap((p: { lazyRanges: { location: { kind: string; offset?: number } }[] }) => p.lazyRanges).find((r: { location: { kind: string } }) => r.location.kind === 'file');
    if (fileRange) t.is(typeof fileRange.location.offset, 'number');
    if (name === 'lazy-remote') t.is(model.processes[0].pages.lazyRemote, 1096);
    if (name === 'mixed-vmas') {
      t.deepEqual(model.shmem, [{ shmid: '0x45a', pagesId: 1, entries: 1, pages: 256 }]);
      t.regex(h.stdout, /shmem 1114: 256 pages/);
    }
  });
}

test('synth then inspect through the CLI', async (t) => {
  const out = mkdtempSync(path.join(os.tmpdir(), 'lp-cli-'));
  t.teardown(() => rmSync(out, { recursive: true, force: true }));
  const s = await run(t, ['synth', '--out', out, '--size', '2M', '--vmas', '2', '--procs', '2', '--pid-base', '1400000', '--holes', '0.25']);
  t.is(s.code, 0, s.stderr);
  t.regex(s.stdout, /pids 1400000, 1400001/);
  const j = await run(t, ['inspect', '-D', out, '--json']);
  t.is(j.code, 0, j.stderr);
  const model = JSON.parse(j.stdout);
  t.deepEqual(model.processes.map((p: { pid: number; ppid: number }) => [p.pid, p.ppid]), [[1400000, 0], [1400001, 1400000]]);
});

test('bad input: one line, exit 1, no stack trace', async (t) => {
  const r = await run(t, ['inspect', '-D', path.join(fixturesDir, 'single-anon', 'pstree.img')]);
  t.is(r.code, 1);
  t.regex(r.stderr, /^lazy-pages: .*pstree\.img: at byte 0: not a directory \(EBADIMAGE\)\n$/);
  const s = await run(t, ['synth', '--out', '/tmp/never', '--size', 'lots']);
  t.is(s.code, 1);
  t.regex(s.stderr, /^lazy-pages: --size: cannot read "lots"/);
  t.notRegex(s.stderr + r.stderr, /\n\s+at /);
});
