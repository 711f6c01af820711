"""The real providers through the whole library: ``AsyncImageGen`` with real SQLite, the real
filesystem DAM, the resilience layer and the real OpenAI / Replicate / Stability adapters
(their own SDK or HTTP client) pointed at the wire-level emulators on loopback sockets.

What is proven here, per provider: a generation succeeds, its images are stored and decode,
the cost recorded equals the catalog quote to $0.001 and the credits charged equal the
estimate; ``n`` above the per-call limit is split into concurrent calls under the concurrency
cap; every fault of the emulators' matrix ends in the right typed error with nothing charged;
fallbacks happen on outages and never on content refusals; a Replicate prediction survives a
SIGKILL of the process that started it and is resumed without a second create; and requests
a model cannot honour are mapped with a warning or refused before any charge.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from imagegen import AsyncImageGen, Settings
from imagegen.client._results import BalanceResult, GenerationResult
from imagegen.domain.errors import (
    AuthenticationFailed,
    ContentPolicyViolation,
    ImageGenError,
    InvalidParameter,
    ProviderProtocolError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
)
from imagegen.testing.emulators import FaultKind, serve
from imagegen.testing.emulators import openai as openai_emulator
from imagegen.testing.emulators import replicate as replicate_emulator
from imagegen.testing.emulators import stability as stability_emulator

OPENAI_KEY = "sk-proj-lifecycle-Openai0123456789"
REPLICATE_TOKEN = "r8_lifecycle_Token0123456789"
STABILITY_KEY = "sk-lifecycle-Stability0123456789"
STARTING_CREDITS = 1000
CENT_TENTH = Decimal("0.001")

GPT = "gpt-image-2"
SCHNELL = "black-forest-labs/flux-schnell"
PRO = "black-forest-labs/flux-1.1-pro"
KONTEXT = "black-forest-labs/flux-kontext-pro"
CORE = "stable-image-core"
SD35 = "sd3.5-large"

# The request paths that create (and may bill) something, per provider.
CREATE_ROUTE = {"openai": "/v1/images/", "replicate": "/v1/models/", "stability": "/v2beta/"}
DEFAULT_MODEL = {"openai": GPT, "replicate": SCHNELL, "stability": CORE}


# --- the emulators ---------------------------------------------------------------------------


class ConcurrencyMeter:
    """ASGI middleware around an emulator: how many API requests were in flight at once.

    Everything runs on the server's one event loop, so plain counters are exact."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.active = 0
        self.peak = 0

    @property
    def state(self) -> Any:
        return self.app.state

    def reset(self) -> None:
        self.active = 0
        self.peak = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_emulator"):
            await self.app(scope, receive, send)
            return
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


class Emulators:
    def __init__(self, meters: dict[str, ConcurrencyMeter], urls: dict[str, str]) -> None:
        self.meters = meters
        self.urls = urls

    def state(self, provider: str) -> Any:
        return self.meters[provider].state

    def creates(self, provider: str) -> list[dict[str, Any]]:
        """The recorded requests that asked ``provider`` to make images."""
        route = CREATE_ROUTE[provider]
        return [
            r
            for r in self.state(provider).requests
            if r["method"] == "POST" and r["path"].startswith(route)
        ]

    def reset(self) -> None:
        for meter in self.meters.values():
            meter.reset()
            meter.state.faults.clear()
            meter.state.faults.latency_s = 0.0
            meter.state.requests.clear()
        self.state("openai").malformed_body = "truncated_json"
        replicate = self.state("replicate")
        replicate.predictions.clear()
        replicate.files.clear()
        replicate.created = 0
        replicate.processing_s = 0.0
        replicate.sync_reports_processing = False
        self.state("stability").credits = 100_000.0


@pytest.fixture(scope="module")
def served() -> Iterator[Emulators]:
    meters = {
        "openai": ConcurrencyMeter(openai_emulator.create_app(api_key=OPENAI_KEY)),
        "replicate": ConcurrencyMeter(replicate_emulator.create_app(api_token=REPLICATE_TOKEN)),
        "stability": ConcurrencyMeter(stability_emulator.create_app(api_key=STABILITY_KEY)),
    }
    with (
        serve(meters["openai"]) as openai_url,
        serve(meters["replicate"]) as replicate_url,
        serve(meters["stability"]) as stability_url,
    ):
        yield Emulators(
            meters,
            {"openai": openai_url, "replicate": replicate_url, "stability": stability_url},
        )


@pytest.fixture
def emu(served: Emulators) -> Emulators:
    """The module's emulators, reset for this test."""
    served.reset()
    return served


