"""edge-budget settle callback for the LiteLLM proxy.

Behind edge-budget's gateway every request LiteLLM receives carries
``x-budget-reservation-id``: the budget the authorizer reserved for it. This
callback finishes that reservation once LiteLLM knows the outcome:

- success (streamed or not): ``POST <api>/spend/settle {"reservation_id", "cost"}``
  with LiteLLM's own ``kwargs["response_cost"]``;
- failure (the model call failed, or the proxy refused the request):
  ``POST <api>/spend/release {"reservation_id"}``, so nothing stays reserved.

- before the model call: a request whose body names another end customer than
  the one the gateway charged (``x-budget-customer-id``, set by the gateway
  from what the authorizer charged; a client cannot send its own) is refused
  (400) and its reservation released, so no client dodges a customer's cap by
  naming one customer in ``x-litellm-customer-id`` and another in the body.

Settle and release are idempotent on edge-budget's side, so a retry here (on
a 5xx, 429 or a network error) or a second hook for the same request does
no harm. Requests without the header (not sent through the gateway) are left
alone.

Configuration (environment variables):

``EDGE_BUDGET_API_URL``
    The gateway's base URL, stage included: ``https://<id>.execute-api.<region>.amazonaws.com/api``
    when deployed, ``$API_URL`` of ``.local/env`` locally. Required.
``EDGE_BUDGET_SIGV4``
    ``auto`` (default: sign when the URL is https), ``1`` or ``0``. Deployed,
    the settle routes are IAM-authorized: requests are signed with SigV4
    (service ``execute-api``) using botocore's credential chain (the
    proxy's role; it needs the stack's ``SettleSpendCallerPolicyArn``).
``AWS_REGION``
    Region for the signature (default: botocore's configured region).
``EDGE_BUDGET_TIMEOUT_SECONDS``
    Per attempt (default 10). ``EDGE_BUDGET_ATTEMPTS``: tries (default 4).

LiteLLM config (this file next to config.yaml)::

    litellm_settings:
      callbacks: edge_budget_callback.settler
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any, Mapping, Optional

import httpx
from litellm.integrations.custom_logger import CustomLogger

log = logging.getLogger("edge_budget")

RESERVATION_HEADER = "x-budget-reservation-id"
RESERVED_HEADER = "x-budget-reserve"
# What the authorizer charged, as the gateway sets it; NOT_NAMED for none
# (a value no id, model or tag can have).
CHARGED_CUSTOMER_HEADER = "x-budget-customer-id"
NOT_NAMED = "(none)"
# The model the authorizer charged (empty: none named).
CHARGED_MODEL_HEADER = "x-budget-model"
# The tags it charged, comma separated (empty: none).
CHARGED_TAGS_HEADER = "x-budget-tags"
# LiteLLM's own headers naming the end customer.
CUSTOMER_HEADERS = ("x-litellm-customer-id", "x-litellm-end-user-id")


def _text(value: Any) -> Optional[str]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def named_tags(data: Mapping[str, Any]) -> list[str]:
    """Every tag the request names where LiteLLM reads tags: its
    ``x-litellm-tags`` header, the body's ``tags``, ``metadata.tags`` and
    ``litellm_metadata.tags``."""
    found: list[Any] = []
    text = header(data, "x-litellm-tags")
    if text:
        found += text.split(",")
    scopes = [data, data.get("metadata"), data.get("litellm_metadata")]
    for scope in scopes:
        if isinstance(scope, str):
            try:
                scope = json.loads(scope)
            except ValueError:
                scope = None
        if isinstance(scope, Mapping) and isinstance(scope.get("tags"), list):
            found += scope["tags"]
    names: list[str] = []
    for value in found:
        t = _text(value)
        if t is not None and t not in names:
            names.append(t)
    return names


def named_customers(user_api_key_dict: Any, data: Mapping[str, Any]) -> list[str]:
    """Every end customer the request names, wherever LiteLLM may read one:
    what its auth step resolved (``end_user_id``), its customer headers, the
    body's ``user``, ``litellm_metadata.user`` and ``metadata.user_id``."""
    found = [getattr(user_api_key_dict, "end_user_id", None)]
    found += [header(data, name) for name in CUSTOMER_HEADERS]
    found.append(data.get("user"))
    for meta_key, field in (("litellm_metadata", "user"), ("metadata", "user_id")):
        meta = data.get(meta_key)
        if isinstance(meta, str):
            try:
                meta = json.loads(meta)
            except ValueError:
                meta = None
        if isinstance(meta, Mapping):
            found.append(meta.get(field))
    names: list[str] = []
    for value in found:
        text = _text(value)
        if text is not None and text not in names:
            names.append(text)
    return names


class ChargedOtherScope(Exception):
    """The request names another scope than the one edge-budget charged."""


def _charged(value: Optional[str]) -> Optional[str]:
    """A charged-scope header's value; None for none named."""
    return None if value is None or value == NOT_NAMED else value


