// The one place that loads the napi-rs generated binding. Nothing else imports it.
import { createRequire } from 'node:module';
import { join } from 'node:path';

import type * as Binding from '../../native/binding.js';
import { UserError } from '../errors.js';
import { packageRoot } from '../package-root.js';

const require = createRequire(import.meta.url);

let loaded: typeof Binding | undefined;

/** Loads the addon on first use; a missing or broken one is one clear line, not a stack trace. */
function load(): typeof Binding {
  if (loaded) return loaded;
  const file = join(packageRoot, 'native', 'binding.cjs');
  try {
    loaded = require(file) as typeof Binding;
  } catch (e) {
    const why = ((e as Error)?.message ?? String(e)).split('\n')[0];
    throw new UserError(
      'ENATIVE',
      `the native addon cannot be loaded (${why}): install the platform package of ${process.platform}-${process.arch} ` +
        '(npm installs it with lazy-pages), or build it in a checkout with `npm run build:native`',
    );
  }
  return loaded;
}

/**
 * The raw generated binding (the loader picks the platform package or the local build), loaded the
 * first time something of it is used: `--help`, `--version` and `check`'s own lines work without it.
 */
export const binding: typeof Binding = new Proxy({} as typeof Binding, {
  get: (_t, key) => (load() as unknown as Record<PropertyKey, unknown>)[key],
});
