# Sourced by the other scripts: installs what they need into the project's
# own .tools/ folder (never system-wide), idempotently.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
VENV="$TOOLS/venv"
MOTO_VERSION="5.2.5"
CARGO_LAMBDA_VERSION="1.9.2"

ensure_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        mkdir -p "$TOOLS"
        python3 -m venv "$VENV"
    fi
}

ensure_moto() {
    ensure_venv
    if ! "$VENV/bin/python" -c "import moto, werkzeug" 2>/dev/null; then
        echo "installing moto $MOTO_VERSION into .tools/venv ..." >&2
        "$VENV/bin/pip" install --quiet "moto[server]==$MOTO_VERSION"
    fi
}

ensure_cargo_lambda() {
    ensure_venv
    if [ ! -x "$VENV/bin/cargo-lambda" ]; then
        echo "installing cargo-lambda $CARGO_LAMBDA_VERSION into .tools/venv ..." >&2
        "$VENV/bin/pip" install --quiet "cargo-lambda==$CARGO_LAMBDA_VERSION"
    fi
    export PATH="$VENV/bin:$PATH"
}

# Starts the emulator on a free port; sets EMULATOR_PID and
# AWS_ENDPOINT_URL_DYNAMODB. The caller traps EXIT to stop it.
start_emulator() {
    ensure_moto
    # A log of its own: two runs at once must not read each other's port.
    local log
    log="$(mktemp "$TOOLS/emulator.XXXXXX.log")"
    EMULATOR_LOG="$log"
    local port="${1:-0}"
    "$VENV/bin/python" "$ROOT/scripts/dynamodb_emulator.py" "$port" >"$log" 2>&1 &
    EMULATOR_PID=$!
    for _ in $(seq 1 100); do
        if grep -q "^listening on" "$log" 2>/dev/null; then
            port=$(sed -n 's/^listening on \([0-9]*\).*/\1/p' "$log" | head -1)
            export AWS_ENDPOINT_URL_DYNAMODB="http://127.0.0.1:$port"
            export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-local}"
            export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-local}"
            export AWS_REGION="${AWS_REGION:-us-east-1}"
            echo "DynamoDB emulator (moto, single-threaded) on $AWS_ENDPOINT_URL_DYNAMODB" >&2
            return 0
        fi
        if ! kill -0 "$EMULATOR_PID" 2>/dev/null; then
            echo "the DynamoDB emulator failed to start:" >&2
            cat "$log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "the DynamoDB emulator did not start within 10 s" >&2
    return 1
}

stop_emulator() {
    if [ -n "${EMULATOR_PID:-}" ]; then
        kill "$EMULATOR_PID" 2>/dev/null || true
        wait "$EMULATOR_PID" 2>/dev/null || true
        EMULATOR_PID=
        rm -f "${EMULATOR_LOG:-}"
    fi
}

# ---------------------------------------------------------------------------
# Added for `make lint-template`, `make local` and `make walkthrough`.

# Template linters live in their own venv: aws-sam-cli pins many libraries
# that moto's venv must not have to agree with.
LINT_VENV="$TOOLS/lint"
CFN_LINT_VERSION="1.58.0"
SAM_CLI_VERSION="1.170.0"

ensure_cfn_lint() {
    if [ ! -x "$LINT_VENV/bin/python" ]; then
        mkdir -p "$TOOLS"
        python3 -m venv "$LINT_VENV"
    fi
    if ! "$LINT_VENV/bin/cfn-lint" --version 2>/dev/null | grep -qx "cfn-lint $CFN_LINT_VERSION"; then
        echo "installing cfn-lint $CFN_LINT_VERSION into .tools/lint ..." >&2
        "$LINT_VENV/bin/pip" install --quiet "cfn-lint==$CFN_LINT_VERSION"
    fi
}

# Installs the SAM CLI next to cfn-lint. Returns non-zero (and says why)
# when it cannot be installed, so callers may carry on with cfn-lint alone.
ensure_sam_cli() {
    ensure_cfn_lint
    if ! "$LINT_VENV/bin/sam" --version 2>/dev/null | grep -q "version $SAM_CLI_VERSION\$"; then
        echo "installing aws-sam-cli $SAM_CLI_VERSION into .tools/lint ..." >&2
        if ! "$LINT_VENV/bin/pip" install --quiet "aws-sam-cli==$SAM_CLI_VERSION" "cfn-lint==$CFN_LINT_VERSION"; then
            echo "could not install aws-sam-cli $SAM_CLI_VERSION" >&2
            return 1
        fi
    fi
    export SAM_CLI_TELEMETRY=0
}

# port_is_free PORT: nothing listens on PORT and it can be bound on 127.0.0.1.
port_is_free() {
    python3 - "$1" <<'PY'
import socket, sys
port = int(sys.argv[1])
probe = socket.socket()
probe.settimeout(0.5)
try:
    if probe.connect_ex(("127.0.0.1", port)) == 0:
        sys.exit(1)
finally:
    probe.close()
s = socket.socket()
try:
    s.bind(("127.0.0.1", port))
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
}

# pick_port PREFERRED: PREFERRED if it is free, else any free port.
pick_port() {
    if port_is_free "$1"; then
        echo "$1"
        return 0
    fi
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_for_port PORT SECONDS [PID]: until something accepts connections on
# 127.0.0.1:PORT; fails after SECONDS, or at once if PID has exited.
wait_for_port() {
    local port="$1" seconds="$2" pid="${3:-}"
    local deadline=$((SECONDS + seconds))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if ! port_is_free "$port"; then
            return 0
        fi
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        sleep 0.2
    done
    return 1
}

# Starts `cargo lambda watch` on 127.0.0.1:PORT in its own process group
# (so stopping it also stops the function processes it runs); sets
# WATCH_PID. Extra arguments go to `cargo lambda watch`. The environment is
# inherited. The caller traps EXIT to call stop_lambda_watch.
start_lambda_watch() {
    local port="$1" log="$2"
    shift 2
    ensure_cargo_lambda
    set -m
    cargo lambda watch --invoke-address 127.0.0.1 --invoke-port "$port" "$@" >"$log" 2>&1 &
    WATCH_PID=$!
    set +m
}

stop_lambda_watch() {
    if [ -n "${WATCH_PID:-}" ]; then
        kill -TERM -- "-$WATCH_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 -- "-$WATCH_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$WATCH_PID" 2>/dev/null || true
        wait "$WATCH_PID" 2>/dev/null || true
        WATCH_PID=
    fi
}
