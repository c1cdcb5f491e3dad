#!/usr/bin/env bash
# Every client's suite (TypeScript, Python) against one real local cluster started by
# clients/with-cluster.sh (or the gateway COLONY_GATEWAY names). Part of the test command.
set -euo pipefail
cd "$(dirname "$0")"
if [ -z "${COLONY_GATEWAY:-}" ]; then
  exec bash with-cluster.sh bash "$PWD/test.sh" "$@"
fi
(cd typescript && npm test --silent)
bash python/test.sh
