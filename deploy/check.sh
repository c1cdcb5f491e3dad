#!/usr/bin/env bash
# Checks every deploy file that can be checked without a cluster, with the real tools: the
# Prometheus configuration and rules (promtool, with the rules' unit tests), the systemd units
# (systemd-analyze verify), the compose file (docker-compose config), and the Kubernetes
# manifests (structural checks, deploy/kubernetes/check.py). The Colony configurations inside
# the compose and Kubernetes files are loaded by a Rust test (tests/deploy_files.rs). Part of
# the README's test command; .ci/setup installs the tools.
set -euo pipefail
cd "$(dirname "$0")"
bash prometheus/check.sh
bash systemd/check.sh
if command -v docker-compose >/dev/null 2>&1; then
  docker-compose -f compose/compose.yaml config -q
  echo "compose file: valid ($(docker-compose version --short))"
else
  echo "compose file: not checked (docker-compose is missing)"
fi
/usr/bin/python3 kubernetes/check.py
