#!/usr/bin/env bash
# Makes clients/python/.venv with exactly the tools of requirements-dev.txt (protoc through
# grpcio-tools, the protobuf runtime, pytest, mypy), idempotently: skipped while the file is
# unchanged. Called by .ci/setup and by test.sh.
set -euo pipefail
cd "$(dirname "$0")"
lock_sum=$(sha256sum requirements-dev.txt | cut -d' ' -f1)
if [ "$(cat .venv/.colony-lock-sum 2>/dev/null)" = "$lock_sum" ]; then exit 0; fi
echo "setup: making the Python client's venv (clients/python/.venv)"
rm -rf .venv
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -r requirements-dev.txt
echo "$lock_sum" >.venv/.colony-lock-sum
