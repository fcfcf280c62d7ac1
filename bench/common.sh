# Shared by the bench scripts (sourced): a work folder on the project's disk that is removed on
# exit with every process recorded in `pids`, and free 127.0.0.1 ports.
work=$(mktemp -d -p "$PWD" bench-run.XXXXXX)
declare -A pids
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# free_ports N: prints N distinct free ports, below the kernel's ephemeral range so that no
# bind to port 0 or outgoing connection takes one before its node binds it (tests/src/ports.rs).
free_ports() {
  python3 -c 'import random, socket, sys
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
ports = []
for port in random.sample(range(10000, low), low - 10000):
    if len(ports) == int(sys.argv[1]):
        break
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        ports.append(port)
    except OSError:
        pass
    finally:
        s.close()
print(" ".join(map(str, ports)))' "$1"
}

# wait_for_leader ARGS...: waits (10 s at most) until `paxos-cli ARGS status` names a leader.
wait_for_leader() {
  for _ in $(seq 1 100); do
    "$cli" "$@" status --json --timeout-ms 500 2>/dev/null | grep -q '"leader":[0-9]' && return 0
    sleep 0.1
  done
  echo "no leader reachable with: paxos-cli $*" >&2
  return 1
}

# cpu_seconds PID...: the user plus system CPU time, in seconds, these processes have used so far
# (utime and stime of /proc/PID/stat).
cpu_seconds() {
  python3 - "$@" <<'PY'
import os, sys
ticks = 0
for pid in sys.argv[1:]:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5): utime, stime
print(ticks / os.sysconf("SC_CLK_TCK"))
PY
}

# measured NAME RUN CLIENTS SECONDS: one run's line of results.jsonl. When the caller defines
# `server_pids NAME` (the PIDs of that system's server processes), the line also holds the CPU
# time those processes used during the run, `server_cpu_seconds`.
measured() {
  local name=$1 run=$2 before after output
  if declare -F server_pids >/dev/null; then
    # shellcheck disable=SC2046 # one PID per word
    before=$(cpu_seconds $(server_pids "$name"))
  fi
  output=$("$run" "$3" "$4")
  if [ -n "${before:-}" ]; then
    # shellcheck disable=SC2046
    after=$(cpu_seconds $(server_pids "$name"))
    printf '{"system":"%s","server_cpu_seconds":%s,"run":%s}\n' "$name" \
      "$(python3 -c "print(round($after - $before, 3))")" "$output"
  else
    printf '{"system":"%s","run":%s}\n' "$name" "$output"
  fi
}

# alternate NAME_A RUN_A NAME_B RUN_B: RUN_X CLIENTS SECONDS prints one run's JSON. A warm-up of
# each (64 clients, WARMUP s), then for each of CLIENT_COUNTS a run of A and one of B, in turn;
# each run is a line of $work/results.jsonl (see `measured`).
alternate() {
  local names=("$1" "$3") runs=("$2" "$4") i clients
  echo "warm-up: ${WARMUP}s each" >&2
  for i in 0 1; do "${runs[$i]}" 64 "$WARMUP" >/dev/null; done
  for clients in $CLIENT_COUNTS; do
    for i in 0 1; do
      echo "${names[$i]}, $clients clients, ${DURATION}s" >&2
      measured "${names[$i]}" "${runs[$i]}" "$clients" "$DURATION" >>"$work/results.jsonl"
    done
  done
}

# start N: starts node N of the three-node cluster (again, after a kill), its log in $work.
start() {
  RUST_LOG=warn "$node" --id "$1" --listen "127.0.0.1:${ports[$(($1 - 1))]}" "${peers[@]}" \
    --data-dir "$work/node-$1" >>"$work/node-$1.log" 2>&1 &
  pids[$1]=$!
}

# cluster_of NAME BINARY FIRST [FLAGS...]: three nodes of BINARY on ports[FIRST..FIRST+2], with
# data in $work/NAME-N; sets pids[NAME-0..2] and cluster_endpoints[NAME] (the three addresses,
# comma-separated), and waits for a leader. FLAGS go to the nodes and to paxos-cli alike
# (`--certs-dir DIR`, `--insecure-plaintext`); without them both read PAXOS_CERTS_DIR.
# Needs $cli and `ports`.
declare -A cluster_endpoints
cluster_of() {
  local name=$1 binary=$2 first=$3 i peers=() list=()
  shift 3
  for i in 0 1 2; do
    peers+=(--peer "$((i + 1))=127.0.0.1:${ports[$((first + i))]}")
    list+=("127.0.0.1:${ports[$((first + i))]}")
  done
  for i in 0 1 2; do
    RUST_LOG=warn "$binary" --id $((i + 1)) --listen "127.0.0.1:${ports[$((first + i))]}" "${peers[@]}" \
      --data-dir "$work/$name-$((i + 1))" "$@" >"$work/$name-$((i + 1)).log" 2>&1 &
    pids[$name-$i]=$!
  done
  cluster_endpoints[$name]=$(IFS=,; echo "${list[*]}")
  wait_for_leader "$@" --endpoint "${cluster_endpoints[$name]}"
}

# three_node_cluster: certificates in $work/certs (nodes and paxos-cli read the directory from
# PAXOS_CERTS_DIR), three nodes of $node on free ports; sets ports, peers, endpoints and pids[N],
# and waits for a leader. Needs $cli and $node.
three_node_cluster() {
  ports=($(free_ports 3))
  peers=()
  for i in 1 2 3; do peers+=(--peer "$i=127.0.0.1:${ports[$((i - 1))]}"); done
  export PAXOS_CERTS_DIR="$work/certs"
  "$cli" certs --nodes 1,2,3 >/dev/null
  for i in 1 2 3; do start "$i"; done
  endpoints="127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
  wait_for_leader --endpoint "$endpoints"
}
