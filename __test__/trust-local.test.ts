/**
 * Issue 10, "local trust": each attack by another local user (`nobody`) on the hand-over socket, the
 * work dir, the pid file and the log file, replayed against the daemon. Every test is named after
 * the attack and checks that it does no harm.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, lchownSync, lstatSync, mkdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { startLazyPagesDaemon, type LazyPagesDaemon } from '../ts/daemon/daemon.js';
import type { DaemonEvent } from '../ts/daemon/events.js';
import { UserError } from '../ts/errors.js';
import { bin, startCliDaemon, startSim, waitFor } from './helpers/cli.js';
import { synth, tempDir } from './helpers/e2e.js';
import { skipUnless } from './helpers/skip.js';

const MiB = 1 << 20;
const NOBODY = 65534;
const root = process.getuid?.() === 0;
/** The system's python (a per-user install, e.g. pyenv under /root, is not runnable by nobody). */
const PYTHON = '/usr/bin/python3';
const hasSetpriv = spawnSync('sh', ['-c', `command -v setpriv && test -x ${PYTHON}`], { stdio: 'ignore' }).status === 0;
const asRoot = skipUnless(root, 'not root', skipUnless(hasSetpriv, `no setpriv or no ${PYTHON}`));

/**
 * A local attacker's peer, in Python (it needs SCM_RIGHTS and raw syscalls). `hold`: connect, send a
 * pid's first bytes, stay connected. `handover`: what the attacker did: make a userfaultfd of
 * its own (user-mode-only needs no privilege), map and register the image's VMA at its address, hand
 * it over as the restored task, say "restore finished", then report how many of those pages the
 * daemon put in its memory (mincore).
 */
const PEER = String.raw`
import ctypes, errno, json, os, platform, socket, struct, sys, time
path, mode, pid, start, length = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4], 16), int(sys.argv[5])
out = {'pid': os.getpid(), 'uid': os.geteuid()}
def done():
    print(json.dumps(out), flush=True)
    sys.exit(0)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
if mode == 'hold':
    try:
        s.connect(path)
        out['connect'] = 'ok'
    except OSError as e:
        out['connect'] = errno.errorcode.get(e.errno, str(e))
    try:
        s.send(struct.pack('i', pid)[:2])
        out['sent'] = 'ok'
    except OSError as e:
        out['sent'] = errno.errorcode.get(e.errno, str(e))  # the daemon may have closed us already
    print(json.dumps(out), flush=True)
    time.sleep(120)
    sys.exit(0)
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
nr = {'x86_64': 323, 'aarch64': 282}[platform.machine()]
uffd = libc.syscall(nr, os.O_CLOEXEC | os.O_NONBLOCK | 1)  # 1 = UFFD_USER_MODE_ONLY
if uffd < 0:
    out['error'] = 'userfaultfd: ' + errno.errorcode.get(ctypes.get_errno(), '?'); done()
api = (ctypes.c_uint64 * 3)(0xAA, 0, 0)
if libc.ioctl(uffd, 0xC018AA3F, api) != 0:
    out['error'] = 'UFFDIO_API'; done()
addr = libc.mmap(start, length, 3, 0x02 | 0x20 | 0x100000, -1, 0)  # PRIVATE|ANONYMOUS|FIXED_NOREPLACE
if addr != start:
    out['error'] = 'mmap at 0x%x' % start; done()
reg = (ctypes.c_uint64 * 4)(start, length, 1, 0)  # UFFDIO_REGISTER_MODE_MISSING
if libc.ioctl(uffd, 0xC020AA00, reg) != 0:
    out['error'] = 'UFFDIO_REGISTER: ' + errno.errorcode.get(ctypes.get_errno(), '?'); done()
try:
    s.connect(path)
    out['connect'] = 'ok'
except OSError as e:
    out['connect'] = errno.errorcode.get(e.errno, str(e)); done()
try:
    s.sendall(struct.pack('i', pid))
    socket.send_fds(s, [b'\0'], [uffd])
    s.sendall(struct.pack('I', 0x52535446))
    out['sent'] = 'ok'
except OSError as e:
    out['sent'] = errno.errorcode.get(e.errno, str(e))
s.settimeout(5)
try:
    out['reply'] = 'eof' if s.recv(1) == b'' else 'data'
except socket.timeout:
    out['reply'] = 'timeout'
except OSError as e:
    out['reply'] = errno.errorcode.get(e.errno, str(e))
time.sleep(1)  # a daemon that took us for the restorer copies the pages in now
vec = ctypes.create_string_buffer(length // 4096)
libc.mincore(start, length, vec)
out['resident'] = sum(b & 1 for b in vec.raw)
done()
`;

