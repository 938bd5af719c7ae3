#!/usr/bin/env bash
# `make run`: the main job on one machine. Starts the local Kafka (unless KAFKA_BOOTSTRAP_SERVERS
# points elsewhere), one worker, and the simulator in live mode with the `demo` scenario (faults
# and hard negatives), then prints findings as they arrive. Ctrl-C stops the worker and the
# simulator; `make kafka-down` stops Kafka.
#   SCENARIO=demo   simulator preset (python -m pipeline simulate --list-scenarios)
#   SPEED=10        event seconds per wall second (the 20-minute demo takes 2 minutes)
#   METRICS_PORT=9464
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
RUN_DIR=.cache/run
mkdir -p "$RUN_DIR"
SCENARIO=${SCENARIO:-demo}
SPEED=${SPEED:-10}
export METRICS_PORT=${METRICS_PORT:-9464}

# The demo runs event time faster than the wall clock: a second run's records would be older
# than what the first left in the topics and the detector state, and all late. The local broker
# starts clean by itself; with another broker, say how to.
previous=""
[[ -e "$RUN_DIR/started" || -d .cache/state ]] && previous=1
if [[ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
  if [[ -n "$previous" ]]; then
    echo "make run: a previous run left its topics and detector state; starting clean (make kafka-reset)"
    bash deploy/kafka/kafka.sh reset
    rm -rf .cache/state "$RUN_DIR"
    mkdir -p "$RUN_DIR"
  fi
  bash deploy/kafka/kafka.sh up
  export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:${KAFKA_PORT:-9092}
elif [[ -n "$previous" ]]; then
  echo "make run: a previous run on $KAFKA_BOOTSTRAP_SERVERS left its topics and detector state;"
  echo "          this run's records will be older than that state (late). Start clean with a new"
  echo "          PIPELINE_APP_ID and new OTLP_SPANS_TOPIC / OTLP_METRICS_TOPIC, or delete them."
fi
touch "$RUN_DIR/started"

pids=()
cleanup() {
  trap - EXIT INT TERM
  [[ ${#pids[@]} -gt 0 ]] && kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  echo
  echo "stopped the worker and the simulator (logs in $RUN_DIR/); Kafka is still up: make kafka-down"
}
trap cleanup EXIT INT TERM

"$PY" -m pipeline worker >"$RUN_DIR/worker.log" 2>&1 &
pids+=($!)
"$PY" -m pipeline simulate --scenario "$SCENARIO" --mode live --speed "$SPEED" \
  --labels "$RUN_DIR/labels.jsonl" >"$RUN_DIR/simulate.log" 2>&1 &
pids+=($!)

cat <<MSG
worker:     python -m pipeline worker            (log: $RUN_DIR/worker.log)
metrics:    http://127.0.0.1:$METRICS_PORT/metrics
simulator:  scenario '$SCENARIO', live at ${SPEED}x (log: $RUN_DIR/simulate.log,
            injected faults and hard negatives: $RUN_DIR/labels.jsonl)
dead letters: python -m pipeline tail --deadletters
MSG
"$PY" -m pipeline tail --incidents --metrics-url "http://127.0.0.1:$METRICS_PORT/metrics" \
  --status-every 15
