#!/usr/bin/env bash
# Checks what a build job made for one target before it is uploaded:
#
#   scripts/ci/check-binaries.sh TARGET FILE...
#
# - every FILE is an ELF for TARGET's machine (a cross build that silently fell back to the host
#   compiler would give an x86-64 file for aarch64);
# - gnu targets: the newest glibc symbol version any FILE needs is at most MAX_GLIBC (default 2.28,
#   RHEL 8; Debian 11 has 2.31, Ubuntu 20.04 2.31). The builds link against glibc 2.17
#   (napi-rs cross toolchain, cargo-zigbuild's .2.17 suffix), so anything newer means a toolchain
#   drifted;
# - musl targets: no FILE needs glibc at all.
#
# readelf, not objdump: it reads an ELF of any machine, where the host's objdump may only know its
# own. `readelf -V` lists the version needs (what `objdump -T | grep GLIBC_` shows per symbol).
set -euo pipefail

if [ "$#" -lt 2 ]; then
  echo "usage: $0 TARGET FILE..." >&2
  exit 2
fi
target=$1
shift
max_glibc=${MAX_GLIBC:-2.28}

case "$target" in
  x86_64-*) machine='Advanced Micro Devices X86-64' ;;
  aarch64-*) machine='AArch64' ;;
  *)
    echo "check-binaries: unknown target $target" >&2
    exit 2
    ;;
esac

# The newest of the version strings on stdin (one per line), by version order.
newest() { sort -V | tail -n 1; }

failed=0
for f in "$@"; do
  if [ ! -f "$f" ]; then
    echo "FAIL $f: missing"
    failed=1
    continue
  fi
  got=$(readelf -h "$f" | sed -n 's/^ *Machine: *//p')
  if [ "$got" != "$machine" ]; then
    echo "FAIL $f: machine '$got', want '$machine' for $target"
    failed=1
    continue
  fi
  glibc=$(readelf -W -V "$f" | grep -oE 'GLIBC_[0-9]+(\.[0-9]+)+' | sed 's/^GLIBC_//' | newest || true)
  case "$target" in
    *-gnu)
      if [ -z "$glibc" ]; then
        echo "ok   $f: $got, no versioned glibc symbols"
      elif [ "$(printf '%s\n%s\n' "$glibc" "$max_glibc" | newest)" != "$max_glibc" ]; then
        echo "FAIL $f: needs GLIBC_$glibc, newer than the $max_glibc baseline"
        failed=1
      else
        echo "ok   $f: $got, newest glibc symbol GLIBC_$glibc (<= $max_glibc)"
      fi
      ;;
    *-musl)
      if [ -n "$glibc" ]; then
        echo "FAIL $f: a musl build that needs GLIBC_$glibc"
        failed=1
      else
        echo "ok   $f: $got, no glibc ($(readelf -d "$f" | grep -c NEEDED || true) shared libraries needed)"
      fi
      ;;
  esac
done
exit "$failed"
