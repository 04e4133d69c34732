#!/usr/bin/env bash
# Regenerates the charts in docs/img from the numbers transcribed into
# docs/data/*.csv (from docs/BENCHMARKS.md), with cmd/plotbench.
# Usage: scripts/plots.sh
set -euo pipefail
cd "$(dirname "$0")/.."
go build -o "${TMPDIR:-/tmp}/plotbench.$$" ./cmd/plotbench
plot="${TMPDIR:-/tmp}/plotbench.$$"
trap 'rm -f "$plot"' EXIT
mkdir -p docs/img

"$plot" -in docs/data/wan-goodput-vs-loss.csv -out docs/img/wan-goodput-vs-loss.svg \
	-x loss_percent -y goodput_mbit_s -series transport -logy -xticks 0,1,5,15 \
	-title 'Goodput vs packet loss, 100 Mbit/s, 50 ms RTT' \
	-xlabel 'random packet loss (%)' -ylabel 'median goodput (Mbit/s, log scale)'

"$plot" -in docs/data/migration-vs-dirty-rate.csv -out docs/img/migration-total-vs-dirty-rate.svg \
	-x dirty_rate_MB_s -y total_s -series setting -logy -xticks 0,10,50 \
	-title 'Live migration total time vs dirty rate' \
	-xlabel 'guest dirty rate (MB/s)' -ylabel 'total time (s, log scale)'

"$plot" -in docs/data/migration-vs-dirty-rate.csv -out docs/img/migration-downtime-vs-dirty-rate.svg \
	-x dirty_rate_MB_s -y downtime_ms -series setting -xticks 0,10,50 -hline '300:downtime target 300 ms' \
	-title 'Live migration downtime vs dirty rate' \
	-xlabel 'guest dirty rate (MB/s)' -ylabel 'downtime (ms)'
