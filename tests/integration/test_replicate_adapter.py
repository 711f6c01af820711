"""The Replicate adapter, through the official client, against the Replicate emulator on a real
loopback socket: sync mode and polling, every fault the emulator injects, crash-resume, edits,
and the API token staying secret."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr
from starlette.applications import Starlette

from imagegen.application.ports import InputImage, ProviderRequest
from imagegen.domain.errors import (
    AuthenticationFailed,
    ConfigurationError,
    ContentPolicyViolation,
    ImageGenError,
    InvalidParameter,
    ProviderError,
    ProviderProtocolError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
    UnsupportedOperation,
)
from imagegen.domain.models import Operation
from imagegen.domain.values import ImageFormat, ImageSize, Seed
from imagegen.infrastructure.providers.local import render
from imagegen.infrastructure.providers.replicate import REPLICATE_MODELS, ReplicateProvider
from imagegen.testing.emulators import FaultKind, serve
from imagegen.testing.emulators.replicate import create_app

TOKEN = "r8_SECRET_do_not_leak_4f2a9c"
SCHNELL = "black-forest-labs/flux-schnell"
PRO = "black-forest-labs/flux-1.1-pro"
KONTEXT = "black-forest-labs/flux-kontext-pro"
FLUX2 = "black-forest-labs/flux-2-pro"
POLL = "/v1/predictions/"


@pytest.fixture(scope="module")
def emulator() -> Iterator[tuple[Starlette, str]]:
    app = create_app(api_token=TOKEN)
    with serve(app) as base_url:
        yield app, base_url


@pytest.fixture
def app(emulator: tuple[Starlette, str]) -> Starlette:
    """The module's emulator, its state reset for this test."""
    app = emulator[0]
    app.state.faults.clear()
    app.state.requests.clear()
    app.state.predictions.clear()
    app.state.files.clear()
    app.state.created = 0
    app.state.processing_s = 0.0
    app.state.sync_reports_processing = False
    return app


@pytest.fixture
def base_url(emulator: tuple[Starlette, str], app: Starlette) -> str:
    return emulator[1]


def provider(base_url: str, **options: Any) -> ReplicateProvider:
    settings: dict[str, Any] = {
        "api_token": SecretStr(TOKEN),
        "base_url": base_url,
        "timeout_s": 5.0,
        "poll_interval_s": 0.02,
        "wait_s": 1,
        "deadline_s": 10.0,
    }
    settings.update(options)
    return ReplicateProvider(**settings)


def request(model: str = SCHNELL, **fields: Any) -> ProviderRequest:
    values: dict[str, Any] = {
        "model": model,
        "prompt": "a red fox in the snow",
        "n": 1,
        "size": ImageSize(1024, 1024),
        "format": ImageFormat.PNG,
    }
    values.update(fields)
    return ProviderRequest(**values)


def creates(app: Starlette) -> list[dict[str, Any]]:
    return [
        r
        for r in app.state.requests
        if r["method"] == "POST" and r["path"].startswith("/v1/models/")
    ]


def polls(app: Starlette) -> list[dict[str, Any]]:
    return [r for r in app.state.requests if r["method"] == "GET" and r["path"].startswith(POLL)]


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def source_image(width: int, height: int) -> InputImage:
    data = render("a blue door", Seed(1), (width, height), ImageFormat.PNG)
    return InputImage(data=data, format=ImageFormat.PNG, width=width, height=height)


# --- generating ----------------------------------------------------------------------------------


async def test_sync_mode_returns_the_finished_images_without_polling(
    app: Starlette, base_url: str
) -> None:
    result = await provider(base_url).generate(
        request(n=2, size=ImageSize(1344, 768), format=ImageFormat.WEBP, seed=Seed(7))
    )

    assert [decode(i.data).format for i in result.images] == ["WEBP", "WEBP"]
    assert [decode(i.data).size for i in result.images] == [(1344, 768), (1344, 768)]
    assert result.warnings == ()
    assert result.cost_usd is None
    assert result.provider_job_id in app.state.predictions
    [create] = creates(app)
    assert create["headers"]["prefer"] == "wait=1"
    assert create["body"] == {
        "input": {
            "prompt": "a red fox in the snow",
            "seed": 7,
            "output_format": "webp",
            "num_outputs": 2,
            "aspect_ratio": "16:9",
        }
    }
    assert polls(app) == []


