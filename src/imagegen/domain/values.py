"""Value objects: immutable, checked when created, raising a typed error when a rule is broken."""

from __future__ import annotations

import enum
import math
import re
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from fractions import Fraction

import attrs

from imagegen.domain.errors import InvalidParameter, InvalidPrompt, InvalidSize

DEFAULT_MAX_PROMPT_LENGTH = 4000
MAX_IMAGE_SIDE = 16384


@attrs.frozen
class Prompt:
    """What to draw: trimmed, non-empty, at most ``max_length`` characters."""

    text: str
    negative: str | None = None

    @classmethod
    def parse(
        cls, text: str, negative: str | None = None, *, max_length: int = DEFAULT_MAX_PROMPT_LENGTH
    ) -> Prompt:
        cleaned = (text or "").strip()
        if not cleaned:
            raise InvalidPrompt("The prompt is empty; describe the image you want.")
        if len(cleaned) > max_length:
            raise InvalidPrompt(
                f"The prompt has {len(cleaned)} characters; the limit is {max_length}.",
                length=len(cleaned),
                max_length=max_length,
            )
        neg = (negative or "").strip() or None
        if neg is not None and len(neg) > max_length:
            raise InvalidPrompt(
                f"The negative prompt has {len(neg)} characters; the limit is {max_length}.",
                length=len(neg),
                max_length=max_length,
            )
        return cls(cleaned, neg)


_SIZE_RE = re.compile(r"^\s*(\d{1,6})\s*[xX×]\s*(\d{1,6})\s*$")
_RATIO_RE = re.compile(r"^\s*(\d{1,4})\s*:\s*(\d{1,4})\s*$")


@attrs.frozen(order=True)
class ImageSize:
    """Width × height in pixels, each side 1..16384."""

    width: int
    height: int

    def __attrs_post_init__(self) -> None:
        for side in (self.width, self.height):
            if isinstance(side, bool) or not isinstance(side, int):
                raise InvalidSize(f"Image sides are whole numbers of pixels; got {side!r}.")
            if not 1 <= side <= MAX_IMAGE_SIDE:
                raise InvalidSize(
                    f"Image sides must be between 1 and {MAX_IMAGE_SIDE} pixels; "
                    f"got {self.width}x{self.height}.",
                    width=self.width,
                    height=self.height,
                )

    @classmethod
    def parse(cls, text: str) -> ImageSize:
        match = _SIZE_RE.match(text or "")
        if not match:
            raise InvalidSize(
                f"Size {text!r} is not WIDTHxHEIGHT (for example 1024x1024).", size=text
            )
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def aspect_ratio(self) -> AspectRatio:
        return AspectRatio.of(self.width, self.height)

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


