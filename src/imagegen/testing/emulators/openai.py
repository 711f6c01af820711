"""An emulator of OpenAI's Images API (GPT image models), for tests over real sockets.

Routes (all under ``/v1``, all requiring ``Authorization: Bearer <api_key>``):

- ``POST /v1/images/generations`` — JSON ``CreateImageRequest``;
- ``POST /v1/images/edits`` — multipart ``CreateImageEditRequest``: ``image`` or ``image[]``
  (repeated, up to 16), an optional ``mask``, and the text fields;
- ``GET /v1/models`` and ``GET /v1/models/{id}`` — what a health check calls.

Requests are validated like OpenAI does (unknown fields, types, enums, ``n`` 1..10, sizes per
model) and refused with a 400 in OpenAI's error shape ``{"error": {"message", "type", "param",
"code"}}``. Answers carry real images of the requested size and format (painted by the local
provider's renderer), as ``b64_json``, with ``created``, ``size``, ``quality``,
``output_format``, ``background`` and a ``usage`` whose output tokens follow OpenAI's
published table (``OUTPUT_TOKENS``).

Sizes: ``gpt-image-2`` (and its snapshot) take any ``WxH`` whose edges are multiples of 16, at
most 3840, with a ratio of at most 3:1 and 655,360 to 8,294,400 pixels; the other GPT image
models take ``1024x1024``, ``1536x1024``, ``1024x1536``. All take ``auto`` (a generation
becomes ``1024x1024``; an edit takes the standard size nearest the first image's shape).
``quality: auto`` becomes ``high``. DALL·E models are not emulated (400).

Faults (``app.state.faults``, a ``FaultPlan``; see ``imagegen.testing.emulators``): latency,
429 with ``Retry-After``, 5xx, a held request (timeout), a malformed 200 (its flavour is
``app.state.malformed_body``, one of ``MALFORMED_BODIES``), a ``moderation_blocked`` refusal
(with ``moderation_details.moderation_stage`` from the fault's ``stage``), a 401, a 400.

Every request is recorded in ``app.state.requests`` (method, path, headers without
``Authorization``, the parsed JSON body, or the multipart text fields and each file's field
name, filename, content type and size). Control API, unauthenticated:
``POST /_emulator/faults`` (a JSON ``Fault``), ``DELETE /_emulator/faults``,
``GET /_emulator/requests``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import io
import json
import math
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
from starlette.applications import Starlette
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imagegen.domain.values import ImageFormat, ImageSize
from imagegen.infrastructure.providers.local import default_seed, render
from imagegen.testing.emulators._faults import Fault, FaultKind, FaultPlan

DEFAULT_API_KEY: Final = "sk-emulator"

# Output image tokens per image, by quality and size, for the GPT image models. Source: OpenAI,
# "Image generation" guide, section "Cost and latency" (the table "output tokens by quality and
# dimensions": https://platform.openai.com/docs/guides/image-generation#cost-and-latency).
# gpt-image-2's free-form sizes are not in that table (OpenAI offers a calculator instead); the
# emulator scales the square's count by the pixel area, which matches the table to within 2%.
OUTPUT_TOKENS: Final[dict[str, dict[tuple[int, int], int]]] = {
    "low": {(1024, 1024): 272, (1024, 1536): 408, (1536, 1024): 400},
    "medium": {(1024, 1024): 1056, (1024, 1536): 1584, (1536, 1024): 1568},
    "high": {(1024, 1024): 4160, (1024, 1536): 6240, (1536, 1024): 6208},
}

FLEXIBLE_SIZE_MODELS: Final = frozenset({"gpt-image-2", "gpt-image-2-2026-04-21"})
FIXED_SIZE_MODELS: Final = frozenset(
    {"gpt-image-1.5", "gpt-image-1", "gpt-image-1-mini", "chatgpt-image-latest"}
)
MODELS: Final = FLEXIBLE_SIZE_MODELS | FIXED_SIZE_MODELS
STANDARD_SIZES: Final = ((1024, 1024), (1536, 1024), (1024, 1536))
MIN_PIXELS: Final = 655_360
MAX_PIXELS: Final = 8_294_400
MAX_EDGE: Final = 3840
MAX_RATIO: Final = 3
MAX_PROMPT: Final = 32_000
MAX_INPUT_IMAGES: Final = 16
MAX_IMAGE_BYTES: Final = 50 * 1024 * 1024
MAX_MASK_BYTES: Final = 4 * 1024 * 1024

QUALITIES: Final = ("low", "medium", "high", "auto")
FORMATS: Final = ("png", "jpeg", "webp")
BACKGROUNDS: Final = ("transparent", "opaque", "auto")

# The fields of the published request schemas (CreateImageRequest / CreateImageEditRequest).
GENERATION_FIELDS: Final = frozenset(
    {
        "prompt", "model", "n", "quality", "response_format", "output_format",
        "output_compression", "stream", "partial_images", "size", "moderation", "background",
        "style", "user",
    }
)  # fmt: skip
EDIT_FIELDS: Final = frozenset(
    {
        "image", "image[]", "prompt", "mask", "background", "model", "n", "size",
        "response_format", "output_format", "output_compression", "user", "input_fidelity",
        "stream", "partial_images", "quality",
    }
)  # fmt: skip
# DALL·E-only parameters: OpenAI refuses them for the GPT image models.
DALLE_ONLY: Final = ("response_format", "style")

MALFORMED_BODIES: Final = (
    "truncated_json",  # application/json, cut in the middle
    "not_json",  # a 200 text/html page
    "no_data",  # {"created": …} only
    "empty_data",  # "data": []
    "bad_base64",  # b64_json that is not base64
    "not_image",  # valid base64 of bytes that are no image
    "url_instead",  # a DALL·E-style URL instead of b64_json
)

_MODEL_CREATED: Final = 1_745_000_000


class OpenAIError(Exception):
    """An answer in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # OpenAI's field name
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {
            "message": message,
            "type": type,
            "param": param,
            "code": code,
            **(extra or {}),
        }
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.body}, status_code=self.status, headers=self.headers)


