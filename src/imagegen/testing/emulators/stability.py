"""An emulator of Stability AI's REST API (v2beta Stable Image + ``/v1/user/balance``).

It speaks what ``imagegen.infrastructure.providers.stability`` calls, as Stability's published
OpenAPI spec describes it:

- ``POST /v2beta/stable-image/generate/{core,ultra,sd3}`` and
  ``POST /v2beta/stable-image/edit/{inpaint,outpaint,erase,search-and-replace,remove-background}``
  take ``multipart/form-data``; required fields, enums (``aspect_ratio``, ``output_format``,
  ``style_preset``, the sd3 ``model``, ``mode``), number ranges and image inputs (decoded with
  Pillow, checked against each endpoint's side and pixel limits) are validated, and a request
  over 10 MiB gets 413. Unknown fields are ignored, as Stability does (its own samples send a
  dummy ``none`` file to force multipart), but they are recorded.
- ``Accept: image/*`` (the default) answers with the raw image and ``finish-reason`` / ``seed``
  headers; ``Accept: application/json`` with ``{"image": <base64>, "finish_reason", "seed"}``.
- Images are real: ``generate`` paints the prompt with the local renderer at the aspect
  ratio's size (``OUTPUT_SIZES``, ~1 MP); edits keep the source's size (outpaint grows it by its
  margins) and paint into the mask; ``remove-background`` returns PNG/WebP with alpha.
- Authentication is ``Authorization: Bearer <api_key>``; anything else is 401 in Stability's
  shape. Errors are ``{"id", "name", "errors": [...]}`` (v1's balance: ``{"id", "name",
  "message"}``).
- Every successful result costs its endpoint's credits (the adapter's price table) from a
  balance that starts at ``credits``; an empty balance answers 402 ``payment_required``.

Faults (``app.state.faults``): ``LATENCY``, ``RATE_LIMIT`` (429, ``Retry-After`` when the fault
sets ``retry_after``), ``SERVER_ERROR`` (``status``, default 503), ``TIMEOUT`` (holds the
request until the client gives up or ``delay`` passes), ``MALFORMED`` (200 whose body is not an
image), ``CONTENT_REFUSAL`` (stage ``input``: 403 ``content_moderation``; stage ``output``: 200
with a blurred image and ``finish-reason: CONTENT_FILTERED``), ``AUTH_ERROR`` (401) and
``BAD_REQUEST`` (``status``, default 400, with Stability's error shape).

``app.state.requests`` records each request: method, path, headers (``authorization``
removed), text fields and their values, and each file's name, type and size.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import random
import time
import uuid
from collections.abc import Mapping
from typing import Any, Final

import attrs
from PIL import Image, ImageDraw, ImageFilter, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imagegen.domain.values import ImageFormat, Seed
from imagegen.infrastructure.providers.local import render
from imagegen.infrastructure.providers.stability import (
    CREDIT_PRICES,
    MAX_STABILITY_SEED,
    OUTPUT_SIZES,
)
from imagegen.testing.emulators._control import control_routes
from imagegen.testing.emulators._faults import Fault, FaultKind, FaultPlan

__all__ = ["DEFAULT_API_KEY", "create_app"]

DEFAULT_API_KEY: Final = "sk-stability-emulator"
MAX_REQUEST_BYTES: Final = 10 * 1024 * 1024
MAX_TEXT: Final = 10_000

STYLE_PRESETS: Final = frozenset(
    {
        "enhance", "anime", "photographic", "digital-art", "comic-book", "fantasy-art",
        "line-art", "analog-film", "neon-punk", "isometric", "low-poly", "origami",
        "modeling-compound", "cinematic", "3d-model", "pixel-art", "tile-texture",
    }
)  # fmt: skip
# The spec's enum lists the three sd3.5 models; its text adds sd3.5-flash, and says the sd3
# names are re-routed to their sd3.5 equivalents (at the same price).
SD3_MODELS: Final[Mapping[str, str]] = {
    "sd3.5-large": "sd3.5-large",
    "sd3.5-large-turbo": "sd3.5-large-turbo",
    "sd3.5-medium": "sd3.5-medium",
    "sd3.5-flash": "sd3.5-flash",
    "sd3-large": "sd3.5-large",
    "sd3-large-turbo": "sd3.5-large-turbo",
    "sd3-medium": "sd3.5-medium",
}
ALL_FORMATS: Final = ("png", "jpeg", "webp")

_GENERATE: Final = "/v2beta/stable-image/generate"
_EDIT: Final = "/v2beta/stable-image/edit"


@attrs.frozen
class _ImageRule:
    """Limits on an input image, from the endpoint's spec."""

    min_side: int = 64
    max_side: int | None = None
    min_pixels: int = 4096
    max_pixels: int | None = None
    max_aspect: float | None = None  # e.g. 2.5: between 1:2.5 and 2.5:1


