#!/usr/bin/env bash
# `make litellm-e2e`: edge-budget in front of LiteLLM's real proxy, driven by
# the official OpenAI Python SDK (integrations/litellm/e2e/run.py).
#
#   1. installs LiteLLM's proxy, the OpenAI SDK and botocore into
#      .tools/litellm (their own venv: LiteLLM pins many libraries);
#   2. starts a local stack of its own (scripts/local.sh, state in
#      .local/litellm-e2e/, so a running `make local` is left alone) whose
#      gateway forwards to the LiteLLM proxy;
#   3. starts the LiteLLM proxy (mock_response models, no network;
#      LITELLM_LOCAL_MODEL_COST_MAP=True so it fetches no prices) with
#      integrations/litellm/edge_budget_callback.py and a witness callback
#      that records LiteLLM's own response_cost values;
#   4. runs the test; stops everything it started.
source "$(dirname "${BASH_SOURCE[0]}")/tools.sh"
cd "$ROOT"

LITELLM_VENV="$TOOLS/litellm"
# 1.107.0 was a compromised release; this one predates it.
LITELLM_VERSION="1.106.12"
OPENAI_VERSION="2.54.0"
STATE="$ROOT/.local/litellm-e2e"
STARTED=$SECONDS

step() { printf '\n\033[1m==> %s\033[0m  (%ss)\n' "$*" "$((SECONDS - STARTED))"; }

STACK_PID=
PROXY_PID=
stop_all() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "$PROXY_PID" ]; then
        kill "$PROXY_PID" 2>/dev/null || true
        wait "$PROXY_PID" 2>/dev/null || true
    fi
    if [ -n "$STACK_PID" ]; then
        kill -TERM "$STACK_PID" 2>/dev/null || true
        wait "$STACK_PID" 2>/dev/null || true
    fi
    if [ "$status" != 0 ]; then
        for f in "$STATE/litellm.log" "$STATE/stack.log" "$STATE/logs/gateway.log"; do
            [ -s "$f" ] || continue
            echo "--- last lines of ${f#"$ROOT"/}" >&2
            tail -n 25 "$f" | cut -c1-400 >&2
        done
    fi
    exit "$status"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
    echo "litellm e2e: $*" >&2
    exit 1
}

step "LiteLLM $LITELLM_VERSION, openai $OPENAI_VERSION, botocore (.tools/litellm)"
if [ ! -x "$LITELLM_VENV/bin/python" ]; then
    python3 -m venv "$LITELLM_VENV"
fi
if ! "$LITELLM_VENV/bin/python" -c "
import importlib.metadata as m, sys
sys.exit(0 if m.version('litellm') == '$LITELLM_VERSION' and m.version('openai') == '$OPENAI_VERSION' else 1)
import botocore, fastapi
" 2>/dev/null; then
    echo "installing into .tools/litellm (a few minutes the first time) ..." >&2
    "$LITELLM_VENV/bin/pip" install --quiet "litellm[proxy]==$LITELLM_VERSION" "openai==$OPENAI_VERSION" botocore
fi

rm -rf "$STATE"
mkdir -p "$STATE/proxy"
LITELLM_PORT="$(pick_port 4400)"

step "local stack whose gateway forwards to LiteLLM on port $LITELLM_PORT"
LOCAL_STATE_DIR="$STATE" UPSTREAM_URL="http://127.0.0.1:$LITELLM_PORT" \
    GATEWAY_PORT="${GATEWAY_PORT:-4100}" bash scripts/local.sh >"$STATE/stack.log" 2>&1 &
STACK_PID=$!
for _ in $(seq 1 1800); do
    [ -s "$STATE/env" ] && break
    kill -0 "$STACK_PID" 2>/dev/null || fail "the local stack did not start (see above)"
    sleep 0.2
done
[ -s "$STATE/env" ] || fail "the local stack was not up within 6 minutes"
set -a
# shellcheck disable=SC1091
. "$STATE/env"
set +a
echo "gateway $API_URL -> LiteLLM http://127.0.0.1:$LITELLM_PORT"

step "LiteLLM proxy (mock_response models, edge_budget_callback.settler)"
cp integrations/litellm/edge_budget_callback.py integrations/litellm/e2e/witness.py \
    integrations/litellm/e2e/config.yaml "$STATE/proxy/"
export LITELLM_MASTER_KEY="sk-litellm-e2e-$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
export LITELLM_LOCAL_MODEL_COST_MAP=True
export WITNESS_FILE="$STATE/witness.jsonl"
(
    cd "$STATE/proxy"
    EDGE_BUDGET_API_URL="$API_URL" EDGE_BUDGET_SIGV4=0 \
        exec "$LITELLM_VENV/bin/litellm" --config config.yaml --host 127.0.0.1 --port "$LITELLM_PORT"
) >"$STATE/litellm.log" 2>&1 &
PROXY_PID=$!
deadline=$((SECONDS + 180))
until curl -sf -o /dev/null "http://127.0.0.1:$LITELLM_PORT/health/liveliness"; do
    kill -0 "$PROXY_PID" 2>/dev/null || fail "the LiteLLM proxy exited at start"
    [ "$SECONDS" -lt "$deadline" ] || fail "the LiteLLM proxy did not answer within 180 s"
    sleep 0.5
done
echo "LiteLLM proxy up"

step "OpenAI SDK -> gateway -> LiteLLM"
"$LITELLM_VENV/bin/python" integrations/litellm/e2e/scope_check.py
"$LITELLM_VENV/bin/python" integrations/litellm/e2e/run.py
step "done"
