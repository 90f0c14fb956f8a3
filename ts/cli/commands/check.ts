/** `lazy-pages check [--json] [--criu PATH]`: can this machine and this user serve lazy restores? */
import type { CommandModule } from 'yargs';
import { z } from 'zod';

import { checkSystem, formatCheck } from '../../system/check.js';
import { validate } from '../options.js';

const schema = z.object({ json: z.boolean(), criu: z.string().min(1, 'must not be empty').optional() });

export const checkCommand: CommandModule<object, Record<string, unknown>> = {
  command: 'check',
  describe: 'what this kernel and this user can do: userfaultfd, its events, limits, pid namespace, criu (exit 1 if a lazy restore cannot be served)',
  builder: (y) =>
    y
      .option('json', { type: 'boolean', default: false, describe: 'print the report as JSON (schemaVersion 1)' })
      .option('criu', { type: 'string', describe: 'a criu binary to report on (default: $CRIU, then the PATH)' }),
  handler: (argv) => {
    const o = validate(schema, argv);
    const r = checkSystem({ criu: o.criu });
    process.stdout.write(o.json ? `${JSON.stringify(r, null, 2)}\n` : formatCheck(r));
    if (!r.ok) process.exitCode = 1;
  },
};