def make_settings(data_dir: Path, emu: Emulators, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "starting_credits": STARTING_CREDITS,
        "openai_api_key": OPENAI_KEY,
        "openai_base_url": f"{emu.urls['openai']}/v1",
        "replicate_api_token": REPLICATE_TOKEN,
        "replicate_base_url": emu.urls["replicate"],
        "stability_api_key": STABILITY_KEY,
        "stability_base_url": emu.urls["stability"],
        "provider_max_attempts": 3,
        "provider_retry_base_delay_seconds": 0.01,
        "provider_retry_max_delay_seconds": 0.05,
        "provider_request_timeout_seconds": 20.0,
        "provider_timeout_seconds": 30.0,
    }
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def client(tmp_path: Path, emu: Emulators, **overrides: Any) -> AsyncIterator[AsyncImageGen]:
    async with AsyncImageGen(make_settings(tmp_path / "data", emu, **overrides)) as gen:
        yield gen


@pytest.fixture
async def gen(tmp_path: Path, emu: Emulators) -> AsyncIterator[AsyncImageGen]:
    async with client(tmp_path, emu) as library:
        yield library


# --- helpers ---------------------------------------------------------------------------------


def decoded(path: Path | None) -> tuple[str, tuple[int, int]]:
    """The format and size of a stored image, decoded completely."""
    assert path is not None
    assert path.is_file()
    with Image.open(path) as image:
        image.load()
        return (image.format or "").lower(), image.size


def assert_stored(result: GenerationResult, count: int) -> None:
    assert result.status == "succeeded"
    assert len(result.images) == count
    width, height = (int(side) for side in result.size.split("x"))
    for image in result.images:
        fmt, size = decoded(image.path)
        assert size == (image.width, image.height) == (width, height)
        assert fmt == image.format == result.format


def assert_costs_the_quote(result: GenerationResult, usd: str | None) -> None:
    assert usd is not None
    assert result.provider_cost_usd is not None
    assert abs(Decimal(result.provider_cost_usd) - Decimal(usd)) <= CENT_TENTH


async def assert_charged(gen: AsyncImageGen, before: BalanceResult, credits: int) -> None:
    after = await gen.balance()
    assert after.balance == before.balance - credits
    assert after.reserved == 0
    assert after.available == after.balance
    assert await gen.verify_ledger() == []


async def assert_nothing_charged(
    gen: AsyncImageGen, before: BalanceResult, failure_code: str
) -> GenerationResult:
    """The balance did not move, nothing stays reserved, the ledger is consistent, and the
    one generation is recorded as failed with ``failure_code``."""
    await assert_charged(gen, before, 0)
    assert (await gen.history(status="succeeded")).items == ()
    (failed,) = (await gen.history(status="failed")).items
    assert failed.credits_charged == 0
    assert failed.images == ()
    assert failed.failure_code == failure_code
    return failed


async def fails_with(
    error: type[ImageGenError], call: Awaitable[Any]
) -> tuple[ImageGenError, float]:
    started = time.monotonic()
    with pytest.raises(error) as raised:
        await call
    return raised.value, time.monotonic() - started


async def provider_job_ids(gen: AsyncImageGen, generation_id: str) -> tuple[str, ...]:
    """The provider job ids persisted for a generation (not part of ``GenerationResult``)."""
    uow = gen.container.gateways.uow()
    async with uow(read_only=True) as work:
        generation = await work.generations.get(gen.tenant_id, generation_id)
    assert generation is not None
    return tuple(generation.provider_job_ids)


async def parent_id(gen: AsyncImageGen, generation_id: str) -> str | None:
    uow = gen.container.gateways.uow()
    async with uow(read_only=True) as work:
        generation = await work.generations.get(gen.tenant_id, generation_id)
    assert generation is not None
    return generation.parent_id


def png(size: tuple[int, int], mode: str = "RGB", colour: Any = (40, 90, 160)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, "PNG")
    return buffer.getvalue()


# --- generating on each provider, at the catalog price ------------------------------------------

REPRESENTATIVE = [
    pytest.param("openai", GPT, {}, id="openai-gpt-image-2"),
    pytest.param(
        "openai", GPT, {"quality": "low", "size": "1536x1024"}, id="openai-gpt-image-2-low-wide"
    ),
    pytest.param("replicate", SCHNELL, {}, id="replicate-flux-schnell"),
    pytest.param(
        "replicate", SCHNELL, {"aspect_ratio": "16:9", "n": 2}, id="replicate-flux-schnell-16x9"
    ),
    pytest.param("replicate", PRO, {}, id="replicate-flux-1.1-pro"),
    pytest.param("stability", CORE, {}, id="stability-core"),
    pytest.param("stability", CORE, {"aspect_ratio": "16:9"}, id="stability-core-16x9"),
    pytest.param("stability", SD35, {}, id="stability-sd3.5-large"),
]