async def test_a_prediction_outlasting_the_wait_is_polled_until_it_succeeds(
    app: Starlette, base_url: str
) -> None:
    app.state.processing_s = 1.3  # longer than Prefer: wait=1

    started = time.monotonic()
    result = await provider(base_url, wait_s=1).generate(request())

    assert len(result.images) == 1
    assert decode(result.images[0].data).size == (1024, 1024)
    assert len(polls(app)) >= 1
    assert app.state.created == 1
    assert time.monotonic() - started < 4


async def test_without_sync_mode_the_adapter_polls_from_the_start(
    app: Starlette, base_url: str
) -> None:
    app.state.processing_s = 0.2

    result = await provider(base_url, wait_s=0).generate(request())

    assert len(result.images) == 1
    assert "prefer" not in creates(app)[0]["headers"]
    assert len(polls(app)) >= 2  # starting, processing, ... succeeded


async def test_sync_mode_output_reported_as_processing_is_taken_without_polling(
    app: Starlette, base_url: str
) -> None:
    # Replicate answers sync mode as soon as the files exist, sometimes still "processing".
    app.state.sync_reports_processing = True
    app.state.processing_s = 0.1

    result = await provider(base_url).generate(request())

    assert len(result.images) == 1
    assert polls(app) == []


async def test_jpeg_is_sent_as_jpg_and_a_custom_size_is_exact(
    app: Starlette, base_url: str
) -> None:
    result = await provider(base_url).generate(
        request(PRO, size=ImageSize(1024, 768), format=ImageFormat.JPEG, seed=Seed(3))
    )

    image = decode(result.images[0].data)
    assert (image.format, image.size) == ("JPEG", (1024, 768))
    assert result.images[0].seed == Seed(3)
    assert creates(app)[0]["body"]["input"] == {
        "prompt": "a red fox in the snow",
        "seed": 3,
        "output_format": "jpg",
        "aspect_ratio": "custom",
        "width": 1024,
        "height": 768,
    }


async def test_a_size_the_model_does_not_make_goes_to_the_nearest_ratio_with_a_warning(
    app: Starlette, base_url: str
) -> None:
    result = await provider(base_url).generate(request(size=ImageSize(1000, 560)))

    assert creates(app)[0]["body"]["input"]["aspect_ratio"] == "16:9"
    assert decode(result.images[0].data).size == (1344, 768)
    assert len(result.warnings) == 1
    assert "16:9" in result.warnings[0]
    assert "1344x768" in result.warnings[0]


async def test_a_small_flux1_size_uses_a_quarter_megapixel(app: Starlette, base_url: str) -> None:
    result = await provider(base_url).generate(request(size=ImageSize(512, 512)))

    assert creates(app)[0]["body"]["input"]["megapixels"] == "0.25"
    assert decode(result.images[0].data).size == (512, 512)
    assert result.warnings == ()


@pytest.mark.parametrize("model", sorted(REPLICATE_MODELS))
async def test_every_supported_model_gets_an_input_its_schema_accepts(
    app: Starlette, base_url: str, model: str
) -> None:
    result = await provider(base_url).generate(
        request(model, size=ImageSize(1024, 1024), format=ImageFormat.JPEG, seed=Seed(11))
    )

    image = decode(result.images[0].data)
    assert image.format == "JPEG"
    assert image.size[0] == image.size[1]  # 1:1, at the model's own resolution
    assert creates(app)[0]["path"] == f"/v1/models/{model}/predictions"


# --- the job id, crashes and resuming ------------------------------------------------------------


async def test_on_job_created_gets_the_id_before_the_prediction_is_finished(
    app: Starlette, base_url: str
) -> None:
    app.state.processing_s = 0.4
    seen: list[tuple[str, str]] = []

    async def persist(job_id: str) -> None:
        seen.append((job_id, app.state.predictions[job_id].status()))

    result = await provider(base_url, wait_s=0).generate(request(on_job_created=persist))

    assert seen == [(result.provider_job_id, "starting")]


