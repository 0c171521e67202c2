#!/usr/bin/env bash
# A single-node Kubernetes 1.20 cluster on this machine, for running the
# shipped manifests for real (issue 20): etcd, kube-apiserver (ServiceAccount
# admission, token signing), controller-manager, scheduler, containerd with a
# locally built sandbox image, the CNI bridge, kubelet and kube-proxy.
#
#   scripts/cluster.sh up        start it (needs make k8s-build-node first)
#   scripts/cluster.sh down      stop everything and remove its network
#   scripts/cluster.sh status    exit 0 if it is up
#   scripts/cluster.sh import TAR...
#                                import docker-archive images into its containerd
#   scripts/cluster.sh env       print the variables tests and users need
#   scripts/cluster.sh render [OVERLAY]
#                                print OVERLAY (default: tests/fixtures/cluster/overlay,
#                                deploy/base with the local images and an in-cluster
#                                Redis) rendered for this cluster
#   scripts/cluster.sh deploy [OVERLAY]
#                                apply it, wait until every pod is Ready, print
#                                where to send alerts
#
# Everything runs in a network namespace of its own, so kube-proxy's iptables
# rules, kubelet's ports and the pods' bridge never touch the host's network:
#
#   host 10.213.0.1 --veth-- 10.213.0.2 node (API server :6443, kubelet :10250)
#                                        +-- bridge sg-cni0 10.214.0.1/24 -- pods
#   Services 10.96.0.0/24: the host routes them (and the pods) via the node.
#
# Processes are started with `nsenter --net` (not `ip netns exec`), so they
# share the host's mount namespace: kubelet's volume mounts must be visible to
# containerd. State lives in target/cluster/, but for what kubelet 1.20 and
# containerd's shims keep in fixed places (/var/log/pods, /run/containerd/s);
# `down` removes the pod logs. No registry is used: images come from
# `make images`, the sandbox (pause) image from scripts/image.py.
set -euo pipefail

# Files containerd and kubelet write must be readable by non-root pods.
umask 022
SAY_AS=cluster.sh
# shellcheck source=scripts/k8s.sh
source "$(dirname "${BASH_SOURCE[0]}")/k8s.sh"
STATE=$REPO_ROOT/target/cluster

NETNS=signalgate-cluster
HOST_IF=sg-host
NODE_IF=sg-node
HOST_IP=10.213.0.1
NODE_IP=10.213.0.2
POD_CIDR=10.214.0.0/24
BRIDGE=sg-cni0
SERVICE_CIDR=10.96.0.0/24
API_SERVICE_IP=10.96.0.1
API_PORT=6443
NODE_NAME=signalgate-node
PAUSE_IMAGE=signalgate.local/pause:dev
OVERLAY=$REPO_ROOT/tests/fixtures/cluster/overlay
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy)
UP_TIMEOUT=${SIGNALGATE_CLUSTER_TIMEOUT:-180}

in_ns() { nsenter --net="/var/run/netns/$NETNS" "$@"; }
kubectl_() { KUBECONFIG=$STATE/kubeconfig "$BIN_DIR/kubectl" "$@"; }
ctr_() { ctr --address "$STATE/containerd/containerd.sock" --namespace k8s.io "$@"; }

# start NAME CMD...: runs CMD in the cluster's network namespace, detached,
# logging to $STATE/NAME.log.
start() {
    local name=$1
    shift
    say "starting $name"
    # Not through in_ns: a function would fork once more, and $! would not be
    # the component's pid.
    nsenter --net="/var/run/netns/$NETNS" setsid "$@" </dev/null >"$STATE/$name.log" 2>&1 &
    echo $! >"$STATE/$name.pid"
}

# Fails with the log of the first component that died.
check_alive() {
    local name
    for name in "${COMPONENTS[@]}"; do
        [[ -f $STATE/$name.pid ]] || continue
        if ! pid_alive "$STATE/$name.pid" "$name" >/dev/null; then
            tail -n 40 "$STATE/$name.log" >&2 || true
            die "$name exited (log: $STATE/$name.log)"
        fi
    done
}

