#!/usr/bin/env bash
# Starts a local Colony cluster on this machine: three Redis shards, each a master with two
# replicas in the safe profile (deploy/redis/redis-safe.conf: a master takes writes only while
# a replica is in sync, so with two the promoted master of a failover keeps one and writes go
# on; with one they stop until the old master rejoins), three Sentinels watching every
# shard (deploy/redis/sentinel.conf), a MongoDB-wire server (SecantusDB, data in the
# cluster's directory), the gateway(s) with their admin HTTP endpoints (masters found through
# the Sentinels, writes acknowledged once a replica has them), and the archiver (players idle
# for a minute move to MongoDB and come back when accessed). Prints every address and the
# development tokens.
#
#   bash deploy/local/run.sh          # keep it running; Ctrl-C stops everything
#   bash deploy/local/run.sh --demo   # also run a 30-second load test, print its report, stop
#   bash deploy/local/run.sh --chaos  # a 60-second load test while masters are killed and
#                                     # paused, a gateway is killed and MongoDB is stopped
#   bash deploy/local/run.sh --cluster [--demo | --chaos]
#                                     # the same on a Redis Cluster instead of Sentinel shards:
#                                     # COLONY_LOCAL_SHARDS masters (at least 3) with their
#                                     # replicas, failing over by the cluster's own election
#   bash deploy/local/run.sh --cluster --reshard
#                                     # a load test through two gateways while colony-admin
#                                     # adds a master (and its replicas) and moves a third of
#                                     # the slots onto it; the move's window is shaded in the
#                                     # report
#
# Ctrl-C (or the end of the demo) stops everything and removes the cluster's files.
#
# Every process is started by a script in the cluster's control directory (printed), which
# chaos mode uses to start a killed process again: <name>.start starts it in the background
# with its arguments added, <name>.pid holds its process id (see loadtest/src/control.rs).
#
# Environment: COLONY_LOCAL_REPLICAS (replicas per shard, default 2), COLONY_LOCAL_BASE_PORT
# (default 7000): shard i's Redis servers use BASE+(REPLICAS+1)*i onwards (master first), the
# Sentinels BASE+100..BASE+102 (with --cluster: no Sentinels; node k's cluster bus BASE+200+k), SecantusDB BASE+300, gateway g BASE+400+10g and its admin
# endpoint BASE+401+10g, the archiver's admin endpoint BASE+402, Prometheus BASE+500 (when
# installed; COLONY_LOCAL_PROMETHEUS=0 leaves it out). COLONY_LOCAL_SHARDS
# (default 3), COLONY_LOCAL_GATEWAYS (default 1, 2 with --chaos), COLONY_LOCAL_IDLE_SECS
# (when players count as inactive: default 60, 10 with --demo and --chaos so that the load
# test's returning players are archived and restored), COLONY_DEMO_SECONDS (default 30, 60 with
# --chaos, 300 with --reshard), COLONY_RESHARD_SHARE (with --reshard: the share of the slots
# moved, 1/N, default 3), COLONY_CHAOS_EVERY (default 10: seconds between faults), COLONY_LOCAL_BIN_DIR
# (use the colony-* binaries there instead of building them), COLONY_LOCAL_KEEP (keep the
# cluster's directory, with every log, after stopping), COLONY_LOG (the gateways' and the
# archiver's log filter, kept when chaos mode restarts them).
set -euo pipefail
cd "$(dirname "$0")/../.."

mode=up
topology=sentinel
usage="usage: bash deploy/local/run.sh [--cluster] [--demo | --chaos] | --cluster --reshard"
for arg in "$@"; do
  case "$arg" in
    --demo | --chaos | --reshard)
      if [ "$mode" != up ]; then
        echo "$usage" >&2
        exit 2
      fi
      mode=$arg
      ;;
    --cluster) topology=cluster ;;
    *)
      echo "$usage" >&2
      exit 2
      ;;
  esac
done
if [ "$mode" = --reshard ] && [ "$topology" != cluster ]; then
  echo "--reshard moves slots of a Redis Cluster: give --cluster too" >&2
  exit 2
fi

bash .ci/setup
if [ -n "${COLONY_LOCAL_BIN_DIR:-}" ]; then
  bin=$(cd "$COLONY_LOCAL_BIN_DIR" && pwd)
else
  cargo build --release --locked --workspace --bins
  bin=$(pwd)/target/release
fi
tools=${COLONY_TOOLS_DIR:-$HOME/.cache/colony}

