"""Billing against a reference model, driven by hypothesis.

A state machine subscribes and cancels plans, sets and removes budgets, generates (with short
deliveries and provider failures), crashes right after reserving, lets reservations expire
and sweeps them, refunds, adjusts and moves to the next month — through the real use cases,
on the in-memory adapters and on SQLite. After every step: ``VerifyBilling`` finds nothing,
the balance matches the model, available credits are never negative, every reservation is
resolved at most once, and each alert fired exactly once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter as Tally
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from imagegen import (
    AsyncImageGen,
    BudgetExceeded,
    InsufficientCredits,
    ProviderUnavailable,
    QuotaExceeded,
    Settings,
)
from imagegen.application.commands import GenerateCommand
from imagegen.bootstrap.container import build_container
from imagegen.domain.billing import ReservationStatus
from imagegen.domain.plans import THRESHOLD_EVENT, Overage, Plan
from imagegen.domain.values import ImageFormat
from imagegen.infrastructure.billing.plans import StaticPlanCatalog
from imagegen.infrastructure.system import UlidGenerator
from imagegen.testing import (
    InMemoryBlobStorage,
    InMemoryUnitOfWorkFactory,
    ManualClock,
    ScriptedProvider,
)
from imagegen.testing.fakes import render_image

PRICE = 2  # credits per local image
TTL = timedelta(minutes=15)
PLANS = {
    "small": Plan(
        id="small",
        name="Small",
        included_images=4,
        overage=Overage.REFUSE,
        max_images_per_request=3,
    ),
    "meter": Plan(
        id="meter",
        name="Meter",
        included_images=3,
        overage=Overage.CHARGE,
        overage_credits_per_image=1,
    ),
    "model": Plan(id="model", name="Model", included_images=2, overage=Overage.CHARGE),
}
USERS = ("ann", "bob")
PROJECTS = (None, "apollo")
THRESHOLDS = (80, 90, 100)
IMAGE = render_image(16, 16, ImageFormat.PNG)


@attrs.define
class Res:
    """The model's reservation."""

    generation: int
    user: str
    project: str | None
    credits: int
    included: int
    overage: int
    period: datetime
    holds: set[str]
    open: bool = True


@attrs.define
class Event:
    user: str
    project: str | None
    period: datetime
    included: int
    images: int
    credits: int


def month(when: datetime) -> datetime:
    return datetime(when.year, when.month, 1, tzinfo=UTC)


def counts(subject: str, user: str, project: str | None) -> bool:
    return subject == "quota" or subject in (f"user:{user}", f"project:{project}")


