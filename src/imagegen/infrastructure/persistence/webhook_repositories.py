"""SQL repositories of the outbox (read side) and of webhook endpoints and deliveries.

Reads that claim work (unpublished events, due deliveries) lock their rows with ``FOR UPDATE
SKIP LOCKED`` on PostgreSQL, so dispatchers in several processes share the work; SQLite's
write transactions (``BEGIN IMMEDIATE``) are serial anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from imagegen.application.webhook_ports import OutboxEvent
from imagegen.domain.webhooks import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from imagegen.infrastructure.persistence.orm import (
    OutboxRecord,
    WebhookDeliveryRecord,
    WebhookEndpointRecord,
)

_DUE = (DeliveryStatus.PENDING.value, DeliveryStatus.FAILED.value)


class SqlOutboxRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def unpublished(self, limit: int) -> Sequence[OutboxEvent]:
        records = await self._session.scalars(
            select(OutboxRecord)
            .where(OutboxRecord.published_at.is_(None))
            .order_by(OutboxRecord.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [
            OutboxEvent(r.id, r.name, r.aggregate_id, dict(r.data), r.occurred_at) for r in records
        ]

    async def has_unpublished(self) -> bool:
        found = await self._session.scalar(
            select(OutboxRecord.id).where(OutboxRecord.published_at.is_(None)).limit(1)
        )
        return found is not None

    async def mark_published(self, event_ids: Sequence[str], at: datetime) -> None:
        if event_ids:
            await self._session.execute(
                update(OutboxRecord)
                .where(OutboxRecord.id.in_(list(event_ids)))
                .values(published_at=at)
                .execution_options(synchronize_session=False)
            )


def _endpoint(r: WebhookEndpointRecord) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=r.id,
        tenant_id=r.tenant_id,
        url=r.url,
        event_types=tuple(r.event_types),
        secret=r.secret,
        enabled=r.enabled,
        created_at=r.created_at,
    )


def _delivery(r: WebhookDeliveryRecord) -> WebhookDelivery:
    return WebhookDelivery(
        id=r.id,
        endpoint_id=r.endpoint_id,
        tenant_id=r.tenant_id,
        event_id=r.event_id,
        event_type=r.event_type,
        payload=r.payload,
        status=DeliveryStatus(r.status),
        attempts=r.attempts,
        next_attempt_at=r.next_attempt_at,
        created_at=r.created_at,
        updated_at=r.updated_at,
        last_status_code=r.last_status_code,
        last_error=r.last_error,
    )


class SqlWebhookRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add_endpoint(self, endpoint: WebhookEndpoint) -> None:
        self._session.add(
            WebhookEndpointRecord(
                id=endpoint.id,
                tenant_id=endpoint.tenant_id,
                url=endpoint.url,
                event_types=list(endpoint.event_types),
                secret=endpoint.secret,
                enabled=endpoint.enabled,
                created_at=endpoint.created_at,
            )
        )
        await self._session.flush()

    async def endpoint(self, tenant_id: str, endpoint_id: str) -> WebhookEndpoint | None:
        record = await self._session.get(WebhookEndpointRecord, endpoint_id)
        if record is None or record.tenant_id != tenant_id:
            return None
        return _endpoint(record)

    async def endpoints(self, tenant_id: str) -> Sequence[WebhookEndpoint]:
        records = await self._session.scalars(
            select(WebhookEndpointRecord)
            .where(WebhookEndpointRecord.tenant_id == tenant_id)
            .order_by(WebhookEndpointRecord.created_at, WebhookEndpointRecord.id)
        )
        return [_endpoint(r) for r in records]

    async def endpoints_of(self, tenant_ids: Sequence[str]) -> Sequence[WebhookEndpoint]:
        records = await self._session.scalars(
            select(WebhookEndpointRecord)
            .where(
                WebhookEndpointRecord.tenant_id.in_(list(tenant_ids)),
                WebhookEndpointRecord.enabled.is_(True),
            )
            .order_by(WebhookEndpointRecord.id)
        )
        return [_endpoint(r) for r in records]

    async def remove_endpoint(self, endpoint: WebhookEndpoint) -> None:
        await self._session.execute(
            delete(WebhookDeliveryRecord).where(WebhookDeliveryRecord.endpoint_id == endpoint.id)
        )
        await self._session.execute(
            delete(WebhookEndpointRecord).where(WebhookEndpointRecord.id == endpoint.id)
        )

    async def add_delivery(self, delivery: WebhookDelivery) -> None:
        self._session.add(
            WebhookDeliveryRecord(
                id=delivery.id,
                endpoint_id=delivery.endpoint_id,
                tenant_id=delivery.tenant_id,
                event_id=delivery.event_id,
                event_type=delivery.event_type,
                payload=delivery.payload,
                status=delivery.status.value,
                attempts=delivery.attempts,
                next_attempt_at=delivery.next_attempt_at,
                last_status_code=delivery.last_status_code,
                last_error=delivery.last_error,
                created_at=delivery.created_at,
                updated_at=delivery.updated_at,
            )
        )

    async def delivery(self, tenant_id: str, delivery_id: str) -> WebhookDelivery | None:
        record = await self._session.get(WebhookDeliveryRecord, delivery_id)
        if record is None or record.tenant_id != tenant_id:
            return None
        return _delivery(record)

    async def deliveries(
        self, tenant_id: str, endpoint_id: str, limit: int
    ) -> Sequence[WebhookDelivery]:
        records = await self._session.scalars(
            select(WebhookDeliveryRecord)
            .where(
                WebhookDeliveryRecord.tenant_id == tenant_id,
                WebhookDeliveryRecord.endpoint_id == endpoint_id,
            )
            .order_by(WebhookDeliveryRecord.created_at.desc(), WebhookDeliveryRecord.id.desc())
            .limit(limit)
        )
        return [_delivery(r) for r in records]

    async def due(self, now: datetime, limit: int) -> Sequence[WebhookDelivery]:
        records = await self._session.scalars(
            select(WebhookDeliveryRecord)
            .where(
                WebhookDeliveryRecord.status.in_(_DUE),
                WebhookDeliveryRecord.next_attempt_at <= now,
            )
            .order_by(WebhookDeliveryRecord.next_attempt_at, WebhookDeliveryRecord.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [_delivery(r) for r in records]

    async def has_due(self, now: datetime) -> bool:
        found = await self._session.scalar(
            select(WebhookDeliveryRecord.id)
            .where(
                WebhookDeliveryRecord.status.in_(_DUE),
                WebhookDeliveryRecord.next_attempt_at <= now,
            )
            .limit(1)
        )
        return found is not None

    async def save_delivery(self, delivery: WebhookDelivery) -> None:
        await self._session.execute(
            update(WebhookDeliveryRecord)
            .where(WebhookDeliveryRecord.id == delivery.id)
            .values(
                status=delivery.status.value,
                attempts=delivery.attempts,
                next_attempt_at=delivery.next_attempt_at,
                last_status_code=delivery.last_status_code,
                last_error=delivery.last_error,
                updated_at=delivery.updated_at,
            )
            .execution_options(synchronize_session=False)
        )