def _refuse(message: str) -> None:
    """Ends the request with 400 inside LiteLLM's proxy."""
    try:
        from fastapi import HTTPException
    except ImportError:  # outside the proxy
        raise ChargedOtherScope(message)
    raise HTTPException(status_code=400, detail={"error": message})


def _headers_of(data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The request header maps LiteLLM keeps: under ``proxy_server_request``
    and ``metadata`` (or ``litellm_metadata``), at the top level of the request
    data (hooks) or inside ``litellm_params`` (logging kwargs)."""
    found: list[Mapping[str, Any]] = []
    for scope in (data, data.get("litellm_params") or {}):
        if not isinstance(scope, Mapping):
            continue
        psr = scope.get("proxy_server_request") or {}
        if isinstance(psr, Mapping) and isinstance(psr.get("headers"), Mapping):
            found.append(psr["headers"])
        for meta_key in ("metadata", "litellm_metadata"):
            meta = scope.get(meta_key) or {}
            if isinstance(meta, Mapping) and isinstance(meta.get("headers"), Mapping):
                found.append(meta["headers"])
    return found


def trusted_header(data: Mapping[str, Any], name: str) -> Optional[str]:
    """A header of the request as it reached LiteLLM's proxy (the
    ``proxy_server_request`` headers LiteLLM itself records), never one a
    client could write into the body's ``metadata``."""
    psr = data.get("proxy_server_request") or {}
    headers = psr.get("headers") if isinstance(psr, Mapping) else None
    if not isinstance(headers, Mapping):
        return None
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name and isinstance(value, str) and value:
            return value.strip()
    return None


# Body fields that make LiteLLM call other models than the body's ``model``.
FALLBACK_FIELDS = ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks")


def header(data: Mapping[str, Any], name: str) -> Optional[str]:
    """A request header (case-insensitive) of the proxied request."""
    for headers in _headers_of(data):
        for key, value in headers.items():
            if isinstance(key, str) and key.lower() == name and isinstance(value, str) and value:
                return value.strip()
    return None


def cost_text(cost: Any) -> Optional[str]:
    """``response_cost`` as a JSON number: Python's shortest repr of the
    float, which edge-budget reads exactly (rounded half away from zero to
    the nano-dollar). None for a missing, negative or non-finite cost."""
    if isinstance(cost, bool) or not isinstance(cost, (int, float)):
        return None
    text = json.dumps(float(cost))
    if text in ("NaN", "Infinity", "-Infinity") or float(cost) < 0:
        return None
    return text


