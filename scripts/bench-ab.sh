#!/usr/bin/env bash
# `make bench-ab BASE=<rev>`: a same-run A/B of the two hot paths, this tree
# (B) against another revision (A), for changes that must not slow them down:
#   - the sidecar's duplicate path (4 KB webhooks, the same alerts every time,
#     private redis-server, directory sink), signals/s;
#   - the wasm filter in Envoy (4 KB webhooks, full validation, limit never
#     hit, 1 worker pinned to CPU 0, a body-reading upstream), req/s.
# A and B run interleaved, in alternating order, AB_RUNS times (5) for
# AB_DURATION seconds (4) each; the result is the median of the paired B/A
# ratios, with their range. Builds A's release sidecar and wasm in a git
# worktree under target/ab/ (cached per revision).
#   BASE        revision to compare with (required)
#   AB_RUNS     paired runs (5); AB_DURATION seconds per run (4), AB_WARMUP (1)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BASE=${BASE:?set BASE to the revision to compare with, e.g. make bench-ab BASE=HEAD~1}
RUNS=${AB_RUNS:-5} DURATION=${AB_DURATION:-4} WARMUP=${AB_WARMUP:-1}
ENVOY=$ROOT/.venv/bin/envoy

log() { echo "bench-ab: $*" >&2; }
die() {
    echo "bench-ab: ERROR: $*" >&2
    exit 1
}

# ------------------------------------------------------------------ builds
rev=$(git rev-parse --short "$BASE^{commit}") || die "unknown revision $BASE"
A_SRC=$ROOT/target/ab/src-$rev
if [ ! -d "$A_SRC" ]; then
    git worktree add --detach "$A_SRC" "$rev" >&2
fi
ln -sfn "$ROOT/.venv" "$A_SRC/.venv"
log "building A ($rev) in $A_SRC and B (this tree)"
make -C "$A_SRC" --no-print-directory wasm >&2
(cd "$A_SRC" && cargo build --release -p signalgate-sidecar >&2)
make --no-print-directory wasm >&2
cargo build --release -p signalgate-sidecar -p signalgate-bench >&2
declare -A SIDECAR=([A]=$A_SRC/target/release/signalgate-sidecar [B]=$ROOT/target/release/signalgate-sidecar)
declare -A WASM=([A]=$A_SRC/target/wasm32-wasip1/release/signalgate_filter.wasm
    [B]=$ROOT/target/wasm32-wasip1/release/signalgate_filter.wasm)
BENCH=$ROOT/target/release/signalgate-bench

# ------------------------------------------------------------------ processes
WORK=$(mktemp -d "${TMPDIR:-/tmp}/signalgate-ab.XXXXXX")
PIDS=()
cleanup() {
    local status=$?
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ $status -eq 0 ] && rm -rf "$WORK" || echo "bench-ab: failed; logs in $WORK" >&2
    exit $status
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
start() { # start NAME CMD...: sets PID
    local name=$1
    shift
    "$@" </dev/null >"$WORK/$name.log" 2>&1 &
    PID=$!
    PIDS+=("$PID")
}
wait_http() { # wait_http NAME URL
    for _ in $(seq 300); do
        curl -fsS --max-time 1 -o /dev/null "$2" 2>/dev/null && return 0
        sleep 0.1
    done
    tail -20 "$WORK/$1.log" >&2
    die "$1 not ready at $2"
}
PIN_TEST=() PIN_LOAD=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    PIN_TEST=(taskset -c 0) PIN_LOAD=(taskset -c 1)
fi

