#!/usr/bin/env bash
# `make demo`: the whole chain on a laptop, no Redis or Kubernetes needed.
#
#   Alertmanager ──webhook──► Envoy + signalgate filter ──► sidecar ──► ./target/demo/remediationrequests/
#   (127.0.0.1:9093)          (127.0.0.1:8080)                (127.0.0.1:8081, in-memory store,
#                                                               admin 127.0.0.1:9090)
#
# It starts the three, pushes a small storm into Alertmanager's API (15 alerts
# in namespace "shop", 2 in "payments", 1 in "search"), waits until the
# resources are written, prints what to look at, and runs until Ctrl-C.
#
# Environment (all optional):
#   DEMO_EXIT=1                  exit after printing (smoke test) instead of waiting for Ctrl-C
#   DEMO_DIR                     where resources, logs and Alertmanager's data go (target/demo)
#   DEMO_LISTEN_PORT             Envoy listener (8080)
#   DEMO_ENVOY_ADMIN_PORT        Envoy admin (9901)
#   DEMO_SIDECAR_PORT            sidecar signal API (8081)
#   DEMO_SIDECAR_ADMIN_PORT      sidecar admin: /metrics, /readyz (9090)
#   DEMO_ALERTMANAGER_PORT       Alertmanager web/API (9093)
#   SIGNALGATE_SIDECAR_BIN       sidecar binary (target/release/signalgate-sidecar)
#   SIGNALGATE_FILTER_WASM       filter (target/wasm32-wasip1/release/signalgate_filter.wasm)
#   ENVOY_BIN                    Envoy (.venv/bin/envoy)
#   ALERTMANAGER_BIN             Alertmanager (prometheus-alertmanager on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."

LISTEN_PORT=${DEMO_LISTEN_PORT:-8080}
ENVOY_ADMIN_PORT=${DEMO_ENVOY_ADMIN_PORT:-9901}
SIDECAR_PORT=${DEMO_SIDECAR_PORT:-8081}
SIDECAR_ADMIN_PORT=${DEMO_SIDECAR_ADMIN_PORT:-9090}
AM_PORT=${DEMO_ALERTMANAGER_PORT:-9093}
OUT=${DEMO_DIR:-target/demo}
SIDECAR=${SIGNALGATE_SIDECAR_BIN:-target/release/signalgate-sidecar}
WASM=${SIGNALGATE_FILTER_WASM:-target/wasm32-wasip1/release/signalgate_filter.wasm}
ENVOY=${ENVOY_BIN:-.venv/bin/envoy}
ALERTMANAGER=${ALERTMANAGER_BIN:-$(command -v prometheus-alertmanager || true)}

say() { echo "demo: $*"; }
die() { echo "demo: $*" >&2; exit 1; }

[ -x "$SIDECAR" ] || die "$SIDECAR is missing: run 'make build' first"
[ -e "$WASM" ] || die "$WASM is missing: run 'make build' first"
[ -x "$ENVOY" ] || die "$ENVOY is missing: run 'make deps' first"
[ -n "$ALERTMANAGER" ] && [ -x "$ALERTMANAGER" ] ||
    die "prometheus-alertmanager is missing: run 'make deps' (Debian package prometheus-alertmanager)"
command -v curl >/dev/null || die "curl is needed"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RESOURCES=$OUT/remediationrequests
# A fresh demo every time: only the demo's own subdirectories are removed.
rm -rf "$RESOURCES" "$OUT/alertmanager-data"
mkdir -p "$RESOURCES" "$OUT/alertmanager-data"

pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- sidecar: in-memory store, directory sink --------------------------------
SIGNALGATE_LISTEN=127.0.0.1:$SIDECAR_PORT \
SIGNALGATE_ADMIN_LISTEN=127.0.0.1:$SIDECAR_ADMIN_PORT \
SIGNALGATE_SINK=dir:$RESOURCES \
SIGNALGATE_REDIS_URL= \
    "$SIDECAR" >"$OUT/sidecar.log" 2>&1 &
pids+=($!)

# --- Envoy + filter: envoy/envoy.template.yaml with the demo's ports ----------
# over_limit_status 503: Alertmanager retries a 503 but drops a 429 (docs/operating.md).
PLUGIN_CONFIG='{"requests_per_minute": 600, "burst": 100, "source": "remote_address", "over_limit_status": 503}'
WASM_ABS=$(cd "$(dirname "$WASM")" && pwd)/$(basename "$WASM")
sed -e "s|{{LISTEN_PORT}}|$LISTEN_PORT|" \
    -e "s|{{ADMIN_PORT}}|$ENVOY_ADMIN_PORT|" \
    -e "s|{{UPSTREAM_PORT}}|$SIDECAR_PORT|" \
    -e "s|{{WASM_PATH}}|$WASM_ABS|" \
    -e "s|{{PLUGIN_CONFIG}}|$PLUGIN_CONFIG|" \
    envoy/envoy.template.yaml >"$OUT/envoy.yaml"
