#!/usr/bin/env node
// Regenerates ts/images/gen/ from proto/ with the npm-installed `buf` and `protoc-gen-es`.
// Both come from node_modules/.bin so the output depends only on the locked package versions
// (reproducible, no network: buf compiles the local module and runs the local plugin).
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const bin = path.join(root, 'node_modules', '.bin');
const r = spawnSync(path.join(bin, 'buf'), ['generate', '--template', 'buf.gen.yaml'], {
  cwd: root,
  stdio: 'inherit',
  // buf looks plugins up on PATH: put ours first so a globally installed one never wins.
  env: { ...process.env, PATH: `${bin}${path.delimiter}${process.env.PATH ?? ''}` },
});
if (r.error) {
  console.error(`gen-proto: cannot run buf: ${r.error.message}`);
  process.exit(1);
}
process.exit(r.status ?? 1);
