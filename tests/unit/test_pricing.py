"""Pricing (imagegen.domain.pricing): quotes before a call, charges after it.

Two kinds of test: table-driven checks that representative requests cost what the shipped
catalog (and the provider's own price list) says, to $0.001, with the credits following; and
hypothesis properties that hold for any price rule.
"""

from __future__ import annotations

from decimal import Decimal

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagegen.domain.errors import InvalidParameter
from imagegen.domain.models import ModelSpec
from imagegen.domain.pricing import (
    FixedCredits,
    GridTokens,
    ImagePrice,
    PerImage,
    PerImageTable,
    PerMegapixel,
    Pricing,
    ProviderCredits,
    TokenCount,
    TokenPriced,
    TokenTable,
    charge,
    credits_for,
    describe,
    quote,
)
from imagegen.domain.values import Credits, ImageSize, Money
from imagegen.infrastructure.catalog import load_specs

CENT = Decimal("0.01")
TENTH_OF_A_CENT = Decimal("0.001")
SQUARE = ImageSize(1024, 1024)
LANDSCAPE = ImageSize(1536, 1024)
PORTRAIT = ImageSize(1024, 1536)


@attrs.frozen
class Usage:
    """What an adapter reports (the shape of ``imagegen.application.ports.Usage``)."""

    input_text_tokens: int = 0
    input_image_tokens: int = 0
    output_image_tokens: int = 0
    output_text_tokens: int = 0


@pytest.fixture(scope="module")
def catalog() -> dict[str, ModelSpec]:
    specs, _, _ = load_specs()
    return {spec.ref: spec for spec in specs}


# --- representative requests: the catalog price, to $0.001, and the credits that follow -------

REPRESENTATIVE = [
    # ref, operation, quality, size, USD per image (provider's figure), credits at $0.01
    ("openai/gpt-image-2", "generate", "medium", SQUARE, "0.053", 6),
    ("openai/gpt-image-2", "generate", "low", SQUARE, "0.006", 1),
    ("openai/gpt-image-2", "generate", "high", PORTRAIT, "0.165", 17),
    ("openai/gpt-image-2", "generate", "high", LANDSCAPE, "0.165", 17),
    ("openai/gpt-image-1.5", "generate", "high", LANDSCAPE, "0.199", 20),  # OpenAI: "$0.20"
    ("openai/gpt-image-1.5", "generate", "medium", SQUARE, "0.034", 4),
    ("openai/gpt-image-1", "generate", "high", SQUARE, "0.167", 17),
    ("openai/dall-e-3", "generate", "hd", ImageSize(1792, 1024), "0.12", 12),
    ("replicate/black-forest-labs/flux-schnell", "generate", None, SQUARE, "0.003", 1),
    ("replicate/black-forest-labs/flux-dev", "generate", None, ImageSize(1344, 768), "0.025", 3),
    ("replicate/black-forest-labs/flux-1.1-pro", "generate", None, SQUARE, "0.04", 4),
    (
        "replicate/black-forest-labs/flux-1.1-pro-ultra",
        "generate",
        None,
        ImageSize(2752, 1536),
        "0.06",
        6,
    ),
    ("replicate/black-forest-labs/flux-kontext-pro", "edit", None, SQUARE, "0.04", 4),
    ("replicate/black-forest-labs/flux-kontext-max", "edit", None, SQUARE, "0.08", 8),
    ("replicate/black-forest-labs/flux-2-pro", "generate", None, SQUARE, "0.015", 2),
    ("replicate/black-forest-labs/flux-2-pro", "generate", None, ImageSize(2048, 2048), "0.06", 6),
    ("stability/stable-image-core", "generate", None, SQUARE, "0.03", 3),
    ("stability/stable-image-ultra", "generate", None, ImageSize(1344, 768), "0.08", 8),
    ("stability/sd3.5-large", "generate", None, SQUARE, "0.065", 7),
    ("stability/sd3.5-large-turbo", "generate", None, SQUARE, "0.04", 4),
    ("stability/sd3.5-medium", "generate", None, SQUARE, "0.035", 4),
    ("stability/sd3.5-flash", "generate", None, SQUARE, "0.025", 3),
    ("stability/stable-image-inpaint", "inpaint", None, SQUARE, "0.05", 5),
    ("stability/stable-image-outpaint", "outpaint", None, SQUARE, "0.04", 4),
    ("stability/stable-image-erase", "erase", None, SQUARE, "0.05", 5),
    ("stability/stable-image-search-and-replace", "search_and_replace", None, SQUARE, "0.05", 5),
    ("stability/stable-image-remove-background", "remove_background", None, SQUARE, "0.05", 5),
    ("stability/stable-image-edit", "outpaint", None, SQUARE, "0.04", 4),
    ("stability/stable-image-edit", "erase", None, SQUARE, "0.05", 5),
]


