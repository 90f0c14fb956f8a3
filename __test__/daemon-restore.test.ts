/**
 * The daemon end to end: real userfaultfds handed over by the restore simulator (a second process
 * playing `criu restore --lazy-pages`), every byte of every restored process verified by it.
 */
import test from 'ava';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

import { Checkpoint } from '../ts/images/index.js';
import { fixturesDir, restore, simFailure, synth } from './helpers/e2e.js';

const MiB = 1 << 20;

test('touch-all in random order, background off: every page served on demand and verified', async (t) => {
  const ck = await synth(t, { size: 4 * MiB, vmas: 2 });
  const r = await restore(t, ck, ['--workload', 'touch-all', '--order', 'rand'], { daemon: { background: false } });
  t.is(r.sim.code, 0, simFailure(r));
  t.true(r.sim.report?.ok);
  t.truthy(r.summary, simFailure(r));
  const p = r.summary!.processes[0];
  t.is(p.pid, ck.processes[0].pid);
  t.is(p.onDemandPages, 1024);
  t.is(p.backgroundPages, 0);
  t.is(r.sim.report!.processes[0].latencyNs?.count, 1024);
});

test('background transfer finishes what the process did not touch, holes read zeros', async (t) => {
  const ck = await synth(t, { size: 8 * MiB, vmas: 3, holes: 0.1 });
  // The pause between the touches and the full read lets the background transfer install the rest
  // first; the full read then checks what it installed (and that holes read zeros).
  const r = await restore(t, ck, ['--workload', 'touch-random', '--count', '64', '--then-verify-all', '--settle-ms', '1500']);
  t.is(r.sim.code, 0, simFailure(r));
  const p = r.summary!.processes[0];
  t.true(p.backgroundPages > 0, JSON.stringify(p));
  t.true(r.events.some((e) => e.type === 'restore-finished'));
});

test('a 3-process tree restored with pids handed over in shuffled order', async (t) => {
  const ck = await synth(t, { size: 3 * MiB, vmas: 2, procs: 3 });
  const r = await restore(t, ck, ['--workload', 'touch-random', '--count', '100', '--then-verify-all', '--order', 'shuffle']);
  t.is(r.sim.code, 0, simFailure(r));
  t.deepEqual(r.summary!.processes.map((p) => p.pid).sort(), ck.processes.map((p) => p.pid).sort());
  t.true(r.summary!.processes.every((p) => p.outcome === 'done' || p.outcome === 'exited'));
});

test('32 processes at once, each verified byte for byte', async (t) => {
  const ck = await synth(t, { size: 32 * MiB, vmas: 1, procs: 32 });
  const r = await restore(t, ck, ['--workload', 'touch-random', '--count', '32', '--then-verify-all']);
  t.is(r.sim.code, 0, simFailure(r));
  t.is(r.sim.report!.processes.length, 32);
  t.true(r.sim.report!.processes.every((p) => p.ok));
  t.is(r.summary!.processes.length, 32);
});

test('uffd-events: fault, fork, DONTNEED reads zeros, mremap growth, swap through MREMAP_FIXED, in parent and child', async (t) => {
  const ck = await synth(t, { size: 5 * MiB, vmas: 5 });
  const r = await restore(t, ck, ['--workload', 'uffd-events']);
  t.is(r.sim.code, 0, simFailure(r));
  t.true(r.events.some((e) => e.type === 'fork'), 'the daemon saw the FORK');
});

test('fork storm: children forked during the transfer are served from the same images', async (t) => {
  const ck = await synth(t, { size: 4 * MiB, vmas: 2 });
  const r = await restore(t, ck, ['--workload', 'fork-storm', '--count', '8']);
  t.is(r.sim.code, 0, simFailure(r));
  t.true(r.events.filter((e) => e.type === 'fork').length >= 8);
});

test('a process that exits mid-transfer is dropped, the others finish, the daemon succeeds', async (t) => {
  const ck = await synth(t, { size: 8 * MiB, vmas: 2, procs: 2 });
  const r = await restore(t, ck, ['--workload', 'exit-after', '--count', '16']);
  t.is(r.sim.code, 0, simFailure(r));
  t.truthy(r.summary, simFailure(r));
  t.is(r.summary!.processes.length, 2);
});

for (const name of ['single-anon', 'mremap', 'fork-tree', 'mixed-vmas']) {
  test(`real CRIU fixture ${name} restored lazily and verified`, async (t) => {
    const dir = join(fixturesDir, name);
    if (!existsSync(dir)) return t.fail(`fixture ${dir} is missing`);
    const ck = await Checkpoint.open(dir);
    // The fixture's pids are fixed; if one is taken on this machine right now, let the kernel pick.
    const taken = ck.processes.some((p) => existsSync(`/proc/${p.pid}`));
    const r = await restore(t, ck, ['--workload', 'verify-all', ...(taken ? ['--any-pid'] : [])]);
    t.is(r.sim.code, 0, simFailure(r));
    t.is(r.summary!.processes.length, ck.processes.length);
  });
}
