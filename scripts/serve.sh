#!/usr/bin/env bash
# gScoreCAM Serve quick start: install, build the demo archive, start TorchServe, explain a sample scene.
#
#   scripts/serve.sh          # start (idempotent) and send one request; results in out/
#   scripts/serve.sh stop     # stop exactly the server this script started
#   scripts/serve.sh status   # is it running? workers?
#
# TorchServe runs from a state folder outside the repo (key_file.json, logs, the .model_server.pid file):
#   ${GSCORECAM_STATE_DIR:-${TMPDIR:-/tmp}/gscorecam-serve-$UID}
# Overrides: GSCORECAM_TS_CONFIG (default config.properties), GSCORECAM_MODEL_STORE (default model_store/),
#            GSCORECAM_READY_TIMEOUT (seconds, default 600).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

STATE="${GSCORECAM_STATE_DIR:-${TMPDIR:-/tmp}/gscorecam-serve-$(id -u)}"
CONFIG="$(realpath "${GSCORECAM_TS_CONFIG:-$ROOT/config.properties}")"
STORE="$(realpath -m "${GSCORECAM_MODEL_STORE:-$ROOT/model_store}")"
MODEL=gscorecam
READY_TIMEOUT="${GSCORECAM_READY_TIMEOUT:-600}"
CMD="${1:-start}"

prop() { # prop KEY DEFAULT: a value from the TorchServe config file
    local v
    v="$(grep -E "^[[:space:]]*$1[[:space:]]*=" "$CONFIG" | tail -n1 | cut -d= -f2- | tr -d '[:space:]')" || true
    echo "${v:-$2}"
}
INFERENCE="$(prop inference_address http://127.0.0.1:8080)"
MANAGEMENT="$(prop management_address http://127.0.0.1:8081)"
METRICS="$(prop metrics_address http://127.0.0.1:8082)"
GRPC="$(prop grpc_inference_address 127.0.0.1):$(prop grpc_inference_port 7070)"

# TorchServe keeps its pid file in $TMPDIR and writes key_file.json in its working directory: both in $STATE.
ts_env() {
    env TMPDIR="$STATE" TEMP="$STATE" LOG_LOCATION="$STATE/logs" METRICS_LOCATION="$STATE/logs" "$@"
}
java_pid() { # the frontend this script started, if it is alive
    local pid
    [ -f "$STATE/.model_server.pid" ] || return 1
    pid="$(cat "$STATE/.model_server.pid")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q "org.pytorch.serve.ModelServer" "/proc/$pid/cmdline" 2>/dev/null \
        && echo "$pid"
}
key() { "$ROOT/.venv/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]["key"])' \
    "$STATE/key_file.json" "$1"; }

stop_server() {
    local pid
    if ! pid="$(java_pid)"; then
        echo "[serve] no server started by this script is running (state: $STATE)"
        return 0
    fi
    echo "[serve] stopping TorchServe (java pid $pid)"
    (cd "$STATE" && ts_env "$ROOT/.venv/bin/torchserve" --stop >/dev/null) || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "[serve] frontend still alive after 30s: SIGKILL $pid"
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$STATE/.model_server.pid" "$STATE/key_file.json"
    echo "[serve] stopped"
}

case "$CMD" in
stop)
    stop_server
    exit 0
    ;;
status)
    if pid="$(java_pid)"; then
        echo "[serve] running: java pid $pid, state $STATE"
        curl -sS -H "Authorization: Bearer $(key management)" "$MANAGEMENT/models/$MODEL" || true
    else
        echo "[serve] not running"
        exit 1
    fi
    exit 0
    ;;
start) ;;
*)
    echo "usage: scripts/serve.sh [start|stop|status]" >&2
    exit 2
    ;;
esac

# 1. the virtualenv (and the gRPC stubs), from the pinned requirements
scripts/setup_env.sh
command -v java >/dev/null || { echo "[serve] Java 17 is required by TorchServe (apt-get install openjdk-17-jre-headless)" >&2; exit 1; }

