/** `lazy-pages synth`: write a synthetic CRIU images dir filled with the fixtures' pattern. */
import type { CommandModule } from 'yargs';
import { z } from 'zod';
import { UserError } from '../../errors.js';
import { writeSyntheticCheckpoint } from '../../images/index.js';

const UNITS: Record<string, bigint> = { '': 1n, K: 1n << 10n, M: 1n << 20n, G: 1n << 30n, T: 1n << 40n };

/** "1G", "64M", "4096", "512KiB" -> bytes. */
export function parseSize(s: string): bigint {
  const m = /^(\d+)\s*([kmgt]?)(?:i?b)?$/i.exec(s.trim());
  if (!m) throw new UserError('EOPTION', `--size: cannot read "${s}" (use e.g. 4096, 64M, 1G)`);
  return BigInt(m[1]!) * UNITS[m[2]!.toUpperCase()]!;
}

const Options = z.object({
  out: z.string().min(1),
  size: z.string(),
  vmas: z.number().int().min(1).max(65000),
  procs: z.number().int().min(1).max(1000),
  'pid-base': z.number().int().min(1).optional(),
  'lazy-only': z.boolean(),
  holes: z.number().min(0).lt(1),
  seed: z.number().int(),
});

type Args = z.input<typeof Options>;

export const synthCommand: CommandModule<object, Args> = {
  command: 'synth',
  describe: 'Write a synthetic CRIU images dir (private anonymous lazy memory holding the fixture pattern)',
  builder: (y) => y
    .option('out', { type: 'string', demandOption: true, describe: 'images dir to create (must hold no images)' })
    .option('size', { type: 'string', demandOption: true, describe: 'memory per process, e.g. 64M, 1G' })
    .option('vmas', { type: 'number', default: 1, describe: 'VMAs per process' })
    .option('procs', { type: 'number', default: 1, describe: 'processes: the first is the root, the others its children' })
    .option('pid-base', { type: 'number', describe: 'first pid (default: a free run in the upper half of kernel.pid_max)' })
    .option('lazy-only', { type: 'boolean', default: false, describe: 'PE_LAZY entries only, no page data (like dump --lazy-pages)' })
    .option('holes', { type: 'number', default: 0, describe: 'fraction of pages left out (they read as zero)' })
    .option('seed', { type: 'number', default: 1, describe: 'seed of the hole placement' }) as never,
  handler: async (argv) => {
    const parsed = Options.safeParse(argv);
    if (!parsed.success) throw new UserError('EOPTION', `synth: ${parsed.error.issues.map((i) => `--${i.path.join('.')}: ${i.message}`).join('; ')}`);
    const o = parsed.data;
    const t0 = performance.now();
    const r = await writeSyntheticCheckpoint({
      out: o.out, size: parseSize(o.size), vmas: o.vmas, procs: o.procs, pidBase: o['pid-base'], lazyOnly: o['lazy-only'],
      holes: o.holes, seed: o.seed,
    });
    const ms = performance.now() - t0;
    process.stdout.write(`wrote ${r.dir}: pids ${r.pids.join(', ')} in ${(ms / 1000).toFixed(2)} s\n`);
  },
};
