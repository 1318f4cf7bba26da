"""End to end: the official OpenAI Python SDK -> edge-budget's local gateway
(the real authorize function) -> LiteLLM's proxy (mock_response models) ->
edge_budget_callback settles LiteLLM's response_cost.

Asserts what a user would notice:
1. requests, streamed and not, are admitted until the user's daily window
   is spent, then refused with a 429 whose message names the user, the
   window and the estimate that did not fit;
2. the spend /user/info shows equals the sum of LiteLLM's own
   response_cost values (as the witness callback saw them), to the
   nano-dollar, and nothing stays reserved;
3. a failing upstream call leaves nothing reserved and spends nothing;
4. (offline) deployed, the callback's settle requests are SigV4-signed
   for execute-api; locally they are plain HTTP.

Environment: API_URL, MASTER_KEY (the local stack's), LITELLM_MASTER_KEY,
WITNESS_FILE. Exits non-zero on the first broken expectation.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from decimal import ROUND_HALF_UP, Decimal

import httpx
import openai

API_URL = os.environ["API_URL"].rstrip("/")
MASTER_KEY = os.environ["MASTER_KEY"]
LITELLM_KEY = os.environ["LITELLM_MASTER_KEY"]
WITNESS_FILE = os.environ["WITNESS_FILE"]
RESERVE = "0.05"
WINDOW_USD = 0.6


def fail(message: str) -> None:
    print(f"litellm e2e: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def check(condition: bool, message: str) -> None:
    if not condition:
        fail(message)


def nanos(value) -> int:
    """A JSON number as edge-budget reads it: its shortest decimal form,
    rounded half away from zero to the nano-dollar."""
    d = Decimal(repr(float(value))) * Decimal(10**9)
    return int(d.to_integral_value(rounding=ROUND_HALF_UP))


def admin(method: str, path: str, body=None) -> dict:
    r = httpx.request(
        method,
        f"{API_URL}{path}",
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        json=body,
        timeout=30,
    )
    check(r.status_code == 200, f"{method} {path} answered {r.status_code}: {r.text}")
    return r.json()


def new_user(prefix: str) -> tuple[str, str]:
    user_id = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin("POST", "/user/new", {"user_id": user_id, "budget_limits": [{"budget_duration": "1d", "max_budget": WINDOW_USD}]})
    key = admin("POST", "/key/generate", {"user_id": user_id})["key"]
    return user_id, key


def client(key: str) -> openai.OpenAI:
    # The edge-budget key is the bearer token (the gateway's authorizer
    # reads it); LiteLLM's own key travels in its x-litellm-api-key header.
    return openai.OpenAI(
        base_url=f"{API_URL}/v1",
        api_key=key,
        default_headers={"x-litellm-api-key": f"Bearer {LITELLM_KEY}", "x-budget-reserve": RESERVE},
        max_retries=0,
        timeout=60,
    )


def user_window(user_id: str) -> dict:
    info = admin("GET", f"/user/info?user_id={user_id}")
    user = info.get("user_info", info)
    return {"spend": user["spend"], "window": next(w for w in user["windows"] if w["budget_duration"] == "1d")}


def settled(user_id: str, expected_records: int) -> dict:
    """Waits until LiteLLM's callbacks (which run after the answer) have
    finished: the witness has every record and nothing is reserved."""
    deadline = time.monotonic() + 60
    while True:
        state = user_window(user_id)
        records = witness_records()
        if state["window"]["reserved"] == 0 and len(records) >= expected_records:
            return state
        if time.monotonic() > deadline:
            fail(f"still reserved after 60 s: {state}, witness has {len(records)} of {expected_records}")
        time.sleep(0.2)


def witness_records() -> list[dict]:
    try:
        with open(WITNESS_FILE, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def spend_until_denied() -> None:
    user_id, key = new_user("e2e-litellm")
    c = client(key)
    admitted = {"stream": 0, "plain": 0}
    denial = None
    for i in range(60):
        stream = i % 2 == 1
        try:
            if stream:
                chunks = list(
                    c.chat.completions.create(
                        model="gpt-4o-mini",
                        messages=[{"role": "user", "content": f"question {i}"}],
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                )
                text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
                check(len(chunks) >= 3, f"a streamed answer came in {len(chunks)} chunks")
            else:
                answer = c.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": f"question {i}"}]
                )
                text = answer.choices[0].message.content or ""
            check(text.startswith("Hello from LiteLLM's mock"), f"unexpected answer {text!r}")
            admitted["stream" if stream else "plain"] += 1
        except openai.RateLimitError as e:
            denial = e
            break
        # Each answer is settled after it is sent: wait for it, so the next
        # request sees this one's spend (as a user a moment later would).
        settled(user_id, sum(admitted.values()))
    check(denial is not None, "never denied")
    check(admitted["stream"] >= 2 and admitted["plain"] >= 2, f"admitted {admitted}")
    check(denial.status_code == 429, f"denied with {denial.status_code}")
    message = denial.body.get("message", "") if isinstance(denial.body, dict) else str(denial)
    check(
        message.startswith(f"Budget exceeded: user={user_id} over 1d budget. Spend=$")
        and f"Estimate=${RESERVE}00, Limit=${WINDOW_USD:.2f}, resets " in message,
        f"denial message: {message!r}",
    )
    print(f"admitted {admitted['plain']} plain + {admitted['stream']} streamed requests, then 429: {message}")

    records = [r for r in witness_records() if r["outcome"] == "success"]
    state = settled(user_id, len(records))
    mine = [r for r in records if r["reservation_id"] and r["reservation_id"].startswith("r-")]
    check(len(mine) == sum(admitted.values()), f"witness saw {len(mine)} successes for {admitted}")
    check(all(r["response_cost"] and r["response_cost"] > 0 for r in mine), f"costs: {mine}")
    expected = sum(nanos(r["response_cost"]) for r in mine)
    window_spend = nanos(state["window"]["spend"])
    check(
        window_spend == expected,
        f"spend {window_spend} nanos != sum of LiteLLM's response_cost {expected} nanos",
    )
    # LiteLLM's `spend` of a user budgeted by budget_limits: everything spent.
    check(nanos(state["spend"]) == expected, f"top-level spend {state['spend']} != {expected} nanos")
    check(state["window"]["reserved"] == 0, f"still reserved: {state}")
    print(
        f"spend {expected / 1e9:.9f} USD = sum of {len(mine)} response_cost values "
        f"({sum(r['stream'] for r in mine)} streamed), to the nano-dollar; nothing reserved"
    )


def failing_call_reserves_nothing() -> None:
    user_id, key = new_user("e2e-litellm-fail")
    before = len(witness_records())
    try:
        client(key).chat.completions.create(model="failing", messages=[{"role": "user", "content": "fail"}])
        fail("the failing model answered")
    except openai.APIStatusError as e:
        check(e.status_code >= 500, f"failing model answered {e.status_code}")
    state = settled(user_id, before + 1)
    check(state["window"]["reserved"] == 0 and nanos(state["window"]["spend"]) == 0, f"after a failure: {state}")
    print(f"a failing upstream call: released, nothing reserved or spent ({state['window']})")


def a_body_naming_another_customer_is_refused_and_released() -> None:
    """The header-lying case: a client charged to customer A (its
    x-litellm-customer-id) whose body names customer B in ``user`` is
    refused by the callback before the model is called, and its reservation
    released; the same body without a customer header (charged to none)
    too. A body that names the charged customer goes through."""
    user_id, key = new_user("e2e-litellm-cust")
    customer = f"cust-{uuid.uuid4().hex[:8]}"
    admin("POST", "/customer/new", {"user_id": customer, "max_budget": WINDOW_USD})
    message = [{"role": "user", "content": "hi"}]
    for headers in ({"x-litellm-customer-id": customer}, {}):
        try:
            client(key).chat.completions.create(
                model="gpt-4o-mini", messages=message, user="someone-else", extra_headers=headers
            )
            fail(f"a body naming another customer was answered ({headers})")
        except openai.APIStatusError as e:
            check(e.status_code == 400, f"answered {e.status_code}: {e}")
            check("reservation released" in str(e), f"the refusal says why: {e}")
    deadline = time.monotonic() + 30
    while user_window(user_id)["window"]["reserved"] != 0:
        check(time.monotonic() < deadline, f"still reserved: {user_window(user_id)}")
        time.sleep(0.2)
    ok = client(key).chat.completions.create(
        model="gpt-4o-mini", messages=message, user=customer, extra_headers={"x-litellm-customer-id": customer}
    )
    check(bool(ok.choices), f"the honest request was answered: {ok}")
    print("a body naming another customer than the charged one: refused with 400, reservation released")


def a_body_calling_another_model_is_refused_and_released() -> None:
    """The same for models. A key with budgets for gpt-4o-mini and
    cheap-model: a request naming a model it has no budget for is refused
    by the gateway (model_not_budgeted: no alias can run outside the caps);
    one whose header says cheap-model while its body calls gpt-4o-mini is
    refused by the callback and released; the honest request goes through."""
    user_id, _ = new_user("e2e-litellm-model")
    budget = {"budget_limit": WINDOW_USD, "time_period": "1d"}
    key = admin(
        "POST",
        "/key/generate",
        {"user_id": user_id, "model_max_budget": {"gpt-4o-mini": budget, "cheap-model": budget}},
    )["key"]
    message = [{"role": "user", "content": "hi"}]
    try:
        client(key).with_options(max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=message, extra_headers={"x-litellm-model": "some-other-model"}
        )
        fail("a model without a budget on the key was answered")
    except openai.APIStatusError as e:
        check(e.status_code == 429 and "model_not_budgeted" in str(e), f"answered {e.status_code}: {e}")
    try:
        client(key).chat.completions.create(
            model="gpt-4o-mini", messages=message, extra_headers={"x-litellm-model": "cheap-model"}
        )
        fail("a body calling another model than the charged one was answered")
    except openai.APIStatusError as e:
        check(e.status_code == 400 and "reservation released" in str(e), f"answered {e.status_code}: {e}")
    deadline = time.monotonic() + 30
    while user_window(user_id)["window"]["reserved"] != 0:
        check(time.monotonic() < deadline, f"still reserved: {user_window(user_id)}")
        time.sleep(0.2)
    ok = client(key).chat.completions.create(
        model="gpt-4o-mini", messages=message, extra_headers={"x-litellm-model": "gpt-4o-mini"}
    )
    check(bool(ok.choices), f"the honest request was answered: {ok}")
    print("a model without a budget: refused by the gateway; a body calling another model than the charged one: refused with 400, reservation released")


def settle_requests_are_signed_when_deployed() -> None:
    """Deployed, the callback signs with SigV4 for execute-api (botocore);
    checked offline with made-up credentials: the signature's scope names
    the region and the service, and the signed headers cover the host."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    os.environ.setdefault("EDGE_BUDGET_API_URL", API_URL)
    import edge_budget_callback as cb

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "EDGE_BUDGET_SIGV4")}
    os.environ.update(AWS_ACCESS_KEY_ID="AKIDEXAMPLE", AWS_SECRET_ACCESS_KEY="secret", AWS_SESSION_TOKEN="token", AWS_REGION="eu-west-1")
    os.environ.pop("EDGE_BUDGET_SIGV4", None)
    try:
        deployed = cb.EdgeBudgetSettler("https://abc123.execute-api.eu-west-1.amazonaws.com/api")
        check(deployed.sign, "an https API URL is signed by default")
        headers = deployed._headers(f"{deployed.api_url}/spend/settle", '{"reservation_id": "r-x", "cost": 0.1}')
        auth = headers.get("Authorization", "")
        check(
            auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
            and "/eu-west-1/execute-api/aws4_request" in auth
            and "host" in auth.split("SignedHeaders=")[1].split(",")[0].split(";"),
            f"signature: {auth!r}",
        )
        check(headers.get("X-Amz-Security-Token") == "token", f"session token: {headers}")
        local = cb.EdgeBudgetSettler("http://127.0.0.1:8080/api")
        check(not local.sign and "Authorization" not in local._headers("http://x/spend/settle", "{}"), "local is plain HTTP")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    print("settle requests are SigV4-signed for execute-api when the API URL is https, plain locally")


if __name__ == "__main__":
    settle_requests_are_signed_when_deployed()
    spend_until_denied()
    failing_call_reserves_nothing()
    a_body_naming_another_customer_is_refused_and_released()
    a_body_calling_another_model_is_refused_and_released()
    print("litellm e2e: 6 passed, 0 failed")
