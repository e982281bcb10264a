#!/usr/bin/env bash
# Load run of the orchestrator: a `reap serve` on a temporary store, helloworld
# deployed, then wrk (Debian package `wrk`) POSTing warm invocations from a second
# process over loopback for a bounded time. Prints wrk's throughput and latency
# distribution. Usage: scripts/load.sh [SECONDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-4}
command -v wrk >/dev/null || { echo "load.sh: needs wrk (apt-get install wrk)" >&2; exit 1; }
[ -n "${NO_BUILD:-}" ] || cargo build --release --workspace --locked -q
home=$(mktemp -d)
export REAP_HOME=$home
port=$((20000 + RANDOM % 20000))
target/release/reap serve --listen "127.0.0.1:$port" --max-instances "$conns" 2>"$home/serve.log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$home"' EXIT
for _ in $(seq 100); do [ -f "$home/server.json" ] && break; sleep 0.1; done
target/release/reap deploy hello --binary target/release/helloworld >/dev/null
# Warm up: one instance per connection.
for _ in $(seq "$conns"); do curl -s -X POST -d '{"name":"load"}' "http://127.0.0.1:$port/functions/hello/invoke" >/dev/null; done
lua=$home/post.lua
cat >"$lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"name":"load"}'
wrk.headers["Content-Type"] = "application/json"
LUA
wrk -t 1 -c "$conns" -d "${secs}s" --latency -s "$lua" "http://127.0.0.1:$port/functions/hello/invoke"
curl -s "http://127.0.0.1:$port/metrics" | grep -E '^reap_invocations_total|^reap_invocation_errors_total' || true
