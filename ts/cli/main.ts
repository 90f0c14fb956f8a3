import yargs from 'yargs';
import { UserError } from '../errors.js';
import { commands } from './commands/index.js';

/** Entry point of the `lazy-pages` command. */
export async function main(argv: string[]): Promise<void> {
  let cli = yargs(argv)
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
      process.stderr.write(`lazy-pages: ${e.message}\n`);
      process.exitCode = 1;
      return;
    }
    process.stderr.write(`lazy-pages: internal error: ${(e as Error)?.stack ?? e}\n`);
    process.exitCode = 2;
  }
}
