#!/usr/bin/env bash
# Checks Colony's Prometheus files with the real promtool: the configuration (and the rule
# files it names) parse, and every rule's unit tests pass. Part of the README's test command.
set -euo pipefail
cd "$(dirname "$0")"
promtool check config --syntax-only prometheus.yml
promtool check rules colony.rules.yml
promtool test rules colony.rules.test.yml
