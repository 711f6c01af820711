"""An emulator of Stripe's Billing meter events endpoint (``POST /v1/billing/meter_events``).

It speaks what ``imagegen.infrastructure.billing.stripe_meter`` sends through the official SDK,
as Stripe's API reference describes it:

- Authentication is ``Authorization: Bearer <secret key>`` (or HTTP Basic with the key as the
  user name, as ``curl -u sk_test_…:`` sends it); a missing or wrong key is 401 with Stripe's
  error shape ``{"error": {"type", "message", ...}}`` (a wrong key is quoted masked, as Stripe
  does).
- The body is ``application/x-www-form-urlencoded`` with Stripe's bracket notation
  (``payload[stripe_customer_id]=cus_…``). Parameters: ``event_name`` (required, at most 100
  characters), ``payload`` (required, a hash of strings), ``identifier`` (at most 100; one is
  generated when absent), ``timestamp`` (an integer, Unix seconds; default now) and ``expand``.
  A missing parameter is 400 ``parameter_missing``, an unknown one 400 ``parameter_unknown``, a
  bad integer 400 ``parameter_invalid_integer`` (each with ``param``).
- **Identifiers are unique**: a second event with an identifier seen within
  ``dedupe_window_s`` (Stripe: "a rolling period of at least 24 hours") is refused with 400
  ``duplicate_meter_event`` ("An event already exists with identifier …"; with
  ``duplicate_code=False`` the error has the message only) and is not counted again.
- **Idempotency-Key**: the first result of a key whose request executed (2xx, 5xx) is saved
  and replayed (``Idempotent-Replayed: true``) for the same parameters; other parameters get
  400 ``idempotency_error``. Validation failures are not saved.
- **Asynchronous validation**: what Stripe checks after accepting an event is accepted here
  too (200) and then listed as an *error report* instead of being counted, with the codes of
  Stripe's ``v1.billing.meter.error_report_triggered`` event: ``no_meter`` (no meter has the
  event name; see ``meters``), ``meter_event_no_customer_defined`` (no customer key in the
  payload), ``meter_event_customer_not_found`` (``customers`` given and the customer is not
  in it), ``meter_event_invalid_value`` (the value is not a whole number),
  ``timestamp_too_far_in_past`` (over 35 days) and ``timestamp_in_future`` (over 5 minutes).
- Meter event adjustments are not emulated (the adapter does not use them).

Faults (``app.state.faults``): ``LATENCY``, ``RATE_LIMIT`` (429 ``rate_limit``, ``Retry-After``
when the fault sets ``retry_after``), ``SERVER_ERROR`` (``status``, default 500; a 409 answers
``lock_timeout``), ``AUTH_ERROR`` (401), ``BAD_REQUEST`` (400 ``parameter_invalid`` on
``payload[value]``), ``MALFORMED`` (200 whose body is not JSON) and ``TIMEOUT``: the event *is
recorded*, then the answer is held for ``delay`` seconds (default 3600) or until the client
hangs up — Stripe took it and the client never heard, the case at-least-once delivery exists
for.

Control API: ``POST`` / ``DELETE /_emulator/faults``, ``GET`` / ``DELETE /_emulator/requests``
(each request: method, path, headers without ``authorization``, ``authorized``, the form
``fields`` and the ``status``), ``GET /_emulator/meter_events`` (events counted, in order),
``GET /_emulator/error_reports``, ``GET /_emulator/usage`` (``{event_name: {customer: sum}}``)
and ``DELETE /_emulator/meter_events`` (forget every event, report and key).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imagegen.testing.emulators._control import control_routes
from imagegen.testing.emulators._faults import Fault, FaultKind, FaultPlan

__all__ = ["DEFAULT_API_KEY", "DEFAULT_EVENT_NAME", "create_app"]

DEFAULT_API_KEY: Final = "sk_test_imagegen_stripe_emulator"
DEFAULT_EVENT_NAME: Final = "imagegen_credits"
METER_EVENTS: Final = "/v1/billing/meter_events"
MAX_LENGTH: Final = 100
PAST_WINDOW_S: Final = 35 * 86_400
FUTURE_WINDOW_S: Final = 5 * 60
DAY_S: Final = 86_400.0
_PARAMS: Final = frozenset({"event_name", "payload", "identifier", "timestamp", "expand"})
_BRACKET: Final = re.compile(r"^([A-Za-z_]+)\[([^\[\]]*)\]$")
_WHOLE: Final = re.compile(r"^-?[0-9]+$")
_INTEGER: Final = re.compile(r"^-?[0-9]+$")


class _Reject(Exception):
    """An error answer in Stripe's shape, raised from deep in validation."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code is not None:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param is not None:
            error["param"] = self.param
        headers = {"request-id": _request_id(), **self.headers}
        return JSONResponse({"error": error}, status_code=self.status, headers=headers)


