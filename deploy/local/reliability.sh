#!/usr/bin/env bash
# `make reliability` / `make reliability-quick`: python -m benchmarks.reliability on a real
# broker (started here unless KAFKA_BOOTSTRAP_SERVERS is set, stopped afterwards if started
# here). The outage scenario starts a second broker of its own on free ports. Arguments go to
# the benchmark (--quick, --only ..., --seed N). The last line of stdout is one JSON object.
set -euo pipefail
cd "$(dirname "$0")/../.."
started=""
if [[ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
  if ! bash deploy/kafka/kafka.sh status >/dev/null 2>&1; then
    bash deploy/kafka/kafka.sh up >&2
    started=1
  fi
  export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:${KAFKA_PORT:-9092}
else
  bash deploy/kafka/kafka.sh fetch >&2  # the outage scenario's broker needs the jars
fi
cleanup() { if [[ -n "$started" ]]; then bash deploy/kafka/kafka.sh down >&2 || true; fi; }
trap cleanup EXIT
.venv/bin/python -m benchmarks.reliability "$@"
