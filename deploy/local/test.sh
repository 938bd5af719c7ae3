#!/usr/bin/env bash
# `make test`: unit tests, deployment checks (promtool, amtool, manifests), then integration
# tests on a real Kafka broker, Prometheus and Alertmanager.
# Uses KAFKA_BOOTSTRAP_SERVERS when set; otherwise starts the local broker (and stops it
# afterwards if this script started it). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
bash deploy/local/test-tools.sh  # Prometheus + Alertmanager (Debian) for the alerting tests
started=""
if [[ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
  if ! bash deploy/kafka/kafka.sh status >/dev/null 2>&1; then
    bash deploy/kafka/kafka.sh up
    started=1
  fi
  export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:${KAFKA_PORT:-9092}
fi
cleanup() { if [[ -n "$started" ]]; then bash deploy/kafka/kafka.sh down || true; fi; }
trap cleanup EXIT
echo "tests use Kafka at $KAFKA_BOOTSTRAP_SERVERS"
# Three test processes (pytest-xdist), a file each at a time: the integration tests own their
# topics and consumer groups and mostly wait, so they overlap well on two cores. The longest
# files go first (conftest.py), in that order, not xdist's (most tests first).
"$PY" -m pytest -n "${TEST_PROCESSES:-3}" --dist loadfile --no-loadscope-reorder pipeline tests "$@"
