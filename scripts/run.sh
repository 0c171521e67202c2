#!/usr/bin/env bash
# `make run`: Envoy (with the signalgate filter) on 127.0.0.1:8080 in front of
# the sidecar on 127.0.0.1:8081, on the embedded default: in-memory store and
# the directory sink (./remediationrequests). Ctrl-C stops both.
# EDGE picks the build of the filter Envoy runs (docs/native-edge.md):
#   EDGE=wasm    (default) the proxy-wasm filter, envoy/envoy.yaml
#   EDGE=native  the dynamic module, envoy/envoy-native.yaml
set -euo pipefail
cd "$(dirname "$0")/.."

SIDECAR=target/release/signalgate-sidecar
ENVOY=.venv/bin/envoy
EDGE=${EDGE:-wasm}
case "$EDGE" in
    wasm)
        FILTER=target/wasm32-wasip1/release/signalgate_filter.wasm
        BOOTSTRAP=envoy/envoy.yaml
        LOG_COMPONENT=wasm
        COUNTERS=signalgate_
        ;;
    native)
        FILTER=target/release/libsignalgate_edge_native.so
        BOOTSTRAP=envoy/envoy-native.yaml
        LOG_COMPONENT=dynamic_modules
        COUNTERS=envoy_signalgate_
        # Envoy loads lib<name>.so from the library search path.
        export LD_LIBRARY_PATH="$PWD/target/release${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        ;;
    *)
        echo "run: EDGE=$EDGE: expected wasm or native" >&2
        exit 2
        ;;
esac
for f in "$SIDECAR" "$FILTER" "$ENVOY"; do
    [ -e "$f" ] || { echo "run: $f is missing: run 'make build' first" >&2; exit 1; }
done

export SIGNALGATE_SINK=${SIGNALGATE_SINK:-dir:./remediationrequests}
export SIGNALGATE_CHECKER_DIR=${SIGNALGATE_CHECKER_DIR:-target/checker}
"$SIDECAR" &
sidecar=$!
envoy_pid=
cleanup() {
    [ -n "$envoy_pid" ] && kill "$envoy_pid" 2>/dev/null || true
    kill -TERM "$sidecar" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

"$ENVOY" -c "$BOOTSTRAP" --log-level warn --component-log-level "$LOG_COMPONENT:info" &
envoy_pid=$!

for _ in $(seq 1 200); do
    if curl -fsS -o /dev/null http://127.0.0.1:9901/ready 2>/dev/null \
        && curl -fsS -o /dev/null http://127.0.0.1:9090/readyz 2>/dev/null; then
        break
    fi
    kill -0 "$sidecar" 2>/dev/null || { echo "run: the sidecar exited" >&2; exit 1; }
    kill -0 "$envoy_pid" 2>/dev/null || { echo "run: Envoy exited" >&2; exit 1; }
    sleep 0.1
done

cat <<MSG

signalgate is running, edge: $EDGE ($FILTER in Envoy, $BOOTSTRAP).
  Send Alertmanager webhooks to   http://127.0.0.1:8080/api/v1/signals/prometheus
  Send Kubernetes Events to       http://127.0.0.1:8080/api/v1/signals/kubernetes-event
  Resources are written to        ${SIGNALGATE_SINK#dir:}/<namespace>/<name>.json
  Payload checker page            http://127.0.0.1:9090/check/
  Sidecar metrics                 http://127.0.0.1:9090/metrics
  Envoy admin / filter counters   http://127.0.0.1:9901/stats/prometheus  (${COUNTERS}*)
Try:  scripts/send-example-alert.sh    (README "Quick start" shows the curl)
Ctrl-C stops.
MSG
wait "$envoy_pid"
