#!/usr/bin/env bash
# `make bench`: signalgate's benchmarks, side by side with their baselines, in
# one run on this machine; report in target/bench/ (report.md, report.json,
# chart.png, and the raw runs in results.jsonl).
#
#   1. edge      the same Envoy binary, five configurations — no filter, Envoy's
#                native local_ratelimit per source, the wasm floor (an empty
#                proxy-wasm filter that waits for the body and reads it:
#                bench/wasm-floor), the signalgate filter and the signalgate
#                native module (edge-native/, an Envoy dynamic module; both
#                with a limit high enough never to refuse, full validation) — in front of a
#                real upstream that reads every body (`signalgate-bench upstream`),
#                1 KB / 4 KB / 64 KB Alertmanager webhooks, 1 and 2 Envoy workers:
#                req/s, p50, p99, Envoy CPU per request. Then Envoy's RSS while
#                BENCH_SOURCES (1 000 000) distinct sources are rate-limited
#                (source: "header:x-source", one new value per request).
#   2. sidecar   the sidecar alone on a private redis-server and the directory
#                sink (and the kube sink against a real kube-apiserver when
#                scripts/k8s.sh has its binaries): duplicate and created paths,
#                signals/s, latency, Redis commands (INFO commandstats) and store
#                round trips per request; redis-benchmark's EVALSHA rate (50
#                clients, unpipelined and -P 16) in the same run.
#   3. peer      Alertmanager's own POST /api/v2/alerts with the same alerts.
#   4. chain     load → Envoy + filter → sidecar → Redis, and the CPU per
#                request of each process in that run (where the time goes).
#
# Every figure is the median of BENCH_RUNS runs (3; BENCH_QUICK=1: 1) with
# min/max; configurations are interleaved run by run so ratios are paired.
# Environment (defaults full / quick):
#   BENCH_QUICK=1        smoke version of everything (< 2 min)
#   BENCH_RUNS           runs per figure (3 / 1)
#   BENCH_DURATION       measured seconds per run (4 / 1), BENCH_WARMUP (1 / 0.3)
#   BENCH_CONNECTIONS    load generator connections (16)
#   BENCH_SOURCES        distinct sources for the memory step (1000000 / 30000)
#   BENCH_KUBE           0 skips the kube sink step (default: on when the
#                        kube-apiserver binaries are built: scripts/k8s.sh build)
#   BENCH_OUT            report directory (target/bench)
#   BENCH_SKIP_BUILD=1   use what is built (with SIGNALGATE_BENCH_BIN,
#                        SIGNALGATE_SIDECAR_BIN, SIGNALGATE_FILTER_WASM,
#                        SIGNALGATE_FLOOR_WASM, SIGNALGATE_NATIVE_MODULE, ENVOY_BIN)
# Only free loopback ports are used; every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STARTED_AT=$SECONDS

QUICK=${BENCH_QUICK:-0}
[ "$QUICK" = 1 ] || QUICK=0
if [ "$QUICK" = 1 ]; then
    RUNS=${BENCH_RUNS:-1} DURATION=${BENCH_DURATION:-1} WARMUP=${BENCH_WARMUP:-0.3}
    SOURCES=${BENCH_SOURCES:-30000} MODE=quick
    REDIS_BENCH_N=20000 REDIS_BENCH_N_P16=100000
    # A busy CI machine may time a few requests out (503): smoke, not figures.
    MAX_UNEXPECTED=0.05
else
    RUNS=${BENCH_RUNS:-3} DURATION=${BENCH_DURATION:-4} WARMUP=${BENCH_WARMUP:-1}
    SOURCES=${BENCH_SOURCES:-1000000} MODE=full
    REDIS_BENCH_N=200000 REDIS_BENCH_N_P16=1000000
    MAX_UNEXPECTED=0.01
fi
CONNECTIONS=${BENCH_CONNECTIONS:-16}
OUT=${BENCH_OUT:-$ROOT/target/bench}
PAYLOADS=(1k:1024 4k:4096 64k:65536)
WORKERS=(1 2)
# Never refuse during the edge runs.
RATE=100000000

log() { echo "bench: [$((SECONDS - STARTED_AT))s] $*" >&2; }
die() {
    echo "bench: ERROR: $*" >&2
    exit 1
}

