#!/usr/bin/env bash
# Every benchmark in one go, each against a baseline measured in the same run, printed as one
# table of ratios (markdown, ready for README's Performance section).
#
# Usage: benches/suite.sh [--quick]
#   --quick   shorter runs (5 s HTTP scenarios, 200k-request memory run, criterion 2 s), ~6 min
#   BUCKETD_BIN / BARE_BIN   use these binaries instead of building
#   SKIP="core flusher ..."  leave sections out (core http memory start swap flusher)
#   CARGO_FLAGS="--no-default-features --features disk,memory,redis"  a quicker build
#
# Sections (each reuses the script that owns it):
#   core     cargo bench --bench decisions (fixture + the generated 1 MiB datafile) vs the
#            official Python SDK doing the same work (benches/sdk_baseline.py)
#   http     benches/http_load.sh SUITE=1: /bucketer, /v1/decide (one flag, all flags) on the
#            defaults, profiles=none, Redis, Redis + read cache, ack=fast; bare hyper; the Python
#            SDK behind gunicorn (installed from PyPI into target/bench-venv)
#   memory   benches/memory.sh: distinct users with the defaults and the 1 MiB datafile, RSS
#            every 10 s (the target: <= 48 MiB, flat)
#   start    start to ready with the 1 MiB datafile, against bare hyper's start to first answer
#   swap     the datafile swapped (SIGHUP) every 0.5 s under load: slowest request against the
#            p99 + 1 ms of the same load without swaps
#   flusher  benches/flush_load.sh (disk queue; Kafka only without --quick)
# The machine is shared: read the ratios, not the absolute numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0
[ "${1:-}" = --quick ] && QUICK=1
SKIP=${SKIP:-}
skip() { [[ " $SKIP " == *" $1 "* ]]; }
if [ "$QUICK" = 1 ]; then HTTP_DUR=5s; MEM_DUR=20s; CRIT="--warm-up-time 1 --measurement-time 2"; FLUSH_N=50000
else HTTP_DUR=10s; MEM_DUR=90s; CRIT=""; FLUSH_N=200000; fi
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)"; exit 1; }
PY=${BUCKETD_PARITY_PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=target/bench-venv/bin/python
# The flusher's per-event baseline (examples/flush_bench.rs) runs the Python SDK's dispatcher.
export BUCKETD_BENCH_PYTHON=${BUCKETD_BENCH_PYTHON:-$(realpath "$PY")}
if [ -z "${BUCKETD_BIN:-}" ]; then
  cargo build --release ${CARGO_FLAGS:-} --bin bucketd --example bare_hyper -q
  BUCKETD_BIN=./target/release/bucketd
fi
BUCKETD_BIN=$(realpath "$BUCKETD_BIN")
BARE_BIN=$(realpath "${BARE_BIN:-./target/release/examples/bare_hyper}")
export BUCKETD_BIN BARE_BIN
OUT=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$OUT"; }
trap cleanup EXIT
ROWS=$OUT/rows
row() { printf '| %s | %s | %s | %s |\n' "$@" >>"$ROWS"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "?"; else printf "%.2f", a / b }'; }
ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) printf "%.3f", v / 1000; else if (v ~ /ms$/) printf "%.3f", v + 0; else if (v ~ /s$/) printf "%.3f", v * 1000; else print v }'; }

python3 benches/gen_big_datafile.py "$OUT/big.json"
python3 benches/gen_big_datafile.py "$OUT/big2.json" --flags 999

