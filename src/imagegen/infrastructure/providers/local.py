"""An offline provider that paints deterministic abstract art with Pillow.

It needs no network, key or GPU, so demos, tests and benchmarks exercise the whole pipeline
(negotiation, billing, storage, provenance) with real image bytes. The same prompt, seed, size
and format always give byte-identical output, in any process: every random choice comes from
``random.Random`` seeded with a SHA-256 of the prompt and seed, never from ``hash()`` (which is
salted per process) or the clock. Byte identity holds for one Pillow/libpng/libjpeg/libwebp
build; encoders may legitimately change their output between versions.
"""

from __future__ import annotations

import asyncio
import colorsys
import functools
import hashlib
import io
import math
import random
import re
from typing import Final

from PIL import Image, ImageDraw, ImageFilter, ImageOps

from imagegen.application.ports import (
    ProviderHealth,
    ProviderImage,
    ProviderRequest,
    ProviderResult,
)
from imagegen.domain.errors import ProviderRejected, ProviderUnavailable, UnsupportedOperation
from imagegen.domain.models import Operation
from imagegen.domain.values import MAX_SEED, ImageFormat, Seed

FAIL_MARKER: Final = "[local:fail]"

RGB = tuple[int, int, int]
RGBA = tuple[int, int, int, int]

# Composition happens on a canvas at most this many pixels on its longer side, then is scaled up:
# it keeps a 2048x2048 render cheap, and the soft upscale suits the painterly style.
_WORK_SIDE: Final = 512

# Hues (degrees) for words that name a colour or evoke one, so "a red fox" comes out red-ish.
_HUES: Final[dict[str, float]] = {
    "red": 0, "crimson": 348, "scarlet": 5, "ruby": 340, "fire": 12, "lava": 8, "rust": 18,
    "sunset": 22, "orange": 28, "autumn": 30, "amber": 40, "gold": 45, "golden": 45,
    "desert": 38, "sand": 42, "yellow": 55, "lemon": 58, "sun": 50, "lime": 90, "spring": 100,
    "green": 120, "forest": 130, "jungle": 125, "leaf": 110, "moss": 95, "emerald": 145,
    "mint": 155, "teal": 175, "turquoise": 172, "cyan": 185, "ice": 195, "winter": 200,
    "sea": 195, "ocean": 205, "water": 200, "sky": 208, "blue": 220, "azure": 210,
    "navy": 232, "night": 240, "indigo": 255, "space": 260, "violet": 275, "lavender": 270,
    "purple": 285, "plum": 300, "magenta": 310, "pink": 330, "rose": 340, "cherry": 345,
}  # fmt: skip
_DARK_WORDS: Final = frozenset({"dark", "night", "noir", "midnight", "shadow", "gloomy", "space"})
_LIGHT_WORDS: Final = frozenset({"light", "pastel", "soft", "bright", "airy", "pale", "snow"})
_VIVID_WORDS: Final = frozenset({"neon", "vivid", "electric", "psychedelic", "saturated"})
_MUTED_WORDS: Final = frozenset({"muted", "grey", "gray", "foggy", "misty", "vintage", "faded"})
_WORD_RE: Final = re.compile(r"\w+", re.UNICODE)


