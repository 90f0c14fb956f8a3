/**
 * Working sets with the real CRIU 4.2: a checkpoint is restored once with --record-working-set, then
 * again with --working-set, and every restored program checks every byte. The file lists exactly the
 * pages served on demand, in first-touch order; the replay installs them first; a working set that
 * does not fit changes nothing but speed.
 */
import type { ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import {
  awaitRestore,
  copyImages,
  criuDump,
  criuPageServer,
  criuRestore,
  criuTest,
  freePort,
  lazyPagesBin,
  onDemandPages,
  raisePipeMaxSize,
  resultValues,
  startOurDaemon,
  startProgram,
  tempDir,
  type ProgName,
  type Program,
} from './helpers/criu.js';

interface Restored {
  /** The program's own numbers (touch_p50_us, touch_p99_us, full_read_ms, ...). */
  values: Record<string, string>;
  onDemand: number;
  processes: number;
  log: string;
}

/** One `criu restore --lazy-pages` of `images` served by our daemon with `args`; every byte checked. */
async function restoreOnce(t: ExecutionContext, prog: Program, images: string, work: string, args: string[]): Promise<Restored> {
  rmSync(join(prog.ctl, 'result'), { force: true });
  rmSync(work, { recursive: true, force: true });
  const d = await startOurDaemon(t, images, work, { extraArgs: args });
  const restore = criuRestore(t, images, work);
  const out = await awaitRestore(prog, restore, [d.log]);
  const exit = await d.proc.exitWithin(15_000);
  const log = d.logText();
  t.is(out.restoreExit?.code, 0, out.diag);
  t.is(out.result?.[0], 'ok', `the restored program's verdict\n${out.diag}`);
  t.is(exit?.code, 0, `daemon ${args.join(' ')}\n${log}`);
  const pages = onDemandPages(log);
  return { values: resultValues(out.result), onDemand: pages.onDemand, processes: pages.processes, log };
}

async function dumped(t: ExecutionContext, name: ProgName, args: string[]): Promise<{ prog: Program; images: string; dir: string }> {
  const dir = tempDir(t, `lazy-ws-${name}-`);
  const prog = await startProgram(t, dir, name, args);
  const images = join(dir, 'images');
  await criuDump(t, prog, images);
  prog.go(); // once restored, each time: touch, then read and check all memory
  return { prog, images, dir };
}

interface WsFile {
  format: string;
  version: number;
  processes: { pid: number; pages: number; ranges: [string, number, number][] }[];
}

criuTest('working set: recorded on one restore (exactly the pages served on demand, in first-touch order), installed first on the next; every byte right', async (t) => {
  const { prog, images, dir } = await dumped(t, 'random-touch', ['32', '1000']);
  const ws = join(dir, 'ws.json');
  const first = await restoreOnce(t, prog, images, join(dir, 'r1', 'work'), ['--record-working-set', ws]);
  const file = JSON.parse(readFileSync(ws, 'utf8')) as WsFile;
  if (process.env.WSX) writeFileSync('/tmp/ws1.json', readFileSync(ws));
  t.is(file.format, 'lazy-pages-working-set');
  t.is(file.version, 1);
  t.is(file.processes.length, 1);
  t.is(file.processes[0]!.pid, prog.pid);
  t.is(file.processes[0]!.pages, first.onDemand, 'the file lists exactly the pages served on demand');
  const times = file.processes[0]!.ranges.map((r) => r[2]);
  t.deepEqual(times, [...times].sort((a, b) => a - b), 'ranges are in first-touch order');

  // inspect shows it, and whether it fits the checkpoint.
  const inspected = JSON.parse(
    execFileSync(process.execPath, [lazyPagesBin, 'inspect', '--working-set', ws, '-D', images, '--json'], { encoding: 'utf8' }),
  ) as { processes: { pid: number; pages: number; ranges: number; bytes: number; fits: boolean }[] };
  t.deepEqual(inspected.processes, [
    { ...inspected.processes[0]!, pid: prog.pid, pages: first.onDemand, ranges: file.processes[0]!.ranges.length, bytes: first.onDemand * 4096, fits: true },
  ]);
  t.regex(execFileSync(process.execPath, [lazyPagesBin, 'inspect', '--working-set', ws], { encoding: 'utf8' }), new RegExp(`pid ${prog.pid}: ${first.onDemand} pages`));

  const second = await restoreOnce(t, prog, images, join(dir, 'r2', 'work'), ['--working-set', ws, ...(process.env.WSX ? ['--no-background', '--record-working-set', '/tmp/ws2.json'] : [])]);
  t.regex(second.log, new RegExp(`pid ${prog.pid}: installing its working set first \\(${first.onDemand} pages in ${file.processes[0]!.ranges.length} ranges\\)`));
  // Installed by the native loop from the hand-over on (early copies), not by faults.
  t.regex(second.log, new RegExp(`pid ${prog.pid}: working set installed, \\d+ pages copied early`));
  // How much it saves is a benchmark's business (lazy-pages bench --criu --working-set), not a test's.
  t.log(`pages on demand: ${first.onDemand} while recording, ${second.onDemand} with the working set`);
  t.log(`touch p50/p99 µs: ${first.values.touch_p50_us}/${first.values.touch_p99_us} while recording, ${second.values.touch_p50_us}/${second.values.touch_p99_us} with the working set`);
}, { serial: true });

criuTest('working set: a stale, foreign or corrupt file is reported and ignored; the restore is right', async (t) => {
  const { prog, images, dir } = await dumped(t, 'random-touch', ['16', '300']);
  const ws = join(dir, 'ws.json');
  await restoreOnce(t, prog, images, join(dir, 'r1', 'work'), ['--record-working-set', ws]);
  const good = JSON.parse(readFileSync(ws, 'utf8')) as WsFile & { processes: { layout: string }[] };
  const cases: [string, unknown, RegExp][] = [
    ['stale layout', { ...good, processes: good.processes.map((p) => ({ ...p, layout: 'sha256:00' })) }, /memory layout differs from this checkpoint's: ignored/],
    ['other pids', { ...good, processes: good.processes.map((p) => ({ ...p, pid: p.pid + 1 })) }, new RegExp(`pid ${prog.pid} is not in it: ignored`)],
    ['outside lazy memory', { ...good, processes: good.processes.map((p) => ({ ...p, ranges: [['0x1000', 1, 0]] })) }, /range 0x1000\+1 pages is not lazy memory/],
    ['another version', { ...good, version: 99 }, /version: .*restoring without it/],
    ['not JSON', 'garbage{', /cannot read it as JSON: .*restoring without it/],
  ];
  for (const [what, body, warning] of cases) {
    const f = join(dir, `bad-${what.replace(/ /g, '-')}.json`);
    writeFileSync(f, typeof body === 'string' ? body : JSON.stringify(body));
    const r = await restoreOnce(t, prog, images, join(dir, `r-${what.replace(/ /g, '-')}`, 'work'), ['--working-set', f]);
    t.regex(r.log, warning, what);
    t.notRegex(r.log, /installing its working set/, what);
  }
  const missing = await restoreOnce(t, prog, images, join(dir, 'r-missing', 'work'), ['--working-set', join(dir, 'nope.json')]);
  t.regex(missing.log, /nope\.json: cannot read it as JSON: ENOENT.*restoring without it/);
}, { serial: true });

criuTest('working set: a forked tree records and replays each process by its checkpoint pid', async (t) => {
  const { prog, images, dir } = await dumped(t, 'tree', ['4']);
  const ws = join(dir, 'ws.json');
  const first = await restoreOnce(t, prog, images, join(dir, 'r1', 'work'), ['--record-working-set', ws]);
  const file = JSON.parse(readFileSync(ws, 'utf8')) as WsFile;
  if (process.env.WSX) writeFileSync('/tmp/ws1.json', readFileSync(ws));
  t.is(file.processes.length, 3, JSON.stringify(file.processes.map((p) => [p.pid, p.pages])));
  const second = await restoreOnce(t, prog, images, join(dir, 'r2', 'work'), ['--working-set', ws, ...(process.env.WSX ? ['--no-background', '--record-working-set', '/tmp/ws2.json'] : [])]);
  const replayed = [...second.log.matchAll(/pid (\d+): installing its working set first/g)].map((m) => Number(m[1]));
  t.deepEqual(replayed.sort(), file.processes.filter((p) => p.pages > 0).map((p) => p.pid).sort());
  t.log(`pages on demand: ${first.onDemand} recorded, ${second.onDemand} replayed`);
}, { serial: true });

criuTest('working set: recorded locally, replayed from CRIU\'s page server (one pipelined burst); every byte right', async (t) => {
  raisePipeMaxSize(t);
  const { prog, images, dir } = await dumped(t, 'random-touch', ['32', '1000']);
  const ws = join(dir, 'ws.json');
  const first = await restoreOnce(t, prog, images, join(dir, 'r1', 'work'), ['--record-working-set', ws]);
  const port = await freePort();
  const server = await criuPageServer(t, images, '127.0.0.1', port);
  const dst = copyImages(images, join(dir, 'dst-images'));
  const second = await restoreOnce(t, prog, dst, join(dir, 'r2', 'work'), ['--page-server', '--address', '127.0.0.1', '--port', String(port), '--working-set', ws]);
  t.truthy(await server.proc.exitWithin(15_000), 'criu page-server ends with its one connection');
  t.regex(second.log, /installing its working set first/);
  t.log(`pages on demand: ${first.onDemand} recorded, ${second.onDemand} replayed remotely`);
}, { serial: true });

criuTest('working set: a program that forks, drops and moves its memory at once (uffd events) reads every byte right with one replayed', async (t) => {
  // The early copies go by image address: they must stop at the first layout event, or a page could
  // land where the program moved or dropped its memory. The program checks every byte in both processes.
  const { prog, images, dir } = await dumped(t, 'uffd-events', []);
  const ws = join(dir, 'ws.json');
  await restoreOnce(t, prog, images, join(dir, 'r1', 'work'), ['--record-working-set', ws, '--no-background']);
  for (let i = 0; i < 3; i++) {
    const r = await restoreOnce(t, prog, images, join(dir, `r${i + 2}`, 'work'), ['--working-set', ws]);
    t.regex(r.log, /installing its working set first/);
  }
}, { serial: true });

