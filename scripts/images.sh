#!/usr/bin/env bash
# Builds the container images a local cluster needs as docker-archive tarballs
# in target/images/ (no registry and no docker daemon here): scripts/image.py
# derives each from the final stage of its Dockerfile, deploy/images/ for the
# project's images and tests/fixtures/cluster/images/ for the Envoy and Redis
# the manifests use. An image whose inputs are all older than its tar is kept.
# Then, if the local cluster is up (scripts/cluster.sh status), imports them.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "images: $*"; }

OUT=target/images
WASM=target/wasm32-wasip1/release/signalgate_filter.wasm
SIDECAR=target/release/signalgate-sidecar
FIXTURES=tests/fixtures/cluster/images

make --no-print-directory wasm # also scripts/install-deps.sh: busybox-static, Envoy, Redis
cargo build --release --locked -p signalgate-sidecar
ENVOY_BIN=$(echo .venv/lib/python3*/site-packages/envoy/_bin/envoy)
[ -x "$ENVOY_BIN" ] || { log "no Envoy binary in .venv (make deps)"; exit 1; }
mkdir -p "$OUT"

# image NAME TAG DOCKERFILE INPUT... [-- --stage ...]: target/images/NAME.tar,
# unless it is newer than the Dockerfile, image.py and every INPUT.
image() {
    local name=$1 tag=$2 dockerfile=$3 tar=$OUT/$1.tar
    shift 3
    local inputs=("$dockerfile" scripts/image.py) stages=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do inputs+=("$1"); shift; done
    [ $# -gt 0 ] && shift && stages=("$@")
    local stale=0 f
    for f in "${inputs[@]}"; do
        [ -e "$tar" ] && [ ! "$f" -nt "$tar" ] || stale=1
    done
    if [ "$stale" -eq 0 ]; then
        log "$tar is up to date"
        return
    fi
    scripts/image.py "$dockerfile" --tag "$tag" --out "$tar" "${stages[@]}"
}

image signalgate-sidecar signalgate.local/signalgate-sidecar:dev deploy/images/Dockerfile.sidecar \
    "$SIDECAR" -- --stage "build:/signalgate-sidecar=$SIDECAR"
image signalgate-filter-init signalgate.local/signalgate-filter-init:dev deploy/images/Dockerfile.wasm-init \
    "$WASM" /bin/busybox -- --stage busybox:/bin/busybox=/bin/busybox
image signalgate-filter signalgate.local/signalgate-filter:dev deploy/images/Dockerfile.wasm "$WASM"
image envoy signalgate.local/envoy:v1.40.0 "$FIXTURES/Dockerfile.envoy" \
    "$ENVOY_BIN" -- --stage "envoy-wheel:/envoy=$ENVOY_BIN"
image redis signalgate.local/redis:dev "$FIXTURES/Dockerfile.redis" \
    /usr/bin/redis-server -- --stage redis:/usr/bin/redis-server=/usr/bin/redis-server

if [ -x scripts/cluster.sh ] && scripts/cluster.sh status >/dev/null 2>&1; then
    log "importing into the local cluster"
    scripts/cluster.sh import "$OUT"/*.tar
else
    log "no local cluster running; the images are in $OUT/:"
    ls -l "$OUT"/*.tar
fi
