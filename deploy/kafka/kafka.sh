#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, combined broker+controller) for development
# and CI, without Docker: the broker jars come from Maven Central via deploy/kafka/pom.xml.
#
# Usage: deploy/kafka/kafka.sh {fetch|up|down|reset|status}
#
#   fetch   download the Kafka jars into $KAFKA_CACHE_DIR/libs-$KAFKA_VERSION (once)
#   up      fetch if needed, format storage if needed, start the broker in the
#           background and wait until it answers Kafka protocol requests
#   down    stop the broker (SIGTERM, then SIGKILL after 30 s)
#   reset   down, then delete the data dir (the jars stay cached)
#   status  say whether the broker is running (exit 0 if running, 3 if not)
#
# Environment (all optional):
#   KAFKA_VERSION            Kafka version (default: <kafka.version> in pom.xml)
#   KAFKA_CACHE_DIR          jars, config, log, pid (default: <repo>/.cache/kafka)
#   KAFKA_DATA_DIR           log.dirs / KRaft metadata (default: $KAFKA_CACHE_DIR/data)
#   KAFKA_HOST               listen/advertised host (default: 127.0.0.1)
#   KAFKA_PORT               client (PLAINTEXT) port (default: 9092)
#   KAFKA_CONTROLLER_PORT    KRaft controller port (default: 9093)
#   KAFKA_NUM_PARTITIONS     default partitions for auto-created topics (default: 4)
#   KAFKA_LOG_RETENTION_HOURS   (default: -1, no time limit: replayed telemetry carries old
#                               event timestamps, which time-based retention would delete
#                               within a minute; the size limit below bounds the disk instead)
#   KAFKA_LOG_RETENTION_BYTES   per partition (default: 268435456 = 256 MiB)
#   KAFKA_LOG_SEGMENT_BYTES     (default: 16777216 = 16 MiB)
#   KAFKA_HEAP_OPTS          JVM heap flags (default: -Xms256m -Xmx512m)
#   KAFKA_JVM_OPTS           extra JVM flags appended to the broker command line
#   KAFKA_EXTRA_CONFIG       file whose lines are appended to server.properties
#   KAFKA_START_TIMEOUT      seconds to wait for the broker in `up` (default: 90)
#   KAFKA_LOG_LEVEL          root log level of the broker (default: INFO)
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd -- "$SCRIPT_DIR/../.." && pwd -P)"
POM="$SCRIPT_DIR/pom.xml"

die() { echo "kafka.sh: error: $*" >&2; exit 1; }
info() { echo "kafka.sh: $*"; }

abspath() {
  # Absolute path without requiring it to exist (relative paths are taken from $PWD).
  case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s\n' "$PWD/$1" ;;
  esac
}

pom_default_version() {
  sed -n 's:.*<kafka\.version>\([^<]*\)</kafka\.version>.*:\1:p' "$POM" | head -n 1
}

KAFKA_VERSION="${KAFKA_VERSION:-$(pom_default_version)}"
[[ -n "$KAFKA_VERSION" ]] || die "could not read <kafka.version> from $POM; set KAFKA_VERSION"
CACHE_DIR="$(abspath "${KAFKA_CACHE_DIR:-$REPO_ROOT/.cache/kafka}")"
DATA_DIR="$(abspath "${KAFKA_DATA_DIR:-$CACHE_DIR/data}")"
LIBS_DIR="$CACHE_DIR/libs-$KAFKA_VERSION"
LIBS_MARKER="$LIBS_DIR/.fetched"
CONF_FILE="$CACHE_DIR/server.properties"
LOG4J_FILE="$CACHE_DIR/log4j2.xml"
LOG_FILE="$CACHE_DIR/kafka.log"
PID_FILE="$CACHE_DIR/kafka.pid"

HOST="${KAFKA_HOST:-127.0.0.1}"
PORT="${KAFKA_PORT:-9092}"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
NUM_PARTITIONS="${KAFKA_NUM_PARTITIONS:-4}"
RETENTION_HOURS="${KAFKA_LOG_RETENTION_HOURS:--1}"
RETENTION_BYTES="${KAFKA_LOG_RETENTION_BYTES:-268435456}"
SEGMENT_BYTES="${KAFKA_LOG_SEGMENT_BYTES:-16777216}"
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
LOG_LEVEL="${KAFKA_LOG_LEVEL:-INFO}"
BOOTSTRAP="$HOST:$PORT"

INSTALL_HINT="install with: apt-get install -y openjdk-17-jre-headless maven"

require_java() {
  command -v java >/dev/null 2>&1 || die "java not found (Kafka $KAFKA_VERSION needs Java 17+); $INSTALL_HINT"
  local spec major
  spec="$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = //p' | head -n 1)"
  major="${spec%%.*}"
  if [[ "$major" =~ ^[0-9]+$ ]] && (( major < 17 )); then
    die "java $spec found, but Kafka $KAFKA_VERSION brokers need Java 17+; $INSTALL_HINT"
  fi
}