def _reported(spec: ModelSpec, quality: str | None, size: ImageSize, images: int) -> Usage | None:
    """The usage a provider would report for ``images`` images and a short prompt."""
    if not isinstance(spec.pricing, TokenPriced):
        return None
    tokens, _ = spec.pricing.image_tokens(quality, size)
    return Usage(input_text_tokens=12, output_image_tokens=tokens * images)


@pytest.mark.parametrize(
    ("ref", "operation", "quality", "size", "usd", "credits"),
    REPRESENTATIVE,
    ids=[f"{r[0]}-{r[1]}-{r[2] or ''}-{r[3]}" for r in REPRESENTATIVE],
)
def test_a_representative_request_costs_the_catalog_price_and_charges_its_credits(
    catalog: dict[str, ModelSpec],
    ref: str,
    operation: str,
    quality: str | None,
    size: ImageSize,
    usd: str,
    credits: int,
) -> None:
    spec = catalog[ref]
    assert spec.size_rule.admits(size), f"{size} is not a size of {ref}"
    price = Decimal(usd)

    before = quote(
        spec.pricing, n=2, size=size, quality=quality, usd_per_credit=CENT, operation=operation
    )
    after = charge(
        spec.pricing,
        images=2,
        size=size,
        quality=quality,
        usd_per_credit=CENT,
        usage=_reported(spec, quality, size, 2),
        operation=operation,
        quoted=before,
    )

    assert before.per_image_usd is not None
    assert after.usd is not None
    assert abs(before.per_image_usd.amount - price) <= TENTH_OF_A_CENT
    assert abs(after.usd.amount - 2 * price) <= 2 * TENTH_OF_A_CENT
    assert before.per_image_credits == after.per_image_credits == Credits(credits)
    assert before.credits == after.credits == Credits(2 * credits)
    assert before.exact


def test_stable_image_core_costs_three_stability_credits_that_is_three_cents() -> None:
    core = ProviderCredits(credits=Decimal(3))

    priced = quote(core, n=1, size=SQUARE, quality=None, usd_per_credit=CENT)
    billed = charge(
        core,
        images=1,
        size=SQUARE,
        quality=None,
        usd_per_credit=CENT,
        provider_cost=Money(Decimal("0.03")),
    )

    assert priced.usd == billed.usd == Money(Decimal("0.03"))
    assert priced.credits == billed.credits == Credits(3)


def test_gpt_image_2_output_tokens_reproduce_openais_calculator_and_price_table() -> None:
    grid = GridTokens(factors=(("low", 16), ("medium", 48), ("high", 96)))

    assert grid.tokens("low", SQUARE) == 196  # the calculator's example in OpenAI's guide
    assert grid.tokens("medium", SQUARE) == 1756
    assert grid.tokens("high", SQUARE) == 7024
    assert grid.tokens("high", LANDSCAPE) == grid.tokens("high", PORTRAIT) == 5488
    assert grid.tokens("low", ImageSize(2048, 1152)) == 157
    assert grid.tokens("medium", ImageSize(2048, 1152)) == 1413
    assert grid.tokens("high", ImageSize(2048, 1152)) == 5650
    assert grid.tokens("auto", SQUARE) is None


