"""Stability AI: the REST v2beta Stable Image API over ``httpx``.

Why not ``stability-sdk``: it wraps Stability's legacy gRPC API, which cannot reach SD 3.5 or
the Stable Image services (Core, Ultra, the edit endpoints), and it pins ``grpcio`` /
``protobuf`` versions without wheels for current Pythons. The v2beta API is plain multipart
HTTP, so a thin adapter over ``httpx`` (imported only when a call is made; ``pip install
'imagegen[stability]'``) is smaller and has nothing to pin.

Models and the endpoint each one calls, under ``/v2beta/stable-image`` (one image per call;
``n > 1`` runs ``n`` calls at once)::

    model id                          operation            endpoint (POST)
    stable-image-core                 generate             /generate/core
    stable-image-ultra                generate             /generate/ultra
    sd3.5-large, sd3.5-large-turbo,   generate             /generate/sd3 (with ``model=<id>``)
    sd3.5-medium, sd3.5-flash
    stable-image-inpaint              inpaint              /edit/inpaint
    stable-image-outpaint             outpaint             /edit/outpaint
    stable-image-erase                erase                /edit/erase
    stable-image-search-and-replace   search_and_replace   /edit/search-and-replace
    stable-image-remove-background    remove_background    /edit/remove-background
    stable-image-edit                 any of those five edits: the request's operation picks
                                      the endpoint (one catalog entry for "edit with Stability")

Sizes: the generate endpoints take an ``aspect_ratio`` (one of ``ASPECT_RATIOS``), never a
width and height; Stability decides the pixels (about one megapixel, ``OUTPUT_SIZES``). The
requested size is mapped to the nearest ratio, with a warning when it is not exact. Edits keep
the source image's size (outpaint adds its margins).

Errors become imagegen errors here, at the edge: 401 → ``AuthenticationFailed``; 403
``content_moderation`` → ``ContentPolicyViolation(stage="input")``; a 200 whose
``finish-reason`` is ``CONTENT_FILTERED`` (Stability blurred the result) →
``ContentPolicyViolation(stage="output")``; 429 → ``RateLimited`` (with ``Retry-After``);
400/402/404/413/422 → ``ProviderRejected`` carrying Stability's error ``name`` and messages;
5xx, timeouts and connection failures → ``ProviderUnavailable``; a 200 that is not an image →
``ProviderProtocolError``. The key is unwrapped only to build the ``Authorization`` header and
is scrubbed from every message Stability sends back.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import logging
import math
import re
import time
import weakref
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import attrs
from pydantic import SecretStr

from imagegen.application.ports import (
    InputImage,
    ProviderHealth,
    ProviderImage,
    ProviderRequest,
    ProviderResult,
)
from imagegen.domain.errors import (
    AuthenticationFailed,
    ConfigurationError,
    ContentPolicyViolation,
    ImageGenError,
    InvalidParameter,
    ProviderProtocolError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
    UnknownModel,
    UnsupportedOperation,
)
from imagegen.domain.models import Operation
from imagegen.domain.values import ImageFormat, ImageSize, Money, Seed
from imagegen.infrastructure.providers._http import shared_ssl_context

if TYPE_CHECKING:
    import httpx

__all__ = [
    "ASPECT_RATIOS",
    "CREDIT_PRICES",
    "DEFAULT_BASE_URL",
    "EDIT_ENDPOINTS",
    "MAX_STABILITY_SEED",
    "MODELS",
    "OUTPUT_SIZES",
    "PRICES_CHECKED",
    "PRICES_SOURCE",
    "USD_PER_CREDIT",
    "StabilityModel",
    "StabilityProvider",
    "nearest_aspect_ratio",
    "price_usd",
]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL: Final = "https://api.stability.ai"
INSTALL_HINT: Final = "pip install 'imagegen[stability]'"

# Stability takes seeds 0..4294967294; 0 (or no seed) means "pick one at random".
MAX_STABILITY_SEED: Final = 4_294_967_294

# --- endpoints, models and prices ---------------------------------------------------------------

_GENERATE: Final = "/v2beta/stable-image/generate"
_EDIT: Final = "/v2beta/stable-image/edit"
BALANCE_PATH: Final = "/v1/user/balance"

EDIT_ENDPOINTS: Final[Mapping[Operation, str]] = {
    Operation.INPAINT: f"{_EDIT}/inpaint",
    Operation.OUTPAINT: f"{_EDIT}/outpaint",
    Operation.ERASE: f"{_EDIT}/erase",
    Operation.SEARCH_AND_REPLACE: f"{_EDIT}/search-and-replace",
    Operation.REMOVE_BACKGROUND: f"{_EDIT}/remove-background",
}

USD_PER_CREDIT: Final = Decimal("0.01")

# Credits per successful result, by (endpoint, sd3 model). Failed or refused calls are free.
# Keep this the one table of Stability prices: the catalog and the emulator read it.
PRICES_SOURCE: Final = (
    "Stability's v2beta OpenAPI spec, the 'Credits' section of each endpoint "
    "(/work/shared/specs/stability-openapi.json); generation prices match "
    "developer.puter.com/tutorials/stability-ai-api-pricing (June 2026); 1 credit = $0.01"
)
PRICES_CHECKED: Final = "2026-11-22"
CREDIT_PRICES: Final[Mapping[tuple[str, str | None], Decimal]] = {
    (f"{_GENERATE}/core", None): Decimal("3"),
    (f"{_GENERATE}/ultra", None): Decimal("8"),
    (f"{_GENERATE}/sd3", "sd3.5-large"): Decimal("6.5"),
    (f"{_GENERATE}/sd3", "sd3.5-large-turbo"): Decimal("4"),
    (f"{_GENERATE}/sd3", "sd3.5-medium"): Decimal("3.5"),
    (f"{_GENERATE}/sd3", "sd3.5-flash"): Decimal("2.5"),
    (EDIT_ENDPOINTS[Operation.INPAINT], None): Decimal("5"),
    (EDIT_ENDPOINTS[Operation.OUTPAINT], None): Decimal("4"),
    (EDIT_ENDPOINTS[Operation.ERASE], None): Decimal("5"),
    (EDIT_ENDPOINTS[Operation.SEARCH_AND_REPLACE], None): Decimal("5"),
    (EDIT_ENDPOINTS[Operation.REMOVE_BACKGROUND], None): Decimal("5"),
}

# The generate endpoints' aspect ratios, and the pixels Stability returns for each (~1 MP,
# sides multiples of 64 — the SD3 / SDXL resolution buckets).
OUTPUT_SIZES: Final[Mapping[str, tuple[int, int]]] = {
    "21:9": (1536, 640),
    "16:9": (1344, 768),
    "3:2": (1216, 832),
    "5:4": (1152, 896),
    "1:1": (1024, 1024),
    "4:5": (896, 1152),
    "2:3": (832, 1216),
    "9:16": (768, 1344),
    "9:21": (640, 1536),
}
ASPECT_RATIOS: Final[tuple[str, ...]] = tuple(OUTPUT_SIZES)

# Fields each edit endpoint accepts besides ``image`` and ``output_format``.
_TAKES_NEGATIVE: Final = frozenset(
    {
        f"{_GENERATE}/core",
        f"{_GENERATE}/ultra",
        f"{_GENERATE}/sd3",
        EDIT_ENDPOINTS[Operation.INPAINT],
        EDIT_ENDPOINTS[Operation.SEARCH_AND_REPLACE],
    }
)
_TAKES_SEED: Final = frozenset(
    {path for path, _ in CREDIT_PRICES} - {EDIT_ENDPOINTS[Operation.REMOVE_BACKGROUND]}
)
_MAX_OUTPAINT: Final = 2000


@attrs.frozen
class StabilityModel:
    """A model id this adapter serves: the operations it accepts and, for a fixed endpoint,
    that endpoint (``None`` for ``stable-image-edit``, whose operation picks one)."""

    id: str
    operations: frozenset[Operation]
    endpoint: str | None
    sd3_model: str | None = None

    def endpoint_for(self, operation: Operation) -> str:
        if operation not in self.operations:
            allowed = ", ".join(sorted(op.value for op in self.operations))
            raise UnsupportedOperation(
                f"Stability model {self.id!r} cannot {operation.value}; it supports: {allowed}.",
                provider="stability",
                model=self.id,
                operation=operation.value,
            )
        if self.endpoint is not None:
            return self.endpoint
        return EDIT_ENDPOINTS[operation]

    def credits(self, operation: Operation) -> Decimal:
        return CREDIT_PRICES[(self.endpoint_for(operation), self.sd3_model)]


def _models() -> dict[str, StabilityModel]:
    gen = frozenset({Operation.GENERATE})
    models = [
        StabilityModel("stable-image-core", gen, f"{_GENERATE}/core"),
        StabilityModel("stable-image-ultra", gen, f"{_GENERATE}/ultra"),
        *(
            StabilityModel(name, gen, f"{_GENERATE}/sd3", sd3_model=name)
            for name in ("sd3.5-large", "sd3.5-large-turbo", "sd3.5-medium", "sd3.5-flash")
        ),
        *(
            StabilityModel("stable-image-" + path.rsplit("/", 1)[1], frozenset({operation}), path)
            for operation, path in EDIT_ENDPOINTS.items()
        ),
        StabilityModel("stable-image-edit", frozenset(EDIT_ENDPOINTS), None),
    ]
    return {m.id: m for m in models}


MODELS: Final[Mapping[str, StabilityModel]] = _models()


def price_usd(model: str, operation: Operation = Operation.GENERATE) -> Money:
    """What one result of ``model`` doing ``operation`` costs at Stability, in USD."""
    spec = _model(model)
    return Money(spec.credits(operation) * USD_PER_CREDIT)


def nearest_aspect_ratio(size: ImageSize) -> str:
    """The generate endpoints' aspect ratio closest to ``size`` (compared on a log scale, so
    2:1 and 1:2 are equally far from 1:1)."""
    target = math.log(size.width / size.height)

    def distance(ratio: str) -> float:
        w, h = OUTPUT_SIZES[ratio]
        return abs(math.log(w / h) - target)

    return min(ASPECT_RATIOS, key=distance)


def _model(model: str) -> StabilityModel:
    spec = MODELS.get(model)
    if spec is None:
        raise UnknownModel(
            f"Unknown Stability model {model!r}; available: {', '.join(MODELS)}.",
            provider="stability",
            model=model,
        )
    return spec


# --- the adapter ---------------------------------------------------------------------------------


@attrs.frozen
class _Call:
    """One HTTP call, ready to send: endpoint, multipart parts and what to expect back."""

    model: StabilityModel
    path: str
    fields: tuple[tuple[str, str], ...]
    files: tuple[tuple[str, InputImage], ...]
    format: ImageFormat
    seed: int | None
    credits: Decimal


class StabilityProvider:
    """``ImageProvider`` named ``"stability"``: Stability AI's v2beta REST API.

    ``base_url`` is the API's root (``https://api.stability.ai`` by default, or an emulator's
    ``http://127.0.0.1:<port>``); endpoint paths are added to it. ``timeout_s`` bounds each
    HTTP request. A missing key or a missing ``httpx`` surfaces as ``ConfigurationError`` when
    a call is made (``health()`` reports it instead), so building the provider never fails for
    want of either.

    Each ``generate`` opens its own ``httpx.AsyncClient`` (shared by the ``n`` calls it runs
    concurrently): a pooled client is bound to the event loop that created it, and this
    provider is used from more than one loop (the sync facade's thread, tests).
    """

    def __init__(
        self, *, api_key: SecretStr | None, base_url: str | None = None, timeout_s: float = 120.0
    ) -> None:
        if not timeout_s > 0 or not math.isfinite(timeout_s):
            raise ConfigurationError("The Stability request timeout must be a positive number.")
        url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ConfigurationError(
                f"The Stability base URL {base_url!r} is not an http(s) URL "
                f"(for example {DEFAULT_BASE_URL}).",
                setting="stability_base_url",
            )
        if api_key is not None and not api_key.get_secret_value().strip():
            api_key = None
        self._api_key = api_key
        self._base_url = url
        self._timeout_s = timeout_s
        # One client per event loop: its connection pool is tied to the loop that opened it,
        # and reusing it spares every call a new client (and connection).
        self._client: httpx.AsyncClient | None = None
        self._client_loop: weakref.ref[asyncio.AbstractEventLoop] | None = None

    def _shared_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if (
            self._client is not None
            and self._client_loop is not None
            and self._client_loop() is loop
        ):
            return self._client
        httpx = _import_httpx()
        self._client = httpx.AsyncClient(
            base_url=self._base_url,
            timeout=httpx.Timeout(self._timeout_s),
            headers=self._headers(accept="image/*"),
            verify=shared_ssl_context(),
        )
        self._client_loop = weakref.ref(loop)
        return self._client

    async def aclose(self) -> None:
        """Close the connections of the client built on the running loop, if any."""
        client, self._client, self._client_loop = self._client, None, None
        if client is not None:
            await client.aclose()

    @property
    def name(self) -> str:
        return "stability"

    def __repr__(self) -> str:
        key = "set" if self._api_key is not None else "missing"
        return f"StabilityProvider(base_url={self._base_url!r}, api_key=<{key}>)"

    async def resume(self, job_id: str, request: ProviderRequest) -> ProviderResult:
        raise UnsupportedOperation(
            "Stability's image endpoints answer synchronously; there is no job to resume.",
            provider=self.name,
        )

    # --- generate -------------------------------------------------------------------------------

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        model = _model(request.model)
        if request.n < 1:
            raise InvalidParameter(f"Stability needs n >= 1; got {request.n}.", n=request.n)
        warnings: list[str] = []
        calls = [self._plan(model, request, index, warnings) for index in range(request.n)]
        client = self._shared_client()
        if len(calls) == 1:
            images = [await self._send(client, calls[0])]
        else:
            images = await _gather_first_error([self._send(client, c) for c in calls])
        credits = sum((c.credits for c in calls), Decimal(0))
        return ProviderResult(
            images=tuple(images),
            provider_job_id=None,
            cost_usd=Money(credits * USD_PER_CREDIT),
            warnings=tuple(dict.fromkeys(warnings)),
        )

    def _plan(
        self, model: StabilityModel, request: ProviderRequest, index: int, warnings: list[str]
    ) -> _Call:
        operation = request.operation
        path = model.endpoint_for(operation)
        fields: list[tuple[str, str]] = []
        files: list[tuple[str, InputImage]] = []

        if operation is Operation.GENERATE:
            if request.images or request.mask is not None:
                raise InvalidParameter(
                    "Stability's generate endpoints take no input images here; use an edit "
                    "operation (inpaint, outpaint, erase, search_and_replace, "
                    "remove_background).",
                    provider=self.name,
                )
            fields.append(("prompt", request.prompt))
            ratio = nearest_aspect_ratio(request.size)
            if OUTPUT_SIZES[ratio] != (request.size.width, request.size.height):
                w, h = OUTPUT_SIZES[ratio]
                warnings.append(
                    f"Stability takes an aspect ratio, not a size: {request.size} was sent as "
                    f"{ratio}, which Stability renders at {w}x{h}."
                )
            fields.append(("aspect_ratio", ratio))
            if model.sd3_model is not None:
                fields.append(("model", model.sd3_model))
        else:
            source = self._source(request, operation)
            files.append(("image", source))
            if operation is Operation.INPAINT:
                fields.append(("prompt", request.prompt))
                if request.mask is not None:
                    files.append(("mask", request.mask))
            elif operation is Operation.ERASE:
                if request.mask is not None:
                    files.append(("mask", request.mask))
            elif operation is Operation.OUTPAINT:
                fields.extend(self._outpaint_fields(request))
                if request.prompt.strip():
                    fields.append(("prompt", request.prompt))
            elif operation is Operation.SEARCH_AND_REPLACE:
                search = (request.search_prompt or "").strip()
                if not search:
                    raise InvalidParameter(
                        "Search-and-replace needs a search_prompt: what to find in the image.",
                        provider=self.name,
                    )
                fields.append(("prompt", request.prompt))
                fields.append(("search_prompt", search))
            if request.mask is not None and operation not in {Operation.INPAINT, Operation.ERASE}:
                warnings.append(f"Stability's {operation.value} takes no mask; it was not sent.")
            if len(request.images) > 1:
                warnings.append(
                    f"Stability's {operation.value} edits one image; only the first was sent."
                )

        if request.negative_prompt:
            if path in _TAKES_NEGATIVE:
                fields.append(("negative_prompt", request.negative_prompt))
            else:
                warnings.append(
                    f"Stability's {operation.value} takes no negative prompt; it was not sent."
                )

        seed = self._seed(request.seed, index, path, warnings)
        if seed is not None:
            fields.append(("seed", str(seed)))

        fmt = request.format
        if operation is Operation.REMOVE_BACKGROUND and fmt is ImageFormat.JPEG:
            raise InvalidParameter(
                "Stability's remove_background returns png or webp (the result is "
                "transparent); jpeg has no alpha channel.",
                provider=self.name,
                format=fmt.value,
            )
        fields.append(("output_format", fmt.value))
        return _Call(
            model=model,
            path=path,
            fields=tuple(fields),
            files=tuple(files),
            format=fmt,
            seed=seed,
            credits=model.credits(operation),
        )

    def _source(self, request: ProviderRequest, operation: Operation) -> InputImage:
        if not request.images:
            raise InvalidParameter(
                f"Stability's {operation.value} needs the image to edit (none was given).",
                provider=self.name,
                operation=operation.value,
            )
        return request.images[0]

    def _outpaint_fields(self, request: ProviderRequest) -> list[tuple[str, str]]:
        margins = request.outpaint
        sides = (
            {"left": margins.left, "right": margins.right, "up": margins.up, "down": margins.down}
            if margins is not None
            else {}
        )
        if not any(sides.values()):
            raise InvalidParameter(
                "Outpainting needs at least one margin (left, right, up or down) above 0.",
                provider=self.name,
            )
        for side, pixels in sides.items():
            if not 0 <= pixels <= _MAX_OUTPAINT:
                raise InvalidParameter(
                    f"Stability outpaints 0..{_MAX_OUTPAINT} pixels per side; {side} is {pixels}.",
                    provider=self.name,
                    side=side,
                    pixels=pixels,
                )
        return [(side, str(pixels)) for side, pixels in sides.items() if pixels]

    def _seed(self, seed: Seed | None, index: int, path: str, warnings: list[str]) -> int | None:
        if seed is None:
            return None
        if path not in _TAKES_SEED:
            warnings.append("Stability's remove_background takes no seed; it was not sent.")
            return None
        if seed.value == 0:
            warnings.append("Stability treats seed 0 as 'random'; the seed it used is reported.")
            return None
        if seed.value > MAX_STABILITY_SEED:
            raise InvalidParameter(
                f"Stability accepts seeds 1..{MAX_STABILITY_SEED}; got {seed.value}.",
                provider=self.name,
                seed=seed.value,
            )
        # The i-th image of a batch gets seed + i, wrapping within 1..MAX (0 would be random).
        return (seed.value - 1 + index) % MAX_STABILITY_SEED + 1

    def _headers(self, *, accept: str) -> dict[str, str]:
        if self._api_key is None:
            raise ConfigurationError(
                "Stability needs an API key: set IMAGEGEN_STABILITY_API_KEY (or "
                "STABILITY_API_KEY).",
                provider=self.name,
                setting="stability_api_key",
            )
        return {
            # The one place the key is unwrapped.
            "authorization": f"Bearer {self._api_key.get_secret_value()}",
            "accept": accept,
            "stability-client-id": "imagegen",
            "stability-client-version": _client_version(),
        }

    async def _send(self, client: httpx.AsyncClient, call: _Call) -> ProviderImage:
        httpx = _import_httpx()
        parts: list[tuple[str, Any]] = [(name, (None, value)) for name, value in call.fields]
        for name, image in call.files:
            parts.append(
                (name, (f"{name}.{image.format.extension}", image.data, image.format.mime_type))
            )
        started = time.perf_counter()
        try:
            # The multipart body is joined into one buffer up front: streamed, httpx writes it
            # as ~18 small chunks (one socket send, and one TLS record, each) on the event loop.
            request = client.build_request("POST", call.path, files=parts)
            request.read()
            response = await client.send(request)
        except httpx.TimeoutException as exc:
            raise ProviderUnavailable(
                f"Stability did not answer within {self._timeout_s:g} s ({call.path}).",
                provider=self.name,
                endpoint=call.path,
                reason="timeout",
            ) from exc
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(
                f"Could not reach Stability at {self._base_url} ({type(exc).__name__}).",
                provider=self.name,
                endpoint=call.path,
                reason="connection",
            ) from exc
        log.debug(
            "stability %s -> %s in %.0f ms",
            call.path,
            response.status_code,
            (time.perf_counter() - started) * 1000,
        )
        if response.status_code != 200:
            raise self._error(response, call.path)
        return self._image(response, call)

    def _image(self, response: httpx.Response, call: _Call) -> ProviderImage:
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if not content_type.startswith("image/"):
            raise ProviderProtocolError(
                f"Stability answered {call.path} with {content_type or 'no content type'}, "
                "not the image asked for.",
                provider=self.name,
                endpoint=call.path,
                content_type=content_type,
            )
        finish = response.headers.get("finish-reason", "SUCCESS").strip().upper()
        if finish == "CONTENT_FILTERED":
            raise ContentPolicyViolation(
                "Stability's content moderation filtered the generated image (it was blurred); "
                "nothing was kept.",
                stage="output",
                provider=self.name,
                request_id=response.headers.get("x-request-id"),
            )
        if finish != "SUCCESS":
            raise ProviderProtocolError(
                f"Stability reported an unknown finish-reason {finish[:40]!r}.",
                provider=self.name,
                endpoint=call.path,
            )
        data = response.content
        sniffed = _sniff(data)
        if sniffed is None:
            raise ProviderProtocolError(
                f"Stability's answer from {call.path} is not a PNG, JPEG or WebP image.",
                provider=self.name,
                endpoint=call.path,
                byte_size=len(data),
            )
        if sniffed is not call.format:
            raise ProviderProtocolError(
                f"Stability returned {sniffed.value} where {call.format.value} was asked for.",
                provider=self.name,
                endpoint=call.path,
            )
        seed = _parse_seed(response.headers.get("seed"))
        if seed is None and call.seed is not None:
            seed = Seed(call.seed)
        return ProviderImage(data=data, seed=seed)

    def _error(self, response: httpx.Response, path: str) -> ImageGenError:
        status = response.status_code
        name, messages, request_id = _error_body(response)
        scrub = self._scrub
        name = scrub(name) if name else ""
        messages = [scrub(m) for m in messages]
        summary = "; ".join(messages)[:500] or f"HTTP {status}"
        details: dict[str, Any] = {
            "provider": self.name,
            "status": status,
            "endpoint": path,
            "error_name": name or None,
            "errors": messages,
            "request_id": request_id,
        }
        if status == 401:
            return AuthenticationFailed(f"Stability refused the API key ({summary}).", **details)
        if status == 403:
            if name == "content_moderation":
                return ContentPolicyViolation(
                    f"Stability's content moderation refused the request: {summary}",
                    stage="input",
                    **details,
                )
            return AuthenticationFailed(
                f"Stability refused access with this key ({name or 'forbidden'}: {summary}).",
                **details,
            )
        if status == 429:
            retry_after = _retry_after(response.headers.get("retry-after"))
            return RateLimited(
                f"Stability's rate limit was hit ({summary}).", retry_after=retry_after, **details
            )
        if status in {408, 425} or status >= 500:
            return ProviderUnavailable(f"Stability failed with HTTP {status}: {summary}", **details)
        return ProviderRejected(
            f"Stability rejected the request (HTTP {status}{', ' + name if name else ''}): "
            f"{summary}",
            **details,
        )

    def _scrub(self, text: str) -> str:
        if self._api_key is not None:
            key = self._api_key.get_secret_value()
            if key:
                text = text.replace(key, "[redacted]")
        return _KEYLIKE.sub("[redacted]", text)

    # --- health -----------------------------------------------------------------------------------

    async def health(self) -> ProviderHealth:
        """``GET /v1/user/balance``: answers, accepts the key, and reports the credits left."""
        started = time.perf_counter()

        def result(ok: bool, detail: str) -> ProviderHealth:
            latency = (time.perf_counter() - started) * 1000
            return ProviderHealth(self.name, ok=ok, latency_ms=round(latency, 1), detail=detail)

        try:
            httpx = _import_httpx()
            headers = self._headers(accept="application/json")
            async with httpx.AsyncClient(
                base_url=self._base_url,
                timeout=httpx.Timeout(self._timeout_s),
                headers=headers,
                verify=shared_ssl_context(),
            ) as client:
                response = await client.get(BALANCE_PATH)
            if response.status_code != 200:
                error = self._error(response, BALANCE_PATH)
                return result(False, f"{type(error).__name__}: {error.message}")
            credits = response.json().get("credits")
            if isinstance(credits, bool) or not isinstance(credits, int | float):
                return result(False, "Stability's balance answer has no number of credits.")
            return result(True, f"{credits:g} credits left")
        except ImageGenError as exc:
            return result(False, f"{type(exc).__name__}: {self._scrub(exc.message)}")
        except Exception as exc:  # health never raises: any failure is a finding
            return result(False, f"{type(exc).__name__}: {self._scrub(str(exc))[:200]}")


# --- helpers -------------------------------------------------------------------------------------

_KEYLIKE: Final = re.compile(r"(?i)\bbearer\s+\S+|\bsk-[A-Za-z0-9_\-]{6,}")
_SIGNATURES: Final = (
    (b"\x89PNG\r\n\x1a\n", ImageFormat.PNG),
    (b"\xff\xd8\xff", ImageFormat.JPEG),
)


def _import_httpx() -> Any:
    try:
        import httpx
    except ImportError as exc:
        raise ConfigurationError(
            f"The Stability provider needs httpx: {INSTALL_HINT}", extra="stability"
        ) from exc
    return httpx


@functools.cache
def _client_version() -> str:
    """imagegen's version for the ``stability-client-version`` header (from the installed
    distribution: importing ``imagegen`` itself here would reach into the outer layers)."""
    try:
        return importlib.metadata.version("imagegen")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def _sniff(data: bytes) -> ImageFormat | None:
    for signature, fmt in _SIGNATURES:
        if data.startswith(signature):
            return fmt
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ImageFormat.WEBP
    return None


def _parse_seed(value: str | None) -> Seed | None:
    if value is None:
        return None
    try:
        number = int(value.strip())
        return Seed(number)
    except (ValueError, ImageGenError):
        return None


def _error_body(response: httpx.Response) -> tuple[str, list[str], str | None]:
    """Stability's error shape: ``{"id", "name", "errors": [...]}`` (v2beta) or
    ``{"id", "name", "message"}`` (v1). Anything else yields the status line only."""
    try:
        body = response.json()
    except ValueError:
        return "", [], None
    if not isinstance(body, dict):
        return "", [], None
    name = body.get("name")
    raw = body.get("errors")
    messages: list[str] = []
    if isinstance(raw, list):
        messages = [str(m)[:300] for m in raw[:10]]
    elif isinstance(body.get("message"), str):
        messages = [body["message"][:300]]
    request_id = body.get("id")
    return (
        str(name)[:100] if isinstance(name, str) else "",
        messages,
        str(request_id)[:100] if isinstance(request_id, str) else None,
    )


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


async def _gather_first_error(coroutines: Sequence[Any]) -> list[ProviderImage]:
    """Run the calls concurrently; on the first failure cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    failed = next((t for t in tasks if t.done() and not t.cancelled() and t.exception()), None)
    if failed is not None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        error = failed.exception()
        assert error is not None
        raise error
    return [task.result() for task in tasks]
