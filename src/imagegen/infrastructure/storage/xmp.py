"""Provenance as XMP, spliced into PNG, JPEG and WebP files at the byte level.

We never decode and re-encode the image: that would cost time, lose quality (JPEG, lossy WebP)
and change the pixels the provider produced. Instead the packet goes into the container where
each format expects it (PNG ``iTXt``, JPEG ``APP1``, WebP ``XMP `` chunk); the image data itself
is copied untouched. An XMP packet already in the file is replaced, so a file carries one.

Readers that matter: the IPTC Extension ``DigitalSourceType`` is what platforms and the EU AI
Act disclosure tooling look for to label AI-generated media.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from typing import Final
from xml.sax.saxutils import escape

from imagegen.application.ports import ImageInfo
from imagegen.domain.asset import Provenance
from imagegen.domain.errors import StorageError
from imagegen.domain.values import ImageFormat

IMAGEGEN_NS: Final = "https://imagegen.dev/ns/1.0/"
IPTC_EXT_NS: Final = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"

PNG_XMP_KEYWORD: Final = b"XML:com.adobe.xmp"
JPEG_XMP_HEADER: Final = b"http://ns.adobe.com/xap/1.0/\x00"
_JPEG_EXTENDED_XMP_HEADER: Final = b"http://ns.adobe.com/xmp/extension/\x00"
# A JPEG segment length is 16 bits and counts itself; larger packets need "extended XMP",
# which we do not write (a 4000-character prompt fully escaped stays far below this).
MAX_JPEG_XMP_BYTES: Final = 0xFFFF - 2 - len(JPEG_XMP_HEADER)

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_WEBP_FLAG_XMP: Final = 0x04
_WEBP_FLAG_ALPHA: Final = 0x10

# Characters XML 1.0 cannot carry even as references (controls, lone surrogates, U+FFFE/F).
_XML_ILLEGAL: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_ENTITIES: Final = {'"': "&quot;", "'": "&apos;", "\r": "&#13;"}


def build_xmp_packet(provenance: Provenance) -> bytes:
    """An XMP packet (UTF-8) describing where the image came from."""
    props = [
        f"<Iptc4xmpExt:DigitalSourceType>{_text(provenance.digital_source_type)}"
        "</Iptc4xmpExt:DigitalSourceType>",
        "<dc:description><rdf:Alt>"
        f'<rdf:li xml:lang="x-default">{_text(provenance.prompt)}</rdf:li>'
        "</rdf:Alt></dc:description>",
        f"<xmp:CreatorTool>{_text(f'imagegen ({provenance.provider}/{provenance.model})')}"
        "</xmp:CreatorTool>",
    ]
    if provenance.created_at is not None:
        props.append(f"<xmp:CreateDate>{provenance.created_at.isoformat()}</xmp:CreateDate>")
    custom: list[tuple[str, str | int | None]] = [
        ("provider", provenance.provider),
        ("model", provenance.model),
        ("seed", provenance.seed),
        ("generationId", provenance.generation_id),
        ("negativePrompt", provenance.negative_prompt),
        ("parentAssetId", provenance.parent_asset_id),
    ]
    props.extend(
        f"<imagegen:{name}>{_text(str(value))}</imagegen:{name}>"
        for name, value in custom
        if value is not None
    )
    body = "\n    ".join(props)
    packet = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about=""\n'
        f'    xmlns:Iptc4xmpExt="{IPTC_EXT_NS}"\n'
        '    xmlns:dc="http://purl.org/dc/elements/1.1/"\n'
        '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
        f'    xmlns:imagegen="{IMAGEGEN_NS}">\n'
        f"    {body}\n"
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        # "r": we rewrite the whole file to change metadata, so no padding for in-place edits.
        '<?xpacket end="r"?>'
    )
    return packet.encode("utf-8")


def _text(value: str) -> str:
    # Prompts are user text: escape markup and replace what XML cannot represent at all, so
    # the packet always parses (a broken packet is silently ignored by most readers).
    return escape(_XML_ILLEGAL.sub("\ufffd", value), _ENTITIES)


def embed_xmp(data: bytes, info: ImageInfo, packet: bytes) -> bytes:
    """``data`` with ``packet`` embedded (replacing any XMP already there); pixels untouched.

    Raises ``StorageError`` if ``data`` is not a well-formed file of ``info.format``.
    """
    if info.format is ImageFormat.PNG:
        return _embed_png(data, packet)
    if info.format is ImageFormat.JPEG:
        return _embed_jpeg(data, packet)
    if info.format is ImageFormat.WEBP:
        return _embed_webp(data, info, packet)
    raise StorageError(f"Cannot embed XMP into {info.format} images.")  # pragma: no cover


# --- PNG ---------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def _embed_png(data: bytes, packet: bytes) -> bytes:
    if not data.startswith(_PNG_SIGNATURE):
        raise StorageError("Cannot embed XMP: the data is not a PNG file.")
    # iTXt: keyword NUL, compression flag 0 and method 0 (uncompressed, so plain-bytes scanners
    # find it too), empty language tag NUL, empty translated keyword NUL, then the UTF-8 text.
    itxt = _png_chunk(b"iTXt", PNG_XMP_KEYWORD + b"\x00\x00\x00\x00\x00" + packet)
    view = memoryview(data)
    parts: list[bytes | memoryview] = [view[:8]]
    pos = 8
    seen_iend = False
    while not seen_iend:
        if pos + 12 > len(data):
            raise StorageError("Cannot embed XMP: the PNG file is truncated.")
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > len(data):
            raise StorageError("Cannot embed XMP: the PNG file is truncated.")
        if pos == 8:
            if kind != b"IHDR":
                raise StorageError("Cannot embed XMP: the PNG file does not start with IHDR.")
            # Right after IHDR: before IDAT as the XMP spec asks, and found by the first scan.
            parts += [view[pos:end], itxt]
        elif not (kind == b"iTXt" and data.startswith(PNG_XMP_KEYWORD + b"\x00", pos + 8)):
            parts.append(view[pos:end])
        seen_iend = kind == b"IEND"
        pos = end
    parts.append(view[pos:])  # anything after IEND is kept as it was: we only add metadata
    return b"".join(parts)


# --- JPEG --------------------------------------------------------------------------------------


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(marker, start, payload start, end) of each segment after SOI; the last is SOS (or EOI)
    and runs to the end of the data: entropy-coded data is never parsed."""
    pos = 2
    while True:
        start = pos
        while pos + 1 < len(data) and data[pos] == 0xFF and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes before a marker
        if pos + 2 > len(data) or data[pos] != 0xFF:
            raise StorageError("Cannot embed XMP: the JPEG file is malformed.")
        marker = data[pos + 1]
        if marker in (0xDA, 0xD9):  # SOS or EOI: the header is over
            yield marker, start, pos + 2, len(data)
            return
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length field
            pos += 2
            yield marker, start, pos, pos
            continue
        if pos + 4 > len(data):
            raise StorageError("Cannot embed XMP: the JPEG file is truncated.")
        (length,) = struct.unpack_from(">H", data, pos + 2)
        end = pos + 2 + length
        if length < 2 or end > len(data):
            raise StorageError("Cannot embed XMP: the JPEG file is truncated.")
        yield marker, start, pos + 4, end
        pos = end