# ------------------------------------------------------------------ build
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    log "building (make bench-wasm native; cargo build --release -p signalgate-sidecar -p signalgate-bench)"
    make --no-print-directory bench-wasm native >&2
    cargo build --release -p signalgate-sidecar -p signalgate-bench >&2
fi
BENCH=${SIGNALGATE_BENCH_BIN:-$TARGET/release/signalgate-bench}
SIDECAR=${SIGNALGATE_SIDECAR_BIN:-$TARGET/release/signalgate-sidecar}
WASM=${SIGNALGATE_FILTER_WASM:-$TARGET/wasm32-wasip1/release/signalgate_filter.wasm}
FLOOR_WASM=${SIGNALGATE_FLOOR_WASM:-$TARGET/wasm32-wasip1/release/signalgate_wasm_floor.wasm}
# Envoy loads the dynamic module by name (libsignalgate_edge_native.so) from
# its library search path: the module's directory, given only to those Envoys.
MODULE=${SIGNALGATE_NATIVE_MODULE:-$TARGET/release/libsignalgate_edge_native.so}
ENVOY=${ENVOY_BIN:-$ROOT/.venv/bin/envoy}
for f in "$BENCH" "$SIDECAR" "$WASM" "$FLOOR_WASM" "$MODULE" "$ENVOY"; do
    [ -e "$f" ] || die "$f is missing (run without BENCH_SKIP_BUILD, or make deps)"
done
for cmd in redis-server redis-cli redis-benchmark prometheus-alertmanager curl python3; do
    command -v "$cmd" >/dev/null || die "$cmd not found: run 'make deps'"
done

# ------------------------------------------------------------------ processes
WORK=$(mktemp -d -t signalgate-bench-XXXXXX)
PIDS=()
K8S_STARTED=0
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "$K8S_STARTED" = 1 ]; then scripts/k8s.sh down >/dev/null 2>&1 || true; fi
    if [ $status -ne 0 ]; then
        echo "bench: failed; logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start NAME CMD...: runs CMD in the background, logging to $WORK/NAME.log; sets PID.
start() {
    local name=$1
    shift
    "$@" </dev/null >"$WORK/$name.log" 2>&1 &
    PID=$!
    PIDS+=("$PID")
}

# stop PID: TERM, then KILL after 5 s.
stop() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# wait_http NAME PID URL [EXPECTED-BODY]: until URL answers 2xx (and the body matches).
wait_http() {
    local name=$1 pid=$2 url=$3 want=${4:-}
    for _ in $(seq 600); do
        kill -0 "$pid" 2>/dev/null || {
            tail -30 "$WORK/$name.log" >&2
            die "$name exited"
        }
        local body
        if body=$(curl -fsS --max-time 2 "$url" 2>/dev/null); then
            if [ -z "$want" ] || [ "$body" = "$want" ]; then return 0; fi
        fi
        sleep 0.1
    done
    tail -30 "$WORK/$name.log" >&2
    die "$name not ready at $url"
}

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
if "{{" in text:
    sys.exit(f"{template}: placeholder left in {out}")
open(out, "w").write(text)
EOF
}

# render_module OUT NAME=VALUE...: envoy/envoy-native.yaml (the module's local
# bootstrap) with the ports (LISTEN_PORT, ADMIN_PORT, UPSTREAM_PORT) and the
# filter configuration (FILTER_CONFIG) replaced, as tests/src/native_edge.rs does.
render_module() {
    local out=$1
    shift
    python3 - envoy/envoy-native.yaml "$out" "$@" <<'EOF'
import sys
template, out, *pairs = sys.argv[1:]
values = dict(pair.split("=", 1) for pair in pairs)
text = open(template).read()
def once(text, old, new):
    if text.count(old) != 1:
        sys.exit(f"{template}: {old!r} is not there exactly once: update scripts/bench.sh")
    return text.replace(old, new)
for local, name in [("9901", "ADMIN_PORT"), ("8080", "LISTEN_PORT"), ("8081", "UPSTREAM_PORT")]:
    text = once(text, f"port_value: {local} }}", f"port_value: {values[name]} }}")
lines = [l for l in text.splitlines() if l.lstrip().startswith("value: '{")]
if len(lines) != 1:
    sys.exit(f"{template}: no single filter configuration line: update scripts/bench.sh")
indent = lines[0][: len(lines[0]) - len(lines[0].lstrip())]
config = values["FILTER_CONFIG"].replace("'", "''")
text = once(text, lines[0], f"{indent}value: '{config}'")
open(out, "w").write(text)
EOF
}

