"""The offline ``local`` provider and the Pillow inspector that checks every provider's bytes."""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageStat

from imagegen.application.ports import ImageInfo, ProviderRequest
from imagegen.domain.errors import (
    ProviderProtocolError,
    ProviderRejected,
    ProviderUnavailable,
    UnsupportedOperation,
)
from imagegen.domain.models import Operation
from imagegen.domain.values import MAX_SEED, ImageFormat, ImageSize, Seed
from imagegen.infrastructure import imaging
from imagegen.infrastructure.imaging import PillowInspector
from imagegen.infrastructure.providers import local
from imagegen.infrastructure.providers.local import FAIL_MARKER, LocalProvider, default_seed


def request(
    prompt: str = "a red fox in the snow",
    *,
    n: int = 1,
    size: tuple[int, int] = (64, 64),
    fmt: ImageFormat = ImageFormat.PNG,
    seed: Seed | None = Seed(42),
    operation: Operation = Operation.GENERATE,
) -> ProviderRequest:
    return ProviderRequest(
        model="abstract-v1",
        prompt=prompt,
        n=n,
        size=ImageSize(*size),
        format=fmt,
        seed=seed,
        operation=operation,
    )


def decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy()


def mean_abs_difference(a: bytes, b: bytes) -> float:
    diff = ImageChops.difference(decode(a).convert("RGB"), decode(b).convert("RGB"))
    return sum(ImageStat.Stat(diff).mean) / 3


@pytest.fixture
def provider() -> LocalProvider:
    return LocalProvider()


# --- determinism -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(ImageFormat))
async def test_same_prompt_seed_size_and_format_give_identical_bytes(
    provider: LocalProvider, fmt: ImageFormat
) -> None:
    first = await provider.generate(request(fmt=fmt, size=(96, 80)))
    second = await LocalProvider().generate(request(fmt=fmt, size=(96, 80)))
    assert first.images[0].data == second.images[0].data


_CHILD = """
import asyncio, hashlib
from imagegen.application.ports import ProviderRequest
from imagegen.domain.values import ImageFormat, ImageSize, Seed
from imagegen.infrastructure.providers.local import LocalProvider
async def main():
    for fmt in ImageFormat:
        req = ProviderRequest(model="m", prompt="a red fox in the snow", n=2,
                              size=ImageSize(80, 48), format=fmt, seed=None)
        result = await LocalProvider().generate(req)
        for image in result.images:
            print(fmt.value, image.seed.value, hashlib.sha256(image.data).hexdigest())
asyncio.run(main())
"""


@pytest.mark.slow
async def test_output_is_byte_identical_across_processes_with_different_hash_seeds() -> None:
    outputs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True
        )
        outputs.append(done.stdout)
    expected = []
    for fmt in ImageFormat:
        result = await LocalProvider().generate(request(n=2, size=(80, 48), fmt=fmt, seed=None))
        for image in result.images:
            assert image.seed is not None
            digest = hashlib.sha256(image.data).hexdigest()
            expected.append(f"{fmt.value} {image.seed.value} {digest}")
    assert outputs[0] == outputs[1] == "\n".join(expected) + "\n"


async def test_different_prompts_give_visibly_different_images(provider: LocalProvider) -> None:
    prompts = ["a red fox in the snow", "ocean waves at night", "a cat", "misty forest morning"]
    images = {
        p: (await provider.generate(request(p, size=(96, 96)))).images[0].data for p in prompts
    }
    for a, b in itertools.combinations(prompts, 2):
        assert mean_abs_difference(images[a], images[b]) > 15, (a, b)


async def test_different_seeds_give_visibly_different_images(provider: LocalProvider) -> None:
    one = (await provider.generate(request(seed=Seed(1), size=(96, 96)))).images[0].data
    two = (await provider.generate(request(seed=Seed(2), size=(96, 96)))).images[0].data
    assert mean_abs_difference(one, two) > 10


@pytest.mark.parametrize(
    "prompt",
    ["!!!", "\ud800 a lone surrogate", "🦊 狐狸 in the snow", "x" * 4000, "tab\tnew\nline"],
    ids=["no-words", "lone-surrogate", "non-latin", "very-long", "whitespace"],
)
async def test_any_prompt_text_renders_deterministically(
    provider: LocalProvider, prompt: str
) -> None:
    first = await provider.generate(request(prompt, seed=None))
    second = await provider.generate(request(prompt, seed=None))
    assert first.images[0].data == second.images[0].data
    assert PillowInspector().inspect(first.images[0].data).width == 64


