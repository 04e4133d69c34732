#!/usr/bin/env bash
# Live-migration benchmark (issue 6): total time, downtime and bytes on the
# wire of migrating a simulated VM whose memory is in use (fill=1:
# incompressible) while its guest dirties memory at 0, 10 and 50 MB/s,
# 1 GiB and 4 GiB, next to the lower bound memory / bandwidth.
#
#   scripts/bench-migrate.sh loopback   # MMC and two agents on loopback
#   scripts/bench-migrate.sh wan        # agents in the two sites of the WAN
#                                       # lab profile "wan" (100 Mbit/s, 50 ms
#                                       # RTT, 1 % loss); needs root
#
# SIZES="1GiB 4GiB" RATES="0 10MB/s 50MB/s" override the matrix. The
# loopback bound uses the SUDP goodput `ferry perf` measures in the same run.
# PROFILE=1 writes the agents' CPU profiles (with KEEP=1, to keep them).
# MAX_BW=1gbit caps each migration (ferry ctl migrate --max-bandwidth) and
# makes the cap the bandwidth of the bound: the engine's overhead at a rate
# the machine's CPU can sustain (on loopback the uncapped bound is what one
# ferry perf pair gets from all cores).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-loopback}
sizes=(${SIZES:-1GiB 4GiB})
rates=(${RATES:-0 10MB/s 50MB/s})
make -s build >/dev/null
FERRY=$PWD/bin/ferry
WANLAB=$PWD/bin/wanlab
dir=$(mktemp -d /tmp/ferry-bench-migrate.XXXX)
lab=fbm$$
pids=()
nsa=() nsb=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	pkill -f "simvm .*--socket $dir/" 2>/dev/null || true # VM processes outlive their agents
	[ "$mode" = wan ] && "$WANLAB" down "$lab" >/dev/null 2>&1 || true
	[ -n "${KEEP:-}" ] && echo "logs kept in $dir" >&2 || rm -rf "$dir"
}
trap cleanup EXIT

