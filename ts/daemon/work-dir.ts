/**
 * The dirs a daemon is given, checked before anything listens: the images dir must exist, and the
 * work dir (where the restorer finds `lazy-pages.socket`) must be writable and trusted.
 */
import { accessSync, constants as fsConstants, realpathSync, statSync } from 'node:fs';
import { dirname } from 'node:path';

import { UserError } from '../errors.js';

export const SOCKET_NAME = 'lazy-pages.socket';

export function checkDir(dir: string, what: 'images dir' | 'work dir', writable: boolean): void {
  let st;
  try {
    st = statSync(dir);
  } catch {
    throw new UserError(what === 'work dir' ? 'EWORKDIR' : 'EIMAGESDIR', `${what} ${dir} does not exist`);
  }
  if (!st.isDirectory()) throw new UserError('EWORKDIR', `${what} ${dir} is not a directory`);
  if (!writable) return;
  try {
    accessSync(dir, fsConstants.W_OK | fsConstants.X_OK);
  } catch {
    throw new UserError('EWORKDIR', `${what} ${dir} is not writable: ${SOCKET_NAME} cannot be created there`);
  }
  checkWorkDirTrust(dir);
}

/**
 * The restorer trusts whatever listens at `<workDir>/lazy-pages.socket`. Whoever may rename or
 * replace entries in the work dir, or in a dir above it, could put their own socket there and write
 * their own bytes into the restored processes. So the work dir and each dir above it (symlinks
 * resolved) must be owned by root or the daemon's user, and not writable by group or others unless
 * sticky (a sticky dir, like /tmp, lets nobody remove or rename another user's entries).
 */
function checkWorkDirTrust(workDir: string): void {
  const me = process.geteuid?.() ?? 0;
  const real = realpathSync(workDir);
  let dir = real;
  for (;;) {
    const st = statSync(dir);
    const problem =
      st.uid !== 0 && st.uid !== me
        ? `is owned by uid ${st.uid} (it must be owned by root or the daemon's user, uid ${me})`
        : (st.mode & 0o022) !== 0 && (st.mode & 0o1000) === 0
          ? `is writable by ${(st.mode & 0o002) !== 0 ? 'others' : 'its group'} (mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')}) and not sticky`
          : undefined;
    if (problem) {
      const fix = st.uid !== 0 && st.uid !== me ? `chown root ${dir}` : `chmod go-w ${dir}`;
      throw new UserError(
        'EWORKDIR',
        `work dir ${workDir}: ${dir === real ? 'it' : `${dir} above it`} ${problem}: another user could replace ` +
          `${SOCKET_NAME} and feed the restored processes; fix it (\`${fix}\`) or use a private work dir (-W)`,
      );
    }
    const up = dirname(dir);
    if (up === dir) return;
    dir = up;
  }
}
