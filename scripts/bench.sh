#!/usr/bin/env bash
# Throughput benchmark: for each backend, a 2-node lab; single-stream TCP (iperf3) pod-to-pod
# across hosts vs host-to-host on the underlay, median of RUNS runs of SECONDS_PER_RUN s, ping
# RTT, and weftd's CPU. Prints each lab's table, then one summary table of the whole run.
set -euo pipefail
cd "$(dirname "$0")/.."
WEFT=${WEFT:-target/debug/weft}
BACKENDS=${BACKENDS:-vxlan host-gw udp}
RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
LAB=bench
OUT=$(mktemp -d)

trap '$WEFT lab down --name $LAB >/dev/null 2>&1 || true; rm -rf "$OUT"' EXIT
for backend in $BACKENDS; do
    $WEFT lab down --name $LAB >/dev/null 2>&1 || true
    $WEFT lab up --name $LAB --nodes 2 --backend "$backend" >/dev/null
    $WEFT lab bench --name $LAB --runs "$RUNS" --seconds "$SECONDS_PER_RUN" --json > "$OUT/$backend.json"
    $WEFT lab down --name $LAB >/dev/null
done

python3 - "$OUT" $BACKENDS <<'PY'
import json, sys
out, backends = sys.argv[1], sys.argv[2:]
reports = {b: json.load(open(f"{out}/{b}.json")) for b in backends}
under = [r["host_bps"] for r in reports.values()]
under_bps = sorted(under)[len(under) // 2]
under_rtt = sorted(r["host_rtt_ms"] for r in reports.values())[len(under) // 2]
vx = reports.get("vxlan")
r0 = next(iter(reports.values()))
print(f"single TCP stream, 2-node lab, median of {r0['runs']} x {r0['seconds']} s (iperf3); ratios from the same run")
print("added rtt = pod rtt - host rtt of the same lab; +rtt/vxlan compares that with vxlan's")
print(f"{'path':<26}{'Gbit/s':>8}{'/underlay':>11}{'/vxlan':>8}{'rtt ms':>9}{'rtt/vxlan':>11}{'+rtt/vxlan':>12}{'weftd cores/Gbit/s':>20}")
print(f"{'host-to-host (underlay)':<26}{under_bps/1e9:>8.2f}{1:>11.2f}{'':>8}{under_rtt:>9.3f}{'':>11}{'':>12}{'':>20}")
for b, r in reports.items():
    gb = r["pod_bps"] / 1e9
    ratio_vx = f"{r['pod_bps']/vx['pod_bps']:.2f}" if vx else "-"
    rtt = r["pod_rtt_ms"]
    rtt_vx = f"{rtt/vx['pod_rtt_ms']:.2f}" if vx and rtt and vx["pod_rtt_ms"] else "-"
    added = lambda r: r["pod_rtt_ms"] - r["host_rtt_ms"] if r["pod_rtt_ms"] and r["host_rtt_ms"] else None
    add_vx = f"{added(r)/added(vx):.2f}" if vx and added(r) is not None and added(vx) else "-"
    cores = r.get("weftd_cores")
    cpg = f"{cores/gb:.3f}" if cores is not None and gb > 0 else "-"
    print(f"{'pod-to-pod, ' + b:<26}{gb:>8.2f}{r['pod_bps']/r['host_bps']:>11.2f}{ratio_vx:>8}{rtt or 0:>9.3f}{rtt_vx:>11}{add_vx:>12}{cpg:>20}")
PY
