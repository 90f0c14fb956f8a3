#!/usr/bin/env bash
# Publishes staged npm package directories, with provenance, for the release workflow:
#
#   NODE_AUTH_TOKEN=... bash scripts/ci/npm-publish.sh DIST_TAG DIR...
#
# DIR is a directory written by scripts/package-platform.mjs or scripts/package-main.mjs. A
# name@version already on the registry is skipped, so a re-run of a release that failed half-way
# publishes what is left instead of failing on the first package it had published. Provenance
# needs the job's `id-token: write` permission; the staged package.json carries the repository URL
# the attestation is checked against.
set -euo pipefail

if [ "$#" -lt 2 ]; then
  echo "usage: $0 DIST_TAG DIR..." >&2
  exit 2
fi
tag=$1
shift
if [ -z "${NODE_AUTH_TOKEN:-}" ]; then
  echo "npm-publish: NODE_AUTH_TOKEN is empty (is the NPM_TOKEN secret set, and given to this step?)" >&2
  exit 1
fi

for dir in "$@"; do
  name=$(node -p 'require(process.argv[1]).name' "$(realpath "$dir/package.json")")
  version=$(node -p 'require(process.argv[1]).version' "$(realpath "$dir/package.json")")
  if [ -n "$(npm view "$name@$version" version 2>/dev/null || true)" ]; then
    echo "$name@$version is already on npm: skipped"
    continue
  fi
  echo "publishing $name@$version (dist-tag $tag) from $dir"
  npm publish "$(realpath "$dir")" --provenance --access public --tag "$tag" --ignore-scripts
done
