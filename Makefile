# weft: the two commands a newcomer needs are `make demo` and `make test` (both as root).

CARGO ?= cargo
APT_PACKAGES := etcd-server etcd-client iproute2 nftables iptables protobuf-compiler iperf3 containernetworking-plugins iputils-ping wireguard-go wireguard-tools
# make demo-docker and the Docker cluster test: Debian's dockerd (with containerd, runc), an image of busybox-static
APT_PACKAGES += docker.io busybox-static
# make deb (dpkg-shlibdeps, strip) and the packaging test (systemd-analyze)
APT_PACKAGES += dpkg-dev binutils systemd

.PHONY: demo-docker deps build demo test bench bench-cni bench-control fmt clippy release install deb

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

# The seed's Docker picture on weft with Debian's dockerd: docker0 and the veths on a host, a
# container's routes, a container on another host over flannel.1, masqueraded egress, teardown.
demo-docker: build
	./scripts/demo-docker.sh

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

# make install / make deb. Where the files go (DESTDIR is prepended to each); the unit file's
# paths follow BINDIR and SYSCONFDIR. An existing $(SYSCONFDIR)/default/weftd is never replaced.
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
CNIBINDIR ?= /opt/cni/bin
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
DOCDIR ?= $(PREFIX)/share/doc/weft
# The binaries installed and packaged: release ones, built here first; with PROFILE=debug the
# debug ones as they are (the packaging test's way: CI built them already).
PROFILE ?= release
BINDIR_SRC ?= $(or $(CARGO_TARGET_DIR),target)/$(PROFILE)
DEB_OUT ?= $(or $(CARGO_TARGET_DIR),target)/debian
DEB_COMPRESS ?= xz
# STRIP=strip: make install strips the binaries (the release profile keeps debug info for
# profiling; the package is always stripped).
STRIP ?=

release:
	$(CARGO) build --release -p weftd -p weft -p weft-cni --bins

install: $(if $(filter release,$(PROFILE)),release)
	DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" BINDIR="$(BINDIR)" CNIBINDIR="$(CNIBINDIR)" \
	SYSCONFDIR="$(SYSCONFDIR)" UNITDIR="$(UNITDIR)" TMPFILESDIR="$(TMPFILESDIR)" DOCDIR="$(DOCDIR)" \
	BINDIR_SRC="$(BINDIR_SRC)" STRIP="$(STRIP)" packaging/install.sh

# A Debian package (Debian's places, /etc/default/weftd a conffile) in $(DEB_OUT).
deb: $(if $(filter release,$(PROFILE)),release)
	BINDIR_SRC="$(BINDIR_SRC)" DEB_OUT="$(DEB_OUT)" DEB_COMPRESS="$(DEB_COMPRESS)" packaging/build-deb.sh
