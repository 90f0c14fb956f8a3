// Bundles the compiled CLI (dist/cli/main.js and everything it imports, dependencies included) into
// one file, dist/cli.bundle.mjs, which bin/lazy-pages.js prefers. Why: loading ~70 ES modules plus
// yargs, zod and protobuf-es one file at a time cost the daemon ~0.45 s of CPU at every start (more
// than `criu lazy-pages` spends on a whole 512 MiB restore); one bundle halves that. The native addon
// stays outside (loaded with require from native/). Run by `npm run build:ts`; reproducible.
import { build } from 'esbuild';

await build({
  entryPoints: ['dist/cli/main.js'],
  outfile: 'dist/cli.bundle.mjs',
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  sourcemap: true,
  logLevel: 'warning',
  // Bundled CommonJS dependencies may call require(): give the ESM bundle one.
  banner: { js: "import { createRequire as __lazyPagesRequire } from 'node:module'; const require = __lazyPagesRequire(import.meta.url);" },
});
