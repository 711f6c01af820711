"""Plans, subscriptions, budgets, per-period counters and threshold alerts (pure).

Billing periods are **calendar months in UTC** (``period_start`` of any instant is the first
of its month, 00:00 UTC), whatever day a subscription started: simple to explain, to report
and to reconcile.

A plan includes some images per period. At reservation, with the tenant's account locked,
``split_images`` decides how many of the request's ``n`` images the quota still covers
(``included``) and how many are ``overage`` — refused (``QuotaExceeded``) or charged in
credits, per plan. The same arithmetic holds for budgets (per user or per project, in credits
and / or images): ``used + held + requested <= limit``.

Counters (``Counter``) keep, per tenant, *subject* and period, what is held by open
reservations and what was used by captures. Subjects are ``"quota"`` (the plan's included
images), ``"user:<principal id>"`` and ``"project:<project id>"`` (budgets).
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import attrs

from imagegen.domain.billing import Reservation
from imagegen.domain.errors import (
    BudgetExceeded,
    InvalidParameter,
    ModelNotInPlan,
    QuotaExceeded,
)
from imagegen.domain.usage import UsageEvent

QUOTA = "quota"
DEFAULT_ALERT_THRESHOLDS = (80, 90, 100)
THRESHOLD_EVENT = "credits.threshold_reached"


# --- periods -------------------------------------------------------------------------------------


def period_start(when: datetime) -> datetime:
    """The first instant of ``when``'s calendar month, in UTC."""
    if when.tzinfo is None:
        raise InvalidParameter("Billing periods need timezone-aware times.")
    utc = when.astimezone(UTC)
    return datetime(utc.year, utc.month, 1, tzinfo=UTC)


def next_period(start: datetime) -> datetime:
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


def parse_period(text: str) -> tuple[datetime, datetime]:
    """``"2026-11"`` → ``[2026-11-01, 2026-12-01)`` in UTC."""
    try:
        year, month = (int(part) for part in text.strip().split("-"))
        start = datetime(year, month, 1, tzinfo=UTC)
        return start, next_period(start)  # 9999-12 has no next month
    except ValueError:
        raise InvalidParameter(f"A period is a month like 2026-11; got {text!r}.") from None


# --- plans ---------------------------------------------------------------------------------------


class Overage(enum.StrEnum):
    REFUSE = "refuse"  # beyond the included images: QuotaExceeded
    CHARGE = "charge"  # beyond the included images: charged in credits


@attrs.frozen(kw_only=True)
class QuotaSplit:
    included: int
    overage: int


def split_images(n: int, included: int, used: int, held: int) -> QuotaSplit:
    """Of ``n`` requested images, how many the quota still covers (the rest is overage)."""
    if n < 0:
        raise InvalidParameter("A request asks for at least 0 images.")
    free = max(included - used - held, 0)
    covered = min(n, free)
    return QuotaSplit(included=covered, overage=n - covered)


@attrs.frozen(kw_only=True)
class Plan:
    id: str
    name: str
    included_images: int
    overage: Overage
    overage_credits_per_image: int | None = None  # None: the model's own credit price
    max_images_per_request: int | None = None
    allowed_models: tuple[str, ...] = ()  # fnmatch patterns on "provider/model"; empty = all
    allowed_operations: tuple[str, ...] = ()  # empty = all
    shared: bool = False  # descriptive: the quota is the tenant's, shared by its members
    description: str = ""

    def check_request(self, provider: str, model: str, operation: str, n: int) -> None:
        """Refuse, before anything is written, a request this plan never allows."""
        ref = f"{provider}/{model}"
        if self.allowed_models and not any(
            fnmatch.fnmatchcase(ref, pattern) for pattern in self.allowed_models
        ):
            raise ModelNotInPlan(
                f"The {self.name} plan does not include {ref}.", plan=self.id, model=ref
            )
        if self.allowed_operations and operation not in self.allowed_operations:
            raise ModelNotInPlan(
                f"The {self.name} plan does not include the {operation} operation.",
                plan=self.id,
                operation=operation,
            )
        if self.max_images_per_request is not None and n > self.max_images_per_request:
            raise QuotaExceeded(
                f"The {self.name} plan allows at most {self.max_images_per_request} images per "
                f"request; {n} were asked for.",
                plan=self.id,
                limit=self.max_images_per_request,
            )

    def split(self, n: int, used: int, held: int) -> QuotaSplit:
        """The included / overage split of ``n`` images; ``QuotaExceeded`` when the plan
        refuses overage and the quota does not cover them all."""
        split = split_images(n, self.included_images, used, held)
        if split.overage and self.overage is Overage.REFUSE:
            free = split.included
            raise QuotaExceeded(
                f"The {self.name} plan includes {self.included_images} images per month; "
                f"{free} are left and {n} were asked for.",
                plan=self.id,
                included=self.included_images,
                left=free,
                requested=n,
            )
        return split

    def overage_credits(self, overage: int, model_credits_per_image: int) -> int:
        price = self.overage_credits_per_image
        return overage * (model_credits_per_image if price is None else price)


class SubscriptionStatus(enum.StrEnum):
    ACTIVE = "active"
    CANCELED = "canceled"


@attrs.frozen(kw_only=True)
class Subscription:
    """A tenant's plan. Changing plan takes effect at once (the current period's counters
    carry over; only the included quantity changes)."""

    tenant_id: str
    plan_id: str
    started_at: datetime
    changed_at: datetime
    status: SubscriptionStatus = SubscriptionStatus.ACTIVE
    meter_customer_id: str | None = None  # the Stripe customer ("cus_…") usage is metered to

    @property
    def active(self) -> bool:
        return self.status is SubscriptionStatus.ACTIVE


