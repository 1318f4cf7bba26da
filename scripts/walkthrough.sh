#!/usr/bin/env bash
# `make walkthrough`: budgets at work, in about a minute.
#
# Uses the stack of a running `make local` (found through .local/stack.env);
# if none runs, starts one itself (scripts/local.sh in the background, log
# in .local/walkthrough-stack.log) and stops it at the end.
#
# It creates a user with two windows, 30 USD per day and 15 USD per 10
# seconds, and a key; then sends requests that each reserve 10 USD
# (`x-budget-reserve: 10`) through the authorizer, settling each admitted
# one at 10 USD as the upstream would, until the daily window refuses.
# On the way the 10-second window refuses and, once it rolls over, admits
# again. It prints the denial (reason, window, spend, reset_at,
# retry_after), shows that settling twice changes nothing, shows
# /user/info, and runs the reset job.
source "$(dirname "${BASH_SOURCE[0]}")/tools.sh"
cd "$ROOT"

LOCAL_DIR="$ROOT/.local"
STACK_ENV="$LOCAL_DIR/stack.env"
RESERVE=10
COST=10
STARTED=$SECONDS

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
fail() { echo "walkthrough: $*" >&2; exit 1; }

# ------------------------------------------------------------------ stack
OWN_STACK_PID=
stop_own_stack() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "$OWN_STACK_PID" ]; then
        echo "stopping the local stack this walkthrough started ..."
        kill -TERM "$OWN_STACK_PID" 2>/dev/null || true
        wait "$OWN_STACK_PID" 2>/dev/null || true
    fi
    exit "$status"
}
trap stop_own_stack EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# stack_is_up: .local/stack.env names a live `make local` whose runtime API
# listens.
stack_is_up() {
    [ -f "$STACK_ENV" ] || return 1
    local pid port
    pid="$(sed -n 's/^STACK_PID=//p' "$STACK_ENV")"
    port="$(sed -n 's/^LAMBDA_PORT=//p' "$STACK_ENV")"
    [ -n "$pid" ] && [ -n "$port" ] && kill -0 "$pid" 2>/dev/null && ! port_is_free "$port"
}

if stack_is_up; then
    echo "using the running 'make local' stack (.local/stack.env)"
else
    mkdir -p "$LOCAL_DIR"
    rm -f "$STACK_ENV"
    echo "no local stack is running: starting one (scripts/local.sh; log: .local/walkthrough-stack.log)"
    echo "the first build of the functions can take a few minutes ..."
    LOCAL_EXIT_AFTER_DEMO=0 bash scripts/local.sh >"$LOCAL_DIR/walkthrough-stack.log" 2>&1 &
    OWN_STACK_PID=$!
    deadline=$((SECONDS + 1200))
    until stack_is_up; do
        if ! kill -0 "$OWN_STACK_PID" 2>/dev/null; then
            tail -n 30 "$LOCAL_DIR/walkthrough-stack.log" | cut -c1-300 >&2
            OWN_STACK_PID=
            fail "the local stack did not start (see .local/walkthrough-stack.log)"
        fi
        [ "$SECONDS" -lt "$deadline" ] || fail "the local stack was not up within 20 minutes"
        sleep 1
    done
    echo "local stack up after $((SECONDS - STARTED)) s"
fi
# shellcheck disable=SC1090
source "$STACK_ENV"

# ---------------------------------------------------------------- helpers
# py CODE ARGS...: a little Python for JSON; stdin is passed through.
py() { python3 -c "$@"; }

# admin METHOD PATH [JSON]: sets STATUS and BODY.
admin() {
    local out
    out="$(mktemp)"
    STATUS="$(curl -sS -o "$out" -w '%{http_code}' --max-time 30 -X "$1" \
        -H "Authorization: Bearer $MASTER_KEY" -H 'Content-Type: application/json' \
        ${3:+--data "$3"} "$LAMBDA_URL/lambda-url/admin$2")" || STATUS=000
    BODY="$(cat "$out")"
    rm -f "$out"
}

# settle PATH JSON: sets STATUS and BODY.
settle() {
    local out
    out="$(mktemp)"
    STATUS="$(curl -sS -o "$out" -w '%{http_code}' --max-time 30 -X POST \
        -H 'Content-Type: application/json' --data "$2" \
        "$LAMBDA_URL/lambda-url/settle-spend$1")" || STATUS=000
    BODY="$(cat "$out")"
    rm -f "$out"
}

