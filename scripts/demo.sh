#!/usr/bin/env bash
# Builds liblameduck and the C demo server, and runs it on 127.0.0.1 under lame-duck.
# Press Ctrl-C to watch lame-duck: in-flight requests finish, new connections are refused.
# `kill -HUP <pid>` upgrades it: a new process takes the socket over and the old one exits.
# This script stays in the foreground until the last generation has exited: every generation
# is in the terminal's foreground process group, so Ctrl-C (SIGINT to that group) reaches
# whichever one is serving. A SIGTERM or SIGHUP sent to this script goes to the newest one.
# MAX_CONNECTIONS=N limits the connections served at once (0: unlimited); `kill -USR1 <pid>` /
# `kill -USR2 <pid>` raise / lower that limit by one while it runs.
#   PORT=8080 PERIOD_MS=10000 DRAIN_MS=0 MAX_CONNECTIONS=0 bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-8080}
PERIOD_MS=${PERIOD_MS:-10000}
DRAIN_MS=${DRAIN_MS:-0}
MAX_CONNECTIONS=${MAX_CONNECTIONS:-0}
# The slow request of the walkthrough: at most half the lame-duck period, so that it still
# completes whenever Ctrl-C comes while it runs.
SLEEP_MS=$((PERIOD_MS / 2 < 5000 ? PERIOD_MS / 2 : 5000))
cargo build --release --lib --quiet
out=target/demo
mkdir -p "$out"
# Put in place by rename: a demo already running (and its upgrades) never sees a file half
# written.
cp target/release/liblameduck.so "$out/liblameduck.so.0.$$"
mv -f "$out/liblameduck.so.0.$$" "$out/liblameduck.so.0"
ln -sf liblameduck.so.0 "$out/liblameduck.so"
cc -std=c11 -Wall -Wextra -Werror -O2 -pthread -Iinclude examples/http_server.c \
   -L"$out" -llameduck -Wl,-rpath,"$PWD/$out" -o "$out/http_server.$$"
mv -f "$out/http_server.$$" "$out/http_server"
url=http://127.0.0.1:$PORT
echo "Demo: a C HTTP server under lameduck on $url (lame-duck period $PERIOD_MS ms)"
printf '  %-40s # %s\n' \
  "curl $url/" "hello from lameduck (pid N)" \
  "curl $url/sleep?ms=$SLEEP_MS" "a slow request: press Ctrl-C while it runs" \
  "curl $url/health" "JSON: READY (or 503 while draining), connection counts" \
  "kill -HUP N" "zero-downtime upgrade to a new process" \
  "kill -USR1 N; kill -USR2 N" "raise / lower the connection limit by 1 (MAX_CONNECTIONS=$MAX_CONNECTIONS, 0: unlimited)"
cat <<MSG
Ctrl-C once: lame-duck (the slow request still completes, new connections are refused).
Ctrl-C twice: close now. Three times: exit at once.
After kill -HUP the new process serves in this terminal: Ctrl-C stops it the same way.
MSG

# The pid file names the generation that serves: written when it is ready, rewritten with the
# new pid at an upgrade's hand-over, removed by the last generation when it stops.
run=$(mktemp -d "$PWD/$out/run.XXXXXX") # private (0700)
trap 'rm -rf "$run"' EXIT
pid_file=$run/pid
current=
forward() { if [ -n "$current" ]; then kill -s "$1" "$current" 2>/dev/null || true; fi; }
trap 'forward TERM' TERM
trap 'forward HUP' HUP
# Ctrl-C already reached the server (same process group): only keep this script waiting.
trap ':' INT

# A background job of a script starts with SIGINT and SIGQUIT ignored, and exec would keep
# them so: the server gets the defaults a command run in the foreground has.
(
  trap - INT QUIT
  exec "$out/http_server" --port "$PORT" --period "$PERIOD_MS" --drain "$DRAIN_MS" --max-connections "$MAX_CONNECTIONS" --pid-file "$pid_file"
) &
first=$!
current=$first
generations=("$first")

# True while process $1 runs; a zombie (exited, not yet reaped by its new parent) is gone.
alive() {
  local stat
  { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

while :; do
  named=
  { read -r named <"$pid_file"; } 2>/dev/null || true
  if [ -n "$named" ] && [ "$named" != "$current" ]; then
    current=$named
    generations+=("$named")
    echo "demo: upgraded: now pid $current; Ctrl-C still stops it"
  fi
  running=
  for pid in "${generations[@]}"; do
    if alive "$pid"; then running=1; fi
  done
  [ -n "$running" ] || break
  sleep 0.1 || true # a Ctrl-C ends it early
done

if [ "$current" = "$first" ]; then
  # Our own child: its exit status is the demo's.
  status=0
  wait "$first" || status=$?
  exit "$status"
fi
# A later generation is not our child, so its exit status is not ours to see; the last one
# removes the pid file when its run ends (a crash or SIGKILL leaves it behind).
if [ -e "$pid_file" ]; then
  echo "demo: pid $current exited without ending its run" >&2
  exit 1
fi
