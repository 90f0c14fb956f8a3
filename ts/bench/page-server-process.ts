/**
 * The page server as a separate process, for the remote part of the benchmark: a daemon and its
 * page server must not share one event loop, or each would slow the other down.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

import { fromSources, packageRoot } from '../package-root.js';

/** Starts the page server in a child process; resolves with its port and a kill function. */
export async function serverProcess(imagesDir: string): Promise<{ port: number; stop: () => void }> {
  // The sources under tsx (tests), else the compiled tree (also from the bundled CLI).
  const mod = pathToFileURL(join(packageRoot, fromSources ? 'ts' : 'dist', 'pageserver', fromSources ? 'index.ts' : 'index.js')).href;
  const code = `import { startPageServer } from ${JSON.stringify(mod)};
    const s = await startPageServer({ imagesDir: process.argv[1] });
    process.stdout.write('port ' + s.port + '\\n');
    process.on('SIGTERM', () => s.close().then(() => process.exit(0)));`;
  const child = spawn(process.execPath, [...process.execArgv, '--input-type=module', '-e', code, '--', imagesDir], { stdio: ['ignore', 'pipe', 'inherit'] });
  const stop = () => {
    if (child.exitCode === null && child.pid) process.kill(child.pid, 'SIGKILL');
  };
  try {
    const port = await new Promise<number>((resolve, reject) => {
      let out = '';
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /port (\d+)/.exec(out);
        if (m) resolve(Number(m[1]));
      });
      child.once('exit', (c) => reject(new Error(`bench page server exited with ${c} before listening`)));
    });
    return { port, stop };
  } catch (e) {
    stop();
    throw e;
  }
}
