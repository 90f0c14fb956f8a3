/**
 * Turns daemon events into what a person reads: log lines (CRIU-like, to stderr or a log file),
 * or, on a TTY, one live progress line per process for the background transfer.
 */
import type { DaemonEvent, ProcessReport } from '../daemon/events.js';

export interface ReporterOptions {
  /** 0 = errors only, 1 = warnings, 2 = per-process results and the summary (default), 3 = + hand-over and progress lines, 4 = everything. */
  verbosity: number;
  write: (line: string) => void;
  /** Redraw progress in place (stderr is a terminal and no log file is used). */
  tty: boolean;
}

const mib = (bytes: number) => (bytes / (1 << 20)).toFixed(1);

export function describeReport(r: ProcessReport): string {
  const from = r.forkedFrom !== undefined ? ` (forked from ${r.forkedFrom})` : '';
  return (
    `pid ${r.pid}${from}: ${r.outcome} in ${r.timeToDoneMs.toFixed(0)} ms: ` +
    `${r.onDemandPages} pages on demand, ${r.backgroundPages} in background, ${r.zeroPages} zero pages, ` +
    `${mib(r.bytes)} MiB, ${r.retries} retries`
  );
}

export class Reporter {
  private readonly progress = new Map<number, { remaining: number; total: number; bytes: number; t0: number }>();
  private lastDraw = 0;
  private drawn = false;

  constructor(private readonly o: ReporterOptions) {}

  private line(level: number, text: string): void {
    if (this.o.verbosity < level) return;
    if (this.drawn) {
      this.o.write('\r\x1b[K');
      this.drawn = false;
    }
    this.o.write(`${text}\n`);
  }

  handle(e: DaemonEvent): void {
    switch (e.type) {
      case 'listening':
        return this.line(3, `lazy-pages: listening on ${e.socket}`);
      case 'attached':
        return this.line(3, `lazy-pages: pid ${e.pid} attached, ${e.lazyPages} lazy pages`);
      case 'zombie':
        return this.line(3, `lazy-pages: pid ${e.pid} is a zombie`);
      case 'working-set':
        return this.line(3, `lazy-pages: pid ${e.pid}: installing its working set first (${e.pages} pages in ${e.ranges} ranges)`);
      case 'working-set-installed':
        return this.line(2, `lazy-pages: pid ${e.pid}: working set installed, ${e.pages} pages copied early (at ${e.atMs.toFixed(1)} ms since the epoch)`);
      case 'restore-finished':
        return this.line(3, 'lazy-pages: restore finished, background transfer starts');
      case 'fork':
        return this.line(4, `lazy-pages: pid ${e.pid} forked${e.childPid ? ` pid ${e.childPid}` : ''}`);
      case 'served':
        return this.line(4, `lazy-pages: pid ${e.pid}: ${e.pages} pages on demand, ${e.zeroPages} zero pages`);
      case 'progress':
        return this.onProgress(e);
      case 'process-done':
        this.progress.delete(e.report.pid);
        return this.line(2, `lazy-pages: ${describeReport(e.report)}`);
      case 'process-lost':
        return this.line(0, `lazy-pages: pid ${e.pid} lost: ${e.reason}${e.killed ? ' (killed with SIGKILL)' : ''}`);
      case 'warning':
        return this.line(1, `lazy-pages: warning: ${e.message}`);
      case 'done': {
        const total = e.summary.processes.reduce((a, p) => a + p.bytes, 0);
        return this.line(
          2,
          `lazy-pages: done: ${e.summary.processes.length} processes, ${mib(total)} MiB in ${e.summary.elapsedMs.toFixed(0)} ms`,
        );
      }
    }
  }

  private onProgress(e: Extract<DaemonEvent, { type: 'progress' }>): void {
    const p = this.progress.get(e.pid) ?? { remaining: e.remainingPages, total: e.totalPages, bytes: 0, t0: performance.now() };
    p.remaining = e.remainingPages;
    p.total = e.totalPages;
    p.bytes = e.bytes;
    this.progress.set(e.pid, p);
    const now = performance.now();
    if (!this.o.tty) {
      if (now - this.lastDraw >= 1000) {
        this.lastDraw = now;
        this.line(3, `lazy-pages: ${this.summaryText(now)}`);
      }
      return;
    }
    if (this.o.verbosity < 2 || now - this.lastDraw < 100) return;
    this.lastDraw = now;
    this.o.write(`\r\x1b[K${this.summaryText(now)}`);
    this.drawn = true;
  }

  private summaryText(now: number): string {
    return [...this.progress.entries()]
      .map(([pid, p]) => {
        const done = p.total - p.remaining;
        const secs = Math.max((now - p.t0) / 1000, 1e-3);
        return `pid ${pid} ${done}/${p.total} pages ${mib(p.bytes)} MiB ${(p.bytes / secs / (1 << 20)).toFixed(0)} MiB/s`;
      })
      .join(' | ');
  }
}
