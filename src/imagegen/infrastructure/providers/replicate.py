"""The Replicate provider: Black Forest Labs' FLUX models through Replicate's predictions API.

One call, step by step:

1. ``build_input`` turns the ``ProviderRequest`` into the model's ``input`` (the table
   ``REPLICATE_MODELS`` says what each model takes). Nothing reaches the network if the request
   cannot be served.
2. ``POST /v1/models/{owner}/{name}/predictions`` with ``Prefer: wait=N`` (sync mode: Replicate
   holds the request up to N ≤ 60 s and usually answers with the finished prediction).
3. ``request.on_job_created(prediction_id)`` at once — before any waiting — so the use case can
   persist the id and a crashed process ``resume()``\\ s instead of paying twice.
4. If the prediction is not finished, poll ``GET /v1/predictions/{id}`` until it reaches a
   terminal status or the overall deadline passes (then it is canceled, so nobody pays for an
   image no one will collect).
5. ``succeeded``: download every output file (URL or data URI) and return the bytes.
   ``failed``: a content-policy refusal or Replicate's error; ``canceled`` / ``aborted``:
   ``ProviderUnavailable``.

The official ``replicate`` client (1.0.7) is used for what it does well — credentials, base
URL, user agent, and its transport that retries idempotent requests on 429/503/504 honouring
``Retry-After`` — through its ``httpx`` client. Its resource methods are not used: its
``Prediction`` model rejects the documented ``aborted`` status (a pydantic error on every poll
of such a prediction; ``Prediction.wait()`` never treats it as terminal), and ``ReplicateError``
drops the response headers and the 429 body's ``retry_after``. The client never retries a
``POST``: creating a prediction is not idempotent, so a refused create surfaces as a typed
error for the resilience layer to retry.

Errors, all translated here (the API token never appears in any of them):

=============================================  ================================================
Replicate says                                 imagegen raises
=============================================  ================================================
401 / 403                                      ``AuthenticationFailed``
429 (``retry_after`` / ``Retry-After``)        ``RateLimited(retry_after=…)``
5xx, timeout, connection refused               ``ProviderUnavailable``
400, 402, 404, 409, 413, 422 (``detail``)      ``ProviderRejected``
not JSON, not a prediction, no output          ``ProviderProtocolError``
prediction ``failed``: NSFW / flagged          ``ContentPolicyViolation(stage="output")``
prediction ``failed``: anything else           ``ProviderRejected`` (Replicate's error text)
prediction ``canceled`` / ``aborted``          ``ProviderUnavailable``
=============================================  ================================================

Errors raised after the prediction exists carry its id in ``details["job_id"]``: retry those
with ``resume(job_id, request)``, not ``generate`` (which would create — and pay for — another).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import email.utils
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from fractions import Fraction
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
    UnsupportedOperation,
)
from imagegen.domain.models import Operation
from imagegen.domain.values import ImageFormat, ImageSize
from imagegen.infrastructure.providers._http import shared_ssl_context

if TYPE_CHECKING:
    import httpx

__all__ = [
    "FLUX1_SIZES",
    "REPLICATE_MODELS",
    "CustomSize",
    "ReplicateModel",
    "ReplicateProvider",
    "build_input",
]

_log = logging.getLogger(__name__)

PROVIDER_NAME: Final = "replicate"
_INSTALL_HINT: Final = "pip install 'imagegen[replicate]'"
_SETUP_HINT: Final = (
    "Set IMAGEGEN_REPLICATE_API_TOKEN (or REPLICATE_API_TOKEN) to a Replicate API token."
)
_HEALTH_TIMEOUT_S: Final = 15.0
_MAX_WAIT_S: Final = 60  # Replicate holds a sync-mode request at most 60 s
_MAX_OUTPUT_BYTES: Final = 64 * 1024 * 1024  # per output file; a FLUX image is a few MB at most
_RATIO_TOLERANCE: Final = 0.02  # sides in multiples of 16/32 rarely give the exact ratio
_MAX_DETAIL: Final = 500  # characters of Replicate's error text kept in a message
_TERMINAL: Final = frozenset({"succeeded", "failed", "canceled", "aborted"})
_STATUSES: Final = _TERMINAL | {"starting", "processing"}
_MODEL_RE: Final = re.compile(r"^([A-Za-z0-9][\w.-]*)/([A-Za-z0-9][\w.-]*)$")
_JOB_ID_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
# Replicate's own refusals: FLUX.1's safety checker ("All generated images contained NSFW
# content…"), BFL's moderation on the pro models ("…flagged as sensitive… (E005)").
_REFUSAL_RE: Final = re.compile(
    r"nsfw|flagged as sensitive|\(E005\)|content moderat|safety (?:filter|checker)",
    re.IGNORECASE,
)
_THROTTLE_RE: Final = re.compile(
    r"(?:available in|resets in)\s*~?\s*(\d+(?:\.\d+)?)\s*(?:s\b|sec|second)", re.IGNORECASE
)


# --- what each model takes ---------------------------------------------------------------------


@attrs.frozen
class CustomSize:
    """Pixel sizes a model takes with ``aspect_ratio="custom"``: each side within bounds and a
    multiple of ``multiple_of`` (Replicate rounds other values, so we round first)."""

    min_side: int
    max_side: int
    multiple_of: int = 32


@attrs.frozen
class ReplicateModel:
    """How one Replicate model takes its ``input``.

    ``aspect_ratios`` is the model's ``aspect_ratio`` enum without ``custom`` and
    ``match_input_image`` (those are ``custom_size`` and ``match_input``). ``sizes`` is what
    each ratio makes, when known exactly (FLUX.1, whose ``megapixels="0.25"`` halves each side).
    ``max_outputs`` above 1 means the model has ``num_outputs``. ``edit_field`` is where an
    edit's source image goes: ``input_image`` (one image) or ``input_images`` (a list of up to
    ``max_input_images``).
    """

    aspect_ratios: tuple[str, ...]
    formats: tuple[ImageFormat, ...]
    max_outputs: int = 1
    custom_size: CustomSize | None = None
    sizes: Mapping[str, tuple[int, int]] | None = None
    edit_field: str | None = None
    max_input_images: int = 0
    match_input: bool = False

    @property
    def operations(self) -> frozenset[Operation]:
        if self.edit_field is None:
            return frozenset({Operation.GENERATE})
        return frozenset({Operation.GENERATE, Operation.EDIT})


_ALL_FORMATS: Final = (ImageFormat.WEBP, ImageFormat.JPEG, ImageFormat.PNG)
_JPG_PNG: Final = (ImageFormat.JPEG, ImageFormat.PNG)
# What FLUX.1 [schnell] and [dev] make per aspect ratio at megapixels="1" (cog-flux's table).
FLUX1_SIZES: Final[Mapping[str, tuple[int, int]]] = {
    "1:1": (1024, 1024), "16:9": (1344, 768), "21:9": (1536, 640), "3:2": (1216, 832),
    "2:3": (832, 1216), "4:5": (896, 1088), "5:4": (1088, 896), "3:4": (896, 1152),
    "4:3": (1152, 896), "9:16": (768, 1344), "9:21": (640, 1536),
}  # fmt: skip
_FLUX1_RATIOS: Final = tuple(FLUX1_SIZES)
_PRO_RATIOS: Final = ("1:1", "16:9", "3:2", "2:3", "4:5", "5:4", "9:16", "3:4", "4:3")
_KONTEXT_RATIOS: Final = (*_FLUX1_RATIOS, "2:1", "1:2")
_KONTEXT: Final = ReplicateModel(
    _KONTEXT_RATIOS, _JPG_PNG, edit_field="input_image", max_input_images=1, match_input=True
)

# The official FLUX models on Replicate (their published input schemas). A model missing here
# gets ``_GENERIC``: prompt, seed, aspect_ratio, output_format (and num_outputs when n > 1).
REPLICATE_MODELS: Final[Mapping[str, ReplicateModel]] = {
    "black-forest-labs/flux-schnell": ReplicateModel(
        _FLUX1_RATIOS, _ALL_FORMATS, max_outputs=4, sizes=FLUX1_SIZES
    ),
    "black-forest-labs/flux-dev": ReplicateModel(
        _FLUX1_RATIOS, _ALL_FORMATS, max_outputs=4, sizes=FLUX1_SIZES
    ),
    "black-forest-labs/flux-1.1-pro": ReplicateModel(
        _PRO_RATIOS, _ALL_FORMATS, custom_size=CustomSize(256, 1440)
    ),
    "black-forest-labs/flux-1.1-pro-ultra": ReplicateModel(_FLUX1_RATIOS, _JPG_PNG),
    "black-forest-labs/flux-kontext-pro": _KONTEXT,
    "black-forest-labs/flux-kontext-max": _KONTEXT,
    "black-forest-labs/flux-2-pro": ReplicateModel(
        _PRO_RATIOS,
        _ALL_FORMATS,
        custom_size=CustomSize(256, 2048),
        edit_field="input_images",
        max_input_images=8,
        match_input=True,
    ),
    "black-forest-labs/flux-2-dev": ReplicateModel(
        _PRO_RATIOS,
        _ALL_FORMATS,
        custom_size=CustomSize(256, 1440),
        edit_field="input_images",
        max_input_images=4,
        match_input=True,
    ),
}
_GENERIC: Final = ReplicateModel(_FLUX1_RATIOS, _ALL_FORMATS, max_outputs=4)


def build_input(request: ProviderRequest) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The ``input`` for ``request.model`` and the warnings about what had to change.

    Raises ``UnsupportedOperation`` / ``InvalidParameter`` for what the model cannot do."""
    spec = REPLICATE_MODELS.get(request.model, _GENERIC)
    operation = request.operation
    if operation not in spec.operations:
        raise UnsupportedOperation(
            f"Replicate's {request.model} cannot {operation.value.replace('_', ' ')} images.",
            provider=PROVIDER_NAME,
            model=request.model,
            operation=operation.value,
        )
    if not 1 <= request.n <= spec.max_outputs:
        raise InvalidParameter(
            f"Replicate's {request.model} makes 1 to {spec.max_outputs} images per call; "
            f"got n={request.n}.",
            n=request.n,
            max_images_per_call=spec.max_outputs,
        )
    if request.format not in spec.formats:
        offered = ", ".join(f.value for f in spec.formats)
        raise InvalidParameter(
            f"Replicate's {request.model} writes {offered}, not {request.format.value}.",
            format=request.format.value,
        )
    warnings: list[str] = []
    if spec is _GENERIC:
        warnings.append(
            f"imagegen does not know the inputs of Replicate's {request.model}; it was sent "
            "the common FLUX ones (prompt, seed, aspect_ratio, output_format)."
        )
    data: dict[str, Any] = {"prompt": request.prompt}
    if request.seed is not None:
        data["seed"] = request.seed.value
    data["output_format"] = request.format.extension  # jpeg is "jpg" on Replicate
    if spec.max_outputs > 1 and (request.n > 1 or spec is not _GENERIC):
        data["num_outputs"] = request.n
    source: InputImage | None = None
    if operation is Operation.EDIT:
        source = _add_images(data, request, spec)
    data.update(_size_input(request.model, request.size, spec, source, warnings))
    if request.negative_prompt:
        warnings.append(f"Replicate's {request.model} has no negative prompt; it was not sent.")
    if request.mask is not None:
        warnings.append(f"Replicate's {request.model} takes no mask; it was not sent.")
    return data, tuple(warnings)


