#!/usr/bin/env bash
# `make bench` / `make bench-quick`: throughput, accuracy and replay speed, on the local broker
# unless KAFKA_BOOTSTRAP_SERVERS points elsewhere. Extra arguments (e.g. --quick) go to each.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
if [[ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
  bash deploy/kafka/kafka.sh up
  export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:${KAFKA_PORT:-9092}
fi
"$PY" -m benchmarks.throughput "$@"
"$PY" -m benchmarks.accuracy "$@"
"$PY" -m benchmarks.replay_speed "$@"