@pytest.mark.parametrize(("provider", "model", "options"), REPRESENTATIVE)
async def test_generate_stores_decodable_images_and_charges_the_catalog_price(
    gen: AsyncImageGen, emu: Emulators, provider: str, model: str, options: dict[str, Any]
) -> None:
    estimate = gen.estimate("a red fox in the snow", provider=provider, model=model, **options)
    before = await gen.balance()

    result = await gen.generate("a red fox in the snow", provider=provider, model=model, **options)

    assert (result.provider, result.model) == (provider, model)
    assert result.size == estimate.size
    assert_stored(result, estimate.n)
    assert_costs_the_quote(result, estimate.usd)
    assert result.credits_charged == estimate.credits > 0
    assert result.estimated_credits == estimate.credits
    await assert_charged(gen, before, estimate.credits)
    assert len(emu.creates(provider)) == 1  # n fits in one call here
    assert (await gen.get_generation(result.id)).credits_charged == estimate.credits


# --- splitting n into calls, under the concurrency cap ------------------------------------------


async def test_stability_n3_is_three_calls_in_one_generation_charged_three_times(
    gen: AsyncImageGen, emu: Emulators
) -> None:
    one = gen.estimate(provider="stability", model=CORE)
    three = gen.estimate(provider="stability", model=CORE, n=3)
    before = await gen.balance()

    result = await gen.generate("three foxes", provider="stability", model=CORE, n=3, seed=10)

    creates = emu.creates("stability")
    assert len(creates) == 3
    assert sorted(int(r["fields"]["seed"]) for r in creates) == [10, 11, 12]
    assert_stored(result, 3)
    assert [i.seed for i in result.images] == [10, 11, 12]
    assert len((await gen.history()).items) == 1
    assert result.credits_charged == three.credits == 3 * one.credits
    assert_costs_the_quote(result, three.usd)
    assert Decimal(result.provider_cost_usd or "0") == 3 * Decimal(one.usd or "0")
    await assert_charged(gen, before, 3 * one.credits)


async def test_flux_pro_n2_is_two_predictions(gen: AsyncImageGen, emu: Emulators) -> None:
    estimate = gen.estimate(provider="replicate", model=PRO, n=2)

    result = await gen.generate("two foxes", provider="replicate", model=PRO, n=2)

    assert emu.state("replicate").created == 2
    assert len(emu.creates("replicate")) == 2
    assert_stored(result, 2)
    assert result.credits_charged == estimate.credits
    assert_costs_the_quote(result, estimate.usd)


async def test_flux_schnell_n6_is_split_into_calls_of_at_most_four(
    gen: AsyncImageGen, emu: Emulators
) -> None:
    estimate = gen.estimate(provider="replicate", model=SCHNELL, n=6)

    result = await gen.generate("six foxes", provider="replicate", model=SCHNELL, n=6)

    creates = emu.creates("replicate")
    assert sorted(r["body"]["input"]["num_outputs"] for r in creates) == [2, 4]
    assert_stored(result, 6)
    assert result.credits_charged == estimate.credits
    assert_costs_the_quote(result, estimate.usd)


@pytest.mark.parametrize(("cap", "peak"), [(2, 2), (8, 4)])
async def test_split_calls_run_concurrently_but_never_above_the_concurrency_cap(
    tmp_path: Path, emu: Emulators, cap: int, peak: int
) -> None:
    emu.state("stability").faults.latency_s = 0.25
    async with client(tmp_path, emu, provider_concurrency=cap) as gen:
        result = await gen.generate("four foxes", provider="stability", model=CORE, n=4)

    assert_stored(result, 4)
    assert len(emu.creates("stability")) == 4
    assert emu.meters["stability"].peak == peak


async def test_the_concurrency_cap_holds_across_concurrent_generations(
    tmp_path: Path, emu: Emulators
) -> None:
    emu.state("stability").faults.latency_s = 0.25
    async with client(tmp_path, emu, provider_concurrency=2) as gen:
        results = await asyncio.gather(
            *(gen.generate(f"fox {i}", provider="stability", model=CORE, n=2) for i in range(2))
        )

    for result in results:
        assert_stored(result, 2)
    assert len(emu.creates("stability")) == 4
    assert emu.meters["stability"].peak == 2


async def test_a_partial_result_is_charged_only_for_the_images_delivered(
    tmp_path: Path, emu: Emulators
) -> None:
    emu.state("stability").faults.add(FaultKind.SERVER_ERROR, times=1)
    async with client(tmp_path, emu, provider_max_attempts=1) as gen:
        one = gen.estimate(provider="stability", model=CORE)
        before = await gen.balance()
        result = await gen.generate("three foxes", provider="stability", model=CORE, n=3)

        assert result.status == "succeeded"
        assert len(result.images) == 2
        assert result.credits_charged == 2 * one.credits
        assert any("1 of 3 calls to stability failed" in w for w in result.warnings)
        await assert_charged(gen, before, 2 * one.credits)


# --- faults, through the resilience layer -------------------------------------------------------

