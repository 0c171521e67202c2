#!/usr/bin/env bash
# Edge benchmark: throughput and p99 latency of Envoy (one worker) for a ~4 KB
# Alertmanager webhook POST, side by side, in one run:
#   nofilter  the router only                        (envoy/envoy-nofilter.yaml)
#   native    Envoy's local_ratelimit, per source    (envoy/envoy-native-ratelimit.yaml)
#   filter    the signalgate wasm filter: per-source limit + full validation
#                                                    (envoy/envoy.template.yaml)
# Each forwards to a real upstream that reads the whole body (a second Envoy,
# envoy/bench-upstream.yaml), never a direct_response on the listener under
# test. Limits are set high enough that nothing is refused (checked).
#
# Environment: BENCH_DURATION (s, default 15), BENCH_WARMUP (s, default 3),
# BENCH_CONNECTIONS (default 16), ENVOY_BIN, SIGNALGATE_FILTER_WASM,
# CARGO_TARGET_DIR. Builds the filter (make wasm) if it is missing.
# Uses only free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${BENCH_DURATION:-15}
WARMUP=${BENCH_WARMUP:-3}
CONNECTIONS=${BENCH_CONNECTIONS:-16}
ENVOY=${ENVOY_BIN:-$ROOT/.venv/bin/envoy}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
WASM=${SIGNALGATE_FILTER_WASM:-$TARGET/wasm32-wasip1/release/signalgate_filter.wasm}
# High enough never to refuse during the run.
RATE=100000000

log() { echo "bench-edge: $*" >&2; }

[ -x "$ENVOY" ] || make deps
[ -f "$WASM" ] || make wasm
command -v wrk >/dev/null || make deps

