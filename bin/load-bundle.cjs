// Loads the bundled CLI (dist/cli.bundle.cjs) with V8's code cache (dist/cli.bundle.cache), made by
// scripts/bundle-cli.mjs right after bundling. Why: compiling the 1.3 MB bundle was about half of
// the daemon's start-up CPU, and the daemon's CPU is measured against `criu lazy-pages`, which
// starts in a millisecond. A cache V8 rejects (another Node, other flags) only costs the compile.
'use strict';
const { existsSync, readFileSync, writeFileSync } = require('node:fs');
const { createRequire, wrap } = require('node:module');
const { dirname, join } = require('node:path');
const { Script } = require('node:vm');

const BUNDLE = join(__dirname, '..', 'dist', 'cli.bundle.cjs');
const CACHE = `${BUNDLE.slice(0, -'.cjs'.length)}.cache`;

/** The bundle's exports, or undefined when it was not built. `produce` writes the cache after. */
function loadBundle(produce = false) {
  if (!existsSync(BUNDLE)) return undefined;
  let cachedData;
  if (!produce) {
    try {
      cachedData = readFileSync(CACHE);
    } catch {
      /* not built: compiled as usual */
    }
  }
  const script = new Script(wrap(readFileSync(BUNDLE, 'utf8')), { filename: BUNDLE, cachedData });
  const module = { exports: {} };
  script.runInThisContext()(module.exports, createRequire(BUNDLE), module, BUNDLE, dirname(BUNDLE));
  // After running its top level, so the functions compiled on the way are in the cache too.
  if (produce) writeFileSync(CACHE, script.createCachedData());
  return module.exports;
}

module.exports = { loadBundle, BUNDLE, CACHE };