# --- core -------------------------------------------------------------------------------------
if ! skip core; then
  echo "== core (criterion vs Python SDK)" >&2
  crit=$(BUCKETD_BENCH_DATAFILE="$OUT/big.json" cargo bench ${CARGO_FLAGS:-} --bench decisions -q -- $CRIT \
    '^(core/experiment_decision|core/decide_all_24_flags|big/decide_all|big/parse_datafile)$' 2>&1 | tee /dev/stderr)
  # criterion: "core/experiment_decision  time:   [a unit b unit c unit]" -> the middle, in ns.
  est() { awk -v n="$1" '$1 == n && /time:/ { v = $5; u = $6 } $1 == n && !/time:/ { getline; v = $4; u = $5 }
           END { f = (u == "ps") ? 0.001 : (u == "ns") ? 1 : (u == "µs" || u == "us") ? 1000 : (u == "ms") ? 1e6 : 1e9; printf "%.1f", v * f }' <<<"$crit"; }
  exp_ns=$(est core/experiment_decision); all_ns=$(est core/decide_all_24_flags)
  big_ns=$(est big/decide_all); parse_ns=$(est big/parse_datafile)
  sdk=$("$PY" benches/sdk_baseline.py 2>/dev/null | tail -1)
  sdk_big=$("$PY" benches/sdk_baseline.py --datafile "$OUT/big.json" 2>/dev/null | tail -1)
  j() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
  sdk_exp=$(j "$sdk" experiment_decision_ns); sdk_all=$(j "$sdk" decide_all_ns); sdk_big_all=$(j "$sdk_big" decide_all_ns)
  row "experiment decision, in-process (fixture; target <= 150 ns)" "$exp_ns ns" "Python SDK get_variation: $(printf %.0f "$sdk_exp") ns" "$(ratio "$sdk_exp" "$exp_ns")× faster"
  row "decide-all, 24 flags" "$(awk -v v="$all_ns" 'BEGIN{printf "%.1f µs", v/1000}')" "Python SDK decide_all: $(awk -v v="$sdk_all" 'BEGIN{printf "%.2f ms", v/1e6}')" "$(ratio "$sdk_all" "$all_ns")× faster"
  row "decide-all, 1 MiB datafile, 1,001 flags (target <= 200 µs)" "$(awk -v v="$big_ns" 'BEGIN{printf "%.0f µs", v/1000}')" "Python SDK decide_all: $(awk -v v="$sdk_big_all" 'BEGIN{printf "%.1f ms", v/1e6}')" "$(ratio "$sdk_big_all" "$big_ns")× faster"
  row "parse the 1 MiB datafile" "$(awk -v v="$parse_ns" 'BEGIN{printf "%.1f ms", v/1e6}')" "" ""
fi

# --- http -------------------------------------------------------------------------------------
if ! skip http; then
  echo "== http (wrk, same run)" >&2
  if [ ! -x target/bench-venv/bin/gunicorn ]; then
    python3 -m venv target/bench-venv && target/bench-venv/bin/pip install -q gunicorn optimizely-sdk==5.7.0
  fi
  : >"$OUT/http"
  RESULTS="$OUT/http" SUITE=1 GUNICORN=$PWD/target/bench-venv/bin/gunicorn \
    benches/http_load.sh "$HTTP_DUR" 32 || true
  get() { awk -F'\t' -v n="$1" '$1 == n { print $'"${2:-2}"' }' "$OUT/http"; }
  bare=$(get "bare hyper (baseline)")
  none=$(get "bucketd profiles=none (durable)")
  fast=$(get "bucketd none, ack=fast")
  defaults=$(get "bucketd defaults")
  hrow() { # label name baseline-label baseline
    local v; v=$(get "$2")
    [ -n "$v" ] && row "$1" "$(printf %.0f "$v") req/s, p99 $(get "$2" 4)$( [ "$(get "$2" 5)" != 0 ] && echo ", non-2xx $(get "$2" 5)")" "$3: $(printf %.0f "$4") req/s" "$(ratio "$v" "$4")"
  }
  hrow "\`GET /bucketer\` bucketed + impression, defaults (target >= 0.8)" "bucketd defaults" "bare hyper" "$bare"
  hrow "same, \`profiles.type = none\`" "bucketd profiles=none (durable)" "bare hyper" "$bare"
  hrow "same, \`profiles.type = memory\`" "bucketd profiles=memory" "profiles=none" "$none"
  hrow "same, \`events.ack = \"durable\"\` (none)" "bucketd profiles=none (durable)" "ack=fast" "$fast"
  hrow "same, Redis profiles" "bucketd profiles=redis" "profiles=none" "$none"
  hrow "same, Redis + read cache" "bucketd redis + read cache" "profiles=none" "$none"
  hrow "\`POST /v1/decide\` one flag, defaults (target >= 0.7)" "decide 1 flag, defaults" "bare hyper" "$bare"
  hrow "same, \`profiles.type = none\`" "decide 1 flag, none" "bare hyper" "$bare"
  hrow "\`POST /v1/decide\` all flags (bundled project), defaults" "decide-all, defaults" "bare hyper" "$bare"
  py=$(get "python sdk + gunicorn")
  [ -n "$py" ] && row "Python SDK behind gunicorn (2 workers), \`/bucketer\` (the seed's design)" "bucketd defaults: $(printf %.0f "$defaults") req/s" "$(printf %.0f "$py") req/s, p99 $(get "python sdk + gunicorn" 4)" "$(ratio "$defaults" "$py")× faster"
fi

# --- memory -----------------------------------------------------------------------------------
if ! skip memory; then
  echo "== memory (distinct users, 1 MiB datafile)" >&2
  : >"$OUT/mem"
  RESULTS="$OUT/mem" DATAFILE="$OUT/big.json" SCENARIOS="defaults memory" SAMPLE=10 \
    benches/memory.sh "$MEM_DUR" 32 || true
  while IFS=$'\t' read -r name rps reqs samples; do
    case $name in
      "bare hyper"*) continue ;;
    esac
    max=$(tr ' ' '\n' <<<"$samples" | sort -n | tail -1)
    row "RSS, $name, 1 MiB datafile (target <= 48 MiB, flat)" "$reqs requests: RSS MB every 10 s: $samples" "target 48 MiB (50.3 MB)" "$(ratio "$max" 50.3)"
  done <"$OUT/mem"