# invoke FUNCTION EVENT_JSON: the raw Lambda invoke API; prints the answer.
invoke() {
    curl -sS --max-time 30 "$LAMBDA_URL/2015-03-31/functions/$1/invocations" --data "$2"
}

# event FIXTURE KEY RESERVE: an event fixture with the key and estimate set,
# and a fresh request id, as API Gateway gives every request (the
# authorizer treats a repeated request id as a retry of the same request).
event() {
    py '
import json, sys, uuid
fixture, key, reserve = sys.argv[1:]
e = json.load(open(fixture))
if isinstance(e.get("requestContext"), dict):
    e["requestContext"]["requestId"] = str(uuid.uuid4())
if e.get("type") == "TOKEN":
    e["authorizationToken"] = "Bearer " + key
else:
    for name in ("headers", "multiValueHeaders"):
        h = e.get(name) or {}
        for k in list(h):
            if k.lower() in ("authorization", "x-api-key", "x-budget-reserve"):
                del h[k]
        single = name == "headers"
        h["authorization"] = "Bearer " + key if single else ["Bearer " + key]
        h["x-budget-reserve"] = reserve if single else [reserve]
print(json.dumps(e))
' "$1" "$2" "$3"
}

# get PATH: a field of the JSON on stdin (dotted path), empty if absent.
get() {
    py '
import json, sys
v = json.load(sys.stdin)
for p in sys.argv[1].split("."):
    if isinstance(v, list) and p.isdigit() and int(p) < len(v):
        v = v[int(p)]
    elif isinstance(v, dict) and p in v:
        v = v[p]
    else:
        sys.exit(0)
print(v if isinstance(v, str) else json.dumps(v))
' "$1"
}

# windows: the windows of an info answer on stdin, as a table.
windows() {
    py '
import json, sys
d = json.load(sys.stdin)
info = d.get("user_info") or d.get("team_info") or d.get("info") or d
print("    %-10s %10s %10s %10s %10s  %s" % ("window", "max", "spend", "reserved", "remaining", "reset_at"))
for w in info.get("windows", []):
    print("    %-10s %10s %10s %10s %10s  %s" % (w["budget_duration"], w["max_budget"], w["spend"], w["reserved"], w["remaining"], w["reset_at"]))
'
}

# show_alerts [SECONDS]: prints the budget alerts that arrived (the stream
# poller of `make local` writes them to ALERTS_LOG) since the last call,
# waiting up to SECONDS (default 3) for the first one.
ALERTS_SEEN=0
ALERTS_SHOWN=""
show_alerts() {
    [ -n "${ALERTS_LOG:-}" ] && [ -f "$ALERTS_LOG" ] || return 0
    local wait_until=$((SECONDS + ${1:-3})) lines
    while :; do
        lines="$(grep -c '^ALERT' "$ALERTS_LOG" || true)"
        [ "$lines" -gt "$ALERTS_SEEN" ] && break
        [ "$SECONDS" -lt "$wait_until" ] || return 0
        sleep 0.2
    done
    sleep 0.5 # alerts of the same write arrive together
    local new
    new="$(grep '^ALERT' "$ALERTS_LOG" | tail -n +"$((ALERTS_SEEN + 1))")"
    ALERTS_SEEN="$(grep -c '^ALERT' "$ALERTS_LOG" || true)"
    printf '%s\n' "$new" | sed 's/^/           /'
    ALERTS_SHOWN="$ALERTS_SHOWN$new"$'\n'
}

# ------------------------------------------------------------ 1. a user
USER_ID="walkthrough-$(date +%s)"
bold "1. A user with two windows: 30 USD per day, 15 USD per 10 seconds"
payload="{\"user_id\": \"$USER_ID\", \"team_id\": \"demo-team\", \"budget_limits\": [{\"budget_duration\": \"1d\", \"max_budget\": 30}, {\"budget_duration\": \"10s\", \"max_budget\": 15}]}"
echo "POST /user/new $payload"
admin POST /user/new "$payload"
[ "$STATUS" = 200 ] || fail "/user/new answered $STATUS: $BODY"
printf '%s' "$BODY" | windows
payload="{\"user_id\": \"$USER_ID\", \"team_id\": \"demo-team\", \"key_alias\": \"walkthrough\"}"
echo "POST /key/generate $payload"
admin POST /key/generate "$payload"
[ "$STATUS" = 200 ] || fail "/key/generate answered $STATUS: $BODY"
KEY="$(printf '%s' "$BODY" | get key)"
[ -n "$KEY" ] || fail "/key/generate answered without a key: $BODY"
echo "    key ${KEY:0:12}... (shown once; only its SHA-256 is stored)"

