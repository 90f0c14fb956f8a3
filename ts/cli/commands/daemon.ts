/**
 * `lazy-pages daemon`: the drop-in for `criu lazy-pages`, with CRIU's option names and defaults.
 * A thin layer over startLazyPagesDaemon().
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, constants as fsc, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { isatty } from 'node:tty';
import type { Argv, CommandModule } from 'yargs';
import { z } from 'zod';

import { startLazyPagesDaemon, type LazyPagesDaemon } from '../../daemon/daemon.js';
import { describeUserError, UserError } from '../../errors.js';
import { EventStream } from '../event-stream.js';
import { LogSink, openLogFile, readNoFollow } from '../log.js';
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
    events: z.string().min(1, 'must not be empty').optional(),
    recordWorkingSet: z.string().min(1, 'must not be empty').optional(),
    recordFor: z.number({ error: 'must be a number' }).positive('must be more than 0 seconds').optional(),
    workingSet: z.string().min(1, 'must not be empty').optional(),
  })
  .superRefine((o, ctx) => {
    if (o.recordFor !== undefined && o.recordWorkingSet === undefined) {
      ctx.addIssue({ code: 'custom', path: ['recordFor'], message: 'only makes sense with --record-working-set' });
    }
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
    .option('log-file', { alias: 'o', type: 'string', describe: 'append log lines to this file instead of stderr (a relative path is in the work dir, as in CRIU)' })
    .option('verbosity', { alias: 'v', type: 'number', describe: 'log level 0-4 (-v4 or -vvvv as in CRIU)', default: 2 })
    .option('background', { type: 'boolean', describe: 'transfer untouched pages after "restore finished"', default: true })
    .option('chunk', { type: 'number', describe: 'largest background request in bytes (default 4 MiB)' })
    .option('page-server-timeout', { type: 'number', describe: 'ms without progress before the page server counts as dead (default 10000)' })
    .option('record-working-set', { type: 'string', describe: 'record the pages served on demand, per process in first-touch order, into this file (written when the daemon ends)' })
    .option('record-for', { type: 'number', describe: 'with --record-working-set: record only the first SECONDS after each process attached' })
    .option('working-set', { type: 'string', describe: 'install the pages this recorded working set lists first, then the rest; a file that does not fit the checkpoint is reported and ignored' })
    .option('events', { type: 'string', describe: 'write every event as a JSON line to this fd number or file (relative to the work dir); the last line is "done" or "failed"' })
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

/** Signals that stop the daemon: every process still owed pages is SIGKILLed, then it exits 1. */
const STOP_SIGNALS = ['SIGTERM', 'SIGINT', 'SIGQUIT'] as const;

