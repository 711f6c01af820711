"""The generation lifecycle through the public API (``AsyncImageGen``) with the real SQL and
filesystem adapters, on SQLite and on PostgreSQL: validation, idempotency, billing, provider
failures, cancellation, the sweeper, and what lands on disk.

Every test runs on SQLite and on PostgreSQL (conftest's ``database_url``). On
PostgreSQL the module shares one migrated database and empties it before each test: creating
and migrating a database per test costs ~0.6 s, which over this many tests is most of the run.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import imagegen
from imagegen import AsyncImageGen, Settings
from imagegen.application.ports import ProviderImage, ProviderRequest, ProviderResult
from imagegen.domain.values import ImageFormat, ImageSize, Seed
from imagegen.infrastructure.providers.local import render

DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
IPTC_EXT = "{http://iptc.org/std/Iptc4xmpExt/2008-02-29/}"
IMAGEGEN_NS = "{https://imagegen.dev/ns/1.0/}"
PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
TINY = "64x64"


# --- databases ---------------------------------------------------------------------------------


# --- helpers -----------------------------------------------------------------------------------


def stored_files(settings: Settings) -> list[Path]:
    """Every file the DAM holds (temporary writes excluded)."""
    root = settings.assets_dir
    if not root.exists():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and ".tmp" not in p.parts)


async def all_history(client: AsyncImageGen, **filters: Any) -> list[Any]:
    items: list[Any] = []
    cursor = None
    while True:
        page = await client.history(limit=100, cursor=cursor, **filters)
        items.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            return items


async def assert_untouched(client: AsyncImageGen, settings: Settings, credits: int = 100) -> None:
    """Nothing was charged, reserved, recorded or stored."""
    balance = await client.balance()
    assert (balance.balance, balance.reserved, balance.available) == (credits, 0, credits)
    assert await all_history(client) == []
    assert stored_files(settings) == []
    assert await client.verify_ledger() == []


async def assert_failed_and_released(
    client: AsyncImageGen,
    settings: Settings,
    code: str | None,
    credits: int = 100,
    *,
    check_files: bool = True,
) -> Any:
    """One generation, failed with ``code`` (any code when None), its reservation released."""
    (generation,) = await all_history(client)
    assert generation.status == "failed"
    assert generation.failure_message
    if code is None:
        assert generation.failure_code
    else:
        assert generation.failure_code == code
    assert generation.credits_charged == 0
    assert generation.images == ()
    balance = await client.balance()
    assert (balance.balance, balance.reserved, balance.available) == (credits, 0, credits)
    assert await client.verify_ledger() == []
    if check_files:
        assert stored_files(settings) == []
    return generation


def xmp_packet(path: Path) -> ET.Element:
    """The XMP packet where each format keeps it, as read by Pillow (not by our own code)."""
    with Image.open(path) as image:
        raw = image.info.get("XML:com.adobe.xmp") or image.info.get("xmp")
    assert raw, f"no XMP packet in {path.name}"
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    match = re.search(r"<x:xmpmeta.*</x:xmpmeta>", text, re.DOTALL)
    assert match is not None
    return ET.fromstring(match.group(0))


def valid_image(request: ProviderRequest, size: ImageSize | None = None, fmt: Any = None) -> bytes:
    size = size or request.size
    return render(request.prompt, Seed(1), (size.width, size.height), fmt or request.format)


class FakeProvider:
    """A provider whose answer a test chooses; ``gate`` (when set) holds every call until
    it is opened, and ``started`` is set when a call has begun."""

    name = "local"

    def __init__(
        self,
        answer: Callable[[ProviderRequest], ProviderResult] | None = None,
        *,
        gate: asyncio.Event | None = None,
        raises: BaseException | None = None,
    ) -> None:
        self._answer = answer or (
            lambda r: ProviderResult(tuple(ProviderImage(valid_image(r)) for _ in range(r.n)))
        )
        self.gate = gate
        self.raises = raises
        self.started = asyncio.Event()

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.raises is not None:
            raise self.raises
        return self._answer(request)


@pytest.fixture
async def open_client() -> AsyncIterator[Callable[..., AsyncImageGen]]:
    """Makes extra clients (other settings or tenants) and closes them after the test."""
    made: list[AsyncImageGen] = []

    def make(settings: Settings, **kwargs: Any) -> AsyncImageGen:
        client = AsyncImageGen(settings, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


def with_provider(client: AsyncImageGen, provider: object) -> AsyncImageGen:
    client.container.gateways.local_provider.override(provider)
    return client


# --- bad input ---------------------------------------------------------------------------------

ESTIMATE_ARGS = {"prompt", "n", "size", "aspect_ratio", "provider", "model", "format"}

BAD_INPUT = [
    pytest.param({"prompt": ""}, imagegen.InvalidPrompt, id="empty-prompt"),
    pytest.param({"prompt": "  \n\t "}, imagegen.InvalidPrompt, id="whitespace-prompt"),
    pytest.param({"prompt": "x" * 4001}, imagegen.InvalidPrompt, id="over-long-prompt"),
    pytest.param(
        {"negative_prompt": "y" * 4001}, imagegen.InvalidPrompt, id="over-long-negative-prompt"
    ),
    pytest.param({"size": "abc"}, imagegen.InvalidSize, id="size-abc"),
    pytest.param({"size": "0x0"}, imagegen.InvalidSize, id="size-0x0"),
    pytest.param({"size": "-64x64"}, imagegen.InvalidSize, id="size-negative"),
    pytest.param({"size": "99999x64"}, imagegen.InvalidSize, id="size-too-wide"),
    pytest.param({"aspect_ratio": "wide"}, imagegen.InvalidSize, id="aspect-ratio-garbage"),
    pytest.param({"aspect_ratio": "0:1"}, imagegen.InvalidSize, id="aspect-ratio-zero"),
    pytest.param({"aspect_ratio": "101:1"}, imagegen.InvalidSize, id="aspect-ratio-extreme"),
    pytest.param(
        {"size": "64x64", "aspect_ratio": "16:9"},
        imagegen.InvalidSize,
        id="size-and-aspect-ratio-disagree",
    ),
    pytest.param({"n": 0}, imagegen.InvalidParameter, id="n-zero"),
    pytest.param({"n": -1}, imagegen.InvalidParameter, id="n-negative"),
    pytest.param({"n": 11}, imagegen.InvalidParameter, id="n-above-model-limit"),
    pytest.param({"provider": "nope"}, imagegen.UnknownProvider, id="unknown-provider"),
    pytest.param({"model": "nope"}, imagegen.UnknownModel, id="unknown-model"),
    pytest.param({"model": "nope/procedural"}, imagegen.UnknownProvider, id="unknown-ref"),
    pytest.param({"format": "gif"}, imagegen.InvalidParameter, id="unsupported-format"),
    pytest.param({"seed": -1}, imagegen.InvalidParameter, id="seed-negative"),
    pytest.param({"seed": 2**32}, imagegen.InvalidParameter, id="seed-too-large"),
    pytest.param({"idempotency_key": ""}, imagegen.InvalidParameter, id="key-empty"),
    pytest.param({"idempotency_key": "has space"}, imagegen.InvalidParameter, id="key-space"),
    pytest.param({"idempotency_key": "clé"}, imagegen.InvalidParameter, id="key-non-ascii"),
    pytest.param({"idempotency_key": "k" * 256}, imagegen.InvalidParameter, id="key-too-long"),
    pytest.param({"tags": ["bad<tag>"]}, imagegen.InvalidParameter, id="bad-tag"),
]


@pytest.mark.parametrize(("kwargs", "error"), BAD_INPUT)
async def test_bad_input_raises_typed_error_and_charges_records_and_stores_nothing(
    client: AsyncImageGen, settings: Settings, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    assert issubclass(error, imagegen.InvalidInput)
    await client.balance()  # open the account first, so "unchanged" means something
    arguments = {"prompt": "a red fox", "size": TINY, **kwargs}
    if "aspect_ratio" in kwargs and "size" not in kwargs:
        del arguments["size"]
    prompt = arguments.pop("prompt")

    with pytest.raises(error) as caught:
        await client.generate(prompt, **arguments)

    assert isinstance(caught.value, imagegen.InvalidInput)
    assert caught.value.code == error.code
    assert caught.value.message
    await assert_untouched(client, settings)
    if set(kwargs) <= ESTIMATE_ARGS:  # estimate() refuses the same request the same way
        with pytest.raises(error):
            client.estimate(prompt, **{k: v for k, v in arguments.items() if k in ESTIMATE_ARGS})


async def test_bad_input_does_not_open_an_account(client: AsyncImageGen) -> None:
    with pytest.raises(imagegen.InvalidPrompt):
        await client.generate("")
    assert await client.verify_ledger() == []
    # The first look at the balance opens the account with exactly the starting credits.
    assert (await client.balance()).balance == 100


# --- idempotency -------------------------------------------------------------------------------


async def test_replaying_an_idempotency_key_returns_the_same_generation_and_charges_once(
    client: AsyncImageGen, settings: Settings
) -> None:
    first = await client.generate("a red fox", n=2, size=TINY, idempotency_key="order-42")
    again = await client.generate("a red fox", n=2, size=TINY, idempotency_key="order-42")

    assert first.replayed is False
    assert again.replayed is True
    assert again.id == first.id
    assert again.status == "succeeded"
    assert [i.id for i in again.images] == [i.id for i in first.images]
    assert [i.sha256 for i in again.images] == [i.sha256 for i in first.images]
    assert again.credits_charged == first.credits_charged == 2
    assert again.idempotency_key == "order-42"
    balance = await client.balance()
    assert (balance.balance, balance.reserved) == (98, 0)
    assert len(await all_history(client)) == 1
    assert len([p for p in stored_files(settings) if p.suffix == ".png"]) == 2
    assert await client.verify_ledger() == []


async def test_replaying_a_key_whose_request_had_tags_returns_the_same_assets(
    client: AsyncImageGen,
) -> None:
    first = await client.generate("a fox", size=TINY, tags=["fox"], idempotency_key="k-tags")
    again = await client.generate("a fox", size=TINY, tags=["fox"], idempotency_key="k-tags")

    assert again.replayed is True
    assert [a.id for a in again.assets] == [a.id for a in first.assets]
    assert len(first.assets) == 1
    assert len((await client.assets()).items) == 1


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param({"prompt": "a blue fox"}, id="prompt"),
        pytest.param({"n": 2}, id="n"),
        pytest.param({"size": "128x128"}, id="size"),
        pytest.param({"seed": 7}, id="seed"),
        pytest.param({"format": "webp"}, id="format"),
        pytest.param({"negative_prompt": "blur"}, id="negative-prompt"),
        pytest.param({"tags": ["x"]}, id="tags"),
    ],
)
async def test_same_idempotency_key_with_different_parameters_conflicts_and_charges_nothing(
    client: AsyncImageGen, settings: Settings, changed: dict[str, Any]
) -> None:
    base: dict[str, Any] = {"prompt": "a red fox", "size": TINY, "idempotency_key": "k-1"}
    first = await client.generate(**base)
    files = stored_files(settings)

    with pytest.raises(imagegen.IdempotencyConflict) as caught:
        await client.generate(**{**base, **changed})

    assert isinstance(caught.value, imagegen.InvalidInput)
    assert caught.value.details.get("generation_id") == first.id
    balance = await client.balance()
    assert (balance.balance, balance.reserved) == (99, 0)
    assert [g.id for g in await all_history(client)] == [first.id]
    assert stored_files(settings) == files
    assert await client.verify_ledger() == []


async def test_idempotency_keys_are_per_tenant(
    settings: Settings, open_client: Callable[..., AsyncImageGen]
) -> None:
    alpha = open_client(settings, tenant_id="alpha")
    beta = open_client(settings, tenant_id="beta")

    a1 = await alpha.generate("a red fox", size=TINY, idempotency_key="shared-key")
    b1 = await beta.generate("a red fox", size=TINY, idempotency_key="shared-key")
    # Within beta the key now names beta's own request, not alpha's.
    with pytest.raises(imagegen.IdempotencyConflict) as caught:
        await beta.generate("something else", size=TINY, idempotency_key="shared-key")
    a2 = await alpha.generate("a red fox", size=TINY, idempotency_key="shared-key")

    assert not a1.replayed
    assert not b1.replayed
    assert a1.id != b1.id
    assert {i.id for i in a1.images}.isdisjoint(i.id for i in b1.images)
    assert caught.value.details.get("generation_id") == b1.id
    assert a2.replayed
    assert a2.id == a1.id
    for client in (alpha, beta):
        balance = await client.balance()
        assert (balance.balance, balance.reserved) == (99, 0)
        assert len(await all_history(client)) == 1
        assert await client.verify_ledger() == []
    with pytest.raises(imagegen.GenerationNotFound):
        await beta.get_generation(a1.id)


# --- credits -----------------------------------------------------------------------------------


async def test_insufficient_credits_raises_and_records_nothing(
    settings: Settings, open_client: Callable[..., AsyncImageGen]
) -> None:
    settings = settings.model_copy(update={"starting_credits": 2})
    client = open_client(settings)
    await client.balance()

    with pytest.raises(imagegen.InsufficientCredits) as caught:
        await client.generate("a red fox", n=3, size=TINY)

    assert isinstance(caught.value, imagegen.BillingError)
    assert caught.value.details == {"needed": 3, "available": 2}
    await assert_untouched(client, settings, credits=2)

    # Exactly what is available is enough; then nothing is left.
    result = await client.generate("a red fox", n=2, size=TINY)
    assert result.credits_charged == 2
    with pytest.raises(imagegen.InsufficientCredits):
        await client.generate("a red fox", size=TINY)
    balance = await client.balance()
    assert (balance.balance, balance.reserved, balance.available) == (0, 0, 0)
    assert [g.id for g in await all_history(client)] == [result.id]
    assert await client.verify_ledger() == []


@pytest.mark.parametrize(
    "request_args",
    [
        pytest.param({"n": 4, "size": TINY}, id="n4"),
        pytest.param({"n": 1, "size": "100x100"}, id="mapped-size"),
        pytest.param({"n": 2, "aspect_ratio": "3:2", "format": "jpeg"}, id="aspect-ratio"),
    ],
)
async def test_estimate_matches_what_generate_then_charges(
    settings: Settings,
    open_client: Callable[..., AsyncImageGen],
    request_args: dict[str, Any],
) -> None:
    settings = settings.model_copy(update={"local_credits_per_image": 3})
    client = open_client(settings)
    before = (await client.balance()).balance

    estimate = client.estimate("a red fox", **request_args)
    result = await client.generate("a red fox", **request_args)

    assert estimate.credits == 3 * request_args["n"]
    assert result.credits_charged == result.estimated_credits == estimate.credits
    assert (estimate.provider, estimate.model) == (result.provider, result.model)
    assert (estimate.size, estimate.format, estimate.n) == (result.size, result.format, result.n)
    assert estimate.warnings == result.warnings
    assert (await client.balance()).balance == before - estimate.credits
    assert await client.verify_ledger() == []


# --- provider failures -------------------------------------------------------------------------


async def test_provider_failure_marker_fails_the_generation_and_releases_the_reservation(
    client: AsyncImageGen, settings: Settings
) -> None:
    with pytest.raises(imagegen.ProviderUnavailable) as caught:
        await client.generate("a red fox [local:fail]", n=3, size=TINY)

    assert isinstance(caught.value, imagegen.ProviderError)
    generation = await assert_failed_and_released(client, settings, "provider_unavailable")
    assert generation.estimated_credits == 3
    assert (await client.get_generation(generation.id)).status == "failed"


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(imagegen.ProviderUnavailable("down"), id="unavailable"),
        pytest.param(imagegen.RateLimited("slow down", retry_after=3), id="rate-limited"),
        pytest.param(imagegen.ContentPolicyViolation("no", stage="input"), id="content-policy"),
        pytest.param(imagegen.ProviderRejected("bad request"), id="rejected"),
    ],
)
async def test_overridden_provider_errors_propagate_typed_and_release_the_reservation(
    client: AsyncImageGen, settings: Settings, error: imagegen.ProviderError
) -> None:
    with_provider(client, FakeProvider(raises=error))

    with pytest.raises(type(error)):
        await client.generate("a red fox", size=TINY)

    await assert_failed_and_released(client, settings, error.code)


async def test_a_provider_bug_still_fails_the_generation_and_releases_the_reservation(
    client: AsyncImageGen, settings: Settings
) -> None:
    with_provider(client, FakeProvider(raises=RuntimeError("adapter bug")))

    with pytest.raises(Exception):  # noqa: B017, PT011 - the type is the adapter's business
        await client.generate("a red fox", size=TINY)

    await assert_failed_and_released(client, settings, None)


def _garbage(request: ProviderRequest) -> ProviderResult:
    return ProviderResult((ProviderImage(b"\x89PNG\r\n\x1a\n this is not an image"),))


def _truncated(request: ProviderRequest) -> ProviderResult:
    return ProviderResult((ProviderImage(valid_image(request)[:-200]),))


def _wrong_size(request: ProviderRequest) -> ProviderResult:
    return ProviderResult((ProviderImage(valid_image(request, ImageSize(72, 64))),))


def _wrong_format(request: ProviderRequest) -> ProviderResult:
    return ProviderResult((ProviderImage(valid_image(request, fmt=ImageFormat.JPEG)),))


def _empty(request: ProviderRequest) -> ProviderResult:
    return ProviderResult(())


def _empty_bytes(request: ProviderRequest) -> ProviderResult:
    return ProviderResult((ProviderImage(b""),))


def _second_is_garbage(request: ProviderRequest) -> ProviderResult:
    return ProviderResult((ProviderImage(valid_image(request)), ProviderImage(b"garbage")))


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(_garbage, id="garbage-bytes"),
        pytest.param(_truncated, id="truncated-image"),
        pytest.param(_wrong_size, id="wrong-size"),
        pytest.param(_wrong_format, id="wrong-format"),
        pytest.param(_empty, id="no-images"),
        pytest.param(_empty_bytes, id="empty-bytes"),
    ],
)
async def test_provider_protocol_violation_fails_without_charging_or_storing(
    client: AsyncImageGen,
    settings: Settings,
    answer: Callable[[ProviderRequest], ProviderResult],
) -> None:
    with_provider(client, FakeProvider(answer))

    with pytest.raises(imagegen.ProviderProtocolError):
        await client.generate("a red fox", size=TINY, format="png")

    await assert_failed_and_released(client, settings, "provider_protocol_error")


async def test_protocol_violation_on_a_later_image_fails_the_whole_batch_uncharged(
    client: AsyncImageGen, settings: Settings
) -> None:
    with_provider(client, FakeProvider(_second_is_garbage))
    with pytest.raises(imagegen.ProviderProtocolError):
        await client.generate("a red fox", n=2, size=TINY, format="png")
    await assert_failed_and_released(client, settings, "provider_protocol_error", check_files=False)


async def test_protocol_violation_on_a_later_image_leaves_no_orphan_file(
    client: AsyncImageGen, settings: Settings
) -> None:
    with_provider(client, FakeProvider(_second_is_garbage))
    with pytest.raises(imagegen.ProviderProtocolError):
        await client.generate("a red fox", n=2, size=TINY, format="png")
    assert stored_files(settings) == []


async def test_provider_returning_fewer_images_charges_only_those_with_a_warning(
    client: AsyncImageGen,
) -> None:
    def two(request: ProviderRequest) -> ProviderResult:
        return ProviderResult(tuple(ProviderImage(valid_image(request)) for _ in range(2)))

    with_provider(client, FakeProvider(two))

    result = await client.generate("a red fox", n=3, size=TINY)

    assert result.status == "succeeded"
    assert result.estimated_credits == 3
    assert result.credits_charged == len(result.images) == 2
    assert any("2 of 3" in w for w in result.warnings)
    balance = await client.balance()
    assert (balance.balance, balance.reserved) == (98, 0)
    assert await client.verify_ledger() == []


async def test_provider_slower_than_the_timeout_is_unavailable_and_released(
    settings: Settings, open_client: Callable[..., AsyncImageGen]
) -> None:
    settings = settings.model_copy(update={"provider_timeout_seconds": 0.3})
    client = with_provider(open_client(settings), FakeProvider(gate=asyncio.Event()))
    started = time.monotonic()

    with pytest.raises(imagegen.ProviderUnavailable) as caught:
        await client.generate("a red fox", size=TINY)

    assert time.monotonic() - started < 5
    assert "0.3" in caught.value.message
    await assert_failed_and_released(client, settings, "provider_unavailable")


async def test_slow_local_provider_within_the_timeout_succeeds(
    settings: Settings, open_client: Callable[..., AsyncImageGen]
) -> None:
    settings = settings.model_copy(update={"local_latency_ms": 100, "provider_timeout_seconds": 5})
    client = open_client(settings)
    result = await client.generate("a red fox", size=TINY)
    assert result.status == "succeeded"


async def test_cancelling_a_generation_mid_provider_call_releases_the_reservation(
    client: AsyncImageGen, settings: Settings
) -> None:
    provider = FakeProvider(gate=asyncio.Event())
    with_provider(client, provider)
    task = asyncio.create_task(client.generate("a red fox", n=2, size=TINY))
    await asyncio.wait_for(provider.started.wait(), 10)
    (running,) = await all_history(client)
    assert running.status == "running"
    assert (await client.balance()).reserved == 2

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await assert_failed_and_released(client, settings, None)


# --- the sweeper -------------------------------------------------------------------------------


async def _wait_until_running(client: AsyncImageGen) -> Any:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        page = await client.history(status="running")
        if page.items:
            return page.items[0]
        await asyncio.sleep(0.02)
    raise AssertionError("the generation never started running")


async def test_sweeper_releases_abandoned_reservations_and_their_owners_cannot_charge_later(
    settings: Settings, open_client: Callable[..., AsyncImageGen]
) -> None:
    """Two generations hang past their reservation's expiry (as if their process had died);
    a second client sweeps both. Then one owner's provider answers after all (the owner must
    not charge: ReservationExpired) and the other owner is cancelled."""
    settings = settings.model_copy(update={"reservation_ttl_seconds": 3})
    gate = asyncio.Event()
    tenants = ("answers-late", "cancelled")
    owners = {
        t: with_provider(open_client(settings, tenant_id=t), FakeProvider(gate=gate))
        for t in tenants
    }
    readers = {t: open_client(settings, tenant_id=t) for t in tenants}
    janitor = open_client(settings)  # another process, as far as the database can tell
    for client in (*owners.values(), *readers.values(), janitor):
        await client.history(limit=1)  # start (and migrate) before the clock matters
    tasks = {
        t: asyncio.create_task(owners[t].generate(f"a slow fox for {t}", n=2, size=TINY))
        for t in tenants
    }
    try:
        running = {t: await _wait_until_running(readers[t]) for t in tenants}
        for reader in readers.values():
            balance = await reader.balance()
            assert (balance.balance, balance.reserved) == (100, 2)
        assert await janitor.sweep() == 0  # not expired yet

        await asyncio.sleep(3.2)
        assert await janitor.sweep() == 2
        assert await janitor.sweep() == 0  # already released

        for tenant, reader in readers.items():
            swept = await reader.get_generation(running[tenant].id)
            assert (swept.status, swept.failure_code) == ("failed", "abandoned")
            balance = await reader.balance()
            assert (balance.balance, balance.reserved, balance.available) == (100, 0, 100)

        tasks["cancelled"].cancel()
        gate.set()
        with pytest.raises(imagegen.ReservationExpired):
            await tasks["answers-late"]
        with pytest.raises(asyncio.CancelledError):
            await tasks["cancelled"]
    finally:
        for task in tasks.values():
            task.cancel()

    for tenant, reader in readers.items():
        final = await reader.get_generation(running[tenant].id)
        assert (final.status, final.failure_code) == ("failed", "abandoned")
        assert (final.credits_charged, final.images) == (0, ())
        balance = await reader.balance()
        assert (balance.balance, balance.reserved) == (100, 0)
        assert await reader.verify_ledger() == []


# --- what lands on disk ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
async def test_stored_images_decode_match_their_digest_and_carry_provenance(
    client: AsyncImageGen, fmt: str
) -> None:
    result = await client.generate("a red fox", n=2, size="96x64", format=fmt, seed=11)

    assert result.status == "succeeded"
    assert len(result.images) == 2
    assert len({i.sha256 for i in result.images}) == 2
    assert [i.seed for i in result.images] == [11, 12]
    for image in result.images:
        assert image.path is not None
        assert image.path.is_file()
        data = image.path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == image.sha256
        assert len(data) == image.byte_size
        assert (image.format, image.width, image.height) == (fmt, 96, 64)
        with Image.open(io.BytesIO(data)) as decoded:
            decoded.load()
            assert decoded.format == PIL_FORMATS[fmt]
            assert decoded.size == (96, 64)

        xmp = xmp_packet(image.path)
        assert xmp.findtext(f".//{IPTC_EXT}DigitalSourceType") == DIGITAL_SOURCE_TYPE
        assert xmp.findtext(f".//{IMAGEGEN_NS}generationId") == result.id
        assert xmp.findtext(f".//{IMAGEGEN_NS}seed") == str(image.seed)

        sidecar = image.path.with_suffix(".json")
        assert sidecar.is_file()
        record = json.loads(sidecar.read_text())
        assert record["sha256"] == image.sha256
        assert (record["format"], record["width"], record["height"]) == (fmt, 96, 64)
        assert record["provenance"]["generation_id"] == result.id
        assert record["provenance"]["digital_source_type"] == DIGITAL_SOURCE_TYPE


async def test_aspect_ratio_request_gets_a_matching_size_without_warning(
    client: AsyncImageGen,
) -> None:
    result = await client.generate("a wide sky", aspect_ratio="16:9", format="jpeg")

    width, height = (int(side) for side in result.size.split("x"))
    assert abs(width / height - 16 / 9) / (16 / 9) < 0.02
    assert width % 8 == 0
    assert height % 8 == 0
    assert result.warnings == ()
    (image,) = result.images
    assert (image.width, image.height) == (width, height)
    assert image.path is not None
    with Image.open(image.path) as decoded:
        assert decoded.size == (width, height)


async def test_unsupported_size_is_mapped_to_a_multiple_of_8_with_a_warning(
    client: AsyncImageGen,
) -> None:
    # 1000 is already a multiple of 8, so the local model takes 1000x1000 as it is; 100 is not.
    result = await client.generate("a red fox", size="100x100")

    width, height = (int(side) for side in result.size.split("x"))
    assert result.size != "100x100"
    assert width == height
    assert width % 8 == 0
    assert abs(width - 100) <= 4
    assert len(result.warnings) == 1
    assert "100x100" in result.warnings[0]
    assert result.size in result.warnings[0]
    (image,) = result.images
    assert image.path is not None
    with Image.open(image.path) as decoded:
        assert decoded.size == (width, height)
    # The generation as stored keeps the warning.
    assert (await client.get_generation(result.id)).warnings == result.warnings


def test_size_already_fitting_the_model_is_kept_without_warning(
    sqlite_settings: Settings,
) -> None:
    # estimate() negotiates exactly as generate() does and needs no database.
    estimate = AsyncImageGen(sqlite_settings).estimate(size="1000x1000")
    assert (estimate.size, estimate.warnings) == ("1000x1000", ())


async def test_a_provider_that_picks_its_own_resolution_in_the_same_shape_is_kept_with_a_warning(
    settings: Settings, open_client: Callable[..., AsyncImageGen]
) -> None:
    """Some models choose the pixel count themselves: same shape, other size is what was paid
    for, so it is stored and charged, with a warning; another shape stays a protocol error."""

    def twice_as_large(request: ProviderRequest) -> ProviderResult:
        return ProviderResult((ProviderImage(valid_image(request, ImageSize(128, 128))),))

    gen = with_provider(open_client(settings), FakeProvider(twice_as_large))
    result = await gen.generate("a fox", size=TINY)
    assert result.status == "succeeded"
    assert (result.images[0].width, result.images[0].height) == (128, 128)
    assert any("returned 128x128 where 64x64 was asked for" in w for w in result.warnings)
    assert result.credits_charged == 1
