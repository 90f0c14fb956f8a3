// npm's install hook: make sure a native addon exists for this machine.
//
// A published install finds its prebuilt binary in the per-platform optional dependency
// (lazy-pages-linux-x64-gnu, ...), so there is nothing to do. A git clone has no prebuilt
// binary: then we build the addon (and the guardian next to it, the restore simulator, and the
// TypeScript) from source with cargo. A published install has no guardian binary: the addon then
// runs the guardian itself, under node (see crates/uffd-native/src/guardian.rs). Either way a
// user sees one clear line of what happened.
import { execSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);

function prebuiltLoads() {
  if (!existsSync(join(root, 'native', 'binding.cjs'))) return false;
  try {
    require(join(root, 'native', 'binding.cjs'));
    return true;
  } catch {
    return false;
  }
}

const fromSource = existsSync(join(root, 'crates', 'uffd-native', 'Cargo.toml'));
if (!fromSource) {
  if (!prebuiltLoads()) {
    console.error('lazy-pages: no prebuilt native binary fits this platform ' +
      `(${process.platform}-${process.arch}); only x86_64 and aarch64 Linux are supported.`);
    process.exit(1);
  }
  process.exit(0);
}

const run = (cmd) => execSync(cmd, { cwd: root, stdio: 'inherit' });
try {
  execSync('cargo --version', { stdio: 'ignore' });
} catch {
  console.error('lazy-pages: building from a git checkout needs Rust (cargo): https://rustup.rs');
  process.exit(1);
}
console.log('lazy-pages: no prebuilt binary in a source checkout: building the native addon with cargo');
run('npm run --silent build:native');
run('npm run --silent build:guardian');
run('npm run --silent build:sim');
run('npm run --silent build:ts');
