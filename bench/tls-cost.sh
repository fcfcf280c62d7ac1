#!/usr/bin/env bash
# What mutual TLS costs: two 3-node clusters on 127.0.0.1 (fsync on), one with TLS (the default)
# and one with --insecure-plaintext, driven by `paxos-cli bench` in alternation after a warm-up;
# one table with writes/s, p50 and p99 of both.
#   DURATION=10 WARMUP=3 VALUE_BYTES=100 CLIENT_COUNTS="1 64" bench/tls-cost.sh
# CI does not run it.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
VALUE_BYTES=${VALUE_BYTES:-100}
CLIENT_COUNTS=${CLIENT_COUNTS:-"1 64"}
scripts/install-deps
target="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --bins -q
cli="$target/release/paxos-cli"
node="$target/release/paxos-node"
source bench/common.sh
read -r -a ports <<<"$(free_ports 6)"
"$cli" --certs-dir "$work/certs" certs --nodes 1,2,3 >/dev/null

cluster_of tls "$node" 0 --certs-dir "$work/certs"
cluster_of plain "$node" 3 --insecure-plaintext
run_tls() { "$cli" --certs-dir "$work/certs" --endpoint "${cluster_endpoints[tls]}" --json bench --clients "$1" --value-bytes "$VALUE_BYTES" --duration-secs "$2"; }
run_plain() { "$cli" --insecure-plaintext --endpoint "${cluster_endpoints[plain]}" --json bench --clients "$1" --value-bytes "$VALUE_BYTES" --duration-secs "$2"; }
alternate tls run_tls plain run_plain
results="$work/results.jsonl"

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
python3 - "$results" "$commit" "$VALUE_BYTES" "$DURATION" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
commit, value_bytes, duration = sys.argv[2], sys.argv[3], sys.argv[4]
by = {(row["system"], row["run"]["clients"]): row["run"] for row in rows}
print(f"commit {commit}; 3 nodes each on 127.0.0.1, fsync on; {value_bytes} B values; {duration} s per run")
print("| clients | plaintext writes/s | TLS writes/s | TLS/plaintext | plaintext p50 ms | TLS p50 ms | plaintext p99 ms | TLS p99 ms |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|")
for clients in sorted({c for (_, c) in by}):
    p, t = by.get(("plain", clients)), by.get(("tls", clients))
    if not p or not t:
        continue
    ratio = t["writes_per_second"] / p["writes_per_second"] if p["writes_per_second"] else float("nan")
    print(f'| {clients} | {p["writes_per_second"]:.0f} | {t["writes_per_second"]:.0f} | {ratio:.2f} '
          f'| {p["latency_ms"]["p50"]:.2f} | {t["latency_ms"]["p50"]:.2f} '
          f'| {p["latency_ms"]["p99"]:.2f} | {t["latency_ms"]["p99"]:.2f} |')
errors = {f"{k[0]}/{k[1]}": v["errors"] for k, v in by.items() if v["errors"]}
if errors:
    print(f"errors: {errors}")
PY
