#!/usr/bin/env bash
# Builds liblameduck and the C demo server, and runs it on 127.0.0.1 under lame-duck.
# Press Ctrl-C to watch lame-duck: in-flight requests finish, new connections are refused.
#   PORT=8080 PERIOD_MS=3000 DRAIN_MS=0 bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-8080}
cargo build --release --lib --quiet
out=target/demo
mkdir -p "$out"
cp target/release/liblameduck.so "$out/liblameduck.so.0"
ln -sf liblameduck.so.0 "$out/liblameduck.so"
cc -std=c11 -Wall -Wextra -Werror -O2 -pthread -Iinclude examples/http_server.c \
   -L"$out" -llameduck -Wl,-rpath,"$PWD/$out" -o "$out/http_server"
cat <<MSG
Demo: a C HTTP server under lameduck on http://127.0.0.1:$PORT
  curl http://127.0.0.1:$PORT/                 # hello
  curl http://127.0.0.1:$PORT/sleep?ms=5000    # a slow request: press Ctrl-C while it runs
  curl http://127.0.0.1:$PORT/health           # READY, or 503 while draining
Ctrl-C once: lame-duck (the slow request still completes, new connections are refused).
Ctrl-C twice: close now. Three times: exit at once.
MSG
exec "$out/http_server" --port "$PORT" --period "${PERIOD_MS:-3000}" --drain "${DRAIN_MS:-0}"
