"""Commands: what a user asks for, as frozen, keyword-only values. Parsed by the use cases."""

from __future__ import annotations

from datetime import datetime, timedelta

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
