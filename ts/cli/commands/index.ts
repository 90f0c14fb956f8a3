import type { CommandModule } from 'yargs';

/** Every `lazy-pages` sub-command, in the order --help lists them. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export const commands: CommandModule<any, any>[] = [];