# --- budgets -------------------------------------------------------------------------------------


class BudgetScope(enum.StrEnum):
    USER = "user"
    PROJECT = "project"


def subject_of(scope: BudgetScope, key: str) -> str:
    if not key or ":" in key:
        raise InvalidParameter(f"A {scope.value} id is a non-empty name without ':'.")
    return f"{scope.value}:{key}"


def budget_subjects(principal_id: str, project_id: str | None) -> tuple[str, ...]:
    """The budget subjects a request of ``principal_id`` in ``project_id`` counts against."""
    user = f"{BudgetScope.USER.value}:{principal_id}"
    return (user,) if project_id is None else (user, f"{BudgetScope.PROJECT.value}:{project_id}")


@attrs.frozen(kw_only=True)
class Budget:
    """A spending cap per period for one user or project of a tenant (credits and/or images).
    Counters are checked from ``since`` on (setting a budget recounts the current period)."""

    tenant_id: str
    subject: str
    limit_credits: int | None
    limit_images: int | None
    since: datetime

    def __attrs_post_init__(self) -> None:
        if self.limit_credits is None and self.limit_images is None:
            raise InvalidParameter("A budget caps credits, images or both.")
        for limit in (self.limit_credits, self.limit_images):
            if limit is not None and (isinstance(limit, bool) or limit < 0):
                raise InvalidParameter("A budget limit is a whole number, 0 or more.")

    def check(self, counter: Counter, images: int, credits: int) -> None:
        """``BudgetExceeded`` unless used + held + asked fits each limit."""
        for unit, limit, committed, asked in (
            ("images", self.limit_images, counter.used_images + counter.held_images, images),
            ("credits", self.limit_credits, counter.used_credits + counter.held_credits, credits),
        ):
            if limit is not None and committed + asked > limit:
                raise BudgetExceeded(
                    f"The budget of {self.subject} allows {limit} {unit} per month; "
                    f"{committed} are used or held and {asked} more were asked for.",
                    subject=self.subject,
                    unit=unit,
                    limit=limit,
                )


# --- counters ------------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class Counter:
    """What a subject of a tenant used and holds in one period.

    For ``"quota"`` images are the *included* images only; for a budget subject, all images.
    ``overage_images`` counts delivered images beyond the quota, ``*_credits`` credits."""

    tenant_id: str
    subject: str
    period_start: datetime
    used_images: int = 0
    held_images: int = 0
    overage_images: int = 0
    used_credits: int = 0
    held_credits: int = 0

    def hold(self, images: int, credits: int) -> None:
        self.held_images += images
        self.held_credits += credits

    def unhold(self, images: int, credits: int) -> None:
        self.held_images -= images
        self.held_credits -= credits

    def use(self, images: int, overage: int, credits: int) -> None:
        self.used_images += images
        self.overage_images += overage
        self.used_credits += credits

    def values(self) -> tuple[int, int, int, int, int]:
        return (
            self.used_images,
            self.held_images,
            self.overage_images,
            self.used_credits,
            self.held_credits,
        )


def counted_images(subject: str, included: int, overage: int) -> int:
    """What a subject's counter counts as images: the quota only included ones."""
    return included if subject == QUOTA else included + overage


def subject_counts(subject: str, principal_id: str, project_id: str | None) -> bool:
    """Whether usage of ``principal_id`` in ``project_id`` counts in ``subject``'s counter."""
    return subject == QUOTA or subject in budget_subjects(principal_id, project_id)


def expected_counter(
    tenant_id: str,
    subject: str,
    period: datetime,
    events: Iterable[UsageEvent],
    reservations: Iterable[Reservation],
) -> Counter:
    """What a counter must hold: the sums of the period's usage events that count in it and
    of the open reservations holding it."""
    counter = Counter(tenant_id=tenant_id, subject=subject, period_start=period)
    for event in events:
        if event.period_start == period and subject_counts(
            subject, event.principal_id, event.project_id
        ):
            images = counted_images(subject, event.included_images, event.overage_images)
            counter.use(images, event.overage_images, event.credits)
    for reservation in reservations:
        if (
            not reservation.status.is_resolved
            and reservation.period_start == period
            and subject in reservation.holds
        ):
            images = counted_images(
                subject, reservation.included_images, reservation.overage_images
            )
            counter.hold(images, reservation.amount)
    return counter


# --- alerts --------------------------------------------------------------------------------------


def parse_thresholds(values: Iterable[int]) -> tuple[int, ...]:
    thresholds = tuple(sorted(set(values)))
    if not thresholds or any(isinstance(t, bool) or not 1 <= t <= 1000 for t in thresholds):
        raise InvalidParameter("Alert thresholds are percentages from 1 to 1000.")
    return thresholds


def reached(thresholds: Sequence[int], used: int, limit: int | None) -> list[int]:
    """The thresholds (percent of ``limit``) that ``used`` has reached."""
    if limit is None or limit <= 0:
        return []
    return [t for t in thresholds if used * 100 >= t * limit]


@attrs.frozen(kw_only=True)
class Alert:
    """A threshold of a quota or budget reached in a period: fires once (a unique key)."""

    id: str
    tenant_id: str
    subject: str  # "quota:images", "user:alice:credits", …
    period_start: datetime
    threshold: int
    used: int
    limit: int
    fired_at: datetime

    @property
    def key(self) -> tuple[str, str, datetime, int]:
        return (self.tenant_id, self.subject, self.period_start, self.threshold)