fi

# --- start ------------------------------------------------------------------------------------
if ! skip start; then
  echo "== start to ready" >&2
  now_ms() { date +%s%3N; }
  best=999999; bare_best=999999
  for i in 1 2 3; do
    d=$OUT/start$i; mkdir -p "$d"
    t0=$(now_ms)
    (cd "$d" && exec env BUCKETD__STATE_DIR="$d" BUCKETD__SERVER__LISTEN=127.0.0.1:18480 \
      BUCKETD__LOG__LEVEL=error BUCKETD__FLUSHER__ENABLED=false BUCKETD__DATAFILE__PATH="$OUT/big.json" \
      "$BUCKETD_BIN" serve >/dev/null 2>&1) & p=$!
    until curl -fs -o /dev/null http://127.0.0.1:18480/ready 2>/dev/null; do sleep 0.005; done
    t=$(( $(now_ms) - t0 )); kill "$p"; wait "$p" 2>/dev/null || true
    [ "$t" -lt "$best" ] && best=$t
    t0=$(now_ms)
    "$BARE_BIN" 127.0.0.1:18481 2>/dev/null & p=$!
    until curl -fs -o /dev/null http://127.0.0.1:18481/ 2>/dev/null; do sleep 0.005; done
    t=$(( $(now_ms) - t0 )); kill "$p"; wait "$p" 2>/dev/null || true
    [ "$t" -lt "$bare_best" ] && bare_best=$t
  done
  row "start to ready, 1 MiB datafile (best of 3; target <= 100 ms)" "$best ms" "bare hyper start to first answer: $bare_best ms" "$(ratio "$best" "$bare_best")"
fi

