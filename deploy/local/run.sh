#!/usr/bin/env bash
# Starts a local Colony cluster on this machine: three Redis shards, each a master with one
# replica in the safe profile (deploy/redis/redis-safe.conf), three Sentinels watching every
# shard (deploy/redis/sentinel.conf), a MongoDB-wire server (SecantusDB, in memory), the
# gateway with its admin HTTP endpoint (masters found through the Sentinels, writes
# acknowledged once a replica has them), and the archiver (players idle for a minute move to
# MongoDB and come back when accessed). Prints every address and the development tokens.
#
#   bash deploy/local/run.sh          # keep it running; Ctrl-C stops everything
#   bash deploy/local/run.sh --demo   # also run a 30-second load test, print its report, stop
#
# Ctrl-C (or the end of the demo) stops everything and removes the cluster's files.
# Environment: COLONY_LOCAL_BASE_PORT (default 7000): Redis uses BASE..BASE+2*SHARDS-1, the
# Sentinels BASE+100..BASE+102, SecantusDB BASE+300, the gateway BASE+400 and its admin
# endpoint BASE+401, the archiver's admin endpoint BASE+402. COLONY_LOCAL_SHARDS (default 3),
# COLONY_LOCAL_IDLE_SECS (default 60: when players count as inactive), COLONY_DEMO_SECONDS
# (default 30).
set -euo pipefail
cd "$(dirname "$0")/../.."

demo=false
if [ "${1:-}" = "--demo" ]; then demo=true; fi

bash .ci/setup
cargo build --release --locked --workspace --bins
tools=${COLONY_TOOLS_DIR:-$HOME/.cache/colony}

base=${COLONY_LOCAL_BASE_PORT:-7000}
shards=${COLONY_LOCAL_SHARDS:-3}
gateway_port=$((base + 400))
admin_port=$((base + 401))
archiver_admin_port=$((base + 402))
mongo_port=$((base + 300))
dir=$(mktemp -d "${TMPDIR:-/tmp}/colony-local.XXXXXX")
pids=()

