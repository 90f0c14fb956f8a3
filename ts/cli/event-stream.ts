/**
 * `daemon --events FD|FILE`: the library's events as NDJSON for orchestrators, one JSON object a line
 * with `time` (ISO 8601) added, the same union `startLazyPagesDaemon` emits (see DaemonEvent); the last
 * line is `done` (with the summary) or `failed` (with the error's code and message). Written like the
 * log (`writeQuietly`): a line that cannot be written is dropped, never the daemon's end.
 */
import { closeSync, fstatSync } from 'node:fs';
import { resolve } from 'node:path';

import type { DaemonEvent } from '../daemon/events.js';
import { UserError } from '../errors.js';
import { openLogFile, writeQuietly } from './log.js';

export type StreamedEvent = DaemonEvent | { type: 'failed'; code: string; message: string };

export class EventStream {
  private constructor(
    private readonly fd: number,
    private readonly owned: boolean,
  ) {}

  /** A number is an open fd (e.g. a pipe the orchestrator passed); anything else a file, relative to `dir`. */
  static open(spec: string, dir: string): EventStream {
    if (/^\d+$/.test(spec)) {
      const fd = Number(spec);
      try {
        fstatSync(fd);
      } catch {
        throw new UserError('EOPTION', `--events ${spec}: fd ${fd} is not open`);
      }
      return new EventStream(fd, false);
    }
    return new EventStream(openLogFile(resolve(dir, spec), `--events ${spec}`), true);
  }

  write(e: StreamedEvent): void {
    // Whole lines, as the log writes them (a pipe may take part of one); a line that cannot be
    // written is dropped (no warning line goes into the stream: it must stay JSON).
    writeQuietly(this.fd, `${JSON.stringify({ time: new Date().toISOString(), ...e })}\n`);
  }

  close(): void {
    if (this.owned) {
      try {
        closeSync(this.fd);
      } catch {
        /* already gone */
      }
    }
  }
}
