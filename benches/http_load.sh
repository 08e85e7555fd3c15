#!/usr/bin/env bash
# HTTP throughput of bucketd against a bare hyper server, measured in the same run on the same
# machine with the same load generator (wrk): prints requests/s, latency percentiles and the
# ratio. Usage: benches/http_load.sh [duration=10s] [connections=64]
#
# Scenarios: /bucketer with profiles=none (stateless), with the embedded memory store, and the
# bare hyper baseline; Redis with and without a read cache; and events.ack durable (the default:
# each answer waits for its impression's group-committed fsync) against fast (no wait), in the
# same run. ONLY_ACK=1 runs just the durable/fast pair.
#
# RESULTS=file appends one tab-separated line per scenario (name, req/s, p50, p99) for
# benches/suite.sh; SUITE=1 adds the suite's scenarios: the defaults, /v1/decide for one flag and
# decide-all on the defaults and on profiles=none, and the official Python SDK behind gunicorn
# (needs GUNICORN=path/to/gunicorn with optimizely-sdk in the same venv).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10s}
CONNS=${2:-64}
THREADS=${WRK_THREADS:-1}
command -v wrk >/dev/null || { apt-get install -y -qq wrk >/dev/null 2>&1 || { echo "wrk is required (apt-get install wrk)"; exit 1; }; }
# CARGO_FLAGS, e.g. "--no-default-features --features disk,memory" for a quicker ONLY_ACK build.
if [ -z "${BUCKETD_BIN:-}" ]; then
  cargo build --release --bin bucketd --example bare_hyper -q ${CARGO_FLAGS:-}
fi
BIN=$(realpath "${BUCKETD_BIN:-./target/release/bucketd}")
BARE=$(realpath "${BARE_BIN:-./target/release/examples/bare_hyper}")
STATE=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$STATE" "${LUA:-}" "${DECIDE_LUA:-}"; }
trap cleanup EXIT

wait_port() { for _ in $(seq 100); do curl -fs "http://127.0.0.1:$1/$2" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "port $1 not ready"; exit 1; }

start_bucketd() { # port profiles_type [extra env...]
  local port=$1 kind=$2; shift 2
  local profiles=(BUCKETD__PROFILES__TYPE="$kind")
  [ "$kind" = default ] && profiles=()
  (cd "$STATE" && exec env BUCKETD__STATE_DIR="$STATE/$port" BUCKETD__SERVER__LISTEN="127.0.0.1:$port" \
      "${profiles[@]}" BUCKETD__LOG__LEVEL=warn BUCKETD__FLUSHER__ENABLED=false "$@" \
      "$BIN" serve >/dev/null 2>&1) &
  pids+=($!)
  wait_port "$port" ready
}

URL_PATH='/bucketer?e=checkout_flow_experiment&u=user-1&a=tier:%22platinum%22,age:31'
# Many users, so profile stores see lookups and saves across a key space (wrk Lua picks the id).
LUA=$(mktemp --suffix .lua)
cat >"$LUA" <<'LUA'
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/bucketer?e=checkout_flow_experiment&u=user-" .. (n % 50000) .. "&a=tier:%22platinum%22,age:31")
end
LUA
# POST bodies for /v1/decide: a new user each time, one flag (keys=) or all of them.
DECIDE_LUA=$(mktemp --suffix .lua)
cat >"$DECIDE_LUA" <<'LUA'
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"},
    '{"userId":"user-' .. (n % 50000) .. '","userAttributes":{"tier":"platinum","age":31}}')
end
LUA
run() { # name url [lua]
  local out rps p50 p99
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "${3:-$LUA}" "$2" 2>&1) || true
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  local non2xx; non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  printf '%-28s %12s req/s   p50 %-9s p99 %s%s\n' "$1" "$rps" "$p50" "$p99" "${non2xx:+   non-2xx $non2xx}" >&2
  [ -n "${RESULTS:-}" ] && printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$rps" "$p50" "$p99" "${non2xx:-0}" >>"$RESULTS"
  echo "$rps"
}

