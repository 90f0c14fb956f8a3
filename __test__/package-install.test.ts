/**
 * The package as npm delivers it: `npm run pack:local`'s two tarballs (the main package and this
 * machine's platform package) installed into an empty project, with no cargo on the PATH, then used
 * as a user would: the CLI's --version, check and demo (a real lazy restore by the simulator the
 * platform package carries), and an ESM import of the library that starts and stops a daemon.
 */
import test from 'ava';
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { delimiter, dirname, join } from 'node:path';
import { promisify } from 'node:util';

import { repoRoot, synth, tempDir } from './helpers/common.js';

const run = promisify(execFile);

test('pack:local tarballs install into an empty project without cargo; --version, check, demo and an ESM import work; without the platform package, one line each (ENATIVE, ENOSIM)', async (t) => {
  const dir = tempDir(t, 'lazy-consumer-');
  const packDir = join(dir, 'pack');
  const packed = execFileSync(process.execPath, [join(repoRoot, 'scripts', 'pack-local.mjs'), '--out', packDir], { encoding: 'utf8' });
  const tarballs = readdirSync(packDir).filter((f) => f.endsWith('.tgz'));
  t.is(tarballs.length, 2, packed);
  const main = tarballs.find((f) => /^lazy-pages-\d/.test(f));
  const platform = tarballs.find((f) => /^lazy-pages-linux-/.test(f));
  t.truthy(main && platform, packed);

  // An empty project whose PATH has node and the system's tools but no cargo or rustc.
  const project = join(dir, 'project');
  execFileSync('mkdir', ['-p', project]);
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
  const PATH = [...new Set([dirname(process.execPath), '/usr/bin', '/bin'])].join(delimiter);
  t.false(PATH.split(delimiter).some((d) => existsSync(join(d, 'cargo'))), `cargo is on ${PATH}`);
  const env: NodeJS.ProcessEnv = { ...process.env, PATH, npm_config_audit: 'false', npm_config_fund: 'false', npm_config_update_notifier: 'false' };
  for (const k of Object.keys(env)) if (k.startsWith('npm_') && !k.startsWith('npm_config_')) delete env[k];
  const opts = { cwd: project, env, encoding: 'utf8' as const, timeout: 120_000 };
  const npmCli = join(dirname(process.execPath), 'npm');
  const install = await run(npmCli, ['install', join(packDir, main!), join(packDir, platform!)], opts);
  t.log(install.stdout.trim());
  const installed = readdirSync(join(project, 'node_modules'));
  t.true(installed.includes('lazy-pages') && installed.includes(platform!.replace(/-\d+\.\d+\.\d+.*$/, '')), installed.join(' '));
  t.false(existsSync(join(project, 'node_modules', 'lazy-pages', 'crates')), 'no sources shipped');

  const bin = join(project, 'node_modules', '.bin', 'lazy-pages');
  const version = (await run(bin, ['--version'], opts)).stdout.trim();
  t.is(version, JSON.parse(execFileSync('cat', [join(repoRoot, 'package.json')], { encoding: 'utf8' })).version);

  const check = JSON.parse((await run(bin, ['check', '--json'], opts)).stdout) as { ok: boolean; verdict: string };
  t.true(check.ok, JSON.stringify(check));

  // The demo: a real lazy restore of the built-in example by the platform package's simulator.
  const demo = await run(bin, ['demo'], opts);
  t.regex(demo.stdout, /lazy restore OK/, `${demo.stdout}\n${demo.stderr}`);

  // The library from an ESM import: a daemon starts (its addon and guardian from the platform
  // package), listens, and closes.
  const ck = await synth(t, { size: 1 << 20 });
  const work = tempDir(t, 'lazy-consumer-work-');
  writeFileSync(
    join(project, 'use.mjs'),
    `import { startLazyPagesDaemon, SOCKET_NAME } from 'lazy-pages';
import { existsSync } from 'node:fs';
const d = await startLazyPagesDaemon({ imagesDir: ${JSON.stringify(ck.dir)}, workDir: ${JSON.stringify(work)} });
const listening = existsSync(${JSON.stringify(work)} + '/' + SOCKET_NAME);
await d.close('done');
await d.done.catch(() => {});
console.log(JSON.stringify({ type: typeof startLazyPagesDaemon, listening }));
`,
  );
  const used = JSON.parse((await run(process.execPath, ['use.mjs'], opts)).stdout.trim()) as { type: string; listening: boolean };
  t.deepEqual(used, { type: 'function', listening: true });

  // Without a platform package that fits (another OS, --omit=optional): --version and --help still
  // work, and what needs the addon says so in one line with its code.
  // (As npm leaves it out where it does not fit: the main package still names it as optional.)
  rmSync(join(project, 'node_modules', platform!.replace(/-\d+\.\d+\.\d+.*$/, '')), { recursive: true, force: true });
  t.is((await run(bin, ['--version'], opts)).stdout.trim(), version);
  const fails = (args: string[]) =>
    run(bin, args, opts).then(
      () => undefined,
      (e: { code?: number; stderr?: string }) => e,
    );
  const daemon = await fails(['daemon', '-D', ck.dir, '-W', tempDir(t, 'lazy-consumer-work2-')]);
  t.is(daemon?.code, 1);
  t.regex(daemon?.stderr ?? '', /^lazy-pages: the native addon cannot be loaded .* \(ENATIVE\)\n$/);
  const noSim = await fails(['demo']);
  t.is(noSim?.code, 1);
  t.regex(noSim?.stderr ?? '', /^lazy-pages: the restore simulator is not installed .*install the platform package.* \(ENOSIM\)\n$/);
});
