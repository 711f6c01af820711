"""What the Python API returns: frozen values with ``to_dict()`` for JSON (CLI and HTTP)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs

from imagegen.application.ports import BlobStorage
from imagegen.application.use_cases.credits import Balance
from imagegen.domain.asset import Asset
from imagegen.domain.generation import GeneratedImage, Generation
from imagegen.domain.models import ModelSpec
from imagegen.domain.pricing import DEFAULT_USD_PER_CREDIT, describe


def _path(storage: BlobStorage, key: str) -> Path | None:
    local = storage.local_path(key)
    return Path(local) if local is not None else None


@attrs.frozen
class ImageResult:
    id: str
    path: Path | None
    width: int
    height: int
    format: str
    sha256: str
    byte_size: int
    seed: int | None

    @classmethod
    def of(cls, image: GeneratedImage, storage: BlobStorage) -> ImageResult:
        return cls(
            id=image.id,
            path=_path(storage, image.storage_key),
            width=image.width,
            height=image.height,
            format=image.format.value,
            sha256=image.sha256,
            byte_size=image.byte_size,
            seed=image.seed.value if image.seed is not None else None,
        )

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["path"] = str(self.path) if self.path is not None else None
        return data


@attrs.frozen
class AssetResult:
    id: str
    image_id: str
    generation_id: str
    path: Path | None
    title: str
    tags: tuple[str, ...]
    format: str
    width: int
    height: int
    sha256: str
    approval_state: str
    metadata: dict[str, str]
    provenance: dict[str, Any]
    created_at: datetime

    @classmethod
    def of(cls, asset: Asset, storage: BlobStorage) -> AssetResult:
        return cls(
            id=asset.id,
            image_id=asset.image_id,
            generation_id=asset.generation_id,
            path=_path(storage, asset.storage_key),
            title=asset.title,
            tags=asset.tags,
            format=asset.format.value,
            width=asset.width,
            height=asset.height,
            sha256=asset.sha256,
            approval_state=asset.approval_state.value,
            metadata=dict(asset.metadata),
            provenance=asset.provenance.as_dict(),
            created_at=asset.created_at,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **attrs.asdict(self, recurse=False),
            "path": str(self.path) if self.path is not None else None,
            "tags": list(self.tags),
            "created_at": self.created_at.isoformat(),
        }


@attrs.frozen
class GenerationResult:
    id: str
    status: str
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
    warnings: tuple[str, ...]
    tags: tuple[str, ...]
    images: tuple[ImageResult, ...]
    created_at: datetime
    updated_at: datetime
    failure_code: str | None = None
    failure_message: str | None = None
    idempotency_key: str | None = None
    replayed: bool = False
    assets: tuple[AssetResult, ...] = ()

    @classmethod
    def of(
        cls,
        generation: Generation,
        storage: BlobStorage,
        *,
        replayed: bool = False,
        assets: tuple[Asset, ...] = (),
    ) -> GenerationResult:
        params = generation.parameters
        return cls(
            id=generation.id,
            status=generation.status.value,
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
            warnings=generation.warnings,
            tags=generation.tags,
            images=tuple(ImageResult.of(i, storage) for i in generation.images),
            created_at=generation.created_at,
            updated_at=generation.updated_at,
            failure_code=generation.failure_code,
            failure_message=generation.failure_message,
            idempotency_key=generation.idempotency_key,
            replayed=replayed,
            assets=tuple(AssetResult.of(a, storage) for a in assets),
        )

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self, recurse=False)
        data.update(
            warnings=list(self.warnings),
            tags=list(self.tags),
            images=[i.to_dict() for i in self.images],
            assets=[a.to_dict() for a in self.assets],
            created_at=self.created_at.isoformat(),
            updated_at=self.updated_at.isoformat(),
        )
        return data


@attrs.frozen
class Page:
    """One page of results; pass ``next_cursor`` back to get the next one."""

    items: tuple[Any, ...]
    next_cursor: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"items": [i.to_dict() for i in self.items], "next_cursor": self.next_cursor}


@attrs.frozen
class BalanceResult:
    tenant_id: str
    balance: int
    reserved: int
    available: int

    @classmethod
    def of(cls, balance: Balance) -> BalanceResult:
        return cls(balance.tenant_id, balance.balance, balance.reserved, balance.available)

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class ModelInfo:
    provider: str
    model: str
    display_name: str
    operations: tuple[str, ...]
    formats: tuple[str, ...]
    default_size: str
    sizes: tuple[str, ...]
    size_range: str | None
    aspect_ratios: tuple[str, ...]
    max_images_per_request: int
    supports_seed: bool
    supports_negative_prompt: bool
    qualities: tuple[str, ...]
    default_quality: str | None
    supports_mask: bool
    deprecated: bool
    shutdown_on: str | None
    credits_per_image: int  # at the default size and quality
    usd_per_image: str | None  # ditto; None when no provider bills us
    price: str  # the pricing rule in words
    price_source: str
    price_as_of: str | None

    @classmethod
    def of(cls, spec: ModelSpec, usd_per_credit: Decimal = DEFAULT_USD_PER_CREDIT) -> ModelInfo:
        rule = spec.size_rule
        listed = spec.quote(1, usd_per_credit=usd_per_credit)
        source = spec.pricing.source
        size_range = None
        if rule.is_free_form:
            size_range = (
                f"{rule.min_side}-{rule.max_side} px per side, multiple of {rule.multiple_of}, "
                f"at most {rule.max_pixels / 1e6:.1f} MP"
            )
            if rule.min_pixels:
                size_range += f", at least {rule.min_pixels / 1e6:.2f} MP"
            if rule.max_aspect_ratio is not None:
                size_range += f", at most {rule.max_aspect_ratio}:1"
        return cls(
            provider=spec.provider,
            model=spec.model,
            display_name=spec.display_name,
            operations=tuple(sorted(o.value for o in spec.operations)),
            formats=tuple(f.value for f in spec.formats),
            default_size=str(spec.default_size),
            sizes=tuple(str(s) for s in rule.sizes),
            size_range=size_range,
            aspect_ratios=rule.ratio_labels or tuple(str(r) for r in spec.aspect_ratios),
            max_images_per_request=spec.max_images_per_request,
            supports_seed=spec.supports_seed,
            supports_negative_prompt=spec.supports_negative_prompt,
            qualities=spec.qualities,
            default_quality=spec.default_quality,
            supports_mask=spec.supports_mask,
            deprecated=spec.deprecated,
            shutdown_on=spec.shutdown_on.isoformat() if spec.shutdown_on else None,
            credits_per_image=listed.per_image_credits.amount,
            usd_per_image=(
                str(listed.per_image_usd.amount) if listed.per_image_usd is not None else None
            ),
            price=describe(spec.pricing),
            price_source=source.url or source.note,
            price_as_of=source.as_of.isoformat() if source.as_of else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.asdict(self).items()}


@attrs.frozen
class EstimateResult:
    provider: str
    model: str
    n: int
    size: str
    format: str
    credits: int
    usd: str | None
    warnings: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "warnings": list(self.warnings)}
