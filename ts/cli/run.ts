/** Run the CLI from the TypeScript sources (tests and development: `node --import tsx ts/cli/run.ts ...`). */
import { main } from './main.js';

await main(process.argv.slice(2));
