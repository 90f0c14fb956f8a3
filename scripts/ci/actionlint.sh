#!/usr/bin/env bash
# Lints the GitHub Actions workflows (.github/workflows/*.yml) with actionlint, which also checks
# every `run:` block with shellcheck when that is on the PATH. Quiet when all is well.
#
#   bash scripts/ci/actionlint.sh
#
# actionlint is looked for as $ACTIONLINT, else on the PATH. When it is missing the script says it
# skipped and exits 0, unless ACTIONLINT_REQUIRED=1 (then exit 1). The workflows' own lint job runs
# the same actionlint from its docker image. To install it here:
#   GOBIN=/usr/local/bin go install github.com/rhysd/actionlint/cmd/actionlint@v1.7.12
#   apt-get install -y shellcheck
set -euo pipefail
cd "$(dirname "$0")/../.."

bin=${ACTIONLINT:-$(command -v actionlint || true)}
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
  if [ "${ACTIONLINT_REQUIRED:-}" = 1 ]; then
    echo "actionlint: not installed (ACTIONLINT_REQUIRED=1)" >&2
    exit 1
  fi
  echo "actionlint: skipped (not installed; see scripts/ci/actionlint.sh to install it)" >&2
  exit 0
fi
if ! command -v shellcheck >/dev/null; then
  echo "actionlint: note: shellcheck is not installed, run: blocks are not checked" >&2
fi
"$bin" -version | head -n 1 | sed 's/^/actionlint /' >&2
exec "$bin" "$@"
