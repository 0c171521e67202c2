# signalgate — see README.md. Every target installs what it needs.
SHELL := /bin/bash
.DEFAULT_GOAL := build

CARGO ?= cargo
WASM := target/wasm32-wasip1/release/signalgate_filter.wasm
ENVOY := .venv/bin/envoy

# The filter's build profile, for the wasm build only (see Cargo.toml).
WASM_PROFILE := CARGO_PROFILE_RELEASE_OPT_LEVEL=3 CARGO_PROFILE_RELEASE_LTO=true \
	CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 CARGO_PROFILE_RELEASE_PANIC=abort \
	CARGO_PROFILE_RELEASE_STRIP=true

.PHONY: deps build wasm checker faults-long native native-faults bench-wasm sidecar run test lint structure fmt bench k8s-build k8s-build-node images cluster-up cluster-down k8s-up k8s-down clean crd demo knobs bench-ab

deps:
	@scripts/install-deps.sh

wasm: deps
	$(WASM_PROFILE) $(CARGO) build --release --target wasm32-wasip1 -p signalgate-filter
	@ls -l $(WASM)

## checker: the payload checker page (docs/checker.md) in target/checker: the model and the
## resource building for the browser (wasm-bindgen), plus checker/www; static files for any server
## (unstripped: wasm-bindgen reads the wasm's target_features section; it drops the names itself)
checker: deps
	CARGO_PROFILE_RELEASE_STRIP=false $(CARGO) build --release --target wasm32-unknown-unknown -p signalgate-checker
	wasm-bindgen --target web --no-typescript --remove-name-section --remove-producers-section \
		--out-dir target/checker/pkg target/wasm32-unknown-unknown/release/signalgate_checker.wasm
	cp checker/www/index.html checker/www/checker.js checker/www/checker.css target/checker/
	@ls -l target/checker/pkg/signalgate_checker_bg.wasm

## bench-wasm: the filter plus the benchmark's floor module (bench/wasm-floor)
bench-wasm: wasm
	$(WASM_PROFILE) $(CARGO) build --release --target wasm32-wasip1 -p signalgate-wasm-floor

sidecar:
	$(CARGO) build --release -p signalgate-sidecar

## native: the edge as an Envoy dynamic module, target/release/libsignalgate_edge_native.so
## (docs/native-edge.md; envoy/envoy-native.yaml loads it)
native:
	$(CARGO) build --release -p signalgate-edge-native
	@ls -l target/release/libsignalgate_edge_native.so

## native-faults: the module with test-only fault injection (a header makes a hook panic), for the edge tests
native-faults:
	$(CARGO) build -p signalgate-edge-native --features fault-injection
	mkdir -p target/fault-injection && cp target/debug/libsignalgate_edge_native.so target/fault-injection/

## build: the filter (wasm and native module), the sidecar (release) and the checker page, plus Envoy in .venv
build: wasm native sidecar checker

## run: Envoy + filter + sidecar on the embedded default (in-memory store, directory sink);
## EDGE=native runs the dynamic module (envoy/envoy-native.yaml) instead of the wasm filter
EDGE ?= wasm
run: build
	@EDGE=$(EDGE) scripts/run.sh

## demo: Alertmanager -> Envoy + filter -> sidecar (in-memory store, directory sink), fires a small storm
demo: build
	@scripts/demo.sh

## test: everything, against real Envoy, Redis, kube-apiserver and Alertmanager, and the shipped
## manifests on a local single-node cluster (tests/tests/cluster.rs)
test: deps wasm native native-faults checker k8s-build k8s-build-node images
	$(CARGO) build -p signalgate-sidecar
	$(CARGO) test --workspace --no-fail-fast

## faults-long: the randomized checker's long run (issue 19; tests/src/fault_checker): Envoy + filter,
## three sidecars, a Redis Cluster and a real API server under every fault, CHECKER_SECONDS (300) of
## workload; CHECKER_SEED, CHECKER_FAULTS (all), CHECKER_RUNS (1); reports in target/randomized-checker/
faults-long: deps wasm k8s-build
	$(CARGO) build -p signalgate-sidecar
	CHECKER_SECONDS=$${CHECKER_SECONDS:-300} $(CARGO) test -p signalgate-tests --test fault_checker_long -- --ignored --nocapture

lint: deps structure
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p signalgate-filter --target wasm32-wasip1 -- -D warnings
	$(CARGO) clippy -p signalgate-checker --target wasm32-unknown-unknown -- -D warnings

## structure: no import loops between modules, no oversized files (docs/development.md)
structure:
	python3 scripts/module-cycles.py --self-test
	python3 scripts/module-cycles.py
	scripts/file-sizes.sh

fmt:
	$(CARGO) fmt --all

k8s-build:
	@scripts/k8s.sh build

## k8s-build-node: kubelet, kube-controller-manager, kube-scheduler and kube-proxy from the same
## source, cached beside the API server (~5.5 min cold), for the local cluster
k8s-build-node: k8s-build
	@scripts/k8s.sh build-node

## images: the sidecar, filter, filter-init, Envoy and Redis images as docker-archive tars in
## target/images/ (scripts/image.py, no docker needed), imported into the local cluster if it is up
images:
	@scripts/images.sh

## cluster-up: a single-node Kubernetes 1.20 cluster on this machine (scripts/cluster.sh: its own
## network namespace, containerd, kubelet, kube-proxy), with the images imported; KUBECONFIG printed
cluster-up: k8s-build-node images
	@scripts/cluster.sh up
	@scripts/cluster.sh import target/images/*.tar

cluster-down:
	@scripts/cluster.sh down

k8s-up:
	@scripts/k8s.sh up

k8s-down:
	@scripts/k8s.sh down

clean:
	$(CARGO) clean

## bench: benchmarks side by side with their baselines; report in target/bench/ (BENCH_QUICK=1: smoke, < 2 min)
bench: deps
	@scripts/bench.sh

## bench-ab: same-run A/B of the duplicate path and the wasm filter against BASE=<rev>
bench-ab: deps
	@BASE=$(BASE) scripts/bench-ab.sh

## crd: regenerate deploy/crds/ from the Rust types
crd:
	$(CARGO) run -q -p signalgate-sidecar -- --print-crd > deploy/crds/remediationrequests.signalgate.io.yaml
	cp deploy/crds/remediationrequests.signalgate.io.yaml deploy/base/
	cp deploy/crds/remediationrequests.signalgate.io.yaml deploy/istio/common/

## knobs: regenerate the sidecar's knob table in docs/reference.md from the code
knobs:
	$(CARGO) run -q -p signalgate-sidecar -- --print-knobs-markdown > target/knobs.md
	awk 'FNR == NR { table = table $$0 "\n"; next } \
		/<!-- sidecar-knobs:end -->/ { printf "%s", table; skip = 0 } \
		!skip { print } \
		/<!-- sidecar-knobs:begin -->/ { skip = 1 }' target/knobs.md docs/reference.md > target/reference.md
	mv target/reference.md docs/reference.md