# --- request parameters ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(ImageFormat))
@pytest.mark.parametrize("size", [(1, 1), (64, 64), (300, 17), (17, 300), (640, 360)])
async def test_size_and_format_are_honoured(
    provider: LocalProvider, fmt: ImageFormat, size: tuple[int, int]
) -> None:
    result = await provider.generate(request(size=size, fmt=fmt))
    info = PillowInspector().inspect(result.images[0].data)
    assert info == ImageInfo(format=fmt, width=size[0], height=size[1], has_alpha=False)


async def test_n_images_use_consecutive_seeds_and_report_them(provider: LocalProvider) -> None:
    result = await provider.generate(request(n=3, seed=Seed(10)))
    assert [image.seed for image in result.images] == [Seed(10), Seed(11), Seed(12)]
    assert len({image.data for image in result.images}) == 3
    # Image i is exactly what a single call with seed + i returns: batches are reproducible.
    alone = await provider.generate(request(n=1, seed=Seed(11)))
    assert alone.images[0].data == result.images[1].data
    assert result.provider_job_id is None


async def test_seeds_wrap_around_at_the_maximum(provider: LocalProvider) -> None:
    result = await provider.generate(request(n=2, seed=Seed(MAX_SEED)))
    assert [image.seed for image in result.images] == [Seed(MAX_SEED), Seed(0)]


async def test_missing_seed_is_derived_from_the_prompt_and_reported(
    provider: LocalProvider,
) -> None:
    first = await provider.generate(request(n=2, seed=None))
    second = await provider.generate(request(n=2, seed=None))
    seed = default_seed("a red fox in the snow")
    assert [image.seed for image in first.images] == [seed, seed.offset(1)]
    assert [image.data for image in first.images] == [image.data for image in second.images]
    explicit = await provider.generate(request(n=1, seed=seed))
    assert explicit.images[0].data == first.images[0].data
    assert default_seed("another prompt") != seed


async def test_png_output_has_no_timestamp_or_text_chunks(provider: LocalProvider) -> None:
    data = (await provider.generate(request(fmt=ImageFormat.PNG))).images[0].data
    kinds, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        kinds.append(kind)
        pos += 12 + length
    assert set(kinds) <= {b"IHDR", b"IDAT", b"IEND"}


@pytest.mark.parametrize("fmt", [ImageFormat.JPEG, ImageFormat.WEBP])
async def test_jpeg_and_webp_output_carry_no_metadata(
    provider: LocalProvider, fmt: ImageFormat
) -> None:
    image = decode((await provider.generate(request(fmt=fmt))).images[0].data)
    assert not {"exif", "xmp", "icc_profile"} & set(image.info)


async def test_rendering_runs_off_the_event_loop_thread(
    provider: LocalProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[int] = []
    real_render = local.render

    def spy(*args: Any) -> bytes:
        threads.append(threading.get_ident())
        return real_render(*args)

    monkeypatch.setattr(local, "render", spy)
    await provider.generate(request(n=2))
    assert len(threads) == 2
    assert threading.get_ident() not in threads


# --- failures and latency ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "operation", [Operation.EDIT, Operation.INPAINT, Operation.REMOVE_BACKGROUND]
)
async def test_operations_other_than_generate_are_unsupported(
    provider: LocalProvider, operation: Operation
) -> None:
    with pytest.raises(UnsupportedOperation):
        await provider.generate(request(operation=operation))


async def test_zero_images_is_rejected(provider: LocalProvider) -> None:
    with pytest.raises(ProviderRejected):
        await provider.generate(request(n=0))


async def test_prompt_with_the_fail_marker_makes_the_provider_unavailable(
    provider: LocalProvider,
) -> None:
    with pytest.raises(ProviderUnavailable):
        await provider.generate(request(f"a cat {FAIL_MARKER} on a mat"))


async def test_configured_failure_substring_makes_the_provider_unavailable() -> None:
    flaky = LocalProvider(fail_with="storm")
    with pytest.raises(ProviderUnavailable):
        await flaky.generate(request("a storm at sea"))
    result = await flaky.generate(request("a calm sea"))
    assert len(result.images) == 1


async def test_latency_is_awaited_without_blocking_the_loop() -> None:
    slow = LocalProvider(latency_s=0.05)
    started = time.perf_counter()
    results = await asyncio.gather(*(slow.generate(request(size=(8, 8))) for _ in range(4)))
    elapsed = time.perf_counter() - started
    assert len(results) == 4
    assert 0.05 <= elapsed < 0.5  # four concurrent calls overlap their waits


def test_provider_is_named_local_and_checks_its_options() -> None:
    assert LocalProvider().name == "local"
    with pytest.raises(ValueError, match="latency_s"):
        LocalProvider(latency_s=-1)
    with pytest.raises(ValueError, match="fail_with"):
        LocalProvider(fail_with="")


