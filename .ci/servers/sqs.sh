#!/usr/bin/env bash
# Installs and starts the SQS-protocol servers the tests use: moto (PyPI moto[server]) on
# 127.0.0.1 -> BUCKETD_TEST_SQS_ENDPOINT, and a second one the outage test pauses (SIGSTOP to
# its process group) without disturbing the others -> BUCKETD_TEST_SQS_ENDPOINT_PAUSABLE,
# BUCKETD_TEST_SQS_PAUSABLE_PGID. Any credentials are accepted; the tests pass dummy ones.
# Idempotent: a server already answering on the port is reused. Prints ONLY `export ...` lines
# on stdout (for `eval`); everything else goes to stderr. `sqs.sh stop` stops what it started.
# Env: BUCKETD_CI_DIR (default /opt/bucketd-ci), BUCKETD_CI_MOTO_PORT (4566),
#      BUCKETD_CI_MOTO_PAUSABLE_PORT (4567).
set -euo pipefail
exec 3>&1 1>&2

CI_DIR=${BUCKETD_CI_DIR:-/opt/bucketd-ci}
VENV=$CI_DIR/sqs-venv
RUN=$CI_DIR/run
PORT=${BUCKETD_CI_MOTO_PORT:-4566}
PAUSABLE_PORT=${BUCKETD_CI_MOTO_PAUSABLE_PORT:-4567}
REQUIREMENTS=("moto[server]==5.2.5")

log() { echo "sqs.sh: $*"; }
die() { echo "sqs.sh: ERROR: $*"; exit 1; }

listening() { (exec 9<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [[ ${1:-start} == stop ]]; then
    for f in "$RUN/moto.pid" "$RUN/moto-pausable.pid"; do
        [[ -f $f ]] || continue
        pid=$(cat "$f")
        kill -CONT -- "-$pid" 2>/dev/null || true
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        rm -f "$f"
    done
    log "stopped"
    exit 0
fi

mkdir -p "$CI_DIR" "$RUN"

# --- install (skipped when the pinned version is in place; about 40 s cold) ---
stamp="$VENV/.bucketd-requirements"
if [[ ! -x $VENV/bin/moto_server || $(cat "$stamp" 2>/dev/null) != "${REQUIREMENTS[*]}" ]]; then
    log "installing ${REQUIREMENTS[*]} into $VENV"
    if ! python3 -m venv "$VENV"; then
        log "python3 -m venv failed; installing python3-venv"
        apt-get update -qq && apt-get install -y -qq python3-venv
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install -q --disable-pip-version-check "${REQUIREMENTS[@]}"
    echo "${REQUIREMENTS[*]}" >"$stamp"
fi
[[ -x $VENV/bin/moto_server ]] || die "moto_server not installed in $VENV"

# Starts moto on port $1, its pid (a process-group leader, setsid) in $RUN/$2.pid.
start_moto() {
    local port=$1 name=$2 ok= i
    if listening "$port"; then
        log "something already listens on $port: reusing it as moto"
        return 0
    fi
    log "starting moto on 127.0.0.1:$port"
    setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" </dev/null >"$RUN/$name.log" 2>&1 3>&- &
    echo $! >"$RUN/$name.pid"
    # The port opens once Flask is up, and moto answers from then on.
    for ((i = 0; i < 600; i++)); do
        if listening "$port"; then ok=1; break; fi
        if ! kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null; then break; fi
        sleep 0.1
    done
    if [[ -z $ok ]]; then
        echo "--- last lines of $RUN/$name.log ---"
        tail -n 40 "$RUN/$name.log" || true
        die "moto does not listen on 127.0.0.1:$port after 60s"
    fi
}

start_moto "$PORT" moto
start_moto "$PAUSABLE_PORT" moto-pausable
[[ -f $RUN/moto-pausable.pid ]] || die "the pausable moto on $PAUSABLE_PORT was not started here (no pid file)"

echo "export BUCKETD_TEST_SQS_ENDPOINT=http://127.0.0.1:$PORT" >&3
echo "export BUCKETD_TEST_SQS_ENDPOINT_PAUSABLE=http://127.0.0.1:$PAUSABLE_PORT" >&3
echo "export BUCKETD_TEST_SQS_PAUSABLE_PGID=$(cat "$RUN/moto-pausable.pid")" >&3
