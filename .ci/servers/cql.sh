#!/usr/bin/env bash
# Builds and starts the workspace's in-memory CQL test server (tools/cql-test-server, a wrapper
# around the kassandra emulator) on 127.0.0.1 for the Cassandra backend tests.
# Idempotent: a server already accepting connections on the port is reused.
# Run from anywhere; stdout carries only the `export BUCKETD_TEST_CQL_ADDR=...` line (.ci/run
# evals it); everything else goes to stderr.
set -euo pipefail
exec 3>&1 1>&2
# The server started below must not inherit fd 3: `$(cql.sh)` would wait for it to close it.

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
port="${BUCKETD_CQL_PORT:-9042}"
addr="127.0.0.1:$port"
run_dir="${TMPDIR:-/tmp}/bucketd-ci"
mkdir -p "$run_dir"

accepts() { (exec 9<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
echo "cql.sh: building cql-test-server (debug)" >&2
start=$SECONDS
cargo build -p cql-test-server >&2
echo "cql.sh: built in $((SECONDS - start)) s" >&2
if accepts; then
    echo "cql.sh: reusing the server already listening on $addr" >&2
else
    setsid nohup "$target_dir/debug/cql-test-server" --listen "$addr" \
        >"$run_dir/cql.log" 2>&1 </dev/null 3>&- &
    pid=$!
    echo "$pid" >"$run_dir/cql.pid"
    for _ in $(seq 1 100); do
        accepts && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if ! accepts; then
        echo "cql.sh: cql-test-server did not listen on $addr within 10 s; log:" >&2
        tail -n 30 "$run_dir/cql.log" >&2 || true
        exit 1
    fi
    echo "cql.sh: cql-test-server (pid $pid) listening on $addr" >&2
fi
echo "export BUCKETD_TEST_CQL_ADDR=$addr" >&3
# Tests that pause the shared server (SIGSTOP/SIGCONT) to simulate a stalled node use its pid.
[ -f "$run_dir/cql.pid" ] && echo "export BUCKETD_TEST_CQL_PID=$(cat "$run_dir/cql.pid")" >&3
# Tests that need a server of their own (to kill it mid-load) start this binary.
echo "export BUCKETD_TEST_CQL_SERVER_BIN=$target_dir/debug/cql-test-server" >&3