class LocalProvider:
    """``ImageProvider`` named ``"local"``: procedural, offline, deterministic.

    ``latency_s`` is awaited before each call completes, to emulate a remote provider's time.
    ``fail_with`` is a prompt substring that makes the call raise ``ProviderUnavailable``; a
    prompt containing ``[local:fail]`` always does. Both exist so tests, demos and crash drills
    can produce slow and failing generations on purpose.
    """

    def __init__(self, *, latency_s: float = 0.0, fail_with: str | None = None) -> None:
        if latency_s < 0 or not math.isfinite(latency_s):
            raise ValueError("latency_s must be a finite number of seconds >= 0")
        if fail_with == "":
            raise ValueError("fail_with must be a non-empty substring or None")
        self._latency_s = latency_s
        self._fail_with = fail_with

    @property
    def name(self) -> str:
        return "local"

    async def resume(self, job_id: str, request: ProviderRequest) -> ProviderResult:
        raise UnsupportedOperation(
            "The local provider renders synchronously; it has no jobs to resume."
        )

    async def health(self) -> ProviderHealth:
        return ProviderHealth(self.name, ok=True, latency_ms=0.0, detail="offline renderer")

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        if request.operation is not Operation.GENERATE:
            raise UnsupportedOperation(
                f"The local provider can only generate images, not {request.operation.value}.",
                operation=request.operation.value,
            )
        if request.n < 1:
            raise ProviderRejected(
                f"The local provider needs n >= 1; got {request.n}.", n=request.n
            )
        if self._latency_s:
            await asyncio.sleep(self._latency_s)
        if FAIL_MARKER in request.prompt or (
            self._fail_with is not None and self._fail_with in request.prompt
        ):
            raise ProviderUnavailable(
                "The local provider was asked to fail for this prompt.", provider=self.name
            )
        seed = request.seed if request.seed is not None else default_seed(request.prompt)
        seeds = [seed.offset(i) for i in range(request.n)]
        size = (request.size.width, request.size.height)
        # Pillow releases the GIL in its C loops, so a worker thread keeps the event loop free.
        blobs = await asyncio.to_thread(
            lambda: [render(request.prompt, s, size, request.format) for s in seeds]
        )
        images = tuple(ProviderImage(data=b, seed=s) for b, s in zip(blobs, seeds, strict=True))
        return ProviderResult(images=images, provider_job_id=None)


def default_seed(prompt: str) -> Seed:
    """The seed used when the caller gives none: fixed per prompt, so runs stay reproducible."""
    digest = hashlib.sha256(b"imagegen.local.seed\x00" + _utf8(prompt)).digest()
    return Seed(int.from_bytes(digest[:4], "big") & MAX_SEED)


def _utf8(text: str) -> bytes:
    # surrogatepass: a lone surrogate (valid in JSON, invalid in UTF-8) must not crash a render.
    return text.encode("utf-8", "surrogatepass")


def render(prompt: str, seed: Seed, size: tuple[int, int], fmt: ImageFormat) -> bytes:
    """Paint and encode one image. Pure function of its arguments (and the Pillow build)."""
    material = _utf8(prompt) + b"\x00" + seed.value.to_bytes(4, "big")
    rng = random.Random(int.from_bytes(hashlib.sha256(material).digest(), "big"))
    return _encode(_paint(prompt, rng, size), fmt)


# --- painting ----------------------------------------------------------------------------------


def _paint(prompt: str, rng: random.Random, size: tuple[int, int]) -> Image.Image:
    width, height = size
    scale = min(1.0, _WORK_SIDE / max(width, height))
    work = (max(1, round(width * scale)), max(1, round(height * scale)))
    palette = _palette(prompt, rng)

    canvas = _background(rng, palette, work)
    short = min(work)
    # Out-of-focus layer first: big, faint, blurred shapes give depth behind the sharp ones.
    _draw_shapes(canvas, rng, palette, rng.randint(4, 8), soft=True)
    canvas = canvas.filter(ImageFilter.GaussianBlur(max(1.0, short / 28)))
    _draw_shapes(canvas, rng, palette, rng.randint(4, 12), soft=False)
    # A hint of blur anti-aliases the polygon edges ImageDraw leaves jagged.
    canvas = canvas.filter(ImageFilter.GaussianBlur(max(0.5, short / 450)))
    if work != size:
        canvas = canvas.resize(size, Image.Resampling.BICUBIC)
    return canvas


