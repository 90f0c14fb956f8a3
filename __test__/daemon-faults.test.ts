/**
 * Bad input and faults: a restorer that misbehaves must never leave a process running on zeros.
 * Every process already handed over is SIGKILLed before its uffd is closed.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, lstatSync, mkdirSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { join } from 'node:path';

import { startLazyPagesDaemon } from '../ts/daemon/daemon.js';
import { UserError } from '../ts/errors.js';
import { fixturesDir, restore, simFailure, synth, tempDir } from './helpers/e2e.js';

const MiB = 1 << 20;

const killedAll = (r: Awaited<ReturnType<typeof restore>>) =>
  r.sim.report?.processes.every((p) => p.killedBySignal === 9) ?? false;

test('restorer hangs up before "restore finished": error, every handed-over process killed', async (t) => {
  const ck = await synth(t, { size: 2 * MiB, procs: 2 });
  const r = await restore(t, ck, ['--workload', 'hold', '--no-finish']);
  t.truthy(r.daemonError, 'the daemon must fail');
  t.regex(r.daemonError!.message, /hand-over|hung up|finished/i);
  t.true(killedAll(r), simFailure(r));
  t.true(r.events.filter((e) => e.type === 'process-lost').every((e) => e.type === 'process-lost' && e.killed));
});

test('restorer sends garbage instead of a pid: clear error, processes killed', async (t) => {
  const ck = await synth(t, { size: 2 * MiB, procs: 2 });
  // Tasks sent after the garbage cannot be told apart any more, so the daemon cannot kill them: the
  // simulator's own timeout ends them (a real restorer aborts when the restore fails).
  const r = await restore(t, ck, ['--workload', 'hold', '--send-garbage', '--timeout', '3']);
  t.truthy(r.daemonError, simFailure(r));
  t.true(r.daemonError instanceof UserError);
  t.regex(r.daemonError!.message, /hand-over/);
  t.false(r.sim.code === 0);
});

test('restorer sends a non-uffd fd: clear error naming it, processes killed', async (t) => {
  const ck = await synth(t, { size: 2 * MiB, procs: 2 });
  const r = await restore(t, ck, ['--workload', 'hold', '--send-bad-fd']);
  t.truthy(r.daemonError, simFailure(r));
  t.regex(r.daemonError!.message, /userfaultfd/i);
  t.false(r.sim.code === 0);
});

test('a pid with no images is killed and fails the restore', async (t) => {
  const ck = await synth(t, { size: 2 * MiB, procs: 1 });
  const other = await synth(t, { size: 1 * MiB, procs: 1 });
  const r = await restore(t, ck, ['--workload', 'hold'], {
    layout: (l) => ({ ...l, processes: [...l.processes, ...l.processes.slice(0, 1).map((p) => ({ ...p, pid: other.processes[0].pid, ppid: l.processes[0].pid, vmas: [], eager: [], expect: [] }))] }),
  });
  t.truthy(r.daemonError, simFailure(r));
  t.regex(r.daemonError!.message, /no images/);
  t.false(r.sim.code === 0);
});

test('a served process killed mid-transfer: its state is dropped, the others finish, success', async (t) => {
  const ck = await synth(t, { size: 16 * MiB, vmas: 2, procs: 3 });
  const victim = ck.processes[1].pid;
  const r = await restore(t, ck, ['--workload', 'touch-random', '--count', '8', '--then-verify-all'], {
    daemon: { chunkBytes: 64 * 1024 },
    during: (d) => {
      d.on((e) => {
        if (e.type === 'attached' && e.pid === victim) {
          setTimeout(() => {
            try {
              process.kill(victim, 'SIGKILL');
            } catch {
              /* already gone (a loaded machine): its exit is what this test is about anyway */
            }
          }, 50);
        }
      });
    },
  });
  t.truthy(r.summary, simFailure(r));
  const v = r.summary!.processes.find((p) => p.pid === victim);
  t.is(v?.outcome === 'exited' || v?.outcome === 'done', true);
  const others = r.sim.report!.processes.filter((p) => p.pid !== victim);
  t.true(others.every((p) => p.ok), simFailure(r));
});