# ------------------------------------------------------ 2. unknown keys
bold "2. An unknown key is refused before any budget is looked at"
answer="$(invoke authorize "$(event events/authorize-http-api.json sk-not-a-real-key 1)")"
echo "HTTP API authorizer: $answer"
[ "$(printf '%s' "$answer" | get isAuthorized)" = false ] || fail "an unknown key was not refused"
answer="$(invoke authorize "$(event events/authorize-rest-token.json sk-not-a-real-key 1)")"
echo "REST TOKEN authorizer: $answer   (API Gateway answers 401)"
echo "    (the authorizer answers a REST TOKEN event with the error \"Unauthorized\", which API Gateway turns into"
echo "     a 401: the ERROR ... Unauthorized line this leaves in make local's log is that answer, not a fault)"

# ------------------------------------------- 3. spend until the day is over
bold "3. Requests reserving $RESERVE USD each until the daily window refuses"
echo "(each admitted request is settled at $COST USD, as the upstream would do with POST /spend/settle;"
echo " budget alerts - EventBridge events from the notify function, 50/80/100 % of each window - show as they arrive)"
show_alerts 0 >/dev/null # earlier runs' alerts are not this user's
request=0
rolled_and_admitted=0
waited_for_short_window=0
last_settle=
deny=
deadline=$((SECONDS + 120))
while :; do
    [ "$SECONDS" -lt "$deadline" ] || fail "no daily denial within 120 s"
    request=$((request + 1))
    [ "$request" -le 12 ] || fail "no daily denial after 12 requests"
    answer="$(invoke authorize "$(event events/authorize-http-api.json "$KEY" "$RESERVE")")"
    if [ "$(printf '%s' "$answer" | get isAuthorized)" = true ]; then
        reservation="$(printf '%s' "$answer" | get context.reservation_id)"
        note=""
        if [ "$waited_for_short_window" = 1 ]; then
            note="   <- the 10s window rolled over: admitted again"
            rolled_and_admitted=1
            waited_for_short_window=0
        fi
        printf 'request %d: ALLOW  reservation %s  reserved %s  remaining %s (tightest: %s)%s\n' "$request" \
            "$reservation" "$(printf '%s' "$answer" | get context.reserved)" \
            "$(printf '%s' "$answer" | get context.remaining)" \
            "$(printf '%s' "$answer" | get context.tightest_window)" "$note"
        last_settle="{\"reservation_id\": \"$reservation\", \"cost\": $COST}"
        settle /spend/settle "$last_settle"
        [ "$STATUS" = 200 ] || fail "settle answered $STATUS: $BODY"
        printf '           settled: cost %s, state %s\n' "$(printf '%s' "$BODY" | get cost)" "$(printf '%s' "$BODY" | get state)"
        show_alerts 3
        continue
    fi
    reason="$(printf '%s' "$answer" | get context.reason)"
    window="$(printf '%s' "$answer" | get context.budget_duration)"
    retry_after="$(printf '%s' "$answer" | get context.retry_after)"
    [ "$reason" = budget_exceeded ] || fail "unexpected denial: $answer"
    printf 'request %d: DENY   %s\n' "$request" "$(printf '%s' "$answer" | get context.message)"
    if [ "$window" = 1d ]; then
        deny="$answer"
        if [ -n "${ALERTS_LOG:-}" ]; then
            # A slow machine may print it late; it was sent at the settle.
            # (Up to 45 s: a stuck delivery is sent again after 10 s.)
            printf '%s' "$ALERTS_SHOWN" | grep -q "ALERT 80 % of user $USER_ID 1d" || show_alerts 45
            printf '%s' "$ALERTS_SHOWN" | grep -q "ALERT 80 % of user $USER_ID 1d" ||
                fail "no 80 % alert of the daily window (see .local/logs/alerts.log, notify.log)"
            echo "           (the day's 80 % alert was sent at the settle before this denial)"
        fi
        break
    fi
    # A short window: wait until it rolls over, then try again.
    wait_s="$(py 'import sys, math; print(max(1, min(15, math.ceil(float(sys.argv[1] or 10)))))' "$retry_after")"
    printf '           the %s window resets at %s (retry_after %s s): waiting %s s\n' \
        "$window" "$(printf '%s' "$answer" | get context.reset_at)" "$retry_after" "$wait_s"
    sleep "$wait_s"
    waited_for_short_window=1
