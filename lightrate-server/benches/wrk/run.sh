#!/usr/bin/env bash
# Consume calls per second through lightrate-server, in memory and on Redis, in one run:
# wrk, 2 threads, 32 connections, 5000 users, DURATION seconds each (default 10).
# Needs redis-server and wrk (apt-get install redis-server wrk). Everything on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../../.."
DURATION="${1:-10}"
cargo build --release -p lightrate-server
BIN=target/release/lightrate-server
WORK="$(mktemp -d)"
REDIS_PORT=6390
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$WORK" --loglevel warning >/dev/null 2>&1 &
until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.05; done

export LIGHTRATE_API_KEY=bench-key LIGHTRATE_APPLICATION_ID=bench RUST_LOG=warn
start_server() { # $1: port, then extra flags
  local port="$1"; shift
  "$BIN" --listen "127.0.0.1:$port" "$@" > "$WORK/server-$port.out" 2>/dev/null &
  until grep -q "listening on" "$WORK/server-$port.out" 2>/dev/null; do sleep 0.05; done
}
start_server 8091
start_server 8092 --redis "redis://127.0.0.1:$REDIS_PORT"

for run in "in memory:8091" "on Redis:8092"; do
  echo "== lightrate-server ${run%%:*}"
  wrk -t2 -c32 -d"${DURATION}s" --latency -s lightrate-server/benches/wrk/consume.lua \
    "http://127.0.0.1:${run##*:}" | grep -E "Requests/sec|Latency|50%|99%|non-200|requests in"
done
echo "== Redis keys after the run: $(redis-cli -p "$REDIS_PORT" dbsize)"