if [ "${ONLY_ACK:-}" = 1 ]; then
  start_bucketd 18091 none
  start_bucketd 18095 none BUCKETD__EVENTS__ACK=fast
  for p in 18091 18095; do curl -fs "http://127.0.0.1:$p$URL_PATH" >/dev/null || true; done
  echo "wrk: $THREADS thread(s), $CONNS connections, $DURATION per scenario, $(nproc) cores" >&2
  dur=$(run "bucketd ack=durable" "http://127.0.0.1:18091$URL_PATH")
  fast=$(run "bucketd ack=fast" "http://127.0.0.1:18095$URL_PATH")
  awk -v d="$dur" -v f="$fast" 'BEGIN { printf "durable / fast: %.2f\n", d/f }' >&2
  exit 0
fi

"$BARE" 127.0.0.1:18090 2>/dev/null & pids+=($!)
sleep 0.5
start_bucketd 18091 none
start_bucketd 18092 memory
start_bucketd 18095 none BUCKETD__EVENTS__ACK=fast
REDIS_URL=${BUCKETD_TEST_REDIS_URL:-}
if [ -z "$REDIS_URL" ]; then eval "$(bash .ci/servers/redis.sh)"; REDIS_URL=$BUCKETD_TEST_REDIS_URL; fi
start_bucketd 18093 redis BUCKETD__PROFILES__URL="$REDIS_URL" BUCKETD__PROFILES__KEY_PREFIX="bench:$$:"
start_bucketd 18094 redis BUCKETD__PROFILES__URL="$REDIS_URL" BUCKETD__PROFILES__KEY_PREFIX="bench:$$:" \
  BUCKETD__PROFILES__CACHE_CAPACITY=100000
if [ "${SUITE:-}" = 1 ]; then
  start_bucketd 18096 default
  if [ -n "${GUNICORN:-}" ]; then
    "$GUNICORN" -w 2 -b 127.0.0.1:18097 --chdir "$PWD/benches" sdk_gunicorn_app:app --log-level warning 2>/dev/null & pids+=($!)
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:18097$URL_PATH" >/dev/null 2>&1 && break; sleep 0.2; done
  fi
fi
# Warm up each server once.
for p in 18090 18091 18092 18093 18094 18095; do curl -fs "http://127.0.0.1:$p$URL_PATH" >/dev/null || true; done

echo "wrk: $THREADS thread(s), $CONNS connections, $DURATION per scenario, $(nproc) cores" >&2
bare=$(run "bare hyper (baseline)" "http://127.0.0.1:18090$URL_PATH")
none=$(run "bucketd profiles=none (durable)" "http://127.0.0.1:18091$URL_PATH")
fast=$(run "bucketd none, ack=fast" "http://127.0.0.1:18095$URL_PATH")
mem=$(run "bucketd profiles=memory" "http://127.0.0.1:18092$URL_PATH")
red=$(run "bucketd profiles=redis" "http://127.0.0.1:18093$URL_PATH")
redc=$(run "bucketd redis + read cache" "http://127.0.0.1:18094$URL_PATH")
if [ "${SUITE:-}" = 1 ]; then
  run "bucketd defaults" "http://127.0.0.1:18096$URL_PATH" >/dev/null
  run "decide 1 flag, defaults" "http://127.0.0.1:18096/v1/decide?keys=new_checkout" "$DECIDE_LUA" >/dev/null
  run "decide 1 flag, none" "http://127.0.0.1:18091/v1/decide?keys=new_checkout" "$DECIDE_LUA" >/dev/null
  run "decide-all, defaults" "http://127.0.0.1:18096/v1/decide" "$DECIDE_LUA" >/dev/null
  if [ -n "${GUNICORN:-}" ]; then run "python sdk + gunicorn" "http://127.0.0.1:18097$URL_PATH" >/dev/null; fi
fi
awk -v b="$bare" -v n="$none" -v m="$mem" -v r="$red" -v c="$redc" -v f="$fast" 'BEGIN {
  printf "durable / fast acknowledgement: %.2f\n", n/f
  printf "ratio to bare hyper: profiles=none %.2f, memory %.2f\n", n/b, m/b
  printf "ratio to stateless bucketd: redis %.2f, redis + read cache %.2f\n", r/n, c/n }' >&2