async def test_after_a_crash_resume_collects_the_images_without_a_second_create(
    app: Starlette, base_url: str
) -> None:
    app.state.processing_s = 1.0
    persisted = asyncio.Event()
    job_ids: list[str] = []

    async def persist(job_id: str) -> None:
        job_ids.append(job_id)
        persisted.set()

    crashing = asyncio.create_task(
        provider(base_url, wait_s=0).generate(request(seed=Seed(5), on_job_created=persist))
    )
    await asyncio.wait_for(persisted.wait(), timeout=5)
    crashing.cancel()  # the process dies while it polls
    with pytest.raises(asyncio.CancelledError):
        await crashing
    [job_id] = job_ids
    assert app.state.predictions[job_id].status() in ("starting", "processing")

    result = await provider(base_url, wait_s=0).resume(job_id, request(seed=Seed(5)))

    assert result.provider_job_id == job_id
    assert decode(result.images[0].data).size == (1024, 1024)
    assert app.state.created == 1
    assert len(creates(app)) == 1
    assert not any(r["path"].endswith("/cancel") for r in app.state.requests)


async def test_resume_maps_a_prediction_that_failed_meanwhile(
    app: Starlette, base_url: str
) -> None:
    app.state.faults.add(FaultKind.FAILED)
    app.state.processing_s = 0.1
    with pytest.raises(ProviderRejected) as failed:
        await provider(base_url, wait_s=0).generate(request())
    job_id = failed.value.details["job_id"]

    with pytest.raises(ProviderRejected, match="CUDA"):
        await provider(base_url).resume(job_id, request())
    assert app.state.created == 1


async def test_resume_of_an_unknown_prediction_is_rejected(base_url: str) -> None:
    with pytest.raises(ProviderRejected, match="404"):
        await provider(base_url).resume("nosuchprediction", request())


async def test_resume_refuses_a_job_id_that_is_not_one(app: Starlette, base_url: str) -> None:
    with pytest.raises(InvalidParameter):
        await provider(base_url).resume("../account", request())
    assert app.state.requests == []


# --- faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "options", "error"),
    [
        (FaultKind.SERVER_ERROR, {"status": 503}, ProviderUnavailable),
        (FaultKind.SERVER_ERROR, {"status": 500}, ProviderUnavailable),
        (FaultKind.MALFORMED, {}, ProviderProtocolError),
        (FaultKind.AUTH_ERROR, {}, AuthenticationFailed),
        (FaultKind.BAD_REQUEST, {}, ProviderRejected),
        (FaultKind.BAD_REQUEST, {"status": 422}, ProviderRejected),
    ],
)
async def test_a_failed_create_maps_to_its_error_and_is_never_retried_by_the_client(
    app: Starlette, base_url: str, kind: FaultKind, options: dict[str, Any], error: type[Exception]
) -> None:
    app.state.faults.add(kind, **options)

    with pytest.raises(error):
        await provider(base_url).generate(request())

    assert len(creates(app)) == 1  # a POST is not idempotent: only our resilience layer retries
    assert app.state.created == 0


async def test_a_throttled_create_raises_rate_limited_with_retry_after(
    app: Starlette, base_url: str
) -> None:
    app.state.faults.add(FaultKind.RATE_LIMIT, retry_after=7)

    with pytest.raises(RateLimited) as throttled:
        await provider(base_url).generate(request())

    assert throttled.value.retry_after == 7.0
    assert "throttled" in throttled.value.message
    assert len(creates(app)) == 1


async def test_a_rejected_create_carries_replicates_detail(app: Starlette, base_url: str) -> None:
    app.state.faults.add(FaultKind.BAD_REQUEST, status=422)

    with pytest.raises(ProviderRejected, match=r"422: The request could not be understood"):
        await provider(base_url).generate(request())


async def test_a_model_replicate_does_not_have_is_rejected(app: Starlette, base_url: str) -> None:
    with pytest.raises(ProviderRejected, match="404"):
        await provider(base_url).generate(request("black-forest-labs/flux-nonexistent"))


async def test_a_create_that_hangs_times_out_as_unavailable(app: Starlette, base_url: str) -> None:
    app.state.faults.add(FaultKind.TIMEOUT, delay=30)

    started = time.monotonic()
    with pytest.raises(ProviderUnavailable, match="in time"):
        await provider(base_url, timeout_s=0.3, wait_s=0).generate(request())
    assert time.monotonic() - started < 3


