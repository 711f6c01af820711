"""Webhooks: endpoints (create, list, delete), the delivery log, redelivery, and the
dispatcher that fans committed outbox events out to deliveries and sends them.

Delivery is at least once: an event reaches the outbox only in the transaction that made
it (a rolled-back transaction has no event, so never a webhook); a delivery is marked
succeeded only after a 2xx answer, so a crash between sending and marking sends it again,
with the same ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import attrs

from imagegen.application.guard import require
from imagegen.application.ports import Clock, IdGenerator
from imagegen.application.webhook_ports import (
    OutboxEvent,
    RandomBytes,
    WebhookTransport,
    WebhookUnitOfWorkFactory,
)
from imagegen.domain.access import Permission, Principal
from imagegen.domain.errors import InvalidParameter, NotFound
from imagegen.domain.webhooks import (
    DEFAULT_SCHEDULE,
    SECRET_BYTES,
    SECRET_PREFIX,
    DeliveryStatus,
    WebhookDelivery,
    WebhookEndpoint,
    check_event_types,
    check_url,
    redact_url,
)

log = logging.getLogger("imagegen.webhooks")

MAX_ENDPOINTS_PER_TENANT = 20
MAX_LOG = 1000


@attrs.frozen
class CreatedEndpoint:
    """A new endpoint: ``secret`` is shown once here (and kept to sign)."""

    endpoint: WebhookEndpoint
    secret: str = attrs.field(repr=False)


def payload(event: OutboxEvent) -> str:
    """The body every endpoint gets for ``event``: Standard Webhooks' ``type``,
    ``timestamp`` and ``data`` (the aggregate's id and the event's data)."""
    data = {"id": event.aggregate_id, **event.data}
    body = {"type": event.name, "timestamp": event.occurred_at.isoformat(), "data": data}
    return json.dumps(body, separators=(",", ":"), sort_keys=True, default=str)


class ManageWebhooks:
    """Endpoints and their delivery log, per tenant (the operator's CLI and, guarded,
    the HTTP service)."""

    def __init__(
        self,
        *,
        uow: WebhookUnitOfWorkFactory,
        transport: WebhookTransport,
        clock: Clock,
        ids: IdGenerator,
        randomness: RandomBytes,
    ) -> None:
        self._uow = uow
        self._transport = transport
        self._clock = clock
        self._ids = ids
        self._random = randomness

    async def create(self, tenant_id: str, url: str, event_types: Sequence[str]) -> CreatedEndpoint:
        url = check_url(url)
        types = check_event_types(event_types)
        await self._transport.check_url(url)
        secret = SECRET_PREFIX + base64.b64encode(self._random.token_bytes(SECRET_BYTES)).decode()
        endpoint = WebhookEndpoint(
            id=self._ids.new("whe"),
            tenant_id=tenant_id,
            url=url,
            event_types=types,
            secret=secret,
            enabled=True,
            created_at=self._clock.now(),
        )
        async with self._uow() as uow:
            if len(await uow.webhooks.endpoints(tenant_id)) >= MAX_ENDPOINTS_PER_TENANT:
                raise InvalidParameter(
                    f"A tenant has at most {MAX_ENDPOINTS_PER_TENANT} webhook endpoints."
                )
            await uow.webhooks.add_endpoint(endpoint)
            await uow.commit()
        log.info("webhook endpoint %s created for %s", endpoint.id, redact_url(url))
        return CreatedEndpoint(endpoint, secret)

    async def list(self, tenant_id: str) -> Sequence[WebhookEndpoint]:
        async with self._uow(read_only=True) as uow:
            return await uow.webhooks.endpoints(tenant_id)

    async def delete(self, tenant_id: str, endpoint_id: str) -> None:
        async with self._uow() as uow:
            endpoint = await uow.webhooks.endpoint(tenant_id, endpoint_id)
            if endpoint is None:
                raise NotFound(f"No webhook endpoint {endpoint_id}.", endpoint_id=endpoint_id)
            await uow.webhooks.remove_endpoint(endpoint)
            await uow.commit()

    async def deliveries(
        self, tenant_id: str, endpoint_id: str, limit: int = 100
    ) -> Sequence[WebhookDelivery]:
        async with self._uow(read_only=True) as uow:
            if await uow.webhooks.endpoint(tenant_id, endpoint_id) is None:
                raise NotFound(f"No webhook endpoint {endpoint_id}.", endpoint_id=endpoint_id)
            return await uow.webhooks.deliveries(
                tenant_id, endpoint_id, max(1, min(limit, MAX_LOG))
            )

    async def redeliver(self, tenant_id: str, delivery_id: str) -> WebhookDelivery:
        """Send the delivery again at the next dispatch (same event id, attempts anew)."""
        async with self._uow() as uow:
            delivery = await uow.webhooks.delivery(tenant_id, delivery_id)
            if delivery is None:
                raise NotFound(f"No webhook delivery {delivery_id}.", delivery_id=delivery_id)
            delivery.redeliver(self._clock.now())
            await uow.webhooks.save_delivery(delivery)
            await uow.commit()
        return delivery


@attrs.frozen
class WebhookGuard:
    """``ManageWebhooks`` as a caller with an identity sees it: ``webhooks:manage``, and
    scoped to the caller's tenant (another tenant's ids are not found)."""

    manage: ManageWebhooks

    async def create(
        self, principal: Principal, url: str, event_types: Sequence[str]
    ) -> CreatedEndpoint:
        require(principal, Permission.WEBHOOKS_MANAGE)
        return await self.manage.create(principal.tenant_id, url, event_types)

    async def list(self, principal: Principal) -> Sequence[WebhookEndpoint]:
        require(principal, Permission.WEBHOOKS_MANAGE)
        return await self.manage.list(principal.tenant_id)

    async def delete(self, principal: Principal, endpoint_id: str) -> None:
        require(principal, Permission.WEBHOOKS_MANAGE)
        await self.manage.delete(principal.tenant_id, endpoint_id)

    async def deliveries(
        self, principal: Principal, endpoint_id: str, limit: int = 100
    ) -> Sequence[WebhookDelivery]:
        require(principal, Permission.WEBHOOKS_MANAGE)
        return await self.manage.deliveries(principal.tenant_id, endpoint_id, limit)

    async def redeliver(self, principal: Principal, delivery_id: str) -> WebhookDelivery:
        require(principal, Permission.WEBHOOKS_MANAGE)
        return await self.manage.redeliver(principal.tenant_id, delivery_id)


@attrs.frozen
class DispatchReport:
    events: int = 0  # outbox events published (fanned out)
    created: int = 0  # deliveries created
    sent: int = 0  # attempts made
    succeeded: int = 0
    failed: int = 0  # attempts that failed (retried later, or dead)


@attrs.frozen(kw_only=True)
class DispatchPolicy:
    schedule: tuple[timedelta, ...] = DEFAULT_SCHEDULE
    jitter: float = 0.1
    batch_size: int = 100
    concurrency: int = 8
    # A claimed delivery is not due again for this long: the attempt's time, so two
    # dispatchers never send it at once and a crashed one's claim runs out.
    lease: timedelta = timedelta(seconds=60)
    poll_interval: timedelta = timedelta(seconds=2)


class DeliverWebhooks:
    """The dispatcher. ``run_once()`` fans out the committed outbox events to deliveries and
    sends the due deliveries; ``run_forever(stop)`` does it every ``poll_interval`` until
    ``stop`` is set. The service, ``imagegen webhooks deliver`` and workers all call these."""

    def __init__(
        self,
        *,
        uow: WebhookUnitOfWorkFactory,
        transport: WebhookTransport,
        clock: Clock,
        ids: IdGenerator,
        policy: DispatchPolicy | None = None,
    ) -> None:
        self._uow = uow
        self._transport = transport
        self._clock = clock
        self._ids = ids
        self.policy = policy or DispatchPolicy()

    async def run_once(self) -> DispatchReport:
        # Look before taking a write transaction (on SQLite the database's write lock): an
        # idle dispatcher polling every few seconds only reads.
        async with self._uow(read_only=True) as uow:
            idle = not (
                await uow.outbox.has_unpublished() or await uow.webhooks.has_due(self._clock.now())
            )
        if idle:
            return DispatchReport()
        events = created = 0
        while True:
            fanned, made = await self.fan_out()
            events, created = events + fanned, created + made
            if fanned < self.policy.batch_size:
                break
        sent = succeeded = 0
        while True:
            attempts, ok = await self.send_due()
            sent, succeeded = sent + attempts, succeeded + ok
            if attempts < self.policy.batch_size:
                break
        return DispatchReport(events, created, sent, succeeded, sent - succeeded)

    async def run_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception:  # a database or network hiccup: log and poll again
                log.exception("webhook dispatch failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.policy.poll_interval.total_seconds())

    async def fan_out(self) -> tuple[int, int]:
        """One batch: the oldest unpublished events become one delivery per subscribed
        endpoint, and are marked published, in one transaction."""
        now = self._clock.now()
        created = 0
        async with self._uow() as uow:
            events = await uow.outbox.unpublished(self.policy.batch_size)
            if not events:
                return 0, 0
            tenants = sorted({t for e in events if (t := _tenant_of(e)) is not None})
            endpoints = await uow.webhooks.endpoints_of(tenants) if tenants else []
            for event in events:
                tenant = _tenant_of(event)
                body: str | None = None
                for endpoint in endpoints:
                    if endpoint.tenant_id != tenant or not endpoint.wants(event.name):
                        continue
                    body = body or payload(event)
                    await uow.webhooks.add_delivery(
                        WebhookDelivery(
                            id=self._ids.new("whd"),
                            endpoint_id=endpoint.id,
                            tenant_id=endpoint.tenant_id,
                            event_id=event.id,
                            event_type=event.name,
                            payload=body,
                            status=DeliveryStatus.PENDING,
                            attempts=0,
                            next_attempt_at=now,
                            created_at=now,
                            updated_at=now,
                        )
                    )
                    created += 1
            await uow.outbox.mark_published([e.id for e in events], now)
            await uow.commit()
        return len(events), created

    async def send_due(self) -> tuple[int, int]:
        """One batch: claim the due deliveries (a lease), send them, record each answer."""
        now = self._clock.now()
        async with self._uow() as uow:
            due = list(await uow.webhooks.due(now, self.policy.batch_size))
            if not due:
                return 0, 0
            endpoints: dict[str, WebhookEndpoint | None] = {}
            for delivery in due:
                if delivery.endpoint_id not in endpoints:
                    endpoints[delivery.endpoint_id] = await uow.webhooks.endpoint(
                        delivery.tenant_id, delivery.endpoint_id
                    )
                delivery.next_attempt_at = now + self.policy.lease
                await uow.webhooks.save_delivery(delivery)
            await uow.commit()
        limit = asyncio.Semaphore(self.policy.concurrency)

        async def attempt(delivery: WebhookDelivery) -> bool:
            endpoint = endpoints[delivery.endpoint_id]
            if endpoint is None:
                return False
            async with limit:
                result = await self._transport.send(
                    endpoint.url, endpoint.secret, delivery.event_id, delivery.payload
                )
            await self._record(delivery, result.ok, result.status_code, result.error)
            return result.ok

        outcomes = await asyncio.gather(*(attempt(d) for d in due))
        return len(due), sum(outcomes)

    async def _record(
        self, claimed: WebhookDelivery, ok: bool, status_code: int | None, error: str | None
    ) -> None:
        now = self._clock.now()
        async with self._uow() as uow:
            delivery = await uow.webhooks.delivery(claimed.tenant_id, claimed.id)
            if delivery is None:  # its endpoint was deleted meanwhile
                return
            if ok:
                assert status_code is not None
                delivery.succeeded(status_code, now)
            else:
                delivery.failed(
                    status_code,
                    error or f"HTTP {status_code}",
                    now,
                    self.policy.schedule,
                    self.policy.jitter,
                )
                log.info(
                    "webhook %s attempt %d failed: %s",
                    delivery.event_id,
                    delivery.attempts,
                    delivery.last_error,
                )
            await uow.webhooks.save_delivery(delivery)
            await uow.commit()


def _tenant_of(event: OutboxEvent) -> str | None:
    tenant: Any = event.data.get("tenant_id")
    return tenant if isinstance(tenant, str) else None
