#!/usr/bin/env bash
# Side-by-side: etcd 3.4 (3 members) and this project's cluster (3 nodes), both on 127.0.0.1,
# data directories on the same disk, fsync on for both (etcd's default; ours always). The same
# client model drives both (Rust, N clients each with one request in flight, fixed-size values):
# `paxos-cli bench` and bench/etcd-bench. Both are driven through their leader: `paxos-cli
# bench` finds ours, and etcd-bench gets only the endpoint of etcd's leader (asked before each
# run), so neither system forwards writes from a follower. Runs alternate between the two
# systems after a warm-up, then one table prints both systems' writes/s, p50 and p99, the ratio,
# the server CPU time per write of each (user + system time of its three server processes over
# the run, from /proc) and our leader's fsyncs per value.
#   DURATION=10 WARMUP=3 VALUE_SIZES="100 4096" CLIENT_COUNTS="1 64 256" bench/compare-etcd.sh
# It installs what is missing (etcd-server, etcd-client, protobuf-compiler, libclang-dev) and
# stops everything it started. CI does not run it.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
VALUE_SIZES=${VALUE_SIZES:-"100 4096"}
CLIENT_COUNTS=${CLIENT_COUNTS:-"1 64 256"}

need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v protoc >/dev/null || need+=(protobuf-compiler)
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

target="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --bins -q
(cd bench/etcd-bench && CARGO_TARGET_DIR="$target/etcd-bench" cargo build --release -q)
cli="$target/release/paxos-cli"
node="$target/release/paxos-node"
etcd_bench="$target/etcd-bench/release/etcd-bench"

source bench/common.sh
ports=($(free_ports 9))

# etcd: client ports 0-2, peer ports 3-5.
cluster="e1=http://127.0.0.1:${ports[3]},e2=http://127.0.0.1:${ports[4]},e3=http://127.0.0.1:${ports[5]}"
etcd_endpoints="http://127.0.0.1:${ports[0]},http://127.0.0.1:${ports[1]},http://127.0.0.1:${ports[2]}"
for i in 0 1 2; do
  n=$((i + 1))
  etcd --name "e$n" --data-dir "$work/etcd-$n" \
    --listen-client-urls "http://127.0.0.1:${ports[$i]}" --advertise-client-urls "http://127.0.0.1:${ports[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${ports[$((i + 3))]}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${ports[$((i + 3))]}" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token bench \
    >"$work/etcd-$n.log" 2>&1 &
  pids[etcd-$n]=$!
done

# paxos: ports 6-8.
peers=()
for i in 0 1 2; do peers+=(--peer "$((i + 1))=127.0.0.1:${ports[$((i + 6))]}"); done
paxos_endpoints="127.0.0.1:${ports[6]},127.0.0.1:${ports[7]},127.0.0.1:${ports[8]}"
# Mutual TLS, as the nodes run by default (etcd here runs plaintext: bench/tls-cost.sh says what
# TLS costs ours).
export PAXOS_CERTS_DIR="$work/certs"
"$cli" certs --nodes 1,2,3 >/dev/null
for i in 0 1 2; do
  RUST_LOG=warn "$node" --id $((i + 1)) --listen "127.0.0.1:${ports[$((i + 6))]}" "${peers[@]}" \
    --data-dir "$work/paxos-$((i + 1))" >"$work/paxos-$((i + 1)).log" 2>&1 &
  pids[paxos-$i]=$!
done

for _ in $(seq 1 100); do
  ETCDCTL_API=3 etcdctl --endpoints "$etcd_endpoints" endpoint health >/dev/null 2>&1 && break
  sleep 0.1
done
ETCDCTL_API=3 etcdctl --endpoints "$etcd_endpoints" endpoint health >/dev/null
wait_for_leader --endpoint "$paxos_endpoints"

# The client URL of etcd's leader now.
etcd_leader() {
  ETCDCTL_API=3 etcdctl --endpoints "$etcd_endpoints" endpoint status -w json | python3 -c '
import json, sys
for endpoint in json.load(sys.stdin):
    status = endpoint["Status"]
    if status["leader"] == status["header"]["member_id"]:
        print(endpoint["Endpoint"])
        break
else:
    sys.exit("no etcd member says it leads")'
}
# The server processes of each system, whose CPU time each run reports (see `measured`).
server_pids() {
  case $1 in
    etcd) echo "${pids[etcd-1]} ${pids[etcd-2]} ${pids[etcd-3]}" ;;
    paxos) echo "${pids[paxos-0]} ${pids[paxos-1]} ${pids[paxos-2]}" ;;
  esac
}
run_etcd() { "$etcd_bench" --endpoints "$(etcd_leader)" --clients "$1" --value-bytes "$VALUE_BYTES" --duration-secs "$2"; }
run_paxos() { "$cli" --endpoint "$paxos_endpoints" --json bench --clients "$1" --value-bytes "$VALUE_BYTES" --duration-secs "$2"; }

for VALUE_BYTES in $VALUE_SIZES; do
  echo "values of $VALUE_BYTES bytes" >&2
  alternate etcd run_etcd paxos run_paxos
done
results="$work/results.jsonl"

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
python3 - "$results" "$commit" "$DURATION" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
commit, duration = sys.argv[2], sys.argv[3]
by, cpu = {}, {}
for row in rows:
    key = (row["system"], row["run"]["clients"], row["run"]["value_bytes"])
    by[key] = row["run"]
    if "server_cpu_seconds" in row:
        cpu[key] = row["server_cpu_seconds"]
print(f"commit {commit}; 3 members each on 127.0.0.1, fsync on, each driven through its leader; {duration} s per run;")
print("server CPU = user + system time of the three server processes over the run, per write")
print("| value bytes | clients | etcd writes/s | paxos writes/s | ratio | etcd p50 ms | paxos p50 ms | etcd p99 ms | paxos p99 ms | etcd CPU us/write | paxos CPU us/write | paxos fsyncs/value |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
def cpu_per_write(system, run):
    seconds = cpu.get((system, run["clients"], run["value_bytes"]))
    return f"{seconds * 1e6 / run['writes']:.0f}" if seconds is not None and run["writes"] else "-"
for value_bytes, clients in sorted({(v, c) for (_, c, v) in by}):
    e, p = by.get(("etcd", clients, value_bytes)), by.get(("paxos", clients, value_bytes))
    if not e or not p:
        continue
    ratio = p["writes_per_second"] / e["writes_per_second"] if e["writes_per_second"] else float("inf")
    fsyncs = p.get("leader_fsyncs_per_chosen_value")
    fsyncs = f"{fsyncs:.3f}" if fsyncs is not None else "-"
    print(f'| {value_bytes} | {clients} | {e["writes_per_second"]:.0f} | {p["writes_per_second"]:.0f} | {ratio:.2f}x '
          f'| {e["latency_ms"]["p50"]:.2f} | {p["latency_ms"]["p50"]:.2f} '
          f'| {e["latency_ms"]["p99"]:.2f} | {p["latency_ms"]["p99"]:.2f} '
          f'| {cpu_per_write("etcd", e)} | {cpu_per_write("paxos", p)} | {fsyncs} |')
errors = {k: v["errors"] for k, v in by.items() if v["errors"]}
if errors:
    print(f"errors: {errors}")
PY
