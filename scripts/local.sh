#!/usr/bin/env bash
# `make local`: the whole stack on this machine, in one command.
#
#   1. installs what is missing into .tools/ (cargo-lambda, moto);
#   2. builds the five functions and starts the DynamoDB emulator (port 8000,
#      or a free one), and creates the table from its Rust definition;
#   3. starts `cargo lambda watch` (the Lambda runtime API on port 9000, or a
#      free one) and the five functions against it, and the stream poller
#      (scripts/stream_poller.py) that feeds the table's stream to notify,
#      as Lambda would, and writes the budget alerts EventBridge receives
#      to .local/logs/alerts.log;
#   4. starts the local gateway (dev/local-gateway: the routes of the REST
#      API that template.yaml deploys, each proxied request authorized by the
#      real authorize function) in front of UPSTREAM_URL, or of its built-in
#      mock upstream when UPSTREAM_URL is unset;
#   5. creates a demo team, user and key through the admin API, writes
#      .local/env (API_URL, DEMO_KEY, MASTER_KEY, ...) and ready-made
#      authorizer events to .local/, and prints how to call everything.
# Ctrl-C (or SIGTERM, or SIGINT when started in the background) stops
# everything it started. Once up, it calls every function and the gateway
# once and checks the answers (a failure stops it); with
# LOCAL_EXIT_AFTER_DEMO=1 it then exits (CI uses this).
#
# Settings come from the environment (defaults below and in docs/deploy.md):
# TABLE_NAME, MASTER_KEY, RUST_LOG, BUDGET_TIMEZONE, BUDGET_RESET_TIME,
# DEFAULT_RESERVATION_USD, MAX_RESERVATION_USD, RESERVATION_TTL_SECONDS,
# STORE_TIMEOUT_MS; DYNAMODB_PORT, LAMBDA_PORT and GATEWAY_PORT pick the
# preferred ports (8000, 9000, 8080 - not 4000, LiteLLM's; a busy one is replaced by a free one,
# and .local/env says which); GATEWAY_API=http makes the gateway behave like
# the HTTP API variant instead; UPSTREAM_URL (http://) is the upstream.

# A shell that starts a job in the background (`make local &`) starts it
# with SIGINT ignored, and bash cannot trap a signal ignored at entry: run
# this script again with SIGINT restored, so `kill -INT` stops it too.
if [ -z "${EDGE_BUDGET_SIGINT_RESTORED:-}" ]; then
    export EDGE_BUDGET_SIGINT_RESTORED=1
    exec python3 -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execvp("bash", ["bash"] + sys.argv[1:])' "${BASH_SOURCE[0]}" "$@"
fi
source "$(dirname "${BASH_SOURCE[0]}")/tools.sh"
cd "$ROOT"

FUNCTIONS=(authorize settle-spend reset admin notify)
# LOCAL_STATE_DIR: where this stack writes env, stack.env, events and logs
# (.local by default; the LiteLLM e2e test runs its own stack elsewhere).
LOCAL_DIR="${LOCAL_STATE_DIR:-$ROOT/.local}"
LOG_DIR="$LOCAL_DIR/logs"
STACK_ENV="$LOCAL_DIR/stack.env"
LOCAL_ENV="$LOCAL_DIR/env"
EXIT_AFTER_DEMO="${LOCAL_EXIT_AFTER_DEMO:-0}"
STARTED=$SECONDS

export TABLE_NAME="${TABLE_NAME:-edge-budget-local}"
export MASTER_KEY="${MASTER_KEY:-local-master-key}"
export RUST_LOG="${RUST_LOG:-info}"
export AWS_EC2_METADATA_DISABLED=true

