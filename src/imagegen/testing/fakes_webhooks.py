"""In-memory fakes of the webhook ports: the outbox's read side (``OutboxRepository``), the
endpoints and deliveries (``WebhookRepository``), and a recording ``WebhookTransport``.

``InMemoryUnitOfWork`` carries the repositories as ``uow.outbox`` and ``uow.webhooks``, like
the SQL unit of work, so ``ManageWebhooks`` and ``DeliverWebhooks`` run with no database::

    import secrets
    from imagegen.application.use_cases.webhooks import DeliverWebhooks, ManageWebhooks
    from imagegen.testing import (
        InMemoryUnitOfWorkFactory, ManualClock, RecordingWebhookTransport, SequentialIds,
    )

    uow, clock, ids = InMemoryUnitOfWorkFactory(), ManualClock(), SequentialIds()
    transport = RecordingWebhookTransport()
    manage = ManageWebhooks(uow=uow, transport=transport, clock=clock, ids=ids,
                            randomness=secrets)
    dispatcher = DeliverWebhooks(uow=uow, transport=transport, clock=clock, ids=ids)
    await manage.create("t1", "https://hooks.example.com/in", ["*"])
    ...                                    # commit a change that records a tenant's event
    transport.answer_next(500)             # the first attempt fails: retried on the schedule
    await dispatcher.run_once()
    clock.advance(seconds=6)              # the schedule's first wait: 5 s, ± 10 % jitter
    await dispatcher.run_once()
    assert [s.status_code for s in transport.sent] == [500, 200]

The semantics are the SQL adapters' (and the contract tests pin them): nothing a transaction
writes is seen by others before ``commit()``; ``unpublished`` and ``due`` lock the rows they
return until the transaction ends and skip rows other open transactions locked (PostgreSQL's
``FOR UPDATE SKIP LOCKED``); a delivery refers to a stored endpoint and is unique per
(endpoint, event); removing an endpoint removes its deliveries; ``save_delivery`` of an
unknown delivery changes nothing. What the schema would refuse raises ``ValueError``.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import attrs

from imagegen.application.webhook_ports import OutboxEvent, SendResult
from imagegen.domain.webhooks import DeliveryStatus, WebhookDelivery, WebhookEndpoint

__all__ = [
    "InMemoryOutboxRepository",
    "InMemoryWebhookRepository",
    "RecordingWebhookTransport",
    "Sent",
]

_DUE = (DeliveryStatus.PENDING, DeliveryStatus.FAILED)


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("naive datetimes are not stored; use UTC-aware ones")
    return value.astimezone(UTC)


def _utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else _utc(value)


def _stored_endpoint(endpoint: WebhookEndpoint) -> WebhookEndpoint:
    return attrs.evolve(
        endpoint, event_types=tuple(endpoint.event_types), created_at=_utc(endpoint.created_at)
    )


def _stored_delivery(delivery: WebhookDelivery) -> WebhookDelivery:
    return attrs.evolve(
        delivery,
        next_attempt_at=_utc_or_none(delivery.next_attempt_at),
        created_at=_utc(delivery.created_at),
        updated_at=_utc(delivery.updated_at),
    )


@attrs.define
class _OutboxRow:
    event: OutboxEvent
    published_at: datetime | None = None


@attrs.define
class _WebhookTables:
    endpoints: dict[str, WebhookEndpoint] = attrs.field(factory=dict)
    deliveries: dict[str, WebhookDelivery] = attrs.field(factory=dict)


class WebhookState:
    """The committed outbox, endpoints and deliveries of one ``InMemoryUnitOfWorkFactory``,
    and the row locks open transactions hold on them."""

    def __init__(self) -> None:
        self.committed = _WebhookTables()
        self.outbox: dict[str, _OutboxRow] = {}
        self.locks: dict[str, object] = {}  # "evt:<id>" / "whd:<id>" → the owning transaction
        self.guard = threading.RLock()

    @classmethod
    def of(cls, owner: Any) -> WebhookState:
        """The state kept on ``owner`` (the unit-of-work factory), created on first use."""
        state = getattr(owner, "_webhook_state", None)
        if state is None:
            state = cls()
            owner._webhook_state = state
        assert isinstance(state, WebhookState)
        return state

    def append_events(self, events: Sequence[OutboxEvent]) -> None:
        """Store committed events (called by the unit of work's commit)."""
        with self.guard:
            for event in events:
                if event.id in self.outbox:
                    raise ValueError(f"outbox event {event.id} is already stored")
                self.outbox[event.id] = _OutboxRow(event)


class WebhookTransaction:
    """One transaction's webhook writes, applied to ``WebhookState`` on commit."""

    def __init__(self, state: WebhookState) -> None:
        self.state = state
        self.pending = _WebhookTables()
        self.removed_endpoints: set[str] = set()
        self.inserted_endpoints: set[str] = set()
        self.inserted_deliveries: set[str] = set()
        self.published: dict[str, datetime] = {}
        self.outbox = InMemoryOutboxRepository(self)
        self.webhooks = InMemoryWebhookRepository(self)

    # --- reads: committed rows overlaid with this transaction's writes ----------------------

    def endpoints(self) -> dict[str, WebhookEndpoint]:
        rows = {**self.state.committed.endpoints, **self.pending.endpoints}
        for endpoint_id in self.removed_endpoints:
            rows.pop(endpoint_id, None)
        return rows

    def deliveries(self) -> dict[str, WebhookDelivery]:
        rows = {**self.state.committed.deliveries, **self.pending.deliveries}
        return {k: d for k, d in rows.items() if d.endpoint_id not in self.removed_endpoints}

    def published_at(self, event_id: str) -> datetime | None:
        if event_id in self.published:
            return self.published[event_id]
        row = self.state.outbox.get(event_id)
        return row.published_at if row is not None else None

    # --- row locks (FOR UPDATE SKIP LOCKED) --------------------------------------------------

    def lockable(self, key: str) -> bool:
        owner = self.state.locks.get(key)
        return owner is None or owner is self

    def lock(self, key: str) -> None:
        self.state.locks[key] = self

    # --- the transaction's end ---------------------------------------------------------------

    def check(self) -> None:
        """Raise ``ValueError`` for what the schema would refuse given what other transactions
        committed meanwhile (called under the factory's guard, before anything is applied)."""
        committed = self.state.committed
        clash = self.inserted_endpoints & committed.endpoints.keys()
        clash |= self.inserted_deliveries & committed.deliveries.keys()
        if clash:
            raise ValueError(f"{sorted(clash)} were stored by another transaction")
        endpoints = {**committed.endpoints, **self.pending.endpoints}
        taken = {(d.endpoint_id, d.event_id) for d in committed.deliveries.values()}
        for delivery_id in self.inserted_deliveries:
            delivery = self.pending.deliveries[delivery_id]
            if delivery.endpoint_id not in endpoints or delivery.endpoint_id in (
                self.removed_endpoints
            ):
                raise ValueError(
                    f"delivery {delivery_id} refers to endpoint {delivery.endpoint_id}, "
                    "which is not stored"
                )
            if (delivery.endpoint_id, delivery.event_id) in taken:
                raise ValueError(
                    f"endpoint {delivery.endpoint_id} already has a delivery of event "
                    f"{delivery.event_id}"
                )

    def commit(self) -> None:
        state = self.state
        with state.guard:
            committed = state.committed
            committed.endpoints.update(self.pending.endpoints)
            for delivery_id, delivery in self.pending.deliveries.items():
                # An UPDATE of a row another transaction deleted meanwhile changes nothing.
                if delivery_id in self.inserted_deliveries or delivery_id in committed.deliveries:
                    committed.deliveries[delivery_id] = delivery
            for endpoint_id in self.removed_endpoints:
                committed.endpoints.pop(endpoint_id, None)
                for delivery_id in [
                    k for k, d in committed.deliveries.items() if d.endpoint_id == endpoint_id
                ]:
                    del committed.deliveries[delivery_id]
            for event_id, at in self.published.items():
                row = state.outbox.get(event_id)
                if row is not None:
                    row.published_at = at
        self.clear()

    def clear(self) -> None:
        """Discard the pending writes and release this transaction's row locks."""
        self.pending = _WebhookTables()
        self.removed_endpoints.clear()
        self.inserted_endpoints.clear()
        self.inserted_deliveries.clear()
        self.published.clear()
        with self.state.guard:
            for key in [k for k, owner in self.state.locks.items() if owner is self]:
                del self.state.locks[key]


class InMemoryOutboxRepository:
    def __init__(self, tx: WebhookTransaction) -> None:
        self._tx = tx

    async def unpublished(self, limit: int) -> Sequence[OutboxEvent]:
        tx = self._tx
        found: list[OutboxEvent] = []
        with tx.state.guard:
            for event_id in sorted(tx.state.outbox):
                if len(found) >= limit:
                    break
                if tx.published_at(event_id) is None and tx.lockable(f"evt:{event_id}"):
                    tx.lock(f"evt:{event_id}")
                    found.append(copy.deepcopy(tx.state.outbox[event_id].event))
        return found

    async def has_unpublished(self) -> bool:
        with self._tx.state.guard:
            return any(
                self._tx.published_at(event_id) is None for event_id in self._tx.state.outbox
            )

    async def mark_published(self, event_ids: Sequence[str], at: datetime) -> None:
        stamp = _utc(at)
        for event_id in event_ids:
            if event_id in self._tx.state.outbox:
                self._tx.published[event_id] = stamp


class InMemoryWebhookRepository:
    def __init__(self, tx: WebhookTransaction) -> None:
        self._tx = tx

    async def add_endpoint(self, endpoint: WebhookEndpoint) -> None:
        tx = self._tx
        if endpoint.id in tx.endpoints() or endpoint.id in tx.state.committed.endpoints:
            raise ValueError(f"webhook endpoint {endpoint.id} is already stored")
        tx.pending.endpoints[endpoint.id] = _stored_endpoint(copy.deepcopy(endpoint))
        tx.inserted_endpoints.add(endpoint.id)

    async def endpoint(self, tenant_id: str, endpoint_id: str) -> WebhookEndpoint | None:
        found = self._tx.endpoints().get(endpoint_id)
        return copy.deepcopy(found) if found and found.tenant_id == tenant_id else None

    async def endpoints(self, tenant_id: str) -> Sequence[WebhookEndpoint]:
        found = [e for e in self._tx.endpoints().values() if e.tenant_id == tenant_id]
        return copy.deepcopy(sorted(found, key=lambda e: (e.created_at, e.id)))

    async def endpoints_of(self, tenant_ids: Sequence[str]) -> Sequence[WebhookEndpoint]:
        tenants = set(tenant_ids)
        found = [e for e in self._tx.endpoints().values() if e.tenant_id in tenants and e.enabled]
        return copy.deepcopy(sorted(found, key=lambda e: e.id))

    async def remove_endpoint(self, endpoint: WebhookEndpoint) -> None:
        tx = self._tx
        tx.pending.endpoints.pop(endpoint.id, None)
        tx.inserted_endpoints.discard(endpoint.id)
        for delivery_id in [
            k for k, d in tx.pending.deliveries.items() if d.endpoint_id == endpoint.id
        ]:
            del tx.pending.deliveries[delivery_id]
            tx.inserted_deliveries.discard(delivery_id)
        tx.removed_endpoints.add(endpoint.id)

    async def add_delivery(self, delivery: WebhookDelivery) -> None:
        tx = self._tx
        if delivery.id in tx.deliveries() or delivery.id in tx.state.committed.deliveries:
            raise ValueError(f"webhook delivery {delivery.id} is already stored")
        if delivery.endpoint_id not in tx.endpoints():
            raise ValueError(
                f"delivery {delivery.id} refers to endpoint {delivery.endpoint_id}, "
                "which is not stored"
            )
        if any(
            d.endpoint_id == delivery.endpoint_id and d.event_id == delivery.event_id
            for d in tx.deliveries().values()
        ):
            raise ValueError(
                f"endpoint {delivery.endpoint_id} already has a delivery of event "
                f"{delivery.event_id}"
            )
        tx.pending.deliveries[delivery.id] = _stored_delivery(copy.deepcopy(delivery))
        tx.inserted_deliveries.add(delivery.id)

    async def delivery(self, tenant_id: str, delivery_id: str) -> WebhookDelivery | None:
        found = self._tx.deliveries().get(delivery_id)
        return copy.deepcopy(found) if found and found.tenant_id == tenant_id else None

    async def deliveries(
        self, tenant_id: str, endpoint_id: str, limit: int
    ) -> Sequence[WebhookDelivery]:
        found = [
            d
            for d in self._tx.deliveries().values()
            if d.tenant_id == tenant_id and d.endpoint_id == endpoint_id
        ]
        found.sort(key=lambda d: (d.created_at, d.id), reverse=True)
        return copy.deepcopy(found[: max(limit, 0)])

    def _due(self, now: datetime) -> list[tuple[datetime, WebhookDelivery]]:
        found = [
            (d.next_attempt_at, d)
            for d in self._tx.deliveries().values()
            if d.status in _DUE and d.next_attempt_at is not None and d.next_attempt_at <= now
        ]
        return sorted(found, key=lambda pair: (pair[0], pair[1].id))

    async def due(self, now: datetime, limit: int) -> Sequence[WebhookDelivery]:
        tx = self._tx
        found: list[WebhookDelivery] = []
        with tx.state.guard:
            for _, delivery in self._due(now):
                if len(found) >= limit:
                    break
                if tx.lockable(f"whd:{delivery.id}"):
                    tx.lock(f"whd:{delivery.id}")
                    found.append(copy.deepcopy(delivery))
        return found

    async def has_due(self, now: datetime) -> bool:
        return bool(self._due(now))

    async def save_delivery(self, delivery: WebhookDelivery) -> None:
        tx = self._tx
        current = tx.deliveries().get(delivery.id)
        if current is None:
            return  # an UPDATE of no row
        tx.pending.deliveries[delivery.id] = _stored_delivery(
            attrs.evolve(
                current,
                status=delivery.status,
                attempts=delivery.attempts,
                next_attempt_at=delivery.next_attempt_at,
                last_status_code=delivery.last_status_code,
                last_error=delivery.last_error,
                updated_at=delivery.updated_at,
            )
        )


# --- the transport -----------------------------------------------------------------------------


@attrs.frozen
class Sent:
    """One request the transport made."""

    url: str
    event_id: str  # the webhook-id header
    payload: str  # the exact JSON body
    status_code: int | None


class RecordingWebhookTransport:
    """A ``WebhookTransport`` without a network: records every send and answers 200, or what
    ``answer_next`` queued (a status code, or None for no answer: a timeout or refused
    connection). ``refuse(url_part)`` makes ``check_url`` refuse URLs containing it, as the
    real transport refuses private addresses."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.checked: list[str] = []
        self._answers: list[int | None] = []
        self._refused: list[str] = []
        self.closed = False

    def answer_next(self, *status_codes: int | None) -> None:
        self._answers.extend(status_codes)

    def refuse(self, url_part: str) -> None:
        self._refused.append(url_part)

    async def check_url(self, url: str) -> None:
        from imagegen.domain.errors import InvalidParameter

        self.checked.append(url)
        if any(part in url for part in self._refused):
            raise InvalidParameter("The webhook URL is refused by the address policy.")

    async def send(self, url: str, secret: str, event_id: str, payload: str) -> SendResult:
        status = self._answers.pop(0) if self._answers else 200
        self.sent.append(Sent(url, event_id, payload, status))
        if status is None:
            return SendResult(None, "no answer")
        return SendResult(status, None if 200 <= status < 300 else f"HTTP {status}")

    async def aclose(self) -> None:
        self.closed = True
