#!/usr/bin/env bash
# Memory and restart at scale: a 3-node cluster takes ENTRIES values (default 1,000,000), then
# prints each node's RSS; then kills the leader with SIGKILL, restarts it on its data directory
# and prints the time from the restart to that node serving a proposal again.
#   ENTRIES=1000000 CLIENTS=64 bench/memory-restart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ENTRIES=${ENTRIES:-1000000}
CLIENTS=${CLIENTS:-64}
scripts/install-deps
cargo build --release --bins -q
target="${CARGO_TARGET_DIR:-$PWD/target}"
cli="$target/release/paxos-cli"
node="$target/release/paxos-node"
source bench/common.sh
three_node_cluster

echo "writing $ENTRIES values with $CLIENTS clients..."
"$cli" --endpoint "$endpoints" bench --clients "$CLIENTS" --count "$ENTRIES"
for _ in $(seq 1 200); do
  uptos=$(for i in 1 2 3; do "$cli" --endpoint "127.0.0.1:${ports[$((i - 1))]}" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["applied_upto"])'; done | sort -u)
  [ "$(echo "$uptos" | wc -l)" -eq 1 ] && [ "$uptos" -ge "$ENTRIES" ] && break
  sleep 0.2
done
echo "chosen on every node: $uptos entries"
for i in 1 2 3; do
  echo "node $i: RSS $(( $(ps -o rss= -p "${pids[$i]}") / 1024 )) MiB, data directory $(du -sm "$work/node-$i" | cut -f1) MiB"
done

leader=$("$cli" --endpoint "$endpoints" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"])')
kill -9 "${pids[$leader]}"
wait "${pids[$leader]}" 2>/dev/null || true
started=$(date +%s%N)
start "$leader"
until "$cli" --endpoint "127.0.0.1:${ports[$((leader - 1))]}" propose after-restart --timeout-ms 300 >/dev/null 2>&1; do :; done
echo "restart of node $leader (the leader, killed with SIGKILL) to serving a proposal: $(( ($(date +%s%N) - started) / 1000000 )) ms"
echo "node $leader after restart: RSS $(( $(ps -o rss= -p "${pids[$leader]}") / 1024 )) MiB"
