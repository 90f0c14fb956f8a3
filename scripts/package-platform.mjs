// Writes one per-platform npm package (lazy-pages-linux-x64-gnu, ...): the napi-rs addon and,
// next to it, the guardian and the restore simulator, which the addon and the CLI look for there.
//
//   node scripts/package-platform.mjs --target x86_64-unknown-linux-gnu --artifacts DIR --out DIR
//
// DIR of --artifacts holds lazy-pages.<platform>.node, lazy-pages-guardian and restore-sim (what
// the release workflow's build job uploads, or native/ of a local build). Used by pack-local.mjs
// and the release workflow, so the package a test installs is the package that is published.
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { EXECUTABLES, addonFile, parseArgs, platformPackage, targetByTriple } from './lib/targets.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

export function writePlatformPackage({ target, artifacts, out }) {
  const t = targetByTriple(target);
  const main = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
  const files = [addonFile(t), ...EXECUTABLES];
  for (const f of files) {
    if (!existsSync(join(artifacts, f))) throw new Error(`${join(artifacts, f)} is missing: build ${t.triple} first`);
  }
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  for (const f of files) copyFileSync(join(artifacts, f), join(out, f));
  for (const f of EXECUTABLES) chmodSync(join(out, f), 0o755);
  copyFileSync(join(root, 'LICENSE'), join(out, 'LICENSE'));
  const pkg = {
    name: platformPackage(t),
    version: main.version,
    description: `The ${t.triple} native core of lazy-pages (the addon, its guardian and the restore simulator)`,
    license: main.license,
    repository: main.repository,
    homepage: main.homepage,
    bugs: main.bugs,
    os: ['linux'],
    cpu: [t.cpu],
    libc: [t.libc],
    engines: main.engines,
    main: addonFile(t),
    files,
  };
  writeFileSync(join(out, 'package.json'), `${JSON.stringify(pkg, null, 2)}\n`);
  writeFileSync(
    join(out, 'README.md'),
    `# ${pkg.name}\n\nThe prebuilt native core of [lazy-pages](${main.homepage}) for \`${t.triple}\`. ` +
      'Install `lazy-pages`, not this package: npm picks the platform package that fits.\n',
  );
  return pkg;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  try {
    const o = parseArgs(process.argv.slice(2), ['target', 'artifacts', 'out']);
    const pkg = writePlatformPackage(o);
    console.log(`${pkg.name}@${pkg.version} written to ${o.out}`);
  } catch (e) {
    console.error(`package-platform: ${e.message}`);
    process.exit(1);
  }
}
