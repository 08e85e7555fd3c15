#!/usr/bin/env bash
# Installs (when missing) and starts throwaway Redis servers on 127.0.0.1 for the backend tests:
# a single node (port 6379) and a 3-node Redis Cluster (ports 7000-7002, no replicas).
# Idempotent: servers already answering on those ports are reused.
# stdout carries only the `export BUCKETD_TEST_REDIS_URL=...` and
# `export BUCKETD_TEST_REDIS_CLUSTER_URL=...` lines (.ci/run evals them); everything else goes to
# stderr.
set -euo pipefail
exec 3>&1 1>&2
# Servers started below must not inherit fd 3: `$(redis.sh)` would wait for them to close it.

port="${BUCKETD_REDIS_PORT:-6379}"
cluster_ports="${BUCKETD_REDIS_CLUSTER_PORTS:-7000 7001 7002}"
run_dir="${TMPDIR:-/tmp}/bucketd-ci"
mkdir -p "$run_dir"

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    echo "redis.sh: installing redis-server" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq redis-server >/dev/null
fi

ping() { [ "$(redis-cli -h 127.0.0.1 -p "${1:-$port}" ping 2>/dev/null)" = "PONG" ]; }

if ping; then
    echo "redis.sh: reusing the Redis already answering on 127.0.0.1:$port" >&2
else
    echo "redis.sh: starting redis-server on 127.0.0.1:$port" >&2
    redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
        --pidfile "$run_dir/redis.pid" --logfile "$run_dir/redis.log" --dir "$run_dir" 3>&-
    for _ in $(seq 1 100); do
        ping && break
        sleep 0.1
    done
    if ! ping; then
        echo "redis.sh: redis-server did not answer on 127.0.0.1:$port within 10 s; log:" >&2
        tail -n 30 "$run_dir/redis.log" >&2 || true
        exit 1
    fi
fi
echo "redis.sh: $(redis-cli -h 127.0.0.1 -p "$port" info server | grep -m1 redis_version | tr -d '\r')" >&2
echo "export BUCKETD_TEST_REDIS_URL=redis://127.0.0.1:$port" >&3

# The cluster: start the missing nodes, then assign the slots unless that was done already.
first="${cluster_ports%% *}"
cluster_ok() { redis-cli -h 127.0.0.1 -p "$first" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; }
if cluster_ok; then
    echo "redis.sh: reusing the Redis Cluster answering on 127.0.0.1:$first" >&2
else
    nodes=()
    for p in $cluster_ports; do
        nodes+=("127.0.0.1:$p")
        ping "$p" && continue
        mkdir -p "$run_dir/cluster-$p"
        redis-server --daemonize yes --bind 127.0.0.1 --port "$p" --cluster-enabled yes \
            --cluster-config-file "$run_dir/cluster-$p/nodes.conf" --save '' --appendonly no \
            --dir "$run_dir/cluster-$p" --pidfile "$run_dir/cluster-$p/redis.pid" \
            --logfile "$run_dir/cluster-$p/redis.log" 3>&-
    done
    for p in $cluster_ports; do
        for _ in $(seq 1 100); do ping "$p" && break; sleep 0.1; done
        ping "$p" || { echo "redis.sh: cluster node 127.0.0.1:$p did not start" >&2; exit 1; }
    done
    echo "redis.sh: creating a Redis Cluster of ${nodes[*]}" >&2
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >&2 || true
    for _ in $(seq 1 100); do cluster_ok && break; sleep 0.1; done
    if ! cluster_ok; then
        echo "redis.sh: the Redis Cluster did not reach cluster_state:ok within 10 s" >&2
        redis-cli -h 127.0.0.1 -p "$first" cluster info >&2 || true
        exit 1
    fi
fi
urls=""
for p in $cluster_ports; do urls="${urls:+$urls,}redis://127.0.0.1:$p"; done
echo "export BUCKETD_TEST_REDIS_CLUSTER_URL=$urls" >&3