PROVIDERS = ["openai", "replicate", "stability"]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_429_with_retry_after_is_retried_once_and_charged_once(
    gen: AsyncImageGen, emu: Emulators, provider: str
) -> None:
    model = DEFAULT_MODEL[provider]
    emu.state(provider).faults.add(
        FaultKind.RATE_LIMIT, retry_after=0.2, route=CREATE_ROUTE[provider]
    )
    estimate = gen.estimate(provider=provider, model=model)
    before = await gen.balance()

    result = await gen.generate("a patient fox", provider=provider, model=model)

    assert_stored(result, 1)
    assert len(emu.creates(provider)) == 2
    assert result.credits_charged == estimate.credits
    await assert_charged(gen, before, estimate.credits)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_slow_answer_within_the_timeout_succeeds_and_is_charged_once(
    gen: AsyncImageGen, emu: Emulators, provider: str
) -> None:
    model = DEFAULT_MODEL[provider]
    emu.state(provider).faults.add(FaultKind.LATENCY, delay=0.4, route=CREATE_ROUTE[provider])
    estimate = gen.estimate(provider=provider, model=model)
    before = await gen.balance()

    started = time.monotonic()
    result = await gen.generate("a slow fox", provider=provider, model=model)

    assert time.monotonic() - started >= 0.4
    assert_stored(result, 1)
    assert len(emu.creates(provider)) == 1
    assert result.credits_charged == estimate.credits
    await assert_charged(gen, before, estimate.credits)


@pytest.mark.parametrize(
    ("provider", "fault", "error", "code"),
    [
        pytest.param(
            p, FaultKind.AUTH_ERROR, AuthenticationFailed, "authentication_failed", id=f"{p}-401"
        )
        for p in PROVIDERS
    ]
    + [
        pytest.param(p, FaultKind.BAD_REQUEST, ProviderRejected, "provider_rejected", id=f"{p}-400")
        for p in PROVIDERS
    ],
)
async def test_a_refused_key_or_request_is_not_retried_not_shopped_around_and_not_charged(
    tmp_path: Path,
    emu: Emulators,
    provider: str,
    fault: FaultKind,
    error: type[ImageGenError],
    code: str,
) -> None:
    emu.state(provider).faults.add(fault, times=5)
    async with client(tmp_path, emu, fallbacks=REFUSAL_FALLBACKS) as gen:
        before = await gen.balance()
        raised, _ = await fails_with(
            error, gen.generate("a fox", provider=provider, model=DEFAULT_MODEL[provider])
        )

        assert len(emu.creates(provider)) == 1
        assert emu.creates(FALLBACK_OF[provider]) == []
        for secret in (OPENAI_KEY, REPLICATE_TOKEN, STABILITY_KEY):
            assert secret not in raised.message
            assert secret not in repr(raised.details)
        await assert_nothing_charged(gen, before, code)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_5xx_beyond_the_attempts_is_unavailable_and_releases_the_reservation(
    tmp_path: Path, emu: Emulators, provider: str
) -> None:
    emu.state(provider).faults.add(FaultKind.SERVER_ERROR, status=503, times=50)
    async with client(tmp_path, emu, provider_max_attempts=3) as gen:
        before = await gen.balance()
        await fails_with(
            ProviderUnavailable,
            gen.generate("a fox", provider=provider, model=DEFAULT_MODEL[provider]),
        )
        assert len(emu.creates(provider)) == 3
        await assert_nothing_charged(gen, before, "provider_unavailable")


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_malformed_body_is_a_protocol_error_not_retried_and_not_charged(
    gen: AsyncImageGen, emu: Emulators, provider: str
) -> None:
    emu.state(provider).faults.add(FaultKind.MALFORMED, times=5)
    before = await gen.balance()

    await fails_with(
        ProviderProtocolError,
        gen.generate("a fox", provider=provider, model=DEFAULT_MODEL[provider]),
    )

    assert len(emu.creates(provider)) == 1
    await assert_nothing_charged(gen, before, "provider_protocol_error")


@pytest.mark.parametrize("flavour", openai_emulator.MALFORMED_BODIES)
async def test_every_malformed_openai_body_is_a_protocol_error_with_nothing_charged(
    gen: AsyncImageGen, emu: Emulators, flavour: str
) -> None:
    emu.state("openai").malformed_body = flavour
    emu.state("openai").faults.add(FaultKind.MALFORMED, times=5)
    before = await gen.balance()

    await fails_with(ProviderProtocolError, gen.generate("a fox", provider="openai", model=GPT))

    assert len(emu.creates("openai")) == 1
    await assert_nothing_charged(gen, before, "provider_protocol_error")


# A fallback for every model that refuses: a refusal must never be shopped elsewhere.
REFUSAL_FALLBACKS = {
    f"openai/{GPT}": [f"stability/{CORE}"],
    f"stability/{CORE}": [f"replicate/{SCHNELL}"],
    f"replicate/{SCHNELL}": [f"openai/{GPT}"],
}
FALLBACK_OF = {"openai": "stability", "stability": "replicate", "replicate": "openai"}