def create_app(
    *,
    api_key: str = DEFAULT_API_KEY,
    latency_s: float = 0.0,
    faults: FaultPlan | None = None,
    meters: Iterable[str] = (DEFAULT_EVENT_NAME,),
    customers: Iterable[str] | None = None,
    customer_payload_key: str = "stripe_customer_id",
    value_payload_key: str = "value",
    dedupe_window_s: float = DAY_S,
    duplicate_code: bool = True,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """An ASGI app emulating Stripe's meter events. ``meters`` are the event names that have a
    meter; ``customers``, when given, the customers that exist; ``clock`` gives Stripe's time
    (Unix seconds)."""
    plan = faults if faults is not None else FaultPlan(latency_s=latency_s)
    if faults is not None and latency_s:
        plan.latency_s = latency_s
    known_meters = frozenset(meters)
    known_customers = frozenset(customers) if customers is not None else None
    lock = threading.Lock()  # the control API may be read from the test's thread

    async def meter_events(request: Request) -> Response:
        record = _record(request)
        try:
            await _pause(plan.latency_s)
            _authenticate(request, api_key)
            fault = plan.take(request.url.path)
            early = await _early_fault(fault)
            if early is not None:
                record["status"] = early.status_code
                return early
            fields = await _form(request)
            record["fields"] = dict(fields)
            params = _parse(fields)
            key = request.headers.get("idempotency-key")
            fingerprint = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
            if key:
                saved = _replay(key, fingerprint)
                if saved is not None:
                    record["status"] = saved.status_code
                    record["replayed"] = True
                    return saved
            if fault is not None and fault.kind is FaultKind.LATENCY:
                await _pause(fault.delay)
            body = _create(params)
            if key:
                _save(key, fingerprint, 200, body)
            if fault is not None and fault.kind is FaultKind.TIMEOUT:
                # Taken, but the answer never arrives: the client gives up first.
                await _hold(request, fault.delay or 3600.0)
                record["status"] = 504
                return _Reject(504, "The request timed out.", type="api_error").response()
            if fault is not None and fault.kind is FaultKind.MALFORMED:
                record["status"] = 200
                return Response(b'{"object": "billing.meter_ev', media_type="application/json")
            record["status"] = 200
            return JSONResponse(body, headers={"request-id": _request_id()})
        except _Reject as reject:
            record["status"] = reject.status
            return reject.response()

    def _parse(fields: list[tuple[str, str]]) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for name, value in fields:
            match = _BRACKET.match(name)
            if match is not None:
                outer, inner = match.groups()
                if outer not in _PARAMS:
                    raise _unknown(outer)
                if outer == "payload":
                    if not inner:
                        raise _Reject(
                            400,
                            "Invalid hash",
                            code="parameter_invalid_hash",
                            param="payload",
                        )
                    params.setdefault("payload", {})[inner] = value
                else:
                    params.setdefault(outer, []).append(value)
                continue
            if name not in _PARAMS:
                raise _unknown(name)
            if name == "payload":
                raise _Reject(400, "Invalid hash", code="parameter_invalid_hash", param="payload")
            params[name] = value
        for name in ("event_name", "payload"):
            if name not in params or params[name] in ("", {}):
                raise _Reject(
                    400, f"Missing required param: {name}.", code="parameter_missing", param=name
                )
        for name in ("event_name", "identifier"):
            text = params.get(name)
            if isinstance(text, str) and len(text) > MAX_LENGTH:
                raise _Reject(
                    400,
                    f"Invalid string: {text[:20]}...; must be at most {MAX_LENGTH} characters",
                    code="string_length_exceeds_maximum",
                    param=name,
                )
        if "identifier" in params and not params["identifier"]:
            raise _Reject(
                400, "Invalid string: must not be empty", code="parameter_invalid_empty",
                param="identifier",
            )  # fmt: skip
        raw = params.get("timestamp")
        if raw is not None:
            if not _INTEGER.match(raw):
                raise _Reject(
                    400,
                    f"Invalid integer: {raw}",
                    code="parameter_invalid_integer",
                    param="timestamp",
                )
            params["timestamp"] = int(raw)
        return params

    def _create(params: dict[str, Any]) -> dict[str, Any]:
        now = clock()
        identifier = params.get("identifier") or f"emu_{uuid.uuid4().hex}"
        payload: dict[str, str] = params["payload"]
        timestamp = params.get("timestamp", int(now))
        event = {
            "object": "billing.meter_event",
            "created": int(now),
            "event_name": params["event_name"],
            "identifier": identifier,
            "livemode": False,
            "payload": payload,
            "timestamp": timestamp,
        }
        with lock:
            seen = app.state.identifiers.get(identifier)
            if seen is not None and now - seen < dedupe_window_s:
                app.state.duplicates.append(identifier)
                raise _Reject(
                    400,
                    f"An event already exists with identifier {identifier}.",
                    code="duplicate_meter_event" if duplicate_code else None,
                    param="identifier",
                )
            app.state.identifiers[identifier] = now
            problem = _async_problem(event, now)
            if problem is not None:
                app.state.error_reports.append({"code": problem, "identifier": identifier})
            else:
                app.state.meter_events.append(event)
        return event

    def _async_problem(event: dict[str, Any], now: float) -> str | None:
        """What Stripe reports later (``v1.billing.meter.error_report_triggered``)."""
        if event["event_name"] not in known_meters:
            return "no_meter"
        payload: dict[str, str] = event["payload"]
        customer = payload.get(customer_payload_key)
        if not customer:
            return "meter_event_no_customer_defined"
        if known_customers is not None and customer not in known_customers:
            return "meter_event_customer_not_found"
        if not _WHOLE.match(payload.get(value_payload_key, "")):
            return "meter_event_invalid_value"
        if event["timestamp"] < now - PAST_WINDOW_S:
            return "timestamp_too_far_in_past"
        if event["timestamp"] > now + FUTURE_WINDOW_S:
            return "timestamp_in_future"
        return None

    def _replay(key: str, fingerprint: str) -> Response | None:
        with lock:
            saved = app.state.idempotency.get(key)
        if saved is None:
            return None
        saved_fingerprint, status, body = saved
        if saved_fingerprint != fingerprint:
            raise _Reject(
                400,
                "Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{key}' if you meant to "
                "execute a different request.",
                type="idempotency_error",
            )
        headers = {"request-id": _request_id(), "idempotent-replayed": "true"}
        return JSONResponse(body, status_code=status, headers=headers)

    def _save(key: str, fingerprint: str, status: int, body: dict[str, Any]) -> None:
        with lock:
            app.state.idempotency[key] = (fingerprint, status, body)

    def _record(request: Request) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "method": request.method,
            "path": request.url.path,
            "headers": {k: v for k, v in request.headers.items() if k.lower() != "authorization"},
            "authorized": "authorization" in request.headers,
            "fields": {},
            "status": None,
        }
        app.state.requests.append(entry)
        return entry

    async def list_events(request: Request) -> Response:
        with lock:
            return JSONResponse(list(app.state.meter_events))

    async def clear_events(request: Request) -> Response:
        with lock:
            app.state.meter_events.clear()
            app.state.error_reports.clear()
            app.state.identifiers.clear()
            app.state.duplicates.clear()
            app.state.idempotency.clear()
        return JSONResponse({"cleared": True})

    async def list_error_reports(request: Request) -> Response:
        with lock:
            return JSONResponse(list(app.state.error_reports))

    async def usage(request: Request) -> Response:
        with lock:
            return JSONResponse(usage_totals(app))

    app = Starlette(
        routes=[
            Route(METER_EVENTS, meter_events, methods=["POST"]),
            *control_routes(),
            Route("/_emulator/meter_events", list_events, methods=["GET"]),
            Route("/_emulator/meter_events", clear_events, methods=["DELETE"]),
            Route("/_emulator/error_reports", list_error_reports, methods=["GET"]),
            Route("/_emulator/usage", usage, methods=["GET"]),
        ]
    )
    app.state.faults = plan
    app.state.requests = []
    app.state.api_key = api_key
    app.state.meter_events = []  # counted events, in arrival order
    app.state.error_reports = []  # accepted, then refused by the asynchronous validation
    app.state.duplicates = []  # identifiers refused as duplicates
    app.state.identifiers = {}  # identifier -> when first seen (clock seconds)
    app.state.idempotency = {}  # Idempotency-Key -> (params fingerprint, status, body)
    app.state.value_payload_key = value_payload_key
    app.state.customer_payload_key = customer_payload_key
    return app