# --- swap -------------------------------------------------------------------------------------
if ! skip swap; then
  echo "== datafile swap under load" >&2
  d=$OUT/swap; mkdir -p "$d"; cp "$OUT/big.json" "$d/datafile.json"
  (cd "$d" && exec env BUCKETD__STATE_DIR="$d" BUCKETD__SERVER__LISTEN=127.0.0.1:18482 \
    BUCKETD__LOG__LEVEL=error BUCKETD__FLUSHER__ENABLED=false BUCKETD__DATAFILE__PATH="$d/datafile.json" \
    "$BUCKETD_BIN" serve >/dev/null 2>&1) & sp=$!; pids+=($sp)
  until curl -fs -o /dev/null http://127.0.0.1:18482/ready 2>/dev/null; do sleep 0.05; done
  url='http://127.0.0.1:18482/bucketer?e=checkout_flow_experiment&u=swap&a=tier:%22platinum%22'
  quiet=$(wrk -t1 -c16 -d"$HTTP_DUR" --latency "$url" 2>&1)
  wrk -t1 -c16 -d"$HTTP_DUR" --latency "$url" >"$OUT/swap.out" 2>&1 & w=$!
  swaps=0
  while kill -0 "$w" 2>/dev/null; do
    sleep 0.5
    if [ $((swaps % 2)) = 0 ]; then cp "$OUT/big2.json" "$d/datafile.json"; else cp "$OUT/big.json" "$d/datafile.json"; fi
    kill -HUP "$sp"; swaps=$((swaps + 1))
  done
  wait "$w" || true
  p99=$(ms "$(awk '$1=="99%" {print $2}' <<<"$quiet")")
  max=$(ms "$(awk '/Latency/ && !/Distribution/ {print $4; exit}' "$OUT/swap.out")")
  p99s=$(ms "$(awk '$1=="99%" {print $2}' "$OUT/swap.out")")
  row "datafile swap (SIGHUP every 0.5 s, $swaps swaps) under load, slowest request (target <= p99 + 1 ms)" "max $max ms (p99 $p99s ms)" "no swaps, same load: p99 $p99 ms" "$(ratio "$max" "$(awk -v p="$p99" 'BEGIN{print p+1}')")"
  kill "$sp" 2>/dev/null || true
fi

# --- flusher ----------------------------------------------------------------------------------
if ! skip flusher; then
  echo "== flusher" >&2
  if [ "$QUICK" = 1 ]; then
    cargo build --release ${CARGO_FLAGS:-} --example flush_bench -q
    tmp=$OUT/flush; mkdir -p "$tmp"
    fl=$(BUCKETD__STATE_DIR="$tmp" BUCKETD__LOG__LEVEL=warn ./target/release/examples/flush_bench "$FLUSH_N" 2>&1 | tee /dev/stderr)
  else
    fl=$(benches/flush_load.sh "$FLUSH_N" 2>&1 | tee /dev/stderr)
  fi
  # Each block: "<backend>, endpoint latency X: flusher N events/s ..." then the per-event rates.
  awk '/endpoint latency/ { if (head) print head "\t" f "\t" py "\t" ka; head = $1 " " $2 " " $3 " " $4; sub(/:$/, "", head)
         for (i = 1; i <= NF; i++) if ($i == "flusher") f = $(i + 1); py = ""; ka = "" }
       /Python SDK default dispatcher:/ { for (i = 1; i <= NF; i++) if ($i == "dispatcher:") py = $(i + 1) }
       /Rust keep-alive client:/ { for (i = 1; i <= NF; i++) if ($i == "client:") ka = $(i + 1) }
       END { if (head) print head "\t" f "\t" py "\t" ka }' <<<"$fl" |
  while IFS=$'\t' read -r head f py ka; do
    row "flusher: queue -> bulk requests -> local sink ($head, $FLUSH_N events)" "$f ev/s" "Python SDK dispatcher (per event): ${py:-?} ev/s; Rust keep-alive per event: $ka ev/s" "$(ratio "$f" "${py:-0}")× / $(ratio "$f" "$ka")×"
  done
fi

echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //')), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| benchmark | bucketd | baseline (same run) | ratio |"
echo "|---|---|---|---|"
cat "$ROWS"
