#!/usr/bin/env bash
# Installs and starts the SQS-protocol server the backend tests use: moto (PyPI moto[server])
# on 127.0.0.1 -> BUCKETD_TEST_SQS_ENDPOINT. Any credentials are accepted; the tests pass
# static dummy ones.
# Idempotent: a server already answering on the port is reused. Prints ONLY `export ...` lines
# on stdout (for `eval`); everything else goes to stderr. `sqs.sh stop` stops what it started.
# Env: BUCKETD_CI_DIR (default /opt/bucketd-ci), BUCKETD_CI_MOTO_PORT (4566).
set -euo pipefail
exec 3>&1 1>&2

CI_DIR=${BUCKETD_CI_DIR:-/opt/bucketd-ci}
VENV=$CI_DIR/sqs-venv
RUN=$CI_DIR/run
PORT=${BUCKETD_CI_MOTO_PORT:-4566}
REQUIREMENTS=("moto[server]==5.2.5")

log() { echo "sqs.sh: $*"; }
die() { echo "sqs.sh: ERROR: $*"; exit 1; }

listening() { (exec 9<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [[ ${1:-start} == stop ]]; then
    if [[ -f $RUN/moto.pid ]]; then
        pid=$(cat "$RUN/moto.pid")
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        rm -f "$RUN/moto.pid"
    fi
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

if listening "$PORT"; then
    log "something already listens on $PORT: reusing it as moto"
else
    log "starting moto on 127.0.0.1:$PORT"
    setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" </dev/null >"$RUN/moto.log" 2>&1 3>&- &
    echo $! >"$RUN/moto.pid"
    # The port opens once Flask is up, and moto answers from then on.
    ok=
    for ((i = 0; i < 600; i++)); do
        if listening "$PORT"; then ok=1; break; fi
        if ! kill -0 "$(cat "$RUN/moto.pid")" 2>/dev/null; then break; fi
        sleep 0.1
    done
    if [[ -z $ok ]]; then
        echo "--- last lines of $RUN/moto.log ---"
        tail -n 40 "$RUN/moto.log" || true
        die "moto does not listen on 127.0.0.1:$PORT after 60s"
    fi
fi

echo "export BUCKETD_TEST_SQS_ENDPOINT=http://127.0.0.1:$PORT" >&3
