/**
 * `lazy-pages inspect -D DIR [--json]`: what a checkpoint holds, as the daemon will see it.
 * `lazy-pages inspect --working-set FILE [-D DIR] [--json]`: what a recorded working set holds, and
 * with -D whether each of its processes fits that checkpoint.
 */
import type { CommandModule } from 'yargs';
import { z } from 'zod';
import { UserError } from '../../errors.js';
import { Checkpoint, PAGE_SIZE, pageStats, type Vma } from '../../images/index.js';
import { MAP_FLAG_NAMES, PAGE_SIZE_N, VMA_STATUS_NAMES } from '../../images/constants.js';
import { hex } from '../../images/errors.js';
import { matchWorkingSet, readWorkingSet, type WorkingSet } from '../../daemon/working-set.js';

const Options = z
  .object({
    'images-dir': z.string().min(1).optional(),
    'working-set': z.string().min(1).optional(),
    json: z.boolean(),
  })
  .refine((o) => o['images-dir'] !== undefined || o['working-set'] !== undefined, {
    path: ['images-dir'],
    message: 'is required (or --working-set FILE)',
  });

/** A working set's summary, per process; with a checkpoint, whether each process fits it. */
export function summariseWorkingSet(file: string, ws: WorkingSet, c?: Checkpoint) {
  return {
    schemaVersion: 1,
    file,
    processes: ws.processes.map((p) => {
      const pages = p.ranges.reduce((n, r) => n + r.pages, 0);
      const image = c?.process(p.pid);
      const fit = c === undefined ? undefined : image ? matchWorkingSet(ws, image) : { why: `pid ${p.pid} is not in ${c.dir}` };
      return {
        pid: p.pid,
        pages,
        ranges: p.ranges.length,
        bytes: pages * PAGE_SIZE,
        lastFirstTouchMs: p.ranges.length ? Math.max(...p.ranges.map((r) => r.firstTouchMs)) : 0,
        ...(fit === undefined ? {} : { fits: !('why' in fit), ...('why' in fit ? { why: fit.why } : {}) }),
      };
    }),
  };
}

function formatWorkingSet(s: ReturnType<typeof summariseWorkingSet>): string {
  const lines = [`working set ${s.file}: ${s.processes.length} process(es)`];
  for (const p of s.processes) {
    lines.push(
      `  pid ${p.pid}: ${p.pages} pages (${mib(BigInt(p.bytes))}) in ${p.ranges} ranges, first touches over ${p.lastFirstTouchMs.toFixed(1)} ms` +
        (p.fits === undefined ? '' : p.fits ? ': fits the checkpoint' : `: does not fit (${p.why})`),
    );
  }
  return lines.join('\n') + '\n';
}

function bits(v: number, names: [number, string][]): string {
  const out = names.filter(([b]) => (v & b) !== 0).map(([, n]) => n);
  return out.length ? out.join('|') : '0';
}

function prot(p: number): string {
  return (p & 1 ? 'r' : '-') + (p & 2 ? 'w' : '-') + (p & 4 ? 'x' : '-');
}

function mib(bytes: bigint): string {
  return `${(Number(bytes) / 1048576).toFixed(2)} MiB`;
}

function vmaLine(v: Vma): string {
  const size = (v.end - v.start) / 1024n;
  return `    ${hex(v.start).padStart(18)}-${hex(v.end).padEnd(18)} ${String(size).padStart(8)}K ${prot(v.prot)} ` +
    `${bits(v.flags, MAP_FLAG_NAMES)} ${bits(v.status, VMA_STATUS_NAMES)}${v.madv ? ` madv=${hex(v.madv)}` : ''}${v.lazy ? ' LAZY' : ''}`;
}

/** The human summary, one block per process. */
export function formatCheckpoint(c: Checkpoint): string {
  const lines: string[] = [`images dir ${c.dir}: ${c.processes.length} process(es)`];
  for (const p of c.processes) {
    const s = pageStats(p);
    lines.push('', `pid ${p.pid} (ppid ${p.ppid}, pgid ${p.pgid}, sid ${p.sid}) ${p.state}, threads [${p.threads.join(', ')}], pages-${p.pagesId}.img`);
    lines.push(`  ${p.vmas.length} VMAs, ${p.vmas.filter((v) => v.lazy).length} lazy:`);
    for (const v of p.vmas) lines.push(vmaLine(v));
    const bytes = (n: bigint) => mib(n * PAGE_SIZE_N);
    lines.push(`  lazy:    ${s.lazyPages} pages (${bytes(s.lazyPages)}) in ${p.lazyRanges.length} ranges` +
      (s.lazyRemotePages ? `, ${s.lazyRemotePages} remote-only (page server)` : ''));
    lines.push(`  eager:   ${s.eagerPages} pages (${bytes(s.eagerPages)}) in ${p.eagerRanges.length} ranges`);
    lines.push(`  zero:    ${s.zeroPages} VMA pages with no pagemap entry (${bytes(s.zeroPages)})`);
  }
  for (const sh of c.shmem) {
    lines.push('', `shmem ${sh.shmid}: ${sh.pages} pages in ${sh.entries} entries, pages-${sh.pagesId}.img (restored eagerly, not served lazily)`);
  }
  return lines.join('\n') + '\n';
}

export const inspectCommand: CommandModule<object, { 'images-dir'?: string; 'working-set'?: string; json: boolean }> = {
  command: 'inspect',
  describe: 'Summarise a CRIU images dir (processes, VMAs, lazy / eager / zero pages) or a recorded working set',
  builder: (y) => y
    .option('images-dir', { alias: 'D', type: 'string', describe: 'CRIU images dir' })
    .option('working-set', { type: 'string', describe: 'a working set recorded by daemon --record-working-set: its pages, ranges and bytes per process (with -D: whether it fits)' })
    .option('json', { type: 'boolean', default: false, describe: 'print the model as JSON (addresses as "0x…")' }) as never,
  handler: async (argv) => {
    const parsed = Options.safeParse(argv);
    if (!parsed.success) throw new UserError('EOPTION', `inspect: ${parsed.error.issues.map((i) => `--${i.path.join('.')}: ${i.message}`).join('; ')}`);
    const o = parsed.data;
    const c = o['images-dir'] === undefined ? undefined : await Checkpoint.open(o['images-dir']);
    if (o['working-set'] !== undefined) {
      const s = summariseWorkingSet(o['working-set'], readWorkingSet(o['working-set']), c);
      process.stdout.write(o.json ? JSON.stringify(s, null, 2) + '\n' : formatWorkingSet(s));
      return;
    }
    process.stdout.write(o.json ? JSON.stringify(c!.toJSON(), null, 2) + '\n' : formatCheckpoint(c!));
  },
};
