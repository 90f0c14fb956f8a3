#!/usr/bin/env bash
# Static checks, in order, stopping at the first that fails (with one line naming it):
# rustfmt, clippy (warnings are errors), tsc over the sources and over the tests, import circles
# (TypeScript and Rust modules), actionlint.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

step() {
  local name=$1
  shift
  echo "lint: $name" >&2
  "$@"
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "lint: FAILED: $name (exit $rc)" >&2
    exit "$rc"
  fi
}

step "cargo fmt --all --check" cargo fmt --all --check
step "cargo clippy --workspace --all-targets --release -- -D warnings" \
  cargo clippy --workspace --all-targets --release -- -D warnings
step "tsc -p tsconfig.json --noEmit" npx tsc -p tsconfig.json --noEmit
step "tsc -p __test__/tsconfig.json --noEmit" npx tsc -p __test__/tsconfig.json --noEmit
step "import cycles (ts/ and crates/)" node scripts/ci/import-cycles.mjs
step "actionlint (skipped when not installed)" bash scripts/ci/actionlint.sh
echo "lint: all passed" >&2
