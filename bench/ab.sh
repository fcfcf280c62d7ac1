#!/usr/bin/env bash
# A/B: two builds of paxos-node, each as a 3-node cluster (TLS and fsync on, as by default), both
# clusters up for the whole run, driven in turn by the same `paxos-cli bench` through their
# leaders. Each round runs every (value size, clients) case on A then on B; REPEATS rounds, then
# one table of medians and the spread (min-max) per case: writes/s, p50, p99 and the server CPU
# per write (user + system time of the three node processes over the run). Alternating and
# repeating is what makes a difference of a few percent mean something on a machine whose
# figures drift ±20% between runs.
#   NODE_A=/path/to/paxos-node-a NODE_B=/path/to/paxos-node-b \
#   REPEATS=3 DURATION=5 VALUE_SIZES="100 4096" CLIENT_COUNTS="1 64 256" bench/ab.sh
# A build of another commit: `git worktree add /tmp/a COMMIT && (cd /tmp/a && cargo build
# --release --bins)`, with the same CARGO_TARGET_DIR only the workspace's crates rebuild; copy
# the binary out before building the next. NODE_B defaults to this tree's build. CI does not
# run it.
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${REPEATS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-2}
VALUE_SIZES=${VALUE_SIZES:-"100 4096"}
CLIENT_COUNTS=${CLIENT_COUNTS:-"1 64 256"}
target="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --bins -q
cli="$target/release/paxos-cli"
NODE_B=${NODE_B:-$target/release/paxos-node}
: "${NODE_A:?NODE_A must name the paxos-node binary to compare with (see the header)}"
for binary in "$NODE_A" "$NODE_B"; do
  [ -x "$binary" ] || { echo "not an executable: $binary" >&2; exit 1; }
done

source bench/common.sh
read -r -a ports <<<"$(free_ports 6)"
export PAXOS_CERTS_DIR="$work/certs"
"$cli" certs --nodes 1,2,3 >/dev/null
cluster_of a "$NODE_A" 0
cluster_of b "$NODE_B" 3
server_pids() { echo "${pids[$1-0]} ${pids[$1-1]} ${pids[$1-2]}"; }
run_a() { "$cli" --endpoint "${cluster_endpoints[a]}" --json bench --clients "$1" --value-bytes "$VALUE_BYTES" --duration-secs "$2"; }
run_b() { "$cli" --endpoint "${cluster_endpoints[b]}" --json bench --clients "$1" --value-bytes "$VALUE_BYTES" --duration-secs "$2"; }

for round in $(seq 1 "$REPEATS"); do
  for VALUE_BYTES in $VALUE_SIZES; do
    echo "round $round of $REPEATS, values of $VALUE_BYTES bytes" >&2
    alternate a run_a b run_b
  done
done

python3 - "$work/results.jsonl" "$NODE_A" "$NODE_B" "$REPEATS" "$DURATION" <<'PY'
import json, statistics, sys
path, node_a, node_b, repeats, duration = sys.argv[1:]
runs = {}
for line in open(path):
    row = json.loads(line)
    run = row["run"]
    key = (run["value_bytes"], run["clients"], row["system"])
    cpu_us = row["server_cpu_seconds"] * 1e6 / run["writes"] if run["writes"] else float("nan")
    runs.setdefault(key, []).append(
        (run["writes_per_second"], run["latency_ms"]["p50"], run["latency_ms"]["p99"], cpu_us))
print(f"A = {node_a}\nB = {node_b}\n{repeats} alternating runs of {duration} s per case; median (min-max)")
print("| value bytes | clients | A writes/s | B writes/s | B/A | A p50 ms | B p50 ms | A p99 ms | B p99 ms | A CPU us/write | B CPU us/write |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
def cell(values, digits):
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"
for value_bytes, clients in sorted({(v, c) for (v, c, _) in runs}):
    a, b = runs.get((value_bytes, clients, "a")), runs.get((value_bytes, clients, "b"))
    if not a or not b:
        continue
    column = lambda rows, i: [r[i] for r in rows]
    ratio = statistics.median(column(b, 0)) / statistics.median(column(a, 0))
    print(f"| {value_bytes} | {clients} | {cell(column(a, 0), 0)} | {cell(column(b, 0), 0)} | {ratio:.2f} "
          f"| {cell(column(a, 1), 2)} | {cell(column(b, 1), 2)} | {cell(column(a, 2), 2)} | {cell(column(b, 2), 2)} "
          f"| {cell(column(a, 3), 0)} | {cell(column(b, 3), 0)} |")
PY
