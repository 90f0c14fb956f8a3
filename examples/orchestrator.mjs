#!/usr/bin/env node
// An orchestrator embedding lazy-pages as a library, as a container runtime would: serve the lazy
// pages of a checkpoint while `criu restore --lazy-pages` brings it back in a new pid namespace, follow
// the daemon's typed events, and act on the outcome.
//
//   node examples/orchestrator.mjs IMAGES_DIR WORK_DIR [CRIU]      (as root; CRIU defaults to $CRIU or criu)
//
// Exit 0 when every restored process got all its pages (or exited), 1 otherwise. From an installed
// package, import from 'lazy-pages' instead of the relative path.
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';

import { startLazyPagesDaemon, UserError } from '../dist/index.js';

const [imagesDir, workDir, criu = process.env.CRIU ?? 'criu'] = process.argv.slice(2);
if (!imagesDir || !workDir) {
  console.error('usage: node examples/orchestrator.mjs IMAGES_DIR WORK_DIR [CRIU]');
  process.exit(2);
}
mkdirSync(workDir, { recursive: true });

// 1. The daemon: it listens on WORK_DIR/lazy-pages.socket once this resolves.
const daemon = await startLazyPagesDaemon({
  imagesDir,
  workDir,
  onEvent: (e) => {
    switch (e.type) {
      case 'attached':
        console.log(`attached pid ${e.pid} (${e.lazyPages} lazy pages)`);
        break;
      case 'restore-finished':
        console.log('restore finished: the rest of the memory streams in the background');
        break;
      case 'process-done':
        console.log(`pid ${e.report.pid} ${e.report.outcome}: ${e.report.onDemandPages} pages on demand, ${e.report.backgroundPages} in background`);
        break;
      case 'process-lost':
        console.log(`pid ${e.pid} LOST (${e.killed ? 'killed' : 'not killed'}): ${e.reason}`);
        break;
      case 'warning':
        console.log(`warning: ${e.message}`);
        break;
    }
  },
});

// 2. The restore, in a new pid namespace as containers are restored. If the orchestrator is told to
// stop, daemon.close() kills every process still owed pages before their memory could read zeros.
const restore = spawn('unshare', ['--pid', '--fork', '--mount-proc', criu, 'restore', '-D', imagesDir, '-W', workDir, '--lazy-pages', '-o', 'restore.log'], {
  stdio: 'inherit',
});
const stop = () => void daemon.close('the orchestrator was stopped');
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
restore.once('exit', (code) => {
  if (code !== 0) void daemon.close(`criu restore failed (exit ${code}): see ${workDir}/restore.log`);
});

// 3. The outcome.
try {
  const summary = await daemon.done;
  console.log(`done: ${summary.processes.length} process(es) in ${summary.elapsedMs.toFixed(0)} ms`);
} catch (e) {
  console.log(`failed: ${e instanceof UserError ? `${e.code}: ` : ''}${e.message}`);
  process.exitCode = 1;
} finally {
  process.off('SIGTERM', stop);
  process.off('SIGINT', stop);
}