@attrs.frozen
class AspectRatio:
    """A reduced ratio like 16:9, at most 100:1 either way."""

    width: int
    height: int

    def __attrs_post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise InvalidSize(f"Aspect ratio {self.width}:{self.height} must be positive.")
        if max(self.width, self.height) > 100 * min(self.width, self.height):
            raise InvalidSize(
                f"Aspect ratio {self.width}:{self.height} is more extreme than 100:1."
            )
        if math.gcd(self.width, self.height) != 1:
            raise InvalidSize("Use AspectRatio.of() to build a ratio; it reduces the terms.")

    @classmethod
    def of(cls, width: int, height: int) -> AspectRatio:
        if width < 1 or height < 1:
            raise InvalidSize(f"Aspect ratio {width}:{height} must be positive.")
        g = math.gcd(width, height)
        return cls(width // g, height // g)

    @classmethod
    def parse(cls, text: str) -> AspectRatio:
        match = _RATIO_RE.match(text or "")
        if not match:
            raise InvalidSize(
                f"Aspect ratio {text!r} is not W:H (for example 16:9).", aspect_ratio=text
            )
        return cls.of(int(match.group(1)), int(match.group(2)))

    @property
    def value(self) -> Fraction:
        return Fraction(self.width, self.height)

    def __str__(self) -> str:
        return f"{self.width}:{self.height}"


MAX_SEED = 2**32 - 1


@attrs.frozen
class Seed:
    """A reproducibility seed, 0..2**32-1 (the range every provider we support accepts)."""

    value: int

    def __attrs_post_init__(self) -> None:
        if isinstance(self.value, bool) or not isinstance(self.value, int):
            raise InvalidParameter(f"A seed is a whole number; got {self.value!r}.")
        if not 0 <= self.value <= MAX_SEED:
            raise InvalidParameter(
                f"Seed must be between 0 and {MAX_SEED}; got {self.value}.", seed=self.value
            )

    def offset(self, index: int) -> Seed:
        """The seed of the index-th image of a batch (wrapping, so it stays in range)."""
        return Seed((self.value + index) % (MAX_SEED + 1))


class ImageFormat(enum.StrEnum):
    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"

    @classmethod
    def parse(cls, text: str) -> ImageFormat:
        normalized = (text or "").strip().lower()
        if normalized == "jpg":
            normalized = "jpeg"
        try:
            return cls(normalized)
        except ValueError:
            raise InvalidParameter(
                f"Image format {text!r} is not supported; use png, jpeg or webp.", format=text
            ) from None

    @property
    def mime_type(self) -> str:
        return f"image/{self.value}"

    @property
    def extension(self) -> str:
        return "jpg" if self is ImageFormat.JPEG else self.value


@attrs.frozen(order=True)
class Credits:
    """A non-negative whole number of credits: the unit tenants are billed in."""

    amount: int = attrs.field()

    @amount.validator
    def _check(self, _: attrs.Attribute[int], value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidParameter(f"Credits are whole numbers; got {value!r}.")
        if value < 0:
            raise InvalidParameter(f"Credits cannot be negative; got {value}.")

    def __add__(self, other: Credits) -> Credits:
        return Credits(self.amount + other.amount)

    def __sub__(self, other: Credits) -> Credits:
        return Credits(self.amount - other.amount)

    def __mul__(self, factor: int) -> Credits:
        return Credits(self.amount * factor)

    __rmul__ = __mul__

    def __int__(self) -> int:
        return self.amount

    def __str__(self) -> str:
        return f"{self.amount} credit{'s' if self.amount != 1 else ''}"


ZERO_CREDITS = Credits(0)
_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")


def _to_decimal(value: object) -> Decimal:
    if isinstance(value, float):
        raise InvalidParameter("Money takes Decimal, int or str, never float (it is inexact).")
    try:
        result = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        raise InvalidParameter(f"{value!r} is not an amount of money.") from None
    if not result.is_finite():
        raise InvalidParameter(f"{value!r} is not a finite amount of money.")
    return result


@attrs.frozen
class Money:
    """An exact amount in one currency. Arithmetic across currencies raises."""

    amount: Decimal = attrs.field(converter=_to_decimal)
    currency: str = "USD"

    def __attrs_post_init__(self) -> None:
        if not _CURRENCY_RE.match(self.currency):
            raise InvalidParameter(f"Currency {self.currency!r} is not an ISO 4217 code.")

    def _same(self, other: Money) -> None:
        if other.currency != self.currency:
            raise InvalidParameter(f"Cannot combine {self.currency} with {other.currency}.")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount - other.amount, self.currency)

    def __mul__(self, factor: int | Decimal) -> Money:
        if isinstance(factor, float):
            raise InvalidParameter("Multiply money by an int or a Decimal, never a float.")
        return Money(self.amount * factor, self.currency)

    def rounded(self, places: int = 2) -> Money:
        quantum = Decimal(1).scaleb(-places)
        return Money(self.amount.quantize(quantum, rounding=ROUND_HALF_EVEN), self.currency)

    def __str__(self) -> str:
        return f"{self.rounded(4).amount} {self.currency}"

    @classmethod
    def zero(cls, currency: str = "USD") -> Money:
        return cls(Decimal(0), currency)
