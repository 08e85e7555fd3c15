#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: repeatable even when the machine is
# busy (wall-clock throughput is not), so it is the number to compare one change against the
# next. Starts the daemon under callgrind with instrumentation off, sends a warm-up, switches
# instrumentation on, drives N requests of distinct users, dumps, and prints instructions per request
# and the top functions (inclusive).
#
# Usage: benches/callgrind.sh [requests=20000] [connections=8]
#   BUCKETD_BIN=path   the binary (default: ./target/release/bucketd, built)
#   PATH_KIND=bucketer|decide   the request (default bucketer)
#   OUT=file           keep the callgrind output there (default: a temp file, removed)
#   extra daemon settings as environment, e.g. BUCKETD__PROFILES__TYPE=memory
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${1:-20000}
CONNS=${2:-8}
KIND=${PATH_KIND:-bucketer}
command -v valgrind >/dev/null || { echo "valgrind is required"; exit 1; }
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)"; exit 1; }
if [ -z "${BUCKETD_BIN:-}" ]; then
  cargo build --release --bin bucketd -q
  BUCKETD_BIN=./target/release/bucketd
fi
STATE=$(mktemp -d)
OUT=${OUT:-$STATE/callgrind.out}
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$STATE"; }
trap cleanup EXIT
port=${PORT:-18390}
(cd "$STATE" && exec env BUCKETD__STATE_DIR="$STATE" BUCKETD__SERVER__LISTEN="127.0.0.1:$port" \
  BUCKETD__LOG__LEVEL=error BUCKETD__FLUSHER__ENABLED=false \
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT" \
  "$(realpath "$BUCKETD_BIN")" serve >"$STATE/log" 2>&1) &
pid=$!
for _ in $(seq 600); do curl -fs "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fs "http://127.0.0.1:$port/ready" >/dev/null || { cat "$STATE/log"; exit 1; }
cat >"$STATE/req.lua" <<LUA
local n = 0
local limit = $REQUESTS
request = function()
  n = n + 1
  if "$KIND" == "decide" then
    return wrk.format("POST", "/v1/decide?keys=new_checkout", {["Content-Type"] = "application/json"},
      '{"userId":"cg-' .. n .. '","userAttributes":{"tier":"platinum","age":31}}')
  end
  return wrk.format("GET", "/bucketer?e=checkout_flow_experiment&u=cg-" .. n .. "&a=tier:%22platinum%22,age:31")
end
LUA
# Warm-up (connections, caches, lazily built state), not counted.
wrk -t1 -c"$CONNS" -d2s -s "$STATE/req.lua" "http://127.0.0.1:$port/" >/dev/null 2>&1 || true
callgrind_control -z "$pid" >/dev/null 2>&1 || true
callgrind_control -i on "$pid" >/dev/null
# wrk has no request-count limit: run until the daemon's own request counter moved by REQUESTS.
count() { curl -fs "http://127.0.0.1:$port/metrics" | awk '/^bucketd_http_requests_total/ {s+=$2} END {print s+0}'; }
before=$(count)
wrk -t1 -c"$CONNS" -d600s -s "$STATE/req.lua" "http://127.0.0.1:$port/" >/dev/null 2>&1 &
wrkpid=$!
while [ $(( $(count) - before )) -lt "$REQUESTS" ]; do sleep 0.5; done
kill "$wrkpid" 2>/dev/null; wait "$wrkpid" 2>/dev/null || true
callgrind_control -i off "$pid" >/dev/null
done_reqs=$(( $(count) - before ))
callgrind_control -d "$pid" >/dev/null
sleep 1
file=$(ls -t "$OUT"* | head -1)
total=$(callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
echo "requests: $done_reqs  instructions: $total  per request: $((total / done_reqs))"
callgrind_annotate --inclusive=yes "$file" 2>/dev/null | sed -n '/file:function/,$p' | head -${TOP:-40} | cut -c1-200