class BillingMachine(RuleBasedStateMachine):
    database_url: str | None = None  # None: the in-memory adapters

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = ManualClock(datetime(2026, 11, 20, tzinfo=UTC))
        self.provider = ScriptedProvider("local")
        self.memory = InMemoryUnitOfWorkFactory()
        self.scratch = Path(f"/tmp/imagegen-stateful-{uuid.uuid4().hex[:8]}")
        self.tenant = f"t{uuid.uuid4().hex[:10]}"
        config: dict[str, Any] = {
            "data_dir": self.scratch,
            "starting_credits": 60,
            "local_credits_per_image": PRICE,
            "reservation_ttl_seconds": int(TTL.total_seconds()),
        }
        if self.database_url is None:
            config["auto_migrate"] = False
        else:
            config["database_url"] = self.database_url
        container = build_container(Settings(**config))
        if self.database_url is None:
            container.gateways.uow.override(self.memory)
        container.gateways.storage.override(InMemoryBlobStorage())
        container.gateways.clock.override(self.clock)
        container.gateways.ids.override(UlidGenerator())  # the SQLite file outlives a run
        container.gateways.local_provider.override(self.provider)
        container.gateways.plans.override(StaticPlanCatalog(list(PLANS.values())))
        self.gen = AsyncImageGen(container=container, tenant_id=self.tenant)
        self.run(self.gen.__aenter__())
        # the model
        self.balance = 60
        self.plan: str | None = None
        self.budgets: dict[str, tuple[int | None, int | None]] = {}
        self.reservations: list[Res] = []
        self.events: list[Event] = []
        self.captures: dict[str, tuple[int, int, Res]] = {}  # generation id -> credits, incl
        self.fired: Tally[tuple[str, datetime, int]] = Tally()
        self.run(self.gen.balance())  # opens the account with its starting credits

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        self.run(self.gen.aclose())
        self.loop.close()

    # --- the model's arithmetic ------------------------------------------------------------

    @property
    def period(self) -> datetime:
        return month(self.clock.now())

    def used(self, subject: str, period: datetime) -> tuple[int, int]:
        """(images, credits) the usage events of ``period`` count in ``subject``."""
        images = credits = 0
        for e in self.events:
            if e.period == period and counts(subject, e.user, e.project):
                images += e.included if subject == "quota" else e.images
                credits += e.credits
        return images, credits

    def held(self, subject: str, period: datetime) -> tuple[int, int]:
        images = credits = 0
        for r in self.reservations:
            if r.open and r.period == period and counts(subject, r.user, r.project):
                images += r.included if subject == "quota" else r.included + r.overage
                credits += r.credits
        return images, credits

    @property
    def available(self) -> int:
        return self.balance - sum(r.credits for r in self.reservations if r.open)

    def expect_reservation(self, user: str, project: str | None, n: int) -> Res | type[Exception]:
        period = self.period
        plan = PLANS[self.plan] if self.plan else None
        included, overage, credits = 0, n, n * PRICE
        if plan is not None:
            if plan.max_images_per_request is not None and n > plan.max_images_per_request:
                return QuotaExceeded
            used, _ = self.used("quota", period)
            held, _ = self.held("quota", period)
            included = min(n, max(plan.included_images - used - held, 0))
            overage = n - included
            if overage and plan.overage is Overage.REFUSE:
                return QuotaExceeded
            per_image = plan.overage_credits_per_image
            credits = overage * (PRICE if per_image is None else per_image)
        mine = [s for s in self.budgets if counts(s, user, project) and s != "quota"]
        for subject in mine:
            limit_credits, limit_images = self.budgets[subject]
            used_images, used_credits = self.used(subject, period)
            held_images, held_credits = self.held(subject, period)
            if limit_images is not None and used_images + held_images + n > limit_images:
                return BudgetExceeded
            if limit_credits is not None and used_credits + held_credits + credits > limit_credits:
                return BudgetExceeded
        if credits > self.available:
            return InsufficientCredits
        holds = set(mine) | ({"quota"} if plan is not None else set())
        return Res(len(self.reservations), user, project, credits, included, overage, period, holds)

    def fire_alerts(self, res: Res) -> None:
        plan = PLANS[self.plan] if self.plan else None
        limits: list[tuple[str, int, int | None]] = []
        if "quota" in res.holds and plan is not None:
            limits.append(("quota:images", self.used("quota", res.period)[0], plan.included_images))
        for subject in sorted(res.holds - {"quota"}):
            if subject in self.budgets:
                images, credits = self.used(subject, res.period)
                limit_credits, limit_images = self.budgets[subject]
                limits.append((f"{subject}:credits", credits, limit_credits))
                limits.append((f"{subject}:images", images, limit_images))
        for name, used, limit in limits:
            for t in THRESHOLDS:
                key = (name, res.period, t)
                if limit and used * 100 >= t * limit and key not in self.fired:
                    self.fired[key] += 1

    def command(self, user: str, project: str | None, n: int) -> GenerateCommand:
        return GenerateCommand(
            prompt="p", n=n, size="16x16", tenant_id=self.tenant, principal_id=user,
            project_id=project,
        )  # fmt: skip

    # --- rules -----------------------------------------------------------------------------

    @rule(plan=st.sampled_from([*PLANS, "none"]))
    def subscribe(self, plan: str) -> None:
        if plan == "none" and self.plan is None:
            return
        self.run(self.gen.subscribe(plan))
        self.plan = None if plan == "none" else plan
        if self.plan is not None:
            for r in self.reservations:
                if r.open and r.period == self.period:
                    r.holds.add("quota")

    @rule(
        scope=st.sampled_from(["user:ann", "user:bob", "project:apollo"]),
        credits=st.none() | st.integers(0, 30),
        images=st.none() | st.integers(0, 8),
    )
    def set_budget(self, scope: str, credits: int | None, images: int | None) -> None:
        if credits is None and images is None:
            return
        kind, key = scope.split(":")
        self.run(self.gen.set_budget(**{kind: key}, credits=credits, images=images))
        self.budgets[scope] = (credits, images)
        for r in self.reservations:
            if r.open and r.period == self.period and counts(scope, r.user, r.project):
                r.holds.add(scope)

    @rule(scope=st.sampled_from(["user:ann", "user:bob", "project:apollo"]))
    def remove_budget(self, scope: str) -> None:
        kind, key = scope.split(":")
        removed = self.run(self.gen.remove_budget(**{kind: key}))
        assert removed == (scope in self.budgets)
        self.budgets.pop(scope, None)

    @rule(
        user=st.sampled_from(USERS),
        project=st.sampled_from(PROJECTS),
        n=st.integers(1, 4),
        delivered=st.integers(0, 4),
    )
    def generate(self, user: str, project: str | None, n: int, delivered: int) -> None:
        delivered = min(delivered, n)
        expected = self.expect_reservation(user, project, n)
        if delivered == 0:
            self.provider.fail_next(ProviderUnavailable("down"))
        else:
            self.provider.return_next([IMAGE] * delivered)
        gen = self.gen.container.generate_images()
        command = self.command(user, project, n)
        if not isinstance(expected, Res):
            with pytest.raises(expected):
                self.run(gen.execute(command))
            self.provider.reset()
            return
        if delivered == 0:
            with pytest.raises(ProviderUnavailable):
                self.run(gen.execute(command))
            expected.open = False  # released
            self.reservations.append(expected)
            return
        outcome = self.run(gen.execute(command))
        expected.open = False
        self.reservations.append(expected)
        included = min(delivered, expected.included)
        overage = delivered - included
        if "quota" in expected.holds and expected.overage:
            charged = overage * (expected.credits // expected.overage)
        elif "quota" in expected.holds:
            charged = 0
        else:
            charged = delivered * PRICE
        assert outcome.generation.credits_charged == charged
        self.balance -= charged
        self.events.append(Event(user, project, expected.period, included, delivered, charged))
        self.captures[outcome.generation.id] = (charged, included, expected)
        self.fire_alerts(expected)

    @rule(user=st.sampled_from(USERS), project=st.sampled_from(PROJECTS), n=st.integers(1, 3))
    def crash_after_reserving(self, user: str, project: str | None, n: int) -> None:
        """The process dies between the reservation and the provider call."""
        expected = self.expect_reservation(user, project, n)
        gen = self.gen.container.generate_images()
        command = self.command(user, project, n)
        if not isinstance(expected, Res):
            with pytest.raises(expected):
                self.run(gen._reserve(command, self.run(gen.plan(command))))
            return
        self.run(gen._reserve(command, self.run(gen.plan(command))))
        self.reservations.append(expected)

    @rule()
    def expire_and_sweep(self) -> None:
        self.clock.advance(TTL + timedelta(seconds=1))
        released = self.run(self.gen.sweep())
        mine = sum(1 for r in self.reservations if r.open)
        # On SQLite earlier runs' tenants share the database: the sweeper releases theirs too.
        assert released == mine if self.database_url is None else released >= mine
        for r in self.reservations:
            r.open = False

    @precondition(lambda self: bool(self.captures))
    @rule(data=st.data(), restore=st.booleans())
    def refund(self, data: st.DataObject, restore: bool) -> None:
        generation_id = data.draw(st.sampled_from(sorted(self.captures)))
        left, restorable, res = self.captures[generation_id]
        credits = data.draw(st.none() | st.integers(1, max(left, 1)))
        amount = left if credits is None else credits
        images = restorable if restore else 0
        if (amount == 0 and images == 0) or amount > left:
            return
        self.run(self.gen.refund(generation_id, reason="r", credits=credits, restore_quota=restore))
        self.balance += amount
        self.captures[generation_id] = (left - amount, restorable - images, res)
        self.events.append(Event(res.user, res.project, res.period, -images, -images, -amount))

    @rule(amount=st.integers(-20, 20).filter(bool))
    def adjust(self, amount: int) -> None:
        if self.available + amount < 0:
            with pytest.raises(InsufficientCredits):
                self.run(self.gen.adjust(amount, memo="fix"))
            return
        self.run(self.gen.adjust(amount, memo="fix"))
        self.balance += amount

    @rule()
    def next_month(self) -> None:
        now = self.clock.now()
        self.clock.set(datetime(now.year + now.month // 12, now.month % 12 + 1, 2, tzinfo=UTC))

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def everything_reconciles_with_the_model(self) -> None:
        check = self.run(self.gen.verify_billing())
        assert check.violations == ()
        balance = self.run(self.gen.balance())
        assert balance.balance == self.balance
        assert balance.available == self.available >= 0
        ledger = self.run(self.gen.container.ledger_report().execute(self.tenant))
        statuses = Tally(r.status for r in ledger.reservations)
        assert statuses[ReservationStatus.ACTIVE] == sum(1 for r in self.reservations if r.open)
        captured = [e for e in ledger.entries if e.kind.value == "capture"]
        assert len({e.reservation_id for e in captured}) == len(captured)  # resolved once

    @invariant()
    def each_alert_fired_once(self) -> None:
        if self.database_url is not None:
            alerts = self.run(self.gen.container.verify_billing().execute(self.tenant))
            assert alerts.ok
            return
        fired = Tally(
            (e.data["subject"], e.data["period_start"], e.data["threshold"])
            for e in self.memory.outbox
            if e.name == THRESHOLD_EVENT and e.data["tenant_id"] == self.tenant
        )
        assert set(fired.values()) <= {1}
        expected = {(s, p.isoformat(), t) for s, p, t in self.fired}
        assert set(fired) == expected


def _settings(examples: int) -> Any:
    return settings(
        max_examples=examples,
        stateful_step_count=20,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


def test_billing_in_memory_keeps_every_invariant_and_matches_the_model() -> None:
    machine = type("MemoryBilling", (BillingMachine,), {})
    machine.TestCase.settings = _settings(60)
    machine.TestCase().runTest()


def test_billing_on_sqlite_keeps_every_invariant_and_matches_the_model(tmp_path: Path) -> None:
    machine = type(
        "SqliteBilling", (BillingMachine,), {"database_url": f"sqlite:///{tmp_path / 'b.db'}"}
    )
    machine.TestCase.settings = _settings(12)
    machine.TestCase().runTest()
