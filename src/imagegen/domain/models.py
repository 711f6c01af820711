"""The model catalog's vocabulary: what a provider model can do and what it costs."""

from __future__ import annotations

import enum

import attrs

from imagegen.domain.values import AspectRatio, Credits, ImageFormat, ImageSize, Money


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
    ``min_side`` and ``max_side`` and a multiple of ``multiple_of``, at most ``max_pixels``.
    ``default_pixels`` is the area used to turn an aspect ratio into a size.
    """

    sizes: tuple[ImageSize, ...] = ()
    min_side: int = 64
    max_side: int = 2048
    multiple_of: int = 8
    max_pixels: int = 2048 * 2048
    default_pixels: int = 1024 * 1024

    @property
    def is_free_form(self) -> bool:
        return not self.sizes


@attrs.frozen
class Pricing:
    """What one image costs: ``credits_per_image`` is charged; ``usd_per_image`` is what the
    provider bills us (None when unknown)."""

    credits_per_image: Credits
    usd_per_image: Money | None = None


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

    @property
    def ref(self) -> str:
        return f"{self.provider}/{self.model}"

    def supports(self, operation: Operation) -> bool:
        return operation in self.operations

    def estimate(self, n: int) -> Credits:
        return self.pricing.credits_per_image * n