@attrs.frozen
class _Number:
    low: float
    high: float
    integer: bool = False


@attrs.frozen
class _Endpoint:
    path: str
    required: frozenset[str]
    text: Mapping[str, frozenset[str] | _Number | int | None]  # enum | range | max length | any
    files: frozenset[str]
    image_rule: _ImageRule | None = None
    formats: tuple[str, ...] = ALL_FORMATS


_SEED: Final = _Number(0, MAX_STABILITY_SEED, integer=True)
_RATIOS: Final = frozenset(OUTPUT_SIZES)
_EDIT_RULE: Final = _ImageRule(max_pixels=9_437_184)

ENDPOINTS: Final[Mapping[str, _Endpoint]] = {
    e.path: e
    for e in (
        _Endpoint(
            f"{_GENERATE}/core",
            frozenset({"prompt"}),
            {
                "prompt": MAX_TEXT,
                "aspect_ratio": _RATIOS,
                "negative_prompt": MAX_TEXT,
                "seed": _SEED,
                "style_preset": STYLE_PRESETS,
                "output_format": frozenset(ALL_FORMATS),
            },
            frozenset(),
        ),
        _Endpoint(
            f"{_GENERATE}/ultra",
            frozenset({"prompt"}),
            {
                "prompt": MAX_TEXT,
                "negative_prompt": MAX_TEXT,
                "aspect_ratio": _RATIOS,
                "seed": _SEED,
                "output_format": frozenset(ALL_FORMATS),
                "style_preset": STYLE_PRESETS,
                "strength": _Number(0, 1),
            },
            frozenset({"image"}),
            _ImageRule(max_side=16_384),
        ),
        _Endpoint(
            f"{_GENERATE}/sd3",
            frozenset({"prompt"}),
            {
                "prompt": MAX_TEXT,
                "mode": frozenset({"text-to-image", "image-to-image"}),
                "strength": _Number(0, 1),
                "aspect_ratio": _RATIOS,
                "model": frozenset(SD3_MODELS),
                "seed": _SEED,
                "output_format": frozenset(ALL_FORMATS),
                "style_preset": STYLE_PRESETS,
                "negative_prompt": MAX_TEXT,
                "cfg_scale": _Number(1, 10),
            },
            frozenset({"image"}),
            _ImageRule(min_pixels=64 * 64),
        ),
        _Endpoint(
            f"{_EDIT}/inpaint",
            frozenset({"image", "prompt"}),
            {
                "prompt": MAX_TEXT,
                "negative_prompt": MAX_TEXT,
                "grow_mask": _Number(0, 100),
                "seed": _SEED,
                "output_format": frozenset(ALL_FORMATS),
                "style_preset": STYLE_PRESETS,
            },
            frozenset({"image", "mask"}),
            _EDIT_RULE,
        ),
        _Endpoint(
            f"{_EDIT}/outpaint",
            frozenset({"image"}),
            {
                "left": _Number(0, 2000, integer=True),
                "right": _Number(0, 2000, integer=True),
                "up": _Number(0, 2000, integer=True),
                "down": _Number(0, 2000, integer=True),
                "creativity": _Number(0, 1),
                "prompt": MAX_TEXT,
                "seed": _SEED,
                "output_format": frozenset(ALL_FORMATS),
                "style_preset": STYLE_PRESETS,
            },
            frozenset({"image"}),
            _ImageRule(max_pixels=9_437_184, max_aspect=2.5),
        ),
        # The spec's schema lists "prompt" as required for erase but defines no such field;
        # its text says only "image" is required, which is what we follow.
        _Endpoint(
            f"{_EDIT}/erase",
            frozenset({"image"}),
            {
                "grow_mask": _Number(0, 20),
                "seed": _SEED,
                "output_format": frozenset(ALL_FORMATS),
            },
            frozenset({"image", "mask"}),
            _EDIT_RULE,
        ),
        _Endpoint(
            f"{_EDIT}/search-and-replace",
            frozenset({"image", "prompt", "search_prompt"}),
            {
                "prompt": MAX_TEXT,
                "search_prompt": MAX_TEXT,
                "negative_prompt": MAX_TEXT,
                "grow_mask": _Number(0, 20),
                "seed": _SEED,
                "output_format": frozenset(ALL_FORMATS),
                "style_preset": STYLE_PRESETS,
            },
            frozenset({"image"}),
            _ImageRule(max_pixels=9_437_184, max_aspect=2.5),
        ),
        _Endpoint(
            f"{_EDIT}/remove-background",
            frozenset({"image"}),
            {"output_format": frozenset({"png", "webp"})},
            frozenset({"image"}),
            _ImageRule(max_pixels=4_194_304),
            formats=("png", "webp"),
        ),
    )
}


