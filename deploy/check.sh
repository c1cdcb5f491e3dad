#!/usr/bin/env bash
# Checks every deploy file that can be checked without a cluster, with the real tools: the
# Prometheus configuration and rules (promtool, with the rules' unit tests), the systemd units
# (systemd-analyze verify), the compose files (docker-compose config), and the Kubernetes
# manifests with their Redis Cluster variant (structural checks, deploy/kubernetes/check.py,
# and kubernetes-validate against the API's schemas). The Colony configurations inside
# the compose and Kubernetes files are loaded by a Rust test (tests/deploy_files.rs). Part of
# the README's test command; .ci/setup installs the tools.
set -euo pipefail
cd "$(dirname "$0")"
bash prometheus/check.sh
bash systemd/check.sh
if command -v docker-compose >/dev/null 2>&1; then
  docker-compose -f compose/compose.yaml config -q
  docker-compose -f compose/compose.cluster.yaml config -q
  echo "compose files (Sentinel shards, Redis Cluster): valid ($(docker-compose version --short))"
else
  echo "compose files: not checked (docker-compose is missing)"
fi
/usr/bin/python3 kubernetes/check.py
# The manifests against the Kubernetes API's own schemas (unknown fields fail), for the oldest
# version the manifests are meant for and the newest the tool knows.
validator=${COLONY_TOOLS_DIR:-$HOME/.cache/colony}/kubernetes-validate/bin/kubernetes-validate
for version in 1.29.0 1.37.0; do
  "$validator" --strict --quiet -k "$version" kubernetes/*.yaml kubernetes/cluster/*.yaml
done
echo "kubernetes manifests (and the Redis Cluster variant): valid against the API schemas of 1.29 and 1.37 ($("$validator" --version))"
