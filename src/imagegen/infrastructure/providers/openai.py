"""The OpenAI provider: GPT image models through the official ``openai`` SDK.

GENERATE goes to ``images.generate`` and EDIT / INPAINT to ``images.edit`` (multipart: every
input image, plus the mask for an inpaint). GPT image models always answer with base64, so no
``response_format`` is sent. OpenAI has neither seeds nor negative prompts: the catalog says so
and the use case warns; if one still arrives it is ignored and the result carries a warning.

Errors are translated here, at the edge, and nowhere else:

=====================================================  ===========================================
What OpenAI (or the network) did                       What we raise
=====================================================  ===========================================
401 / 403                                              ``AuthenticationFailed``
429 ``insufficient_quota`` (billing quota exhausted)   ``ProviderRejected`` (retrying cannot help)
429 (other)                                            ``RateLimited`` (``retry_after`` from
                                                       ``retry-after-ms`` / ``Retry-After``)
400 ``moderation_blocked`` / content-policy message     ``ContentPolicyViolation`` (``stage`` from
                                                       ``moderation_details``, default "input")
other 4xx                                              ``ProviderRejected`` (OpenAI's message)
5xx, connection error, timeout                         ``ProviderUnavailable``
200 that breaks the protocol                           ``ProviderProtocolError``
=====================================================  ===========================================

The SDK runs with ``max_retries=0``: retries belong to the resilience layer, which must see
every failure. The key stays a ``SecretStr`` until the client is built; mapped errors are
raised outside the ``except`` block, so they do not even chain to the SDK's exception (whose
request object holds the ``Authorization`` header), and every message OpenAI wrote is scrubbed
of anything that looks like a key before it reaches ours.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import math
import re
import time
import weakref
from collections.abc import Coroutine, Mapping
from datetime import UTC
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import SecretStr

from imagegen.application.ports import (
    InputImage,
    ProviderHealth,
    ProviderImage,
    ProviderRequest,
    ProviderResult,
    Usage,
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
from imagegen.domain.values import ImageFormat

if TYPE_CHECKING:
    from openai import APIStatusError, AsyncOpenAI, Omit
    from openai.types import ImagesResponse

NAME: Final = "openai"
KEY_VARIABLES: Final = "IMAGEGEN_OPENAI_API_KEY (or OPENAI_API_KEY)"
INSTALL_HINT: Final = "pip install 'imagegen[openai]'"

_HEALTH_TIMEOUT_S: Final = 10.0
_MAX_MESSAGE: Final = 300
_QUALITIES: Final[dict[str, Literal["low", "medium", "high", "auto"]]] = {
    "low": "low",
    "medium": "medium",
    "high": "high",
    "auto": "auto",
}
_FORMATS: Final[dict[ImageFormat, Literal["png", "jpeg", "webp"]]] = {
    ImageFormat.PNG: "png",
    ImageFormat.JPEG: "jpeg",
    ImageFormat.WEBP: "webp",
}
# OpenAI keys are "sk-…", "sk-proj-…", "sk-svcacct-…"; OpenAI's own messages show them masked
# ("sk-abc*****wxyz"), which still gives away a prefix and the last four characters.
_KEY_RE: Final = re.compile(r"\bsk-[A-Za-z0-9_*\-]+")
# Older refusals (DALL·E) had no code, only a message: "…rejected as a result of our safety
# system…". A message about a *parameter* (param set) is never a refusal.
_POLICY_RE: Final = re.compile(r"safety system|content[ _]policy", re.IGNORECASE)
_POLICY_CODES: Final = frozenset({"moderation_blocked", "content_policy_violation"})


class OpenAIProvider:
    """``ImageProvider`` named ``"openai"``: GPT image models over OpenAI's Images API.

    ``api_key`` may be None: the provider is still built (so ``health()`` can say what is
    wrong), and every call raises ``AuthenticationFailed`` naming the variable to set.
    ``base_url`` points it elsewhere (an emulator: ``http://127.0.0.1:8001/v1``);
    ``timeout_s`` bounds each HTTP request.
    """

    def __init__(
        self, *, api_key: SecretStr | None, base_url: str | None = None, timeout_s: float = 120.0
    ) -> None:
        if not (timeout_s > 0 and math.isfinite(timeout_s)):
            raise ValueError("timeout_s must be a finite number of seconds > 0")
        self._api_key = api_key
        self._base_url = base_url
        self._timeout_s = timeout_s
        # One client per event loop: an httpx pool is bound to the loop that opened it.
        self._client: AsyncOpenAI | None = None
        self._client_loop: weakref.ref[asyncio.AbstractEventLoop] | None = None

    def __repr__(self) -> str:
        return f"OpenAIProvider(base_url={self._base_url!r}, timeout_s={self._timeout_s:g})"

    @property
    def name(self) -> str:
        return NAME

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        if request.operation not in (Operation.GENERATE, Operation.EDIT, Operation.INPAINT):
            raise UnsupportedOperation(
                f"OpenAI's Images API cannot {request.operation.value.replace('_', ' ')}; "
                "it generates, edits and inpaints.",
                provider=NAME,
                operation=request.operation.value,
            )
        client = self._get_client()  # first: it checks the key and that the SDK is installed
        warnings = _ignored_parameters(request)
        quality = _quality(request.quality)
        output_format = _FORMATS[request.format]
        pending: Coroutine[Any, Any, object]
        if request.operation is Operation.GENERATE:
            pending = client.images.generate(
                model=request.model,
                prompt=request.prompt,
                n=request.n,
                size=str(request.size),
                quality=quality,
                output_format=output_format,
            )
        else:
            images, mask = _edit_files(request)
            pending = client.images.edit(
                model=request.model,
                image=images,
                mask=mask,
                prompt=request.prompt,
                n=request.n,
                size=str(request.size),
                quality=quality,
                output_format=output_format,
            )
        mapped: ImageGenError | None = None
        try:
            response = await pending
        except Exception as exc:  # narrowed in _map_error; anything it does not know re-raises
            mapped = self._map_error(exc)
            if mapped is None:
                raise
        if mapped is not None:
            # Raised here, outside the except block, so it does not chain to the SDK's error.
            raise mapped
        return _result(response, request.n, warnings)

    async def resume(self, job_id: str, request: ProviderRequest) -> ProviderResult:
        raise UnsupportedOperation(
            "OpenAI's Images API answers synchronously; it has no jobs to resume.", provider=NAME
        )

    async def health(self) -> ProviderHealth:
        """List the models (an authenticated GET that costs nothing); never raises."""
        started = time.perf_counter()
        try:
            client = self._get_client()
            await client.models.list(timeout=min(self._timeout_s, _HEALTH_TIMEOUT_S))
        except ImageGenError as error:  # no key, no SDK
            return ProviderHealth(NAME, ok=False, detail=error.message)
        except Exception as exc:
            mapped = self._map_error(exc)
            detail = mapped.message if mapped is not None else "OpenAI's health check failed."
            return ProviderHealth(NAME, ok=False, latency_ms=_elapsed_ms(started), detail=detail)
        return ProviderHealth(
            NAME, ok=True, latency_ms=_elapsed_ms(started), detail="OpenAI accepted the API key."
        )

    async def aclose(self) -> None:
        """Close the HTTP connections of the client built on the running loop, if any."""
        client, self._client, self._client_loop = self._client, None, None
        if client is not None:
            await client.close()

    # --- the client -----------------------------------------------------------------------------

    def _get_client(self) -> AsyncOpenAI:
        loop = asyncio.get_running_loop()
        if (
            self._client is not None
            and self._client_loop is not None
            and self._client_loop() is loop
        ):
            return self._client
        key = self._api_key.get_secret_value().strip() if self._api_key is not None else ""
        if not key:
            raise AuthenticationFailed(
                f"No OpenAI API key is configured; set {KEY_VARIABLES}.", provider=NAME
            )
        try:
            from openai import AsyncOpenAI
        except ImportError:
            raise ConfigurationError(
                f"The OpenAI provider needs the openai package; install it with {INSTALL_HINT}.",
                provider=NAME,
            ) from None
        self._client = AsyncOpenAI(
            api_key=key, base_url=self._base_url, timeout=self._timeout_s, max_retries=0
        )
        self._client_loop = weakref.ref(loop)
        return self._client

    # --- errors ---------------------------------------------------------------------------------

    def _map_error(self, exc: Exception) -> ImageGenError | None:
        """The imagegen error for an SDK / transport failure; None for anything else (a bug)."""
        import httpx
        import openai

        if isinstance(exc, openai.APITimeoutError | httpx.TimeoutException):
            return ProviderUnavailable(
                f"OpenAI did not answer within {self._timeout_s:g} seconds.",
                provider=NAME,
                reason="timeout",
            )
        if isinstance(exc, openai.APIConnectionError | httpx.TransportError):
            return ProviderUnavailable(
                "Could not connect to OpenAI (the connection failed or was cut).",
                provider=NAME,
                reason="connection",
            )
        if isinstance(exc, openai.APIStatusError):
            return self._map_status(exc)
        if isinstance(exc, openai.APIResponseValidationError):
            return ProviderProtocolError(
                "OpenAI's response did not match its published schema.", provider=NAME
            )
        if isinstance(exc, ValueError | TypeError | KeyError | openai.OpenAIError):
            # e.g. json.JSONDecodeError: a 200 whose body is not JSON at all.
            return ProviderProtocolError(
                "OpenAI answered with a body that could not be parsed.",
                provider=NAME,
                reason=type(exc).__name__,
            )
        return None

    def _map_status(self, exc: APIStatusError) -> ImageGenError:
        status: int = exc.status_code
        body = exc.body if isinstance(exc.body, Mapping) else {}
        code = body.get("code") if isinstance(body.get("code"), str) else None
        param = body.get("param") if isinstance(body.get("param"), str) else None
        raw = body.get("message")
        message = self._scrub(raw) if isinstance(raw, str) else ""
        said = f": {message}" if message else "."
        details: dict[str, Any] = {"provider": NAME, "status": status}
        if message:
            details["openai_message"] = message
        if code:
            details["openai_code"] = code
        if param:
            details["param"] = param
        request_id = exc.response.headers.get("x-request-id")
        if request_id:
            details["request_id"] = request_id

        if status == 401:
            # OpenAI's own words here only echo the (masked) key: leave them out.
            details.pop("openai_message", None)
            return AuthenticationFailed(
                f"OpenAI refused the API key (HTTP 401); check {KEY_VARIABLES}.", **details
            )
        if status == 403:
            return AuthenticationFailed(f"OpenAI denied access (HTTP 403){said}", **details)
        if status == 429 and code == "insufficient_quota":
            return ProviderRejected(f"OpenAI's billing quota is exhausted{said}", **details)
        if status == 429:
            retry_after = parse_retry_after(exc.response.headers)
            wait = f"; retry after {retry_after:g} seconds" if retry_after is not None else ""
            return RateLimited(
                f"OpenAI rate-limited the request (HTTP 429){wait}.",
                retry_after=retry_after,
                **details,
            )
        if 400 <= status < 500 and (
            code in _POLICY_CODES or (status == 400 and not param and _POLICY_RE.search(message))
        ):
            stage = _moderation_stage(body)
            return ContentPolicyViolation(
                f"OpenAI's safety system refused the request ({stage} moderation).",
                stage=stage,
                **details,
            )
        if 400 <= status < 500:
            return ProviderRejected(f"OpenAI refused the request (HTTP {status}){said}", **details)
        if status >= 500:
            return ProviderUnavailable(f"OpenAI failed with HTTP {status}.", **details)
        return ProviderProtocolError(f"OpenAI answered with unexpected HTTP {status}.", **details)

    def _scrub(self, text: str) -> str:
        """OpenAI's message, without anything that looks like a key, on one short line."""
        if self._api_key is not None:
            secret = self._api_key.get_secret_value().strip()
            if secret:
                text = text.replace(secret, "***")
        text = _KEY_RE.sub("sk-***", text)
        text = " ".join(text.split())
        if len(text) > _MAX_MESSAGE:
            text = text[: _MAX_MESSAGE - 1].rstrip() + "…"
        return text if text.endswith((".", "…", "!", "?")) else text + "."


# --- requests -----------------------------------------------------------------------------------


def _ignored_parameters(request: ProviderRequest) -> list[str]:
    warnings = []
    if request.seed is not None:
        warnings.append("OpenAI does not support seeds; the seed was ignored.")
    if request.negative_prompt:
        warnings.append(
            "OpenAI does not support negative prompts; the negative prompt was ignored."
        )
    return warnings


def _quality(quality: str | None) -> Literal["low", "medium", "high", "auto"] | Omit:
    from openai import omit

    if quality is None:
        return omit
    try:
        return _QUALITIES[quality]
    except KeyError:
        raise InvalidParameter(
            f"OpenAI's quality is low, medium, high or auto; got {quality!r}.",
            provider=NAME,
            quality=quality,
        ) from None


_FileTuple = tuple[str, bytes, str]


def _edit_files(request: ProviderRequest) -> tuple[list[_FileTuple], _FileTuple | Omit]:
    from openai import omit

    if not request.images:
        raise InvalidParameter(
            f"An OpenAI {request.operation.value} needs at least one source image.", provider=NAME
        )
    if request.operation is Operation.INPAINT and request.mask is None:
        raise InvalidParameter("An OpenAI inpaint needs a mask.", provider=NAME)
    images = [_file(f"image-{i}", image) for i, image in enumerate(request.images, start=1)]
    if request.mask is None:
        return images, omit
    if request.mask.format is not ImageFormat.PNG:
        raise InvalidParameter(
            f"OpenAI needs the mask as a PNG with an alpha channel; got {request.mask.format}.",
            provider=NAME,
        )
    return images, _file("mask", request.mask)


def _file(stem: str, image: InputImage) -> _FileTuple:
    return (f"{stem}.{image.format.extension}", image.data, image.format.mime_type)


# --- responses ----------------------------------------------------------------------------------


def _result(response: object, n: int, warnings: list[str]) -> ProviderResult:
    from openai.types import ImagesResponse

    if not isinstance(response, ImagesResponse):
        # The SDK hands back the raw text when the body is not declared as JSON.
        raise ProviderProtocolError("OpenAI answered with a body that is not JSON.", provider=NAME)
    images = _images(response)
    if len(images) < n:
        # OpenAI billed what it made; the use case decides what a short batch means.
        warnings.append(f"OpenAI returned {len(images)} of the {n} images asked for.")
    usage = _usage(response)
    if usage is None and response.usage is not None:
        warnings.append("OpenAI's usage report was malformed; token usage is unknown.")
    return ProviderResult(
        images=images, provider_job_id=None, warnings=tuple(warnings), usage=usage
    )


def _images(response: ImagesResponse) -> tuple[ProviderImage, ...]:
    data = response.data
    if not isinstance(data, list) or not data:
        raise ProviderProtocolError("OpenAI's response holds no images.", provider=NAME)
    images = []
    for index, item in enumerate(data, start=1):
        encoded = getattr(item, "b64_json", None)
        if not isinstance(encoded, str) or not encoded:
            hint = " (a URL instead of base64)" if getattr(item, "url", None) else ""
            raise ProviderProtocolError(
                f"OpenAI's image {index} has no base64 data{hint}.", provider=NAME
            )
        try:
            blob = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ProviderProtocolError(
                f"OpenAI's image {index} is not valid base64.", provider=NAME
            ) from None
        if _sniff(blob) is None:
            raise ProviderProtocolError(
                f"OpenAI's image {index} is not a PNG, JPEG or WebP image.", provider=NAME
            )
        images.append(ProviderImage(data=blob))
    return tuple(images)


def _sniff(blob: bytes) -> ImageFormat | None:
    if blob.startswith(b"\x89PNG\r\n\x1a\n"):
        return ImageFormat.PNG
    if blob.startswith(b"\xff\xd8\xff"):
        return ImageFormat.JPEG
    if len(blob) >= 12 and blob[:4] == b"RIFF" and blob[8:12] == b"WEBP":
        return ImageFormat.WEBP
    return None


def _usage(response: ImagesResponse) -> Usage | None:
    """Token usage, or None when OpenAI reported none or reported it in a shape we cannot read
    (the images are still good and already billed by OpenAI, so that is a warning, not a
    failure)."""
    usage = response.usage
    if usage is None:
        return None
    try:
        inputs = usage.input_tokens_details
        text_in, image_in = _count(inputs.text_tokens), _count(inputs.image_tokens)
        outputs = usage.output_tokens_details
        if outputs is not None:
            image_out, text_out = _count(outputs.image_tokens), _count(outputs.text_tokens)
        else:
            image_out, text_out = _count(usage.output_tokens), 0
    except (AttributeError, TypeError, ValueError):
        return None
    return Usage(
        input_text_tokens=text_in,
        input_image_tokens=image_in,
        output_image_tokens=image_out,
        output_text_tokens=text_out,
    )


def _count(value: object) -> int:
    # The SDK builds response models without validation, so a field may hold anything.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a token count: {value!r}")
    return value


def _moderation_stage(body: Mapping[str, Any]) -> str:
    details = body.get("moderation_details")
    stage = details.get("moderation_stage") if isinstance(details, Mapping) else None
    return stage if stage in ("input", "output") else "input"


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` (OpenAI's) or ``Retry-After`` (seconds or an
    HTTP date); None when absent or unreadable. Never negative."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000
        except ValueError:
            value = math.nan
        if math.isfinite(value):
            return max(0.0, value)
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        current = now if now is not None else time.time()
        return max(0.0, when.timestamp() - current)
    return max(0.0, value) if math.isfinite(value) else None


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


__all__ = ["OpenAIProvider", "parse_retry_after"]
