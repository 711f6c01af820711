"""The billing persistence contract (usage events and the metering outbox, subscriptions,
budgets, counters, alerts, and the billing fields of accounts and reservations), run against
the in-memory fake, SQLite and PostgreSQL — the same backends as the persistence contract."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import attrs
import pytest
from sqlalchemy.exc import IntegrityError

from contract.test_persistence_contract import T0, Backend, account, open_account
from imagegen.application.ports import UsageQuery
from imagegen.domain.plans import (
    QUOTA,
    Alert,
    Budget,
    Counter,
    Subscription,
    SubscriptionStatus,
    period_start,
)
from imagegen.domain.usage import UsageEvent, UsageKind
from imagegen.domain.values import Credits

PERIOD = period_start(T0)


def usage(
    event_id: str,
    *,
    tenant_id: str = "t1",
    at_minutes: int = 0,
    credits: int = 3,
    kind: UsageKind = UsageKind.CAPTURE,
    refunds: str | None = None,
) -> UsageEvent:
    return UsageEvent(
        id=event_id,
        kind=kind,
        tenant_id=tenant_id,
        principal_id="alice",
        project_id="apollo",
        generation_id=f"gen_{event_id}",
        reservation_id=f"res_{event_id}",
        ledger_entry_id=f"ent_{event_id}",
        provider="local",
        model="procedural",
        operation="generate",
        images=2,
        included_images=1,
        overage_images=1,
        credits=credits,
        provider_cost_usd=Decimal("0.0123"),
        period_start=PERIOD,
        occurred_at=T0 + timedelta(minutes=at_minutes),
        refunds_event_id=refunds,
    )


async def test_usage_events_round_trip_and_list_by_tenant_and_time_oldest_first(
    backend: Backend,
) -> None:
    async with backend.uow() as uow:
        await uow.usage.add(usage("use_b", at_minutes=5))
        await uow.usage.add(usage("use_a", at_minutes=1))
        await uow.usage.add(usage("use_c", at_minutes=9))
        await uow.usage.add(usage("use_other", tenant_id="t2"))
        await uow.commit()
    async with backend.uow(read_only=True) as uow:
        every = await uow.usage.list(UsageQuery("t1"))
        window = await uow.usage.list(
            UsageQuery("t1", T0 + timedelta(minutes=1), T0 + timedelta(minutes=9))
        )
        one = await uow.usage.get("use_b")
        missing = await uow.usage.get("use_nope")
    assert [e.id for e in every] == ["use_a", "use_b", "use_c"]
    assert [e.id for e in window] == ["use_a", "use_b"]  # from inclusive, to exclusive
    assert one == usage("use_b", at_minutes=5)
    assert missing is None


async def test_refunds_of_lists_only_the_refunds_of_that_capture(backend: Backend) -> None:
    async with backend.uow() as uow:
        await uow.usage.add(usage("use_cap"))
        await uow.usage.add(usage("use_cap2"))
        await uow.usage.add(
            usage("use_r1", kind=UsageKind.REFUND, credits=-1, refunds="use_cap", at_minutes=1)
        )
        await uow.usage.add(
            usage("use_r2", kind=UsageKind.REFUND, credits=-2, refunds="use_cap", at_minutes=2)
        )
        await uow.usage.add(usage("use_r3", kind=UsageKind.REFUND, credits=-1, refunds="use_cap2"))
        await uow.commit()
    async with backend.uow(read_only=True) as uow:
        refunds = await uow.usage.refunds_of("use_cap")
    assert [(r.id, r.credits) for r in refunds] == [("use_r1", -1), ("use_r2", -2)]


async def test_the_metering_outbox_holds_unmetered_events_of_tenants_with_a_customer(
    backend: Backend,
) -> None:
    async with backend.uow() as uow:
        await uow.billing.save_subscription(
            Subscription(
                tenant_id="t1",
                plan_id="pro",
                started_at=T0,
                changed_at=T0,
                meter_customer_id="cus_123",
            )
        )
        await uow.billing.save_subscription(
            Subscription(tenant_id="t2", plan_id="pro", started_at=T0, changed_at=T0)
        )
        for minute, event_id in enumerate(["use_1", "use_2", "use_3"]):
            await uow.usage.add(usage(event_id, at_minutes=minute))
        await uow.usage.add(usage("use_t2", tenant_id="t2"))
        await uow.commit()
    async with backend.uow() as uow:
        first = await uow.usage.unmetered(2)
        await uow.usage.mark_metered([m.event.id for m in first], T0 + timedelta(hours=1))
        await uow.commit()
    async with backend.uow(read_only=True) as uow:
        rest = await uow.usage.unmetered(10)
    assert [(m.event.id, m.customer_id) for m in first] == [
        ("use_1", "cus_123"),
        ("use_2", "cus_123"),
    ]
    assert [m.event.id for m in rest] == ["use_3"]


async def test_a_usage_event_id_is_stored_once(backend: Backend) -> None:
    async with backend.uow() as uow:
        await uow.usage.add(usage("use_once"))
        await uow.commit()

    async def again() -> None:
        async with backend.uow() as uow:
            await uow.usage.add(usage("use_once"))
            await uow.commit()

    with pytest.raises((ValueError, IntegrityError)):  # the fake's error, the database's
        await again()


async def test_subscriptions_and_budgets_are_upserted_and_budgets_removed(
    backend: Backend,
) -> None:
    sub = Subscription(tenant_id="t1", plan_id="free", started_at=T0, changed_at=T0)
    budget = Budget(
        tenant_id="t1", subject="user:alice", limit_credits=10, limit_images=None, since=T0
    )
    async with backend.uow() as uow:
        await uow.billing.save_subscription(sub)
        await uow.billing.save_budget(budget)
        await uow.billing.save_budget(attrs.evolve(budget, subject="project:apollo"))
        await uow.commit()
    later = T0 + timedelta(days=3)
    async with backend.uow() as uow:
        await uow.billing.save_subscription(
            attrs.evolve(sub, plan_id="pro", changed_at=later, status=SubscriptionStatus.CANCELED)
        )
        await uow.billing.save_budget(attrs.evolve(budget, limit_credits=99, limit_images=5))
        assert await uow.billing.remove_budget("t1", "project:apollo") is True
        assert await uow.billing.remove_budget("t1", "project:nope") is False
        await uow.commit()
    async with backend.uow(read_only=True) as uow:
        stored = await uow.billing.get_subscription("t1")
        budgets = await uow.billing.budgets("t1")
        assert await uow.billing.get_subscription("t2") is None
    assert stored == attrs.evolve(
        sub, plan_id="pro", changed_at=later, status=SubscriptionStatus.CANCELED
    )
    assert budgets == [attrs.evolve(budget, limit_credits=99, limit_images=5)]


async def test_counters_are_created_on_demand_and_replaced(backend: Backend) -> None:
    await open_account(backend)
    async with backend.uow() as uow:
        await uow.accounts.lock("acct_t1")
        assert await uow.billing.counters("t1", PERIOD, [QUOTA]) == {}
        counter = Counter(tenant_id="t1", subject=QUOTA, period_start=PERIOD)
        counter.hold(3, 6)
        await uow.billing.save_counter(counter)
        await uow.commit()
    async with backend.uow() as uow:
        await uow.accounts.lock("acct_t1")
        found = await uow.billing.counters("t1", PERIOD, [QUOTA, "user:alice"])
        assert list(found) == [QUOTA]
        found[QUOTA].unhold(3, 6)
        found[QUOTA].use(2, 1, 4)
        await uow.billing.save_counter(found[QUOTA])
        await uow.commit()
    async with backend.uow(read_only=True) as uow:
        every = await uow.billing.all_counters("t1")
        elsewhere = await uow.billing.counters("t1", PERIOD + timedelta(days=31), [QUOTA])
    assert [c.values() for c in every] == [(2, 0, 1, 4, 0)]
    assert elsewhere == {}


async def test_an_alert_fires_once_per_subject_period_and_threshold(backend: Backend) -> None:
    alert = Alert(
        id="alr_1",
        tenant_id="t1",
        subject="quota:images",
        period_start=PERIOD,
        threshold=80,
        used=8,
        limit=10,
        fired_at=T0,
    )
    async with backend.uow() as uow:
        await uow.billing.add_alert(alert)
        await uow.billing.add_alert(attrs.evolve(alert, id="alr_2", threshold=90))
        await uow.commit()
    async with backend.uow(read_only=True) as uow:
        fired = await uow.billing.fired("t1", PERIOD)
        stored = await uow.billing.alerts("t1")
    assert fired == {("quota:images", 80), ("quota:images", 90)}
    assert stored[0] == alert

    async def again() -> None:
        async with backend.uow() as uow:
            await uow.billing.add_alert(attrs.evolve(alert, id="alr_3"))
            await uow.commit()

    with pytest.raises((ValueError, IntegrityError)):
        await again()


async def test_accounts_and_reservations_keep_their_billing_fields(backend: Backend) -> None:
    await open_account(backend, balance=100)
    async with backend.uow() as uow:
        acct = await uow.accounts.lock("acct_t1")
        assert acct is not None
        assert (acct.plan_id, acct.has_budgets) == (None, False)
        acct.plan_id, acct.has_budgets = "pro", True
        reservation = acct.reserve("res_1", Credits(4), T0, T0 + timedelta(minutes=5))
        reservation.included_images, reservation.overage_images = 3, 2
        reservation.period_start = PERIOD
        reservation.holds = (QUOTA, "user:alice")
        await uow.accounts.save(acct)
        await uow.accounts.add_reservation(reservation)
        await uow.commit()
    async with backend.uow(read_only=True) as uow:
        loaded = await uow.accounts.get("acct_t1")
        stored = await uow.accounts.get_reservation("res_1")
        tenants = await uow.billing.tenants()
    assert loaded is not None
    assert stored is not None
    assert (loaded.plan_id, loaded.has_budgets) == ("pro", True)
    assert (stored.included_images, stored.overage_images, stored.period_start, stored.holds) == (
        3,
        2,
        PERIOD,
        (QUOTA, "user:alice"),
    )
    assert tenants == ["t1"]
    assert account().plan_id is None