# --- PillowInspector ---------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            encode(Image.new("RGB", (30, 20)), "PNG"),
            ImageInfo(ImageFormat.PNG, 30, 20, has_alpha=False),
        ),
        (
            encode(Image.new("RGBA", (30, 20)), "PNG"),
            ImageInfo(ImageFormat.PNG, 30, 20, has_alpha=True),
        ),
        (
            encode(Image.new("P", (5, 6)), "PNG", transparency=0),
            ImageInfo(ImageFormat.PNG, 5, 6, has_alpha=True),
        ),
        (
            encode(Image.new("RGB", (31, 7)), "JPEG"),
            ImageInfo(ImageFormat.JPEG, 31, 7, has_alpha=False),
        ),
        (
            encode(Image.new("RGB", (9, 9)), "WEBP"),
            ImageInfo(ImageFormat.WEBP, 9, 9, has_alpha=False),
        ),
        (
            encode(Image.new("RGBA", (9, 9)), "WEBP", lossless=True),
            ImageInfo(ImageFormat.WEBP, 9, 9, has_alpha=True),
        ),
    ],
    ids=["png", "png-rgba", "png-palette-transparency", "jpeg", "webp", "webp-rgba"],
)
def test_inspector_reports_format_size_and_alpha(data: bytes, expected: ImageInfo) -> None:
    assert PillowInspector().inspect(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"definitely not an image",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
        encode(Image.new("RGB", (8, 8)), "GIF"),
        encode(Image.new("RGB", (8, 8)), "BMP"),
    ],
    ids=["empty", "garbage", "png-signature-only", "gif", "bmp"],
)
def test_inspector_rejects_non_images_and_unsupported_formats(data: bytes) -> None:
    with pytest.raises(ProviderProtocolError):
        PillowInspector().inspect(data)


def test_inspector_decodes_at_most_max_concurrent_images_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inspector = PillowInspector(max_concurrent=2)
    real = inspector._inspect
    lock = threading.Lock()
    running = peak = 0

    def counting(data: bytes) -> ImageInfo:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        try:
            return real(data)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(inspector, "_inspect", counting)
    data = encode(Image.new("RGB", (30, 20)), "PNG")
    threads = [threading.Thread(target=inspector.inspect, args=(data,)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak == 2


def test_inspector_needs_at_least_one_decode_slot() -> None:
    with pytest.raises(ValueError, match="max_concurrent"):
        PillowInspector(max_concurrent=0)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_inspector_rejects_truncated_images(fmt: str) -> None:
    noisy = Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48)
    data = encode(noisy, fmt)
    with pytest.raises(ProviderProtocolError, match="not a complete"):
        PillowInspector().inspect(data[: len(data) // 2])


def png(width: int, height: int, idat: bytes) -> bytes:
    """A 1-bit greyscale PNG with the given header size and IDAT, CRCs correct."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG of ``width`` x ``height`` black pixels: a few KB that decode to
    width*height pixels (and to far more in RGB)."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return png(width, height, idat)


def test_inspector_rejects_a_decompression_bomb_over_its_default_limit() -> None:
    bomb = png_bomb(9_000, 8_000)  # 72 Mpx: over our 64 Mpx, under Pillow's own warning
    assert len(bomb) < 50_000
    with pytest.raises(ProviderProtocolError, match="decompression bomb"):
        PillowInspector().inspect(bomb)


def test_inspector_rejects_images_pillow_itself_calls_bombs() -> None:
    huge_header = png(20_000, 20_000, zlib.compress(b"\x00\x00"))  # Pillow refuses to open it
    with pytest.raises(ProviderProtocolError, match="decompression bomb"):
        PillowInspector(max_pixels=10**12).inspect(huge_header)


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_inspector_treats_pillows_bomb_warning_as_an_error() -> None:
    assert Image.MAX_IMAGE_PIXELS is not None
    side = int(Image.MAX_IMAGE_PIXELS**0.5) + 10  # over Pillow's warning limit, under 2x
    with pytest.raises(ProviderProtocolError, match="decompression bomb"):
        PillowInspector(max_pixels=10**12).inspect(png_bomb(side, side))


def test_inspector_pixel_limit_is_configurable() -> None:
    inspector = PillowInspector(max_pixels=100)
    assert inspector.inspect(encode(Image.new("RGB", (10, 10)), "PNG")).width == 10
    with pytest.raises(ProviderProtocolError, match="100 pixels"):
        inspector.inspect(encode(Image.new("RGB", (11, 10)), "PNG"))
    assert PillowInspector().max_pixels == imaging.DEFAULT_MAX_PIXELS
    with pytest.raises(ValueError, match="max_pixels"):
        PillowInspector(max_pixels=0)
