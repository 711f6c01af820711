"""Editing through the whole library: ``AsyncImageGen.edit`` with real SQLite, the real
filesystem DAM, the resilience layer and the real adapters against the provider emulators.

Covered: OpenAI gpt-image-2 edits with a mask; Stability inpaint, outpaint, erase,
search-and-replace and remove-background; Replicate FLUX Kontext; a source taken from a DAM
asset, a generated image or a file; the IPTC DigitalSourceType compositeWithTrainedAlgorithmicMedia
and the link to the source asset in the stored file's XMP, its sidecar and the database; and
input validation that refuses bad images and bad parameters before anything is reserved,
charged or sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import struct
import time
import xml.etree.ElementTree as ET
import zlib
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imagegen import AsyncImageGen, Settings
from imagegen.client._results import BalanceResult, GenerationResult
from imagegen.domain.errors import (
    ContentPolicyViolation,
    InvalidInput,
    InvalidParameter,
    UnsupportedOperation,
)
from imagegen.domain.models import Operation
from imagegen.domain.pricing import credits_for
from imagegen.domain.values import ImageSize
from imagegen.testing.emulators import FaultKind, serve
from imagegen.testing.emulators import openai as openai_emulator
from imagegen.testing.emulators import replicate as replicate_emulator
from imagegen.testing.emulators import stability as stability_emulator

OPENAI_KEY = "sk-proj-editing-Openai0123456789"
REPLICATE_TOKEN = "r8_editing_Token0123456789"
STABILITY_KEY = "sk-editing-Stability0123456789"
STARTING_CREDITS = 500

COMPOSITE = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
GENERATED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
IPTC_EXT = "{http://iptc.org/std/Iptc4xmpExt/2008-02-29/}"
IMAGEGEN_NS = "{https://imagegen.dev/ns/1.0/}"

GPT = "gpt-image-2"
KONTEXT = "black-forest-labs/flux-kontext-pro"
FLUX2 = "black-forest-labs/flux-2-pro"
INPAINT = "stable-image-inpaint"
OUTPAINT = "stable-image-outpaint"
ERASE = "stable-image-erase"
SEARCH = "stable-image-search-and-replace"
REMOVE_BG = "stable-image-remove-background"
MAX_INPUT_BYTES = 50 * 1024 * 1024  # GenerationPolicy.max_input_image_bytes

CREATE_ROUTE = {"openai": "/v1/images/", "replicate": "/v1/models/", "stability": "/v2beta/"}


# --- emulators and client --------------------------------------------------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[dict[str, tuple[Any, str]]]:
    apps = {
        "openai": openai_emulator.create_app(api_key=OPENAI_KEY),
        "replicate": replicate_emulator.create_app(api_token=REPLICATE_TOKEN),
        "stability": stability_emulator.create_app(api_key=STABILITY_KEY),
    }
    with (
        serve(apps["openai"]) as openai_url,
        serve(apps["replicate"]) as replicate_url,
        serve(apps["stability"]) as stability_url,
    ):
        yield {
            "openai": (apps["openai"], openai_url),
            "replicate": (apps["replicate"], replicate_url),
            "stability": (apps["stability"], stability_url),
        }


@pytest.fixture
def apps(served: dict[str, tuple[Any, str]]) -> dict[str, Any]:
    """The emulators, reset for this test."""
    for app, _ in served.values():
        app.state.faults.clear()
        app.state.faults.latency_s = 0.0
        app.state.requests.clear()
    served["replicate"][0].state.created = 0
    served["stability"][0].state.credits = 100_000.0
    return {name: app for name, (app, _) in served.items()}


@pytest.fixture
def settings(tmp_path: Path, served: dict[str, tuple[Any, str]], apps: dict[str, Any]) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        starting_credits=STARTING_CREDITS,
        openai_api_key=OPENAI_KEY,  # type: ignore[arg-type]
        openai_base_url=f"{served['openai'][1]}/v1",
        replicate_api_token=REPLICATE_TOKEN,  # type: ignore[arg-type]
        replicate_base_url=served["replicate"][1],
        stability_api_key=STABILITY_KEY,  # type: ignore[arg-type]
        stability_base_url=served["stability"][1],
        provider_max_attempts=2,
        provider_retry_base_delay_seconds=0.01,
        provider_retry_max_delay_seconds=0.05,
    )


@pytest.fixture
async def gen(settings: Settings) -> AsyncIterator[AsyncImageGen]:
    async with AsyncImageGen(settings) as library:
        yield library


def creates(apps: dict[str, Any], provider: str) -> list[dict[str, Any]]:
    route = CREATE_ROUTE[provider]
    return [
        r
        for r in apps[provider].state.requests
        if r["method"] == "POST" and r["path"].startswith(route)
    ]


# --- images ----------------------------------------------------------------------------------


def png(size: tuple[int, int], mode: str = "RGB", colour: Any = (40, 90, 160)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def photo(size: tuple[int, int]) -> bytes:
    """A source with some structure (noise), so edits have something to work on."""
    buffer = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def mask(size: tuple[int, int]) -> bytes:
    """An RGBA mask: the centre is transparent (what to change), the rest opaque."""
    image = Image.new("RGBA", size, (0, 0, 0, 255))
    width, height = size
    image.paste((0, 0, 0, 0), (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body))
        + kind
        + body
        + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


def decompression_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny, well-formed PNG whose header claims ``width`` x ``height`` pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _chunk(b"IEND", b"")
    )


def gif(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 0, 0)).save(buffer, "GIF")
    return buffer.getvalue()


def decoded(path: Path | None) -> Image.Image:
    assert path is not None
    assert path.is_file()
    with Image.open(path) as image:
        image.load()
        return image.copy()


def xmp_of(data: bytes) -> ET.Element:
    match = re.search(rb"<x:xmpmeta.*?</x:xmpmeta>", data, re.DOTALL)
    assert match is not None, "the stored file carries no XMP packet"
    return ET.fromstring(match.group(0))


def xmp_value(root: ET.Element, tag: str) -> str | None:
    found = root.find(f".//{tag}")
    return found.text if found is not None else None


def sidecar_of(path: Path | None) -> dict[str, Any]:
    assert path is not None
    loaded: dict[str, Any] = json.loads(path.with_suffix(".json").read_text())
    return loaded


async def parent_id(gen: AsyncImageGen, generation_id: str) -> str | None:
    """Generation.parent_id, read back from the database."""
    uow = gen.container.gateways.uow()
    async with uow(read_only=True) as work:
        generation = await work.generations.get(gen.tenant_id, generation_id)
    assert generation is not None
    return generation.parent_id


def catalog_quote(
    gen: AsyncImageGen, provider: str, model: str, operation: Operation, size: tuple[int, int]
) -> tuple[int, Decimal]:
    """Credits and USD the catalog prices one edit at."""
    spec = gen.container.gateways.catalog().get(provider, model)
    quoted = spec.quote(
        1,
        usd_per_credit=gen.settings.usd_per_credit,
        size=ImageSize(*size),
        operation=operation,
        input_images=(ImageSize(*size),),
    )
    assert quoted.usd is not None
    return quoted.credits.amount, quoted.usd.amount


async def assert_charged(gen: AsyncImageGen, before: BalanceResult, credits: int) -> None:
    after = await gen.balance()
    assert after.balance == before.balance - credits
    assert after.reserved == 0
    assert await gen.verify_ledger() == []


def assert_composite(result: GenerationResult, parent_asset_id: str | None) -> None:
    """Every stored image says it is an AI composite, in its XMP and its sidecar, and links
    to its source asset (or to none)."""
    for image in result.images:
        assert image.path is not None
        data = image.path.read_bytes()
        root = xmp_of(data)
        assert xmp_value(root, f"{IPTC_EXT}DigitalSourceType") == COMPOSITE
        assert xmp_value(root, f"{IMAGEGEN_NS}parentAssetId") == parent_asset_id
        assert xmp_value(root, f"{IMAGEGEN_NS}generationId") == result.id
        provenance = sidecar_of(image.path)["provenance"]
        assert provenance["digital_source_type"] == COMPOSITE
        assert provenance["parent_asset_id"] == parent_asset_id
        assert provenance["generation_id"] == result.id


@pytest.fixture
async def source_asset(gen: AsyncImageGen) -> Any:
    """A 256x256 image from the offline local provider, saved as a DAM asset."""
    generated = await gen.generate("a blue door in a white wall", size="256x256")
    return await gen.save_to_dam(generated.images[0], tags=["source"])


# --- OpenAI ----------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["edit", "inpaint"])
async def test_openai_edit_with_a_mask_sends_image_and_mask_as_multipart(
    gen: AsyncImageGen, apps: dict[str, Any], operation: str
) -> None:
    source = photo((1024, 1024))
    before = await gen.balance()

    result = await gen.edit(
        source,
        "put a red hat on it",
        operation=operation,
        mask=mask((1024, 1024)),
        provider="openai",
        model=GPT,
    )

    (sent,) = creates(apps, "openai")
    assert sent["path"] == "/v1/images/edits"
    assert sent["headers"]["content-type"].startswith("multipart/form-data")
    fields = {f["field"]: f for f in sent["files"]}
    assert set(fields) == {"image[]", "mask"}
    assert fields["image[]"]["size"] == len(source)
    assert fields["image[]"]["content_type"] == "image/png"
    assert sent["form"]["prompt"] == "put a red hat on it"
    assert sent["form"]["model"] == GPT
    assert result.status == "succeeded"
    assert (result.provider, result.model, result.size) == ("openai", GPT, "1024x1024")
    assert decoded(result.images[0].path).size == (1024, 1024)
    # Token-priced: charged from the usage OpenAI reported, never above the reservation.
    assert result.provider_cost_usd is not None
    cost = Decimal(result.provider_cost_usd)
    assert result.credits_charged == credits_for(cost, gen.settings.usd_per_credit).amount
    assert 0 < result.credits_charged <= result.estimated_credits
    assert_composite(result, None)
    await assert_charged(gen, before, result.credits_charged)


async def test_openai_edit_of_a_small_source_maps_the_size_with_a_warning(
    gen: AsyncImageGen, apps: dict[str, Any], source_asset: Any
) -> None:
    result = await gen.edit(source_asset.id, "add snow", provider="openai", model=GPT)

    assert result.size != "256x256"
    assert any("256x256" in w and result.size in w for w in result.warnings)
    (sent,) = creates(apps, "openai")
    assert sent["form"]["size"] == result.size
    assert_composite(result, source_asset.id)


# --- Stability ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "operation", "options", "endpoint", "files", "out_size"),
    [
        pytest.param(
            INPAINT,
            "inpaint",
            {"mask": True},
            "inpaint",
            {"image", "mask"},
            (256, 256),
            id="inpaint",
        ),
        pytest.param(
            OUTPAINT,
            "outpaint",
            {"outpaint": (64, 32, 16, 0)},
            "outpaint",
            {"image"},
            (352, 272),
            id="outpaint",
        ),
        pytest.param(
            ERASE, "erase", {"mask": True}, "erase", {"image", "mask"}, (256, 256), id="erase"
        ),
        pytest.param(
            SEARCH,
            "search_and_replace",
            {"search_prompt": "the door"},
            "search-and-replace",
            {"image"},
            (256, 256),
            id="search-and-replace",
        ),
        pytest.param(
            REMOVE_BG,
            "remove_background",
            {},
            "remove-background",
            {"image"},
            (256, 256),
            id="remove-background",
        ),
        pytest.param(
            "stable-image-edit",
            "outpaint",
            {"outpaint": (0, 0, 64, 64)},
            "outpaint",
            {"image"},
            (256, 384),
            id="stable-image-edit-outpaint",
        ),
    ],
)
async def test_stability_edit_operations_hit_their_endpoint_and_charge_the_catalog_price(
    gen: AsyncImageGen,
    apps: dict[str, Any],
    source_asset: Any,
    model: str,
    operation: str,
    options: dict[str, Any],
    endpoint: str,
    files: set[str],
    out_size: tuple[int, int],
) -> None:
    prompt = "" if operation in ("erase", "remove_background") else "a red door"
    if options.pop("mask", False):
        options["mask"] = mask((256, 256))
    credits, usd = catalog_quote(gen, "stability", model, Operation(operation), out_size)
    before = await gen.balance()

    result = await gen.edit(
        source_asset.id, prompt, operation=operation, provider="stability", model=model, **options
    )

    (sent,) = creates(apps, "stability")
    assert sent["path"] == f"/v2beta/stable-image/edit/{endpoint}"
    assert set(sent["files"]) == files
    assert sent["files"]["image"]["size"] == source_asset.path.stat().st_size
    assert result.status == "succeeded"
    (image,) = result.images
    assert (image.width, image.height) == out_size
    assert decoded(image.path).size == out_size
    assert result.credits_charged == credits
    assert Decimal(result.provider_cost_usd or "-1") == usd
    assert_composite(result, source_asset.id)
    assert await parent_id(gen, result.id) == source_asset.id
    await assert_charged(gen, before, credits)


async def test_outpaint_margins_reach_the_wire_and_grow_the_image(
    gen: AsyncImageGen, apps: dict[str, Any], source_asset: Any
) -> None:
    result = await gen.edit(
        source_asset.id,
        "more wall",
        operation="outpaint",
        outpaint=(100, 50, 0, 20),
        provider="stability",
        model=OUTPAINT,
    )

    (sent,) = creates(apps, "stability")
    assert {k: sent["fields"].get(k) for k in ("left", "right", "up", "down")} == {
        "left": "100",
        "right": "50",
        "up": None,
        "down": "20",
    }
    assert decoded(result.images[0].path).size == (256 + 150, 256 + 20)


async def test_search_and_replace_sends_the_search_prompt(
    gen: AsyncImageGen, apps: dict[str, Any], source_asset: Any
) -> None:
    await gen.edit(
        source_asset.id,
        "a golden door",
        operation="search-and-replace",
        search_prompt="the blue door",
        provider="stability",
        model=SEARCH,
    )

    (sent,) = creates(apps, "stability")
    assert sent["fields"]["search_prompt"] == "the blue door"
    assert sent["fields"]["prompt"] == "a golden door"


async def test_remove_background_returns_an_image_with_transparency(
    gen: AsyncImageGen, source_asset: Any
) -> None:
    result = await gen.edit(
        source_asset.id, operation="remove_background", provider="stability", model=REMOVE_BG
    )

    image = decoded(result.images[0].path)
    assert result.format == "png"
    assert image.mode in ("RGBA", "LA") or "transparency" in image.info


async def test_a_refused_edit_is_a_content_violation_and_charges_nothing(
    gen: AsyncImageGen, apps: dict[str, Any], source_asset: Any
) -> None:
    apps["stability"].state.faults.add(FaultKind.CONTENT_REFUSAL, stage="input")
    before = await gen.balance()

    with pytest.raises(ContentPolicyViolation):
        await gen.edit(
            source_asset.id,
            "something forbidden",
            operation="inpaint",
            mask=mask((256, 256)),
            provider="stability",
            model=INPAINT,
        )

    await assert_charged(gen, before, 0)
    (failed,) = (await gen.history(status="failed")).items
    assert failed.credits_charged == 0


# --- Replicate -----------------------------------------------------------------------------------


async def test_flux_kontext_edit_sends_the_source_as_input_image(
    gen: AsyncImageGen, apps: dict[str, Any], source_asset: Any
) -> None:
    credits, usd = catalog_quote(
        gen, "replicate", KONTEXT, Operation.EDIT, (source_asset.width, source_asset.height)
    )
    before = await gen.balance()

    result = await gen.edit(source_asset.id, "make it night", provider="replicate", model=KONTEXT)

    (sent,) = creates(apps, "replicate")
    assert sent["path"] == f"/v1/models/{KONTEXT}/predictions"
    body = sent["body"]["input"]
    assert body["prompt"] == "make it night"
    assert body["input_image"].startswith("data:image/png;base64,")
    assert apps["replicate"].state.created == 1
    assert result.status == "succeeded"
    assert decoded(result.images[0].path).size == (result.images[0].width, result.images[0].height)
    assert result.credits_charged == credits
    assert Decimal(result.provider_cost_usd or "-1") == usd
    assert_composite(result, source_asset.id)
    await assert_charged(gen, before, credits)


async def _wait_for_job(gen: AsyncImageGen) -> str:
    uow = gen.container.gateways.uow()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for item in (await gen.history(status="running")).items:
            async with uow(read_only=True) as work:
                generation = await work.generations.get(gen.tenant_id, item.id)
            if generation is not None and generation.provider_job_ids:
                return item.id
        await asyncio.sleep(0.05)
    pytest.fail("the edit never persisted its Replicate prediction id")


@pytest.mark.parametrize(
    "model",
    [
        KONTEXT,
        FLUX2,  # bills input megapixels: the resumed edit prices them from the stored sizes
    ],
)
async def test_a_replicate_edit_whose_process_died_is_resumed_and_charged_as_quoted(
    settings: Settings, apps: dict[str, Any], model: str
) -> None:
    source = photo((1024, 1024))
    # The first client's download of the output hangs (as if its process had died after the
    # prediction was created); a second client on the same data dir resumes the generation.
    apps["replicate"].state.faults.add(FaultKind.TIMEOUT, delay=30, route="/files/")
    async with AsyncImageGen(settings) as first, AsyncImageGen(settings) as second:
        credits, usd = catalog_quote(first, "replicate", model, Operation.EDIT, (1024, 1024))
        stuck = asyncio.create_task(
            first.edit(source, "make it night", provider="replicate", model=model)
        )
        try:
            generation_id = await _wait_for_job(second)
            deadline = time.monotonic() + 20
            while not any(  # until the first client is stuck in the download (fault used up)
                r["path"].startswith("/files/") for r in apps["replicate"].state.requests
            ):
                assert not stuck.done()
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            result = await second.resume(generation_id)
        finally:
            stuck.cancel()
            with contextlib.suppress(BaseException):
                await stuck

        assert result.status == "succeeded"
        assert len(result.images) == 1
        assert result.credits_charged == credits
        assert Decimal(result.provider_cost_usd or "-1") == usd
        assert apps["replicate"].state.created == 1
        assert_composite(result, None)
        balance = await second.balance()
        assert (balance.balance, balance.reserved) == (STARTING_CREDITS - credits, 0)
        assert await second.verify_ledger() == []


# --- where the source comes from, and the provenance of the result -------------------------------


async def test_an_edit_of_a_dam_asset_is_a_composite_linked_to_its_source(
    gen: AsyncImageGen, source_asset: Any
) -> None:
    assert source_asset.provenance["digital_source_type"] == GENERATED

    result = await gen.edit(
        source_asset.id,
        "a red door",
        operation="inpaint",
        mask=mask((256, 256)),
        provider="stability",
        model=INPAINT,
    )

    assert await parent_id(gen, result.id) == source_asset.id
    assert_composite(result, source_asset.id)
    # The source asset itself is untouched.
    assert (await gen.get_asset(source_asset.id)).sha256 == source_asset.sha256


async def test_an_edited_image_saved_as_an_asset_keeps_composite_provenance_and_its_parent(
    gen: AsyncImageGen, source_asset: Any
) -> None:
    result = await gen.edit(
        source_asset.id,
        "a red door",
        operation="inpaint",
        mask=mask((256, 256)),
        provider="stability",
        model=INPAINT,
        tags=["edited"],
    )

    (asset,) = result.assets
    assert asset.provenance["digital_source_type"] == COMPOSITE
    assert asset.provenance["parent_asset_id"] == source_asset.id
    stored = await gen.get_asset(asset.id)
    assert stored.provenance["digital_source_type"] == COMPOSITE


async def test_an_exported_edit_carries_its_composite_provenance(
    gen: AsyncImageGen, source_asset: Any, tmp_path: Path
) -> None:
    result = await gen.edit(
        source_asset.id,
        "a red door",
        operation="erase",
        mask=mask((256, 256)),
        provider="stability",
        model=ERASE,
    )
    asset = await gen.save_to_dam(result.images[0], tags=["export"])

    exported = await gen.export_asset(asset.id, tmp_path / "out")

    root = xmp_of(exported.read_bytes())
    assert xmp_value(root, f"{IPTC_EXT}DigitalSourceType") == COMPOSITE
    assert xmp_value(root, f"{IMAGEGEN_NS}parentAssetId") == source_asset.id


async def test_an_edit_of_a_generated_image_saves_it_to_the_dam_and_links_to_it(
    gen: AsyncImageGen,
) -> None:
    generated = await gen.generate("a green door", size="256x256")

    result = await gen.edit(
        generated.images[0],
        "a red door",
        operation="inpaint",
        mask=mask((256, 256)),
        provider="stability",
        model=INPAINT,
    )

    (asset,) = (await gen.assets()).items
    assert asset.image_id == generated.images[0].id
    assert await parent_id(gen, result.id) == asset.id
    assert_composite(result, asset.id)


async def test_an_edit_of_a_file_is_a_composite_without_a_parent(
    gen: AsyncImageGen, apps: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "door.png"
    path.write_bytes(photo((320, 240)))

    result = await gen.edit(
        path,
        "a red door",
        operation="inpaint",
        mask=mask((320, 240)),
        provider="stability",
        model=INPAINT,
    )

    (sent,) = creates(apps, "stability")
    assert sent["files"]["image"]["size"] == path.stat().st_size
    assert result.status == "succeeded"
    assert decoded(result.images[0].path).size == (320, 240)
    assert await parent_id(gen, result.id) is None
    assert_composite(result, None)


# --- validation before any charge ---------------------------------------------------------------


def _truncated_png() -> bytes:
    data = photo((256, 256))
    return data[: len(data) // 2]


def _over_the_byte_limit() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"\x00" * (MAX_INPUT_BYTES - 7)


INVALID_EDITS = [
    pytest.param({"source": b"definitely not an image" * 10}, "not a usable image", id="garbage"),
    pytest.param({"source": b""}, "not a usable image", id="empty"),
    pytest.param({"source": _truncated_png()}, "not a usable image", id="truncated-png"),
    pytest.param({"source": decompression_bomb()}, "decompression bomb", id="decompression-bomb"),
    pytest.param({"source": _over_the_byte_limit}, "the limit is", id="over-the-byte-limit"),
    pytest.param({"source": gif((256, 256))}, "not a usable image", id="gif-source"),
    pytest.param({"mask": mask((128, 128))}, "must match", id="mask-of-another-size"),
    pytest.param({"mask": b"not a mask"}, "mask is not a usable image", id="garbage-mask"),
    pytest.param({"mask": decompression_bomb()}, "decompression bomb", id="bomb-mask"),
    pytest.param(
        {"operation": "outpaint", "model": OUTPAINT, "mask": None},
        "margins",
        id="outpaint-no-margins",
    ),
    pytest.param(
        {"operation": "outpaint", "model": OUTPAINT, "mask": None, "outpaint": (0, 0, 0, 0)},
        "at least one margin",
        id="outpaint-zero-margins",
    ),
    pytest.param(
        {"operation": "outpaint", "model": OUTPAINT, "mask": None, "outpaint": (0, 5000, 0, 0)},
        "0-2000",
        id="outpaint-margin-too-large",
    ),
    pytest.param(
        {"operation": "search_and_replace", "model": SEARCH, "mask": None},
        "search prompt",
        id="search-and-replace-without-search-prompt",
    ),
    pytest.param({"operation": "colorize"}, "not one of", id="unknown-operation"),
    pytest.param(
        {"operation": "outpaint", "outpaint": (64, 0, 0, 0), "mask": None},
        "does not support outpaint",
        id="operation-the-model-does-not-support",
    ),
    pytest.param(
        {"provider": "openai", "model": GPT, "operation": "erase"},
        "does not support erase",
        id="openai-erase",
    ),
    pytest.param(
        {
            "provider": "replicate",
            "model": KONTEXT,
            "operation": "edit",
            "mask": None,
            "references": [b"x"],
        },
        "Input image 2 is not a usable image",
        id="references-that-are-not-images",
    ),
    pytest.param(
        {
            "provider": "replicate",
            "model": KONTEXT,
            "operation": "edit",
            "mask": None,
            "references": [png((256, 256))],
        },
        "at most 1 input image",
        id="too-many-input-images",
    ),
    pytest.param(
        {
            "model": OUTPAINT,
            "operation": "outpaint",
            "outpaint": (64, 0, 0, 0),
            "mask": None,
            "negative_prompt": "blur",
        },
        "negative prompt",
        id="negative-prompt-the-model-does-not-take",
    ),
    pytest.param(
        {"model": REMOVE_BG, "operation": "remove_background"},
        "mask",
        id="mask-on-a-maskless-model",
    ),
]


@pytest.mark.parametrize(("change", "message"), INVALID_EDITS)
async def test_invalid_edits_are_refused_before_any_charge_or_call(
    gen: AsyncImageGen, apps: dict[str, Any], change: dict[str, Any], message: str | None
) -> None:
    arguments: dict[str, Any] = {
        "source": photo((256, 256)),
        "prompt": "a red door",
        "operation": "inpaint",
        "mask": mask((256, 256)),
        "provider": "stability",
        "model": INPAINT,
    }
    # Values may be factories, so a 50 MB input is built only while its test runs.
    arguments.update({k: v() if callable(v) else v for k, v in change.items()})
    before = await gen.balance()

    with pytest.raises(InvalidInput) as raised:
        await gen.edit(arguments.pop("source"), arguments.pop("prompt"), **arguments)

    if message is not None:
        assert message in raised.value.message
    assert isinstance(raised.value, InvalidParameter | UnsupportedOperation)
    assert await gen.balance() == before
    assert (await gen.history()).items == ()
    assert all(app.state.requests == [] for app in apps.values())
    assert await gen.verify_ledger() == []


async def test_a_file_named_png_is_judged_by_its_content(
    gen: AsyncImageGen, apps: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "holiday.png"
    path.write_bytes(b"%PDF-1.7 this is not a picture")
    before = await gen.balance()

    with pytest.raises(InvalidParameter, match="not a usable image"):
        await gen.edit(
            path, "x", operation="erase", mask=mask((64, 64)), provider="stability", model=ERASE
        )

    assert await gen.balance() == before
    assert (await gen.history()).items == ()
    assert apps["stability"].state.requests == []


async def test_a_missing_source_file_is_invalid_input(gen: AsyncImageGen, tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter, match="Could not read"):
        await gen.edit(tmp_path / "nope.png", "x", provider="stability", model=INPAINT)


async def test_an_unknown_source_asset_is_not_found_and_charges_nothing(
    gen: AsyncImageGen, apps: dict[str, Any]
) -> None:
    from imagegen.domain.errors import AssetNotFound

    before = await gen.balance()
    with pytest.raises(AssetNotFound):
        await gen.edit("ast_00000000000000000000000000", "x", provider="stability", model=INPAINT)
    assert await gen.balance() == before
    assert apps["stability"].state.requests == []
