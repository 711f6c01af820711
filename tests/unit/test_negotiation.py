"""Unit tests for request negotiation (imagegen.domain.negotiation)."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from imagegen.domain.errors import InvalidParameter, InvalidSize, UnsupportedOperation
from imagegen.domain.models import FixedCredits, ModelSpec, Operation, SizeRule
from imagegen.domain.negotiation import ImageRequest, NegotiatedRequest, fits, negotiate
from imagegen.domain.values import (
    MAX_IMAGE_SIDE,
    AspectRatio,
    Credits,
    ImageFormat,
    ImageSize,
    Prompt,
    Seed,
)

# --------------------------------------------------------------------------------------------
# Fixtures: a few small model specs
# --------------------------------------------------------------------------------------------

FREE_RULE = SizeRule()  # 64..2048, multiples of 8, at most 2048*2048 pixels, default 1024*1024
SDXL_RULE = SizeRule(
    min_side=512, max_side=1536, multiple_of=64, max_pixels=1024 * 1024, default_pixels=1024 * 1024
)
LISTED_RULE = SizeRule(sizes=(ImageSize(1024, 1024), ImageSize(1792, 1024), ImageSize(1024, 1792)))
SMALL_LISTED_RULE = SizeRule(
    sizes=(ImageSize(256, 256), ImageSize(512, 512), ImageSize(1024, 1024))
)

PROMPT = Prompt.parse("a lighthouse at dusk")


def make_spec(size_rule: SizeRule = FREE_RULE, **overrides: Any) -> ModelSpec:
    default_size = size_rule.sizes[0] if size_rule.sizes else ImageSize(1024, 1024)
    spec = ModelSpec(
        provider="test",
        model="model",
        display_name="Test model",
        operations=frozenset({Operation.GENERATE}),
        size_rule=size_rule,
        default_size=default_size,
        formats=(ImageFormat.PNG, ImageFormat.JPEG),
        max_images_per_call=2,
        max_images_per_request=4,
        supports_seed=True,
        supports_negative_prompt=True,
        pricing=FixedCredits(credits_per_image=Credits(5)),
    )
    return attrs.evolve(spec, **overrides)


FREE = make_spec(FREE_RULE)
SDXL = make_spec(SDXL_RULE)
LISTED = make_spec(LISTED_RULE)
SMALL_LISTED = make_spec(SMALL_LISTED_RULE)


def ask(spec: ModelSpec, **fields: Any) -> NegotiatedRequest:
    return negotiate(ImageRequest(prompt=fields.pop("prompt", PROMPT), **fields), spec)


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------

any_size = st.builds(ImageSize, st.integers(1, MAX_IMAGE_SIDE), st.integers(1, MAX_IMAGE_SIDE))


@st.composite
def free_form_rules(draw: st.DrawFn) -> SizeRule:
    """Self-consistent free-form rules: some multiple of ``multiple_of`` lies within the side
    bounds, and the smallest allowed square is within ``max_pixels``."""
    m = draw(st.sampled_from([1, 2, 8, 16, 32, 64]))
    lo_steps = draw(st.integers(1, 1024 // m))
    lo = lo_steps * m
    min_side = draw(st.integers(max(1, lo - m + 1), lo))
    hi = draw(st.integers(lo_steps, min(4096, MAX_IMAGE_SIDE) // m)) * m
    max_side = draw(st.integers(hi, min(hi + m - 1, MAX_IMAGE_SIDE)))
    max_pixels = draw(st.integers(lo * lo, hi * hi))
    default_pixels = draw(st.integers(lo * lo, max_pixels))
    return SizeRule(
        min_side=min_side,
        max_side=max_side,
        multiple_of=m,
        max_pixels=max_pixels,
        default_pixels=default_pixels,
    )


any_rule = st.one_of(
    st.sampled_from([FREE_RULE, SDXL_RULE, LISTED_RULE, SMALL_LISTED_RULE]), free_form_rules()
)


# --------------------------------------------------------------------------------------------
# Size negotiation: properties
# --------------------------------------------------------------------------------------------


@settings(max_examples=300)
@given(rule=any_rule, size=any_size)
def test_negotiated_size_always_fits_and_is_warned_about_iff_it_changed(
    rule: SizeRule, size: ImageSize
) -> None:
    result = ask(make_spec(rule), size=size)

    assert fits(result.size, rule)
    assert bool(result.warnings) == (result.size != size)
    if result.warnings:
        assert str(size) in result.warnings[0]
        assert str(result.size) in result.warnings[0]


@st.composite
def fitting_sizes(draw: st.DrawFn, rule: SizeRule) -> ImageSize:
    if not rule.is_free_form:
        return draw(st.sampled_from(rule.sizes))
    m = rule.multiple_of
    lo, hi = -(-rule.min_side // m), rule.max_side // m
    width = draw(st.integers(lo, hi)) * m
    max_height = min(hi, rule.max_pixels // width // m)
    assume(max_height >= lo)
    return ImageSize(width, draw(st.integers(lo, max_height)) * m)


@settings(max_examples=150)
@given(data=st.data(), rule=any_rule)
def test_a_size_that_already_fits_passes_through_unchanged_without_warning(
    data: st.DataObject, rule: SizeRule
) -> None:
    size = data.draw(fitting_sizes(rule))

    result = ask(make_spec(rule), size=size)

    assert result.size == size
    assert result.warnings == ()


@settings(max_examples=100)
@given(size=any_size)
def test_a_size_list_always_picks_a_listed_size_for_a_requested_size(size: ImageSize) -> None:
    assert ask(LISTED, size=size).size in LISTED_RULE.sizes


small_ratios = st.builds(AspectRatio.of, st.integers(1, 32), st.integers(1, 32))


@settings(max_examples=100)
@given(ratio=small_ratios, rule=st.sampled_from([LISTED_RULE, SMALL_LISTED_RULE]))
def test_a_size_list_always_picks_a_listed_size_for_an_aspect_ratio(
    ratio: AspectRatio, rule: SizeRule
) -> None:
    assert ask(make_spec(rule), aspect_ratio=ratio).size in rule.sizes


@settings(max_examples=100)
@given(ratio=small_ratios, rule=st.sampled_from([LISTED_RULE, SMALL_LISTED_RULE]))
def test_a_size_list_picks_the_listed_size_with_the_closest_ratio(
    ratio: AspectRatio, rule: SizeRule
) -> None:
    chosen = ask(make_spec(rule), aspect_ratio=ratio).size

    def ratio_error(size: ImageSize) -> float:
        return abs(math.log(size.width / size.height) - math.log(ratio.width / ratio.height))

    assert ratio_error(chosen) <= min(ratio_error(s) for s in rule.sizes) + 1e-9


# Ratios a 64..2048 side rule can represent without clamping: at most 4:1 either way.
representable_ratios = st.builds(AspectRatio.of, st.integers(1, 64), st.integers(1, 64)).filter(
    lambda r: 1 / 4 <= r.width / r.height <= 4
)


@settings(max_examples=150)
@given(ratio=representable_ratios)
def test_an_aspect_ratio_gives_a_fitting_size_with_a_close_ratio_on_free_form_rules(
    ratio: AspectRatio,
) -> None:
    result = ask(FREE, aspect_ratio=ratio)

    assert fits(result.size, FREE_RULE)
    achieved = result.size.width / result.size.height
    wanted = ratio.width / ratio.height
    # each side is rounded to a multiple of 8 and is at least 512 px here: within ~1.6 %
    assert abs(math.log(achieved / wanted)) < 0.02


@settings(max_examples=150)
@given(ratio=representable_ratios)
def test_an_aspect_ratio_gives_about_the_default_pixel_count_on_free_form_rules(
    ratio: AspectRatio,
) -> None:
    size = ask(FREE, aspect_ratio=ratio).size

    assert abs(size.pixels / FREE_RULE.default_pixels - 1) < 0.03


@settings(max_examples=100)
@given(ratio=st.builds(AspectRatio.of, st.integers(1, 100), st.integers(1, 100)))
def test_any_aspect_ratio_gives_a_fitting_size_on_free_form_rules(ratio: AspectRatio) -> None:
    for spec in (FREE, SDXL):
        assert fits(ask(spec, aspect_ratio=ratio).size, spec.size_rule)


# --------------------------------------------------------------------------------------------
# Size negotiation: examples
# --------------------------------------------------------------------------------------------


def test_no_size_and_no_ratio_uses_the_default_size_without_warning() -> None:
    result = ask(FREE)

    assert result.size == FREE.default_size
    assert result.warnings == ()


def test_an_oversized_request_is_scaled_down_keeping_its_ratio() -> None:
    result = ask(FREE, size=ImageSize(4096, 2048))

    assert result.size == ImageSize(2048, 1024)
    assert len(result.warnings) == 1


def test_a_size_off_the_multiple_is_rounded_to_it() -> None:
    result = ask(FREE, size=ImageSize(1001, 999))

    assert result.size == ImageSize(1000, 1000)
    assert len(result.warnings) == 1


def test_a_tiny_request_is_scaled_up_to_the_minimum_side() -> None:
    assert ask(SDXL, size=ImageSize(10, 10)).size == ImageSize(512, 512)


def test_a_size_list_maps_a_wide_request_to_the_wide_listed_size() -> None:
    result = ask(LISTED, size=ImageSize(1920, 1080))

    assert result.size == ImageSize(1792, 1024)
    assert result.warnings == ("Size 1920x1080 is not supported by test/model; using 1792x1024.",)


def test_an_aspect_ratio_on_a_size_list_picks_the_matching_listed_size() -> None:
    assert ask(LISTED, aspect_ratio=AspectRatio.of(1, 1)).size == ImageSize(1024, 1024)


def test_a_size_and_an_aspect_ratio_that_agree_are_accepted() -> None:
    result = ask(FREE, size=ImageSize(1536, 864), aspect_ratio=AspectRatio.of(16, 9))

    assert result.size == ImageSize(1536, 864)
    assert result.warnings == ()


def test_a_size_and_an_aspect_ratio_that_disagree_raise_invalid_size() -> None:
    with pytest.raises(InvalidSize):
        ask(FREE, size=ImageSize(1024, 1024), aspect_ratio=AspectRatio.of(16, 9))


def test_an_aspect_ratio_on_a_size_list_prefers_the_size_nearest_the_default_pixels() -> None:
    # SizeRule docs: default_pixels "is the area used to turn an aspect ratio into a size";
    # size_for_ratio: "The size closest to rule.default_pixels with this aspect ratio".
    assert ask(SMALL_LISTED, aspect_ratio=AspectRatio.of(1, 1)).size == ImageSize(1024, 1024)


def test_an_aspect_ratio_with_large_terms_still_maps_onto_a_size_list() -> None:
    assert ask(LISTED, aspect_ratio=AspectRatio.of(257, 256)).size == ImageSize(1024, 1024)


def test_an_extreme_aspect_ratio_is_fitted_even_with_a_large_default_area() -> None:
    rule = SizeRule(default_pixels=2048 * 2048)

    assert fits(ask(make_spec(rule), aspect_ratio=AspectRatio.of(100, 1)).size, rule)


@pytest.mark.parametrize(
    ("spec", "ratio"),
    [(LISTED, AspectRatio.of(21, 9)), (FREE, AspectRatio.of(100, 1))],
    ids=["size-list-21:9-becomes-7:4", "free-form-100:1-becomes-32:1"],
)
def test_an_aspect_ratio_that_cannot_be_honoured_is_warned_about(
    spec: ModelSpec, ratio: AspectRatio
) -> None:
    result = ask(spec, aspect_ratio=ratio)

    assert result.size.width * ratio.height != result.size.height * ratio.width
    assert result.warnings != ()


# --------------------------------------------------------------------------------------------
# n, format, seed, negative prompt, operation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 4])
def test_n_within_bounds_is_kept(n: int) -> None:
    assert ask(FREE, n=n).n == n


@pytest.mark.parametrize("n", [0, -1])
def test_n_below_one_raises_invalid_parameter(n: int) -> None:
    with pytest.raises(InvalidParameter) as caught:
        ask(FREE, n=n)

    assert caught.value.details == {"n": n}


def test_n_above_the_models_per_request_limit_raises_invalid_parameter() -> None:
    with pytest.raises(InvalidParameter) as caught:
        ask(FREE, n=FREE.max_images_per_request + 1)

    assert caught.value.details == {"n": 5, "limit": 4}


@settings(max_examples=50)
@given(n=st.integers(-100, 100))
def test_n_is_accepted_exactly_within_one_to_the_limit(n: int) -> None:
    if 1 <= n <= FREE.max_images_per_request:
        assert ask(FREE, n=n).n == n
    else:
        with pytest.raises(InvalidParameter):
            ask(FREE, n=n)


def test_an_unsupported_format_raises_invalid_parameter() -> None:
    with pytest.raises(InvalidParameter) as caught:
        ask(FREE, format=ImageFormat.WEBP)

    assert caught.value.details == {"format": "webp"}


def test_a_supported_format_is_kept() -> None:
    assert ask(FREE, format=ImageFormat.JPEG).format is ImageFormat.JPEG


def test_no_format_uses_the_models_default_format() -> None:
    spec = make_spec(default_format=ImageFormat.JPEG)

    assert ask(spec).format is ImageFormat.JPEG


def test_a_seed_on_a_model_without_seed_support_is_dropped_with_a_warning() -> None:
    spec = make_spec(supports_seed=False)

    result = ask(spec, seed=Seed(42))

    assert result.seed is None
    assert len(result.warnings) == 1
    assert "seed" in result.warnings[0]


def test_a_seed_on_a_model_with_seed_support_is_kept_without_warning() -> None:
    result = ask(FREE, seed=Seed(42))

    assert result.seed == Seed(42)
    assert result.warnings == ()


def test_no_seed_on_a_model_without_seed_support_gives_no_warning() -> None:
    assert ask(make_spec(supports_seed=False)).warnings == ()


def test_size_and_seed_warnings_are_both_reported() -> None:
    spec = make_spec(supports_seed=False)

    result = ask(spec, size=ImageSize(1001, 1001), seed=Seed(1))

    assert len(result.warnings) == 2


def test_a_negative_prompt_on_a_model_without_support_raises_invalid_parameter() -> None:
    spec = make_spec(supports_negative_prompt=False)

    with pytest.raises(InvalidParameter):
        ask(spec, prompt=Prompt.parse("a cat", negative="dogs"))


def test_a_negative_prompt_on_a_model_with_support_is_kept() -> None:
    prompt = Prompt.parse("a cat", negative="dogs")

    assert ask(FREE, prompt=prompt).prompt == prompt


def test_an_unsupported_operation_raises_unsupported_operation() -> None:
    with pytest.raises(UnsupportedOperation) as caught:
        ask(FREE, operation=Operation.INPAINT)

    assert caught.value.details == {"model": "test/model", "operation": "inpaint"}


def test_the_operation_is_checked_before_anything_else() -> None:
    with pytest.raises(UnsupportedOperation):
        ask(FREE, operation=Operation.EDIT, n=0, format=ImageFormat.WEBP)


def test_a_supported_operation_is_carried_through() -> None:
    spec = make_spec(operations=frozenset({Operation.GENERATE, Operation.EDIT}))

    assert ask(spec, operation=Operation.EDIT).operation is Operation.EDIT


def test_a_plain_request_is_carried_through_unchanged() -> None:
    result = ask(FREE, n=3, size=ImageSize(768, 512), seed=Seed(7), format=ImageFormat.PNG)

    assert result == NegotiatedRequest(
        prompt=PROMPT,
        n=3,
        size=ImageSize(768, 512),
        seed=Seed(7),
        format=ImageFormat.PNG,
        operation=Operation.GENERATE,
        warnings=(),
    )