def test_token_counts_match_openais_published_prices_to_their_precision(
    catalog: dict[str, ModelSpec],
) -> None:
    checked = 0
    for ref in ("openai/gpt-image-2", "openai/gpt-image-1.5", "openai/gpt-image-1"):
        pricing = catalog[ref].pricing
        assert isinstance(pricing, TokenPriced)
        for listed in pricing.published:
            assert listed.size is not None
            tokens, exact = pricing.image_tokens(listed.quality, listed.size)
            usd = Decimal(tokens) * pricing.image_output_usd_per_mtok / 1_000_000
            # OpenAI prints at least cents, sometimes tenths of a cent, and rounds up as often
            # as not ($0.1664 is listed as $0.167): within one unit of the last digit printed.
            exponent = listed.usd.as_tuple().exponent
            assert isinstance(exponent, int)
            unit = Decimal(1).scaleb(min(exponent, -2))
            assert exact
            assert abs(usd - listed.usd) < unit, (ref, listed, usd)
            checked += 1
    assert checked == 27


def test_gpt_image_1_mini_reserves_openais_per_image_price_and_charges_the_reported_tokens(
    catalog: dict[str, ModelSpec],
) -> None:
    mini = catalog["openai/gpt-image-1-mini"]

    priced = quote(mini.pricing, n=1, size=SQUARE, quality="medium", usd_per_credit=CENT)
    billed = charge(
        mini.pricing,
        images=1,
        size=SQUARE,
        quality="medium",
        usd_per_credit=CENT,
        usage=Usage(input_text_tokens=10, output_image_tokens=1056),
        quoted=priced,
    )

    assert priced.usd == Money(Decimal("0.011"))
    assert billed.usd == Money(Decimal("0.008468"))  # 10 × $2/1M + 1056 × $8/1M
    assert (priced.credits, billed.credits) == (Credits(2), Credits(1))


def test_a_token_priced_charge_is_the_reported_usage_at_the_token_rates_exactly() -> None:
    pricing = TokenPriced(
        text_input_usd_per_mtok=Decimal(5),
        image_input_usd_per_mtok=Decimal(8),
        image_output_usd_per_mtok=Decimal(30),
        output_tokens=GridTokens(factors=(("medium", 48),)),
    )
    usage = Usage(input_text_tokens=40, input_image_tokens=3000, output_image_tokens=3512)

    billed = charge(
        pricing, images=2, size=SQUARE, quality="medium", usd_per_credit=CENT, usage=usage
    )

    # 40 × 5 + 3000 × 8 + 3512 × 30 = 129,560 micro-dollars
    assert billed.usd == Money(Decimal("0.12956"))
    assert billed.per_image_credits == Credits(7)  # $0.06478 an image, rounded up
    assert billed.credits == Credits(14)


def test_a_quote_counts_the_prompt_as_input_tokens_at_most_one_per_character() -> None:
    pricing = TokenPriced(
        text_input_usd_per_mtok=Decimal(5),
        image_input_usd_per_mtok=Decimal(8),
        image_output_usd_per_mtok=Decimal(30),
        output_tokens=GridTokens(factors=(("medium", 48),)),
    )

    bare = quote(pricing, n=1, size=SQUARE, quality="medium", usd_per_credit=CENT)
    worded = quote(
        pricing, n=1, size=SQUARE, quality="medium", usd_per_credit=CENT, prompt_chars=1000
    )

    assert bare.per_image_usd == Money(Decimal("0.05268"))
    assert worded.per_image_usd == Money(Decimal("0.05768"))


def test_a_partial_result_charges_only_the_images_delivered() -> None:
    flux = PerImage(usd=Decimal("0.04"))

    priced = quote(flux, n=4, size=SQUARE, quality=None, usd_per_credit=CENT)
    billed = charge(flux, images=3, size=SQUARE, quality=None, usd_per_credit=CENT)

    assert (priced.credits, billed.credits) == (Credits(16), Credits(12))
    assert billed.usd == Money(Decimal("0.12"))


def test_a_failed_or_refused_call_charges_nothing() -> None:
    for pricing in (PerImage(usd=Decimal("0.04")), ProviderCredits(credits=Decimal(8))):
        billed = charge(pricing, images=0, size=SQUARE, quality=None, usd_per_credit=CENT)
        assert billed.credits == Credits(0)
        assert billed.usd == Money(Decimal(0))


