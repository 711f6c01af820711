"""The OpenAI adapter, through the real ``openai`` SDK, against the OpenAI emulator over a real
loopback socket.

Each test checks both sides: what the adapter sent (the emulator's recorded requests) and what
it made of the answer (images, usage, warnings, or the imagegen error a fault must become).
The last part checks the emulator itself against OpenAI's published OpenAPI spec.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imagegen.application.ports import InputImage, ProviderRequest, Usage
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
from imagegen.domain.values import ImageFormat, ImageSize, Seed
from imagegen.infrastructure.providers.openai import OpenAIProvider, parse_retry_after
from imagegen.testing.emulators import FaultKind, serve
from imagegen.testing.emulators.openai import (
    MALFORMED_BODIES,
    OUTPUT_TOKENS,
    create_app,
    output_tokens_per_image,
)

KEY = "sk-proj-imagegen-Test0123456789SECRET"
WRONG_KEY = "sk-wrong-key-0123456789Q7Z9"
GENERATIONS = "/v1/images/generations"
EDITS = "/v1/images/edits"
SPEC = Path("/work/shared/specs/openai-openapi.json")


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Starlette, str]]:
    app = create_app(api_key=KEY)
    with serve(app) as base_url:
        yield app, base_url


@pytest.fixture
def emulator(served: tuple[Starlette, str]) -> Starlette:
    app = served[0]
    app.state.faults.clear()
    app.state.faults.latency_s = 0.0
    app.state.requests.clear()
    app.state.malformed_body = "truncated_json"
    return app


@pytest.fixture
def base_url(served: tuple[Starlette, str], emulator: Starlette) -> str:
    return f"{served[1]}/v1"


@pytest.fixture
async def provider(base_url: str) -> Any:
    adapter = OpenAIProvider(api_key=SecretStr(KEY), base_url=base_url, timeout_s=10)
    yield adapter
    await adapter.aclose()


def _request(**overrides: Any) -> ProviderRequest:
    fields: dict[str, Any] = {
        "model": "gpt-image-2",
        "prompt": "a red fox in the snow",
        "n": 1,
        "size": ImageSize(1024, 640),
        "format": ImageFormat.JPEG,
        "quality": "low",
    }
    fields.update(overrides)
    return ProviderRequest(**fields)


def _png(size: tuple[int, int], colour: tuple[int, ...], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def _decoded(data: bytes) -> tuple[str, tuple[int, int]]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.format or "", image.size


def _api_calls(app: Starlette) -> list[dict[str, Any]]:
    return [r for r in app.state.requests if r["path"].startswith("/v1/images")]


# --- generate and edit -------------------------------------------------------------------------


async def test_generate_returns_n_decodable_images_of_the_requested_size_format_and_usage(
    provider: OpenAIProvider, emulator: Starlette
) -> None:
    result = await provider.generate(
        _request(n=3, size=ImageSize(1024, 640), format=ImageFormat.WEBP, quality="medium")
    )

    assert len(result.images) == 3
    assert [_decoded(image.data) for image in result.images] == [("WEBP", (1024, 640))] * 3
    assert len({image.data for image in result.images}) == 3  # three images, not one thrice
    assert result.provider_job_id is None
    assert result.warnings == ()
    per_image = output_tokens_per_image("medium", (1024, 640), model="gpt-image-2")
    assert result.usage == Usage(
        input_text_tokens=6, input_image_tokens=0, output_image_tokens=3 * per_image
    )
    [sent] = _api_calls(emulator)
    assert sent["path"] == GENERATIONS
    assert sent["json"] == {
        "model": "gpt-image-2",
        "prompt": "a red fox in the snow",
        "n": 3,
        "size": "1024x640",
        "quality": "medium",
        "output_format": "webp",
    }  # GPT image models always answer in base64: no response_format is sent


async def test_usage_follows_openais_token_table_for_the_standard_sizes(
    provider: OpenAIProvider,
) -> None:
    result = await provider.generate(
        _request(model="gpt-image-1-mini", n=2, size=ImageSize(1024, 1536), quality="low")
    )
    assert [_decoded(image.data) for image in result.images] == [("JPEG", (1024, 1536))] * 2
    assert result.usage is not None
    assert result.usage.output_image_tokens == 2 * OUTPUT_TOKENS["low"][(1024, 1536)] == 816


async def test_without_a_quality_none_is_sent_and_openai_picks_one(
    provider: OpenAIProvider, emulator: Starlette
) -> None:
    result = await provider.generate(_request(quality=None, format=ImageFormat.PNG))
    [sent] = _api_calls(emulator)
    assert "quality" not in sent["json"]
    assert _decoded(result.images[0].data) == ("PNG", (1024, 640))


async def test_a_seed_or_negative_prompt_is_not_sent_and_becomes_a_warning(
    provider: OpenAIProvider, emulator: Starlette
) -> None:
    result = await provider.generate(_request(seed=Seed(42), negative_prompt="blurry"))
    [sent] = _api_calls(emulator)
    assert not {"seed", "negative_prompt"} & set(sent["json"])
    assert len(result.warnings) == 2
    assert "seed" in result.warnings[0]
    assert "negative prompt" in result.warnings[1]


async def test_an_inpaint_sends_every_source_image_and_the_mask_as_multipart(
    provider: OpenAIProvider, emulator: Starlette
) -> None:
    first = _png((1024, 1024), (200, 30, 30))
    second = _png((1024, 1024), (30, 30, 200))
    mask = _png((1024, 1024), (0, 0, 0, 0), mode="RGBA")
    request = _request(
        model="gpt-image-1.5",
        operation=Operation.INPAINT,
        prompt="put a hat on the fox",
        n=2,
        size=ImageSize(1536, 1024),
        format=ImageFormat.PNG,
        images=(
            InputImage(first, ImageFormat.PNG, 1024, 1024),
            InputImage(second, ImageFormat.PNG, 1024, 1024),
        ),
        mask=InputImage(mask, ImageFormat.PNG, 1024, 1024),
    )

    result = await provider.generate(request)

    assert [_decoded(image.data) for image in result.images] == [("PNG", (1536, 1024))] * 2
    assert result.usage is not None
    assert result.usage.input_image_tokens > 0
    assert result.usage.output_image_tokens == 2 * OUTPUT_TOKENS["low"][(1536, 1024)]
    [sent] = _api_calls(emulator)
    assert sent["path"] == EDITS
    assert sent["headers"]["content-type"].startswith("multipart/form-data; boundary=")
    assert sent["form"] == {
        "model": "gpt-image-1.5",
        "prompt": "put a hat on the fox",
        "n": "2",
        "size": "1536x1024",
        "quality": "low",
        "output_format": "png",
    }
    assert sent["files"] == [
        {"field": "image[]", "filename": "image-1.png", "content_type": "image/png",
         "size": len(first)},
        {"field": "image[]", "filename": "image-2.png", "content_type": "image/png",
         "size": len(second)},
        {"field": "mask", "filename": "mask.png", "content_type": "image/png",
         "size": len(mask)},
    ]  # fmt: skip


async def test_an_edit_without_a_mask_sends_only_the_images(
    provider: OpenAIProvider, emulator: Starlette
) -> None:
    source = io.BytesIO()
    Image.new("RGB", (1024, 1536), (10, 120, 10)).save(source, "JPEG")
    request = _request(
        model="gpt-image-1",
        operation=Operation.EDIT,
        size=ImageSize(1024, 1536),
        images=(InputImage(source.getvalue(), ImageFormat.JPEG, 1024, 1536),),
    )
    result = await provider.generate(request)
    assert _decoded(result.images[0].data) == ("JPEG", (1024, 1536))
    [sent] = _api_calls(emulator)
    assert [(f["field"], f["filename"], f["content_type"]) for f in sent["files"]] == [
        ("image[]", "image-1.jpg", "image/jpeg")
    ]


@pytest.mark.parametrize(
    "operation",
    [Operation.OUTPAINT, Operation.ERASE, Operation.REMOVE_BACKGROUND, Operation.VARIATIONS],
)
async def test_operations_openai_lacks_are_unsupported_and_send_nothing(
    provider: OpenAIProvider, emulator: Starlette, operation: Operation
) -> None:
    with pytest.raises(UnsupportedOperation):
        await provider.generate(_request(operation=operation))
    assert emulator.state.requests == []


async def test_an_edit_needs_a_source_and_an_inpaint_a_png_mask(
    provider: OpenAIProvider, emulator: Starlette
) -> None:
    source = InputImage(_png((1024, 1024), (1, 2, 3)), ImageFormat.PNG, 1024, 1024)
    with pytest.raises(InvalidParameter, match="source image"):
        await provider.generate(_request(operation=Operation.EDIT))
    with pytest.raises(InvalidParameter, match="mask"):
        await provider.generate(_request(operation=Operation.INPAINT, images=(source,)))
    jpeg_mask = InputImage(b"\xff\xd8\xff", ImageFormat.JPEG, 1024, 1024)
    with pytest.raises(InvalidParameter, match="PNG"):
        await provider.generate(
            _request(operation=Operation.INPAINT, images=(source,), mask=jpeg_mask)
        )
    with pytest.raises(InvalidParameter, match="quality"):
        await provider.generate(_request(quality="ultra"))
    assert emulator.state.requests == []


async def test_resume_is_unsupported(provider: OpenAIProvider) -> None:
    with pytest.raises(UnsupportedOperation):
        await provider.resume("job_1", _request())


async def test_a_request_openai_refuses_keeps_openais_message(provider: OpenAIProvider) -> None:
    with pytest.raises(ProviderRejected) as caught:
        await provider.generate(_request(model="gpt-image-1.5", size=ImageSize(1536, 864)))
    assert caught.value.details["status"] == 400
    assert caught.value.details["param"] == "size"
    assert "Invalid value: '1536x864'" in caught.value.message


# --- faults ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "options", "expected"),
    [
        (FaultKind.RATE_LIMIT, {"retry_after": 7}, RateLimited),
        (FaultKind.RATE_LIMIT, {}, RateLimited),
        (FaultKind.SERVER_ERROR, {"status": 500}, ProviderUnavailable),
        (FaultKind.SERVER_ERROR, {"status": 503}, ProviderUnavailable),
        (FaultKind.SERVER_ERROR, {"status": 502}, ProviderUnavailable),
        (FaultKind.CONTENT_REFUSAL, {}, ContentPolicyViolation),
        (FaultKind.AUTH_ERROR, {}, AuthenticationFailed),
        (FaultKind.BAD_REQUEST, {}, ProviderRejected),
        (FaultKind.BAD_REQUEST, {"status": 404}, ProviderRejected),
        (FaultKind.MALFORMED, {}, ProviderProtocolError),
    ],
)
async def test_every_fault_becomes_the_right_imagegen_error(
    provider: OpenAIProvider,
    emulator: Starlette,
    kind: FaultKind,
    options: dict[str, Any],
    expected: type[ImageGenError],
) -> None:
    emulator.state.faults.add(kind, **options)
    with pytest.raises(expected) as caught:
        await provider.generate(_request())
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None  # not even chained to the SDK's error
    assert caught.value.details["provider"] == "openai"
    assert emulator.state.faults.pending == 0
    # The next call is served normally: a fault is not a broken adapter.
    assert len((await provider.generate(_request())).images) == 1


async def test_a_rate_limit_carries_retry_after(
    provider: OpenAIProvider, emulator: Starlette
) -> None:
    emulator.state.faults.add(FaultKind.RATE_LIMIT, retry_after=7)
    with pytest.raises(RateLimited) as caught:
        await provider.generate(_request())
    assert caught.value.retry_after == 7.0
    assert caught.value.details["retry_after"] == 7.0

    emulator.state.faults.add(FaultKind.RATE_LIMIT)
    with pytest.raises(RateLimited) as caught:
        await provider.generate(_request())
    assert caught.value.retry_after is None


@pytest.mark.parametrize("stage", ["input", "output"])
async def test_a_moderation_block_is_a_content_policy_violation_with_its_stage(
    provider: OpenAIProvider, emulator: Starlette, stage: str
) -> None:
    emulator.state.faults.add(FaultKind.CONTENT_REFUSAL, stage=stage)
    with pytest.raises(ContentPolicyViolation) as caught:
        await provider.generate(_request())
    assert caught.value.stage == stage
    assert caught.value.details["openai_code"] == "moderation_blocked"
    assert "safety system" in caught.value.details["openai_message"]


async def test_a_hung_request_times_out_as_provider_unavailable(
    base_url: str, emulator: Starlette
) -> None:
    adapter = OpenAIProvider(api_key=SecretStr(KEY), base_url=base_url, timeout_s=0.3)
    emulator.state.faults.add(FaultKind.TIMEOUT, delay=30)
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable, match=r"did not answer within 0\.3 seconds"):
        await adapter.generate(_request())
    assert time.monotonic() - started < 3
    assert _api_calls(emulator)  # it did reach the emulator, which held it
    await adapter.aclose()


@pytest.mark.parametrize("flavour", MALFORMED_BODIES)
async def test_a_200_that_breaks_the_protocol_is_a_protocol_error(
    provider: OpenAIProvider, emulator: Starlette, flavour: str
) -> None:
    emulator.state.malformed_body = flavour
    emulator.state.faults.add(FaultKind.MALFORMED)
    with pytest.raises(ProviderProtocolError):
        await provider.generate(_request())


async def test_latency_is_awaited_then_the_answer_is_normal(
    provider: OpenAIProvider, emulator: Starlette
) -> None:
    emulator.state.faults.add(FaultKind.LATENCY, delay=0.3)
    started = time.monotonic()
    result = await provider.generate(_request())
    assert time.monotonic() - started >= 0.3
    assert len(result.images) == 1


async def test_a_refused_connection_is_provider_unavailable() -> None:
    adapter = OpenAIProvider(
        api_key=SecretStr(KEY), base_url=f"http://127.0.0.1:{_free_port()}/v1", timeout_s=2
    )
    with pytest.raises(ProviderUnavailable, match="connect"):
        await adapter.generate(_request())
    health = await adapter.health()
    assert not health.ok
    assert "connect" in health.detail
    await adapter.aclose()


# --- answers the emulator does not give: a scripted server -----------------------------------


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[Starlette, str]]:
    """A bare server answering every request with ``app.state.answer`` (status, body, headers),
    for shapes of OpenAI answers the emulator has no fault for."""

    async def answer(request: Request) -> Response:
        status, body, headers = request.app.state.answer
        return JSONResponse(body, status_code=status, headers=headers)

    app = Starlette(routes=[Route("/v1/{rest:path}", answer, methods=["GET", "POST"])])
    with serve(app) as url:
        yield app, f"{url}/v1"


def _error(message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param,
                      "code": code}}  # fmt: skip


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected", "check"),
    [
        (400, _error("Your request was rejected as a result of our safety system."), {},
         ContentPolicyViolation, "input moderation"),
        (400, _error("Unknown parameter: 'content_policy'.", "unknown_parameter",
                     "content_policy"), {}, ProviderRejected, "Unknown parameter"),
        (429, _error("You exceeded your current quota.", "insufficient_quota"), {},
         ProviderRejected, "quota"),
        (429, _error("Slow down.", "rate_limit_exceeded"), {"retry-after-ms": "1500"},
         RateLimited, "1.5 seconds"),
        (403, _error("Your organization must be verified to use the model gpt-image-1."), {},
         AuthenticationFailed, "must be verified"),
        (400, _error("Bad key sk-proj-abcdefgh1234 in the body."), {}, ProviderRejected,
         "sk-***"),
        (418, "not even an object", {}, ProviderRejected, "HTTP 418"),
    ],
)  # fmt: skip
async def test_openais_other_answers_map_to_the_documented_errors(
    scripted: tuple[Starlette, str],
    status: int,
    body: Any,
    headers: dict[str, str],
    expected: type[ImageGenError],
    check: str,
) -> None:
    app, url = scripted
    app.state.answer = (status, body, headers)
    adapter = OpenAIProvider(api_key=SecretStr(KEY), base_url=url)
    with pytest.raises(expected) as caught:
        await adapter.generate(_request())
    assert check in caught.value.message
    assert "abcdefgh1234" not in json.dumps(caught.value.details)
    await adapter.aclose()


async def test_a_short_batch_or_unreadable_usage_is_a_warning_not_a_failure(
    scripted: tuple[Starlette, str],
) -> None:
    app, url = scripted
    png = base64.b64encode(_png((1024, 640), (5, 5, 5))).decode()
    usage = {"input_tokens": "many", "input_tokens_details": {}, "output_tokens": 1,
             "total_tokens": 1}  # fmt: skip
    app.state.answer = (200, {"created": 1, "data": [{"b64_json": png}], "usage": usage}, {})
    adapter = OpenAIProvider(api_key=SecretStr(KEY), base_url=url)
    result = await adapter.generate(_request(n=2))
    assert len(result.images) == 1
    assert result.usage is None
    assert result.warnings == (
        "OpenAI returned 1 of the 2 images asked for.",
        "OpenAI's usage report was malformed; token usage is unknown.",
    )
    await adapter.aclose()


# --- credentials -------------------------------------------------------------------------------


async def test_a_wrong_key_is_authentication_failed_naming_the_variable(base_url: str) -> None:
    adapter = OpenAIProvider(api_key=SecretStr(WRONG_KEY), base_url=base_url)
    with pytest.raises(AuthenticationFailed) as caught:
        await adapter.generate(_request())
    assert "IMAGEGEN_OPENAI_API_KEY" in caught.value.message
    assert caught.value.details["status"] == 401
    await adapter.aclose()


@pytest.mark.parametrize("key", [None, SecretStr(""), SecretStr("   ")])
async def test_a_missing_key_is_authentication_failed_naming_the_variable(
    base_url: str, emulator: Starlette, key: SecretStr | None
) -> None:
    adapter = OpenAIProvider(api_key=key, base_url=base_url)
    with pytest.raises(AuthenticationFailed) as caught:
        await adapter.generate(_request())
    assert "IMAGEGEN_OPENAI_API_KEY" in caught.value.message
    assert "OPENAI_API_KEY" in caught.value.message
    health = await adapter.health()
    assert not health.ok
    assert "IMAGEGEN_OPENAI_API_KEY" in health.detail
    assert emulator.state.requests == []


async def test_without_the_sdk_the_error_says_how_to_install_it(
    base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)  # "import openai" now raises ImportError
    adapter = OpenAIProvider(api_key=SecretStr(KEY), base_url=base_url)
    with pytest.raises(ConfigurationError, match=r"pip install 'imagegen\[openai\]'"):
        await adapter.generate(_request())
    health = await adapter.health()
    assert not health.ok
    assert "pip install" in health.detail


async def test_no_message_repr_traceback_or_log_record_contains_a_key(
    base_url: str, emulator: Starlette, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []

    def collect(error: ImageGenError) -> None:
        texts.extend([str(error), repr(error), error.message, json.dumps(error.details)])
        texts.extend(traceback.format_exception(error))

    good = OpenAIProvider(api_key=SecretStr(KEY), base_url=base_url, timeout_s=0.5)
    texts.append(repr(good))
    await good.generate(_request())
    await good.health()
    for kind in (
        FaultKind.RATE_LIMIT,
        FaultKind.SERVER_ERROR,
        FaultKind.CONTENT_REFUSAL,
        FaultKind.AUTH_ERROR,
        FaultKind.BAD_REQUEST,
        FaultKind.MALFORMED,
        FaultKind.TIMEOUT,
    ):
        emulator.state.faults.add(kind, retry_after=1, delay=5)
        with pytest.raises(ImageGenError) as caught:
            await good.generate(_request())
        collect(caught.value)
    await good.aclose()

    wrong = OpenAIProvider(api_key=SecretStr(WRONG_KEY), base_url=base_url)
    with pytest.raises(AuthenticationFailed) as refused:
        await wrong.generate(_request())
    collect(refused.value)
    texts.append((await wrong.health()).detail)
    await wrong.aclose()

    texts += [record.getMessage() for record in caplog.records]
    texts += [str(record.args) for record in caplog.records]
    assert len(caplog.records) > 5  # the SDK and httpx did log at DEBUG
    everything = "\n".join(texts)
    assert KEY not in everything
    assert WRONG_KEY not in everything
    assert "Q7Z9" not in everything  # OpenAI echoes a refused key's tail: it is scrubbed too
    assert "SECRET" not in everything


def test_importing_imagegen_or_the_adapter_does_not_import_the_sdk() -> None:
    code = (
        "import sys, imagegen, imagegen.infrastructure.providers.openai\n"
        "assert 'openai' not in sys.modules, 'openai was imported'\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stderr


# --- health ------------------------------------------------------------------------------------


async def test_health_is_an_authenticated_get_with_its_latency(
    provider: OpenAIProvider, emulator: Starlette
) -> None:
    health = await provider.health()
    assert health.ok
    assert health.provider == "openai"
    assert health.latency_ms is not None
    assert health.latency_ms >= 0
    assert [(r["method"], r["path"]) for r in emulator.state.requests] == [("GET", "/v1/models")]


async def test_health_with_a_bad_key_is_not_ok_and_says_why(base_url: str) -> None:
    adapter = OpenAIProvider(api_key=SecretStr(WRONG_KEY), base_url=base_url)
    health = await adapter.health()
    assert not health.ok
    assert "API key" in health.detail
    assert "IMAGEGEN_OPENAI_API_KEY" in health.detail
    assert WRONG_KEY not in health.detail
    await adapter.aclose()


async def test_health_never_raises_on_a_failing_provider(
    provider: OpenAIProvider, emulator: Starlette
) -> None:
    emulator.state.faults.add(FaultKind.SERVER_ERROR, status=500)
    health = await provider.health()
    assert not health.ok
    assert "500" in health.detail


# --- Retry-After -------------------------------------------------------------------------------


def test_retry_after_is_read_as_seconds_an_http_date_or_milliseconds() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    earlier = format_datetime(now - timedelta(seconds=30), usegmt=True)
    assert parse_retry_after({"retry-after": "12"}) == 12.0
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after": later}, now=now.timestamp()) == 30.0
    assert parse_retry_after({"retry-after": earlier}, now=now.timestamp()) == 0.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after": "-3"}) == 0.0
    assert parse_retry_after({"retry-after": "nan"}) is None
    assert parse_retry_after({}) is None


# --- the emulator against OpenAI's published API ------------------------------------------------


@pytest.fixture
def http(served: tuple[Starlette, str], emulator: Starlette) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=served[1], headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    ) as client:
        yield client


def _error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert {"message", "type", "param", "code"} <= set(body["error"])
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "gpt-image-2"}, "prompt", "missing_required_parameter"),
        ({"prompt": "x", "model": "gpt-image-2", "colour": "red"}, "colour", "unknown_parameter"),
        ({"prompt": "x", "model": "gpt-image-2", "response_format": "b64_json"},
         "response_format", "unknown_parameter"),
        ({"prompt": "x", "model": "gpt-image-2", "n": 11}, "n", "integer_above_max_value"),
        ({"prompt": "x", "model": "gpt-image-2", "n": 0}, "n", "integer_below_min_value"),
        ({"prompt": "x", "model": "gpt-image-2", "n": "2"}, "n", "invalid_type"),
        ({"prompt": "x", "model": "gpt-image-2", "quality": "hd"}, "quality", "invalid_value"),
        ({"prompt": "x", "model": "gpt-image-2", "output_format": "gif"}, "output_format",
         "invalid_value"),
        ({"prompt": "x", "model": "gpt-image-2", "size": "1000x1000"}, "size", "invalid_value"),
        ({"prompt": "x", "model": "gpt-image-2", "size": "4096x1024"}, "size", "invalid_value"),
        ({"prompt": "x", "model": "gpt-image-2", "size": "3072x768"}, "size", "invalid_value"),
        ({"prompt": "x", "model": "gpt-image-2", "size": "512x512"}, "size", "invalid_value"),
        ({"prompt": "x", "model": "gpt-image-2", "size": "3840x2400"}, "size", "invalid_value"),
        ({"prompt": "x", "model": "gpt-image-1.5", "size": "1536x864"}, "size", "invalid_value"),
        ({"prompt": "x", "model": "gpt-image-1-mini", "size": "512x512"}, "size",
         "invalid_value"),
        ({"prompt": "x"}, "model", "invalid_value"),  # defaults to dall-e-2: not emulated
        ({"prompt": "x", "model": "gpt-image-2", "stream": True}, "stream", "invalid_value"),
        ({"prompt": "x", "model": "gpt-image-2", "background": "transparent",
          "output_format": "jpeg"}, "background", "invalid_value"),
    ],
)  # fmt: skip
def test_the_emulator_refuses_what_openai_refuses(
    http: httpx.Client, body: dict[str, Any], param: str, code: str
) -> None:
    response = http.post(GENERATIONS, json=body)
    assert response.status_code == 400, response.text[:300]
    error = _error_of(response)
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")


@pytest.mark.parametrize("size", ["3840x2160", "1024x640", "2048x688", "1536x864", "auto"])
def test_the_emulator_takes_gpt_image_2s_free_form_sizes(http: httpx.Client, size: str) -> None:
    response = http.post(
        GENERATIONS,
        json={"prompt": "x", "model": "gpt-image-2", "size": size, "output_format": "jpeg",
              "quality": "low"},
    )  # fmt: skip
    assert response.status_code == 200, response.text[:300]
    body = response.json()
    expected = "1024x1024" if size == "auto" else size
    assert body["size"] == expected
    width, height = (int(side) for side in expected.split("x"))
    image = _b64_image(body["data"][0]["b64_json"])
    assert image == ("JPEG", (width, height))


def test_the_emulator_requires_the_bearer_key(http: httpx.Client) -> None:
    anonymous = httpx.post(f"{http.base_url}{GENERATIONS}", json={"prompt": "x"}, timeout=10)
    assert anonymous.status_code == 401
    assert "didn't provide an API key" in _error_of(anonymous)["message"]
    wrong = http.get("/v1/models", headers={"Authorization": f"Bearer {WRONG_KEY}"})
    assert wrong.status_code == 401
    error = _error_of(wrong)
    assert error["code"] == "invalid_api_key"
    assert WRONG_KEY not in error["message"]
    assert http.get("/v1/models").status_code == 200


def test_the_emulators_edits_take_a_single_image_field_and_check_the_mask(
    http: httpx.Client,
) -> None:
    image = _png((1024, 1024), (9, 9, 9))
    data = {"model": "gpt-image-1.5", "prompt": "x", "quality": "low"}
    ok = http.post(EDITS, data=data, files={"image": ("a.png", image, "image/png")})
    assert ok.status_code == 200, ok.text[:300]
    assert ok.json()["usage"]["input_tokens_details"]["image_tokens"] > 0

    opaque_mask = _png((1024, 1024), (0, 0, 0))
    no_alpha = http.post(
        EDITS,
        data=data,
        files=[("image", ("a.png", image, "image/png")),
               ("mask", ("m.png", opaque_mask, "image/png"))],
    )  # fmt: skip
    assert no_alpha.status_code == 400
    assert _error_of(no_alpha)["param"] == "mask"

    small_mask = _png((512, 512), (0, 0, 0, 0), mode="RGBA")
    mismatch = http.post(
        EDITS,
        data=data,
        files=[("image", ("a.png", image, "image/png")),
               ("mask", ("m.png", small_mask, "image/png"))],
    )  # fmt: skip
    assert mismatch.status_code == 400
    assert "does not match" in _error_of(mismatch)["message"]

    not_an_image = http.post(EDITS, data=data, files={"image": ("a.png", b"nope", "image/png")})
    assert _error_of(not_an_image)["code"] == "invalid_image_file"
    unknown = http.post(EDITS, data=data, files={"unused": ("a.png", image, "image/png")})
    assert _error_of(unknown)["code"] == "unknown_parameter"
    mask = _png((1024, 1024), (0, 0, 0, 0), mode="RGBA")
    missing = http.post(EDITS, data=data, files={"mask": ("m.png", mask, "image/png")})
    assert _error_of(missing)["code"] == "missing_required_parameter"


def test_the_emulators_control_api(http: httpx.Client, emulator: Starlette) -> None:
    pushed = http.post("/_emulator/faults", json={"kind": "rate_limit", "retry_after": 3})
    assert pushed.status_code == 201
    limited = http.get("/v1/models")
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "3"

    http.post("/_emulator/faults", json={"kind": "server_error", "times": 5})
    assert http.delete("/_emulator/faults").status_code == 204
    assert http.get("/v1/models/gpt-image-2").status_code == 200
    assert http.get("/v1/models/no-such-model").status_code == 404
    assert http.post("/_emulator/faults", json={"kind": "no-such-fault"}).status_code == 400

    recorded = http.get("/_emulator/requests").json()
    assert [r["path"] for r in recorded] == [
        "/v1/models",
        "/v1/models/gpt-image-2",
        "/v1/models/no-such-model",
    ]
    assert all("authorization" not in r["headers"] for r in recorded)


def test_unknown_routes_answer_in_openais_error_shape(http: httpx.Client) -> None:
    response = http.post("/v1/images/variations-of-nothing", json={})
    assert response.status_code == 404
    assert "Invalid URL" in _error_of(response)["message"]


# A minimal validator for the JSON Schema subset OpenAI's spec uses in these schemas ($ref,
# anyOf, type, nullable, enum, required, properties, items, minimum, maximum). jsonschema is
# not in the venv, and these few keywords are all the response schemas need.


def _spec() -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(SPEC.read_text())
    return spec


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def _violations(
    value: Any, schema: dict[str, Any], spec: dict[str, Any], at: str = "$"
) -> list[str]:
    if "$ref" in schema:
        target: Any = spec
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return _violations(value, target, spec, at)
    if value is None and schema.get("nullable"):
        return []
    if "anyOf" in schema:
        if all(_violations(value, option, spec, at) for option in schema["anyOf"]):
            return [f"{at}: matches none of anyOf"]
        return []
    problems: list[str] = []
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        allowed = tuple(t for k in kinds for t in _TYPES[k])
        is_bool = isinstance(value, bool)
        if not isinstance(value, allowed) or (is_bool and "boolean" not in kinds):
            return [f"{at}: {type(value).__name__} is not {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{at}: {value!r} not in {schema['enum']}")
    if "minimum" in schema and value < schema["minimum"]:
        problems.append(f"{at}: below minimum")
    if "maximum" in schema and value > schema["maximum"]:
        problems.append(f"{at}: above maximum")
    if isinstance(value, dict):
        problems += [
            f"{at}: missing {name}" for name in schema.get("required", ()) if name not in value
        ]
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                problems += _violations(value[name], sub, spec, f"{at}.{name}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            problems += _violations(item, schema["items"], spec, f"{at}[{index}]")
    return problems


def _schema(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def test_the_minimal_validator_catches_what_it_should() -> None:
    spec = _spec()
    assert _violations({"data": []}, _schema("ImagesResponse"), spec) == ["$: missing created"]
    bad = {"created": 1, "quality": "auto", "usage": {"input_tokens": "1"}}
    problems = _violations(bad, _schema("ImagesResponse"), spec)
    assert any("quality" in p for p in problems)
    assert any("usage.input_tokens" in p for p in problems)
    assert any("missing total_tokens" in p for p in problems)


def test_the_emulators_answers_match_the_published_schemas(http: httpx.Client) -> None:
    spec = _spec()
    generated = http.post(
        GENERATIONS,
        json={"prompt": "a lighthouse", "model": "gpt-image-1.5", "n": 2, "size": "1536x1024",
              "quality": "low", "output_format": "jpeg"},
    )  # fmt: skip
    assert generated.status_code == 200
    assert _violations(generated.json(), _schema("ImagesResponse"), spec) == []

    edited = http.post(
        EDITS,
        data={"model": "gpt-image-1-mini", "prompt": "x", "quality": "medium"},
        files=[("image[]", ("a.png", _png((1024, 1536), (1, 1, 1)), "image/png"))],
    )
    assert edited.status_code == 200
    body = edited.json()
    assert body["size"] == "1024x1536"  # auto: the standard size nearest the source's shape
    assert _violations(body, _schema("ImagesResponse"), spec) == []

    refused = http.post(GENERATIONS, json={"prompt": "x", "model": "gpt-image-2", "n": 99})
    assert _violations(refused.json(), _schema("ErrorResponse"), spec) == []
    unauthorised = http.get("/v1/models", headers={"Authorization": "Bearer nope"})
    assert _violations(unauthorised.json(), _schema("ErrorResponse"), spec) == []
    models = http.get("/v1/models").json()
    assert _violations(models, _schema("ListModelsResponse"), spec) == []


def test_gpt_image_2s_free_sizes_are_reported_though_the_specs_size_enum_predates_them(
    http: httpx.Client,
) -> None:
    response = http.post(
        GENERATIONS,
        json={"prompt": "x", "model": "gpt-image-2", "size": "1536x864", "quality": "low",
              "output_format": "webp"},
    )  # fmt: skip
    problems = _violations(response.json(), _schema("ImagesResponse"), _spec())
    assert problems == ["$.size: '1536x864' not in ['1024x1024', '1024x1536', '1536x1024']"]


def test_the_output_token_table_is_openais() -> None:
    assert OUTPUT_TOKENS == {
        "low": {(1024, 1024): 272, (1024, 1536): 408, (1536, 1024): 400},
        "medium": {(1024, 1024): 1056, (1024, 1536): 1584, (1536, 1024): 1568},
        "high": {(1024, 1024): 4160, (1024, 1536): 6240, (1536, 1024): 6208},
    }
    # Free-form sizes scale with area, within 2% of the table where the two meet.
    for quality, table in OUTPUT_TOKENS.items():
        for (width, height), tokens in table.items():
            scaled = table[(1024, 1024)] * width * height / (1024 * 1024)
            assert abs(scaled - tokens) / tokens <= 0.02, (quality, width, height)
    assert output_tokens_per_image("high", (2048, 2048)) == 4 * 4160


# --- helpers -----------------------------------------------------------------------------------


def _b64_image(encoded: str) -> tuple[str, tuple[int, int]]:
    return _decoded(base64.b64decode(encoded))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
