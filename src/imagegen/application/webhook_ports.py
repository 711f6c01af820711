"""The ports of webhooks: endpoints and deliveries, the outbox they are fanned out from, and
the transport that checks addresses and sends signed requests.

``WebhookUnitOfWork`` is a ``UnitOfWork`` with two more repositories (the SQL unit of work has
them), so reading outbox events, creating their deliveries and marking the events published
commit in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

import attrs

from imagegen.application.ports import UnitOfWork
from imagegen.domain.webhooks import WebhookDelivery, WebhookEndpoint


@attrs.frozen
class OutboxEvent:
    id: str
    name: str
    aggregate_id: str
    data: dict[str, Any]
    occurred_at: datetime


class OutboxRepository(Protocol):
    async def unpublished(self, limit: int) -> Sequence[OutboxEvent]:
        """The oldest events not published yet, in order, locked for this transaction where the
        database can (other dispatchers skip them)."""
        ...

    async def mark_published(self, event_ids: Sequence[str], at: datetime) -> None: ...

    async def has_unpublished(self) -> bool:
        """A cheap read (no lock): is there anything to fan out?"""
        ...


class WebhookRepository(Protocol):
    async def add_endpoint(self, endpoint: WebhookEndpoint) -> None: ...

    async def endpoint(self, tenant_id: str, endpoint_id: str) -> WebhookEndpoint | None: ...

    async def endpoints(self, tenant_id: str) -> Sequence[WebhookEndpoint]: ...

    async def endpoints_of(self, tenant_ids: Sequence[str]) -> Sequence[WebhookEndpoint]:
        """The enabled endpoints of these tenants."""
        ...

    async def remove_endpoint(self, endpoint: WebhookEndpoint) -> None:
        """Delete the endpoint and its deliveries."""
        ...

    async def add_delivery(self, delivery: WebhookDelivery) -> None: ...

    async def delivery(self, tenant_id: str, delivery_id: str) -> WebhookDelivery | None: ...

    async def deliveries(
        self, tenant_id: str, endpoint_id: str, limit: int
    ) -> Sequence[WebhookDelivery]:
        """Newest first."""
        ...

    async def due(self, now: datetime, limit: int) -> Sequence[WebhookDelivery]:
        """Pending or failed deliveries whose next attempt is due, oldest first, locked for
        this transaction where the database can."""
        ...

    async def has_due(self, now: datetime) -> bool:
        """A cheap read (no lock): is any delivery due?"""
        ...

    async def save_delivery(self, delivery: WebhookDelivery) -> None: ...


class WebhookUnitOfWork(UnitOfWork, Protocol):
    outbox: OutboxRepository
    webhooks: WebhookRepository


class WebhookUnitOfWorkFactory(Protocol):
    def __call__(self, *, read_only: bool = False) -> WebhookUnitOfWork: ...


@attrs.frozen
class SendResult:
    status_code: int | None  # None: no answer (refused address, timeout, connection error)
    error: str | None = None  # what went wrong, never a secret

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class WebhookTransport(Protocol):
    async def check_url(self, url: str) -> None:
        """Raise ``InvalidParameter`` unless the URL may receive webhooks (scheme, host and
        every address it resolves to, per the address policy)."""
        ...

    async def send(self, url: str, secret: str, event_id: str, payload: str) -> SendResult:
        """Sign and POST ``payload``; checks the address again (DNS may have changed) and
        never follows redirects. Never raises for the receiver's failures."""
        ...

    async def aclose(self) -> None: ...


class RandomBytes(Protocol):
    def token_bytes(self, nbytes: int) -> bytes: ...
