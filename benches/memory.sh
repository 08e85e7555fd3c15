#!/usr/bin/env bash
# Throughput and memory of bucketd under load from distinct users (every request a new user id,
# so per-user state grows as in production), against a bare hyper server measured in the same
# run with the same load generator (wrk). Prints, per scenario, req/s, p50/p99, the ratio to
# bare hyper, and the daemon's RSS sampled every SAMPLE seconds while wrk runs.
#
# Usage: benches/memory.sh [duration=30s] [connections=32]
#   BUCKETD_BIN=path   the bucketd binary to measure (default: ./target/release/bucketd, built)
#   OLD_BIN=path       also measure this binary (e.g. a build of main) in the same run
#   SCENARIOS="..."    subset of: defaults memory none none-noflush decide   (default: all)
#   SAMPLE=10          RSS sampling period in seconds
#   DATAFILE=path      serve this datafile (e.g. from benches/gen_big_datafile.py) instead of the bundled one
#   RESULTS=file       append one tab-separated line per scenario (name, req/s, requests, RSS samples)
#
# The flusher is on (bucketd's default) and posts to a closed local port, so events pile up in
# the disk queue as they would while the event endpoint is unreachable.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-30s}
CONNS=${2:-32}
SAMPLE=${SAMPLE:-10}
SCENARIOS=${SCENARIOS:-"defaults memory none none-noflush decide"}
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)"; exit 1; }
if [ -z "${BUCKETD_BIN:-}" ]; then
  cargo build --release --bin bucketd --example bare_hyper -q
  BUCKETD_BIN=./target/release/bucketd
fi
BUCKETD_BIN=$(realpath "$BUCKETD_BIN")
[ -n "${OLD_BIN:-}" ] && OLD_BIN=$(realpath "$OLD_BIN")
[ -x ./target/release/examples/bare_hyper ] || cargo build --release --example bare_hyper -q
STATE=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$STATE"; }
trap cleanup EXIT

cat >"$STATE/bucketer.lua" <<'LUA'
local n = 0
local base = tostring(os.time()) .. "-" .. tostring(math.random(1, 1000000))
request = function()
  n = n + 1
  return wrk.format("GET", "/bucketer?e=checkout_flow_experiment&u=u" .. base .. "-" .. n .. "&a=tier:%22platinum%22,age:31")
end
LUA
cat >"$STATE/decide.lua" <<'LUA'
local n = 0
local base = tostring(os.time()) .. "-" .. tostring(math.random(1, 1000000))
request = function()
  n = n + 1
  local body = '{"userId":"u' .. base .. '-' .. n .. '","userAttributes":{"tier":"platinum","age":31}}'
  return wrk.format("POST", "/v1/decide?keys=new_checkout", {["Content-Type"] = "application/json"}, body)
end
LUA

wait_port() { for _ in $(seq 300); do curl -fs "http://127.0.0.1:$1/$2" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "port $1 not ready" >&2; cat "$STATE/$1.log" >&2; exit 1; }
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status" 2>/dev/null || echo "?"; }

# run NAME PID URL LUA: wrk with RSS sampled meanwhile; prints one result line, echoes req/s.
run() {
  local name=$1 pid=$2 url=$3 lua=$4 out samples wrkpid
  samples="$(rss_mb "$pid")"
  wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s "$lua" "$url" >"$STATE/wrk.out" 2>&1 &
  wrkpid=$!
  while kill -0 "$wrkpid" 2>/dev/null; do
    for _ in $(seq $((SAMPLE * 10))); do kill -0 "$wrkpid" 2>/dev/null || break; sleep 0.1; done
    samples="$samples $(rss_mb "$pid")"
  done
  wait "$wrkpid" || true
  out=$(cat "$STATE/wrk.out")
  local rps p50 p99 reqs
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  printf '%-34s %10s req/s %9s reqs  p50 %-8s p99 %-8s RSS MB every %ss: %s\n' \
    "$name" "$rps" "$reqs" "$p50" "$p99" "$SAMPLE" "$samples" >&2
  [ -n "${RESULTS:-}" ] && printf '%s\t%s\t%s\t%s\n' "$name" "$rps" "$reqs" "$samples" >>"$RESULTS"
  echo "$rps"
}

port=18300
# start BIN NAME [env...]: a bucketd on the next port; prints "pid port".
start() {
  local bin=$1; shift
  port=$((port + 1))
  mkdir -p "$STATE/$port"
  # Run from the state dir: no ./config.toml is read, so each binary runs its own defaults.
  (cd "$STATE/$port" && exec env BUCKETD__STATE_DIR="$STATE/$port" \
      BUCKETD__SERVER__LISTEN="127.0.0.1:$port" BUCKETD__LOG__LEVEL=error \
      BUCKETD__EVENTS__ENDPOINT="http://127.0.0.1:9/v1/events" \
      ${DATAFILE:+BUCKETD__DATAFILE__PATH="$(realpath "$DATAFILE")"} "$@" \
      "$bin" serve >"$STATE/$port.log" 2>&1) &
  pids+=($!)
  STARTED_PID=$!
  wait_port "$port" ready
}

./target/release/examples/bare_hyper 127.0.0.1:18300 2>/dev/null & pids+=($!)
sleep 0.5
echo "wrk: 1 thread, $CONNS connections, $DURATION per scenario, $(nproc) cores, distinct users" >&2
bare=$(run "bare hyper (baseline)" "${pids[0]}" "http://127.0.0.1:18300/" "$STATE/bucketer.lua")

scenario() { # BIN LABEL
  local bin=$1 label=$2 s rps
  for s in $SCENARIOS; do
    case $s in
      defaults) start "$bin"; rps=$(run "$label /bucketer defaults" "$STARTED_PID" "http://127.0.0.1:$port/" "$STATE/bucketer.lua") ;;
      memory) start "$bin" BUCKETD__PROFILES__TYPE=memory; rps=$(run "$label /bucketer profiles=memory" "$STARTED_PID" "http://127.0.0.1:$port/" "$STATE/bucketer.lua") ;;
      none) start "$bin" BUCKETD__PROFILES__TYPE=none; rps=$(run "$label /bucketer profiles=none" "$STARTED_PID" "http://127.0.0.1:$port/" "$STATE/bucketer.lua") ;;
      none-noflush) start "$bin" BUCKETD__PROFILES__TYPE=none BUCKETD__FLUSHER__ENABLED=false; rps=$(run "$label /bucketer none, no flusher" "$STARTED_PID" "http://127.0.0.1:$port/" "$STATE/bucketer.lua") ;;
      decide) start "$bin"; rps=$(run "$label /v1/decide defaults" "$STARTED_PID" "http://127.0.0.1:$port/" "$STATE/decide.lua") ;;
      *) echo "unknown scenario $s" >&2; exit 1 ;;
    esac
    kill "$STARTED_PID" 2>/dev/null || true
    awk -v b="$bare" -v r="$rps" -v n="$label $s" 'BEGIN { printf "  ratio to bare hyper (%s): %.2f\n", n, r/b }' >&2
  done
}
[ -n "${OLD_BIN:-}" ] && scenario "$OLD_BIN" "old"
scenario "$BUCKETD_BIN" "new"
