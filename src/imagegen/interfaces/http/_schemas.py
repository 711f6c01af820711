"""Request and response bodies (pydantic, at the edge only), mapped from the application's
attrs values. Responses never carry server paths or storage keys: image bytes are reached by
their ``content_url``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from imagegen.application.use_cases.billing import UsageReportResult, UsageRow
from imagegen.application.use_cases.credits import Balance
from imagegen.application.use_cases.models import Estimate
from imagegen.domain.asset import Asset
from imagegen.domain.generation import GeneratedImage, Generation


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerationRequest(_Request):
    prompt: str = Field(description="What to draw.")
    provider: str | None = Field(default=None, description="Provider (default: the service's).")
    model: str | None = Field(default=None, description="Model of the provider.")
    n: int = Field(default=1, description="How many images.")
    size: str | None = Field(default=None, description="WIDTHxHEIGHT, e.g. 1024x1024.")
    aspect_ratio: str | None = Field(default=None, description="W:H, e.g. 16:9.")
    seed: int | None = None
    format: str | None = Field(default=None, description="png, jpeg or webp.")
    negative_prompt: str | None = None
    quality: str | None = None
    tags: list[str] = Field(default_factory=list, description="Also save every image as an asset.")
    background: bool = Field(
        default=False,
        description="Queue it for a worker and answer 202 at once (as Prefer: respond-async).",
    )


class EstimateRequest(_Request):
    prompt: str = "estimate"
    provider: str | None = None
    model: str | None = None
    n: int = 1
    size: str | None = None
    aspect_ratio: str | None = None
    format: str | None = None
    quality: str | None = None


class SaveAssetRequest(_Request):
    image_id: str = Field(description="An image of a generation (img_…).")
    tags: list[str] = Field(default_factory=list)
    title: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class GrantRequest(_Request):
    amount: int = Field(description="Credits to add, 1 to 10^12.")
    memo: str | None = Field(default=None, max_length=500)


class ImageOut(BaseModel):
    id: str
    width: int
    height: int
    format: str
    media_type: str
    sha256: str
    byte_size: int
    seed: int | None
    content_url: str

    @classmethod
    def of(cls, image: GeneratedImage) -> ImageOut:
        return cls(
            id=image.id,
            width=image.width,
            height=image.height,
            format=image.format.value,
            media_type=image.format.mime_type,
            sha256=image.sha256,
            byte_size=image.byte_size,
            seed=image.seed.value if image.seed is not None else None,
            content_url=f"/v1/images/{image.id}/content",
        )


class AssetOut(BaseModel):
    id: str
    image_id: str
    generation_id: str
    title: str
    tags: list[str]
    format: str
    media_type: str
    width: int
    height: int
    byte_size: int
    sha256: str
    approval_state: str
    version: int
    metadata: dict[str, str]
    provenance: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    content_url: str

    @classmethod
    def of(cls, asset: Asset) -> AssetOut:
        return cls(
            id=asset.id,
            image_id=asset.image_id,
            generation_id=asset.generation_id,
            title=asset.title,
            tags=list(asset.tags),
            format=asset.format.value,
            media_type=asset.format.mime_type,
            width=asset.width,
            height=asset.height,
            byte_size=asset.byte_size,
            sha256=asset.sha256,
            approval_state=asset.approval_state.value,
            version=asset.version,
            metadata=dict(asset.metadata),
            provenance=asset.provenance.as_dict(),
            created_at=asset.created_at,
            updated_at=asset.updated_at,
            content_url=f"/v1/assets/{asset.id}/content",
        )


class GenerationOut(BaseModel):
    id: str
    status: str
    operation: str
    provider: str
    model: str
    prompt: str
    negative_prompt: str | None
    n: int
    size: str
    format: str
    seed: int | None
    quality: str | None
    estimated_credits: int
    credits_charged: int
    provider_cost_usd: str | None
    warnings: list[str]
    tags: list[str]
    images: list[ImageOut]
    parent_id: str | None
    created_at: datetime
    updated_at: datetime
    failure_code: str | None
    failure_message: str | None
    idempotency_key: str | None
    replayed: bool = False
    assets: list[AssetOut] = Field(default_factory=list)

    @classmethod
    def of(
        cls, generation: Generation, *, replayed: bool = False, assets: tuple[Asset, ...] = ()
    ) -> GenerationOut:
        params = generation.parameters
        return cls(
            id=generation.id,
            status=generation.status.value,
            operation=params.operation.value,
            provider=generation.provider,
            model=generation.model,
            prompt=generation.prompt,
            negative_prompt=params.negative_prompt,
            n=params.n,
            size=str(params.size),
            format=params.format.value,
            seed=params.seed.value if params.seed is not None else None,
            quality=params.quality,
            estimated_credits=generation.estimated_credits,
            credits_charged=generation.credits_charged,
            provider_cost_usd=generation.provider_cost_usd,
            warnings=list(generation.warnings),
            tags=list(generation.tags),
            images=[ImageOut.of(i) for i in generation.images],
            parent_id=generation.parent_id,
            created_at=generation.created_at,
            updated_at=generation.updated_at,
            failure_code=generation.failure_code,
            failure_message=generation.failure_message,
            idempotency_key=generation.idempotency_key,
            replayed=replayed,
            assets=[AssetOut.of(a) for a in assets],
        )


class GenerationPage(BaseModel):
    items: list[GenerationOut]
    next_cursor: str | None


class AssetPage(BaseModel):
    items: list[AssetOut]
    next_cursor: str | None


class ModelOut(BaseModel):
    provider: str
    model: str
    display_name: str
    operations: list[str]
    formats: list[str]
    default_size: str
    sizes: list[str]
    size_range: str | None
    aspect_ratios: list[str]
    max_images_per_request: int
    supports_seed: bool
    supports_negative_prompt: bool
    qualities: list[str]
    default_quality: str | None
    supports_mask: bool
    deprecated: bool
    shutdown_on: str | None
    credits_per_image: int = Field(description="At the default size and quality.")
    usd_per_image: str | None
    price: str = Field(description="The pricing rule in words.")
    price_source: str
    price_as_of: str | None


class ModelList(BaseModel):
    models: list[ModelOut]


class EstimateOut(BaseModel):
    provider: str
    model: str
    n: int
    size: str
    format: str
    credits: int
    usd: str | None
    warnings: list[str]

    @classmethod
    def of(cls, estimate: Estimate) -> EstimateOut:
        return cls(
            provider=estimate.spec.provider,
            model=estimate.spec.model,
            n=estimate.request.n,
            size=str(estimate.request.size),
            format=estimate.request.format.value,
            credits=estimate.credits.amount,
            usd=str(estimate.usd.amount) if estimate.usd is not None else None,
            warnings=list(estimate.warnings),
        )


class BalanceOut(BaseModel):
    tenant_id: str
    balance: int
    reserved: int
    available: int
    replayed: bool = False

    @classmethod
    def of(cls, balance: Balance, *, replayed: bool = False) -> BalanceOut:
        return cls(
            tenant_id=balance.tenant_id,
            balance=balance.balance,
            reserved=balance.reserved,
            available=balance.available,
            replayed=replayed,
        )


class UsageRowOut(BaseModel):
    """One group of usage (or the total), as a row of ``UsageReportResult.to_json()``: the
    group's value of each ``by`` dimension (only those; none in the total), then the sums.
    Money is a decimal string, exact (no rounding)."""

    user: str | None = Field(default=None, description="The API key id (by=user).")
    project: str | None = Field(default=None, description="The project, or - (by=project).")
    provider: str | None = Field(default=None, description="by=provider")
    model: str | None = Field(default=None, description="provider/model (by=model)")
    operation: str | None = Field(default=None, description="by=operation")
    day: str | None = Field(default=None, description="YYYY-MM-DD, UTC (by=day)")
    generations: int = Field(description="Charged generations (captures).")
    images: int
    included_images: int = Field(description="Images within the plan's quota.")
    overage_images: int = Field(description="Images beyond the plan's quota.")
    credits: int = Field(description="Credits charged, net of refunds.")
    refunds: int = Field(description="Refunds made in the period.")
    revenue_usd: str = Field(description="Credits at the service's USD per credit.")
    provider_cost_usd: str = Field(description="What the providers charged, where known.")
    margin_usd: str = Field(description="Revenue minus provider cost.")

    @classmethod
    def of(cls, row: UsageRow, by: tuple[str, ...]) -> UsageRowOut:
        return cls.model_validate(row.as_dict(by))


class UsageReportOut(BaseModel):
    """Usage of ``[start, end)``, as ``UsageReportResult.to_json()``."""

    tenant_id: str
    start: datetime
    end: datetime
    by: list[str]
    rows: list[UsageRowOut]
    total: UsageRowOut

    @classmethod
    def of(cls, report: UsageReportResult) -> UsageReportOut:
        return cls(
            tenant_id=report.tenant_id,
            start=report.start,
            end=report.end,
            by=list(report.by),
            rows=[UsageRowOut.of(row, report.by) for row in report.rows],
            total=UsageRowOut.of(report.total, ()),
        )


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field(description="urn:imagegen:problem:<code>")
    title: str
    status: int
    detail: str
    code: str
    details: dict[str, Any] | None = None
    errors: list[dict[str, str]] | None = None