async def test_latency_delays_but_does_not_break_a_call(app: Starlette, base_url: str) -> None:
    app.state.faults.add(FaultKind.LATENCY, delay=0.3)

    started = time.monotonic()
    result = await provider(base_url).generate(request())

    assert len(result.images) == 1
    assert time.monotonic() - started >= 0.3


async def test_polls_ride_out_transient_server_errors(app: Starlette, base_url: str) -> None:
    app.state.processing_s = 0.3
    app.state.faults.add(FaultKind.SERVER_ERROR, status=500, times=3, route=POLL)

    result = await provider(base_url, wait_s=0).generate(request())

    assert len(result.images) == 1
    assert len(polls(app)) >= 4
    assert app.state.created == 1


@pytest.mark.parametrize(
    ("model", "kind", "stage", "error", "text"),
    [
        (SCHNELL, FaultKind.FAILED, "input", ProviderRejected, "CUDA error"),
        (SCHNELL, FaultKind.CONTENT_REFUSAL, "output", ContentPolicyViolation, "NSFW content"),
        (PRO, FaultKind.CONTENT_REFUSAL, "output", ContentPolicyViolation, "flagged as sensitive"),
        (KONTEXT, FaultKind.CONTENT_REFUSAL, "input", ContentPolicyViolation, "E005"),
        (SCHNELL, FaultKind.ABORTED, "input", ProviderUnavailable, "aborted"),
    ],
)
async def test_a_prediction_that_ends_badly_maps_to_its_error(
    app: Starlette,
    base_url: str,
    model: str,
    kind: FaultKind,
    stage: str,
    error: type[ImageGenError],
    text: str,
) -> None:
    app.state.processing_s = 0.2
    app.state.faults.add(kind, stage=stage)

    with pytest.raises(error, match=text) as raised:
        await asyncio.wait_for(provider(base_url, wait_s=0).generate(request(model)), timeout=5)

    assert raised.value.details["job_id"] in app.state.predictions
    if isinstance(raised.value, ContentPolicyViolation):
        assert raised.value.stage == "output"


async def test_an_aborted_prediction_ends_the_polling_long_before_the_deadline(
    app: Starlette, base_url: str
) -> None:
    app.state.processing_s = 60.0  # it would run for a minute...
    app.state.faults.add(FaultKind.ABORTED, route=POLL)  # ...but the first poll finds it aborted

    started = time.monotonic()
    with pytest.raises(ProviderUnavailable, match="aborted"):
        await asyncio.wait_for(
            provider(base_url, wait_s=0, deadline_s=30).generate(request()), timeout=5
        )
    assert time.monotonic() - started < 2


async def test_the_deadline_cancels_a_prediction_that_does_not_finish(
    app: Starlette, base_url: str
) -> None:
    app.state.processing_s = 60.0

    started = time.monotonic()
    with pytest.raises(ProviderUnavailable, match="did not finish within") as late:
        await provider(base_url, wait_s=0, deadline_s=0.5).generate(request())

    assert time.monotonic() - started < 3
    job_id = late.value.details["job_id"]
    assert app.state.predictions[job_id].status() == "canceled"
    assert any(r["path"] == f"/v1/predictions/{job_id}/cancel" for r in app.state.requests)


# --- editing and what a model cannot do ----------------------------------------------------------


async def test_a_kontext_edit_sends_the_source_as_input_image(
    app: Starlette, base_url: str
) -> None:
    source = source_image(640, 480)

    result = await provider(base_url).generate(
        request(KONTEXT, operation=Operation.EDIT, images=(source,), size=ImageSize(640, 480))
    )

    sent = creates(app)[0]["body"]["input"]
    assert sent["aspect_ratio"] == "match_input_image"
    header, _, payload = sent["input_image"].partition(",")
    assert header == "data:image/png;base64"
    assert base64.b64decode(payload) == source.data
    width, height = decode(result.images[0].data).size
    assert abs(width / height - 4 / 3) < 0.02


