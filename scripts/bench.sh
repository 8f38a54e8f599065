#!/usr/bin/env bash
# Throughput benchmark: for each backend, a 2-node lab; single-stream TCP (iperf3) pod-to-pod
# across hosts vs host-to-host on the underlay, median of RUNS runs of SECONDS_PER_RUN s, ping
# RTT, and weftd's CPU. Prints each lab's table, then one summary table of the whole run.
set -euo pipefail
cd "$(dirname "$0")/.."
WEFT=${WEFT:-target/debug/weft}
# wireguard-go: a wireguard lab whose two hosts then run Debian's wireguard-go instead of weftd.
# vxlan-v6, host-gw-v6, wireguard-v6: a dual-stack lab measured over IPv6 (pods and underlay).
BACKENDS=${BACKENDS:-vxlan host-gw udp wireguard wireguard-go vxlan-v6 host-gw-v6 wireguard-v6}
RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
LAB=bench
OUT=$(mktemp -d)

trap '$WEFT lab down --name $LAB >/dev/null 2>&1 || true; rm -rf "$OUT"' EXIT
for backend in $BACKENDS; do
    $WEFT lab down --name $LAB >/dev/null 2>&1 || true
    family=()
    if [ "$backend" = wireguard-go ]; then
        $WEFT lab up --name $LAB --nodes 2 --backend wireguard >/dev/null
        $WEFT lab wireguard-go --name $LAB --node 1 --node 2 >/dev/null
    elif [ "${backend%-v6}" != "$backend" ]; then
        $WEFT lab up --name $LAB --nodes 2 --backend "${backend%-v6}" --dual-stack >/dev/null
        family=(--ipv6)
    else
        $WEFT lab up --name $LAB --nodes 2 --backend "$backend" >/dev/null
    fi
    $WEFT lab bench --name $LAB --runs "$RUNS" --seconds "$SECONDS_PER_RUN" "${family[@]}" --json > "$OUT/$backend.json"
    $WEFT lab down --name $LAB >/dev/null
done

python3 - "$OUT" $BACKENDS <<'PY'
import json, sys
out, backends = sys.argv[1], sys.argv[2:]
reports = {b: json.load(open(f"{out}/{b}.json")) for b in backends}
mid = lambda values: sorted(values)[len(values) // 2]
v4 = [r for r in reports.values() if not r.get("ipv6")]
v6 = [r for r in reports.values() if r.get("ipv6")]
under_bps = mid([r["host_bps"] for r in v4])
under_rtt = mid([r["host_rtt_ms"] for r in v4])
under_dense = mid([r["host_rtt_dense_ms"] for r in v4])
vx = reports.get("vxlan")
r0 = next(iter(reports.values()))
cc = open("/proc/sys/net/ipv4/tcp_congestion_control").read().strip()
print(f"single TCP stream, 2-node lab, median of {r0['runs']} x {r0['seconds']} s (iperf3, {cc}); ratios from the same run")
print("rtt: ping median, pings 10 ms apart; rtt 1ms: pings 1 ms apart")
print("added rtt = pod rtt - host rtt of the same lab; +rtt/vxlan compares that with vxlan's")
print(f"{'path':<26}{'Gbit/s':>8}{'/underlay':>11}{'/vxlan':>8}{'rtt ms':>9}{'rtt/vxlan':>11}{'+rtt/vxlan':>12}"
      f"{'rtt 1ms':>9}{'+rtt/vxlan':>12}{'weftd cores/Gbit/s':>20}")
print("/underlay: against the underlay of the row's own lab (IPv6 rows: the IPv6 underlay); /vxlan: against IPv4 vxlan")
print(f"{'host-to-host (underlay)':<26}{under_bps/1e9:>8.2f}{1:>11.2f}{'':>8}{under_rtt:>9.3f}{'':>11}{'':>12}{under_dense:>9.3f}")
if v6:
    u6 = mid([r["host_bps"] for r in v6])
    print(f"{'host-to-host (IPv6)':<26}{u6/1e9:>8.2f}{1:>11.2f}{'':>8}{mid([r['host_rtt_ms'] for r in v6]):>9.3f}{'':>11}{'':>12}"
          f"{mid([r['host_rtt_dense_ms'] for r in v6]):>9.3f}")
def added_ratio(r, pod, host):
    if not vx or r[pod] is None or r[host] is None or vx[pod] is None or vx[host] is None:
        return "-"
    base = vx[pod] - vx[host]
    return f"{(r[pod] - r[host]) / base:.2f}" if base > 0 else "-"
for b, r in reports.items():
    gb = r["pod_bps"] / 1e9
    ratio_vx = f"{r['pod_bps']/vx['pod_bps']:.2f}" if vx else "-"
    rtt = r["pod_rtt_ms"]
    rtt_vx = f"{rtt/vx['pod_rtt_ms']:.2f}" if vx and rtt and vx["pod_rtt_ms"] else "-"
    cores = r.get("weftd_cores")
    cpg = f"{cores/gb:.3f}" if cores is not None and gb > 0 else "-"
    label = "pod-to-pod, " + (b[:-3] + " IPv6" if b.endswith("-v6") else b)
    print(f"{label:<26}{gb:>8.2f}{r['pod_bps']/r['host_bps']:>11.2f}{ratio_vx:>8}{rtt or 0:>9.3f}{rtt_vx:>11}"
          f"{added_ratio(r, 'pod_rtt_ms', 'host_rtt_ms'):>12}{r['pod_rtt_dense_ms'] or 0:>9.3f}"
          f"{added_ratio(r, 'pod_rtt_dense_ms', 'host_rtt_dense_ms'):>12}{cpg:>20}")
PY