base=${COLONY_LOCAL_BASE_PORT:-7000}
shards=${COLONY_LOCAL_SHARDS:-3}
replicas=${COLONY_LOCAL_REPLICAS:-2}
per_shard=$((replicas + 1))
if [ "$topology" = cluster ] && [ "$shards" -lt 3 ]; then
  # A cluster fails a master over by the vote of a majority of masters.
  echo "a Redis Cluster needs at least 3 masters (COLONY_LOCAL_SHARDS=$shards)" >&2
  exit 2
fi
if [ "$mode" = --chaos ] || [ "$mode" = --reshard ]; then default_gateways=2; else default_gateways=1; fi
if [ "$mode" = up ]; then default_idle=60; else default_idle=10; fi
gateways=${COLONY_LOCAL_GATEWAYS:-$default_gateways}
archiver_admin_port=$((base + 402))
mongo_port=$((base + 300))
dir=$(mktemp -d "${TMPDIR:-/tmp}/colony-local.XXXXXX")
dir=$(cd "$dir" && pwd)
control=$dir/control
mkdir -p "$control"
config=$control/colony.toml

# Stops the processes whose pid files are given: SIGTERM (and SIGCONT, for a paused one),
# then SIGKILL whatever is still there after ten seconds. The pid files are current:
# processes restarted by chaos mode rewrote theirs.
stop_processes() {
  local pids=() file pid
  for file in "$@"; do
    if [ -f "$file" ]; then pids+=("$(cat "$file")"); fi
  done
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; kill -CONT "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 200); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
  done
}