class EdgeBudgetSettler(CustomLogger):
    """Settles or releases each request's edge-budget reservation."""

    def __init__(self, api_url: Optional[str] = None) -> None:
        super().__init__()
        self.api_url = (api_url or os.environ.get("EDGE_BUDGET_API_URL", "")).rstrip("/")
        sign = os.environ.get("EDGE_BUDGET_SIGV4", "auto").strip().lower()
        self.sign = self.api_url.startswith("https://") if sign == "auto" else sign in ("1", "true", "yes")
        self.timeout = float(os.environ.get("EDGE_BUDGET_TIMEOUT_SECONDS", "10"))
        self.attempts = max(1, int(os.environ.get("EDGE_BUDGET_ATTEMPTS", "4")))
        self.region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        self._finished: set[str] = set()  # ids settled or released by this process
        if not self.api_url:
            log.error("edge-budget: EDGE_BUDGET_API_URL is not set; reservations will not be settled")

    # ------------------------------------------------------------ hooks
    async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):
        """Refuses (and releases) a request whose body names another end
        customer, model or tags than the ones charged. The charged scopes
        are read only from the headers LiteLLM recorded of the request
        itself (``proxy_server_request``): a request that carries a
        reservation anywhere else (a pass-through route, or a client's own
        ``metadata.headers``) cannot be checked and is refused. Requests
        without a reservation (not sent through the gateway) are left
        alone."""
        reservation = trusted_header(data, RESERVATION_HEADER)
        if reservation is None:
            planted = header(data, RESERVATION_HEADER)
            if planted is None:
                return data
            message = (
                "edge-budget: this route does not show the proxy the gateway's headers, so "
                "what was charged cannot be checked; refused (use the OpenAI-compatible routes)"
            )
            log.warning("%s", message)
            _refuse(message)
        charged_model = _charged(trusted_header(data, CHARGED_MODEL_HEADER))
        raw_model = data.get("model")
        model = _text(raw_model)
        if charged_model is not None and raw_model is not None and model is None:
            await self._finish("release", reservation, None)
            _refuse("edge-budget: this request's model is not a name; refused, and its reservation released")
        fallbacks = [f for f in FALLBACK_FIELDS if data.get(f)]
        if charged_model is not None and fallbacks:
            await self._finish("release", reservation, None)
            message = (
                "edge-budget: this request asks for %s, which would call other models than the "
                "charged %r; refused, and its reservation released" % (fallbacks[0], charged_model)
            )
            log.warning("%s (%s)", message, reservation.split(".")[0])
            _refuse(message)
        if charged_model is not None and model is not None and model != charged_model:
            await self._finish("release", reservation, None)
            message = (
                "edge-budget: this request calls model %r but was charged to model %r; "
                "refused, and its reservation released (send the body's model in "
                "x-litellm-model)" % (model, charged_model)
            )
            log.warning("%s (%s)", message, reservation.split(".")[0])
            _refuse(message)
        charged_tags = {t.strip() for t in (_charged(trusted_header(data, CHARGED_TAGS_HEADER)) or "").split(",") if t.strip()}
        uncharged = [t for t in named_tags(data) if t not in charged_tags]
        if uncharged:
            await self._finish("release", reservation, None)
            message = (
                "edge-budget: this request names tag %r, which it was not charged to (charged: %s); "
                "refused, and its reservation released (send every tag in x-litellm-tags)"
                % (uncharged[0], ",".join(sorted(charged_tags)) or "none")
            )
            log.warning("%s (%s)", message, reservation.split(".")[0])
            _refuse(message)
        charged = _charged(trusted_header(data, CHARGED_CUSTOMER_HEADER))
        other = [n for n in named_customers(user_api_key_dict, data) if n != charged]
        if other:
            named = other[0]
            await self._finish("release", reservation, None)
            message = (
                "edge-budget: this request names customer %r but was charged to %s; "
                "refused, and its reservation released (send the same customer in "
                "x-litellm-customer-id as in the body)"
                % (named, "customer %r" % charged if charged else "no customer")
            )
            log.warning("%s (%s)", message, reservation.split(".")[0])
            _refuse(message)
        return data

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        reservation = header(kwargs, RESERVATION_HEADER)
        if reservation is None:
            return
        cost = cost_text(kwargs.get("response_cost"))
        if cost is None:
            # LiteLLM could not price the call: settle what was reserved
            # (the REST gateway sends it) rather than record nothing.
            cost = cost_text(_float(header(kwargs, RESERVED_HEADER)))
            log.warning(
                "edge-budget: no response_cost for %s; settling the reserved amount %s",
                reservation.split(".")[0],
                cost,
            )
            if cost is None:
                await self._finish("release", reservation, None)
                return
        await self._finish("settle", reservation, cost)

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
        reservation = header(kwargs, RESERVATION_HEADER)
        if reservation is not None:
            await self._finish("release", reservation, None)

    async def async_post_call_failure_hook(self, request_data, original_exception, user_api_key_dict, traceback_str=None):
        # A request the proxy refused before (or after) the model call.
        reservation = header(request_data or {}, RESERVATION_HEADER)
        if reservation is not None:
            await self._finish("release", reservation, None)

    # ------------------------------------------------------------- HTTP
    async def _finish(self, operation: str, reservation: str, cost: Optional[str]) -> None:
        if not self.api_url or reservation in self._finished:
            return
        body = '{"reservation_id": %s%s}' % (
            json.dumps(reservation),
            "" if cost is None else ', "cost": %s' % cost,
        )
        url = f"{self.api_url}/spend/{operation}"
        delay = 0.2
        for attempt in range(1, self.attempts + 1):
            try:
                headers = self._headers(url, body)
                async with httpx.AsyncClient(timeout=self.timeout) as client:
                    response = await client.post(url, content=body.encode(), headers=headers)
                if response.status_code == 200:
                    if len(self._finished) > 100_000:
                        self._finished.clear()
                    self._finished.add(reservation)
                    return
                if response.status_code < 500 and response.status_code != 429:
                    # 400 (a bad cost), 403 (signature), 404 (unknown id):
                    # sending it again would be refused again.
                    log.error(
                        "edge-budget: %s of %s answered %s: %s",
                        operation,
                        reservation.split(".")[0],
                        response.status_code,
                        response.text[:300],
                    )
                    return
                problem = f"{response.status_code} {response.text[:200]}"
            except Exception as e:  # network, signing: try again
                problem = repr(e)
            if attempt < self.attempts:
                await asyncio.sleep(delay)
                delay *= 2
        log.error(
            "edge-budget: %s of %s failed after %d attempts (%s); the reset job releases it after RESERVATION_TTL_SECONDS",
            operation,
            reservation.split(".")[0],
            self.attempts,
            problem,
        )

    def _headers(self, url: str, body: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if not self.sign:
            return headers
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        import botocore.session

        session = botocore.session.get_session()
        credentials = session.get_credentials()
        if credentials is None:
            raise RuntimeError("no AWS credentials to sign the settle request")
        region = self.region or session.get_config_variable("region") or "us-east-1"
        request = AWSRequest(method="POST", url=url, data=body.encode(), headers=headers)
        SigV4Auth(credentials.get_frozen_credentials(), "execute-api", region).add_auth(request)
        return dict(request.headers.items())


def _float(text: Optional[str]) -> Optional[float]:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


# `litellm_settings: callbacks: edge_budget_callback.settler`
settler = EdgeBudgetSettler()
