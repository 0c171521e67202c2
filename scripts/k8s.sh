#!/usr/bin/env bash
# A real Kubernetes API server (kube-apiserver 1.20.2 + etcd) for signalgate's
# tests and for local use, built only from Debian bookworm packages.
#
#   scripts/k8s.sh build     build and cache kube-apiserver, etcd and kubectl
#   scripts/k8s.sh build-node
#                            build and cache a node's components from the same
#                            source: kubelet, kube-controller-manager,
#                            kube-scheduler, kube-proxy (for a local cluster)
#   scripts/k8s.sh bin-dir   print the cached bin dir (exit 1 if not built)
#   scripts/k8s.sh up        start etcd + kube-apiserver on loopback (state in target/k8s/),
#                            apply deploy/crds/*.yaml (or $SIGNALGATE_K8S_CRDS) and wait
#                            until they are Established; port: $SIGNALGATE_K8S_PORT or 6443
#                            if free, else a free one
#   scripts/k8s.sh down      stop what `up` started
#   scripts/k8s.sh pki DIR   write CA/serving certs, service-account keys and
#                            tokens into DIR (used by `up` and the Rust harness)
#
# Everything downloaded or built lives under
# ${SIGNALGATE_CACHE:-$HOME/.cache/signalgate}/k8s/<version>/; the system's apt
# state is never touched (a private APT_CONFIG with its own lists and caches).
set -euo pipefail

K8S_VERSION=1.20.2
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
SRC_PKG=kubernetes
BIN_PKGS=(golang-1.19-go golang-1.19-src rsync libpopt0 golang-github-modern-go-reflect2-dev etcd-server kubernetes-client)
SIDECAR_USER=system:serviceaccount:signalgate-system:signalgate-sidecar
SIDECAR_GROUPS=system:serviceaccounts,system:serviceaccounts:signalgate-system,system:authenticated

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE_ROOT=${SIGNALGATE_CACHE:-${HOME:?HOME is not set}/.cache/signalgate}
CACHE=$CACHE_ROOT/k8s/$K8S_VERSION
BIN_DIR=$CACHE/bin
MARKER=$BIN_DIR/.complete
NODE_MARKER=$BIN_DIR/.node-complete
NODE_BINS=(kubelet kube-controller-manager kube-scheduler kube-proxy)
STATE=$REPO_ROOT/target/k8s

say() { echo "${SAY_AS:-k8s.sh}: $*" >&2; }
die() {
    echo "${SAY_AS:-k8s.sh}: ERROR: $*" >&2
    exit 1
}

