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

# free_ports N: prints N distinct free ports.
free_ports() {
  python3 -c 'import socket, sys
s = [socket.socket() for _ in range(int(sys.argv[1]))]
[x.bind(("127.0.0.1", 0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))' "$1"
}
