"""Stripe usage metering: ``StripeUsageMeter`` reports usage events as Stripe Billing meter
events, through the official ``stripe`` SDK (``pip install 'imagegen[stripe]'``).

One usage event is one ``POST /v1/billing/meter_events`` (form-encoded, ``Authorization:
Bearer <secret key>``), sent with the SDK's async client (``create_async`` over httpx, so the
event loop is never blocked)::

    event_name                       the meter's event name (default ``imagegen_credits``)
    payload[stripe_customer_id]      the tenant's Stripe customer (``MeterableUsage.customer_id``)
    payload[value]                   the event's credits, a whole number as a string
    identifier                       the usage event's id (``use_<reservation id>``)
    timestamp                        when the usage occurred, in Unix seconds

What Stripe documents, and what we do with it
--------------------------------------------
- **identifier** — "A unique identifier for the event. [...] We will enforce uniqueness within
  a rolling period of at least 24 hours." (max 100 characters). The usage event's id is derived
  from the capture, so every re-send of one event carries the same identifier and Stripe counts
  it once. A repeat is *refused* with a 400 (``duplicate_meter_event``; Stripe's v1 answer may
  carry only the message "An event already exists with identifier …"): both mean "already
  reported" and ``report_outcome`` returns ``ReportOutcome.DUPLICATE`` — success.
- **Idempotency-Key** — Stripe "sav[es] the resulting status code and body of the first
  request made for any given idempotency key, regardless of whether it succeeds or fails [...]
  including 500 errors", and errors when a key comes back with other parameters. A key derived
  from the event would therefore replay a 500 for a day, so each report lets the SDK generate
  a fresh key (it would reuse it for its own retries, which are off: see below). The
  ``identifier`` is what deduplicates across attempts.
- **timestamp** — "Must be within the past 35 calendar days or up to 5 minutes in the
  future." An event from the future (our clock ahead of Stripe's by more than the margin) is
  sent as *now*. An event older than the window (kept by a configurable safety margin of an
  hour below 35 days) is **not sent and not moved**: moving it into a later period would bill it
  in the wrong invoice, which is a billing decision, not an adapter's. It raises
  ``MeteringError(event_rejected=True, reason="timestamp_too_far_in_past")``; the relay reports
  it as failed and reads past it.
- **value** — "The numerical usage value in the payload only accepts whole number values" and
  "You can also fix incorrectly recorded usage data by recording negative quantities. If the
  overall cycle usage is negative, Stripe reports the invoice line item usage quantity as 0."
  So a refund (negative credits) is reported as what it is: a meter event with a negative
  value, under its own identifier (``use_<ledger entry id>``). We do not use meter event
  adjustments (``POST /v1/billing/meter_event_adjustments``): they cancel a whole event, "only
  [...] events sent to Stripe within the last 24 hours", and do not touch finalized invoices —
  a refund days later, or a partial one, cannot be expressed with them. The meter must
  aggregate with ``sum`` (a ``count`` meter would count a refund as one more event).
- **Asynchronous validation** — Stripe validates the customer mapping and the value after
  accepting the request; failures arrive as ``v1.billing.meter.error_report_triggered``
  events (``meter_event_customer_not_found``, ``no_meter``, ``meter_event_invalid_value``…),
  not as a refusal here. Subscribe to that webhook to see them.
- **Rate limits** — 1,000 calls per second in live mode and "one concurrent call per customer
  per meter". The relay sends one report at a time.

Errors, translated here and nowhere else
----------------------------------------
===================================================  ============================================
What Stripe (or the network) did                     ``MeteringError``
===================================================  ============================================
400 duplicate identifier                             none: ``ReportOutcome.DUPLICATE``
429, 409 (lock / concurrent call), 5xx, connection   ``retryable=True`` (the retry wrapper and the
error, timeout, a 2xx we cannot read,                relay handle it; a re-send is deduplicated
``idempotency_error``                                by the identifier)
400 about the event (``param`` other than            ``event_rejected=True`` (this event will be
``event_name``)                                      refused again; others are fine)
401, 403, 404, 400 on ``event_name``, other          neither: the meter refuses *us*; nothing
statuses, no key, no SDK                             gets through until the configuration is fixed
===================================================  ============================================

The SDK runs with ``max_network_retries=0``: retries belong to
``imagegen.infrastructure.billing.resilience.RetryingUsageMeter`` and the relay, which must see
every failure. The secret key stays a ``SecretStr`` until the client is built; it is never in
a message, a log line or a ``repr``; mapped errors are raised outside the ``except`` block so
they do not chain to the SDK's exception (whose request held the ``Authorization`` header), and
Stripe's own messages are scrubbed of anything that looks like a key.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import weakref
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from pydantic import SecretStr

from imagegen.application.ports import Clock, MeterableUsage
from imagegen.application.use_cases.metering import ReportOutcome
from imagegen.domain.errors import ConfigurationError, MeteringError

if TYPE_CHECKING:
    from stripe import HTTPXClient, StripeClient, StripeError
    from stripe._base_address import BaseAddresses
    from stripe.params.billing import MeterEventCreateParams

log = logging.getLogger("imagegen.metering")

NAME: Final = "stripe"
KEY_VARIABLES: Final = "IMAGEGEN_STRIPE_API_KEY (or STRIPE_API_KEY)"
INSTALL_HINT: Final = "pip install 'imagegen[stripe]'"
DEFAULT_EVENT_NAME: Final = "imagegen_credits"

MAX_IDENTIFIER: Final = 100  # Stripe: identifier "Max length: 100"
MAX_EVENT_NAME: Final = 100  # Stripe: event_name "Max length: 100"
PAST_WINDOW: Final = timedelta(days=35)  # "within the past 35 calendar days"
FUTURE_WINDOW: Final = timedelta(minutes=5)  # "or up to 5 minutes in the future"
_MAX_MESSAGE: Final = 300
# Secret and restricted keys ("sk_live_…", "rk_test_…"); Stripe's own messages mask them
# ("sk_test_****abcd"), which still gives away a prefix and the last characters.
_KEY_RE: Final = re.compile(r"\b[sr]k_(?:live|test)_[A-Za-z0-9*]+")
_DUPLICATE_CODE: Final = "duplicate_meter_event"
_DUPLICATE_RE: Final = re.compile(
    r"already exists with identifier|duplicate identifier", re.IGNORECASE
)


class _UtcClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class StripeUsageMeter:
    """``UsageMeter`` over Stripe Billing meter events (and ``OutcomeReportingMeter``).

    ``api_key`` may be None: the meter is still built (so a health check can say what is
    wrong), and every report raises ``MeteringError`` naming the variable to set.
    ``api_base`` points it elsewhere (the emulator: ``http://127.0.0.1:8010``);
    ``customer_payload_key`` / ``value_payload_key`` follow the meter's payload key overrides;
    ``past_margin`` is how far inside Stripe's 35-day window an event must be to be sent.
    """

    def __init__(
        self,
        *,
        api_key: SecretStr | None,
        event_name: str = DEFAULT_EVENT_NAME,
        api_base: str | None = None,
        timeout_s: float = 30.0,
        clock: Clock | None = None,
        customer_payload_key: str = "stripe_customer_id",
        value_payload_key: str = "value",
        past_margin: timedelta = timedelta(hours=1),
    ) -> None:
        if not (timeout_s > 0 and math.isfinite(timeout_s)):
            raise ValueError("timeout_s must be a finite number of seconds > 0")
        if not event_name.strip() or len(event_name) > MAX_EVENT_NAME:
            raise ConfigurationError(
                f"A Stripe meter's event name is 1 to {MAX_EVENT_NAME} characters.",
                provider=NAME,
            )
        if not customer_payload_key or not value_payload_key:
            raise ConfigurationError("Stripe's payload keys cannot be empty.", provider=NAME)
        if not timedelta(0) <= past_margin < PAST_WINDOW:
            raise ValueError("past_margin must be between 0 and 35 days")
        self._api_key = api_key
        self._event_name = event_name
        self._api_base = api_base.rstrip("/") if api_base else None
        self._timeout_s = timeout_s
        self._clock: Clock = clock if clock is not None else _UtcClock()
        self._customer_key = customer_payload_key
        self._value_key = value_payload_key
        self._past_margin = past_margin
        # One client per event loop: the httpx pool is bound to the loop that opened it.
        self._client: StripeClient | None = None
        self._http: HTTPXClient | None = None
        self._client_loop: weakref.ref[asyncio.AbstractEventLoop] | None = None

    def __repr__(self) -> str:
        return f"StripeUsageMeter(event_name={self._event_name!r}, api_base={self._api_base!r})"

    @property
    def event_name(self) -> str:
        return self._event_name

    async def report(self, usage: MeterableUsage) -> None:
        await self.report_outcome(usage)

    async def report_outcome(self, usage: MeterableUsage) -> ReportOutcome:
        """Send one meter event; ``DUPLICATE`` if Stripe already had its identifier."""
        params = self._params(usage)
        client = self._get_client()  # checks the key and that the SDK is installed
        mapped: MeteringError | None = None
        duplicate = False
        try:
            created = await client.v1.billing.meter_events.create_async(params)
        except Exception as exc:  # narrowed in _map_error; anything it does not know re-raises
            if self._is_duplicate(exc):
                duplicate = True
            else:
                mapped = self._map_error(exc, usage.event.id)
                if mapped is None:
                    raise
        if mapped is not None:
            # Raised here, outside the except block, so it does not chain to the SDK's error.
            raise mapped
        if duplicate:
            log.info(
                "Stripe already had meter event %s (a re-send): counted once", params["identifier"]
            )
            return ReportOutcome.DUPLICATE
        if getattr(created, "identifier", None) != params["identifier"]:
            raise MeteringError(
                "Stripe's answer to a meter event does not name the event sent.",
                retryable=True,
                provider=NAME,
                reason="protocol",
                event_id=usage.event.id,
            )
        return ReportOutcome.RECORDED

    async def aclose(self) -> None:
        """Close the HTTP connections of the client built on the running loop, if any."""
        http, self._http, self._client, self._client_loop = self._http, None, None, None
        if http is not None:
            await http.close_async()  # type: ignore[no-untyped-call]

    # --- the request ---------------------------------------------------------------------------

    def _params(self, usage: MeterableUsage) -> MeterEventCreateParams:
        """The form parameters; raises ``MeteringError(event_rejected=True)`` for an event that
        Stripe would refuse (checked before anything is sent)."""
        event = usage.event
        if not usage.customer_id.strip():
            raise MeteringError(
                f"Usage event {event.id} has no Stripe customer.",
                event_rejected=True,
                provider=NAME,
                reason="no_customer",
                event_id=event.id,
            )
        if not event.id or len(event.id) > MAX_IDENTIFIER:
            raise MeteringError(
                f"A Stripe meter event identifier is 1 to {MAX_IDENTIFIER} characters; "
                f"usage event {event.id[:MAX_IDENTIFIER]}… is longer.",
                event_rejected=True,
                provider=NAME,
                reason="identifier_too_long",
                event_id=event.id[:MAX_IDENTIFIER],
            )
        return {
            "event_name": self._event_name,
            "payload": {
                self._customer_key: usage.customer_id,
                self._value_key: str(int(event.credits)),
            },
            "identifier": event.id,
            "timestamp": self._timestamp(event.id, event.occurred_at),
        }

    def _timestamp(self, event_id: str, occurred_at: datetime) -> int:
        now = self._clock.now()
        if occurred_at.tzinfo is None:
            occurred_at = occurred_at.replace(tzinfo=UTC)
        if occurred_at > now + FUTURE_WINDOW:
            log.warning(
                "usage event %s occurred after now (%s > %s): sent with the current time",
                event_id,
                occurred_at.isoformat(),
                now.isoformat(),
            )
            occurred_at = now
        oldest = now - PAST_WINDOW + self._past_margin
        if occurred_at < oldest:
            raise MeteringError(
                f"Usage event {event_id} occurred on {occurred_at:%Y-%m-%d}, outside the 35 "
                "days in which Stripe accepts meter events; it was not sent (report it by "
                "hand, or as a correction in the current period).",
                event_rejected=True,
                provider=NAME,
                reason="timestamp_too_far_in_past",
                event_id=event_id,
            )
        return int(occurred_at.timestamp())

    # --- the client ----------------------------------------------------------------------------

    def _get_client(self) -> StripeClient:
        loop = asyncio.get_running_loop()
        if (
            self._client is not None
            and self._client_loop is not None
            and self._client_loop() is loop
        ):
            return self._client
        key = self._api_key.get_secret_value().strip() if self._api_key is not None else ""
        if not key:
            raise MeteringError(
                f"No Stripe secret key is configured; set {KEY_VARIABLES}.",
                provider=NAME,
                reason="no_key",
            )
        try:
            import httpx  # noqa: F401  (the SDK's async client needs it)
            from stripe import HTTPXClient, StripeClient
        except ImportError:
            raise ConfigurationError(
                f"Stripe metering needs the stripe package; install it with {INSTALL_HINT}.",
                provider=NAME,
            ) from None
        http = HTTPXClient(timeout=self._timeout_s)
        base: BaseAddresses | None = {"api": self._api_base} if self._api_base else None
        self._client = StripeClient(
            key, base_addresses=base, max_network_retries=0, http_client=http
        )
        self._http = http
        self._client_loop = weakref.ref(loop)
        return self._client

    # --- errors --------------------------------------------------------------------------------

    def _is_duplicate(self, exc: Exception) -> bool:
        import stripe

        if not isinstance(exc, stripe.InvalidRequestError) or exc.http_status != 400:
            return False
        if exc.code == _DUPLICATE_CODE:
            return True
        message = exc.user_message
        return isinstance(message, str) and bool(_DUPLICATE_RE.search(message))

    def _map_error(self, exc: Exception, event_id: str) -> MeteringError | None:
        """The ``MeteringError`` for an SDK / transport failure; None for anything else."""
        import stripe

        if not isinstance(exc, stripe.StripeError):
            return None
        status = exc.http_status
        details: dict[str, Any] = {"provider": NAME, "event_id": event_id}
        if status is not None:
            details["status"] = status
        if exc.request_id:
            details["request_id"] = exc.request_id
        if isinstance(exc, stripe.APIConnectionError):
            import httpx

            timeout = isinstance(exc.__cause__, httpx.TimeoutException)
            what = (
                f"Stripe did not answer within {self._timeout_s:g} seconds."
                if timeout
                else "Could not connect to Stripe (the connection failed or was cut)."
            )
            return MeteringError(
                what, retryable=True, reason="timeout" if timeout else "connection", **details
            )
        message = self._stripe_message(exc)
        said = f": {message}" if message else "."
        if exc.code:
            details["stripe_code"] = exc.code
        if isinstance(exc, stripe.RateLimitError):
            retry_after = _retry_after(exc.headers)
            if retry_after is not None:
                details["retry_after"] = retry_after
            return MeteringError(
                f"Stripe rate-limited the meter event (HTTP {status}).",
                retryable=True,
                reason="rate_limited",
                **details,
            )
        if isinstance(exc, stripe.AuthenticationError):
            # Stripe's words here quote the (masked) key: leave them out.
            return MeteringError(
                f"Stripe refused the secret key (HTTP {status}); check {KEY_VARIABLES}.",
                reason="authentication",
                **details,
            )
        if isinstance(exc, stripe.PermissionError):
            return MeteringError(
                f"Stripe denied access to meter events (HTTP {status}){said} A restricted key "
                "needs write access to Billing meter events.",
                reason="permission",
                **details,
            )
        if isinstance(exc, stripe.IdempotencyError):
            # Another request used the key: a fresh one (the next attempt's) will do.
            return MeteringError(
                f"Stripe refused the request's idempotency key{said}",
                retryable=True,
                reason="idempotency",
                **details,
            )
        if isinstance(exc, stripe.InvalidRequestError):
            param = exc.param if isinstance(exc.param, str) else None
            if param:
                details["param"] = param
            if status == 400 and param != "event_name":
                return MeteringError(
                    f"Stripe refused meter event {event_id}{said}",
                    event_rejected=True,
                    reason="invalid_request",
                    **details,
                )
            return MeteringError(
                f"Stripe refused the meter configuration (HTTP {status}){said} "
                "Check the event name and the API base address.",
                reason="configuration",
                **details,
            )
        if status is None or status == 409 or status >= 500 or 200 <= status < 300:
            # 409: a concurrent call for the same customer and meter (or a lock); a 2xx the SDK
            # could not read may have been recorded: either way a re-send is deduplicated.
            return MeteringError(
                f"Stripe failed to take the meter event (HTTP {status}).",
                retryable=True,
                reason="unavailable" if status is None or status >= 500 else "conflict",
                **details,
            )
        return MeteringError(
            f"Stripe answered the meter event with HTTP {status}{said}",
            reason="unexpected_status",
            **details,
        )

    def _stripe_message(self, exc: StripeError) -> str:
        """Stripe's message, without anything that looks like a key, on one short line."""
        text = exc.user_message
        if not isinstance(text, str):
            return ""
        if self._api_key is not None:
            secret = self._api_key.get_secret_value().strip()
            if secret:
                text = text.replace(secret, "***")
        text = _KEY_RE.sub("sk_***", text)
        text = " ".join(text.split())
        if len(text) > _MAX_MESSAGE:
            text = text[: _MAX_MESSAGE - 1].rstrip() + "…"
        if text and not text.endswith((".", "…", "!", "?")):
            text += "."
        return text


def _retry_after(headers: Any) -> float | None:
    try:
        raw = headers.get("retry-after") if headers is not None else None
        value = float(raw) if raw is not None else math.nan
    except (TypeError, ValueError, AttributeError):
        return None
    return max(0.0, value) if math.isfinite(value) else None


__all__ = ["DEFAULT_EVENT_NAME", "INSTALL_HINT", "StripeUsageMeter"]