def _embed_jpeg(data: bytes, packet: bytes) -> bytes:
    if not data.startswith(b"\xff\xd8"):
        raise StorageError("Cannot embed XMP: the data is not a JPEG file.")
    if len(packet) > MAX_JPEG_XMP_BYTES:
        raise StorageError(
            f"Cannot embed XMP: the packet has {len(packet)} bytes; a JPEG segment holds "
            f"at most {MAX_JPEG_XMP_BYTES}."
        )
    segment = b"\xff\xe1" + struct.pack(">H", 2 + len(JPEG_XMP_HEADER) + len(packet))
    segment += JPEG_XMP_HEADER + packet
    view = memoryview(data)
    parts: list[bytes | memoryview] = [view[:2]]
    inserted = False
    for marker, start, payload, end in _jpeg_segments(data):
        is_exif = marker == 0xE1 and data.startswith(b"Exif\x00", payload)
        if not inserted and not (marker == 0xE0 or is_exif):
            # After SOI and any leading APP0 (JFIF/JFXX, which must come first) and Exif APP1.
            parts.append(segment)
            inserted = True
        if marker == 0xE1 and (
            data.startswith(JPEG_XMP_HEADER, payload)
            or data.startswith(_JPEG_EXTENDED_XMP_HEADER, payload)
        ):
            continue  # a previous packet (and its extension): ours replaces it
        parts.append(view[start:end])
    return b"".join(parts)


