// `npm ci` / `npm install` in a git checkout (npm's `prepare` hook): build the native addon, the
// guardian and the restore simulator (next to the addon, in native/) and the TypeScript from source.
//
// A consumer's install of the published package runs no script at all: `prepare` runs only for a
// local or git install, and the prebuilt binaries come in the per-platform optional dependency
// (lazy-pages-linux-x64-gnu, ...). Set LAZY_PAGES_SKIP_BUILD=1 to install a checkout's
// dependencies without building (the README's `npm run build` does it later).
import { execSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
if (!existsSync(join(root, 'crates', 'uffd-native', 'Cargo.toml')) || process.env.LAZY_PAGES_SKIP_BUILD) process.exit(0);

try {
  execSync('cargo --version', { stdio: 'ignore' });
} catch {
  console.error('lazy-pages: building from a git checkout needs Rust (cargo): https://rustup.rs');
  process.exit(1);
}
console.log('lazy-pages: building the native addon, the guardian, the restore simulator and the TypeScript (cargo, tsc)');
execSync('npm run --silent build', { cwd: root, stdio: 'inherit' });