require_mvn() {
  command -v mvn >/dev/null 2>&1 || die "mvn (Maven) not found; it is needed once to fetch the Kafka jars; $INSTALL_HINT"
}

# --- fetch -------------------------------------------------------------------

cmd_fetch() {
  if [[ -f "$LIBS_MARKER" ]]; then
    [[ "${1:-}" == "--quiet-if-cached" ]] || info "Kafka $KAFKA_VERSION jars already cached in $LIBS_DIR"
    return 0
  fi
  require_mvn
  mkdir -p "$CACHE_DIR"
  local tmp="$CACHE_DIR/.libs-$KAFKA_VERSION.tmp.$$" mvn_log="$CACHE_DIR/mvn-fetch.log"
  rm -rf "$tmp"
  info "fetching Kafka $KAFKA_VERSION jars from Maven Central into $LIBS_DIR ..."
  if ! mvn -B -q -f "$POM" dependency:copy-dependencies \
      "-Dkafka.version=$KAFKA_VERSION" "-DoutputDirectory=$tmp" >"$mvn_log" 2>&1; then
    rm -rf "$tmp"
    tail -n 40 "$mvn_log" >&2 || true
    die "mvn failed to fetch Kafka $KAFKA_VERSION (full output: $mvn_log)"
  fi
  compgen -G "$tmp/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null \
    || { rm -rf "$tmp"; die "mvn succeeded but kafka_2.13-$KAFKA_VERSION.jar is missing (see $mvn_log)"; }
  date -u +%FT%TZ >"$tmp/.fetched"
  rm -rf "$LIBS_DIR"
  mv "$tmp" "$LIBS_DIR"
  info "cached $(find "$LIBS_DIR" -name '*.jar' | wc -l) jars in $LIBS_DIR"
}

# --- process helpers -----------------------------------------------------------

# Print the recorded PID if it belongs to a live Kafka broker; clean a stale pid file.
running_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(tr -dc '0-9' <"$PID_FILE")"
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null \
      && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep 'kafka\.Kafka' >/dev/null; then
    echo "$pid"
    return 0
  fi
  rm -f "$PID_FILE"
  return 1
}