stop() {
  trap - EXIT INT TERM
  echo
  echo "stopping the local cluster"
  for pid in ${archiver_pid:-} ${gateway_pid:-}; do
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap stop EXIT INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_redis() { # port role-args...
  local port=$1; shift
  if ! port_free "$port"; then
    echo "port $port is in use; set COLONY_LOCAL_BASE_PORT to another base" >&2
    exit 1
  fi
  mkdir -p "$dir/redis-$port"
  # A copy per server: Sentinel rewrites the file of a server it reconfigures.
  cp deploy/redis/redis-safe.conf "$dir/redis-$port/redis.conf"
  redis-server "$dir/redis-$port/redis.conf" --port "$port" --bind 127.0.0.1 \
    --dir "$dir/redis-$port" --daemonize no --logfile "$dir/redis-$port/redis.log" "$@" &
  pids+=($!)
}

render_sentinel() { # port master-name master-port [lines-only]
  sed -e "s|{{PORT}}|$1|g" -e "s|{{DIR}}|$dir/sentinel-$1|g" -e "s|{{MASTER_NAME}}|$2|g" \
    -e "s|{{MASTER_HOST}}|127.0.0.1|g" -e "s|{{MASTER_PORT}}|$3|g" deploy/redis/sentinel.conf |
    if [ -n "${4:-}" ]; then grep '^sentinel '; else cat; fi
}

wait_redis() { # port
  for _ in $(seq 1 200); do
    if redis-cli -p "$1" ping >/dev/null 2>&1; then return 0; fi
    sleep 0.05
  done
  echo "redis on port $1 did not start; see $dir/redis-$1/redis.log" >&2
  exit 1
}

config="$dir/colony.toml"
{
  echo "[gateway]"
  echo "listen = \"127.0.0.1:$gateway_port\""
  echo "admin_listen = \"127.0.0.1:$admin_port\""
  echo "[[gateway.tokens]]"
  echo "name = \"local-game\""
  echo "token = \"local-game-token-0001\""
  echo "role = \"game\""
  echo "[[gateway.tokens]]"
  echo "name = \"local-admin\""
  echo "token = \"local-admin-token-0001\""
  echo "role = \"admin\""
} > "$config"

{
  echo "[redis]"
  echo "acknowledge = \"replicated\""
  echo "[archive]"
  echo "mongodb_uris = [\"mongodb://127.0.0.1:$mongo_port/?directConnection=true\"]"
  echo "inactive_after_secs = ${COLONY_LOCAL_IDLE_SECS:-60}"
  echo "scan_interval_secs = 5"
  echo "checkpoint_interval_secs = 30"
  echo "admin_listen = \"127.0.0.1:$archiver_admin_port\""
} >> "$config"

if ! port_free "$mongo_port"; then echo "port $mongo_port is in use; set COLONY_LOCAL_BASE_PORT" >&2; exit 1; fi
"$tools/secantus/bin/secantusd-py" --host 127.0.0.1 --port "$mongo_port" --storage-path :memory: \
  --log-level WARNING > "$dir/secantusd.log" 2>&1 &
pids+=($!)

for ((i = 0; i < shards; i++)); do
  master=$((base + 2 * i))
  replica=$((master + 1))
  start_redis "$master"
  wait_redis "$master"
  start_redis "$replica" --replicaof 127.0.0.1 "$master"
  wait_redis "$replica"
  echo "shard-$i: master 127.0.0.1:$master, replica 127.0.0.1:$replica"
done

sentinel_addresses=""
for ((s = 0; s < 3; s++)); do
  port=$((base + 100 + s))
  if ! port_free "$port"; then echo "port $port is in use; set COLONY_LOCAL_BASE_PORT" >&2; exit 1; fi
  mkdir -p "$dir/sentinel-$port"
  file="$dir/sentinel-$port/sentinel.conf"
  render_sentinel "$port" shard-0 "$base" > "$file"
  for ((i = 1; i < shards; i++)); do
    render_sentinel "$port" "shard-$i" $((base + 2 * i)) lines-only >> "$file"
  done
  redis-sentinel "$file" --logfile "$dir/sentinel-$port/sentinel.log" &
  pids+=($!)
  sentinel_addresses+="${sentinel_addresses:+, }\"127.0.0.1:$port\""
done
for ((s = 0; s < 3; s++)); do wait_redis $((base + 100 + s)); done
echo "sentinels: 127.0.0.1:$((base + 100)), 127.0.0.1:$((base + 101)), 127.0.0.1:$((base + 102))"

for ((i = 0; i < shards; i++)); do
  {
    echo "[[shards]]"
    echo "name = \"shard-$i\""
    echo "sentinel = { master_name = \"shard-$i\", addresses = [$sentinel_addresses] }"
    echo "replicas = [\"127.0.0.1:$((base + 2 * i + 1))\"]"
  } >> "$config"
done

if ! port_free "$gateway_port" || ! port_free "$admin_port"; then
  echo "port $gateway_port or $admin_port is in use; set COLONY_LOCAL_BASE_PORT" >&2
  exit 1
fi
target/release/colony-gateway --config "$config" &
gateway_pid=$!
for _ in $(seq 1 200); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$admin_port") 2>/dev/null; then break; fi
  if ! kill -0 "$gateway_pid" 2>/dev/null; then echo "the gateway exited" >&2; exit 1; fi
  sleep 0.05
done

for _ in $(seq 1 200); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$mongo_port") 2>/dev/null; then break; fi
  sleep 0.05
done
target/release/colony-archiver --config "$config" &
archiver_pid=$!

cat <<INFO

Colony is running.
  gateway (protobuf/TCP)  127.0.0.1:$gateway_port
  admin HTTP              http://127.0.0.1:$admin_port/admin/status  (/metrics /healthz /readyz)
  archiver admin          http://127.0.0.1:$archiver_admin_port/admin/status  (/metrics /healthz)
  MongoDB (SecantusDB)    mongodb://127.0.0.1:$mongo_port/?directConnection=true
  tokens                  game: local-game-token-0001   admin: local-admin-token-0001
  configuration           $config
INFO

if $demo; then
  echo "Running a ${COLONY_DEMO_SECONDS:-30}-second load test against it."
  target/release/colony-loadtest --gateway "127.0.0.1:$gateway_port" \
    --token local-game-token-0001 --duration "${COLONY_DEMO_SECONDS:-30}" --warmup 2 \
    --out loadtest-report && status=0 || status=$?
  exit "$status"
fi
echo "Press Ctrl-C to stop."
wait "$gateway_pid"
