// The one place that loads the napi-rs generated binding. Nothing else imports it.
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import type * as Binding from '../../native/binding.js';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);

/** The raw generated binding (loader picks the platform package or the local build). */
export const binding: typeof Binding = require(join(here, '..', '..', 'native', 'binding.cjs'));