# --- WebP --------------------------------------------------------------------------------------


def _riff_chunk(fourcc: bytes, body: bytes) -> bytes:
    # RIFF chunks start on even offsets: an odd-sized body gets one zero byte of padding.
    return fourcc + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) % 2 else b"")


def _embed_webp(data: bytes, info: ImageInfo, packet: bytes) -> bytes:
    if len(data) < 20 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise StorageError("Cannot embed XMP: the data is not a WebP file.")
    (riff_size,) = struct.unpack_from("<I", data, 4)
    riff_end = 8 + riff_size
    if riff_size < 4 or riff_end > len(data):
        raise StorageError("Cannot embed XMP: the WebP file is truncated.")
    chunks: list[tuple[bytes, bytes]] = []  # (fourcc, whole chunk with padding)
    pos = 12
    while pos < riff_end:
        if pos + 8 > riff_end:
            raise StorageError("Cannot embed XMP: the WebP file is truncated.")
        fourcc = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        body_end = pos + 8 + size
        if body_end > riff_end:
            raise StorageError("Cannot embed XMP: the WebP file is truncated.")
        # Some encoders omit the final pad byte; we add it back so our appended chunk aligns.
        chunk = data[pos:body_end] + (b"\x00" if size % 2 else b"")
        chunks.append((fourcc, chunk))
        pos = body_end + size % 2
    if not chunks:
        raise StorageError("Cannot embed XMP: the WebP file has no image data.")

    first, first_chunk = chunks[0]
    if first in (b"VP8 ", b"VP8L"):
        # Simple format -> extended format: only VP8X files may carry metadata chunks.
        if not (1 <= info.width <= 1 << 24 and 1 <= info.height <= 1 << 24):
            raise StorageError("Cannot embed XMP: the WebP canvas size is out of range.")
        flags = _WEBP_FLAG_XMP
        if info.has_alpha and first == b"VP8L":  # lossy simple files cannot hold alpha
            flags |= _WEBP_FLAG_ALPHA
        vp8x = _riff_chunk(
            b"VP8X",
            bytes((flags, 0, 0, 0))
            + (info.width - 1).to_bytes(3, "little")
            + (info.height - 1).to_bytes(3, "little"),
        )
        rest = chunks
    elif first == b"VP8X":
        if len(first_chunk) < 18:
            raise StorageError("Cannot embed XMP: the WebP VP8X chunk is truncated.")
        vp8x = first_chunk[:8] + bytes((first_chunk[8] | _WEBP_FLAG_XMP,)) + first_chunk[9:]
        rest = chunks[1:]
    else:
        raise StorageError("Cannot embed XMP: the WebP file starts with an unknown chunk.")

    # XMP goes last, as the container spec orders it (after image data and EXIF).
    kept = [chunk for fourcc, chunk in rest if fourcc != b"XMP "]
    payload = b"WEBP" + b"".join([vp8x, *kept, _riff_chunk(b"XMP ", packet)])
    return b"RIFF" + struct.pack("<I", len(payload)) + payload + data[riff_end:]
