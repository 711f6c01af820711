"""SQL repositories of billing: usage events (and the metering outbox), subscriptions,
budgets, per-period counters and fired alerts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from imagegen.application.ports import MeterableUsage, UsageQuery
from imagegen.domain.plans import Alert, Budget, Counter, Subscription
from imagegen.domain.usage import UsageEvent, UsageKind
from imagegen.infrastructure.persistence import mappers
from imagegen.infrastructure.persistence.orm import (
    AccountRecord,
    AlertRecord,
    BudgetRecord,
    CounterRecord,
    SubscriptionRecord,
    UsageEventRecord,
)
from imagegen.infrastructure.persistence.repositories import _check_limit, _keep, insert_later


class SqlUsageRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, event: UsageEvent) -> None:
        insert_later(self._session, [mappers.usage_to_record(event)])

    async def list(self, query: UsageQuery) -> Sequence[UsageEvent]:
        statement = select(UsageEventRecord).where(UsageEventRecord.tenant_id == query.tenant_id)
        if query.occurred_from is not None:
            statement = statement.where(UsageEventRecord.occurred_at >= query.occurred_from)
        if query.occurred_to is not None:
            statement = statement.where(UsageEventRecord.occurred_at < query.occurred_to)
        statement = statement.order_by(UsageEventRecord.occurred_at, UsageEventRecord.seq)
        records = (await self._session.execute(statement)).scalars()
        return [mappers.usage_to_domain(r) for r in records]

    async def unmetered(self, limit: int) -> Sequence[MeterableUsage]:
        _check_limit(limit)
        statement = (
            select(UsageEventRecord, SubscriptionRecord.meter_customer_id)
            .join(SubscriptionRecord, SubscriptionRecord.tenant_id == UsageEventRecord.tenant_id)
            .where(
                UsageEventRecord.metered_at.is_(None),
                SubscriptionRecord.meter_customer_id.is_not(None),
            )
            .order_by(UsageEventRecord.occurred_at, UsageEventRecord.seq)
            .limit(limit)
        )
        rows = (await self._session.execute(statement)).all()
        return [MeterableUsage(mappers.usage_to_domain(r), str(customer)) for r, customer in rows]

    async def mark_metered(self, event_ids: Sequence[str], at: datetime) -> None:
        if not event_ids:
            return
        await self._session.execute(
            update(UsageEventRecord)
            .where(UsageEventRecord.id.in_(list(event_ids)), UsageEventRecord.metered_at.is_(None))
            .values(metered_at=at)
            .execution_options(synchronize_session=False)
        )

    async def get(self, event_id: str) -> UsageEvent | None:
        statement = select(UsageEventRecord).where(UsageEventRecord.id == event_id)
        record = (await self._session.execute(statement)).scalar_one_or_none()
        return mappers.usage_to_domain(record) if record else None

    async def refunds_of(self, event_id: str) -> Sequence[UsageEvent]:
        statement = (
            select(UsageEventRecord)
            .where(
                UsageEventRecord.refunds_event_id == event_id,
                UsageEventRecord.kind == UsageKind.REFUND.value,
            )
            .order_by(UsageEventRecord.seq)
        )
        return [
            mappers.usage_to_domain(r) for r in (await self._session.execute(statement)).scalars()
        ]


R = TypeVar("R", SubscriptionRecord, BudgetRecord, CounterRecord)


async def _upsert(session: AsyncSession, kind: type[R], key: Any) -> R:
    """The row of ``kind`` with primary key ``key``, or a new one added to the session."""
    record = await session.get(kind, key)
    if record is None:
        record = kind()
        session.add(record)
    return record


class SqlBillingRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def tenants(self) -> Sequence[str]:
        statement = select(AccountRecord.tenant_id).order_by(AccountRecord.tenant_id)
        return list((await self._session.execute(statement)).scalars())

    async def get_subscription(self, tenant_id: str) -> Subscription | None:
        record = await self._session.get(SubscriptionRecord, tenant_id)
        return mappers.subscription_to_domain(record) if record else None

    async def save_subscription(self, subscription: Subscription) -> None:
        record = await _upsert(self._session, SubscriptionRecord, subscription.tenant_id)
        mappers.subscription_to_record(subscription, record)

    async def budgets(self, tenant_id: str) -> Sequence[Budget]:
        statement = (
            select(BudgetRecord)
            .where(BudgetRecord.tenant_id == tenant_id)
            .order_by(BudgetRecord.subject)
        )
        return [
            mappers.budget_to_domain(r) for r in (await self._session.execute(statement)).scalars()
        ]

    async def save_budget(self, budget: Budget) -> None:
        record = await _upsert(self._session, BudgetRecord, (budget.tenant_id, budget.subject))
        mappers.budget_to_record(budget, record)

    async def remove_budget(self, tenant_id: str, subject: str) -> bool:
        result = await self._session.execute(
            delete(BudgetRecord)
            .where(BudgetRecord.tenant_id == tenant_id, BudgetRecord.subject == subject)
            .returning(BudgetRecord.subject)
        )
        return result.first() is not None

    async def counters(
        self, tenant_id: str, period_start: datetime, subjects: Sequence[str]
    ) -> dict[str, Counter]:
        statement = (
            select(CounterRecord)
            .where(
                CounterRecord.tenant_id == tenant_id,
                CounterRecord.period_start == period_start,
                CounterRecord.subject.in_(list(subjects)),
            )
            .execution_options(populate_existing=True)
        )
        found: dict[str, Counter] = {}
        for record in (await self._session.execute(statement)).scalars():
            _keep(self._session, record)  # save_counter finds it without a SELECT
            found[record.subject] = mappers.counter_to_domain(record)
        return found

    async def save_counter(self, counter: Counter) -> None:
        key = (counter.tenant_id, counter.subject, counter.period_start)
        mappers.counter_to_record(counter, await _upsert(self._session, CounterRecord, key))

    async def all_counters(self, tenant_id: str) -> Sequence[Counter]:
        statement = (
            select(CounterRecord)
            .where(CounterRecord.tenant_id == tenant_id)
            .order_by(CounterRecord.period_start, CounterRecord.subject)
        )
        return [
            mappers.counter_to_domain(r) for r in (await self._session.execute(statement)).scalars()
        ]

    async def fired(self, tenant_id: str, period_start: datetime) -> set[tuple[str, int]]:
        statement = select(AlertRecord.subject, AlertRecord.threshold).where(
            AlertRecord.tenant_id == tenant_id, AlertRecord.period_start == period_start
        )
        return {(s, t) for s, t in (await self._session.execute(statement)).all()}

    async def add_alert(self, alert: Alert) -> None:
        self._session.add(mappers.alert_to_record(alert))

    async def alerts(self, tenant_id: str) -> Sequence[Alert]:
        statement = (
            select(AlertRecord)
            .where(AlertRecord.tenant_id == tenant_id)
            .order_by(AlertRecord.period_start, AlertRecord.subject, AlertRecord.threshold)
        )
        return [
            mappers.alert_to_domain(r) for r in (await self._session.execute(statement)).scalars()
        ]
