"""The Stability adapter against the Stability emulator, over a real loopback socket.

Each test speaks real multipart HTTP to ``imagegen.testing.emulators.stability`` and checks
both sides: what the adapter sent (the emulator's recorded requests) and what it made of the
answer (images, seeds, costs, warnings, or the imagegen error a fault must become).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imagegen.application.ports import InputImage, Outpaint, ProviderRequest
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
from imagegen.infrastructure.providers.stability import (
    CREDIT_PRICES,
    MODELS,
    OUTPUT_SIZES,
    StabilityProvider,
    nearest_aspect_ratio,
    price_usd,
)
from imagegen.testing.emulators import FaultKind, serve
from imagegen.testing.emulators.stability import create_app

KEY = "sk-stab-test-0123456789abcdef"
GEN = "/v2beta/stable-image/generate"
EDIT = "/v2beta/stable-image/edit"


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
    app.state.credits = 1000.0
    return app


@pytest.fixture
def base_url(served: tuple[Starlette, str], emulator: Starlette) -> str:
    return served[1]


@pytest.fixture
def provider(base_url: str) -> StabilityProvider:
    return StabilityProvider(api_key=SecretStr(KEY), base_url=base_url, timeout_s=10)


def request(model: str = "stable-image-core", **overrides: Any) -> ProviderRequest:
    values: dict[str, Any] = {
        "model": model,
        "prompt": "a red fox in the snow",
        "n": 1,
        "size": ImageSize(1024, 1024),
        "format": ImageFormat.PNG,
    }
    values.update(overrides)
    return ProviderRequest(**values)


def picture(width: int = 160, height: int = 120, *, fmt: str = "PNG") -> InputImage:
    image = Image.new("RGB", (width, height), (40, 120, 200))
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return InputImage(
        data=buffer.getvalue(), format=ImageFormat(fmt.lower()), width=width, height=height
    )


def mask(width: int = 160, height: int = 120) -> InputImage:
    image = Image.new("L", (width, height), 0)
    image.paste(255, (40, 30, 120, 90))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return InputImage(data=buffer.getvalue(), format=ImageFormat.PNG, width=width, height=height)


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def only_request(app: Starlette) -> dict[str, Any]:
    recorded = app.state.requests
    assert len(recorded) == 1, recorded
    return recorded[0]  # type: ignore[no-any-return]


# --- generation --------------------------------------------------------------------------------


async def test_core_generates_at_the_aspect_ratio_of_the_requested_size(
    provider: StabilityProvider, emulator: Starlette
) -> None:
    result = await provider.generate(request("stable-image-core", size=ImageSize(1344, 768)))

    sent = only_request(emulator)
    assert sent["path"] == f"{GEN}/core"
    assert sent["fields"] == {
        "prompt": "a red fox in the snow",
        "aspect_ratio": "16:9",
        "output_format": "png",
    }
    assert sent["files"] == {}
    assert sent["headers"]["accept"] == "image/*"
    assert sent["headers"]["content-type"].startswith("multipart/form-data; boundary=")
    assert sent["headers"]["stability-client-id"] == "imagegen"
    assert "authorization" not in sent["headers"]
    assert sent["authorized"]
    image = decode(result.images[0].data)
    assert (image.format, image.size) == ("PNG", (1344, 768))
    assert result.cost_usd == Money(Decimal("0.03"))
    assert result.warnings == ()
    assert result.provider_job_id is None


async def test_ultra_maps_an_inexact_size_to_the_nearest_ratio_and_says_so(
    provider: StabilityProvider, emulator: Starlette
) -> None:
    result = await provider.generate(
        request("stable-image-ultra", size=ImageSize(1200, 800), format=ImageFormat.JPEG)
    )

    sent = only_request(emulator)
    assert sent["path"] == f"{GEN}/ultra"
    assert sent["fields"]["aspect_ratio"] == "3:2"
    assert sent["fields"]["output_format"] == "jpeg"
    assert "model" not in sent["fields"]
    image = decode(result.images[0].data)
    assert (image.format, image.size) == ("JPEG", (1216, 832))
    assert any("3:2" in w and "1216x832" in w for w in result.warnings)
    assert result.cost_usd == Money(Decimal("0.08"))


@pytest.mark.parametrize(
    ("model", "usd"),
    [
        ("sd3.5-large", "0.065"),
        ("sd3.5-large-turbo", "0.04"),
        ("sd3.5-medium", "0.035"),
        ("sd3.5-flash", "0.025"),
    ],
)
async def test_sd3_models_call_the_sd3_endpoint_with_their_model_id(
    provider: StabilityProvider, emulator: Starlette, model: str, usd: str
) -> None:
    result = await provider.generate(
        request(model, size=ImageSize(768, 1344), format=ImageFormat.WEBP)
    )

    sent = only_request(emulator)
    assert sent["path"] == f"{GEN}/sd3"
    assert sent["fields"]["model"] == model
    assert sent["fields"]["aspect_ratio"] == "9:16"
    image = decode(result.images[0].data)
    assert (image.format, image.size) == ("WEBP", (768, 1344))
    assert result.cost_usd == Money(Decimal(usd))


async def test_a_seed_is_sent_and_round_trips_through_the_seed_header(
    provider: StabilityProvider, emulator: Starlette
) -> None:
    first = await provider.generate(request(seed=Seed(1234)))
    again = await provider.generate(request(seed=Seed(1234)))

    assert [r["fields"]["seed"] for r in emulator.state.requests] == ["1234", "1234"]
    assert first.images[0].seed == Seed(1234)
    assert first.images[0].data == again.images[0].data  # same prompt + seed, same image


async def test_without_a_seed_none_is_sent_and_the_seed_stability_used_is_reported(
    provider: StabilityProvider, emulator: Starlette
) -> None:
    result = await provider.generate(request())

    assert "seed" not in only_request(emulator)["fields"]
    seed = result.images[0].seed
    assert seed is not None
    assert seed.value > 0


async def test_seed_zero_means_random_at_stability_so_it_is_not_sent_and_we_warn(
    provider: StabilityProvider, emulator: Starlette
) -> None:
    result = await provider.generate(request(seed=Seed(0)))

    assert "seed" not in only_request(emulator)["fields"]
    assert any("seed 0" in w for w in result.warnings)


async def test_a_seed_above_stabilitys_range_is_refused_before_any_call(
    provider: StabilityProvider, emulator: Starlette
) -> None:
    with pytest.raises(InvalidParameter, match="4294967294"):
        await provider.generate(request(seed=Seed(2**32 - 1)))
    assert emulator.state.requests == []


async def test_the_negative_prompt_goes_to_endpoints_that_take_it(
    provider: StabilityProvider, emulator: Starlette
) -> None:
    await provider.generate(request("stable-image-core", negative_prompt="blurry, text"))

    assert only_request(emulator)["fields"]["negative_prompt"] == "blurry, text"


async def test_n_images_are_n_concurrent_calls_with_consecutive_seeds(
    provider: StabilityProvider, emulator: Starlette
) -> None:
    emulator.state.faults.latency_s = 0.6
    started = time.perf_counter()
    result = await provider.generate(request("sd3.5-medium", n=3, seed=Seed(10)))
    elapsed = time.perf_counter() - started

    assert sorted(r["fields"]["seed"] for r in emulator.state.requests) == ["10", "11", "12"]
    assert [i.seed for i in result.images] == [Seed(10), Seed(11), Seed(12)]
    assert result.cost_usd == Money(Decimal("0.105"))
    assert elapsed < 1.5  # three 0.6 s calls at once, not one after another (>= 1.8 s)


async def test_one_failed_call_of_a_batch_fails_the_whole_request(
    provider: StabilityProvider, emulator: Starlette
) -> None:
    emulator.state.faults.add(FaultKind.SERVER_ERROR, status=502)

    with pytest.raises(ProviderUnavailable):
        await provider.generate(request(n=3))
    # The batch's other calls were already on the wire when it failed: let them land here, so
    # that on a busy machine they are not recorded as the next test's requests.
    deadline = time.monotonic() + 2
    while len(emulator.state.requests) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert 1 <= len(emulator.state.requests) <= 3


# --- edits -------------------------------------------------------------------------------------


async def test_inpaint_sends_image_mask_and_prompt_and_keeps_the_source_size(
    provider: StabilityProvider, emulator: Starlette
) -> None:
    source, holes = picture(), mask()
    result = await provider.generate(
        request(
            "stable-image-inpaint",
            operation=Operation.INPAINT,
            images=(source,),
            mask=holes,
            negative_prompt="people",
            seed=Seed(7),
        )
    )

    sent = only_request(emulator)
    assert sent["path"] == f"{EDIT}/inpaint"
    assert sent["fields"] == {
        "prompt": "a red fox in the snow",
        "negative_prompt": "people",
        "seed": "7",
        "output_format": "png",
    }
    assert sent["files"]["image"]["size"] == len(source.data)
    assert sent["files"]["image"]["content_type"] == "image/png"
    assert sent["files"]["mask"]["size"] == len(holes.data)
    assert decode(result.images[0].data).size == (160, 120)
    assert result.images[0].seed == Seed(7)
    assert result.cost_usd == Money(Decimal("0.05"))


async def test_outpaint_sends_only_the_margins_it_grows_and_the_image_grows_by_them(
    provider: StabilityProvider, emulator: Starlette
) -> None:
    result = await provider.generate(
        request(
            "stable-image-outpaint",
            operation=Operation.OUTPAINT,
            images=(picture(fmt="JPEG"),),
            outpaint=Outpaint(left=64, down=32),
            format=ImageFormat.WEBP,
        )
    )

    sent = only_request(emulator)
    assert sent["path"] == f"{EDIT}/outpaint"
    assert sent["fields"] == {
        "left": "64",
        "down": "32",
        "prompt": "a red fox in the snow",
        "output_format": "webp",
    }
    assert sent["files"]["image"]["content_type"] == "image/jpeg"
    image = decode(result.images[0].data)
    assert (image.format, image.size) == ("WEBP", (160 + 64, 120 + 32))
    assert result.cost_usd == Money(Decimal("0.04"))


async def test_outpaint_without_a_margin_is_refused_before_any_call(
    provider: StabilityProvider, emulator: Starlette
) -> None:
    with pytest.raises(InvalidParameter, match="margin"):
        await provider.generate(
            request("stable-image-outpaint", operation=Operation.OUTPAINT, images=(picture(),))
        )
    assert emulator.state.requests == []


async def test_erase_sends_image_and_mask_but_no_prompt(
    provider: StabilityProvider, emulator: Starlette
) -> None:
    result = await provider.generate(
        request(
            "stable-image-erase",
            operation=Operation.ERASE,
            images=(picture(),),
            mask=mask(),
            negative_prompt="ignored here",
        )
    )

    sent = only_request(emulator)
    assert sent["path"] == f"{EDIT}/erase"
    assert sent["fields"] == {"output_format": "png"}
    assert set(sent["files"]) == {"image", "mask"}
    assert any("negative prompt" in w for w in result.warnings)
    assert decode(result.images[0].data).size == (160, 120)


async def test_search_and_replace_sends_the_search_prompt(
    provider: StabilityProvider, emulator: Starlette
) -> None:
    await provider.generate(
        request(
            "stable-image-search-and-replace",
            operation=Operation.SEARCH_AND_REPLACE,
            prompt="a golden retriever",
            search_prompt="cat",
            images=(picture(),),
        )
    )

    sent = only_request(emulator)
    assert sent["path"] == f"{EDIT}/search-and-replace"
    assert sent["fields"]["prompt"] == "a golden retriever"
    assert sent["fields"]["search_prompt"] == "cat"
    assert set(sent["files"]) == {"image"}


async def test_search_and_replace_without_a_search_prompt_is_refused_before_any_call(
    provider: StabilityProvider, emulator: Starlette
) -> None:
    with pytest.raises(InvalidParameter, match="search_prompt"):
        await provider.generate(
            request(
                "stable-image-search-and-replace",
                operation=Operation.SEARCH_AND_REPLACE,
                images=(picture(),),
            )
        )
    assert emulator.state.requests == []


async def test_remove_background_returns_a_transparent_image_and_sends_only_the_image(
    provider: StabilityProvider, emulator: Starlette
) -> None:
    result = await provider.generate(
        request(
            "stable-image-remove-background",
            operation=Operation.REMOVE_BACKGROUND,
            images=(picture(),),
            seed=Seed(5),
        )
    )

    sent = only_request(emulator)
    assert sent["path"] == f"{EDIT}/remove-background"
    assert sent["fields"] == {"output_format": "png"}
    assert set(sent["files"]) == {"image"}
    image = decode(result.images[0].data)
    assert image.mode == "RGBA"
    assert image.getchannel("A").getextrema()[0] == 0  # the background is transparent
    assert any("seed" in w for w in result.warnings)


async def test_remove_background_cannot_produce_jpeg(
    provider: StabilityProvider, emulator: Starlette
) -> None:
    with pytest.raises(InvalidParameter, match="png or webp"):
        await provider.generate(
            request(
                "stable-image-remove-background",
                operation=Operation.REMOVE_BACKGROUND,
                images=(picture(),),
                format=ImageFormat.JPEG,
            )
        )
    assert emulator.state.requests == []


@pytest.mark.parametrize(
    ("operation", "endpoint", "extra"),
    [
        (Operation.INPAINT, "inpaint", {}),
        (Operation.OUTPAINT, "outpaint", {"outpaint": Outpaint(right=16)}),
        (Operation.ERASE, "erase", {}),
        (Operation.SEARCH_AND_REPLACE, "search-and-replace", {"search_prompt": "sky"}),
        (Operation.REMOVE_BACKGROUND, "remove-background", {}),
    ],
)
async def test_stable_image_edit_lets_the_operation_pick_the_endpoint(
    provider: StabilityProvider,
    emulator: Starlette,
    operation: Operation,
    endpoint: str,
    extra: dict[str, Any],
) -> None:
    result = await provider.generate(
        request("stable-image-edit", operation=operation, images=(picture(),), **extra)
    )

    assert only_request(emulator)["path"] == f"{EDIT}/{endpoint}"
    assert result.cost_usd == price_usd("stable-image-edit", operation)


async def test_an_edit_without_a_source_image_is_refused(provider: StabilityProvider) -> None:
    with pytest.raises(InvalidParameter, match="image to edit"):
        await provider.generate(request("stable-image-erase", operation=Operation.ERASE))


async def test_models_refuse_operations_they_do_not_serve(provider: StabilityProvider) -> None:
    with pytest.raises(UnsupportedOperation):
        await provider.generate(
            request("stable-image-core", operation=Operation.INPAINT, images=(picture(),))
        )
    with pytest.raises(UnsupportedOperation):
        await provider.generate(request("stable-image-edit"))  # GENERATE
    with pytest.raises(UnknownModel):
        await provider.generate(request("sdxl-1.0"))


async def test_an_input_image_stability_refuses_becomes_provider_rejected_with_its_message(
    provider: StabilityProvider, emulator: Starlette
) -> None:
    with pytest.raises(ProviderRejected) as caught:
        await provider.generate(
            request("stable-image-erase", operation=Operation.ERASE, images=(picture(32, 32),))
        )

    assert caught.value.details["status"] == 400
    assert caught.value.details["error_name"] == "bad_request"
    assert "at least 64 pixels" in caught.value.message


# --- faults ------------------------------------------------------------------------------------


async def test_a_prompt_refused_by_moderation_is_a_content_violation_at_input(
    provider: StabilityProvider, emulator: Starlette
) -> None:
    emulator.state.faults.add(FaultKind.CONTENT_REFUSAL, stage="input")

    with pytest.raises(ContentPolicyViolation) as caught:
        await provider.generate(request())

    assert caught.value.stage == "input"
    assert caught.value.details["status"] == 403
    assert caught.value.details["error_name"] == "content_moderation"


async def test_a_filtered_result_is_a_content_violation_at_output(
    provider: StabilityProvider, emulator: Starlette
) -> None:
    emulator.state.faults.add(FaultKind.CONTENT_REFUSAL, stage="output")

    with pytest.raises(ContentPolicyViolation) as caught:
        await provider.generate(request())

    assert caught.value.stage == "output"
    assert only_request(emulator)["status"] == 200  # Stability answered, blurred


@pytest.mark.parametrize(("retry_after", "expected"), [(7, 7.0), (None, None)])
async def test_429_is_rate_limited_with_retry_after_when_given(
    provider: StabilityProvider,
    emulator: Starlette,
    retry_after: float | None,
    expected: float | None,
) -> None:
    emulator.state.faults.add(FaultKind.RATE_LIMIT, retry_after=retry_after)

    with pytest.raises(RateLimited) as caught:
        await provider.generate(request())

    assert caught.value.retry_after == expected
    assert caught.value.details["error_name"] == "rate_limit_exceeded"


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_provider_unavailable(
    provider: StabilityProvider, emulator: Starlette, status: int
) -> None:
    emulator.state.faults.add(FaultKind.SERVER_ERROR, status=status)

    with pytest.raises(ProviderUnavailable) as caught:
        await provider.generate(request())
    assert caught.value.details["status"] == status


async def test_a_hung_request_times_out_as_provider_unavailable(
    base_url: str, emulator: Starlette
) -> None:
    emulator.state.faults.add(FaultKind.TIMEOUT, delay=30)
    impatient = StabilityProvider(api_key=SecretStr(KEY), base_url=base_url, timeout_s=0.3)

    started = time.perf_counter()
    with pytest.raises(ProviderUnavailable) as caught:
        await impatient.generate(request())

    assert caught.value.details["reason"] == "timeout"
    assert time.perf_counter() - started < 3


async def test_a_refused_connection_is_provider_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nowhere = StabilityProvider(api_key=SecretStr(KEY), base_url=f"http://127.0.0.1:{port}")

    with pytest.raises(ProviderUnavailable) as caught:
        await nowhere.generate(request())
    assert caught.value.details["reason"] == "connection"


async def test_a_200_whose_body_is_not_an_image_is_a_protocol_error(
    provider: StabilityProvider, emulator: Starlette
) -> None:
    emulator.state.faults.add(FaultKind.MALFORMED)

    with pytest.raises(ProviderProtocolError, match="not a PNG, JPEG or WebP"):
        await provider.generate(request())


async def test_an_auth_fault_is_authentication_failed(
    provider: StabilityProvider, emulator: Starlette
) -> None:
    emulator.state.faults.add(FaultKind.AUTH_ERROR)

    with pytest.raises(AuthenticationFailed):
        await provider.generate(request())


async def test_a_wrong_key_is_authentication_failed(base_url: str, emulator: Starlette) -> None:
    wrong = StabilityProvider(api_key=SecretStr("sk-wrong-key-987654321"), base_url=base_url)

    with pytest.raises(AuthenticationFailed) as caught:
        await wrong.generate(request())

    assert caught.value.details["status"] == 401
    assert caught.value.details["error_name"] == "unauthorized"
    assert "sk-wrong-key-987654321" not in repr(caught.value.details)


@pytest.mark.parametrize("status", [400, 413, 422])
async def test_client_errors_are_provider_rejected_with_stabilitys_error_name(
    provider: StabilityProvider, emulator: Starlette, status: int
) -> None:
    emulator.state.faults.add(FaultKind.BAD_REQUEST, status=status)

    with pytest.raises(ProviderRejected) as caught:
        await provider.generate(request())

    assert caught.value.details["status"] == status
    assert caught.value.details["error_name"] == "bad_request"
    assert caught.value.details["errors"] == ["some-field: is invalid"]


async def test_an_account_without_credits_is_provider_rejected(
    provider: StabilityProvider, emulator: Starlette
) -> None:
    emulator.state.credits = 1.0

    with pytest.raises(ProviderRejected) as caught:
        await provider.generate(request("stable-image-ultra"))
    assert caught.value.details["error_name"] == "payment_required"


async def test_latency_slows_the_answer_but_it_still_succeeds(
    provider: StabilityProvider, emulator: Starlette
) -> None:
    emulator.state.faults.add(FaultKind.LATENCY, delay=0.25)

    started = time.perf_counter()
    result = await provider.generate(request())

    assert time.perf_counter() - started >= 0.25
    assert len(result.images) == 1


async def test_resume_is_unsupported(provider: StabilityProvider) -> None:
    with pytest.raises(UnsupportedOperation):
        await provider.resume("job-1", request())


# --- a misbehaving server (things the emulator never does) -------------------------------------


@pytest.fixture(scope="module")
def rogue() -> Iterator[tuple[Starlette, str]]:
    async def answer(request: Request) -> Response:
        reply: Response = request.app.state.reply(request)
        return reply

    app = Starlette(
        routes=[Route("/{path:path}", answer, methods=["GET", "POST"])],
    )
    with serve(app) as base_url:
        yield app, base_url


def rogue_provider(rogue: tuple[Starlette, str], reply: Any) -> StabilityProvider:
    rogue[0].state.reply = reply
    return StabilityProvider(api_key=SecretStr(KEY), base_url=rogue[1], timeout_s=5)


async def test_a_json_body_on_200_is_a_protocol_error(rogue: tuple[Starlette, str]) -> None:
    body = json.dumps({"image": "aGVsbG8=", "finish_reason": "SUCCESS", "seed": 1})
    provider = rogue_provider(
        rogue, lambda _: Response(body, media_type="application/json; type=image/png")
    )

    with pytest.raises(ProviderProtocolError, match="application/json"):
        await provider.generate(request())


async def test_an_image_in_another_format_than_asked_is_a_protocol_error(
    rogue: tuple[Starlette, str],
) -> None:
    jpeg = picture(fmt="JPEG").data
    provider = rogue_provider(rogue, lambda _: Response(jpeg, media_type="image/png"))

    with pytest.raises(ProviderProtocolError, match="jpeg where png"):
        await provider.generate(request())


async def test_an_error_echoing_the_key_is_scrubbed(
    rogue: tuple[Starlette, str], caplog: pytest.LogCaptureFixture
) -> None:
    def echo(req: Request) -> Response:
        body = {
            "id": "x",
            "name": "bad_request",
            "errors": [f"authorization: {req.headers['authorization']} is odd", f"key {KEY}"],
        }
        return Response(json.dumps(body), status_code=400, media_type="application/json")

    provider = rogue_provider(rogue, echo)
    caplog.set_level(logging.DEBUG)

    with pytest.raises(ProviderRejected) as caught:
        await provider.generate(request())

    error = caught.value
    assert "[redacted]" in error.message
    texts = [str(error), repr(error), error.message, json.dumps(error.details), repr(provider)]
    texts += [record.getMessage() for record in caplog.records]
    assert not any(KEY in text for text in texts)


async def test_retry_after_as_an_http_date_becomes_seconds(rogue: tuple[Starlette, str]) -> None:
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 120))
    provider = rogue_provider(
        rogue,
        lambda _: Response(
            '{"id": "x", "name": "rate_limit_exceeded", "errors": ["slow down"]}',
            status_code=429,
            media_type="application/json",
            headers={"retry-after": later},
        ),
    )

    with pytest.raises(RateLimited) as caught:
        await provider.generate(request())
    assert caught.value.retry_after is not None
    assert 100 < caught.value.retry_after <= 120


async def test_a_non_json_error_body_still_maps_by_status(rogue: tuple[Starlette, str]) -> None:
    provider = rogue_provider(
        rogue, lambda _: Response("<html>Bad gateway</html>", status_code=502)
    )

    with pytest.raises(ProviderUnavailable, match="HTTP 502"):
        await provider.generate(request())


# --- secrets, imports, configuration ---------------------------------------------------------


async def test_no_error_message_log_or_repr_contains_the_key(
    provider: StabilityProvider, emulator: Starlette, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[ImageGenError] = []
    faults: list[tuple[FaultKind, dict[str, Any]]] = [
        (FaultKind.AUTH_ERROR, {}),
        (FaultKind.RATE_LIMIT, {"retry_after": 1}),
        (FaultKind.BAD_REQUEST, {}),
        (FaultKind.CONTENT_REFUSAL, {"stage": "input"}),
        (FaultKind.CONTENT_REFUSAL, {"stage": "output"}),
        (FaultKind.SERVER_ERROR, {}),
        (FaultKind.MALFORMED, {}),
    ]
    for kind, options in faults:
        emulator.state.faults.add(kind, **options)
        with pytest.raises(ImageGenError) as caught:
            await provider.generate(request())
        errors.append(caught.value)
    result = await provider.generate(request())

    texts = [repr(provider), repr(result), str(await provider.health())]
    for error in errors:
        texts += [str(error), repr(error), json.dumps(error.details, default=str)]
        cause = error.__cause__
        while cause is not None:
            texts.append(str(cause))
            cause = cause.__cause__
    texts += [record.getMessage() for record in caplog.records]
    texts.append(json.dumps(emulator.state.requests))
    assert not any(KEY in text for text in texts)


def test_importing_imagegen_or_the_adapter_does_not_import_httpx() -> None:
    code = (
        "import sys, imagegen\n"
        "assert 'httpx' not in sys.modules, 'imagegen imported httpx'\n"
        "import imagegen.infrastructure.providers.stability\n"
        "assert 'httpx' not in sys.modules, 'the Stability adapter imported httpx'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_without_httpx_the_provider_says_how_to_install_it() -> None:
    code = (
        "import asyncio, sys\n"
        "sys.modules['httpx'] = None  # as if it were not installed\n"
        "from pydantic import SecretStr\n"
        "from imagegen import ConfigurationError\n"
        "from imagegen.application.ports import ProviderRequest\n"
        "from imagegen.domain.values import ImageFormat, ImageSize\n"
        "from imagegen.infrastructure.providers.stability import StabilityProvider\n"
        "p = StabilityProvider(api_key=SecretStr('sk-x'))\n"
        "r = ProviderRequest(model='stable-image-core', prompt='x', n=1,\n"
        "                    size=ImageSize(1024, 1024), format=ImageFormat.PNG)\n"
        "try:\n"
        "    asyncio.run(p.generate(r))\n"
        "except ConfigurationError as e:\n"
        "    print(e.message)\n"
        "h = asyncio.run(p.health())\n"
        "print(h.ok, h.detail)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "pip install 'imagegen[stability]'" in lines[0]
    assert lines[1].startswith("False")
    assert "imagegen[stability]" in lines[1]


async def test_without_a_key_calls_fail_with_a_configuration_error(base_url: str) -> None:
    keyless = StabilityProvider(api_key=None, base_url=base_url)

    with pytest.raises(ConfigurationError, match="STABILITY_API_KEY"):
        await keyless.generate(request())
    health = await keyless.health()
    assert not health.ok
    assert "API key" in health.detail


def test_a_base_url_that_is_not_http_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        StabilityProvider(api_key=SecretStr(KEY), base_url="api.stability.ai")


# --- health ------------------------------------------------------------------------------------


async def test_health_reports_the_credits_left_and_the_latency(
    provider: StabilityProvider, emulator: Starlette
) -> None:
    emulator.state.credits = 42.5

    health = await provider.health()

    assert health.ok
    assert health.provider == "stability"
    assert health.detail == "42.5 credits left"
    assert health.latency_ms is not None
    assert health.latency_ms >= 0
    sent = only_request(emulator)
    assert (sent["method"], sent["path"]) == ("GET", "/v1/user/balance")


async def test_health_never_raises(base_url: str, emulator: Starlette) -> None:
    wrong = StabilityProvider(api_key=SecretStr("sk-wrong-key-987654321"), base_url=base_url)
    refused = await wrong.health()
    assert not refused.ok
    assert "AuthenticationFailed" in refused.detail
    assert "sk-wrong-key" not in refused.detail

    emulator.state.faults.add(FaultKind.MALFORMED, route="/v1/user/balance")
    garbled = await StabilityProvider(api_key=SecretStr(KEY), base_url=base_url).health()
    assert not garbled.ok

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = await StabilityProvider(
        api_key=SecretStr(KEY), base_url=f"http://127.0.0.1:{port}"
    ).health()
    assert not down.ok
    assert down.latency_ms is not None


# --- the emulator's own contract ---------------------------------------------------------------


async def test_the_emulator_answers_json_when_asked(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        response = await client.post(
            f"{GEN}/core",
            headers={"authorization": f"Bearer {KEY}", "accept": "application/json"},
            files={"prompt": (None, "a lighthouse"), "seed": (None, "99")},
        )

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; type=image/png"
    body = response.json()
    assert body["finish_reason"] == "SUCCESS"
    assert body["seed"] == 99
    assert decode(base64.b64decode(body["image"])).size == OUTPUT_SIZES["1:1"]


@pytest.mark.parametrize(
    ("path", "fields", "message"),
    [
        (f"{GEN}/core", {"aspect_ratio": "1:1"}, "prompt: is required"),
        (f"{GEN}/core", {"prompt": "x", "aspect_ratio": "4:3"}, "aspect_ratio: must be one of"),
        (f"{GEN}/sd3", {"prompt": "x", "model": "sd4"}, "model: must be one of"),
        (f"{GEN}/ultra", {"prompt": "x", "output_format": "gif"}, "output_format: must be"),
        (f"{GEN}/ultra", {"prompt": "x", "seed": "4294967295"}, "seed: must be between"),
        (f"{EDIT}/inpaint", {"prompt": "x"}, "image: is required"),
        (f"{EDIT}/remove-background", {"output_format": "jpeg"}, "output_format: must be"),
    ],
)
async def test_the_emulator_validates_requests_like_stability(
    base_url: str, path: str, fields: dict[str, str], message: str
) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        response = await client.post(
            path,
            headers={"authorization": f"Bearer {KEY}", "accept": "image/*"},
            files={name: (None, value) for name, value in fields.items()},
        )

    assert response.status_code == 400
    body = response.json()
    assert body["name"] == "bad_request"
    assert set(body) == {"id", "name", "errors"}
    assert any(message in error for error in body["errors"]), body


async def test_the_emulator_requires_the_key_and_answers_in_stabilitys_shape(
    base_url: str,
) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        response = await client.post(f"{GEN}/core", files={"prompt": (None, "x")})

    assert response.status_code == 401
    assert response.json()["name"] == "unauthorized"
    assert response.json()["errors"]


async def test_the_emulator_control_api_sets_faults_and_lists_requests(
    base_url: str, provider: StabilityProvider, emulator: Starlette
) -> None:
    async with httpx.AsyncClient(base_url=base_url) as control:
        added = await control.post(
            "/_emulator/faults", json={"kind": "rate_limit", "retry_after": 3, "times": 2}
        )
        assert added.json() == {"pending": 2}
        with pytest.raises(RateLimited):
            await provider.generate(request())
        await control.delete("/_emulator/faults")
        await provider.generate(request())
        listed = (await control.get("/_emulator/requests")).json()

    assert [r["status"] for r in listed] == [429, 200]
    assert all("authorization" not in r["headers"] for r in listed)


def test_the_price_table_and_model_list_agree() -> None:
    for model in MODELS.values():
        for operation in model.operations:
            endpoint = model.endpoint_for(operation)
            assert (endpoint, model.sd3_model) in CREDIT_PRICES
    assert price_usd("stable-image-ultra") == Money(Decimal("0.08"))
    assert nearest_aspect_ratio(ImageSize(1920, 1080)) == "16:9"
    assert nearest_aspect_ratio(ImageSize(1000, 2400)) == "9:21"
    assert nearest_aspect_ratio(ImageSize(512, 512)) == "1:1"