def _palette(prompt: str, rng: random.Random) -> list[RGB]:
    """Five colours: hues from the prompt's words, jittered by the seed."""
    words = [w.lower() for w in _WORD_RE.findall(prompt)] or ["untitled"]
    named = [_HUES[w] for w in words if w in _HUES]
    if named:
        hues = named[:3]
    else:
        # Unknown words still get a stable hue each, from their digest (hash() is salted).
        hues = [hashlib.sha256(_utf8(w)).digest()[0] * 360 / 256 for w in words[:3]]
    if len(hues) == 1:
        hues.append(hues[0] + rng.choice((150.0, 180.0, 210.0, 30.0)))
    wordset = set(words)
    light = 0.5 + 0.18 * bool(wordset & _LIGHT_WORDS) - 0.2 * bool(wordset & _DARK_WORDS)
    sat = 0.68 + 0.25 * bool(wordset & _VIVID_WORDS) - 0.35 * bool(wordset & _MUTED_WORDS)
    colours: list[RGB] = []
    for i in range(5):
        hue = (hues[i % len(hues)] + rng.uniform(-18, 18)) % 360
        lum = min(0.92, max(0.08, light + rng.uniform(-0.22, 0.22)))
        s = min(1.0, max(0.05, sat + rng.uniform(-0.15, 0.15)))
        r, g, b = colorsys.hls_to_rgb(hue / 360, lum, s)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return colours


def _background(rng: random.Random, palette: list[RGB], size: tuple[int, int]) -> Image.Image:
    # A linear gradient in any direction: blend the vertical and horizontal ramps, then flip.
    ramp = Image.linear_gradient("L")
    ramp = Image.blend(ramp, ramp.transpose(Image.Transpose.ROTATE_90), rng.random())
    if rng.random() < 0.5:
        ramp = ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.5:
        ramp = ramp.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    dark, mid, bright = sorted(rng.sample(palette, 3), key=_luma)
    canvas = ImageOps.colorize(
        ramp.resize(size, Image.Resampling.BILINEAR), _shade(dark, 0.55), bright, mid
    )
    # Then one to three glows: radial blobs of colour at seeded places.
    for _ in range(rng.randint(1, 3)):
        colour = _shade(rng.choice(palette), rng.uniform(0.9, 1.25))
        mask = _glow_mask(rng, size, rng.uniform(0.35, 0.8))
        canvas = Image.composite(Image.new("RGB", size, colour), canvas, mask)
    # A gentle vignette pulls the eye to the middle.
    vignette = _glow_mask(rng, size, 0.0, centre=(0.5, 0.5), radius=1.05, invert=True)
    return Image.composite(Image.new("RGB", size, _shade(dark, 0.25)), canvas, vignette)


@functools.cache
def _falloff() -> Image.Image:
    """A 256x256 disc that is 255 at the centre and fades smoothly to 0 at radius 128."""
    # radial_gradient is 0 at the centre and 255 at the corners (distance 128*sqrt(2)).
    lut = []
    for v in range(256):
        t = min(1.0, v * math.sqrt(2) / 255)
        lut.append(round(255 * (1 - t * t * (3 - 2 * t))))
    return Image.radial_gradient("L").point(lut)


