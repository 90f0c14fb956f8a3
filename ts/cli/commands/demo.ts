/**
 * `lazy-pages demo` (what `npm start` runs): a real lazy restore of a built-in example.
 *
 * It writes a synthetic CRIU checkpoint (a parent and a child, known pattern), starts the daemon on
 * it, and lets the restore simulator play `criu restore --lazy-pages`: it maps the memory, hands
 * the userfaultfds over the real socket, touches a random part of its memory (served on demand),
 * then reads everything and checks every byte while the rest streams in the background.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { z } from 'zod';

import { startLazyPagesDaemon } from '../../daemon/daemon.js';
import { UserError } from '../../errors.js';
import { Checkpoint, writeSyntheticCheckpoint } from '../../images/index.js';
import { layoutFor } from '../../sim/layout.js';
import { simulatorPath, startSimulator } from '../../sim/run.js';
import { parseSize, validate } from '../options.js';
import { Reporter } from '../reporter.js';

const schema = z.object({
  size: z.number().int().min(1 << 20, 'must be at least 1M'),
  procs: z.number().int().min(1, 'must be at least 1').max(64, 'must be at most 64'),
  keep: z.boolean().default(false),
  verbosity: z.number().int().min(0).max(4).default(3),
});

export const demoCommand: CommandModule<object, Record<string, unknown>> = {
  command: 'demo',
  describe: 'restore a built-in example checkpoint lazily and verify every byte (what `npm start` runs)',
  builder: (y: Argv) =>
    y
      .option('size', { type: 'string', default: '64M', describe: 'memory per process' })
      .option('procs', { type: 'number', default: 2, describe: 'processes in the tree' })
      .option('keep', { type: 'boolean', describe: 'keep the checkpoint directory' })
      .option('verbosity', { alias: 'v', type: 'number', default: 3, describe: 'log level 0-4' }),
  handler: async (argv) => {
    const o = validate(schema, { ...argv, size: parseSize(argv.size as string) });
    await runDemo(o);
  },
};

async function runDemo(o: z.infer<typeof schema>): Promise<void> {
  // Before anything is started or written: a missing simulator once left the daemon running, the
  // demo hanging and its checkpoint behind.
  simulatorPath();
  const dir = mkdtempSync(join(tmpdir(), 'lazy-pages-demo-'));
  const say = (s: string) => process.stdout.write(`${s}\n`);
  let d: Awaited<ReturnType<typeof startLazyPagesDaemon>> | undefined;
  try {
    say(`1. writing a CRIU-format checkpoint: ${o.procs} processes × ${(o.size / (1 << 20)).toFixed(0)} MiB in ${dir}`);
    await writeSyntheticCheckpoint({ out: dir, size: BigInt(o.size), vmas: 4, procs: o.procs, holes: 0.05 });
    const ck = await Checkpoint.open(dir);
    say(`2. starting the daemon (lazy-pages daemon -D ${dir})`);
    const reporter = new Reporter({ verbosity: o.verbosity, write: (s) => process.stdout.write(`   ${s}`), tty: false });
    d = await startLazyPagesDaemon({ imagesDir: dir, onEvent: (e) => reporter.handle(e) });
    const pages = Math.floor(o.size / 4096);
    say('3. restoring: the simulator maps the memory, hands each uffd over, touches 1/8 of the pages at random, then reads all');
    const sim = startSimulator(layoutFor(ck, dir), ['--workload', 'touch-random', '--count', String(Math.max(1, pages >> 3)), '--order', 'rand', '--then-verify-all']);
    const killSim = () => sim.kill();
    process.once('exit', killSim);
    const [summary, res] = await Promise.all([
      d.done.catch((e: Error) => {
        sim.kill();
        throw e;
      }),
      sim.result,
    ]);
    process.off('exit', killSim);
    say('4. result');
    for (const p of res.report?.processes ?? []) {
      const lat = p.latencyNs ? `, first-touch p50 ${(p.latencyNs.p50 / 1000).toFixed(1)} µs p99 ${(p.latencyNs.p99 / 1000).toFixed(1)} µs` : '';
      say(`   restored pid ${p.pid}: ${p.ok ? 'every byte verified' : 'WRONG DATA'} (${p.verifiedPages ?? 0} page checks: the touched pages, then all of them)${lat}`);
    }
    say(`   daemon: ${summary.processes.length} processes done in ${summary.elapsedMs.toFixed(0)} ms (per process above)`);
    if (res.code !== 0 || !res.report?.ok) {
      throw new UserError('EDEMO', `the restored processes did not verify (simulator exit ${res.code}): ${res.stderr.trim()}`);
    }
    say('lazy restore OK');
  } finally {
    // Whatever failed, the daemon must not keep Node alive (it kills anything still owed first).
    await d?.close('the demo ended').catch(() => undefined);
    if (!o.keep) rmSync(dir, { recursive: true, force: true });
    else say(`checkpoint kept in ${dir}`);
  }
}
