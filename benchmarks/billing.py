"""Billing benchmark: credit reservations + captures per second, SQLite and PostgreSQL side
by side.

Called by ``benchmarks/run.py`` (``python benchmarks/run.py --only billing``). One operation is
what a generation does to billing, without the provider or the storage: a reservation
transaction (lock or open the account, honour the plan's quota and the budgets, reserve, hold
the counters, commit) then a capture transaction (lock, capture, settle the counters, append
the usage event, fire due alerts, commit), through the real use-case helpers and SQL adapters.

Scenarios, interleaved round by round so that both backends see the same machine load:

* pay-as-you-go: a tenant without plan or budgets (the hot path that must not get slower);
* plan + budget: a tenant on a plan with a user budget (quota and budget counters updated);
* 8 clients: eight tenants on the plan + budget, one asyncio task each, at the same time.

``run_section`` measures and returns a JSON-able dict, ``render_section`` the report's lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

PLAN_ID = "bench"
SCENARIOS = ("pay-as-you-go", "plan + budget", "8 clients")


@dataclass(frozen=True)
class BillingPlan:
    operations: int  # reservation + capture pairs per scenario, per backend and round
    rounds: int

    @classmethod
    def of(cls, quick: bool) -> BillingPlan:
        return cls(operations=100, rounds=2) if quick else cls(operations=300, rounds=3)


class _Rig:
    """A migrated database with the use cases' collaborators."""

    def __init__(self, url: str) -> None:
        from imagegen.application.commands import GenerationPolicy
        from imagegen.domain.plans import Overage, Plan
        from imagegen.infrastructure.billing.plans import StaticPlanCatalog
        from imagegen.infrastructure.persistence.engine import create_engine
        from imagegen.infrastructure.persistence.uow import SqlUnitOfWorkFactory
        from imagegen.infrastructure.system import SystemClock, UlidGenerator

        self.engine = create_engine(url)
        self.ids = UlidGenerator()
        self.clock = SystemClock()
        self.uow = SqlUnitOfWorkFactory(self.engine, self.ids)
        self.policy = GenerationPolicy(starting_credits=10**9)
        big = Plan(id=PLAN_ID, name="Bench", included_images=10**6, overage=Overage.CHARGE)
        self.plans = StaticPlanCatalog([big])

    async def setup(self, tenant: str, *, billed: bool) -> None:
        from imagegen.application.commands import SetBudgetCommand, SubscribeCommand
        from imagegen.application.use_cases.billing import SetBudget, Subscribe
        from imagegen.application.use_cases.credits import GetBalance

        shared = {"uow": self.uow, "clock": self.clock, "ids": self.ids, "policy": self.policy}
        await GetBalance(**shared).execute(tenant)
        if billed:
            await Subscribe(plans=self.plans, **shared).execute(
                SubscribeCommand(plan_id=PLAN_ID, tenant_id=tenant)
            )
            await SetBudget(**shared).execute(
                SetBudgetCommand(user="bench", limit_credits=10**12, tenant_id=tenant)
            )

    async def one(self, tenant: str) -> None:
        """A reservation transaction, then a capture transaction."""
        from imagegen.application.accounts import account_id_for, lock_or_open_account
        from imagegen.application.billing import apply_hold, plan_hold, record_capture
        from imagegen.domain.generation import Generation, GenerationParameters
        from imagegen.domain.values import Credits, ImageFormat, ImageSize

        async with self.uow() as uow:
            account = await lock_or_open_account(uow, tenant, self.policy, self.clock, self.ids)
            now = self.clock.now()
            hold = await plan_hold(
                uow, account, self.plans, n=2, estimate=Credits(2), principal_id="bench",
                project_id=None, now=now,
            )  # fmt: skip
            reservation = account.reserve(
                self.ids.new("res"), hold.credits, now, now + timedelta(minutes=15)
            )
            reservation.included_images, reservation.overage_images = hold.included, hold.overage
            reservation.period_start, reservation.holds = hold.period_start, hold.subjects
            await uow.accounts.save(account)
            await uow.accounts.add_reservation(reservation)
            await apply_hold(uow, tenant, reservation)
            await uow.commit()
        generation = Generation(
            id=self.ids.new("gen"), tenant_id=tenant, principal_id="bench", provider="local",
            model="procedural", prompt="bench",
            parameters=GenerationParameters(
                n=2, size=ImageSize(64, 64), format=ImageFormat.PNG, seed=None
            ),
            created_at=now, updated_at=now, reservation_id=reservation.id,
        )  # fmt: skip
        async with self.uow() as uow:
            account = await uow.accounts.lock(account_id_for(tenant))
            stored = await uow.accounts.get_reservation(reservation.id)
            assert account is not None
            assert stored is not None
            now = self.clock.now()
            entry = account.capture(stored, Credits(stored.amount), now, self.ids.new("ent"))
            await record_capture(
                uow, account, stored, generation, entry, delivered=2, plans=self.plans,
                thresholds=self.policy.alert_thresholds, ids=self.ids, now=now,
            )  # fmt: skip
            await uow.accounts.save(account)
            await uow.accounts.save_reservation(stored)
            await uow.commit()

    async def verify(self) -> tuple[str, ...]:
        from imagegen.application.use_cases.billing import VerifyBilling

        return (await VerifyBilling(uow=self.uow).execute()).violations


