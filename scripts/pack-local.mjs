// `npm run pack:local`: the main package and this machine's platform package as npm tarballs in
// pack/, built by the same scripts the release workflow publishes with (package-main.mjs,
// package-platform.mjs). Install both into any project to try what `npm install lazy-pages` gives:
//
//   npm install ./pack/lazy-pages-0.1.0.tgz ./pack/lazy-pages-linux-x64-gnu-0.1.0.tgz
//
// `--out DIR` writes them there instead (the install test packs into a temp dir). Prints one line
// per tarball: its path, size and number of files.
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { writeMainPackage } from './package-main.mjs';
import { writePlatformPackage } from './package-platform.mjs';
import { TARGETS } from './lib/targets.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const packDir = process.argv[2] === '--out' && process.argv[3] ? process.argv[3] : join(root, 'pack');

function hostTarget() {
  const cpu = process.arch;
  const libc = process.report?.getReport()?.header?.glibcVersionRuntime ? 'glibc' : 'musl';
  const t = TARGETS.find((x) => x.cpu === cpu && x.libc === libc);
  if (process.platform !== 'linux' || !t) throw new Error(`no lazy-pages target for ${process.platform}-${cpu} (${libc})`);
  return t;
}

try {
  const t = hostTarget();
  rmSync(packDir, { recursive: true, force: true });
  mkdirSync(packDir, { recursive: true });
  const stage = join(packDir, 'stage');
  const mainDir = join(stage, 'lazy-pages');
  const platDir = join(stage, t.platform);
  writeMainPackage({ out: mainDir });
  writePlatformPackage({ target: t.triple, artifacts: join(root, 'native'), out: platDir });
  for (const dir of [mainDir, platDir]) {
    const [info] = JSON.parse(
      execFileSync('npm', ['pack', dir, '--json', '--ignore-scripts', '--pack-destination', packDir], { encoding: 'utf8' }),
    );
    console.log(`${join(packDir, info.filename)}  ${(info.size / 1024 / 1024).toFixed(1)} MiB, ${info.entryCount} files`);
  }
  rmSync(stage, { recursive: true, force: true });
} catch (e) {
  console.error(`pack:local: ${e.message}`);
  process.exit(1);
}
