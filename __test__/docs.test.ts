/** The API docs generate from the TypeScript (`npm run docs`), with every referenced type documented. */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { repoRoot } from './helpers/common.js';

test('typedoc builds the API docs with no warning; the library entry points are in them', (t) => {
  const out = mkdtempSync(join(tmpdir(), 'lazy-docs-'));
  t.teardown(() => rmSync(out, { recursive: true, force: true }));
  const r = spawnSync(process.execPath, [join(repoRoot, 'node_modules', 'typedoc', 'bin', 'typedoc'), '--out', out, '--treatWarningsAsErrors'], {
    cwd: repoRoot,
    encoding: 'utf8',
    timeout: 120_000,
  });
  t.is(r.status, 0, `${r.stdout}\n${r.stderr}`);
  for (const page of ['functions/startLazyPagesDaemon.html', 'functions/startPageServer.html', 'classes/Checkpoint.html', 'types/DaemonEvent.html']) {
    t.true(existsSync(join(out, page)), page);
  }
  t.regex(readFileSync(join(out, 'functions', 'startLazyPagesDaemon.html'), 'utf8'), /Resolves once the socket listens/);
});

/** Every file under `dir` (recursively) whose name ends with `ext`. */
function sources(dir: string, ext: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith(ext) && !f.includes('/gen/'))
    .map((f) => join(dir, f));
}

test('every error code the CLI and the library can give is listed in the README', (t) => {
  const codes = new Set<string>();
  for (const f of sources(join(repoRoot, 'ts'), '.ts')) {
    const s = readFileSync(f, 'utf8');
    // The first argument of a UserError (a literal, or literals in a conditional), a subclass's super(), a default code.
    for (const m of s.matchAll(/(?:new UserError\(|super\()\s*([^,]*),/g)) for (const c of m[1].matchAll(/'(E[A-Z_]{3,})'/g)) codes.add(c[1]);
    for (const m of s.matchAll(/\?\? '(E[A-Z_]{3,})'|code: [^,\n]*'(E[A-Z_]{3,})'/g)) codes.add(m[1] ?? m[2]);
  }
  for (const f of sources(join(repoRoot, 'crates', 'uffd-native', 'src'), '.rs')) {
    // The native errors' code(): `Variant => "ECODE"` arms and bare `"ECODE"` bodies, outside tests.
    const s = readFileSync(f, 'utf8').split('#[cfg(test)]')[0];
    for (const m of s.matchAll(/(?:=> |^\s*)"(E[A-Z_]{3,})"(?:\.into\(\))?,?$/gm)) codes.add(m[1]);
  }
  t.true(codes.size >= 20, [...codes].join(' '));
  const readme = readFileSync(join(repoRoot, 'README.md'), 'utf8');
  const table = readme.slice(readme.indexOf('### Error codes'), readme.indexOf('## Benchmark'));
  const listed = new Set([...table.matchAll(/`(E[A-Z_]{3,})`/g)].map((m) => m[1]));
  t.deepEqual([...codes].filter((c) => !listed.has(c)).sort(), [], 'codes missing from the README');
  t.deepEqual([...listed].filter((c) => !codes.has(c)).sort(), [], 'codes listed that nothing gives');
});
