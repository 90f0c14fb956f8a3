/**
 * `lazy-pages daemon`: the drop-in for `criu lazy-pages`, with CRIU's option names and defaults.
 * A thin layer over startLazyPagesDaemon().
 */
import { spawn } from 'node:child_process';
import { closeSync, createWriteStream, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { z } from 'zod';

import { startLazyPagesDaemon } from '../../daemon/daemon.js';
import { UserError } from '../../errors.js';
import { validate } from '../options.js';
import { tlsFields, tlsFiles, tlsYargs } from '../tls-options.js';
import { Reporter } from '../reporter.js';

const schema = z
  .object({
    imagesDir: z.string({ error: 'is required (the checkpoint directory)' }).min(1, 'must not be empty'),
    workDir: z.string().min(1, 'must not be empty').optional(),
    pageServer: z.boolean().default(false),
    address: z.string().min(1).optional(),
    port: z.number({ error: 'must be a number' }).int('must be a whole number').min(1, 'must be 1-65535').max(65535, 'must be 1-65535').optional(),
    daemon: z.boolean().default(false),
    pidfile: z.string().min(1).optional(),
    statusFd: z.number({ error: 'must be a number' }).int('must be a file descriptor number').min(0, 'must be ≥ 0').optional(),
    logFile: z.string().min(1).optional(),
    verbosity: z.number().int().min(0).max(4).default(2),
    background: z.boolean().default(true),
    chunk: z.number().int().min(4096, 'must be at least 4096 bytes').optional(),
    ...tlsFields,
    pageServerTimeout: z.number().int().min(100, 'must be at least 100 ms').default(10_000),
  })
  .superRefine((o, ctx) => {
    if (o.pageServer && o.port === undefined) ctx.addIssue({ code: 'custom', path: ['port'], message: 'is required with --page-server' });
    if (!o.pageServer && (o.address !== undefined || o.port !== undefined)) {
      ctx.addIssue({ code: 'custom', path: ['pageServer'], message: '--address/--port only make sense with --page-server' });
    }
  });

export type DaemonCliOptions = z.infer<typeof schema>;

function builder(y: Argv) {
  return tlsYargs(y, 'client')
    .option('images-dir', { alias: 'D', type: 'string', describe: 'checkpoint directory written by `criu dump` (required)' })
    .option('work-dir', { alias: 'W', type: 'string', describe: 'where lazy-pages.socket is created (default: the images dir)' })
    .option('page-server', { type: 'boolean', describe: 'fetch lazy pages from a page server instead of pages-*.img' })
    .option('address', { type: 'string', describe: 'page server address (with --page-server)' })
    .option('port', { type: 'number', describe: 'page server port (with --page-server)' })
    .option('daemon', { alias: 'd', type: 'boolean', describe: 'detach once the socket listens' })
    .option('pidfile', { type: 'string', describe: 'write the daemon pid here once it listens' })
    .option('status-fd', { type: 'number', describe: 'write one byte to this fd when ready for the restorer (as CRIU)' })
    .option('log-file', { alias: 'o', type: 'string', describe: 'append log lines to this file instead of stderr' })
    .option('verbosity', { alias: 'v', type: 'number', describe: 'log level 0-4 (-v4 or -vvvv as in CRIU)', default: 2 })
    .option('background', { type: 'boolean', describe: 'transfer untouched pages after "restore finished"', default: true })
    .option('chunk', { type: 'number', describe: 'largest background request in bytes (default 4 MiB)' })
    .option('page-server-timeout', { type: 'number', describe: 'ms without progress before the page server counts as dead (default 10000)' })
    .example('$0 daemon -D /var/ckpt -W /run/restore', 'serve a local checkpoint; then run `criu restore -D /var/ckpt --lazy-pages -W /run/restore`');
}

export const daemonCommand: CommandModule<object, Record<string, unknown>> = {
  command: 'daemon',
  aliases: ['lazy-pages'],
  describe: 'serve a restore lazily: the drop-in for `criu lazy-pages`',
  builder,
  handler: async (argv) => {
    const o = validate(schema, argv);
    await runDaemon(o, process.argv.slice(2));
  },
};

async function runDaemon(o: DaemonCliOptions, rawArgs: string[]): Promise<void> {
  if (o.daemon) return detach(o, rawArgs);

  const log = o.logFile ? createWriteStream(resolve(o.logFile), { flags: 'a' }) : undefined;
  const write = (s: string) => (log ? log.write(s) : process.stderr.write(s));
  const reporter = new Reporter({ verbosity: o.verbosity, write, tty: !log && process.stderr.isTTY === true });
  const started = startLazyPagesDaemon({
    imagesDir: o.imagesDir,
    workDir: o.workDir,
    background: o.background,
    chunkBytes: o.chunk,
    pageServer: o.pageServer ? pageServerOf(o) : undefined,
    onEvent: (e) => reporter.handle(e),
  });
  const d = await started.catch(async (e: unknown) => {
    // A detached daemon's stderr goes nowhere: its log file must say why it could not start.
    if (log && e instanceof Error) await new Promise<void>((r) => log.end(`lazy-pages: ${e.message}\n`, () => r()));
    throw e;
  });
  if (o.pidfile) writeFileSync(resolve(o.pidfile), `${process.pid}\n`);
  if (o.statusFd !== undefined) signalReady(o.statusFd);
  const stop = (sig: string) => void d.close(`the daemon got ${sig}`);
  process.once('SIGINT', () => stop('SIGINT'));
  process.once('SIGTERM', () => stop('SIGTERM'));
  try {
    await d.done;
  } finally {
    await new Promise<void>((r) => (log ? log.end(r) : r()));
  }
}

function pageServerOf(o: DaemonCliOptions) {
  return {
    address: o.address ?? '127.0.0.1',
    port: o.port!,
    timeoutMs: o.pageServerTimeout,
    tls: tlsFiles(o),
  };
}

/** CRIU writes one byte to --status-fd when it is ready for the restorer, then closes it. */
function signalReady(fd: number): void {
  try {
    writeSync(fd, Buffer.from([0]));
    closeSync(fd);
  } catch (e) {
    throw new UserError('EOPTION', `--status-fd ${fd}: cannot write the ready byte: ${(e as Error).message}`);
  }
}

/**
 * -d: run ourselves again detached, wait until the child says it is ready (or dies), then return.
 * The child keeps no tie to our terminal or pipes (a caller doing `pid=$(lazy-pages daemon -d …)`
 * must not hang): it logs to --log-file, by default `lazy-pages.log` in the work dir, as CRIU does.
 */
async function detach(o: DaemonCliOptions, rawArgs: string[]): Promise<void> {
  const logFile = resolve(o.logFile ?? join(o.workDir ?? o.imagesDir, 'lazy-pages.log'));
  const args = rawArgs.filter((a) => a !== '-d' && a !== '--daemon' && a !== '--daemon=true');
  if (o.logFile === undefined) args.push('-o', logFile);
  const child = spawn(process.execPath, [...process.execArgv, process.argv[1], ...args, '--status-fd', '3'], {
    detached: true,
    stdio: ['ignore', 'ignore', 'ignore', 'pipe'],
  });
  const ready = await new Promise<boolean>((res) => {
    const pipe = child.stdio[3] as NodeJS.ReadableStream;
    pipe.once('data', () => res(true));
    child.once('exit', () => res(false));
  });
  if (!ready) {
    let last = '';
    try {
      last = readFileSync(logFile, 'utf8').trim().split('\n').pop() ?? '';
    } catch {
      /* no log written */
    }
    throw new UserError('EDAEMON', `the daemon exited before it was ready${last ? `: ${last.replace(/^lazy-pages: /, '')}` : ''} (log: ${logFile})`);
  }
  process.stdout.write(`${child.pid}\n`);
  child.unref();
  (child.stdio[3] as unknown as { destroy(): void }).destroy();
}
