/** The API docs generate from the TypeScript (`npm run docs`), with every referenced type documented. */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
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
