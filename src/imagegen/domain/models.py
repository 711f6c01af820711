"""The model catalog's vocabulary: what a provider model can do and what it costs.

Prices are rules from ``imagegen.domain.pricing`` (re-exported here); ``ModelSpec.quote`` prices
a request at the model's defaults.
"""

from __future__ import annotations

import enum
from datetime import date
from decimal import Decimal
from fractions import Fraction

import attrs

from imagegen.domain.errors import InvalidParameter
from imagegen.domain.pricing import (
    DEFAULT_USD_PER_CREDIT,
    FixedCredits,
    GridTokens,
    ImagePrice,
    PerImage,
    PerImageTable,
    PerMegapixel,
    PriceSource,
    Pricing,
    ProviderCredits,
    Quote,
    TokenCount,
    TokenPriced,
    TokenTable,
    quote,
)
from imagegen.domain.values import AspectRatio, Credits, ImageFormat, ImageSize

__all__ = [
    "FixedCredits",
    "GridTokens",
    "ImagePrice",
    "ModelSpec",
    "Operation",
    "PerImage",
    "PerImageTable",
    "PerMegapixel",
    "PriceSource",
    "Pricing",
    "ProviderCredits",
    "SizeRule",
    "TokenCount",
    "TokenPriced",
    "TokenTable",
]


class Operation(enum.StrEnum):
    GENERATE = "generate"
    EDIT = "edit"
    INPAINT = "inpaint"
    OUTPAINT = "outpaint"
    ERASE = "erase"
    SEARCH_AND_REPLACE = "search_and_replace"
    REMOVE_BACKGROUND = "remove_background"
    VARIATIONS = "variations"


@attrs.frozen
class SizeRule:
    """Which sizes a model accepts.

    Either an explicit list (``sizes``), or free-form sizes within bounds: each side between
    ``min_side`` and ``max_side`` and a multiple of ``multiple_of``, between ``min_pixels`` and
    ``max_pixels`` in area, and no more elongated than ``max_aspect_ratio`` (long side / short
    side; None: no limit). ``default_pixels`` is the area used to turn an aspect ratio into a
    size.

    Models that take an aspect-ratio enum instead of pixels (FLUX, Stability) list the size each
    ratio produces in ``sizes`` and the provider's own name of that ratio, in the same order, in
    ``ratio_labels`` (``"21:9"``, not the reduced ``7:3``) — so a requested size maps to the
    nearest allowed ratio, and an adapter finds the value to send with ``ratio_of``.
    """

    sizes: tuple[ImageSize, ...] = ()
    min_side: int = 64
    max_side: int = 2048
    multiple_of: int = 8
    max_pixels: int = 2048 * 2048
    default_pixels: int = 1024 * 1024
    min_pixels: int = 0
    max_aspect_ratio: Fraction | None = None
    ratio_labels: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        if self.ratio_labels and len(self.ratio_labels) != len(self.sizes):
            raise InvalidParameter(
                f"A size rule names {len(self.ratio_labels)} aspect ratios for "
                f"{len(self.sizes)} sizes; give one ratio per listed size."
            )
        for label in self.ratio_labels:
            AspectRatio.parse(label)  # raises InvalidSize for a label that is not W:H
        if self.multiple_of < 1:
            raise InvalidParameter(f"multiple_of must be at least 1; got {self.multiple_of}.")
        if not 1 <= self.min_side <= self.max_side:
            raise InvalidParameter(
                f"Sides must satisfy 1 <= min_side <= max_side; got {self.min_side} and "
                f"{self.max_side}."
            )
        if not 0 <= self.min_pixels <= self.max_pixels:
            raise InvalidParameter(
                f"Areas must satisfy 0 <= min_pixels <= max_pixels; got {self.min_pixels} and "
                f"{self.max_pixels}."
            )
        if self.max_aspect_ratio is not None and self.max_aspect_ratio < 1:
            raise InvalidParameter(
                f"max_aspect_ratio is long side / short side, at least 1; got "
                f"{self.max_aspect_ratio}."
            )

    @property
    def is_free_form(self) -> bool:
        return not self.sizes

    def admits(self, size: ImageSize) -> bool:
        """Whether the model accepts ``size`` as it is (every constraint above)."""
        if not self.is_free_form:
            return size in self.sizes
        m = self.multiple_of
        long, short = max(size.width, size.height), min(size.width, size.height)
        return (
            self.min_side <= short
            and long <= self.max_side
            and size.width % m == 0
            and size.height % m == 0
            and self.min_pixels <= size.pixels <= self.max_pixels
            and (self.max_aspect_ratio is None or Fraction(long, short) <= self.max_aspect_ratio)
        )

    def ratio_of(self, size: ImageSize) -> str | None:
        """The provider's name of the aspect ratio a listed size stands for (None when the rule
        names none)."""
        if self.ratio_labels and size in self.sizes:
            return self.ratio_labels[self.sizes.index(size)]
        return None

    def size_of(self, ratio: AspectRatio) -> ImageSize | None:
        """The listed size whose ratio label is ``ratio`` (None when no label is)."""
        if not self.ratio_labels:
            return None
        for label, size in zip(self.ratio_labels, self.sizes, strict=True):
            if AspectRatio.parse(label) == ratio:
                return size
        return None


