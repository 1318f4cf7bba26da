"""Offline check of the callback's pre-call hook (no proxy, no network): a
request whose body names another end customer than the one the gateway
charged is refused and its reservation released; a matching one, or one
that names none, goes on. Run with LiteLLM's venv:
``.tools/litellm/bin/python integrations/litellm/e2e/scope_check.py``
(``make litellm-e2e`` runs it too)."""

from __future__ import annotations

import asyncio
import os
import sys
from types import SimpleNamespace

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import edge_budget_callback as cb  # noqa: E402


def request(charged, body_user=None, headers=None, end_user=None):
    h = {"x-budget-reservation-id": "r-1.receipt"}
    if charged is not None:
        h["x-budget-customer-id"] = charged
    h.update(headers or {})
    data = {"model": "m", "proxy_server_request": {"headers": h}}
    if body_user is not None:
        data["user"] = body_user
    return SimpleNamespace(end_user_id=end_user), data


async def main() -> None:
    settler = cb.EdgeBudgetSettler(api_url="http://127.0.0.1:9")
    released: list[str] = []

    async def finish(operation, reservation, cost):
        released.append(f"{operation} {reservation}")

    settler._finish = finish
    cases = [
        # (charged, body user, LiteLLM headers, resolved end user) -> refused?
        (("cust-a", "cust-a", None, None), False),
        (("cust-a", None, None, None), False),
        ((None, None, None, None), False),
        (("cust-a", "cust-b", None, None), True),
        ((None, "cust-b", None, None), True),
        (("", "cust-b", None, None), True),
        (("(none)", "cust-b", None, None), True),
        (("(none)", None, None, None), False),
        (("cust-a", None, None, "cust-b"), True),
        (("cust-a", None, {"x-litellm-end-user-id": "cust-b"}, None), True),
    ]
    for (charged, user, headers, end_user), refused in cases:
        released.clear()
        key, data = request(charged, user, headers, end_user)
        try:
            await settler.async_pre_call_hook(key, None, data, "completion")
            outcome = False
        except Exception as e:  # HTTPException inside the proxy's venv
            outcome = True
            assert "reservation released" in str(getattr(e, "detail", e)), e
        assert outcome == refused, (charged, user, headers, end_user, outcome)
        assert released == (["release r-1.receipt"] if refused else []), released
    # The model: the body's must be the one charged (when one was).
    for charged_model, body_model, refused in [
        ("gpt-4o", "gpt-4o", False),
        ("", "gpt-4o", False),
        ("(none)", "gpt-4o", False),
        ("gpt-4o-mini", "gpt-4o", True),
    ]:
        released.clear()
        key, data = request("cust-a", "cust-a")
        data["proxy_server_request"]["headers"]["x-budget-model"] = charged_model
        data["model"] = body_model
        try:
            await settler.async_pre_call_hook(key, None, data, "completion")
            outcome = False
        except Exception as e:
            outcome = True
            assert "reservation released" in str(getattr(e, "detail", e)), e
        assert outcome == refused, (charged_model, body_model)
        assert released == (["release r-1.receipt"] if refused else []), released
    # Tags: every tag the body names must have been charged.
    for charged_tags, body_tags, refused in [
        ("a,b", ["a"], False),
        ("a,b", None, False),
        ("", ["a"], True),
        ("(none)", ["a"], True),
        ("a", ["a", "b"], True),
    ]:
        released.clear()
        key, data = request("cust-a", "cust-a")
        data["proxy_server_request"]["headers"]["x-budget-tags"] = charged_tags
        if body_tags is not None:
            data["metadata"] = {"tags": body_tags}
        try:
            await settler.async_pre_call_hook(key, None, data, "completion")
            outcome = False
        except Exception as e:
            outcome = True
            assert "reservation released" in str(getattr(e, "detail", e)), e
        assert outcome == refused, (charged_tags, body_tags)
        assert released == (["release r-1.receipt"] if refused else []), released
    # A model that is not a name, or fallbacks to other models, when a
    # model was charged: refused and released.
    extra = 0
    for field, value in [("model", ["gpt-4o", "gpt-4o-mini"]), ("fallbacks", ["gpt-4o"]),
                         ("context_window_fallbacks", [{"gpt-4o-mini": ["gpt-4o"]}])]:
        released.clear()
        key, data = request("cust-a", "cust-a")
        data["proxy_server_request"]["headers"]["x-budget-model"] = "gpt-4o-mini"
        data["model"] = "gpt-4o-mini"
        data[field] = value
        try:
            await settler.async_pre_call_hook(key, None, data, "completion")
            outcome = False
        except Exception as e:
            outcome = True
            assert "reservation released" in str(getattr(e, "detail", e)), e
        assert outcome, (field, value)
        assert released == ["release r-1.receipt"], released
        extra += 1
    # Charged headers planted by the client in the body's metadata count for
    # nothing: a reservation seen only there (a pass-through route) is refused.
    released.clear()
    key, data = request("cust-a", "cust-b")
    data["metadata"] = {"headers": {"x-budget-customer-id": "cust-b"}}
    try:
        await settler.async_pre_call_hook(key, None, data, "completion")
        raise AssertionError("a planted x-budget-customer-id was believed")
    except AssertionError:
        raise
    except Exception as e:
        assert "reservation released" in str(getattr(e, "detail", e)), e
    passthrough = {"model": "gpt-4o", "metadata": {"headers": {"x-budget-reservation-id": "r-1.receipt", "x-budget-model": "gpt-4o"}}}
    try:
        await settler.async_pre_call_hook(SimpleNamespace(end_user_id=None), None, passthrough, "pass_through_endpoint")
        raise AssertionError("a pass-through request with a reservation was let through")
    except AssertionError:
        raise
    except Exception as e:
        assert "cannot be checked" in str(getattr(e, "detail", e)), e
    extra += 2
    # Not through the gateway: left alone.
    plain = {"model": "m", "user": "anyone", "proxy_server_request": {"headers": {}}}
    assert await settler.async_pre_call_hook(SimpleNamespace(), None, plain, "completion") is plain
    print("scope_check: ok (%d cases)" % (len(cases) + 10 + extra))


asyncio.run(main())
