"""Webhooks: a tenant's endpoints, subscribed to event types, and the deliveries of events
to them.

An **endpoint** is an http(s) URL a tenant registered with the event types it wants
(``*`` for all) and a signing secret in the Standard Webhooks format (``whsec_`` + base64 of
random bytes). A **delivery** is one event for one endpoint: its id in the ``webhook-id``
header is the event's id (the outbox id), the same on every attempt, so receivers dedupe on
it. A delivery is pending until a 2xx answer (succeeded); a failed attempt (failed) is retried
on a backoff schedule and, after the last attempt, the delivery is dead. Redelivering starts it
over.

The address policy (which IP addresses an outgoing request may reach) is here too: only
public unicast addresses, unless the operator allows private ones.
"""

from __future__ import annotations

import enum
import ipaddress
import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import attrs

from imagegen.domain.errors import InvalidParameter

SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
SECRET_BYTES = 32  # the spec asks for 24-64
ALL_EVENTS = "*"
# The events a tenant can subscribe to (the outbox has more; these are the public ones).
EVENT_TYPES = frozenset(
    {
        "generation.succeeded",
        "generation.failed",
        "generation.canceled",
        "asset.created",
        "credits.threshold_reached",
    }
)
# Standard Webhooks' suggested schedule: the wait before attempt 2, 3, … (attempt 1 is at once).
DEFAULT_SCHEDULE: tuple[timedelta, ...] = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
)
MAX_URL_LENGTH = 2000
MAX_ERROR_LENGTH = 300


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # not sent yet
    FAILED = "failed"  # the last attempt failed; the next one is scheduled
    SUCCEEDED = "succeeded"
    DEAD = "dead"  # every attempt failed; only a redelivery sends it again


@attrs.define
class WebhookEndpoint:
    id: str
    tenant_id: str
    url: str
    event_types: tuple[str, ...]
    secret: str = attrs.field(repr=False)
    enabled: bool
    created_at: datetime

    def wants(self, event_type: str) -> bool:
        return self.enabled and (ALL_EVENTS in self.event_types or event_type in self.event_types)


@attrs.define
class WebhookDelivery:
    id: str
    endpoint_id: str
    tenant_id: str
    event_id: str  # the outbox id: the webhook-id header, the same on every attempt
    event_type: str
    payload: str  # the exact JSON body that is signed and sent
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime
    last_status_code: int | None = None
    last_error: str | None = None

    def succeeded(self, status_code: int, now: datetime) -> None:
        self.attempts += 1
        self.status = DeliveryStatus.SUCCEEDED
        self.last_status_code, self.last_error = status_code, None
        self.next_attempt_at = None
        self.updated_at = now

    def failed(
        self,
        status_code: int | None,
        error: str,
        now: datetime,
        schedule: Sequence[timedelta],
        jitter: float = 0.0,
    ) -> None:
        """Schedule the next attempt, or give up (dead) after ``len(schedule) + 1``."""
        self.attempts += 1
        self.last_status_code, self.last_error = status_code, error[:MAX_ERROR_LENGTH]
        self.updated_at = now
        delay = backoff(self.attempts, schedule, jitter)
        if delay is None:
            self.status, self.next_attempt_at = DeliveryStatus.DEAD, None
        else:
            self.status, self.next_attempt_at = DeliveryStatus.FAILED, now + delay

    def redeliver(self, now: datetime) -> None:
        """Send again at once, with the attempts counted anew (same event id)."""
        self.status, self.attempts, self.next_attempt_at = DeliveryStatus.PENDING, 0, now
        self.updated_at = now


def backoff(attempts: int, schedule: Sequence[timedelta], jitter: float = 0.0) -> timedelta | None:
    """The wait after ``attempts`` failed attempts, or None when no attempt is left. ``jitter``
    (0-1) spreads it by up to that fraction either way so failed receivers are not hit by a
    herd."""
    if attempts < 1 or attempts > len(schedule):
        return None
    delay = schedule[attempts - 1]
    if jitter:
        delay *= 1 + random.uniform(-jitter, jitter)
    return delay


def check_event_types(values: Sequence[str]) -> tuple[str, ...]:
    types = tuple(dict.fromkeys(v.strip() for v in values if v.strip()))
    if not types:
        raise InvalidParameter("Subscribe an endpoint to at least one event type (or '*').")
    unknown = [t for t in types if t != ALL_EVENTS and t not in EVENT_TYPES]
    if unknown:
        allowed = ", ".join(sorted(EVENT_TYPES))
        raise InvalidParameter(
            f"Unknown event type {unknown[0]!r}; one of {allowed} or '*'.", event_type=unknown[0]
        )
    return types


def check_url(url: str) -> str:
    """An http(s) URL with a host and no credentials (its addresses are checked separately)."""
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise InvalidParameter(f"A webhook URL is at most {MAX_URL_LENGTH} characters.")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise InvalidParameter("The webhook URL is not a valid URL.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidParameter("A webhook URL is http:// or https:// with a host.")
    if parts.username is not None or parts.password is not None:
        raise InvalidParameter("A webhook URL may not carry credentials (user:password@).")
    if parts.fragment:
        raise InvalidParameter("A webhook URL has no #fragment.")
    return url


def redact_url(url: str) -> str:
    """The URL without its query (which may carry a token), for logs and errors."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "…" if parts.query else "", ""))


IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_public(address: IpAddress) -> bool:
    """A global unicast address: not loopback, private, link-local, multicast, reserved,
    unspecified, shared (CGNAT) or documentation; IPv4-mapped IPv6 is judged as IPv4."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return is_public(mapped)
    return address.is_global and not (
        address.is_multicast
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_unspecified
        or address.is_private
    )


def check_addresses(host: str, addresses: Sequence[str], allow_private: bool) -> None:
    """Refuse a host that resolves to nothing, or to any address that is not public (unless
    private addresses are allowed)."""
    if not addresses:
        raise InvalidParameter(f"The webhook host {host!r} does not resolve.", host=host)
    if allow_private:
        return
    for text in addresses:
        if not is_public(ipaddress.ip_address(text.split("%", 1)[0])):
            raise InvalidParameter(
                f"The webhook host {host!r} resolves to a loopback, private or reserved "
                "address; webhooks go only to public addresses.",
                host=host,
            )