need() {
    local cmd pkg
    for cmd in "$@"; do
        pkg=${cmd#*:}
        cmd=${cmd%%:*}
        command -v "$cmd" >/dev/null 2>&1 ||
            die "required command '$cmd' not found (install it: apt-get install -y $pkg)"
    done
}

# ---------------------------------------------------------------- build ----

APT_DIR=$CACHE/apt

write_apt_config() {
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [[ -r $keyring ]] || die "$keyring missing (apt-get install -y debian-archive-keyring)"
    mkdir -p "$APT_DIR"/{parts,sources.list.d,preferences.d,lists/partial,cache/archives/partial,state}
    cat >"$APT_DIR/sources.list" <<EOF
deb [signed-by=$keyring] $MIRROR $SUITE main
deb-src [signed-by=$keyring] $MIRROR $SUITE main
EOF
    # Own sources, lists, caches and config parts: the system's apt
    # configuration, lists and hooks are neither read nor written.
    cat >"$APT_DIR/apt.conf" <<EOF
Dir::Etc::SourceList "$APT_DIR/sources.list";
Dir::Etc::SourceParts "$APT_DIR/sources.list.d";
Dir::Etc::Parts "$APT_DIR/parts";
Dir::Etc::Preferences "$APT_DIR/preferences";
Dir::Etc::PreferencesParts "$APT_DIR/preferences.d";
Dir::Etc::main "$APT_DIR/none.conf";
Dir::State::Lists "$APT_DIR/lists";
Dir::State::extended_states "$APT_DIR/state/extended_states";
Dir::Cache "$APT_DIR/cache";
Dir::Cache::archives "$APT_DIR/cache/archives";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT::Sandbox::User "root";
Acquire::Languages "none";
Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled "false";
EOF
}

papt() { APT_CONFIG=$APT_DIR/apt.conf "$@"; }

apt_update() {
    say "apt-get update (private lists under $APT_DIR)"
    papt apt-get -q update >&2 || die "apt-get update failed (is $MIRROR reachable?)"
}

lists_present() {
    compgen -G "$APT_DIR/lists/*_Packages*" >/dev/null &&
        compgen -G "$APT_DIR/lists/*_Sources*" >/dev/null
}

# Run an apt-get download-like command; on failure refresh the lists and retry once.
apt_fetch() {
    if ! "$@"; then
        say "download failed; refreshing the package lists and retrying"
        apt_update
        "$@" || die "'$*' failed even after apt-get update"
    fi
}

fetch_debs() {
    local debs=$CACHE/debs
    [[ -f $debs/.complete ]] && return 0
    mkdir -p "$debs"
    say "downloading ${BIN_PKGS[*]}"
    (cd "$debs" && apt_fetch papt apt-get -q download "${BIN_PKGS[@]}" >&2)
    local p
    for p in "${BIN_PKGS[@]}"; do
        compgen -G "$debs/${p}_*.deb" >/dev/null || die "package $p was not downloaded"
    done
    touch "$debs/.complete"
}

unpack_debs() {
    local root=$CACHE/root
    [[ -f $root/.complete ]] && return 0
    rm -rf "$root"
    mkdir -p "$root"
    local deb
    for deb in "$CACHE"/debs/*.deb; do
        say "dpkg -x $(basename "$deb")"
        dpkg -x "$deb" "$root"
    done
    touch "$root/.complete"
}

fetch_source() {
    local pkg=$CACHE/srcpkg tree=$CACHE/src/tree
    [[ -f $CACHE/src/.complete ]] && return 0
    if [[ ! -f $pkg/.complete ]]; then
        rm -rf "$pkg"
        mkdir -p "$pkg"
        say "apt-get source --download-only $SRC_PKG"
        (cd "$pkg" && apt_fetch papt apt-get -q source --download-only "$SRC_PKG" >&2)
        touch "$pkg/.complete"
    fi
    local dsc
    dsc=$(compgen -G "$pkg/${SRC_PKG}_*.dsc" | head -n1) || true
    [[ -n $dsc ]] || die "no .dsc downloaded for $SRC_PKG in $pkg"
    case $dsc in
    *"really$K8S_VERSION"* | *"_$K8S_VERSION-"*) ;;
    *) die "$(basename "$dsc") is not Kubernetes $K8S_VERSION; update K8S_VERSION in $0" ;;
    esac
    rm -rf "$CACHE/src"
    mkdir -p "$CACHE/src"
    say "unpacking $(basename "$dsc") (with Debian's patches)"
    dpkg-source --no-check -x "$dsc" "$tree" >&2
    touch "$CACHE/src/.complete"
}

# The vendored github.com/modern-go/reflect2 1.0.1 crashes at run time with
# Go >= 1.18 (it links to runtime internals that changed); 1.0.2 fixes it.
# Replace its sources with Debian's 1.0.2.
fix_reflect2() {
    local tree=$CACHE/src/tree
    local vend=$tree/vendor/github.com/modern-go/reflect2
    local new=$CACHE/root/usr/share/gocode/src/github.com/modern-go/reflect2
    [[ -f $tree/.reflect2-fixed ]] && return 0
    [[ -d $vend ]] || die "vendored reflect2 not found at $vend"
    [[ -f $new/go_above_118.go ]] || die "reflect2 >= 1.0.2 not found at $new (golang-github-modern-go-reflect2-dev)"
    say "replacing vendored reflect2 with Debian's 1.0.2"
    find "$vend" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) -delete
    find "$new" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' \
        -exec cp -L {} "$vend"/ \;
    touch "$tree/.reflect2-fixed"
}

# compile CMD...: make WHAT="cmd/CMD ..." in the source tree.
compile() {
    local tree=$CACHE/src/tree root=$CACHE/root what=${*/#/cmd/}
    local goroot=$root/usr/lib/go-1.19
    [[ -x $goroot/bin/go ]] || die "private Go not found at $goroot/bin/go"
    [[ -x $root/usr/bin/rsync ]] || die "private rsync not found at $root/usr/bin/rsync"
    say "make WHAT=\"$what\" (several minutes on 2 cores; log: $CACHE/build.log)"
    local start=$SECONDS
    if ! (
        cd "$tree"
        export GOROOT=$goroot
        export PATH=$goroot/bin:$root/usr/bin:$PATH
        export LD_LIBRARY_PATH=$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
        export GOCACHE=$CACHE/gocache GOPROXY=off GOFLAGS=-mod=vendor GOTOOLCHAIN=local
        # No .git in a source package: give the version to the build explicitly.
        export KUBE_GIT_VERSION=v$K8S_VERSION KUBE_GIT_MAJOR=${K8S_VERSION%%.*}
        KUBE_GIT_MINOR=${K8S_VERSION#*.}
        export KUBE_GIT_MINOR=${KUBE_GIT_MINOR%%.*} KUBE_GIT_TREE_STATE=clean
        nice -n 5 make WHAT="$what"
    ) >"$CACHE/build.log" 2>&1; then
        tail -n 40 "$CACHE/build.log" >&2
        die "$* build failed (full log: $CACHE/build.log)"
    fi
    say "$* built in $((SECONDS - start)) s"
}

# built NAME: the path of a binary the source tree's build made.
built() {
    local tree=$CACHE/src/tree
    local path=$tree/_output/local/bin/linux/amd64/$1
    [[ -x $path ]] || path=$(find "$tree/_output" -type f -name "$1" -perm -u+x | head -n1)
    [[ -n $path && -x $path ]] || die "$1 binary not found under $tree/_output"
    echo "$path"
}

# install_built NAME: installs a binary the build made into BIN_DIR and
# checks that it runs and reports K8S_VERSION.
install_built() {
    mkdir -p "$BIN_DIR"
    install -m 0755 "$(built "$1")" "$BIN_DIR/$1"
    local v
    v=$("$BIN_DIR/$1" --version 2>&1) || die "built $1 does not run: $v"
    [[ $v == *"v$K8S_VERSION"* ]] || die "unexpected $1 version: $v"
}

install_bins() {
    local root=$CACHE/root
    install_built kube-apiserver
    install -m 0755 "$root/usr/bin/etcd" "$BIN_DIR/etcd"
    install -m 0755 "$root/usr/bin/kubectl" "$BIN_DIR/kubectl"
    "$BIN_DIR/etcd" --version >/dev/null 2>&1 || die "etcd does not run"
    "$BIN_DIR/kubectl" version --client >/dev/null 2>&1 || die "kubectl does not run"
}

# Takes the cache's lock (held until the script exits): one build at a time.
lock_cache() {
    need apt-get:apt dpkg:dpkg dpkg-source:dpkg-dev make:make flock:util-linux find:findutils \
        xz:xz-utils tar:tar install:coreutils nice:coreutils
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock 9
}

# already_built MARKER: if MARKER says what was built, says so and prints the
# bin dir; else fails.
already_built() {
    [[ -f $1 ]] || return 1
    say "already built: $(cat "$1")"
    echo "$BIN_DIR"
}

# The unpacked toolchain and the patched source tree, from the cached
# packages (downloaded first if they are not).
prepare_tree() {
    write_apt_config
    lists_present || apt_update
    fetch_debs
    unpack_debs
    fetch_source
    fix_reflect2
}

# finish_build MARKER WHAT: records WHAT was built in MARKER. The binaries are
# all that is needed from now on: drops the build tree, the Go cache and the
# unpacked toolchain (the .debs and sources stay, so a rebuild needs no
# network).
finish_build() {
    echo "$2" >"$1"
    say "removing the build tree, Go cache and unpacked toolchain"
    rm -rf "$CACHE/src" "$CACHE/gocache" "$CACHE/root"
    say "built: $(cat "$1")"
    echo "$BIN_DIR"
}

cmd_build() {
    lock_cache
    already_built "$MARKER" && return 0
    rm -rf "$BIN_DIR"
    prepare_tree
    compile kube-apiserver
    install_bins
    finish_build "$MARKER" \
        "kube-apiserver v$K8S_VERSION, etcd $("$BIN_DIR/etcd" --version | head -n1 | awk '{print $3}'), built $(date -u +%FT%TZ)"
}

cmd_build_node() {
    lock_cache
    [[ -f $MARKER ]] || die "build the API server first: scripts/k8s.sh build"
    already_built "$NODE_MARKER" && return 0
    prepare_tree
    compile "${NODE_BINS[@]}"
    local bin
    for bin in "${NODE_BINS[@]}"; do
        install_built "$bin"
    done
    finish_build "$NODE_MARKER" "${NODE_BINS[*]} v$K8S_VERSION, built $(date -u +%FT%TZ)"
}

cmd_bin_dir() {
    if [[ -f $MARKER ]]; then
        echo "$BIN_DIR"
    else
        say "kube-apiserver $K8S_VERSION is not built yet: run 'scripts/k8s.sh build' (or 'make k8s-build')"
        exit 1
    fi
}

# ------------------------------------------------------------------ pki ----

# pki DIR: CA + serving cert for 127.0.0.1/localhost, service-account key
# pair, tokens (admin.token, sidecar.token) and tokens.csv.
cmd_pki() {
    local dir=${1:?usage: k8s.sh pki DIR}
    need openssl:openssl
    mkdir -p "$dir"
    (
        cd "$dir"
        umask 077
        openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout ca.key -out ca.crt -days 3650 -subj "/CN=signalgate-test-ca" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
        # PKI_EXTRA_SANS: more names, e.g. a cluster's node and Service IPs.
        cat >apiserver.ext <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1${PKI_EXTRA_SANS:+,$PKI_EXTRA_SANS}
EOF
        openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
            -out apiserver.crt -days 3650 -extfile apiserver.ext 2>/dev/null
        rm -f apiserver.csr apiserver.ext ca.srl
        openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
        openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
        openssl rand -hex 24 >admin.token
        openssl rand -hex 24 >sidecar.token
        {
            echo "$(cat admin.token),signalgate-admin,signalgate-admin,\"system:masters\""
            echo "$(cat sidecar.token),$SIDECAR_USER,signalgate-sidecar-uid,\"$SIDECAR_GROUPS\""
        } >tokens.csv
        chmod 0644 ca.crt apiserver.crt sa.pub
    ) || die "generating certificates/keys in $dir failed"
}

# ------------------------------------------------------------- up/down ----

port_in_use() {
    local p=$1
    if command -v ss >/dev/null 2>&1; then
        [[ -n $(ss -Htln "sport = :$p" 2>/dev/null) ]]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null
    fi
}

free_port() {
    local p i
    for ((i = 0; i < 200; i++)); do
        # Below Linux's default ephemeral range (32768-60999).
        p=$((20000 + RANDOM % 12000))
        case " ${USED_PORTS:-} " in *" $p "*) continue ;; esac
        if ! port_in_use "$p"; then
            USED_PORTS="${USED_PORTS:-} $p"
            echo "$p"
            return 0
        fi
    done
    die "no free loopback port found"
}

pid_alive() {
    local pidfile=$1 name=$2 pid
    [[ -f $pidfile ]] || return 1
    pid=$(cat "$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$name" || return 1
    echo "$pid"
}

stop_one() {
    local name=$1 pidfile=$STATE/$1.pid pid
    if pid=$(pid_alive "$pidfile" "$name"); then
        say "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + 15))
        while kill -0 "$pid" 2>/dev/null; do
            if ((SECONDS >= deadline)); then
                say "$name did not stop in 15 s; killing it"
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.1
        done
    fi
    rm -f "$pidfile"
}

cmd_down() {
    stop_one kube-apiserver
    stop_one etcd
    say "down"
}

# poll URL [curl args...] until it answers 200 or the deadline passes
wait_http_ok() {
    local what=$1 deadline=$2 url=$3
    shift 3
    local code
    while :; do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$url" || true)
        [[ $code == 200 ]] && return 0
        for name in etcd kube-apiserver; do
            if [[ -f $STATE/$name.pid ]] && ! pid_alive "$STATE/$name.pid" "$name" >/dev/null; then
                tail -n 30 "$STATE/$name.log" >&2 || true
                die "$name exited while waiting for $what (log: $STATE/$name.log)"
            fi
        done
        ((SECONDS < deadline)) || die "$what not ready (last HTTP status $code) within the deadline"
        sleep 0.2
    done
}

write_kubeconfig() {
    local file=$1 name=$2 token=$3 server=$4 ca=$5
    # In a subshell: the caller's umask stays (containerd, started later by
    # cluster.sh, would otherwise make image files unreadable to pods).
    (
    umask 077
    cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: signalgate
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 <"$ca")
users:
- name: $name
  user:
    token: $token
contexts:
- name: $name
  context:
    cluster: signalgate
    user: $name
current-context: $name
EOF
    )
}

cmd_up() {
    need curl:curl openssl:openssl base64:coreutils setsid:util-linux
    [[ -f $MARKER ]] || cmd_build >/dev/null
    if pid_alive "$STATE/kube-apiserver.pid" kube-apiserver >/dev/null; then
        say "already running; run 'scripts/k8s.sh down' first for a fresh one"
        echo "export KUBECONFIG=$STATE/kubeconfig"
        return 0
    fi
    cmd_down >/dev/null 2>&1 || true
    local start=$SECONDS
    rm -rf "$STATE"
    mkdir -p "$STATE"
    cmd_pki "$STATE/pki"
    cp "$STATE/pki/admin.token" "$STATE/pki/sidecar.token" "$STATE/pki/tokens.csv" "$STATE/"

    local api_port=${SIGNALGATE_K8S_PORT:-6443}
    if port_in_use "$api_port"; then
        say "port $api_port is in use; picking a free one"
        api_port=$(free_port)
    fi
    USED_PORTS=" $api_port"
    local etcd_port peer_port
    etcd_port=$(free_port)
    peer_port=$(free_port)

    say "starting etcd on 127.0.0.1:$etcd_port"
    setsid "$BIN_DIR/etcd" --name default --data-dir "$STATE/etcd-data" \
        --listen-client-urls "http://127.0.0.1:$etcd_port" \
        --advertise-client-urls "http://127.0.0.1:$etcd_port" \
        --listen-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-cluster "default=http://127.0.0.1:$peer_port" \
        </dev/null >"$STATE/etcd.log" 2>&1 &
    echo $! >"$STATE/etcd.pid"
    wait_http_ok etcd $((SECONDS + 30)) "http://127.0.0.1:$etcd_port/health"

    say "starting kube-apiserver on https://127.0.0.1:$api_port"
    mkdir -p "$STATE/cert-dir"
    setsid "$BIN_DIR/kube-apiserver" \
        --etcd-servers="http://127.0.0.1:$etcd_port" \
        --insecure-port=0 --secure-port="$api_port" \
        --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
        --cert-dir="$STATE/cert-dir" \
        --tls-cert-file="$STATE/pki/apiserver.crt" --tls-private-key-file="$STATE/pki/apiserver.key" \
        --service-cluster-ip-range=10.0.0.0/24 \
        --service-account-issuer=https://kubernetes.default.svc \
        --service-account-key-file="$STATE/pki/sa.pub" \
        --service-account-signing-key-file="$STATE/pki/sa.key" \
        --authorization-mode=RBAC --token-auth-file="$STATE/tokens.csv" \
        --disable-admission-plugins=ServiceAccount --endpoint-reconciler-type=none \
        </dev/null >"$STATE/kube-apiserver.log" 2>&1 &
    echo $! >"$STATE/kube-apiserver.pid"
    echo "API_PORT=$api_port ETCD_PORT=$etcd_port ETCD_PEER_PORT=$peer_port" >"$STATE/ports.env"

    local server=https://127.0.0.1:$api_port
    wait_http_ok kube-apiserver $((start + 90)) "$server/readyz" \
        --cacert "$STATE/pki/ca.crt" -H "Authorization: Bearer $(cat "$STATE/admin.token")"
    write_kubeconfig "$STATE/kubeconfig" signalgate-admin "$(cat "$STATE/admin.token")" "$server" "$STATE/pki/ca.crt"
    write_kubeconfig "$STATE/sidecar.kubeconfig" signalgate-sidecar "$(cat "$STATE/sidecar.token")" "$server" "$STATE/pki/ca.crt"
    say "ready in $((SECONDS - start)) s"

    local crds=${SIGNALGATE_K8S_CRDS:-$REPO_ROOT/deploy/crds}
    if compgen -G "$crds/*.y*ml" >/dev/null; then
        say "applying $crds"
        KUBECONFIG=$STATE/kubeconfig "$BIN_DIR/kubectl" apply -f "$crds" >&2 ||
            die "kubectl apply -f $crds failed"
        KUBECONFIG=$STATE/kubeconfig "$BIN_DIR/kubectl" wait --for=condition=Established \
            --timeout=60s crd --all >&2 || die "CRDs from $crds did not become Established"
    fi
    cat <<EOF
k8s.sh: kube-apiserver v$K8S_VERSION is up at $server (state: $STATE)
  export KUBECONFIG=$STATE/kubeconfig           # admin (system:masters)
  export KUBECONFIG=$STATE/sidecar.kubeconfig   # $SIDECAR_USER
  kubectl: $BIN_DIR/kubectl    tokens: $STATE/admin.token, $STATE/sidecar.token
  stop with: scripts/k8s.sh down
EOF
}

# Sourced by scripts/cluster.sh for its helpers: run nothing then.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    case ${1:-} in
    build) cmd_build ;;
    build-node) cmd_build_node ;;
    bin-dir) cmd_bin_dir ;;
    up) cmd_up ;;
    down) cmd_down ;;
    pki)
        shift
        cmd_pki "$@"
        ;;
    *)
        echo "usage: $0 build|build-node|bin-dir|up|down|pki DIR" >&2
        exit 2
        ;;
    esac
fi
