#!/usr/bin/env bash
# Airflow for the embedded default: `airflow standalone` (SQLite, LocalExecutor) with AIRFLOW_HOME at
# the repository root.
#
#   scripts/airflow.sh up      migrate the DB, start standalone in the background, wait until healthy
#   scripts/airflow.sh down    stop the standalone this folder started (its whole process group)
#   scripts/airflow.sh status  say whether it runs
#   scripts/airflow.sh dags    list DAGs over the REST API; fail on import errors
#
# Settings: AIRFLOW_PORT (default 8080). Per-machine secrets (the API's JWT secret, the admin
# password) are generated once into .local/airflow/ and never committed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$repo}"
export PATH="$repo/.venv/bin:$PATH"  # standalone starts its components as `airflow ...` by name
state="$AIRFLOW_HOME/.local/airflow"
pidfile="$state/standalone.pid"
log="$state/standalone.log"
port="${AIRFLOW_PORT:-8080}"
export AIRFLOW_PORT="$port"
export AIRFLOW__API__PORT="$port"
export AIRFLOW__API__BASE_URL="http://127.0.0.1:$port"
export FLYWHEEL_AIRFLOW_URL="http://127.0.0.1:$port"

# The Kafka connection the control-topic trigger (and flywheel's tasks) use, unless one is configured.
if [ -z "${AIRFLOW_CONN_KAFKA_DEFAULT:-}" ]; then
  AIRFLOW_CONN_KAFKA_DEFAULT="$(printf '{"conn_type": "kafka", "extra": {"bootstrap.servers": "%s", "group.id": "flywheel-alarm-watcher", "auto.offset.reset": "latest"}}' "${FLYWHEEL_KAFKA_BOOTSTRAP:-127.0.0.1:9092}")"
  export AIRFLOW_CONN_KAFKA_DEFAULT
fi

say() { printf 'airflow: %s\n' "$*" >&2; }

secrets() {
  mkdir -p "$state"
  [ -s "$state/jwt_secret" ] || python3 -c 'import secrets; print(secrets.token_urlsafe(32))' >"$state/jwt_secret"
  if [ ! -s "$state/passwords.json" ]; then
    python3 -c 'import json, secrets; print(json.dumps({"admin": secrets.token_urlsafe(12)}))' >"$state/passwords.json"
  fi
  chmod 600 "$state/jwt_secret" "$state/passwords.json"
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["admin"])' "$state/passwords.json" >"$state/admin-password"
  AIRFLOW__API_AUTH__JWT_SECRET="$(cat "$state/jwt_secret")"
  export AIRFLOW__API_AUTH__JWT_SECRET
}

running_pid() {
  [ -f "$pidfile" ] || return 1
  local pid; pid="$(cat "$pidfile")"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  local cmdline; cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline")"
  [[ "$cmdline" == *"airflow standalone"* ]] || return 1
  echo "$pid"
}

up() {
  secrets
  if pid="$(running_pid)"; then
    say "already running (pid $pid) on $FLYWHEEL_AIRFLOW_URL"
  else
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      say "port $port is taken by another process: set AIRFLOW_PORT to a free port"; exit 1
    fi
    say "migrating the metadata DB ($AIRFLOW_HOME/airflow.db)"
    airflow db migrate >"$state/migrate.log" 2>&1 || { tail -n 30 "$state/migrate.log" >&2; exit 1; }
    say "starting standalone on $FLYWHEEL_AIRFLOW_URL (log: $log)"
    setsid nohup airflow standalone >"$log" 2>&1 </dev/null &
    echo $! >"$pidfile"
  fi
  if ! flywheel airflow wait-healthy; then
    say "not healthy; last lines of $log:"; tail -n 30 "$log" >&2; exit 1
  fi
}

# Members of the standalone's process group still alive (orphaned executor workers of a scheduler
# that died, say): the leader's exit does not end them.
group_alive() { pgrep -g "$1" >/dev/null 2>&1; }

down() {
  local pid
  if ! pid="$(running_pid)"; then say "not running"; rm -f "$pidfile"; return 0; fi
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
  for _ in $(seq 1 60); do
    if ! kill -0 "$pid" 2>/dev/null; then
      break
    fi
    sleep 0.5
  done
  for _ in $(seq 1 20); do
    group_alive "$pid" || { rm -f "$pidfile"; say "stopped (pid $pid)"; return 0; }
    kill -TERM -- "-$pid" 2>/dev/null || true
    sleep 0.5
  done
  say "standalone's processes did not stop; killing its process group"
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) if pid="$(running_pid)"; then say "running (pid $pid) on $FLYWHEEL_AIRFLOW_URL"; else say "not running"; exit 3; fi ;;
  dags) secrets; flywheel airflow dags --expect feature_drain model_rollback ;;
  *) echo "usage: $0 up|down|status|dags" >&2; exit 2 ;;
esac
