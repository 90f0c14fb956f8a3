/**
 * `lazy-pages page-server -D DIR --address A --port P [--sessions N] [--allow CIDR…] [--tls …]`: the
 * source side of a remote lazy migration. Unlike CRIU's page server it serves any number of restores,
 * at once and one after another, until SIGTERM (or N sessions with --sessions).
 * Prints `listening on ADDR:PORT` on stdout once ready (the real port when --port 0).
 */
import type { Argv, CommandModule } from 'yargs';
import { z } from 'zod';
import {
  DEFAULT_IDLE_TIMEOUT_MS, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_PEER, startPageServer, type PageServerEvent,
} from '../../pageserver/index.js';
import { validate } from '../options.js';
import { tlsFields, tlsFiles, tlsYargs } from '../tls-options.js';

const schema = z.object({
  imagesDir: z.string({ error: 'is required (the checkpoint directory)' }).min(1, 'must not be empty'),
  address: z.string().min(1, 'must not be empty').default('127.0.0.1'),
  port: z.number({ error: 'is required (0 = pick a free port)' }).int('must be a whole number').min(0, 'must be 0-65535').max(65535, 'must be 0-65535'),
  sessions: z.number({ error: 'must be a number' }).int('must be a whole number').min(1, 'must be at least 1').optional(),
  stallTimeout: z.number({ error: 'must be a number' }).int().min(100, 'must be at least 100 ms').default(30_000),
  allow: z.array(z.string().min(1, 'must not be empty'), { error: 'must be a network, e.g. 10.0.0.0/24' }).default([]),
  maxConnections: z.number({ error: 'must be a number' }).int('must be a whole number').min(0, 'must be 0 (no limit) or more').max(0xffffffff).default(DEFAULT_MAX_CONNECTIONS),
  maxPerPeer: z.number({ error: 'must be a number' }).int('must be a whole number').min(0, 'must be 0 (no limit) or more').max(0xffffffff).default(DEFAULT_MAX_PER_PEER),
  idleTimeout: z.number({ error: 'must be a number' }).int('must be a whole number of ms').min(0, 'must be 0 (never) or more').max(0xffffffff).default(DEFAULT_IDLE_TIMEOUT_MS),
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
    .option('allow', {
      type: 'string', array: true, requiresArg: true,
      describe: 'serve only peers in this network (ADDR/LEN, IPv4 or IPv6; repeatable); others are closed at accept. Default: everyone',
    })
    .option('max-connections', { type: 'number', describe: `most connections at once; more are closed at accept (default ${DEFAULT_MAX_CONNECTIONS}, 0 = no limit)` })
    .option('max-per-peer', { type: 'number', describe: `most connections at once from one source IP (default ${DEFAULT_MAX_PER_PEER}, 0 = no limit)` })
    .option('idle-timeout', {
      type: 'number',
      describe: `ms a connection may sit with no request before it is closed (default ${DEFAULT_IDLE_TIMEOUT_MS}, 0 = never; ` +
        'a daemon restoring with --no-background may be quiet for longer)',
    })
    .option('verbosity', { alias: 'v', type: 'number', describe: 'log level 0-4', default: 2 })
    .example('$0 page-server -D /var/ckpt --address 10.0.0.1 --port 27 --allow 10.0.0.2/32', 'serve the lazy pages of /var/ckpt to the daemon on 10.0.0.2');
}

/** One log line per event, by level: 1 = failed sessions, refusals and warnings, 2 = every session, 3 = + starts. */
function logLine(e: PageServerEvent, verbosity: number): string | undefined {
  switch (e.type) {
    case 'refused':
      return verbosity >= 1 ? `refused ${e.peer} (${e.reason}): ${e.detail}` : undefined;
    case 'warning':
      return verbosity >= 1 ? `warning: ${e.message}` : undefined;
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

const REFUSALS_PER_SECOND = 20;

export const pageServerCommand: CommandModule<object, Record<string, unknown>> = {
  command: 'page-server',
  describe: 'serve the lazy pages of a checkpoint to remote lazy-pages daemons (CRIU page-server protocol)',
  builder,
  handler: async (argv) => {
    const o = validate(schema, argv);
    const out = (l: string) => process.stderr.write(`page-server: ${l}\n`);
    // A flood of refused connections must not flood the log: at most REFUSALS_PER_SECOND lines a second,
    // then one line with how many more there were.
    let windowStart = 0;
    let inWindow = 0;
    let suppressed = 0;
    const flushSuppressed = () => {
      if (suppressed > 0) out(`refused ${suppressed} more connection(s) in the last second`);
      suppressed = 0;
    };
    const srv = await startPageServer({
      imagesDir: o.imagesDir,
      address: o.address,
      port: o.port,
      sessions: o.sessions,
      stallTimeoutMs: o.stallTimeout,
      allow: o.allow,
      maxConnections: o.maxConnections,
      maxPerPeer: o.maxPerPeer,
      idleTimeoutMs: o.idleTimeout,
      tls: tlsFiles(o),
      onEvent: (e) => {
        const l = logLine(e, o.verbosity);
        if (!l) return;
        if (e.type === 'refused') {
          const now = Date.now();
          if (now - windowStart >= 1000) {
            flushSuppressed();
            windowStart = now;
            inWindow = 0;
          }
          if (++inWindow > REFUSALS_PER_SECOND) {
            if (suppressed++ === 0) setTimeout(flushSuppressed, Math.max(0, windowStart + 1000 - now)).unref();
            return;
          }
        }
        if (e.type === 'closed') flushSuppressed();
        out(l);
      },
    });
    const stop = () => void srv.close();
    // Kept installed to the end: a SIGTERM that comes while the server is already stopping (after its
    // last --sessions session) must not kill it by the default action (it would not exit 0).
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
    // Only now: whoever waits for this line may stop us at once.
    process.stdout.write(`listening on ${srv.address}:${srv.port}\n`);
    await srv.done;
  },
};