test('a second restorer connecting is refused and the first one goes on', async (t) => {
  const ck = await synth(t, { size: 2 * MiB });
  const warnings: string[] = [];
  const r = await restore(t, ck, ['--workload', 'touch-all'], {
    daemon: { onEvent: (e) => e.type === 'warning' && warnings.push(e.message) },
    during: async (d) => {
      await new Promise((res) => setTimeout(res, 100));
      await new Promise<void>((res) => {
        const c = createConnection(d.socketPath);
        c.on('error', () => res());
        c.on('close', () => res());
      });
    },
  });
  t.is(r.sim.code, 0, simFailure(r));
});

test('a stale socket file (left by a crashed daemon) is replaced', async (t) => {
  const ck = await synth(t, { size: 1 * MiB });
  const wd = tempDir(t);
  const path = join(wd, 'lazy-pages.socket');
  // A socket bound by a process that died without unlinking it: the file stays, nobody listens.
  execFileSync('python3', ['-c', 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', path]);
  t.true(lstatSync(path).isSocket());
  const d = await startLazyPagesDaemon({ imagesDir: ck.dir, workDir: wd });
  t.teardown(() => d.close());
  t.is(d.socketPath, path);
  t.true(lstatSync(path).isSocket());
});

test('a work dir holding a non-socket lazy-pages.socket is not clobbered', async (t) => {
  const ck = await synth(t, { size: 1 * MiB });
  const wd = tempDir(t);
  writeFileSync(join(wd, 'lazy-pages.socket'), 'precious');
  await t.throwsAsync(startLazyPagesDaemon({ imagesDir: ck.dir, workDir: wd }), { message: /not a socket/ });
});

test('a work dir that does not exist or is not a directory: clear error', async (t) => {
  const ck = await synth(t, { size: 1 * MiB });
  const wd = tempDir(t);
  await t.throwsAsync(startLazyPagesDaemon({ imagesDir: ck.dir, workDir: join(wd, 'nope') }), { message: /work dir .*nope.* does not exist/ });
  writeFileSync(join(wd, 'file'), '');
  await t.throwsAsync(startLazyPagesDaemon({ imagesDir: ck.dir, workDir: join(wd, 'file') }), { message: /not a directory/ });
  const ro = join(wd, 'ro');
  mkdirSync(ro);
  chmodSync(ro, 0o555);
  // root may write anywhere: only check that a non-root user gets the clear error
  if (process.getuid?.() !== 0) {
    await t.throwsAsync(startLazyPagesDaemon({ imagesDir: ck.dir, workDir: ro }), { message: /not writable/ });
  }
});

test('a second daemon on a work dir whose socket is live is refused; the first keeps listening', async (t) => {
  const ck = await synth(t, { size: 1 * MiB });
  const wd = tempDir(t);
  const first = await startLazyPagesDaemon({ imagesDir: ck.dir, workDir: wd });
  t.teardown(() => first.close());
  await t.throwsAsync(startLazyPagesDaemon({ imagesDir: ck.dir, workDir: wd }), { message: /another lazy-pages daemon is listening/ });
  t.true(existsSync(first.socketPath));
});

test('images dumped with --lazy-pages need a page server: the real CRIU fixture says so', async (t) => {
  const dir = join(fixturesDir, 'lazy-remote');
  await t.throwsAsync(startLazyPagesDaemon({ imagesDir: dir, workDir: tempDir(t) }), {
    message: /dumped with --lazy-pages.*--page-server --address A --port P/,
  });
});


test('regression: a restorer that stalls in the middle of a pid fails the restore instead of hanging the daemon', async (t) => {
  const ck = await synth(t, { size: 1 * MiB });
  const wd = tempDir(t);
  const d = await startLazyPagesDaemon({ imagesDir: ck.dir, workDir: wd });
  t.teardown(() => d.close());
  const c = createConnection(d.socketPath);
  t.teardown(() => c.destroy());
  await new Promise<void>((res) => c.once('connect', () => res()));
  c.write(Buffer.from([1, 2])); // two of the four bytes of a pid, then nothing
  const t0 = Date.now();
  await t.throwsAsync(d.done, { message: /stalled/ });
  t.true(Date.now() - t0 < 15_000);
});
