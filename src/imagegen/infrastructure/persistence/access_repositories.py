"""SQL repositories of tenants, API keys and idempotency records."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from imagegen.application.access_ports import IdempotencyRecord
from imagegen.domain.access import ApiKey, Role, Tenant
from imagegen.infrastructure.persistence.key_cache import CHANNEL
from imagegen.infrastructure.persistence.orm import ApiKeyRecord, IdempotencyRecordRow, TenantRecord


def _tenant(record: TenantRecord) -> Tenant:
    return Tenant(id=record.id, name=record.name, created_at=record.created_at)


def _key(record: ApiKeyRecord) -> ApiKey:
    return ApiKey(
        id=record.id,
        tenant_id=record.tenant_id,
        role=Role(record.role),
        name=record.name,
        key_hash=record.key_hash,
        created_at=record.created_at,
        revoked_at=record.revoked_at,
        last_used_at=record.last_used_at,
        replaces=record.replaces,
    )


class SqlTenantRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, tenant: Tenant) -> None:
        self._session.add(
            TenantRecord(id=tenant.id, name=tenant.name, created_at=tenant.created_at)
        )
        await self._session.flush()

    async def get(self, tenant_id: str) -> Tenant | None:
        record = await self._session.get(TenantRecord, tenant_id)
        return _tenant(record) if record is not None else None

    async def get_by_name(self, name: str) -> Tenant | None:
        record = await self._session.scalar(select(TenantRecord).where(TenantRecord.name == name))
        return _tenant(record) if record is not None else None

    async def list(self) -> Sequence[Tenant]:
        records = await self._session.scalars(select(TenantRecord).order_by(TenantRecord.id))
        return [_tenant(r) for r in records]


class SqlApiKeyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, key: ApiKey) -> None:
        self._session.add(
            ApiKeyRecord(
                id=key.id,
                tenant_id=key.tenant_id,
                role=key.role.value,
                name=key.name,
                key_hash=key.key_hash,
                created_at=key.created_at,
                revoked_at=key.revoked_at,
                last_used_at=key.last_used_at,
                replaces=key.replaces,
            )
        )
        await self._session.flush()

    async def get(self, key_id: str) -> ApiKey | None:
        record = await self._session.get(ApiKeyRecord, key_id)
        return _key(record) if record is not None else None

    async def list(self, tenant_id: str) -> Sequence[ApiKey]:
        records = await self._session.scalars(
            select(ApiKeyRecord)
            .where(ApiKeyRecord.tenant_id == tenant_id)
            .order_by(ApiKeyRecord.created_at, ApiKeyRecord.id)
        )
        return [_key(r) for r in records]

    async def save(self, key: ApiKey) -> None:
        await self._session.execute(
            update(ApiKeyRecord).where(ApiKeyRecord.id == key.id).values(revoked_at=key.revoked_at)
        )
        bind = self._session.bind
        if bind is not None and bind.dialect.name == "postgresql":
            # Delivered when (and only if) this transaction commits: every process that keeps
            # keys (``key_cache``) drops this one.
            await self._session.execute(select(func.pg_notify(CHANNEL, key.id)))

    async def touch(self, key_id: str, at: datetime) -> None:
        await self._session.execute(
            update(ApiKeyRecord).where(ApiKeyRecord.id == key_id).values(last_used_at=at)
        )


class SqlIdempotencyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def get(self, tenant_id: str, scope: str, key: str) -> IdempotencyRecord | None:
        record = await self._session.get(IdempotencyRecordRow, (tenant_id, scope, key))
        if record is None:
            return None
        return IdempotencyRecord(
            tenant_id=record.tenant_id,
            scope=record.scope,
            key=record.key,
            fingerprint=record.fingerprint,
            response=dict(record.response),
            created_at=record.created_at,
        )

    async def add(self, record: IdempotencyRecord) -> None:
        self._session.add(
            IdempotencyRecordRow(
                tenant_id=record.tenant_id,
                scope=record.scope,
                key=record.key,
                fingerprint=record.fingerprint,
                response=dict(record.response),
                created_at=record.created_at,
            )
        )
        await self._session.flush()
