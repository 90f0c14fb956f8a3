// Stages the main npm package `lazy-pages` into a directory, ready for `npm pack` / `npm publish`:
// the files package.json lists (dist/, bin/, native/binding.cjs, ...), and a package.json that
// depends on every platform package as an optionalDependency (npm installs the one whose os, cpu
// and libc fit; the generated loader native/binding.cjs requires it) and has no scripts and no
// devDependencies: a consumer's install runs nothing.
//
//   node scripts/package-main.mjs --out DIR
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { TARGETS, parseArgs, platformPackage } from './lib/targets.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

export function writeMainPackage({ out }) {
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
  for (const need of ['dist/index.js', 'dist/cli.bundle.cjs', 'native/binding.cjs']) {
    if (!existsSync(join(root, need))) throw new Error(`${need} is missing: run \`npm run build\` first`);
  }
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  // npm's own rules for `files` (globs, directories) decide what is shipped: ask it rather than
  // reimplementing them.
  for (const f of [...packedFiles(), 'README.md', 'LICENSE', 'CHANGELOG.md']) {
    mkdirSync(dirname(join(out, f)), { recursive: true });
    cpSync(join(root, f), join(out, f));
  }
  delete pkg.scripts;
  delete pkg.devDependencies;
  delete pkg.napi;
  pkg.optionalDependencies = Object.fromEntries(TARGETS.map((t) => [platformPackage(t), pkg.version]));
  writeFileSync(join(out, 'package.json'), `${JSON.stringify(pkg, null, 2)}\n`);
  return pkg;
}

function packedFiles() {
  const out = JSON.parse(
    execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: root, encoding: 'utf8' }),
  );
  return out[0].files.map((f) => f.path).filter((p) => p !== 'package.json');
}


if (process.argv[1] === fileURLToPath(import.meta.url)) {
  try {
    const o = parseArgs(process.argv.slice(2), ['out']);
    const pkg = writeMainPackage(o);
    console.log(`${pkg.name}@${pkg.version} staged in ${o.out}`);
  } catch (e) {
    console.error(`package-main: ${e.message}`);
    process.exit(1);
  }
}
