"""Unit tests for the domain's value objects (imagegen.domain.values)."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagegen.domain.errors import InvalidInput, InvalidParameter, InvalidPrompt, InvalidSize
from imagegen.domain.values import (
    DEFAULT_MAX_PROMPT_LENGTH,
    MAX_IMAGE_SIDE,
    MAX_SEED,
    ZERO_CREDITS,
    AspectRatio,
    Credits,
    ImageFormat,
    ImageSize,
    Money,
    Prompt,
    Seed,
)

# --------------------------------------------------------------------------------------------
# Prompt
# --------------------------------------------------------------------------------------------


def test_prompt_parse_trims_surrounding_whitespace() -> None:
    prompt = Prompt.parse("  \n a red fox in the snow \t ")

    assert prompt.text == "a red fox in the snow"
    assert prompt.negative is None


@pytest.mark.parametrize("text", ["", "   ", "\n\t  \r\n", None])
def test_prompt_parse_refuses_an_empty_or_blank_prompt(text: str | None) -> None:
    with pytest.raises(InvalidPrompt):
        Prompt.parse(text)  # type: ignore[arg-type]


def test_prompt_parse_accepts_exactly_the_maximum_length() -> None:
    prompt = Prompt.parse("a" * DEFAULT_MAX_PROMPT_LENGTH)

    assert len(prompt.text) == DEFAULT_MAX_PROMPT_LENGTH


def test_prompt_parse_refuses_one_character_over_the_maximum_with_details() -> None:
    with pytest.raises(InvalidPrompt) as caught:
        Prompt.parse("a" * (DEFAULT_MAX_PROMPT_LENGTH + 1))

    assert caught.value.details == {
        "length": DEFAULT_MAX_PROMPT_LENGTH + 1,
        "max_length": DEFAULT_MAX_PROMPT_LENGTH,
    }


def test_prompt_length_is_measured_after_trimming() -> None:
    prompt = Prompt.parse("   " + "a" * 10 + "   ", max_length=10)

    assert prompt.text == "a" * 10


def test_prompt_parse_honours_a_custom_max_length() -> None:
    with pytest.raises(InvalidPrompt):
        Prompt.parse("abcdef", max_length=5)


def test_prompt_parse_trims_the_negative_prompt() -> None:
    prompt = Prompt.parse("a cat", negative="  blurry, low quality  ")

    assert prompt.negative == "blurry, low quality"


@pytest.mark.parametrize("negative", [None, "", "   \n"])
def test_prompt_parse_turns_a_blank_negative_prompt_into_none(negative: str | None) -> None:
    assert Prompt.parse("a cat", negative=negative).negative is None


def test_prompt_parse_refuses_a_negative_prompt_over_the_maximum() -> None:
    with pytest.raises(InvalidPrompt) as caught:
        Prompt.parse("a cat", negative="b" * 11, max_length=10)

    assert caught.value.details["length"] == 11


def test_invalid_prompt_is_an_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        Prompt.parse("")


@settings(max_examples=100)
@given(st.text(min_size=1, max_size=200))
def test_prompt_parse_either_returns_the_stripped_text_or_refuses_blank(text: str) -> None:
    if text.strip():
        assert Prompt.parse(text).text == text.strip()
    else:
        with pytest.raises(InvalidPrompt):
            Prompt.parse(text)


# --------------------------------------------------------------------------------------------
# ImageSize
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1024x768", ImageSize(1024, 768)),
        ("1024X768", ImageSize(1024, 768)),
        ("1024\u00d7768", ImageSize(1024, 768)),  # the multiplication sign
        ("  512 x 256  ", ImageSize(512, 256)),
        ("1x1", ImageSize(1, 1)),
        (f"{MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}", ImageSize(MAX_IMAGE_SIDE, MAX_IMAGE_SIDE)),
    ],
)
def test_image_size_parse_accepts_width_x_height_forms(text: str, expected: ImageSize) -> None:
    assert ImageSize.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "abc",
        "",
        "10x",
        "x10",
        "1024",
        "1024*768",
        "1024x768x3",
        "10.5x20",
        "-1x5",
        "5x-1",
        "1234567x1",  # more digits than the pattern allows
    ],
)
def test_image_size_parse_refuses_malformed_text(text: str) -> None:
    with pytest.raises(InvalidSize) as caught:
        ImageSize.parse(text)

    assert caught.value.details == {"size": text}


@pytest.mark.parametrize(
    "text", ["0x0", "0x10", "10x0", f"{MAX_IMAGE_SIDE + 1}x10", "10x999999", "20000x20000"]
)
def test_image_size_parse_refuses_sides_out_of_range(text: str) -> None:
    with pytest.raises(InvalidSize):
        ImageSize.parse(text)


@pytest.mark.parametrize(("width", "height"), [(0, 1), (1, 0), (-5, 10), (10, -5)])
def test_image_size_refuses_non_positive_sides(width: int, height: int) -> None:
    with pytest.raises(InvalidSize):
        ImageSize(width, height)


def test_image_size_refuses_a_side_above_the_maximum() -> None:
    with pytest.raises(InvalidSize) as caught:
        ImageSize(MAX_IMAGE_SIDE + 1, 1)

    assert caught.value.details == {"width": MAX_IMAGE_SIDE + 1, "height": 1}


def test_image_size_pixels_is_the_area() -> None:
    assert ImageSize(1024, 768).pixels == 786_432


def test_image_size_aspect_ratio_is_reduced() -> None:
    assert ImageSize(1920, 1080).aspect_ratio == AspectRatio(16, 9)


def test_image_size_str_round_trips_through_parse() -> None:
    size = ImageSize(1344, 768)

    assert str(size) == "1344x768"
    assert ImageSize.parse(str(size)) == size


def test_image_sizes_order_by_width_then_height() -> None:
    assert ImageSize(512, 2048) < ImageSize(1024, 10) < ImageSize(1024, 11)


@settings(max_examples=100)
@given(st.integers(1, MAX_IMAGE_SIDE), st.integers(1, MAX_IMAGE_SIDE))
def test_image_size_parse_round_trips_every_valid_size(width: int, height: int) -> None:
    assert ImageSize.parse(f"{width}x{height}") == ImageSize(width, height)


# --------------------------------------------------------------------------------------------
# AspectRatio
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [(1920, 1080, (16, 9)), (4, 2, (2, 1)), (7, 7, (1, 1)), (3, 2, (3, 2)), (9, 21, (3, 7))],
)
def test_aspect_ratio_of_reduces_the_terms(
    width: int, height: int, expected: tuple[int, int]
) -> None:
    ratio = AspectRatio.of(width, height)

    assert (ratio.width, ratio.height) == expected


def test_aspect_ratio_constructor_refuses_unreduced_terms() -> None:
    with pytest.raises(InvalidSize):
        AspectRatio(32, 18)


@pytest.mark.parametrize(("width", "height"), [(0, 1), (1, 0), (-16, 9), (16, -9)])
def test_aspect_ratio_refuses_non_positive_terms(width: int, height: int) -> None:
    with pytest.raises(InvalidSize):
        AspectRatio.of(width, height)
    with pytest.raises(InvalidSize):
        AspectRatio(width, height)


@pytest.mark.parametrize(("width", "height"), [(100, 1), (1, 100)])
def test_aspect_ratio_accepts_exactly_100_to_1(width: int, height: int) -> None:
    assert AspectRatio.of(width, height).value == Fraction(width, height)


@pytest.mark.parametrize(("width", "height"), [(101, 1), (1, 101), (1000, 3)])
def test_aspect_ratio_refuses_more_extreme_than_100_to_1(width: int, height: int) -> None:
    with pytest.raises(InvalidSize):
        AspectRatio.of(width, height)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("16:9", AspectRatio(16, 9)), (" 32 : 18 ", AspectRatio(16, 9)), ("1:1", AspectRatio(1, 1))],
)
def test_aspect_ratio_parse_accepts_and_reduces(text: str, expected: AspectRatio) -> None:
    assert AspectRatio.parse(text) == expected


@pytest.mark.parametrize("text", ["16x9", "16/9", "16:", ":9", "abc", "", "1.5:1", "-16:9"])
def test_aspect_ratio_parse_refuses_malformed_text(text: str) -> None:
    with pytest.raises(InvalidSize) as caught:
        AspectRatio.parse(text)

    assert caught.value.details == {"aspect_ratio": text}


def test_aspect_ratio_parse_refuses_zero_terms() -> None:
    with pytest.raises(InvalidSize):
        AspectRatio.parse("0:9")


def test_aspect_ratio_value_and_str() -> None:
    ratio = AspectRatio.of(21, 9)

    assert ratio.value == Fraction(7, 3)
    assert str(ratio) == "7:3"


@settings(max_examples=100)
@given(st.integers(1, 10_000), st.integers(1, 100))
def test_aspect_ratio_of_preserves_the_ratio_and_reduces(width: int, height: int) -> None:
    if max(width, height) > 100 * min(width, height):
        with pytest.raises(InvalidSize):
            AspectRatio.of(width, height)
        return
    ratio = AspectRatio.of(width, height)
    assert ratio.value == Fraction(width, height)
    assert math.gcd(ratio.width, ratio.height) == 1


# --------------------------------------------------------------------------------------------
# Seed
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, 42, MAX_SEED])
def test_seed_accepts_the_full_unsigned_32_bit_range(value: int) -> None:
    assert Seed(value).value == value


@pytest.mark.parametrize("value", [-1, MAX_SEED + 1, 2**64])
def test_seed_refuses_values_outside_the_range(value: int) -> None:
    with pytest.raises(InvalidParameter) as caught:
        Seed(value)

    assert caught.value.details == {"seed": value}


def test_seed_offset_adds_the_index() -> None:
    assert Seed(10).offset(3) == Seed(13)
    assert Seed(10).offset(0) == Seed(10)


def test_seed_offset_wraps_past_the_maximum() -> None:
    assert Seed(MAX_SEED).offset(1) == Seed(0)
    assert Seed(MAX_SEED - 1).offset(5) == Seed(3)


@settings(max_examples=100)
@given(st.integers(0, MAX_SEED), st.integers(0, 10_000))
def test_seed_offset_stays_in_range_and_is_modular(value: int, index: int) -> None:
    shifted = Seed(value).offset(index)

    assert 0 <= shifted.value <= MAX_SEED
    assert shifted.value == (value + index) % 2**32


@settings(max_examples=50)
@given(st.integers(0, MAX_SEED), st.integers(1, 64))
def test_seed_offsets_within_a_batch_are_distinct(value: int, batch: int) -> None:
    seeds = {Seed(value).offset(i) for i in range(batch)}

    assert len(seeds) == batch


# --------------------------------------------------------------------------------------------
# ImageFormat
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("png", ImageFormat.PNG),
        ("PNG", ImageFormat.PNG),
        ("jpeg", ImageFormat.JPEG),
        ("jpg", ImageFormat.JPEG),
        (" JPG ", ImageFormat.JPEG),
        ("WebP", ImageFormat.WEBP),
    ],
)
def test_image_format_parse_normalizes_case_whitespace_and_the_jpg_alias(
    text: str, expected: ImageFormat
) -> None:
    assert ImageFormat.parse(text) is expected


@pytest.mark.parametrize("text", ["gif", "tiff", "", "image/png", ".png", "jpgg"])
def test_image_format_parse_refuses_unknown_formats(text: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        ImageFormat.parse(text)

    assert caught.value.details == {"format": text}


def test_image_format_mime_type_and_extension() -> None:
    assert ImageFormat.JPEG.mime_type == "image/jpeg"
    assert ImageFormat.JPEG.extension == "jpg"
    assert ImageFormat.PNG.extension == "png"
    assert ImageFormat.WEBP.mime_type == "image/webp"


# --------------------------------------------------------------------------------------------
# Credits
# --------------------------------------------------------------------------------------------


def test_credits_accepts_zero_and_positive_whole_numbers() -> None:
    assert Credits(0) == ZERO_CREDITS
    assert int(Credits(25)) == 25


def test_credits_refuses_negative_amounts() -> None:
    with pytest.raises(InvalidParameter):
        Credits(-1)


@pytest.mark.parametrize("value", [True, False, 1.0, 2.5, "3", Decimal(4), None])
def test_credits_refuses_anything_but_an_int(value: object) -> None:
    with pytest.raises(InvalidParameter):
        Credits(value)  # type: ignore[arg-type]


def test_credits_arithmetic() -> None:
    assert Credits(3) + Credits(4) == Credits(7)
    assert Credits(10) - Credits(4) == Credits(6)
    assert Credits(10) - Credits(10) == ZERO_CREDITS
    assert Credits(5) * 3 == Credits(15)
    assert Credits(5) * 0 == ZERO_CREDITS


def test_credits_subtraction_below_zero_raises() -> None:
    with pytest.raises(InvalidParameter):
        Credits(3) - Credits(4)


def test_credits_multiplication_by_a_float_raises() -> None:
    with pytest.raises(InvalidParameter):
        Credits(3) * 1.5  # type: ignore[operator]


def test_credits_order_and_str() -> None:
    assert Credits(1) < Credits(2)
    assert str(Credits(1)) == "1 credit"
    assert str(Credits(0)) == "0 credits"
    assert str(Credits(12)) == "12 credits"


@settings(max_examples=100)
@given(st.integers(0, 10**9), st.integers(0, 10**9))
def test_credits_addition_matches_int_addition_and_subtraction_undoes_it(a: int, b: int) -> None:
    total = Credits(a) + Credits(b)

    assert total.amount == a + b
    assert total - Credits(b) == Credits(a)


# --------------------------------------------------------------------------------------------
# Money
# --------------------------------------------------------------------------------------------


def test_money_accepts_decimal_int_and_str_exactly() -> None:
    assert Money(Decimal("0.1")).amount == Decimal("0.1")
    assert Money("0.1").amount == Decimal("0.1")
    assert Money(3).amount == Decimal(3)
    assert Money("1").currency == "USD"


@pytest.mark.parametrize("value", [0.1, 1.0, float("nan")])
def test_money_refuses_floats(value: float) -> None:
    with pytest.raises(InvalidParameter):
        Money(value)


@pytest.mark.parametrize("value", ["abc", "", "NaN", "Infinity", "-inf", Decimal("NaN"), True])
def test_money_refuses_non_amounts_and_non_finite_values(value: object) -> None:
    with pytest.raises(InvalidParameter):
        Money(value)


@pytest.mark.parametrize("currency", ["usd", "US", "USDX", "", "U1D"])
def test_money_refuses_currencies_that_are_not_iso_4217_codes(currency: str) -> None:
    with pytest.raises(InvalidParameter):
        Money("1", currency)


def test_money_arithmetic_is_exact() -> None:
    total = Money("0.1") + Money("0.2")

    assert total == Money("0.3")
    assert Money("1.00") - Money("0.01") == Money("0.99")
    assert Money("0.04") * 3 == Money("0.12")
    assert Money("0.04") * Decimal("2.5") == Money("0.1")


def test_money_adding_different_currencies_raises() -> None:
    with pytest.raises(InvalidParameter):
        Money("1", "USD") + Money("1", "EUR")


def test_money_subtracting_different_currencies_raises() -> None:
    with pytest.raises(InvalidParameter):
        Money("1", "USD") - Money("1", "EUR")


def test_money_multiplication_by_a_float_raises() -> None:
    with pytest.raises(InvalidParameter):
        Money("1") * 1.5  # type: ignore[operator]


def test_money_keeps_its_currency_through_arithmetic() -> None:
    assert (Money("1", "EUR") + Money("2", "EUR")).currency == "EUR"
    assert (Money("1", "EUR") * 2).currency == "EUR"


def test_money_zero_and_str() -> None:
    assert Money.zero("EUR") == Money("0", "EUR")
    assert str(Money("0.123456")) == "0.1235 USD"


@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        ("0.125", "0.12"),  # half to even: down
        ("0.135", "0.14"),  # half to even: up
        ("2.675", "2.68"),  # exact in Decimal (a float would give 2.67)
        ("-0.125", "-0.12"),
        ("0.1251", "0.13"),
        ("5", "5.00"),
    ],
)
def test_money_rounded_to_cents_uses_half_even(amount: str, expected: str) -> None:
    rounded = Money(amount).rounded()

    assert rounded.amount == Decimal(expected)
    assert rounded.amount.as_tuple().exponent == -2


# Realistic amounts: up to a billion with up to 8 decimal places (well inside the default
# 28-digit decimal context, where Decimal addition is exact).
amounts = st.decimals(
    min_value=Decimal("-1000000000"),
    max_value=Decimal("1000000000"),
    places=8,
    allow_nan=False,
    allow_infinity=False,
)
money = amounts.map(Money)


@settings(max_examples=100)
@given(money, money)
def test_money_addition_is_commutative(a: Money, b: Money) -> None:
    assert a + b == b + a


@settings(max_examples=100)
@given(money, money, money)
def test_money_addition_is_associative(a: Money, b: Money, c: Money) -> None:
    assert (a + b) + c == a + (b + c)


@settings(max_examples=100)
@given(money, money)
def test_money_subtraction_undoes_addition(a: Money, b: Money) -> None:
    assert (a + b) - b == a


@settings(max_examples=100)
@given(amounts)
def test_money_zero_is_the_additive_identity(amount: Decimal) -> None:
    assert Money(amount) + Money.zero() == Money(amount)


@settings(max_examples=100)
@given(st.integers(-(10**9), 10**9), st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]))
def test_money_rounded_to_cents_is_half_even(cents: int, mills: int) -> None:
    # amount = cents/100 + mills/1000: the third decimal decides, 5 goes to the even cent.
    amount = Decimal(cents).scaleb(-2) + Decimal(mills).scaleb(-3) * (1 if cents >= 0 else -1)
    rounded = Money(amount).rounded().amount

    if mills < 5:
        expected_cents = cents
    elif mills > 5:
        expected_cents = cents + (1 if cents >= 0 else -1)
    else:
        expected_cents = cents if cents % 2 == 0 else cents + (1 if cents >= 0 else -1)
    assert rounded == Decimal(expected_cents).scaleb(-2)
    assert abs(rounded - amount) <= Decimal("0.005")