async function runDaemon(o: DaemonCliOptions, rawArgs: string[]): Promise<void> {
  if (o.daemon) return detach(o, rawArgs);

  const sink = o.logFile ? LogSink.file(logPath(o), `-o ${o.logFile}`) : LogSink.stderr();
  const reporter = new Reporter({ verbosity: o.verbosity, write: (s) => sink.write(s), tty: !sink.file && isatty(2) });
  const say = (level: number, text: string) => o.verbosity >= level && sink.write(`lazy-pages: ${text}\n`);
  const events = o.events === undefined ? undefined : EventStream.open(o.events, o.workDir ?? o.imagesDir);

  // Signals are handled from the start: before the daemon listens nothing is owed, but the default
  // action would still end us without a word. SIGHUP (logrotate) only reopens the log.
  let d: LazyPagesDaemon | undefined;
  let stoppedBy: string | undefined;
  let closed = false;
  const lost = { killed: 0, notKilled: 0 };
  const stop = (sig: string) => {
    if (stoppedBy !== undefined) {
      // close() kills every owed process before it returns: once it has (or before the daemon even
      // started, when nothing can be owed), a second signal may end us at once.
      if (closed || d === undefined) {
        sink.write(`lazy-pages: ${sig} again: exiting now\n`);
        process.exit(1);
      }
      return;
    }
    stoppedBy = sig;
    say(1, `got ${sig}: killing every process still owed pages, then exiting`);
    if (d) void d.close(`stopped by ${sig}`).finally(() => (closed = true));
  };
  const reopen = () => {
    const err = sink.reopen();
    if (err) say(1, `warning: SIGHUP: could not reopen the log, still writing to the old one: ${err}`);
    else say(3, sink.file ? `SIGHUP: reopened ${sink.file}` : 'SIGHUP: logging to stderr, nothing to reopen');
  };
  const handlers: [string, () => void][] = [...STOP_SIGNALS.map((sig) => [sig, () => stop(sig)] as [string, () => void]), ['SIGHUP', reopen]];
  for (const [sig, h] of handlers) process.on(sig, h);

  try {
    d = await startLazyPagesDaemon({
      imagesDir: o.imagesDir,
      workDir: o.workDir,
      background: o.background,
      chunkBytes: o.chunk,
      pageServer: o.pageServer ? pageServerOf(o) : undefined,
      recordWorkingSet: o.recordWorkingSet === undefined ? undefined : resolve(o.recordWorkingSet),
      recordForSeconds: o.recordFor,
      workingSet: o.workingSet === undefined ? undefined : resolve(o.workingSet),
      onEvent: (e) => {
        if (e.type === 'process-lost' && stoppedBy !== undefined) lost[e.killed ? 'killed' : 'notKilled']++;
        reporter.handle(e);
        events?.write(e);
      },
    });
    if (stoppedBy !== undefined) {
      void d.close(`stopped by ${stoppedBy}`).finally(() => (closed = true));
    } else {
      if (o.pidfile) writePidfile(resolve(o.pidfile));
      if (o.statusFd !== undefined) signalReady(o.statusFd);
    }
    await d.done;
  } catch (e) {
    let err = e;
    if (stoppedBy !== undefined && e instanceof UserError && e.code === 'ESTOPPED') {
      const n = lost.killed + lost.notKilled;
      err = new UserError(
        'ESTOPPED',
        `stopped by ${stoppedBy}: ` +
          (n === 0
            ? 'no process was owed pages'
            : `${lost.killed} of ${n} processes still owed pages were killed with SIGKILL before their userfaultfds closed` +
              (lost.notKilled ? ` (${lost.notKilled} could not be: see the lines above)` : '')),
      );
    }
    // The CLI prints this on stderr; a detached daemon's stderr goes nowhere, so its log says it too.
    if (sink.file && err instanceof Error) sink.write(`lazy-pages: ${err instanceof UserError ? describeUserError(err) : err.message}\n`);
    events?.write({ type: 'failed', code: err instanceof UserError ? err.code : 'EINTERNAL', message: err instanceof Error ? err.message : String(err) });
    throw err;
  } finally {
    // A d.close() or d.done may still be pending on an error path: stop the daemon whatever happened.
    if (d && !closed) await d.close('the daemon command ended').catch(() => undefined);
    for (const [sig, h] of handlers) process.off(sig, h);
    sink.close();
    events?.close();
  }
}

/**
 * Write the pid file without following symlinks: a new file with O_EXCL|O_NOFOLLOW under a random
 * name in the same dir, then rename(2) over the target. rename replaces whatever is at the path
 * (a symlink planted by another user included) instead of writing through it.
 */
function writePidfile(file: string): void {
  const dir = dirname(file);
  for (let attempt = 0; ; attempt++) {
    const tmp = join(dir, `.${basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
    let fd: number;
    try {
      fd = openSync(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o644);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST' && attempt < 8) continue;
      throw new UserError('EOPTION', `--pidfile ${file}: cannot create a file in ${dir}: ${(e as Error).message}`);
    }
    let open = true;
    try {
      writeSync(fd, `${process.pid}\n`);
      open = false;
      closeSync(fd);
      renameSync(tmp, file);
    } catch (e) {
      if (open) closeSync(fd);
      rmSync(tmp, { force: true });
      throw new UserError('EOPTION', `--pidfile ${file}: cannot write the pid file: ${(e as Error).message}`);
    }
    return;
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
  const logFile = logPath(o);
  // Open (and create) the log here as the child will, without following a symlink: if it cannot be
  // used, say so now, on the terminal, rather than from a child whose stderr goes nowhere.
  closeSync(openLogFile(logFile, o.logFile === undefined ? `the default log file ${logFile} (-d without -o)` : `-o ${o.logFile}`));
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
    // The log's last line says why (read without following a symlink, as it was written).
    const last = readNoFollow(logFile)?.trim().split('\n').pop() ?? '';
    throw new UserError('EDAEMON', `the daemon exited before it was ready${last ? `: ${last.replace(/^lazy-pages: /, '')}` : ''} (log: ${logFile})`);
  }
  process.stdout.write(`${child.pid}\n`);
  child.unref();
  (child.stdio[3] as unknown as { destroy(): void }).destroy();
}

/**
 * Where `-o` logs: a relative name is taken in the work dir (-W, else the images dir), as CRIU does;
 * with -d and no -o, `lazy-pages.log` there.
 */
function logPath(o: { logFile?: string; workDir?: string; imagesDir: string }): string {
  return resolve(o.workDir ?? o.imagesDir, o.logFile ?? 'lazy-pages.log');
}
