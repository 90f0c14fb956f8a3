import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import yargs from 'yargs';
import { describeUserError, UserError } from '../errors.js';
import { packageRoot } from '../package-root.js';
import { commands } from './commands/index.js';
import { writeQuietly } from './log.js';

/**
 * CRIU's verbosity spellings: `-v4` and `-v 4` set level 4, `-vvv` counts (3), a lone `-v` means 3
 * (yargs alone would read `-vvv` as three unrelated flags, and `-v 4`'s 4 as a stray argument).
 */
export function normalizeVerbosity(argv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const lvl = /^-v(\d)$/.exec(a);
    if (lvl) out.push(`--verbosity=${lvl[1]}`);
    else if (a === '-v' && /^\d$/.test(argv[i + 1] ?? '')) out.push(`--verbosity=${argv[++i]}`);
    else if (/^-v+$/.test(a)) out.push(`--verbosity=${Math.min(4, a.length === 2 ? 3 : a.length - 1)}`);
    else out.push(a);
  }
  return out;
}

/** This package's version (from its package.json). */
export function packageVersion(): string {
  try {
    return (JSON.parse(readFileSync(join(packageRoot, 'package.json'), 'utf8')) as { version?: string }).version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

/** The name a command module is called by (its `command` string up to the first space). */
function commandName(c: (typeof commands)[number]): string {
  const cmd = Array.isArray(c.command) ? c.command[0] : c.command;
  return String(cmd ?? '').split(' ')[0]!;
}

/** Entry point of the `lazy-pages` command. */
export async function main(argv: string[]): Promise<void> {
  let cli = yargs(normalizeVerbosity(argv))
    .scriptName('lazy-pages')
    .strict()
    .demandCommand(1, 'name a command: see --help')
    .recommendCommands()
    .help()
    .version(packageVersion())
    .fail((msg, err) => {
      if (err) throw err;
      // An unknown command is named as such (yargs alone says only "Did you mean …?").
      const first = argv.find((a) => !a.startsWith('-'));
      if (first !== undefined && !commands.some((c) => commandName(c) === first) && /^Did you mean|^Unknown argument/.test(msg)) {
        const hint = /^Did you mean (.*)\?$/.exec(msg)?.[1];
        throw new UserError('EOPTION', `unknown command ${JSON.stringify(first)}${hint ? ` (did you mean ${hint}?)` : ''}: see --help`);
      }
      throw new UserError('EOPTION', msg);
    });
  for (const c of commands) cli = cli.command(c);
  try {
    await cli.parseAsync();
  } catch (e) {
    if (e instanceof UserError) {
      // Raw fd writes: stderr may be a pipe whose reader is gone (EPIPE must not become a crash).
      writeQuietly(2, `lazy-pages: ${describeUserError(e)}\n`);
      process.exitCode = 1;
      return;
    }
    writeQuietly(2, `lazy-pages: internal error: ${(e as Error)?.stack ?? e}\n`);
    process.exitCode = 2;
  }
}