_MODERATION_MESSAGE: Final = (
    "Your request was flagged by our content moderation system, as a result your request was "
    "denied and you were not charged."
)


class _Reject(Exception):
    """An error answer, raised from deep in validation."""

    def __init__(self, status: int, name: str, errors: list[str]) -> None:
        super().__init__(name)
        self.status = status
        self.name = name
        self.errors = errors


@attrs.define
class _Parsed:
    text: dict[str, str] = attrs.Factory(dict)
    images: dict[str, Image.Image] = attrs.Factory(dict)


def create_app(
    *,
    api_key: str = DEFAULT_API_KEY,
    latency_s: float = 0.0,
    faults: FaultPlan | None = None,
    credits: float = 1000.0,
) -> Starlette:
    """An ASGI app emulating Stability's API. ``credits`` is the account's starting balance."""
    plan = faults if faults is not None else FaultPlan(latency_s=latency_s)
    if faults is not None and latency_s:
        plan.latency_s = latency_s

    async def stable_image(request: Request) -> Response:
        # The configured latency is the provider's response time, measured from the request's
        # arrival: the emulator's own parsing and rendering happen inside it, as the remote
        # service's do, instead of being added to it.
        loop = asyncio.get_running_loop()
        answer_at = loop.time() + plan.latency_s
        response = await _stable_image(request)
        await _pause(answer_at - loop.time())
        return response

    async def _stable_image(request: Request) -> Response:
        record = _record(request)
        endpoint = ENDPOINTS[request.url.path]
        try:
            _authenticate(request, api_key)
            fault = plan.take(request.url.path)
            early = await _early_fault(request, fault)
            if early is not None:
                record["status"] = early.status_code
                return early
            parsed = await _parse(request, endpoint, record)
            accept_json = _accepts_json(request)
            if fault is not None and fault.kind is FaultKind.LATENCY:
                await _pause(fault.delay)
            refused = fault is not None and fault.kind is FaultKind.CONTENT_REFUSAL
            if refused and fault is not None and fault.stage != "output":
                raise _Reject(403, "content_moderation", [_MODERATION_MESSAGE])
            if fault is not None and fault.kind is FaultKind.MALFORMED:
                return _malformed(accept_json, parsed.text.get("output_format", "png"))
            price = _price(endpoint, parsed)
            if app.state.credits < price:
                raise _Reject(
                    402,
                    "payment_required",
                    [
                        "You lack sufficient credits to make this request. Please purchase "
                        "more credits at https://platform.stability.ai/account/credits and try "
                        "again."
                    ],
                )
            filtered = refused  # stage "output": Stability blurs the result and says so
            data, fmt, seed = await asyncio.to_thread(_produce, endpoint, parsed, filtered)
            app.state.credits -= price
            record["status"] = 200
            return _image_answer(data, fmt, seed, filtered, accept_json)
        except _Reject as reject:
            record["status"] = reject.status
            return _error(reject)

    async def balance(request: Request) -> Response:
        record = _record(request)
        try:
            await _pause(plan.latency_s)
            _authenticate(request, api_key)
            fault = plan.take(request.url.path)
            early = await _early_fault(request, fault, v1=True)
            if early is not None:
                record["status"] = early.status_code
                return early
            if fault is not None and fault.kind is FaultKind.MALFORMED:
                return Response(b"{credits: ", media_type="application/json")
            if fault is not None and fault.kind is FaultKind.LATENCY:
                await _pause(fault.delay)
            record["status"] = 200
            return JSONResponse({"credits": app.state.credits})
        except _Reject as reject:
            record["status"] = reject.status
            return _error(reject, v1=True)

    def _record(request: Request) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "method": request.method,
            "path": request.url.path,
            "headers": {k: v for k, v in request.headers.items() if k.lower() != "authorization"},
            "authorized": "authorization" in request.headers,
            "fields": {},
            "files": {},
            "status": None,
        }
        app.state.requests.append(entry)
        return entry

    routes = [Route(path, stable_image, methods=["POST"]) for path in ENDPOINTS]
    routes += [
        Route("/v1/user/balance", balance, methods=["GET"]),
        *control_routes(),
    ]
    app = Starlette(routes=routes)
    app.state.faults = plan
    app.state.requests = []
    app.state.api_key = api_key
    app.state.credits = float(credits)
    return app


