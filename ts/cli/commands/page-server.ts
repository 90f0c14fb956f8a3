/**
 * `lazy-pages page-server -D DIR --address A --port P [--sessions N] [--tls …]`: the source side
 * of a remote lazy migration. Unlike CRIU's page server it serves any number of restores, at once
 * and one after another, until SIGTERM (or N sessions with --sessions).
 * Prints `listening on ADDR:PORT` on stdout once ready (the real port when --port 0).
 */
import type { Argv, CommandModule } from 'yargs';
import { z } from 'zod';
import { startPageServer, type PageServerEvent } from '../../pageserver/index.js';
import { validate } from '../options.js';
import { tlsFields, tlsFiles, tlsYargs } from '../tls-options.js';

const schema = z.object({
  imagesDir: z.string({ error: 'is required (the checkpoint directory)' }).min(1, 'must not be empty'),
  address: z.string().min(1, 'must not be empty').default('127.0.0.1'),
  port: z.number({ error: 'is required (0 = pick a free port)' }).int('must be a whole number').min(0, 'must be 0-65535').max(65535, 'must be 0-65535'),
  sessions: z.number({ error: 'must be a number' }).int('must be a whole number').min(1, 'must be at least 1').optional(),
  stallTimeout: z.number({ error: 'must be a number' }).int().min(100, 'must be at least 100 ms').default(30_000),
  ...tlsFields,
  verbosity: z.number().int().min(0).max(4).default(2),
});

function builder(y: Argv) {
  return tlsYargs(y, 'server')
    .option('images-dir', { alias: 'D', type: 'string', describe: 'checkpoint directory whose lazy pages to serve (required)' })
    .option('address', { type: 'string', describe: 'address to listen on (default 127.0.0.1)' })
    .option('port', { type: 'number', describe: 'TCP port (0 = a free one, printed on stdout)' })
    .option('sessions', { type: 'number', describe: 'exit after this many client sessions (default: serve until SIGTERM)' })
    .option('stall-timeout', { type: 'number', describe: 'ms a client may leave a reply unread before its session ends' })
    .option('verbosity', { alias: 'v', type: 'number', describe: 'log level 0-4', default: 2 })
    .example('$0 page-server -D /var/ckpt --address 10.0.0.1 --port 27', 'serve the lazy pages of /var/ckpt to destination daemons');
}

/** One log line per event, by level: 1 = failed sessions, 2 = every session, 3 = + starts. */
function logLine(e: PageServerEvent, verbosity: number): string | undefined {
  switch (e.type) {
    case 'listening':
      return undefined;
    case 'session-started':
      return verbosity >= 3 ? `session ${e.session} from ${e.peer} started` : undefined;
    case 'session-ended':
      if (verbosity < (e.ok ? 2 : 1)) return undefined;
      return `session ${e.session} from ${e.peer} ended (${e.reason}): ${e.detail}; ${e.requests} request(s), ${e.pagesSent} page(s) sent`;
    case 'closed':
      return verbosity >= 2 ? `page server stopped after ${e.sessions} session(s)` : undefined;
  }
}

export const pageServerCommand: CommandModule<object, Record<string, unknown>> = {
  command: 'page-server',
  describe: 'serve the lazy pages of a checkpoint to remote lazy-pages daemons (CRIU page-server protocol)',
  builder,
  handler: async (argv) => {
    const o = validate(schema, argv);
    const srv = await startPageServer({
      imagesDir: o.imagesDir,
      address: o.address,
      port: o.port,
      sessions: o.sessions,
      stallTimeoutMs: o.stallTimeout,
      tls: tlsFiles(o),
      onEvent: (e) => {
        const l = logLine(e, o.verbosity);
        if (l) process.stderr.write(`page-server: ${l}\n`);
      },
    });
    process.stdout.write(`listening on ${srv.address}:${srv.port}\n`);
    const stop = () => void srv.close();
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
    await srv.done;
    process.off('SIGTERM', stop);
    process.off('SIGINT', stop);
  },
};
