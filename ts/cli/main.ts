import yargs from 'yargs';
import { UserError } from '../errors.js';
import { commands } from './commands/index.js';
import { writeQuietly } from './log.js';

/**
 * CRIU's verbosity spellings: `-v4` sets level 4, `-vvv` counts (3), a lone `-v` means 3
 * (yargs alone would read `-vvv` as three unrelated flags).
 */
export function normalizeVerbosity(argv: string[]): string[] {
  return argv.map((a) => {
    const lvl = /^-v(\d)$/.exec(a);
    if (lvl) return `--verbosity=${lvl[1]}`;
    if (/^-v+$/.test(a)) return `--verbosity=${Math.min(4, a.length === 2 ? 3 : a.length - 1)}`;
    return a;
  });
}

/** Entry point of the `lazy-pages` command. */
export async function main(argv: string[]): Promise<void> {
  let cli = yargs(normalizeVerbosity(argv))
    .scriptName('lazy-pages')
    .strict()
    .demandCommand(1, 'name a command: see --help')
    .recommendCommands()
    .help()
    .version(false)
    .fail((msg, err) => {
      if (err) throw err;
      throw new UserError('EOPTION', msg);
    });
  for (const c of commands) cli = cli.command(c);
  try {
    await cli.parseAsync();
  } catch (e) {
    if (e instanceof UserError) {
      // Raw fd writes: stderr may be a pipe whose reader is gone (EPIPE must not become a crash).
      writeQuietly(2, `lazy-pages: ${e.message}\n`);
      process.exitCode = 1;
      return;
    }
    writeQuietly(2, `lazy-pages: internal error: ${(e as Error)?.stack ?? e}\n`);
    process.exitCode = 2;
  }
}