async def test_a_flux2_edit_sends_every_reference_image(app: Starlette, base_url: str) -> None:
    images = (source_image(512, 512), source_image(256, 256))

    await provider(base_url).generate(
        request(FLUX2, operation=Operation.EDIT, images=images, size=ImageSize(1024, 1024))
    )

    sent = creates(app)[0]["body"]["input"]
    assert [base64.b64decode(uri.partition(",")[2]) for uri in sent["input_images"]] == [
        image.data for image in images
    ]
    assert sent["aspect_ratio"] == "match_input_image"


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"model": SCHNELL, "operation": Operation.EDIT}, UnsupportedOperation),
        ({"model": KONTEXT, "operation": Operation.INPAINT}, UnsupportedOperation),
        ({"model": FLUX2, "operation": Operation.REMOVE_BACKGROUND}, UnsupportedOperation),
        ({"model": KONTEXT, "operation": Operation.EDIT}, InvalidParameter),  # no source image
        ({"model": PRO, "n": 2}, InvalidParameter),  # one image per call
        (
            {"model": "black-forest-labs/flux-1.1-pro-ultra", "format": ImageFormat.WEBP},
            InvalidParameter,
        ),
        ({"model": "black-forest-labs/flux-dev:1234abcd"}, InvalidParameter),  # a version
    ],
)
async def test_what_a_model_cannot_do_is_refused_before_anything_is_sent(
    app: Starlette, base_url: str, fields: dict[str, Any], error: type[ImageGenError]
) -> None:
    with pytest.raises(error):
        await provider(base_url).generate(request(**fields))
    assert app.state.requests == []


# --- credentials and configuration ---------------------------------------------------------------


async def test_a_wrong_token_fails_authentication(app: Starlette, base_url: str) -> None:
    adapter = provider(base_url, api_token=SecretStr("r8_wrong"))
    with pytest.raises(AuthenticationFailed, match="IMAGEGEN_REPLICATE_API_TOKEN"):
        await adapter.generate(request())
    assert app.state.created == 0


async def test_a_missing_token_names_the_variables_to_set(app: Starlette, base_url: str) -> None:
    with pytest.raises(AuthenticationFailed) as missing:
        await provider(base_url, api_token=None).generate(request())

    assert "IMAGEGEN_REPLICATE_API_TOKEN" in missing.value.message
    assert "REPLICATE_API_TOKEN" in missing.value.message
    assert app.state.requests == []


async def test_without_the_replicate_package_the_error_says_what_to_install(
    base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "replicate.client", None)  # import now fails
    adapter = provider(base_url)

    with pytest.raises(ConfigurationError, match=r"pip install 'imagegen\[replicate\]'"):
        await adapter.generate(request())
    health = await adapter.health()
    assert not health.ok
    assert "imagegen[replicate]" in health.detail