def _add_images(data: dict[str, Any], request: ProviderRequest, spec: ReplicateModel) -> InputImage:
    if not request.images:
        raise InvalidParameter(
            f"Editing with Replicate's {request.model} needs the source image.",
            operation=request.operation.value,
        )
    if len(request.images) > spec.max_input_images:
        raise InvalidParameter(
            f"Replicate's {request.model} takes at most {spec.max_input_images} input "
            f"image(s); got {len(request.images)}.",
            max_input_images=spec.max_input_images,
        )
    uris = [_data_uri(image) for image in request.images]
    data[str(spec.edit_field)] = uris if spec.edit_field == "input_images" else uris[0]
    return request.images[0]


def _data_uri(image: InputImage) -> str:
    return f"data:{image.format.mime_type};base64,{base64.b64encode(image.data).decode('ascii')}"


def _size_input(
    model: str,
    size: ImageSize,
    spec: ReplicateModel,
    source: InputImage | None,
    warnings: list[str],
) -> dict[str, Any]:
    wanted = Fraction(size.width, size.height)
    if source is not None and spec.match_input and Fraction(source.width, source.height) == wanted:
        return {"aspect_ratio": "match_input_image"}
    custom = spec.custom_size
    if custom is not None:
        width, height = (_round_to(side, custom.multiple_of) for side in (size.width, size.height))
        if all(custom.min_side <= side <= custom.max_side for side in (width, height)):
            if (width, height) != (size.width, size.height):
                warnings.append(
                    f"Replicate's {model} takes sides in multiples of {custom.multiple_of}: "
                    f"{size} was sent as {width}x{height}."
                )
            return {"aspect_ratio": "custom", "width": width, "height": height}
    if spec.sizes is not None:
        return _table_size(model, size, spec.sizes, warnings)
    ratio = _nearest_ratio(spec.aspect_ratios, wanted)
    if abs(math.log(_ratio(ratio) / wanted)) > _RATIO_TOLERANCE:
        warnings.append(
            f"Replicate's {model} takes aspect ratios, not sizes: {size} was sent as the "
            f"nearest ratio it offers, {ratio}."
        )
    return {"aspect_ratio": ratio}


