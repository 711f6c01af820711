"""What a model costs, and the two questions billing asks of a price.

A model's price is one of six rules (``Pricing``):

``FixedCredits``    N credits per image and no provider bill (the offline local renderer).
``PerImage``        a flat USD price per output image (FLUX on Replicate).
``PerImageTable``   USD per image by quality and size (DALL·E 3).
``PerMegapixel``    USD per output megapixel, optionally per input megapixel (FLUX.2 on
                    Replicate), megapixels rounded up per image.
``ProviderCredits`` the provider's own credits per successful result, by operation, times
                    what one of its credits costs (Stability: 1 credit = $0.01).
``TokenPriced``     USD per million text-input, image-input and image-output tokens (OpenAI's
                    GPT Image models), with the documented output-token count per quality and
                    size, so the price of an image is known before the call.

``quote`` answers "what do we reserve?" before a call: the credits to hold (an upper bound) and
the provider cost we expect. ``charge`` answers "what did it cost?" after: the provider's cost
(exact when the provider reports token usage or a bill, else the catalog price) and the credits
to capture — per image delivered, so a partial result costs less, and never more per image than
the quote, so a capture never exceeds its reservation.

Credits are whole numbers: an image costing ``usd`` is ``ceil(usd / usd_per_credit)`` credits.
USD stays an exact ``Decimal`` throughout; round only to display it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date
from decimal import Decimal, localcontext
from typing import Protocol, TypeAlias, assert_never

import attrs

from imagegen.domain.errors import InvalidParameter
from imagegen.domain.values import Credits, ImageSize, Money

__all__ = [
    "DEFAULT_USD_PER_CREDIT",
    "MEGAPIXEL",
    "Charge",
    "FixedCredits",
    "GridTokens",
    "ImagePrice",
    "OutputTokens",
    "PerImage",
    "PerImageTable",
    "PerMegapixel",
    "PriceSource",
    "Pricing",
    "ProviderCredits",
    "Quote",
    "TokenCount",
    "TokenPriced",
    "TokenTable",
    "TokenUsage",
    "charge",
    "credits_for",
    "describe",
    "quote",
]

DEFAULT_USD_PER_CREDIT = Decimal("0.01")
MEGAPIXEL = 1024 * 1024  # Replicate and BFL count a megapixel as 1024 × 1024 pixels
_MILLION = Decimal(1_000_000)
_ZERO = Decimal(0)
_GENERATE = "generate"


def _decimal(value: object) -> Decimal:
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, (bool, float)):
        raise InvalidParameter(f"Prices are exact decimals, never {type(value).__name__}.")
    else:
        try:
            result = Decimal(str(value))
        except ArithmeticError:
            raise InvalidParameter(f"{value!r} is not a price.") from None
    if not result.is_finite() or result < 0:
        raise InvalidParameter(f"A price must be a finite, non-negative number; got {value!r}.")
    return result


def _optional_decimal(value: object) -> Decimal | None:
    return None if value is None else _decimal(value)


def _non_negative_int(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidParameter(f"{attribute.name} must be a whole number >= 0; got {value!r}.")


def _norm_quality(quality: str | None) -> str | None:
    return quality.strip().lower() if quality is not None else None


def _quality(quality: str) -> str:
    return quality.strip().lower()


def _pairs(pairs: Iterable[tuple[str, object]]) -> tuple[tuple[str, Decimal], ...]:
    return tuple((str(key), _decimal(value)) for key, value in pairs)


def _factors(pairs: Iterable[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
    return tuple((_quality(key), value) for key, value in pairs)


@attrs.frozen(kw_only=True)
class PriceSource:
    """Where a price comes from: a URL or a note, and the day it was read."""

    url: str = ""
    as_of: date | None = None
    note: str = ""


# --- per-image tables -------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ImagePrice:
    """One row of a price table: ``usd`` for an image of this quality and size (``None``
    matches any)."""

    usd: Decimal = attrs.field(converter=_decimal)
    quality: str | None = attrs.field(default=None, converter=_norm_quality)
    size: ImageSize | None = None

    def matches(self, quality: str | None, size: ImageSize | None) -> bool:
        return (self.quality is None or self.quality == _norm_quality(quality)) and (
            self.size is None or self.size == size
        )

    @property
    def specificity(self) -> int:
        return (self.quality is not None) + (self.size is not None)


def _image_prices(prices: Iterable[ImagePrice]) -> tuple[ImagePrice, ...]:
    return tuple(prices)


def _lookup(
    prices: Sequence[ImagePrice], quality: str | None, size: ImageSize | None
) -> ImagePrice | None:
    """The most specific row that matches, or None."""
    matching = [p for p in prices if p.matches(quality, size)]
    return max(matching, key=lambda p: p.specificity) if matching else None


@attrs.frozen(kw_only=True)
class FixedCredits:
    """A fixed number of credits per image, with no provider bill behind it."""

    credits_per_image: Credits
    source: PriceSource = attrs.field(factory=PriceSource)

    @property
    def usd_per_image(self) -> Money | None:
        """No provider bills us for these images (kept for callers of the old ``Pricing``)."""
        return None


@attrs.frozen(kw_only=True)
class PerImage:
    """A flat USD price per output image."""

    usd: Decimal = attrs.field(converter=_decimal)
    source: PriceSource = attrs.field(factory=PriceSource)


@attrs.frozen(kw_only=True)
class PerImageTable:
    """USD per image by quality and size. A request the table does not list is priced at the
    table's highest price (an upper bound), and its quote says it is not exact."""

    prices: tuple[ImagePrice, ...] = attrs.field(converter=_image_prices)
    source: PriceSource = attrs.field(factory=PriceSource)

    @prices.validator
    def _check(
        self, _: attrs.Attribute[tuple[ImagePrice, ...]], value: tuple[ImagePrice, ...]
    ) -> None:
        if not value:
            raise InvalidParameter("A price table needs at least one price.")

    def price_for(self, quality: str | None, size: ImageSize | None) -> tuple[Decimal, bool]:
        row = _lookup(self.prices, quality, size)
        if row is not None:
            return row.usd, True
        return max(p.usd for p in self.prices), False