async def test_the_token_never_appears_in_errors_logs_or_reprs(
    app: Starlette, base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    app.state.processing_s = 0.1
    failures = [
        (FaultKind.AUTH_ERROR, {}),
        (FaultKind.RATE_LIMIT, {"retry_after": 1}),
        (FaultKind.SERVER_ERROR, {}),
        (FaultKind.MALFORMED, {}),
        (FaultKind.BAD_REQUEST, {}),
        (FaultKind.FAILED, {}),
        (FaultKind.CONTENT_REFUSAL, {}),
        (FaultKind.ABORTED, {}),
    ]
    adapter = provider(base_url, wait_s=0)
    for kind, options in failures:
        app.state.faults.add(kind, **options)
        with pytest.raises(ProviderError) as raised:
            await adapter.generate(request())
        error: BaseException | None = raised.value
        while error is not None:  # the whole chain, SDK and httpx errors included
            texts += [str(error), repr(error), repr(getattr(error, "details", ""))]
            error = error.__cause__ or error.__context__
    texts.append(repr(adapter))
    texts.append(repr(await provider(base_url, api_token=SecretStr("r8_bad")).health()))
    result = await adapter.generate(request())
    texts.append(repr(result))

    assert all(TOKEN not in text for text in texts)
    assert TOKEN not in caplog.text
    assert all(TOKEN not in repr(r) for r in app.state.requests)


def test_importing_imagegen_does_not_import_the_replicate_client() -> None:
    code = (
        "import sys, imagegen, imagegen.infrastructure.providers.replicate\n"
        "assert 'replicate' not in sys.modules, 'replicate was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- health --------------------------------------------------------------------------------------


async def test_health_reports_the_account_and_the_latency(app: Starlette, base_url: str) -> None:
    health = await provider(base_url).health()

    assert health.ok
    assert health.provider == "replicate"
    assert health.latency_ms is not None
    assert health.latency_ms > 0
    assert "emulator" in health.detail


@pytest.mark.parametrize("case", ["wrong token", "server error", "unreachable", "no token"])
async def test_health_reports_a_problem_and_never_raises(
    app: Starlette, base_url: str, case: str
) -> None:
    adapter = provider(base_url, timeout_s=2.0)
    if case == "wrong token":
        adapter = provider(base_url, api_token=SecretStr("r8_wrong"))
    elif case == "server error":
        app.state.faults.add(FaultKind.SERVER_ERROR, status=500)
    elif case == "unreachable":
        adapter = provider("http://127.0.0.1:9", timeout_s=2.0)
    else:
        adapter = provider(base_url, api_token=None)

    health = await adapter.health()

    assert not health.ok
    assert health.detail


# --- the emulator's own protocol -----------------------------------------------------------------


async def test_the_emulator_speaks_replicates_protocol(app: Starlette, base_url: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    path = f"/v1/models/{SCHNELL}/predictions"
    async with httpx.AsyncClient(base_url=base_url, headers=auth) as client:
        anonymous = await client.post(path, json={"input": {}}, headers={"Authorization": ""})
        unknown = await client.post("/v1/models/acme/nothing/predictions", json={"input": {}})
        no_input = await client.post(path, json={"prompt": "x"})
        bad_ratio = await client.post(path, json={"input": {"prompt": "x", "aspect_ratio": "7:5"}})
        unknown_field = await client.post(path, json={"input": {"prompt": "x", "width": 5}})
        bad_prefer = await client.post(
            path, json={"input": {"prompt": "x"}}, headers={"Prefer": "wait=61"}
        )
        app.state.processing_s = 30.0
        running = await client.post(path, json={"input": {"prompt": "x"}})
        prediction = running.json()
        canceled = await client.post(f"/v1/predictions/{prediction['id']}/cancel")

    assert anonymous.status_code == 401
    assert unknown.status_code == 404
    for problem in (no_input, bad_ratio, unknown_field):
        assert problem.status_code == 422
        assert set(problem.json()) >= {"detail", "status", "title"}
    assert "aspect_ratio" in bad_ratio.json()["detail"]
    assert bad_ratio.json()["invalid_fields"][0]["field"] == "input.aspect_ratio"
    assert bad_prefer.status_code == 400
    required = {"id", "model", "version", "input", "output", "data_removed", "error", "status"}
    assert required | {"created_at", "urls", "logs", "metrics"} <= set(prediction)
    assert set(prediction["urls"]) >= {"get", "cancel", "web"}
    assert (prediction["status"], prediction["output"]) == ("starting", None)
    assert running.headers["location"] == prediction["urls"]["get"]
    assert canceled.json()["status"] == "canceled"
    assert app.state.created == 1


async def test_the_emulator_control_api_injects_and_lists(app: Starlette, base_url: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    path = f"/v1/models/{SCHNELL}/predictions"
    async with httpx.AsyncClient(base_url=base_url, headers=auth) as client:
        added = await client.post(
            "/_emulator/faults", json={"kind": "rate_limit", "retry_after": 3}
        )
        throttled = await client.post(path, json={"input": {"prompt": "x"}})
        await client.post("/_emulator/faults", json=[{"kind": "server_error"}])
        cleared = await client.delete("/_emulator/faults")
        served = await client.post(
            path, json={"input": {"prompt": "x"}}, headers={"Prefer": "wait"}
        )
        seen = await client.get("/_emulator/requests")

    assert added.json() == {"pending": 1}
    assert throttled.status_code == 429
    assert throttled.headers["retry-after"] == "3"
    assert throttled.json()["retry_after"] == 3
    assert cleared.status_code == 204
    assert served.status_code == 201
    assert served.json()["status"] == "succeeded"
    assert [r["path"] for r in seen.json()["requests"]] == [path, path]
    assert seen.json()["created"] == 1
