#!/usr/bin/env bash
# The seed's third picture, Docker's default network, on weft with Debian's dockerd: two lab
# hosts (vxlan) each run dockerd with the options `weft docker-opts` renders from subnet.env and
# one busybox container; then docker0 and the veths, a container's routes, a container on the
# other host reached over flannel.1, masqueraded egress, and teardown. Every address is inside
# the lab's namespaces (198.51.100.0/24 underlay, 203.0.113.1 stands for the internet).
set -euo pipefail
cd "$(dirname "$0")/.."
WEFT=${WEFT:-target/debug/weft}
LAB=demo-docker
DIR=/run/weft/lab/$LAB
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
# The docker CLI of host N's dockerd (Debian's, not whatever `docker` PATH finds first).
dk() { local n=$1; shift; DOCKER_CONFIG=$DIR/docker-cli /usr/bin/docker -H "unix://$DIR/h$n/docker/docker.sock" "$@"; }
on() { local n=$1; shift; $WEFT lab exec --name $LAB --node "$n" -- "$@"; }

trap '$WEFT lab down --name $LAB >/dev/null 2>&1 || true' EXIT
$WEFT lab down --name $LAB >/dev/null 2>&1 || true

step "weft lab up --docker: 2 hosts, weftd --ip-masq, dockerd on each host's weft subnet, one container per host"
start=$(date +%s%N)
$WEFT lab up --name $LAB --nodes 2 --backend vxlan --ip-masq --docker
echo "up in $((($(date +%s%N) - start) / 1000000)) ms"

step "containers and the container-to-container reachability matrix (weft lab status)"
$WEFT lab status --name $LAB

ip1=$(dk 1 inspect --format '{{.NetworkSettings.IPAddress}}' c1)
ip2=$(dk 2 inspect --format '{{.NetworkSettings.IPAddress}}' c2)

step "host 1: subnet.env -> weft docker-opts -> dockerd's options"
run cat $DIR/h1/subnet.env
run cat $DIR/h1/docker/docker_opts.env
printf '$ ps -o args= -C dockerd   (host 1)\n'
tr '\0' ' ' </proc/"$(cat $DIR/h1/docker/dockerd.pid)"/cmdline | fold -w 120; echo

step "host 1: docker0 on FLANNEL_SUBNET at FLANNEL_MTU, and the container's veth plugged into it"
on 1 ip -br addr show dev docker0
on 1 ip link show dev docker0
on 1 ip link show master docker0
on 1 bridge link show

step "container c1 (host 1): its eth0 and routes: its own subnet 'scope link' (ARP, switched by docker0), everything else via docker0"
printf '$ docker exec c1 ip addr show eth0\n'; dk 1 exec c1 ip addr show eth0
printf '$ docker exec c1 ip route\n'; dk 1 exec c1 ip route

step "c1 -> c2 ($ip2, on host 2): host 1 routes it into flannel.1 (ip route get $ip2 from $ip1 iif docker0)"
on 1 ip route get "$ip2" from "$ip1" iif docker0
on 1 ip neigh show dev flannel.1
on 1 bridge fdb show dev flannel.1
tx() { on 1 cat /sys/class/net/flannel.1/statistics/tx_packets; }
before=$(tx)
printf '$ docker exec c1 ping -c 3 %s\n' "$ip2"; dk 1 exec c1 ping -c 3 "$ip2"
echo "flannel.1 on host 1 sent $(($(tx) - before)) packets meanwhile (VXLAN-wrapped to 198.51.100.2)"
printf '$ docker exec c1 wget -qO- http://198.51.100.2:8080/   (the port c2 publishes on host 2)\n'
dk 1 exec c1 wget -qO- http://198.51.100.2:8080/

step "masqueraded egress: c1 -> a server 'outside' at 203.0.113.1 (in the lab's switch namespace)"
www=$DIR/outside-www
mkdir -p $www/cgi-bin
printf '#!/bin/busybox sh\necho "Content-Type: text/plain"\necho\necho "the outside saw a connection from $REMOTE_ADDR"\n' >$www/cgi-bin/whoami
chmod +x $www/cgi-bin/whoami
ip netns exec wl-$LAB-sw /bin/busybox httpd -f -p 203.0.113.1:8000 -h $www &
httpd=$!
sleep 0.3
printf '$ docker exec c1 wget -qO- http://203.0.113.1:8000/cgi-bin/whoami   (c1 is %s, host 1 is 198.51.100.1)\n' "$ip1"
dk 1 exec c1 wget -qO- http://203.0.113.1:8000/cgi-bin/whoami
kill $httpd 2>/dev/null || true
echo "weft's rule did it (FLANNEL-POSTRTG counters), Docker (--ip-masq=false) masquerades nothing but its published port's hairpin:"
on 1 iptables -t nat -L FLANNEL-POSTRTG -v -n
on 1 iptables -t nat -S POSTROUTING

step "weft lab down: every dockerd, containerd, shim, container, cgroup and mount goes"
$WEFT lab down --name $LAB
trap - EXIT
left=$(ls -d /sys/fs/cgroup/*/wl-$LAB-h* 2>/dev/null || true)
procs=$(pgrep -a -f "$DIR/h[0-9]+/docker/" || true)
echo "cgroup directories left: ${left:-none}"
echo "dockerd, containerd, shims of the lab left: ${procs:-none}"
echo "mounts under $DIR left: $(grep -c " $DIR" /proc/self/mountinfo || true)"
echo "demo finished"
