#!/usr/bin/env bash
# The demo: a 3-node VXLAN cluster in network namespaces with a real etcd (TLS), then teardown.
set -euo pipefail
cd "$(dirname "$0")/.."
WEFT=${WEFT:-target/debug/weft}
LAB=demo
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

trap '$WEFT lab down --name $LAB >/dev/null 2>&1 || true' EXIT
$WEFT lab down --name $LAB >/dev/null 2>&1 || true

step "weft lab up: 3 hosts on one underlay switch (198.51.100.0/24), etcd with TLS, weftd on each host, one pod per host"
$WEFT lab up --name $LAB --nodes 3 --backend vxlan --ip-masq

step "leases, hosts and the pod-to-pod reachability matrix"
$WEFT lab status --name $LAB

step "host 1: subnet.env"
$WEFT lab exec --name $LAB --node 1 -- cat /run/weft/lab/$LAB/h1/subnet.env
step "host 1: the VTEP (ip -d link show flannel.1)"
$WEFT lab exec --name $LAB --node 1 -- ip -d link show flannel.1
step "host 1: one route per remote subnet (ip route)"
$WEFT lab exec --name $LAB --node 1 -- ip route
step "host 1: neighbour entries, remote subnet IP -> remote VTEP MAC (ip neigh show dev flannel.1)"
$WEFT lab exec --name $LAB --node 1 -- ip neigh show dev flannel.1
step "host 1: FDB entries, remote VTEP MAC -> remote host IP (bridge fdb show dev flannel.1)"
$WEFT lab exec --name $LAB --node 1 -- bridge fdb show dev flannel.1
step "host 1: masquerade rules (iptables -t nat -S FLANNEL-POSTRTG)"
$WEFT lab exec --name $LAB --node 1 -- iptables -t nat -S FLANNEL-POSTRTG

step "weft lab down"
$WEFT lab down --name $LAB
trap - EXIT
echo "demo finished: everything the lab made is gone"
