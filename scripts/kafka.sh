#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft, combined broker+controller) for local use and tests.
#
#   scripts/kafka.sh up       resolve jars (once), format storage (once), start, wait until it answers
#   scripts/kafka.sh down     stop the broker this folder started (and only that one)
#   scripts/kafka.sh status   say whether it runs
#
# Settings (environment):
#   KAFKA_PORT          client port (default 9092); the controller listens on KAFKA_CONTROLLER_PORT
#                       (default KAFKA_PORT+1)
#   KAFKA_DATA_DIR      data, logs and pid file (default <repo>/.local/kafka/<port>)
#   KAFKA_HEAP_OPTS     JVM heap (default -Xms256m -Xmx1g)
#   KAFKA_START_TIMEOUT seconds to wait for the broker to answer (default 90)
#
# The jars come from Maven Central through scripts/kafka/pom.xml into <repo>/.cache/kafka/<version>.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
pom="$here/kafka/pom.xml"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")"
libs="$repo/.cache/kafka/$version/libs"

port="${KAFKA_PORT:-9092}"
cport="${KAFKA_CONTROLLER_PORT:-$((port + 1))}"
data="${KAFKA_DATA_DIR:-$repo/.local/kafka/$port}"
pidfile="$data/broker.pid"
props="$data/server.properties"
log="$data/broker.log"
timeout="${KAFKA_START_TIMEOUT:-90}"

say() { printf 'kafka: %s\n' "$*" >&2; }

resolve_jars() {
  [ -f "$libs/.complete" ] && return 0
  command -v java >/dev/null || { say "java not found: install a JDK 17 or newer"; exit 1; }
  command -v mvn >/dev/null || { say "mvn not found: install Apache Maven"; exit 1; }
  say "resolving Apache Kafka $version jars from Maven Central into $libs"
  rm -rf "$libs" && mkdir -p "$libs"
  mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$libs" >&2
  touch "$libs/.complete"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The pid in our pid file is ours only if that process is a Kafka broker started with our properties.
running_pid() {
  [ -f "$pidfile" ] || return 1
  local pid; pid="$(cat "$pidfile")"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  local cmdline; cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline")"
  [[ "$cmdline" == *"kafka.Kafka $props"* ]] || return 1
  echo "$pid"
}

write_config() {
  mkdir -p "$data/log"
  cat >"$props" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$data/log
num.partitions=4
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=168
message.max.bytes=2097152
EOF
  cat >"$data/log4j2.properties" <<EOF
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
EOF
}

up() {
  if pid="$(running_pid)"; then
    say "already running (pid $pid) on 127.0.0.1:$port"
    return 0
  fi
  if port_open "$port"; then
    say "port $port is taken by another process: set KAFKA_PORT to a free port"
    exit 1
  fi
  resolve_jars
  write_config
  local cp="$libs/*"
  if [ ! -f "$data/log/meta.properties" ]; then
    local cluster_id
    cluster_id="$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
    java -cp "$cp" -Dlog4j2.configurationFile="$data/log4j2.properties" \
      kafka.tools.StorageTool format --standalone -t "$cluster_id" -c "$props" >"$data/format.log" 2>&1 \
      || { say "formatting storage failed:"; cat "$data/format.log" >&2; exit 1; }
  fi
  : >"$log"
  # shellcheck disable=SC2086
  nohup java ${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g} -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$data/log4j2.properties" \
    -cp "$cp" kafka.Kafka "$props" >"$data/stdout.log" 2>&1 </dev/null &
  local started=$!
  echo "$started" >"$pidfile"
  local deadline=$((SECONDS + timeout))
  while (( SECONDS < deadline )); do
    # Liveness by pid, not by command line: under load the child may not have exec'd java yet.
    if ! kill -0 "$started" 2>/dev/null; then
      say "broker exited during start; last lines of $data/stdout.log and $log:"
      tail -n 20 "$data/stdout.log" "$log" >&2 || true
      rm -f "$pidfile"
      exit 1
    fi
    if port_open "$port" && grep -q "Kafka Server started" "$log" 2>/dev/null; then
      say "up on 127.0.0.1:$port (pid $(cat "$pidfile"), data in $data)"
      return 0
    fi
    sleep 0.5
  done
  say "broker did not answer within ${timeout}s; see $log"
  down
  exit 1
}

down() {
  local pid
  if ! pid="$(running_pid)"; then
    say "not running on port $port"
    rm -f "$pidfile"
    return 0
  fi
  kill -TERM "$pid"
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; say "stopped (pid $pid)"; return 0; }
    sleep 0.5
  done
  say "broker did not stop in 30s; killing pid $pid"
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

status() {
  if pid="$(running_pid)"; then say "running (pid $pid) on 127.0.0.1:$port"; else say "not running on port $port"; return 3; fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  jars) resolve_jars ;;
  *) echo "usage: $0 up|down|status|jars" >&2; exit 2 ;;
esac