# Pin the single-worker Envoy under test to CPU 0 and the load to CPU 1.
PIN_TEST=() PIN_LOAD=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    PIN_TEST=(taskset -c 0) PIN_LOAD=(taskset -c 1)
fi

RESULTS=$WORK/results.jsonl
: >"$RESULTS"
record() { "$BENCH" record --out "$RESULTS" "$@"; }
# load URL ARGS...: one load generator run, appended to the results.
load() { "$BENCH" load "$@" --out "$RESULTS"; }

# ------------------------------------------------------------------ meta
git_rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "$(git status --porcelain 2>/dev/null | head -1)" ] && git_rev="$git_rev+dirty"
table_slots=$(sed -n 's/^pub const SLOTS: u32 = \([0-9_]*\);.*/\1/p' filter/src/table.rs | tr -d _)
table_ways=$(sed -n 's/^pub const WAYS: usize = \([0-9_]*\);.*/\1/p' filter/src/table.rs | tr -d _)
table_slots=${table_slots:-4096} table_ways=${table_ways:-4}
# Values of 1 + 32 bytes a way, plus ~150 bytes of key and bookkeeping a slot (filter/src/table.rs).
table_bound_kib=$(((table_slots * (1 + 32 * table_ways + 150) + 1023) / 1024))
record --label part=meta \
    --info "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)" --info "mode=$MODE" --info "runs=$RUNS" \
    --info "duration_s=$DURATION" --info "warmup_s=$WARMUP" --info "connections=$CONNECTIONS" \
    --info "cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)" \
    --info "cores=$(nproc)" --info "kernel=$(uname -sr)" \
    --info "load_average_at_start=$(cut -d' ' -f1-3 /proc/loadavg)" \
    --info "envoy=Envoy $("$ENVOY" --version 2>/dev/null | grep -o '[0-9]*\.[0-9]*\.[0-9]*/[A-Za-z]*' | head -1)" \
    --info "redis=$(redis-server --version | grep -o 'v=[0-9.]*' | sed 's/v=/Redis /')" \
    --info "alertmanager=Alertmanager $(prometheus-alertmanager --version 2>&1 | grep -o 'version [0-9.]*' | head -1 | cut -d' ' -f2)" \
    --info "rustc=$(rustc --version | cut -d' ' -f1-2)" --info "git=$git_rev" \
    --info "wasm_bytes=$(wc -c <"$WASM")" --info "module_bytes=$(wc -c <"$MODULE")" \
    --info "table_capacity=$((table_slots * table_ways))" --info "table_bound_kib=$table_bound_kib" \
    --info "distinct_sources=$SOURCES" \
    --info "pinning=$([ ${#PIN_TEST[@]} -gt 0 ] && echo '1-worker Envoy on CPU 0, load generator and upstream on CPU 1; 2-worker runs unpinned' || echo none)"
log "$MODE mode: $RUNS run(s) x ${DURATION}s (+${WARMUP}s warm-up), $CONNECTIONS connections; work dir $WORK"

BODY4K=$WORK/body-4k.json
"$BENCH" body --size 4096 >"$BODY4K"
post() { # post URL FILE [CURL ARGS...] -> status code
    local url=$1 file=$2
    shift 2
    curl -s -o "$WORK/last-answer" -w '%{http_code}' -H 'content-type: application/json' \
        --data-binary "@$file" "$@" "$url"
}

# ================================================================== 1. edge
log "1. edge: starting the upstream and 10 Envoys (5 configurations x 1, 2 workers)"
UP_PORT=$(free_port)
start upstream "$BENCH" upstream "127.0.0.1:$UP_PORT"
UP_PID=$PID
for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$UP_PORT/" && break
    sleep 0.1
done