stop() {
  trap - EXIT INT TERM
  echo
  echo "stopping the local cluster"
  # The gateways and the archiver first, so that they drain while Redis is still there.
  shopt -s nullglob
  stop_processes "$control"/gateway-*.pid "$control"/archiver-*.pid
  stop_processes "$control"/*.pid
  if [ -n "${COLONY_LOCAL_KEEP:-}" ]; then
    echo "the cluster's files and logs are kept in $dir"
  else
    rm -rf "$dir"
  fi
}
trap stop EXIT
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

need_free() { # port...
  local port
  for port in "$@"; do
    if ! port_free "$port"; then
      echo "port $port is in use; set COLONY_LOCAL_BASE_PORT to another base" >&2
      exit 1
    fi
  done
}

# Writes $control/<name>.start, which starts the command in the background (arguments of the
# script added) with its output appended to <log>, and records its pid in $control/<name>.pid;
# then runs it.
launch() { # name log command...
  local name=$1 log=$2
  shift 2
  {
    echo '#!/usr/bin/env bash'
    echo "# Starts $name in the background; arguments are added to its command line."
    # The log filter the cluster was started with, also when chaos mode restarts it.
    if [ -n "${COLONY_LOG:-}" ]; then printf 'export COLONY_LOG=%q\n' "$COLONY_LOG"; fi
    printf '%q ' "$@"
    printf '"$@" >>%q 2>&1 </dev/null &\n' "$log"
    printf 'echo "$!" >%q\n' "$control/$name.pid"
  } >"$control/$name.start"
  bash "$control/$name.start"
}

wait_port() { # port name
  local pid
  for _ in $(seq 1 400); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    pid=$(cat "$control/$2.pid")
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$2 exited; its log is in $dir" >&2
      exit 1
    fi
    sleep 0.05
  done
  echo "$2 did not listen on port $1; its log is in $dir" >&2
  exit 1
}

start_redis() { # port role-args...
  local port=$1
  shift
  need_free "$port"
  mkdir -p "$dir/redis-$port"
  # A copy per server: Sentinel rewrites the file of a server it reconfigures.
  cp deploy/redis/redis-safe.conf "$dir/redis-$port/redis.conf"
  launch "redis-$port" "$dir/redis-$port/out.log" redis-server "$dir/redis-$port/redis.conf" \
    --port "$port" --bind 127.0.0.1 --dir "$dir/redis-$port" --daemonize no \
    --logfile "$dir/redis-$port/redis.log" "$@"
  wait_port "$port" "redis-$port"
}

# A Redis Cluster node: the safe profile plus the cluster's settings Colony requires (one
# master's failure stops only that master's slots; a failover within about 3 s).
start_cluster_node() { # index
  local port=$((base + $1))
  need_free $((base + 200 + $1))
  start_redis "$port" --cluster-enabled yes --cluster-config-file nodes.conf \
    --cluster-port $((base + 200 + $1)) --cluster-node-timeout 2000 \
    --cluster-require-full-coverage no
}

wait_synced() { # replica-port
  for _ in $(seq 1 400); do
    if redis-cli -p "$1" info replication 2>/dev/null | grep -q '^master_link_status:up'; then
      return 0
    fi
    sleep 0.05
  done
  echo "the replica on port $1 did not sync; see $dir/redis-$1/redis.log" >&2
  exit 1
}

render_sentinel() { # port master-name master-port [lines-only]
  sed -e "s|{{PORT}}|$1|g" -e "s|{{DIR}}|$dir/sentinel-$1|g" -e "s|{{MASTER_NAME}}|$2|g" \
    -e "s|{{MASTER_HOST}}|127.0.0.1|g" -e "s|{{MASTER_PORT}}|$3|g" deploy/redis/sentinel.conf |
    if [ -n "${4:-}" ]; then grep '^sentinel '; else cat; fi
}

{
  echo "[gateway]"
  echo "listen = \"127.0.0.1:$((base + 400))\""
  echo "admin_listen = \"127.0.0.1:$((base + 401))\""
  echo "archiver_admin = \"127.0.0.1:$archiver_admin_port\""
  echo "[[gateway.tokens]]"
  echo "name = \"local-game\""
  echo "token = \"local-game-token-0001\""
  echo "role = \"game\""
  echo "[[gateway.tokens]]"
  echo "name = \"local-admin\""
  echo "token = \"local-admin-token-0001\""
  echo "role = \"admin\""
  echo "[redis]"
  echo "acknowledge = \"replicated\""
  echo "[archive]"
  echo "mongodb_uris = [\"mongodb://127.0.0.1:$mongo_port/?directConnection=true\"]"
  echo "inactive_after_secs = ${COLONY_LOCAL_IDLE_SECS:-$default_idle}"
  echo "scan_interval_secs = 5"
  echo "checkpoint_interval_secs = 30"
  echo "admin_listen = \"127.0.0.1:$archiver_admin_port\""
} >"$config"

need_free "$mongo_port"
# On disk (in the cluster's directory) and synced on commit, so that a stopped MongoDB comes
# back with what it acknowledged.
launch "mongodb-$mongo_port" "$dir/secantusd.log" "$tools/secantus/bin/secantusd-py" \
  --host 127.0.0.1 --port "$mongo_port" --storage-path "$dir/mongodb" --sync-on-commit \
  --log-level WARNING

if [ "$topology" = cluster ]; then
  nodes=$((shards * per_shard))
  addresses=()
  for ((k = 0; k < nodes; k++)); do
    start_cluster_node "$k"
    addresses+=("127.0.0.1:$((base + k))")
  done
  # The first $shards nodes become masters with the slots split evenly, the others their
  # replicas (redis-cli chooses which replica follows which master).
  redis-cli --cluster create "${addresses[@]}" --cluster-replicas "$replicas" --cluster-yes \
    >"$dir/cluster-create.log" 2>&1 || {
    echo "redis-cli --cluster create failed; see $dir/cluster-create.log" >&2
    exit 1
  }
  # Formed once every node says the cluster is ok and lists every replica as one (the roles
  # travel by gossip), and every replica is in sync (the safe profile's masters take writes
  # only then; the gateways' start-up check counts each master's replicas).
  for ((k = 0; k < nodes; k++)); do
    port=$((base + k))
    formed=""
    for _ in $(seq 1 600); do
      if redis-cli -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' &&
        [ "$(redis-cli -p "$port" cluster nodes 2>/dev/null | grep -c slave)" -eq $((shards * replicas)) ]; then
        formed=yes
        break
      fi
      sleep 0.05
    done
    if [ -z "$formed" ]; then
      echo "the cluster did not form as node $port sees it; see $dir/redis-$port/redis.log" >&2
      exit 1
    fi
    if redis-cli -p "$port" role 2>/dev/null | head -1 | grep -q slave; then wait_synced "$port"; fi
  done
  redis-cli -p "$base" cluster nodes | awk '
    { sub(/@.*/, "", $2); address[$1] = $2 }
    $3 ~ /master/ { slots[$1] = $9 }
    $3 ~ /slave/ { replicas[$4] = replicas[$4] (replicas[$4] ? ", " : "") $2 }
    END { for (id in slots) print "  master " address[id] " slots " slots[id] ", replicas " replicas[id] }' |
    sort -b -k4,4n
  {
    echo "[cluster]"
    seeds=""
    for address in "${addresses[@]}"; do seeds+="${seeds:+, }\"$address\""; done
    echo "seeds = [$seeds]"
  } >>"$config"
  echo "Redis Cluster: $shards masters, $replicas replicas each (seeds ${addresses[*]})"
  if [ "$mode" = --reshard ]; then
    # The master (and its replicas) colony-admin adds while the load test runs: started now,
    # members of nothing yet.
    for ((k = nodes; k < nodes + per_shard; k++)); do start_cluster_node "$k"; done
  fi