# wait_for WHAT DEADLINE CMD...: polls CMD until it succeeds; a component
# dying or the deadline passing fails with the logs.
wait_for() {
    local what=$1 deadline=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        check_alive
        if ((SECONDS >= deadline)); then
            local name
            for name in "${COMPONENTS[@]}"; do
                [[ -f $STATE/$name.log ]] && { echo "--- $name.log (last 15 lines)" >&2; tail -n 15 "$STATE/$name.log" >&2; }
            done
            die "$what not ready within ${UP_TIMEOUT} s (logs in $STATE)"
        fi
        sleep 0.5
    done
}

net_up() {
    local cidr
    for cidr in "$SERVICE_CIDR" "$POD_CIDR" "${HOST_IP%.*}.0/30"; do
        [[ -z $(ip route show "$cidr") ]] ||
            die "the host already routes $cidr ($(ip route show "$cidr")): the cluster needs it"
    done
    ip netns add "$NETNS"
    ip link add "$HOST_IF" type veth peer name "$NODE_IF"
    ip link set "$NODE_IF" netns "$NETNS"
    ip addr add "$HOST_IP/30" dev "$HOST_IF"
    ip link set "$HOST_IF" up
    in_ns ip addr add "$NODE_IP/30" dev "$NODE_IF"
    in_ns ip link set "$NODE_IF" up
    in_ns ip link set lo up
    in_ns ip route add default via "$HOST_IP"
    ip route add "$SERVICE_CIDR" via "$NODE_IP"
    ip route add "$POD_CIDR" via "$NODE_IP"
    in_ns sysctl -qw net.ipv4.ip_forward=1
    # A pod reaching a Service whose endpoint is on the same bridge: the reply
    # must pass iptables to be un-NATed (kube-proxy expects this).
    in_ns sysctl -qw net.bridge.bridge-nf-call-iptables=1 ||
        die "net.bridge.bridge-nf-call-iptables cannot be set (is br_netfilter loaded?)"
}

net_down() {
    ip route del "$SERVICE_CIDR" via "$NODE_IP" 2>/dev/null || true
    ip route del "$POD_CIDR" via "$NODE_IP" 2>/dev/null || true
    ip link del "$HOST_IF" 2>/dev/null || true
    local ns
    # The pods' network namespaces (containerd names them cni-*): only those
    # holding an address of this cluster's pod range.
    for ns in $(ip netns list 2>/dev/null | awk '/^cni-/ {print $1}'); do
        if ip -n "$ns" -4 addr show 2>/dev/null | grep -q "inet ${POD_CIDR%.*}\."; then
            ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
            ip netns del "$ns" 2>/dev/null || true
        fi
    done
    ip netns del "$NETNS" 2>/dev/null || true
}