mmc_addr=127.0.0.1:17946
if [ "$mode" = wan ]; then
	[ "$(id -u)" = 0 ] || { echo "bench-migrate wan: needs root (network namespaces)" >&2; exit 1; }
	"$WANLAB" up "$lab" --profile wan >/dev/null
	read -r nsA addrA nsB addrB < <("$WANLAB" status "$lab" --json | python3 -c '
import json,sys; s=json.load(sys.stdin)["sites"]; print(s[0]["netns"], s[0]["addr"], s[1]["netns"], s[1]["addr"])')
	nsa=(ip netns exec "$nsA") nsb=(ip netns exec "$nsB")
	mmc_addr=$addrA:7946
	bandwidth=12500000 # bytes/s
fi

"${nsa[@]}" "$FERRY" mmc --data-dir "$dir/mmc" --listen "$mmc_addr" --admin 127.0.0.1:17947 --log-level info >"$dir/mmc.log" 2>&1 &
pids+=($!)
ctl() { "${nsa[@]}" "$FERRY" ctl --admin http://127.0.0.1:17947 --token-file "$dir/mmc/admin.token" "$@"; }
for _ in $(seq 100); do ctl hosts list >/dev/null 2>&1 && break; sleep 0.1; done
tok=$(ctl tokens create --uses 2 -o json | python3 -c 'import json,sys;print(json.load(sys.stdin)["token"])')
bundle=$("$FERRY" mmc bundle --data-dir "$dir/mmc")
i=0
for h in src dst; do
	ns=("${nsa[@]}")
	[ "$h" = dst ] && ns=("${nsb[@]}")
	i=$((i + 1))
	"${ns[@]}" "$FERRY" agent --data-dir "$dir/$h" --bundle "$bundle" --token "$tok" --name "$h" --site "$h" \
		--disk-id "bench-$h" --macs "02:bb:00:00:00:0$i" --report-interval 1s --log-level info \
		${PROFILE:+--cpuprofile "$dir/$h.cpu"} >"$dir/$h.log" 2>&1 &
	pids+=($!)
done
for _ in $(seq 300); do
	n=$(ctl hosts list -o json | python3 -c 'import json,sys;print(sum(1 for h in json.load(sys.stdin) if h["online"]))')
	[ "$n" = 2 ] && break
	sleep 0.2
done

migrate_flags=()
if [ -n "${MAX_BW:-}" ]; then
	# The bound's bandwidth is each record's max_bandwidth (bytes/s), as
	# ferry parsed the flag.
	migrate_flags=(--max-bandwidth "$MAX_BW")
	bandwidth=0
elif [ "$mode" = loopback ]; then
	# The bound: SUDP's own loopback goodput, measured now.
	out=$(mktemp)
	"$FERRY" perf server --listen 127.0.0.1:0 --json >"$out" 2>/dev/null &
	perf=$!
	for _ in $(seq 50); do [ -s "$out" ] && break; sleep 0.1; done
	line=$(head -1 "$out")
	paddr=$(sed -E 's/.*"addr":"([^"]+)".*/\1/' <<<"$line")
	pkey=$(sed -E 's/.*"key":"([^"]+)".*/\1/' <<<"$line")
	bandwidth=$("$FERRY" perf client --server-key "$pkey" "$paddr" --bytes 2GiB --json | python3 -c 'import json,sys;print(int(json.load(sys.stdin)["goodput_bps"]/8))')
	kill $perf 2>/dev/null || true
	rm -f "$out"
fi

if [ -n "${MAX_BW:-}" ]; then
	echo "mode $mode, capped at $MAX_BW (the bound's bandwidth), $(date -u +%F), $(nproc) cores"
else
	echo "mode $mode, bandwidth for the bound: $((bandwidth * 8 / 1000000)) Mbit/s, $(date -u +%F), $(nproc) cores"
fi
echo
# The downtime split: final copy (pause → source wrote the last byte),
# delivery (→ destination verified), commit (→ MMC recorded it), resume.
# Prepare: from the order to the transfer's start (the destination VM
# started and its memory reserved), outside the total.
echo "| memory | dirty rate | prepare (s) | total (s) | downtime (ms) | copy+deliver+commit+resume (ms) | rounds | bytes on the wire | bound (s) | total / bound | verified |"
echo "|---:|---:|---:|---:|---:|:---:|---:|---:|---:|---:|:---:|"
for size in "${sizes[@]}"; do
	for rate in "${rates[@]}"; do
		wl="fill=1"
		[ "$rate" != 0 ] && wl="fill=1,dirty=$rate"
		ctl vms create bench --host src --memory "$size" --workload "$wl" -o json >/dev/null
		for _ in $(seq 300); do
			ctl vms list -o json | python3 -c 'import json,sys; sys.exit(0 if any(v["id"]=="bench" and v["host"]=="src" and v["state"]=="running" for v in json.load(sys.stdin)) else 1)' && break
			sleep 0.2
		done
		sleep 2 # a few dirtying seconds before the migration starts
		id=$(ctl migrate bench --to dst "${migrate_flags[@]}" -o json | python3 -c 'import json,sys;print(json.load(sys.stdin)["id"])')
		res=$(ctl migrations watch "$id" -o json || true)
		[ -n "${KEEP:-}" ] && echo "$res" >>"$dir/records.json"
		python3 - "$size" "$rate" "$bandwidth" "$res" <<'EOF'
import json, sys
from datetime import datetime
def at(k):
    v = res.get(k)
    return datetime.fromisoformat(v.replace("Z", "+00:00")) if v else None
def ms(a, b):
    a, b = at(a), at(b)
    return f"{(b - a).total_seconds() * 1000:.0f}" if a and b else "?"
size, rate, bw, res = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
bw = res.get("max_bandwidth") or bw  # MAX_BW: the cap is the bandwidth
units = {"GiB": 1 << 30, "MiB": 1 << 20}
mem = next(int(float(size[:-3]) * v) for k, v in units.items() if size.endswith(k))
bound = mem / bw
total = res.get("total_ms", 0) / 1000
state = res["state"]
split = "+".join(ms(a, b) for a, b in [("paused_at", "sent_at"), ("sent_at", "verified_at"),
                                        ("verified_at", "committed_at"), ("committed_at", "resumed_at")])
prep = ms("created", "started")
prep = f"{int(prep) / 1000:.1f}" if prep != "?" else prep
print(f"| {size} | {rate} | {prep} | {total:.1f} | {res.get('downtime_ms', 0)} | {split} | {res.get('rounds', 0)} | "
      f"{res.get('bytes_on_wire', 0) / (1 << 20):.0f} MiB | {bound:.1f} | "
      f"{total / bound:.2f} | {res.get('verified')}{'' if state == 'completed' else ' (' + state + ': ' + res.get('error', '') + ')'} |")
EOF
		host=$(ctl vms list -o json | python3 -c 'import json,sys; print(next((v["host"] for v in json.load(sys.stdin) if v["id"]=="bench"), ""))')
		[ -n "$host" ] && ctl vms delete bench >/dev/null 2>&1 || true
		for _ in $(seq 100); do
			ctl vms list -o json | python3 -c 'import json,sys; sys.exit(1 if any(v["id"]=="bench" for v in json.load(sys.stdin)) else 0)' && break
			sleep 0.2
		done
	done
done