@attrs.frozen
class _Job:
    model: str
    prompt: str
    n: int
    size: tuple[int, int]
    quality: str
    output_format: str
    background: str
    images: tuple[bytes, ...] = ()


def create_app(
    *, api_key: str = DEFAULT_API_KEY, latency_s: float = 0.0, faults: FaultPlan | None = None
) -> Starlette:
    """The emulator as an ASGI app. ``latency_s`` delays every API answer (it sets the plan's
    ``latency_s`` when a plan is given)."""
    if not api_key:
        raise ValueError("api_key must be a non-empty string")
    plan = faults if faults is not None else FaultPlan(latency_s)
    if faults is not None and latency_s:
        plan.latency_s = latency_s
    app = Starlette(
        routes=[
            Route("/v1/images/generations", _generations, methods=["POST"]),
            Route("/v1/images/edits", _edits, methods=["POST"]),
            Route("/v1/models", _list_models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", _retrieve_model, methods=["GET"]),
            Route("/_emulator/faults", _push_fault, methods=["POST"]),
            Route("/_emulator/faults", _clear_faults, methods=["DELETE"]),
            Route("/_emulator/requests", _recorded, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error},
    )
    app.state.api_key = api_key
    app.state.faults = plan
    app.state.requests = []
    app.state.malformed_body = "truncated_json"
    return app


# --- API routes ---------------------------------------------------------------------------------


async def _generations(request: Request) -> Response:
    body: dict[str, Any] | None = None
    problem: OpenAIError | None = None
    raw = await request.body()
    try:
        parsed = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        problem = OpenAIError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
        )
    else:
        if isinstance(parsed, dict):
            body = parsed
        else:
            problem = OpenAIError(400, "The request body must be a JSON object.")
    _record(request, json_body=body)
    return await _serve(request, lambda: _validate_generation(body, problem))


async def _edits(request: Request) -> Response:
    content_type = request.headers.get("content-type", "")
    form: FormData | None = None
    problem: OpenAIError | None = None
    if not content_type.startswith("multipart/form-data"):
        problem = OpenAIError(
            400,
            "Invalid Content-Type header; the edits endpoint expects multipart/form-data.",
        )
    else:
        try:
            form = await request.form(max_files=MAX_INPUT_IMAGES + 2, max_fields=64)
        except Exception:  # python-multipart's parse errors
            problem = OpenAIError(400, "The multipart body could not be parsed.")
    fields, files = await _read_form(form)
    _record(request, form=fields, files=files)
    return await _serve(request, lambda: _validate_edit(fields, files, problem))


async def _list_models(request: Request) -> Response:
    _record(request)
    return await _serve(
        request,
        lambda: None,
        lambda: {"object": "list", "data": [_model(m) for m in sorted(MODELS)]},
    )


async def _retrieve_model(request: Request) -> Response:
    _record(request)
    model_id = request.path_params["model_id"]

    def check() -> None:
        if model_id not in MODELS:
            raise OpenAIError(
                404,
                f"The model '{model_id}' does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )

    return await _serve(request, check, lambda: _model(model_id))


def _model(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": _MODEL_CREATED, "owned_by": "system"}


# --- the request pipeline: auth, latency, faults, validation, answer ----------------------------


async def _serve(
    request: Request,
    validate: Callable[[], _Job | None],
    answer: Callable[[], dict[str, Any]] | None = None,
) -> Response:
    """Authenticate, wait, suffer a fault if one is queued, validate, then answer."""
    state = request.app.state
    request_id = f"req_{uuid.uuid4().hex}"
    try:
        _authenticate(request)
        plan: FaultPlan = state.faults
        if plan.latency_s > 0:
            await asyncio.sleep(plan.latency_s)
        fault = plan.take(request.url.path)
        injected = await _inject(request, fault, request_id) if fault is not None else None
        if injected is not None:
            response = injected
        else:
            job = validate()
            if answer is not None:
                response = JSONResponse(answer())
            else:
                assert job is not None
                response = JSONResponse(await _images_response(job))
    except OpenAIError as error:
        response = error.response()
    response.headers["x-request-id"] = request_id
    return response


def _authenticate(request: Request) -> None:
    expected = f"Bearer {request.app.state.api_key}"
    header = request.headers.get("authorization")
    if header is None or not header.startswith("Bearer ") or not header[7:].strip():
        raise OpenAIError(
            401,
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        )
    if header != expected:
        raise _incorrect_key(header[7:].strip())


def _incorrect_key(sent: str) -> OpenAIError:
    # OpenAI echoes the key it refused, masked but with its prefix and last four characters:
    # clients must scrub such messages before showing them.
    masked = sent[:7] + "*" * max(4, len(sent) - 11) + sent[-4:] if len(sent) > 12 else "***"
    return OpenAIError(
        401,
        f"Incorrect API key provided: {masked}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        code="invalid_api_key",
    )


async def _inject(request: Request, fault: Fault, request_id: str) -> Response | None:
    """The response a fault dictates, or None to answer normally (after a delay)."""
    kind = fault.kind
    if kind is FaultKind.LATENCY:
        await asyncio.sleep(fault.delay)
        return None
    if kind is FaultKind.RATE_LIMIT:
        headers = {}
        if fault.retry_after is not None:
            headers["retry-after"] = _seconds(fault.retry_after)
        wait = f" Please try again in {_seconds(fault.retry_after)}s." if fault.retry_after else ""
        raise OpenAIError(
            429,
            "Rate limit reached for images per minute (IPM) in organization org-emulator: "
            f"Limit 5, Used 5, Requested 1.{wait}",
            type="requests",
            code="rate_limit_exceeded",
            headers=headers,
        )
    if kind in (FaultKind.SERVER_ERROR, FaultKind.ABORTED, FaultKind.FAILED):
        status = fault.status or (503 if kind is FaultKind.SERVER_ERROR else 500)
        message = (
            "The server is overloaded or not ready yet."
            if status == 503
            else "The server had an error while processing your request. Sorry about that!"
        )
        raise OpenAIError(status, message, type="server_error")
    if kind is FaultKind.TIMEOUT:
        await _hold(request, fault.delay or 3600.0)
        raise OpenAIError(504, "The emulator held this request until it timed out.", type="timeout")
    if kind is FaultKind.MALFORMED:
        return _malformed(request.app.state.malformed_body)
    if kind is FaultKind.CONTENT_REFUSAL:
        stage = fault.stage if fault.stage in ("input", "output") else "input"
        raise OpenAIError(
            400,
            "Your request was rejected by the safety system. If you believe this is an error, "
            f"contact us at help.openai.com and include the request ID {request_id}. "
            "safety_violations=[violence].",
            type="image_generation_user_error",
            code="moderation_blocked",
            extra={"moderation_details": {"moderation_stage": stage, "categories": ["violence"]}},
        )
    if kind is FaultKind.AUTH_ERROR:
        header = request.headers.get("authorization", "")
        raise _incorrect_key(header[7:].strip())
    if kind is FaultKind.BAD_REQUEST:
        raise OpenAIError(
            fault.status or 400,
            "Invalid request (a fault injected by the emulator).",
            code="invalid_value",
        )
    raise OpenAIError(500, f"The emulator does not know the fault {kind!r}.", type="server_error")


async def _hold(request: Request, seconds: float) -> None:
    """Hold the request (a hang) until ``seconds`` pass or the client gives up."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await request.is_disconnected():
            return
        await asyncio.sleep(0.02)


def _malformed(flavour: str) -> Response:
    created = int(time.time())
    if flavour == "not_json":
        return Response("<html><body>Bad gateway</body></html>", media_type="text/html")
    if flavour == "no_data":
        return JSONResponse({"created": created})
    if flavour == "empty_data":
        return JSONResponse({"created": created, "data": []})
    if flavour == "bad_base64":
        return JSONResponse({"created": created, "data": [{"b64_json": "%%% not base64 %%%"}]})
    if flavour == "not_image":
        junk = base64.b64encode(b"this is not an image, just bytes").decode()
        return JSONResponse({"created": created, "data": [{"b64_json": junk}]})
    if flavour == "url_instead":
        return JSONResponse(
            {"created": created, "data": [{"url": "https://example.invalid/1.png"}]}
        )
    # truncated_json (the default, and any unknown flavour)
    text = json.dumps({"created": created, "data": [{"b64_json": "iVBORw0KGgo" * 8}]})
    return Response(text[: len(text) // 2], media_type="application/json")


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# --- validation ---------------------------------------------------------------------------------


def _validate_generation(body: dict[str, Any] | None, problem: OpenAIError | None) -> _Job:
    if problem is not None:
        raise problem
    assert body is not None
    _reject_unknown(body, GENERATION_FIELDS)
    model = _model_name(body.get("model"), default="dall-e-2")
    _reject_dalle_only(body)
    prompt = _prompt(body.get("prompt"))
    n = _integer(body.get("n"), "n", default=1, low=1, high=10)
    quality = _choice(body.get("quality"), "quality", QUALITIES, default="auto")
    output_format = _choice(body.get("output_format"), "output_format", FORMATS, default="png")
    _integer(body.get("output_compression"), "output_compression", default=100, low=0, high=100)
    background = _background(body.get("background"), output_format)
    _choice(body.get("moderation"), "moderation", ("low", "auto"), default="auto")
    _no_streaming(body)
    _optional_string(body.get("user"), "user")
    size = _size(body.get("size"), model, auto=(1024, 1024))
    return _Job(
        model=model,
        prompt=prompt,
        n=n,
        size=size,
        quality=_resolve_quality(quality),
        output_format=output_format,
        background=background,
    )


def _validate_edit(
    fields: dict[str, str], files: list[dict[str, Any]], problem: OpenAIError | None
) -> _Job:
    if problem is not None:
        raise problem
    _reject_unknown({**fields, **{f["field"]: None for f in files}}, EDIT_FIELDS)
    for name in ("image", "image[]", "mask"):
        if name in fields:
            raise OpenAIError(
                400,
                f"Invalid type for '{name}': expected a file, but got a string instead.",
                param=name,
                code="invalid_type",
            )
    model = _model_name(fields.get("model"), default="gpt-image-1.5")
    _reject_dalle_only(fields)
    prompt = _prompt(fields.get("prompt"))
    n = _integer(fields.get("n"), "n", default=1, low=1, high=10, text=True)
    quality = _choice(fields.get("quality"), "quality", QUALITIES, default="auto")
    output_format = _choice(fields.get("output_format"), "output_format", FORMATS, default="png")
    _integer(
        fields.get("output_compression"),
        "output_compression",
        default=100,
        low=0,
        high=100,
        text=True,
    )
    background = _background(fields.get("background"), output_format)
    _choice(fields.get("input_fidelity"), "input_fidelity", ("high", "low"), default="low")
    _no_streaming(fields)
    images = [f for f in files if f["field"] in ("image", "image[]")]
    masks = [f for f in files if f["field"] == "mask"]
    if not images:
        raise OpenAIError(
            400,
            "Missing required parameter: 'image'.",
            param="image",
            code="missing_required_parameter",
        )
    if len(images) > MAX_INPUT_IMAGES:
        raise OpenAIError(
            400,
            f"Invalid 'image': array too long. Expected an array with maximum length "
            f"{MAX_INPUT_IMAGES}, but got an array with length {len(images)} instead.",
            param="image",
            code="array_above_max_length",
        )
    dimensions = []
    for index, image in enumerate(images, start=1):
        if image["size"] > MAX_IMAGE_BYTES:
            raise OpenAIError(
                400, f"Image {index} is larger than 50 MB.", param="image", code="invalid_value"
            )
        info = _decode(image["data"])
        if info is None or info[0] not in ("PNG", "JPEG", "WEBP"):
            raise OpenAIError(
                400,
                f"Invalid image file or mode for image {index}, please check your image file.",
                param="image",
                code="invalid_image_file",
            )
        dimensions.append(info[1])
    if len(masks) > 1:
        raise OpenAIError(400, "Only one 'mask' may be sent.", param="mask", code="invalid_value")
    if masks:
        _check_mask(masks[0], dimensions[0])
    width, height = dimensions[0]
    size = _size(fields.get("size"), model, auto=_nearest_standard(width, height))
    return _Job(
        model=model,
        prompt=prompt,
        n=n,
        size=size,
        quality=_resolve_quality(quality),
        output_format=output_format,
        background=background,
        images=tuple(f["data"] for f in images),
    )


def _check_mask(mask: dict[str, Any], image_size: tuple[int, int]) -> None:
    if mask["size"] > MAX_MASK_BYTES:
        raise OpenAIError(400, "The mask is larger than 4 MB.", param="mask", code="invalid_value")
    info = _decode(mask["data"])
    if info is None or info[0] != "PNG":
        raise OpenAIError(
            400,
            "Invalid mask image format - the mask must be a PNG file.",
            param="mask",
            code="invalid_image_format",
        )
    if info[1] != image_size:
        raise OpenAIError(
            400,
            "Invalid mask image format - mask size does not match image size.",
            param="mask",
            code="invalid_image_format",
        )
    if not info[2]:
        raise OpenAIError(
            400,
            "Invalid mask image format - the mask needs an alpha channel.",
            param="mask",
            code="invalid_image_format",
        )


def _decode(data: bytes) -> tuple[str, tuple[int, int], bool] | None:
    """(format, size, has alpha) of an image, or None when it is not one."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return (image.format or "", image.size, image.has_transparency_data)
    except Exception:
        return None


def _reject_unknown(body: Mapping[str, Any], allowed: frozenset[str]) -> None:
    for name in body:
        if name not in allowed:
            raise OpenAIError(
                400, f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter"
            )


def _reject_dalle_only(body: Mapping[str, Any]) -> None:
    for name in DALLE_ONLY:
        if body.get(name) is not None:
            raise OpenAIError(
                400, f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter"
            )


def _model_name(value: Any, *, default: str) -> str:
    model = default if value is None else value
    if not isinstance(model, str):
        raise _wrong_type("model", "a string", model)
    if model not in MODELS:
        supported = ", ".join(f"'{m}'" for m in sorted(MODELS))
        raise OpenAIError(
            400,
            f"Invalid value: '{model}'. The emulator serves the GPT image models: {supported}.",
            param="model",
            code="invalid_value",
        )
    return model


def _prompt(value: Any) -> str:
    if value is None:
        raise OpenAIError(
            400,
            "Missing required parameter: 'prompt'.",
            param="prompt",
            code="missing_required_parameter",
        )
    if not isinstance(value, str):
        raise _wrong_type("prompt", "a string", value)
    if not value.strip():
        raise OpenAIError(
            400, "Invalid 'prompt': empty string.", param="prompt", code="empty_string"
        )
    if len(value) > MAX_PROMPT:
        raise OpenAIError(
            400,
            f"Invalid 'prompt': string too long. Expected a string with maximum length "
            f"{MAX_PROMPT}, but got a string with length {len(value)} instead.",
            param="prompt",
            code="string_above_max_length",
        )
    return value


def _integer(
    value: Any, name: str, *, default: int, low: int, high: int, text: bool = False
) -> int:
    if value is None:
        return default
    if text and isinstance(value, str):  # multipart fields are text; JSON ones are typed
        try:
            value = int(value.strip())
        except ValueError:
            raise _wrong_type(name, "an integer", value) from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(name, "an integer", value)
    if value < low:
        raise OpenAIError(
            400,
            f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, "
            f"but got {value} instead.",
            param=name,
            code="integer_below_min_value",
        )
    if value > high:
        raise OpenAIError(
            400,
            f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, "
            f"but got {value} instead.",
            param=name,
            code="integer_above_max_value",
        )
    return value


def _choice(value: Any, name: str, allowed: tuple[str, ...], *, default: str) -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        raise _wrong_type(name, "a string", value)
    if value not in allowed:
        listed = ", ".join(f"'{a}'" for a in allowed[:-1]) + f", and '{allowed[-1]}'"
        raise OpenAIError(
            400,
            f"Invalid value: '{value}'. Supported values are: {listed}.",
            param=name,
            code="invalid_value",
        )
    return value


def _background(value: Any, output_format: str) -> str:
    background = _choice(value, "background", BACKGROUNDS, default="auto")
    if background == "transparent" and output_format == "jpeg":
        raise OpenAIError(
            400,
            "Transparent background is not supported for the jpeg output format; use png or webp.",
            param="background",
            code="invalid_value",
        )
    return "transparent" if background == "transparent" else "opaque"


def _no_streaming(body: Mapping[str, Any]) -> None:
    stream = body.get("stream")
    if stream in (True, "true", "True", "1"):
        raise OpenAIError(
            400,
            "The emulator does not stream; omit 'stream' or set it to false.",
            param="stream",
            code="invalid_value",
        )
    if stream not in (None, False, "false", "False", "0"):
        raise _wrong_type("stream", "a boolean", stream)
    if body.get("partial_images") is not None:
        raise OpenAIError(
            400,
            "'partial_images' is only supported with 'stream' set to true.",
            param="partial_images",
            code="invalid_value",
        )


def _optional_string(value: Any, name: str) -> None:
    if value is not None and not isinstance(value, str):
        raise _wrong_type(name, "a string", value)


def _size(value: Any, model: str, *, auto: tuple[int, int]) -> tuple[int, int]:
    if value is None or value == "auto":
        return auto
    if not isinstance(value, str):
        raise _wrong_type("size", "a string", value)
    if model not in FLEXIBLE_SIZE_MODELS:
        sizes = [f"{w}x{h}" for w, h in STANDARD_SIZES]
        if value not in sizes:
            listed = ", ".join(f"'{s}'" for s in sizes)
            raise OpenAIError(
                400,
                f"Invalid value: '{value}'. Supported values are: {listed}, and 'auto'.",
                param="size",
                code="invalid_value",
            )
        width, height = (int(side) for side in value.split("x"))
        return width, height
    parts = value.split("x")
    if len(parts) != 2 or not all(p.isdigit() and p[0] != "0" for p in parts):
        raise _bad_size(value, "it must be 'auto' or WIDTHxHEIGHT, for example '1536x864'")
    width, height = int(parts[0]), int(parts[1])
    if width % 16 or height % 16:
        raise _bad_size(value, "width and height must both be divisible by 16")
    if max(width, height) > MAX_EDGE:
        raise _bad_size(value, f"the longest edge must be at most {MAX_EDGE} pixels")
    if max(width, height) > MAX_RATIO * min(width, height):
        raise _bad_size(value, "the aspect ratio must be between 1:3 and 3:1")
    if not MIN_PIXELS <= width * height <= MAX_PIXELS:
        raise _bad_size(
            value, f"the image must have between {MIN_PIXELS:,} and {MAX_PIXELS:,} pixels"
        )
    return width, height


def _bad_size(value: str, reason: str) -> OpenAIError:
    return OpenAIError(
        400, f"Invalid size '{value}': {reason}.", param="size", code="invalid_value"
    )


def _wrong_type(name: str, expected: str, value: Any) -> OpenAIError:
    got = {bool: "a boolean", int: "an integer", float: "a decimal", str: "a string"}.get(
        type(value), "an object" if isinstance(value, dict) else "an array"
    )
    return OpenAIError(
        400,
        f"Invalid type for '{name}': expected {expected}, but got {got} instead.",
        param=name,
        code="invalid_type",
    )


def _nearest_standard(width: int, height: int) -> tuple[int, int]:
    ratio = width / height
    return min(STANDARD_SIZES, key=lambda s: abs(math.log(ratio * s[1] / s[0])))


def _resolve_quality(quality: str) -> str:
    return "high" if quality == "auto" else quality


# --- answers ------------------------------------------------------------------------------------


async def _images_response(job: _Job) -> dict[str, Any]:
    fmt = ImageFormat(job.output_format)
    # Edits paint from the prompt and the sources, so different inputs give different images.
    material = job.prompt + "".join(hashlib.sha256(b).hexdigest()[:16] for b in job.images)
    seed = default_seed(material)
    blobs = await asyncio.to_thread(
        lambda: [render(job.prompt, seed.offset(i), job.size, fmt) for i in range(job.n)]
    )
    text_tokens = max(1, math.ceil(len(job.prompt) / 4))
    image_tokens = sum(_input_image_tokens(data) for data in job.images)
    output_tokens = output_tokens_per_image(job.quality, job.size, model=job.model) * job.n
    width, height = job.size
    return {
        "created": int(time.time()),
        "data": [{"b64_json": base64.b64encode(blob).decode("ascii")} for blob in blobs],
        "background": job.background,
        "output_format": job.output_format,
        "size": f"{width}x{height}",
        "quality": job.quality,
        "usage": {
            "input_tokens": text_tokens + image_tokens,
            "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens},
            "output_tokens": output_tokens,
            "output_tokens_details": {"image_tokens": output_tokens, "text_tokens": 0},
            "total_tokens": text_tokens + image_tokens + output_tokens,
        },
    }


def output_tokens_per_image(
    quality: str, size: tuple[int, int], *, model: str | None = None
) -> int:
    """Output image tokens of one image, as OpenAI reports them.

    For a model whose catalog entry documents its token rule (gpt-image-2's formula behind
    OpenAI's calculator), that rule; otherwise the gpt-image-1 family's published table
    (``OUTPUT_TOKENS``; other sizes scale with area)."""
    if model is not None:
        tokens = _catalog_tokens(model, quality, size)
        if tokens is not None:
            return tokens
    table = OUTPUT_TOKENS[quality]
    if size in table:
        return table[size]
    return round(table[(1024, 1024)] * size[0] * size[1] / (1024 * 1024))


@functools.cache
def _token_rules() -> dict[str, Any]:
    from imagegen.domain.pricing import TokenPriced
    from imagegen.infrastructure.catalog import load_catalog

    return {
        spec.model: spec.pricing
        for spec in load_catalog(None).all()
        if spec.provider == "openai" and isinstance(spec.pricing, TokenPriced)
    }


def _catalog_tokens(model: str, quality: str, size: tuple[int, int]) -> int | None:
    rule = _token_rules().get(model)
    if rule is None:
        return None
    tokens, _exact = rule.image_tokens(quality, ImageSize(*size))
    return int(tokens)


def _input_image_tokens(data: bytes) -> int:
    """Tokens of an input image, by OpenAI's vision rule for high detail (fit in 2048x2048,
    shorter side to 768, then 170 per 512-pixel tile plus 85) — an approximation: OpenAI does
    not publish the exact count for the image models' inputs."""
    info = _decode(data)
    if info is None:
        return 0
    width, height = float(info[1][0]), float(info[1][1])
    scale = min(1.0, 2048 / max(width, height))
    width, height = width * scale, height * scale
    scale = min(1.0, 768 / min(width, height))
    width, height = width * scale, height * scale
    return 85 + 170 * math.ceil(width / 512) * math.ceil(height / 512)


# --- recording and control ----------------------------------------------------------------------


async def _read_form(form: FormData | None) -> tuple[dict[str, str], list[dict[str, Any]]]:
    fields: dict[str, str] = {}
    files: list[dict[str, Any]] = []
    if form is None:
        return fields, files
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            data = await value.read()
            files.append(
                {
                    "field": name,
                    "filename": value.filename,
                    "content_type": value.content_type,
                    "size": len(data),
                    "data": data,
                }
            )
        else:
            fields[name] = value
    await form.close()
    return fields, files


def _record(
    request: Request,
    *,
    json_body: dict[str, Any] | None = None,
    form: dict[str, str] | None = None,
    files: list[dict[str, Any]] | None = None,
) -> None:
    entry: dict[str, Any] = {
        "method": request.method,
        "path": request.url.path,
        "headers": {k: v for k, v in request.headers.items() if k.lower() != "authorization"},
    }
    if json_body is not None:
        entry["json"] = json_body
    if form is not None:
        entry["form"] = dict(form)
    if files is not None:
        entry["files"] = [{k: v for k, v in f.items() if k != "data"} for f in files]
    request.app.state.requests.append(entry)


async def _push_fault(request: Request) -> Response:
    try:
        data = json.loads(await request.body())
        if not isinstance(data, dict):
            raise TypeError("a fault is a JSON object")
        fault = Fault.from_json(data)
    except (ValueError, TypeError) as error:
        return JSONResponse({"error": f"Not a fault: {error}"}, status_code=400)
    plan: FaultPlan = request.app.state.faults
    plan.push(fault)
    return JSONResponse({"pending": plan.pending}, status_code=201)


async def _clear_faults(request: Request) -> Response:
    request.app.state.faults.clear()
    return Response(status_code=204)


async def _recorded(request: Request) -> Response:
    return JSONResponse(list(request.app.state.requests))


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    return OpenAIError(status, f"Invalid URL ({request.method} {request.url.path})").response()


__all__ = [
    "DEFAULT_API_KEY",
    "MALFORMED_BODIES",
    "OUTPUT_TOKENS",
    "create_app",
    "output_tokens_per_image",
]