async def _measure(rig: _Rig, scenario: str, operations: int, round_: int) -> float:
    """Operations per second of one scenario."""
    if scenario == "8 clients":
        tenants = [f"c{round_}_{i}" for i in range(8)]
        for tenant in tenants:
            await rig.setup(tenant, billed=True)
        per_client = max(operations // 8, 1)

        async def client(tenant: str) -> None:
            for _ in range(per_client):
                await rig.one(tenant)

        started = time.perf_counter()
        await asyncio.gather(*(client(t) for t in tenants))
        return per_client * 8 / (time.perf_counter() - started)
    tenant = f"{'p' if scenario == 'pay-as-you-go' else 'b'}{round_}"
    await rig.setup(tenant, billed=scenario != "pay-as-you-go")
    for _ in range(5):  # warm-up: connections, statement caches
        await rig.one(tenant)
    started = time.perf_counter()
    for _ in range(operations):
        await rig.one(tenant)
    return operations / (time.perf_counter() - started)


@contextlib.contextmanager
def _databases(tmp: Path, postgres_url: str | None) -> Iterator[dict[str, str]]:
    urls = {"SQLite": f"sqlite:///{tmp / 'billing.db'}"}
    if postgres_url is None:
        yield urls
        return
    import psycopg
    from sqlalchemy.engine import make_url

    admin = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    name = f"imagegen_bench_{secrets.token_hex(6)}"
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(admin).set(drivername="postgresql+psycopg", database=name)
        urls["PostgreSQL"] = url.render_as_string(hide_password=False)
        yield urls
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _run(urls: dict[str, str], plan: BillingPlan) -> dict[str, Any]:
    from imagegen.infrastructure.persistence.engine import upgrade_schema

    rigs = {name: _Rig(url) for name, url in urls.items()}
    try:
        for rig in rigs.values():
            await upgrade_schema(rig.engine)
        rates: dict[str, dict[str, list[float]]] = {
            s: {name: [] for name in rigs} for s in SCENARIOS
        }
        for round_ in range(plan.rounds):
            for scenario in SCENARIOS:
                for name, rig in rigs.items():
                    rate = await _measure(rig, scenario, plan.operations, round_)
                    rates[scenario][name].append(rate)
        violations = {name: list(await rig.verify()) for name, rig in rigs.items()}
    finally:
        for rig in rigs.values():
            await rig.engine.dispose()
    return {"rates": rates, "violations": violations}


def run_section(
    quick: bool, tmp_root: Path | None = None, postgres_url: str | None = None
) -> dict[str, Any]:
    """Measure every scenario on SQLite (and PostgreSQL when ``postgres_url`` is given)."""
    plan = BillingPlan.of(quick)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(
            tempfile.TemporaryDirectory(prefix="imagegen_bench_", dir=tmp_root)
        )
        urls = stack.enter_context(_databases(Path(tmp), postgres_url))
        measured = asyncio.run(_run(urls, plan))
    return {
        "operations": plan.operations,
        "rounds": plan.rounds,
        "backends": list(urls),
        "median_ops_per_s": {
            scenario: {name: statistics.median(v) for name, v in by_backend.items()}
            for scenario, by_backend in measured["rates"].items()
        },
        "all_ops_per_s": measured["rates"],
        "violations": measured["violations"],
        "elapsed_s": time.perf_counter() - started,
    }


def render_section(result: dict[str, Any], number: int = 5) -> list[str]:
    backends: list[str] = result["backends"]
    out = [
        f"{number}. Billing: credit reservations + captures per second (median of "
        f"{result['rounds']} rounds x {result['operations']} operations)",
        "   One operation = a reservation transaction + a capture transaction (quota, budgets,",
        "   usage event, alerts), through the SQL adapters, without provider or storage.",
        "",
        f"   {'scenario':<18}" + "".join(f"{name:>14}" for name in backends),
    ]
    for scenario, by_backend in result["median_ops_per_s"].items():
        cells = "".join(f"{by_backend[name]:>10.0f} op/s" for name in backends)
        out.append(f"   {scenario:<18}{cells}")
    broken = {name: v for name, v in result["violations"].items() if v}
    out.append("")
    out.append(
        "   billing verify after the run: "
        + ("consistent on every backend" if not broken else f"VIOLATIONS {broken}")
    )
    return out