def _table_size(
    model: str, size: ImageSize, table: Mapping[str, tuple[int, int]], warnings: list[str]
) -> dict[str, Any]:
    """FLUX.1: a ratio and a megapixels level; exact when ``size`` is one the model makes."""
    for ratio, (width, height) in table.items():
        if (size.width, size.height) == (width, height):
            return {"aspect_ratio": ratio}
        if (size.width, size.height) == (width // 2, height // 2):
            return {"aspect_ratio": ratio, "megapixels": "0.25"}
    ratio = _nearest_ratio(tuple(table), Fraction(size.width, size.height))
    data: dict[str, Any] = {"aspect_ratio": ratio}
    width, height = table[ratio]
    if size.pixels <= 512 * 1024:  # nearer to 0.25 MP than to 1 MP (geometrically)
        data["megapixels"] = "0.25"
        width, height = width // 2, height // 2
    warnings.append(
        f"Replicate's {model} does not make {size} images: it was sent as {ratio}, "
        f"which makes {width}x{height}."
    )
    return data


def _nearest_ratio(ratios: tuple[str, ...], wanted: Fraction) -> str:
    return min(ratios, key=lambda r: abs(math.log(_ratio(r) / wanted)))


def _ratio(text: str) -> Fraction:
    width, height = text.split(":")
    return Fraction(int(width), int(height))


def _round_to(value: int, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


# --- the wire: predictions as Replicate returns them -------------------------------------------


@attrs.frozen
class _Prediction:
    id: str
    model: str | None
    status: str
    output: Any
    error: str | None
    data_removed: bool

    @property
    def finished(self) -> bool:
        return self.status in _TERMINAL

    @classmethod
    def parse(cls, response: httpx.Response) -> _Prediction:
        data = _json_object(response, "a prediction")
        pid, status = data.get("id"), data.get("status")
        if not isinstance(pid, str) or not pid or not isinstance(status, str):
            raise ProviderProtocolError(
                "Replicate answered with something that is not a prediction (no id or status).",
                provider=PROVIDER_NAME,
            )
        if status not in _STATUSES:
            raise ProviderProtocolError(
                f"Replicate's prediction {pid} has an unknown status {status[:40]!r}.",
                provider=PROVIDER_NAME,
                job_id=pid,
            )
        error = data.get("error")
        model = data.get("model")
        return cls(
            id=pid,
            model=model if isinstance(model, str) else None,
            status=status,
            output=data.get("output"),
            error=str(error) if error not in (None, "") else None,
            data_removed=data.get("data_removed") is True,
        )


def _json_object(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ProviderProtocolError(
            f"Replicate answered {response.status_code} with a body that is not {what} "
            "(not a JSON object).",
            provider=PROVIDER_NAME,
            status=response.status_code,
        )
    return data


def _detail(response: httpx.Response) -> str:
    """Replicate's problem text (``detail``, else ``title``, else the raw body), shortened."""
    try:
        data = response.json()
    except ValueError:
        data = None
    text = ""
    if isinstance(data, dict):
        text = str(data.get("detail") or data.get("title") or "")
    if not text:
        text = response.text.strip() or response.reason_phrase
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait: the body's ``retry_after``, else ``Retry-After`` (seconds or an HTTP
    date), else the "Expected available in N seconds" of Replicate's ``detail``."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        value = data.get("retry_after")
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
    header = response.headers.get("retry-after", "").strip()
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(header)
        except (TypeError, ValueError):
            when = None
        if when is not None:
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return max(0.0, (when - datetime.now(UTC)).total_seconds())
    match = _THROTTLE_RE.search(_detail(response))
    return float(match.group(1)) if match else None


def _raise_for_status(response: httpx.Response, action: str, job_id: str | None = None) -> None:
    status = response.status_code
    if status < 400:
        return
    detail = _detail(response)
    context: dict[str, Any] = {"provider": PROVIDER_NAME, "status": status}
    if job_id is not None:
        context["job_id"] = job_id
    if status in (401, 403):
        raise AuthenticationFailed(
            f"Replicate refused the API token ({status}: {detail}). {_SETUP_HINT}", **context
        )
    if status == 429:
        retry_after = _retry_after(response)
        wait = f"; retry after {retry_after:g}s" if retry_after is not None else ""
        raise RateLimited(
            f"Replicate throttled the request to {action} ({detail}){wait}.",
            retry_after=retry_after,
            **context,
        )
    if status >= 500:
        raise ProviderUnavailable(f"Replicate failed to {action} ({status}: {detail}).", **context)
    raise ProviderRejected(f"Replicate refused to {action} ({status}: {detail}).", **context)


# --- the adapter -------------------------------------------------------------------------------


class ReplicateProvider:
    """``ImageProvider`` named ``"replicate"``: FLUX models on Replicate, official client.

    ``timeout_s`` bounds each HTTP request (a sync-mode create may also take ``wait_s``);
    ``deadline_s`` bounds the whole wait for a prediction, create and polling together (then
    it is canceled); ``wait_s`` is the ``Prefer: wait`` hold, 1–60 s, 0 for plain async mode;
    ``poll_interval_s`` is the pause between polls.
    """

    def __init__(
        self,
        *,
        api_token: SecretStr | None,
        base_url: str | None = None,
        timeout_s: float = 120.0,
        poll_interval_s: float = 1.0,
        wait_s: int = 60,
        deadline_s: float = 180.0,
    ) -> None:
        for label, value in (("timeout_s", timeout_s), ("deadline_s", deadline_s)):
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{label} must be a finite number of seconds > 0")
        if not (poll_interval_s >= 0 and math.isfinite(poll_interval_s)):
            raise ValueError("poll_interval_s must be a finite number of seconds >= 0")
        if not 0 <= wait_s <= _MAX_WAIT_S:
            raise ValueError(f"wait_s must be between 0 (no sync mode) and {_MAX_WAIT_S}")
        self._token = api_token
        self._base_url = _normalise_base_url(base_url)
        self._timeout_s = timeout_s
        self._poll_interval_s = poll_interval_s
        self._wait_s = wait_s
        self._deadline_s = deadline_s

    def __repr__(self) -> str:
        base = self._base_url or "https://api.replicate.com"
        return f"ReplicateProvider(base_url={base!r}, token={'set' if self._token else 'missing'})"

    @property
    def name(self) -> str:
        return PROVIDER_NAME

    # --- ImageProvider ------------------------------------------------------------------------

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        owner, model_name = _split_model(request.model)
        body, warnings = build_input(request)
        deadline = asyncio.get_running_loop().time() + self._deadline_s
        async with self._session() as http:
            prediction = await self._create(http, owner, model_name, body)
            _log.debug("replicate prediction %s created (%s)", prediction.id, prediction.status)
            if request.on_job_created is not None:
                await request.on_job_created(prediction.id)
            if not (prediction.finished or _sync_output_ready(prediction)):
                prediction = await self._poll(http, prediction.id, deadline)
            return await self._collect(http, prediction, request, warnings)

    async def resume(self, job_id: str, request: ProviderRequest) -> ProviderResult:
        if not _JOB_ID_RE.fullmatch(job_id):
            raise InvalidParameter(
                "A Replicate job id is letters, digits, '-' and '_' only.", provider=PROVIDER_NAME
            )
        _split_model(request.model)
        try:
            _, warnings = build_input(request)  # the same warnings the first attempt gave
        except InvalidParameter:
            # A resumed edit comes without its source images (the job already has them):
            # nothing to warn about that the first attempt did not.
            warnings = ()
        deadline = asyncio.get_running_loop().time() + self._deadline_s
        async with self._session() as http:
            prediction = await self._get(http, job_id)
            if prediction.model is not None and prediction.model != request.model:
                raise ProviderProtocolError(
                    f"Replicate's prediction {job_id} ran {prediction.model}, not {request.model}.",
                    provider=PROVIDER_NAME,
                    job_id=job_id,
                )
            if not prediction.finished:
                prediction = await self._poll(http, job_id, deadline)
            return await self._collect(http, prediction, request, warnings)

    async def health(self) -> ProviderHealth:
        limit = min(self._timeout_s, _HEALTH_TIMEOUT_S)  # a health check stays cheap
        started = time.perf_counter()
        latency: float | None = None
        try:
            async with asyncio.timeout(limit), self._session() as http:
                response = await self._send(http, "GET", "/v1/account", "read the account")
                latency = (time.perf_counter() - started) * 1000
                account = _json_object(response, "an account")
        except ImageGenError as error:
            return ProviderHealth(self.name, ok=False, latency_ms=latency, detail=error.message)
        except TimeoutError:
            detail = f"Replicate did not answer within {limit:g}s."
            return ProviderHealth(self.name, ok=False, latency_ms=None, detail=detail)
        except Exception as error:  # health() never raises; the type says enough
            return ProviderHealth(
                self.name, ok=False, latency_ms=None, detail=f"{type(error).__name__}"
            )
        username = account.get("username")
        detail = f"account {username}" if isinstance(username, str) else "token accepted"
        return ProviderHealth(self.name, ok=True, latency_ms=latency, detail=detail)

    # --- the steps ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[httpx.AsyncClient]:
        """The official client's httpx client (auth, base URL, retrying transport) for one
        call, closed afterwards: its connections never outlive the event loop that made them."""
        try:
            import httpx
            from replicate.client import Client
        except ImportError:
            raise ConfigurationError(
                f"The Replicate provider needs the replicate package: {_INSTALL_HINT}",
                provider=PROVIDER_NAME,
                hint=_INSTALL_HINT,
            ) from None
        if self._token is None or not self._token.get_secret_value().strip():
            raise AuthenticationFailed(
                f"No Replicate API token is configured. {_SETUP_HINT}", provider=PROVIDER_NAME
            )
        client = Client(
            api_token=self._token.get_secret_value().strip(),
            base_url=self._base_url,
            timeout=httpx.Timeout(self._timeout_s, connect=min(self._timeout_s, 10.0)),
            transport=httpx.AsyncHTTPTransport(verify=shared_ssl_context()),
        )
        http = client._async_client
        try:
            yield http
        finally:
            await http.aclose()

    async def _send(
        self,
        http: httpx.AsyncClient,
        method: str,
        path: str,
        action: str,
        *,
        job_id: str | None = None,
        **options: Any,
    ) -> httpx.Response:
        import httpx

        context: dict[str, Any] = {"provider": PROVIDER_NAME}
        if job_id is not None:
            context["job_id"] = job_id
        try:
            response = await http.request(method, path, **options)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as error:
            raise ConfigurationError(
                f"The Replicate base URL is not usable ({type(error).__name__}); "
                "check IMAGEGEN_REPLICATE_BASE_URL.",
                provider=PROVIDER_NAME,
            ) from None
        except httpx.TimeoutException as error:
            raise ProviderUnavailable(
                f"Replicate did not answer in time to {action} ({type(error).__name__}).",
                **context,
            ) from error
        except httpx.HTTPError as error:
            raise ProviderUnavailable(
                f"Could not reach Replicate to {action} ({type(error).__name__}).", **context
            ) from error
        _raise_for_status(response, action, job_id)
        return response

    async def _create(
        self, http: httpx.AsyncClient, owner: str, model_name: str, body: dict[str, Any]
    ) -> _Prediction:
        import httpx

        # The hold never outlasts our own deadline: the answer (with the id) must come back.
        wait = min(self._wait_s, math.floor(self._deadline_s))
        headers = {"Prefer": f"wait={wait}"} if wait >= 1 else {}
        timeout = httpx.Timeout(self._timeout_s + wait, connect=min(self._timeout_s, 10.0))
        response = await self._send(
            http,
            "POST",
            f"/v1/models/{owner}/{model_name}/predictions",
            f"create a prediction on {owner}/{model_name}",
            json={"input": body},
            headers=headers,
            timeout=timeout,
        )
        return _Prediction.parse(response)

    async def _get(self, http: httpx.AsyncClient, job_id: str) -> _Prediction:
        response = await self._send(
            http,
            "GET",
            f"/v1/predictions/{job_id}",
            f"read prediction {job_id}",
            job_id=job_id,
        )
        return _Prediction.parse(response)

    async def _poll(self, http: httpx.AsyncClient, job_id: str, deadline: float) -> _Prediction:
        """Poll until a terminal status; transient failures of a poll are waited out (a GET is
        safe to repeat), everything else is raised. At the deadline the prediction is
        canceled."""
        last_problem = ""
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    await asyncio.sleep(self._poll_interval_s)
                    try:
                        prediction = await self._get(http, job_id)
                    except RateLimited as error:
                        last_problem = error.message
                        await asyncio.sleep(error.retry_after or self._poll_interval_s)
                        continue
                    except ProviderUnavailable as error:
                        last_problem = error.message
                        _log.debug("replicate poll of %s failed; polling on", job_id)
                        continue
                    if prediction.finished:
                        return prediction
        except TimeoutError:
            await self._cancel_quietly(http, job_id)
            why = f" (last poll: {last_problem})" if last_problem else ""
            raise ProviderUnavailable(
                f"Replicate's prediction {job_id} did not finish within {self._deadline_s:g}s"
                f"{why}; it was canceled.",
                provider=PROVIDER_NAME,
                job_id=job_id,
            ) from None

    async def _cancel_quietly(self, http: httpx.AsyncClient, job_id: str) -> None:
        try:
            async with asyncio.timeout(min(self._timeout_s, 10.0)):
                await self._send(
                    http, "POST", f"/v1/predictions/{job_id}/cancel", "cancel", job_id=job_id
                )
        except (ImageGenError, TimeoutError):
            _log.warning("could not cancel replicate prediction %s", job_id)

    async def _collect(
        self,
        http: httpx.AsyncClient,
        prediction: _Prediction,
        request: ProviderRequest,
        warnings: tuple[str, ...],
    ) -> ProviderResult:
        urls = _outputs(prediction)
        blobs = await self._download(http, urls, prediction.id)
        notes = list(warnings)
        if len(blobs) < request.n:
            notes.append(
                f"Replicate returned {len(blobs)} of the {request.n} images asked for "
                "(its safety checker drops the images it flags)."
            )
        seed = request.seed if len(blobs) == 1 else None
        return ProviderResult(
            images=tuple(ProviderImage(data=blob, seed=seed) for blob in blobs),
            provider_job_id=prediction.id,
            cost_usd=None,
            warnings=tuple(notes),
        )

    async def _download(self, http: httpx.AsyncClient, urls: list[str], job_id: str) -> list[bytes]:
        import httpx

        api = urlsplit(str(http.base_url))
        auth = http.headers.get("authorization")
        timeout = httpx.Timeout(self._timeout_s, connect=min(self._timeout_s, 10.0))
        async with httpx.AsyncClient(
            timeout=timeout, follow_redirects=True, verify=shared_ssl_context()
        ) as files:

            async def fetch(url: str) -> bytes:
                if url.startswith("data:"):
                    return _decode_data_uri(url, job_id)
                target = urlsplit(url)
                # The token goes to Replicate's own hosts only (the API's file URLs need it).
                ours = (target.scheme, target.netloc) == (api.scheme, api.netloc) or (
                    target.hostname or ""
                ).endswith("replicate.delivery")
                headers = {"Authorization": auth} if ours and auth else {}
                return await self._fetch(files, url, headers, job_id)

            return list(await asyncio.gather(*(fetch(url) for url in urls)))

    async def _fetch(
        self, files: httpx.AsyncClient, url: str, headers: dict[str, str], job_id: str
    ) -> bytes:
        import httpx

        context: dict[str, Any] = {"provider": PROVIDER_NAME, "job_id": job_id}
        where = urlsplit(url).path.rsplit("/", 1)[-1][:80] or "output"
        try:
            async with files.stream("GET", url, headers=headers) as response:
                if response.status_code >= 500 or response.status_code == 429:
                    raise ProviderUnavailable(
                        f"Replicate could not serve output {where} ({response.status_code}).",
                        **context,
                    )
                if response.status_code >= 400:
                    raise ProviderProtocolError(
                        f"Replicate's output {where} could not be fetched "
                        f"({response.status_code}).",
                        **context,
                    )
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > _MAX_OUTPUT_BYTES:
                        raise ProviderProtocolError(
                            f"Replicate's output {where} is larger than "
                            f"{_MAX_OUTPUT_BYTES // (1024 * 1024)} MB.",
                            **context,
                        )
                    chunks.append(chunk)
        except httpx.HTTPError as error:
            raise ProviderUnavailable(
                f"Could not download Replicate's output {where} ({type(error).__name__}).",
                **context,
            ) from error
        data = b"".join(chunks)
        if not data:
            raise ProviderProtocolError(f"Replicate's output {where} is empty.", **context)
        return data


# --- helpers -----------------------------------------------------------------------------------


def _normalise_base_url(base_url: str | None) -> str | None:
    """The client adds ``/v1`` to every path: accept a base URL given with or without it."""
    if base_url is None or not base_url.strip():
        return None
    url = base_url.strip().rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _split_model(model: str) -> tuple[str, str]:
    match = _MODEL_RE.fullmatch(model)
    if match is None:
        raise InvalidParameter(
            f"A Replicate model is 'owner/name' (an official model, no version); got {model!r}.",
            provider=PROVIDER_NAME,
            model=model,
        )
    return match.group(1), match.group(2)


def _sync_output_ready(prediction: _Prediction) -> bool:
    """Sync mode answers as soon as all output files exist, sometimes still "processing"."""
    return prediction.status == "processing" and bool(prediction.output)


def _outputs(prediction: _Prediction) -> list[str]:
    """The prediction's output files, or the imagegen error its terminal status means."""
    pid = prediction.id
    context: dict[str, Any] = {"provider": PROVIDER_NAME, "job_id": pid}
    if prediction.status == "failed":
        error = prediction.error or "no reason given"
        short = error if len(error) <= _MAX_DETAIL else error[: _MAX_DETAIL - 1] + "…"
        if _REFUSAL_RE.search(error):
            raise ContentPolicyViolation(
                f"Replicate refused the images of prediction {pid}: {short}",
                stage="output",
                **context,
            )
        raise ProviderRejected(f"Replicate's prediction {pid} failed: {short}", **context)
    if prediction.status in ("canceled", "aborted"):
        raise ProviderUnavailable(
            f"Replicate's prediction {pid} was {prediction.status} before it finished.",
            status=prediction.status,
            **context,
        )
    output = prediction.output
    if output is None and prediction.data_removed:
        raise ProviderRejected(
            f"Replicate already deleted the output of prediction {pid} (it keeps API outputs "
            "for an hour).",
            data_removed=True,
            **context,
        )
    items = output if isinstance(output, list) else [output]
    urls = [item for item in items if isinstance(item, str)]
    if not urls or len(urls) != len(items):
        raise ProviderProtocolError(
            f"Replicate's prediction {pid} succeeded without image files in its output.",
            **context,
        )
    for url in urls:
        if not (url.startswith(("https://", "http://", "data:"))):
            raise ProviderProtocolError(
                f"Replicate's prediction {pid} has an output that is not a URL.", **context
            )
    return urls


def _decode_data_uri(uri: str, job_id: str) -> bytes:
    header, _, payload = uri.partition(",")
    try:
        if not header.endswith(";base64"):
            raise ValueError("not base64")
        data = base64.b64decode(payload, validate=True)
    except (ValueError, binascii.Error):
        raise ProviderProtocolError(
            f"Replicate's prediction {job_id} has an output data URI that is not base64.",
            provider=PROVIDER_NAME,
            job_id=job_id,
        ) from None
    if not data:
        raise ProviderProtocolError(
            f"Replicate's prediction {job_id} has an empty output.",
            provider=PROVIDER_NAME,
            job_id=job_id,
        )
    return data
