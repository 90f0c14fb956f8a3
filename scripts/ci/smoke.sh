#!/bin/sh
# Smoke test of one target's npm packages where they will run: inside a container of that libc
# (node:*-alpine for musl, an older Debian for glibc), started by the CI's smoke job with
# `docker run --privileged` (userfaultfd and pidfds, as root). POSIX sh: Alpine has no bash.
#
#   sh scripts/ci/smoke.sh PACKDIR
#
# PACKDIR holds the two tarballs the job packed with the release's own scripts: the main package
# (lazy-pages-X.Y.Z.tgz, scripts/package-main.mjs) and the target's platform package
# (lazy-pages-linux-*-X.Y.Z.tgz, scripts/package-platform.mjs). They are installed into an empty
# project, as a user's `npm install lazy-pages` would, then:
#   1. the addon itself is loaded by node with NAPI_RS_NATIVE_LIBRARY_PATH (the libc/ABI check);
#   2. the generated loader finds it in the platform package on its own;
#   3. `lazy-pages check` (exit 1 if a lazy restore cannot be served here);
#   4. `lazy-pages demo`: a real lazy restore by the daemon, its guardian and the restore
#      simulator, all three from the platform package.
set -eu

pack=${1:?usage: smoke.sh PACKDIR}
echo "smoke: $(uname -m), node $(node --version), $(ldd --version 2>&1 | head -n 1)"

app=$(mktemp -d)
cd "$app"
echo '{ "name": "smoke", "private": true, "type": "module" }' >package.json
npm install --no-audit --no-fund --loglevel=error "$pack"/*.tgz

set -- node_modules/lazy-pages-linux-*/lazy-pages.*.node
if [ "$#" -ne 1 ] || [ ! -f "$1" ]; then
  echo "smoke: expected exactly one addon in a platform package, found: $*" >&2
  exit 1
fi
addon=$(realpath "$1")
echo "smoke: addon $addon"

# shellcheck disable=SC2016 # JavaScript, not shell: nothing in it is for sh to expand
NAPI_RS_NATIVE_LIBRARY_PATH=$addon node -e '
  const b = require(process.env.NAPI_RS_NATIVE_LIBRARY_PATH);
  const names = Object.keys(b);
  if (names.length === 0) throw new Error("the addon exports nothing");
  console.log(`smoke: addon loaded, ${names.length} exports (${names.slice(0, 4).join(", ")}, ...)`);
'
# shellcheck disable=SC2016 # JavaScript, as above
node -e '
  const b = require("./node_modules/lazy-pages/native/binding.cjs");
  console.log(`smoke: generated loader picked the platform package (${Object.keys(b).length} exports)`);
'

npx --no-install lazy-pages --version
npx --no-install lazy-pages check
npx --no-install lazy-pages demo
echo "smoke: OK"
