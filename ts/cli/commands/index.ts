import type { CommandModule } from 'yargs';
import { benchCommand } from './bench.js';
import { checkCommand } from './check.js';
import { daemonCommand } from './daemon.js';
import { demoCommand } from './demo.js';
import { inspectCommand } from './inspect.js';
import { pageServerCommand } from './page-server.js';
import { synthCommand } from './synth.js';

/** Every `lazy-pages` sub-command, in the order --help lists them. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export const commands: CommandModule<any, any>[] = [daemonCommand, demoCommand, checkCommand, inspectCommand, synthCommand, benchCommand, pageServerCommand];
