/** A user who may not use userfaultfd is told what is missing and how to fix it. */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { repoRoot } from './helpers/common.js';
import { skipUnless } from './helpers/skip.js';

const hasSetpriv = spawnSync('sh', ['-c', 'command -v setpriv'], { stdio: 'ignore' }).status === 0;
const root = process.getuid?.() === 0;

skipUnless(root, 'not root', skipUnless(hasSetpriv, 'no setpriv'))('regression: non-root with vm.unprivileged_userfaultfd=0 gets EPERM_UFFD naming the sysctl', (t) => {
  const sysctl = readFileSync('/proc/sys/vm/unprivileged_userfaultfd', 'utf8').trim();
  // The user must be able to load the addon: the checkout may sit under a directory only root can
  // enter (a CI clone in a 0700 mktemp dir), so it loads a copy in a directory everyone can read.
  const dir = mkdtempSync(join(tmpdir(), 'lazy-perm-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  chmodSync(dir, 0o755);
  for (const f of readdirSync(join(repoRoot, 'native'))) {
    if (f.endsWith('.cjs') || f.endsWith('.node')) copyFileSync(join(repoRoot, 'native', f), join(dir, f));
  }
  const script = `const b = require(${JSON.stringify(join(dir, 'binding.cjs'))});
    try { b.Uffd.create(); console.log('created'); } catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); }`;
  const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '-e', script], { encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  if (sysctl === '0') {
    const e = JSON.parse(r.stdout) as { code: string; message: string };
    t.is(e.code, 'EPERM_UFFD');
    t.regex(e.message, /run as root/);
    t.regex(e.message, /vm\.unprivileged_userfaultfd=1/);
  } else {
    // Allowed unprivileged: it works, or says which feature needs privileges (fork events need CAP_SYS_PTRACE).
    t.regex(r.stdout, /created|EUFFD_FEATURES|EPERM_UFFD/);
  }
});
