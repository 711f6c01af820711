"""Billing through the public API over the in-memory adapters (``imagegen.testing``): plans
and quotas, overage, budgets, per-request caps, alerts, refunds, adjustments, usage reports
and the billing check. (The SQL backends run the same code: see the contract tests, the
stateful test, the cross-process tests and the CLI reconciliation test.)"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import attrs
import pytest

from imagegen import (
    AsyncImageGen,
    BudgetExceeded,
    ConfigurationError,
    InsufficientCredits,
    InvalidParameter,
    ModelNotInPlan,
    ProviderUnavailable,
    QuotaExceeded,
    RefundExceedsCapture,
    Settings,
)
from imagegen.application.commands import GenerateCommand
from imagegen.bootstrap.container import build_container
from imagegen.domain.plans import THRESHOLD_EVENT, Overage, Plan
from imagegen.domain.values import ImageFormat
from imagegen.infrastructure.billing.plans import StaticPlanCatalog, load_plans
from imagegen.testing import (
    InMemoryBlobStorage,
    InMemoryUnitOfWorkFactory,
    ManualClock,
    ScriptedProvider,
    SequentialIds,
)
from imagegen.testing.fakes import render_image

START = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)
PLANS = StaticPlanCatalog(
    [
        Plan(
            id="tiny",
            name="Tiny",
            included_images=5,
            overage=Overage.REFUSE,
            max_images_per_request=4,
            allowed_models=("local/*",),
        ),
        Plan(
            id="metered",
            name="Metered",
            included_images=3,
            overage=Overage.CHARGE,
            overage_credits_per_image=2,
        ),
        Plan(id="model-price", name="Model price", included_images=2, overage=Overage.CHARGE),
    ]
)


@attrs.define
class World:
    gen: AsyncImageGen
    uow: InMemoryUnitOfWorkFactory
    clock: ManualClock
    provider: ScriptedProvider

    def alerts(self) -> list[tuple[str, int]]:
        return [
            (e.data["subject"], e.data["threshold"])
            for e in self.uow.outbox
            if e.name == THRESHOLD_EVENT
        ]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    settings = Settings(
        data_dir=tmp_path, auto_migrate=False, starting_credits=100, local_credits_per_image=3
    )
    container = build_container(settings)
    uow, clock, provider = (
        InMemoryUnitOfWorkFactory(),
        ManualClock(START),
        ScriptedProvider("local"),
    )
    container.gateways.uow.override(uow)
    container.gateways.storage.override(InMemoryBlobStorage())
    container.gateways.clock.override(clock)
    container.gateways.ids.override(SequentialIds())
    container.gateways.local_provider.override(provider)
    container.gateways.plans.override(PLANS)
    async with AsyncImageGen(container=container) as gen:
        yield World(gen, uow, clock, provider)


async def available(world: World) -> int:
    return (await world.gen.balance()).available


async def assert_consistent(world: World) -> None:
    check = await world.gen.verify_billing(all_tenants=True)
    assert check.violations == ()


# --- pay as you go -------------------------------------------------------------------------------


async def test_a_tenant_without_a_plan_pays_the_model_price_and_gets_a_usage_event(
    world: World,
) -> None:
    result = await world.gen.generate("fox", n=2, size="64x64")
    assert result.credits_charged == 6
    assert await available(world) == 94
    report = await world.gen.usage_report("2026-11")
    assert (report.total.images, report.total.credits, report.total.included_images) == (2, 6, 0)
    assert report.total.overage_images == 2  # without a plan every image is charged
    await assert_consistent(world)


# --- quotas --------------------------------------------------------------------------------------


async def test_a_refusing_plan_stops_at_its_quota_without_writing_or_charging(
    world: World,
) -> None:
    await world.gen.subscribe("tiny")
    await world.gen.generate("a", n=4, size="64x64")
    assert await available(world) == 100  # included images cost nothing
    with pytest.raises(QuotaExceeded, match="1 are left and 2 were asked for"):
        await world.gen.generate("b", n=2, size="64x64")
    assert len((await world.gen.history()).items) == 1
    await world.gen.generate("c", n=1, size="64x64")  # the last included image
    with pytest.raises(QuotaExceeded):
        await world.gen.generate("d", n=1, size="64x64")
    await assert_consistent(world)


async def test_the_quota_resets_with_the_calendar_month(world: World) -> None:
    await world.gen.subscribe("tiny")
    await world.gen.generate("a", n=4, size="64x64")
    await world.gen.generate("b", n=1, size="64x64")
    with pytest.raises(QuotaExceeded):
        await world.gen.generate("c", n=1, size="64x64")
    world.clock.set(datetime(2026, 12, 1, tzinfo=UTC))
    await world.gen.generate("d", n=4, size="64x64")
    assert await available(world) == 100
    await assert_consistent(world)


async def test_overage_is_charged_at_the_plan_price_once_the_quota_is_used(world: World) -> None:
    await world.gen.subscribe("metered")
    first = await world.gen.generate("a", n=2, size="64x64")
    second = await world.gen.generate("b", n=3, size="64x64")  # 1 included, 2 overage x 2
    assert (first.credits_charged, second.credits_charged) == (0, 4)
    assert await available(world) == 96
    report = await world.gen.usage_report("2026-11")
    assert (report.total.included_images, report.total.overage_images) == (3, 2)
    await assert_consistent(world)


async def test_overage_without_a_plan_price_costs_the_models_price(world: World) -> None:
    await world.gen.subscribe("model-price")
    result = await world.gen.generate("a", n=3, size="64x64")  # 2 included, 1 at 3 credits
    assert result.credits_charged == 3
    await assert_consistent(world)


async def test_a_short_delivery_uses_the_included_images_first(world: World) -> None:
    await world.gen.subscribe("metered")
    image = render_image(64, 64, ImageFormat.PNG)
    world.provider.return_next([image, image, image, image])  # 4 of 5 asked for
    result = await world.gen.generate("a", n=5, size="64x64")
    # 3 included, then 1 of the 2 overage images reserved (2 credits each)
    assert result.credits_charged == 2
    balance = await world.gen.balance()
    assert (balance.balance, balance.reserved) == (98, 0)
    await assert_consistent(world)


async def test_a_failed_generation_gives_its_quota_hold_back(world: World) -> None:
    await world.gen.subscribe("tiny")
    world.provider.fail_next(ProviderUnavailable("down"))
    with pytest.raises(ProviderUnavailable):
        await world.gen.generate("a", n=4, size="64x64")
    await world.gen.generate("b", n=4, size="64x64")  # the whole quota is still there
    await assert_consistent(world)


async def test_expired_reservations_give_their_quota_back_through_the_sweeper(
    world: World,
) -> None:
    await world.gen.subscribe("tiny")
    gen_use_case = world.gen.container.generate_images()
    command = GenerateCommand(prompt="stuck", n=4, size="64x64")
    await gen_use_case._reserve(command, await gen_use_case.plan(command))  # then dies
    with pytest.raises(QuotaExceeded):
        await world.gen.generate("b", n=4, size="64x64")
    world.clock.advance(timedelta(hours=1))
    assert await world.gen.sweep() == 1
    await world.gen.generate("c", n=4, size="64x64")
    await assert_consistent(world)


async def test_a_plan_refuses_models_and_request_sizes_it_does_not_include(
    world: World,
) -> None:
    await world.gen.subscribe("tiny")
    with pytest.raises(ModelNotInPlan, match="does not include openai/gpt-image-1"):
        await world.gen.generate("a", provider="openai", model="gpt-image-1")
    with pytest.raises(QuotaExceeded, match="at most 4 images per request"):
        await world.gen.generate("a", n=5, size="64x64")
    assert (await world.gen.history()).items == ()


async def test_subscribing_mid_month_counts_the_months_usage_so_far(world: World) -> None:
    await world.gen.generate("before", n=3, size="64x64")  # pay as you go: not included
    await world.gen.subscribe("tiny")
    await world.gen.generate("a", n=4, size="64x64")
    await world.gen.generate("b", n=1, size="64x64")
    with pytest.raises(QuotaExceeded):
        await world.gen.generate("c", n=1, size="64x64")
    await world.gen.subscribe("none")  # back to pay as you go
    assert (await world.gen.generate("d", n=1, size="64x64")).credits_charged == 3
    await assert_consistent(world)


# --- budgets and caps ----------------------------------------------------------------------------


async def test_a_user_budget_in_credits_refuses_what_would_exceed_it(world: World) -> None:
    await world.gen.set_budget(user="local", credits=10)
    await world.gen.generate("a", n=3, size="64x64")  # 9 credits
    with pytest.raises(BudgetExceeded, match="user:local allows 10 credits"):
        await world.gen.generate("b", n=1, size="64x64")
    ((budget, counter),) = await world.gen.budgets()
    assert (budget.limit_credits, counter.used_credits, counter.held_credits) == (10, 9, 0)
    await world.gen.remove_budget(user="local")
    await world.gen.generate("c", n=1, size="64x64")
    await assert_consistent(world)


async def test_a_project_budget_in_images_counts_only_that_project(world: World) -> None:
    await world.gen.set_budget(project="apollo", images=3)
    await world.gen.generate("a", n=2, size="64x64", project="apollo")
    await world.gen.generate("b", n=4, size="64x64")  # another project: not counted
    with pytest.raises(BudgetExceeded, match="project:apollo allows 3 images"):
        await world.gen.generate("c", n=2, size="64x64", project="apollo")
    await world.gen.generate("d", n=1, size="64x64", project="apollo")
    await assert_consistent(world)


async def test_a_budget_set_mid_month_counts_what_was_spent_before(world: World) -> None:
    await world.gen.generate("a", n=3, size="64x64")  # 9 credits
    await world.gen.set_budget(user="local", credits=12)
    with pytest.raises(BudgetExceeded):
        await world.gen.generate("b", n=2, size="64x64")
    await assert_consistent(world)


async def test_per_request_caps_refuse_before_anything_is_written(world: World) -> None:
    with pytest.raises(BudgetExceeded, match="needs 6 credits; its cap is 5"):
        await world.gen.generate("a", n=2, size="64x64", max_credits=5)
    with pytest.raises(BudgetExceeded, match=r"costs \$0.06"):
        await world.gen.generate("a", n=2, size="64x64", max_cost="0.05")
    assert (await world.gen.history()).items == ()
    exact = await world.gen.generate("a", n=2, size="64x64", max_cost=Decimal("0.06"))
    assert exact.status == "succeeded"


# --- alerts --------------------------------------------------------------------------------------


async def test_threshold_alerts_fire_once_per_threshold_and_month(world: World) -> None:
    await world.gen.subscribe("tiny")  # 5 included images
    await world.gen.generate("a", n=3, size="64x64")  # 60 %
    assert world.alerts() == []
    await world.gen.generate("b", n=1, size="64x64")  # 80 %
    assert world.alerts() == [("quota:images", 80)]
    await world.gen.generate("c", n=1, size="64x64")  # 100 %: 90 and 100 at once
    assert world.alerts() == [("quota:images", 80), ("quota:images", 90), ("quota:images", 100)]
    generation = (await world.gen.history()).items[0]
    await world.gen.refund(generation.id, reason="test", restore_quota=True)
    await world.gen.generate("d", n=1, size="64x64")  # back at 100 %: no second alert
    assert len(world.alerts()) == 3
    world.clock.set(datetime(2026, 12, 2, tzinfo=UTC))
    await world.gen.generate("e", n=4, size="64x64")
    assert world.alerts()[3:] == [("quota:images", 80)]
    await assert_consistent(world)


async def test_budget_alerts_fire_on_credits_used(world: World) -> None:
    await world.gen.set_budget(user="local", credits=10)
    await world.gen.generate("a", n=3, size="64x64")  # 9 of 10
    assert world.alerts() == [("user:local:credits", 80), ("user:local:credits", 90)]


# --- refunds and adjustments ---------------------------------------------------------------------


async def test_refunds_are_new_linked_entries_and_never_exceed_the_capture(world: World) -> None:
    result = await world.gen.generate("a", n=3, size="64x64")  # 9 credits
    partial = await world.gen.refund(result.id, reason="one was broken", credits=3)
    assert (partial.event.credits, partial.balance.available) == (-3, 94)
    assert partial.event.refunds_event_id is not None
    assert partial.event.refunds_event_id.startswith("use_res_")
    with pytest.raises(RefundExceedsCapture):
        await world.gen.refund(result.id, reason="too much", credits=7)
    rest = await world.gen.refund(result.id, reason="all of it")
    assert rest.event.credits == -6
    with pytest.raises(InvalidParameter, match="nothing left"):
        await world.gen.refund(result.id, reason="again")
    ledger = await world.gen.container.ledger_report().execute("default")
    assert [e.kind.value for e in ledger.entries] == ["grant", "capture", "refund", "refund"]
    assert await available(world) == 100
    report = await world.gen.usage_report("2026-11")
    assert (report.total.credits, report.total.refunds) == (0, 2)
    await assert_consistent(world)


async def test_adjustments_need_a_memo_and_never_overdraw(world: World) -> None:
    assert (await world.gen.adjust(-40, memo="duplicate grant")).available == 60
    with pytest.raises(InsufficientCredits):
        await world.gen.adjust(-61, memo="too much")
    with pytest.raises(InvalidParameter):
        await world.gen.adjust(5, memo="  ")
    assert (await world.gen.adjust(+5, memo="goodwill")).available == 65
    await assert_consistent(world)


# --- reports and verification --------------------------------------------------------------------


async def test_the_usage_report_groups_and_exports_exactly(world: World) -> None:
    await world.gen.generate("a", n=2, size="64x64", project="apollo")
    await world.gen.generate("b", n=1, size="64x64")
    world.clock.set(datetime(2026, 11, 20, tzinfo=UTC))
    await world.gen.generate("c", n=1, size="64x64", project="apollo")
    report = await world.gen.usage_report("2026-11", by=["project", "day"])
    rows = {row.key: (row.images, row.credits, row.revenue_usd) for row in report.rows}
    assert rows == {
        ("-", "2026-11-03"): (1, 3, Decimal("0.03")),
        ("apollo", "2026-11-03"): (2, 6, Decimal("0.06")),
        ("apollo", "2026-11-20"): (1, 3, Decimal("0.03")),
    }
    assert report.total.credits == sum(r.credits for r in report.rows) == 12
    as_json = json.loads(report.to_json())
    assert as_json["total"]["credits"] == 12
    assert len(as_json["rows"]) == 3
    lines = report.to_csv().splitlines()
    assert lines[0].startswith("project,day,generations,images")
    assert lines[-1].startswith("TOTAL,")
    with pytest.raises(InvalidParameter, match="Cannot group usage by colour"):
        await world.gen.usage_report("2026-11", by=["colour"])
    with pytest.raises(InvalidParameter, match="not both"):
        await world.gen.usage_report("2026-11", start=datetime(2026, 11, 1, tzinfo=UTC))
    assert (await world.gen.usage_report("2026-10")).rows == ()


async def test_verify_finds_a_counter_that_disagrees_with_the_usage(world: World) -> None:
    await world.gen.subscribe("tiny")
    await world.gen.generate("a", n=2, size="64x64")
    await assert_consistent(world)
    (key,) = world.uow._committed.counters
    world.uow._committed.counters[key].used_images += 1  # corrupt it behind the API's back
    check = await world.gen.verify_billing()
    assert check.violations == ("default: counter quota 2026-11: used_images 3 != 2",)


# --- the plans file ------------------------------------------------------------------------------


def test_the_shipped_plans_are_free_pro_and_team() -> None:
    plans = {p.id: p for p in load_plans().all()}
    assert (plans["free"].included_images, plans["free"].overage) == (10, Overage.REFUSE)
    assert (plans["pro"].included_images, plans["pro"].overage) == (200, Overage.CHARGE)
    assert plans["team"].included_images == 1000
    assert plans["team"].shared


def test_a_users_plans_file_replaces_and_adds_plans(tmp_path: Path) -> None:
    path = tmp_path / "plans.toml"
    path.write_text(
        'schema_version = 1\n[[plans]]\nid = "pro"\nname = "Pro+"\nincluded_images = 500\n'
        'overage = "charge"\noverage_credits_per_image = 2\n'
        '[[plans]]\nid = "studio"\nname = "Studio"\nincluded_images = 50\noverage = "refuse"\n',
        encoding="utf-8",
    )
    plans = {p.id: p for p in load_plans(path).all()}
    assert (plans["pro"].included_images, plans["pro"].overage_credits_per_image) == (500, 2)
    assert plans["studio"].overage is Overage.REFUSE
    assert "free" in plans


def test_a_broken_plans_file_names_the_file_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "plans.toml"
    path.write_text(
        'schema_version = 1\n[[plans]]\nid = "x"\nname = "X"\nincluded_images = -1\n'
        'overage = "refuse"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigurationError, match=r"plans.toml: plans: plans\[0\].included_images"):
        load_plans(path)
    with pytest.raises(ConfigurationError, match="IMAGEGEN_PLANS_FILE"):
        load_plans(tmp_path / "missing.toml")
