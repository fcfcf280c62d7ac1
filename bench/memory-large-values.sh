#!/usr/bin/env bash
# Memory with large values: a 3-node cluster takes honest 1 MiB values from CLIENTS clients for
# SECONDS seconds (answers read), then sits idle, then collects garbage. Prints every node's RSS
# once a second throughout: under load, idle, and after gc.
#   CLIENTS=8 SECONDS_LOAD=15 SECONDS_IDLE=15 VALUE_BYTES=1048576 bench/memory-large-values.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-8}
SECONDS_LOAD=${SECONDS_LOAD:-15}
SECONDS_IDLE=${SECONDS_IDLE:-15}
VALUE_BYTES=${VALUE_BYTES:-1048576}
scripts/install-deps
cargo build --release --bins -q
target="${CARGO_TARGET_DIR:-$PWD/target}"
cli="$target/release/paxos-cli"
node="$target/release/paxos-node"
source bench/common.sh
three_node_cluster
rss() { for i in 1 2 3; do printf ' %5d' $(( $(ps -o rss= -p "${pids[$i]}") / 1024 )); done; }
# Each node's role and accepted records held in memory (what garbage collection frees).
held() {
  for i in 1 2 3; do
    "$cli" --endpoint "127.0.0.1:${ports[$((i - 1))]}" status --json --timeout-ms 1000 2>/dev/null |
      python3 -c 'import json,sys; s=json.load(sys.stdin); print(" %s:%s" % (s["role"][0], s["accepted_records"]), end="")' || printf ' ?'
  done
}
sample() { # sample PHASE SECONDS
  for s in $(seq 1 "$2"); do echo "$1 $s s: RSS MiB (nodes 1 2 3):$(rss)   role:accepted records$(held)"; sleep 1; done
}
echo "idle before: RSS MiB (nodes 1 2 3):$(rss)"
"$cli" --endpoint "$endpoints" bench --clients "$CLIENTS" --value-bytes "$VALUE_BYTES" \
  --value-bytes-max "$VALUE_BYTES" --duration-secs "$SECONDS_LOAD" >"$work/bench.txt" 2>&1 &
bench=$!
sample load "$SECONDS_LOAD"
wait "$bench" || true
cat "$work/bench.txt"
sample idle "$SECONDS_IDLE"
"$cli" --endpoint "$endpoints" gc >/dev/null
sample after-gc 5
for i in 1 2 3; do
  grep -q "Too many\|panicked" "$work/node-$i.log" && echo "node $i log:" && tail -5 "$work/node-$i.log"
done
for i in 1 2 3; do grep -E "RssAnon|RssFile" /proc/${pids[$i]}/status | tr "\n" " "; echo; done
echo "done"