@pytest.mark.parametrize(
    ("provider", "stage"),
    [
        pytest.param("openai", "input", id="openai-moderation_blocked-input"),
        pytest.param("openai", "output", id="openai-moderation_blocked-output"),
        pytest.param("stability", "input", id="stability-403-content_moderation"),
        pytest.param("stability", "output", id="stability-CONTENT_FILTERED"),
        pytest.param("replicate", "output", id="replicate-nsfw-failure"),
    ],
)
async def test_a_content_refusal_is_typed_with_its_stage_charged_nothing_and_never_falls_back(
    tmp_path: Path, emu: Emulators, provider: str, stage: str
) -> None:
    emu.state(provider).faults.add(FaultKind.CONTENT_REFUSAL, stage=stage, times=5)
    async with client(tmp_path, emu, fallbacks=REFUSAL_FALLBACKS) as gen:
        before = await gen.balance()
        error, _ = await fails_with(
            ContentPolicyViolation,
            gen.generate("a forbidden fox", provider=provider, model=DEFAULT_MODEL[provider]),
        )

        assert isinstance(error, ContentPolicyViolation)
        assert error.stage == stage
        assert len(emu.creates(provider)) == 1  # not retried either
        assert emu.creates(FALLBACK_OF[provider]) == []
        failed = await assert_nothing_charged(gen, before, "content_policy_violation")
        assert (failed.provider, failed.model) == (provider, DEFAULT_MODEL[provider])
        assert not any("instead" in w for w in failed.warnings)


async def test_an_aborted_replicate_prediction_is_unavailable_without_a_second_create(
    gen: AsyncImageGen, emu: Emulators
) -> None:
    emu.state("replicate").faults.add(FaultKind.ABORTED, route="/v1/models/")
    before = await gen.balance()

    await fails_with(ProviderUnavailable, gen.generate("a fox", provider="replicate", model=PRO))

    # Retried as resumes of the same prediction, never as a second (paid) create.
    assert emu.state("replicate").created == 1
    assert len(emu.creates("replicate")) == 1
    await assert_nothing_charged(gen, before, "provider_unavailable")


async def test_a_failed_replicate_prediction_is_rejected_and_not_charged(
    gen: AsyncImageGen, emu: Emulators
) -> None:
    emu.state("replicate").faults.add(FaultKind.FAILED, route="/v1/models/")
    before = await gen.balance()

    error, _ = await fails_with(
        ProviderRejected, gen.generate("a fox", provider="replicate", model=SCHNELL)
    )

    assert "CUDA error" in error.message
    assert emu.state("replicate").created == 1
    await assert_nothing_charged(gen, before, "provider_rejected")


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_hung_provider_times_out_as_unavailable_and_is_not_charged(
    tmp_path: Path, emu: Emulators, provider: str
) -> None:
    emu.state(provider).faults.add(FaultKind.TIMEOUT, delay=60.0, times=5)
    async with client(tmp_path, emu, provider_request_timeout_seconds=1.0) as gen:
        gen.estimate(provider=provider, model=DEFAULT_MODEL[provider])
        before = await gen.balance()
        error, elapsed = await fails_with(
            ProviderUnavailable,
            gen.generate("a fox", provider=provider, model=DEFAULT_MODEL[provider]),
        )

        assert elapsed < 10
        # A timed-out create may still run (and bill) at the provider: it is not repeated.
        assert len(emu.creates(provider)) == 1
        assert "timeout" in error.message.lower() or "did not answer" in error.message
        await assert_nothing_charged(gen, before, "provider_unavailable")


async def test_an_open_circuit_fails_fast_without_calling_the_provider(
    tmp_path: Path, emu: Emulators
) -> None:
    emu.state("stability").faults.add(FaultKind.SERVER_ERROR, times=1)
    async with client(
        tmp_path,
        emu,
        provider_max_attempts=1,
        circuit_failure_threshold=1,
        circuit_reset_seconds=0.5,
    ) as gen:
        before = await gen.balance()
        await fails_with(ProviderUnavailable, gen.generate("a", provider="stability", model=CORE))
        error, elapsed = await fails_with(
            ProviderUnavailable, gen.generate("b", provider="stability", model=CORE)
        )
        assert "circuit" in error.message.lower()
        assert elapsed < 0.5
        assert len(emu.creates("stability")) == 1
        await assert_charged(gen, before, 0)

        await asyncio.sleep(0.6)  # half-open: one trial call goes through and closes it
        result = await gen.generate("c", provider="stability", model=CORE)
        assert result.status == "succeeded"
        assert len(emu.creates("stability")) == 2


# --- fallback ------------------------------------------------------------------------------------

PRO_TO_GPT = {f"replicate/{PRO}": [f"openai/{GPT}"]}


