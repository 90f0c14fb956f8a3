#!/usr/bin/env node
// The bundled CLI (scripts/bundle-cli.mjs) starts in a fraction of the CPU time of the module tree:
// one file, loaded with V8's code cache (bin/load-bundle.cjs). The tree is the fallback when the
// bundle was not built.
import { createRequire } from 'node:module';

const { loadBundle } = createRequire(import.meta.url)('./load-bundle.cjs');
const { main } = loadBundle() ?? (await import('../dist/cli/main.js'));
main(process.argv.slice(2));
