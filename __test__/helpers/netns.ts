/**
 * Helpers for the page-server tests: a pair of network namespaces joined by a veth pair, a
 * page-server CLI process, and the "truth" for fetched pages (the bytes at each page's offset in
 * its pages file). Everything started here is ended by pid / name in t.teardown.
 */
import type { ExecutionContext } from 'ava';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { openSync, readSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import type { ProcessImage } from '../../ts/images/index.js';
import { killOnTeardown, repoRoot, synth } from './common.js';

export { repoRoot, tempDir } from './common.js';

/** A synthetic checkpoint with page data (PE_LAZY|PE_PRESENT), removed in teardown. */
export const synthCheckpoint = synth;

/** The expected bytes of `pages` pages of `p` from `vaddr`, read from the pages file(s). */
export function expectedPages(p: ProcessImage, vaddr: bigint, pages: number): Buffer {
  const out = Buffer.alloc(pages * 4096);
  for (let i = 0; i < pages; i++) {
    const loc = p.lookup(vaddr + BigInt(i) * 4096n);
    if (loc.kind !== 'file') throw new Error(`page ${(vaddr + BigInt(i) * 4096n).toString(16)} has no file data`);
    const fd = openSync(loc.file, 'r');
    try {
      readSync(fd, out, i * 4096, 4096, Number(loc.offset));
    } finally {
      closeSync(fd);
    }
  }
  return out;
}

/**
 * Node arguments that run `lazy-pages page-server` from the TypeScript sources. It loads only the
 * page-server command (not the whole CLI), so these tests do not depend on other commands being
 * buildable; the error handling is main()'s: UserError → one line, exit 1.
 */
export function pageServerCliArgs(args: string[]): string[] {
  const runner = `
    import yargs from 'yargs';
    import { pageServerCommand } from ${JSON.stringify(join(repoRoot, 'ts/cli/commands/page-server.ts'))};
    import { UserError } from ${JSON.stringify(join(repoRoot, 'ts/errors.ts'))};
    try {
      await yargs(process.argv.slice(1)).scriptName('lazy-pages').strict().command(pageServerCommand)
        .fail((msg, err) => { if (err) throw err; throw new UserError('EOPTION', msg); }).parseAsync();
    } catch (e) {
      if (e instanceof UserError) { process.stderr.write('lazy-pages: ' + e.message + '\\n'); process.exitCode = 1; }
      else { process.stderr.write('lazy-pages: internal error: ' + (e?.stack ?? e) + '\\n'); process.exitCode = 2; }
    }`;
  return ['--import', 'tsx', '--input-type=module', '-e', runner, '--', 'page-server', ...args];
}

export interface CliServer {
  child: ChildProcess;
  /** Resolves with the port printed on stdout ("listening on A:P"). */
  port: Promise<number>;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>;
  stderr: () => string;
}

/** Starts the page-server CLI (optionally under `prefix`, e.g. ip netns exec); killed by pid in teardown. */
export function startCliServer(t: ExecutionContext, args: string[], prefix: string[] = []): CliServer {
  const argv = [...prefix, process.execPath, ...pageServerCliArgs(args)];
  const child = spawn(argv[0]!, argv.slice(1), { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
  killOnTeardown(t, child);
  let out = '';
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((r) =>
    child.once('close', (code, signal) => r({ code, signal, stderr: err })));
  const port = new Promise<number>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /listening on .*:(\d+)\n/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    void exit.then((e) => reject(new Error(`page-server exited (${e.code ?? e.signal}) before listening: ${e.stderr.trim()}`)));
  });
  port.catch(() => undefined);
  return { child, port, exit, stderr: () => err };
}

export const hasIp = (): boolean => spawnSync('sh', ['-c', 'command -v ip'], { stdio: 'ignore' }).status === 0;

export interface NetnsPair {
  ns1: string;
  ns2: string;
  addr1: string;
  addr2: string;
}

/**
 * Two fresh namespaces joined by a veth pair on a /30 of 10.199.x.0; both are deleted in
 * teardown (deleting a namespace also removes its end of the veth, and with it the pair).
 */
export function makeNetnsPair(t: ExecutionContext): NetnsPair {
  const tag = `${process.pid % 10000}${Math.floor(Math.random() * 1000)}`;
  const x = Math.floor(Math.random() * 250) + 1;
  const ns1 = `lp-src-${tag}`;
  const ns2 = `lp-dst-${tag}`;
  const addr1 = `10.199.${x}.1`;
  const addr2 = `10.199.${x}.2`;
  const ip = (...a: string[]) => execFileSync('ip', a, { stdio: ['ignore', 'ignore', 'pipe'] });
  t.teardown(() => {
    for (const ns of [ns1, ns2]) spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
  });
  ip('netns', 'add', ns1);
  ip('netns', 'add', ns2);
  const v1 = `lpv1-${tag}`.slice(0, 15);
  const v2 = `lpv2-${tag}`.slice(0, 15);
  ip('link', 'add', v1, 'netns', ns1, 'type', 'veth', 'peer', 'name', v2, 'netns', ns2);
  ip('-n', ns1, 'addr', 'add', `${addr1}/30`, 'dev', v1);
  ip('-n', ns2, 'addr', 'add', `${addr2}/30`, 'dev', v2);
  for (const [ns, dev] of [[ns1, v1], [ns2, v2]] as const) {
    ip('-n', ns, 'link', 'set', dev, 'up');
    ip('-n', ns, 'link', 'set', 'lo', 'up');
  }
  return { ns1, ns2, addr1, addr2 };
}
