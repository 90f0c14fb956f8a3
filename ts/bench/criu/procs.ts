/**
 * Every process `lazy-pages bench --criu` starts, so that each is killed by pid on every way out:
 * an error, a timeout, Ctrl-C (SIGINT), SIGTERM, or the Node process exiting. Also the one system
 * setting the bench changes (fs.pipe-max-size, needed by `criu dump --lazy-pages`), put back the same way.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface Tracked {
  child: ChildProcess;
  pid: number;
  name: string;
  exited: Promise<Exit>;
  /** The exit, once it happened. */
  exit?: Exit;
}

export class Procs {
  private readonly live = new Set<Tracked>();
  /** Pids the bench did not spawn itself but owns (the dumped program's tree), with their command line then. */
  private readonly adopted = new Map<number, string>();
  private readonly undo: (() => void)[] = [];

  /** Spawns and tracks; a failure to spawn rejects `exited` (never throws an 'error' event). */
  spawn(name: string, cmd: string, args: string[], opts: SpawnOptions = {}): Tracked {
    const child = spawn(cmd, args, opts);
    const t = { child, pid: child.pid ?? -1, name } as Tracked;
    t.exited = new Promise<Exit>((res, rej) => {
      child.once('error', (e) => {
        this.live.delete(t);
        rej(new Error(`${name}: cannot start ${cmd}: ${e.message}`));
      });
      child.once('exit', (code, signal) => {
        this.live.delete(t);
        t.exit = { code, signal };
        res(t.exit);
      });
    });
    t.exited.catch(() => {});
    if (child.pid !== undefined) this.live.add(t);
    return t;
  }

  /** Owns `pid` (not our child): killed by pid at cleanup if it still runs the same command line. */
  adopt(pid: number): void {
    const cmdline = cmdlineOf(pid);
    if (cmdline !== undefined) this.adopted.set(pid, cmdline);
  }

  /** Something to put back at cleanup (last registered, first undone). */
  onCleanup(fn: () => void): void {
    this.undo.push(fn);
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves when it has exited. */
  async stop(t: Tracked, graceMs = 2000): Promise<void> {
    if (t.exit || !this.live.has(t)) return;
    signal(t.pid, 'SIGTERM');
    const timer = setTimeout(() => signal(t.pid, 'SIGKILL'), graceMs);
    await t.exited.catch(() => {});
    clearTimeout(timer);
  }

  /** Synchronous: SIGKILL every live process by pid, then undo the settings. Safe to call twice. */
  killAll(): void {
    for (const t of this.live) if (!t.exit) signal(t.pid, 'SIGKILL');
    for (const [pid, cmdline] of this.adopted) if (cmdlineOf(pid) === cmdline) signal(pid, 'SIGKILL');
    this.adopted.clear();
    while (this.undo.length) {
      try {
        this.undo.pop()!();
      } catch {
        /* best effort on the way out */
      }
    }
  }

  /** Waits (bounded) for the processes killed by killAll() to be gone, so no port or file stays held. */
  async settle(timeoutMs = 5000): Promise<void> {
    const all = [...this.live].map((t) => t.exited.catch(() => {}));
    await Promise.race([Promise.all(all), new Promise((r) => setTimeout(r, timeoutMs).unref())]);
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    /* already gone */
  }
}

function cmdlineOf(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  } catch {
    return undefined;
  }
}

/**
 * Runs `body` with `procs`; whatever happens (a throw, SIGINT, SIGTERM, exit) every process is
 * killed and every setting put back before this returns or the process ends.
 */
export async function withProcs<T>(body: (procs: Procs) => Promise<T>): Promise<T> {
  const procs = new Procs();
  const onSignal = (sig: NodeJS.Signals) => {
    process.stderr.write(`\nbench --criu: ${sig}: stopping every process it started\n`);
    procs.killAll();
    // reap them (no zombie left behind), then go
    void procs.settle(3000).then(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };
  const onExit = () => procs.killAll();
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('exit', onExit);
  try {
    return await body(procs);
  } finally {
    procs.killAll();
    await procs.settle();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    process.off('exit', onExit);
  }
}

/** Raises /proc/sys/fs/pipe-max-size to at least `min` (CRIU's lazy dump needs 4 MiB pipes); undone at cleanup. */
export function raisePipeMaxSize(procs: Procs, min = 4 << 20): void {
  const f = '/proc/sys/fs/pipe-max-size';
  const old = readFileSync(f, 'utf8').trim();
  if (Number(old) >= min) return;
  writeFileSync(f, String(min));
  procs.onCleanup(() => writeFileSync(f, old));
}