write_configs() {
    mkdir -p "$STATE/cni/net.d" "$STATE/containerd" "$STATE/kubelet"
    cat >"$STATE/cni/net.d/10-signalgate.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "signalgate",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
      "ipam": { "type": "host-local", "ranges": [[{ "subnet": "$POD_CIDR" }]], "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": "$STATE/cni/ipam" }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
    # containerd's defaults, with its own paths, the local sandbox image, and
    # restrict_oom_score_adj: this sandbox refuses lowering oom_score_adj,
    # which otherwise kills every pod sandbox.
    containerd config default | python3 -c '
import re, sys
state, pause, cni = sys.argv[1:4]
text = sys.stdin.read()
def set_key(text, key, value):
    new, n = re.subn(r"(?m)^(\s*" + re.escape(key) + r" = ).*$", lambda m: m.group(1) + value, text, count=1)
    if n == 0:
        sys.exit("containerd config: no key " + key)
    return new
text = set_key(text, "root", "\"%s/containerd/root\"" % state)
text = set_key(text, "state", "\"%s/containerd/state\"" % state)
text = re.sub(r"(?m)^(\s*address = )\"/run/containerd/containerd.sock\"", lambda m: m.group(1) + "\"%s/containerd/containerd.sock\"" % state, text)
text = set_key(text, "sandbox_image", "\"%s\"" % pause)
text = set_key(text, "restrict_oom_score_adj", "true")
text = set_key(text, "bin_dir", "\"/usr/lib/cni\"")
text = set_key(text, "conf_dir", "\"%s\"" % cni)
text = set_key(text, "SystemdCgroup", "false")
text = set_key(text, "Root", "\"%s/containerd/runc\"" % state)
sys.stdout.write(text)
' "$STATE" "$PAUSE_IMAGE" "$STATE/cni/net.d" >"$STATE/containerd/config.toml"

    # Who wrote each RemediationRequest (tests/tests/cluster.rs reads it).
    cat >"$STATE/audit-policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [create, update, patch, delete]
  resources: [{ group: signalgate.io, resources: [remediationrequests] }]
- level: None
EOF

    cat >"$STATE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: { enabled: true }
  webhook: { enabled: false }
authorization: { mode: AlwaysAllow }
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
# No registry: an image garbage-collected could never come back.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# A full CI disk must not evict the pods under test.
evictionHard: { memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%" }
serializeImagePulls: false
syncFrequency: 10s
fileCheckFrequency: 10s
nodeStatusUpdateFrequency: 5s
EOF

    cat >"$STATE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: { kubeconfig: $STATE/kubeconfig }
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
clusterCIDR: $POD_CIDR
mode: iptables
iptables: { syncPeriod: 10s, minSyncPeriod: 0s }
# Not permitted in this sandbox; the kernel's defaults are enough here.
conntrack: { maxPerCore: 0 }
EOF
}

# The sandbox ("pause") image: no registry, so it is built here from a static
# busybox that sleeps.
pause_image() {
    local dir=$STATE/pause
    mkdir -p "$dir"
    cat >"$dir/Dockerfile" <<'EOF'
FROM scratch
COPY --from=busybox /bin/busybox /bin/busybox
USER 65535:65535
ENTRYPOINT ["/bin/busybox", "sleep", "2147483647"]
EOF
    python3 "$REPO_ROOT/scripts/image.py" "$dir/Dockerfile" --tag "$PAUSE_IMAGE" \
        --out "$dir/pause.tar" --stage busybox:/bin/busybox=/bin/busybox >&2
    ctr_ images import "$dir/pause.tar" >&2
}

cmd_status() {
    [[ -f $STATE/kubeconfig ]] || return 1
    local name
    for name in "${COMPONENTS[@]}"; do
        pid_alive "$STATE/$name.pid" "$name" >/dev/null || return 1
    done
    kubectl_ get --raw /readyz >/dev/null 2>&1
}

cmd_env() {
    cat <<EOF
export KUBECONFIG=$STATE/kubeconfig
export PATH=$BIN_DIR:\$PATH
export SIGNALGATE_CLUSTER_KUBECTL=$BIN_DIR/kubectl
export SIGNALGATE_CLUSTER_STATE=$STATE
EOF
}

# deploy/base's PodDisruptionBudget is policy/v1 (Kubernetes 1.21+); this
# cluster is 1.20, which serves the same object as policy/v1beta1.
cmd_render() {
    kubectl_ kustomize "${1:-$OVERLAY}" |
        awk '/^apiVersion: policy\/v1$/ { held = $0; next }
             held != "" { if ($0 == "kind: PodDisruptionBudget") print "apiVersion: policy/v1beta1"; else print held; held = "" }
             { print }'
}

cmd_deploy() {
    cmd_status || die "the cluster is not up (make cluster-up)"
    local rendered=$STATE/deployed.yaml
    cmd_render "$@" >"$rendered"
    kubectl_ apply -f "$rendered" >&2
    local deployments d
    deployments=$(kubectl_ get -f "$rendered" \
        -o jsonpath='{range .items[?(@.kind=="Deployment")]}{.metadata.namespace}/{.metadata.name} {end}') ||
        die "cannot list the deployments of $rendered"
    for d in $deployments; do
        kubectl_ -n "${d%/*}" rollout status "deployment/${d#*/}" --timeout=180s >&2 ||
            die "deployment $d not ready (kubectl -n ${d%/*} describe pods)"
    done
    local ip
    ip=$(kubectl_ -n signalgate-system get service signalgate -o jsonpath='{.spec.clusterIP}')
    cat <<EOF
cluster.sh: signalgate is Ready; its Service is http://$ip:8080 (routed from this host)
  kubectl create namespace shop
  scripts/send-example-alert.sh http://$ip:8080
  kubectl get remediationrequests -A
EOF
}

cmd_import() {
    (($#)) || die "usage: cluster.sh import TAR..."
    cmd_status || die "the cluster is not up (make cluster-up)"
    local tar
    for tar in "$@"; do
        say "importing $tar"
        ctr_ images import "$tar" >&2 || die "importing $tar failed"
    done
}

# Every container SIGKILLed and removed while containerd still runs: they
# outlive containerd and their shims.
kill_containers() {
    local ids id
    ids=$(ctr_ tasks ls -q 2>/dev/null) || return 0
    for id in $ids; do
        ctr_ tasks kill --signal SIGKILL "$id" >/dev/null 2>&1 || true
    done
    for id in $ids; do
        ctr_ tasks delete --force "$id" >/dev/null 2>&1 || true
    done
}

cmd_down() {
    local i name
    for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
        name=${COMPONENTS[i]}
        if [[ $name == containerd ]] && pid_alive "$STATE/containerd.pid" containerd >/dev/null; then
            kill_containers
        fi
        stop_one "$name"
    done
    # Whatever a pidfile did not name (a start cut short): every process
    # started with this state directory on its command line, the shims too.
    pkill -KILL -f -- "$STATE/" 2>/dev/null || true
    local m uid
    for m in $(awk -v s="$STATE/" 'index($2, s) == 1 {print $2}' /proc/self/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    # kubelet 1.20 writes pod logs to /var/log/pods whatever its root dir.
    for uid in $(ls "$STATE/kubelet/pods" 2>/dev/null); do
        rm -rf /var/log/pods/*_"$uid"
    done
    net_down
    say "down"
}

api_endpoint_is_the_node() {
    [[ $(kubectl_ get endpoints kubernetes -o jsonpath='{.subsets[0].addresses[0].ip}') == "$NODE_IP" ]]
}

cmd_up() {
    need nsenter:util-linux ip:iproute2 containerd:containerd runc:runc ctr:containerd \
        iptables:iptables conntrack:conntrack curl:curl openssl:openssl
    [[ -x /usr/lib/cni/bridge ]] || die "the CNI plugins are missing (scripts/install-deps.sh)"
    [[ -f $MARKER && -f $NODE_MARKER ]] || die "binaries not built: make k8s-build-node"
    if cmd_status; then
        say "already up; 'scripts/cluster.sh down' first for a fresh one"
        cmd_env
        return 0
    fi
    cmd_down >/dev/null 2>&1 || true
    # A start that fails takes down what it started (the logs stay).
    trap 'say "start failed: taking down what started (logs in $STATE)"; cmd_down >/dev/null 2>&1' EXIT
    local started=$SECONDS deadline=$((SECONDS + UP_TIMEOUT))
    rm -rf "$STATE"
    mkdir -p "$STATE"
    net_up
    PKI_EXTRA_SANS="IP:$NODE_IP,IP:$API_SERVICE_IP" cmd_pki "$STATE/pki"
    # The admin's static token only: the sidecar must use its pod's own
    # (projected, bound) service-account token.
    grep ',signalgate-admin,' "$STATE/pki/tokens.csv" >"$STATE/pki/admin-tokens.csv"
    local server=https://$NODE_IP:$API_PORT
    write_kubeconfig "$STATE/kubeconfig" signalgate-admin "$(cat "$STATE/pki/admin.token")" "$server" "$STATE/pki/ca.crt"
    write_configs

    start etcd "$BIN_DIR/etcd" --name default --data-dir "$STATE/etcd-data" \
        --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
        --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster default=http://127.0.0.1:2380
    start kube-apiserver "$BIN_DIR/kube-apiserver" \
        --etcd-servers=http://127.0.0.1:2379 --insecure-port=0 \
        --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port="$API_PORT" \
        --cert-dir="$STATE/cert-dir" \
        --tls-cert-file="$STATE/pki/apiserver.crt" --tls-private-key-file="$STATE/pki/apiserver.key" \
        --client-ca-file="$STATE/pki/ca.crt" \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --service-account-issuer=https://kubernetes.default.svc \
        --service-account-key-file="$STATE/pki/sa.pub" \
        --service-account-signing-key-file="$STATE/pki/sa.key" \
        --authorization-mode=RBAC --token-auth-file="$STATE/pki/admin-tokens.csv" \
        --audit-policy-file="$STATE/audit-policy.yaml" --audit-log-path="$STATE/audit.log" \
        --kubelet-preferred-address-types=InternalIP
    wait_for kube-apiserver "$deadline" kubectl_ get --raw /readyz

    start kube-controller-manager "$BIN_DIR/kube-controller-manager" \
        --kubeconfig="$STATE/kubeconfig" --leader-elect=false --port=0 \
        --bind-address=127.0.0.1 --secure-port=10257 \
        --service-account-private-key-file="$STATE/pki/sa.key" \
        --root-ca-file="$STATE/pki/ca.crt" --use-service-account-credentials=false \
        --service-cluster-ip-range="$SERVICE_CIDR" --cluster-cidr="$POD_CIDR" \
        --controllers='*,-nodeipam,-csrsigning,-csrapproving,-bootstrapsigner,-tokencleaner'
    start kube-scheduler "$BIN_DIR/kube-scheduler" \
        --kubeconfig="$STATE/kubeconfig" --leader-elect=false --port=0 \
        --bind-address=127.0.0.1 --secure-port=10259
    start containerd containerd --config "$STATE/containerd/config.toml"
    wait_for containerd "$deadline" ctr_ version
    pause_image
    start kubelet "$BIN_DIR/kubelet" \
        --config="$STATE/kubelet.yaml" --kubeconfig="$STATE/kubeconfig" \
        --root-dir="$STATE/kubelet" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" \
        --container-runtime=remote --container-runtime-endpoint="unix://$STATE/containerd/containerd.sock" \
        --image-service-endpoint="unix://$STATE/containerd/containerd.sock"
    start kube-proxy "$BIN_DIR/kube-proxy" --config="$STATE/kube-proxy.yaml"

    wait_for "node $NODE_NAME" "$deadline" \
        kubectl_ wait --for=condition=Ready --timeout=1s "node/$NODE_NAME"
    # Pods need their namespace's service account (token controller) and the
    # kubernetes Service's endpoint (the API server's own reconciler).
    wait_for "default service account" "$deadline" kubectl_ get serviceaccount default
    wait_for "kubernetes endpoints" "$deadline" api_endpoint_is_the_node
    trap - EXIT
    say "up in $((SECONDS - started)) s"
    cmd_env
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
env) cmd_env ;;
render)
    shift
    cmd_render "$@"
    ;;
deploy)
    shift
    cmd_deploy "$@"
    ;;
import)
    shift
    cmd_import "$@"
    ;;
*)
    echo "usage: $0 up|down|status|env|render [OVERLAY]|deploy [OVERLAY]|import TAR..." >&2
    exit 2
    ;;
esac