async def test_a_replicate_outage_falls_back_to_openai_and_charges_the_openai_price(
    tmp_path: Path, emu: Emulators
) -> None:
    emu.state("replicate").faults.add(FaultKind.SERVER_ERROR, status=503, times=100)
    async with client(tmp_path, emu, fallbacks=PRO_TO_GPT, provider_max_attempts=2) as gen:
        primary = gen.estimate(provider="replicate", model=PRO)
        fallback = gen.estimate(provider="openai", model=GPT)
        before = await gen.balance()

        result = await gen.generate("a fox", provider="replicate", model=PRO)

        assert (result.provider, result.model) == ("openai", GPT)
        assert_stored(result, 1)
        assert any(
            f"replicate/{PRO}" in w and f"openai/{GPT}" in w and "instead" in w
            for w in result.warnings
        )
        assert len(emu.creates("replicate")) == 2
        assert len(emu.creates("openai")) == 1
        assert result.credits_charged == fallback.credits
        assert result.credits_charged <= max(primary.credits, fallback.credits)  # the reservation
        assert_costs_the_quote(result, fallback.usd)
        await assert_charged(gen, before, fallback.credits)
        assert (await gen.get_generation(result.id)).provider == "openai"


async def test_a_provider_that_keeps_rate_limiting_falls_back(
    tmp_path: Path, emu: Emulators
) -> None:
    emu.state("stability").faults.add(FaultKind.RATE_LIMIT, retry_after=0.01, times=100)
    fallbacks = {f"stability/{CORE}": [f"replicate/{SCHNELL}"]}
    async with client(tmp_path, emu, fallbacks=fallbacks, provider_max_attempts=2) as gen:
        estimate = gen.estimate(provider="replicate", model=SCHNELL)
        before = await gen.balance()

        result = await gen.generate("a fox", provider="stability", model=CORE)

        assert (result.provider, result.model) == ("replicate", SCHNELL)
        assert any("rate_limited" in w and "instead" in w for w in result.warnings)
        assert len(emu.creates("stability")) == 2
        assert result.credits_charged == estimate.credits
        await assert_charged(gen, before, estimate.credits)


async def test_when_every_candidate_is_down_the_last_error_is_raised_and_nothing_charged(
    tmp_path: Path, emu: Emulators
) -> None:
    emu.state("replicate").faults.add(FaultKind.SERVER_ERROR, times=100)
    emu.state("openai").faults.add(FaultKind.SERVER_ERROR, times=100)
    async with client(tmp_path, emu, fallbacks=PRO_TO_GPT, provider_max_attempts=2) as gen:
        before = await gen.balance()

        error, _ = await fails_with(
            ProviderUnavailable, gen.generate("a fox", provider="replicate", model=PRO)
        )

        assert "OpenAI" in error.message  # the last candidate's error
        assert len(emu.creates("replicate")) == 2
        assert len(emu.creates("openai")) == 2
        await assert_nothing_charged(gen, before, "provider_unavailable")


async def test_a_generation_that_failed_after_falling_back_records_the_fallback(
    tmp_path: Path, emu: Emulators
) -> None:
    emu.state("replicate").faults.add(FaultKind.SERVER_ERROR, times=100)
    emu.state("openai").faults.add(FaultKind.SERVER_ERROR, times=100)
    async with client(tmp_path, emu, fallbacks=PRO_TO_GPT, provider_max_attempts=1) as gen:
        with pytest.raises(ProviderUnavailable):
            await gen.generate("a fox", provider="replicate", model=PRO)

        (failed,) = (await gen.history(status="failed")).items
        assert any(f"replicate/{PRO}" in w and "instead" in w for w in failed.warnings)
        assert (failed.provider, failed.model) == ("openai", GPT)


async def test_a_retry_after_longer_than_allowed_fails_at_once_without_sleeping(
    tmp_path: Path, emu: Emulators
) -> None:
    emu.state("openai").faults.add(FaultKind.RATE_LIMIT, retry_after=120, times=5)
    async with client(tmp_path, emu, provider_max_retry_after_seconds=1.0) as gen:
        before = await gen.balance()

        error, elapsed = await fails_with(
            RateLimited, gen.generate("a fox", provider="openai", model=GPT)
        )

        assert elapsed < 5
        assert isinstance(error, RateLimited)
        assert error.retry_after == 120
        assert len(emu.creates("openai")) == 1
        await assert_nothing_charged(gen, before, "rate_limited")


async def test_a_replicate_content_refusal_does_not_fall_back(
    tmp_path: Path, emu: Emulators
) -> None:
    emu.state("replicate").faults.add(FaultKind.CONTENT_REFUSAL, stage="output", times=5)
    async with client(tmp_path, emu, fallbacks=PRO_TO_GPT) as gen:
        before = await gen.balance()
        await fails_with(
            ContentPolicyViolation, gen.generate("a fox", provider="replicate", model=PRO)
        )
        assert emu.creates("openai") == []
        await assert_nothing_charged(gen, before, "content_policy_violation")


# --- crash and resume of a Replicate prediction --------------------------------------------------

