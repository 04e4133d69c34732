#!/usr/bin/env bash
# How many agents one MMC serves: starts an MMC and `ferry swarm` with N
# agents (reports every 5 s), waits until all are online, then measures the
# MMC process's CPU (utime+stime from /proc) and resident memory over a
# steady window. Usage: [RATE=agents/s] [WINDOW=s] scripts/bench-agents.sh [N ...]   (default: 1000 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
make -s build >/dev/null
counts=("${@:-1000 10000}")
[ $# -eq 0 ] && counts=(1000 10000)
window=${WINDOW:-30}
hz=$(getconf CLK_TCK)
echo "| agents | online | MMC CPU (cores, ${window} s window) | MMC RSS (MiB) | reports/s received | swarm CPU (cores) | swarm RSS (MiB) |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
for n in "${counts[@]}"; do
	dir=$(mktemp -d /tmp/ferry-bench-agents.XXXX)
	port=$((20000 + RANDOM % 20000))
	./bin/ferry mmc --data-dir "$dir/mmc" --listen 127.0.0.1:$port --admin 127.0.0.1:$((port + 1)) --log-level warn >"$dir/mmc.log" 2>&1 &
	mmc=$!
	# reports counts the load reports the MMC has received (its metric).
	reports() { curl -sf -H "Authorization: Bearer $(cat "$dir/mmc/admin.token")" "http://127.0.0.1:$((port + 1))/metrics" | awk '/^ferry_mmc_reports_total/ {print $2}'; }
	ctl=(./bin/ferry ctl --admin http://127.0.0.1:$((port + 1)) --token-file "$dir/mmc/admin.token")
	for _ in $(seq 50); do "${ctl[@]}" hosts list -o json >/dev/null 2>&1 && break; sleep 0.1; done
	tok=$("${ctl[@]}" tokens create --uses "$n" --ttl 1h -o json | python3 -c 'import json,sys;print(json.load(sys.stdin)["token"])')
	bundle=$(./bin/ferry mmc bundle --data-dir "$dir/mmc")
	./bin/ferry swarm --count "$n" --data-dir "$dir/agents" --bundle "$bundle" --token "$tok" --rate "${RATE:-250}" >"$dir/swarm.log" 2>&1 &
	swarm=$!
	online=0
	for _ in $(seq 240); do
		online=$("${ctl[@]}" hosts list -o json | python3 -c 'import json,sys;print(sum(1 for h in json.load(sys.stdin) if h["online"]))')
		[ "$online" -ge "$n" ] && break
		sleep 1
	done
	sleep 10 # let enrolment work drain
	t0=$(awk '{print $14+$15}' /proc/$mmc/stat)
	s0=$(awk '{print $14+$15}' /proc/$swarm/stat)
	r0=$(reports)
	sleep "$window"
	t1=$(awk '{print $14+$15}' /proc/$mmc/stat)
	s1=$(awk '{print $14+$15}' /proc/$swarm/stat)
	r1=$(reports)
	rss=$(awk '/VmRSS/ {print $2}' /proc/$mmc/status)
	srss=$(awk '/VmRSS/ {print $2}' /proc/$swarm/status)
	online=$("${ctl[@]}" hosts list -o json | python3 -c 'import json,sys;print(sum(1 for h in json.load(sys.stdin) if h["online"]))')
	cpu=$(python3 -c "print(f'{($t1-$t0)/$hz/$window:.3f}')")
	scpu=$(python3 -c "print(f'{($s1-$s0)/$hz/$window:.3f}')")
	rps=$(python3 -c "print(f'{($r1-$r0)/$window:.0f}')")
	echo "| $n | $online | $cpu | $((rss / 1024)) | $rps (of $((n / 5))) | $scpu | $((srss / 1024)) |"
	kill "$swarm" "$mmc" 2>/dev/null || true
	wait "$swarm" "$mmc" 2>/dev/null || true
	rm -rf "$dir"
done
