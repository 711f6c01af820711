"""Fitting a request to what a model supports: mapped with a warning, or refused with an error.

Never silent: every change to what the user asked for is listed in ``warnings``.
"""

from __future__ import annotations

import math

import attrs

from imagegen.domain.errors import InvalidParameter, InvalidSize, UnsupportedOperation
from imagegen.domain.models import ModelSpec, Operation, SizeRule
from imagegen.domain.values import AspectRatio, ImageFormat, ImageSize, Prompt, Seed


@attrs.frozen
class ImageRequest:
    """What the user asked for, already parsed into value objects."""

    prompt: Prompt
    n: int = 1
    size: ImageSize | None = None
    aspect_ratio: AspectRatio | None = None
    seed: Seed | None = None
    format: ImageFormat | None = None
    operation: Operation = Operation.GENERATE
    quality: str | None = None


@attrs.frozen
class NegotiatedRequest:
    """What will actually be sent to the model, and why it differs from the request."""

    prompt: Prompt
    n: int
    size: ImageSize
    seed: Seed | None
    format: ImageFormat
    operation: Operation
    warnings: tuple[str, ...] = ()
    quality: str | None = None


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _fit_free_form(width: float, height: float, rule: SizeRule) -> ImageSize:
    """The size within the rule's bounds nearest to width × height, keeping the aspect
    ratio as well as the bounds allow. Takes floats: the wanted size may be outside what
    ``ImageSize`` accepts."""
    if rule.max_aspect_ratio is not None:
        limit = float(rule.max_aspect_ratio)
        if width > height * limit:
            width = height * limit
        elif height > width * limit:
            height = width * limit
    scale = min(1.0, rule.max_side / max(width, height))
    scale = min(scale, math.sqrt(rule.max_pixels / (width * height)))
    scale = max(scale, rule.min_side / min(width, height))
    scale = max(scale, math.sqrt(rule.min_pixels / (width * height)))
    width, height = width * scale, height * scale
    m = rule.multiple_of
    lo = _round_up(rule.min_side, m)
    hi = (rule.max_side // m) * m
    w = min(max(_round_to(width, m), lo), hi)
    h = min(max(_round_to(height, m), lo), hi)
    most = rule.max_aspect_ratio
    while most is not None and max(w, h) > most * min(w, h):  # rounding stretched it
        if min(w, h) + m <= hi:
            w, h = (w + m, h) if w < h else (w, h + m)
        else:
            w, h = (w - m, h) if w > h else (w, h - m)
    while w * h > rule.max_pixels and (w > lo or h > lo):
        if w >= h and w > lo:
            w -= m
        else:
            h -= m
    while w * h < rule.min_pixels and (w < hi or h < hi):
        if w <= h and w < hi:
            w += m
        else:
            h += m
    return ImageSize(w, h)


def fits(size: ImageSize, rule: SizeRule) -> bool:
    return rule.admits(size)


def _nearest_listed(width: float, height: float, sizes: tuple[ImageSize, ...]) -> ImageSize:
    """The listed size with the closest aspect ratio, then the closest area."""
    target_ratio = math.log(width / height)
    target_area = math.log(width * height)

    def distance(candidate: ImageSize) -> tuple[float, float, int, int]:
        ratio = abs(math.log(candidate.width / candidate.height) - target_ratio)
        area = abs(math.log(candidate.pixels) - target_area)
        return (round(ratio, 9), area, candidate.width, candidate.height)

    return min(sizes, key=distance)


def _fit(width: float, height: float, rule: SizeRule) -> ImageSize:
    if rule.is_free_form:
        return _fit_free_form(width, height, rule)
    return _nearest_listed(width, height, rule.sizes)


def size_for_ratio(ratio: AspectRatio, rule: SizeRule) -> ImageSize:
    """The supported size closest to ``rule.default_pixels`` with this aspect ratio."""
    labelled = rule.size_of(ratio)
    if labelled is not None:
        return labelled  # the provider's own size for this ratio (1536x640 for 21:9)
    height = math.sqrt(rule.default_pixels * ratio.height / ratio.width)
    width = height * ratio.width / ratio.height
    return _fit(width, height, rule)


# Rounding sides to a multiple of 8 or 64 moves a ratio by up to ~1.6 %; beyond this
# tolerance the user gets a visibly different shape and is told so.
RATIO_TOLERANCE = 0.02


def _ratio_changed(size: ImageSize, ratio: AspectRatio, rule: SizeRule) -> bool:
    if rule.size_of(ratio) == size:
        return False
    return abs(math.log((size.width / size.height) / float(ratio.value))) > RATIO_TOLERANCE


def negotiate(request: ImageRequest, spec: ModelSpec) -> NegotiatedRequest:
    """Fit ``request`` to ``spec``. Raises a typed ``InvalidInput`` for what cannot be mapped."""
    warnings: list[str] = []
    if not spec.supports(request.operation):
        raise UnsupportedOperation(
            f"Model {spec.ref} does not support {request.operation.value}.",
            model=spec.ref,
            operation=request.operation.value,
        )
    if request.n < 1:
        raise InvalidParameter(f"n must be at least 1; got {request.n}.", n=request.n)
    if request.n > spec.max_images_per_request:
        raise InvalidParameter(
            f"n={request.n} is above the limit of {spec.max_images_per_request} images per "
            f"request for {spec.ref}.",
            n=request.n,
            limit=spec.max_images_per_request,
        )
    if (
        request.size is not None
        and request.aspect_ratio is not None
        and request.size.aspect_ratio != request.aspect_ratio
    ):
        raise InvalidSize(
            f"Size {request.size} does not have aspect ratio {request.aspect_ratio}; "
            "give one or the other."
        )
    rule = spec.size_rule
    if request.size is not None:
        size = request.size
        if not fits(size, rule):
            size = _fit(size.width, size.height, rule)
            warnings.append(f"Size {request.size} is not supported by {spec.ref}; using {size}.")
    elif request.aspect_ratio is not None:
        size = size_for_ratio(request.aspect_ratio, rule)
        if _ratio_changed(size, request.aspect_ratio, rule):
            warnings.append(
                f"Aspect ratio {request.aspect_ratio} is not supported by {spec.ref}; using {size}."
            )
    else:
        size = spec.default_size

    fmt = request.format or spec.default_format
    if fmt not in spec.formats:
        supported = ", ".join(f.value for f in spec.formats)
        raise InvalidParameter(
            f"Format {fmt.value} is not supported by {spec.ref}; use one of {supported}.",
            format=fmt.value,
        )
    seed = request.seed
    if seed is not None and not spec.supports_seed:
        warnings.append(f"{spec.ref} does not take a seed; results will not be reproducible.")
        seed = None
    prompt = request.prompt
    if prompt.negative is not None and not spec.supports_negative_prompt:
        raise InvalidParameter(
            f"{spec.ref} does not support a negative prompt; rephrase it into the prompt."
        )
    quality = _negotiate_quality(request.quality, spec, warnings)
    if spec.max_prompt_length is not None and len(prompt.text) > spec.max_prompt_length:
        raise InvalidParameter(
            f"{spec.ref} takes prompts of at most {spec.max_prompt_length} characters; "
            f"this one has {len(prompt.text)}.",
            max_length=spec.max_prompt_length,
        )
    return NegotiatedRequest(
        quality=quality,
        prompt=prompt,
        n=request.n,
        size=size,
        seed=seed,
        format=fmt,
        operation=request.operation,
        warnings=tuple(warnings),
    )


def _negotiate_quality(wanted: str | None, spec: ModelSpec, warnings: list[str]) -> str | None:
    if wanted is None:
        return spec.default_quality
    value = wanted.strip().lower()
    if not spec.qualities:
        warnings.append(f"{spec.ref} has no quality setting; quality {value!r} was ignored.")
        return None
    if value not in spec.qualities:
        allowed = ", ".join(spec.qualities)
        raise InvalidParameter(
            f"Quality {wanted!r} is not one of {allowed} for {spec.ref}.", quality=wanted
        )
    return value
