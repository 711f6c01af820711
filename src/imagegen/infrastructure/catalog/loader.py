"""Reading catalog files: the shipped ``models.toml`` and a user's file that overrides it.

A catalog file is TOML (decimals stay exact: they are read as ``Decimal``)::

    schema_version = 1
    as_of = 2026-11-22                  # optional in a user file

    [providers.replicate]
    default_model = "black-forest-labs/flux-schnell"

    [[models]]
    provider = "replicate"
    model = "black-forest-labs/flux-schnell"
    ...                                 # see models.toml for every field
    [models.pricing]
    scheme = "per_image"
    usd = 0.003
    source = "https://replicate.com/black-forest-labs/flux-schnell"
    as_of = 2026-11-22

A user's entry for a (provider, model) the shipped file has replaces the keys it gives — the
``sizes`` and ``pricing`` tables as a whole — and keeps the rest; any other entry adds a model.
Everything is validated with pydantic (this is where users' input enters) and turned into
``ModelSpec``s; a mistake raises ``ConfigurationError`` naming the file, the model and the field.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from datetime import date
from decimal import Decimal
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from imagegen.domain.errors import ConfigurationError, ImageGenError
from imagegen.domain.models import ModelSpec, Operation, SizeRule
from imagegen.domain.pricing import (
    MEGAPIXEL,
    GridTokens,
    ImagePrice,
    OutputTokens,
    PerImage,
    PerImageTable,
    PerMegapixel,
    PriceSource,
    Pricing,
    ProviderCredits,
    TokenCount,
    TokenPriced,
    TokenTable,
)
from imagegen.domain.values import AspectRatio, ImageFormat, ImageSize

if TYPE_CHECKING:
    from imagegen.infrastructure.catalog import StaticModelCatalog

__all__ = [
    "SCHEMA_VERSION",
    "SHIPPED_CATALOG",
    "CatalogFile",
    "ModelEntry",
    "load_catalog",
    "load_specs",
]

SCHEMA_VERSION = 1
SHIPPED_CATALOG = "models.toml"

_PROVIDER_RE = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_MODEL_RE = r"^[A-Za-z0-9][A-Za-z0-9._/:-]{0,199}$"


# --- the file's schema (pydantic: the edge where users' input enters) --------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def _size(text: str) -> ImageSize:
    try:
        return ImageSize.parse(text)
    except ImageGenError as error:
        raise ValueError(error.message) from None


def _ratio(text: str) -> AspectRatio:
    try:
        return AspectRatio.parse(text)
    except ImageGenError as error:
        raise ValueError(error.message) from None


def _format(value: object) -> ImageFormat:
    try:
        return ImageFormat.parse(str(value))
    except ImageGenError as error:
        raise ValueError(error.message) from None


class _Priced(_Strict):
    """What every price says about itself: where it comes from and when it was read."""

    source: str = ""
    as_of: date
    note: str = ""

    @model_validator(mode="after")
    def _sourced(self) -> _Priced:
        if not self.source and not self.note:
            raise ValueError(
                "a price needs a `source` (URL) or a `note` saying where it comes from"
            )
        return self

    def price_source(self) -> PriceSource:
        return PriceSource(url=self.source, as_of=self.as_of, note=self.note)


class ImagePriceEntry(_Strict):
    usd: Decimal = Field(ge=0)
    quality: str | None = None
    size: str | None = None

    @field_validator("size")
    @classmethod
    def _valid_size(cls, value: str | None) -> str | None:
        return None if value is None else str(_size(value))

    def to_domain(self) -> ImagePrice:
        return ImagePrice(
            usd=self.usd,
            quality=self.quality,
            size=_size(self.size) if self.size is not None else None,
        )


class PerImageEntry(_Priced):
    scheme: Literal["per_image"]
    usd: Decimal = Field(ge=0)

    def to_domain(self) -> PerImage:
        return PerImage(usd=self.usd, source=self.price_source())


class PerImageTableEntry(_Priced):
    scheme: Literal["per_image_table"]
    prices: list[ImagePriceEntry] = Field(min_length=1)

    def to_domain(self) -> PerImageTable:
        return PerImageTable(
            prices=tuple(p.to_domain() for p in self.prices), source=self.price_source()
        )


class PerMegapixelEntry(_Priced):
    scheme: Literal["per_megapixel"]
    usd_per_megapixel: Decimal = Field(ge=0)
    usd_per_input_megapixel: Decimal = Field(default=Decimal(0), ge=0)
    first_megapixel_usd: Decimal | None = Field(default=None, ge=0)
    megapixel: int = Field(default=MEGAPIXEL, ge=1)
    round_up: bool = True

    def to_domain(self) -> PerMegapixel:
        return PerMegapixel(
            usd_per_megapixel=self.usd_per_megapixel,
            usd_per_input_megapixel=self.usd_per_input_megapixel,
            first_megapixel_usd=self.first_megapixel_usd,
            megapixel=self.megapixel,
            round_up=self.round_up,
            source=self.price_source(),
        )


class ProviderCreditsEntry(_Priced):
    scheme: Literal["provider_credits"]
    credits: Decimal = Field(ge=0)
    usd_per_credit: Decimal = Field(default=Decimal("0.01"), gt=0)
    by_operation: dict[Operation, Annotated[Decimal, Field(ge=0)]] = Field(default_factory=dict)

    def to_domain(self) -> ProviderCredits:
        return ProviderCredits(
            credits=self.credits,
            usd_per_credit=self.usd_per_credit,
            by_operation=tuple((op.value, c) for op, c in self.by_operation.items()),
            source=self.price_source(),
        )


class TokenRow(_Strict):
    quality: str = Field(min_length=1)
    size: str
    tokens: int = Field(ge=0)

    @field_validator("size")
    @classmethod
    def _valid_size(cls, value: str) -> str:
        return str(_size(value))


class TokenTableEntry(_Strict):
    table: list[TokenRow] = Field(min_length=1)

    def to_domain(self) -> TokenTable:
        return TokenTable(
            entries=tuple(
                TokenCount(quality=r.quality, size=_size(r.size), tokens=r.tokens)
                for r in self.table
            )
        )


class TokenFormulaEntry(_Strict):
    formula: Literal["gpt-image-2"]
    factors: dict[str, Annotated[int, Field(ge=1)]] = Field(min_length=1)

    def to_domain(self) -> GridTokens:
        return GridTokens(factors=tuple((q.strip().lower(), f) for q, f in self.factors.items()))


class TokensEntry(_Priced):
    scheme: Literal["tokens"]
    text_input_usd_per_mtok: Decimal = Field(ge=0)
    image_input_usd_per_mtok: Decimal = Field(ge=0)
    image_output_usd_per_mtok: Decimal = Field(ge=0)
    text_output_usd_per_mtok: Decimal = Field(default=Decimal(0), ge=0)
    output_tokens: TokenTableEntry | TokenFormulaEntry
    input_image_tokens: int = Field(default=0, ge=0)
    published: list[ImagePriceEntry] = Field(default_factory=list)
    reserve_published: bool = False

    @model_validator(mode="after")
    def _reserve_needs_published(self) -> TokensEntry:
        if self.reserve_published and not self.published:
            raise ValueError("`reserve_published` needs a `published` price list")
        return self

    def to_domain(self) -> TokenPriced:
        output: OutputTokens = self.output_tokens.to_domain()
        return TokenPriced(
            text_input_usd_per_mtok=self.text_input_usd_per_mtok,
            image_input_usd_per_mtok=self.image_input_usd_per_mtok,
            image_output_usd_per_mtok=self.image_output_usd_per_mtok,
            text_output_usd_per_mtok=self.text_output_usd_per_mtok,
            output_tokens=output,
            input_image_tokens=self.input_image_tokens,
            published=tuple(p.to_domain() for p in self.published),
            reserve_published=self.reserve_published,
            source=self.price_source(),
        )


PricingEntry = Annotated[
    PerImageEntry | PerImageTableEntry | PerMegapixelEntry | ProviderCreditsEntry | TokensEntry,
    Field(discriminator="scheme"),
]


class SizesEntry(_Strict):
    """Exactly one of: ``sizes`` (a list), ``by_aspect_ratio`` (the provider's ratio names and
    the pixels each gives), or free-form bounds (``max_side`` and friends)."""

    sizes: list[str] | None = None
    by_aspect_ratio: dict[str, str] | None = None
    min_side: int = Field(default=64, ge=1)
    max_side: int | None = Field(default=None, ge=1)
    multiple_of: int = Field(default=8, ge=1)
    min_pixels: int = Field(default=0, ge=0)
    max_pixels: int | None = Field(default=None, ge=1)
    max_aspect_ratio: str | int | None = None
    default_pixels: int = Field(default=1024 * 1024, ge=1)

    @model_validator(mode="after")
    def _one_kind(self) -> SizesEntry:
        kinds = [
            name
            for name, given in (
                ("sizes", self.sizes is not None),
                ("by_aspect_ratio", self.by_aspect_ratio is not None),
                ("max_side", self.max_side is not None),
            )
            if given
        ]
        if len(kinds) != 1:
            raise ValueError(
                "give exactly one of `sizes`, `by_aspect_ratio` or free-form bounds "
                f"(`max_side`, ...); got {kinds or 'none'}"
            )
        listed = (
            self.sizes if self.sizes is not None else list((self.by_aspect_ratio or {}).values())
        )
        if (self.sizes is not None or self.by_aspect_ratio is not None) and not listed:
            raise ValueError("the list of sizes is empty")
        for text in listed:
            _size(text)
        for label in self.by_aspect_ratio or {}:
            _ratio(label)
        self._max_ratio()
        return self

    def _max_ratio(self) -> Fraction | None:
        value = self.max_aspect_ratio
        if value is None:
            return None
        if isinstance(value, int):
            return Fraction(value)
        ratio = _ratio(value)
        return Fraction(max(ratio.width, ratio.height), min(ratio.width, ratio.height))

    def to_domain(self) -> SizeRule:
        if self.sizes is not None:
            return SizeRule(sizes=tuple(_size(s) for s in self.sizes))
        if self.by_aspect_ratio is not None:
            return SizeRule(
                sizes=tuple(_size(s) for s in self.by_aspect_ratio.values()),
                ratio_labels=tuple(self.by_aspect_ratio),
            )
        assert self.max_side is not None
        return SizeRule(
            min_side=self.min_side,
            max_side=self.max_side,
            multiple_of=self.multiple_of,
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels or self.max_side * self.max_side,
            max_aspect_ratio=self._max_ratio(),
            default_pixels=self.default_pixels,
        )


class ModelEntry(_Strict):
    provider: str = Field(pattern=_PROVIDER_RE)
    model: str = Field(pattern=_MODEL_RE)
    display_name: str = Field(min_length=1)
    operations: list[Operation] = Field(min_length=1)
    formats: list[Annotated[ImageFormat, Field()]] = Field(min_length=1)
    default_format: ImageFormat = ImageFormat.PNG
    default_size: str
    sizes: SizesEntry
    max_images_per_call: int = Field(ge=1)
    max_images_per_request: int = Field(ge=1)
    supports_seed: bool = False
    supports_negative_prompt: bool = False
    supports_mask: bool = False
    qualities: list[str] = Field(default_factory=list)
    default_quality: str | None = None
    max_prompt_length: int | None = Field(default=None, ge=1)
    max_input_images: int = Field(default=0, ge=0)
    deprecated: bool = False
    shutdown_on: date | None = None
    replacement: str | None = None
    notes: str = ""
    pricing: PricingEntry

    @field_validator("formats", mode="before")
    @classmethod
    def _formats(cls, value: object) -> object:
        if isinstance(value, list):
            return [_format(v) for v in value]
        return value

    @field_validator("default_format", mode="before")
    @classmethod
    def _default_format(cls, value: object) -> object:
        return _format(value)

    @field_validator("default_size")
    @classmethod
    def _default_size(cls, value: str) -> str:
        return str(_size(value))

    @field_validator("qualities")
    @classmethod
    def _qualities(cls, value: list[str]) -> list[str]:
        return [q.strip().lower() for q in value]

    @field_validator("default_quality")
    @classmethod
    def _default_quality(cls, value: str | None) -> str | None:
        return value.strip().lower() if value is not None else None

    def to_domain(self) -> ModelSpec:
        rule = self.sizes.to_domain()
        pricing: Pricing = self.pricing.to_domain()
        return ModelSpec(
            provider=self.provider,
            model=self.model,
            display_name=self.display_name,
            operations=frozenset(self.operations),
            size_rule=rule,
            default_size=_size(self.default_size),
            formats=tuple(dict.fromkeys(self.formats)),
            max_images_per_call=self.max_images_per_call,
            max_images_per_request=self.max_images_per_request,
            supports_seed=self.supports_seed,
            supports_negative_prompt=self.supports_negative_prompt,
            pricing=pricing,
            aspect_ratios=tuple(AspectRatio.parse(label) for label in rule.ratio_labels),
            default_format=self.default_format,
            qualities=tuple(self.qualities),
            default_quality=self.default_quality,
            max_input_images=self.max_input_images,
            supports_mask=self.supports_mask,
            max_prompt_length=self.max_prompt_length,
            deprecated=self.deprecated,
            notes=self.notes,
            shutdown_on=self.shutdown_on,
            replacement=self.replacement,
        )


class ProviderEntry(_Strict):
    default_model: str = Field(pattern=_MODEL_RE)


class CatalogFile(_Strict):
    """A whole catalog file (the shipped one, or a user's)."""

    schema_version: int
    as_of: date | None = None
    providers: dict[Annotated[str, Field(pattern=_PROVIDER_RE)], ProviderEntry] = Field(
        default_factory=dict
    )
    models: list[ModelEntry] = Field(default_factory=list)

    @field_validator("schema_version")
    @classmethod
    def _supported(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(
                f"this version of imagegen reads catalog schema_version {SCHEMA_VERSION}; "
                f"the file says {value}"
            )
        return value


# --- loading --------------------------------------------------------------------------------------

_SHIPPED_NAME = f"imagegen/infrastructure/catalog/{SHIPPED_CATALOG}"


def _parse(name: str, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError(f"{name}: not valid TOML: {error}.", file=name) from None


def _read_shipped() -> dict[str, Any]:
    package = resources.files("imagegen.infrastructure.catalog")
    return _parse(_SHIPPED_NAME, package.joinpath(SHIPPED_CATALOG).read_text(encoding="utf-8"))


def _read_user(
    path: Path, *, kind: str = "catalog", setting: str = "IMAGEGEN_CATALOG_FILE"
) -> dict[str, Any]:
    """A user's TOML file (the model catalog, or another file of the same kind)."""
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigurationError(
            f"The {kind} file {name} does not exist ({setting}).", file=name
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigurationError(
            f"The {kind} file {name} cannot be read: {error}.", file=name
        ) from None
    return _parse(name, text)


def _describe_loc(loc: Sequence[int | str]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(f".{item}" if parts else item)
    return "".join(parts) or "(top level)"


def _error(
    file: str, error: ValidationError, *, where: str | None = None, ref: str | None = None
) -> ConfigurationError:
    problems = [
        {"field": _describe_loc(e["loc"]), "message": str(e["msg"]).removeprefix("Value error, ")}
        for e in error.errors()
    ]
    first = problems[0]
    more = len(problems) - 1
    tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    subject = f"model {ref} ({where})" if ref else (where or "catalog")
    return ConfigurationError(
        f"{file}: {subject}: {first['field']}: {first['message']}{tail}.",
        file=file,
        model=ref,
        field=first["field"],
        problems=problems,
    )


def _header(file: str, raw: Mapping[str, Any]) -> CatalogFile:
    try:
        return CatalogFile.model_validate({k: v for k, v in raw.items() if k != "models"})
    except ValidationError as error:
        raise _error(file, error) from None


def _raw_models(file: str, raw: Mapping[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """The file's [[models]] tables, each with the provider and model it names."""
    models = raw.get("models", [])
    if not isinstance(models, list):
        raise ConfigurationError(
            f"{file}: `models` must be an array of tables ([[models]]).", file=file, field="models"
        )
    found: list[tuple[int, dict[str, Any]]] = []
    seen: set[tuple[str, str]] = set()
    for index, item in enumerate(models):
        if not isinstance(item, dict):
            raise ConfigurationError(
                f"{file}: models[{index}] must be a table.", file=file, field=f"models[{index}]"
            )
        provider, model = item.get("provider"), item.get("model")
        if not isinstance(provider, str) or not isinstance(model, str):
            raise ConfigurationError(
                f"{file}: models[{index}]: every model needs `provider` and `model` (strings).",
                file=file,
                field=f"models[{index}]",
            )
        if (provider, model) in seen:
            raise ConfigurationError(
                f"{file}: models[{index}]: {provider}/{model} is listed twice.",
                file=file,
                model=f"{provider}/{model}",
            )
        seen.add((provider, model))
        found.append((index, item))
    return found


def _spec(file: str, index: int, raw: Mapping[str, Any]) -> ModelSpec:
    ref = f"{raw.get('provider')}/{raw.get('model')}"
    where = f"models[{index}]"
    try:
        entry = ModelEntry.model_validate(raw)
    except ValidationError as error:
        raise _error(file, error, where=where, ref=ref) from None
    try:
        spec = entry.to_domain()
    except ImageGenError as error:
        raise ConfigurationError(
            f"{file}: model {ref} ({where}): {error.message}", file=file, model=ref
        ) from None
    problems = spec.problems()
    if problems:
        raise ConfigurationError(
            f"{file}: model {ref} ({where}): {'; '.join(problems)}.",
            file=file,
            model=ref,
            problems=problems,
        )
    return spec


def load_specs(
    user_file: Path | None = None,
) -> tuple[list[ModelSpec], dict[str, str], date | None]:
    """The catalog's specs in order (shipped, then the user's additions), the default model of
    each provider, and the catalog's ``as_of``. Raises ``ConfigurationError``."""
    shipped = _read_shipped()
    header = _header(_SHIPPED_NAME, shipped)
    # (provider, model) -> (file to blame, index in that file, raw table)
    entries: dict[tuple[str, str], tuple[str, int, dict[str, Any]]] = {
        (item["provider"], item["model"]): (_SHIPPED_NAME, index, item)
        for index, item in _raw_models(_SHIPPED_NAME, shipped)
    }
    providers: dict[str, tuple[str, Mapping[str, Any]]] = {
        name: (_SHIPPED_NAME, table) for name, table in shipped.get("providers", {}).items()
    }
    as_of = header.as_of
    if user_file is not None:
        name = str(user_file)
        user = _read_user(Path(user_file))
        user_header = _header(name, user)
        as_of = user_header.as_of or as_of
        for index, item in _raw_models(name, user):
            key = (item["provider"], item["model"])
            base = entries[key][2] if key in entries else {}
            entries[key] = (name, index, {**base, **item})
        for provider, table in (user.get("providers") or {}).items():
            providers[provider] = (name, table)
    specs = [_spec(file, index, raw) for file, index, raw in entries.values()]
    return specs, _defaults(providers, specs), as_of


def _defaults(
    providers: Mapping[str, tuple[str, Mapping[str, Any]]], specs: Sequence[ModelSpec]
) -> dict[str, str]:
    by_ref = {(s.provider, s.model): s for s in specs}
    defaults: dict[str, str] = {}
    for provider, (file, table) in providers.items():
        field = f"providers.{provider}.default_model"
        try:
            entry = ProviderEntry.model_validate(table)
        except ValidationError as error:
            raise _error(file, error, where=f"providers.{provider}") from None
        spec = by_ref.get((provider, entry.default_model))
        if spec is None:
            raise ConfigurationError(
                f"{file}: {field}: {entry.default_model!r} is not a model of {provider} in the "
                "catalog.",
                file=file,
                field=field,
            )
        if spec.deprecated:
            raise ConfigurationError(
                f"{file}: {field}: {spec.ref} is deprecated and cannot be a default; choose a "
                "current model.",
                file=file,
                field=field,
            )
        defaults[provider] = spec.model
    return defaults


def load_catalog(
    user_file: Path | None = None,
    *,
    local_credits_per_image: int = 1,
    default_provider: str = "local",
) -> StaticModelCatalog:
    """The catalog: the offline local model, the shipped models, and ``user_file``'s
    overrides and additions (``Settings.catalog_file``). Raises ``ConfigurationError``."""
    from imagegen.infrastructure.catalog import StaticModelCatalog, local_models

    specs, defaults, _ = load_specs(user_file)
    in_file = {(s.provider, s.model) for s in specs}
    local = [
        s for s in local_models(local_credits_per_image) if (s.provider, s.model) not in in_file
    ]
    return StaticModelCatalog([*local, *specs], default_provider, defaults)