interface PeerOut {
  pid: number;
  uid: number;
  connect?: string;
  sent?: string;
  reply?: string;
  resident?: number;
  error?: string;
}

/**
 * Run the peer as nobody. `dacOverride` lets it past the socket's 0600 mode (as if the socket were
 * still created from the umask) so the check on its credentials is what is tested. The peer is
 * SIGKILLed by pid in teardown.
 */
function runPeer(
  t: ExecutionContext,
  args: string[],
  dacOverride: boolean,
): { pid: number; first: Promise<PeerOut> } {
  const caps = dacOverride ? ['--inh-caps=+dac_override', '--ambient-caps=+dac_override'] : [];
  const child = spawn('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', ...caps, PYTHON, '-c', PEER, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const pid = child.pid!;
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) process.kill(pid, 'SIGKILL');
  });
  let out = '';
  let err = '';
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const first = new Promise<PeerOut>((res, rej) => {
    child.stdout.on('data', (b: Buffer) => {
      out += b.toString();
      const nl = out.indexOf('\n');
      if (nl >= 0) res(JSON.parse(out.slice(0, nl)) as PeerOut);
    });
    child.once('exit', (code) => rej(new Error(`peer exited ${code} without a report: ${err}`)));
  });
  return { pid, first };
}

/** A work dir others may enter (0755, as most are): so only the socket's own mode keeps them out. */
function openWorkDir(t: ExecutionContext): string {
  const wd = tempDir(t);
  chmodSync(wd, 0o755);
  return wd;
}

async function daemonIn(t: ExecutionContext, ckDir: string, o: { background?: boolean } = {}) {
  const wd = openWorkDir(t);
  const events: DaemonEvent[] = [];
  const d: LazyPagesDaemon = await startLazyPagesDaemon({ imagesDir: ckDir, workDir: wd, onEvent: (e) => events.push(e), ...o });
  t.teardown(() => d.close('test ended'));
  return { d, wd, events };
}

const warnings = (events: DaemonEvent[]) => events.flatMap((e) => (e.type === 'warning' ? [e.message] : []));

asRoot('under umask 000 the socket is still 0600', async (t) => {
  const ck = await synth(t, { size: 1 * MiB });
  for (const umask of ['000', '022', '277']) {
    const wd = openWorkDir(t);
    const d = startCliDaemon(t, ['-D', ck.dir, '-W', wd], { umask });
    await d.ready;
    const st = lstatSync(join(wd, 'lazy-pages.socket'));
    t.true(st.isSocket());
    t.is((st.mode & 0o7777).toString(8), '600', `umask ${umask}`);
    t.is(st.uid, 0);
    process.kill(d.pid, 'SIGTERM');
    t.is((await d.exited).code, 1);
  }
  // And so `nobody` cannot even connect.
  const wd = openWorkDir(t);
  const d = startCliDaemon(t, ['-D', ck.dir, '-W', wd], { umask: '000' });
  await d.ready;
  const peer = runPeer(t, [join(wd, 'lazy-pages.socket'), 'hold', '1', '0', '0'], false);
  t.is((await peer.first).connect, 'EACCES');
});