def test_a_charge_never_exceeds_the_quote_per_image_even_if_the_provider_bills_more() -> None:
    flux = PerImage(usd=Decimal("0.04"))
    priced = quote(flux, n=2, size=SQUARE, quality=None, usd_per_credit=CENT)

    billed = charge(
        flux,
        images=2,
        size=SQUARE,
        quality=None,
        usd_per_credit=CENT,
        provider_cost=Money(Decimal("0.50")),
        quoted=priced,
    )

    assert billed.usd == Money(Decimal("0.50"))  # recorded as billed
    assert billed.credits == priced.credits == Credits(8)  # charged as quoted
    assert "capped" in billed.basis


def test_the_local_model_costs_fixed_credits_and_no_usd() -> None:
    local = FixedCredits(credits_per_image=Credits(3))

    priced = quote(local, n=4, size=SQUARE, quality=None, usd_per_credit=CENT)
    billed = charge(local, images=2, size=SQUARE, quality=None, usd_per_credit=CENT)

    assert (priced.credits, priced.usd) == (Credits(12), None)
    assert (billed.credits, billed.usd) == (Credits(6), None)


def test_megapixel_prices_round_each_image_up_and_count_input_images() -> None:
    flux2 = PerMegapixel(
        usd_per_megapixel=Decimal("0.015"), usd_per_input_megapixel=Decimal("0.015")
    )

    assert flux2.megapixels(ImageSize(1024, 1024)) == 1
    assert flux2.megapixels(ImageSize(1025, 1024)) == 2
    assert flux2.megapixels(ImageSize(256, 256)) == 1
    priced = quote(
        flux2,
        n=1,
        size=ImageSize(1536, 1024),
        quality=None,
        usd_per_credit=CENT,
        input_images=[SQUARE, ImageSize(2048, 2048)],
    )
    assert priced.per_image_usd == Money(Decimal("0.105"))  # 2 MP out + 1 + 4 MP in


def test_bfl_style_first_megapixel_prices_differ_from_the_rest() -> None:
    direct = PerMegapixel(usd_per_megapixel=Decimal("0.015"), first_megapixel_usd=Decimal("0.03"))

    assert direct.output_usd(SQUARE) == Decimal("0.03")
    assert direct.output_usd(ImageSize(2048, 2048)) == Decimal("0.075")


def test_a_size_the_price_table_does_not_list_is_quoted_at_its_highest_price() -> None:
    table = PerImageTable(
        prices=(
            ImagePrice(usd=Decimal("0.04"), quality="standard", size=SQUARE),
            ImagePrice(usd=Decimal("0.12"), quality="hd"),
        )
    )

    listed = quote(table, n=1, size=SQUARE, quality="standard", usd_per_credit=CENT)
    any_hd = quote(table, n=1, size=LANDSCAPE, quality="HD", usd_per_credit=CENT)
    unlisted = quote(table, n=1, size=LANDSCAPE, quality="standard", usd_per_credit=CENT)

    assert (listed.per_image_usd, listed.exact) == (Money(Decimal("0.04")), True)
    assert (any_hd.per_image_usd, any_hd.exact) == (Money(Decimal("0.12")), True)
    assert (unlisted.per_image_usd, unlisted.exact) == (Money(Decimal("0.12")), False)


def test_an_unlisted_quality_is_bounded_by_the_highest_token_count() -> None:
    table = TokenTable(
        entries=(
            TokenCount(quality="low", size=SQUARE, tokens=272),
            TokenCount(quality="high", size=SQUARE, tokens=4160),
        )
    )
    pricing = TokenPriced(
        text_input_usd_per_mtok=Decimal(5),
        image_input_usd_per_mtok=Decimal(8),
        image_output_usd_per_mtok=Decimal(32),
        output_tokens=table,
    )

    assert pricing.image_tokens("low", SQUARE) == (272, True)
    assert pricing.image_tokens(None, SQUARE) == (4160, False)
    assert pricing.image_tokens("low", LANDSCAPE) == (272, False)


def test_credits_for_rounds_up_exactly() -> None:
    assert credits_for(Decimal("0.03"), CENT) == Credits(3)
    assert credits_for(Decimal("0.030000001"), CENT) == Credits(4)
    assert credits_for(Decimal("0.065"), CENT) == Credits(7)
    assert credits_for(Decimal(0), CENT) == Credits(0)
    assert credits_for(Decimal("1"), Decimal("0.003")) == Credits(334)
    with pytest.raises(InvalidParameter):
        credits_for(Decimal("0.01"), Decimal(0))


