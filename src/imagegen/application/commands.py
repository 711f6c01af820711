"""Commands: what a user asks for, as frozen, keyword-only values. Parsed by the use cases."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import attrs

DEFAULT_TENANT = "default"
DEFAULT_PRINCIPAL = "local"


@attrs.frozen(kw_only=True)
class GenerateCommand:
    prompt: str
    provider: str | None = None
    model: str | None = None
    n: int = 1
    size: str | None = None
    aspect_ratio: str | None = None
    seed: int | None = None
    format: str | None = None
    negative_prompt: str | None = None
    quality: str | None = None
    idempotency_key: str | None = None
    tags: tuple[str, ...] = ()
    tenant_id: str = DEFAULT_TENANT
    principal_id: str = DEFAULT_PRINCIPAL
    project_id: str | None = None  # the project billed (budgets and usage reports)
    max_credits: int | None = None  # refuse (BudgetExceeded) if the reservation needs more
    max_cost: Decimal | None = None  # the same cap in USD (credits x usd_per_credit)


@attrs.frozen(kw_only=True)
class EditCommand:
    """Edit an image: by prompt, inpaint (with a mask), outpaint, erase, search-and-replace or
    remove the background. The source is an asset of the DAM (``source_asset_id``) or image
    bytes (``images``; several for models that take references); the result is a new
    generation linked to its source."""

    prompt: str = ""
    operation: str | None = None  # None: implied by the inputs and the model (see EditImage)
    source_asset_id: str | None = None
    images: tuple[bytes, ...] = attrs.field(default=(), repr=lambda v: f"<{len(v)} images>")
    mask: bytes | None = attrs.field(default=None, repr=lambda v: "<mask>" if v else "None")
    search_prompt: str | None = None
    outpaint: tuple[int, int, int, int] | None = None  # left, right, up, down (pixels)
    provider: str | None = None
    model: str | None = None
    n: int = 1
    size: str | None = None
    seed: int | None = None
    format: str | None = None
    negative_prompt: str | None = None
    quality: str | None = None
    idempotency_key: str | None = None
    tags: tuple[str, ...] = ()
    tenant_id: str = DEFAULT_TENANT
    principal_id: str = DEFAULT_PRINCIPAL
    project_id: str | None = None  # the project billed (budgets and usage reports)
    max_credits: int | None = None  # refuse (BudgetExceeded) if the reservation needs more
    max_cost: Decimal | None = None  # the same cap in USD (credits x usd_per_credit)


@attrs.frozen(kw_only=True)
class SaveToDamCommand:
    image_id: str
    tags: tuple[str, ...] = ()
    title: str | None = None
    metadata: dict[str, str] = attrs.field(factory=dict)
    tenant_id: str = DEFAULT_TENANT


@attrs.frozen(kw_only=True)
class GrantCreditsCommand:
    amount: int
    memo: str | None = None
    tenant_id: str = DEFAULT_TENANT


@attrs.frozen(kw_only=True)
class GenerationPolicy:
    """Knobs of the generation lifecycle, set by the composition root from settings."""

    reservation_ttl: timedelta = timedelta(minutes=15)
    provider_timeout: timedelta = timedelta(minutes=3)
    max_prompt_length: int = 4000
    starting_credits: int = 100
    max_input_image_bytes: int = 50 * 1024 * 1024
    usd_per_credit: Decimal = Decimal("0.01")
    alert_thresholds: tuple[int, ...] = (80, 90, 100)  # percent of a quota or budget used


@attrs.frozen(kw_only=True)
class HistoryFilter:
    """The shells' view of a history query (strings, parsed by ``ListHistory``)."""

    status: str | None = None
    provider: str | None = None
    model: str | None = None
    text: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    limit: int = 20
    cursor: str | None = None
    tenant_id: str = DEFAULT_TENANT


@attrs.frozen(kw_only=True)
class SubscribeCommand:
    plan_id: str
    meter_customer_id: str | None = None
    tenant_id: str = DEFAULT_TENANT


@attrs.frozen(kw_only=True)
class SetBudgetCommand:
    """A per-period cap for one user (``principal_id``) or one project of a tenant."""

    user: str | None = None
    project: str | None = None
    limit_credits: int | None = None
    limit_images: int | None = None
    tenant_id: str = DEFAULT_TENANT


@attrs.frozen(kw_only=True)
class RefundCommand:
    """Give back all (``credits=None``) or part of a generation's captured credits."""

    generation_id: str
    reason: str
    credits: int | None = None
    restore_quota: bool = False
    tenant_id: str = DEFAULT_TENANT


@attrs.frozen(kw_only=True)
class AdjustCommand:
    credits: int  # signed
    memo: str
    tenant_id: str = DEFAULT_TENANT


@attrs.frozen(kw_only=True)
class UsageReportCommand:
    """Usage in ``period`` (``"2026-11"``) or ``[start, end)``, grouped by any of ``user``,
    ``project``, ``provider``, ``model``, ``operation``, ``day``."""

    period: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    by: tuple[str, ...] = ()
    tenant_id: str = DEFAULT_TENANT
