/**
 * Where the daemon's log lines go (stderr, or the -o file), written so that no I/O error can end the
 * daemon: a restored process must never read zeros because a log line could not be written.
 *
 * - Lines are written with writeSync on the raw fd, never through `process.stderr`: that stream
 *   reports EPIPE as an 'error' event (fatal when nobody listens), and touching it turns a pipe on fd 2
 *   non-blocking for every process sharing it.
 * - A line that cannot be written (EPIPE once the reader is gone, ENOSPC on a full disk or /dev/full,
 *   EIO, a pipe left full) is dropped and counted; the first failure is reported once (on stderr
 *   when the log is a file), and the count is written once lines get through again.
 * - The log file is opened with O_NOFOLLOW (a symlink planted in a shared dir cannot redirect root's
 *   appends into another file), and reopened on SIGHUP (logrotate moves it away, then signals).
 */
import { closeSync, constants as fs, openSync, readSync, writeSync } from 'node:fs';

import { UserError } from '../errors.js';

/** O_NOFOLLOW and friends for files in directories others may write to. */
const APPEND_FLAGS = fs.O_WRONLY | fs.O_APPEND | fs.O_CREAT | fs.O_NOFOLLOW;

/** How long one line may wait for a full non-blocking pipe on stderr before it is dropped. */
const EAGAIN_TRIES = 10;
const sleeper = new Int32Array(new SharedArrayBuffer(4));

function errCode(e: unknown): string {
  return (e as NodeJS.ErrnoException)?.code ?? String(e);
}

/**
 * Open `file` for appending log lines, never through a symlink. `what` names it in errors
 * (e.g. `-o /var/log/x`, or `the default log file /run/w/lazy-pages.log (-d)`).
 */
export function openLogFile(file: string, what: string): number {
  try {
    return openSync(file, APPEND_FLAGS, 0o600);
  } catch (e) {
    if (errCode(e) === 'ELOOP') {
      throw new UserError('ELOGFILE', `${what}: is a symbolic link; log files are opened without following symlinks (give the real path)`);
    }
    throw new UserError('ELOGFILE', `${what}: cannot open the log file: ${(e as Error).message}`);
  }
}

/** Read a small file without following a symlink; undefined if it cannot be read. */
export function readNoFollow(file: string, max = 1 << 16): string | undefined {
  let fd: number;
  try {
    fd = openSync(file, fs.O_RDONLY | fs.O_NOFOLLOW | fs.O_NONBLOCK);
  } catch {
    return undefined;
  }
  try {
    const buf = Buffer.alloc(max);
    const n = readSync(fd, buf, 0, max, null);
    return buf.subarray(0, n).toString('utf8');
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}

/** Write `text` to `fd`, swallowing every error (for last words on stderr, which may be a dead pipe). */
export function writeQuietly(fd: number, text: string): void {
  try {
    writeAll(fd, Buffer.from(text));
  } catch {
    /* nowhere left to say it */
  }
}

/** writeSync until every byte is out (a pipe may take part of a line); EAGAIN waits a little, then throws. */
function writeAll(fd: number, buf: Buffer, tries = EAGAIN_TRIES): void {
  let off = 0;
  let again = 0;
  while (off < buf.length) {
    try {
      off += writeSync(fd, buf, off, buf.length - off);
    } catch (e) {
      if (errCode(e) !== 'EAGAIN' || ++again > tries) throw e;
      Atomics.wait(sleeper, 0, 0, 1);
    }
  }
}

export class LogSink {
  private fd: number;
  private dropped = 0;
  private firstError?: string;
  private reportedError = false;

  private constructor(
    /** The log file, or undefined for stderr. */
    readonly file: string | undefined,
    private readonly what: string,
    fd: number,
  ) {
    this.fd = fd;
  }

  /** Log to stderr. */
  static stderr(): LogSink {
    return new LogSink(undefined, 'stderr', 2);
  }

  /** Log to `file` (opened now, O_NOFOLLOW); `what` names it in messages. */
  static file(file: string, what: string): LogSink {
    return new LogSink(file, what, openLogFile(file, what));
  }

  /** Write one or more whole lines; never throws. */
  write(text: string): void {
    if (this.fd < 0) return;
    // While lines are being dropped, do not wait for a full pipe again and again.
    const congested = this.dropped > 0;
    try {
      if (congested) {
        // Say what was lost before the next line, once lines get through again.
        writeAll(this.fd, Buffer.from(`lazy-pages: warning: ${this.dropped} log lines were dropped (${this.firstError})\n`), 0);
        this.dropped = 0;
        this.firstError = undefined;
        this.reportedError = false;
      }
      writeAll(this.fd, Buffer.from(text), congested ? 0 : EAGAIN_TRIES);
    } catch (e) {
      this.drop(text, e);
    }
  }

  private drop(text: string, e: unknown): void {
    this.dropped += Math.max(1, text.split('\n').length - 1);
    this.firstError ??= `${this.what}: ${errCode(e)}`;
    if (this.reportedError) return;
    this.reportedError = true;
    // A broken log file is worth a line on stderr (nobody may read it, and writing it may fail too).
    if (this.file !== undefined) {
      writeQuietly(2, `lazy-pages: warning: cannot write to ${this.what} (${(e as Error).message}); log lines are dropped, the daemon goes on\n`);
    }
  }

  /**
   * Reopen the log file (SIGHUP, after logrotate moved it): a new file at the same path, O_NOFOLLOW.
   * On failure the old file stays in use and the reason is returned; stderr needs no reopening.
   */
  reopen(): string | undefined {
    if (this.file === undefined) return undefined;
    let fd: number;
    try {
      fd = openLogFile(this.file, this.what);
    } catch (e) {
      return (e as Error).message;
    }
    const old = this.fd;
    this.fd = fd;
    if (old >= 0) {
      try {
        closeSync(old);
      } catch {
        /* already unusable */
      }
    }
    return undefined;
  }

  /** Close the log file (stderr stays open). */
  close(): void {
    if (this.file !== undefined && this.fd >= 0) {
      try {
        closeSync(this.fd);
      } catch {
        /* nothing to flush: writes are synchronous */
      }
    }
    this.fd = -1;
  }
}