step() { printf '\n\033[1m==> %s\033[0m  (%ss)\n' "$*" "$((SECONDS - STARTED))"; }
fail() {
    echo "make local: $*" >&2
    for f in "$LOG_DIR"/*.log; do
        [ -s "$f" ] || continue
        echo "--- last lines of ${f#"$ROOT"/}" >&2
        tail -n 15 "$f" | cut -c1-300 >&2
    done
    exit 1
}

# ------------------------------------------------------------ process control
FN_PIDS=() # parallel to FUNCTIONS

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ -f "$STACK_ENV" ] && grep -qx "STACK_PID=$$" "$STACK_ENV"; then
        rm -f "$STACK_ENV" "$LOCAL_ENV"
    fi
    if [ -n "${GATEWAY_PID:-}" ]; then
        kill "$GATEWAY_PID" 2>/dev/null || true
        wait "$GATEWAY_PID" 2>/dev/null || true
    fi
    if [ -n "${TAIL_PID:-}" ]; then
        kill "$TAIL_PID" 2>/dev/null || true
    fi
    if [ -n "${POLLER_PID:-}" ]; then
        kill "$POLLER_PID" 2>/dev/null || true
        wait "$POLLER_PID" 2>/dev/null || true
    fi
    local pid
    for pid in ${FN_PIDS[@]+"${FN_PIDS[@]}"}; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in ${FN_PIDS[@]+"${FN_PIDS[@]}"}; do
        wait "$pid" 2>/dev/null || true
    done
    stop_lambda_watch
    stop_emulator
    if [ "$EXIT_AFTER_DEMO" != 1 ]; then
        echo "local stack stopped" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
# Ctrl-C and SIGTERM are how this stack is meant to stop: a clean exit (0),
# so make does not report "Error 130" for it.
trap 'exit 0' INT TERM

# start_function INDEX: runs FUNCTIONS[INDEX] against the runtime API, as
# Lambda would: it polls `.../.rt/<name>/2018-06-01/runtime/invocation/next`.
start_function() {
    local name="${FUNCTIONS[$1]}"
    AWS_LAMBDA_FUNCTION_NAME="$name" \
    AWS_LAMBDA_FUNCTION_VERSION=1 \
    AWS_LAMBDA_FUNCTION_MEMORY_SIZE=256 \
    AWS_LAMBDA_RUNTIME_API="http://127.0.0.1:$LAMBDA_PORT/.rt/$name" \
        "$BIN_DIR/$name" >>"$LOG_DIR/$name.log" 2>&1 &
    FN_PIDS[$1]=$!
}

# ------------------------------------------------------------------ helpers
# http METHOD URL [JSON]: sets HTTP_STATUS and HTTP_BODY. Never hangs
# (HTTP_MAX_TIME seconds at most, 30 by default).
http() {
    local method="$1" url="$2" data="${3:-}" out
    out="$(mktemp)"
    local args=(-sS -o "$out" -w '%{http_code}' --max-time "${HTTP_MAX_TIME:-30}" -X "$method"
        -H "Authorization: Bearer $MASTER_KEY" -H 'Content-Type: application/json')
    if [ -n "$data" ]; then
        args+=(--data "$data")
    fi
    HTTP_STATUS="$(curl "${args[@]}" "$url")" || HTTP_STATUS=000
    HTTP_BODY="$(cat "$out")"
    rm -f "$out"
}

# json_get PATH: reads JSON on stdin, prints the value at a dotted path
# (`a.b.0.c`); strings bare, anything else as JSON; empty if absent.
json_get() {
    python3 -c '
import json, sys
value = json.load(sys.stdin)
for part in sys.argv[1].split("."):
    if isinstance(value, list) and part.isdigit() and int(part) < len(value):
        value = value[int(part)]
    elif isinstance(value, dict) and part in value:
        value = value[part]
    else:
        sys.exit(0)
print(value if isinstance(value, str) else json.dumps(value))
' "$1"
}

# admin_call METHOD PATH [JSON]: the admin API; 200 or 409 (already there)
# pass, anything else stops the script.
admin_call() {
    http "$1" "$LAMBDA_URL/lambda-url/admin$2" "${3:-}"
    case "$HTTP_STATUS" in
        200 | 201) ;;
        409) echo "  (already exists)" ;;
        *) fail "$1 $2 answered $HTTP_STATUS: $HTTP_BODY" ;;
    esac
}

# write_event SRC DEST: an event fixture with the demo key filled in. The
# request id is left out: the authorizer treats a repeated request id as a
# retry of one request (same reservation), and these files are meant to be
# invoked again and again, each time as a new request.
write_event() {
    python3 - "$1" "$2" "$DEMO_KEY" <<'PY'
import json, sys
src, dest, key = sys.argv[1:]
event = json.loads(open(src).read().replace("sk-REPLACE-WITH-A-KEY", key))
if isinstance(event.get("requestContext"), dict):
    event["requestContext"].pop("requestId", None)
open(dest, "w").write(json.dumps(event, indent=2) + "\n")
PY
}

# ------------------------------------------------------------------- tools
step "tools (.tools/)"
ensure_cargo_lambda
ensure_moto
mkdir -p "$LOG_DIR"
for f in "${FUNCTIONS[@]}" watch gateway alerts; do : >"$LOG_DIR/$f.log"; done

step "build the functions (cargo build)"
cargo build --bins -p budget-core -p authorize -p settle-spend -p reset -p admin -p notify -p local-gateway ||
    fail "the functions do not build"
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | json_get target_directory)"
BIN_DIR="$TARGET_DIR/debug"
for f in "${FUNCTIONS[@]}" create-table local-gateway; do
    [ -x "$BIN_DIR/$f" ] || fail "no binary $BIN_DIR/$f after the build"
done

# ---------------------------------------------------------------- DynamoDB
step "DynamoDB emulator"
DYNAMODB_PORT="$(pick_port "${DYNAMODB_PORT:-8000}")"
start_emulator "$DYNAMODB_PORT" || fail "the DynamoDB emulator did not start"
# The same emulator serves EventBridge (and SQS, for the alert tail).
export AWS_ENDPOINT_URL_EVENTBRIDGE="$AWS_ENDPOINT_URL_DYNAMODB"
"$BIN_DIR/create-table" || fail "could not create table $TABLE_NAME"

# ------------------------------------------------------------------ Lambda
step "Lambda runtime API (cargo lambda watch) and the functions"
LAMBDA_PORT="$(pick_port "${LAMBDA_PORT:-9000}")"
LAMBDA_URL="http://127.0.0.1:$LAMBDA_PORT"
# --only-lambda-apis: this script runs the functions it just built. (Left
# to itself, `cargo lambda watch` starts them with `cargo run --bin <name>`,
# which cannot see the function packages from the workspace root while
# the root is a package of its own.)
start_lambda_watch "$LAMBDA_PORT" "$LOG_DIR/watch.log" --only-lambda-apis --ignore-changes
wait_for_port "$LAMBDA_PORT" 60 "$WATCH_PID" ||
    fail "cargo lambda watch did not listen on port $LAMBDA_PORT within 60 s"
for i in "${!FUNCTIONS[@]}"; do start_function "$i"; done

# fail_if_a_function_exited: a function that stops at start (a bad
# setting) says why on its first line; say it now, not after a timeout.
fail_if_a_function_exited() {
    local i
    for i in "${!FUNCTIONS[@]}"; do
        if ! kill -0 "${FN_PIDS[$i]}" 2>/dev/null; then
            echo "make local: function ${FUNCTIONS[$i]} exited at start:" >&2
            grep -m1 "cannot start" "$LOG_DIR/${FUNCTIONS[$i]}.log" >&2 ||
                tail -n 5 "$LOG_DIR/${FUNCTIONS[$i]}.log" >&2
            exit 1
        fi
    done
}

# The first admin call doubles as the readiness check: the runtime API
# holds it until the function polls for work (so each try is short, and the
# functions' liveness is checked between tries).
deadline=$((SECONDS + 60))
sleep 0.3
while :; do
    fail_if_a_function_exited
    HTTP_MAX_TIME=2 http GET "$LAMBDA_URL/lambda-url/admin/team/info?team_id=demo-team"
    case "$HTTP_STATUS" in 200 | 404) break ;; esac
    [ "$SECONDS" -lt "$deadline" ] || fail "the admin function did not answer within 60 s (last: $HTTP_STATUS $HTTP_BODY)"
    sleep 0.3
done

# The stream trigger Lambda would be (the emulator cannot invoke a function
# from a stream): polls the stream, invokes notify, tails the alerts.
"$VENV/bin/python" scripts/stream_poller.py "$AWS_ENDPOINT_URL_DYNAMODB" "$TABLE_NAME" "$LAMBDA_URL" \
    >>"$LOG_DIR/alerts.log" 2>&1 &
POLLER_PID=$!

# ----------------------------------------------------------------- gateway
step "local gateway (the deployed API's routes) in front of ${UPSTREAM_URL:-the built-in mock upstream}"
GATEWAY_API="${GATEWAY_API:-rest}"
GATEWAY_STAGE="${GATEWAY_STAGE:-api}"
GATEWAY_PORT="$(pick_port "${GATEWAY_PORT:-8080}")"
GATEWAY_SECRET="${GATEWAY_SECRET:-$(python3 -c 'import secrets; print(secrets.token_hex(24))')}"
LAMBDA_URL="$LAMBDA_URL" GATEWAY_PORT="$GATEWAY_PORT" GATEWAY_API="$GATEWAY_API" \
    GATEWAY_STAGE="$GATEWAY_STAGE" GATEWAY_SECRET="$GATEWAY_SECRET" \
    "$BIN_DIR/local-gateway" >>"$LOG_DIR/gateway.log" 2>&1 &
GATEWAY_PID=$!
for _ in $(seq 1 100); do
    grep -q "^listening on" "$LOG_DIR/gateway.log" && break
    kill -0 "$GATEWAY_PID" 2>/dev/null || fail "the local gateway exited at start"
    sleep 0.1
done
grep -q "^listening on" "$LOG_DIR/gateway.log" || fail "the local gateway did not start within 10 s"
if [ "$GATEWAY_API" = http ]; then
    API_URL="http://127.0.0.1:$GATEWAY_PORT"
else
    API_URL="http://127.0.0.1:$GATEWAY_PORT/$GATEWAY_STAGE"
fi
MOCK_PORT="$(sed -n 's/^mock upstream on //p' "$LOG_DIR/gateway.log" | head -1)"
UPSTREAM_URL_GIVEN="${UPSTREAM_URL:-}"
EFFECTIVE_UPSTREAM="${UPSTREAM_URL:-http://127.0.0.1:$MOCK_PORT}"

# -------------------------------------------------------------------- demo
step "demo team, user and key (admin API)"
echo "POST /team/new demo-team"
admin_call POST /team/new '{"team_id": "demo-team", "team_alias": "Demo team", "max_budget": 5000, "budget_duration": "30d"}'
echo "POST /user/new demo-user"
admin_call POST /user/new '{"user_id": "demo-user", "team_id": "demo-team", "max_budget": 1000, "budget_duration": "30d", "budget_limits": [{"budget_duration": "1d", "max_budget": 150}, {"budget_duration": "7d", "max_budget": 500}]}'
echo "POST /key/generate for demo-user"
admin_call POST /key/generate '{"key_alias": "demo-key", "user_id": "demo-user", "team_id": "demo-team"}'
DEMO_KEY="$(printf '%s' "$HTTP_BODY" | json_get key)"
[ -n "$DEMO_KEY" ] || fail "/key/generate answered without a key: $HTTP_BODY"

write_event events/authorize-http-api.json "$LOCAL_DIR/authorize-http-api.json"
write_event events/authorize-rest-request.json "$LOCAL_DIR/authorize-rest-request.json"
write_event events/authorize-rest-token.json "$LOCAL_DIR/authorize-rest-token.json"
cat >"$STACK_ENV" <<EOF
# Written by scripts/local.sh while the local stack runs; removed when it stops.
STACK_PID=$$
LAMBDA_PORT=$LAMBDA_PORT
LAMBDA_URL=$LAMBDA_URL
AWS_ENDPOINT_URL_DYNAMODB=$AWS_ENDPOINT_URL_DYNAMODB
TABLE_NAME=$TABLE_NAME
MASTER_KEY=$MASTER_KEY
DEMO_KEY=$DEMO_KEY
ALERTS_LOG=$LOG_DIR/alerts.log
API_URL=$API_URL
EOF
# .local/env: what a client, a script or `set -a; . .local/env; set +a`
# needs (OPENAI_* point the OpenAI SDKs at the gateway with the demo key).
cat >"$LOCAL_ENV" <<EOF
API_URL=$API_URL
DEMO_KEY=$DEMO_KEY
MASTER_KEY=$MASTER_KEY
GATEWAY_API=$GATEWAY_API
UPSTREAM_URL=$EFFECTIVE_UPSTREAM
SETTLE_URL=$API_URL/spend/settle
LAMBDA_URL=$LAMBDA_URL
AWS_ENDPOINT_URL_DYNAMODB=$AWS_ENDPOINT_URL_DYNAMODB
TABLE_NAME=$TABLE_NAME
OPENAI_BASE_URL=$API_URL/v1
OPENAI_API_KEY=$DEMO_KEY
EOF

# The demo user's windows with their next resets: "30d" is a calendar
# month here (in BUDGET_TIMEZONE), so it may well reset in two days.
http GET "$LAMBDA_URL/lambda-url/admin/user/info?user_id=demo-user"
WINDOWS="$(printf '%s' "$HTTP_BODY" | python3 -c '
import json, sys
try:
    info = json.load(sys.stdin)
except ValueError:
    sys.exit(0)
user = info.get("user_info", info)
notes = {"1d": "a calendar day, from the reset time",
         "7d": "a calendar week, from Monday", "1w": "a calendar week, from Monday",
         "30d": "a calendar month, from the 1st", "1mo": "a calendar month, from the 1st"}
for w in user.get("windows", []):
    d = w.get("budget_duration")
    print("    %-5s $%-7g next reset %s  (%s)" % (d, w.get("max_budget"),
          w.get("reset_at") or "never", notes.get(d, "calendar-aligned")))
')"

if [ "$GATEWAY_API" = http ]; then API_KIND="HTTP API"; else API_KIND="REST API, stage $GATEWAY_STAGE"; fi
CARGO_LAMBDA=".tools/venv/bin/cargo-lambda lambda"
UPSTREAM_NOTE=""
[ -n "${UPSTREAM_URL:-}" ] || UPSTREAM_NOTE='  (the built-in mock: it settles $0.002 per answer)'
CHAT='{"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}'
STREAM='{"model": "mock-model", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
cat <<EOF

edge-budget runs locally (ready in $((SECONDS - STARTED)) s):
  API (local gateway) $API_URL  (like the deployed $API_KIND)
  upstream            $EFFECTIVE_UPSTREAM$UPSTREAM_NOTE
  DynamoDB emulator   $AWS_ENDPOINT_URL_DYNAMODB   table $TABLE_NAME
  Lambda runtime API  $LAMBDA_URL   (cargo lambda watch; logs in .local/logs/)
  demo key            $DEMO_KEY   (user demo-user, team demo-team)
  demo-user's windows, calendar-aligned (BUDGET_TIMEZONE=${BUDGET_TIMEZONE:-UTC}):
$WINDOWS

.local/env (for a shell: set -a; . .local/env; set +a):
$(sed 's/^/  /' "$LOCAL_ENV")

Through the gateway, as a client would (a fresh request id each time; denials as deployed):
  curl -s $API_URL/v1/chat/completions -H 'Authorization: Bearer $DEMO_KEY' -H 'x-budget-reserve: 0.25' -H 'Content-Type: application/json' -d '$CHAT'
  curl -sN $API_URL/v1/chat/completions -H 'Authorization: Bearer $DEMO_KEY' -H 'Content-Type: application/json' -d '$STREAM'

Settle / release (IAM is not emulated locally: no signature needed):
  curl -s $API_URL/spend/settle -d '{"reservation_id": "RESERVATION_ID", "cost": 0.0123}'
  curl -s $API_URL/spend/release -d '{"reservation_id": "RESERVATION_ID"}'

Budget alerts (notify, fed by the stream poller; EventBridge events as they arrive):
  tail -f .local/logs/alerts.log

Admin (LiteLLM-style; the master key as Bearer here, in x-litellm-api-key when deployed):
  curl -s '$API_URL/user/info?user_id=demo-user' -H 'Authorization: Bearer $MASTER_KEY'
  curl -s '$API_URL/key/info?key=$DEMO_KEY' -H 'Authorization: Bearer $MASTER_KEY'
  curl -s $API_URL/key/generate -H 'Authorization: Bearer $MASTER_KEY' -d '{"user_id": "demo-user", "max_budget": 5, "budget_duration": "1h"}'

The functions directly (authorizer events with the demo key are in .local/):
  $CARGO_LAMBDA invoke -A 127.0.0.1 -P $LAMBDA_PORT authorize --data-file .local/authorize-rest-request.json
  $CARGO_LAMBDA invoke -A 127.0.0.1 -P $LAMBDA_PORT authorize --data-file .local/authorize-http-api.json
  $CARGO_LAMBDA invoke -A 127.0.0.1 -P $LAMBDA_PORT reset --data-file events/reset-schedule.json
  (reset is what EventBridge runs every minute when deployed)

Walkthrough (in another terminal):  make walkthrough
EOF

# ------------------------------------------------------------------ demo
# Every start shows the stack working: every function once, then the
# gateway as a client sees it. Any answer that is not what it should be
# stops the stack with the reason.
demo() {
    step "showing it working: every function once"
    answer="$(cargo lambda invoke -A 127.0.0.1 -P "$LAMBDA_PORT" authorize \
        --data-file "$LOCAL_DIR/authorize-http-api.json" --output-format json)" ||
        fail "cargo lambda invoke authorize failed: $answer"
    echo "authorize (HTTP API): $answer"
    [ "$(printf '%s' "$answer" | json_get isAuthorized)" = true ] || fail "the demo key was not admitted"
    reservation="$(printf '%s' "$answer" | json_get context.reservation_id)"

    answer="$(curl -sS --max-time 30 "$LAMBDA_URL/2015-03-31/functions/authorize/invocations" \
        -d @"$LOCAL_DIR/authorize-rest-token.json")"
    echo "authorize (REST TOKEN): $answer"
    [ "$(printf '%s' "$answer" | json_get policyDocument.Statement.0.Effect)" = Allow ] ||
        fail "the REST TOKEN event was not allowed"
    token_reservation="$(printf '%s' "$answer" | json_get context.reservation_id)"

    http POST "$LAMBDA_URL/lambda-url/settle-spend/spend/settle" "{\"reservation_id\": \"$reservation\", \"cost\": 0.0123}"
    echo "settle: $HTTP_STATUS $HTTP_BODY"
    [ "$HTTP_STATUS" = 200 ] || fail "settle answered $HTTP_STATUS"
    http POST "$LAMBDA_URL/lambda-url/settle-spend/spend/release" "{\"reservation_id\": \"$token_reservation\"}"
    echo "release: $HTTP_STATUS $HTTP_BODY"
    [ "$HTTP_STATUS" = 200 ] || fail "release answered $HTTP_STATUS"

    answer="$(cargo lambda invoke -A 127.0.0.1 -P "$LAMBDA_PORT" reset \
        --data-file events/reset-schedule.json --output-format json)" || fail "reset failed: $answer"
    echo "reset: $answer"
    [ -n "$(printf '%s' "$answer" | json_get windows_reset)" ] || fail "reset answered without a summary"

    http GET "$LAMBDA_URL/lambda-url/admin/user/info?user_id=demo-user"
    echo "user/info: $HTTP_STATUS $HTTP_BODY"
    [ "$HTTP_STATUS" = 200 ] || fail "user/info answered $HTTP_STATUS"

    if [ -n "${UPSTREAM_URL_GIVEN:-}" ]; then
        echo "UPSTREAM_URL is set: the gateway's checks (they read the built-in mock's answers) are skipped;"
        echo "the upstream need not be up yet"
    else
        step "showing it working: the gateway admits, streams and denies"
        # A forged reservation id must not reach the upstream.
        answer="$(curl -sS --max-time 30 "$API_URL/v1/chat/completions" -H "Authorization: Bearer $DEMO_KEY" \
            -H 'x-budget-reservation-id: r-forged' -d "$CHAT")"
        echo "chat completion: $answer"
        seen="$(printf '%s' "$answer" | json_get 'edge_budget.received.x-budget-reservation-id')"
        case "$seen" in r-????????????????????????????????*) ;; *) fail "the upstream did not get the authorizer's reservation id (got '$seen')" ;; esac
        [ "$(printf '%s' "$answer" | json_get edge_budget.settle.status)" = 200 ] || fail "the mock upstream's settle failed"
        chunks="$(curl -sS -N --max-time 30 "$API_URL/v1/chat/completions" -H "Authorization: Bearer $DEMO_KEY" -d "$STREAM" | grep -c '^data: ')"
        echo "streamed: $chunks SSE events"
        [ "$chunks" -ge 3 ] || fail "the streamed answer had $chunks events"
        http POST "$LAMBDA_URL/lambda-url/admin/key/generate" '{"user_id": "demo-user", "max_budget": 0.01}'
        small_key="$(printf '%s' "$HTTP_BODY" | json_get key)"
        status="$(curl -sS -o "$LOCAL_DIR/denial.json" -w '%{http_code}' --max-time 30 "$API_URL/v1/chat/completions" \
            -H "Authorization: Bearer $small_key" -H 'x-budget-reserve: 1' -d "$CHAT")"
        echo "denied: $status $(cat "$LOCAL_DIR/denial.json")"
        if [ "$GATEWAY_API" = http ]; then want=403; else want=429; fi
        [ "$status" = "$want" ] || fail "a request over budget got $status, not $want"
        rm -f "$LOCAL_DIR/denial.json"
        # An unknown key: the authorizer's Unauthorized error, as cargo lambda
        # reports it, becomes the REST API's 401 (the HTTP API's 403).
        status="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 30 "$API_URL/v1/chat/completions" \
            -H "Authorization: Bearer sk-unknown" -d "$CHAT")"
        echo "unknown key: $status"
        if [ "$GATEWAY_API" = http ]; then want=403; else want=401; fi
        [ "$status" = "$want" ] || fail "an unknown key got $status, not $want"
    fi
    answer="$(curl -sS --max-time 30 "$LAMBDA_URL/2015-03-31/functions/notify/invocations" -d '{"Records": []}')"
    echo "notify (an empty stream batch): $answer"
    [ "$(printf '%s' "$answer" | json_get batchItemFailures)" = "[]" ] || fail "notify did not answer a stream batch"
    kill -0 "$POLLER_PID" 2>/dev/null || fail "the stream poller stopped: $(tail -n 5 "$LOG_DIR/alerts.log")"

    if [ -n "${UPSTREAM_URL_GIVEN:-}" ]; then
        step "it works: all five functions answered as they should"
    else
        step "it works: all five functions and the gateway answered as they should"
    fi
}
demo
if [ "$EXIT_AFTER_DEMO" = 1 ]; then
    echo "stopping (LOCAL_EXIT_AFTER_DEMO=1)"
    exit 0
fi

# ------------------------------------------------------------------- serve
echo
echo "Function logs follow. Ctrl-C stops everything."
tail -n 0 -F "$LOG_DIR"/authorize.log "$LOG_DIR"/settle-spend.log "$LOG_DIR"/reset.log "$LOG_DIR"/admin.log \
    "$LOG_DIR"/notify.log "$LOG_DIR"/alerts.log "$LOG_DIR"/gateway.log &
TAIL_PID=$!
restarts=0
while :; do
    sleep 1
    kill -0 "$WATCH_PID" 2>/dev/null || fail "cargo lambda watch stopped"
    kill -0 "$GATEWAY_PID" 2>/dev/null || fail "the local gateway stopped"
    kill -0 "$POLLER_PID" 2>/dev/null || fail "the stream poller stopped (see .local/logs/alerts.log)"
    for i in "${!FUNCTIONS[@]}"; do
        if ! kill -0 "${FN_PIDS[$i]}" 2>/dev/null; then
            wait "${FN_PIDS[$i]}" 2>/dev/null || true
            restarts=$((restarts + 1))
            [ "$restarts" -le 20 ] || fail "functions keep exiting; see .local/logs/"
            echo "function ${FUNCTIONS[$i]} exited (see .local/logs/${FUNCTIONS[$i]}.log); restarting it, as Lambda would" >&2
            start_function "$i"
        fi
    done
done