else
  for ((i = 0; i < shards; i++)); do
    master=$((base + per_shard * i))
    start_redis "$master"
    listed=""
    for ((r = 1; r <= replicas; r++)); do
      start_redis $((master + r)) --replicaof 127.0.0.1 "$master"
      listed+="${listed:+, }127.0.0.1:$((master + r))"
    done
    # In the safe profile a master takes writes only once a replica is in sync.
    for ((r = 1; r <= replicas; r++)); do wait_synced $((master + r)); done
    echo "shard-$i: master 127.0.0.1:$master, replicas $listed"
  done

  sentinel_addresses=""
  for ((s = 0; s < 3; s++)); do
    port=$((base + 100 + s))
    need_free "$port"
    mkdir -p "$dir/sentinel-$port"
    file="$dir/sentinel-$port/sentinel.conf"
    render_sentinel "$port" shard-0 "$base" >"$file"
    for ((i = 1; i < shards; i++)); do
      render_sentinel "$port" "shard-$i" $((base + per_shard * i)) lines-only >>"$file"
    done
    launch "sentinel-$port" "$dir/sentinel-$port/out.log" redis-sentinel "$file" \
      --logfile "$dir/sentinel-$port/sentinel.log"
    sentinel_addresses+="${sentinel_addresses:+, }\"127.0.0.1:$port\""
  done
  for ((s = 0; s < 3; s++)); do wait_port $((base + 100 + s)) "sentinel-$((base + 100 + s))"; done
  echo "sentinels: 127.0.0.1:$((base + 100)), 127.0.0.1:$((base + 101)), 127.0.0.1:$((base + 102))"

  for ((i = 0; i < shards; i++)); do
    {
      echo "[[shards]]"
      echo "name = \"shard-$i\""
      echo "sentinel = { master_name = \"shard-$i\", addresses = [$sentinel_addresses] }"
      listed=""
      for ((r = 1; r <= replicas; r++)); do
        listed+="${listed:+, }\"127.0.0.1:$((base + per_shard * i + r))\""
      done
      echo "replicas = [$listed]"
    } >>"$config"
  done
fi

gateway_list=""
admin_targets=""
for ((g = 0; g < gateways; g++)); do
  port=$((base + 400 + 10 * g))
  admin_port=$((port + 1))
  need_free "$port" "$admin_port"
  # One configuration file; each gateway's addresses come from the environment.
  launch "gateway-$port" "$dir/gateway-$port.log" env \
    "COLONY__GATEWAY__LISTEN=127.0.0.1:$port" "COLONY__GATEWAY__ADMIN_LISTEN=127.0.0.1:$admin_port" \
    "$bin/colony-gateway" --config "$config"
  wait_port "$admin_port" "gateway-$port"
  gateway_list+="${gateway_list:+,}127.0.0.1:$port"
  admin_targets+="${admin_targets:+, }\"127.0.0.1:$admin_port\""
done

wait_port "$mongo_port" "mongodb-$mongo_port"
need_free "$archiver_admin_port"
launch "archiver-$archiver_admin_port" "$dir/archiver.log" "$bin/colony-archiver" --config "$config"
wait_port "$archiver_admin_port" "archiver-$archiver_admin_port"

# A real Prometheus scraping every gateway and the archiver, with Colony's alert rules, when it
# is installed (`.ci/setup` installs it) and not turned off.
prometheus_info="not started (install Debian's prometheus, or COLONY_LOCAL_PROMETHEUS was 0)"
if [ "${COLONY_LOCAL_PROMETHEUS:-1}" != 0 ] && command -v prometheus >/dev/null 2>&1; then
  prometheus_port=$((base + 500))
  need_free "$prometheus_port"
  cat >"$dir/prometheus.yml" <<PROMETHEUS
global:
  scrape_interval: 2s
  evaluation_interval: 5s
rule_files:
  - $PWD/deploy/prometheus/colony.rules.yml
scrape_configs:
  - job_name: colony-gateway
    static_configs:
      - targets: [$admin_targets]
  - job_name: colony-archiver
    static_configs:
      - targets: ["127.0.0.1:$archiver_admin_port"]
PROMETHEUS
  launch "prometheus-$prometheus_port" "$dir/prometheus.log" prometheus \
    "--config.file=$dir/prometheus.yml" "--storage.tsdb.path=$dir/prometheus-data" \
    "--web.listen-address=127.0.0.1:$prometheus_port"
  wait_port "$prometheus_port" "prometheus-$prometheus_port"
  prometheus_info="http://127.0.0.1:$prometheus_port  (alerts: /alerts)"
