#!/usr/bin/env bash
# Runs a command against a real local Colony cluster: starts deploy/local/run.sh (one
# gateway, two shards with a replica each, Sentinels, the archiver, SecantusDB) on free ports,
# waits until it serves, runs the command with COLONY_GATEWAY, COLONY_GAME_TOKEN and
# COLONY_ADMIN_TOKEN set, then stops the cluster. The clients' suites run under it.
#
#   bash clients/with-cluster.sh <command> [args...]
#
# When COLONY_GATEWAY is already set, the command runs against that gateway and nothing is
# started (e.g. a cluster you keep running with `bash deploy/local/run.sh`; its tokens are
# the defaults below). The cluster uses the binaries of the workspace's debug build
# (`cargo build --workspace --bins --all-features`, a no-op after `bash .ci/test`'s `cargo test`), or those in
# COLONY_LOCAL_BIN_DIR.
set -euo pipefail
if [ "$#" -eq 0 ]; then
  echo "usage: bash clients/with-cluster.sh <command> [args...]" >&2
  exit 2
fi
export COLONY_GAME_TOKEN=${COLONY_GAME_TOKEN:-local-game-token-0001}
export COLONY_ADMIN_TOKEN=${COLONY_ADMIN_TOKEN:-local-admin-token-0001}
if [ -n "${COLONY_GATEWAY:-}" ]; then
  exec "$@"
fi

root=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${COLONY_LOCAL_BIN_DIR:-}" ]; then
  (cd "$root" && cargo build --quiet --locked --workspace --bins --all-features)
  export COLONY_LOCAL_BIN_DIR=${CARGO_TARGET_DIR:-$root/target}/debug
fi
export COLONY_LOCAL_SHARDS=${COLONY_LOCAL_SHARDS:-2}
export COLONY_LOCAL_REPLICAS=${COLONY_LOCAL_REPLICAS:-1}
export COLONY_LOCAL_PROMETHEUS=0
log=$(mktemp "${TMPDIR:-/tmp}/colony-client-cluster.XXXXXX")
cluster=""
stop_cluster() {
  if [ -n "$cluster" ] && kill -0 "$cluster" 2>/dev/null; then
    kill -TERM "$cluster" 2>/dev/null || true
    wait "$cluster" 2>/dev/null || true
  fi
  rm -f "$log"
}
trap stop_cluster EXIT

# A base port below the kernel's ephemeral range; run.sh refuses a taken port, so a base
# already in use is simply tried again with another.
started=""
for _ in 1 2 3 4 5; do
  base=$((12000 + (RANDOM % 180) * 50))
  COLONY_LOCAL_BASE_PORT=$base bash "$root/deploy/local/run.sh" >"$log" 2>&1 &
  cluster=$!
  for _ in $(seq 1 1200); do
    if grep -q '^Colony is running' "$log"; then started=yes; break; fi
    if ! kill -0 "$cluster" 2>/dev/null; then break; fi
    sleep 0.1
  done
  if [ -n "$started" ]; then break; fi
  if kill -0 "$cluster" 2>/dev/null; then
    echo "the local cluster did not start within two minutes:" >&2
    cat "$log" >&2
    exit 1
  fi
  if ! grep -q 'is in use' "$log"; then
    echo "the local cluster failed to start:" >&2
    cat "$log" >&2
    exit 1
  fi
done
if [ -z "$started" ]; then
  echo "no free ports for the local cluster after five tries" >&2
  exit 1
fi
export COLONY_GATEWAY=127.0.0.1:$((base + 400))
export COLONY_ADMIN_HTTP=127.0.0.1:$((base + 401))
echo "with-cluster: gateway $COLONY_GATEWAY" >&2
status=0
"$@" || status=$?
exit "$status"