asRoot('a nobody peer that connects first is refused and the real restorer still restores', async (t) => {
  const ck = await synth(t, { size: 4 * MiB, vmas: 2, procs: 2 });
  const { d, wd, events } = await daemonIn(t, ck.dir);
  // The peer gets past the socket's mode (CAP_DAC_OVERRIDE) and connects before the restorer does,
  // sends part of a pid and stays connected: it must neither be read nor take the restorer's place.
  const peer = runPeer(t, [d.socketPath, 'hold', String(ck.processes[0].pid), '0', '0'], true);
  const p = await peer.first;
  t.is(p.connect, 'ok');
  t.is(p.uid, NOBODY);
  await waitFor('the refusal warning', () => warnings(events).some((w) => w.includes(`pid ${peer.pid} (uid ${NOBODY})`)));
  const sim = startSim(t, ck, wd, ['--workload', 'touch-random', '--count', '20', '--then-verify-all']);
  const [res, summary] = await Promise.all([sim.result, d.done]);
  t.is(res.code, 0, res.stderr);
  t.is(res.report?.processes.length, 2);
  t.true(res.report!.processes.every((q) => q.ok && q.badPages === 0), JSON.stringify(res.report));
  t.true(summary.processes.every((q) => q.outcome === 'done'));
  const w = warnings(events).find((m) => m.includes(`pid ${peer.pid}`))!;
  t.regex(w, new RegExp(`refused a connection from pid ${peer.pid} \\(uid ${NOBODY}\\): only root and the daemon's user`));
  t.true(w.includes(d.socketPath));
  // The peer's connection was never taken for the restorer's.
  t.false(warnings(events).some((m) => /second restorer/.test(m)));
});

asRoot('a nobody peer cannot receive checkpoint memory', async (t) => {
  const ck = await synth(t, { size: 2 * MiB, vmas: 1 });
  const vma = ck.processes[0].vmas.find((v) => v.lazy)!;
  const len = Number(vma.end - vma.start);
  const args = (sock: string) => [sock, 'handover', String(ck.processes[0].pid), vma.start.toString(16), String(len)];

  // Through the socket's mode: refused by connect(2) itself.
  const first = await daemonIn(t, ck.dir);
  const blocked = await runPeer(t, args(first.d.socketPath), false).first;
  t.falsy(blocked.error, blocked.error);
  t.is(blocked.connect, 'EACCES');
  await first.d.close('next');

  // Past the mode (CAP_DAC_OVERRIDE): refused on its credentials, before a byte of it is read.
  const { d, events } = await daemonIn(t, ck.dir);
  const peer = runPeer(t, args(d.socketPath), true);
  const p = await peer.first;
  t.falsy(p.error, p.error);
  t.is(p.connect, 'ok');
  // Closed on it unread: end of file, or a reset when its hand-over was already queued (seen in CI).
  t.true(p.reply === 'eof' || p.reply === 'ECONNRESET', `reply: ${p.reply}`);
  t.is(p.resident, 0, 'the daemon put checkpoint pages into a nobody process');
  t.false(events.some((e) => e.type === 'attached' || e.type === 'restore-finished'), JSON.stringify(events));
  t.true(warnings(events).some((w) => w.includes(`pid ${peer.pid} (uid ${NOBODY})`)), JSON.stringify(events));
});

