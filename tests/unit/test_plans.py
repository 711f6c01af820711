"""The pure billing arithmetic: quota splits, budgets, thresholds, periods, plan limits,
refunds and adjustments."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagegen.domain.billing import CreditAccount, EntryKind
from imagegen.domain.errors import (
    BudgetExceeded,
    InsufficientCredits,
    InvalidParameter,
    ModelNotInPlan,
    QuotaExceeded,
    RefundExceedsCapture,
)
from imagegen.domain.plans import (
    Budget,
    Counter,
    Overage,
    Plan,
    next_period,
    parse_period,
    period_start,
    reached,
    split_images,
)
from imagegen.domain.values import Credits

T0 = datetime(2026, 11, 5, tzinfo=UTC)
counts = st.integers(0, 10_000)


@given(n=counts, included=counts, used=counts, held=counts)
def test_a_split_covers_every_image_and_never_more_than_the_quota_left(
    n: int, included: int, used: int, held: int
) -> None:
    split = split_images(n, included, used, held)
    assert split.included + split.overage == n
    assert 0 <= split.included <= max(included - used - held, 0)
    assert split.overage >= 0
    # as much as possible is included
    assert split.overage == 0 or split.included == max(included - used - held, 0)


@given(n=st.integers(1, 50), included=st.integers(0, 50), used=st.integers(0, 60))
def test_a_refusing_plan_accepts_exactly_what_its_quota_still_covers(
    n: int, included: int, used: int
) -> None:
    plan = Plan(id="p", name="P", included_images=included, overage=Overage.REFUSE)
    if used + n <= included:
        assert plan.split(n, used, 0).overage == 0
    else:
        with pytest.raises(QuotaExceeded):
            plan.split(n, used, 0)


@given(overage=st.integers(0, 100), model_price=st.integers(0, 100))
def test_overage_costs_the_plan_price_or_else_the_models(overage: int, model_price: int) -> None:
    fixed = Plan(
        id="a", name="A", included_images=0, overage=Overage.CHARGE, overage_credits_per_image=3
    )
    model = Plan(id="b", name="B", included_images=0, overage=Overage.CHARGE)
    assert fixed.overage_credits(overage, model_price) == 3 * overage
    assert model.overage_credits(overage, model_price) == model_price * overage


@given(
    limit=st.integers(0, 100),
    used=st.integers(0, 100),
    held=st.integers(0, 100),
    asked=st.integers(0, 100),
)
def test_a_budget_allows_a_request_exactly_when_used_held_and_asked_fit(
    limit: int, used: int, held: int, asked: int
) -> None:
    for credits_budget in (True, False):
        budget = Budget(
            tenant_id="t",
            subject="user:u",
            limit_credits=limit if credits_budget else None,
            limit_images=None if credits_budget else limit,
            since=T0,
        )
        counter = Counter(tenant_id="t", subject="user:u", period_start=T0)
        counter.use(used, 0, used)
        counter.hold(held, held)
        if used + held + asked <= limit:
            budget.check(counter, asked, asked)
        else:
            with pytest.raises(BudgetExceeded):
                budget.check(counter, asked, asked)


def test_a_budget_caps_something() -> None:
    with pytest.raises(InvalidParameter):
        Budget(tenant_id="t", subject="user:u", limit_credits=None, limit_images=None, since=T0)


@given(used=st.integers(0, 300), limit=st.integers(1, 200))
def test_thresholds_are_reached_when_the_used_share_gets_there(used: int, limit: int) -> None:
    hits = reached((80, 90, 100), used, limit)
    assert hits == [t for t in (80, 90, 100) if used / limit >= t / 100]


def test_no_threshold_of_an_unlimited_or_zero_budget() -> None:
    assert reached((80,), 10, None) == []
    assert reached((80,), 10, 0) == []


@given(
    st.datetimes(
        timezones=st.just(UTC), min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)
    )
)
def test_a_period_is_the_calendar_month_that_contains_the_instant(when: datetime) -> None:
    start = period_start(when)
    assert start <= when < next_period(start)
    assert (start.day, start.hour, start.minute) == (1, 0, 0)


def test_periods_are_utc_months_whatever_the_offset() -> None:
    late = datetime(2026, 11, 30, 23, 30, tzinfo=timezone(timedelta(hours=-2)))
    assert period_start(late) == datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_period("2026-12") == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    with pytest.raises(InvalidParameter):
        parse_period("November")


def test_a_plan_refuses_models_operations_and_sizes_it_does_not_include() -> None:
    plan = Plan(
        id="f",
        name="Free",
        included_images=1,
        overage=Overage.REFUSE,
        allowed_models=("local/*", "openai/gpt-image-1-mini"),
        allowed_operations=("generate",),
        max_images_per_request=2,
    )
    plan.check_request("local", "procedural", "generate", 2)
    plan.check_request("openai", "gpt-image-1-mini", "generate", 1)
    with pytest.raises(ModelNotInPlan):
        plan.check_request("openai", "gpt-image-1", "generate", 1)
    with pytest.raises(ModelNotInPlan):
        plan.check_request("local", "procedural", "edit", 1)
    with pytest.raises(QuotaExceeded):
        plan.check_request("local", "procedural", "generate", 3)


def account(balance: int = 10) -> CreditAccount:
    acct = CreditAccount("a", "t", balance=0, reserved=0, created_at=T0, updated_at=T0)
    acct.grant("g", Credits(balance), T0)
    return acct


def test_a_refund_is_a_new_entry_within_what_is_left_of_the_capture() -> None:
    acct = account()
    entry = acct.refund("r", Credits(3), T0, capture_entry_id="c", refundable=4, memo="why")
    assert (entry.kind, entry.amount, entry.reference, acct.balance) == (
        EntryKind.REFUND,
        3,
        "c",
        13,
    )
    with pytest.raises(RefundExceedsCapture):
        acct.refund("r2", Credits(2), T0, capture_entry_id="c", refundable=1, memo="why")


def test_an_adjustment_never_leaves_the_available_credits_negative() -> None:
    acct = account(10)
    acct.reserve("res", Credits(4), T0, T0 + timedelta(minutes=1))
    with pytest.raises(InsufficientCredits):
        acct.adjust("x", -7, T0, "too much")
    entry = acct.adjust("y", -6, T0, "  exactly what is free  ")
    assert (entry.kind, entry.memo, acct.available) == (
        EntryKind.ADJUSTMENT,
        "exactly what is free",
        0,
    )
    with pytest.raises(InvalidParameter):
        acct.adjust("z", 0, T0, "nothing")
