"""An emulator of Replicate's predictions API, for the official FLUX models.

It speaks the wire protocol of ``https://api.replicate.com`` (see the published OpenAPI spec):

====================================================  ===========================================
``POST /v1/models/{owner}/{name}/predictions``        create; ``Prefer: wait[=n]`` holds up to
                                                      n ≤ 60 s for the result; ``Cancel-After``
``GET /v1/predictions/{id}``                          starting → processing → succeeded (or the
                                                      fate a fault chose) after ``processing_s``
``POST /v1/predictions/{id}/cancel``                  cancel a running prediction
``GET /v1/account``                                   the token's account
``GET /files/{id}``                                   the output images (real PNG/JPEG/WebP from
                                                      the local renderer, at the model's size)
====================================================  ===========================================

Every route needs ``Authorization: Bearer <api_token>`` (401 otherwise). Bodies are checked
against each model's published input schema — strictly: an unknown input field is a 422 here,
where Replicate would silently ignore it, so an adapter's typo cannot go unnoticed. Errors
are problem documents like Replicate's: ``{"detail": …, "status": …, "title": …}``.

Faults (``app.state.faults``, a ``FaultPlan``; ``route`` narrows one to matching paths):
``latency``, ``rate_limit`` (429 with ``retry_after`` in the body and ``Retry-After``),
``server_error``, ``timeout`` (the request hangs), ``malformed`` (a broken JSON body),
``auth_error``, ``bad_request``, and three fates for the prediction the request creates or
polls: ``aborted``, ``failed`` (an error) and ``content_refusal`` (Replicate's NSFW message).

For tests: ``app.state.requests`` (every request, the token redacted), ``app.state.created``
(how many predictions were created — assert "no second create"), ``app.state.predictions``,
and ``app.state.processing_s`` (changeable between tests). Out of process, the control API:
``POST /_emulator/faults``, ``DELETE /_emulator/faults``, ``GET /_emulator/requests``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import attrs
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imagegen.domain.values import MAX_SEED, ImageFormat, Seed
from imagegen.infrastructure.providers.local import render
from imagegen.testing.emulators._faults import Fault, FaultKind, FaultPlan

__all__ = ["MODELS", "create_app"]

_PROBLEM: Final = "application/problem+json"
_MP: Final = 1024 * 1024  # Replicate's "1 MP"
_FORMATS: Final = {"png": ImageFormat.PNG, "jpg": ImageFormat.JPEG, "webp": ImageFormat.WEBP}
_WAIT_RE: Final = re.compile(r"^wait(?:=(\d{1,2}))?$")
_DURATION_RE: Final = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?$")
_NSFW_FLUX1: Final = (
    "All generated images contained NSFW content. Try running it again with a different prompt."
)
_FLAGGED: Final = (
    "The input or output was flagged as sensitive. Please try again with different inputs. (E005)"
)
_FAILURE: Final = "Prediction failed: CUDA error: an illegal memory access was encountered"
_ABORT_REASON: Final = "Prediction was aborted before it started."
_FATES: Final = frozenset({FaultKind.ABORTED, FaultKind.FAILED, FaultKind.CONTENT_REFUSAL})


# --- the models' input schemas -----------------------------------------------------------------


@attrs.frozen
class Field:
    """One input field: ``kind`` is string, integer, number, boolean, image (a URL or data URI)
    or images (a list of those)."""

    kind: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    max_items: int | None = None
    required: bool = False


@attrs.frozen
class Model:
    """A model's input schema and how it sizes its output.

    ``sizes`` is an explicit table per aspect ratio (FLUX.1, where ``megapixels="0.25"`` halves
    each side); otherwise a ratio becomes ``megapixels`` MP in multiples of 32.
    """

    fields: Mapping[str, Field]
    default_ratio: str
    default_format: str
    array_output: bool = False
    megapixels: float = 1.0
    sizes: Mapping[str, tuple[int, int]] | None = None
    nsfw_message: str = _FLAGGED


def _flux1_fields(**extra: Field) -> dict[str, Field]:
    return {
        "prompt": Field("string", required=True),
        "aspect_ratio": Field("string", choices=tuple(_FLUX1_SIZES)),
        "num_outputs": Field("integer", minimum=1, maximum=4),
        "seed": Field("integer"),
        "output_format": Field("string", choices=("webp", "jpg", "png")),
        "output_quality": Field("integer", minimum=0, maximum=100),
        "disable_safety_checker": Field("boolean"),
        "go_fast": Field("boolean"),
        "megapixels": Field("string", choices=("1", "0.25")),
        **extra,
    }


_FLUX1_SIZES: Final = {
    "1:1": (1024, 1024), "16:9": (1344, 768), "21:9": (1536, 640), "3:2": (1216, 832),
    "2:3": (832, 1216), "4:5": (896, 1088), "5:4": (1088, 896), "3:4": (896, 1152),
    "4:3": (1152, 896), "9:16": (768, 1344), "9:21": (640, 1536),
}  # fmt: skip
_PRO_RATIOS: Final = ("1:1", "16:9", "3:2", "2:3", "4:5", "5:4", "9:16", "3:4", "4:3")
_ULTRA_RATIOS: Final = (
    "21:9",
    "16:9",
    "3:2",
    "4:3",
    "5:4",
    "1:1",
    "4:5",
    "3:4",
    "2:3",
    "9:16",
    "9:21",
)
_KONTEXT_RATIOS: Final = ("match_input_image", *_ULTRA_RATIOS, "2:1", "1:2")
_KONTEXT: Final = Model(
    {
        "prompt": Field("string", required=True),
        "input_image": Field("image"),
        "aspect_ratio": Field("string", choices=_KONTEXT_RATIOS),
        "seed": Field("integer"),
        "safety_tolerance": Field("integer", minimum=0, maximum=6),
        "prompt_upsampling": Field("boolean"),
        "output_format": Field("string", choices=("jpg", "png")),
    },
    default_ratio="match_input_image",
    default_format="png",
)


def _flux2_fields(max_side: int, max_images: int, **extra: Field) -> dict[str, Field]:
    return {
        "prompt": Field("string", required=True),
        "input_images": Field("images", max_items=max_images),
        "aspect_ratio": Field("string", choices=("match_input_image", "custom", *_PRO_RATIOS)),
        "width": Field("integer", minimum=256, maximum=max_side),
        "height": Field("integer", minimum=256, maximum=max_side),
        "seed": Field("integer"),
        "output_format": Field("string", choices=("webp", "jpg", "png")),
        "output_quality": Field("integer", minimum=0, maximum=100),
        **extra,
    }


MODELS: Final[Mapping[str, Model]] = {
    "black-forest-labs/flux-schnell": Model(
        _flux1_fields(num_inference_steps=Field("integer", minimum=1, maximum=4)),
        default_ratio="1:1",
        default_format="webp",
        array_output=True,
        sizes=_FLUX1_SIZES,
        nsfw_message=_NSFW_FLUX1,
    ),
    "black-forest-labs/flux-dev": Model(
        _flux1_fields(
            num_inference_steps=Field("integer", minimum=1, maximum=50),
            guidance=Field("number", minimum=0, maximum=10),
            image=Field("image"),
            prompt_strength=Field("number", minimum=0, maximum=1),
        ),
        default_ratio="1:1",
        default_format="webp",
        array_output=True,
        sizes=_FLUX1_SIZES,
        nsfw_message=_NSFW_FLUX1,
    ),
    "black-forest-labs/flux-1.1-pro": Model(
        {
            "prompt": Field("string", required=True),
            "image_prompt": Field("image"),
            "aspect_ratio": Field("string", choices=("custom", *_PRO_RATIOS)),
            "width": Field("integer", minimum=256, maximum=1440),
            "height": Field("integer", minimum=256, maximum=1440),
            "safety_tolerance": Field("integer", minimum=1, maximum=6),
            "seed": Field("integer"),
            "prompt_upsampling": Field("boolean"),
            "output_format": Field("string", choices=("webp", "jpg", "png")),
            "output_quality": Field("integer", minimum=0, maximum=100),
        },
        default_ratio="1:1",
        default_format="webp",
    ),
    "black-forest-labs/flux-1.1-pro-ultra": Model(
        {
            "prompt": Field("string", required=True),
            "aspect_ratio": Field("string", choices=_ULTRA_RATIOS),
            "raw": Field("boolean"),
            "image_prompt": Field("image"),
            "image_prompt_strength": Field("number", minimum=0, maximum=1),
            "safety_tolerance": Field("integer", minimum=1, maximum=6),
            "seed": Field("integer"),
            "output_format": Field("string", choices=("jpg", "png")),
        },
        default_ratio="1:1",
        default_format="jpg",
        megapixels=4.0,
    ),
    "black-forest-labs/flux-kontext-pro": _KONTEXT,
    "black-forest-labs/flux-kontext-max": _KONTEXT,
    "black-forest-labs/flux-2-pro": Model(
        _flux2_fields(
            2048,
            8,
            resolution=Field(
                "string", choices=("match_input_image", "0.5 MP", "1 MP", "2 MP", "4 MP")
            ),
            safety_tolerance=Field("integer", minimum=1, maximum=5),
        ),
        default_ratio="1:1",
        default_format="webp",
    ),
    "black-forest-labs/flux-2-dev": Model(
        _flux2_fields(1440, 4, go_fast=Field("boolean"), disable_safety_checker=Field("boolean")),
        default_ratio="1:1",
        default_format="webp",
    ),
}


_Handler = Callable[[Request, Any], Awaitable[Response]]
_Endpoint = Callable[[Request], Awaitable[Response]]


class _Invalid(Exception):
    def __init__(self, field: str, kind: str, description: str) -> None:
        super().__init__(description)
        self.field, self.kind, self.description = field, kind, description


def _validate(model: Model, data: dict[str, Any]) -> list[tuple[int, int] | None]:
    """Check ``data`` against the schema; the sizes of the input images (None: a URL)."""
    for name in data:
        if name not in model.fields:
            raise _Invalid(name, "additional_property", f"{name} is not an input of this model")
    sizes: list[tuple[int, int] | None] = []
    for name, field in model.fields.items():
        if name not in data:
            if field.required:
                raise _Invalid(name, "required", f"{name} is required")
            continue
        value = data[name]
        if field.kind == "string":
            if not isinstance(value, str) or (field.required and not value.strip()):
                raise _Invalid(name, "type", f"{name} must be a non-empty string")
            if field.choices and value not in field.choices:
                options = ", ".join(field.choices)
                raise _Invalid(name, "enum", f"{name} must be one of the following: {options}")
        elif field.kind in ("integer", "number"):
            ok = isinstance(value, int) or (field.kind == "number" and isinstance(value, float))
            if isinstance(value, bool) or not ok:
                raise _Invalid(name, "type", f"{name} must be an {field.kind}")
            if field.minimum is not None and value < field.minimum:
                raise _Invalid(
                    name, "minimum", f"{name} must be greater than or equal to {field.minimum:g}"
                )
            if field.maximum is not None and value > field.maximum:
                raise _Invalid(
                    name, "maximum", f"{name} must be less than or equal to {field.maximum:g}"
                )
        elif field.kind == "boolean":
            if not isinstance(value, bool):
                raise _Invalid(name, "type", f"{name} must be a boolean")
        elif field.kind == "image":
            sizes.append(_image_size(name, value))
        elif field.kind == "images":
            if not isinstance(value, list):
                raise _Invalid(name, "type", f"{name} must be an array of image URIs")
            if field.max_items is not None and len(value) > field.max_items:
                raise _Invalid(name, "max_items", f"{name} takes at most {field.max_items} images")
            sizes.extend(_image_size(f"{name}[{i}]", item) for i, item in enumerate(value))
    ratio = data.get("aspect_ratio", model.default_ratio)
    if ratio == "custom" and not ("width" in data and "height" in data):
        raise _Invalid(
            "aspect_ratio", "custom", "width and height are required when aspect_ratio is custom"
        )
    if ratio == "match_input_image" and not sizes:
        raise _Invalid(
            "aspect_ratio", "match_input_image", "match_input_image needs an input image"
        )
    if sizes and data.get("safety_tolerance", 2) > 2 and "input_image" in model.fields:
        raise _Invalid(
            "safety_tolerance", "maximum", "safety_tolerance is at most 2 with input images"
        )
    return sizes


def _image_size(name: str, value: Any) -> tuple[int, int] | None:
    if isinstance(value, str) and value.startswith(("https://", "http://")):
        return None  # cannot fetch it here: treat it as a square image
    if not isinstance(value, str) or not value.startswith("data:") or "," not in value:
        raise _Invalid(name, "format", f"{name} must be an HTTP(S) URL or a data URI")
    header, _, payload = value.partition(",")
    if not re.fullmatch(r"data:image/(png|jpeg|gif|webp);base64", header):
        raise _Invalid(name, "format", f"{name} must be a base64 jpeg, png, gif or webp data URI")
    try:
        with Image.open(io.BytesIO(base64.b64decode(payload, validate=True))) as image:
            image.load()
            return image.size
    except (binascii.Error, ValueError, OSError):
        raise _Invalid(name, "format", f"{name} is not a readable image") from None


def _output_size(
    model: Model, data: dict[str, Any], inputs: list[tuple[int, int] | None]
) -> tuple[int, int]:
    ratio = data.get("aspect_ratio", model.default_ratio)
    if ratio == "custom":
        return (_round32(data["width"]), _round32(data["height"]))
    if model.sizes is not None:
        width, height = model.sizes[ratio]
        if data.get("megapixels") == "0.25":
            width, height = width // 2, height // 2
        return (width, height)
    if ratio == "match_input_image":
        rw, rh = inputs[0] or (1, 1)
    else:
        rw, rh = (int(part) for part in ratio.split(":"))
    megapixels = model.megapixels
    resolution = data.get("resolution", "1 MP")
    if resolution == "match_input_image":
        source = inputs[0] or (1024, 1024)
        megapixels = min(4.0, max(0.5, source[0] * source[1] / _MP))
    elif isinstance(resolution, str) and resolution.endswith(" MP"):
        megapixels = float(resolution.split()[0])
    pixels = megapixels * _MP
    return (_round32(math.sqrt(pixels * rw / rh)), _round32(math.sqrt(pixels * rh / rw)))


def _round32(value: float) -> int:
    return max(32, round(value / 32) * 32)


# --- predictions -------------------------------------------------------------------------------


@attrs.define
class OutputFile:
    prompt: str
    seed: Seed
    size: tuple[int, int]
    format: ImageFormat
    data: bytes | None = None

    async def bytes(self) -> bytes:
        if self.data is None:
            self.data = await asyncio.to_thread(
                render, self.prompt, self.seed, self.size, self.format
            )
        return self.data


@attrs.define
class Prediction:
    """One prediction; its status is a function of time (and of cancel and its fate)."""

    id: str
    model: str
    input: dict[str, Any]
    created: float  # time.monotonic()
    created_wall: datetime
    starts_after: float
    ends_after: float
    files: list[str]
    array_output: bool
    fate: str = "succeeded"  # or "failed" / "aborted"
    error: str | None = None
    canceled_after: float | None = None
    cancel_after: float | None = None  # Cancel-After: the deadline Replicate enforces

    def _end(self) -> tuple[float, str]:
        """When it ends and how: its fate, unless canceled first. A cancel is "canceled"; the
        ``Cancel-After`` deadline is "aborted" before the prediction starts (as Replicate)."""
        end = self.starts_after if self.fate == "aborted" else self.ends_after
        outcome = self.fate
        if self.cancel_after is not None and self.cancel_after < end:
            end = self.cancel_after
            outcome = "aborted" if self.cancel_after < self.starts_after else "canceled"
        if self.canceled_after is not None and self.canceled_after < end:
            end, outcome = self.canceled_after, "canceled"
        return end, outcome

    def status(self, now: float | None = None) -> str:
        elapsed = (time.monotonic() if now is None else now) - self.created
        end, outcome = self._end()
        if elapsed >= end:
            return outcome
        return "processing" if elapsed >= self.starts_after else "starting"

    def finish_now(self, fate: str, error: str | None) -> None:
        """A fault decided how it ends: it ends so, at once."""
        elapsed = time.monotonic() - self.created
        self.fate, self.error = fate, error
        self.ends_after = min(self.ends_after, elapsed)
        if fate == "aborted":
            self.starts_after = min(self.starts_after, elapsed)

    def seconds_left(self) -> float:
        end, _ = self._end()
        return max(0.0, end - (time.monotonic() - self.created))

    def to_json(self, base_url: str, *, output_ready_early: bool = False) -> dict[str, Any]:
        now = time.monotonic()
        status = self.status(now)
        elapsed = now - self.created
        end, _ = self._end()
        started = status != "starting" and status != "aborted"
        done = status in ("succeeded", "failed", "canceled", "aborted")
        output: Any = None
        if status == "succeeded":
            urls = [f"{base_url}/files/{name}" for name in self.files]
            output = urls if self.array_output else urls[0]
        report = status
        if output_ready_early and status == "succeeded":
            report = "processing"  # Replicate's sync mode: files first, status later
        api = f"{base_url}/v1/predictions/{self.id}"
        return {
            "id": self.id,
            "model": self.model,
            "version": "hidden",
            "input": self.input,
            "output": output,
            "logs": "" if not started else "Running predict()...\n",
            "error": self.error if status == "failed" else None,
            "status": report,
            "source": "api",
            "data_removed": False,
            "created_at": _iso(self.created_wall),
            "started_at": _iso(self.created_wall + timedelta(seconds=self.starts_after))
            if started
            else None,
            "completed_at": _iso(self.created_wall + timedelta(seconds=min(end, elapsed)))
            if done
            else None,
            "metrics": {"predict_time": round(max(0.0, end - self.starts_after), 3)}
            if done and started
            else {},
            "urls": {
                "get": api,
                "cancel": f"{api}/cancel",
                "web": f"https://replicate.com/p/{self.id}",
            },
        }


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _prediction_id() -> str:
    return base64.b32encode(secrets.token_bytes(16)).decode("ascii").lower().rstrip("=")[:26]


# --- the app -----------------------------------------------------------------------------------


def create_app(
    *,
    api_token: str = "r8_emulator",  # noqa: S107 - the emulator's well-known test token
    latency_s: float = 0.0,
    faults: FaultPlan | None = None,
    processing_s: float = 0.0,
    sync_reports_processing: bool = False,
) -> Starlette:
    """An ASGI app emulating Replicate. ``processing_s`` is how long each prediction runs
    (the first quarter "starting"); ``sync_reports_processing`` reproduces Replicate's sync-mode
    habit of answering "processing" with the output files already filled in."""
    plan = faults if faults is not None else FaultPlan(latency_s)
    if latency_s and faults is not None:
        plan.latency_s = latency_s

    def endpoint(handler: _Handler, *, control: bool = False) -> _Endpoint:
        async def run(request: Request) -> Response:
            request.state.fate = None
            raw = await request.body()
            body: Any = None
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw[:200].decode("utf-8", "replace")
            headers = {k: v for k, v in request.headers.items() if k != "authorization"}
            authorized = request.headers.get("authorization") == f"Bearer {api_token}"
            app.state.requests.append(
                {
                    "method": request.method,
                    "path": request.url.path,
                    "headers": headers,
                    "authorized": authorized,
                    "body": body,
                }
            )
            if control:
                return await handler(request, body)
            if not authorized:
                return _problem(
                    401, "Unauthenticated", "You did not pass a valid authentication token"
                )
            if plan.latency_s:
                await asyncio.sleep(plan.latency_s)
            fault = plan.take(request.url.path)
            if fault is not None:
                request.state.fate = fault if fault.kind in _FATES else None
                answer = await _suffer(request, fault)
                if answer is not None:
                    return answer
            return await handler(request, body)

        return run

    async def create(request: Request, body: Any) -> Response:
        name = f"{request.path_params['owner']}/{request.path_params['name']}"
        model = MODELS.get(name)
        if model is None:
            return _problem(404, "Not found", "The requested resource could not be found.")
        prefer = _prefer_wait(request.headers.get("prefer"))
        if isinstance(prefer, Response):
            return prefer
        cancel_after = _cancel_after(request.headers.get("cancel-after"))
        if isinstance(cancel_after, Response):
            return cancel_after
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return _problem(
                422, "Invalid request", "- input: input is required and must be an object"
            )
        extra = set(body) - {
            "input",
            "stream",
            "webhook",
            "webhook_completed",
            "webhook_events_filter",
        }
        if extra:
            return _problem(
                422, "Invalid request", f"- {sorted(extra)[0]}: additional property not allowed"
            )
        data: dict[str, Any] = body["input"]
        try:
            inputs = _validate(model, data)
        except _Invalid as invalid:
            return _problem(
                422,
                "Input validation failed",
                f"- input.{invalid.field}: {invalid.description}",
                invalid_fields=[
                    {
                        "type": invalid.kind,
                        "field": f"input.{invalid.field}",
                        "description": invalid.description,
                    }
                ],
            )
        pid = _prediction_id()
        fmt = _FORMATS[data.get("output_format", model.default_format)]
        size = _output_size(model, data, inputs)
        first = (
            Seed(data["seed"] % (MAX_SEED + 1))
            if "seed" in data
            else Seed(secrets.randbelow(MAX_SEED + 1))
        )
        count = data.get("num_outputs", 1) if model.array_output else 1
        files = []
        for index in range(count):
            file_id = f"{pid}-{index}.{fmt.extension}"
            app.state.files[file_id] = OutputFile(data["prompt"], first.offset(index), size, fmt)
            files.append(file_id)
        duration = max(0.0, float(app.state.processing_s))
        prediction = Prediction(
            id=pid,
            model=name,
            input=data,
            created=time.monotonic(),
            created_wall=datetime.now(UTC),
            starts_after=duration / 4,
            ends_after=duration,
            files=files,
            array_output=model.array_output,
            cancel_after=cancel_after,
        )
        fate: Fault | None = request.state.fate
        if fate is not None:
            _apply_fate(prediction, fate, model)
        app.state.predictions[pid] = prediction
        app.state.created += 1
        if prefer:
            await _hold(request, min(prefer, prediction.seconds_left()))
        status = prediction.status()
        early = bool(prefer) and app.state.sync_reports_processing
        payload = prediction.to_json(_base(request), output_ready_early=early)
        finished = status in ("succeeded", "failed", "canceled", "aborted")
        return JSONResponse(
            payload,
            status_code=201 if finished or not prefer else 202,
            headers={"Location": payload["urls"]["get"]},
        )

    async def get(request: Request, body: Any) -> Response:
        prediction = app.state.predictions.get(request.path_params["id"])
        if prediction is None:
            return _problem(404, "Not found", "The requested resource could not be found.")
        fate: Fault | None = request.state.fate
        if fate is not None and prediction.status() in ("starting", "processing"):
            _apply_fate(prediction, fate, MODELS[prediction.model], now=True)
        return JSONResponse(prediction.to_json(_base(request)))

    async def cancel(request: Request, body: Any) -> Response:
        prediction = app.state.predictions.get(request.path_params["id"])
        if prediction is None:
            return _problem(404, "Not found", "The requested resource could not be found.")
        if prediction.status() in ("starting", "processing"):
            prediction.canceled_after = time.monotonic() - prediction.created
        return JSONResponse(prediction.to_json(_base(request)))

    async def account(request: Request, body: Any) -> Response:
        return JSONResponse(
            {
                "type": "organization",
                "username": "emulator",
                "name": "Replicate Emulator",
                "github_url": None,
            }
        )

    async def file(request: Request, body: Any) -> Response:
        output = app.state.files.get(request.path_params["id"])
        if output is None:
            return _problem(404, "Not found", "The requested resource could not be found.")
        return Response(await output.bytes(), media_type=output.format.mime_type)

    async def add_faults(request: Request, body: Any) -> Response:
        entries = body if isinstance(body, list) else [body]
        try:
            for entry in entries:
                plan.push(Fault.from_json(entry))
        except (TypeError, ValueError) as error:
            return _problem(422, "Invalid fault", str(error))
        return JSONResponse({"pending": plan.pending})

    async def clear_faults(request: Request, body: Any) -> Response:
        plan.clear()
        return Response(status_code=204)

    async def list_requests(request: Request, body: Any) -> Response:
        seen = [r for r in app.state.requests if not r["path"].startswith("/_emulator/")]
        return JSONResponse({"requests": seen, "created": app.state.created})

    app = Starlette(
        routes=[
            Route("/v1/models/{owner}/{name}/predictions", endpoint(create), methods=["POST"]),
            Route("/v1/predictions/{id}", endpoint(get), methods=["GET"]),
            Route("/v1/predictions/{id}/cancel", endpoint(cancel), methods=["POST"]),
            Route("/v1/account", endpoint(account), methods=["GET"]),
            Route("/files/{id}", endpoint(file), methods=["GET"]),
            Route("/_emulator/faults", endpoint(add_faults, control=True), methods=["POST"]),
            Route("/_emulator/faults", endpoint(clear_faults, control=True), methods=["DELETE"]),
            Route("/_emulator/requests", endpoint(list_requests, control=True), methods=["GET"]),
        ]
    )
    app.state.faults = plan
    app.state.requests = []
    app.state.created = 0
    app.state.predictions = {}
    app.state.files = {}
    app.state.processing_s = processing_s
    app.state.sync_reports_processing = sync_reports_processing
    return app


def _apply_fate(prediction: Prediction, fault: Fault, model: Model, *, now: bool = False) -> None:
    if fault.kind is FaultKind.ABORTED:
        fate, error = "aborted", None
    elif fault.kind is FaultKind.CONTENT_REFUSAL:
        fate, error = "failed", model.nsfw_message if fault.stage == "output" else _FLAGGED
    else:
        fate, error = "failed", _FAILURE
    if now:
        prediction.finish_now(fate, error)
    else:
        prediction.fate, prediction.error = fate, error


async def _suffer(request: Request, fault: Fault) -> Response | None:
    """The response a fault replaces the real one with (None: answer normally)."""
    kind = fault.kind
    if kind is FaultKind.LATENCY:
        await asyncio.sleep(fault.delay)
    elif kind is FaultKind.RATE_LIMIT:
        seconds = fault.retry_after if fault.retry_after is not None else 1.0
        whole = max(1, math.ceil(seconds))
        return _problem(
            429,
            "Request was throttled",
            f"Request was throttled. Expected available in {whole} second"
            f"{'s' if whole != 1 else ''}.",
            headers={"Retry-After": str(whole)},
            retry_after=seconds,
        )
    elif kind is FaultKind.SERVER_ERROR:
        status = fault.status or 503
        return _problem(
            status,
            "Internal server error" if status == 500 else "Service unavailable",
            "Something went wrong on our end.",
        )
    elif kind is FaultKind.TIMEOUT:
        await _hold(request, fault.delay or 3600.0)
        return _problem(504, "Gateway timeout", "The request took too long.")
    elif kind is FaultKind.MALFORMED:
        return Response(
            b'{"id": "broken", "status": "succ', status_code=201, media_type="application/json"
        )
    elif kind is FaultKind.AUTH_ERROR:
        return _problem(401, "Unauthenticated", "Invalid token.")
    elif kind is FaultKind.BAD_REQUEST:
        return _problem(
            fault.status or 400, "Bad request", "The request could not be understood (emulated)."
        )
    return None  # fates (aborted, failed, content_refusal) shape the prediction instead


async def _hold(request: Request, seconds: float) -> None:
    """Hold a request for ``seconds``, or until its client goes away."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(0.05, left))
        if await request.is_disconnected():
            return


def _prefer_wait(header: str | None) -> int | Response:
    """Seconds to hold a create (0: async mode), or a 400 for a malformed ``Prefer``."""
    if header is None:
        return 0
    for preference in (p.strip() for p in header.split(",")):
        match = _WAIT_RE.fullmatch(preference)
        if match is None:
            continue
        seconds = int(match.group(1)) if match.group(1) else 60
        if not 1 <= seconds <= 60:
            return _problem(
                400, "Invalid Prefer header", "Prefer: wait=n takes 1 <= n <= 60 seconds"
            )
        return seconds
    return 0


def _cancel_after(header: str | None) -> float | Response | None:
    if header is None:
        return None
    match = _DURATION_RE.fullmatch(header.strip())
    if match is None or not any(match.groups()):
        return _problem(
            400, "Invalid Cancel-After header", "Cancel-After is a duration like 30s, 5m or 1h30m"
        )
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total < 5:
        return _problem(
            400, "Invalid Cancel-After header", "Cancel-After must be at least 5 seconds"
        )
    return float(total)


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _problem(
    status: int, title: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse(
        {"detail": detail, "status": status, "title": title, **extra},
        status_code=status,
        headers=headers,
        media_type=_PROBLEM,
    )