"$ENVOY" -c "$OUT/envoy.yaml" --concurrency 1 --disable-hot-restart \
    --log-level warn --component-log-level wasm:info >"$OUT/envoy.log" 2>&1 &
pids+=($!)

# --- Alertmanager: one webhook receiver, grouped by namespace -----------------
cat >"$OUT/alertmanager.yml" <<YAML
global:
  resolve_timeout: 1h
route:
  receiver: signalgate
  group_by: [namespace]
  group_wait: 1s
  group_interval: 5s
  repeat_interval: 10s
receivers:
- name: signalgate
  webhook_configs:
  - url: http://127.0.0.1:$LISTEN_PORT/api/v1/signals/prometheus
    send_resolved: false
YAML
"$ALERTMANAGER" --config.file="$OUT/alertmanager.yml" \
    --storage.path="$OUT/alertmanager-data" \
    --web.listen-address=127.0.0.1:$AM_PORT \
    --cluster.listen-address= >"$OUT/alertmanager.log" 2>&1 &
pids+=($!)

# --- wait until all three are ready --------------------------------------------
ready() { curl -fsS -o /dev/null "$1" 2>/dev/null; }
for i in $(seq 1 600); do
    if ready "http://127.0.0.1:$SIDECAR_ADMIN_PORT/readyz" &&
        ready "http://127.0.0.1:$ENVOY_ADMIN_PORT/ready" &&
        ready "http://127.0.0.1:$AM_PORT/-/ready"; then
        break
    fi
    for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || die "a component exited; see $OUT/*.log"
    done
    [ "$i" -lt 600 ] || die "not ready after 60 s; see $OUT/*.log"
    sleep 0.1
done
say "Alertmanager, Envoy + filter and the sidecar are up"

# --- a small storm, pushed the way Prometheus pushes alerts ----------------------
alert() { # alertname namespace pod severity
    printf '{"labels":{"alertname":"%s","namespace":"%s","pod":"%s","severity":"%s"},' "$1" "$2" "$3" "$4"
    printf '"annotations":{"summary":"%s on %s/%s"},"generatorURL":"http://prometheus.demo/graph"}' "$1" "$2" "$3"
}
alerts=()
for i in $(seq 1 15); do alerts+=("$(alert KubePodCrashLooping shop "cart-$i" critical)"); done
alerts+=("$(alert KubePodNotReady payments api-1 warning)")
alerts+=("$(alert KubePodNotReady payments api-2 warning)")
alerts+=("$(alert KubeContainerOOMKilled search indexer-0 critical)")
body="[$(IFS=,; echo "${alerts[*]}")]"
curl -fsS -X POST -H 'Content-Type: application/json' --data-binary "$body" \
    "http://127.0.0.1:$AM_PORT/api/v2/alerts" >/dev/null
say "pushed ${#alerts[@]} alerts into Alertmanager (15 in namespace shop)"

# 10 individual resources + 1 storm resource in shop, 2 in payments, 1 in search.
expected=14
for i in $(seq 1 300); do
    n=$(find "$RESOURCES" -name '*.json' | wc -l)
    [ "$n" -ge "$expected" ] && break
    [ "$i" -lt 300 ] || die "only $n of $expected resources after 30 s; see $OUT/*.log"
    sleep 0.1
done
say "$n resources written"

cat <<MSG

signalgate demo is running.

  Alertmanager          http://127.0.0.1:$AM_PORT    (re-sends every group every ~10 s)
  Envoy edge            http://127.0.0.1:$LISTEN_PORT/api/v1/signals/prometheus
  Sidecar admin         http://127.0.0.1:$SIDECAR_ADMIN_PORT/metrics
  Resources             $RESOURCES/<namespace>/<name>.json
  Logs                  $OUT/{sidecar,envoy,alertmanager}.log

What to look at:
  ls $RESOURCES/*/
      shop: 10 rr-* resources (the storm threshold) and ONE storm-* resource
      aggregating the other 5 alerts; payments: 2; search: 1
  grep -h '"occurrenceCount"' $RESOURCES/shop/*.json
      grows each time Alertmanager re-sends the group: repeats are counted, never new resources
  grep -A8 '"storm"' $RESOURCES/shop/storm-*.json
      alertCount and the affectedResources list
  curl -s http://127.0.0.1:$SIDECAR_ADMIN_PORT/metrics | grep '^signalgate_signals_total'
      signals by outcome: created, duplicate, storm_started, storm_aggregated
  curl -s http://127.0.0.1:$ENVOY_ADMIN_PORT/stats/prometheus | grep '^signalgate_'
      the filter's counters: accepted, rate_limited, invalid, ...
  curl -s http://127.0.0.1:$AM_PORT/metrics | grep '^alertmanager_notifications.*webhook'
      Alertmanager's view: notifications sent and failed

MSG

if [ "${DEMO_EXIT:-0}" = 1 ]; then
    say "DEMO_EXIT=1: stopping"
    exit 0
fi
echo "Ctrl-C stops everything."
wait "${pids[@]}"
