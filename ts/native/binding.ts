// The one place that loads the napi-rs generated binding. Nothing else imports it.
import { createRequire } from 'node:module';
import { join } from 'node:path';

import type * as Binding from '../../native/binding.js';
import { packageRoot } from '../package-root.js';

const require = createRequire(import.meta.url);

/** The raw generated binding (loader picks the platform package or the local build). */
export const binding: typeof Binding = require(join(packageRoot, 'native', 'binding.cjs'));
