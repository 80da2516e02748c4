#!/usr/bin/env bash
# The full-load zero-loss measure of issue 5: `wrk -t2 -c20 -d20s` keep-alive load on 127.0.0.1
# while the server is upgraded 8 times, 2 s apart (kill -HUP to the current generation), for the
# C demo, the Python example (http.server adapter) and the Node example (http adapter).
# Prints wrk's summary for each; "lost" counts every socket error, timeout and non-2xx answer.
# The starter-* targets run the same servers as workers under our start_server and send the
# HUPs to start_server instead (a new worker generation each time).
#
#   bash benches/upgrade_zero_loss.sh [c] [python] [node] [starter-c] [starter-python] [starter-node]
#   (default: all six)
#
# Needs what scripts/test-all.sh sets up: wrk, the project venv (.venv) and bindings/node built.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "wrk is not installed (scripts/test-all.sh installs it)" >&2; exit 1; }
UPGRADES=${UPGRADES:-8}
DURATION=${DURATION:-20}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(c python node starter-c starter-python starter-node)

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_for() { # file pattern count limit_s
  local until=$((SECONDS + $4))
  while [ "$(grep -c -- "$2" "$1" || true)" -lt "$3" ]; do
    [ $SECONDS -lt $until ] || { echo "timed out waiting for '$2' x$3 in $1:" >&2; tail -20 "$1" >&2; return 1; }
    sleep 0.05
  done
}

run_one() { # name port mode command...   (mode: self = HUP the server, starter = HUP start_server)
  local name=$1 port=$2 mode=$3
  shift 3
  local log="$work/$name.log"
  "$@" >"$log" 2>&1 &
  local current=$!
  pids+=("$current")
  local until=$((SECONDS + 30))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    [ $SECONDS -lt $until ] || { echo "$name did not start:" >&2; cat "$log" >&2; return 1; }
    sleep 0.05
  done
  wrk -t2 -c20 -d"${DURATION}s" "http://127.0.0.1:$port/" >"$work/$name.wrk" 2>&1 &
  local wrk_pid=$!
  for i in $(seq 1 "$UPGRADES"); do
    sleep 2
    kill -HUP "$current"
    if [ "$mode" = starter ]; then
      wait_for "$log" "new worker is now running" "$i" 30
    else
      wait_for "$log" "New process [0-9]* is ready" "$i" 30
      current=$(grep -o "New process [0-9]* is ready" "$log" | sed -n "${i}p" | awk '{print $3}')
      pids+=("$current")
    fi
  done
  wait "$wrk_pid"
  kill -TERM "$current"
  until=$((SECONDS + 30))
  while kill -0 "$current" 2>/dev/null && [ "$(ps -o stat= -p "$current" | cut -c1)" != Z ]; do
    [ $SECONDS -lt $until ] || { echo "$name: the last generation did not stop" >&2; break; }
    sleep 0.05
  done
  local requests errors non2xx
  requests=$(awk '/requests in/ {print $1}' "$work/$name.wrk")
  errors=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$work/$name.wrk")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$work/$name.wrk")
  echo "== $name: $UPGRADES upgrades (HUP to $mode) under wrk -t2 -c20 -d${DURATION}s"
  grep -E "Requests/sec|Latency |Socket errors|Non-2xx|requests in" "$work/$name.wrk" | sed 's/^/   /'
  echo "   lost: $(( ${errors:-0} + ${non2xx:-0} )) of ${requests} requests"
}

build_c_demo() {
  cargo build --release --lib --bin start_server --quiet
      mkdir -p target/demo
      cp target/release/liblameduck.so target/demo/liblameduck.so.0
      ln -sf liblameduck.so.0 target/demo/liblameduck.so
  cc -std=c11 -O2 -pthread -Iinclude examples/http_server.c -Ltarget/demo -llameduck \
    -Wl,-rpath,"$PWD/target/demo" -o target/demo/http_server
}
mkdir -p "$work/node_modules"
ln -s "$PWD/bindings/node" "$work/node_modules/lameduck"
starter() { # port command...: the command as a worker of our start_server on 127.0.0.1:port
  local port=$1
  shift
  echo target/release/start_server "--port=127.0.0.1:$port" -- "$@"
}

for target in "${targets[@]}"; do
  port=$(free_port)
  case $target in
    c | starter-c) build_c_demo ;;
  esac
  case $target in
    c) run_one c "$port" self target/demo/http_server --port "$port" ;;
    python) run_one python "$port" self .venv/bin/python examples/python/http_server.py "$port" ;;
    node) run_one node "$port" self env PORT="$port" NODE_PATH="$work/node_modules" node examples/node/server.js ;;
    starter-c) run_one starter-c "$port" starter $(starter "$port" target/demo/http_server --port "$port") ;;
    starter-python) run_one starter-python "$port" starter $(starter "$port" .venv/bin/python examples/python/http_server.py "$port") ;;
    starter-node) run_one starter-node "$port" starter $(starter "$port" env PORT="$port" NODE_PATH="$work/node_modules" node examples/node/server.js) ;;
    *) echo "unknown target $target (c, python, node)" >&2; exit 2 ;;
  esac
done
