#!/usr/bin/env node
// The bundled CLI starts in half the CPU time of the module tree (scripts/bundle-cli.mjs); the tree
// is the fallback when the bundle was not built.
import { existsSync } from 'node:fs';

const bundle = new URL('../dist/cli.bundle.mjs', import.meta.url);
const { main } = await import(existsSync(bundle) ? bundle.href : '../dist/cli/main.js');
main(process.argv.slice(2));
