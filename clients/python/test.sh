#!/usr/bin/env bash
# The Python client's suite: installs the package into the venv (which generates the protobuf
# modules from proto/), type-checks it and the tests with mypy --strict, and runs pytest — the
# shared vectors, framing and builders, and the gateway tests against a real local cluster
# (clients/with-cluster.sh; an already set COLONY_GATEWAY is used as it is).
set -euo pipefail
cd "$(dirname "$0")"
bash venv.sh
.venv/bin/pip install -q --no-build-isolation --no-deps --force-reinstall . 2>&1 | { grep -v -i warning || true; }
.venv/bin/mypy -p colony_client
.venv/bin/mypy tests
bash ../with-cluster.sh .venv/bin/pytest -q tests
