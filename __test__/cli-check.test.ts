/** `lazy-pages check`: what this kernel and this user can do, for people and (--json) for scripts. */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { chmodSync, cpSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { repoRoot } from './helpers/common.js';
import { criuTest, findCriu } from './helpers/criu.js';
import { skipUnless } from './helpers/skip.js';

const bin = join(repoRoot, 'bin', 'lazy-pages.js');
const root = process.getuid?.() === 0;

interface Report {
  schemaVersion: number;
  ok: boolean;
  verdict: string;
  items: { id: string; level: string; summary: string; hint?: string }[];
}

skipUnless(root, 'not root')('as root on this machine: userfaultfd and every needed event are there, exit 0; --json has schemaVersion 1', (t) => {
  const r = spawnSync(process.execPath, [bin, 'check', '--json'], { encoding: 'utf8', timeout: 60_000 });
  t.is(r.status, 0, r.stderr);
  const rep = JSON.parse(r.stdout) as Report;
  t.is(rep.schemaVersion, 1);
  t.true(rep.ok, rep.verdict);
  const item = (id: string) => rep.items.find((i) => i.id === id);
  t.is(item('userfaultfd')?.level, 'ok');
  t.is(item('uffd-features')?.level, 'ok');
  t.regex(item('uffd-features')!.summary, /EVENT_FORK, EVENT_REMAP, EVENT_REMOVE, EVENT_UNMAP/);
  t.truthy(item('pid-max'));
  const human = spawnSync(process.execPath, [bin, 'check'], { encoding: 'utf8', timeout: 60_000 });
  t.is(human.status, 0);
  t.regex(human.stdout, /^verdict: lazy-pages can serve lazy restores here/m);
});

criuTest('the criu binary given is reported with its version', (t) => {
  const criu = findCriu().bin!;
  const r = spawnSync(process.execPath, [bin, 'check', '--json', '--criu', criu], { encoding: 'utf8', timeout: 60_000 });
  const rep = JSON.parse(r.stdout) as Report;
  t.regex(rep.items.find((i) => i.id === 'criu')!.summary, /criu: .*Version: 4\.2/);
});

const hasSetpriv = spawnSync('sh', ['-c', 'command -v setpriv'], { stdio: 'ignore' }).status === 0;
skipUnless(root, 'not root', skipUnless(hasSetpriv, 'no setpriv'))('a user who may not use userfaultfd gets FAIL, what to do, and exit 1', (t) => {
  // The package as that user can read it (the checkout may sit under a 0700 dir): bin, the bundle, the addon.
  const dir = mkdtempSync(join(tmpdir(), 'lazy-check-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  chmodSync(dir, 0o755);
  for (const d of ['bin', 'dist', 'native']) mkdirSync(join(dir, d));
  cpSync(join(repoRoot, 'package.json'), join(dir, 'package.json'));
  cpSync(join(repoRoot, 'bin'), join(dir, 'bin'), { recursive: true });
  for (const f of readdirSync(join(repoRoot, 'dist')).filter((f) => f.startsWith('cli.bundle.'))) cpSync(join(repoRoot, 'dist', f), join(dir, 'dist', f));
  for (const f of readdirSync(join(repoRoot, 'native')).filter((f) => f.endsWith('.cjs') || f.endsWith('.node'))) cpSync(join(repoRoot, 'native', f), join(dir, 'native', f));
  const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all', process.execPath, join(dir, 'bin', 'lazy-pages.js'), 'check'], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  t.is(r.status, 1, `${r.stdout}\n${r.stderr}`);
  t.regex(r.stdout, /^FAIL /m);
  t.regex(r.stdout, /-> (run as root|EVENT_FORK needs CAP_SYS_PTRACE)/);
  t.regex(r.stdout, /^VERDICT: lazy-pages cannot serve lazy restores here/m);
});

test('without the native addon, --help and --version work and check says what is missing (one line, no stack trace)', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lazy-noaddon-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  for (const d of ['dist', 'native']) mkdirSync(join(dir, d));
  cpSync(join(repoRoot, 'package.json'), join(dir, 'package.json'));
  cpSync(join(repoRoot, 'bin'), join(dir, 'bin'), { recursive: true });
  for (const f of readdirSync(join(repoRoot, 'dist')).filter((f) => f.startsWith('cli.bundle.'))) cpSync(join(repoRoot, 'dist', f), join(dir, 'dist', f));
  cpSync(join(repoRoot, 'native', 'binding.cjs'), join(dir, 'native', 'binding.cjs')); // the loader, without any .node
  const run = (args: string[]) => spawnSync(process.execPath, [join(dir, 'bin', 'lazy-pages.js'), ...args], { encoding: 'utf8', timeout: 60_000 });
  const v = run(['--version']);
  t.is(v.status, 0, v.stderr);
  t.regex(v.stdout, /^\d+\.\d+\.\d+/);
  t.is(run(['--help']).status, 0);
  const c = run(['check']);
  t.is(c.status, 1, c.stderr);
  t.regex(c.stdout, /^FAIL native addon: the native addon cannot be loaded .*npm run build:native/m);
  t.notRegex(`${c.stdout}${c.stderr}`, /at .*\.c?js:\d+/);
});
