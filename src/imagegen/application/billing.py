"""Quota, budgets, usage events and alerts inside the generation's own transactions.

Every function here runs with the tenant's account locked (``AccountRepository.lock``), which
serializes all of a tenant's billing state across processes. A tenant without a plan and
without budgets (``account.plan_id is None and not account.has_budgets``) touches no quota or
budget table: its reservation costs the same statements as before billing existed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation

import attrs

from imagegen.application.ports import IdGenerator, PlanCatalog, UnitOfWork, UsageQuery
from imagegen.domain.billing import CreditAccount, LedgerEntry, Reservation
from imagegen.domain.events import DomainEvent
from imagegen.domain.generation import Generation
from imagegen.domain.plans import (
    QUOTA,
    THRESHOLD_EVENT,
    Alert,
    Budget,
    Counter,
    Plan,
    budget_subjects,
    counted_images,
    expected_counter,
    period_start,
    reached,
    subject_counts,
)
from imagegen.domain.usage import UsageEvent, UsageKind, usage_id_for_capture
from imagegen.domain.values import Credits


@attrs.frozen(kw_only=True)
class Hold:
    """What a reservation holds: credits, the quota split, and the counters it holds in."""

    credits: Credits
    included: int
    overage: int
    period_start: datetime
    subjects: tuple[str, ...] = ()


def _counter(found: dict[str, Counter], tenant_id: str, subject: str, period: datetime) -> Counter:
    return found.get(subject) or Counter(tenant_id=tenant_id, subject=subject, period_start=period)


async def plan_hold(
    uow: UnitOfWork,
    account: CreditAccount,
    plans: PlanCatalog | None,
    *,
    n: int,
    estimate: Credits,
    principal_id: str,
    project_id: str | None,
    now: datetime,
) -> Hold:
    """Decide what a request of ``n`` images (``estimate`` credits at the model's price)
    holds; raises ``QuotaExceeded`` / ``BudgetExceeded`` before anything is written."""
    period = period_start(now)
    plan = plans.get(account.plan_id) if plans is not None and account.plan_id else None
    if plan is None and not account.has_budgets:
        return Hold(credits=estimate, included=0, overage=n, period_start=period)
    budgets: list[Budget] = []
    if account.has_budgets:
        mine = budget_subjects(principal_id, project_id)
        budgets = [b for b in await uow.billing.budgets(account.tenant_id) if b.subject in mine]
    subjects = ([QUOTA] if plan is not None else []) + [b.subject for b in budgets]
    if not subjects:
        return Hold(credits=estimate, included=0, overage=n, period_start=period)
    found = await uow.billing.counters(account.tenant_id, period, subjects)
    credits, included, overage = estimate, 0, n
    if plan is not None:
        quota = _counter(found, account.tenant_id, QUOTA, period)
        split = plan.split(n, quota.used_images, quota.held_images)
        per_image = -(-estimate.amount // max(n, 1))
        included, overage = split.included, split.overage
        credits = Credits(plan.overage_credits(overage, per_image))
    for budget in budgets:
        counter = _counter(found, account.tenant_id, budget.subject, period)
        budget.check(counter, included + overage, credits.amount)
    return Hold(
        credits=credits,
        included=included,
        overage=overage,
        period_start=period,
        subjects=tuple(subjects),
    )


async def _move_holds(
    uow: UnitOfWork, tenant_id: str, reservation: Reservation, sign: int
) -> dict[str, Counter]:
    """Add (``sign=1``) or take back (``-1``) a reservation's holds on its counters."""
    if not reservation.holds:
        return {}
    period = reservation.period_start
    assert period is not None, "a reservation that holds counters has a period"
    found = await uow.billing.counters(tenant_id, period, reservation.holds)
    for subject in reservation.holds:
        counter = _counter(found, tenant_id, subject, period)
        images = counted_images(subject, reservation.included_images, reservation.overage_images)
        counter.hold(sign * images, sign * reservation.amount)
        found[subject] = counter
    return found


async def apply_hold(uow: UnitOfWork, tenant_id: str, reservation: Reservation) -> None:
    """Add a new reservation's holds to its counters."""
    for counter in (await _move_holds(uow, tenant_id, reservation, 1)).values():
        await uow.billing.save_counter(counter)


async def return_holds(uow: UnitOfWork, tenant_id: str, reservation: Reservation) -> None:
    """A released (or expired) reservation gives its holds back."""
    for counter in (await _move_holds(uow, tenant_id, reservation, -1)).values():
        await uow.billing.save_counter(counter)


def _cost(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


async def record_capture(
    uow: UnitOfWork,
    account: CreditAccount,
    reservation: Reservation,
    generation: Generation,
    entry: LedgerEntry | None,
    *,
    delivered: int,
    plans: PlanCatalog | None,
    thresholds: Sequence[int],
    ids: IdGenerator,
    now: datetime,
) -> UsageEvent:
    """After ``account.capture``: settle the counters, append the usage event and fire the
    alerts whose thresholds the capture reached (once per period, ever)."""
    included = min(delivered, reservation.included_images)
    overage = delivered - included
    credits = reservation.captured_amount
    period = reservation.period_start or period_start(reservation.created_at)
    if reservation.holds:
        found = await _move_holds(uow, account.tenant_id, reservation, -1)
        for subject, counter in found.items():
            counter.use(counted_images(subject, included, overage), overage, credits)
            await uow.billing.save_counter(counter)
        await _fire_alerts(uow, account, found, period, plans, thresholds, ids, now)
    event = UsageEvent(
        id=usage_id_for_capture(reservation.id),
        kind=UsageKind.CAPTURE,
        tenant_id=generation.tenant_id,
        principal_id=generation.principal_id,
        project_id=generation.project_id,
        generation_id=generation.id,
        reservation_id=reservation.id,
        ledger_entry_id=entry.id if entry is not None else None,
        provider=generation.provider,
        model=generation.model,
        operation=generation.parameters.operation.value,
        images=delivered,
        included_images=included,
        overage_images=overage,
        credits=credits,
        provider_cost_usd=_cost(generation.provider_cost_usd),
        period_start=period,
        occurred_at=now,
    )
    await uow.usage.add(event)
    return event


def _limits(
    counters: dict[str, Counter], plan: Plan | None, budgets: Sequence[Budget]
) -> list[tuple[str, int, int | None]]:
    """(alert subject, used, limit) of every quota and budget a capture changed."""
    limits: list[tuple[str, int, int | None]] = []
    quota = counters.get(QUOTA)
    if quota is not None and plan is not None:
        limits.append(("quota:images", quota.used_images, plan.included_images))
    for budget in budgets:
        counter = counters.get(budget.subject)
        if counter is None:
            continue
        limits.append((f"{budget.subject}:credits", counter.used_credits, budget.limit_credits))
        limits.append((f"{budget.subject}:images", counter.used_images, budget.limit_images))
    return limits


async def _fire_alerts(
    uow: UnitOfWork,
    account: CreditAccount,
    counters: dict[str, Counter],
    period: datetime,
    plans: PlanCatalog | None,
    thresholds: Sequence[int],
    ids: IdGenerator,
    now: datetime,
) -> None:
    plan = plans.get(account.plan_id) if plans is not None and account.plan_id else None
    budgets = await uow.billing.budgets(account.tenant_id) if account.has_budgets else []
    limits = _limits(counters, plan, budgets)
    due = [
        (s, used, limit, t) for s, used, limit in limits for t in reached(thresholds, used, limit)
    ]
    if not due:
        return
    fired = await uow.billing.fired(account.tenant_id, period)
    events: list[DomainEvent] = []
    for subject, used, limit, threshold in due:
        if (subject, threshold) in fired:
            continue
        assert limit is not None
        alert = Alert(
            id=ids.new("alr"),
            tenant_id=account.tenant_id,
            subject=subject,
            period_start=period,
            threshold=threshold,
            used=used,
            limit=limit,
            fired_at=now,
        )
        await uow.billing.add_alert(alert)
        events.append(
            DomainEvent(
                THRESHOLD_EVENT,
                account.tenant_id,
                now,
                {
                    "tenant_id": account.tenant_id,
                    "subject": subject,
                    "period_start": period.isoformat(),
                    "threshold": threshold,
                    "used": used,
                    "limit": limit,
                    "plan_id": account.plan_id,
                },
            )
        )
    uow.record(events)


async def recount(uow: UnitOfWork, account: CreditAccount, subject: str, now: datetime) -> Counter:
    """Rebuild ``subject``'s counter of the current period from the usage events and the open
    reservations, adopting the open ones of the subject that did not hold it yet: called when
    a plan or a budget starts counting (so counters always equal what verify recomputes)."""
    period = period_start(now)
    tenant_id = account.tenant_id
    events = await uow.usage.list(UsageQuery(tenant_id, occurred_from=period))
    open_ = [
        r
        for r in await uow.accounts.reservations(account.id)
        if not r.status.is_resolved and r.period_start == period
    ]
    for reservation in open_:
        if subject in reservation.holds:
            continue
        generation = await uow.generations.get_by_reservation(reservation.id)
        if generation is None or not subject_counts(
            subject, generation.principal_id, generation.project_id
        ):
            continue
        reservation.holds = (*reservation.holds, subject)
        await uow.accounts.save_reservation(reservation)
    counter = expected_counter(tenant_id, subject, period, events, open_)
    await uow.billing.save_counter(counter)
    return counter