# --- request handling ----------------------------------------------------------------------------


async def _pause(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


def _authenticate(request: Request, api_key: str) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or token.strip() != api_key:
        message = "authorization: invalid or missing header value"
        raise _Reject(401, "unauthorized", [message])


async def _early_fault(
    request: Request, fault: Fault | None, *, v1: bool = False
) -> Response | None:
    """Faults that strike before the request is even read."""
    if fault is None:
        return None
    kind = fault.kind
    if kind is FaultKind.AUTH_ERROR:
        return _error(_Reject(401, "unauthorized", ["authorization: invalid API key"]), v1=v1)
    if kind is FaultKind.RATE_LIMIT:
        headers = {}
        if fault.retry_after is not None:
            headers["retry-after"] = f"{fault.retry_after:g}"
        reject = _Reject(
            429,
            "rate_limit_exceeded",
            [
                "You have exceeded the rate limit of 150 requests within a 10 second period, "
                "and have been timed out for 60 seconds."
            ],
        )
        return _error(reject, v1=v1, headers=headers)
    if kind is FaultKind.SERVER_ERROR:
        status = fault.status or 503
        name = "internal_error" if status == 500 else "service_unavailable"
        message = "An unexpected server error has occurred, please try again later."
        return _error(_Reject(status, name, [message]), v1=v1)
    if kind is FaultKind.TIMEOUT:
        await _hold(request, fault.delay or 3600.0)
        return _error(_Reject(504, "gateway_timeout", ["The request timed out."]), v1=v1)
    if kind is FaultKind.BAD_REQUEST:
        status = fault.status or 400
        return _error(_Reject(status, "bad_request", ["some-field: is invalid"]), v1=v1)
    if kind in {FaultKind.ABORTED, FaultKind.FAILED}:  # Replicate's; a plain 500 here
        message = "An unexpected server error has occurred, please try again later."
        return _error(_Reject(500, "internal_error", [message]), v1=v1)
    return None


async def _hold(request: Request, seconds: float) -> None:
    """Hang like a stuck upstream, but let go as soon as the client hangs up."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await request.is_disconnected():
            return
        await asyncio.sleep(0.02)


def _accepts_json(request: Request) -> bool:
    accept = request.headers.get("accept", "image/*").strip().lower() or "image/*"
    kinds = [part.split(";")[0].strip() for part in accept.split(",")]
    if any(k.startswith("image/") or k == "*/*" for k in kinds):
        return False
    if "application/json" in kinds:
        return True
    raise _Reject(400, "bad_request", ["accept: must be either image/* or application/json"])


async def _parse(request: Request, endpoint: _Endpoint, record: dict[str, Any]) -> _Parsed:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_REQUEST_BYTES:
        raise _too_large()
    body = await request.body()
    if len(body) > MAX_REQUEST_BYTES:
        raise _too_large()
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise _Reject(400, "bad_request", ["content-type: must be multipart/form-data"])
    try:
        form = await request.form(max_files=20, max_fields=100)
    except Exception as exc:  # starlette's MultiPartException and parser errors
        raise _Reject(400, "bad_request", [f"body: malformed multipart data ({exc})"]) from None
    try:
        return await _validate(form, endpoint, record)
    finally:
        await form.close()


def _too_large() -> _Reject:
    return _Reject(413, "payload_too_large", ["body: payloads cannot be larger than 10MiB in size"])


async def _validate(form: FormData, endpoint: _Endpoint, record: dict[str, Any]) -> _Parsed:
    parsed = _Parsed()
    errors: list[str] = []
    uploads: dict[str, bytes] = {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            data = await value.read()
            record["files"][name] = {
                "filename": value.filename,
                "content_type": value.content_type,
                "size": len(data),
            }
            if name in endpoint.text:
                errors.append(f"{name}: must be a string, not a file")
            elif name in endpoint.files:
                uploads[name] = data
        else:
            record["fields"][name] = value
            if name in endpoint.files:
                errors.append(f"{name}: must be a file")
            elif name in endpoint.text:
                parsed.text[name] = value

    for name in sorted(endpoint.required):
        if name not in parsed.text and name not in uploads:
            errors.append(f"{name}: is required")
    for name, value in parsed.text.items():
        problem = _check_text(name, value, endpoint.text[name])
        if problem:
            errors.append(f"{name}: {problem}")
    for name, data in uploads.items():
        rule = endpoint.image_rule if name == "image" else _ImageRule(min_side=1, min_pixels=1)
        image, problem = _decode(data, rule)
        if problem:
            errors.append(f"{name}: {problem}")
        elif image is not None:
            parsed.images[name] = image
    errors.extend(_cross_checks(endpoint, parsed, uploads))
    if errors:
        raise _Reject(400, "bad_request", errors)
    return parsed


def _check_text(name: str, value: str, rule: frozenset[str] | _Number | int | None) -> str | None:
    if isinstance(rule, frozenset):
        if value not in rule:
            return f"must be one of {', '.join(sorted(rule))}"
    elif isinstance(rule, _Number):
        try:
            number = float(value)
        except ValueError:
            return "must be a number"
        if not math.isfinite(number) or not rule.low <= number <= rule.high:
            return f"must be between {rule.low:g} and {rule.high:g}"
        if rule.integer and not number.is_integer():
            return "must be a whole number"
    elif isinstance(rule, int):
        minimum = 1 if name in {"prompt", "search_prompt"} else 0
        if not minimum <= len(value) <= rule:
            return f"must be {minimum}..{rule} characters long"
    return None


def _decode(data: bytes, rule: _ImageRule | None) -> tuple[Image.Image | None, str | None]:
    if not data:
        return None, "is empty"
    try:
        with Image.open(io.BytesIO(data), formats=["PNG", "JPEG", "WEBP"]) as opened:
            opened.load()
            image = opened.copy()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None, "is not a valid jpeg, png or webp image"
    if rule is None:
        return image, None
    width, height = image.size
    if min(width, height) < rule.min_side:
        return None, f"every side must be at least {rule.min_side} pixels (got {width}x{height})"
    if rule.max_side is not None and max(width, height) > rule.max_side:
        return None, f"every side must be at most {rule.max_side} pixels (got {width}x{height})"
    pixels = width * height
    if pixels < rule.min_pixels or (rule.max_pixels is not None and pixels > rule.max_pixels):
        upper = f" and {rule.max_pixels:,}" if rule.max_pixels is not None else ""
        return None, (
            f"total pixel count must be at least {rule.min_pixels:,}{upper} (got {pixels:,})"
        )
    if rule.max_aspect is not None and max(width, height) > rule.max_aspect * min(width, height):
        return (
            None,
            f"the aspect ratio must be between 1:{rule.max_aspect:g} and {rule.max_aspect:g}:1",
        )
    return image, None


def _cross_checks(endpoint: _Endpoint, parsed: _Parsed, uploads: Mapping[str, bytes]) -> list[str]:
    errors: list[str] = []
    text = parsed.text
    path = endpoint.path
    if path.endswith("/ultra") and "image" in uploads and "strength" not in text:
        errors.append("strength: is required when image is provided")
    if path.endswith("/sd3"):
        mode = text.get("mode", "text-to-image")
        if mode == "image-to-image":
            if "image" not in uploads:
                errors.append("image: is required for image-to-image")
            if "strength" not in text:
                errors.append("strength: is required for image-to-image")
            if "aspect_ratio" in text:
                errors.append("aspect_ratio: is only valid for text-to-image")
        elif "image" in uploads:
            errors.append("image: is only valid for image-to-image (set mode)")
    if path.endswith("/outpaint") and not any(
        float(text.get(side, "0") or 0) > 0
        for side in ("left", "right", "up", "down")
        if _is_number(text.get(side, "0"))
    ):
        errors.append("left, right, up, down: at least one must be greater than 0")
    return errors


def _is_number(value: str | None) -> bool:
    try:
        float(value or "0")
    except ValueError:
        return False
    return True


def _price(endpoint: _Endpoint, parsed: _Parsed) -> float:
    model = None
    if endpoint.path.endswith("/sd3"):
        model = SD3_MODELS[parsed.text.get("model", "sd3.5-large")]
    return float(CREDIT_PRICES[(endpoint.path, model)])


# --- producing images ----------------------------------------------------------------------------


def _produce(endpoint: _Endpoint, parsed: _Parsed, filtered: bool) -> tuple[bytes, str, int]:
    text = parsed.text
    fmt = text.get("output_format", "png")
    image_format = ImageFormat(fmt)
    requested = int(float(text.get("seed", "0")))
    seed = requested or random.randint(1, MAX_STABILITY_SEED)
    prompt = text.get("prompt", "") or text.get("search_prompt", "") or "background"
    source = parsed.images.get("image")
    kind = endpoint.path.rsplit("/", 1)[1]

    if kind in {"core", "ultra", "sd3"}:
        # Image-to-image keeps the source's size; text-to-image follows the aspect ratio.
        size = source.size if source is not None else OUTPUT_SIZES[text.get("aspect_ratio", "1:1")]
        data = render(prompt, Seed(seed), size, image_format)
        if filtered:
            data = _encode(_blur(_open(data)), fmt)
        return data, fmt, seed

    assert source is not None  # every edit requires an image
    painted = _open(render(prompt, Seed(seed), source.size, ImageFormat.PNG))
    result: Image.Image
    if kind in {"inpaint", "erase"}:
        mask = _mask_for(source, parsed.images.get("mask"))
        result = Image.composite(painted, source.convert("RGB"), mask)
    elif kind == "outpaint":
        margins = {s: int(float(text.get(s, "0"))) for s in ("left", "right", "up", "down")}
        width = source.width + margins["left"] + margins["right"]
        height = source.height + margins["up"] + margins["down"]
        result = _open(render(prompt, Seed(seed), (width, height), ImageFormat.PNG)).convert("RGB")
        result.paste(source.convert("RGB"), (margins["left"], margins["up"]))
    elif kind == "search-and-replace":
        result = Image.composite(painted, source.convert("RGB"), _centre_mask(source.size))
    else:  # remove-background: keep the centre, make the rest transparent
        result = source.convert("RGBA")
        result.putalpha(_centre_mask(source.size))
    if filtered:
        result = _blur(result)
    return _encode(result, fmt), fmt, seed


def _open(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy()


def _mask_for(source: Image.Image, mask: Image.Image | None) -> Image.Image:
    if mask is not None:
        return mask.convert("L").resize(source.size)
    if source.mode in {"RGBA", "LA"} or "transparency" in source.info:
        # No mask: transparent pixels of the image are the ones to repaint.
        return Image.eval(source.convert("RGBA").getchannel("A"), lambda a: 255 - a)
    return _centre_mask(source.size)


def _centre_mask(size: tuple[int, int]) -> Image.Image:
    width, height = size
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse((width * 0.2, height * 0.15, width * 0.8, height * 0.85), fill=255)
    return mask.filter(ImageFilter.GaussianBlur(max(1.0, min(size) / 40)))


def _blur(image: Image.Image) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(max(4.0, min(image.size) / 12)))


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "jpeg":
        image.convert("RGB").save(buffer, "JPEG", quality=90)
    elif fmt == "webp":
        image.save(buffer, "WEBP", quality=90)
    else:
        image.save(buffer, "PNG", compress_level=4)
    return buffer.getvalue()


# --- answers -------------------------------------------------------------------------------------


def _request_id() -> str:
    return uuid.uuid4().hex


def _image_answer(data: bytes, fmt: str, seed: int, filtered: bool, as_json: bool) -> Response:
    finish = "CONTENT_FILTERED" if filtered else "SUCCESS"
    request_id = _request_id()
    if as_json:
        body = {
            "image": base64.b64encode(data).decode("ascii"),
            "finish_reason": finish,
            "seed": seed,
        }
        return Response(
            json.dumps(body),
            media_type=f"application/json; type=image/{fmt}",
            headers={"x-request-id": request_id},
        )
    return Response(
        data,
        media_type=f"image/{fmt}",
        headers={"finish-reason": finish, "seed": str(seed), "x-request-id": request_id},
    )


def _malformed(as_json: bool, fmt: str) -> Response:
    if as_json:
        return Response(
            b'{"image": "not base64!!', media_type=f"application/json; type=image/{fmt}"
        )
    return Response(
        b"\x00\x01 this is not an image \xff",
        media_type=f"image/{fmt}",
        headers={"finish-reason": "SUCCESS", "seed": "1", "x-request-id": _request_id()},
    )


def _error(
    reject: _Reject, *, v1: bool = False, headers: Mapping[str, str] | None = None
) -> Response:
    body: dict[str, Any] = {"id": _request_id(), "name": reject.name}
    if v1:
        body["message"] = "; ".join(reject.errors)
    else:
        body["errors"] = reject.errors
    return JSONResponse(body, status_code=reject.status, headers=dict(headers or {}))