WORK=$(mktemp -d -t signalgate-bench-XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Pin the Envoy under test to one CPU and everything else to the other, when
# there are two: the measured worker then has a core of its own.
PIN_TEST=() PIN_REST=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    PIN_TEST=(taskset -c 0) PIN_REST=(taskset -c 1)
fi

# render TEMPLATE OUT NAME=VALUE...
render() {
    local template=$1 out=$2
    shift 2
    python3 - "$template" "$out" "$@" <<'EOF'
import sys
template, out, *pairs = sys.argv[1:]
text = open(template).read()
for pair in pairs:
    name, value = pair.split("=", 1)
    text = text.replace("{{" + name + "}}", value)
open(out, "w").write(text)
EOF
}

# CPU time (user + system, in clock ticks) a process has used.
cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

wait_ready() {
    local admin=$1 pid=$2 name=$3
    for _ in $(seq 300); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited; log:"
            tail -30 "$WORK/$name.log" >&2
            exit 1
        fi
        if [ "$(curl -s "http://127.0.0.1:$admin/ready" || true)" = LIVE ]; then return 0; fi
        sleep 0.1
    done
    log "$name not ready"
    exit 1
}

# The payload: a ~4 KB webhook, valid for the filter.
python3 - "$WORK/body.json" <<'EOF'
import json, sys
alerts = []
for i in range(6):
    alerts.append({
        "status": "firing",
        "labels": {"alertname": "KubePodCrashLooping", "namespace": "shop", "pod": f"cart-{i}",
                   "container": "cart", "severity": "critical", "job": "kube-state-metrics",
                   "prometheus": "monitoring/k8s"},
        "annotations": {"summary": f"Pod shop/cart-{i} is crash looping",
                        "description": f"Pod shop/cart-{i} (cart) is restarting 2.1 times / 10 minutes.",
                        "runbook_url": "https://runbooks.example.com/kubepodcrashlooping"},
        "startsAt": "2026-11-26T20:57:15.123Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.monitoring:9090/graph?g0.expr=rate%28kube_pod_container_status_restarts_total%5B10m%5D%29+%3E+0",
        "fingerprint": f"{i:016x}",
    })
body = {
    "version": "4", "receiver": "signalgate", "status": "firing",
    "groupKey": "{}:{alertname=\"KubePodCrashLooping\"}", "truncatedAlerts": 0,
    "groupLabels": {"alertname": "KubePodCrashLooping"},
    "commonLabels": {"alertname": "KubePodCrashLooping", "namespace": "shop", "severity": "critical"},
    "commonAnnotations": {}, "externalURL": "http://alertmanager.monitoring:9093",
    "alerts": alerts,
}
open(sys.argv[1], "w").write(json.dumps(body))
EOF
BODY_BYTES=$(wc -c <"$WORK/body.json")
{
    echo 'wrk.method = "POST"'
    echo 'wrk.path = "/api/v1/signals/prometheus"'
    echo 'wrk.headers["Content-Type"] = "application/json"'
    printf 'wrk.body = [==[%s]==]\n' "$(cat "$WORK/body.json")"
} >"$WORK/post.lua"

# The upstream.
UP_PORT=$(free_port) UP_ADMIN=$(free_port)
render envoy/bench-upstream.yaml "$WORK/upstream.yaml" LISTEN_PORT="$UP_PORT" ADMIN_PORT="$UP_ADMIN"
"${PIN_REST[@]}" "$ENVOY" -c "$WORK/upstream.yaml" --concurrency 1 --disable-hot-restart -l warn \
    >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)
wait_ready "$UP_ADMIN" "$!" upstream

# run NAME TEMPLATE [NAME=VALUE...]: prints "req/s p99_ms cpu_us_per_request non2xx [socket errors]"
# (CPU: what the Envoy under test used during the run, divided by the requests:
# steadier than req/s on a shared machine).
run() {
    local name=$1 template=$2
    shift 2
    local port admin
    port=$(free_port) admin=$(free_port)
    render "$template" "$WORK/$name.yaml" LISTEN_PORT="$port" ADMIN_PORT="$admin" \
        UPSTREAM_PORT="$UP_PORT" "$@"
    "${PIN_TEST[@]}" "$ENVOY" -c "$WORK/$name.yaml" --concurrency 1 --disable-hot-restart -l warn \
        >"$WORK/$name.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_ready "$admin" "$pid" "$name"
    local url="http://127.0.0.1:$port"
    local check
    check=$(curl -s -o /dev/null -w '%{http_code}' -H 'content-type: application/json' \
        --data-binary "@$WORK/body.json" "$url/api/v1/signals/prometheus")
    [ "$check" = 200 ] || { log "$name answered $check to the payload"; exit 1; }
    "${PIN_REST[@]}" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" -s "$WORK/post.lua" "$url" >/dev/null
    local cpu0 cpu1
    cpu0=$(cpu_ticks "$pid")
    "${PIN_REST[@]}" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$WORK/post.lua" "$url" \
        >"$WORK/$name.wrk"
    cpu1=$(cpu_ticks "$pid")
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    python3 - "$WORK/$name.wrk" "$((cpu1 - cpu0))" "$(getconf CLK_TCK)" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
ticks, hz = int(sys.argv[2]), int(sys.argv[3])
requests = int(re.search(r"(\d+) requests in", text).group(1))
cpu_us = ticks / hz * 1e6 / max(requests, 1)
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
errors = re.search(r"Socket errors: (.*)", text)
print(f"{rps:.0f} {p99:.2f} {cpu_us:.1f} {int(bad.group(1)) if bad else 0} {'errors: ' + errors.group(1) if errors else ''}")
EOF
}

CONFIG="{\"requests_per_minute\": $RATE, \"max_body_bytes\": 262144, \"max_alerts_per_request\": 1000}"
log "payload $BODY_BYTES bytes, $CONNECTIONS connections, ${DURATION}s per config (after ${WARMUP}s warm-up), one Envoy worker"
run nofilter envoy/envoy-nofilter.yaml >"$WORK/nofilter.result"
run native envoy/envoy-native-ratelimit.yaml REQUESTS_PER_MINUTE="$RATE" >"$WORK/native.result"
run filter envoy/envoy.template.yaml WASM_PATH="$WASM" PLUGIN_CONFIG="$CONFIG" >"$WORK/filter.result"
read -r NOF_RPS NOF_P99 NOF_CPU NOF_BAD NOF_ERR <"$WORK/nofilter.result"
read -r NAT_RPS NAT_P99 NAT_CPU NAT_BAD NAT_ERR <"$WORK/native.result"
read -r FIL_RPS FIL_P99 FIL_CPU FIL_BAD FIL_ERR <"$WORK/filter.result"

printf '\n%-10s %10s %10s %14s %8s\n' config 'req/s' 'p99 ms' 'cpu us/req' non-2xx
printf '%-10s %10s %10s %14s %8s %s\n' nofilter "$NOF_RPS" "$NOF_P99" "$NOF_CPU" "$NOF_BAD" "$NOF_ERR"
printf '%-10s %10s %10s %14s %8s %s\n' native "$NAT_RPS" "$NAT_P99" "$NAT_CPU" "$NAT_BAD" "$NAT_ERR"
printf '%-10s %10s %10s %14s %8s %s\n' filter "$FIL_RPS" "$FIL_P99" "$FIL_CPU" "$FIL_BAD" "$FIL_ERR"
python3 - "$FIL_RPS" "$NAT_RPS" "$NOF_RPS" "$FIL_P99" "$NAT_P99" "$FIL_CPU" "$NAT_CPU" <<'EOF'
import sys
fil, nat, nof, fil99, nat99, filcpu, natcpu = map(float, sys.argv[1:])
print(f"\nfilter/native: throughput {fil / nat:.2f}x, p99 {fil99 / nat99:.2f}x, "
      f"CPU per request {filcpu / natcpu:.2f}x (+{filcpu - natcpu:.0f} us)   "
      f"filter/nofilter throughput: {fil / nof:.2f}x")
EOF
echo "wasm: $(wc -c <"$WASM") bytes ($WASM)"
if [ "$NOF_BAD$NAT_BAD$FIL_BAD" != 000 ]; then
    log "some requests were refused: the numbers are not comparable"
    exit 1
fi
