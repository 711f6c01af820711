"""The SQL unit of work: one ``AsyncSession``, one transaction, rolled back unless committed."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from imagegen.application.ports import IdGenerator
from imagegen.domain.events import DomainEvent
from imagegen.infrastructure.persistence.access_repositories import (
    SqlApiKeyRepository,
    SqlIdempotencyRepository,
    SqlTenantRepository,
)
from imagegen.infrastructure.persistence.billing_repositories import (
    SqlBillingRepository,
    SqlUsageRepository,
)
from imagegen.infrastructure.persistence.engine import READ_ONLY
from imagegen.infrastructure.persistence.orm import OutboxRecord
from imagegen.infrastructure.persistence.repositories import (
    SqlAccountRepository,
    SqlAssetRepository,
    SqlGenerationRepository,
    insert_later,
)
from imagegen.infrastructure.persistence.webhook_repositories import (
    SqlOutboxRepository,
    SqlWebhookRepository,
)
from imagegen.infrastructure.persistence.writes import BufferedSession


class SqlUnitOfWork:
    generations: SqlGenerationRepository
    assets: SqlAssetRepository
    accounts: SqlAccountRepository
    usage: SqlUsageRepository
    billing: SqlBillingRepository
    tenants: SqlTenantRepository
    api_keys: SqlApiKeyRepository
    idempotency: SqlIdempotencyRepository
    outbox: SqlOutboxRepository
    webhooks: SqlWebhookRepository

    def __init__(self, sessions: async_sessionmaker[BufferedSession], ids: IdGenerator) -> None:
        self._sessions = sessions
        self._ids = ids
        self._events: list[DomainEvent] = []
        self._session: BufferedSession | None = None

    async def __aenter__(self) -> Self:
        self._session = self._sessions()
        self.generations = SqlGenerationRepository(self._session)
        self.assets = SqlAssetRepository(self._session)
        self.accounts = SqlAccountRepository(self._session)
        self.usage = SqlUsageRepository(self._session)
        self.billing = SqlBillingRepository(self._session)
        self.tenants = SqlTenantRepository(self._session)
        self.api_keys = SqlApiKeyRepository(self._session)
        self.idempotency = SqlIdempotencyRepository(self._session)
        self.outbox = SqlOutboxRepository(self._session)
        self.webhooks = SqlWebhookRepository(self._session)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session = self._session
        self._session = None
        if session is None:
            return
        try:
            await session.rollback()  # a no-op after commit; undoes everything otherwise
        finally:
            await session.close()

    @property
    def session(self) -> BufferedSession:
        if self._session is None:
            raise RuntimeError("the unit of work is not open (use 'async with')")
        return self._session

    def record(self, events: list[DomainEvent]) -> None:
        self._events.extend(events)
        events.clear()

    async def commit(self) -> None:
        session = self.session
        outbox = [
            OutboxRecord(
                id=self._ids.new("evt"),
                name=event.name,
                aggregate_id=event.aggregate_id,
                data=event.data,
                occurred_at=event.occurred_at,
                published_at=None,
            )
            for event in self._events
        ]
        self._events.clear()
        insert_later(session, outbox)  # in this transaction, committed with it
        await session.commit()

    async def rollback(self) -> None:
        self._events.clear()
        await self.session.rollback()


class SqlUnitOfWorkFactory:
    def __init__(self, engine: AsyncEngine, ids: IdGenerator) -> None:
        self.engine = engine
        self._ids = ids
        self._writes = async_sessionmaker(
            engine, expire_on_commit=False, autoflush=True, class_=BufferedSession
        )
        reads = engine.execution_options(**{READ_ONLY: True})
        if engine.dialect.name == "postgresql":
            # Under READ COMMITTED (PostgreSQL's default) every statement of a transaction
            # takes its own snapshot anyway, so a read-only unit of work loses nothing without
            # one, and saves its BEGIN and ROLLBACK round trips.
            reads = reads.execution_options(isolation_level="AUTOCOMMIT")
        self._reads = async_sessionmaker(reads, expire_on_commit=False, class_=BufferedSession)

    def __call__(self, *, read_only: bool = False) -> SqlUnitOfWork:
        return SqlUnitOfWork(self._reads if read_only else self._writes, self._ids)
