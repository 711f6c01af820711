"""Billing: plans and subscriptions, budgets, refunds and adjustments, usage reports, and the
check that every billing record agrees with the ledger (``VerifyBilling``).

Nothing here updates or deletes a ledger entry: a refund or a correction is a new, linked
entry. Every writer locks the tenant's account first (the lock generations reserve under).
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter as Tally
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

import attrs

from imagegen.application.accounts import account_id_for, lock_or_open_account
from imagegen.application.billing import recount
from imagegen.application.commands import (
    DEFAULT_TENANT,
    AdjustCommand,
    GenerationPolicy,
    RefundCommand,
    SetBudgetCommand,
    SubscribeCommand,
    UsageReportCommand,
)
from imagegen.application.ports import (
    Clock,
    IdGenerator,
    PlanCatalog,
    UnitOfWork,
    UnitOfWorkFactory,
    UsageQuery,
)
from imagegen.application.use_cases.credits import Balance, Ledger
from imagegen.domain.billing import EntryKind, LedgerEntry, Reservation, ReservationStatus
from imagegen.domain.errors import GenerationNotFound, InvalidParameter
from imagegen.domain.plans import (
    QUOTA,
    Budget,
    BudgetScope,
    Counter,
    Plan,
    Subscription,
    SubscriptionStatus,
    budget_subjects,
    counted_images,
    expected_counter,
    parse_period,
    period_start,
    subject_of,
)
from imagegen.domain.usage import UsageEvent, UsageKind, usage_id_for_capture, usage_id_for_refund
from imagegen.domain.values import Credits

MAX_MEMO = 500


def _memo(text: str, what: str) -> str:
    memo = (text or "").strip()
    if not memo or len(memo) > MAX_MEMO:
        raise InvalidParameter(f"{what} is 1 to {MAX_MEMO} characters.")
    return memo


# --- plans and subscriptions ---------------------------------------------------------------------


class _AccountWriter:
    """A use case that may open the tenant's account (with its starting credits)."""

    def __init__(
        self, *, uow: UnitOfWorkFactory, clock: Clock, ids: IdGenerator, policy: GenerationPolicy
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._ids = ids
        self._policy = policy


class ListPlans:
    def __init__(self, *, plans: PlanCatalog) -> None:
        self._plans = plans

    def execute(self) -> Sequence[Plan]:
        return list(self._plans.all())


class Subscribe(_AccountWriter):
    """Put a tenant on a plan (``plan_id="none"`` cancels). Takes effect at once: the
    current month's quota counter is recounted from its usage, and open reservations of the
    month are adopted by it."""

    def __init__(
        self,
        *,
        uow: UnitOfWorkFactory,
        plans: PlanCatalog,
        clock: Clock,
        ids: IdGenerator,
        policy: GenerationPolicy,
    ) -> None:
        super().__init__(uow=uow, clock=clock, ids=ids, policy=policy)
        self._plans = plans

    async def execute(self, command: SubscribeCommand) -> Subscription:
        cancel = command.plan_id == "none"
        if not cancel:
            self._plans.get(command.plan_id)  # an unknown plan fails before any write
        customer = command.meter_customer_id
        if customer is not None and not customer.strip():
            raise InvalidParameter("A meter customer id cannot be empty.")
        async with self._uow() as uow:
            account = await lock_or_open_account(
                uow, command.tenant_id, self._policy, self._clock, self._ids
            )
            now = self._clock.now()
            current = await uow.billing.get_subscription(command.tenant_id)
            if cancel:
                if current is None:
                    raise InvalidParameter(f"Tenant {command.tenant_id} has no subscription.")
                subscription = attrs.evolve(
                    current, status=SubscriptionStatus.CANCELED, changed_at=now
                )
                account.plan_id = None
            else:
                subscription = Subscription(
                    tenant_id=command.tenant_id,
                    plan_id=command.plan_id,
                    started_at=current.started_at if current is not None else now,
                    changed_at=now,
                    meter_customer_id=customer
                    or (current.meter_customer_id if current is not None else None),
                )
                account.plan_id = command.plan_id
                await recount(uow, account, QUOTA, now)
            account.updated_at = now
            await uow.billing.save_subscription(subscription)
            await uow.accounts.save(account)
            await uow.commit()
        return subscription


class GetSubscription:
    def __init__(self, *, uow: UnitOfWorkFactory) -> None:
        self._uow = uow

    async def execute(self, tenant_id: str = DEFAULT_TENANT) -> Subscription | None:
        async with self._uow(read_only=True) as uow:
            return await uow.billing.get_subscription(tenant_id)


# --- budgets -------------------------------------------------------------------------------------


def _subject(user: str | None, project: str | None) -> str:
    if (user is None) == (project is None):
        raise InvalidParameter("A budget is for one user or one project (not both).")
    if user is not None:
        return subject_of(BudgetScope.USER, user)
    assert project is not None
    return subject_of(BudgetScope.PROJECT, project)


class SetBudget(_AccountWriter):
    """Set (or replace) a user's or project's monthly cap; its counter for the current month
    is recounted from the usage so far, so a cap set mid-month counts what was spent."""

    async def execute(self, command: SetBudgetCommand) -> Budget:
        subject = _subject(command.user, command.project)
        now = self._clock.now()
        budget = Budget(
            tenant_id=command.tenant_id,
            subject=subject,
            limit_credits=command.limit_credits,
            limit_images=command.limit_images,
            since=now,
        )
        async with self._uow() as uow:
            account = await lock_or_open_account(
                uow, command.tenant_id, self._policy, self._clock, self._ids
            )
            await uow.billing.save_budget(budget)
            await recount(uow, account, subject, now)
            account.has_budgets = True
            account.updated_at = now
            await uow.accounts.save(account)
            await uow.commit()
        return budget


class ListBudgets:
    def __init__(self, *, uow: UnitOfWorkFactory, clock: Clock) -> None:
        self._uow = uow
        self._clock = clock

    async def execute(self, tenant_id: str = DEFAULT_TENANT) -> list[tuple[Budget, Counter]]:
        """Each budget with its counter of the current month."""
        period = period_start(self._clock.now())
        async with self._uow(read_only=True) as uow:
            budgets = list(await uow.billing.budgets(tenant_id))
            found = await uow.billing.counters(tenant_id, period, [b.subject for b in budgets])
        empty = Counter(tenant_id=tenant_id, subject="", period_start=period)
        return [(b, found.get(b.subject, attrs.evolve(empty, subject=b.subject))) for b in budgets]


class RemoveBudget:
    def __init__(self, *, uow: UnitOfWorkFactory) -> None:
        self._uow = uow

    async def execute(
        self,
        *,
        user: str | None = None,
        project: str | None = None,
        tenant_id: str = DEFAULT_TENANT,
    ) -> bool:
        subject = _subject(user, project)
        async with self._uow() as uow:
            account = await uow.accounts.lock(account_id_for(tenant_id))
            if account is None:
                return False
            removed = await uow.billing.remove_budget(tenant_id, subject)
            account.has_budgets = bool(await uow.billing.budgets(tenant_id))
            await uow.accounts.save(account)
            await uow.commit()
        return removed


# --- refunds and adjustments ---------------------------------------------------------------------


@attrs.frozen
class RefundOutcome:
    event: UsageEvent
    entry: LedgerEntry | None
    balance: Balance


class Refund:
    """Refund all or part of a generation's captured credits: a new ``refund`` ledger entry
    linked to the capture, and a negative usage event linked to the capture's. Optionally
    gives the quota's included images back (``restore_quota``)."""

    def __init__(self, *, uow: UnitOfWorkFactory, clock: Clock, ids: IdGenerator) -> None:
        self._uow = uow
        self._clock = clock
        self._ids = ids

    async def execute(self, command: RefundCommand) -> RefundOutcome:
        reason = _memo(command.reason, "A refund's reason")
        async with self._uow() as uow:
            account = await uow.accounts.lock(account_id_for(command.tenant_id))
            generation = await uow.generations.get(command.tenant_id, command.generation_id)
            if generation is None or account is None:
                raise GenerationNotFound(
                    f"No generation {command.generation_id}.", generation_id=command.generation_id
                )
            capture = (
                await uow.usage.get(usage_id_for_capture(generation.reservation_id))
                if generation.reservation_id
                else None
            )
            if capture is None:
                raise InvalidParameter(
                    f"Generation {generation.id} was never charged; there is nothing to refund.",
                    generation_id=generation.id,
                )
            earlier = await uow.usage.refunds_of(capture.id)
            refundable = capture.credits + sum(r.credits for r in earlier)
            restorable = capture.included_images + sum(r.included_images for r in earlier)
            credits = refundable if command.credits is None else command.credits
            if command.credits is not None and (isinstance(credits, bool) or credits < 1):
                raise InvalidParameter("A refund is at least 1 credit.")
            images = restorable if command.restore_quota else 0
            if credits == 0 and images == 0:
                raise InvalidParameter(
                    f"Generation {generation.id} has nothing left to refund.",
                    generation_id=generation.id,
                )
            now = self._clock.now()
            entry_id = self._ids.new("ent")
            entry = None
            if credits > 0:
                entry = account.refund(
                    entry_id,
                    Credits(credits),
                    now,
                    capture_entry_id=capture.ledger_entry_id or "",
                    refundable=refundable,
                    memo=reason,
                )
            event = attrs.evolve(
                capture,
                id=usage_id_for_refund(entry_id),
                kind=UsageKind.REFUND,
                ledger_entry_id=entry.id if entry is not None else None,
                images=-images,
                included_images=-images,
                overage_images=0,
                credits=-credits,
                provider_cost_usd=None,
                occurred_at=now,
                refunds_event_id=capture.id,
            )
            await self._uncount(uow, event)
            await uow.usage.add(event)
            await uow.accounts.save(account)
            await uow.commit()
        return RefundOutcome(event, entry, Balance.of(account))

    @staticmethod
    async def _uncount(uow: UnitOfWork, event: UsageEvent) -> None:
        """Take the refund off the counters of the capture's period that count it."""
        subjects = [QUOTA, *budget_subjects(event.principal_id, event.project_id)]
        found = await uow.billing.counters(event.tenant_id, event.period_start, subjects)
        for subject, counter in found.items():
            counter.use(
                counted_images(subject, event.included_images, event.overage_images),
                event.overage_images,
                event.credits,
            )
            await uow.billing.save_counter(counter)


class Adjust(_AccountWriter):
    """A signed correction of a tenant's credits, with a mandatory memo; it can never leave
    the available credits negative."""

    async def execute(self, command: AdjustCommand) -> tuple[LedgerEntry, Balance]:
        memo = _memo(command.memo, "An adjustment's memo")
        async with self._uow() as uow:
            account = await lock_or_open_account(
                uow, command.tenant_id, self._policy, self._clock, self._ids
            )
            entry = account.adjust(self._ids.new("ent"), command.credits, self._clock.now(), memo)
            await uow.accounts.save(account)
            await uow.commit()
        return entry, Balance.of(account)


# --- usage reports -------------------------------------------------------------------------------

DIMENSIONS = ("user", "project", "provider", "model", "operation", "day")
_CENT = Decimal("0.01")


def _dimension(event: UsageEvent, name: str) -> str:
    if name == "user":
        return event.principal_id
    if name == "project":
        return event.project_id or "-"
    if name == "model":
        return f"{event.provider}/{event.model}"
    if name == "day":
        return event.occurred_at.date().isoformat()
    value: str = getattr(event, name)
    return value


@attrs.frozen(kw_only=True)
class UsageRow:
    key: tuple[str, ...]
    generations: int
    images: int
    included_images: int
    overage_images: int
    credits: int
    revenue_usd: Decimal
    provider_cost_usd: Decimal
    refunds: int = 0

    @property
    def margin_usd(self) -> Decimal:
        return self.revenue_usd - self.provider_cost_usd

    def as_dict(self, by: Sequence[str], *, cents: bool = False) -> dict[str, object]:
        def money(value: Decimal) -> str:
            return str(value.quantize(_CENT) if cents else value)

        return {
            **dict(zip(by, self.key, strict=True)),
            "generations": self.generations,
            "images": self.images,
            "included_images": self.included_images,
            "overage_images": self.overage_images,
            "credits": self.credits,
            "refunds": self.refunds,
            "revenue_usd": money(self.revenue_usd),
            "provider_cost_usd": money(self.provider_cost_usd),
            "margin_usd": money(self.margin_usd),
        }


def _row(key: tuple[str, ...], events: Sequence[UsageEvent], usd_per_credit: Decimal) -> UsageRow:
    credits = sum(e.credits for e in events)
    return UsageRow(
        key=key,
        generations=sum(1 for e in events if e.kind is UsageKind.CAPTURE),
        refunds=sum(1 for e in events if e.kind is UsageKind.REFUND),
        images=sum(e.images for e in events),
        included_images=sum(e.included_images for e in events),
        overage_images=sum(e.overage_images for e in events),
        credits=credits,
        revenue_usd=credits * usd_per_credit,
        provider_cost_usd=sum(
            (e.provider_cost_usd for e in events if e.provider_cost_usd is not None), Decimal(0)
        ),
    )


@attrs.frozen(kw_only=True)
class UsageReportResult:
    """Usage of ``[start, end)`` (by when it happened: a refund counts when it is made).
    Money is exact (``Decimal``); exports round to cents only when asked for display."""

    tenant_id: str
    start: datetime
    end: datetime
    by: tuple[str, ...]
    rows: tuple[UsageRow, ...]
    total: UsageRow

    def to_json(self) -> str:
        return json.dumps(
            {
                "tenant_id": self.tenant_id,
                "start": self.start.isoformat(),
                "end": self.end.isoformat(),
                "by": list(self.by),
                "rows": [row.as_dict(self.by) for row in self.rows],
                "total": self.total.as_dict(()),
            },
            indent=2,
        )

    def to_csv(self) -> str:
        out = io.StringIO()
        columns = list(self.total.as_dict(()).keys())
        writer = csv.DictWriter(out, fieldnames=[*self.by, *columns], lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow(row.as_dict(self.by))
        writer.writerow({**{d: "TOTAL" for d in self.by[:1]}, **self.total.as_dict(())})
        return out.getvalue()


class UsageReport:
    def __init__(self, *, uow: UnitOfWorkFactory, policy: GenerationPolicy) -> None:
        self._uow = uow
        self._policy = policy

    async def execute(self, command: UsageReportCommand) -> UsageReportResult:
        by = tuple(dict.fromkeys(d.strip().lower() for d in command.by if d.strip()))
        unknown = [d for d in by if d not in DIMENSIONS]
        if unknown:
            raise InvalidParameter(
                f"Cannot group usage by {', '.join(unknown)}; use {', '.join(DIMENSIONS)}."
            )
        if command.period is not None and (command.start, command.end) != (None, None):
            raise InvalidParameter("A usage report is a period or a start and end, not both.")
        if command.period is not None:
            start, end = parse_period(command.period)
        elif command.start is not None and command.end is not None:
            start, end = command.start, command.end
        else:
            raise InvalidParameter("A usage report needs a period (2026-11) or a start and end.")
        if end <= start:
            raise InvalidParameter("A usage report's end comes after its start.")
        async with self._uow(read_only=True) as uow:
            events = await uow.usage.list(UsageQuery(command.tenant_id, start, end))
        groups: dict[tuple[str, ...], list[UsageEvent]] = defaultdict(list)
        for event in events:
            groups[tuple(_dimension(event, d) for d in by)].append(event)
        rate = self._policy.usd_per_credit
        rows = tuple(_row(key, groups[key], rate) for key in sorted(groups))
        return UsageReportResult(
            tenant_id=command.tenant_id,
            start=start,
            end=end,
            by=by,
            rows=rows,
            total=_row((), events, rate),
        )


# --- verification --------------------------------------------------------------------------------


@attrs.frozen
class BillingCheck:
    tenants: int
    usage_events: int
    violations: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.violations


def _usage_violations(
    entries: Sequence[LedgerEntry],
    reservations: Sequence[Reservation],
    events: Sequence[UsageEvent],
) -> list[str]:
    problems: list[str] = []
    by_id = {e.id: e for e in entries}
    captures = [e for e in events if e.kind is UsageKind.CAPTURE]
    refunds = [e for e in events if e.kind is UsageKind.REFUND]
    captured_by_event = sum(e.credits for e in captures)
    captured_by_ledger = -sum(e.amount for e in entries if e.kind is EntryKind.CAPTURE)
    if captured_by_event != captured_by_ledger:
        problems.append(
            f"capture usage events charge {captured_by_event} credits but the ledger's "
            f"captures debit {captured_by_ledger}"
        )
    refunded_by_event = -sum(e.credits for e in refunds)
    refunded_by_ledger = sum(e.amount for e in entries if e.kind is EntryKind.REFUND)
    if refunded_by_event != refunded_by_ledger:
        problems.append(
            f"refund usage events give back {refunded_by_event} credits but the ledger's "
            f"refunds credit {refunded_by_ledger}"
        )
    for event in events:
        entry = by_id.get(event.ledger_entry_id) if event.ledger_entry_id else None
        if event.ledger_entry_id is not None and entry is None:
            problems.append(f"usage event {event.id}: ledger entry {event.ledger_entry_id} missing")
        elif entry is not None and entry.amount != -event.credits:
            problems.append(
                f"usage event {event.id}: {event.credits} credits but ledger entry {entry.id} "
                f"moved {entry.amount}"
            )
        elif entry is None and event.credits != 0:
            problems.append(f"usage event {event.id}: {event.credits} credits without an entry")
        if event.included_images + event.overage_images != event.images:
            problems.append(f"usage event {event.id}: included + overage != images")
    events_of = Tally(e.reservation_id for e in captures)
    for reservation in reservations:
        count = events_of.get(reservation.id, 0)
        if reservation.status is ReservationStatus.CAPTURED and count != 1:
            problems.append(f"reservation {reservation.id}: captured with {count} usage events")
        if reservation.status is not ReservationStatus.CAPTURED and count:
            problems.append(
                f"reservation {reservation.id}: {reservation.status.value} but has a usage event"
            )
    charged = {e.id: e.credits for e in captures}
    refunded: Tally[str] = Tally()
    for refund in refunds:
        if refund.refunds_event_id not in charged:
            problems.append(
                f"refund {refund.id}: refunds unknown capture {refund.refunds_event_id}"
            )
            continue
        refunded[refund.refunds_event_id] += -refund.credits
    for capture_id, total in refunded.items():
        if total > charged[capture_id]:
            problems.append(f"capture {capture_id}: refunded {total} of {charged[capture_id]}")
    return problems


class VerifyBilling:
    """Check every billing invariant of every tenant (or one): the ledger's own, usage events
    against the ledger, counters against usage and open reservations, alerts fired once."""

    def __init__(self, *, uow: UnitOfWorkFactory) -> None:
        self._uow = uow

    async def execute(self, tenant_id: str | None = None) -> BillingCheck:
        problems: list[str] = []
        count = 0
        async with self._uow(read_only=True) as uow:
            tenants = [tenant_id] if tenant_id is not None else list(await uow.billing.tenants())
            for tenant in tenants:
                found, events = await self._tenant(uow, tenant)
                problems.extend(f"{tenant}: {p}" for p in found)
                count += events
        return BillingCheck(len(tenants), count, tuple(problems))

    async def _tenant(self, uow: UnitOfWork, tenant: str) -> tuple[list[str], int]:
        account = await uow.accounts.get(account_id_for(tenant))
        if account is None:
            return [], 0
        entries = list(await uow.accounts.entries(account.id))
        reservations = list(await uow.accounts.reservations(account.id))
        events = list(await uow.usage.list(UsageQuery(tenant)))
        ledger = Ledger(Balance.of(account), tuple(entries), tuple(reservations))
        problems = ledger.violations()
        problems.extend(_usage_violations(entries, reservations, events))
        problems.extend(await self._counter_violations(uow, tenant, events, reservations))
        alerts = await uow.billing.alerts(tenant)
        for key, times in Tally(a.key for a in alerts).items():
            if times > 1:
                problems.append(f"alert {key[1]} {key[3]}% fired {times} times in {key[2]:%Y-%m}")
        return problems, len(events)

    @staticmethod
    async def _counter_violations(
        uow: UnitOfWork,
        tenant: str,
        events: Sequence[UsageEvent],
        reservations: Sequence[Reservation],
    ) -> list[str]:
        """Counters are checked from when they started counting: the quota from the last
        plan change of an active subscription, a budget from when it was set."""
        subscription = await uow.billing.get_subscription(tenant)
        since: dict[str, datetime] = {
            b.subject: period_start(b.since) for b in await uow.billing.budgets(tenant)
        }
        if subscription is not None and subscription.active:
            since[QUOTA] = period_start(subscription.changed_at)
        problems = []
        for counter in await uow.billing.all_counters(tenant):
            start = since.get(counter.subject)
            if start is None or counter.period_start < start:
                continue
            expected = expected_counter(
                tenant, counter.subject, counter.period_start, events, reservations
            )
            if expected.values() != counter.values():
                names = ("used_images", "held_images", "overage_images", "used_credits")
                diff = [
                    f"{name} {got} != {want}"
                    for name, got, want in zip(
                        (*names, "held_credits"), counter.values(), expected.values(), strict=True
                    )
                    if got != want
                ]
                problems.append(
                    f"counter {counter.subject} {counter.period_start:%Y-%m}: " + ", ".join(diff)
                )
        return problems
