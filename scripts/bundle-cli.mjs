// Bundles the compiled CLI (dist/cli/main.js and everything it imports, dependencies included) into
// one CommonJS file, dist/cli.bundle.cjs, and makes V8's code cache for it (dist/cli.bundle.cache),
// both loaded by bin/lazy-pages.js through bin/load-bundle.cjs. Why: loading ~70 ES modules plus
// yargs, zod and protobuf-es one file at a time cost the daemon ~0.45 s of CPU at every start (more
// than `criu lazy-pages` spends on a whole 512 MiB restore); one bundle halved that, and the code
// cache takes most of the compile off what is left. CommonJS because Node 20 has a code cache API
// for scripts (vm.Script) but not for ES modules. The native addon stays outside (loaded with
// require from native/). Run by `npm run build:ts`; reproducible.
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { build } from 'esbuild';

await build({
  entryPoints: ['dist/cli/main.js'],
  outfile: 'dist/cli.bundle.cjs',
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  sourcemap: true,
  logLevel: 'warning',
  // import.meta.url of the bundled ES modules: the bundle's own URL.
  banner: { js: "var __lazyPagesMetaUrl = require('node:url').pathToFileURL(__filename).href;" },
  define: { 'import.meta.url': '__lazyPagesMetaUrl' },
  // yargs' CommonJS build: its help wraps at words (wrap-ansi), where the ES module build's own wrap
  // cut words in two ("criu lazy-pag es").
  alias: { yargs: './node_modules/yargs/index.cjs' },
  // Vega (bench plots) is never loaded from the bundle: a worker thread imports it from node_modules
  // (dist/bench/plot-render.js; ts/bench/plot.ts says why). Bundled, it would be ~1 MB more to load.
  external: ['vega'],
});
// The ES module bundle of earlier builds is no longer used.
rmSync('dist/cli.bundle.mjs', { force: true });
rmSync('dist/cli.bundle.mjs.map', { force: true });
// In a separate Node, so the cache matches what `node bin/lazy-pages.js` compiles.
execFileSync(process.execPath, ['-e', "require('./bin/load-bundle.cjs').loadBundle(true)"], { stdio: 'inherit' });
