#!/usr/bin/env bash
# Flusher throughput (queue → bulk v1 requests → local sink) for the disk queue and Kafka,
# each against the seed's one-request-per-event design measured in the same run: the official
# Python SDK's default dispatcher (needs .venv from ./scripts/test, or BUCKETD_BENCH_PYTHON) and
# a Rust keep-alive client.
# Usage: benches/flush_load.sh [events=200000]   (Kafka: BUCKETD_TEST_KAFKA_BROKERS or a broker
# started by .ci/servers/kafka.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
cargo build --release --example flush_bench -q
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
BUCKETD__STATE_DIR="$tmp" BUCKETD__LOG__LEVEL=warn ./target/release/examples/flush_bench "$N"
rm -rf "$tmp"/events
# The same with a 5 ms endpoint (both designs wait the same per request).
BUCKETD__STATE_DIR="$tmp" BUCKETD__LOG__LEVEL=warn ./target/release/examples/flush_bench "$N" 1000 5
if [ -z "${BUCKETD_TEST_KAFKA_BROKERS:-}" ]; then eval "$(bash .ci/servers/kafka.sh)"; fi
BUCKETD__STATE_DIR="$tmp" BUCKETD__LOG__LEVEL=warn BUCKETD__EVENTS__QUEUE__TYPE=kafka \
  BUCKETD__EVENTS__QUEUE__BROKERS="$BUCKETD_TEST_KAFKA_BROKERS_NOIDA" \
  BUCKETD__EVENTS__QUEUE__TOPIC="bench-$(date +%s)" BUCKETD__EVENTS__QUEUE__GROUP_ID="bench-$(date +%s)" \
  ./target/release/examples/flush_bench "$N"
BUCKETD__STATE_DIR="$tmp" BUCKETD__LOG__LEVEL=warn BUCKETD__EVENTS__QUEUE__TYPE=kafka \
  BUCKETD__EVENTS__QUEUE__BROKERS="$BUCKETD_TEST_KAFKA_BROKERS_NOIDA" \
  BUCKETD__EVENTS__QUEUE__TOPIC="bench5-$(date +%s)" BUCKETD__EVENTS__QUEUE__GROUP_ID="bench5-$(date +%s)" \
  ./target/release/examples/flush_bench "$N" 1000 5
