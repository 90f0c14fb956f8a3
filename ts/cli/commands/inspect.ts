/** `lazy-pages inspect -D DIR [--json]`: what a checkpoint holds, as the daemon will see it. */
import type { CommandModule } from 'yargs';
import { z } from 'zod';
import { UserError } from '../../errors.js';
import { Checkpoint, pageStats, type Vma } from '../../images/index.js';
import { MAP_FLAG_NAMES, PAGE_SIZE_N, VMA_STATUS_NAMES } from '../../images/constants.js';
import { hex } from '../../images/errors.js';

const Options = z.object({
  'images-dir': z.string().min(1),
  json: z.boolean(),
});

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

export const inspectCommand: CommandModule<object, { 'images-dir': string; json: boolean }> = {
  command: 'inspect',
  describe: 'Summarise a CRIU images dir: processes, VMAs, lazy / eager / zero pages',
  builder: (y) => y
    .option('images-dir', { alias: 'D', type: 'string', demandOption: true, describe: 'CRIU images dir' })
    .option('json', { type: 'boolean', default: false, describe: 'print the model as JSON (addresses as "0x…")' }) as never,
  handler: async (argv) => {
    const parsed = Options.safeParse(argv);
    if (!parsed.success) throw new UserError('EOPTION', `inspect: ${parsed.error.issues.map((i) => `--${i.path.join('.')}: ${i.message}`).join('; ')}`);
    const c = await Checkpoint.open(parsed.data['images-dir']);
    process.stdout.write(parsed.data.json ? JSON.stringify(c.toJSON(), null, 2) + '\n' : formatCheckpoint(c));
  },
};
