# weft: the two commands a newcomer needs are `make demo` and `make test` (both as root).

CARGO ?= cargo
APT_PACKAGES := etcd-server etcd-client iproute2 nftables iptables protobuf-compiler iperf3 containernetworking-plugins iputils-ping

.PHONY: deps build demo test bench bench-cni bench-control fmt clippy

# Installs what is missing (Debian), nothing when all is there.
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

build: deps
	$(CARGO) build --workspace --bins

# A 3-node VXLAN cluster in network namespaces with a real etcd: leases, one host's kernel
# entries, the pod-to-pod reachability matrix, then teardown.
demo: build
	./scripts/demo.sh

# Unit tests, then the integration tests (root: namespaces, real etcd, real kernel).
test: build
	$(CARGO) test --workspace -- --test-threads=2

bench: deps
	$(CARGO) build --release --workspace --bins
	WEFT=target/release/weft ./scripts/bench.sh

# CNI ADD/DEL latency, weft-cni vs Debian's bridge + host-local, 100 containers each.
bench-cni: deps
	$(CARGO) test --release -p weft-cni --test bench -- --ignored --nocapture

# Control-plane cost on one-host vxlan labs with 500, 5,000 and 20,000 leases in a real etcd:
# convergence, one lease event, idle CPU, RSS, healing (LEASES=500,5000 to choose sizes).
LEASES ?= 500,5000,20000
bench-control: deps
	$(CARGO) build --release --workspace --bins
	target/release/weft lab bench-control --leases $(LEASES)

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
