#!/usr/bin/env bash
# How many agents one MMC serves: starts an MMC and `ferry swarm` with N
# agents (reports every 5 s), waits until all are online, then measures the
# MMC process's CPU (utime+stime from /proc) and resident memory over a
# steady window. Usage: [RATE=agents/s] [WINDOW=s] [MMCS=1|3] scripts/bench-agents.sh [N ...]   (default: 1000 10000)
# With MMCS=3 the MMC is a three-member raft cluster (two members join the
# first with `ferry ctl mmcs join-token`); the agents get the bundle
# listing all three, log in at the leader and keep a standby session at a
# follower; every member's CPU and memory are reported.
# MMC_FLAGS adds flags to the first MMC (e.g. "--cpuprofile /tmp/mmc.prof"),
# MEMBER_FLAGS to every MMC (e.g. "--raft-timeout 2s"), SWARM_FLAGS to the
# generator (e.g. "--standby=false": no standby sessions at the followers,
# so the generator holds half the connections). SWARM_NICE runs the generator at that nice level: it stands
# for 10 000 machines elsewhere, so on this machine it should not take
# CPU from the MMCs it measures; SWARM_PROCS caps its GOMAXPROCS (1: it
# cannot take more than one of this machine's two cores). The wait for the agents reads every member's online gauge, not
# `hosts list` (a 10 000-host listing each second is load of its own).
set -euo pipefail
# The system interpreter: a version manager's shim costs a process tree per call.
py=$(command -v /usr/bin/python3 || command -v python3)
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
	./bin/ferry mmc --data-dir "$dir/mmc" --listen 127.0.0.1:$port --admin 127.0.0.1:$((port + 1)) --log-level warn ${MMC_FLAGS:-} ${MEMBER_FLAGS:-} >"$dir/mmc.log" 2>&1 &
	mmc=$!
	members=("$mmc")
	admins=("127.0.0.1:$((port + 1))")
	# membersum sums an unlabelled metric over the members: the load
	# reports they received, the agents online, their leader changes.
	membersum() {
		local t=0 r
		for a in "${admins[@]}"; do
			r=$(curl -sf -H "Authorization: Bearer $(cat "$dir/mmc/admin.token")" "http://$a/metrics" | awk -v m="$1" '$1 == m {print int($2)}')
			t=$((t + ${r:-0}))
		done
		echo "$t"
	}
	ctl=(./bin/ferry ctl --admin http://127.0.0.1:$((port + 1)) --token-file "$dir/mmc/admin.token")
	for _ in $(seq 50); do "${ctl[@]}" hosts list -o json >/dev/null 2>&1 && break; sleep 0.1; done
	for i in $(seq 2 "${MMCS:-1}"); do
		jt=$("${ctl[@]}" mmcs join-token -o json | $py -c 'import json,sys;print(json.load(sys.stdin)["token"])')
		./bin/ferry mmc --data-dir "$dir/mmc$i" --listen 127.0.0.1:$((port + 2 * i)) --admin 127.0.0.1:$((port + 2 * i + 1)) --log-level warn ${MEMBER_FLAGS:-} \
			--join "$(./bin/ferry mmc bundle --data-dir "$dir/mmc")" --join-token "$jt" >"$dir/mmc$i.log" 2>&1 &
		members+=("$!")
		admins+=("127.0.0.1:$((port + 2 * i + 1))")
		for _ in $(seq 100); do curl -sf "http://127.0.0.1:$((port + 2 * i + 1))/metrics" >/dev/null && break; sleep 0.1; done
	done
	tok=$("${ctl[@]}" tokens create --uses "$n" --ttl 1h -o json | $py -c 'import json,sys;print(json.load(sys.stdin)["token"])')
	bundle=$(./bin/ferry mmc bundle --data-dir "$dir/mmc")
	env ${SWARM_PROCS:+GOMAXPROCS=$SWARM_PROCS} nice -n "${SWARM_NICE:-0}" ./bin/ferry swarm --count "$n" --data-dir "$dir/agents" --bundle "$bundle" --token "$tok" --rate "${RATE:-250}" ${SWARM_FLAGS:-} >"$dir/swarm.log" 2>&1 &
	swarm=$!
	online=0
	for _ in $(seq "${WAIT:-600}"); do
		online=$(membersum ferry_mmc_agents_online)
		[ "$online" -ge "$n" ] && break
		sleep 1
	done
	sleep 10 # let enrolment work drain
	# A window in which the leadership moves is no steady state.
	l0=$(membersum ferry_raft_leader_changes_total)
	declare -A m0
	for p in "${members[@]}"; do m0[$p]=$(awk '{print $14+$15}' /proc/$p/stat); done
	t0=$(awk '{print $14+$15}' /proc/$mmc/stat)
	s0=$(awk '{print $14+$15}' /proc/$swarm/stat)
	r0=$(membersum ferry_mmc_reports_total)
	sleep "$window"
	t1=$(awk '{print $14+$15}' /proc/$mmc/stat)
	each=""
	for p in "${members[@]}"; do
		c=$($py -c "print(f'{($(awk '{print $14+$15}' /proc/$p/stat)-${m0[$p]})/$hz/$window:.3f}')")
		r=$(awk '/VmRSS/ {print int($2/1024)}' /proc/$p/status)
		each="$each ${c}c/${r}MiB"
	done
	s1=$(awk '{print $14+$15}' /proc/$swarm/stat)
	r1=$(membersum ferry_mmc_reports_total)
	l1=$(membersum ferry_raft_leader_changes_total)
	rss=$(awk '/VmRSS/ {print $2}' /proc/$mmc/status)
	srss=$(awk '/VmRSS/ {print $2}' /proc/$swarm/status)
	online=$("${ctl[@]}" hosts list -o json | $py -c 'import json,sys;print(sum(1 for h in json.load(sys.stdin) if h["online"]))')
	cpu=$($py -c "print(f'{($t1-$t0)/$hz/$window:.3f}')")
	scpu=$($py -c "print(f'{($s1-$s0)/$hz/$window:.3f}')")
	rps=$($py -c "print(f'{($r1-$r0)/$window:.0f}')")
	echo "| $n | $online | $cpu | $((rss / 1024)) | $rps (of $((n / 5))) | $scpu | $((srss / 1024)) |"
	[ "${MMCS:-1}" -gt 1 ] && echo "  members (first = the one the agents were enrolled at; cores/RSS):$each; leader changes in the window: $((l1 - l0))"
	kill "$swarm" "${members[@]}" 2>/dev/null || true
	wait "$swarm" "${members[@]}" 2>/dev/null || true
	[ -n "${KEEP:-}" ] || rm -rf "$dir"
done