REDIS_PORT=$(free_port)
start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no
for _ in $(seq 100); do [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done
UP_PORT=$(free_port)
start upstream "$BENCH" upstream "127.0.0.1:$UP_PORT"
declare -A SC_PORT ENVOY_PORT
FILTER_CONFIG='{"requests_per_minute": 100000000, "max_body_bytes": 262144, "max_alerts_per_request": 1000}'
for v in A B; do
    SC_PORT[$v]=$(free_port)
    admin=$(free_port)
    # Each build its own Redis database, the same dedup window as make bench.
    db=$([ "$v" = A ] && echo 1 || echo 2)
    start "sidecar-$v" env SIGNALGATE_LISTEN="127.0.0.1:${SC_PORT[$v]}" \
        SIGNALGATE_ADMIN_LISTEN="127.0.0.1:$admin" SIGNALGATE_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/$db" \
        SIGNALGATE_SINK="dir:$WORK/resources-$v" SIGNALGATE_DEDUP_TTL=2s "${SIDECAR[$v]}"
    wait_http "sidecar-$v" "http://127.0.0.1:$admin/readyz"
    ENVOY_PORT[$v]=$(free_port)
    eadmin=$(free_port)
    python3 - envoy/envoy.template.yaml "$WORK/envoy-$v.yaml" "${ENVOY_PORT[$v]}" "$eadmin" "$UP_PORT" \
        "${WASM[$v]}" "$FILTER_CONFIG" <<'EOF'
import sys
src, out, port, admin, up, wasm, config = sys.argv[1:]
text = open(src).read()
for k, v in {"LISTEN_PORT": port, "ADMIN_PORT": admin, "UPSTREAM_PORT": up,
             "WASM_PATH": wasm, "PLUGIN_CONFIG": config}.items():
    text = text.replace("{{" + k + "}}", v)
open(out, "w").write(text)
EOF
    start "envoy-$v" "${PIN_TEST[@]}" "$ENVOY" -c "$WORK/envoy-$v.yaml" --concurrency 1 \
        --disable-hot-restart -l warn
    wait_http "envoy-$v" "http://127.0.0.1:$eadmin/ready"
done
# Warm each sidecar's namespace (one alert, then a dedup window): the runs
# then measure the steady duplicate path, as make bench does.
"$BENCH" body --size 4096 >"$WORK/body.json"
for v in A B; do
    curl -fsS -o /dev/null -H 'content-type: application/json' -H 'x-signalgate-source: ab' \
        --data-binary "@$WORK/body.json" "http://127.0.0.1:${SC_PORT[$v]}/api/v1/signals/prometheus"
done
sleep 2.2

RESULTS=$WORK/results.jsonl
for run in $(seq "$RUNS"); do
    order=(A B)
    [ $((run % 2)) = 0 ] && order=(B A)
    for v in "${order[@]}"; do
        "$BENCH" load "http://127.0.0.1:${SC_PORT[$v]}/api/v1/signals/prometheus" --size 4096 \
            --source-header x-signalgate-source --duration "$DURATION" --warmup "$WARMUP" \
            --label path=sidecar-duplicate --label "build=$v" --label "run=$run" --out "$RESULTS"
        "${PIN_LOAD[@]}" "$BENCH" load "http://127.0.0.1:${ENVOY_PORT[$v]}/api/v1/signals/prometheus" \
            --size 4096 --duration "$DURATION" --warmup "$WARMUP" --expect 200 \
            --label path=wasm-filter-4k --label "build=$v" --label "run=$run" --out "$RESULTS"
    done
done

python3 - "$RESULTS" "$rev" "$(git rev-parse --short HEAD)$([ -n "$(git status --porcelain | head -1)" ] && echo +dirty)" <<'EOF'
import json, statistics, sys
results, a_rev, b_rev = sys.argv[1:]
rows = [json.loads(l) for l in open(results)]
def rate(r):
    return r["metrics"]["rps"]
print(f"A = {a_rev}, B = {b_rev}: median of paired B/A ratios (range), {len(rows)//4} runs")
for path in ("sidecar-duplicate", "wasm-filter-4k"):
    by = {}
    for r in rows:
        if r["labels"]["path"] == path:
            by.setdefault(r["labels"]["run"], {})[r["labels"]["build"]] = rate(r)
    ratios = [v["B"] / v["A"] for v in by.values() if "A" in v and "B" in v]
    a = statistics.median(v["A"] for v in by.values())
    b = statistics.median(v["B"] for v in by.values())
    print(f"  {path:18} A {a:8.0f} req/s  B {b:8.0f} req/s  B/A {statistics.median(ratios):.3f} "
          f"({min(ratios):.3f}-{max(ratios):.3f})")
EOF