port_in_use() {
  # true if something accepts TCP connections on $1:$2
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

java_cp() { echo "$LIBS_DIR/*"; }

write_log4j_config() {
  cat >"$LOG4J_FILE" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by deploy/kafka/kafka.sh; everything goes to stdout (-> kafka.log) -->
<Configuration status="WARN">
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="${LOG_LEVEL}"><AppenderRef ref="STDOUT"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="kafka.authorizer.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="org.apache.kafka.clients" level="WARN"/>
  </Loggers>
</Configuration>
EOF
}

write_server_properties() {
  cat >"$CONF_FILE" <<EOF
# generated by deploy/kafka/kafka.sh on $(date -u +%FT%TZ); edits are overwritten by \`up\`
# Single-node KRaft: this process is both broker and controller (static quorum of one).
node.id=1
process.roles=broker,controller
controller.quorum.voters=1@$HOST:$CONTROLLER_PORT
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT

log.dirs=$DATA_DIR

# single node: every internal topic has one replica
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1

group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
delete.topic.enable=true
num.partitions=$NUM_PARTITIONS

# small footprint for a dev box
log.retention.hours=$RETENTION_HOURS
log.retention.ms=$([[ "$RETENTION_HOURS" == "-1" ]] && echo -1 || echo $((RETENTION_HOURS * 3600000)))
log.retention.bytes=$RETENTION_BYTES
log.segment.bytes=$SEGMENT_BYTES
log.retention.check.interval.ms=60000
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
EOF
  if [[ -n "${KAFKA_EXTRA_CONFIG:-}" ]]; then
    [[ -f "$KAFKA_EXTRA_CONFIG" ]] || die "KAFKA_EXTRA_CONFIG=$KAFKA_EXTRA_CONFIG does not exist"
    { echo; echo "# from KAFKA_EXTRA_CONFIG=$KAFKA_EXTRA_CONFIG"; cat "$KAFKA_EXTRA_CONFIG"; } >>"$CONF_FILE"
  fi
}

format_storage_if_needed() {
  if [[ -f "$DATA_DIR/meta.properties" ]]; then
    return 0
  fi
  mkdir -p "$DATA_DIR"
  local cluster_id out
  cluster_id="$(java -Dlog4j2.configurationFile="$LOG4J_FILE" -cp "$(java_cp)" \
    kafka.tools.StorageTool random-uuid 2>>"$LOG_FILE" | tail -n 1)"
  [[ -n "$cluster_id" ]] || die "kafka.tools.StorageTool random-uuid printed nothing (see $LOG_FILE)"
  info "formatting $DATA_DIR (cluster id $cluster_id)"
  if ! out="$(java -Dlog4j2.configurationFile="$LOG4J_FILE" -cp "$(java_cp)" \
      kafka.tools.StorageTool format --ignore-formatted -t "$cluster_id" -c "$CONF_FILE" 2>&1)"; then
    echo "$out" >&2
    die "storage format failed"
  fi
  echo "$out" >>"$LOG_FILE"
}

# Succeeds if the broker answers a Kafka protocol request (metadata / api versions).
probe_broker() {
  local py="$REPO_ROOT/.venv/bin/python"
  if [[ -x "$py" ]] && "$py" -c 'import aiokafka' >/dev/null 2>&1; then
    "$py" - "$BOOTSTRAP" >/dev/null 2>&1 <<'EOF'
import asyncio, sys
from aiokafka.admin import AIOKafkaAdminClient

async def main(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await asyncio.wait_for(admin.start(), 8)
        await asyncio.wait_for(admin.describe_cluster(), 8)
    finally:
        await admin.close()

asyncio.run(main(sys.argv[1]))
EOF
  else
    timeout 30 java -Xmx128m -Dlog4j2.configurationFile="$LOG4J_FILE" -Dlog4j2.level=ERROR -cp "$(java_cp)" \
      org.apache.kafka.tools.BrokerApiVersionsCommand --bootstrap-server "$BOOTSTRAP" >/dev/null 2>&1
  fi
}

# --- commands ------------------------------------------------------------------

cmd_up() {
  local pid
  if pid="$(running_pid)"; then
    info "broker already running (pid $pid); bootstrap: $BOOTSTRAP"
    return 0
  fi
  require_java
  cmd_fetch --quiet-if-cached
  if port_in_use "$HOST" "$PORT"; then
    die "$HOST:$PORT is already in use by another process (not our broker); stop it or set KAFKA_PORT"
  fi
  if port_in_use "$HOST" "$CONTROLLER_PORT"; then
    die "$HOST:$CONTROLLER_PORT is already in use by another process; stop it or set KAFKA_CONTROLLER_PORT"
  fi
  mkdir -p "$CACHE_DIR"
  [[ -f "$LOG_FILE" ]] && mv -f "$LOG_FILE" "$LOG_FILE.1"
  : >"$LOG_FILE"
  write_log4j_config
  write_server_properties
  format_storage_if_needed

  local start_s=$SECONDS
  # shellcheck disable=SC2086  # HEAP_OPTS / KAFKA_JVM_OPTS are intentionally word-split
  setsid java $HEAP_OPTS \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$LOG4J_FILE" -Dkafka.logs.dir="$CACHE_DIR" \
    ${KAFKA_JVM_OPTS:-} \
    -cp "$(java_cp)" kafka.Kafka "$CONF_FILE" \
    </dev/null >>"$LOG_FILE" 2>&1 &
  pid=$!
  echo "$pid" >"$PID_FILE"
  info "started Kafka $KAFKA_VERSION (pid $pid), log: $LOG_FILE; waiting up to ${START_TIMEOUT}s ..."

  while true; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PID_FILE"
      echo "----- last 40 lines of $LOG_FILE -----" >&2
      tail -n 40 "$LOG_FILE" >&2 || true
      die "broker process $pid exited during startup"
    fi
    if port_in_use "$HOST" "$PORT" && probe_broker; then
      break
    fi
    if (( SECONDS - start_s >= START_TIMEOUT )); then
      echo "----- last 40 lines of $LOG_FILE -----" >&2
      tail -n 40 "$LOG_FILE" >&2 || true
      die "broker (pid $pid) did not answer on $BOOTSTRAP within ${START_TIMEOUT}s; it is left running, see $LOG_FILE or run: $0 down"
    fi
    sleep 1
  done
  info "broker ready after $((SECONDS - start_s))s"
  info "bootstrap: $BOOTSTRAP"
}

cmd_down() {
  local pid
  if ! pid="$(running_pid)"; then
    info "broker not running"
    return 0
  fi
  info "stopping broker (pid $pid) ..."
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    info "broker did not stop within 30s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  rm -f "$PID_FILE"
  info "broker stopped"
}

cmd_reset() {
  cmd_down
  if [[ -d "$DATA_DIR" ]]; then
    rm -rf -- "$DATA_DIR"
    info "deleted data dir $DATA_DIR"
  else
    info "no data dir at $DATA_DIR"
  fi
}

cmd_status() {
  local pid
  if pid="$(running_pid)"; then
    info "running (pid $pid), Kafka $KAFKA_VERSION, bootstrap: $BOOTSTRAP"
    return 0
  fi
  info "not running"
  return 3
}

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

case "${1:-}" in
  fetch) cmd_fetch ;;
  up | start) cmd_up ;;
  down | stop) cmd_down ;;
  reset) cmd_reset ;;
  status) cmd_status ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