done

# --------------------------------------------------------- 4. the denial
bold "4. The denial: the authorizer's context (what the REST API puts in its 429 body)"
printf '%s' "$deny" | py '
import json, sys
c = json.load(sys.stdin)["context"]
for k in ("reason", "entity", "entity_id", "budget_duration", "max_budget", "spend", "reserved", "estimate", "reset_at", "retry_after", "message"):
    if k in c:
        print("    %-16s %s" % (k, c[k]))
'
answer="$(invoke authorize "$(event events/authorize-rest-request.json "$KEY" "$RESERVE")")"
effect="$(printf '%s' "$answer" | get policyDocument.Statement.0.Effect)"
echo "The same request as a REST API REQUEST event: policy Effect $effect; with the template's"
echo "ACCESS_DENIED gateway response the client gets HTTP 429 and:"
printf '%s' "$answer" | py '
import json, sys
c = json.load(sys.stdin).get("context", {})
keys = ("message", "reason", "entity", "entity_id", "budget_duration", "max_budget", "spend", "reserved", "estimate", "reset_at", "retry_after")
body = {"error": {("type" if k == "reason" else k): str(c.get(k, "")) for k in keys}}
print("    " + json.dumps(body))
'
[ "$effect" = Deny ] || fail "the REST REQUEST event was not denied"

# ----------------------------------------------------- 5. settle again
bold "5. Settling is idempotent: the last settle, delivered again"
echo "POST /spend/settle $last_settle"
settle /spend/settle "$last_settle"
[ "$STATUS" = 200 ] || fail "the repeated settle answered $STATUS: $BODY"
echo "    $STATUS $BODY"
[ "$(printf '%s' "$BODY" | get duplicate)" = true ] || fail "the repeated settle was not reported as a duplicate"

# ------------------------------------------------------------ 6. info
bold "6. GET /user/info?user_id=$USER_ID"
admin GET "/user/info?user_id=$USER_ID"
[ "$STATUS" = 200 ] || fail "/user/info answered $STATUS: $BODY"
printf '%s' "$BODY" | windows
short_reset="$(printf '%s' "$BODY" | py '
import json, sys
d = json.load(sys.stdin)
info = d.get("user_info") or d
print(next((w["reset_at"] for w in info.get("windows", []) if w["budget_duration"] == "10s"), ""))
')"

# ------------------------------------------------------ 7. the reset job
bold "7. The reset job (EventBridge runs it every minute)"
if [ -n "$short_reset" ]; then
    wait_s="$(py '
import sys, math, datetime
t = datetime.datetime.fromisoformat(sys.argv[1].replace("Z", "+00:00"))
now = datetime.datetime.now(datetime.timezone.utc)
print(max(0, min(15, math.ceil((t - now).total_seconds()) + 1)))
' "$short_reset")"
    echo "waiting $wait_s s until the 10s window passes its boundary ($short_reset) ..."
    sleep "$wait_s"
fi
summary="$(invoke reset "$(cat events/reset-schedule.json)")"
echo "reset: $summary"
[ -n "$(printf '%s' "$summary" | get windows_reset)" ] || fail "the reset job answered without a summary"
admin GET "/user/info?user_id=$USER_ID"
[ "$STATUS" = 200 ] || fail "/user/info answered $STATUS: $BODY"
echo "GET /user/info after the reset: the 10s window starts again, the day stays spent"
printf '%s' "$BODY" | windows

bold "Done in $((SECONDS - STARTED)) s."
if [ "$rolled_and_admitted" != 1 ]; then
    echo "(this run did not catch the 10s window refusing and admitting again; run it once more to see it)"
fi
echo "The daily window resets at $(printf '%s' "$deny" | get context.reset_at); see docs/deploy.md for the rules."
