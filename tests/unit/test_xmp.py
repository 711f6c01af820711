"""XMP packets and their byte-level embedding into PNG, JPEG and WebP."""

from __future__ import annotations

import io
import random
import struct
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from imagegen.application.ports import ImageInfo
from imagegen.domain.asset import DIGITAL_SOURCE_TYPE_GENERATED, Provenance
from imagegen.domain.errors import StorageError
from imagegen.domain.values import ImageFormat
from imagegen.infrastructure.storage.xmp import (
    IMAGEGEN_NS,
    IPTC_EXT_NS,
    JPEG_XMP_HEADER,
    build_xmp_packet,
    embed_xmp,
)

NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "Iptc4xmpExt": IPTC_EXT_NS,
    "imagegen": IMAGEGEN_NS,
}
TRICKY_PROMPT = """a <b>bold</b> "fox" & the 'hound' ]]> <!-- not a comment --> ünïcødé 🦊"""
DST = DIGITAL_SOURCE_TYPE_GENERATED.encode()


def provenance(prompt: str = TRICKY_PROMPT, **changes: Any) -> Provenance:
    fields: dict[str, Any] = {
        "digital_source_type": DIGITAL_SOURCE_TYPE_GENERATED,
        "provider": "local",
        "model": "abstract-v1",
        "prompt": prompt,
        "generation_id": "gen_01JD0000000000000000000000",
        "seed": 1234,
        "created_at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    }
    fields.update(changes)
    return Provenance(**fields)


def description(element: ET.Element) -> ET.Element:
    node = element.find(".//rdf:Description", NS)
    assert node is not None
    return node


def field(packet: bytes, path: str) -> str | None:
    node = description(ET.fromstring(packet)).find(path, NS)
    return None if node is None else node.text


def noise(mode: str, size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = random.Random(seed)
    bands = len(mode)
    return Image.frombytes(mode, size, rng.randbytes(size[0] * size[1] * bands))


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def decoded(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy()


def info_for(data: bytes, fmt: ImageFormat) -> ImageInfo:
    image = decoded(data)
    return ImageInfo(fmt, image.width, image.height, image.has_transparency_data)


# --- the packet --------------------------------------------------------------------------------


def test_packet_is_wrapped_xml_with_the_digital_source_type() -> None:
    packet = build_xmp_packet(provenance())
    text = packet.decode("utf-8")
    assert text.startswith('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>')
    assert text.endswith('<?xpacket end="r"?>')
    assert field(packet, "Iptc4xmpExt:DigitalSourceType") == DIGITAL_SOURCE_TYPE_GENERATED


def test_packet_carries_prompt_model_provider_seed_generation_and_date() -> None:
    packet = build_xmp_packet(provenance(negative_prompt="no <dogs>", parent_asset_id="ast_1"))
    assert field(packet, "dc:description/rdf:Alt/rdf:li") == TRICKY_PROMPT
    assert field(packet, "imagegen:provider") == "local"
    assert field(packet, "imagegen:model") == "abstract-v1"
    assert field(packet, "imagegen:seed") == "1234"
    assert field(packet, "imagegen:generationId") == "gen_01JD0000000000000000000000"
    assert field(packet, "imagegen:negativePrompt") == "no <dogs>"
    assert field(packet, "imagegen:parentAssetId") == "ast_1"
    assert field(packet, "xmp:CreateDate") == "2025-01-02T03:04:05+00:00"
    assert field(packet, "xmp:CreatorTool") == "imagegen (local/abstract-v1)"


def test_packet_omits_absent_optional_fields() -> None:
    packet = build_xmp_packet(provenance(seed=None, created_at=None))
    for path in ["imagegen:seed", "imagegen:negativePrompt", "xmp:CreateDate"]:
        assert description(ET.fromstring(packet)).find(path, NS) is None


def test_packet_escapes_markup_so_a_prompt_cannot_inject_elements() -> None:
    evil = '</rdf:li></rdf:Alt></dc:description><imagegen:seed>666</imagegen:seed><x a="'
    packet = build_xmp_packet(provenance(evil, seed=None))
    assert field(packet, "dc:description/rdf:Alt/rdf:li") == evil
    assert description(ET.fromstring(packet)).find("imagegen:seed", NS) is None


def test_characters_xml_cannot_hold_are_replaced_and_carriage_returns_kept() -> None:
    packet = build_xmp_packet(provenance("bell\x07 nul\x00 cr\r\nlf \ud800 end", seed=None))
    assert (
        field(packet, "dc:description/rdf:Alt/rdf:li") == "bell\ufffd nul\ufffd cr\r\nlf \ufffd end"
    )


# --- embedding, per format ---------------------------------------------------------------------

CASES: dict[str, Callable[[], bytes]] = {
    "png-rgb": lambda: encode(noise("RGB", (33, 17)), "PNG"),
    "png-rgba": lambda: encode(noise("RGBA", (16, 9)), "PNG"),
    "png-text": lambda: encode(noise("L", (8, 8)), "PNG", pnginfo=_pnginfo()),
    "jpeg-jfif": lambda: encode(noise("RGB", (40, 24)), "JPEG", quality=90),
    "jpeg-exif": lambda: encode(noise("RGB", (40, 24)), "JPEG", exif=_exif()),
    "webp-lossy-vp8": lambda: encode(noise("RGB", (21, 13)), "WEBP", quality=90),
    "webp-lossless-vp8l": lambda: encode(noise("RGBA", (21, 13)), "WEBP", lossless=True),
    "webp-lossy-alpha-vp8x": lambda: encode(noise("RGBA", (21, 13)), "WEBP", quality=80),
}
FORMAT_OF = {"png": ImageFormat.PNG, "jpeg": ImageFormat.JPEG, "webp": ImageFormat.WEBP}


def _pnginfo() -> Any:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Comment", "hello")
    return info


def _exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0131] = "some camera software"  # Software
    return exif


@pytest.mark.parametrize("case", list(CASES))
def test_embedding_keeps_pixels_and_pillow_reads_the_packet(case: str) -> None:
    original = CASES[case]()
    fmt = FORMAT_OF[case.split("-")[0]]
    packet = build_xmp_packet(provenance())
    embedded = embed_xmp(original, info_for(original, fmt), packet)

    before, after = decoded(original), decoded(embedded)
    assert after.format == before.format
    assert (after.mode, after.size) == (before.mode, before.size)
    assert after.tobytes() == before.tobytes()
    assert after.info["xmp"] == packet
    if fmt is ImageFormat.PNG:
        assert after.info["XML:com.adobe.xmp"] == packet.decode("utf-8")
    assert DST in embedded
    assert field(after.info["xmp"], "dc:description/rdf:Alt/rdf:li") == TRICKY_PROMPT


def test_embedding_replaces_an_existing_packet_instead_of_adding_one() -> None:
    for case in CASES:
        original = CASES[case]()
        fmt = FORMAT_OF[case.split("-")[0]]
        info = info_for(original, fmt)
        once = embed_xmp(original, info, build_xmp_packet(provenance("first")))
        twice = embed_xmp(once, info, build_xmp_packet(provenance("second")))
        assert twice.count(b"<x:xmpmeta") == 1, case
        assert field(decoded(twice).info["xmp"], "dc:description/rdf:Alt/rdf:li") == "second"
        assert decoded(twice).tobytes() == decoded(original).tobytes()


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        chunks.append((kind, body))
        pos += 12 + length
    return chunks


def test_png_packet_is_an_uncompressed_itxt_chunk_right_after_ihdr() -> None:
    original = CASES["png-text"]()
    packet = build_xmp_packet(provenance())
    chunks = png_chunks(embed_xmp(original, info_for(original, ImageFormat.PNG), packet))
    assert [kind for kind, _ in chunks[:2]] == [b"IHDR", b"iTXt"]
    assert chunks[1][1] == b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + packet
    assert chunks[-1][0] == b"IEND"
    assert [kind for kind, _ in chunks[2:]] == [kind for kind, _ in png_chunks(original)[1:]]


def jpeg_markers(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, payload) of each segment up to SOS."""
    segments, pos = [], 2
    while data[pos + 1] != 0xDA:
        (length,) = struct.unpack_from(">H", data, pos + 2)
        segments.append((data[pos + 1], data[pos + 4 : pos + 2 + length]))
        pos += 2 + length
    return segments


@pytest.mark.parametrize(
    ("case", "expected"),
    [("jpeg-jfif", [(0xE0, b"JFIF\x00")]), ("jpeg-exif", [(0xE0, b"JFIF\x00"), (0xE1, b"Exif")])],
)
def test_jpeg_packet_is_an_app1_segment_after_jfif_and_exif(
    case: str, expected: list[tuple[int, bytes]]
) -> None:
    original = CASES[case]()
    packet = build_xmp_packet(provenance())
    segments = jpeg_markers(embed_xmp(original, info_for(original, ImageFormat.JPEG), packet))
    assert segments_start_with(segments[: len(expected)], expected)
    assert segments[len(expected)] == (0xE1, JPEG_XMP_HEADER + packet)
    assert segments[len(expected) + 1 :] == jpeg_markers(original)[len(expected) :]


def segments_start_with(
    segments: list[tuple[int, bytes]], expected: list[tuple[int, bytes]]
) -> bool:
    return all(
        m == em and p.startswith(ep) for (m, p), (em, ep) in zip(segments, expected, strict=True)
    )


def riff_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:4] == b"RIFF"
    assert data[8:12] == b"WEBP"
    (size,) = struct.unpack_from("<I", data, 4)
    assert size == len(data) - 8
    chunks, pos = [], 12
    while pos < len(data):
        assert pos % 2 == 0  # every chunk starts on an even offset
        fourcc = data[pos : pos + 4]
        (length,) = struct.unpack_from("<I", data, pos + 4)
        chunks.append((fourcc, data[pos + 8 : pos + 8 + length]))
        pos += 8 + length + length % 2
    assert pos == len(data)
    return chunks


@pytest.mark.parametrize(
    ("case", "image_chunks", "flags"),
    [
        ("webp-lossy-vp8", [b"VP8 "], 0x04),
        ("webp-lossless-vp8l", [b"VP8L"], 0x04 | 0x10),
        ("webp-lossy-alpha-vp8x", [b"ALPH", b"VP8 "], 0x04 | 0x10),
    ],
)
@pytest.mark.parametrize("prompt", ["even", "odd"])
def test_webp_gets_a_vp8x_header_and_a_padded_xmp_chunk(
    case: str, image_chunks: list[bytes], flags: int, prompt: str
) -> None:
    original = CASES[case]()
    packet = build_xmp_packet(provenance(prompt))
    embedded = embed_xmp(original, info_for(original, ImageFormat.WEBP), packet)
    chunks = riff_chunks(embedded)
    assert [fourcc for fourcc, _ in chunks] == [b"VP8X", *image_chunks, b"XMP "]
    vp8x = chunks[0][1]
    assert vp8x[0] == flags
    assert int.from_bytes(vp8x[4:7], "little") + 1 == 21
    assert int.from_bytes(vp8x[7:10], "little") + 1 == 13
    assert chunks[-1][1] == packet


def test_packets_of_both_parities_are_exercised() -> None:
    assert {len(build_xmp_packet(provenance(p))) % 2 for p in ["even", "odd"]} == {0, 1}


@pytest.mark.parametrize(
    ("fmt", "data"),
    [
        (ImageFormat.PNG, b"not a png"),
        (ImageFormat.PNG, CASES["png-rgb"]()[:40]),
        (ImageFormat.JPEG, b"not a jpeg"),
        (ImageFormat.JPEG, CASES["jpeg-jfif"]()[:30]),
        (ImageFormat.WEBP, b"RIFF\x00\x00\x00\x00WEBPVP8 "),
        (ImageFormat.WEBP, CASES["webp-lossy-vp8"]()[:-10]),
        (ImageFormat.WEBP, b"RIFF\x0c\x00\x00\x00WEBPJUNK\x00\x00\x00\x00"),
    ],
    ids=[
        "png-garbage",
        "png-truncated",
        "jpeg-garbage",
        "jpeg-truncated",
        "webp-empty",
        "webp-truncated",
        "webp-unknown-chunk",
    ],
)
def test_malformed_containers_raise_storage_error(fmt: ImageFormat, data: bytes) -> None:
    with pytest.raises(StorageError, match="Cannot embed XMP"):
        embed_xmp(data, ImageInfo(fmt, 21, 13), build_xmp_packet(provenance()))


def test_a_packet_too_big_for_one_jpeg_segment_is_refused() -> None:
    original = CASES["jpeg-jfif"]()
    packet = build_xmp_packet(provenance("&" * 20_000))  # each & becomes &amp;
    with pytest.raises(StorageError, match="at most"):
        embed_xmp(original, info_for(original, ImageFormat.JPEG), packet)


# --- properties --------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    width=st.integers(1, 40),
    height=st.integers(1, 40),
    fmt=st.sampled_from(["PNG", "JPEG", "WEBP", "WEBP-lossless"]),
    mode=st.sampled_from(["RGB", "RGBA", "L"]),
    prompt=st.text(min_size=1, max_size=200),
    seed=st.integers(0, 2**32 - 1),
)
def test_embedding_never_changes_pixels_and_always_yields_a_parseable_packet(
    width: int, height: int, fmt: str, mode: str, prompt: str, seed: int
) -> None:
    if fmt == "JPEG" and mode == "RGBA":
        mode = "RGB"  # JPEG has no alpha
    options = {"lossless": True} if fmt == "WEBP-lossless" else {}
    original = encode(noise(mode, (width, height), seed), fmt.split("-")[0], **options)
    image_format = ImageFormat(fmt.split("-")[0].lower())
    packet = build_xmp_packet(provenance(prompt, seed=seed))

    embedded = embed_xmp(original, info_for(original, image_format), packet)

    after = decoded(embedded)
    assert after.tobytes() == decoded(original).tobytes()
    assert after.info["xmp"] == packet
    assert field(after.info["xmp"], "dc:description/rdf:Alt/rdf:li") == xml_safe(prompt)
    assert DST in embedded


def xml_safe(text: str) -> str:
    """``text`` with the characters XML 1.0 cannot carry replaced, as the packet builder does."""

    def allowed(c: str) -> bool:
        cp = ord(c)
        return (
            cp in (0x9, 0xA, 0xD)
            or 0x20 <= cp <= 0xD7FF
            or 0xE000 <= cp <= 0xFFFD
            or 0x10000 <= cp <= 0x10FFFF
        )

    return "".join(c if allowed(c) else "\ufffd" for c in text)
