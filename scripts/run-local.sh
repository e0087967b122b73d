#!/usr/bin/env bash
# Local (embedded) mode: Redis, a model, the inference API and a batch worker as plain processes.
#
#   scripts/run-local.sh         start what is not running yet; returns once the API is ready
#   scripts/run-local.sh stop    stop everything it started (by the PIDs in var/run/*.pid)
#
# Redis listens on 127.0.0.1:6379 (an already running Redis there is reused), the API on
# localhost:8080. With no production model in ./var/models, the quick model is trained first
# (a few minutes on a laptop CPU). Logs go to var/log/<name>.log.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY="$VENV/bin/python"
RUN=var/run
LOG=var/log
REDIS_PORT=6379
MODELS=${MASKFLEET_MODEL_REPOSITORY:-./var/models}
MODEL_NAME=${MASKFLEET_MODEL_NAME:-unet}
API_PORT=${MASKFLEET_PORT:-8080}

export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
export MASKFLEET_MODEL_REPOSITORY=$MODELS
# local mode: one Redis serves both roles (the cache and the durable state)
export MASKFLEET_CACHE_REDIS_URL=${MASKFLEET_CACHE_REDIS_URL:-redis://127.0.0.1:$REDIS_PORT/0}
export MASKFLEET_STATE_REDIS_URL=${MASKFLEET_STATE_REDIS_URL:-redis://127.0.0.1:$REDIS_PORT/0}
export MASKFLEET_CACHE_DIR=${MASKFLEET_CACHE_DIR:-./var/cache}
export MASKFLEET_HOST=${MASKFLEET_HOST:-127.0.0.1}
export MASKFLEET_PORT=$API_PORT
# Prometheus /metrics on its own port, as in production (never on the API port)
export MASKFLEET_METRICS_PORT=${MASKFLEET_METRICS_PORT:-9090}
# Batch jobs: read the dataset's images or ./var/jobs/in, write ./var/masks or ./var/jobs/out;
# never the dataset itself (docs/security.md)
export MASKFLEET_JOB_INPUT_PREFIXES=${MASKFLEET_JOB_INPUT_PREFIXES:-./var/data/images,./var/jobs/in}
export MASKFLEET_JOB_OUTPUT_PREFIXES=${MASKFLEET_JOB_OUTPUT_PREFIXES:-./var/masks,./var/jobs/out}
export MASKFLEET_JOB_PROTECTED_PREFIXES=${MASKFLEET_JOB_PROTECTED_PREFIXES:-./var/data,./var/models}

pid_of() { cat "$RUN/$1.pid" 2>/dev/null || true; }

running() {
  local pid
  pid=$(pid_of "$1")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

api_ready() {
  "$PY" -c 'import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=2)' "$API_PORT" \
    2>/dev/null
}

has_production() {
  "$PY" -c 'import sys
from shared.repository import ModelRepository
sys.exit(0 if ModelRepository(sys.argv[1]).stage(sys.argv[2], "production") else 1)' \
    "$MODELS" "$MODEL_NAME"
}

# start NAME COMMAND...: run in the background, detached from this terminal, PID to var/run
start() {
  local name=$1
  shift
  if running "$name"; then
    echo "$name is already running (pid $(pid_of "$name"))"
    return 0
  fi
  setsid nohup "$@" >>"$LOG/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
  echo "started $name (pid $!, log $LOG/$name.log)"
}

# wait_for NAME SECONDS CHECK...: until CHECK succeeds; fail early if NAME's process died
wait_for() {
  local name=$1 seconds=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    if ! running "$name"; then
      echo "$name exited; last lines of $LOG/$name.log:" >&2
      tail -n 20 "$LOG/$name.log" >&2
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "$name not ready after ${seconds}s; see $LOG/$name.log" >&2
      exit 1
    fi
    sleep 0.5
  done
}

stop_one() {
  local name=$1 pid
  pid=$(pid_of "$name")
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    echo "stopping $name (pid $pid)"
    kill -TERM "$pid"
    # the API drains in-flight requests and the worker finishes its chunk: give them time
    for _ in $(seq 1 80); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "$name did not stop in 40 s; killing it"
      kill -KILL "$pid"
    fi
  fi
  rm -f "$RUN/$name.pid"
}

cmd_stop() {
  for name in worker api redis; do
    stop_one "$name"
  done
}

cmd_start() {
  mkdir -p "$RUN" "$LOG" var/jobs/in var/jobs/out var/masks
  [ -x "$PY" ] || { echo "no $PY: run 'make install' first" >&2; exit 1; }

  if running redis; then
    echo "redis is already running (pid $(pid_of redis))"
  elif port_open "$REDIS_PORT"; then
    echo "reusing the Redis already listening on 127.0.0.1:$REDIS_PORT"
  else
    command -v redis-server >/dev/null || {
      echo "redis-server not found: run 'make install'" >&2; exit 1; }
    start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no
    wait_for redis 20 port_open "$REDIS_PORT"
  fi

  if ! has_production; then
    echo "no production model in $MODELS: training the quick model (log $LOG/training.log)"
    "$PY" -m training --config training/configs/quick.yaml "repository.uri=$MODELS" \
      data.uri=./var/data >>"$LOG/training.log" 2>&1 || {
      echo "training failed; last lines of $LOG/training.log:" >&2
      tail -n 20 "$LOG/training.log" >&2
      exit 1
    }
    has_production || {
      echo "training published no production version; see $LOG/training.log" >&2; exit 1; }
  fi

  start api "$PY" -m services.inference
  wait_for api 180 api_ready

  if [ -f services/worker/app.py ]; then
    start worker "$VENV/bin/celery" -A services.worker.app worker --pool=solo --concurrency=1 \
      -Q maskfleet
  fi

  cat <<EOF

maskfleet is running: API on http://localhost:$API_PORT (docs at /docs)
  curl -s -H 'Content-Type: image/jpeg' --data-binary @cat.jpg http://localhost:$API_PORT/v1/segment -o mask.png
  curl -s -F image=@cat.jpg 'http://localhost:$API_PORT/v1/segment?format=json'
stop everything with: make stop
EOF
}

case "${1:-start}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
