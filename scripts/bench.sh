#!/usr/bin/env bash
# Throughput benchmark: for each backend, a 2-node lab; single-stream TCP (iperf3) pod-to-pod
# across hosts vs host-to-host on the underlay, median of RUNS runs of SECONDS s, with ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
WEFT=${WEFT:-target/debug/weft}
BACKENDS=${BACKENDS:-vxlan}
RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
LAB=bench

trap '$WEFT lab down --name $LAB >/dev/null 2>&1 || true' EXIT
for backend in $BACKENDS; do
    $WEFT lab down --name $LAB >/dev/null 2>&1 || true
    $WEFT lab up --name $LAB --nodes 2 --backend "$backend" >/dev/null
    echo
    $WEFT lab bench --name $LAB --runs "$RUNS" --seconds "$SECONDS_PER_RUN"
    $WEFT lab down --name $LAB >/dev/null
done