def _glow_mask(
    rng: random.Random,
    size: tuple[int, int],
    strength: float,
    *,
    centre: tuple[float, float] | None = None,
    radius: float | None = None,
    invert: bool = False,
) -> Image.Image:
    width, height = size
    cx, cy = centre if centre is not None else (rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9))
    r = radius if radius is not None else rng.uniform(0.35, 0.95)
    rx = max(1.0, r * max(width, height) * rng.uniform(0.8, 1.2))
    ry = max(1.0, r * max(width, height) * rng.uniform(0.8, 1.2))
    # Affine map from output pixels into the 256x256 falloff disc; outside it the mask is 0.
    data = (128 / rx, 0.0, 128 - cx * width * 128 / rx, 0.0, 128 / ry, 128 - cy * height * 128 / ry)
    disc = _falloff().transform(
        size, Image.Transform.AFFINE, data, Image.Resampling.BILINEAR, fillcolor=0
    )
    if invert:
        level = 110
        return disc.point(lambda v: level - v * level // 255)
    level = round(255 * strength)
    return disc.point(lambda v: v * level // 255)


def _draw_shapes(
    canvas: Image.Image, rng: random.Random, palette: list[RGB], count: int, *, soft: bool
) -> None:
    width, height = canvas.size
    short = min(width, height)
    # Mode "RGBA" on an RGB image makes ImageDraw alpha-blend each fill into the canvas.
    draw = ImageDraw.Draw(canvas, "RGBA")
    for _ in range(count):
        colour = _shade(rng.choice(palette), rng.uniform(0.75, 1.35))
        alpha = rng.randint(40, 95) if soft else rng.randint(70, 170)
        fill: RGBA = (*colour, alpha)
        cx, cy = rng.uniform(-0.1, 1.1) * width, rng.uniform(-0.1, 1.1) * height
        radius = short * (rng.uniform(0.15, 0.45) if soft else rng.uniform(0.04, 0.28))
        kind = rng.random()
        if kind < 0.4:
            ry = radius * rng.uniform(0.6, 1.4)
            draw.ellipse((cx - radius, cy - ry, cx + radius, cy + ry), fill=fill)
        elif kind < 0.6 and not soft:
            # A ring: an outlined circle reads as a crisp accent over the soft layer.
            line = max(1, round(radius * rng.uniform(0.08, 0.25)))
            box = (cx - radius, cy - radius, cx + radius, cy + radius)
            draw.ellipse(box, outline=fill, width=line)
        elif kind < 0.7 and not soft:
            # A trail of small dots along an arc: fine detail that survives the upscale.
            spin = rng.uniform(0, 2 * math.pi)
            sweep = rng.uniform(0.6, 2.5)
            dot = max(1.0, short * rng.uniform(0.006, 0.018))
            for k in range(rng.randint(5, 14)):
                a = spin + sweep * k / 10
                x, y = cx + radius * 1.6 * math.cos(a), cy + radius * 1.6 * math.sin(a)
                draw.ellipse((x - dot, y - dot, x + dot, y + dot), fill=(*colour, 200))
        elif kind < 0.85:
            sides = rng.randint(3, 6)
            start = rng.uniform(0, 2 * math.pi)
            points = [
                (
                    cx + radius * rng.uniform(0.7, 1.2) * math.cos(start + 2 * math.pi * k / sides),
                    cy + radius * rng.uniform(0.7, 1.2) * math.sin(start + 2 * math.pi * k / sides),
                )
                for k in range(sides)
            ]
            draw.polygon(points, fill=fill)
        else:
            # A band: a long, thin parallelogram crossing the canvas at an angle.
            angle = rng.uniform(0, math.pi)
            reach = (width + height) * 1.5
            dx, dy = math.cos(angle) * reach, math.sin(angle) * reach
            thick = short * rng.uniform(0.02, 0.12 if not soft else 0.25)
            nx, ny = -math.sin(angle) * thick, math.cos(angle) * thick
            draw.polygon(
                [
                    (cx - dx, cy - dy),
                    (cx + dx, cy + dy),
                    (cx + dx + nx, cy + dy + ny),
                    (cx - dx + nx, cy - dy + ny),
                ],
                fill=(*colour, alpha // 2),
            )


def _shade(colour: RGB, factor: float) -> RGB:
    r, g, b = (min(255, max(0, round(c * factor))) for c in colour)
    return (r, g, b)


def _luma(colour: RGB) -> float:
    r, g, b = colour
    return 0.299 * r + 0.587 * g + 0.114 * b


# --- encoding ----------------------------------------------------------------------------------


def _encode(image: Image.Image, fmt: ImageFormat) -> bytes:
    buffer = io.BytesIO()
    # No pnginfo/exif/xmp/icc arguments: nothing time- or host-dependent goes into the file
    # (Pillow writes no tIME chunk unless asked), which is what makes the bytes reproducible.
    if fmt is ImageFormat.PNG:
        # Level 4 is ~40% faster than the default 6 for ~10% more bytes on these smooth images.
        image.save(buffer, "PNG", compress_level=4)
    elif fmt is ImageFormat.JPEG:
        image.save(buffer, "JPEG", quality=90)
    elif fmt is ImageFormat.WEBP:
        image.save(buffer, "WEBP", quality=90, method=4)
    else:  # pragma: no cover - ImageFormat is closed
        raise UnsupportedOperation(f"The local provider cannot write {fmt}.")
    return buffer.getvalue()