def usage_totals(app: Starlette) -> dict[str, dict[str, int]]:
    """``{event_name: {customer: sum of values}}`` over the counted events (a ``sum`` meter)."""
    totals: dict[str, dict[str, int]] = {}
    for event in app.state.meter_events:
        payload = event["payload"]
        customer = payload[app.state.customer_payload_key]
        per_meter = totals.setdefault(event["event_name"], {})
        per_meter[customer] = per_meter.get(customer, 0) + int(payload[app.state.value_payload_key])
    return totals


# --- request handling ----------------------------------------------------------------------------


async def _pause(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


def _request_id() -> str:
    return f"req_{uuid.uuid4().hex[:14]}"


def _authenticate(request: Request, api_key: str) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    token = credentials.strip()
    if scheme.lower() == "basic":
        try:
            token = base64.b64decode(token, validate=True).decode().partition(":")[0]
        except (ValueError, UnicodeDecodeError):
            token = ""
    elif scheme.lower() != "bearer":
        token = ""
    if not token:
        raise _Reject(
            401,
            "You did not provide an API key. You need to provide your API key in the "
            "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
            "YOUR_SECRET_KEY').",
        )
    if token != api_key:
        raise _Reject(401, f"Invalid API Key provided: {_mask(token)}")


def _mask(key: str) -> str:
    prefix = key[:8] if key.startswith(("sk_", "rk_")) else ""
    return f"{prefix}{'*' * 12}{key[-4:]}" if len(key) > 12 else "*" * len(key)


def _unknown(name: str) -> _Reject:
    return _Reject(400, f"Received unknown parameter: {name}", code="parameter_unknown", param=name)


async def _form(request: Request) -> list[tuple[str, str]]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise _Reject(
            400,
            "Invalid request: the body must be application/x-www-form-urlencoded.",
            code="parameter_invalid",
        )
    body = await request.body()
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise _Reject(400, "Invalid request body.", code="parameter_invalid") from None


async def _early_fault(fault: Fault | None) -> Response | None:
    """Faults that strike before the request is read (nothing is recorded)."""
    if fault is None:
        return None
    kind = fault.kind
    if kind is FaultKind.AUTH_ERROR:
        return _Reject(401, "Invalid API Key provided: sk_test_************xxxx").response()
    if kind is FaultKind.RATE_LIMIT:
        headers = {}
        if fault.retry_after is not None:
            headers["retry-after"] = f"{fault.retry_after:g}"
        return _Reject(
            429,
            "Request rate limit exceeded. Learn more about rate limits here "
            "https://stripe.com/docs/rate-limits.",
            code="rate_limit",
            headers=headers,
        ).response()
    if kind is FaultKind.SERVER_ERROR:
        status = fault.status or 500
        if status == 409:
            return _Reject(
                409,
                "This object cannot be accessed right now because another API request or "
                "Stripe process is currently accessing it.",
                code="lock_timeout",
            ).response()
        return _Reject(
            status, "An unknown error occurred", type="api_error" if status >= 500 else
            "invalid_request_error",
        ).response()  # fmt: skip
    if kind is FaultKind.BAD_REQUEST:
        return _Reject(
            fault.status or 400,
            "Invalid payload[value]: the value is not valid for this meter.",
            code="parameter_invalid",
            param="payload[value]",
        ).response()
    return None


async def _hold(request: Request, seconds: float) -> None:
    """Hang like a stuck upstream, but let go as soon as the client hangs up."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await request.is_disconnected():
            return
        await asyncio.sleep(0.02)