FILTER_CONFIG="{\"requests_per_minute\": $RATE, \"max_body_bytes\": 262144, \"max_alerts_per_request\": 1000}"
declare -A EDGE_PORT EDGE_PID EDGE_ADMIN
for w in "${WORKERS[@]}"; do
    for c in nofilter native floor filter module; do
        port=$(free_port) admin=$(free_port) env=()
        case $c in
        nofilter) render envoy/envoy-nofilter.yaml "$WORK/$c-$w.yaml" LISTEN_PORT="$port" \
            ADMIN_PORT="$admin" UPSTREAM_PORT="$UP_PORT" ;;
        native) render envoy/envoy-native-ratelimit.yaml "$WORK/$c-$w.yaml" LISTEN_PORT="$port" \
            ADMIN_PORT="$admin" UPSTREAM_PORT="$UP_PORT" REQUESTS_PER_MINUTE="$RATE" ;;
        floor) render envoy/envoy.template.yaml "$WORK/$c-$w.yaml" LISTEN_PORT="$port" \
            ADMIN_PORT="$admin" UPSTREAM_PORT="$UP_PORT" WASM_PATH="$FLOOR_WASM" PLUGIN_CONFIG="{}" ;;
        filter) render envoy/envoy.template.yaml "$WORK/$c-$w.yaml" LISTEN_PORT="$port" \
            ADMIN_PORT="$admin" UPSTREAM_PORT="$UP_PORT" WASM_PATH="$WASM" PLUGIN_CONFIG="$FILTER_CONFIG" ;;
        module)
            render_module "$WORK/$c-$w.yaml" LISTEN_PORT="$port" ADMIN_PORT="$admin" \
                UPSTREAM_PORT="$UP_PORT" FILTER_CONFIG="$FILTER_CONFIG"
            env=(env "LD_LIBRARY_PATH=$(dirname "$MODULE")")
            ;;
        esac
        pin=()
        [ "$w" = 1 ] && pin=("${PIN_TEST[@]}")
        start "envoy-$c-$w" "${env[@]}" "${pin[@]}" "$ENVOY" -c "$WORK/$c-$w.yaml" --concurrency "$w" \
            --disable-hot-restart -l warn
        EDGE_PORT[$c-$w]=$port
        EDGE_PID[$c-$w]=$PID
        EDGE_ADMIN[$c-$w]=$admin
    done
done
for key in "${!EDGE_PID[@]}"; do
    wait_http "envoy-$key" "${EDGE_PID[$key]}" "http://127.0.0.1:${EDGE_ADMIN[$key]}/ready" LIVE
done
# Every configuration forwards a valid webhook; the filter and the module refuse an invalid one.
for key in "${!EDGE_PORT[@]}"; do
    code=$(post "http://127.0.0.1:${EDGE_PORT[$key]}/api/v1/signals/prometheus" "$BODY4K")
    [ "$code" = 200 ] || die "edge $key answered $code to a valid webhook: $(cat "$WORK/last-answer")"
done
echo '{"version":"4","status":"firing","alerts":[]}' >"$WORK/invalid.json"
for w in "${WORKERS[@]}"; do
    for c in filter module; do
        code=$(post "http://127.0.0.1:${EDGE_PORT[$c-$w]}/api/v1/signals/prometheus" "$WORK/invalid.json")
        [ "$code" = 400 ] || die "the $c ($w workers) answered $code to an invalid webhook: validation is off?"
    done
done

