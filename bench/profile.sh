#!/usr/bin/env bash
# Where the time goes: a 3-node cluster (TLS and fsync on, as by default) under `paxos-cli bench`
# (CLIENTS clients, one request in flight each, VALUE_BYTES-byte values), with `perf record`
# sampling every process of the cluster and the bench client. Prints the bench's figures, the
# CPU time of each process, and perf's hottest symbols per process (self and with children).
#   CLIENTS=64 VALUE_BYTES=100 DURATION=10 [CALL_GRAPH=dwarf,16384] [PERF_DATA=FILE] bench/profile.sh
# PERF_DATA keeps the recording (for `perf report -i FILE`, e.g. with --call-graph=caller).
# CALL_GRAPH is perf's --call-graph (default fp): the release build keeps no frame pointers, so
# fp stacks stop at the first Rust frame; `dwarf,16384` unwinds through them and names the
# inlined callers (`perf report --no-children -g caller`), at about 30 MB of data a second.
# Installs perf (linux-perf) if missing. CI does not run it.
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-64}
VALUE_BYTES=${VALUE_BYTES:-100}
DURATION=${DURATION:-10}
scripts/install-deps
if ! command -v perf >/dev/null; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq linux-perf >/dev/null
fi
target="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --bins -q
cli="$target/release/paxos-cli"
node="$target/release/paxos-node"
source bench/common.sh
read -r -a ports <<<"$(free_ports 3)"
export PAXOS_CERTS_DIR="$work/certs"
"$cli" certs --nodes 1,2,3 >/dev/null
cluster_of node "$node" 0
endpoint_list=${cluster_endpoints[node]}
leader=$("$cli" --endpoint "$endpoint_list" --json status | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"])')
"$cli" --endpoint "$endpoint_list" bench --clients "$CLIENTS" --value-bytes "$VALUE_BYTES" --duration-secs 3 >/dev/null

cpu_of() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }  # utime + stime, in clock ticks
declare -A before
for i in 0 1 2; do before[$i]=$(cpu_of "${pids[node-$i]}"); done
perf record -q -F 499 --call-graph "${CALL_GRAPH:-fp}" -o "$work/perf.data" -a -- sleep "$((DURATION + 1))" 2>/dev/null &
perf_pid=$!
sleep 0.5
"$cli" --endpoint "$endpoint_list" bench --clients "$CLIENTS" --value-bytes "$VALUE_BYTES" --duration-secs "$DURATION"
wait "$perf_pid"
hz=$(getconf CLK_TCK)
for i in 0 1 2; do
  role=follower; [ "$((i + 1))" = "$leader" ] && role=leader
  echo "node $((i + 1)) ($role): $(( ($(cpu_of "${pids[node-$i]}") - before[$i]) * 1000 / hz )) ms of CPU during the run"
done
# A pipeline cut short by `head` is not a failure here.
top() { perf report -i "$work/perf.data" -g none "$@" --stdio 2>/dev/null | grep '%' | grep -v '^#' | head -30 || true; }
echo
echo "== share of all samples, by process (comm) =="
top --sort comm
leader_pid=${pids[node-$((leader - 1))]}
follower_pid=${pids[node-$((leader % 3))]}
echo
echo "== the leader (pid $leader_pid): hottest symbols by thread, self time =="
top --pid "$leader_pid" --no-children --sort comm,symbol
echo
echo "== a follower (pid $follower_pid): hottest symbols by thread, self time =="
top --pid "$follower_pid" --no-children --sort comm,symbol
echo
echo "== the bench client: hottest symbols, self time =="
top --comm paxos-cli --no-children --sort symbol
if [ -n "${PERF_DATA:-}" ]; then cp "$work/perf.data" "$PERF_DATA"; echo "perf data kept in $PERF_DATA"; fi