@attrs.frozen(kw_only=True)
class PerMegapixel:
    """USD per output megapixel (and per input megapixel for edits and references).

    With ``round_up`` each image's megapixels are rounded up to a whole number, at least one
    (Replicate's and BFL's rule); ``first_megapixel_usd``, when set, prices the first
    megapixel of each output differently from the rest (BFL's direct FLUX.2 prices).
    """

    usd_per_megapixel: Decimal = attrs.field(converter=_decimal)
    usd_per_input_megapixel: Decimal = attrs.field(default=_ZERO, converter=_decimal)
    first_megapixel_usd: Decimal | None = attrs.field(default=None, converter=_optional_decimal)
    megapixel: int = attrs.field(default=MEGAPIXEL, validator=_non_negative_int)
    round_up: bool = True
    source: PriceSource = attrs.field(factory=PriceSource)

    def megapixels(self, size: ImageSize) -> Decimal:
        if self.megapixel < 1:
            raise InvalidParameter("A megapixel must be at least one pixel.")
        if self.round_up:
            return Decimal(max(1, -(-size.pixels // self.megapixel)))
        return Decimal(size.pixels) / Decimal(self.megapixel)

    def output_usd(self, size: ImageSize) -> Decimal:
        mp = self.megapixels(size)
        if self.first_megapixel_usd is None:
            return mp * self.usd_per_megapixel
        first = min(mp, Decimal(1))
        return first * self.first_megapixel_usd + (mp - first) * self.usd_per_megapixel

    def input_usd(self, inputs: Sequence[ImageSize]) -> Decimal:
        return sum((self.megapixels(s) * self.usd_per_input_megapixel for s in inputs), _ZERO)


@attrs.frozen(kw_only=True)
class ProviderCredits:
    """The provider's own credits per successful result — ``credits``, or the entry of
    ``by_operation`` for that operation — each costing ``usd_per_credit``."""

    credits: Decimal = attrs.field(converter=_decimal)
    usd_per_credit: Decimal = attrs.field(default=Decimal("0.01"), converter=_decimal)
    by_operation: tuple[tuple[str, Decimal], ...] = attrs.field(default=(), converter=_pairs)
    source: PriceSource = attrs.field(factory=PriceSource)

    def credits_for(self, operation: str) -> Decimal:
        for op, amount in self.by_operation:
            if op == operation:
                return amount
        return self.credits

    def usd_for(self, operation: str) -> Decimal:
        return self.credits_for(operation) * self.usd_per_credit


# --- tokens ------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class TokenCount:
    quality: str = attrs.field(converter=_quality)
    size: ImageSize
    tokens: int = attrs.field(validator=_non_negative_int)


def _token_counts(entries: Iterable[TokenCount]) -> tuple[TokenCount, ...]:
    return tuple(entries)


@attrs.frozen(kw_only=True)
class TokenTable:
    """Output tokens per image, listed by quality and size (OpenAI's table for the GPT Image
    models before gpt-image-2)."""

    entries: tuple[TokenCount, ...] = attrs.field(converter=_token_counts)

    @entries.validator
    def _check(
        self, _: attrs.Attribute[tuple[TokenCount, ...]], value: tuple[TokenCount, ...]
    ) -> None:
        if not value:
            raise InvalidParameter("A token table needs at least one entry.")

    def tokens(self, quality: str | None, size: ImageSize) -> int | None:
        q = _norm_quality(quality)
        for entry in self.entries:
            if entry.quality == q and entry.size == size:
                return entry.tokens
        return None

    def bound(self, quality: str | None) -> int:
        q = _norm_quality(quality)
        same = [e.tokens for e in self.entries if e.quality == q]
        return max(same or [e.tokens for e in self.entries])

    @property
    def qualities(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(e.quality for e in self.entries))


@attrs.frozen(kw_only=True)
class GridTokens:
    """Output tokens of gpt-image-2 and later, for any size: a quality factor ``q`` gives a
    grid of ``q`` by ``round(q · short / long)`` cells, scaled by the image's area::

        cells  = floor((2·q·short + long) / (2·long))
        tokens = ceil(q · cells · (2_000_000 + width · height) / 4_000_000)

    This reproduces OpenAI's output-token calculator (196 tokens for a low-quality 1024×1024
    gpt-image-2 image) and its per-image price table.
    """

    factors: tuple[tuple[str, int], ...] = attrs.field(converter=_factors)

    @factors.validator
    def _check(
        self, _: attrs.Attribute[tuple[tuple[str, int], ...]], value: tuple[tuple[str, int], ...]
    ) -> None:
        if not value:
            raise InvalidParameter("A token grid needs at least one quality factor.")
        for quality, factor in value:
            if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
                raise InvalidParameter(
                    f"The token factor of quality {quality!r} must be a whole number >= 1."
                )

    def factor(self, quality: str | None) -> int | None:
        q = _norm_quality(quality)
        return next((f for name, f in self.factors if name == q), None)

    @staticmethod
    def count(factor: int, size: ImageSize) -> int:
        long, short = max(size.width, size.height), min(size.width, size.height)
        cells = (2 * factor * short + long) // (2 * long)
        return -(-(factor * cells * (2_000_000 + size.pixels)) // 4_000_000)

    def tokens(self, quality: str | None, size: ImageSize) -> int | None:
        factor = self.factor(quality)
        return None if factor is None else self.count(factor, size)

    def bound(self, quality: str | None, size: ImageSize) -> int:
        factor = self.factor(quality) or max(f for _, f in self.factors)
        return self.count(factor, size)

    @property
    def qualities(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.factors)


OutputTokens: TypeAlias = TokenTable | GridTokens


@attrs.frozen(kw_only=True)
class TokenPriced:
    """USD per million tokens of text input, image input and image output.

    ``output_tokens`` gives the image-output tokens of a quality and size, so an image's price is
    known before the call. ``input_image_tokens`` estimates the tokens of one input image (edits),
    for quotes only. ``published`` is the provider's own per-image price list, which the token
    counts are checked against; with ``reserve_published`` a quote never reserves less than it
    (for a model whose published prices and token counts disagree).
    """

    text_input_usd_per_mtok: Decimal = attrs.field(converter=_decimal)
    image_input_usd_per_mtok: Decimal = attrs.field(converter=_decimal)
    image_output_usd_per_mtok: Decimal = attrs.field(converter=_decimal)
    output_tokens: OutputTokens
    text_output_usd_per_mtok: Decimal = attrs.field(default=_ZERO, converter=_decimal)
    input_image_tokens: int = attrs.field(default=0, validator=_non_negative_int)
    published: tuple[ImagePrice, ...] = attrs.field(default=(), converter=_image_prices)
    reserve_published: bool = False
    source: PriceSource = attrs.field(factory=PriceSource)

    def image_tokens(self, quality: str | None, size: ImageSize) -> tuple[int, bool]:
        """Output tokens of one image, and whether the count is documented (else a bound)."""
        tokens = self.output_tokens.tokens(quality, size)
        if tokens is not None:
            return tokens, True
        match self.output_tokens:
            case TokenTable() as table:
                return table.bound(quality), False
            case GridTokens() as grid:
                return grid.bound(quality, size), False
            case _:
                assert_never(self.output_tokens)

    def usage_usd(self, usage: TokenUsage) -> Decimal:
        return (
            Decimal(usage.input_text_tokens) * self.text_input_usd_per_mtok
            + Decimal(usage.input_image_tokens) * self.image_input_usd_per_mtok
            + Decimal(usage.output_image_tokens) * self.image_output_usd_per_mtok
            + Decimal(usage.output_text_tokens) * self.text_output_usd_per_mtok
        ) / _MILLION


class TokenUsage(Protocol):
    """Token counts a provider reported (``imagegen.application.ports.Usage`` is one)."""

    @property
    def input_text_tokens(self) -> int: ...

    @property
    def input_image_tokens(self) -> int: ...

    @property
    def output_image_tokens(self) -> int: ...

    @property
    def output_text_tokens(self) -> int: ...


Pricing: TypeAlias = (
    FixedCredits | PerImage | PerImageTable | PerMegapixel | ProviderCredits | TokenPriced
)


# --- quotes and charges -------------------------------------------------------------------------


@attrs.frozen
class Quote:
    """What a request would cost, worked out before it runs.

    ``credits`` (``per_image_credits`` × n) is what to reserve. ``usd`` is the provider cost we
    expect (None when no provider bills us); ``per_image_usd`` is the most one image can cost —
    its output plus the whole of the request's input (prompt, input images). ``exact`` is False
    when the price had to be bounded because the size or quality is not in the price list.
    """

    credits: Credits
    per_image_credits: Credits
    usd: Money | None
    per_image_usd: Money | None
    exact: bool = True
    basis: str = ""


@attrs.frozen
class Charge:
    """What a finished call cost: the provider's cost in USD (None when no provider bills us)
    and the credits to capture (``per_image_credits`` × images delivered)."""

    credits: Credits
    per_image_credits: Credits
    usd: Money | None
    basis: str = ""


def credits_for(usd: Decimal, usd_per_credit: Decimal) -> Credits:
    """``ceil(usd / usd_per_credit)`` whole credits, computed exactly."""
    if usd_per_credit <= 0:
        raise InvalidParameter(f"usd_per_credit must be positive; got {usd_per_credit}.")
    if usd < 0:
        raise InvalidParameter(f"A cost cannot be negative; got {usd}.")
    with localcontext() as ctx:
        ctx.prec = max(28, len(usd.as_tuple().digits) + len(usd_per_credit.as_tuple().digits) + 8)
        whole, rest = divmod(usd, usd_per_credit)
    return Credits(int(whole) + (1 if rest > 0 else 0))


def _fmt(usd: Decimal) -> str:
    return f"${usd.normalize():f}"


def _check_common(n: int, usd_per_credit: Decimal, name: str = "n") -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InvalidParameter(f"{name} must be a whole number >= 0; got {n!r}.")
    if not isinstance(usd_per_credit, Decimal) or not usd_per_credit > 0:
        raise InvalidParameter(
            f"usd_per_credit must be a positive Decimal; got {usd_per_credit!r}."
        )


def _unit_price(
    pricing: Pricing,
    *,
    size: ImageSize,
    quality: str | None,
    operation: str,
    prompt_chars: int,
    input_images: Sequence[ImageSize],
) -> tuple[Decimal, bool, str]:
    """The most one image of a request can cost at the provider: (usd, exact, basis)."""
    match pricing:
        case FixedCredits():
            raise AssertionError("fixed-credit pricing has no USD price")
        case PerImage(usd=usd):
            return usd, True, f"{_fmt(usd)} per image"
        case PerImageTable():
            usd, exact = pricing.price_for(quality, size)
            what = " ".join(x for x in (quality, str(size)) if x)
            basis = (
                f"{_fmt(usd)} per image ({what})"
                if exact
                else (f"{_fmt(usd)} per image: {what} is not in the price list; its highest price")
            )
            return usd, exact, basis
        case PerMegapixel():
            out = pricing.output_usd(size)
            inp = pricing.input_usd(input_images)
            basis = f"{pricing.megapixels(size)} MP × {_fmt(pricing.usd_per_megapixel)}"
            if inp:
                basis += f" + input {_fmt(inp)}"
            return out + inp, True, basis
        case ProviderCredits():
            provider_credits = pricing.credits_for(operation)
            usd = pricing.usd_for(operation)
            return (
                usd,
                True,
                (
                    f"{provider_credits.normalize():f} provider credits × "
                    f"{_fmt(pricing.usd_per_credit)} = {_fmt(usd)} per image"
                ),
            )
        case TokenPriced():
            tokens, exact = pricing.image_tokens(quality, size)
            out = Decimal(tokens) * pricing.image_output_usd_per_mtok / _MILLION
            basis = (
                f"{tokens} output tokens × {_fmt(pricing.image_output_usd_per_mtok)}/1M"
                f" = {_fmt(out)}"
            )
            listed = (
                _lookup(pricing.published, quality, size) if pricing.reserve_published else None
            )
            if listed is not None and listed.usd > out:
                out = listed.usd
                basis += f"; the provider lists {_fmt(listed.usd)} per image"
            text = Decimal(prompt_chars) * pricing.text_input_usd_per_mtok / _MILLION
            images = (
                Decimal(len(input_images) * pricing.input_image_tokens)
                * pricing.image_input_usd_per_mtok
                / _MILLION
            )
            if text:
                basis += f" + prompt ≤ {prompt_chars} tokens {_fmt(text)}"
            if images:
                basis += f" + input images {_fmt(images)} (estimated)"
            return out + text + images, exact, basis
        case _:
            assert_never(pricing)


def quote(
    pricing: Pricing,
    *,
    n: int,
    size: ImageSize,
    quality: str | None,
    usd_per_credit: Decimal,
    prompt_chars: int = 0,
    operation: str = _GENERATE,
    input_images: Sequence[ImageSize] = (),
) -> Quote:
    """What ``n`` images of ``size`` and ``quality`` would cost: the credits to reserve and the
    provider cost to expect. ``prompt_chars`` bounds the prompt's text tokens (a token covers at
    least one character); ``input_images`` are the sizes of the images an edit sends."""
    _check_common(n, usd_per_credit)
    if isinstance(prompt_chars, bool) or not isinstance(prompt_chars, int) or prompt_chars < 0:
        raise InvalidParameter(f"prompt_chars must be a whole number >= 0; got {prompt_chars!r}.")
    if isinstance(pricing, FixedCredits):
        per = pricing.credits_per_image
        return Quote(per * n, per, None, None, True, f"{per} per image")
    unit, exact, basis = _unit_price(
        pricing,
        size=size,
        quality=quality,
        operation=str(operation),
        prompt_chars=prompt_chars,
        input_images=input_images,
    )
    per = credits_for(unit, usd_per_credit)
    basis += f" → {per} per image at {_fmt(usd_per_credit)} per credit"
    return Quote(per * n, per, Money(unit * n), Money(unit), exact, basis)


def charge(
    pricing: Pricing,
    *,
    images: int,
    size: ImageSize,
    quality: str | None,
    usd_per_credit: Decimal,
    usage: TokenUsage | None = None,
    provider_cost: Money | None = None,
    operation: str = _GENERATE,
    input_images: Sequence[ImageSize] = (),
    quoted: Quote | None = None,
) -> Charge:
    """What a finished call costs, for ``images`` images delivered.

    The USD cost is, in order of preference: the reported token ``usage`` priced at the model's
    token rates (token-priced models: exact), the provider's own ``provider_cost``, or the
    catalog price of the images delivered. Credits are ``ceil(usd per image / usd_per_credit)``
    per image delivered, and never more per image than ``quoted`` (the reservation) allows.
    Zero images cost nothing.
    """
    _check_common(images, usd_per_credit, "images")
    if isinstance(pricing, FixedCredits):
        per = pricing.credits_per_image
        return Charge(per * images, per, None, f"{per} per image")
    if images == 0:
        return Charge(Credits(0), Credits(0), Money(_ZERO), "no image was delivered")
    if usage is not None and isinstance(pricing, TokenPriced):
        usd = pricing.usage_usd(usage)
        basis = (
            f"reported usage: {usage.input_text_tokens} text + {usage.input_image_tokens} image "
            f"input, {usage.output_image_tokens} image output tokens = {_fmt(usd)}"
        )
    elif provider_cost is not None:
        if provider_cost.currency != "USD":
            raise InvalidParameter(f"Provider costs are in USD; got {provider_cost.currency}.")
        usd = provider_cost.amount
        basis = f"the provider's bill: {_fmt(usd)}"
    else:
        unit, _, basis = _unit_price(
            pricing,
            size=size,
            quality=quality,
            operation=str(operation),
            prompt_chars=0,
            input_images=input_images,
        )
        usd = unit * images
        basis = f"{images} × ({basis})"
    per = credits_for(usd / images, usd_per_credit)
    if quoted is not None and per > quoted.per_image_credits:
        basis += f"; capped at the quoted {quoted.per_image_credits} per image"
        per = quoted.per_image_credits
    return Charge(per * images, per, Money(usd), basis)


def describe(pricing: Pricing) -> str:
    """The price in a few words, for ``imagegen models``."""
    match pricing:
        case FixedCredits(credits_per_image=per):
            return f"{per} per image"
        case PerImage(usd=usd):
            return f"{_fmt(usd)}/image"
        case PerImageTable(prices=prices):
            low, high = min(p.usd for p in prices), max(p.usd for p in prices)
            return f"{_fmt(low)}/image" if low == high else f"{_fmt(low)}–{_fmt(high)}/image"
        case PerMegapixel():
            text = f"{_fmt(pricing.usd_per_megapixel)}/MP"
            if pricing.first_megapixel_usd is not None:
                text = f"{_fmt(pricing.first_megapixel_usd)} first MP, {text} after"
            if pricing.usd_per_input_megapixel:
                text += f" + {_fmt(pricing.usd_per_input_megapixel)}/input MP"
            return text
        case ProviderCredits():
            amounts = {pricing.credits, *(c for _, c in pricing.by_operation)}
            low, high = min(amounts), max(amounts)
            cost = _fmt(low * pricing.usd_per_credit)
            if low != high:
                cost += f"–{_fmt(high * pricing.usd_per_credit)}"
            span = (
                f"{low.normalize():f}"
                if low == high
                else f"{low.normalize():f}–{high.normalize():f}"
            )
            return f"{span} provider credits ({cost})/image"
        case TokenPriced():
            return (
                f"tokens per 1M: text in {_fmt(pricing.text_input_usd_per_mtok)}, image in "
                f"{_fmt(pricing.image_input_usd_per_mtok)}, image out "
                f"{_fmt(pricing.image_output_usd_per_mtok)}"
            )
        case _:
            assert_never(pricing)