CONFIGS=(nofilter native floor filter module)
for run in $(seq "$RUNS"); do
    for w in "${WORKERS[@]}"; do
        pin=()
        if [ "$w" = 1 ] && [ ${#PIN_LOAD[@]} -gt 0 ]; then
            pin=("${PIN_LOAD[@]}")
            taskset -apc 1 "$UP_PID" >/dev/null
        else
            taskset -apc "0-$(($(nproc) - 1))" "$UP_PID" >/dev/null 2>&1 || true
        fi
        for p in "${PAYLOADS[@]}"; do
            name=${p%%:*} size=${p#*:}
            # Rotate the order of the configurations from run to run.
            for i in "${!CONFIGS[@]}"; do
                c=${CONFIGS[$(((i + run) % ${#CONFIGS[@]}))]}
                "${pin[@]}" "$BENCH" load "http://127.0.0.1:${EDGE_PORT[$c-$w]}/api/v1/signals/prometheus" \
                    --size "$size" --connections "$CONNECTIONS" --duration "$DURATION" --warmup "$WARMUP" \
                    --expect 200 --max-unexpected 0 --pid "envoy=${EDGE_PID[$c-$w]}" \
                    --label part=edge --label "config=$c" --label "payload=$name" --label "workers=$w" \
                    --label "run=$run" --out "$RESULTS"
            done
        done
    done
done
for key in "${!EDGE_PID[@]}"; do stop "${EDGE_PID[$key]}"; done
taskset -apc "0-$(($(nproc) - 1))" "$UP_PID" >/dev/null 2>&1 || true

# ------------------------------------------------------------------ 1b. memory
log "1b. edge memory: $SOURCES distinct sources through the filter's rate limiter"
port=$(free_port) admin=$(free_port)
MEM_CONFIG="{\"requests_per_minute\": 600, \"source\": \"header:x-source\"}"
render envoy/envoy.template.yaml "$WORK/memory.yaml" LISTEN_PORT="$port" ADMIN_PORT="$admin" \
    UPSTREAM_PORT="$UP_PORT" WASM_PATH="$WASM" PLUGIN_CONFIG="$MEM_CONFIG"
start envoy-memory "$ENVOY" -c "$WORK/memory.yaml" --concurrency 2 --disable-hot-restart -l warn
MEM_PID=$PID
wait_http envoy-memory "$MEM_PID" "http://127.0.0.1:$admin/ready" LIVE
MEM_URL="http://127.0.0.1:$port/api/v1/signals/prometheus"
# Each request is counted against its source's bucket, then answered 415 (no
# Content-Type, no body): only the limiter's state is left behind. A warm-up
# from one source first, so connection and VM warm-up is not counted as growth.
"$BENCH" load "$MEM_URL" --body empty --content-type none --requests 20000 --connections 32 \
    --header x-source:warmup --expect 415,429 --max-unexpected 0 --label part=edge_memory_warmup \
    --out "$WORK/warmup.jsonl"
sleep 1
record --label part=edge_memory --label sources=0 --rss "$MEM_PID"
done_sources=0
checkpoints=(20000 $((SOURCES / 10 > 20000 ? SOURCES / 10 : SOURCES * 2 / 3)) "$SOURCES")
for target in "${checkpoints[@]}"; do
    [ "$target" -gt "$done_sources" ] || continue
    "$BENCH" load "$MEM_URL" --body empty --content-type none --requests $((target - done_sources)) \
        --connections 32 --threads 2 --source-header x-source --source-prefix 10.9. \
        --counter-start "$done_sources" --expect 415 --max-unexpected 0 \
        --label part=edge_memory_step --label "sources=$target" --out "$WORK/memory-steps.jsonl"
    done_sources=$target
    sleep 1
    rps=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["metrics"]["rps"])' "$WORK/memory-steps.jsonl")
    record --label part=edge_memory --label "sources=$target" --rss "$MEM_PID" --metric "rps=$rps"
    log "   $target sources: RSS $(grep VmRSS "/proc/$MEM_PID/status" | awk '{print $2}') KiB"
done
stop "$MEM_PID"
stop "$UP_PID"

# ================================================================== 2. sidecar
log "2. sidecar: private redis-server, directory sink"
REDIS_PORT=$(free_port)
start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --protected-mode yes --daemonize no
REDIS_PID=$PID
for _ in $(seq 100); do
    [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break
    sleep 0.1
done
[ "$(redis-cli -p "$REDIS_PORT" ping)" = PONG ] || die "redis-server did not start"

# start_sidecar NAME SINK [ENV...]: sets SC_PID, SC_PORT, SC_ADMIN. The storm
# threshold is raised (every new alert creates its own resource) unless
# SC_STORM_THRESHOLD is set; SC_REDIS_DB picks the Redis database. The dedup
# window is DEDUP_TTL (short, see warm_up).
start_sidecar() {
    local name=$1 sink=$2
    shift 2
    SC_PORT=$(free_port) SC_ADMIN=$(free_port)
    start "$name" env "$@" SIGNALGATE_LISTEN="127.0.0.1:$SC_PORT" \
        SIGNALGATE_ADMIN_LISTEN="127.0.0.1:$SC_ADMIN" \
        SIGNALGATE_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/${SC_REDIS_DB:-0}" SIGNALGATE_SINK="$sink" \
        SIGNALGATE_STORM_THRESHOLD="${SC_STORM_THRESHOLD:-1000000000}" \
        SIGNALGATE_DEDUP_TTL="$DEDUP_TTL" "$SIDECAR"
    SC_PID=$PID
    wait_http "$name" "$SC_PID" "http://127.0.0.1:$SC_ADMIN/readyz"
}

# The sidecar paths are measured in steady state: on a namespace the store
# has known for a whole dedup window (warm). In a cold one (new to the store,
# or after it lost its data) every new fingerprint first costs a sink lookup
# and one more store round trip. The benchmark's dedup window is short
# (DEDUP_TTL, 2 s, which changes nothing else on these paths: repeats come
# every few milliseconds) so that one alert per sidecar, then a wait of a
# window, warms its namespace.
DEDUP_TTL=2s
warm_up() { # warm_up PORT... : one alert to each sidecar, then a dedup window
    local port code
    for port in "$@"; do
        code=$(post "http://127.0.0.1:$port/api/v1/signals/prometheus" "$BODY4K" -H 'x-signalgate-source: bench')
        case $code in 201 | 202) ;; *) die "the sidecar on $port answered $code: $(cat "$WORK/last-answer")" ;; esac
    done
    sleep 2.2
}

# sidecar_run SINK PATH RUN: the load runs against the current sidecar
# (SC_*). Paths: duplicate (the same alerts every time), created (new alerts,
# each its own resource), storm (new alerts at the default storm threshold:
# after the first ten, all aggregated into the namespace's storm resource).
sidecar_run() {
    local sink=$1 path=$2 run=$3 mode=identical expect=2xx
    [ "$path" = created ] && mode=distinct expect=201
    [ "$path" = storm ] && mode=distinct
    load "http://127.0.0.1:$SC_PORT/api/v1/signals/prometheus" --size 4096 --mode "$mode" \
        --source-header x-signalgate-source \
        --connections "$CONNECTIONS" --duration "$DURATION" --warmup "$WARMUP" --expect "$expect" \
        --max-unexpected "$MAX_UNEXPECTED" --pid "sidecar=$SC_PID" --pid "redis=$REDIS_PID" --redis "127.0.0.1:$REDIS_PORT" \
        --sidecar-metrics "http://127.0.0.1:$SC_ADMIN/metrics" \
        --label part=sidecar --label "path=$path" --label "sink=$sink" --label "run=$run" \
        --metric "resources_before=$(resources "$sink" "$path")"
}

# resources SINK [PATH]: how many resources the sink (the storm sidecar's
# for PATH storm) holds now (the created path's cost may grow with it).
resources() {
    case $1 in
    dir) find "$WORK/$([ "${2:-}" = storm ] && echo storm-)resources" -name '*.json' 2>/dev/null | wc -l ;;
    kube) "$KUBECTL" get remediationrequests -A --no-headers 2>/dev/null | wc -l ;;
    esac
}

start_sidecar sidecar-dir "dir:$WORK/resources"
DIR_SC_PID=$SC_PID DIR_SC_PORT=$SC_PORT DIR_SC_ADMIN=$SC_ADMIN

# redis-benchmark's EVALSHA ceiling: a small script of the same shape (one
# key, a read-modify-write and a TTL); and the sidecar's own decide script
# (common.lua + decide.lua, as RedisStore loads it) on one known fingerprint,
# i.e. its duplicate path, when it loads and answers here.
SHA=$(redis-cli -p "$REDIS_PORT" SCRIPT LOAD \
    "local n = redis.call('INCR', KEYS[1]) redis.call('PEXPIRE', KEYS[1], 300000) return n")
DECIDE_ARGS=()
if [ -f sidecar/src/store/common.lua ] && [ -f sidecar/src/store/decide.lua ]; then
    DECIDE_SHA=$(redis-cli -p "$REDIS_PORT" SCRIPT LOAD \
        "$(cat sidecar/src/store/common.lua; echo; cat sidecar/src/store/decide.lua)" 2>/dev/null || true)
    # One signal per call (decide.lua: the namespace's seven keys, then the
    # fingerprint's record key; the settings (the incident TTL last), one
    # request: token '0' (no request's: every call counts, as distinct
    # requests do) and no delivery ('0' '0'); the record's affected value;
    # then the signal: record 1, request 1, its firing instance, and '-'
    # (a firing the sink was searched for: the first call creates, the
    # others are duplicates).
    keys=('sg:{bench}:w' 'sg:{bench}:s' 'sg:{bench}:a' 'sg:{bench}:x' 'sg:{bench}:m'
        'sg:{bench}:o' 'sg:{bench}:d' 'sg:{bench}:f:0123456789abcdef')
    DECIDE_ARGS=("$DECIDE_SHA" "${#keys[@]}" "${keys[@]}" storm-0123456789ab- 300000 1000000000
        60000 300000 100 15000 604800000 86400000 1 0 0 0 Pod/cart-0 1 1 1764190635123 -)
    for _ in 1 2; do
        reply=$(redis-cli -p "$REDIS_PORT" EVALSHA "${DECIDE_ARGS[@]}" 2>&1 | head -1)
    done
    # A wrong answer means this copy of decide.lua's key layout is stale:
    # fail (make test runs the smoke mode) rather than drop the figure.
    case $reply in 2) ;; *)
        die "the sidecar's decide script did not answer 'duplicate' ($reply): update its keys here"
        ;;
    esac
fi
redis_bench() { # redis_bench NAME N RUN [redis-benchmark args...] -- EVALSHA args...
    local name=$1 n=$2 run=$3
    shift 3
    local rps stats
    redis-cli -p "$REDIS_PORT" CONFIG RESETSTAT >/dev/null
    rps=$(redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c 50 -n "$n" --csv "$@" | tail -1 |
        cut -d, -f2 | tr -d '"')
    [ -n "$rps" ] || die "redis-benchmark gave no rate"
    stats=$(redis-cli -p "$REDIS_PORT" INFO commandstats | tr -d '\r' |
        sed -n 's/^cmdstat_evalsha:.*usec_per_call=\([0-9.]*\).*/\1/p')
    record --label part=redis_benchmark --label "config=$name" --label "run=$run" \
        --metric "rps=$rps" --metric "usec_per_call=${stats:-0}"
}
bench_redis() { # bench_redis RUN
    local run=$1
    redis_bench evalsha "$REDIS_BENCH_N" "$run" -r 100000 EVALSHA "$SHA" 1 'sg:{bench}:__rand_int__'
    redis_bench evalsha_p16 "$REDIS_BENCH_N_P16" "$run" -r 100000 -P 16 \
        EVALSHA "$SHA" 1 'sg:{bench}:__rand_int__'
    if [ ${#DECIDE_ARGS[@]} -gt 0 ]; then
        redis_bench decide $((REDIS_BENCH_N / 4)) "$run" EVALSHA "${DECIDE_ARGS[@]}"
        redis_bench decide_p16 $((REDIS_BENCH_N_P16 / 5)) "$run" -P 16 EVALSHA "${DECIDE_ARGS[@]}"
    fi
}

# The storm path: a second sidecar with the default storm threshold, on its
# own Redis database so the two never share a namespace's storm state.
SC_STORM_THRESHOLD=10 SC_REDIS_DB=1 start_sidecar sidecar-storm "dir:$WORK/storm-resources"
STORM_SC_PID=$SC_PID STORM_SC_PORT=$SC_PORT STORM_SC_ADMIN=$SC_ADMIN
warm_up "$DIR_SC_PORT" "$STORM_SC_PORT"

for run in $(seq "$RUNS"); do
    SC_PID=$DIR_SC_PID SC_PORT=$DIR_SC_PORT SC_ADMIN=$DIR_SC_ADMIN
    sidecar_run dir duplicate "$run"
    sidecar_run dir created "$run"
    SC_PID=$STORM_SC_PID SC_PORT=$STORM_SC_PORT SC_ADMIN=$STORM_SC_ADMIN
    sidecar_run dir storm "$run"
    bench_redis "$run"
done
stop "$STORM_SC_PID"

# ------------------------------------------------------------------ 2b. kube sink
KUBE=${BENCH_KUBE:-auto}
if [ "$KUBE" = auto ]; then
    if scripts/k8s.sh bin-dir >/dev/null 2>&1; then KUBE=1; else KUBE=0; fi
fi
if [ "$KUBE" = 1 ]; then
    log "2b. sidecar with the kube sink against a real kube-apiserver"
    KUBECTL="$(scripts/k8s.sh bin-dir)/kubectl"
    if [ -f target/k8s/kubeconfig ] && [ -f target/k8s/kube-apiserver.pid ] &&
        KUBECONFIG=target/k8s/kubeconfig "$KUBECTL" get --raw /readyz >/dev/null 2>&1; then
        log "   using the kube-apiserver already running (target/k8s)"
    else
        K8S_STARTED=1
        scripts/k8s.sh up >"$WORK/k8s.log" 2>&1 || {
            tail -20 "$WORK/k8s.log" >&2
            die "scripts/k8s.sh up failed"
        }
    fi
    export KUBECONFIG=$ROOT/target/k8s/kubeconfig
    "$KUBECTL" create namespace shop >/dev/null 2>&1 || true
    start_sidecar sidecar-kube kube KUBECONFIG="$KUBECONFIG"
    warm_up "$SC_PORT"
    # Creates through the API server are slow: give them at least 3 s.
    for run in $(seq "$RUNS"); do
        DURATION=$(python3 -c "print(max(3.0, float('$DURATION')))") sidecar_run kube created "$run"
    done
    stop "$SC_PID"
    if [ "$K8S_STARTED" = 1 ]; then
        scripts/k8s.sh down >/dev/null 2>&1 || true
        K8S_STARTED=0
    fi
else
    log "2b. kube sink skipped (BENCH_KUBE=0 or no kube-apiserver binaries: scripts/k8s.sh build)"
fi

# ================================================================== 3. peer
log "3. peer: Alertmanager POST /api/v2/alerts"
AM_PORT=$(free_port)
mkdir -p "$WORK/am"
cat >"$WORK/am.yml" <<'EOF'
route:
  receiver: "null"
  group_by: [alertname]
  group_wait: 30s
  group_interval: 5m
  repeat_interval: 4h
receivers:
- name: "null"
EOF
start alertmanager prometheus-alertmanager --config.file="$WORK/am.yml" \
    --storage.path="$WORK/am" --web.listen-address="127.0.0.1:$AM_PORT" \
    --cluster.listen-address= --log.level=warn
AM_PID=$PID
wait_http alertmanager "$AM_PID" "http://127.0.0.1:$AM_PORT/-/ready"
for run in $(seq "$RUNS"); do
    for mode in identical distinct; do
        load "http://127.0.0.1:$AM_PORT/api/v2/alerts" --body am-v2 --size 4096 --mode "$mode" \
            --connections "$CONNECTIONS" --duration "$DURATION" --warmup "$WARMUP" --expect 200 \
            --max-unexpected "$MAX_UNEXPECTED" --pid "alertmanager=$AM_PID" --label part=peer --label "mode=$mode" --label "run=$run"
    done
done
stop "$AM_PID"

# ================================================================== 4. chain
log "4. full chain: Envoy + filter -> sidecar -> Redis"
port=$(free_port) admin=$(free_port)
render envoy/envoy.template.yaml "$WORK/chain.yaml" LISTEN_PORT="$port" ADMIN_PORT="$admin" \
    UPSTREAM_PORT="$DIR_SC_PORT" WASM_PATH="$WASM" PLUGIN_CONFIG="$FILTER_CONFIG"
start envoy-chain "$ENVOY" -c "$WORK/chain.yaml" --concurrency 1 --disable-hot-restart -l warn
CHAIN_PID=$PID
wait_http envoy-chain "$CHAIN_PID" "http://127.0.0.1:$admin/ready" LIVE
code=$(post "http://127.0.0.1:$port/api/v1/signals/prometheus" "$BODY4K")
case $code in 201 | 202) ;; *) die "the chain answered $code: $(cat "$WORK/last-answer")" ;; esac
for run in $(seq "$RUNS"); do
    for path in duplicate created; do
        mode=identical expect=2xx
        [ "$path" = created ] && mode=distinct expect=201
        load "http://127.0.0.1:$port/api/v1/signals/prometheus" --size 4096 --mode "$mode" \
            --connections "$CONNECTIONS" --duration "$DURATION" --warmup "$WARMUP" --expect "$expect" \
            --max-unexpected "$MAX_UNEXPECTED" --pid "envoy=$CHAIN_PID" --pid "sidecar=$DIR_SC_PID" --pid "redis=$REDIS_PID" \
            --redis "127.0.0.1:$REDIS_PORT" --sidecar-metrics "http://127.0.0.1:$DIR_SC_ADMIN/metrics" \
            --label part=chain --label "path=$path" --label "run=$run" \
            --metric "resources_before=$(resources dir)"
    done
done

# ================================================================== report
record --label part=meta --info "elapsed_s=$((SECONDS - STARTED_AT))"
mkdir -p "$OUT"
cp "$RESULTS" "$OUT/results.jsonl"
"$BENCH" report "$OUT/results.jsonl" "$OUT" >/dev/null
log "done in $((SECONDS - STARTED_AT)) s: $OUT/report.md, report.json, chart.png"