fi

cat <<INFO

Colony is running.
  gateways (protobuf/TCP) $gateway_list
  console                 http://127.0.0.1:$((base + 401))/admin/console  (admin token as the password; gateway g at port +10g)
  admin HTTP              http://127.0.0.1:$((base + 401))/admin/status  (admin token; /metrics /healthz /readyz open)
  archiver admin          http://127.0.0.1:$archiver_admin_port/admin/status  (admin token; /metrics /healthz open)
  MongoDB (SecantusDB)    mongodb://127.0.0.1:$mongo_port/?directConnection=true
  Prometheus              $prometheus_info
  tokens                  game: local-game-token-0001   admin: local-admin-token-0001
  configuration           $config
  control directory       $control  (logs in $dir)
INFO

# The demo's traffic: 1,000 players in play, and 2,000 who come back now and then, long enough
# after their last visit to have been archived.
load=(--gateway "$gateway_list" --token local-game-token-0001 --players 1000 --cold-players 2000
  --mix login=5,friends=30,currency=30,write=15,trade=10,idle=5,return=5 --warmup 2 --out loadtest-report)
case "$mode" in
  --demo)
    echo "Running a ${COLONY_DEMO_SECONDS:-30}-second load test against it."
    "$bin/colony-loadtest" "${load[@]}" --duration "${COLONY_DEMO_SECONDS:-30}" &&
      status=0 || status=$?
    exit "$status"
    ;;
  --chaos)
    echo "Running a ${COLONY_DEMO_SECONDS:-60}-second load test with a fault every ${COLONY_CHAOS_EVERY:-10} seconds."
    "$bin/colony-loadtest" "${load[@]}" --duration "${COLONY_DEMO_SECONDS:-60}" \
      --chaos all --control "$control" --chaos-every "${COLONY_CHAOS_EVERY:-10}" &&
      status=0 || status=$?
    exit "$status"
    ;;
  --reshard)
    seconds=${COLONY_DEMO_SECONDS:-300}
    share=${COLONY_RESHARD_SHARE:-3}
    echo "Running a ${seconds}-second load test; colony-admin adds a master and moves 1/$share of the slots onto it."
    windows=$dir/windows.tsv
    : >"$windows"
    "$bin/colony-loadtest" "${load[@]}" --duration "$seconds" --windows "$windows" &
    loadtest=$!
    # Traffic first (its warm-up and a stretch measured without a move), then the move.
    sleep 15
    new_master=127.0.0.1:$((base + nodes))
    # 1/share of the slots: the top of each master's range.
    spec=$(redis-cli -p "$base" cluster nodes | awk -v share="$share" '$3 ~ /master/ && $9 ~ /^[0-9]+-[0-9]+$/ {
      split($9, r, "-"); n = r[2] - r[1] + 1; printf "%s%d-%d", sep, r[2] - int(n / share) + 1, r[2]; sep = "," }')
    started=$(date +%s%3N)
    printf 'reshard\t%s\t-\tadding %s and moving slots %s\n' "$started" "$new_master" "$spec" >"$windows"
    moved=""
    (
      "$bin/colony-admin" --config "$config" add-node "$new_master" &&
        for ((k = nodes + 1; k < nodes + per_shard; k++)); do
          "$bin/colony-admin" --config "$config" add-node "127.0.0.1:$((base + k))" --replica-of "$new_master" || exit 1
          wait_synced $((base + k))
        done &&
        "$bin/colony-admin" --config "$config" reshard --slots "$spec" --to "$new_master" \
          --players-per-second 0
    ) >"$dir/reshard.log" 2>&1 && moved=yes
    ended=$(date +%s%3N)
    outcome=$(tail -1 "$dir/reshard.log")
    printf 'reshard\t%s\t%s\t%s\n' "$started" "$ended" "${outcome:-no output}" >"$windows.new"
    mv "$windows.new" "$windows"
    if [ -n "$moved" ]; then verdict=done; else verdict="FAILED, see $dir/reshard.log"; fi
    echo "colony-admin: $outcome ($verdict) in $(((ended - started) / 1000)) s"
    "$bin/colony-admin" --config "$config" status | head -20
    wait "$loadtest" && status=0 || status=$?
    if [ -z "$moved" ]; then status=1; fi
    exit "$status"
    ;;
esac
echo "Press Ctrl-C to stop."
# Until Ctrl-C or SIGTERM. Not until some process exits: chaos mode kills and restarts them.
while :; do sleep 1; done