@attrs.frozen
class ModelSpec:
    provider: str
    model: str
    display_name: str
    operations: frozenset[Operation]
    size_rule: SizeRule
    default_size: ImageSize
    formats: tuple[ImageFormat, ...]
    max_images_per_call: int
    max_images_per_request: int
    supports_seed: bool
    supports_negative_prompt: bool
    pricing: Pricing
    aspect_ratios: tuple[AspectRatio, ...] = ()
    default_format: ImageFormat = ImageFormat.PNG
    qualities: tuple[str, ...] = ()  # empty: the model has no quality setting
    default_quality: str | None = None
    max_input_images: int = 0  # for edits: how many source/reference images one call takes
    supports_mask: bool = False
    max_prompt_length: int | None = None
    deprecated: bool = False
    notes: str = ""
    shutdown_on: date | None = None  # the provider's announced (or past) shutdown date
    replacement: str | None = None  # what the provider recommends instead

    @property
    def ref(self) -> str:
        return f"{self.provider}/{self.model}"

    def supports(self, operation: Operation) -> bool:
        return operation in self.operations

    def aspect_ratio_for(self, size: ImageSize) -> str | None:
        """The aspect-ratio value to send the provider for a listed size (FLUX, Stability)."""
        return self.size_rule.ratio_of(size)

    def quote(
        self,
        n: int = 1,
        *,
        usd_per_credit: Decimal = DEFAULT_USD_PER_CREDIT,
        size: ImageSize | None = None,
        quality: str | None = None,
        prompt_chars: int = 0,
        operation: Operation | None = None,
        input_images: tuple[ImageSize, ...] = (),
    ) -> Quote:
        """The price of ``n`` images, at the model's default size and quality unless given."""
        return quote(
            self.pricing,
            n=n,
            size=size or self.default_size,
            quality=quality if quality is not None else self.default_quality,
            usd_per_credit=usd_per_credit,
            prompt_chars=prompt_chars,
            operation=(operation or self._default_operation).value,
            input_images=input_images,
        )

    @property
    def _default_operation(self) -> Operation:
        if Operation.GENERATE in self.operations or not self.operations:
            return Operation.GENERATE
        return min(self.operations, key=lambda op: op.value)

    def estimate(self, n: int) -> Credits:
        """Deprecated: credits for ``n`` images at the default size and quality, at the default
        $0.01 per credit. Use ``quote`` (or ``imagegen.domain.pricing.quote``) instead."""
        return self.quote(n).credits

    def problems(self) -> list[str]:
        """What is inconsistent in this spec (empty when nothing is): the catalog loader refuses
        a spec with problems."""
        found: list[str] = []
        if not self.operations:
            found.append("it supports no operation")
        if not self.formats:
            found.append("it lists no output format")
        elif self.default_format not in self.formats:
            found.append(f"default_format {self.default_format.value} is not one of its formats")
        if not self.size_rule.admits(self.default_size):
            found.append(f"default_size {self.default_size} does not fit its own size rule")
        if not 1 <= self.max_images_per_call <= self.max_images_per_request:
            found.append(
                "max_images_per_call must be between 1 and max_images_per_request "
                f"({self.max_images_per_call} and {self.max_images_per_request})"
            )
        if self.default_quality is not None and self.default_quality not in self.qualities:
            found.append(f"default_quality {self.default_quality!r} is not one of its qualities")
        if self.qualities and self.default_quality is None:
            found.append("it has qualities but no default_quality")
        if isinstance(self.pricing, TokenPriced):
            priced = set(self.pricing.output_tokens.qualities)
            missing = [q for q in self.qualities if q not in priced]
            if missing:
                found.append(f"its token pricing has no output tokens for quality {missing}")
        if isinstance(self.pricing, ProviderCredits):
            ops = {op for op, _ in self.pricing.by_operation}
            unknown = ops - {op.value for op in self.operations}
            if unknown:
                found.append(f"its pricing names operations it does not support: {sorted(unknown)}")
        return found
