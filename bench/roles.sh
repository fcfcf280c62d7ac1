#!/usr/bin/env bash
# Roles apart against all-in-one voters: the seed's topology (2 proposers that keep no acceptor
# state, 5 acceptors that never lead) and 3 voters, both on 127.0.0.1 with TLS and fsync on,
# driven by `paxos-cli bench` (through the leader) in alternation after a warm-up. One table:
# writes/s, p50/p99 latency, CPU seconds per 1000 writes and resident memory of each cluster;
# then each node's CPU seconds per 1000 writes, by role, the leader starred.
#   DURATION=10 WARMUP=3 VALUE_BYTES=100 CLIENT_COUNTS="1 64 256" bench/roles.sh
# CI does not run it.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
VALUE_BYTES=${VALUE_BYTES:-100}
CLIENT_COUNTS=${CLIENT_COUNTS:-"1 64 256"}
scripts/install-deps
target="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --bins -q
cli="$target/release/paxos-cli"
node="$target/release/paxos-node"
source bench/common.sh
read -r -a ports <<<"$(free_ports 10)"
"$cli" --certs-dir "$work/certs" certs --nodes 1,2,3,4,5,6,7 >/dev/null

# start_cluster NAME FIRST_PORT_INDEX ROLE...: one node per role; sets `endpoints`. Not run in a
# command substitution: the pids must reach the cleanup's `pids` in this shell.
start_cluster() {
  local name=$1 first=$2; shift 2
  local roles=("$@") peers=() n=${#roles[@]} i
  endpoints=()
  for ((i = 0; i < n; i++)); do
    peers+=(--peer "$((i + 1))=127.0.0.1:${ports[$((first + i))]}")
    endpoints+=("127.0.0.1:${ports[$((first + i))]}")
  done
  for ((i = 0; i < n; i++)); do
    RUST_LOG=warn "$node" --id $((i + 1)) --listen "127.0.0.1:${ports[$((first + i))]}" "${peers[@]}" \
      --role "${roles[$i]}" --data-dir "$work/$name-$((i + 1))" --certs-dir "$work/certs" \
      >"$work/$name-$((i + 1)).log" 2>&1 &
    pids[$name-$i]=$!
    echo "$!" >>"$work/$name.pids"
  done
}
start_cluster seed 0 proposer proposer acceptor acceptor acceptor acceptor acceptor
seed_endpoints=$(IFS=,; echo "${endpoints[*]}")
start_cluster voters 7 voter voter voter
voters_endpoints=$(IFS=,; echo "${endpoints[*]}")

# node_ticks NAME: each node's utime + stime, in clock ticks, space-separated in node order.
node_ticks() { awk '{ printf "%s ", $14 + $15 }' $(sed 's|.*|/proc/&/stat|' "$work/$1.pids"); }
rss_kib() { awk '/^VmRSS/ { s += $2 } END { print s }' $(sed 's|.*|/proc/&/status|' "$work/$1.pids"); }
# cluster_run NAME ENDPOINTS CLIENTS SECONDS: the bench's JSON with the cluster's CPU and memory
# (named apart from common.sh's `measured`, which `alternate` calls, and which calls run_seed).
cluster_run() {
  local run before after leader
  before=$(node_ticks "$1")
  run=$("$cli" --certs-dir "$work/certs" --endpoint "$2" --json bench --clients "$3" \
    --value-bytes "$VALUE_BYTES" --duration-secs "$4")
  after=$(node_ticks "$1")
  leader=$("$cli" --certs-dir "$work/certs" --endpoint "$2" --json status | python3 -c \
    'import json, sys; print(json.load(sys.stdin).get("leader") or 0)')
  python3 -c 'import json, os, sys
run = json.loads(sys.argv[1])
hz = os.sysconf("SC_CLK_TCK")
run["node_cpu_seconds"] = [(int(a) - int(b)) / hz for a, b in zip(sys.argv[3].split(), sys.argv[2].split())]
run["cluster_cpu_seconds"] = sum(run["node_cpu_seconds"])
run["cluster_rss_mib"] = int(sys.argv[4]) / 1024
run["leader"] = int(sys.argv[5])
print(json.dumps(run))' "$run" "$before" "$after" "$(rss_kib "$1")" "$leader"
}
run_seed() { cluster_run seed "$seed_endpoints" "$1" "$2"; }
run_voters() { cluster_run voters "$voters_endpoints" "$1" "$2"; }
wait_for_leader --certs-dir "$work/certs" --endpoint "$seed_endpoints"
wait_for_leader --certs-dir "$work/certs" --endpoint "$voters_endpoints"
alternate seed run_seed voters run_voters
results="$work/results.jsonl"

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
python3 - "$results" "$commit" "$VALUE_BYTES" "$DURATION" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
commit, value_bytes, duration = sys.argv[2], sys.argv[3], sys.argv[4]
by = {(row["system"], row["run"]["clients"]): row["run"] for row in rows}
names = {"seed": "seed: 2 proposers + 5 acceptors", "voters": "3 voters"}
print(f"commit {commit}; all nodes on 127.0.0.1 (2 cores), TLS and fsync on; {value_bytes} B values; {duration} s per run")
print("| topology | clients | writes/s | p50 ms | p99 ms | fsyncs/value (leader) | cluster CPU s per 1000 writes | cluster RSS MiB |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for clients in sorted({c for (_, c) in by}):
    for system in ("seed", "voters"):
        run = by.get((system, clients))
        if not run:
            continue
        writes = run["writes"] if "writes" in run else run["writes_per_second"] * float(duration)
        cpu = 1000 * run["cluster_cpu_seconds"] / writes if writes else float("nan")
        fsyncs = run.get("leader_fsyncs_per_chosen_value")
        fsyncs = f"{fsyncs:.3f}" if isinstance(fsyncs, (int, float)) else "-"
        print(f'| {names[system]} | {clients} | {run["writes_per_second"]:.0f} | {run["latency_ms"]["p50"]:.2f} '
              f'| {run["latency_ms"]["p99"]:.2f} | {fsyncs} | {cpu:.2f} | {run["cluster_rss_mib"]:.0f} |')
# Where each topology's CPU goes: every node's CPU seconds per 1000 writes, by role (the leader
# apart from the other members of its role).
roles = {"seed": ["proposer"] * 2 + ["acceptor"] * 5, "voters": ["voter"] * 3}
print()
print("| topology | clients | CPU s per 1000 writes: each node, by role (* the leader) |")
print("|---|---:|---|")
for clients in sorted({c for (_, c) in by}):
    for system in ("seed", "voters"):
        run = by.get((system, clients))
        if not run or "node_cpu_seconds" not in run:
            continue
        writes = run["writes"] if "writes" in run else run["writes_per_second"] * float(duration)
        cells = []
        for index, seconds in enumerate(run["node_cpu_seconds"]):
            star = "*" if index + 1 == run.get("leader") else ""
            cells.append(f"{roles[system][index]} {index + 1}{star}: {1000 * seconds / writes:.3f}" if writes else "-")
        print(f"| {names[system]} | {clients} | {', '.join(cells)} |")
errors = {f"{k[0]}/{k[1]}": v["errors"] for k, v in by.items() if v["errors"]}
if errors:
    print(f"errors: {errors}")
PY