def test_prices_refuse_floats_and_negatives() -> None:
    with pytest.raises(InvalidParameter):
        PerImage(usd=0.04)
    with pytest.raises(InvalidParameter):
        PerImage(usd=Decimal("-0.01"))
    with pytest.raises(InvalidParameter):
        quote(PerImage(usd=CENT), n=-1, size=SQUARE, quality=None, usd_per_credit=CENT)
    with pytest.raises(InvalidParameter):
        quote(PerImage(usd=CENT), n=1, size=SQUARE, quality=None, usd_per_credit=Decimal(0))


def test_every_rule_describes_itself_in_a_few_words(catalog: dict[str, ModelSpec]) -> None:
    assert describe(catalog["replicate/black-forest-labs/flux-schnell"].pricing) == "$0.003/image"
    assert describe(catalog["stability/stable-image-core"].pricing) == (
        "3 provider credits ($0.03)/image"
    )
    assert describe(catalog["openai/dall-e-3"].pricing) == "$0.04–$0.12/image"
    assert "image out $30" in describe(catalog["openai/gpt-image-2"].pricing)


# --- properties that hold for any price ---------------------------------------------------------

usd = st.decimals(min_value=Decimal(0), max_value=Decimal(2), places=4)
usd_per_credit = st.decimals(min_value=Decimal("0.0001"), max_value=Decimal(1), places=4).filter(
    lambda d: d > 0
)
sizes = st.builds(ImageSize, st.integers(64, 4096), st.integers(64, 4096))
qualities = st.sampled_from([None, "low", "medium", "high"])
operations = st.sampled_from(["generate", "inpaint", "outpaint", "erase"])
token_rates = st.decimals(min_value=Decimal(0), max_value=Decimal(50), places=2)


@st.composite
def pricings(draw: st.DrawFn) -> Pricing:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return FixedCredits(credits_per_image=Credits(draw(st.integers(0, 50))))
    if kind == 1:
        return PerImage(usd=draw(usd))
    if kind == 2:
        rows = draw(
            st.lists(
                st.builds(ImagePrice, usd=usd, quality=qualities, size=st.none() | sizes),
                min_size=1,
                max_size=4,
            )
        )
        return PerImageTable(prices=tuple(rows))
    if kind == 3:
        return PerMegapixel(
            usd_per_megapixel=draw(usd),
            usd_per_input_megapixel=draw(usd),
            first_megapixel_usd=draw(st.none() | usd),
            round_up=draw(st.booleans()),
        )
    if kind == 4:
        return ProviderCredits(
            credits=draw(st.decimals(min_value=Decimal(0), max_value=Decimal(100), places=1)),
            by_operation=(("inpaint", draw(st.decimals(Decimal(0), Decimal(10), places=1))),),
        )
    output_tokens: list[GridTokens | TokenTable] = [
        GridTokens(factors=(("low", 16), ("medium", 48), ("high", 96))),
        TokenTable(
            entries=(
                TokenCount(quality="low", size=SQUARE, tokens=272),
                TokenCount(quality="medium", size=SQUARE, tokens=1056),
                TokenCount(quality="high", size=LANDSCAPE, tokens=6208),
            )
        ),
    ]
    output = draw(st.sampled_from(output_tokens))
    return TokenPriced(
        text_input_usd_per_mtok=draw(token_rates),
        image_input_usd_per_mtok=draw(token_rates),
        image_output_usd_per_mtok=draw(token_rates),
        output_tokens=output,
        input_image_tokens=draw(st.integers(0, 5000)),
        published=draw(st.lists(st.builds(ImagePrice, usd=usd, quality=qualities), max_size=2)),
        reserve_published=draw(st.booleans()),
    )