_SCRIPT = Path(sys.executable).parent / "imagegen"
IMAGEGEN = (
    [str(_SCRIPT)]
    if _SCRIPT.exists()
    else [sys.executable, "-c", "from imagegen.interfaces.cli import main; main()"]
)
_CRASHING_GENERATE = textwrap.dedent(
    """
    import asyncio
    from imagegen import AsyncImageGen, Settings

    async def main():
        async with AsyncImageGen(Settings()) as gen:
            await gen.generate(
                "a fox that outlives its process",
                provider="replicate",
                model="black-forest-labs/flux-schnell",
                n=2,
            )

    asyncio.run(main())
    """
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.communicate(timeout=10)


@pytest.fixture
def replicate_process(tmp_path: Path) -> Iterator[str]:
    """``imagegen emulate replicate`` in its own process; yields its base URL."""
    port = free_port()
    log = (tmp_path / "emulator.log").open("w")
    process = subprocess.Popen(
        [*IMAGEGEN, "emulate", "replicate", "--port", str(port), "--api-key", REPLICATE_TOKEN],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, (tmp_path / "emulator.log").read_text()
            try:
                if httpx.get(f"{base_url}/_emulator/requests", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the replicate emulator did not start"
            time.sleep(0.05)
        yield base_url
    finally:
        stop(process)
        log.close()


async def wait_for_persisted_job(
    gen: AsyncImageGen, process: subprocess.Popen[Any]
) -> tuple[str, tuple[str, ...]]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the generating process ended: {process.communicate()}"
        for item in (await gen.history(status="running")).items:
            jobs = await provider_job_ids(gen, item.id)
            if jobs:
                return item.id, jobs
        await asyncio.sleep(0.05)
    pytest.fail("the generation never persisted its Replicate prediction id")


async def wait_for_download(base_url: str, process: subprocess.Popen[Any]) -> None:
    """Until the generating process has asked the emulator for an output file."""
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(timeout=5) as http:
        while time.monotonic() < deadline:
            assert process.poll() is None, f"the generating process ended: {process.communicate()}"
            recorded = (await http.get(f"{base_url}/_emulator/requests")).json()
            if any(r["path"].startswith("/files/") for r in recorded["requests"]):
                return
            await asyncio.sleep(0.05)
    pytest.fail("the generating process never downloaded its output")


async def test_a_replicate_prediction_is_resumed_after_sigkill_without_a_second_create(
    tmp_path: Path, replicate_process: str
) -> None:
    base_url = replicate_process
    data_dir = tmp_path / "data"
    # The first download of an output file hangs: the process dies after the prediction
    # exists (and its id is persisted) but before any image is stored or charged.
    httpx.post(
        f"{base_url}/_emulator/faults",
        json={"kind": "timeout", "delay": 60, "route": "/files/"},
        timeout=5,
    ).raise_for_status()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGEN_")}
    env.update(
        IMAGEGEN_DATA_DIR=str(data_dir),
        IMAGEGEN_STARTING_CREDITS=str(STARTING_CREDITS),
        IMAGEGEN_REPLICATE_API_TOKEN=REPLICATE_TOKEN,
        IMAGEGEN_REPLICATE_BASE_URL=base_url,
    )
    settings = Settings(
        data_dir=data_dir,
        starting_credits=STARTING_CREDITS,
        replicate_api_token=REPLICATE_TOKEN,  # type: ignore[arg-type]
        replicate_base_url=base_url,
        provider_retry_base_delay_seconds=0.01,
    )
    crashing = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_GENERATE],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        async with AsyncImageGen(settings) as gen:
            generation_id, jobs = await wait_for_persisted_job(gen, crashing)
            await wait_for_download(base_url, crashing)  # stuck in it: the fault is used up
            crashing.send_signal(signal.SIGKILL)
            crashing.communicate(timeout=10)
            assert crashing.returncode == -signal.SIGKILL
            held = await gen.balance()
            assert held.reserved > 0  # the dead process's reservation is still held
            estimate = gen.estimate(provider="replicate", model=SCHNELL, n=2)

            result = await gen.resume(generation_id)

            assert result.id == generation_id
            assert_stored(result, 2)
            assert result.credits_charged == estimate.credits
            assert_costs_the_quote(result, estimate.usd)
            after = await gen.balance()
            assert after.balance == STARTING_CREDITS - estimate.credits
            assert after.reserved == 0
            assert await gen.verify_ledger() == []
            assert len(jobs) == 1
            with pytest.raises(InvalidParameter):
                await gen.resume(generation_id)  # finished: nothing left to resume or charge
    finally:
        stop(crashing)

    recorded = httpx.get(f"{base_url}/_emulator/requests", timeout=5).json()
    assert recorded["created"] == 1
    creates = [
        r
        for r in recorded["requests"]
        if r["method"] == "POST" and r["path"] == f"/v1/models/{SCHNELL}/predictions"
    ]
    assert len(creates) == 1


# --- honest parameter mapping --------------------------------------------------------------------


async def test_a_size_flux_schnell_cannot_make_is_mapped_with_a_warning(
    gen: AsyncImageGen, emu: Emulators
) -> None:
    estimate = gen.estimate(provider="replicate", model=SCHNELL, size="1000x700")

    result = await gen.generate("a fox", provider="replicate", model=SCHNELL, size="1000x700")

    assert result.size == estimate.size == "1216x832"
    assert any("1000x700" in w and "1216x832" in w for w in result.warnings)
    assert estimate.warnings == result.warnings
    assert_stored(result, 1)
    (create,) = emu.creates("replicate")
    assert create["body"]["input"]["aspect_ratio"] == "3:2"


async def test_an_aspect_ratio_stability_lacks_is_mapped_with_a_warning(
    gen: AsyncImageGen, emu: Emulators
) -> None:
    result = await gen.generate("a fox", provider="stability", model=CORE, aspect_ratio="7:5")

    assert any("7:5" in w and result.size in w for w in result.warnings)
    assert_stored(result, 1)
    (create,) = emu.creates("stability")
    assert create["fields"]["aspect_ratio"] in ("3:2", "5:4")


async def test_a_quality_on_a_model_without_qualities_is_a_warning_and_is_not_sent(
    gen: AsyncImageGen, emu: Emulators
) -> None:
    result = await gen.generate("a fox", provider="replicate", model=SCHNELL, quality="high")

    assert any("quality" in w for w in result.warnings)
    (create,) = emu.creates("replicate")
    assert "quality" not in json.dumps(create["body"]["input"]).replace("output_quality", "")


async def test_a_seed_on_openai_is_a_warning_and_is_not_sent(
    gen: AsyncImageGen, emu: Emulators
) -> None:
    result = await gen.generate("a fox", provider="openai", model=GPT, seed=42)

    assert any("seed" in w for w in result.warnings)
    assert result.seed is None
    (create,) = emu.creates("openai")
    assert "seed" not in create["json"]


async def test_a_negative_prompt_on_openai_is_refused_before_any_charge(
    gen: AsyncImageGen, emu: Emulators
) -> None:
    spec = next(m for m in gen.models() if (m.provider, m.model) == ("openai", GPT))
    assert spec.supports_negative_prompt is False  # what the catalog declares
    before = await gen.balance()

    with pytest.raises(InvalidParameter, match="negative prompt"):
        await gen.generate("a fox", provider="openai", model=GPT, negative_prompt="dogs")

    assert emu.creates("openai") == []
    assert (await gen.history()).items == ()
    await assert_charged(gen, before, 0)


async def test_a_negative_prompt_is_sent_to_a_model_that_takes_one(
    gen: AsyncImageGen, emu: Emulators
) -> None:
    result = await gen.generate("a fox", provider="stability", model=CORE, negative_prompt="dogs")

    assert result.negative_prompt == "dogs"
    (create,) = emu.creates("stability")
    assert create["fields"]["negative_prompt"] == "dogs"


async def test_a_mask_on_a_model_without_mask_support_is_refused_before_any_charge(
    gen: AsyncImageGen, emu: Emulators
) -> None:
    before = await gen.balance()

    with pytest.raises(InvalidParameter, match="mask"):
        await gen.edit(
            png((512, 512)),
            "make it night",
            mask=png((512, 512), "RGBA", (0, 0, 0, 0)),
            provider="replicate",
            model=KONTEXT,
        )

    assert emu.creates("replicate") == []
    assert (await gen.history()).items == ()
    await assert_charged(gen, before, 0)


async def test_n_above_the_request_limit_is_refused_before_any_charge(
    gen: AsyncImageGen, emu: Emulators
) -> None:
    before = await gen.balance()

    with pytest.raises(InvalidParameter, match="n=11"):
        await gen.generate("foxes", provider="openai", model=GPT, n=11)

    assert emu.creates("openai") == []
    await assert_charged(gen, before, 0)


async def test_openai_sizes_and_quality_reach_the_wire_as_negotiated(
    gen: AsyncImageGen, emu: Emulators
) -> None:
    estimate = gen.estimate(provider="openai", model=GPT, size="1000x1000", quality="high")

    result = await gen.generate(
        "a fox", provider="openai", model=GPT, size="1000x1000", quality="high"
    )

    assert result.size == estimate.size != "1000x1000"
    assert any("1000x1000" in w for w in result.warnings)
    (create,) = emu.creates("openai")
    assert create["json"]["size"] == result.size
    assert create["json"]["quality"] == "high"
    assert "negative_prompt" not in create["json"]
    assert_costs_the_quote(result, estimate.usd)
    assert result.credits_charged == estimate.credits


async def test_edit_result_links_to_its_source_generation_asset(
    gen: AsyncImageGen, emu: Emulators
) -> None:
    """The edit path through the same lifecycle (details in test_editing.py)."""
    source = await gen.generate("a blue door", size="256x256", tags=["source"])
    (asset,) = source.assets

    result = await gen.edit(
        asset.id,
        "a red door",
        operation="inpaint",
        mask=png((256, 256), "RGBA", (0, 0, 0, 0)),
        provider="stability",
        model="stable-image-inpaint",
    )

    assert result.status == "succeeded"
    assert await parent_id(gen, result.id) == asset.id
    assert len(emu.creates("stability")) == 1