asRoot('a socket in a world-writable work dir is refused', async (t) => {
  const ck = await synth(t, { size: 1 * MiB });
  const base = tempDir(t);
  const open = join(base, 'open');
  mkdirSync(open);
  chmodSync(open, 0o777);
  const e = await t.throwsAsync(startLazyPagesDaemon({ imagesDir: ck.dir, workDir: open }), { instanceOf: UserError });
  t.is(e!.code, 'EWORKDIR');
  t.regex(e!.message, new RegExp(`work dir ${open}: it is writable by others \\(mode 0777\\) and not sticky`));
  t.regex(e!.message, /chmod go-w/);

  const group = join(base, 'group');
  mkdirSync(group);
  chmodSync(group, 0o775);
  await t.throwsAsync(startLazyPagesDaemon({ imagesDir: ck.dir, workDir: group }), { message: /writable by its group/ });

  const theirs = join(base, 'theirs');
  mkdirSync(theirs);
  chownSync(theirs, NOBODY, NOBODY);
  await t.throwsAsync(startLazyPagesDaemon({ imagesDir: ck.dir, workDir: theirs }), { message: new RegExp(`owned by uid ${NOBODY}.*chown root`) });

  // A dir above the work dir counts too: whoever may rename it may swap the whole work dir.
  const under = join(open, 'w');
  mkdirSync(under);
  chmodSync(under, 0o700);
  await t.throwsAsync(startLazyPagesDaemon({ imagesDir: ck.dir, workDir: under }), { message: new RegExp(`${open} above it is writable by others`) });

  // Sticky (like /tmp): nobody may remove or rename our socket there.
  const sticky = join(base, 'sticky');
  mkdirSync(sticky);
  chmodSync(sticky, 0o1777);
  const d = await startLazyPagesDaemon({ imagesDir: ck.dir, workDir: sticky });
  t.teardown(() => d.close());
  t.is((statSync(d.socketPath).mode & 0o777).toString(8), '600');

  // The CLI says it in one line, exit code 1.
  const r = spawnSync(process.execPath, [bin, 'daemon', '-D', ck.dir, '-W', open], { encoding: 'utf8' });
  t.is(r.status, 1);
  t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
  t.regex(r.stderr, /^lazy-pages: work dir .*open: it is writable by others/);
});

asRoot('--pidfile does not follow a planted symlink', async (t) => {
  const ck = await synth(t, { size: 1 * MiB });
  const wd = tempDir(t);
  const victim = join(tempDir(t), 'root-owned');
  writeFileSync(victim, 'precious\n', { mode: 0o644 });
  // A dir nobody owns (a pid file's dir is not the work dir and is not checked): nobody plants a
  // symlink where the pid file will be written.
  const theirs = join(tempDir(t), 'run');
  mkdirSync(theirs);
  chownSync(theirs, NOBODY, NOBODY);
  const pidfile = join(theirs, 'lazy-pages.pid');
  symlinkSync(victim, pidfile);
  lchownSync(pidfile, NOBODY, NOBODY);
  const d = startCliDaemon(t, ['-D', ck.dir, '-W', wd, '--pidfile', pidfile]);
  await d.ready;
  t.is(readFileSync(victim, 'utf8'), 'precious\n');
  const st = lstatSync(pidfile);
  t.true(st.isFile(), 'the symlink was replaced by a regular file');
  t.is(st.uid, 0);
  t.is(readFileSync(pidfile, 'utf8'), `${d.pid}\n`);
  process.kill(d.pid, 'SIGTERM');
  await d.exited;
});

asRoot('-o does not follow a symlink', async (t) => {
  const ck = await synth(t, { size: 1 * MiB });
  const wd = tempDir(t);
  const victim = join(tempDir(t), 'root-owned');
  writeFileSync(victim, 'precious\n');
  const link = join(tempDir(t), 'daemon.log');
  symlinkSync(victim, link);
  const r = spawnSync(process.execPath, [bin, 'daemon', '-D', ck.dir, '-W', wd, '-o', link, '-v4'], { encoding: 'utf8', timeout: 30_000 });
  t.is(r.status, 1, r.stderr);
  t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
  t.regex(r.stderr, new RegExp(`-o ${link}: is a symbolic link`));
  t.is(readFileSync(victim, 'utf8'), 'precious\n');

  // The default log of -d (lazy-pages.log in the work dir) is opened the same way.
  symlinkSync(victim, join(wd, 'lazy-pages.log'));
  const r2 = spawnSync(process.execPath, [bin, 'daemon', '-D', ck.dir, '-W', wd, '-d'], { encoding: 'utf8', timeout: 30_000 });
  t.is(r2.status, 1, r2.stderr);
  t.regex(r2.stderr, new RegExp(`default log file ${join(wd, 'lazy-pages.log')}.*is a symbolic link`));
  t.is(r2.stdout, '', 'no daemon was started');
  t.is(readFileSync(victim, 'utf8'), 'precious\n');
});