@settings(max_examples=300, deadline=None)
@given(
    pricing=pricings(),
    n=st.integers(0, 10),
    size=sizes,
    quality=qualities,
    rate=usd_per_credit,
    prompt_chars=st.integers(0, 4000),
    operation=operations,
)
def test_a_quote_reserves_at_least_its_usd_in_credits(
    pricing: Pricing,
    n: int,
    size: ImageSize,
    quality: str | None,
    rate: Decimal,
    prompt_chars: int,
    operation: str,
) -> None:
    priced = quote(
        pricing,
        n=n,
        size=size,
        quality=quality,
        usd_per_credit=rate,
        prompt_chars=prompt_chars,
        operation=operation,
    )

    assert priced.credits == priced.per_image_credits * n
    if priced.usd is not None and priced.per_image_usd is not None:
        assert priced.per_image_credits.amount * rate >= priced.per_image_usd.amount
        assert priced.per_image_credits.amount * rate < priced.per_image_usd.amount + rate
        assert priced.credits.amount * rate >= priced.usd.amount


@settings(max_examples=200, deadline=None)
@given(
    pricing=pricings(),
    n=st.integers(0, 9),
    size=sizes,
    quality=qualities,
    rate=usd_per_credit,
    prompt_chars=st.integers(0, 4000),
)
def test_a_quote_grows_with_the_number_of_images(
    pricing: Pricing,
    n: int,
    size: ImageSize,
    quality: str | None,
    rate: Decimal,
    prompt_chars: int,
) -> None:
    def at(count: int) -> tuple[Credits, Decimal]:
        priced = quote(
            pricing,
            n=count,
            size=size,
            quality=quality,
            usd_per_credit=rate,
            prompt_chars=prompt_chars,
        )
        return priced.credits, priced.usd.amount if priced.usd is not None else Decimal(0)

    fewer, more = at(n), at(n + 1)
    assert more[0] >= fewer[0]
    assert more[1] >= fewer[1]


@settings(max_examples=300, deadline=None)
@given(
    pricing=pricings(),
    data=st.data(),
    size=sizes,
    quality=qualities,
    rate=usd_per_credit,
    prompt_chars=st.integers(0, 4000),
    operation=operations,
    reported=st.booleans(),
)
def test_a_charge_for_k_of_n_images_never_exceeds_the_quote_for_n(
    pricing: Pricing,
    data: st.DataObject,
    size: ImageSize,
    quality: str | None,
    rate: Decimal,
    prompt_chars: int,
    operation: str,
    reported: bool,
) -> None:
    n = data.draw(st.integers(0, 10), label="n")
    k = data.draw(st.integers(0, n), label="k")
    priced = quote(
        pricing,
        n=n,
        size=size,
        quality=quality,
        usd_per_credit=rate,
        prompt_chars=prompt_chars,
        operation=operation,
    )
    usage = (
        Usage(
            input_text_tokens=data.draw(st.integers(0, 10_000)),
            output_image_tokens=data.draw(st.integers(0, 100_000)),
        )
        if reported
        else None
    )

    billed = charge(
        pricing,
        images=k,
        size=size,
        quality=quality,
        usd_per_credit=rate,
        usage=usage,
        operation=operation,
        quoted=priced,
    )

    assert billed.credits <= priced.credits
    assert billed.credits == billed.per_image_credits * k
    if k == 0:
        assert billed.credits == Credits(0)
        assert billed.usd is None or billed.usd.amount == 0


@settings(max_examples=200, deadline=None)
@given(pricing=pricings(), k=st.integers(1, 10), size=sizes, quality=qualities, rate=usd_per_credit)
def test_an_uncapped_charge_covers_its_usd_in_credits(
    pricing: Pricing, k: int, size: ImageSize, quality: str | None, rate: Decimal
) -> None:
    billed = charge(pricing, images=k, size=size, quality=quality, usd_per_credit=rate)

    if billed.usd is not None:
        assert billed.credits.amount * rate >= billed.usd.amount


@given(
    amount=st.decimals(min_value=Decimal(0), max_value=Decimal(10_000), places=6),
    rate=usd_per_credit,
)
def test_credits_for_is_the_smallest_whole_number_covering_the_amount(
    amount: Decimal, rate: Decimal
) -> None:
    whole = credits_for(amount, rate).amount

    assert whole * rate >= amount
    assert whole == 0 or (whole - 1) * rate < amount
