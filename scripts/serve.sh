#!/usr/bin/env bash
# Start the local Prefect server on 127.0.0.1:4200 and serve the deployment gpo-self-improve/local.
# In another shell:  PREFECT_API_URL=http://127.0.0.1:4200/api .venv/bin/prefect deployment run gpo-self-improve/local
# Stop with Ctrl-C (stops both). The server's state lives in .cache/prefect (inside the project).
set -euo pipefail
cd "$(dirname "$0")/.."
export PREFECT_HOME="$PWD/.cache/prefect" PREFECT_API_URL="http://127.0.0.1:4200/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true
mkdir -p "$PREFECT_HOME"
.venv/bin/prefect server start --host 127.0.0.1 --port 4200 > "$PREFECT_HOME/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 90); do
  if .venv/bin/python -c "import urllib.request,sys; urllib.request.urlopen('$PREFECT_API_URL/health', timeout=2)" 2>/dev/null; then break; fi
  sleep 1
done
echo "Prefect UI: http://127.0.0.1:4200  (server log: $PREFECT_HOME/server.log)"
exec .venv/bin/python -m flows.self_improve serve --name "${1:-local}"
