#!/usr/bin/env bash
# Bytes written to RocksDB's write-ahead log per chosen value, on each node of a three-node
# cluster (TLS and fsync on) under `paxos-cli bench` through the leader: the difference of each
# node's `paxos_storage_written_bytes_total` over its `paxos_values_chosen_total` across the run.
# Every byte of a write batch is one byte of the WAL record that holds it.
#   DURATION=10 CLIENTS=64 VALUE_BYTES=100 bench/wal-bytes.sh
# CI does not run it.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-64}
VALUE_BYTES=${VALUE_BYTES:-100}
scripts/install-deps
target="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --bins -q
cli="$target/release/paxos-cli"
node="$target/release/paxos-node"
source bench/common.sh
read -r -a ports <<<"$(free_ports 6)"
export PAXOS_CERTS_DIR="$work/certs"
"$cli" certs --nodes 1,2,3 >/dev/null
peers=()
for i in 1 2 3; do peers+=(--peer "$i=127.0.0.1:${ports[$((i - 1))]}"); done
for i in 1 2 3; do
  RUST_LOG=warn "$node" --id "$i" --listen "127.0.0.1:${ports[$((i - 1))]}" "${peers[@]}" \
    --metrics-listen "127.0.0.1:${ports[$((i + 2))]}" --data-dir "$work/node-$i" \
    >"$work/node-$i.log" 2>&1 &
  pids[$i]=$!
done
endpoints="127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
wait_for_leader --endpoint "$endpoints"

# scrape: one line per node, "bytes values", from its metrics.
scrape() {
  python3 - "${ports[3]}" "${ports[4]}" "${ports[5]}" <<'PY'
import sys, urllib.request
for port in sys.argv[1:]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    written = values = 0
    for line in text.splitlines():
        if line.startswith("paxos_storage_written_bytes_total"):
            written += float(line.split()[-1])
        elif line.startswith("paxos_values_chosen_total"):
            values += float(line.split()[-1])
    print(int(written), int(values))
PY
}
# The leader's gauge updates once per tick: let the last figures land before each scrape.
sleep 1
before=$(scrape)
run=$("$cli" --endpoint "$endpoints" --json bench --clients "$CLIENTS" --value-bytes "$VALUE_BYTES" \
  --duration-secs "$DURATION")
sleep 1
after=$(scrape)
leader=$("$cli" --endpoint "$endpoints" --json status | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"])')
commit=$(git rev-parse --short HEAD)
python3 - "$commit" "$leader" "$run" "$before" "$after" "$VALUE_BYTES" "$CLIENTS" <<'PY'
import json, sys
commit, leader, run, before, after, value_bytes, clients = sys.argv[1:]
run = json.loads(run)
before = [list(map(int, line.split())) for line in before.splitlines()]
after = [list(map(int, line.split())) for line in after.splitlines()]
print(f"commit {commit}; {value_bytes} B values, {clients} clients: {run['writes_per_second']:.0f} writes/s")
print("| node | values chosen | bytes written | WAL bytes per value |")
print("|---|---:|---:|---:|")
for i, ((b0, v0), (b1, v1)) in enumerate(zip(before, after), start=1):
    role = "leader" if i == int(leader) else "follower"
    values = v1 - v0
    per = f"{(b1 - b0) / values:.0f}" if values else "-"
    print(f"| {i} ({role}) | {values} | {b1 - b0} | {per} |")
PY
