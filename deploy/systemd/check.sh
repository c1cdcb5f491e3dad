#!/usr/bin/env bash
# Checks Colony's systemd units with `systemd-analyze verify`: every key known, every value
# parsed, the units loadable. The binaries' paths are pointed at stand-ins in a temporary
# directory (verify insists that ExecStart's program exists). Any message fails the check:
# systemd only warns about an unknown key or a bad value. Part of the README's test command;
# skipped with a note where systemd-analyze is missing.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "systemd units: not checked (systemd-analyze is missing)"
  exit 0
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/bin"
for unit in *.service; do
  program=$(sed -n 's#^ExecStart=/usr/local/bin/\([^ ]*\).*#\1#p' "$unit")
  [ -n "$program" ] || { echo "$unit: no ExecStart under /usr/local/bin" >&2; exit 1; }
  printf '#!/bin/sh\n' >"$scratch/bin/$program"
  chmod +x "$scratch/bin/$program"
  sed "s#/usr/local/bin/#$scratch/bin/#g" "$unit" >"$scratch/$unit"
done
if ! out=$(systemd-analyze verify "$scratch"/*.service 2>&1) || [ -n "$out" ]; then
  echo "$out" >&2
  echo "systemd units: verify failed" >&2
  exit 1
fi
echo "systemd units: $(ls ./*.service | wc -l) verified"