# 2. the demo archive, rebuilt when the handler package or the demo model changed since it was built
mkdir -p "$STORE"
MAR="$STORE/$MODEL.mar"
if [ ! -f "$MAR" ] || [ -n "$(find handler model_store/demo -type f \( -name '*.py' -o -name 'demo_clip.*' \) \
        -newer "$MAR" -print -quit)" ]; then
    echo "[serve] building $MAR (the embedded demo model)"
    .venv/bin/python scripts/build_mar.py --export-path "$STORE"
fi

# 3. TorchServe, from the state folder
mkdir -p "$STATE/logs"
if pid="$(java_pid)"; then
    echo "[serve] TorchServe already running (java pid $pid); use scripts/serve.sh stop to stop it"
else
    port="${INFERENCE##*:}"
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "[serve] port $port is taken by another program; set GSCORECAM_TS_CONFIG to a config with free ports" >&2
        exit 1
    fi
    echo "[serve] starting TorchServe: config $CONFIG, model store $STORE, state $STATE"
    (cd "$STATE" && ts_env "$ROOT/.venv/bin/torchserve" --start --ncs --ts-config "$CONFIG" --model-store "$STORE" \
        --models "$MODEL=$MODEL.mar" >"$STATE/logs/launcher.log" 2>&1)
fi

# 4. wait until a worker is READY (/ping answers before the workers are up: ask the management API instead)
started=$(date +%s)
until [ -f "$STATE/key_file.json" ] && curl -sf -H "Authorization: Bearer $(key management)" \
        "$MANAGEMENT/models/$MODEL" 2>/dev/null | grep -q '"status": "READY"'; do
    if ! java_pid >/dev/null; then
        echo "[serve] TorchServe exited; last log lines:" >&2
        tail -n 40 "$STATE/logs/ts_log.log" "$STATE/logs/model_log.log" 2>/dev/null >&2 || true
        exit 1
    fi
    if [ $(($(date +%s) - started)) -gt "$READY_TIMEOUT" ]; then
        echo "[serve] no READY worker after ${READY_TIMEOUT}s; stopping. Logs: $STATE/logs" >&2
        tail -n 40 "$STATE/logs/model_log.log" 2>/dev/null >&2 || true
        stop_server
        exit 1
    fi
    sleep 1
done
echo "[serve] worker READY after $(($(date +%s) - started))s"

# 5. one request with the bundled sample scene -> out/
if ! .venv/bin/python scripts/client.py scripts/assets/sample_scene.jpg \
    -p "a green circle" -p "a purple cross" -p "a orange square" \
    --url "$INFERENCE" --key-file "$STATE/key_file.json" --out out; then
    echo "[serve] the sample request failed; TorchServe is still running (logs: $STATE/logs; stop: scripts/serve.sh stop)" >&2
    exit 1
fi

cat <<EOF

gScoreCAM Serve is running (state, logs and key_file.json in $STATE).
  Results of the sample request: out/sample_scene.json and out/sample_scene_*.png

  Query it (token: the "inference" key of $STATE/key_file.json):
    TOKEN=\$(python3 -c 'import json; print(json.load(open("$STATE/key_file.json"))["inference"]["key"])')
    curl -H "Authorization: Bearer \$TOKEN" -F image=@scripts/assets/sample_scene.jpg -F prompt="a green circle" \\
         $INFERENCE/predictions/$MODEL
    .venv/bin/python scripts/client.py IMAGE -p "a dog" -p "a cat"          # REST, overlays in out/
    .venv/bin/python scripts/client.py IMAGE -p "a dog" --grpc              # gRPC on $GRPC
  Scale (management key):  curl -X PUT -H "Authorization: Bearer \$MKEY" "$MANAGEMENT/models/$MODEL?min_worker=2"
  Metrics:                 curl $METRICS/metrics
  Stop:                    scripts/serve.sh stop
EOF
