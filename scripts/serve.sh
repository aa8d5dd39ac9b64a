#!/usr/bin/env bash
# Start the local Prefect server on 127.0.0.1:4200 and serve the deployment gpo-self-improve/local.
# In another shell:  PREFECT_API_URL=http://127.0.0.1:4200/api .venv/bin/prefect deployment run gpo-self-improve/local
# Stop with one Ctrl-C (or SIGTERM): the runner stops first (it reports to the server), then the server.
# The server's state lives in .cache/prefect (inside the project).
# GPO_PREFECT_PORT / GPO_PREFECT_HOME override the port and the state folder (the tests use both).
#
# Why the two processes run in sessions of their own (setsid) and this script forwards the stop: a
# Ctrl-C reaches the whole foreground process group at once, so the server went down while the runner
# was still talking to it (a websocket traceback, a runner that kept running, a SIGTERM that hung ≈70 s
# on the unreachable API). Here only this script gets the Ctrl-C and stops them in order, each with a
# grace period and then SIGKILL, so nothing outlives it.
set -euo pipefail
cd "$(dirname "$0")/.."
port="${GPO_PREFECT_PORT:-4200}"
export PREFECT_HOME="${GPO_PREFECT_HOME:-$PWD/.cache/prefect}" PREFECT_API_URL="http://127.0.0.1:$port/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true
mkdir -p "$PREFECT_HOME"
grace_s="${GPO_SERVE_GRACE_S:-15}"
server="" runner=""

stop_group() {  # SIGTERM to the process, up to grace_s for it to exit, then SIGKILL to its whole group
  local pid=$1
  [ -n "$pid" ] || return 0
  if kill -TERM "$pid" 2>/dev/null; then
    for _ in $(seq $((grace_s * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
stop() {
  trap - INT TERM EXIT
  stop_group "$runner"
  stop_group "$server"
}
trap 'echo "stopping the runner, then the Prefect server ..."; stop; echo "stopped."; exit 130' INT
trap 'stop; exit 143' TERM
trap stop EXIT

setsid .venv/bin/prefect server start --host 127.0.0.1 --port "$port" > "$PREFECT_HOME/server.log" 2>&1 &
server=$!
up=""
for _ in $(seq 120); do
  if ! kill -0 "$server" 2>/dev/null; then break; fi
  if .venv/bin/python -c "import urllib.request; urllib.request.urlopen('$PREFECT_API_URL/health', timeout=2)" 2>/dev/null; then
    up=1; break
  fi
  sleep 1
done
if [ -z "$up" ]; then
  echo "error: the Prefect server did not come up on 127.0.0.1:$port; its log ($PREFECT_HOME/server.log) ends:" >&2
  tail -n 20 "$PREFECT_HOME/server.log" >&2 || true
  exit 1
fi
echo "Prefect UI: http://127.0.0.1:$port  (server log: $PREFECT_HOME/server.log); Ctrl-C stops both"
setsid .venv/bin/python -m flows.self_improve serve --name "${1:-local}" &
runner=$!
status=0
wait -n "$server" "$runner" || status=$?  # returns when either one ends (or a signal runs a trap)
echo "error: the $( kill -0 "$server" 2>/dev/null && echo runner || echo 'Prefect server') exited ($status); stopping the other" >&2
stop
exit "$status"
